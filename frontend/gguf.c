/* gguf.c - GGUF reader (format version 2 and 3).
 *
 * Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count, then
 * metadata entries {string key, u32 type, value}, then tensor infos
 * {string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset},
 * then the data section at the next multiple of general.alignment (32 by
 * default). Strings are {u64 length, bytes}; arrays {u32 type, u64 count,
 * elements}. All little-endian.
 *
 * Everything is bounds-checked once at open; the accessors then read the
 * mapping without checks. String arrays get an element offset index so the
 * i-th vocabulary entry is O(1). */
#include "kiln_gguf.h"
#include "kiln_models.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAX_DEPTH 4 /* nested arrays deeper than this are treated as corrupt */

typedef struct gguf_kv {
    const char *key; /* NUL-terminated copy (owned) */
    kiln_gguf_type type;
    size_t off;           /* file offset of the value (for arrays: of the first element) */
    kiln_gguf_type etype; /* arrays: element type */
    int64_t count;        /* arrays: element count */
    uint64_t *str_off;    /* string arrays: offset of each element's length field (owned) */
} gguf_kv;

struct kiln_gguf {
    char *path;
    kiln_map map;
    uint32_t version;
    gguf_kv *kv;
    int n_kv;
    kiln_strmap keys; /* key -> kv index */
    kiln_gguf_tensor *tensors;
    int n_tensors;
    kiln_strmap tnames; /* tensor name -> index */
    uint64_t data_start;
};

/* ---- bounds-checked cursor used while validating ---- */

typedef struct cursor {
    const uint8_t *p;
    size_t size, pos;
    const char *path;
    kiln_err *err;
} cursor;

static int need(cursor *c, size_t n, const char *what)
{
    if (n > c->size - c->pos)
        return kiln_errf(c->err, "%s: truncated GGUF file (reading %s at offset %zu, file has %zu bytes)",
                         c->path, what, c->pos, c->size);
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what))
        return -1;
    memcpy(v, c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what))
        return -1;
    memcpy(v, c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

/* Reads a string header and skips its bytes; s and len describe it. */
static int rd_str(cursor *c, const char **s, uint64_t *len, const char *what)
{
    uint64_t n;
    if (rd_u64(c, &n, what))
        return -1;
    if (n > c->size - c->pos)
        return kiln_errf(c->err, "%s: corrupt GGUF file (%s of length %llu at offset %zu runs past the end)",
                         c->path, what, (unsigned long long)n, c->pos - 8);
    *s = (const char *)c->p + c->pos;
    *len = n;
    c->pos += (size_t)n;
    return 0;
}

static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case KILN_GGUF_U8: case KILN_GGUF_I8: case KILN_GGUF_BOOL: return 1;
    case KILN_GGUF_U16: case KILN_GGUF_I16: return 2;
    case KILN_GGUF_U32: case KILN_GGUF_I32: case KILN_GGUF_F32: return 4;
    case KILN_GGUF_U64: case KILN_GGUF_I64: case KILN_GGUF_F64: return 8;
    default: return 0;
    }
}

