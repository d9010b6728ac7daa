/* kiln_common.h - leaf utilities shared by every stage, the runtime included.
 *
 * Only libc. Holds what the compiler and the deployed runtime must agree on
 * bit for bit: element types and their storage, float conversions, the
 * block-quantized formats, .npy files, error messages.
 */
#ifndef KILN_COMMON_H
#define KILN_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------ */

/* Every fallible function takes a kiln_err* (may be NULL) and returns
 * nonzero on failure after writing one line into it. */
typedef struct kiln_err {
    char msg[1024];
} kiln_err;

/* Formats into e->msg (if e) and returns -1, so callers can `return kiln_errf(...)`. */
int kiln_errf(kiln_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends context ("file.onnx: ") to an existing message. Returns -1. */
int kiln_err_prefix(kiln_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- element types ----------------------------------------------------- */

typedef enum kiln_dtype {
    KILN_DT_INVALID = 0,
    KILN_F32,
    KILN_F16,
    KILN_BF16,
    KILN_F64,
    KILN_F8E4M3, /* e4m3fn: no infinities, max 448 */
    KILN_F8E5M2,
    KILN_I8,
    KILN_U8,
    KILN_I16,
    KILN_U16,
    KILN_I32,
    KILN_U32,
    KILN_I64,
    KILN_U64,
    KILN_BOOL,
    KILN_I4, /* packed two per byte, low nibble first */
    KILN_U4,
    KILN_Q4_0, /* GGML block formats: blocks run along the last dimension */
    KILN_Q4_1,
    KILN_Q8_0,
    KILN_Q4_K,
    KILN_Q6_K,
    KILN_DT_COUNT
} kiln_dtype;

typedef struct kiln_dtype_info {
    const char *name;   /* text-form name: "f32", "q4_1" */
    int block_elems;    /* elements per storage block (1 for plain types) */
    int block_bytes;    /* bytes per storage block */
    int is_float;       /* computes as floating point (incl. quantized) */
    int is_int;         /* signed or unsigned integer */
    int is_signed;
    int is_quant;       /* GGML block format */
} kiln_dtype_info;

const kiln_dtype_info *kiln_dtype_get(kiln_dtype dt);
const char *kiln_dtype_name(kiln_dtype dt);
kiln_dtype kiln_dtype_from_name(const char *name); /* KILN_DT_INVALID if unknown */
/* Storage bytes for n elements; blocks must be whole (caller checks). */
size_t kiln_dtype_storage(kiln_dtype dt, int64_t n);

/* ---- float conversions -------------------------------------------------- */

float kiln_f16_to_f32(uint16_t h);
uint16_t kiln_f32_to_f16(float f); /* round to nearest even */
float kiln_bf16_to_f32(uint16_t h);
uint16_t kiln_f32_to_bf16(float f); /* round to nearest even */
float kiln_f8e4m3_to_f32(uint8_t v);
uint8_t kiln_f32_to_f8e4m3(float f, int saturate);
float kiln_f8e5m2_to_f32(uint8_t v);
uint8_t kiln_f32_to_f8e5m2(float f, int saturate);

/* Element i of a buffer as double / written from double (plain and packed
 * types; not block formats). Integers convert like C casts, bool as !=0. */
double kiln_load_f64(kiln_dtype dt, const void *data, int64_t i);
void kiln_store_f64(kiln_dtype dt, void *data, int64_t i, double v);
/* Integer element exactly (no rounding through double). */
int64_t kiln_load_i64(kiln_dtype dt, const void *data, int64_t i);
void kiln_store_i64(kiln_dtype dt, void *data, int64_t i, int64_t v);

/* ---- block-quantized formats (GGML layouts) ----------------------------- */

/* Dequantizes n elements (a multiple of the block size) starting at block 0
 * of src into dst. */
void kiln_dequant_row(kiln_dtype dt, const void *src, float *dst, int64_t n);
/* Quantizes n floats into blocks (reference quality, round to nearest);
 * supported for Q4_0, Q4_1, Q8_0. Returns -1 for other types. */
int kiln_quant_row(kiln_dtype dt, const float *src, void *dst, int64_t n);

/* ---- .npy files ----------------------------------------------------------- */

#define KILN_NPY_MAX_RANK 8

typedef struct kiln_npy {
    kiln_dtype dtype;
    int rank;
    int64_t dims[KILN_NPY_MAX_RANK];
    void *data; /* malloc'd, owned by the struct; free with kiln_npy_free */
    size_t nbytes;
} kiln_npy;

int kiln_npy_read(const char *path, kiln_npy *out, kiln_err *err);
/* bf16/f8/i4 are widened to f32/i8 on write since numpy lacks them. */
int kiln_npy_write(const char *path, kiln_dtype dt, int rank, const int64_t *dims,
                   const void *data, kiln_err *err);
void kiln_npy_free(kiln_npy *a);

/* ---- small containers ----------------------------------------------------- */

/* Growable string builder. */
typedef struct kiln_sb {
    char *s;
    size_t len, cap;
} kiln_sb;
void kiln_sb_printf(kiln_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kiln_sb_vprintf(kiln_sb *b, const char *fmt, va_list ap);
void kiln_sb_put(kiln_sb *b, const char *s, size_t n);
void kiln_sb_free(kiln_sb *b);

/* Open-addressing map from string to int; keys are copied. */
typedef struct kiln_strmap {
    char **keys;
    int *vals;
    size_t cap, count;
} kiln_strmap;
int kiln_strmap_get(const kiln_strmap *m, const char *key, int *val); /* 1 if found */
void kiln_strmap_put(kiln_strmap *m, const char *key, int val);
void kiln_strmap_free(kiln_strmap *m);

/* Checked allocation: aborts with a message on out-of-memory, since no
 * caller can do anything useful then. */
void *kiln_xmalloc(size_t n);
void *kiln_xcalloc(size_t n, size_t sz);
void *kiln_xrealloc(void *p, size_t n);
char *kiln_xstrdup(const char *s);

/* Reads a whole file into a malloc'd buffer (NUL-terminated for text use). */
int kiln_read_file(const char *path, char **data, size_t *len, kiln_err *err);

/* Read-only mapping of a whole file. */
typedef struct kiln_map {
    const uint8_t *data;
    size_t size;
} kiln_map;
int kiln_map_file(const char *path, kiln_map *m, kiln_err *err);
void kiln_unmap_file(kiln_map *m);

#ifdef __cplusplus
}
#endif
#endif
