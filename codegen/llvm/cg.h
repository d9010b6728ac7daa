/* cg.h - internals of the CPU code generator (LLVM C API).
 *
 * The generated module holds one function per kernel,
 *     void kN(void **bufs, const int64_t *syms, int64_t begin, int64_t end)
 * processing outer iterations [begin, end) so the runtime's pool can split
 * it, and the host function kiln_model_run that fills `bufs` (one slot per
 * value a kernel touches) and launches the kernels in order. */
#ifndef KILN_CG_H
#define KILN_CG_H

#include "kiln_codegen.h"

#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>

/* How a value is computed in registers. */
typedef enum { CT_F32, CT_F64, CT_I64 } ctype;

typedef struct cg {
    LLVMContextRef ctx;
    LLVMModuleRef mod;
    LLVMBuilderRef b;
    kiln_graph *g;
    const kiln_plan *plan;
    const kiln_build_opts *o; /* may be NULL */
    int n_kv_inplace;         /* attention nodes lowered with the in-place KV cache */
    int vw;                   /* f32 lanes of the target's widest vectors (8 or 16) */
    kiln_err *err;
    int failed;
    LLVMTypeRef t_void, t_i1, t_i8, t_i16, t_i32, t_i64, t_f16, t_f32, t_f64, t_ptr, t_kfn, t_par;
    LLVMValueRef f_parallel; /* kiln_rt_parallel */
    int nkernels;
    /* kernel functions in launch order with their outer trip counts */
    LLVMValueRef *kfns;
    int nk, capk;
    int *k_node; /* node each kernel launch came from (for messages) */
} cg;

/* Context of the kernel function being generated. */
typedef struct kc {
    cg *c;
    LLVMValueRef fn, bufs, syms, begin, end;
    LLVMValueRef symv[KILN_MAX_SYMS_CG];
    const kiln_node *node; /* node being lowered, for messages */
    /* buffer pointers are loaded once, in the entry block: a load of bufs[]
     * inside a loop could alias the loop's stores and block vectorization */
    LLVMBasicBlockRef entry, body;
    int map_dst; /* map kernels: the value being written (-1 otherwise) */
    /* fused kernels: values produced inside kernel `group` (and without a
     * buffer) are recomputed where used; given_vid's value is given_val */
    int group;
    int given_vid;
    LLVMValueRef given_val;
    int nptr;
    int ptr_vid[64];
    LLVMValueRef ptr_val[64];
} kc;

/* ---- module-level helpers (cg.c) ---- */