static const char *type_name(uint32_t t)
{
    static const char *names[] = {"u8",  "i8",   "u16",    "i16",   "u32", "i32", "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return t < 13 ? names[t] : "unknown";
}

/* Skips one value of type t (validating it); depth guards nested arrays. */
static int skip_value(cursor *c, uint32_t t, int depth, const char *key)
{
    if (t > KILN_GGUF_F64)
        return kiln_errf(c->err, "%s: corrupt GGUF file (metadata '%s' has unknown type %u)", c->path,
                         key, t);
    if (t == KILN_GGUF_STRING) {
        const char *s;
        uint64_t n;
        return rd_str(c, &s, &n, "a metadata string");
    }
    if (t == KILN_GGUF_ARRAY) {
        uint32_t et;
        uint64_t count;
        if (depth >= GGUF_MAX_DEPTH)
            return kiln_errf(c->err, "%s: corrupt GGUF file (metadata '%s' nests arrays too deeply)",
                             c->path, key);
        if (rd_u32(c, &et, "an array type") || rd_u64(c, &count, "an array length"))
            return -1;
        if (et > KILN_GGUF_F64)
            return kiln_errf(c->err, "%s: corrupt GGUF file (metadata '%s' has unknown array type %u)",
                             c->path, key, et);
        size_t es = scalar_size(et);
        if (es) {
            if (count > (c->size - c->pos) / es)
                return kiln_errf(c->err, "%s: truncated GGUF file (array '%s' of %llu %s runs past the end)",
                                 c->path, key, (unsigned long long)count, type_name(et));
            c->pos += (size_t)count * es;
            return 0;
        }
        /* strings and arrays take at least 8 bytes each: bounds the loop */
        if (count > (c->size - c->pos) / 8)
            return kiln_errf(c->err, "%s: truncated GGUF file (array '%s' of %llu %s runs past the end)",
                             c->path, key, (unsigned long long)count, type_name(et));
        for (uint64_t i = 0; i < count; i++)
            if (skip_value(c, et, depth + 1, key))
                return -1;
        return 0;
    }
    size_t n = scalar_size(t);
    if (need(c, n, "a metadata value"))
        return -1;
    c->pos += n;
    return 0;
}

/* Copies a length-delimited name into a NUL-terminated string; names with
 * NULs cannot be looked up, and no real name holds control characters, so
 * both count as corruption. */
static char *dup_name(cursor *c, const char *s, uint64_t n, const char *what)
{
    for (uint64_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20) { /* also keeps error messages on one line */
            kiln_errf(c->err, "%s: corrupt GGUF file (%s at offset %zu contains control characters)",
                      c->path, what, c->pos - (size_t)n);
            return NULL;
        }
    char *r = kiln_xmalloc((size_t)n + 1);
    memcpy(r, s, (size_t)n);
    r[n] = 0;
    return r;
}

/* GGML type numbers for the types kiln reads. */
static kiln_dtype ggml_dtype(uint32_t t)
{
    switch (t) {
    case 0: return KILN_F32;
    case 1: return KILN_F16;
    case 2: return KILN_Q4_0;
    case 3: return KILN_Q4_1;
    case 8: return KILN_Q8_0;
    case 12: return KILN_Q4_K;
    case 14: return KILN_Q6_K;
    case 30: return KILN_BF16;
    default: return KILN_DT_INVALID;
    }
}

static const char *ggml_type_name(uint32_t t)
{
    static const char *names[] = {
        "F32",    "F16",   "Q4_0",  "Q4_1",   "Q4_2", "Q4_3",    "Q5_0",  "Q5_1",  "Q8_0",
        "Q8_1",   "Q2_K",  "Q3_K",  "Q4_K",   "Q5_K", "Q6_K",    "Q8_K",  "IQ2_XXS", "IQ2_XS",
        "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8",    "I16",   "I32",
        "I64",    "F64",   "IQ1_M", "BF16",   "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
        "TQ2_0",  "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
    return t < sizeof names / sizeof *names ? names[t] : "unknown";
}

void kiln_gguf_close(kiln_gguf *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n_kv; i++) {
        free((char *)g->kv[i].key);
        free(g->kv[i].str_off);
    }
    free(g->kv);
    for (int i = 0; i < g->n_tensors; i++)
        free((char *)g->tensors[i].name);
    free(g->tensors);
    kiln_strmap_free(&g->keys);
    kiln_strmap_free(&g->tnames);
    kiln_unmap_file(&g->map);
    free(g->path);
    free(g);
}

static int parse_kv(kiln_gguf *g, cursor *c, uint64_t n_kv)
{
    g->kv = kiln_xcalloc((size_t)n_kv + 1, sizeof *g->kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        const char *ks;
        uint64_t kl;
        uint32_t t;
        if (rd_str(c, &ks, &kl, "a metadata key"))
            return -1;
        gguf_kv *kv = &g->kv[g->n_kv];
        kv->key = dup_name(c, ks, kl, "a metadata key");
        if (!kv->key)
            return -1;
        g->n_kv++;
        if (rd_u32(c, &t, "a metadata type"))
            return -1;
        if (t > KILN_GGUF_F64)
            return kiln_errf(c->err, "%s: corrupt GGUF file (metadata '%s' has unknown type %u)",
                             c->path, kv->key, t);
        int dummy;
        if (kiln_strmap_get(&g->keys, kv->key, &dummy))
            return kiln_errf(c->err, "%s: corrupt GGUF file (metadata key '%s' appears twice)",
                             c->path, kv->key);
        kiln_strmap_put(&g->keys, kv->key, g->n_kv - 1);
        kv->type = (kiln_gguf_type)t;
        if (t == KILN_GGUF_ARRAY) {
            uint32_t et;
            uint64_t count;
            size_t start = c->pos;
            if (rd_u32(c, &et, "an array type") || rd_u64(c, &count, "an array length"))
                return -1;
            kv->etype = (kiln_gguf_type)et;
            kv->count = (int64_t)(count > INT64_MAX ? INT64_MAX : count);
            kv->off = c->pos;
            c->pos = start;
            if (skip_value(c, t, 0, kv->key)) /* validates every element */
                return -1;
            if (et == KILN_GGUF_STRING) {
                /* index the elements: the vocabulary is looked up by id */
                kv->str_off = kiln_xmalloc(sizeof(uint64_t) * (size_t)(count + 1));
                size_t p = kv->off;
                for (uint64_t k = 0; k < count; k++) {
                    uint64_t len;
                    kv->str_off[k] = p;
                    memcpy(&len, c->p + p, 8);
                    p += 8 + (size_t)len;
                }
            }
        } else {
            kv->off = c->pos;
            if (skip_value(c, t, 0, kv->key))
                return -1;
        }
    }
    return 0;
}

static int parse_tensors(kiln_gguf *g, cursor *c, uint64_t n_t)
{
    g->tensors = kiln_xcalloc((size_t)n_t + 1, sizeof *g->tensors);
    for (uint64_t i = 0; i < n_t; i++) {
        const char *ns;
        uint64_t nl, ne[4] = {1, 1, 1, 1}, off;
        uint32_t nd, t;
        if (rd_str(c, &ns, &nl, "a tensor name"))
            return -1;
        kiln_gguf_tensor *ti = &g->tensors[g->n_tensors];
        ti->name = dup_name(c, ns, nl, "a tensor name");
        if (!ti->name)
            return -1;
        g->n_tensors++;
        if (rd_u32(c, &nd, "a tensor rank"))
            return -1;
        if (nd < 1 || nd > 4) {
            kiln_errf(c->err, "%s: corrupt GGUF file (tensor '%s' has rank %u)", c->path, ti->name, nd);
            return -1;
        }
        for (uint32_t d = 0; d < nd; d++)
            if (rd_u64(c, &ne[d], "a tensor dimension"))
                return -1;
        if (rd_u32(c, &t, "a tensor type") || rd_u64(c, &off, "a tensor offset"))
            return -1;
        int dummy;
        if (kiln_strmap_get(&g->tnames, ti->name, &dummy)) {
            kiln_errf(c->err, "%s: corrupt GGUF file (tensor '%s' appears twice)", c->path, ti->name);
            return -1;
        }
        kiln_strmap_put(&g->tnames, ti->name, g->n_tensors - 1);
        ti->dtype = ggml_dtype(t);
        if (ti->dtype == KILN_DT_INVALID) {
            kiln_errf(c->err, "%s: tensor '%s' has GGML type %s (%u), which kiln does not read "
                      "(supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q6_K)",
                      c->path, ti->name, ggml_type_name(t), t);
            return -1;
        }
        ti->rank = (int)nd;
        /* element count, guarding overflow: no real tensor reaches 2^48 elements */
        uint64_t n = 1;
        for (uint32_t d = 0; d < nd; d++) {
            if (ne[d] > ((uint64_t)1 << 48) || (ne[d] && n > ((uint64_t)1 << 48) / ne[d])) {
                kiln_errf(c->err, "%s: corrupt GGUF file (tensor '%s' has absurd dimensions)", c->path,
                          ti->name);
                return -1;
            }
            n *= ne[d];
            ti->dims[nd - 1 - d] = (int64_t)ne[d];
        }
        const kiln_dtype_info *di = kiln_dtype_get(ti->dtype);
        if (ne[0] % (uint64_t)di->block_elems) {
            kiln_errf(c->err, "%s: corrupt GGUF file (tensor '%s': row of %llu elements is not a whole "
                      "number of %s blocks)", c->path, ti->name, (unsigned long long)ne[0], di->name);
            return -1;
        }
        ti->nbytes = kiln_dtype_storage(ti->dtype, (int64_t)n);
        ti->offset = off; /* relative for now; made absolute below */
    }
    return 0;
}

kiln_gguf *kiln_gguf_open(const char *path, kiln_err *err)
{
    kiln_gguf *g = kiln_xcalloc(1, sizeof *g);
    g->path = kiln_xstrdup(path);
    if (kiln_map_file(path, &g->map, err)) {
        kiln_gguf_close(g);
        return NULL;
    }
    cursor c = {g->map.data, g->map.size, 0, path, err};
    uint32_t magic;
    uint64_t n_t, n_kv;
    if (g->map.size < 4 || memcmp(g->map.data, "GGUF", 4) != 0) {
        kiln_errf(err, "%s: not a GGUF file (bad magic)", path);
        goto fail;
    }
    if (rd_u32(&c, &magic, "the magic") || rd_u32(&c, &g->version, "the version"))
        goto fail;
    if (g->version != 2 && g->version != 3) {
        kiln_errf(err, "%s: GGUF version %u is not supported (kiln reads versions 2 and 3)", path,
                  g->version);
        goto fail;
    }
    if (rd_u64(&c, &n_t, "the tensor count") || rd_u64(&c, &n_kv, "the metadata count"))
        goto fail;
    /* each entry takes at least 12 (metadata) / 24 (tensor) bytes */
    if (n_kv > (g->map.size - c.pos) / 12 || n_t > (g->map.size - c.pos) / 24 || n_t > INT32_MAX) {
        kiln_errf(err, "%s: corrupt GGUF file (%llu tensors and %llu metadata entries cannot fit in "
                  "%zu bytes)", path, (unsigned long long)n_t, (unsigned long long)n_kv, g->map.size);
        goto fail;
    }
    if (parse_kv(g, &c, n_kv) || parse_tensors(g, &c, n_t))
        goto fail;

    uint64_t align = 32;
    int ak = kiln_gguf_find(g, "general.alignment");
    if (ak >= 0) {
        int64_t a = kiln_gguf_get_int(g, "general.alignment", -1);
        if (a <= 0 || (a & (a - 1)) || a > (1 << 20)) {
            kiln_errf(err, "%s: corrupt GGUF file (general.alignment = %lld is not a power of two)",
                      path, (long long)a);
            goto fail;
        }
        align = (uint64_t)a;
    }
    g->data_start = ((uint64_t)c.pos + align - 1) / align * align;
    for (int i = 0; i < g->n_tensors; i++) {
        kiln_gguf_tensor *t = &g->tensors[i];
        if (t->offset % align) {
            kiln_errf(err, "%s: corrupt GGUF file (tensor '%s' offset %llu is not aligned to %llu)",
                      path, t->name, (unsigned long long)t->offset, (unsigned long long)align);
            goto fail;
        }
        if (g->data_start > g->map.size || t->offset > g->map.size - g->data_start ||
            t->nbytes > g->map.size - g->data_start - t->offset) {
            kiln_errf(err, "%s: truncated GGUF file (tensor '%s' needs %zu bytes at offset %llu, "
                      "file has %zu bytes)", path, t->name, t->nbytes,
                      (unsigned long long)(g->data_start + t->offset), g->map.size);
            goto fail;
        }
        t->offset += g->data_start;
    }
    return g;
fail:
    kiln_gguf_close(g);
    return NULL;
}

const char *kiln_gguf_path(const kiln_gguf *g) { return g->path; }

const uint8_t *kiln_gguf_data(const kiln_gguf *g, size_t *size)
{
    if (size)
        *size = g->map.size;
    return g->map.data;
}

/* ---- metadata accessors ---- */

int kiln_gguf_find(const kiln_gguf *g, const char *key)
{
    int i;
    return kiln_strmap_get(&g->keys, key, &i) ? i : -1;
}

kiln_gguf_type kiln_gguf_key_type(const kiln_gguf *g, int key)
{
    return key >= 0 && key < g->n_kv ? g->kv[key].type : (kiln_gguf_type)-1;
}

static int is_int_type(kiln_gguf_type t)
{
    return t == KILN_GGUF_U8 || t == KILN_GGUF_I8 || t == KILN_GGUF_U16 || t == KILN_GGUF_I16 ||
           t == KILN_GGUF_U32 || t == KILN_GGUF_I32 || t == KILN_GGUF_U64 || t == KILN_GGUF_I64 ||
           t == KILN_GGUF_BOOL;
}

static int is_num_type(kiln_gguf_type t)
{
    return is_int_type(t) || t == KILN_GGUF_F32 || t == KILN_GGUF_F64;
}

static int64_t load_int(kiln_gguf_type t, const uint8_t *p)
{
    switch (t) {
    case KILN_GGUF_U8: case KILN_GGUF_BOOL: return p[0];
    case KILN_GGUF_I8: return (int8_t)p[0];
    case KILN_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case KILN_GGUF_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case KILN_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case KILN_GGUF_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case KILN_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); return (int64_t)v; }
    case KILN_GGUF_I64: { int64_t v; memcpy(&v, p, 8); return v; }
    default: return 0;
    }
}

