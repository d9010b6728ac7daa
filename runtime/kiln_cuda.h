/* kiln_cuda.h - the CUDA target: what a `kiln build --target cuda` artifact
 * carries besides the descriptor, and the runtime entry points that run it.
 *
 * The code generator (codegen/cuda) writes one "program" blob:
 *   header, constants, a slot table (where each graph value lives), the
 *   kernel names, the launch list (grid sizes as dimension expressions over
 *   the model's symbols, so one blob serves every sequence length), and the
 *   compiled images (cubin per SM architecture, plus PTX for newer GPUs).
 * The runtime (runtime/cuda_*.c) loads libcuda.so.1 with dlopen, picks the
 * image for the device, uploads weights and constants once and replays the
 * launch list; decode steps are captured as CUDA graphs.
 *
 * All integers little-endian; the reader checks every length against the
 * blob size, so a damaged blob is an error message, never a crash. */
#ifndef KILN_CUDA_H
#define KILN_CUDA_H

#include "kiln_artifact.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_CU_MAGIC "KILNCUP1"
#define KILN_CU_VERSION 1
#define KILN_CU_MAX_ARGS 48

/* Where a graph value's bytes live on the device. */
enum {
    KILN_CU_SLOT_NONE = 0,
    KILN_CU_SLOT_INPUT = 1,   /* io index = graph input */
    KILN_CU_SLOT_OUTPUT = 2,  /* io index = graph output (its device staging buffer) */
    KILN_CU_SLOT_WEIGHT = 3,  /* offset in the weights data */
    KILN_CU_SLOT_ARENA = 4,   /* offset in the arena */
    KILN_CU_SLOT_CONST = 5,   /* offset in the program's constant blob */
};

/* Kernel argument kinds. */
enum { KILN_CU_ARG_SLOT = 0, KILN_CU_ARG_SCRATCH = 1 };

/* Launch kinds and conditions. */
enum { KILN_CU_LAUNCH_KERNEL = 0, KILN_CU_LAUNCH_COPY = 1 };
enum { KILN_CU_COND_ALWAYS = 0, KILN_CU_COND_LE = 1, KILN_CU_COND_GT = 2 };

/* Program flags. */
enum { KILN_CU_HAS_ARGMAX = 1 };

/* Name of the argmax kernel every LM module holds:
 * (const float *x, int64 n, int32 *out) with one block of 1024 threads. */
#define KILN_CU_ARGMAX_KERNEL "kiln_argmax_f32"

typedef struct kiln_cu_slot {
    int kind;
    int io;
    int64_t offset;
} kiln_cu_slot;

typedef struct kiln_cu_arg {
    int kind;
    int64_t v; /* slot id, or scratch byte offset */
} kiln_cu_arg;

typedef struct kiln_cu_launch {
    int kind;            /* KILN_CU_LAUNCH_* */
    int kernel;          /* index into names */
    int block;           /* threads per block */
    int smem;            /* dynamic shared memory bytes */
    kiln_dimexpr grid[3];
    int64_t per[3];      /* grid axis = ceil(eval(grid) / per); COPY: bytes = eval(grid[0]) * per[0] */
    int cond;            /* KILN_CU_COND_*: run only when eval(cond_e) <= / > cond_c */
    kiln_dimexpr cond_e;
    int64_t cond_c;
    int nargs;
    kiln_cu_arg args[KILN_CU_MAX_ARGS];
    int node;            /* graph node (for messages), -1 if none */
} kiln_cu_launch;

typedef struct kiln_cu_image {
    int arch;            /* 80, 90, ...; 0 = PTX */
    const uint8_t *data; /* points into the blob */
    uint64_t size;
} kiln_cu_image;

typedef struct kiln_cu_prog {
    uint32_t flags;
    int n_slots;
    kiln_cu_slot *slots;
    int n_kernels;
    char **names;
    int n_launches;
    kiln_cu_launch *launches;
    int n_images;
    kiln_cu_image *images;
    const uint8_t *consts; /* points into the blob */
    uint64_t const_bytes;
    uint64_t scratch_bytes; /* zeroed device memory kernels share (split partials, counters) */
} kiln_cu_prog;

/* Parses a program blob; pointers inside refer to buf (kept alive by the
 * caller). Free with kiln_cu_prog_free. */
int kiln_cu_prog_read(const uint8_t *buf, size_t len, kiln_cu_prog *p, kiln_err *err);
void kiln_cu_prog_free(kiln_cu_prog *p);

/* ---- runtime entry points (used by model.c / lm.c) ---- */

struct kiln_model;

/* Loads the driver, picks the image for the GPU, uploads weights and
 * constants, allocates the arena and I/O staging buffers. */
int kiln_cuda_open(struct kiln_model *m, const uint8_t *prog, size_t prog_len, kiln_err *err);
void kiln_cuda_close(struct kiln_model *m);
/* Runs the graph. io[] like kiln_model_run's: KV-cache roles hold device
 * pointers (from kiln_cuda_alloc); everything else is host memory, copied
 * in before and out after. When m->cuda_greedy is set and logits are
 * produced, the argmax runs on the GPU into m->cuda_next and the logits
 * are not copied. */
int kiln_cuda_exec(struct kiln_model *m, void **io, const int64_t *syms);
/* Zeroed device memory (KV caches), returned as an opaque pointer. */
void *kiln_cuda_alloc(struct kiln_model *m, size_t bytes);
void kiln_cuda_free(struct kiln_model *m, void *p);
/* Copies n bytes between device buffers from kiln_cuda_alloc (cache moves). */
int kiln_cuda_move(struct kiln_model *m, void *dst, const void *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif
