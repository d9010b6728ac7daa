/* fuse_patterns.c - the `fuse` pass: the decomposed forms exporters write
 * (torch.onnx, HF exporters) become kiln's single ops.
 *
 * The pass runs in three phases, each repeated until nothing changes:
 *  1. LayerNorm / RMSNorm, GELU (erf, tanh), SiLU, QuickGelu, Softmax and
 *     RoPE (fuse_rope.c) from their elementwise decompositions;
 *  2. scaled-dot-product attention (fuse_attention.c), which then sees the
 *     Softmax and RotaryEmbedding ops phase 1 made;
 *  3. projections sharing one input (Q/K/V, gate/up) merged into one
 *     MatMul/Linear and a Split.
 * A round rebuilds the graph once: at each node the phase's matchers look
 * backwards from it through the source graph; a match adds the fused op to
 * the new graph and maps the root's output to it. Everything else is
 * copied; the nodes a fusion made dead are dropped when the round ends.
 * A pattern is fused only when its intermediate values have no readers
 * outside it, so no work is computed twice. docs/passes.md lists the
 * recognized forms. */
#include "fuse_patterns.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest const a fusion writes (merged projection weights). Larger
 * weights are merged only when they already lie side by side in one weight
 * file, so the merged weight is a reference and no model is held twice. */
#define FUSE_COPY_MAX_BYTES (1 << 20)
#define FUSE_MAX_ROUNDS 8

/* ---- reading the source graph ---- */

const kiln_node *kiln_fuse_def(const kiln_fuse *f, int vid, const char *op)
{
    if (vid < 0)
        return NULL;
    const kiln_value *v = &f->g->values[vid];
    if (v->kind != KILN_VAL_NODE)
        return NULL;
    const kiln_node *n = &f->g->nodes[v->producer];
    if (op && strcmp(n->op->name, op) != 0)
        return NULL;
    return n;
}

int kiln_fuse_index(const kiln_fuse *f, const kiln_node *n) { return (int)(n - f->g->nodes); }

const kiln_type *kiln_fuse_type(const kiln_fuse *f, int vid) { return &f->g->values[vid].type; }

int64_t kiln_fuse_static(kiln_dim d) { return KILN_DIM_IS_STATIC(d) ? d : -1; }

int kiln_fuse_is_data(const kiln_fuse *f, int vid)
{
    if (vid < 0)
        return 0;
    kiln_value_kind k = f->g->values[vid].kind;
    return k == KILN_VAL_CONST || k == KILN_VAL_WEIGHT;
}

static int data_view(const kiln_fuse *f, int vid, kiln_tensor *t)
{
    kiln_err e;
    if (!kiln_fuse_is_data(f, vid) || kiln_dtype_get(f->g->values[vid].type.dtype)->is_quant)
        return 0;
    return kiln_graph_value_tensor(f->g, vid, t, &e) == 0;
}

/* A one-element value computed from constants by elementwise ops, e.g.
 * Sqrt(CastLike(2/pi, x)) as onnxscript writes constants; canonicalize
 * cannot fold CastLike while x is unknown, though only its type matters. */
static int scalar_eval(const kiln_fuse *f, int vid, double *v, int depth)
{
    const kiln_type *ty = &f->g->values[vid].type;
    const kiln_dtype_info *di = kiln_dtype_get(ty->dtype);
    if (kiln_type_numel(ty) != 1 || di->is_quant || !(di->is_float || di->is_int))
        return 0;
    kiln_tensor t;
    if (kiln_fuse_is_data(f, vid)) {
        if (!data_view(f, vid, &t))
            return 0;
        *v = kiln_tensor_get(&t, 0);
        return 1;
    }
    const kiln_node *n = kiln_fuse_def(f, vid, NULL);
    if (!n || depth > 4 || n->n_outputs != 1)
        return 0;
    unsigned char buf[16];
    if (!strcmp(n->op->name, "CastLike") || !strcmp(n->op->name, "Cast")) {
        double a;
        if (!scalar_eval(f, n->inputs[0], &a, depth + 1))
            return 0;
        kiln_store_f64(ty->dtype, buf, 0, a); /* rounded to the target type */
        *v = kiln_load_f64(ty->dtype, buf, 0);
        return 1;
    }
    if (!(n->op->flags & KILN_OP_ELEMENTWISE) || n->n_inputs > 3)
        return 0;
    kiln_tensor in[3], out;
    const kiln_tensor *ins[3];
    unsigned char data[3][16];
    for (int k = 0; k < n->n_inputs; k++) {
        double a;
        int w = n->inputs[k];
        const kiln_type *wt = w >= 0 ? &f->g->values[w].type : NULL;
        if (!wt || !scalar_eval(f, w, &a, depth + 1))
            return 0;
        memset(&in[k], 0, sizeof in[k]);
        in[k].dtype = wt->dtype;
        in[k].rank = wt->rank;
        for (int d = 0; d < wt->rank; d++)
            in[k].dims[d] = 1;
        in[k].data = data[k];
        in[k].nbytes = kiln_dtype_storage(wt->dtype, 1);
        kiln_store_f64(wt->dtype, data[k], 0, a);
        ins[k] = &in[k];
    }
    kiln_err e;
    memset(&out, 0, sizeof out);
    if (kiln_interp_node(n, ins, n->n_inputs, &out, 1, &e))
        return 0;
    *v = kiln_tensor_get(&out, 0);
    kiln_tensor_free(&out);
    return 1;
}

int kiln_fuse_scalar(const kiln_fuse *f, int vid, double *v)
{
    return vid >= 0 && scalar_eval(f, vid, v, 0);
}

int kiln_fuse_is_add(const kiln_node *n)
{
    return n && n->n_inputs == 2 && (!strcmp(n->op->name, "Add") || !strcmp(n->op->name, "Sum"));
}

int kiln_fuse_ints(const kiln_fuse *f, int vid, int64_t *v, int max)
{
    kiln_tensor t;
    const kiln_type *ty = vid >= 0 ? &f->g->values[vid].type : NULL;
    if (!ty || ty->rank > 1 || !kiln_dtype_get(ty->dtype)->is_int || !data_view(f, vid, &t))
        return -1;
    int64_t n = kiln_tensor_numel(&t);
    if (n > max)
        return -1;
    for (int64_t i = 0; i < n; i++)
        v[i] = kiln_tensor_get_i64(&t, i);
    return (int)n;
}

int kiln_fuse_other(const kiln_node *n, int vid)
{
    if (n->n_inputs != 2)
        return -1;
    if (n->inputs[0] == vid)
        return n->inputs[1];
    if (n->inputs[1] == vid)
        return n->inputs[0];
    return -1;
}