static double load_num(kiln_gguf_type t, const uint8_t *p)
{
    if (t == KILN_GGUF_F32) {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    if (t == KILN_GGUF_F64) {
        double v;
        memcpy(&v, p, 8);
        return v;
    }
    if (t == KILN_GGUF_U64) {
        uint64_t v;
        memcpy(&v, p, 8);
        return (double)v;
    }
    return (double)load_int(t, p);
}

static const gguf_kv *lookup(const kiln_gguf *g, const char *key)
{
    int i = kiln_gguf_find(g, key);
    return i >= 0 ? &g->kv[i] : NULL;
}

int64_t kiln_gguf_get_int(const kiln_gguf *g, const char *key, int64_t def)
{
    const gguf_kv *kv = lookup(g, key);
    if (!kv || !is_int_type(kv->type))
        return def;
    return load_int(kv->type, g->map.data + kv->off);
}

double kiln_gguf_get_float(const kiln_gguf *g, const char *key, double def)
{
    const gguf_kv *kv = lookup(g, key);
    if (!kv || !is_num_type(kv->type))
        return def;
    return load_num(kv->type, g->map.data + kv->off);
}

const char *kiln_gguf_get_str(const kiln_gguf *g, const char *key, size_t *len)
{
    const gguf_kv *kv = lookup(g, key);
    if (!kv || kv->type != KILN_GGUF_STRING)
        return NULL;
    uint64_t n;
    memcpy(&n, g->map.data + kv->off, 8);
    if (len)
        *len = (size_t)n;
    return (const char *)g->map.data + kv->off + 8;
}

int64_t kiln_gguf_arr_len(const kiln_gguf *g, const char *key)
{
    const gguf_kv *kv = lookup(g, key);
    return kv && kv->type == KILN_GGUF_ARRAY ? kv->count : -1;
}

kiln_gguf_type kiln_gguf_arr_type(const kiln_gguf *g, const char *key)
{
    const gguf_kv *kv = lookup(g, key);
    return kv && kv->type == KILN_GGUF_ARRAY ? kv->etype : (kiln_gguf_type)-1;
}

const char *kiln_gguf_arr_str(const kiln_gguf *g, const char *key, int64_t i, size_t *len)
{
    const gguf_kv *kv = lookup(g, key);
    if (!kv || kv->type != KILN_GGUF_ARRAY || kv->etype != KILN_GGUF_STRING || i < 0 || i >= kv->count)
        return NULL;
    uint64_t n;
    memcpy(&n, g->map.data + kv->str_off[i], 8);
    if (len)
        *len = (size_t)n;
    return (const char *)g->map.data + kv->str_off[i] + 8;
}

double kiln_gguf_arr_num(const kiln_gguf *g, const char *key, int64_t i)
{
    const gguf_kv *kv = lookup(g, key);
    if (!kv || kv->type != KILN_GGUF_ARRAY || !is_num_type(kv->etype) || i < 0 || i >= kv->count)
        return NAN;
    return load_num(kv->etype, g->map.data + kv->off + (size_t)i * scalar_size(kv->etype));
}

int64_t kiln_gguf_arr_int(const kiln_gguf *g, const char *key, int64_t i)
{
    const gguf_kv *kv = lookup(g, key);
    if (!kv || kv->type != KILN_GGUF_ARRAY || !is_int_type(kv->etype) || i < 0 || i >= kv->count)
        return 0;
    return load_int(kv->etype, g->map.data + kv->off + (size_t)i * scalar_size(kv->etype));
}

/* ---- tensors ---- */

int kiln_gguf_tensor_count(const kiln_gguf *g) { return g->n_tensors; }

const kiln_gguf_tensor *kiln_gguf_tensor_at(const kiln_gguf *g, int i)
{
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const kiln_gguf_tensor *kiln_gguf_tensor_find(const kiln_gguf *g, const char *name)
{
    int i;
    return kiln_strmap_get(&g->tnames, name, &i) ? &g->tensors[i] : NULL;
}

/* ---- model import -------------------------------------------------------
 * GGUF tensor names are kiln's canonical LM names, so the tensor source is a
 * plain lookup. llama.cpp's converter permutes the Q/K rows of llama-family
 * checkpoints for its interleaved RoPE; qwen2 keeps the halves layout. */

typedef struct gguf_src {
    const kiln_gguf *g;
    char *abspath;
} gguf_src;

static int gguf_find(void *ctx, const char *name, kiln_lm_tensor *t, kiln_err *err)
{
    (void)err;
    const gguf_src *s = ctx;
    snprintf(t->name, sizeof t->name, "%s", name);
    const kiln_gguf_tensor *gt = kiln_gguf_tensor_find(s->g, name);
    if (!gt)
        return 0;
    t->path = s->abspath;
    t->offset = gt->offset;
    t->dtype = gt->dtype;
    t->rank = gt->rank;
    for (int i = 0; i < gt->rank; i++)
        t->dims[i] = gt->dims[i];
    return 1;
}

static double arch_float(const kiln_gguf *g, const char *arch, const char *key, double def)
{
    char k[256];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return kiln_gguf_get_float(g, k, def);
}

/* Keys that must be plain integers: per-layer arrays (some hybrid models
 * store head counts that way) are not supported. */
static int arch_req_int(const kiln_gguf *g, const char *arch, const char *key, int64_t def,
                        int64_t *out, kiln_err *err)
{
    char k[256];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int i = kiln_gguf_find(g, k);
    if (i < 0) {
        if (def < 0)
            return kiln_errf(err, "%s: missing metadata key '%s'", g->path, k);
        *out = def;
        return 0;
    }
    if (!is_int_type(kiln_gguf_key_type(g, i)))
        return kiln_errf(err, "%s: metadata key '%s' is a %s, expected an integer", g->path, k,
                         type_name(kiln_gguf_key_type(g, i)));
    *out = kiln_gguf_get_int(g, k, 0);
    if (*out < 0 || *out > INT32_MAX)
        return kiln_errf(err, "%s: metadata key '%s' = %lld is out of range", g->path, k,
                         (long long)*out);
    return 0;
}

kiln_graph *kiln_import_gguf(const char *path, kiln_err *err)
{
    kiln_gguf *g = kiln_gguf_open(path, err);
    if (!g)
        return NULL;
    kiln_graph *graph = NULL;
    float *freq = NULL;
    char arch[64];
    size_t al;
    const char *a = kiln_gguf_get_str(g, "general.architecture", &al);
    if (!a) {
        kiln_errf(err, "%s: missing metadata key 'general.architecture'", path);
        goto out;
    }
    snprintf(arch, sizeof arch, "%.*s", (int)(al < 63 ? al : 63), a);
    int interleaved;
    if (strcmp(arch, "llama") == 0) {
        interleaved = 1;
    } else if (strcmp(arch, "qwen2") == 0) {
        interleaved = 0;
    } else {
        kiln_errf(err, "%s: GGUF architecture '%s' is not supported (supported: llama, qwen2)", path,
                  arch);
        goto out;
    }
    int64_t n_layer, dim, n_head, n_kv, ffn, n_ctx, key_len, rot, n_exp, n_exp_used, window;
    if (arch_req_int(g, arch, "block_count", -1, &n_layer, err) ||
        arch_req_int(g, arch, "embedding_length", -1, &dim, err) ||
        arch_req_int(g, arch, "attention.head_count", -1, &n_head, err) ||
        arch_req_int(g, arch, "attention.head_count_kv", n_head, &n_kv, err) ||
        arch_req_int(g, arch, "feed_forward_length", -1, &ffn, err) ||
        arch_req_int(g, arch, "context_length", 4096, &n_ctx, err) ||
        arch_req_int(g, arch, "attention.key_length", n_head ? dim / n_head : 0, &key_len, err) ||
        arch_req_int(g, arch, "rope.dimension_count", key_len, &rot, err) ||
        arch_req_int(g, arch, "expert_count", 0, &n_exp, err) ||
        arch_req_int(g, arch, "expert_used_count", 0, &n_exp_used, err) ||
        arch_req_int(g, arch, "attention.sliding_window", 0, &window, err))
        goto out;
    const kiln_gguf_tensor *emb = kiln_gguf_tensor_find(g, "token_embd.weight");
    if (!emb) {
        kiln_errf(err, "%s: missing tensor 'token_embd.weight'", path);
        goto out;
    }
    kiln_lm_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    c.kind = KILN_LM_LLAMA;
    c.n_layer = (int)n_layer;
    c.dim = (int)dim;
    c.n_head = (int)n_head;
    c.n_kv_head = (int)n_kv;
    c.head_dim = (int)key_len;
    c.ffn_dim = (int)ffn;
    c.vocab = emb->rank == 2 && emb->dims[0] <= INT32_MAX ? (int)emb->dims[0] : 0;
    c.n_ctx = (int)n_ctx;
    c.norm_eps = arch_float(g, arch, "attention.layer_norm_rms_epsilon", 1e-5);
    c.act = KILN_LM_ACT_SILU;
    c.gated = 1;
    c.interleaved = interleaved;
    c.rope_dim = (int)rot;
    c.rope_base = arch_float(g, arch, "rope.freq_base", 10000.0);
    c.window = (int)window;
    c.tied = kiln_gguf_tensor_find(g, "output.weight") == NULL;
    c.n_expert = (int)n_exp;
    c.n_expert_used = (int)n_exp_used;
    c.moe_norm = 1;
    char k[256];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    size_t sl;
    const char *st = kiln_gguf_get_str(g, k, &sl);
    if (st && !(sl == 4 && memcmp(st, "none", 4) == 0)) {
        if (sl == 6 && memcmp(st, "linear", 6) == 0) {
            c.rope_scaling = KILN_LM_ROPE_LINEAR;
            c.rope_factor = arch_float(g, arch, "rope.scaling.factor", 1.0);
        } else {
            kiln_errf(err, "%s: rope scaling type '%.*s' is not supported (none, linear)", path,
                      (int)sl, st);
            goto out;
        }
    }
    /* Llama 3.1 GGUFs carry their frequency scaling as per-frequency divisors */
    const kiln_gguf_tensor *rf = kiln_gguf_tensor_find(g, "rope_freqs.weight");
    if (rf) {
        if (rf->dtype != KILN_F32 || rf->rank != 1 || rf->dims[0] != (rot > 0 ? rot : key_len) / 2) {
            kiln_errf(err, "%s: tensor 'rope_freqs.weight' should be f32[%lld]", path,
                      (long long)((rot > 0 ? rot : key_len) / 2));
            goto out;
        }
        freq = kiln_xmalloc(sizeof(float) * (size_t)(rf->dims[0] + 1));
        memcpy(freq, g->map.data + rf->offset, sizeof(float) * (size_t)rf->dims[0]);
        c.rope_freq_factors = freq;
    }
    gguf_src src = {g, realpath(path, NULL)};
    if (!src.abspath)
        src.abspath = kiln_xstrdup(path);
    kiln_lm_source ls = {path, &src, gguf_find};
    graph = kiln_lm_build(&c, &ls, err);
    free(src.abspath);
out:
    free(freq);
    kiln_gguf_close(g);
    return graph;
}
