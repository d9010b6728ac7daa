/* fuse_attention.c - scaled dot-product attention written out as matmuls
 * becomes GQAttention (or ONNX Attention).
 *
 * Recognized, from the root MatMul(probs, v) backwards:
 *   probs  = Softmax(s, axis=-1)               (optionally between Casts)
 *   s      = masks over scaled scores: Where(m, s', fill) / Where(m, fill, s')
 *            with fill <= -1e4, or Add(s', mask), any number of them, above
 *   s'     = Mul/Div of MatMul(q, kT) by constants (also on q and kT)
 *   kT     = Transpose(k, [0,1,3,2]), or Transpose(k', [0,2,3,1]) of the
 *            [B, S, H, D] head split
 *   k, v   = repeat_kv(Concat(past, new, axis=2)) where repeat_kv is
 *            Unsqueeze(2)/Expand/Reshape (GQA) and the Concat is the KV cache
 * and, after the root, Transpose([0,2,1,3]) + Reshape to [B, S, H*Dv].
 *
 * With that head merge, q/k/v are taken back to their [B, S, H*D] form (the
 * head-split Reshape/Transpose are looked through, and a RotaryEmbedding on
 * 4-D heads is redone on the 3-D form) and the result is GQAttention, whose
 * present K/V outputs replace the cache Concats. Otherwise ONNX Attention
 * on the 4-D operands.
 *
 * A mask that depends only on shapes (Range/Less/Trilu/Slice of a const
 * triangle ...) is evaluated for several sizes of the graph's symbols; if it
 * is exactly "key j visible from query i iff j <= past + i" every time, it
 * is dropped and the op's causal flag set. Other masks are kept and fed as
 * the op's additive bias. */
#include "fuse_patterns.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MASK_EVAL_MAX_NODES 256
#define MASK_EVAL_MAX_ELEMS ((int64_t)1 << 25)
/* A fill at or below this masks a key: exp(-1e4) is 0 in every float type. */
#define MASK_FILL_MAX (-1e4)
#define MASK_MAX_TERMS 4
/* Context length of the last check: a sliding-window mask looks causal at
 * short lengths, so one check runs past the common window sizes. */
#define MASK_LONG 4100

/* A 4-D [B, H, S, D] operand, held as such or as its [B, S, H, D] transpose. */
typedef struct heads {
    int vid;
    int bshd;
} heads;

enum { MASK_KEEP, MASK_DROP, MASK_ADD };

typedef struct mask_term {
    int vid, kind, fill;
} mask_term;

typedef struct attn_plan {
    kiln_fuse_pat p; /* without the head merge */
    heads q, k_new, v_new;
    int k_past, v_past, k_all, v_all; /* source values; -1 without a KV cache */
    int64_t H, KVH;
    double scale;
    mask_term masks[MASK_MAX_TERMS];
    int n_masks;
    int scores;                   /* the scaled-score chain's bottom MatMul output */
    const kiln_node *merge_t, *merge_r; /* head merge after the root, or NULL */
} attn_plan;

static int perm_is(const kiln_node *n, int a, int b, int c, int d)
{
    int np;
    const int64_t *p = kiln_node_ints(n, "perm", &np);
    return p && np == 4 && p[0] == a && p[1] == b && p[2] == c && p[3] == d;
}

/* Strips Mul/Div by constants off vid, multiplying them into *scale. */
static int strip_scale(kiln_fuse *f, int vid, double *scale, kiln_fuse_pat *p)
{
    for (int it = 0; it < 8; it++) {
        const kiln_node *n = kiln_fuse_def(f, vid, NULL);
        double c;
        if (!n || n->n_inputs != 2)
            return vid;
        if (!strcmp(n->op->name, "Mul") && kiln_fuse_scalar(f, n->inputs[1], &c)) {
            *scale *= c;
            vid = n->inputs[0];
        } else if (!strcmp(n->op->name, "Mul") && kiln_fuse_scalar(f, n->inputs[0], &c)) {
            *scale *= c;
            vid = n->inputs[1];
        } else if (!strcmp(n->op->name, "Div") && kiln_fuse_scalar(f, n->inputs[1], &c) && c != 0) {
            *scale /= c;
            vid = n->inputs[0];
        } else {
            return vid;
        }
        kiln_fuse_pat_add(p, f, n);
    }
    return vid;
}

static int is_float_cast(kiln_fuse *f, const kiln_node *n)
{
    return n && !strcmp(n->op->name, "Cast") &&
           kiln_dtype_get(kiln_fuse_type(f, n->inputs[0])->dtype)->is_float &&
           kiln_dtype_get(kiln_fuse_type(f, n->outputs[0])->dtype)->is_float;
}

