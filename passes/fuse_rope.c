/* fuse_rope.c - rotary position embeddings written out elementwise become
 * RotaryEmbedding.
 *
 *   x*cos + rotate_half(x)*sin,      rotate_half(x) = concat(-x[h:], x[:h])
 *   x*cos + rotate_every_two(x)*sin, rotate_every_two(x) = flatten(stack(-x[1::2], x[::2]))
 *
 * for x of shape [batch, heads, seq, head]. Exporters pass cos/sin of the
 * full head width, each value written twice (HF: cat(freqs, freqs)); the op
 * wants each once, so a cos/sin input is accepted only when that
 * duplication is proven, structurally (a Concat of a value with itself,
 * through ops that keep the last axis) or from the data of a const table.
 * The caches fed to the op are then slices of the same values: whatever
 * computes cos/sin at run time (from position ids, say) stays and feeds the
 * fused op. A cos/sin gathered from a const table by position ids becomes
 * the op's table + position_ids form instead. */
#include "fuse_patterns.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Largest const cos/sin table whose data is checked for duplication. */
#define ROPE_CHECK_MAX_ELEMS (1 << 24)

/* a = Neg(x) or x * -1 */
static int neg_of(kiln_fuse *f, int vid, int *x, kiln_fuse_pat *p)
{
    const kiln_node *n = kiln_fuse_def(f, vid, "Neg");
    double c;
    if (n) {
        *x = n->inputs[0];
    } else if ((n = kiln_fuse_def(f, vid, "Mul"))) {
        if (kiln_fuse_scalar(f, n->inputs[1], &c) && c == -1)
            *x = n->inputs[0];
        else if (kiln_fuse_scalar(f, n->inputs[0], &c) && c == -1)
            *x = n->inputs[1];
        else
            return 0;
    } else {
        return 0;
    }
    kiln_fuse_pat_add(p, f, n);
    return 1;
}

/* Unsqueeze(a) adding a last axis; returns a or -1. */
static int unsqueeze_last(kiln_fuse *f, int vid, kiln_fuse_pat *p)
{
    const kiln_node *n = kiln_fuse_def(f, vid, "Unsqueeze");
    int64_t ax[2];
    if (!n || kiln_fuse_ints(f, n->inputs[1], ax, 2) != 1)
        return -1;
    int r = kiln_fuse_type(f, vid)->rank;
    if (ax[0] != -1 && ax[0] != r - 1)
        return -1;
    if (p)
        kiln_fuse_pat_add(p, f, n);
    return n->inputs[0];
}

static int concat_axis_last(kiln_fuse *f, const kiln_node *n)
{
    int r = kiln_fuse_type(f, n->outputs[0])->rank;
    int64_t a = kiln_node_int(n, "axis");
    return r > 0 && (a == r - 1 || a == -1);
}