/* Fails the build with a message naming the node. Returns -1. */
int cg_fail(cg *c, const kiln_node *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Starts a kernel function; the caller emits the body between kc_begin and
 * kc_end. trip is the outer iteration count (an i64 value in the host
 * function) computed by the caller with kc_host_dim. */
void kc_begin(cg *c, kc *k, const kiln_node *n);
void kc_end(kc *k);

/* ---- IR helpers inside a kernel (cg.c) ---- */

LLVMValueRef kc_i64(kc *k, int64_t v);
LLVMValueRef kc_f(kc *k, ctype t, double v);
/* A dim as an i64: constant or computed from the symbol values. */
LLVMValueRef kc_dim(kc *k, kiln_dim d);
/* Base pointer of a value's buffer. */
LLVMValueRef kc_ptr(kc *k, int vid);
ctype kc_ctype(kiln_dtype dt);
LLVMTypeRef kc_ctype_llvm(kc *k, ctype t);
/* Loads element idx (i64) of a buffer of dtype dt, converted to compute
 * type ct. */
LLVMValueRef kc_load(kc *k, kiln_dtype dt, LLVMValueRef base, LLVMValueRef idx, ctype ct);
void kc_store(kc *k, kiln_dtype dt, LLVMValueRef base, LLVMValueRef idx, LLVMValueRef v, ctype ct);
/* Store with ONNX Cast's rules (kiln_store_cast): float8 targets honour
 * saturate, f8e8m0 round_mode (a KILN_ROUND_* code). */
void kc_store_cast(kc *k, kiln_dtype dt, LLVMValueRef base, LLVMValueRef idx, LLVMValueRef v, ctype ct,
                   int saturate, int round_mode);
/* Converts between compute types (ints truncate toward zero like C). */
LLVMValueRef kc_convert(kc *k, LLVMValueRef v, ctype from, ctype to);
/* Rounds a computed value to what storing it as dt and loading it back
 * gives (f16/bf16 rounding inside fused chains). */
LLVMValueRef kc_round_to(kc *k, LLVMValueRef v, kiln_dtype dt, ctype ct);

/* Calls an overloaded LLVM intrinsic ("llvm.exp") on one/two args. */
LLVMValueRef kc_intr1(kc *k, const char *name, LLVMValueRef x);
LLVMValueRef kc_intr2(kc *k, const char *name, LLVMValueRef x, LLVMValueRef y);
/* Calls a libm function (float or double variant picked by ct). */
LLVMValueRef kc_libm1(kc *k, const char *name, LLVMValueRef x, ctype ct);
LLVMValueRef kc_libm2(kc *k, const char *name, LLVMValueRef x, LLVMValueRef y, ctype ct);

/* exp, erf, tanh: inline straight-line f32 code (vectorizes), libm for f64. */
LLVMValueRef kc_exp(kc *k, LLVMValueRef x, ctype ct);
LLVMValueRef kc_erf(kc *k, LLVMValueRef x, ctype ct);
LLVMValueRef kc_tanh(kc *k, LLVMValueRef x, ctype ct);

/* Counted loop: for (iv = lo; iv < hi; iv++). */
#define KC_MAX_PHI 40 /* loop-carried values per loop (an 8 x 4 micro-tile needs 32) */
typedef struct kc_loop {
    LLVMBasicBlockRef head, body, exit, pre;
    LLVMValueRef iv;
    int nphi;
    LLVMValueRef phis[KC_MAX_PHI], nexts[KC_MAX_PHI]; /* loop-carried values, wired in kc_for_end */
} kc_loop;
LLVMValueRef kc_for(kc *k, kc_loop *l, LLVMValueRef lo, LLVMValueRef hi, const char *name);
void kc_for_end(kc *k, kc_loop *l);

/* Loop-carried accumulator: a phi in the loop header starting at init;
 * kc_phi_next gives its value for the next iteration (call before
 * kc_for_end). After the loop, the phi holds the final value. */
LLVMValueRef kc_phi(kc *k, kc_loop *l, LLVMValueRef init);
void kc_phi_next(kc *k, kc_loop *l, LLVMValueRef phi, LLVMValueRef next);

/* Row-major strides (i64 values) of a type's dims. */
void kc_strides(kc *k, const kiln_type *t, LLVMValueRef *st);
/* Strides of `in` broadcast against an output of rank orank (0 where
 * broadcast). */
void kc_bcast_strides(kc *k, const kiln_type *in, int orank, LLVMValueRef *st);

/* ---- explicit vectors (LLVM 16's C API cannot set fast-math flags, so
 * float reductions are vectorized by hand) ---- */
#define KC_VW 8
LLVMTypeRef kc_vec_t(cg *c);
LLVMValueRef kc_vload(kc *k, LLVMValueRef base, LLVMValueRef idx);   /* f32 elements */
void kc_vstore(kc *k, LLVMValueRef base, LLVMValueRef idx, LLVMValueRef v);
LLVMValueRef kc_vfma(kc *k, LLVMValueRef a, LLVMValueRef b, LLVMValueRef acc);
LLVMValueRef kc_hsum(kc *k, LLVMValueRef v);
LLVMValueRef kc_vzero(kc *k);
/* Σ a[ao+i]*b[bo+i], i < n, over f32 buffers. */
LLVMValueRef kc_dot_f32(kc *k, LLVMValueRef a, LLVMValueRef ao, LLVMValueRef b, LLVMValueRef bo, LLVMValueRef n);
/* kiln_dequant_row(dt, src, dst, n) from the runtime. */
void kc_call_dequant(kc *k, kiln_dtype dt, LLVMValueRef src, LLVMValueRef dst, LLVMValueRef n);
/* A stack array of n floats allocated in the kernel's entry block. */
LLVMValueRef kc_entry_alloca(kc *k, int64_t n);
/* The same for n elements of type t (the entry block may still be empty). */
LLVMValueRef kc_entry_alloca_t(kc *k, LLVMTypeRef t, int64_t n);

/* if (cond) { then } [else { other }]: kc_if_begin, [kc_if_else,] kc_if_end. */
typedef struct kc_if {
    LLVMBasicBlockRef then_bb, else_bb, merge;
} kc_if;
void kc_if_begin(kc *k, kc_if *f, LLVMValueRef cond);
void kc_if_else(kc *k, kc_if *f);
void kc_if_end(kc *k, kc_if *f);

/* Register-blocked f32 micro-kernel (cpu_matmul.c): O[ooff + r*ldo + n0 ..
 * + NV*W) = sum over kk < K of A[aoff + r*lda + kk*a_k] * B[boff + kk*ldb +
 * n0 ..] for rows r < MR; W is the vector width, NV <= 4, MR <= 8. */
void kc_micro_tile(kc *k, int MR, int NV, int W, LLVMValueRef A, LLVMValueRef aoff, LLVMValueRef lda, LLVMValueRef a_k,
                   LLVMValueRef B, LLVMValueRef boff, LLVMValueRef ldb, LLVMValueRef O, LLVMValueRef ooff, LLVMValueRef ldo,
                   LLVMValueRef n0, LLVMValueRef K);

/* ---- lowering entry points (one file per family) ---- */

/* Emits the scalar op of an elementwise node given its operand values. */
LLVMValueRef cg_scalar(kc *k, const kiln_node *n, LLVMValueRef *args, const ctype *at, ctype rt);
/* Returns 1 if the op is handled by the map-kernel lowering. */
int cg_is_map_op(const kiln_node *n);
int cg_lower_map(cg *c, int ni);
/* Element of node n's output at idx (the map-kernel scalar path; fused
 * producers and k->given_vid are resolved). *ct receives its type. */
LLVMValueRef cg_map_value(kc *k, const kiln_node *n, LLVMValueRef *idx, ctype *ct);
/* A fused elementwise group ending at node `last`. */
int cg_lower_map_group(cg *c, int last);
/* Node index of the last node of kernel group g (-1 if none). */
int cg_group_last(const cg *c, int group);
int cg_lower_matmul(cg *c, int ni);
int cg_lower_reduce(cg *c, int ni);
int cg_lower_nn(cg *c, int ni);
int cg_lower_misc(cg *c, int ni);

/* Registers a kernel launch: fn over trip outer iterations. trip_dims is the
 * dims whose product is the trip count; grain = iterations per thread
 * chunk below which it isn't split. */
void cg_launch(cg *c, LLVMValueRef fn, const kiln_dim *trip_dims, int ntrip, int64_t grain, int ni);

#endif