/* vid leads down to a 4-D MatMul through the score chain's ops. */
static int reaches_qk(kiln_fuse *f, int vid, int depth)
{
    const kiln_node *n = kiln_fuse_def(f, vid, NULL);
    if (!n || depth > 12)
        return 0;
    const char *op = n->op->name;
    if (!strcmp(op, "MatMul"))
        return kiln_fuse_type(f, vid)->rank == 4;
    if (strcmp(op, "Mul") && strcmp(op, "Div") && strcmp(op, "Where") && !kiln_fuse_is_add(n) &&
        strcmp(op, "Cast"))
        return 0;
    for (int i = 0; i < n->n_inputs; i++)
        if (reaches_qk(f, n->inputs[i], depth + 1))
            return 1;
    return 0;
}

/* repeat_kv: Reshape(Expand(Unsqueeze(a, [2]), [B,KV,R,T,D]), [B,KV*R,T,D]) -> a */
static void unrepeat(kiln_fuse *f, heads *h, int64_t *rep, kiln_fuse_pat *p)
{
    const kiln_node *rs, *ex, *un;
    int64_t ax[2];
    *rep = 1;
    if (h->bshd || !(rs = kiln_fuse_def(f, h->vid, "Reshape")) ||
        !(ex = kiln_fuse_def(f, rs->inputs[0], "Expand")) ||
        !(un = kiln_fuse_def(f, ex->inputs[0], "Unsqueeze")) ||
        kiln_fuse_ints(f, un->inputs[1], ax, 2) != 1 || ax[0] != 2)
        return;
    const kiln_type *a = kiln_fuse_type(f, un->inputs[0]), *e = kiln_fuse_type(f, ex->outputs[0]);
    const kiln_type *o = kiln_fuse_type(f, h->vid);
    if (a->rank != 4 || e->rank != 5 || o->rank != 4)
        return;
    int64_t kv = kiln_fuse_static(a->dims[1]), r = kiln_fuse_static(e->dims[2]);
    if (kv <= 0 || r <= 0 || e->dims[0] != a->dims[0] || e->dims[1] != a->dims[1] ||
        e->dims[3] != a->dims[2] || e->dims[4] != a->dims[3] || o->dims[0] != a->dims[0] ||
        kiln_fuse_static(o->dims[1]) != kv * r || o->dims[2] != a->dims[2] || o->dims[3] != a->dims[3] ||
        a->dims[0] == KILN_DIM_ANY || a->dims[2] == KILN_DIM_ANY || a->dims[3] == KILN_DIM_ANY)
        return;
    kiln_fuse_pat_add(p, f, rs);
    kiln_fuse_pat_add(p, f, ex);
    kiln_fuse_pat_add(p, f, un);
    h->vid = un->inputs[0];
    *rep = r;
}

/* Concat(past, new, axis=2): the KV cache. */
static void split_past(kiln_fuse *f, heads all, int *past, heads *new_, int *all_vid)
{
    const kiln_node *c = all.bshd ? NULL : kiln_fuse_def(f, all.vid, "Concat");
    *past = -1;
    *all_vid = -1;
    *new_ = all;
    if (c && c->n_inputs == 2 && (kiln_node_int(c, "axis") == 2 || kiln_node_int(c, "axis") == -2) &&
        kiln_fuse_type(f, all.vid)->rank == 4) {
        *past = c->inputs[0];
        new_->vid = c->inputs[1];
        new_->bshd = 0;
        *all_vid = all.vid;
    }
}

/* Slice(v) selecting all of v (HF's attention_mask[:, :, :, :key_len] when
 * the mask is key_len long): v. The shape it reads would otherwise keep
 * the unfused key path alive. */
static int full_slice_of(kiln_fuse *f, int vid)
{
    for (int it = 0; it < 4; it++) {
        const kiln_node *n = kiln_fuse_def(f, vid, "Slice");
        int64_t st[KILN_MAX_RANK];
        if (!n)
            return vid;
        if (n->n_inputs > 4 && n->inputs[4] >= 0) {
            int ns = kiln_fuse_ints(f, n->inputs[4], st, KILN_MAX_RANK);
            if (ns < 0)
                return vid;
            for (int i = 0; i < ns; i++)
                if (st[i] != 1)
                    return vid;
        }
        const kiln_type *a = kiln_fuse_type(f, n->inputs[0]), *b = kiln_fuse_type(f, vid);
        if (a->dtype != b->dtype || a->rank != b->rank || a->rank < 0)
            return vid;
        for (int i = 0; i < a->rank; i++)
            if (a->dims[i] != b->dims[i] || a->dims[i] == KILN_DIM_ANY)
                return vid;
        vid = n->inputs[0];
    }
    return vid;
}