/* vid = rotation of some x (see the file comment); returns x or -1 and sets *inter. */
static int rotation_of(kiln_fuse *f, int vid, int *inter, kiln_fuse_pat *p)
{
    int save = p->n, a, x, x2;
    int64_t s, e, st, s2, e2, st2;
    const kiln_node *c = kiln_fuse_def(f, vid, "Concat"), *rs;
    if (c && c->n_inputs == 2 && concat_axis_last(f, c) && neg_of(f, c->inputs[0], &a, p) &&
        kiln_fuse_slice_last(f, a, &x, &s, &e, &st) &&
        kiln_fuse_slice_last(f, c->inputs[1], &x2, &s2, &e2, &st2) && x == x2 && st == 1 && st2 == 1) {
        const kiln_type *xt = kiln_fuse_type(f, x);
        int64_t D = xt->dims[xt->rank - 1], h = D / 2;
        if (D >= 2 && D % 2 == 0 && s == h && e == D && s2 == 0 && e2 == h) {
            kiln_fuse_pat_add(p, f, c);
            kiln_fuse_pat_add(p, f, kiln_fuse_def(f, a, NULL));
            kiln_fuse_pat_add(p, f, kiln_fuse_def(f, c->inputs[1], NULL));
            *inter = 0;
            return x;
        }
    }
    p->n = save;
    if ((rs = kiln_fuse_def(f, vid, "Reshape")) && (c = kiln_fuse_def(f, rs->inputs[0], "Concat")) &&
        c->n_inputs == 2 && concat_axis_last(f, c)) {
        int u0 = unsqueeze_last(f, c->inputs[0], p), u1 = unsqueeze_last(f, c->inputs[1], p);
        if (u0 >= 0 && u1 >= 0 && neg_of(f, u0, &a, p) && kiln_fuse_slice_last(f, a, &x, &s, &e, &st) &&
            kiln_fuse_slice_last(f, u1, &x2, &s2, &e2, &st2) && x == x2) {
            const kiln_type *xt = kiln_fuse_type(f, x), *ot = kiln_fuse_type(f, vid);
            int64_t D = xt->dims[xt->rank - 1];
            int same = ot->rank == xt->rank;
            for (int i = 0; same && i < xt->rank; i++)
                same = ot->dims[i] == xt->dims[i] && ot->dims[i] != KILN_DIM_ANY;
            if (same && D >= 2 && D % 2 == 0 && s == 1 && st == 2 && e >= D - 1 && s2 == 0 &&
                st2 == 2 && e2 >= D - 1) {
                kiln_fuse_pat_add(p, f, rs);
                kiln_fuse_pat_add(p, f, c);
                kiln_fuse_pat_add(p, f, kiln_fuse_def(f, a, NULL));
                kiln_fuse_pat_add(p, f, kiln_fuse_def(f, u1, NULL));
                *inter = 1;
                return x;
            }
        }
    }
    p->n = save;
    return -1;
}

/* 1 if every row of vid along its last axis (of size D) repeats its first
 * half in its second half (mode 0) or holds equal adjacent pairs (mode 1). */
