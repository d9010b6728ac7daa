/* kiln_gguf.h - reader for GGUF files (llama.cpp's model format).
 *
 * kiln_gguf_open maps the file and validates everything up front (header,
 * every metadata entry, the tensor table and that each tensor's data lies
 * inside the file), so the accessors below never fail and never read out of
 * bounds. Strings returned point into the mapping: valid until close. */
#ifndef KILN_GGUF_H
#define KILN_GGUF_H

#include "kiln_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_gguf kiln_gguf; /* opaque; owns its mmap of the file */

/* Validates header, metadata, tensor table; clean error on truncation/corruption. */
kiln_gguf *kiln_gguf_open(const char *path, kiln_err *err);
void kiln_gguf_close(kiln_gguf *g);
const char *kiln_gguf_path(const kiln_gguf *g);

/* ---- metadata ---- */

typedef enum {
    KILN_GGUF_U8,
    KILN_GGUF_I8,
    KILN_GGUF_U16,
    KILN_GGUF_I16,
    KILN_GGUF_U32,
    KILN_GGUF_I32,
    KILN_GGUF_F32,
    KILN_GGUF_BOOL,
    KILN_GGUF_STRING,
    KILN_GGUF_ARRAY,
    KILN_GGUF_U64,
    KILN_GGUF_I64,
    KILN_GGUF_F64
} kiln_gguf_type; /* GGUF's own numbering 0..12 */

int kiln_gguf_find(const kiln_gguf *g, const char *key); /* key index or -1 */
kiln_gguf_type kiln_gguf_key_type(const kiln_gguf *g, int key);
/* Any integer/bool type; def if absent or not an integer. */
int64_t kiln_gguf_get_int(const kiln_gguf *g, const char *key, int64_t def);
/* Any numeric type; def if absent or not numeric. */
double kiln_gguf_get_float(const kiln_gguf *g, const char *key, double def);
/* NULL if absent/not a string; NOT NUL-terminated in general: use len. */
const char *kiln_gguf_get_str(const kiln_gguf *g, const char *key, size_t *len);

/* ---- arrays (element lookups are O(1): offsets are indexed at open) ---- */

int64_t kiln_gguf_arr_len(const kiln_gguf *g, const char *key); /* -1 if absent/not an array */
kiln_gguf_type kiln_gguf_arr_type(const kiln_gguf *g, const char *key);
/* NULL if absent, out of range or not a string array. */
const char *kiln_gguf_arr_str(const kiln_gguf *g, const char *key, int64_t i, size_t *len);
/* Numeric element (NaN if absent, out of range or not numeric). */
double kiln_gguf_arr_num(const kiln_gguf *g, const char *key, int64_t i);
/* Integer/bool element (0 if absent, out of range or not an integer). */
int64_t kiln_gguf_arr_int(const kiln_gguf *g, const char *key, int64_t i);

/* ---- tensors ---- */

typedef struct kiln_gguf_tensor {
    const char *name; /* NUL-terminated copy owned by the reader */
    int rank;
    int64_t dims[4]; /* row-major (numpy) order, i.e. GGUF's ne[] reversed */
    kiln_dtype dtype; /* F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q6_K */
    uint64_t offset;  /* absolute byte offset in the file */
    size_t nbytes;
} kiln_gguf_tensor;

int kiln_gguf_tensor_count(const kiln_gguf *g);
const kiln_gguf_tensor *kiln_gguf_tensor_at(const kiln_gguf *g, int i);
const kiln_gguf_tensor *kiln_gguf_tensor_find(const kiln_gguf *g, const char *name);

/* The file's bytes (for reading small tensors such as rope factors). */
const uint8_t *kiln_gguf_data(const kiln_gguf *g, size_t *size);

#ifdef __cplusplus
}
#endif
#endif
