/* kiln_passes.h - graph passes and the pass manager.
 *
 * A pass takes a graph and returns a rewritten one. Most passes rebuild the
 * graph through a kiln_rewriter (copy what stays, add what changes): node
 * inference re-runs on every rebuilt node, so a pass cannot produce an
 * ill-typed graph silently, and weights stay references (cheap to copy). */
#ifndef KILN_PASSES_H
#define KILN_PASSES_H

#include "kiln_artifact.h"
#include "kiln_ir.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_pass_opts {
    int verify_each;   /* verify + compare interpreter outputs before/after each pass */
    int verbose;       /* print a line per pass with node counts (stderr) */
    const char *dump_after; /* pass name after which the pipeline stops (kiln ir --after) */
    /* bindings for symbolic dims when random inputs are needed (verify_each)
     * or sizes must be bounded (memory planning): name=value pairs */
    int n_bind;
    const char *bind_names[16];
    int64_t bind_vals[16];
    int64_t kv_budget;  /* bytes for the KV cache; 0 = unlimited */
    int64_t max_seq;    /* maximum context for KV planning (0: model default) */
    int64_t max_batch;  /* maximum batch for KV planning (0: 1) */
} kiln_pass_opts;

typedef struct kiln_pass {
    const char *name;
    int (*run)(kiln_graph **g, const kiln_pass_opts *o, kiln_err *err);
    const char *doc;
} kiln_pass;

const kiln_pass *kiln_pass_find(const char *name);
int kiln_pass_count(void);
const kiln_pass *kiln_pass_at(int i);
/* The default pipeline, comma-separated. */
const char *kiln_default_pipeline(void);

/* Runs a comma-separated pipeline over *g (replacing it). With
 * o->dump_after set, stops after that pass (error if it is not in the
 * pipeline). */
int kiln_run_pipeline(kiln_graph **g, const char *pipeline, const kiln_pass_opts *o, kiln_err *err);

/* Runs g on deterministic random inputs (symbols bound by o, else small
 * defaults) with the reference interpreter. outputs: n = g->n_outputs,
 * caller frees each tensor and the array. seed selects the inputs. */
int kiln_random_run(kiln_graph *g, const kiln_pass_opts *o, uint64_t seed, kiln_tensor **outputs,
                    kiln_err *err);
/* Largest |a-b| / (1 + |b|) over the elements; -1 if shapes/dtypes differ. */
double kiln_tensor_maxdiff(const kiln_tensor *a, const kiln_tensor *b);

/* ---- memory planning ---- */

typedef enum kiln_buf_kind {
    KILN_BUF_NONE,   /* not materialized (lives inside a fused kernel) */
    KILN_BUF_INPUT,  /* caller's input buffer (io slot) */
    KILN_BUF_OUTPUT, /* caller's output buffer (io slot) */
    KILN_BUF_WEIGHT, /* in the weights blob */
    KILN_BUF_CONST,  /* emitted into the artifact as read-only data */
    KILN_BUF_ARENA,  /* offset in the per-step arena */
    KILN_BUF_ALIAS,  /* same bytes as another value (reshape-like views, in-place) */
} kiln_buf_kind;

typedef struct kiln_buf {
    kiln_buf_kind kind;
    int64_t offset; /* ARENA: byte offset; WEIGHT: offset in the weights data */
    int64_t bytes;  /* size at the planning bounds */
    int io;         /* INPUT/OUTPUT: index among the graph's inputs/outputs */
    int alias;      /* ALIAS: value id whose storage this shares */
    int first, last; /* lifetime in node indices */
} kiln_buf;

#define KILN_MAX_SYMS_PLAN 16

typedef struct kiln_plan {
    int n_values;
    kiln_buf *bufs;         /* per value id */
    int64_t arena_bytes;    /* peak arena (after packing) */
    int64_t naive_bytes;    /* every arena value in its own buffer */
    int64_t lower_bound;    /* max bytes live at any node */
    int64_t weights_bytes;  /* size of the weights data */
    int n_syms;             /* symbolic variables, in descriptor order */
    int sym_id[KILN_MAX_SYMS_PLAN]; /* graph symbol id of each */
    int64_t sym_max[KILN_MAX_SYMS_PLAN];
} kiln_plan;

/* Bounds for symbols come from o->bind_* (names), else 1. Outputs of
 * Reshape-like ops alias their input; elementwise ops may write over an
 * input that dies there; other arena values are packed best-fit by size and
 * lifetime. */
int kiln_plan_memory(kiln_graph *g, const kiln_pass_opts *o, kiln_plan *p, kiln_err *err);
void kiln_plan_free(kiln_plan *p);
/* Value of dim d at the planning bounds (-1 if unknown). */
int64_t kiln_plan_dim(const kiln_graph *g, const kiln_plan *p, kiln_dim d);
/* Storage bytes of value vid at the planning bounds (-1 if unknown). */
int64_t kiln_plan_value_bytes(const kiln_graph *g, const kiln_plan *p, int vid);
/* Resolves ALIAS chains to the value that owns the storage. */
int kiln_plan_root(const kiln_plan *p, int vid);

/* ---- KV cache layout ---- */

/* Bytes the cache described by kv takes (all layers, K and V, all slots). */
int64_t kiln_kv_bytes(const kiln_kv_desc *kv);
/* Picks kv->dtype: the activations' type, else 16-bit floats, else int8
 * with per-head-per-token scales, whichever is widest within budget bytes
 * (<= 0: no limit). Error when even int8 does not fit. */
int kiln_kv_choose(kiln_kv_desc *kv, kiln_dtype act, int64_t budget, kiln_err *err);

/* ---- rewriting ---- */

typedef struct kiln_rewriter {
    kiln_graph *src;
    kiln_graph *dst;
    int *map; /* src value id -> dst value id (-1 unmapped) */
} kiln_rewriter;

/* Starts a rewrite: dst gets src's name, symbols, weight files, inputs, and
 * (lazily, on first use) its weights and consts. */
void kiln_rw_begin(kiln_rewriter *rw, kiln_graph *src);
/* dst value for a src value (copying weights/consts on demand); -1 if the
 * value was never produced in dst. */
int kiln_rw_value(kiln_rewriter *rw, int src_vid);
/* Copies src node ni, with its outputs keeping their names. */
int kiln_rw_copy_node(kiln_rewriter *rw, int ni, kiln_err *err);
/* Declares that src value src_vid is now computed by dst value dst_vid. */
void kiln_rw_set(kiln_rewriter *rw, int src_vid, int dst_vid);
/* Finishes: maps graph outputs, frees src, returns dst. */
kiln_graph *kiln_rw_end(kiln_rewriter *rw, kiln_err *err);
void kiln_rw_abort(kiln_rewriter *rw);

/* Adds a const to g under a fresh name derived from `hint`. */
int kiln_add_const_tensor(kiln_graph *g, const char *hint, const kiln_tensor *t, kiln_err *err);
int kiln_add_const_i64(kiln_graph *g, const char *hint, const int64_t *v, int n, kiln_err *err);

/* Use counts of every value (graph outputs count as a use). Caller frees. */
int *kiln_use_counts(const kiln_graph *g);

#ifdef __cplusplus
}
#endif
#endif