static int dup_last(kiln_fuse *f, int vid, int64_t D, int mode, int depth)
{
    const kiln_type *t = kiln_fuse_type(f, vid);
    if (t->rank < 1 || t->dims[t->rank - 1] != D || depth > 24)
        return 0;
    int last = t->rank - 1;
    if (kiln_fuse_is_data(f, vid)) {
        kiln_tensor tv;
        kiln_err e;
        int64_t n = kiln_type_numel(t);
        if (n < 0 || n > ROPE_CHECK_MAX_ELEMS || kiln_dtype_get(t->dtype)->is_quant ||
            kiln_graph_value_tensor(f->g, vid, &tv, &e))
            return 0;
        for (int64_t r = 0; r < n / D; r++)
            for (int64_t k = 0; k < D / 2; k++) {
                double a = kiln_tensor_get(&tv, r * D + (mode ? 2 * k : k));
                double b = kiln_tensor_get(&tv, r * D + (mode ? 2 * k + 1 : k + D / 2));
                if (a != b && !(isnan(a) && isnan(b)))
                    return 0;
            }
        return 1;
    }
    const kiln_node *n = kiln_fuse_def(f, vid, NULL);
    if (!n)
        return 0;
    const char *op = n->op->name;
    if (!strcmp(op, "Concat") && concat_axis_last(f, n) && n->n_inputs == 2) {
        if (mode == 0)
            return n->inputs[0] == n->inputs[1];
        return 0;
    }
    if (!strcmp(op, "Reshape")) {
        const kiln_node *c = kiln_fuse_def(f, n->inputs[0], "Concat");
        const kiln_type *it = kiln_fuse_type(f, n->inputs[0]);
        if (mode == 1 && c && c->n_inputs == 2 && concat_axis_last(f, c) && it->rank >= 2 &&
            it->dims[it->rank - 1] == 2 && it->dims[it->rank - 2] == D / 2) {
            int a = unsqueeze_last(f, c->inputs[0], NULL), b = unsqueeze_last(f, c->inputs[1], NULL);
            return a >= 0 && a == b;
        }
        return kiln_fuse_type(f, n->inputs[0])->rank >= 1 && dup_last(f, n->inputs[0], D, mode, depth + 1);
    }
    if (n->op->flags & KILN_OP_ELEMENTWISE) {
        /* each input either has the property or is constant along the last axis */
        for (int i = 0; i < n->n_inputs; i++) {
            if (n->inputs[i] < 0) /* absent (Clip's bounds) */
                continue;
            const kiln_type *it = kiln_fuse_type(f, n->inputs[i]);
            if (it->rank == 0 || (it->rank > 0 && it->dims[it->rank - 1] == 1))
                continue;
            if (!dup_last(f, n->inputs[i], D, mode, depth + 1))
                return 0;
        }
        return 1;
    }
    if (!strcmp(op, "Unsqueeze") || !strcmp(op, "Squeeze") || !strcmp(op, "Expand") ||
        !strcmp(op, "Tile") || !strcmp(op, "Identity")) {
        const kiln_type *it = kiln_fuse_type(f, n->inputs[0]);
        if (it->rank >= 1 && it->dims[it->rank - 1] == 1 && strcmp(op, "Squeeze") != 0 &&
            strcmp(op, "Tile") != 0)
            return 1; /* broadcast along the last axis: every entry equal */
        return dup_last(f, n->inputs[0], D, mode, depth + 1);
    }
    if (!strcmp(op, "Gather")) {
        const kiln_type *dt = kiln_fuse_type(f, n->inputs[0]);
        int64_t ax = kiln_node_int(n, "axis");
        if (ax < 0)
            ax += dt->rank;
        return ax != dt->rank - 1 && dup_last(f, n->inputs[0], D, mode, depth + 1);
    }
    if (!strcmp(op, "Slice")) {
        int64_t axes[KILN_MAX_RANK], st[KILN_MAX_RANK];
        int ns = kiln_fuse_ints(f, n->inputs[1], st, KILN_MAX_RANK), na = ns;
        if (ns < 0)
            return 0;
        if (n->n_inputs > 3 && n->inputs[3] >= 0)
            na = kiln_fuse_ints(f, n->inputs[3], axes, KILN_MAX_RANK);
        else
            for (int i = 0; i < ns; i++)
                axes[i] = i;
        if (na < 0)
            return 0;
        for (int i = 0; i < na; i++)
            if (axes[i] == last || axes[i] == -1)
                return 0;
        return dup_last(f, n->inputs[0], D, mode, depth + 1);
    }
    if (!strcmp(op, "Transpose")) {
        int np;
        const int64_t *perm = kiln_node_ints(n, "perm", &np);
        return perm && np == t->rank && perm[last] == last && dup_last(f, n->inputs[0], D, mode, depth + 1);
    }
    return 0;
}

static int slice_half(kiln_fuse *f, int src, int64_t D, int inter, const kiln_node *origin, int axis)
{
    int64_t s = 0, e = inter ? D : D / 2, a = axis, st = inter ? 2 : 1;
    int ins[5] = {kiln_fuse_in(f, src), kiln_fuse_const_i64(f, &s, 1), kiln_fuse_const_i64(f, &e, 1),
                  kiln_fuse_const_i64(f, &a, 1), kiln_fuse_const_i64(f, &st, 1)};
    return kiln_fuse_add1(f, "Slice", origin, ins, 5, NULL, 0, -1);
}

/* The RotaryEmbedding cache for a cos or sin value c that multiplies x
 * [B, H, S, D]: a [max_pos, D/2] table with *pos the position ids, or a
 * [B or 1, S, D/2] cache with *pos = -1. dst id or -1. */
static int rope_cache_new(kiln_fuse *f, int c, const kiln_type *xt, int inter,
                          const kiln_node *origin, int *pos);

