/* artifact.c - descriptor serialization shared by code generators and the
 * runtime, and dimension-expression evaluation. */
#include "kiln_artifact.h"

#include <stdlib.h>
#include <string.h>

int64_t kiln_dimexpr_eval(const kiln_dimexpr *e, const int64_t *syms)
{
    int64_t st[KILN_DIMEXPR_MAX];
    int sp = 0;
    for (int i = 0; i < e->n; i++) {
        switch (e->op[i]) {
        case KILN_DX_CONST: st[sp++] = e->arg[i]; break;
        case KILN_DX_SYM: st[sp++] = syms[e->arg[i]]; break;
        default: {
            if (sp < 2)
                return -1;
            int64_t b = st[--sp], a = st[--sp];
            int64_t r = e->op[i] == KILN_DX_ADD ? a + b
                      : e->op[i] == KILN_DX_SUB ? a - b
                      : e->op[i] == KILN_DX_MUL ? a * b
                      : (b ? a / b : -1);
            st[sp++] = r;
        }
        }
    }
    return sp == 1 ? st[0] : -1;
}

uint64_t kiln_fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- writer ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void put(wbuf *w, const void *d, size_t n)
{
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 256;
        w->p = kiln_xrealloc(w->p, w->cap);
    }
    memcpy(w->p + w->n, d, n);
    w->n += n;
}

static void put_u64(wbuf *w, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put(w, b, 8);
}

static void put_str(wbuf *w, const char *s)
{
    size_t n = strlen(s);
    put_u64(w, n);
    put(w, s, n);
}

static void put_dimexpr(wbuf *w, const kiln_dimexpr *e)
{
    put_u64(w, (uint64_t)e->n);
    for (int i = 0; i < e->n; i++) {
        put_u64(w, e->op[i]);
        put_u64(w, (uint64_t)e->arg[i]);
    }
}

uint8_t *kiln_desc_write(const kiln_desc *d, size_t *len)
{
    wbuf w = {0};
    put(&w, KILN_DESC_MAGIC, 8);
    put_u64(&w, KILN_ABI_VERSION);
    put_str(&w, d->kiln_version);
    put_str(&w, d->name);
    put_str(&w, d->target);
    put_u64(&w, (uint64_t)d->kind);
    put_u64(&w, (uint64_t)d->n_syms);
    for (int i = 0; i < d->n_syms; i++) {
        put_str(&w, d->sym_names[i]);
        put_u64(&w, (uint64_t)d->sym_max[i]);
    }
    put_u64(&w, (uint64_t)d->n_inputs);
    put_u64(&w, (uint64_t)d->n_outputs);
    for (int i = 0; i < d->n_inputs + d->n_outputs; i++) {
        const kiln_io_desc *io = &d->io[i];
        put_str(&w, io->name);
        put_u64(&w, (uint64_t)io->dtype);
        put_u64(&w, (uint64_t)io->rank);
        for (int k = 0; k < io->rank; k++)
            put_dimexpr(&w, &io->dims[k]);
        put_u64(&w, (uint64_t)io->role);
        put_u64(&w, (uint64_t)io->layer);
    }
    put_u64(&w, d->arena_bytes);
    put_u64(&w, d->weights_bytes);
    put_u64(&w, d->weights_hash);
    put_u64(&w, (uint64_t)d->vocab);
    put_u64(&w, (uint64_t)d->bos);
    put_u64(&w, (uint64_t)d->eos);
    put_u64(&w, (uint64_t)d->eot);
    put_u64(&w, (uint64_t)d->max_ctx);
    put_u64(&w, (uint64_t)d->kv.kind);
    put_u64(&w, (uint64_t)d->kv.dtype);
    put_u64(&w, (uint64_t)d->kv.n_layers);
    put_u64(&w, (uint64_t)d->kv.kv_heads);
    put_u64(&w, (uint64_t)d->kv.head_dim);
    put_u64(&w, (uint64_t)d->kv.max_ctx);
    put_u64(&w, (uint64_t)d->kv.max_batch);
    put_u64(&w, (uint64_t)d->kv.page);
    put_u64(&w, d->tokenizer_bytes);
    if (d->tokenizer_bytes)
        put(&w, d->tokenizer, d->tokenizer_bytes);
    put(&w, "KILNEND.", 8);
    *len = w.n;
    return w.p;
}

/* ---- reader ---- */

typedef struct rbuf {
    const uint8_t *p;
    size_t n, off;
    int bad;
} rbuf;

static uint64_t get_u64(rbuf *r)
{
    if (r->bad || r->n - r->off < 8) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[r->off + i] << (8 * i);
    r->off += 8;
    return v;
}

