/* onnx_internal.h - pieces of the ONNX importer shared between its files.
 * Internal to frontend/onnx. */
#ifndef KILN_ONNX_INTERNAL_H
#define KILN_ONNX_INTERNAL_H

#include "kiln_onnx.h"
#include "onnx.pb-c.h"

#include <stdint.h>

/* ---- protobuf wire format (onnx_wire.c) ------------------------------------
 * Only what splitting a model needs: walking the fields of one message. */

enum { ONNX_WT_VARINT = 0, ONNX_WT_I64 = 1, ONNX_WT_LEN = 2, ONNX_WT_I32 = 5 };

typedef struct onnx_wfield {
    uint32_t num;
    int type;
    uint64_t v;            /* VARINT, I64, I32 value */
    const uint8_t *start;  /* first byte of the key */
    const uint8_t *data;   /* LEN: first byte of the payload */
    uint64_t len;          /* LEN: payload bytes */
    const uint8_t *next;   /* first byte after the field */
} onnx_wfield;

/* Reads the field at *p (below end) and advances *p past it. Returns 1 for a
 * field, 0 at the end, -1 when the bytes are not valid wire format. */
int onnx_wire_next(const uint8_t **p, const uint8_t *end, onnx_wfield *f);

/* A model split so that protobuf-c never sees the initializer payloads:
 * `model` is the ModelProto without its graph, `graph` the GraphProto without
 * its initializers, and each initializer is its TensorProto without raw_data
 * plus where raw_data lies in the file. All buffers are malloc'd copies of
 * the (small) metadata only. */
typedef struct onnx_init_ref {
    uint8_t *meta;
    size_t meta_len;
    int has_raw;
    uint64_t raw_off, raw_len; /* byte range of raw_data inside the file */
} onnx_init_ref;

typedef struct onnx_split {
    uint8_t *model;
    size_t model_len;
    uint8_t *graph;
    size_t graph_len;
    int has_graph;
    onnx_init_ref *inits;
    int n_inits;
} onnx_split;

int onnx_split_model(const uint8_t *data, size_t size, onnx_split *s, kiln_err *err);
void onnx_split_free(onnx_split *s);

/* ---- tensors (onnx_tensor.c) ---------------------------------------------- */

/* Name of an ONNX data type for messages ("FLOAT8E4M3FNUZ", "type 99"). */
const char *onnx_dtype_name(int onnx_type, char *buf, size_t len);

/* Element type and shape of a TensorProto. *unsup is set when the element
 * type or rank is one kiln lacks. `what` names the tensor in messages. */
int onnx_tensor_type(const Onnx__TensorProto *t, const char *what, kiln_type *ty, int *unsup,
                     kiln_err *err);

/* Contents of a TensorProto that carries its data inline (raw_data or the
 * typed fields) as a malloc'd buffer in kiln storage layout. */
int onnx_tensor_inline_data(const Onnx__TensorProto *t, const kiln_type *ty, const char *what,
                            void **data, size_t *nbytes, kiln_err *err);

/* ---- import context (onnx_import.c, onnx_ops.c) ---------------------------- */

typedef struct onnx_ctx {
    const char *path; /* the .onnx file, for messages and weight references */
    char *dir;        /* its directory, for external data */
    kiln_graph *g;
    int64_t opset;    /* default domain */
    int64_t ms_opset; /* com.microsoft, 0 when not imported */
    int unsupported;  /* the current error is a missing feature */
    kiln_err *err;
    int model_file;   /* index of the .onnx in g->files, -1 until needed */
} onnx_ctx;

/* Converts one node into kiln nodes/values in c->g. */
int onnx_convert_node(onnx_ctx *c, const Onnx__NodeProto *n, const char *label);

/* Adds a Constant node's value (or any attribute tensor) as an inline const
 * named `name`. */
int onnx_add_tensor_const(onnx_ctx *c, const Onnx__TensorProto *t, const char *name,
                          const char *what);

#endif
