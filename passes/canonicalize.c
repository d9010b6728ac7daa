/* canonicalize.c - the clean-up pass every pipeline starts with.
 *
 * One rebuild of the graph applies, node by node:
 *  - dead code elimination (nodes that reach no graph output are not copied);
 *  - constant folding (all inputs known, result small: run the reference
 *    kernel now and store a const);
 *  - shape folding (integer vectors whose contents inference knows
 *    statically, e.g. Shape of a static tensor, become consts);
 *  - shape-chain collapse (Reshape/Expand whose target came through a
 *    Shape->Gather->Concat chain but whose output type is known get a
 *    constant target using 0/-1 or 1 markers, so the chain dies);
 *  - simplifications: Identity/no-op Cast/inference Dropout removal,
 *    Transpose(Transpose), MatMul(x, Transpose(W)) -> Linear(x, W),
 *    Gemm(transB=1) -> Linear;
 *  - common subexpression elimination (same op, inputs and attributes;
 *    identical small consts).
 * The rebuild repeats until nothing changes. */
#include "kiln_passes.h"

#include <stdlib.h>
#include <string.h>

/* Folding limits: fold only small results so a folded weight transform
 * never duplicates a large tensor. */
#define FOLD_MAX_OUT_BYTES (1 << 20)
#define FOLD_MAX_IN_ELEMS (1 << 20)
#define CSE_CONST_BYTES 256

typedef struct canon {
    kiln_rewriter rw;
    kiln_strmap cse; /* node/const key -> dst node index or const value id */
    int changed;
} canon;

static void key_attrs(kiln_sb *k, const kiln_node *n)
{
    for (int i = 0; i < n->n_attrs; i++) {
        const kiln_attr *a = &n->attrs[i];
        kiln_sb_printf(k, "|%s:%d:%lld:%.17g:", a->name, a->kind, (long long)a->i, a->f);
        if (a->s)
            kiln_sb_printf(k, "%s", a->s);
        for (int j = 0; j < a->n; j++) {
            if (a->kind == KILN_ATTR_INTS)
                kiln_sb_printf(k, "%lld,", (long long)a->ints[j]);
            else if (a->kind == KILN_ATTR_FLOATS)
                kiln_sb_printf(k, "%.17g,", a->floats[j]);
            else if (a->kind == KILN_ATTR_STRINGS)
                kiln_sb_printf(k, "%s\x1f", a->strings[j]);
        }
    }
}

static int is_const(const kiln_graph *g, int vid)
{
    return vid >= 0 && g->values[vid].kind == KILN_VAL_CONST;
}

static int is_known(const kiln_graph *g, int vid)
{
    if (vid < 0)
        return 1;
    const kiln_value *v = &g->values[vid];
    if (v->kind == KILN_VAL_CONST)
        return 1;
    return v->kind == KILN_VAL_WEIGHT && kiln_type_numel(&v->type) <= FOLD_MAX_IN_ELEMS;
}

/* Dedupes small consts by content. */
static int canon_const(canon *c, int vid)
{
    kiln_graph *d = c->rw.dst;
    const kiln_value *v = &d->values[vid];
    if (v->kind != KILN_VAL_CONST || v->nbytes > CSE_CONST_BYTES)
        return vid;
    kiln_sb k = {0};
    kiln_sb_printf(&k, "const:%d:%d", v->type.dtype, v->type.rank);
    for (int i = 0; i < v->type.rank; i++)
        kiln_sb_printf(&k, ",%lld", (long long)v->type.dims[i]);
    kiln_sb_put(&k, ":", 1);
    for (size_t i = 0; i < v->nbytes; i++)
        kiln_sb_printf(&k, "%02x", ((const unsigned char *)v->data)[i]);
    int found;
    if (kiln_strmap_get(&c->cse, k.s, &found)) {
        kiln_sb_free(&k);
        if (found != vid)
            c->changed = 1; /* the duplicate is left unused; the next round drops it */
        return found;
    }
    kiln_strmap_put(&c->cse, k.s, vid);
    kiln_sb_free(&k);
    return vid;
}

