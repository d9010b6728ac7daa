/* cu.h - internals of the CUDA code generator.
 *
 * Every kernel is CUDA C text generated for one node (or one fused group)
 * with its shapes and dtypes baked in; symbolic sizes are read at run time
 * from a small device array KS[] (the model's symbol values), so a captured
 * CUDA graph stays valid as `past` grows. Signature of every kernel:
 *     extern "C" __global__ void kN(const i64 *KS, T0 *a0, T1 *a1, ...)
 * The launch list says which value (slot) each argument is and how the grid
 * follows the symbols. Identical kernels (same text) are emitted once. */
#ifndef KILN_CU_H
#define KILN_CU_H

#include "kiln_codegen.h"
#include "kiln_cuda.h"

#include <stdarg.h>

/* Decode-sized problems: GEMV kernels handle up to this many rows of x;
 * more rows take the tiled GEMM (prefill). */
#define CU_GEMV_MAX_M 1

typedef struct cu_arg {
    int kind;  /* KILN_CU_ARG_* */
    int64_t v; /* slot (root value id) or scratch offset */
} cu_arg;

typedef struct cu_launch {
    int kind;   /* KILN_CU_LAUNCH_* */
    int kernel; /* index into cu.kern */
    int block, smem;
    kiln_dim grid[3];
    int64_t per[3];
    int cond;
    kiln_dim cond_d;
    int64_t cond_c;
    int nargs;
    cu_arg args[KILN_CU_MAX_ARGS];
    int node;
} cu_launch;

typedef struct cu_kernel {
    char *name;
    char *text; /* with "@NAME@" where the name goes */
    int node;   /* first node that produced it (for messages) */
    int line0, line1; /* lines in the translation unit */
} cu_kernel;

/* Per-node decisions of the fusion analysis (cu_fuse.c). */
typedef struct cu_node_info {
    int skip;          /* computed inside another node's kernel: emits nothing */
    int prefill_only;  /* launches only when rows > CU_GEMV_MAX_M (decode fuses it elsewhere) */
    kiln_dim rows;     /* the rows those launches test */
    int inline_ok;     /* elementwise: evaluated inside its consumer's map kernel */
    int norm_of;       /* Linear: its decode GEMV applies this RMSNorm node itself, else -1 */
    int epi;           /* Linear/MatMul: last node of the elementwise chain computed as its
                        * epilogue (a residual Add, an activation...), else -1 */
    int epi_anchor;    /* on that last node: the anchor whose kernels are emitted here */
    int dual_host;     /* Linear launching the SwiGLU dual GEMV (decode) */
    int swiglu_mul;    /* on the host: the Mul whose output the dual GEMV writes */
    int dual_wg, dual_wu;        /* on the host: gate and up weights */
    int64_t dual_og, dual_ou;    /* their first rows (both halves of one merged weight) */
    int swiglu_member; /* gate or up Linear of a fused SwiGLU */
    int split;         /* Linear whose Split (last axis) the decode GEMV writes directly, else -1 */
    int group_next;    /* next Linear of this decode GEMV group, else -1 */
    int group_head;    /* launches the group's GEMV */
    int in_group;
    int rope_q, rope_k; /* GQAttention: RotaryEmbedding nodes fused into it, else -1 */
} cu_node_info;

typedef struct cu {
    kiln_graph *g;
    const kiln_plan *plan;
    const kiln_build_opts *o;
    kiln_err *err;
    int failed;
    int *uses;          /* use count per value (graph outputs count) */
    cu_node_info *ni;
    cu_kernel *kern;
    int nk, capk;
    cu_launch *l;
    int nl, capl;
    int64_t scratch;    /* bytes of shared scratch (attention partials + counters) */
    int n_kv_inplace;
    int lm;             /* building a language model with an in-place KV cache */
    int64_t kv_ctx;
    kiln_dtype kv_dtype;
} cu;

/* A kernel under construction. */
typedef struct ck {
    cu *c;
    const kiln_node *n;
    int node;
    kiln_sb body;
    int nargs;
    cu_arg args[KILN_CU_MAX_ARGS];
    char ptype[KILN_CU_MAX_ARGS][48];
    int vid[KILN_CU_MAX_ARGS]; /* root value per arg, -1 for scratch */
    char *pool[4096];          /* strings handed out by ck_d etc. */
    int npool;
    int block;
    int own_wait; /* the body calls kgdc_wait() itself (after kgdc_launch()) */
    int min_blocks; /* __launch_bounds__ minimum resident blocks per SM (0: none) */
    int subst_vid;          /* value read as subst (an anchor's result in its epilogue), -1 */
    const char *subst;
} ck;

/* ---- driver helpers (cu_module.c) ---- */

