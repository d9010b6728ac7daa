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
    /* Later additions go here: artifacts record these numbers. */
    KILN_I2, /* packed four per byte, lowest bits first */
    KILN_U2,
    KILN_F4E2M1,     /* packed two per byte like i4; values up to 6, no inf/NaN */
    KILN_F8E4M3FNUZ, /* no inf, no -0, NaN is 0x80, max 240 */
    KILN_F8E5M2FNUZ, /* no inf, no -0, NaN is 0x80, max 57344 */
    KILN_F8E8M0,     /* exponent only: 2^(v-127), NaN is 0xff (MX scales) */
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
/* FNUZ float8: out-of-range values and infinities become +-max when
 * saturating, else NaN (0x80); -0 becomes 0. */
float kiln_f8e4m3fnuz_to_f32(uint8_t v);
uint8_t kiln_f32_to_f8e4m3fnuz(float f, int saturate);
float kiln_f8e5m2fnuz_to_f32(uint8_t v);
uint8_t kiln_f32_to_f8e5m2fnuz(float f, int saturate);
/* 4-bit float, the code in the low nibble. Always saturates to +-6 (the
 * format has no inf); NaN becomes -0 and -NaN 0, as in ml_dtypes (ONNX's
 * reference). */
float kiln_f4e2m1_to_f32(uint8_t v);
uint8_t kiln_f32_to_f4e2m1(float f);

/* Rounding of a float to a power of two (f8e8m0, ONNX Cast's round_mode). */
enum { KILN_ROUND_UP, KILN_ROUND_DOWN, KILN_ROUND_NEAREST };
float kiln_f8e8m0_to_f32(uint8_t v);
/* Rounds f > 0 up or down to a power of two, or to the nearer one (ties
 * up). Saturating, +inf and values past 2^127 give 2^127, and zero,
 * negatives and values below 2^-127 give 2^-127; otherwise all of those
 * are NaN (0xff). NaN stays NaN. */
uint8_t kiln_f32_to_f8e8m0(float f, int saturate, int round_mode);

/* Element i of a buffer as double / written from double (plain and packed
 * types; not block formats). Stores round to nearest, saturate where the
 * type has no infinity (float8, f4e2m1, f8e8m0) and clamp for integers 8
 * bits and wider; 2- and 4-bit integers truncate and keep the low bits (as
 * ONNX's reference and kiln's code generator do). Bool is v != 0. */
double kiln_load_f64(kiln_dtype dt, const void *data, int64_t i);
void kiln_store_f64(kiln_dtype dt, void *data, int64_t i, double v);
/* Element i written from v (a float, or an integer exact in a double) with
 * ONNX Cast's rules: float8 targets honour `saturate`, f8e8m0 also
 * `round_mode`; integer targets truncate toward zero; bool is v != 0. */
void kiln_store_cast(kiln_dtype dt, void *data, int64_t i, double v, int saturate,
                     int round_mode);
/* Copies element si of src to element di of dst, both of type dt, bit for
 * bit: packed 2- and 4-bit types (f4e2m1 included) need this rather than a
 * round trip through the _i64 forms. Not for block formats. */
void kiln_elem_copy(kiln_dtype dt, void *dst, int64_t di, const void *src, int64_t si);
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
/* Types numpy lacks are widened on write: bf16 and the 8- and 4-bit floats
 * to f32, 2- and 4-bit integers to i8/u8. */
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