static int mapped(canon *c, int src_vid)
{
    int v = kiln_rw_value(&c->rw, src_vid);
    return v >= 0 ? canon_const(c, v) : v;
}

/* Folds node ni (all inputs known in dst). 1 folded, 0 not foldable, -1 error. */
static int try_fold(canon *c, int ni, const int *ins, kiln_err *err)
{
    kiln_graph *s = c->rw.src, *d = c->rw.dst;
    const kiln_node *n = &s->nodes[ni];
    if (n->op->flags & KILN_OP_STATEFUL)
        return 0;
    size_t out_bytes = 0;
    for (int k = 0; k < n->n_outputs; k++) {
        const kiln_type *t = &s->values[n->outputs[k]].type;
        int64_t numel = kiln_type_numel(t);
        if (numel < 0)
            return 0; /* shape only known at run time */
        out_bytes += kiln_dtype_storage(t->dtype, numel);
    }
    if (out_bytes > FOLD_MAX_OUT_BYTES)
        return 0;
    kiln_tensor views[KILN_MAX_OP_INPUTS];
    const kiln_tensor *in[KILN_MAX_OP_INPUTS];
    for (int k = 0; k < n->n_inputs; k++) {
        in[k] = NULL;
        if (ins[k] < 0)
            continue;
        if (kiln_graph_value_tensor(d, ins[k], &views[k], err))
            return -1;
        in[k] = &views[k];
    }
    kiln_tensor out[KILN_MAX_OP_OUTPUTS];
    memset(out, 0, sizeof out);
    kiln_err e2;
    if (kiln_interp_node(n, in, n->n_inputs, out, n->n_outputs, &e2))
        return 0; /* leave it for run time, where the error will name it */
    for (int k = 0; k < n->n_outputs; k++) {
        const kiln_value *sv = &s->values[n->outputs[k]];
        kiln_type t = sv->type;
        for (int q = 0; q < out[k].rank; q++)
            t.dims[q] = out[k].dims[q];
        t.rank = out[k].rank;
        int id = kiln_graph_add_const(d, sv->name, &t, out[k].data, out[k].nbytes, err);
        kiln_tensor_free(&out[k]);
        if (id < 0) {
            for (int q = k + 1; q < n->n_outputs; q++)
                kiln_tensor_free(&out[q]);
            return -1;
        }
        kiln_rw_set(&c->rw, n->outputs[k], canon_const(c, id));
    }
    c->changed = 1;
    return 1;
}

/* An integer vector whose contents inference knows statically becomes a const. */
static int try_symval_const(canon *c, int src_vid, kiln_err *err)
{
    const kiln_value *v = &c->rw.src->values[src_vid];
    if (!v->symval || v->type.rank > 1 || !kiln_dtype_get(v->type.dtype)->is_int)
        return 0;
    if (kiln_type_numel(&v->type) != v->symval_n)
        return 0;
    for (int i = 0; i < v->symval_n; i++)
        if (!KILN_DIM_IS_STATIC(v->symval[i]))
            return 0;
    int64_t n = v->symval_n;
    kiln_tensor t;
    kiln_tensor_alloc(&t, v->type.dtype, v->type.rank, &n);
    for (int i = 0; i < v->symval_n; i++)
        kiln_store_i64(t.dtype, t.data, i, v->symval[i]);
    kiln_type ty = v->type;
    int id = kiln_graph_add_const(c->rw.dst, v->name, &ty, t.data, t.nbytes, err);
    kiln_tensor_free(&t);
    if (id < 0)
        return -1;
    kiln_rw_set(&c->rw, src_vid, canon_const(c, id));
    c->changed = 1;
    return 1;
}

/* Target vector for Reshape(x) -> out using 0 (copy input dim), -1 (one
 * inferred dim) and static sizes, valid for every value of the symbols.
 * Returns the length or -1. */