/* Every rotation reading the same cos (q and k, every layer) shares one cache. */
static int rope_cache(kiln_fuse *f, int c, const kiln_type *xt, int inter, const kiln_node *origin,
                      int *pos)
{
    char key[96], pkey[96];
    int id, kv = c;
    int64_t ax[2];
    const kiln_node *u = kiln_fuse_def(f, c, "Unsqueeze");
    /* each layer unsqueezes the shared cos for the heads itself */
    if (u && kiln_fuse_ints(f, u->inputs[1], ax, 2) == 1 && (ax[0] == 1 || ax[0] == -3) &&
        kiln_fuse_type(f, u->inputs[0])->rank == 3)
        kv = -2 - u->inputs[0];
    snprintf(key, sizeof key, "rope:%d:%d:%lld:%lld", kv, inter, (long long)xt->dims[0],
             (long long)xt->dims[2]);
    snprintf(pkey, sizeof pkey, "ropepos:%d:%d:%lld:%lld", kv, inter, (long long)xt->dims[0],
             (long long)xt->dims[2]);
    if (kiln_strmap_get(&f->memo, key, &id) && kiln_strmap_get(&f->memo, pkey, pos))
        return id;
    id = rope_cache_new(f, c, xt, inter, origin, pos);
    if (id >= 0) {
        kiln_strmap_put(&f->memo, key, id);
        kiln_strmap_put(&f->memo, pkey, *pos);
    }
    return id;
}

static int rope_cache_new(kiln_fuse *f, int c, const kiln_type *xt, int inter,
                          const kiln_node *origin, int *pos)
{
    int64_t D = xt->dims[3], ax[2];
    const kiln_node *u = kiln_fuse_def(f, c, "Unsqueeze"), *g;
    *pos = -1;
    if (u && kiln_fuse_ints(f, u->inputs[1], ax, 2) == 1 && ax[0] == 1 &&
        (g = kiln_fuse_def(f, u->inputs[0], "Gather")) && kiln_node_int(g, "axis") == 0 &&
        kiln_fuse_is_data(f, g->inputs[0])) {
        const kiln_type *tt = kiln_fuse_type(f, g->inputs[0]), *it = kiln_fuse_type(f, g->inputs[1]);
        if (tt->rank == 2 && tt->dims[1] == D && it->dtype == KILN_I64 && it->rank == 2 &&
            it->dims[1] == xt->dims[2] && dup_last(f, g->inputs[0], D, inter, 0)) {
            *pos = g->inputs[1];
            return slice_half(f, g->inputs[0], D, inter, origin, 1);
        }
    }
    /* cos.unsqueeze(1) for the heads: slice the [B, S, D] value itself, so
     * every layer reading it shares one cache */
    int peeled = 0;
    if (u && kiln_fuse_ints(f, u->inputs[1], ax, 2) == 1 && (ax[0] == 1 || ax[0] == -3) &&
        kiln_fuse_type(f, c)->rank == 4 && kiln_fuse_type(f, u->inputs[0])->rank == 3) {
        c = u->inputs[0];
        peeled = 1;
    }
    /* c broadcasts against x as [batch, 1, S, D] ([B, S, D] once peeled) */
    const kiln_type *ct = kiln_fuse_type(f, c);
    int r = ct->rank;
    if (r < 2 || r > 4 || ct->dims[r - 1] != D || ct->dims[r - 2] != xt->dims[2] ||
        ct->dims[r - 2] == KILN_DIM_ANY)
        return -1;
    kiln_dim bd = r == 4 || peeled ? ct->dims[0] : 1;
    if ((r == 4 && ct->dims[1] != 1) || (r == 3 && !peeled && ct->dims[0] != 1) ||
        (bd != 1 && (bd != xt->dims[0] || bd == KILN_DIM_ANY)))
        return -1;
    if (!dup_last(f, c, D, inter, 0))
        return -1;
    int h = slice_half(f, c, D, inter, origin, -1);
    if (h < 0 || r == 3)
        return h;
    int64_t a = r == 2 ? 0 : 1;
    int ins[2] = {h, kiln_fuse_const_i64(f, &a, 1)};
    return kiln_fuse_add1(f, r == 2 ? "Unsqueeze" : "Squeeze", origin, ins, 2, NULL, 0, -1);
}

