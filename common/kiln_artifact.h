/* kiln_artifact.h - what a compiled model carries: the descriptor that the
 * code generators write and the runtime reads, and the weights blob header.
 *
 * The descriptor is a byte string (little-endian, versioned) rather than a C
 * struct, so the compiler and a runtime built at another time can never
 * disagree silently about layout: the runtime checks magic and ABI version
 * first and refuses a mismatch with a message naming both versions. */
#ifndef KILN_ARTIFACT_H
#define KILN_ARTIFACT_H

#include "kiln_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef KILN_ABI_VERSION
#define KILN_ABI_VERSION 1
#endif

#define KILN_DESC_MAGIC "KILNDSC1"
#define KILN_WEIGHTS_MAGIC "KILNWTS1"
#define KILN_MAX_IO 512
#define KILN_MAX_SYMS 16
#define KILN_DIMEXPR_MAX 32

/* A dimension as a tiny postfix program over the symbol values: static
 * sizes need one op. Evaluated by the runtime to size inputs/outputs. */
typedef enum { KILN_DX_CONST = 0, KILN_DX_SYM = 1, KILN_DX_ADD = 2, KILN_DX_SUB = 3,
               KILN_DX_MUL = 4, KILN_DX_DIV = 5 } kiln_dx_op;

typedef struct kiln_dimexpr {
    int n;
    uint8_t op[KILN_DIMEXPR_MAX];
    int64_t arg[KILN_DIMEXPR_MAX];
} kiln_dimexpr;

int64_t kiln_dimexpr_eval(const kiln_dimexpr *e, const int64_t *syms);

typedef enum { KILN_ROLE_DATA = 0, KILN_ROLE_TOKENS = 1, KILN_ROLE_LOGITS = 2,
               KILN_ROLE_PAST_KEY = 3, KILN_ROLE_PAST_VALUE = 4,
               KILN_ROLE_PRESENT_KEY = 5, KILN_ROLE_PRESENT_VALUE = 6,
               KILN_ROLE_ATTN_MASK = 7, KILN_ROLE_TOKEN_TYPES = 8,
               KILN_ROLE_POSITIONS = 9 } kiln_io_role;

typedef struct kiln_io_desc {
    char name[128];
    kiln_dtype dtype;
    int rank;
    kiln_dimexpr dims[8];
    int role;  /* kiln_io_role */
    int layer; /* for KV roles */
} kiln_io_desc;

typedef enum { KILN_MODEL_GENERIC = 0, KILN_MODEL_LM = 1, KILN_MODEL_ENCODER = 2 } kiln_model_kind;

/* KV cache layout chosen by the compiler (see docs/kv.md). */
/* CONTIGUOUS: in place, one [kv_heads, max_ctx, head_dim] buffer per layer
 * serves as past and present. FUNCTIONAL: the graph reads a packed past
 * [kv_heads, past, head_dim] and writes a packed present (models whose
 * attention was not recognized); the runtime ping-pongs two buffers. */
typedef enum { KILN_KV_CONTIGUOUS = 0, KILN_KV_PAGED = 1, KILN_KV_FUNCTIONAL = 2 } kiln_kv_kind;

typedef struct kiln_kv_desc {
    int kind;          /* kiln_kv_kind */
    kiln_dtype dtype;  /* f32, f16, bf16, or i8 (with per-head-per-token f32 scales) */
    int n_layers, kv_heads, head_dim;
    int64_t max_ctx;   /* positions per sequence */
    int64_t max_batch; /* sequences (KV slots) */
    int64_t page;      /* positions per page (paged only) */
} kiln_kv_desc;

typedef struct kiln_desc {
    uint32_t abi;
    char kiln_version[32];
    char name[128];
    char target[64]; /* "cpu" or "cuda" */
    int kind;        /* kiln_model_kind */
    int n_syms;
    char sym_names[KILN_MAX_SYMS][32];
    int64_t sym_max[KILN_MAX_SYMS]; /* planning bound per symbol */
    int n_inputs, n_outputs;
    kiln_io_desc *io; /* n_inputs + n_outputs entries, inputs first (malloc'd by the reader) */
    uint64_t arena_bytes;
    uint64_t weights_bytes;
    uint64_t weights_hash; /* FNV-1a of the weights blob, checked for external weights */
    /* language models */
    int64_t vocab;
    int64_t bos, eos, eot; /* -1 when absent */
    int64_t max_ctx;
    kiln_kv_desc kv;
    /* tokenizer blob (common/kiln_tokenizer.h format), may be empty */
    const uint8_t *tokenizer;
    uint64_t tokenizer_bytes;
} kiln_desc;

/* Serializes d into a malloc'd byte string. */
uint8_t *kiln_desc_write(const kiln_desc *d, size_t *len);
/* Parses a descriptor; checks magic and ABI ("built by kiln X with ABI n, this
 * runtime has ABI m: rebuild the model"). d->io is malloc'd; tokenizer
 * points into buf. */
int kiln_desc_read(const uint8_t *buf, size_t len, kiln_desc *d, kiln_err *err);
void kiln_desc_free(kiln_desc *d);

/* Weights blob: header then tensors at 64-byte aligned offsets. */
typedef struct kiln_weights_header {
    char magic[8];     /* KILN_WEIGHTS_MAGIC */
    uint32_t abi;
    uint32_t header_bytes; /* data starts here (64) */
    uint64_t data_bytes;
    uint64_t hash;     /* FNV-1a of the data bytes */
    char pad[32];
} kiln_weights_header;

uint64_t kiln_fnv1a(uint64_t h, const void *data, size_t n);
#define KILN_FNV_INIT 1469598103934665603ull

#ifdef __cplusplus
}
#endif
#endif
