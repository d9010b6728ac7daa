/* op_util.h - helpers shared by the op families' inference and reference
 * kernels (ops_*.c). Internal to ir/. */
#ifndef KILN_OP_UTIL_H
#define KILN_OP_UTIL_H

#include "kiln_ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Error helper inside infer/eval: `return OPERR(c, "fmt", ...)`. */
#define OPERR(c, ...) kiln_errf((c)->err, __VA_ARGS__)

/* Normalizes a possibly negative axis against rank; error if out of range. */
int kiln_axis(kiln_err *err, int64_t axis, int rank, int *out);

kiln_type kiln_type_make(kiln_dtype dt, int rank, const kiln_dim *dims);
/* Numpy-style multidirectional broadcast of the dims of a and b into out
 * (dtype taken from a). Unknown rank in either gives unknown rank. */
int kiln_bcast_type(kiln_infer_ctx *c, const kiln_type *a, const kiln_type *b, kiln_type *out);

/* Known contents of input i as integers (from a known value, or from
 * symbolic contents whose entries are all static). Returns the count, -1 if
 * unknown, -2 if longer than max. */
int kiln_infer_ints(const kiln_infer_ctx *c, int i, int64_t *vals, int max);
/* Known contents of input i as dims (static or symbolic); -1 if unknown. */
int kiln_infer_dims(const kiln_infer_ctx *c, int i, kiln_dim *dims, int max);
/* Records the known contents of output o as dims (copied). */
void kiln_infer_set_sym(kiln_infer_ctx *c, int o, const kiln_dim *d, int n);
/* Input i is a known scalar/1-element value; returns 1 and sets *v. */
int kiln_infer_scalar_f64(const kiln_infer_ctx *c, int i, double *v);

/* Row-major strides (in elements). */
void kiln_strides(const int64_t *dims, int rank, int64_t *st);
/* Strides of `in` broadcast to an output of out_rank dims (right-aligned;
 * size-1 and missing dims get stride 0). */
void kiln_bcast_strides(const kiln_tensor *in, int out_rank, const int64_t *out_dims,
                        int64_t *st);
/* Advances a multi-index over dims; updates up to 4 offset accumulators with
 * their strides. Returns 0 when the iteration wraps around. */
int kiln_next_index(int64_t *idx, const int64_t *dims, int rank, int nacc, int64_t *off,
                    int64_t st[][KILN_MAX_RANK]);

/* Copies the shape of tensor t into a type's dims. */
void kiln_tensor_type(const kiln_tensor *t, kiln_type *ty);

int kiln_dtype_is_float(kiln_dtype dt);
int kiln_dtype_is_intlike(kiln_dtype dt); /* integer or bool */

/* Checks attribute names, kinds, duplicates and required ones against the
 * op's schema; label names the node in the message. */
int kiln_check_attrs(const kiln_op_def *op, const kiln_attr *attrs, int n, const char *label,
                     kiln_err *err);

/* Attribute checks common to many ops. */
int kiln_require_float(kiln_infer_ctx *c, int i);

/* ---- known contents of shape-like vectors (ops_shape.c, ops_misc.c) ----
 * A value's symval holds dim codes: sizes >= 0, symbolic dims, KILN_DIM_ANY
 * for an unknown entry. Shape vectors also carry literal negatives (-1 in a
 * Reshape target, negative axes or starts), which have no dim code, so they
 * are stored as codes just above KILN_DIM_ANY that no symbol table reaches.
 * kiln_infer_ints decodes them; kiln_infer_dims turns them into KILN_DIM_ANY. */
#define KILN_SV_LIT_SPAN ((int64_t)1 << 40)
/* Code for literal integer v; KILN_DIM_ANY if v < -KILN_SV_LIT_SPAN. */
kiln_dim kiln_sv_lit(int64_t v);
/* 1 and *v set if code d is a literal integer (a static size or an encoded
 * negative); 0 for symbolic and unknown entries. */
int kiln_sv_int(kiln_dim d, int64_t *v);
/* 1 if d is a dim usable in kiln_dim_* arithmetic (static or symbolic). */
int kiln_sv_is_dim(kiln_dim d);
/* Known contents of input i as codes (from its value when integer, or from
 * its recorded symval). Returns the count, -1 if unknown, -2 if over max. */
int kiln_infer_vec(const kiln_infer_ctx *c, int i, kiln_dim *d, int max);
/* Known contents of input i as exact integers (all entries literal). Values
 * come from the tensor itself when known, so INT64_MIN/MAX survive. */
int kiln_infer_ivec(const kiln_infer_ctx *c, int i, int64_t *v, int max);

/* ---- element copies for data-movement kernels ----
 * Work for every non-block dtype: byte-sized elements by memcpy, packed
 * i4/u4 through the _i64 forms. */
void kiln_copy_elem(kiln_tensor *dst, int64_t di, const kiln_tensor *src, int64_t si);
/* n consecutive elements. */
void kiln_copy_elems(kiln_tensor *dst, int64_t di, const kiln_tensor *src, int64_t si, int64_t n);
/* Error unless input i is present and not block-quantized. */
int kiln_require_unquant(kiln_infer_ctx *c, int i);
/* Error unless input i is a present integer tensor (int32/int64 ...). */
int kiln_require_int(kiln_infer_ctx *c, int i, const char *what);

#endif