int kiln_fuse_rope(kiln_fuse *f, int ni)
{
    const kiln_node *r = &f->g->nodes[ni];
    if (!kiln_fuse_is_add(r))
        return 0;
    int out = r->outputs[0];
    for (int k = 0; k < 2; k++) {
        const kiln_node *ma = kiln_fuse_def(f, r->inputs[k], "Mul");
        const kiln_node *mb = kiln_fuse_def(f, r->inputs[1 - k], "Mul");
        if (!ma || !mb)
            continue;
        for (int j = 0; j < 2; j++) {
            kiln_fuse_pat p = {0};
            int inter, cpos, spos;
            kiln_fuse_pat_add(&p, f, r);
            kiln_fuse_pat_add(&p, f, ma);
            kiln_fuse_pat_add(&p, f, mb);
            int x = rotation_of(f, mb->inputs[j], &inter, &p), sn = mb->inputs[1 - j];
            int cs = x < 0 ? -1 : kiln_fuse_other(ma, x);
            if (cs < 0 || cs == x)
                continue;
            const kiln_type *xt = kiln_fuse_type(f, x);
            if (xt->rank != 4 || !kiln_fuse_pat_closed(f, &p, ni))
                continue;
            int cc = rope_cache(f, cs, xt, inter, r, &cpos);
            int sc = cc < 0 ? -1 : rope_cache(f, sn, xt, inter, r, &spos);
            if (sc < 0 || cpos != spos)
                continue;
            kiln_attr at = kiln_attr_int("interleaved", inter);
            int ins[4] = {kiln_fuse_in(f, x), cc, sc, cpos >= 0 ? kiln_fuse_in(f, cpos) : -1};
            int y = kiln_fuse_add1(f, "RotaryEmbedding", r, ins, 4, &at, 1, out);
            if (y >= 0 && kiln_fuse_type_ok(f, out, y)) {
                kiln_fuse_map(f, out, y);
                return 1;
            }
        }
    }
    return 0;
}

/* Partial rotation (GPT-NeoX, Phi): concat(rope(x[..., :rd]), x[..., rd:])
 * is RotaryEmbedding over x with rotary_embedding_dim = rd. */
int kiln_fuse_rope_partial(kiln_fuse *f, int ni)
{
    const kiln_node *r = &f->g->nodes[ni];
    if (strcmp(r->op->name, "Concat") != 0 || r->n_inputs != 2 || !concat_axis_last(f, r))
        return 0;
    const kiln_node *re = kiln_fuse_def(f, r->inputs[0], "RotaryEmbedding");
    int x, x2;
    int64_t s, e, st, s2, e2, st2;
    if (!re || kiln_fuse_type(f, re->inputs[0])->rank != 4 ||
        kiln_node_int(re, "rotary_embedding_dim") != 0 ||
        !kiln_fuse_slice_last(f, re->inputs[0], &x, &s, &e, &st) ||
        !kiln_fuse_slice_last(f, r->inputs[1], &x2, &s2, &e2, &st2) || x != x2 || s != 0 ||
        st != 1 || st2 != 1 || s2 != e || e2 != kiln_fuse_type(f, x)->dims[3])
        return 0;
    kiln_fuse_pat p = {0};
    kiln_fuse_pat_add(&p, f, r);
    kiln_fuse_pat_add(&p, f, re);
    kiln_fuse_pat_add(&p, f, kiln_fuse_def(f, re->inputs[0], NULL));
    kiln_fuse_pat_add(&p, f, kiln_fuse_def(f, r->inputs[1], NULL));
    if (!kiln_fuse_pat_closed(f, &p, ni))
        return 0;
    kiln_attr at[2] = {kiln_attr_int("interleaved", kiln_node_int(re, "interleaved")),
                       kiln_attr_int("rotary_embedding_dim", e)};
    int ins[4] = {kiln_fuse_in(f, x), kiln_fuse_in(f, re->inputs[1]), kiln_fuse_in(f, re->inputs[2]),
                  re->n_inputs > 3 && re->inputs[3] >= 0 ? kiln_fuse_in(f, re->inputs[3]) : -1};
    int out = r->outputs[0], y = kiln_fuse_add1(f, "RotaryEmbedding", r, ins, 4, at, 2, out);
    if (y < 0 || !kiln_fuse_type_ok(f, out, y))
        return 0;
    kiln_fuse_map(f, out, y);
    return 1;
}
