/* onnx_wire.c - splits a mapped .onnx file at the protobuf wire level so
 * the initializer payloads are located, not decoded.
 *
 * protobuf-c copies every bytes field it unpacks, so unpacking a whole
 * ModelProto would hold the weights twice (mapping + copy). Instead the
 * three message levels that lead to the payloads (ModelProto.graph,
 * GraphProto.initializer, TensorProto.raw_data) are walked here and
 * re-emitted without them; protobuf-c then decodes only the metadata. */
#include "onnx_internal.h"

#include <stdlib.h>
#include <string.h>

/* Field numbers in onnx.proto. */
enum {
    MODEL_GRAPH = 7,
    GRAPH_INITIALIZER = 5,
    TENSOR_RAW_DATA = 9,
};

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1; /* more than 10 bytes */
}

int onnx_wire_next(const uint8_t **p, const uint8_t *end, onnx_wfield *f)
{
    if (*p >= end)
        return 0;
    memset(f, 0, sizeof *f);
    f->start = *p;
    uint64_t key;
    if (read_varint(p, end, &key))
        return -1;
    f->num = (uint32_t)(key >> 3);
    f->type = (int)(key & 7);
    if (f->num == 0 || key >> 3 > 0x1fffffff)
        return -1;
    switch (f->type) {
    case ONNX_WT_VARINT:
        if (read_varint(p, end, &f->v))
            return -1;
        break;
    case ONNX_WT_I64:
        if (end - *p < 8)
            return -1;
        memcpy(&f->v, *p, 8);
        *p += 8;
        break;
    case ONNX_WT_I32:
        if (end - *p < 4)
            return -1;
        uint32_t w;
        memcpy(&w, *p, 4);
        f->v = w;
        *p += 4;
        break;
    case ONNX_WT_LEN:
        if (read_varint(p, end, &f->len) || f->len > (uint64_t)(end - *p))
            return -1;
        f->data = *p;
        *p += f->len;
        break;
    default: /* groups (3, 4) are not used by onnx.proto; 6, 7 are invalid */
        return -1;
    }
    f->next = *p;
    return 1;
}

/* Growable byte buffer for the re-emitted messages. */
typedef struct bbuf {
    uint8_t *d;
    size_t len, cap;
} bbuf;

static void bb_put(bbuf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->d = kiln_xrealloc(b->d, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->d + b->len, src, n);
    b->len += n;
}

static void bb_field(bbuf *b, const onnx_wfield *f)
{
    bb_put(b, f->start, (size_t)(f->next - f->start));
}

static int malformed(kiln_err *err, const char *what, const uint8_t *at, const uint8_t *base)
{
    return kiln_errf(err, "malformed protobuf in %s at byte %zu (truncated or not an ONNX model)",
                     what, (size_t)(at - base));
}

/* One initializer: its TensorProto without raw_data, and raw_data's place. */
static int split_tensor(const uint8_t *base, const onnx_wfield *tf, onnx_init_ref *r,
                        kiln_err *err)
{
    bbuf b = {0};
    const uint8_t *p = tf->data, *end = tf->data + tf->len;
    onnx_wfield f;
    int rc;
    while ((rc = onnx_wire_next(&p, end, &f)) == 1) {
        if (f.num == TENSOR_RAW_DATA && f.type == ONNX_WT_LEN) {
            r->has_raw = 1; /* the last occurrence wins, as in protobuf */
            r->raw_off = (uint64_t)(f.data - base);
            r->raw_len = f.len;
        } else {
            bb_field(&b, &f);
        }
    }
    if (rc < 0) {
        free(b.d);
        return malformed(err, "an initializer", p, base);
    }
    r->meta = b.d ? b.d : kiln_xmalloc(1);
    r->meta_len = b.len;
    return 0;
}

static int split_graph(const uint8_t *base, const onnx_wfield *gf, bbuf *gb, onnx_split *s,
                       int *cap, kiln_err *err)
{
    const uint8_t *p = gf->data, *end = gf->data + gf->len;
    onnx_wfield f;
    int rc;
    while ((rc = onnx_wire_next(&p, end, &f)) == 1) {
        if (f.num == GRAPH_INITIALIZER && f.type == ONNX_WT_LEN) {
            if (s->n_inits == *cap) {
                *cap = *cap ? *cap * 2 : 64;
                s->inits = kiln_xrealloc(s->inits, sizeof *s->inits * (size_t)*cap);
            }
            onnx_init_ref *r = &s->inits[s->n_inits];
            memset(r, 0, sizeof *r);
            if (split_tensor(base, &f, r, err))
                return -1;
            s->n_inits++;
        } else {
            bb_field(gb, &f);
        }
    }
    if (rc < 0)
        return malformed(err, "the graph", p, base);
    return 0;
}

int onnx_split_model(const uint8_t *data, size_t size, onnx_split *s, kiln_err *err)
{
    memset(s, 0, sizeof *s);
    bbuf mb = {0}, gb = {0};
    int cap = 0;
    const uint8_t *p = data, *end = data + size;
    onnx_wfield f;
    int rc;
    while ((rc = onnx_wire_next(&p, end, &f)) == 1) {
        if (f.num == MODEL_GRAPH && f.type == ONNX_WT_LEN) {
            /* a message field may come in several pieces; they merge */
            s->has_graph = 1;
            if (split_graph(data, &f, &gb, s, &cap, err))
                goto fail;
        } else {
            bb_field(&mb, &f);
        }
    }
    if (rc < 0) {
        malformed(err, "the model", p, data);
        goto fail;
    }
    s->model = mb.d ? mb.d : kiln_xmalloc(1);
    s->model_len = mb.len;
    s->graph = gb.d ? gb.d : kiln_xmalloc(1);
    s->graph_len = gb.len;
    return 0;
fail:
    free(mb.d);
    free(gb.d);
    onnx_split_free(s);
    return -1;
}

void onnx_split_free(onnx_split *s)
{
    free(s->model);
    free(s->graph);
    for (int i = 0; i < s->n_inits; i++)
        free(s->inits[i].meta);
    free(s->inits);
    memset(s, 0, sizeof *s);
}