int kiln_fuse_reduce_axes(const kiln_fuse *f, const kiln_node *n, int64_t *axes)
{
    int r = f->g->values[n->inputs[0]].type.rank, cnt;
    if (r < 1)
        return -1;
    if (n->n_inputs > 1 && n->inputs[1] >= 0) {
        cnt = kiln_fuse_ints(f, n->inputs[1], axes, KILN_MAX_RANK);
        if (cnt < 0 || (cnt == 0 && kiln_node_int(n, "noop_with_empty_axes")))
            return -1;
    } else {
        cnt = 0;
    }
    if (cnt == 0) { /* no axes: every axis */
        for (int i = 0; i < r; i++)
            axes[i] = i;
        return r;
    }
    for (int i = 0; i < cnt; i++) {
        if (axes[i] < 0)
            axes[i] += r;
        if (axes[i] < 0 || axes[i] >= r)
            return -1;
    }
    for (int i = 1; i < cnt; i++) /* insertion sort; duplicates are invalid */
        for (int j = i; j > 0 && axes[j - 1] >= axes[j]; j--) {
            if (axes[j - 1] == axes[j])
                return -1;
            int64_t t = axes[j];
            axes[j] = axes[j - 1];
            axes[j - 1] = t;
        }
    return cnt;
}

int kiln_fuse_slice_last(const kiln_fuse *f, int vid, int *x, int64_t *start, int64_t *end,
                         int64_t *step)
{
    const kiln_node *n = kiln_fuse_def(f, vid, "Slice");
    if (!n)
        return 0;
    const kiln_type *xt = kiln_fuse_type(f, n->inputs[0]);
    if (xt->rank < 1 || !KILN_DIM_IS_STATIC(xt->dims[xt->rank - 1]))
        return 0;
    int64_t D = xt->dims[xt->rank - 1], s, e, ax = 0, st = 1;
    if (kiln_fuse_ints(f, n->inputs[1], &s, 1) != 1 || kiln_fuse_ints(f, n->inputs[2], &e, 1) != 1)
        return 0;
    if (n->n_inputs > 3 && n->inputs[3] >= 0 && kiln_fuse_ints(f, n->inputs[3], &ax, 1) != 1)
        return 0;
    if (n->n_inputs > 4 && n->inputs[4] >= 0 && kiln_fuse_ints(f, n->inputs[4], &st, 1) != 1)
        return 0;
    if (ax < 0)
        ax += xt->rank;
    if (ax != xt->rank - 1 || st <= 0)
        return 0;
    if (s < 0)
        s = s < -D ? 0 : s + D;
    if (e < 0)
        e = e < -D ? 0 : e + D;
    *x = n->inputs[0];
    *start = s > D ? D : s;
    *end = e > D ? D : e;
    *step = st;
    return 1;
}

/* ---- patterns ---- */

int kiln_fuse_pat_has(const kiln_fuse_pat *p, int node)
{
    for (int i = 0; i < p->n; i++)
        if (p->nodes[i] == node)
            return 1;
    return 0;
}

void kiln_fuse_pat_add(kiln_fuse_pat *p, const kiln_fuse *f, const kiln_node *n)
{
    int ni = kiln_fuse_index(f, n);
    if (kiln_fuse_pat_has(p, ni))
        return;
    if (p->n == KILN_FUSE_MAX_PAT)
        p->overflow = 1;
    else
        p->nodes[p->n++] = ni;
}

int kiln_fuse_pat_closed(const kiln_fuse *f, const kiln_fuse_pat *p, int root)
{
    if (p->overflow)
        return 0;
    for (int i = 0; i < p->n; i++) {
        const kiln_node *n = &f->g->nodes[p->nodes[i]];
        if (p->nodes[i] == root)
            continue;
        for (int k = 0; k < n->n_outputs; k++) {
            int v = n->outputs[k];
            if (f->is_out[v])
                return 0;
            for (int u = f->ustart[v]; u < f->ustart[v + 1]; u++) {
                const char *op = f->g->nodes[f->ulist[u]].op->name;
                /* a reader of the shape alone (a mask's length) does not
                 * need the data; it usually dies with a causal mask */
                if (!strcmp(op, "Shape") || !strcmp(op, "Size"))
                    continue;
                if (!kiln_fuse_pat_has(p, f->ulist[u]))
                    return 0;
            }
        }
    }
    return 1;
}

/* ---- building the fused graph ---- */

int kiln_fuse_in(kiln_fuse *f, int src_vid) { return kiln_rw_value(&f->rw, src_vid); }

int kiln_fuse_add(kiln_fuse *f, const char *op, const kiln_node *origin, const int *ins, int nin,
                  const kiln_attr *attrs, int nattrs, const int *name_src, int nout, int *outs)
{
    kiln_graph *d = f->rw.dst;
    const char *names[KILN_MAX_OP_OUTPUTS];
    for (int i = 0; i < nin; i++)
        if (ins[i] < -1 || (ins[i] == -1 && i == 0))
            return -1;
    for (int k = 0; k < nout; k++) {
        names[k] = NULL;
        if (name_src && name_src[k] >= 0) {
            const char *nm = f->g->values[name_src[k]].name;
            if (kiln_graph_find(d, nm) < 0)
                names[k] = nm;
        }
    }
    kiln_err e;
    int nn = kiln_graph_add_node(d, op, origin ? origin->name : NULL, ins, nin, names, nout, attrs,
                                 nattrs, &e);
    if (nn < 0) {
        if (f->verbose)
            fprintf(stderr, "kiln: fuse: not fused: %s\n", e.msg);
        return -1;
    }
    f->emitted = 1;
    for (int k = 0; k < nout; k++)
        outs[k] = d->nodes[nn].outputs[k];
    return 0;
}

int kiln_fuse_add1(kiln_fuse *f, const char *op, const kiln_node *origin, const int *ins, int nin,
                   const kiln_attr *attrs, int nattrs, int name_src)
{
    int out;
    return kiln_fuse_add(f, op, origin, ins, nin, attrs, nattrs, &name_src, 1, &out) ? -1 : out;
}

int kiln_fuse_const_i64(kiln_fuse *f, const int64_t *v, int n)
{
    kiln_err e;
    f->emitted = 1;
    return kiln_add_const_i64(f->rw.dst, "fuse_c", v, n, &e);
}

int kiln_fuse_const_fill(kiln_fuse *f, kiln_dtype dt, int rank, const int64_t *dims, double v)
{
    kiln_tensor t;
    kiln_err e;
    kiln_tensor_alloc(&t, dt, rank, dims);
    int64_t n = kiln_tensor_numel(&t);
    for (int64_t i = 0; i < n; i++)
        kiln_store_f64(dt, t.data, i, v);
    int id = kiln_add_const_tensor(f->rw.dst, "fuse_fill", &t, &e);
    kiln_tensor_free(&t);
    f->emitted = 1;
    return id;
}

int kiln_fuse_type_ok(kiln_fuse *f, int src_vid, int dst_vid)
{
    if (dst_vid < 0)
        return 0;
    const kiln_type *s = &f->g->values[src_vid].type, *d = &f->rw.dst->values[dst_vid].type;
    if (s->dtype != d->dtype)
        return 0;
    if (s->rank < 0 || d->rank < 0)
        return 1;
    if (s->rank != d->rank)
        return 0;
    for (int k = 0; k < s->rank; k++) {
        kiln_dim sd = kiln_dim_import(&f->rw.dst->syms, &f->g->syms, s->dims[k]);
        if (sd != KILN_DIM_ANY && d->dims[k] != KILN_DIM_ANY && sd != d->dims[k])
            return 0;
    }
    return 1;
}