int cu_fail(cu *c, const kiln_node *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const kiln_type *cu_vt(cu *c, int vid);
/* Value whose storage vid uses (ALIAS chains resolved). */
int cu_root(cu *c, int vid);
/* 1 when the value has storage a kernel can write/read (not NONE). */
int cu_has_buf(cu *c, int vid);
/* Byte ranges of the two values' storage may overlap (same arena bytes). */
int cu_overlap(cu *c, int a, int b);
/* C type used for a dtype's storage ("float", "u16", ...); NULL if the CUDA
 * target does not handle it as plain elements. */
const char *cu_ctype(kiln_dtype dt);
/* Compute type for loads of dt: "float", "double" or "i64". */
const char *cu_ctyp(kiln_dtype dt);
int cu_dtype_ok(kiln_dtype dt);

void ck_begin(cu *c, ck *k, int node, int block);
/* Parameter name for the buffer of value vid (same name for repeated uses). */
const char *ck_ptr(ck *k, int vid);
/* Parameter for scratch bytes at offset off, typed `ctype *`. */
const char *ck_scratch(ck *k, int64_t off, const char *ctype);
/* Appends a line of code. */
void ck_line(ck *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A dim as a C expression (i64): "576LL", "KS[1]", "(KS[1]+KS[2])". */
const char *ck_d(ck *k, kiln_dim d);
/* Product of dims [from, to) of a type as an expression. */
const char *ck_prod(ck *k, const kiln_type *t, int from, int to);
/* A formatted string that lives until ck_end. */
const char *ck_s(ck *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Expression loading element `idx` of value vid as its compute type. */
const char *ck_load(ck *k, int vid, const char *idx);
/* Same, converted to compute type ct ("float", "double", "i64"). */
const char *ck_load_as(ck *k, int vid, const char *idx, const char *ct);
/* Statement storing v (of compute type ct) into element idx of value vid. */
void ck_store(ck *k, int vid, const char *idx, const char *v, const char *ct);
/* The same with the buffer's element type given (the KV cache's storage
 * type differs from the graph's view of it); ct NULL: own compute type. */
const char *ck_ptr_dt(ck *k, int vid, kiln_dtype dt);
const char *ck_load_dt(ck *k, int vid, kiln_dtype dt, const char *idx, const char *ct);
void ck_store_dt(ck *k, int vid, kiln_dtype dt, const char *idx, const char *v, const char *ct);
/* Finishes the kernel (deduplicating its text) and returns its index; the
 * launch is described by the caller through cu_add_launch. -1 on failure. */
int ck_end(ck *k);

/* Appends a launch of kernel `kern` with the arguments recorded in k. The
 * grid's x size is ceil(gx / px) etc. (gy/gz may be 1). */
cu_launch *cu_launch_k(cu *c, ck *k, int kern, kiln_dim gx, int64_t px, kiln_dim gy, kiln_dim gz);
/* Product of dims [from, to) of t as a kiln_dim (interned in the graph). */
kiln_dim cu_dprod(cu *c, const kiln_type *t, int from, int to);
/* Rows of x for a Linear: product of all but the last dim. */
kiln_dim cu_rows(cu *c, int vid);

/* ---- lowerings ---- */

int cu_fuse(cu *c);                          /* cu_fuse.c */
int cu_is_map(const kiln_node *n);           /* cu_map.c */
int cu_lower_map(cu *c, int ni);
/* Element `which` of node ni's output at output index idx (names of i64
 * variables), as an expression of compute type *rct; emits temporaries.
 * Inputs produced by inlined nodes are computed in place. */
const char *cu_map_value(ck *k, int ni, int which, const char *const *idx, const char **rct);
/* Scalar expression of an elementwise op from its operand expressions. */
const char *cu_scalar(ck *k, const kiln_node *n, const char **a, const char **at, const char *rt);
/* phase 0: at the node; phase 1: at the end of its epilogue chain. */
int cu_lower_linear(cu *c, int ni, int phase); /* cu_matmul.c */
int cu_lower_matmul(cu *c, int ni);
/* Statement computing the epilogue of anchor ni for output row m (an i64
 * expression), column n, with the anchor's value in float variable v, and
 * storing it; without an epilogue, stores v into the anchor's output. */
void cu_epilogue(ck *k, int ni, const char *m, const char *n, const char *v);
int cu_lower_dequant(cu *c, int ni);
int cu_lower_nn(cu *c, int ni);              /* cu_nn.c */
int cu_lower_reduce(cu *c, int ni);
int cu_is_nn(const char *op);
int cu_is_reduce(const char *op);

/* The common prelude of every translation unit (cu_prelude.c). */
extern const char cu_prelude[];
/* Kernel appended to LM modules (greedy decoding on the GPU). */
extern const char cu_argmax_kernel[];

/* ---- NVRTC (cu_nvrtc.c) ---- */

typedef struct cu_image {
    int arch; /* 0: PTX */
    uint8_t *data;
    size_t size;
} cu_image;

/* Compiles src for each arch (cubin) and PTX for compute_<min arch>; an
 * error names the generated line and, through c's kernel line ranges, the
 * node whose kernel holds it. out[] entries are malloc'd (caller frees). */
int cu_nvrtc_compile(cu *c, const char *src, const int *archs, int narch, cu_image *out, int *nout,
                     kiln_err *err);

#endif
