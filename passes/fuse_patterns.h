/* fuse_patterns.h - internals shared by the files of the `fuse` pass
 * (fuse_patterns.c: driver, norms, activations, softmax, projection merging;
 * fuse_rope.c: rotary embeddings; fuse_attention.c: attention).
 *
 * A matcher is called with a root node of the source graph. It reads the
 * source graph only, and on success adds the fused node(s) to the
 * rewriter's destination graph and maps the root's output there. Nodes of
 * the old pattern are still copied by the driver; the dead ones are dropped
 * when the round ends, so a matcher never has to undo anything. */
#ifndef KILN_FUSE_PATTERNS_H
#define KILN_FUSE_PATTERNS_H

#include "kiln_passes.h"

/* Largest number of source nodes one pattern may cover. */
#define KILN_FUSE_MAX_PAT 128

typedef struct kiln_fuse {
    kiln_graph *g;       /* the source graph of this round (read only) */
    kiln_rewriter rw;    /* builds the fused graph */
    int *uses;           /* per value: readers (a graph output counts as one) */
    int *ustart, *ulist; /* per value: the nodes reading it, ulist[ustart[v]..ustart[v+1]) */
    char *is_out;        /* per value: a graph output */
    char *done;          /* per node: replaced by a fusion anchored at an earlier node */
    uint64_t *vhash;     /* per value: structural hash of a mask (0: not computed) */
    kiln_strmap verdicts; /* mask hash, kind -> causal-check result (1 yes, 0 no) */
    kiln_strmap memo;     /* values a matcher derived once per round (RoPE caches) -> dst id */
    int verbose;         /* say on stderr why a matched pattern was not fused */
    int emitted;         /* nodes were added (some may be dead) */
    int changed;         /* a pattern was replaced */
} kiln_fuse;

/* Source nodes a pattern covers; the root is one of them. */
typedef struct kiln_fuse_pat {
    int nodes[KILN_FUSE_MAX_PAT];
    int n;
    int overflow;
} kiln_fuse_pat;

/* ---- reading the source graph ---- */

/* Producer of vid if it is an `op` node (any op when op is NULL), else NULL. */
const kiln_node *kiln_fuse_def(const kiln_fuse *f, int vid, const char *op);
int kiln_fuse_index(const kiln_fuse *f, const kiln_node *n);
/* vid is a const or weight (data known at compile time). */
int kiln_fuse_is_data(const kiln_fuse *f, int vid);
/* vid is one element computed from consts/weights (through elementwise
 * ops and CastLike); *v gets its value. */
int kiln_fuse_scalar(const kiln_fuse *f, int vid, double *v);
/* Add, or Sum of two inputs (onnxscript writes Sum). */
int kiln_fuse_is_add(const kiln_node *n);
/* Contents of a small integer const/weight vector (rank <= 1); count or -1. */
int kiln_fuse_ints(const kiln_fuse *f, int vid, int64_t *v, int max);
/* Reduction axes of a Reduce* node (input 1 or all axes), normalized and
 * sorted; count or -1. */
int kiln_fuse_reduce_axes(const kiln_fuse *f, const kiln_node *n, int64_t *axes);
/* The other input of a two-input node, given one of them; -1 if neither. */
int kiln_fuse_other(const kiln_node *n, int vid);
/* Static value of dim d, or -1. */
int64_t kiln_fuse_static(kiln_dim d);
const kiln_type *kiln_fuse_type(const kiln_fuse *f, int vid);
/* 1 if vid is Slice(x, ...) over the last axis of x only, with constant
 * arguments; *x, *start, *end (clamped to the last dim) and *step are set. */
int kiln_fuse_slice_last(const kiln_fuse *f, int vid, int *x, int64_t *start, int64_t *end,
                         int64_t *step);

/* ---- patterns ---- */

void kiln_fuse_pat_add(kiln_fuse_pat *p, const kiln_fuse *f, const kiln_node *n);
int kiln_fuse_pat_has(const kiln_fuse_pat *p, int node);
/* Every output of the pattern's nodes, other than the root's, is read only
 * inside the pattern (or by Shape/Size, which need no data) and is not a
 * graph output. */
int kiln_fuse_pat_closed(const kiln_fuse *f, const kiln_fuse_pat *p, int root);

/* ---- building the fused graph ---- */

/* dst id of a source value (copying consts and weights on first use). */
int kiln_fuse_in(kiln_fuse *f, int src_vid);
/* Adds a node to dst. Outputs are named after the source values in
 * name_src (entries -1 or a NULL array: fresh names; a name already taken
 * in dst also gets a fresh one). origin gives the node's loc. On an
 * inference error nothing is added and -1 returned (the caller treats it as
 * no match). outs receives the dst value ids. */
int kiln_fuse_add(kiln_fuse *f, const char *op, const kiln_node *origin, const int *ins, int nin,
                  const kiln_attr *attrs, int nattrs, const int *name_src, int nout, int *outs);
/* Single-output form; returns the dst value id or -1. */
int kiln_fuse_add1(kiln_fuse *f, const char *op, const kiln_node *origin, const int *ins, int nin,
                   const kiln_attr *attrs, int nattrs, int name_src);
int kiln_fuse_const_i64(kiln_fuse *f, const int64_t *v, int n);
/* A dst const of the given dtype and shape filled with one value. */
int kiln_fuse_const_fill(kiln_fuse *f, kiln_dtype dt, int rank, const int64_t *dims, double v);
/* 1 if dst value dst_vid has the type of source value src_vid (dims the
 * fused op left unknown are accepted and refined on kiln_fuse_map). */
int kiln_fuse_type_ok(kiln_fuse *f, int src_vid, int dst_vid);
/* Maps src_vid to dst_vid (refining its type) and counts a change. */
void kiln_fuse_map(kiln_fuse *f, int src_vid, int dst_vid);

/* Attribute values for kiln_fuse_add; names and strings must outlive the call. */

/* ---- matchers: 1 replaced, 0 no match ---- */

int kiln_fuse_rope(kiln_fuse *f, int ni);
int kiln_fuse_rope_partial(kiln_fuse *f, int ni);
int kiln_fuse_attention(kiln_fuse *f, int ni);

#endif