void kiln_fuse_map(kiln_fuse *f, int src_vid, int dst_vid)
{
    const kiln_type *s = &f->g->values[src_vid].type;
    kiln_type *d = &f->rw.dst->values[dst_vid].type;
    if (d->rank < 0 && s->rank >= 0) {
        d->rank = s->rank;
        for (int k = 0; k < s->rank; k++)
            d->dims[k] = KILN_DIM_ANY;
    }
    for (int k = 0; k < d->rank && s->rank == d->rank; k++)
        if (d->dims[k] == KILN_DIM_ANY)
            d->dims[k] = kiln_dim_import(&f->rw.dst->syms, &f->g->syms, s->dims[k]);
    kiln_rw_set(&f->rw, src_vid, dst_vid);
    f->changed = 1;
}

/* Replaces source value `out` (the root's output) with dst value y when
 * the types agree; 1 on success. */
static int finish(kiln_fuse *f, int out, int y)
{
    if (y < 0 || !kiln_fuse_type_ok(f, out, y))
        return 0;
    kiln_fuse_map(f, out, y);
    return 1;
}

static int near(double a, double b) { return fabs(a - b) <= 1e-5 * fabs(b) + 1e-9; }

static int keepdims(const kiln_node *n) { return kiln_node_int(n, "keepdims") != 0; }

/* ---- LayerNorm and RMSNorm --------------------------------------------------------
 * core:  x / sqrt(mean(x^2) + eps)               (RMS)
 *        d / sqrt(mean(d^2) + eps), d = x - mean(x) (LayerNorm)
 * where a / sqrt(u) may be written Div(a, Sqrt(u)), Mul(a, Reciprocal(Sqrt(u))),
 * Mul(a, Div(1, Sqrt(u))), Mul(a, Pow(u, -0.5)); squares as Pow(., 2) or
 * Mul(d, d). With Cast(core) around it (HF computes norms in f32), the
 * input must be a Cast from the output's type, and the fused op reads the
 * uncast input. The root is the core, Mul(core, gamma) or
 * Add(Mul(core, gamma), beta). */

typedef struct norm_plan {
    int x, gamma, beta, rms, axis;
    double eps;
    kiln_fuse_pat p;
} norm_plan;

/* vid = sqrt(u) */
static int sqrt_of(const kiln_fuse *f, int vid, int *u, kiln_fuse_pat *p)
{
    const kiln_node *n;
    double e;
    if ((n = kiln_fuse_def(f, vid, "Sqrt"))) {
        *u = n->inputs[0];
    } else if ((n = kiln_fuse_def(f, vid, "Pow")) && kiln_fuse_scalar(f, n->inputs[1], &e) &&
               e == 0.5) {
        *u = n->inputs[0];
    } else {
        return 0;
    }
    kiln_fuse_pat_add(p, f, n);
    return 1;
}

/* vid = 1 / sqrt(u) */
static int rsqrt_of(const kiln_fuse *f, int vid, int *u, kiln_fuse_pat *p)
{
    const kiln_node *n, *m;
    double e;
    int save = p->n;
    if ((n = kiln_fuse_def(f, vid, "Reciprocal")) && sqrt_of(f, n->inputs[0], u, p))
        goto ok;
    if ((n = kiln_fuse_def(f, vid, "Div")) && kiln_fuse_scalar(f, n->inputs[0], &e) && e == 1 &&
        sqrt_of(f, n->inputs[1], u, p))
        goto ok;
    if ((n = kiln_fuse_def(f, vid, "Pow")) && kiln_fuse_scalar(f, n->inputs[1], &e) && e == -0.5) {
        *u = n->inputs[0];
        goto ok;
    }
    if ((n = kiln_fuse_def(f, vid, "Sqrt")) && (m = kiln_fuse_def(f, n->inputs[0], "Reciprocal"))) {
        *u = m->inputs[0];
        kiln_fuse_pat_add(p, f, m);
        goto ok;
    }
    p->n = save;
    return 0;
ok:
    kiln_fuse_pat_add(p, f, n);
    return 1;
}

/* vid = a / sqrt(u) */
static int div_sqrt(const kiln_fuse *f, int vid, int *a, int *u, kiln_fuse_pat *p)
{
    const kiln_node *n;
    int save = p->n;
    if ((n = kiln_fuse_def(f, vid, "Div")) && sqrt_of(f, n->inputs[1], u, p)) {
        *a = n->inputs[0];
        kiln_fuse_pat_add(p, f, n);
        return 1;
    }
    if ((n = kiln_fuse_def(f, vid, "Mul")))
        for (int k = 0; k < 2; k++) {
            p->n = save;
            if (rsqrt_of(f, n->inputs[k], u, p)) {
                *a = n->inputs[1 - k];
                kiln_fuse_pat_add(p, f, n);
                return 1;
            }
        }
    p->n = save;
    return 0;
}

/* vid = op(x) over *na axes, the reduced axes kept: keepdims=1, or
 * keepdims=0 and an Unsqueeze of the same axes. Adds the nodes to p and
 * returns the reduce node (x is its input), or NULL. */
static const kiln_node *reduced(const kiln_fuse *f, int vid, const char *op, int64_t *axes, int *na,
                                kiln_fuse_pat *p)
{
    const kiln_node *n = kiln_fuse_def(f, vid, op), *u = NULL;
    if (!n && (u = kiln_fuse_def(f, vid, "Unsqueeze")))
        n = kiln_fuse_def(f, u->inputs[0], op);
    if (!n || (*na = kiln_fuse_reduce_axes(f, n, axes)) < 1 || keepdims(n) == (u != NULL))
        return NULL;
    if (u) {
        int64_t ua[KILN_MAX_RANK];
        int r = kiln_fuse_type(f, vid)->rank;
        if (kiln_fuse_ints(f, u->inputs[1], ua, KILN_MAX_RANK) != *na)
            return NULL;
        for (int i = 0; i < *na; i++) {
            int64_t a = ua[i] < 0 ? ua[i] + r : ua[i];
            int found = 0;
            for (int j = 0; j < *na; j++)
                found |= axes[j] == a;
            if (!found)
                return NULL;
        }
        kiln_fuse_pat_add(p, f, u);
    }
    kiln_fuse_pat_add(p, f, n);
    return n;
}

/* Recognizes the normalized value c (before the affine part). */
static int norm_core(kiln_fuse *f, int c, norm_plan *pl)
{
    kiln_fuse_pat *p = &pl->p;
    int save = p->n, core = c, cast_back = 0, a, u, d;
    const kiln_node *n, *m;
    double e = 0;
    if ((n = kiln_fuse_def(f, c, "Cast"))) {
        core = n->inputs[0];
        cast_back = 1;
        kiln_fuse_pat_add(p, f, n);
    }
    if (!div_sqrt(f, core, &a, &u, p))
        goto fail;
    int var = u;
    if (kiln_fuse_is_add(n = kiln_fuse_def(f, u, NULL))) {
        if (kiln_fuse_scalar(f, n->inputs[1], &e))
            var = n->inputs[0];
        else if (kiln_fuse_scalar(f, n->inputs[0], &e))
            var = n->inputs[1];
        else
            goto fail;
        kiln_fuse_pat_add(p, f, n);
    }
    int64_t axes[KILN_MAX_RANK], axes2[KILN_MAX_RANK];
    int na, na2;
    if (!(n = reduced(f, var, "ReduceMean", axes, &na, p)))
        goto fail;
    int sq = n->inputs[0];
    double ex;
    if ((m = kiln_fuse_def(f, sq, "Pow")) && kiln_fuse_scalar(f, m->inputs[1], &ex) && ex == 2) {
        d = m->inputs[0];
    } else if ((m = kiln_fuse_def(f, sq, "Mul")) && m->inputs[0] == m->inputs[1]) {
        d = m->inputs[0];
    } else {
        goto fail;
    }
    kiln_fuse_pat_add(p, f, m);
    if (d != a)
        goto fail;
    int x = a, rms = 1, save2 = p->n;
    const kiln_node *mn;
    if ((m = kiln_fuse_def(f, a, "Sub")) && (mn = reduced(f, m->inputs[1], "ReduceMean", axes2, &na2, p)) &&
        mn->inputs[0] == m->inputs[0] && na2 == na && !memcmp(axes, axes2, sizeof(int64_t) * (size_t)na)) {
        x = m->inputs[0];
        rms = 0;
        kiln_fuse_pat_add(p, f, m);
    } else {
        p->n = save2;
    }
    if (cast_back) {
        /* an upcast and back: the fused op computes at least as precisely */
        kiln_dtype outer = kiln_fuse_type(f, c)->dtype, inner = kiln_fuse_type(f, x)->dtype;
        if (!(m = kiln_fuse_def(f, x, "Cast")) || kiln_fuse_type(f, m->inputs[0])->dtype != outer ||
            !kiln_dtype_get(outer)->is_float || !kiln_dtype_get(inner)->is_float ||
            kiln_dtype_get(outer)->is_quant || kiln_dtype_storage(inner, 1) < kiln_dtype_storage(outer, 1))
            goto fail;
        kiln_fuse_pat_add(p, f, m);
        x = m->inputs[0];
    }
    /* the normalized axes must be the trailing ones */
    int r = kiln_fuse_type(f, x)->rank;
    if (r < 1 || axes[na - 1] != r - 1)
        goto fail;
    for (int i = 1; i < na; i++)
        if (axes[i] != axes[i - 1] + 1)
            goto fail;
    pl->x = x;
    pl->rms = rms;
    pl->axis = (int)axes[0];
    pl->eps = e;
    return 1;
fail:
    p->n = save;
    return 0;
}

static int norm_plan_at(kiln_fuse *f, int ni, norm_plan *pl)
{
    const kiln_node *r = &f->g->nodes[ni], *m;
    memset(pl, 0, sizeof *pl);
    pl->gamma = pl->beta = -1;
    const char *op = r->op->name;
    if (kiln_fuse_is_add(r))
        for (int k = 0; k < 2; k++) {
            if (!(m = kiln_fuse_def(f, r->inputs[k], "Mul")))
                continue;
            for (int j = 0; j < 2; j++) {
                pl->p.n = 0;
                kiln_fuse_pat_add(&pl->p, f, r);
                kiln_fuse_pat_add(&pl->p, f, m);
                if (norm_core(f, m->inputs[j], pl) && !pl->rms &&
                    kiln_fuse_pat_closed(f, &pl->p, ni)) {
                    pl->gamma = m->inputs[1 - j];
                    pl->beta = r->inputs[1 - k];
                    return 1;
                }
            }
        }
    if (!strcmp(op, "Mul") && r->n_inputs == 2)
        for (int j = 0; j < 2; j++) {
            pl->p.n = 0;
            kiln_fuse_pat_add(&pl->p, f, r);
            if (norm_core(f, r->inputs[j], pl) && kiln_fuse_pat_closed(f, &pl->p, ni)) {
                pl->gamma = r->inputs[1 - j];
                return 1;
            }
        }
    pl->p.n = 0;
    kiln_fuse_pat_add(&pl->p, f, r);
    if (norm_core(f, r->outputs[0], pl) && kiln_fuse_pat_closed(f, &pl->p, ni))
        return 1;
    return 0;
}

/* A scale or bias is one value per normalized element (the normalized
 * dims, with leading ones) or a single value: the fused op's kernels index
 * it by position within the row. */
static int norm_param_ok(const kiln_fuse *f, int vid, const kiln_type *xt, int axis)
{
    const kiln_type *t = kiln_fuse_type(f, vid);
    if (kiln_type_numel(t) == 1 && t->rank <= xt->rank)
        return 1;
    if (t->rank < 1 || t->rank > xt->rank)
        return 0;
    for (int i = 0; i < t->rank; i++) {
        int xi = xt->rank - t->rank + i;
        if (xi >= axis ? (t->dims[i] != xt->dims[xi] || t->dims[i] == KILN_DIM_ANY) : t->dims[i] != 1)
            return 0;
    }
    return t->rank >= xt->rank - axis;
}

static int fuse_norm(kiln_fuse *f, int ni)
{
    const kiln_node *r = &f->g->nodes[ni];
    const char *op = r->op->name;
    if (!kiln_fuse_is_add(r) && strcmp(op, "Mul") && strcmp(op, "Div") && strcmp(op, "Cast"))
        return 0;
    norm_plan pl, up;
    if (!norm_plan_at(f, ni, &pl))
        return 0;
    /* a larger match (the affine part, the cast back) rooted at the only
     * reader wins: fuse there instead */
    int out = r->outputs[0];
    if (f->uses[out] == 1 && !f->is_out[out] && norm_plan_at(f, f->ulist[f->ustart[out]], &up) &&
        up.x == pl.x)
        return 0;
    const kiln_type *xt = kiln_fuse_type(f, pl.x);
    if ((pl.gamma >= 0 && !norm_param_ok(f, pl.gamma, xt, pl.axis)) ||
        (pl.beta >= 0 && !norm_param_ok(f, pl.beta, xt, pl.axis)))
        return 0;
    int ins[3] = {kiln_fuse_in(f, pl.x), -1, -1};
    if (pl.gamma >= 0)
        ins[1] = kiln_fuse_in(f, pl.gamma);
    else /* no scale: a scalar one */
        ins[1] = kiln_fuse_const_fill(f, xt->dtype, 0, NULL, 1.0);
    if (pl.beta >= 0)
        ins[2] = kiln_fuse_in(f, pl.beta);
    kiln_attr at[2] = {kiln_attr_int("axis", pl.axis), kiln_attr_float("epsilon", pl.eps)};
    int y = kiln_fuse_add1(f, pl.rms ? "RMSNormalization" : "LayerNormalization", r, ins,
                           pl.beta >= 0 ? 3 : 2, at, 2, out);
    return finish(f, out, y);
}

/* ---- Softmax ---------------------------------------------------------------------
 * e / ReduceSum(e, [a], keepdims) with e = Exp(x) or Exp(x - ReduceMax(x, [a]));
 * the division may be Mul(e, Reciprocal(sum)); keepdims=0 reductions may be
 * followed by Unsqueeze of the same axis. */

static int fuse_softmax(kiln_fuse *f, int ni)
{
    const kiln_node *r = &f->g->nodes[ni], *n, *s, *sub, *mx;
    kiln_fuse_pat p = {0};
    int num = -1, den = -1;
    kiln_fuse_pat_add(&p, f, r);
    if (!strcmp(r->op->name, "Div")) {
        num = r->inputs[0];
        den = r->inputs[1];
    } else if (!strcmp(r->op->name, "Mul")) {
        for (int k = 0; k < 2 && den < 0; k++)
            if ((n = kiln_fuse_def(f, r->inputs[k], "Reciprocal"))) {
                den = n->inputs[0];
                num = r->inputs[1 - k];
                kiln_fuse_pat_add(&p, f, n);
            }
    }
    const kiln_node *e = kiln_fuse_def(f, num, "Exp");
    int64_t axes[KILN_MAX_RANK], axes2[KILN_MAX_RANK];
    int na, na2;
    if (!e || !(s = reduced(f, den, "ReduceSum", axes, &na, &p)) || s->inputs[0] != num || na != 1)
        return 0;
    kiln_fuse_pat_add(&p, f, e);
    int x = e->inputs[0], save = p.n;
    if ((sub = kiln_fuse_def(f, x, "Sub")) && (mx = reduced(f, sub->inputs[1], "ReduceMax", axes2, &na2, &p)) &&
        mx->inputs[0] == sub->inputs[0] && na2 == 1 && axes2[0] == axes[0]) {
        x = sub->inputs[0];
        kiln_fuse_pat_add(&p, f, sub);
    } else {
        p.n = save;
    }
    if (!kiln_fuse_pat_closed(f, &p, ni))
        return 0;
    kiln_attr at = kiln_attr_int("axis", axes[0]);
    int in = kiln_fuse_in(f, x), out = r->outputs[0];
    return finish(f, out, kiln_fuse_add1(f, "Softmax", r, &in, 1, &at, 1, out));
}

/* ---- GELU, SiLU, QuickGelu ---------------------------------------------------------
 * The root is a product; it is flattened into coef * x * A (through Mul,
 * Div by a constant and Neg whose results have no other reader), and A is
 *   Sigmoid(x)                                  -> Silu
 *   Sigmoid(alpha*x)                            -> QuickGelu
 *   1 + Erf(x/sqrt(2)),              coef 0.5   -> Gelu
 *   1 + Tanh(k*(x + 0.044715*x^3)),  coef 0.5   -> Gelu (tanh), k = sqrt(2/pi)
 * The arguments of Erf/Tanh/Sigmoid are read as polynomials in x, so any
 * arrangement of the constants (x*0.7071, x/1.4142, k*x*(1+0.044715*x*x))
 * is recognized. */

#define MONO_MAX 8
#define POLY_DEG 4

typedef struct mono {
    double coef;
    int vid[MONO_MAX], exp[MONO_MAX];
    int n, bad;
} mono;

static void mono_leaf(mono *m, int vid)
{
    for (int i = 0; i < m->n; i++)
        if (m->vid[i] == vid) {
            m->exp[i]++;
            return;
        }
    if (m->n == MONO_MAX) {
        m->bad = 1;
        return;
    }
    m->vid[m->n] = vid;
    m->exp[m->n++] = 1;
}

static void mono_walk(kiln_fuse *f, int vid, int root, mono *m, kiln_fuse_pat *p, int depth)
{
    double c;
    if (m->bad)
        return;
    if (depth > 16) {
        m->bad = 1;
        return;
    }
    if (!root && kiln_fuse_scalar(f, vid, &c)) {
        m->coef *= c;
        return;
    }
    const kiln_node *n = kiln_fuse_def(f, vid, NULL);
    if (!n || (!root && (f->uses[vid] != 1 || f->is_out[vid]))) {
        mono_leaf(m, vid);
        return;
    }
    const char *op = n->op->name;
    if (!strcmp(op, "Mul")) {
        kiln_fuse_pat_add(p, f, n);
        mono_walk(f, n->inputs[0], 0, m, p, depth + 1);
        mono_walk(f, n->inputs[1], 0, m, p, depth + 1);
    } else if (!strcmp(op, "Div") && kiln_fuse_scalar(f, n->inputs[1], &c) && c != 0) {
        kiln_fuse_pat_add(p, f, n);
        m->coef /= c;
        mono_walk(f, n->inputs[0], 0, m, p, depth + 1);
    } else if (!strcmp(op, "Neg")) {
        kiln_fuse_pat_add(p, f, n);
        m->coef = -m->coef;
        mono_walk(f, n->inputs[0], 0, m, p, depth + 1);
    } else {
        mono_leaf(m, vid);
    }
}

/* vid as a polynomial in x of degree <= POLY_DEG (constants and x combined
 * by Add/Sub/Mul/Div-by-constant/Neg/Pow). */
static int poly_walk(kiln_fuse *f, int vid, int x, double *c, kiln_fuse_pat *p, int depth)
{
    double s, a[POLY_DEG + 1], b[POLY_DEG + 1];
    memset(c, 0, sizeof(double) * (POLY_DEG + 1));
    if (vid == x) {
        c[1] = 1;
        return 1;
    }
    if (kiln_fuse_scalar(f, vid, &s)) {
        c[0] = s;
        return 1;
    }
    const kiln_node *n = kiln_fuse_def(f, vid, NULL);
    if (!n || depth > 16 || f->uses[vid] != 1 || f->is_out[vid])
        return 0;
    const char *op = n->op->name;
    kiln_fuse_pat_add(p, f, n);
    if (kiln_fuse_is_add(n) || !strcmp(op, "Sub")) {
        if (!poly_walk(f, n->inputs[0], x, a, p, depth + 1) || !poly_walk(f, n->inputs[1], x, b, p, depth + 1))
            return 0;
        for (int i = 0; i <= POLY_DEG; i++)
            c[i] = strcmp(op, "Sub") ? a[i] + b[i] : a[i] - b[i];
        return 1;
    }
    if (!strcmp(op, "Mul")) {
        if (!poly_walk(f, n->inputs[0], x, a, p, depth + 1) || !poly_walk(f, n->inputs[1], x, b, p, depth + 1))
            return 0;
        for (int i = 0; i <= POLY_DEG; i++)
            for (int j = 0; j <= POLY_DEG; j++) {
                if (a[i] == 0 || b[j] == 0)
                    continue;
                if (i + j > POLY_DEG)
                    return 0;
                c[i + j] += a[i] * b[j];
            }
        return 1;
    }
    if (!strcmp(op, "Div") && kiln_fuse_scalar(f, n->inputs[1], &s) && s != 0) {
        if (!poly_walk(f, n->inputs[0], x, a, p, depth + 1))
            return 0;
        for (int i = 0; i <= POLY_DEG; i++)
            c[i] = a[i] / s;
        return 1;
    }
    if (!strcmp(op, "Neg")) {
        if (!poly_walk(f, n->inputs[0], x, a, p, depth + 1))
            return 0;
        for (int i = 0; i <= POLY_DEG; i++)
            c[i] = -a[i];
        return 1;
    }
    if (!strcmp(op, "Pow") && kiln_fuse_scalar(f, n->inputs[1], &s) && s >= 1 && s <= POLY_DEG &&
        s == floor(s)) {
        if (!poly_walk(f, n->inputs[0], x, a, p, depth + 1))
            return 0;
        memcpy(c, a, sizeof a);
        for (int k = 1; k < (int)s; k++) {
            double t[POLY_DEG + 1] = {0};
            for (int i = 0; i <= POLY_DEG; i++)
                for (int j = 0; j <= POLY_DEG; j++) {
                    if (c[i] == 0 || a[j] == 0)
                        continue;
                    if (i + j > POLY_DEG)
                        return 0;
                    t[i + j] += c[i] * a[j];
                }
            memcpy(c, t, sizeof t);
        }
        return 1;
    }
    return 0;
}