static int reshape_target(const kiln_type *in, const kiln_type *out, int64_t *t)
{
    if (in->rank < 0 || out->rank < 0)
        return -1;
    int minus = 0;
    for (int i = 0; i < out->rank; i++) {
        kiln_dim d = out->dims[i];
        if (d == KILN_DIM_ANY)
            return -1;
        if (i < in->rank && in->dims[i] == d && !KILN_DIM_IS_STATIC(d))
            t[i] = 0;
        else if (KILN_DIM_IS_STATIC(d))
            t[i] = d;
        else if (!minus++)
            t[i] = -1;
        else
            return -1;
    }
    return out->rank;
}

/* Target vector for Expand(x) -> out: 1 keeps the input's dim (right-aligned). */
static int expand_target(const kiln_type *in, const kiln_type *out, int64_t *t)
{
    if (in->rank < 0 || out->rank < 0 || out->rank < in->rank)
        return -1;
    for (int i = 0; i < out->rank; i++) {
        kiln_dim d = out->dims[i];
        int k = i - (out->rank - in->rank);
        if (d == KILN_DIM_ANY)
            return -1;
        if (k >= 0 && in->dims[k] == d)
            t[i] = 1;
        else if (KILN_DIM_IS_STATIC(d))
            t[i] = d;
        else
            return -1;
    }
    return out->rank;
}

static int add_node_named(canon *c, const kiln_node *n, const char *op, const int *ins, int nin,
                          const kiln_attr *attrs, int nattrs, kiln_err *err)
{
    const char *names[KILN_MAX_OP_OUTPUTS];
    for (int k = 0; k < n->n_outputs; k++)
        names[k] = c->rw.src->values[n->outputs[k]].name;
    int nn = kiln_graph_add_node(c->rw.dst, op, n->name, ins, nin, names, n->n_outputs, attrs,
                                 nattrs, err);
    if (nn < 0)
        return -1;
    for (int k = 0; k < n->n_outputs; k++)
        kiln_rw_set(&c->rw, n->outputs[k], c->rw.dst->nodes[nn].outputs[k]);
    c->changed = 1;
    return nn;
}

/* Producer node (in dst) of a dst value, or NULL. */
static const kiln_node *dst_producer(canon *c, int vid)
{
    if (vid < 0 || c->rw.dst->values[vid].kind != KILN_VAL_NODE)
        return NULL;
    return &c->rw.dst->nodes[c->rw.dst->values[vid].producer];
}