static int parse(kiln_fuse *f, int ni, attn_plan *pl)
{
    const kiln_node *root = &f->g->nodes[ni], *n;
    kiln_fuse_pat *p = &pl->p;
    memset(pl, 0, sizeof *pl);
    pl->scale = 1;
    if (strcmp(root->op->name, "MatMul") != 0 || kiln_fuse_type(f, root->outputs[0])->rank != 4)
        return 0;
    kiln_fuse_pat_add(p, f, root);
    int s = root->inputs[0];
    if (is_float_cast(f, (n = kiln_fuse_def(f, s, "Cast")))) {
        kiln_fuse_pat_add(p, f, n);
        s = n->inputs[0];
    }
    const kiln_node *sm = kiln_fuse_def(f, s, "Softmax");
    if (!sm || (kiln_node_int(sm, "axis") != -1 && kiln_node_int(sm, "axis") != 3))
        return 0;
    kiln_fuse_pat_add(p, f, sm);
    s = sm->inputs[0];
    /* masks, then scales, down to the score MatMul */
    int seen_scale = 0;
    const kiln_node *qk = NULL;
    for (int it = 0; it < 16 && !qk; it++) {
        if (!(n = kiln_fuse_def(f, s, NULL)))
            return 0;
        const char *op = n->op->name;
        double c;
        if (!strcmp(op, "MatMul")) {
            qk = n;
            break;
        }
        if (!strcmp(op, "Cast") && is_float_cast(f, n)) {
            s = n->inputs[0];
        } else if (!strcmp(op, "Mul") || !strcmp(op, "Div")) {
            int s2 = strip_scale(f, s, &pl->scale, p); /* adds the nodes */
            if (s2 == s)
                return 0;
            s = s2;
            seen_scale = 1;
            continue;
        } else if (!strcmp(op, "Where") && !seen_scale && pl->n_masks < MASK_MAX_TERMS) {
            mask_term *m = &pl->masks[pl->n_masks++];
            m->vid = full_slice_of(f, n->inputs[0]);
            if (kiln_fuse_scalar(f, n->inputs[2], &c) && c <= MASK_FILL_MAX) {
                m->kind = MASK_KEEP;
                m->fill = n->inputs[2];
                s = n->inputs[1];
            } else if (kiln_fuse_scalar(f, n->inputs[1], &c) && c <= MASK_FILL_MAX) {
                m->kind = MASK_DROP;
                m->fill = n->inputs[1];
                s = n->inputs[2];
            } else {
                return 0;
            }
        } else if (kiln_fuse_is_add(n) && !seen_scale && pl->n_masks < MASK_MAX_TERMS) {
            int a = reaches_qk(f, n->inputs[0], 0), b = reaches_qk(f, n->inputs[1], 0);
            if (a == b)
                return 0;
            mask_term *m = &pl->masks[pl->n_masks++];
            m->kind = MASK_ADD;
            m->fill = -1;
            m->vid = full_slice_of(f, n->inputs[a ? 1 : 0]);
            s = n->inputs[a ? 0 : 1];
        } else {
            return 0;
        }
        kiln_fuse_pat_add(p, f, n);
    }
    if (!qk || kiln_fuse_type(f, qk->outputs[0])->rank != 4)
        return 0;
    pl->scores = qk->outputs[0];
    kiln_fuse_pat_add(p, f, qk);
    pl->q.vid = strip_scale(f, qk->inputs[0], &pl->scale, p);
    int kt = strip_scale(f, qk->inputs[1], &pl->scale, p);
    const kiln_node *t = kiln_fuse_def(f, kt, "Transpose");
    heads k;
    if (t && perm_is(t, 0, 1, 3, 2))
        k.bshd = 0;
    else if (t && perm_is(t, 0, 2, 3, 1))
        k.bshd = 1;
    else
        return 0;
    k.vid = t->inputs[0];
    kiln_fuse_pat_add(p, f, t);
    heads v = {root->inputs[1], 0};
    int64_t rk, rv;
    unrepeat(f, &k, &rk, p);
    unrepeat(f, &v, &rv, p);
    split_past(f, k, &pl->k_past, &pl->k_new, &pl->k_all);
    split_past(f, v, &pl->v_past, &pl->v_new, &pl->v_all);
    const kiln_type *qt = kiln_fuse_type(f, pl->q.vid), *kt4 = kiln_fuse_type(f, k.vid);
    if (qt->rank != 4 || kt4->rank != 4 || rk != rv || (pl->k_past < 0) != (pl->v_past < 0))
        return 0;
    pl->H = kiln_fuse_static(qt->dims[1]);
    pl->KVH = kiln_fuse_static(kt4->dims[k.bshd ? 2 : 1]);
    if (pl->H <= 0 || pl->KVH <= 0 || pl->H != pl->KVH * rk || !(pl->scale > 0) || !isfinite(pl->scale))
        return 0;
    /* the head merge after the root */
    int out = root->outputs[0];
    const kiln_node *mt, *mr;
    if (f->uses[out] == 1 && !f->is_out[out] &&
        (mt = &f->g->nodes[f->ulist[f->ustart[out]]]) && !strcmp(mt->op->name, "Transpose") &&
        perm_is(mt, 0, 2, 1, 3) && f->uses[mt->outputs[0]] == 1 && !f->is_out[mt->outputs[0]] &&
        (mr = &f->g->nodes[f->ulist[f->ustart[mt->outputs[0]]]]) && !strcmp(mr->op->name, "Reshape")) {
        const kiln_type *rt = kiln_fuse_type(f, mr->outputs[0]), *ot = kiln_fuse_type(f, out);
        if (rt->rank == 3 && rt->dims[0] == ot->dims[0] && rt->dims[1] == ot->dims[2] &&
            ot->dims[0] != KILN_DIM_ANY && ot->dims[2] != KILN_DIM_ANY) {
            pl->merge_t = mt;
            pl->merge_r = mr;
        }
    }
    return kiln_fuse_pat_closed(f, p, ni);
}

/* ---- shape-only evaluation of masks ---- */

/* Evaluates source value vid for symbol variables bound to vars, when it
 * depends only on consts, weights and the shapes of other values. 0 and
 * *out (free with kiln_tensor_free) on success. */
static int eval_shape_only(kiln_fuse *f, int vid, const int64_t *vars, kiln_tensor *out)
{
    kiln_graph *g = f->g;
    if (kiln_fuse_is_data(f, vid)) {
        kiln_err e;
        return kiln_graph_value_tensor(g, vid, out, &e) ? -1 : 0;
    }
    char *need = kiln_xcalloc((size_t)g->n_nodes + 1, 1);
    int *stack = kiln_xmalloc(sizeof(int) * (size_t)(MASK_EVAL_MAX_NODES * KILN_MAX_OP_INPUTS + 1));
    int nst = 0, count = 0, rc = -1;
    kiln_tensor *vals = NULL;
    char *have = NULL;
    int *left = NULL;
    stack[nst++] = vid;
    while (nst > 0) {
        const kiln_value *v = &g->values[stack[--nst]];
        if (v->kind == KILN_VAL_INPUT)
            goto out;
        if (v->kind != KILN_VAL_NODE || need[v->producer])
            continue;
        need[v->producer] = 1;
        if (++count > MASK_EVAL_MAX_NODES)
            goto out;
        const kiln_node *n = &g->nodes[v->producer];
        if (!strcmp(n->op->name, "Shape") || !strcmp(n->op->name, "Size"))
            continue;
        for (int k = 0; k < n->n_inputs; k++)
            if (n->inputs[k] >= 0)
                stack[nst++] = n->inputs[k];
    }
    vals = kiln_xcalloc((size_t)g->n_values + 1, sizeof *vals);
    have = kiln_xcalloc((size_t)g->n_values + 1, 1);
    /* readers left per value, so dead intermediates are freed at once */
    left = kiln_xcalloc((size_t)g->n_values + 1, sizeof(int));
    left[vid] = 1;
    for (int ni = 0; ni < g->n_nodes; ni++)
        for (int k = 0; need[ni] && k < g->nodes[ni].n_inputs; k++)
            if (g->nodes[ni].inputs[k] >= 0)
                left[g->nodes[ni].inputs[k]]++;
    for (int ni = 0; ni < g->n_nodes; ni++) {
        if (!need[ni])
            continue;
        const kiln_node *n = &g->nodes[ni];
        int shape_op = !strcmp(n->op->name, "Shape") || !strcmp(n->op->name, "Size");
        kiln_tensor fake;
        const kiln_tensor *ins[KILN_MAX_OP_INPUTS];
        for (int k = 0; k < n->n_inputs; k++) {
            int w = n->inputs[k];
            ins[k] = NULL;
            if (w < 0)
                continue;
            if (shape_op) { /* only the dims are read */
                const kiln_type *t = &g->values[w].type;
                if (t->rank < 0)
                    goto out;
                memset(&fake, 0, sizeof fake);
                fake.dtype = t->dtype;
                fake.rank = t->rank;
                for (int d = 0; d < t->rank; d++)
                    if ((fake.dims[d] = kiln_dim_eval(&g->syms, t->dims[d], vars)) < 0)
                        goto out;
                ins[k] = &fake;
                continue;
            }
            if (!have[w] && kiln_fuse_is_data(f, w)) {
                kiln_err e;
                if (kiln_graph_value_tensor(g, w, &vals[w], &e))
                    goto out;
                have[w] = 1;
            }
            if (!have[w])
                goto out;
            ins[k] = &vals[w];
        }
        for (int k = 0; k < n->n_outputs; k++) {
            const kiln_type *t = &g->values[n->outputs[k]].type;
            int64_t numel = 1;
            for (int d = 0; d < t->rank && numel >= 0; d++) {
                int64_t x = kiln_dim_eval(&g->syms, t->dims[d], vars);
                numel = x < 0 ? -1 : numel * x;
                if (numel > MASK_EVAL_MAX_ELEMS)
                    goto out;
            }
        }
        kiln_tensor outs[KILN_MAX_OP_OUTPUTS];
        memset(outs, 0, sizeof outs);
        kiln_err e;
        if (kiln_interp_node(n, ins, n->n_inputs, outs, n->n_outputs, &e))
            goto out;
        for (int k = 0; k < n->n_outputs; k++) {
            if (kiln_tensor_numel(&outs[k]) > MASK_EVAL_MAX_ELEMS) {
                for (int q = k; q < n->n_outputs; q++)
                    kiln_tensor_free(&outs[q]);
                goto out;
            }
            vals[n->outputs[k]] = outs[k];
            have[n->outputs[k]] = 1;
        }
        for (int k = 0; k < n->n_inputs; k++)
            if (n->inputs[k] >= 0 && --left[n->inputs[k]] == 0)
                kiln_tensor_free(&vals[n->inputs[k]]);
    }
    *out = vals[vid];
    memset(&vals[vid], 0, sizeof vals[vid]);
    rc = 0;
out:
    if (vals)
        for (int i = 0; i < g->n_values; i++)
            kiln_tensor_free(&vals[i]);
    free(vals);
    free(have);
    free(left);
    free(stack);
    free(need);
    return rc;
}

/* Marks in `mark` the variable symbols dim d is built from. */
static void dim_vars(const kiln_symtab *t, kiln_dim d, char *mark)
{
    if (!KILN_DIM_IS_SYM(d))
        return;
    const kiln_sym *s = &t->syms[KILN_DIM_SYM_ID(d)];
    if (s->kind == KILN_SYM_VAR) {
        mark[KILN_DIM_SYM_ID(d)] = 1;
        return;
    }
    dim_vars(t, s->a, mark);
    dim_vars(t, s->b, mark);
}

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

/* Structural hash of what value vid computes: equal for two masks built
 * the same way from equal consts and from values of equal shapes (each
 * layer of a torch export rebuilds its own), so one causal check serves
 * them all. Shape/Size hash their input's type, not its data. */
static uint64_t value_hash(kiln_fuse *f, int vid, int depth)
{
    kiln_graph *g = f->g;
    if (f->vhash[vid])
        return f->vhash[vid];
    const kiln_value *v = &g->values[vid];
    uint64_t h = mix(0x6b696c6eull, (uint64_t)v->kind);
    h = mix(h, (uint64_t)v->type.dtype);
    h = mix(h, (uint64_t)v->type.rank);
    for (int d = 0; d < v->type.rank; d++)
        h = mix(h, (uint64_t)v->type.dims[d]);
    kiln_err e;
    const void *data;
    if (kiln_fuse_is_data(f, vid) && v->nbytes <= 4096 && (data = kiln_graph_value_data(g, vid, &e))) {
        h = hash_bytes(h, data, v->nbytes);
    } else if (v->kind != KILN_VAL_NODE || depth > 64) {
        h = mix(h, (uint64_t)vid + 1); /* itself only */
    } else {
        const kiln_node *n = &g->nodes[v->producer];
        int shape_op = !strcmp(n->op->name, "Shape") || !strcmp(n->op->name, "Size");
        h = hash_bytes(mix(h, (uint64_t)v->producer_out), n->op->name, strlen(n->op->name));
        for (int i = 0; i < n->n_attrs; i++) {
            const kiln_attr *a = &n->attrs[i];
            h = hash_bytes(mix(h, (uint64_t)a->kind), a->name, strlen(a->name));
            h = mix(mix(h, (uint64_t)a->i), (uint64_t)(int64_t)(a->f * 1e9));
            if (a->s)
                h = hash_bytes(h, a->s, strlen(a->s));
            for (int j = 0; j < a->n; j++)
                h = mix(h, a->ints ? (uint64_t)a->ints[j] : a->floats ? (uint64_t)(int64_t)(a->floats[j] * 1e9) : 0);
        }
        for (int k = 0; k < n->n_inputs; k++) {
            int w = n->inputs[k];
            if (w < 0) {
                h = mix(h, 0x5a5au); /* absent input */
            } else if (shape_op) {
                const kiln_type *t = &g->values[w].type;
                h = mix(h, (uint64_t)t->rank);
                for (int d = 0; d < t->rank; d++)
                    h = mix(h, (uint64_t)t->dims[d]);
            } else {
                h = mix(h, value_hash(f, w, depth + 1));
            }
        }
    }
    return f->vhash[vid] = h ? h : 1;
}

/* 1 if mask term m is exactly the causal mask (key j visible from query i
 * iff j <= P + i, P the cache length) for every size tried. */
static int mask_is_causal(kiln_fuse *f, const attn_plan *pl, const mask_term *m)
{
    kiln_graph *g = f->g;
    const kiln_type *st = kiln_fuse_type(f, pl->scores);
    if (st->rank != 4)
        return 0;
    /* the result depends on the mask, its kind, the score shape and whether a cache precedes */
    char key[96];
    uint64_t sh = mix((uint64_t)st->rank, (uint64_t)(pl->k_past >= 0));
    for (int d = 0; d < 4; d++)
        sh = mix(sh, (uint64_t)st->dims[d]);
    snprintf(key, sizeof key, "%016llx:%016llx:%d", (unsigned long long)value_hash(f, m->vid, 0),
             (unsigned long long)sh, m->kind);
    int cached;
    if (kiln_strmap_get(&f->verdicts, key, &cached))
        return cached;
    int ns = g->syms.n, verdict = 1;
    char *inb = kiln_xcalloc((size_t)ns + 1, 1), *ins = kiln_xcalloc((size_t)ns + 1, 1);
    char *int_ = kiln_xcalloc((size_t)ns + 1, 1);
    int64_t *vars = kiln_xmalloc(sizeof(int64_t) * (size_t)(ns + 1));
    dim_vars(&g->syms, st->dims[0], inb);
    dim_vars(&g->syms, st->dims[2], ins);
    dim_vars(&g->syms, st->dims[3], int_);
    /* batch, query and other (cache) sizes per trial; the last is long */
    static const int64_t trials[][3] = {{1, 1, 0}, {2, 3, 0}, {1, 1, 4}, {1, 3, 2}, {2, 4, 5},
                                        {1, 2, MASK_LONG}};
    int ntrials = (int)(sizeof trials / sizeof trials[0]);
    int has_other = 0;
    for (int i = 0; i < ns; i++)
        has_other |= int_[i] && !inb[i] && !ins[i];
    for (int t = 0; t < ntrials && verdict; t++) {
        int is_long = t == ntrials - 1;
        for (int i = 0; i < ns; i++) {
            vars[i] = 1;
            if (g->syms.syms[i].kind != KILN_SYM_VAR)
                vars[i] = -1;
            else if (inb[i])
                vars[i] = trials[t][0];
            else if (ins[i])
                vars[i] = is_long && !has_other ? MASK_LONG : trials[t][1];
            else if (int_[i])
                vars[i] = trials[t][2];
        }
        int64_t B = kiln_dim_eval(&g->syms, st->dims[0], vars), H = kiln_dim_eval(&g->syms, st->dims[1], vars);
        int64_t S = kiln_dim_eval(&g->syms, st->dims[2], vars), T = kiln_dim_eval(&g->syms, st->dims[3], vars);
        int64_t P = pl->k_past >= 0 ? T - S : 0;
        if (B < 0 || H < 0 || S < 1 || T < 1 || P < 0) {
            verdict = is_long;
            continue;
        }
        kiln_tensor mt;
        if (eval_shape_only(f, m->vid, vars, &mt)) {
            /* at the long size the original graph may fail as well (a mask
             * table shorter than that): nothing to preserve there */
            verdict = is_long;
            continue;
        }
        int64_t tgt[4] = {B, H, S, T}, mst[4] = {0, 0, 0, 0}, own[KILN_MAX_RANK];
        int ok = mt.rank <= 4 && !kiln_dtype_get(mt.dtype)->is_quant, fits = ok;
        int64_t acc = 1;
        for (int a = mt.rank - 1; a >= 0; a--) {
            own[a] = acc;
            acc *= mt.dims[a];
        }
        for (int a = 0; ok && a < mt.rank; a++) {
            int ti = 4 - mt.rank + a;
            if (mt.dims[a] != 1 && mt.dims[a] != tgt[ti])
                ok = fits = 0;
            else
                mst[ti] = mt.dims[a] == 1 ? 0 : own[a];
        }
        int64_t nb = mst[0] ? B : 1, nh = mst[1] ? H : 1;
        for (int64_t b = 0; ok && b < nb; b++)
            for (int64_t h = 0; ok && h < nh; h++)
                for (int64_t i = 0; ok && i < S; i++)
                    for (int64_t j = 0; ok && j < T; j++) {
                        double v = kiln_tensor_get(&mt, b * mst[0] + h * mst[1] + i * mst[2] + j * mst[3]);
                        int allowed;
                        if (m->kind == MASK_KEEP)
                            allowed = v != 0;
                        else if (m->kind == MASK_DROP)
                            allowed = v == 0;
                        else if (v == 0)
                            allowed = 1;
                        else if (v <= MASK_FILL_MAX)
                            allowed = 0;
                        else
                            allowed = -1;
                        ok = allowed == (j <= P + i);
                    }
        kiln_tensor_free(&mt);
        verdict = ok || (is_long && !fits); /* a misfit fails in the original too */
    }
    free(inb);
    free(ins);
    free(int_);
    free(vars);
    kiln_strmap_put(&f->verdicts, key, verdict ? 1 : 0);
    return verdict;
}

/* ---- emission ---- */

static int reshape3(kiln_fuse *f, int dst_vid, const kiln_node *origin)
{
    int64_t s[3] = {0, 0, -1};
    int ins[2] = {dst_vid, kiln_fuse_const_i64(f, s, 3)};
    return dst_vid < 0 ? -1 : kiln_fuse_add1(f, "Reshape", origin, ins, 2, NULL, 0, -1);
}

static int transpose_heads(kiln_fuse *f, int dst_vid, const kiln_node *origin)
{
    int64_t perm[4] = {0, 2, 1, 3};
    kiln_attr a = kiln_attr_ints("perm", perm, 4);
    return dst_vid < 0 ? -1 : kiln_fuse_add1(f, "Transpose", origin, &dst_vid, 1, &a, 1, -1);
}

/* The [B, S, nh*D] form of a heads operand (dst id or -1). */
static int heads_to3d(kiln_fuse *f, heads h, int64_t nh, const kiln_node *origin, int depth)
{
    const kiln_node *n;
    if (!h.bshd) {
        if ((n = kiln_fuse_def(f, h.vid, "Transpose")) && perm_is(n, 0, 2, 1, 3))
            return heads_to3d(f, (heads){n->inputs[0], 1}, nh, origin, depth + 1);
        if ((n = kiln_fuse_def(f, h.vid, "RotaryEmbedding")) && depth < 4 &&
            kiln_fuse_type(f, n->inputs[0])->rank == 4) {
            int x3 = heads_to3d(f, (heads){n->inputs[0], 0}, nh, origin, depth + 1);
            if (x3 < 0)
                return -1;
            kiln_attr at[3] = {kiln_attr_int("interleaved", kiln_node_int(n, "interleaved")),
                               kiln_attr_int("rotary_embedding_dim", kiln_node_int(n, "rotary_embedding_dim")),
                               kiln_attr_int("num_heads", nh)};
            int ins[4] = {x3, kiln_fuse_in(f, n->inputs[1]), kiln_fuse_in(f, n->inputs[2]),
                          n->n_inputs > 3 && n->inputs[3] >= 0 ? kiln_fuse_in(f, n->inputs[3]) : -1};
            return kiln_fuse_add1(f, "RotaryEmbedding", n, ins, 4, at, 3, -1);
        }
        return reshape3(f, transpose_heads(f, kiln_fuse_in(f, h.vid), origin), origin);
    }
    const kiln_type *t = kiln_fuse_type(f, h.vid);
    if ((n = kiln_fuse_def(f, h.vid, "Reshape"))) {
        const kiln_type *it = kiln_fuse_type(f, n->inputs[0]);
        /* a reshape keeps the element count, so [B, S, X] -> [B, S, H, D] has X = H*D */
        if (it->rank == 3 && t->rank == 4 && it->dims[0] == t->dims[0] && it->dims[1] == t->dims[1] &&
            t->dims[0] != KILN_DIM_ANY && t->dims[1] != KILN_DIM_ANY)
            return kiln_fuse_in(f, n->inputs[0]);
    }
    return reshape3(f, kiln_fuse_in(f, h.vid), origin);
}

static int heads_to4d(kiln_fuse *f, heads h, const kiln_node *origin)
{
    int v = kiln_fuse_in(f, h.vid);
    return h.bshd ? transpose_heads(f, v, origin) : v;
}

/* Sum of the masks that are not causal, as an additive bias (dst id); -1
 * when there are none, -2 on failure. *causal is set when a mask was
 * dropped for the causal flag. */
static int build_bias(kiln_fuse *f, attn_plan *pl, const kiln_node *origin, int *causal)
{
    int bias = -1;
    *causal = 0;
    for (int i = 0; i < pl->n_masks; i++) {
        mask_term *m = &pl->masks[i];
        if (mask_is_causal(f, pl, m)) {
            *causal = 1;
            continue;
        }
        int term;
        if (m->kind == MASK_ADD) {
            term = kiln_fuse_in(f, m->vid);
        } else {
            int zero = kiln_fuse_const_fill(f, kiln_fuse_type(f, m->fill)->dtype, 0, NULL, 0.0);
            int fill = kiln_fuse_in(f, m->fill);
            int ins[3] = {kiln_fuse_in(f, m->vid), m->kind == MASK_KEEP ? zero : fill,
                          m->kind == MASK_KEEP ? fill : zero};
            term = kiln_fuse_add1(f, "Where", origin, ins, 3, NULL, 0, -1);
        }
        if (term < 0)
            return -2;
        if (bias >= 0) {
            int ins[2] = {bias, term};
            term = kiln_fuse_add1(f, "Add", origin, ins, 2, NULL, 0, -1);
            if (term < 0)
                return -2;
        }
        bias = term;
    }
    return bias;
}