/* c equals the polynomial with the given (degree, coefficient) terms. */
static int poly_is(const double *c, double c1, double c3)
{
    double want[POLY_DEG + 1] = {0, c1, 0, c3, 0};
    for (int i = 0; i <= POLY_DEG; i++)
        if (!near(c[i], want[i]))
            return 0;
    return 1;
}

static int fuse_act(kiln_fuse *f, int ni)
{
    const kiln_node *r = &f->g->nodes[ni];
    if (strcmp(r->op->name, "Mul") != 0)
        return 0;
    int out = r->outputs[0];
    mono m;
    memset(&m, 0, sizeof m);
    m.coef = 1;
    kiln_fuse_pat p = {0};
    kiln_fuse_pat_add(&p, f, r);
    mono_walk(f, out, 1, &m, &p, 0);
    if (m.bad || m.n != 2 || m.exp[0] != 1 || m.exp[1] != 1)
        return 0;
    double c[POLY_DEG + 1];
    for (int k = 0; k < 2; k++) {
        int x = m.vid[k], A = m.vid[1 - k], save = p.n;
        const kiln_node *n, *t;
        const char *op = NULL, *approx = NULL;
        double alpha = 0, one;
        if (f->uses[A] != 1 || f->is_out[A])
            continue;
        if ((n = kiln_fuse_def(f, A, "Sigmoid")) && near(m.coef, 1)) {
            kiln_fuse_pat_add(&p, f, n);
            if (poly_walk(f, n->inputs[0], x, c, &p, 0) && poly_is(c, c[1], 0) && c[1] > 0) {
                alpha = c[1];
                op = near(alpha, 1) ? "Silu" : "QuickGelu";
            }
        } else if (kiln_fuse_is_add(n = kiln_fuse_def(f, A, NULL)) && near(m.coef, 0.5)) {
            int arg = -1;
            if (kiln_fuse_scalar(f, n->inputs[0], &one) && near(one, 1))
                arg = n->inputs[1];
            else if (kiln_fuse_scalar(f, n->inputs[1], &one) && near(one, 1))
                arg = n->inputs[0];
            kiln_fuse_pat_add(&p, f, n);
            if (arg >= 0 && f->uses[arg] == 1 && !f->is_out[arg]) {
                double k2 = sqrt(2 / M_PI);
                if ((t = kiln_fuse_def(f, arg, "Erf"))) {
                    kiln_fuse_pat_add(&p, f, t);
                    if (poly_walk(f, t->inputs[0], x, c, &p, 0) && poly_is(c, M_SQRT1_2, 0)) {
                        op = "Gelu";
                        approx = "none";
                    }
                } else if ((t = kiln_fuse_def(f, arg, "Tanh"))) {
                    kiln_fuse_pat_add(&p, f, t);
                    if (poly_walk(f, t->inputs[0], x, c, &p, 0) && poly_is(c, k2, k2 * 0.044715)) {
                        op = "Gelu";
                        approx = "tanh";
                    }
                }
            }
        }
        if (!op || !kiln_fuse_pat_closed(f, &p, ni)) {
            p.n = save;
            continue;
        }
        kiln_attr at[1];
        int na = 0;
        if (approx)
            at[na++] = kiln_attr_str("approximate", approx);
        else if (!strcmp(op, "QuickGelu"))
            at[na++] = kiln_attr_float("alpha", alpha);
        int in = kiln_fuse_in(f, x);
        return finish(f, out, kiln_fuse_add1(f, op, r, &in, 1, at, na, out));
    }
    return 0;
}

/* ---- merging projections that share an input ---------------------------------------
 * MatMul(x, W_i) with W_i [K, N_i] consts/weights, or Linear(x, W_i[, b_i])
 * with W_i [N_i, K], all reading the same x: one MatMul/Linear over the
 * weights concatenated along N, then Split. MatMul weights interleave rows,
 * so they are copied into a new const (only up to FUSE_COPY_MAX_BYTES).
 * Linear weights concatenate whole: when they lie back to back in one
 * weight file, the merged weight is a reference to that range (no copy at
 * any size); otherwise they are copied up to the same limit. */

#define PROJ_MAX 16

static int proj_member(const kiln_fuse *f, const kiln_node *r, const kiln_node *n)
{
    if (strcmp(n->op->name, r->op->name) != 0 || n->n_inputs != r->n_inputs ||
        n->inputs[0] != r->inputs[0] || n->n_outputs != 1 || f->done[kiln_fuse_index(f, n)])
        return 0;
    const kiln_type *w = kiln_fuse_type(f, n->inputs[1]), *w0 = kiln_fuse_type(f, r->inputs[1]);
    int lin = !strcmp(r->op->name, "Linear"), kax = lin ? 1 : 0;
    if (!kiln_fuse_is_data(f, n->inputs[1]) || w->rank != 2 || w->dtype != w0->dtype ||
        w->dims[kax] != w0->dims[kax] || !kiln_type_is_static(w))
        return 0;
    if (n->n_inputs > 2) {
        if (n->inputs[2] < 0 || r->inputs[2] < 0 || !kiln_fuse_is_data(f, n->inputs[2]))
            return 0;
        const kiln_type *b = kiln_fuse_type(f, n->inputs[2]), *b0 = kiln_fuse_type(f, r->inputs[2]);
        if (b->rank != 1 || b->dtype != b0->dtype || b->dims[0] != w->dims[0])
            return 0;
    }
    return 1;
}

/* A new dst const holding the data of vals[0..n) concatenated along axis 0
 * (axis0 set) or along the last axis; the other dims are those of vals[0]. */