/* Local rewrites; 1 if the node was replaced, 0 to copy it, -1 on error. */
static int simplify(canon *c, int ni, int *ins, const int *uses, kiln_err *err)
{
    kiln_graph *s = c->rw.src, *d = c->rw.dst;
    const kiln_node *n = &s->nodes[ni];
    const char *op = n->op->name;
    int out0 = n->outputs[0];
    int is_graph_out = 0;
    for (int i = 0; i < s->n_outputs; i++)
        is_graph_out |= s->outputs[i] == out0;

    /* pass-through ops: the output is the input (keep them when they name a graph output) */
    int passthru = !strcmp(op, "Identity") ||
                   (!strcmp(op, "Cast") && d->values[ins[0]].type.dtype == s->values[out0].type.dtype) ||
                   (!strcmp(op, "Dropout") && (n->n_outputs == 1 || uses[n->outputs[1]] == 0) &&
                    (n->n_inputs < 3 || (is_const(d, ins[2]) && kiln_load_i64(d->values[ins[2]].type.dtype, d->values[ins[2]].data, 0) == 0)));
    if (passthru && !is_graph_out) {
        kiln_rw_set(&c->rw, out0, ins[0]);
        c->changed = 1;
        return 1;
    }

    if (!strcmp(op, "Reshape") && !is_const(d, ins[1])) {
        int64_t t[KILN_MAX_RANK];
        int r = reshape_target(&d->values[ins[0]].type, &s->values[out0].type, t);
        if (r >= 0 && kiln_node_int(n, "allowzero") == 0) {
            int cv = kiln_add_const_i64(d, "shape", t, r, err);
            if (cv < 0)
                return -1;
            int nins[2] = {ins[0], canon_const(c, cv)};
            return add_node_named(c, n, "Reshape", nins, 2, n->attrs, n->n_attrs, err) < 0 ? -1 : 1;
        }
    }
    if (!strcmp(op, "Expand") && !is_const(d, ins[1])) {
        int64_t t[KILN_MAX_RANK];
        int r = expand_target(&d->values[ins[0]].type, &s->values[out0].type, t);
        if (r >= 0) {
            int cv = kiln_add_const_i64(d, "shape", t, r, err);
            if (cv < 0)
                return -1;
            int nins[2] = {ins[0], canon_const(c, cv)};
            return add_node_named(c, n, "Expand", nins, 2, NULL, 0, err) < 0 ? -1 : 1;
        }
    }
    /* Transpose(Transpose(x, p), q) = Transpose(x, p∘q) */
    if (!strcmp(op, "Transpose")) {
        const kiln_node *p = dst_producer(c, ins[0]);
        int nq, np;
        const int64_t *q = kiln_node_ints(n, "perm", &nq);
        if (p && !strcmp(p->op->name, "Transpose") && q) {
            const int64_t *pp = kiln_node_ints(p, "perm", &np);
            if (pp && np == nq) {
                int64_t comp[KILN_MAX_RANK];
                int ident = 1;
                for (int i = 0; i < nq; i++) {
                    comp[i] = pp[q[i]];
                    ident &= comp[i] == i;
                }
                int src_in = p->inputs[0];
                if (ident && !is_graph_out) {
                    kiln_rw_set(&c->rw, out0, src_in);
                    c->changed = 1;
                    return 1;
                }
                kiln_attr a;
                memset(&a, 0, sizeof a);
                a.name = "perm";
                a.kind = KILN_ATTR_INTS;
                a.n = nq;
                a.ints = comp;
                int nins[1] = {src_in};
                return add_node_named(c, n, "Transpose", nins, 1, &a, 1, err) < 0 ? -1 : 1;
            }
        }
    }
    /* MatMul(x, Transpose(W)) with W 2-D: x·Wᵀ is Linear(x, W) */
    if (!strcmp(op, "MatMul") && kiln_op_find("Linear")) {
        const kiln_node *p = dst_producer(c, ins[1]);
        if (p && !strcmp(p->op->name, "Transpose") && d->values[p->inputs[0]].type.rank == 2 &&
            d->values[ins[0]].type.rank >= 1 && kiln_dtype_get(d->values[ins[0]].type.dtype)->is_float) {
            int np;
            const int64_t *pp = kiln_node_ints(p, "perm", &np);
            if (np == 2 && pp[0] == 1 && pp[1] == 0) {
                int nins[2] = {ins[0], p->inputs[0]};
                return add_node_named(c, n, "Linear", nins, 2, NULL, 0, err) < 0 ? -1 : 1;
            }
        }
    }
    /* Gemm(A, B, C){transB=1, transA=0, alpha=beta=1} with 1-D (or absent) C is Linear */
    if (!strcmp(op, "Gemm") && kiln_op_find("Linear") && kiln_node_int(n, "transA") == 0 &&
        kiln_dtype_get(d->values[ins[0]].type.dtype)->is_float &&
        kiln_node_int(n, "transB") == 1 && kiln_node_float(n, "alpha") == 1.0 &&
        (n->n_inputs < 3 || ins[2] < 0 ||
         (kiln_node_float(n, "beta") == 1.0 && d->values[ins[2]].type.rank == 1))) {
        int nins[3] = {ins[0], ins[1], n->n_inputs > 2 ? ins[2] : -1};
        return add_node_named(c, n, "Linear", nins, nins[2] >= 0 ? 3 : 2, NULL, 0, err) < 0 ? -1 : 1;
    }
    return 0;
}

