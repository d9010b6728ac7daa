/* npy.c - NumPy .npy reader and writer (format versions 1-3, C order). */
#include "kiln_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *descr;
    kiln_dtype dt;
} npy_types[] = {
    {"<f4", KILN_F32}, {"<f2", KILN_F16}, {"<f8", KILN_F64}, {"|i1", KILN_I8},
    {"|u1", KILN_U8},  {"<i2", KILN_I16}, {"<u2", KILN_U16}, {"<i4", KILN_I32},
    {"<u4", KILN_U32}, {"<i8", KILN_I64}, {"<u8", KILN_U64}, {"|b1", KILN_BOOL},
    {"<b1", KILN_BOOL}, {"|i1", KILN_I8},
};

void kiln_npy_free(kiln_npy *a)
{
    free(a->data);
    a->data = NULL;
}

/* Finds 'key': in the header dict and returns a pointer past the colon. */
static const char *dict_value(const char *hdr, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p)
        return NULL;
    p = strchr(p + strlen(pat), ':');
    if (!p)
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

int kiln_npy_read(const char *path, kiln_npy *out, kiln_err *err)
{
    memset(out, 0, sizeof *out);
    char *buf;
    size_t len;
    if (kiln_read_file(path, &buf, &len, err))
        return -1;
    int rc = -1;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        kiln_errf(err, "%s: not a .npy file (bad magic)", path);
        goto done;
    }
    int major = (unsigned char)buf[6];
    size_t hlen, hstart;
    if (major == 1) {
        hlen = (unsigned char)buf[8] | ((size_t)(unsigned char)buf[9] << 8);
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) {
            kiln_errf(err, "%s: truncated .npy header", path);
            goto done;
        }
        hlen = (unsigned char)buf[8] | ((size_t)(unsigned char)buf[9] << 8) |
               ((size_t)(unsigned char)buf[10] << 16) | ((size_t)(unsigned char)buf[11] << 24);
        hstart = 12;
    } else {
        kiln_errf(err, "%s: unsupported .npy version %d", path, major);
        goto done;
    }
    if (hstart + hlen > len) {
        kiln_errf(err, "%s: truncated .npy header", path);
        goto done;
    }
    char *hdr = kiln_xmalloc(hlen + 1);
    memcpy(hdr, buf + hstart, hlen);
    hdr[hlen] = 0;
    const char *d = dict_value(hdr, "descr"), *fo = dict_value(hdr, "fortran_order"),
               *sh = dict_value(hdr, "shape");
    if (!d || !fo || !sh || *d != '\'' || *sh != '(') {
        kiln_errf(err, "%s: malformed .npy header", path);
        free(hdr);
        goto done;
    }
    char descr[16] = {0};
    const char *q = strchr(d + 1, '\'');
    if (!q || q - d - 1 >= (long)sizeof descr) {
        kiln_errf(err, "%s: malformed dtype in .npy header", path);
        free(hdr);
        goto done;
    }
    memcpy(descr, d + 1, (size_t)(q - d - 1));
    out->dtype = KILN_DT_INVALID;
    for (size_t i = 0; i < sizeof npy_types / sizeof *npy_types; i++)
        if (strcmp(npy_types[i].descr, descr) == 0)
            out->dtype = npy_types[i].dt;
    if (out->dtype == KILN_DT_INVALID) {
        kiln_errf(err, "%s: unsupported .npy dtype '%s'", path, descr);
        free(hdr);
        goto done;
    }
    if (strncmp(fo, "True", 4) == 0) {
        kiln_errf(err, "%s: Fortran-order .npy arrays are not supported", path);
        free(hdr);
        goto done;
    }
    const char *s = sh + 1;
    int64_t n = 1;
    out->rank = 0;
    for (;;) {
        while (*s == ' ' || *s == ',')
            s++;
        if (*s == ')')
            break;
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v < 0 || out->rank >= KILN_NPY_MAX_RANK) {
            kiln_errf(err, "%s: malformed shape in .npy header", path);
            free(hdr);
            goto done;
        }
        out->dims[out->rank++] = v;
        n *= v;
        s = end;
    }
    free(hdr);
    size_t need = kiln_dtype_storage(out->dtype, n);
    size_t off = hstart + hlen;
    if (len - off < need) {
        kiln_errf(err, "%s: .npy data truncated (%zu of %zu bytes)", path, len - off, need);
        goto done;
    }
    out->nbytes = need;
    out->data = kiln_xmalloc(need);
    memcpy(out->data, buf + off, need);
    rc = 0;
done:
    free(buf);
    return rc;
}

int kiln_npy_write(const char *path, kiln_dtype dt, int rank, const int64_t *dims,
                   const void *data, kiln_err *err)
{
    int64_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= dims[i];
    /* numpy has no bf16, 8- or 4-bit floats, 2- or 4-bit integers: widen
     * so the file is usable */
    const kiln_dtype_info *di = kiln_dtype_get(dt);
    kiln_dtype wdt = dt;
    void *tmp = NULL;
    if (di->is_float && !di->is_quant && dt != KILN_F32 && dt != KILN_F16 && dt != KILN_F64)
        wdt = KILN_F32;
    else if (di->is_int && di->block_elems > 1)
        wdt = di->is_signed ? KILN_I8 : KILN_U8;
    else if (di->is_quant) {
        wdt = KILN_F32;
        tmp = kiln_xmalloc(sizeof(float) * (size_t)(n ? n : 1));
        kiln_dequant_row(dt, data, tmp, n);
        data = tmp;
        dt = KILN_F32;
    }
    if (wdt != dt) {
        tmp = kiln_xmalloc(kiln_dtype_storage(wdt, n) + 1);
        for (int64_t i = 0; i < n; i++) {
            if (kiln_dtype_get(wdt)->is_int)
                kiln_store_i64(wdt, tmp, i, kiln_load_i64(dt, data, i));
            else
                kiln_store_f64(wdt, tmp, i, kiln_load_f64(dt, data, i));
        }
        data = tmp;
    }
    const char *descr = NULL;
    for (size_t i = 0; i < sizeof npy_types / sizeof *npy_types; i++)
        if (npy_types[i].dt == wdt) {
            descr = npy_types[i].descr;
            break;
        }
    if (!descr) {
        free(tmp);
        return kiln_errf(err, "%s: cannot write dtype %s as .npy", path, kiln_dtype_name(dt));
    }
    char shape[256] = "";
    int sl = 0;
    for (int i = 0; i < rank; i++)
        sl += snprintf(shape + sl, sizeof shape - (size_t)sl, "%lld%s", (long long)dims[i],
                       rank == 1 ? "," : (i + 1 < rank ? ", " : ""));
    char hdr[512];
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                      descr, shape);
    int total = 10 + hl + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(tmp);
        return kiln_errf(err, "%s: cannot create: %s", path, strerror(errno));
    }
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    int hlen = hl + pad + 1;
    pre[8] = (unsigned char)(hlen & 0xff);
    pre[9] = (unsigned char)(hlen >> 8);
    fwrite(pre, 1, 10, f);
    fwrite(hdr, 1, (size_t)hl, f);
    for (int i = 0; i < pad; i++)
        fputc(' ', f);
    fputc('\n', f);
    size_t nb = kiln_dtype_storage(wdt, n);
    if (nb)
        fwrite(data, 1, nb, f);
    free(tmp);
    if (fclose(f) != 0)
        return kiln_errf(err, "%s: write failed", path);
    return 0;
}
