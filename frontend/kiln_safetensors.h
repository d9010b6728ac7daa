/* kiln_safetensors.h - reader for safetensors files, single or sharded.
 *
 * A safetensors file is {u64 header length, JSON header, data}; the header
 * maps tensor names to {dtype, shape, data_offsets [begin, end)} relative to
 * the data section. Sharded checkpoints add model.safetensors.index.json
 * whose "weight_map" names the file holding each tensor.
 *
 * The reader maps every file and validates every header entry at open (dtype
 * known, byte range matching the shape and inside the file), so callers can
 * reference tensors as (file, offset) weights without further checks. */
#ifndef KILN_SAFETENSORS_H
#define KILN_SAFETENSORS_H

#include "kiln_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_ST_MAX_RANK 8

typedef struct kiln_st_tensor {
    const char *name; /* owned by the reader */
    kiln_dtype dtype;
    int rank;
    int64_t dims[KILN_ST_MAX_RANK];
    int file;        /* index into the reader's files (kiln_st_file_path) */
    uint64_t offset; /* absolute byte offset in that file */
    size_t nbytes;
} kiln_st_tensor;

typedef struct kiln_safetensors kiln_safetensors; /* opaque; owns its mappings */

/* path: a .safetensors file, a model.safetensors.index.json, or a directory
 * holding model.safetensors or model.safetensors.index.json. */
kiln_safetensors *kiln_st_open(const char *path, kiln_err *err);
void kiln_st_close(kiln_safetensors *st);

int kiln_st_count(const kiln_safetensors *st);
const kiln_st_tensor *kiln_st_at(const kiln_safetensors *st, int i);
const kiln_st_tensor *kiln_st_find(const kiln_safetensors *st, const char *name); /* NULL if absent */

int kiln_st_file_count(const kiln_safetensors *st);
/* Absolute path of file i. */
const char *kiln_st_file_path(const kiln_safetensors *st, int i);
/* The tensor's bytes inside the mapping (valid until close). */
const void *kiln_st_data(const kiln_safetensors *st, const kiln_st_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