static int copy_with_cse(canon *c, int ni, const int *ins, kiln_err *err)
{
    kiln_graph *s = c->rw.src;
    const kiln_node *n = &s->nodes[ni];
    kiln_sb k = {0};
    kiln_sb_printf(&k, "%s(", n->op->name);
    for (int i = 0; i < n->n_inputs; i++)
        kiln_sb_printf(&k, "%d,", ins[i]);
    kiln_sb_printf(&k, ")%d", n->n_outputs);
    key_attrs(&k, n);
    int found;
    if (!(n->op->flags & KILN_OP_STATEFUL) && kiln_strmap_get(&c->cse, k.s, &found)) {
        const kiln_node *m = &c->rw.dst->nodes[found];
        for (int q = 0; q < n->n_outputs; q++)
            kiln_rw_set(&c->rw, n->outputs[q], m->outputs[q]);
        kiln_sb_free(&k);
        c->changed = 1;
        return 0;
    }
    const char *names[KILN_MAX_OP_OUTPUTS];
    for (int q = 0; q < n->n_outputs; q++)
        names[q] = s->values[n->outputs[q]].name;
    int nn = kiln_graph_add_node(c->rw.dst, n->op->name, n->name, ins, n->n_inputs, names,
                                 n->n_outputs, n->attrs, n->n_attrs, err);
    if (nn < 0) {
        kiln_sb_free(&k);
        return -1;
    }
    for (int q = 0; q < n->n_outputs; q++)
        kiln_rw_set(&c->rw, n->outputs[q], c->rw.dst->nodes[nn].outputs[q]);
    kiln_strmap_put(&c->cse, k.s, nn);
    kiln_sb_free(&k);
    return 0;
}

static int canon_once(kiln_graph **gp, int *changed, kiln_err *err)
{
    canon c;
    memset(&c, 0, sizeof c);
    kiln_graph *g = *gp;
    char *live = kiln_graph_live_nodes(g);
    int *uses = kiln_use_counts(g);
    kiln_rw_begin(&c.rw, g);
    int rc = -1;
    for (int ni = 0; ni < g->n_nodes; ni++) {
        const kiln_node *n = &g->nodes[ni];
        if (!live[ni]) {
            c.changed = 1;
            continue;
        }
        /* outputs whose contents inference already knows */
        int all_sym = 1;
        for (int k = 0; k < n->n_outputs; k++) {
            int r = try_symval_const(&c, n->outputs[k], err);
            if (r < 0)
                goto out;
            all_sym &= r;
        }
        if (all_sym)
            continue;
        int ins[KILN_MAX_OP_INPUTS], known = 1;
        for (int k = 0; k < n->n_inputs; k++) {
            ins[k] = n->inputs[k] >= 0 ? mapped(&c, n->inputs[k]) : -1;
            if (n->inputs[k] >= 0 && ins[k] < 0) {
                kiln_errf(err, "%%%s used before definition", g->values[n->inputs[k]].name);
                goto out;
            }
            known &= is_known(c.rw.dst, ins[k]);
        }
        if (known) {
            int r = try_fold(&c, ni, ins, err);
            if (r < 0)
                goto out;
            if (r)
                continue;
        }
        int r = simplify(&c, ni, ins, uses, err);
        if (r < 0)
            goto out;
        if (r)
            continue;
        if (copy_with_cse(&c, ni, ins, err))
            goto out;
    }
    *changed = c.changed;
    {
        kiln_graph *ng = kiln_rw_end(&c.rw, err); /* frees g on success only */
        if (ng) {
            *gp = ng;
            rc = 0;
        }
    }
    goto done;
out:
    kiln_rw_abort(&c.rw); /* the source graph is intact and stays in *gp */
done:
    kiln_strmap_free(&c.cse);
    free(live);
    free(uses);
    return rc;
}

int kiln_pass_canonicalize(kiln_graph **g, const kiln_pass_opts *o, kiln_err *err)
{
    (void)o;
    for (int iter = 0; iter < 8; iter++) {
        int changed = 0;
        if (canon_once(g, &changed, err))
            return -1;
        if (!changed)
            break;
    }
    return 0;
}