static int concat_const(kiln_fuse *f, const int *vals, int n, int axis0)
{
    const kiln_type *t0 = kiln_fuse_type(f, vals[0]);
    kiln_dtype dt = t0->dtype;
    size_t es = kiln_dtype_storage(dt, 1);
    int last = t0->rank - 1, ax = axis0 ? 0 : last;
    int64_t inner[PROJ_MAX], outer = 1, row = 0;
    const unsigned char *src[PROJ_MAX];
    kiln_err e;
    kiln_type ty = *t0;
    ty.dims[ax] = 0;
    for (int i = 0; i < n; i++) {
        const kiln_type *t = kiln_fuse_type(f, vals[i]);
        int64_t numel = kiln_type_numel(t);
        inner[i] = axis0 ? numel : t->dims[last];
        outer = axis0 ? 1 : numel / (t->dims[last] ? t->dims[last] : 1);
        row += inner[i];
        ty.dims[ax] += t->dims[ax];
        if (!(src[i] = kiln_graph_value_data(f->g, vals[i], &e)))
            return -1;
    }
    size_t bytes = (size_t)(outer * row) * es;
    unsigned char *buf = kiln_xmalloc(bytes + 1), *o = buf;
    for (int64_t r = 0; r < outer; r++)
        for (int i = 0; i < n; i++) {
            memcpy(o, src[i] + (size_t)(r * inner[i]) * es, (size_t)inner[i] * es);
            o += (size_t)inner[i] * es;
        }
    char *name = kiln_graph_fresh_name(f->rw.dst, "merged_");
    int id = kiln_graph_add_const(f->rw.dst, name, &ty, buf, bytes, &e);
    free(name);
    free(buf);
    f->emitted = 1;
    return id;
}

static int fuse_proj(kiln_fuse *f, int ni)
{
    const kiln_node *r = &f->g->nodes[ni];
    int lin = !strcmp(r->op->name, "Linear");
    if (!lin && strcmp(r->op->name, "MatMul") != 0)
        return 0;
    if (!proj_member(f, r, r) || kiln_fuse_type(f, r->inputs[0])->rank < 2)
        return 0;
    int x = r->inputs[0], mem[PROJ_MAX], n = 0;
    for (int u = f->ustart[x]; u < f->ustart[x + 1] && n < PROJ_MAX; u++) {
        const kiln_node *c = &f->g->nodes[f->ulist[u]];
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= mem[i] == f->ulist[u];
        if (!dup && proj_member(f, r, c))
            mem[n++] = f->ulist[u];
    }
    if (n < 2 || mem[0] != ni)
        return 0;
    kiln_dtype dt = kiln_fuse_type(f, r->inputs[1])->dtype;
    const kiln_dtype_info *di = kiln_dtype_get(dt);
    size_t total = 0;
    int ws[PROJ_MAX], bs[PROJ_MAX];
    int64_t sizes[PROJ_MAX];
    for (int i = 0; i < n; i++) {
        const kiln_node *c = &f->g->nodes[mem[i]];
        ws[i] = c->inputs[1];
        bs[i] = c->n_inputs > 2 ? c->inputs[2] : -1;
        total += f->g->values[ws[i]].nbytes;
    }
    int w = -1;
    if (lin) {
        /* back to back in one file, in some order: reference the range */
        int ord[PROJ_MAX];
        for (int i = 0; i < n; i++)
            ord[i] = i;
        for (int i = 1; i < n; i++)
            for (int j = i; j > 0 && f->g->values[ws[ord[j - 1]]].offset > f->g->values[ws[ord[j]]].offset; j--) {
                int t = ord[j];
                ord[j] = ord[j - 1];
                ord[j - 1] = t;
            }
        int contiguous = 1;
        for (int i = 0; i < n; i++) {
            const kiln_value *v = &f->g->values[ws[ord[i]]], *v0 = &f->g->values[ws[ord[0]]];
            contiguous &= v->kind == KILN_VAL_WEIGHT && v->file == v0->file;
            if (i > 0) {
                const kiln_value *pv = &f->g->values[ws[ord[i - 1]]];
                contiguous &= v->offset == pv->offset + pv->nbytes;
            }
        }
        if (contiguous) {
            int m2[PROJ_MAX], w2[PROJ_MAX], b2[PROJ_MAX];
            for (int i = 0; i < n; i++) {
                m2[i] = mem[ord[i]];
                w2[i] = ws[ord[i]];
                b2[i] = bs[ord[i]];
            }
            memcpy(mem, m2, sizeof m2);
            memcpy(ws, w2, sizeof w2);
            memcpy(bs, b2, sizeof b2);
            const kiln_value *v0 = &f->g->values[ws[0]];
            kiln_type ty = v0->type;
            for (int i = 1; i < n; i++)
                ty.dims[0] += f->g->values[ws[i]].type.dims[0];
            char *name = kiln_graph_fresh_name(f->rw.dst, "merged_");
            kiln_err e;
            w = kiln_graph_add_weight(f->rw.dst, name, &ty, v0->file, v0->offset, &e);
            free(name);
            f->emitted = 1;
        }
    }
    if (w < 0) {
        if (total > FUSE_COPY_MAX_BYTES || di->is_quant || di->block_elems != 1 ||
            (dt != KILN_F32 && dt != KILN_F16 && dt != KILN_BF16 && dt != KILN_F64))
            return 0;
        if ((w = concat_const(f, ws, n, lin)) < 0)
            return 0;
    }
    for (int i = 0; i < n; i++) {
        const kiln_type *t = kiln_fuse_type(f, ws[i]);
        sizes[i] = lin ? t->dims[0] : t->dims[1];
    }
    int ins[3] = {kiln_fuse_in(f, x), w, -1};
    if (bs[0] >= 0) {
        size_t bb = 0;
        for (int i = 0; i < n; i++)
            bb += f->g->values[bs[i]].nbytes;
        if (bb > FUSE_COPY_MAX_BYTES || kiln_dtype_get(kiln_fuse_type(f, bs[0])->dtype)->block_elems != 1 ||
            (ins[2] = concat_const(f, bs, n, 1)) < 0)
            return 0;
    }
    int y = kiln_fuse_add1(f, lin ? "Linear" : "MatMul", r, ins, bs[0] >= 0 ? 3 : 2, NULL, 0, -1);
    int sz = kiln_fuse_const_i64(f, sizes, n);
    if (y < 0 || sz < 0)
        return 0;
    int sins[2] = {y, sz}, outs[PROJ_MAX], names[PROJ_MAX];
    for (int i = 0; i < n; i++)
        names[i] = f->g->nodes[mem[i]].outputs[0];
    kiln_attr at = kiln_attr_int("axis", -1);
    if (kiln_fuse_add(f, "Split", r, sins, 2, &at, 1, names, n, outs))
        return 0;
    for (int i = 0; i < n; i++)
        if (!kiln_fuse_type_ok(f, names[i], outs[i]))
            return 0;
    for (int i = 0; i < n; i++) {
        kiln_fuse_map(f, names[i], outs[i]);
        f->done[mem[i]] = 1;
    }
    return 1;
}

/* ---- driver ----------------------------------------------------------------------- */

/* Drops dead nodes, and gives the graph outputs back the names they had
 * when the pass started (a fused op replacing an output, e.g. a present KV
 * cache, may have been named afresh while the dead original held the name). */
