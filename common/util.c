/* util.c - errors, allocation, string builder, string map, file access. */
#include "kiln_common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int kiln_errf(kiln_err *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int kiln_err_prefix(kiln_err *e, const char *fmt, ...)
{
    if (e) {
        char pre[512], old[sizeof e->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pre, sizeof pre, fmt, ap);
        va_end(ap);
        memcpy(old, e->msg, sizeof old);
        size_t pl = strlen(pre);
        if (pl >= sizeof e->msg)
            pl = sizeof e->msg - 1;
        memcpy(e->msg, pre, pl);
        size_t ol = strnlen(old, sizeof old - 1);
        if (ol > sizeof e->msg - 1 - pl)
            ol = sizeof e->msg - 1 - pl;
        memcpy(e->msg + pl, old, ol);
        e->msg[pl + ol] = 0;
    }
    return -1;
}

static void oom(size_t n)
{
    fprintf(stderr, "kiln: out of memory allocating %zu bytes\n", n);
    abort();
}

void *kiln_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *kiln_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p)
        oom(n * sz);
    return p;
}

void *kiln_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *kiln_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = kiln_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void kiln_sb_put(kiln_sb *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->s = kiln_xrealloc(b->s, cap);
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void kiln_sb_vprintf(kiln_sb *b, const char *fmt, va_list ap)
{
    char tmp[256];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    if ((size_t)n < sizeof tmp) {
        kiln_sb_put(b, tmp, (size_t)n);
    } else {
        char *big = kiln_xmalloc((size_t)n + 1);
        vsnprintf(big, (size_t)n + 1, fmt, ap2);
        kiln_sb_put(b, big, (size_t)n);
        free(big);
    }
    va_end(ap2);
}

void kiln_sb_printf(kiln_sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kiln_sb_vprintf(b, fmt, ap);
    va_end(ap);
}

void kiln_sb_free(kiln_sb *b)
{
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

int kiln_strmap_get(const kiln_strmap *m, const char *key, int *val)
{
    if (!m->cap)
        return 0;
    size_t i = hash_str(key) & (m->cap - 1);
    while (m->keys[i]) {
        if (strcmp(m->keys[i], key) == 0) {
            if (val)
                *val = m->vals[i];
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return 0;
}

static void strmap_insert(kiln_strmap *m, char *key, int val)
{
    size_t i = hash_str(key) & (m->cap - 1);
    while (m->keys[i]) {
        if (strcmp(m->keys[i], key) == 0) {
            free(key);
            m->vals[i] = val;
            return;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->count++;
}

void kiln_strmap_put(kiln_strmap *m, const char *key, int val)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t ocap = m->cap;
        char **okeys = m->keys;
        int *ovals = m->vals;
        m->cap = ocap ? ocap * 2 : 64;
        m->keys = kiln_xcalloc(m->cap, sizeof *m->keys);
        m->vals = kiln_xcalloc(m->cap, sizeof *m->vals);
        m->count = 0;
        for (size_t i = 0; i < ocap; i++)
            if (okeys[i])
                strmap_insert(m, okeys[i], ovals[i]);
        free(okeys);
        free(ovals);
    }
    strmap_insert(m, kiln_xstrdup(key), val);
}

void kiln_strmap_free(kiln_strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

int kiln_read_file(const char *path, char **data, size_t *len, kiln_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return kiln_errf(err, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = kiln_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = kiln_xrealloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return kiln_errf(err, "%s: read error", path);
    }
    buf[n] = 0;
    *data = buf;
    if (len)
        *len = n;
    return 0;
}

int kiln_map_file(const char *path, kiln_map *m, kiln_err *err)
{
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kiln_errf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kiln_errf(err, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        m->data = (const uint8_t *)"";
        return 0;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return kiln_errf(err, "%s: mmap failed: %s", path, strerror(errno));
    m->data = p;
    m->size = (size_t)st.st_size;
    return 0;
}

void kiln_unmap_file(kiln_map *m)
{
    if (m->data && m->size)
        munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}