static int emit_gqa(kiln_fuse *f, attn_plan *pl, const kiln_node *root)
{
    int causal, bias = build_bias(f, pl, root, &causal);
    if (bias == -2)
        return 0;
    int ins[6] = {heads_to3d(f, pl->q, pl->H, root, 0), heads_to3d(f, pl->k_new, pl->KVH, root, 0),
                  heads_to3d(f, pl->v_new, pl->KVH, root, 0),
                  pl->k_past >= 0 ? kiln_fuse_in(f, pl->k_past) : -1,
                  pl->v_past >= 0 ? kiln_fuse_in(f, pl->v_past) : -1, bias};
    if (ins[0] < 0 || ins[1] < 0 || ins[2] < 0)
        return 0;
    kiln_attr at[4] = {kiln_attr_int("num_heads", pl->H), kiln_attr_int("kv_num_heads", pl->KVH),
                       kiln_attr_float("scale", pl->scale), kiln_attr_int("causal", causal)};
    int y_src = pl->merge_r->outputs[0];
    int names[3] = {y_src, pl->k_all, pl->v_all}, outs[3];
    int nout = pl->k_all >= 0 ? 3 : 1;
    if (kiln_fuse_add(f, "GQAttention", root, ins, 6, at, 4, names, nout, outs) ||
        !kiln_fuse_type_ok(f, y_src, outs[0]) ||
        (nout == 3 && (!kiln_fuse_type_ok(f, pl->k_all, outs[1]) || !kiln_fuse_type_ok(f, pl->v_all, outs[2]))))
        return 0;
    kiln_fuse_map(f, y_src, outs[0]);
    if (nout == 3) {
        kiln_fuse_map(f, pl->k_all, outs[1]);
        kiln_fuse_map(f, pl->v_all, outs[2]);
    }
    f->done[kiln_fuse_index(f, pl->merge_t)] = 1;
    f->done[kiln_fuse_index(f, pl->merge_r)] = 1;
    return 1;
}

static int emit_onnx(kiln_fuse *f, attn_plan *pl, const kiln_node *root)
{
    int causal, bias = build_bias(f, pl, root, &causal);
    if (bias == -2)
        return 0;
    int ins[6] = {heads_to4d(f, pl->q, root), heads_to4d(f, pl->k_new, root),
                  heads_to4d(f, pl->v_new, root), bias,
                  pl->k_past >= 0 ? kiln_fuse_in(f, pl->k_past) : -1,
                  pl->v_past >= 0 ? kiln_fuse_in(f, pl->v_past) : -1};
    if (ins[0] < 0 || ins[1] < 0 || ins[2] < 0)
        return 0;
    kiln_attr at[2] = {kiln_attr_float("scale", pl->scale), kiln_attr_int("is_causal", causal)};
    int y_src = root->outputs[0];
    int names[3] = {y_src, pl->k_all, pl->v_all}, outs[3];
    int nout = pl->k_all >= 0 ? 3 : 1;
    if (kiln_fuse_add(f, "Attention", root, ins, 6, at, 2, names, nout, outs) ||
        !kiln_fuse_type_ok(f, y_src, outs[0]) ||
        (nout == 3 && (!kiln_fuse_type_ok(f, pl->k_all, outs[1]) || !kiln_fuse_type_ok(f, pl->v_all, outs[2]))))
        return 0;
    kiln_fuse_map(f, y_src, outs[0]);
    if (nout == 3) {
        kiln_fuse_map(f, pl->k_all, outs[1]);
        kiln_fuse_map(f, pl->v_all, outs[2]);
    }
    return 1;
}

int kiln_fuse_attention(kiln_fuse *f, int ni)
{
    attn_plan pl;
    if (!parse(f, ni, &pl))
        return 0;
    const kiln_node *root = &f->g->nodes[ni];
    if (pl.merge_t) {
        kiln_fuse_pat p2 = pl.p;
        kiln_fuse_pat_add(&p2, f, pl.merge_t);
        kiln_fuse_pat_add(&p2, f, pl.merge_r);
        if (kiln_fuse_pat_closed(f, &p2, kiln_fuse_index(f, pl.merge_r)) && emit_gqa(f, &pl, root))
            return 1;
    }
    return emit_onnx(f, &pl, root);
}