static int dce(kiln_graph **gp, char **out_names, kiln_err *err)
{
    kiln_graph *g = *gp;
    char *live = kiln_graph_live_nodes(g);
    kiln_strmap reserved = {0};
    for (int i = 0; i < g->n_outputs; i++)
        kiln_strmap_put(&reserved, out_names[i], i);
    kiln_rewriter rw;
    kiln_rw_begin(&rw, g);
    int rc = -1;
    for (int ni = 0; ni < g->n_nodes; ni++) {
        if (!live[ni])
            continue;
        const kiln_node *n = &g->nodes[ni];
        int ins[KILN_MAX_OP_INPUTS];
        const char *names[KILN_MAX_OP_OUTPUTS];
        for (int k = 0; k < n->n_inputs; k++) {
            ins[k] = n->inputs[k] >= 0 ? kiln_rw_value(&rw, n->inputs[k]) : -1;
            if (n->inputs[k] >= 0 && ins[k] < 0) {
                kiln_errf(err, "%%%s used before it was produced", g->values[n->inputs[k]].name);
                goto out;
            }
        }
        for (int k = 0; k < n->n_outputs; k++) {
            int v = n->outputs[k], oi = -1, tmp;
            for (int i = 0; i < g->n_outputs && oi < 0; i++)
                if (g->outputs[i] == v)
                    oi = i;
            names[k] = g->values[v].name;
            if (oi >= 0)
                names[k] = out_names[oi];
            else if (kiln_strmap_get(&reserved, names[k], &tmp))
                names[k] = NULL;
            if (names[k] && kiln_graph_find(rw.dst, names[k]) >= 0)
                names[k] = NULL;
        }
        int nn = kiln_graph_add_node(rw.dst, n->op->name, n->name, ins, n->n_inputs, names,
                                     n->n_outputs, n->attrs, n->n_attrs, err);
        if (nn < 0)
            goto out;
        rw.dst->nodes[nn].kernel = n->kernel;
        for (int k = 0; k < n->n_outputs; k++) {
            int dv = rw.dst->nodes[nn].outputs[k];
            kiln_type *dt = &rw.dst->values[dv].type, st = g->values[n->outputs[k]].type;
            for (int q = 0; q < st.rank; q++)
                st.dims[q] = kiln_dim_import(&rw.dst->syms, &g->syms, st.dims[q]);
            if (st.dtype == dt->dtype && dt->rank >= 0 && st.rank == dt->rank) {
                int ok = 1;
                for (int q = 0; q < st.rank; q++)
                    ok &= dt->dims[q] == KILN_DIM_ANY || dt->dims[q] == st.dims[q];
                if (ok)
                    *dt = st;
            }
            kiln_rw_set(&rw, n->outputs[k], dv);
        }
    }
    rc = 0;
out:
    free(live);
    kiln_strmap_free(&reserved);
    if (rc) {
        kiln_rw_abort(&rw);
        return -1;
    }
    kiln_graph *ng = kiln_rw_end(&rw, err);
    if (!ng)
        return -1;
    *gp = ng;
    return 0;
}

static int round_once(kiln_graph **gp, int phase, int verbose, int *changed, int *emitted,
                      kiln_err *err)
{
    kiln_graph *g = *gp;
    kiln_fuse f;
    memset(&f, 0, sizeof f);
    f.g = g;
    f.verbose = verbose;
    f.uses = kiln_use_counts(g);
    f.is_out = kiln_xcalloc((size_t)g->n_values + 1, 1);
    for (int i = 0; i < g->n_outputs; i++)
        f.is_out[g->outputs[i]] = 1;
    f.ustart = kiln_xcalloc((size_t)g->n_values + 2, sizeof(int));
    for (int ni = 0; ni < g->n_nodes; ni++)
        for (int k = 0; k < g->nodes[ni].n_inputs; k++)
            if (g->nodes[ni].inputs[k] >= 0)
                f.ustart[g->nodes[ni].inputs[k] + 1]++;
    for (int v = 0; v < g->n_values; v++)
        f.ustart[v + 1] += f.ustart[v];
    f.ulist = kiln_xmalloc(sizeof(int) * (size_t)(f.ustart[g->n_values] + 1));
    int *fill = kiln_xcalloc((size_t)g->n_values + 1, sizeof(int));
    for (int ni = 0; ni < g->n_nodes; ni++)
        for (int k = 0; k < g->nodes[ni].n_inputs; k++) {
            int v = g->nodes[ni].inputs[k];
            if (v < 0)
                continue;
            /* a node reading v twice is listed once */
            if (fill[v] > 0 && f.ulist[f.ustart[v] + fill[v] - 1] == ni)
                continue;
            f.ulist[f.ustart[v] + fill[v]++] = ni;
        }
    /* shorten lists that had duplicates: rebuild ustart compactly */
    {
        int w = 0;
        for (int v = 0; v < g->n_values; v++) {
            int s = f.ustart[v];
            f.ustart[v] = w;
            for (int i = 0; i < fill[v]; i++)
                f.ulist[w++] = f.ulist[s + i];
        }
        f.ustart[g->n_values] = w;
    }
    free(fill);
    f.done = kiln_xcalloc((size_t)g->n_nodes + 1, 1);
    f.vhash = kiln_xcalloc((size_t)g->n_values + 1, sizeof(uint64_t));
    kiln_rw_begin(&f.rw, g);
    int rc = -1;
    for (int ni = 0; ni < g->n_nodes; ni++) {
        if (f.done[ni])
            continue;
        int r = 0;
        if (phase == 1)
            r = fuse_norm(&f, ni) || fuse_act(&f, ni) || fuse_softmax(&f, ni) ||
                kiln_fuse_rope(&f, ni) || kiln_fuse_rope_partial(&f, ni);
        else if (phase == 2)
            r = kiln_fuse_attention(&f, ni);
        else
            r = fuse_proj(&f, ni);
        if (r)
            continue;
        if (kiln_rw_copy_node(&f.rw, ni, err) < 0) {
            kiln_rw_abort(&f.rw);
            goto out;
        }
    }
    *changed = f.changed;
    *emitted = f.emitted;
    {
        kiln_graph *ng = kiln_rw_end(&f.rw, err);
        if (!ng)
            goto out;
        *gp = ng;
    }
    rc = 0;
out:
    free(f.uses);
    free(f.is_out);
    free(f.ustart);
    free(f.ulist);
    free(f.done);
    free(f.vhash);
    kiln_strmap_free(&f.verdicts);
    kiln_strmap_free(&f.memo);
    return rc;
}

int kiln_pass_fuse(kiln_graph **g, const kiln_pass_opts *o, kiln_err *err)
{
    int nout = (*g)->n_outputs, rc = -1;
    char **names = kiln_xcalloc((size_t)nout + 1, sizeof(char *));
    for (int i = 0; i < nout; i++)
        names[i] = kiln_xstrdup((*g)->values[(*g)->outputs[i]].name);
    for (int phase = 1; phase <= 3; phase++)
        for (int it = 0; it < FUSE_MAX_ROUNDS; it++) {
            int changed = 0, emitted = 0;
            if (round_once(g, phase, o && o->verbose, &changed, &emitted, err))
                goto out;
            if (emitted && dce(g, names, err))
                goto out;
            if (!changed)
                break;
        }
    rc = 0;
out:
    for (int i = 0; i < nout; i++)
        free(names[i]);
    free(names);
    return rc;
}