static void get_str(rbuf *r, char *dst, size_t cap)
{
    uint64_t n = get_u64(r);
    if (r->bad || n >= cap || r->n - r->off < n) {
        r->bad = 1;
        dst[0] = 0;
        return;
    }
    memcpy(dst, r->p + r->off, n);
    dst[n] = 0;
    r->off += n;
}

static void get_dimexpr(rbuf *r, kiln_dimexpr *e)
{
    uint64_t n = get_u64(r);
    if (n > KILN_DIMEXPR_MAX) {
        r->bad = 1;
        return;
    }
    e->n = (int)n;
    for (int i = 0; i < e->n; i++) {
        e->op[i] = (uint8_t)get_u64(r);
        e->arg[i] = (int64_t)get_u64(r);
    }
}

int kiln_desc_read(const uint8_t *buf, size_t len, kiln_desc *d, kiln_err *err)
{
    memset(d, 0, sizeof *d);
    rbuf r = {buf, len, 0, 0};
    if (len < 16 || memcmp(buf, KILN_DESC_MAGIC, 8) != 0)
        return kiln_errf(err, "not a kiln model (descriptor magic missing)");
    r.off = 8;
    d->abi = (uint32_t)get_u64(&r);
    get_str(&r, d->kiln_version, sizeof d->kiln_version);
    if (d->abi != KILN_ABI_VERSION)
        return kiln_errf(err,
                         "model built by kiln %s with ABI %u, but this runtime has ABI %d: "
                         "rebuild the model with this kiln",
                         d->kiln_version, d->abi, KILN_ABI_VERSION);
    get_str(&r, d->name, sizeof d->name);
    get_str(&r, d->target, sizeof d->target);
    d->kind = (int)get_u64(&r);
    d->n_syms = (int)get_u64(&r);
    if (d->n_syms < 0 || d->n_syms > KILN_MAX_SYMS)
        r.bad = 1;
    for (int i = 0; !r.bad && i < d->n_syms; i++) {
        get_str(&r, d->sym_names[i], sizeof d->sym_names[i]);
        d->sym_max[i] = (int64_t)get_u64(&r);
    }
    d->n_inputs = (int)get_u64(&r);
    d->n_outputs = (int)get_u64(&r);
    if (d->n_inputs < 0 || d->n_outputs < 0 || d->n_inputs + d->n_outputs > KILN_MAX_IO)
        r.bad = 1;
    if (!r.bad) {
        d->io = kiln_xcalloc((size_t)(d->n_inputs + d->n_outputs) + 1, sizeof *d->io);
        for (int i = 0; !r.bad && i < d->n_inputs + d->n_outputs; i++) {
            kiln_io_desc *io = &d->io[i];
            get_str(&r, io->name, sizeof io->name);
            io->dtype = (kiln_dtype)get_u64(&r);
            io->rank = (int)get_u64(&r);
            if (io->rank < 0 || io->rank > 8) {
                r.bad = 1;
                break;
            }
            for (int k = 0; k < io->rank; k++)
                get_dimexpr(&r, &io->dims[k]);
            io->role = (int)get_u64(&r);
            io->layer = (int)get_u64(&r);
        }
    }
    d->arena_bytes = get_u64(&r);
    d->weights_bytes = get_u64(&r);
    d->weights_hash = get_u64(&r);
    d->vocab = (int64_t)get_u64(&r);
    d->bos = (int64_t)get_u64(&r);
    d->eos = (int64_t)get_u64(&r);
    d->eot = (int64_t)get_u64(&r);
    d->max_ctx = (int64_t)get_u64(&r);
    d->kv.kind = (int)get_u64(&r);
    d->kv.dtype = (kiln_dtype)get_u64(&r);
    d->kv.n_layers = (int)get_u64(&r);
    d->kv.kv_heads = (int)get_u64(&r);
    d->kv.head_dim = (int)get_u64(&r);
    d->kv.max_ctx = (int64_t)get_u64(&r);
    d->kv.max_batch = (int64_t)get_u64(&r);
    d->kv.page = (int64_t)get_u64(&r);
    d->tokenizer_bytes = get_u64(&r);
    if (!r.bad && r.n - r.off >= d->tokenizer_bytes) {
        d->tokenizer = d->tokenizer_bytes ? r.p + r.off : NULL;
        r.off += d->tokenizer_bytes;
    } else {
        r.bad = 1;
    }
    if (r.bad || r.n - r.off < 8 || memcmp(r.p + r.off, "KILNEND.", 8) != 0) {
        kiln_desc_free(d);
        return kiln_errf(err, "corrupt model descriptor");
    }
    return 0;
}

void kiln_desc_free(kiln_desc *d)
{
    free(d->io);
    d->io = NULL;
}
