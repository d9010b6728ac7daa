/* cpu_map.c - "map" kernels: every output element computed independently
 * from a few input elements. Covers elementwise math (with broadcasting)
 * and data movement (Transpose, Slice, Gather, Concat, Split, Expand, Pad,
 * Tile, Trilu, Range, ...). One loop nest over the output index; the outer
 * loop is split across threads. */
#include "cg.h"

#include <stdlib.h>
#include <string.h>

#define IS(s) (strcmp(op, s) == 0)

static const char *const map_ops[] = {
    "Where", "Clip", "Cast", "CastLike", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Identity", "Expand", "Slice", "Gather", "GatherElements", "GatherND", "Tile", "Pad", "Trilu", "Range",
    "ConstantOfShape", "Shape", "Size", "EyeLike", "Concat", "Split", "Dropout", "OneHot",
    "FastGelu", "BiasGelu", "QuickGelu", NULL,
};

int cg_is_map_op(const kiln_node *n)
{
    if (n->op->flags & KILN_OP_ELEMENTWISE)
        return 1;
    for (int i = 0; map_ops[i]; i++)
        if (!strcmp(map_ops[i], n->op->name))
            return 1;
    return 0;
}

/* Integer contents of a node input known at compile time; -1 if not. */
static int const_ints(cg *c, const kiln_node *n, int i, int64_t *v, int max)
{
    return i < n->n_inputs ? kiln_graph_const_ints(c->g, n->inputs[i], v, max) : -1;
}

static const kiln_type *vt(cg *c, int vid) { return &c->g->values[vid].type; }

/* Linear offset of idx in a buffer with strides st. */
static LLVMValueRef dot(kc *k, LLVMValueRef *idx, LLVMValueRef *st, int rank)
{
    LLVMValueRef o = kc_i64(k, 0);
    for (int d = 0; d < rank; d++)
        o = LLVMBuildAdd(k->c->b, o, LLVMBuildMul(k->c->b, idx[d], st[d], ""), "");
    return o;
}

/* Loads input i of n at the output index (numpy broadcasting). */
static LLVMValueRef load_bcast(kc *k, const kiln_node *n, int i, LLVMValueRef *idx, int orank, ctype ct)
{
    LLVMValueRef st[KILN_MAX_RANK];
    const kiln_type *t = vt(k->c, n->inputs[i]);
    kc_bcast_strides(k, t, orank, st);
    /* an input the plan placed in the output's own storage (in place) is
     * read through the output's pointer: the same SSA base lets LLVM see
     * that element i is read before it is written, so the loop vectorizes
     * without a runtime overlap check (which would fail and run scalar) */
    int in = n->inputs[i];
    const kiln_plan *p = k->c->plan;
    if (in == k->given_vid) /* the anchor's value inside a fused epilogue */
        return kc_convert(k, k->given_val, CT_F32, ct);
    if (k->group >= 0 && p->bufs[in].kind == KILN_BUF_NONE && k->c->g->values[in].kind == KILN_VAL_NODE) {
        const kiln_node *pn = &k->c->g->nodes[k->c->g->values[in].producer];
        if (pn->kernel == k->group) { /* recompute the fused producer at this index */
            ctype pct;
            LLVMValueRef v = cg_map_value(k, pn, idx, &pct);
            return kc_convert(k, v, pct, ct);
        }
    }
    LLVMValueRef base = k->map_dst >= 0 && kiln_plan_root(p, in) == kiln_plan_root(p, k->map_dst)
                            ? kc_ptr(k, k->map_dst) : kc_ptr(k, in);
    return kc_load(k, t->dtype, base, dot(k, idx, st, orank), ct);
}

/* Normalized ONNX slice start for one axis (runtime dim aware). */
static LLVMValueRef slice_start(kc *k, int64_t s, int64_t step, LLVMValueRef dim)
{
    LLVMBuilderRef b = k->c->b;
    LLVMValueRef v = kc_i64(k, s);
    if (s < 0)
        v = LLVMBuildAdd(b, v, dim, "");
    LLVMValueRef lo = kc_i64(k, 0);
    LLVMValueRef hi = step > 0 ? dim : LLVMBuildSub(b, dim, kc_i64(k, 1), "");
    v = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, v, lo, ""), lo, v, "");
    return LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSGT, v, hi, ""), hi, v, "");
}

/* Element `oi`-th output of node n at idx; *rct receives its compute type.
 * which: for Concat, the input being copied; for Split, the output. */
static LLVMValueRef map_value(kc *k, const kiln_node *n, int which, LLVMValueRef *idx, ctype *rct)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    const char *op = n->op->name;
    int out = n->outputs[(IS("Split") || IS("Dropout")) ? which : 0];
    const kiln_type *ot = vt(c, out);
    int orank = ot->rank;
    ctype oct = kc_ctype(ot->dtype);
    *rct = oct;

    if (IS("Dropout") && which == 1) { /* inference mode: the mask keeps everything */
        *rct = CT_I64;
        return kc_i64(k, 1);
    }
    if (IS("Cast") || IS("CastLike")) {
        /* the store converts (see map_store); integers going to floats are
         * loaded as floats so unsigned 64-bit values convert correctly */
        ctype ict = kc_ctype(vt(c, n->inputs[0])->dtype);
        if (ict == CT_I64 && oct != CT_I64)
            ict = oct;
        *rct = ict;
        return load_bcast(k, n, 0, idx, orank, ict);
    }
    if (((n->op->flags & KILN_OP_ELEMENTWISE) && !IS("Identity") && !IS("Dropout")) || IS("FastGelu") ||
        IS("BiasGelu") || IS("QuickGelu")) {
        LLVMValueRef args[KILN_MAX_OP_INPUTS];
        ctype at[KILN_MAX_OP_INPUTS];
        for (int i = 0; i < n->n_inputs; i++) {
            args[i] = NULL;
            at[i] = CT_I64;
            if (n->inputs[i] < 0)
                continue;
            kiln_dtype dt = vt(c, n->inputs[i])->dtype;
            at[i] = kc_ctype(dt);
            if (IS("Clip") && i > 0)
                at[i] = kc_ctype(vt(c, n->inputs[0])->dtype);
            args[i] = load_bcast(k, n, i, idx, orank, at[i]);
        }
        if (IS("Where")) {
            at[1] = at[2] = oct;
        }
        /* comparisons and predicates give 0/1 in i64 */
        ctype rt = oct;
        if (ot->dtype == KILN_BOOL)
            rt = CT_I64;
        LLVMValueRef v = cg_scalar(k, n, args, at, rt);
        *rct = rt;
        return v;
    }
    if (IS("Identity") || IS("Dropout") || IS("Reshape") || IS("Flatten") || IS("Squeeze") || IS("Unsqueeze")) {
        LLVMValueRef st[KILN_MAX_RANK];
        kc_strides(k, ot, st);
        const kiln_type *it = vt(c, n->inputs[0]);
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, idx, st, orank), oct);
    }
    if (IS("Expand"))
        return load_bcast(k, n, 0, idx, orank, oct);
    if (IS("Transpose")) {
        const kiln_type *it = vt(c, n->inputs[0]);
        LLVMValueRef ist[KILN_MAX_RANK], st[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        int np;
        const int64_t *perm = kiln_node_ints(n, "perm", &np);
        for (int d = 0; d < orank; d++)
            st[d] = ist[perm ? perm[d] : orank - 1 - d];
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, idx, st, orank), oct);
    }
    if (IS("Slice")) {
        const kiln_type *it = vt(c, n->inputs[0]);
        int64_t starts[KILN_MAX_RANK], ends[KILN_MAX_RANK], axes[KILN_MAX_RANK], steps[KILN_MAX_RANK];
        int ns = const_ints(c, n, 1, starts, KILN_MAX_RANK);
        int ne = 0; /* ends only shape the output, whose type is known */
        (void)ends;
        int na = n->n_inputs > 3 && n->inputs[3] >= 0 ? const_ints(c, n, 3, axes, KILN_MAX_RANK) : ns;
        int nst = n->n_inputs > 4 && n->inputs[4] >= 0 ? const_ints(c, n, 4, steps, KILN_MAX_RANK) : ns;
        if (ns < 0 || ne < 0 || na < 0 || nst < 0) {
            cg_fail(c, n, "Slice parameters must be known at compile time");
            return kc_f(k, oct, 0);
        }
        if (!(n->n_inputs > 3 && n->inputs[3] >= 0))
            for (int i = 0; i < ns; i++)
                axes[i] = i;
        if (!(n->n_inputs > 4 && n->inputs[4] >= 0))
            for (int i = 0; i < ns; i++)
                steps[i] = 1;
        LLVMValueRef ist[KILN_MAX_RANK], in_idx[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        for (int d = 0; d < orank; d++)
            in_idx[d] = idx[d];
        for (int i = 0; i < ns; i++) {
            int a = (int)(axes[i] < 0 ? axes[i] + it->rank : axes[i]);
            LLVMValueRef s0 = slice_start(k, starts[i], steps[i], kc_dim(k, it->dims[a]));
            in_idx[a] = LLVMBuildAdd(b, s0, LLVMBuildMul(b, idx[a], kc_i64(k, steps[i]), ""), "");
        }
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, in_idx, ist, orank), oct);
    }
    if (IS("Gather")) {
        const kiln_type *it = vt(c, n->inputs[0]), *xt = vt(c, n->inputs[1]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += it->rank;
        LLVMValueRef ist[KILN_MAX_RANK], xst[KILN_MAX_RANK], in_idx[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        kc_strides(k, xt, xst);
        int r = xt->rank;
        LLVMValueRef xi = dot(k, idx + axis, xst, r);
        LLVMValueRef gi = kc_load(k, xt->dtype, kc_ptr(k, n->inputs[1]), xi, CT_I64);
        LLVMValueRef dim = kc_dim(k, it->dims[axis]);
        gi = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, gi, kc_i64(k, 0), ""), LLVMBuildAdd(b, gi, dim, ""), gi, "");
        for (int d = 0; d < axis; d++)
            in_idx[d] = idx[d];
        in_idx[axis] = gi;
        for (int d = axis + 1; d < it->rank; d++)
            in_idx[d] = idx[d - 1 + r];
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, in_idx, ist, it->rank), oct);
    }
    if (IS("GatherElements")) {
        const kiln_type *it = vt(c, n->inputs[0]), *xt = vt(c, n->inputs[1]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += it->rank;
        LLVMValueRef ist[KILN_MAX_RANK], xst[KILN_MAX_RANK], in_idx[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        kc_strides(k, xt, xst);
        LLVMValueRef gi = kc_load(k, xt->dtype, kc_ptr(k, n->inputs[1]), dot(k, idx, xst, orank), CT_I64);
        LLVMValueRef dim = kc_dim(k, it->dims[axis]);
        gi = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, gi, kc_i64(k, 0), ""), LLVMBuildAdd(b, gi, dim, ""), gi, "");
        for (int d = 0; d < orank; d++)
            in_idx[d] = d == axis ? gi : idx[d];
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, in_idx, ist, orank), oct);
    }
    if (IS("GatherND")) {
        /* out[b.., i.., r..] = data[b.., indices[b.., i.., :], r..] */
        const kiln_type *it = vt(c, n->inputs[0]), *xt = vt(c, n->inputs[1]);
        int bd = (int)kiln_node_int(n, "batch_dims"), ri = xt->rank - 1;
        kiln_dim qd = xt->dims[ri];
        if (!KILN_DIM_IS_STATIC(qd) || bd + qd > it->rank) {
            cg_fail(c, n, "GatherND index depth must be known at compile time");
            return kc_f(k, oct, 0);
        }
        int q = (int)qd;
        LLVMValueRef ist[KILN_MAX_RANK], xst[KILN_MAX_RANK], in_idx[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        kc_strides(k, xt, xst);
        LLVMValueRef xbase = dot(k, idx, xst, ri);
        for (int d = 0; d < bd; d++)
            in_idx[d] = idx[d];
        for (int j = 0; j < q; j++) {
            LLVMValueRef gi = kc_load(k, xt->dtype, kc_ptr(k, n->inputs[1]), LLVMBuildAdd(b, xbase, kc_i64(k, j), ""), CT_I64);
            LLVMValueRef dim = kc_dim(k, it->dims[bd + j]);
            in_idx[bd + j] = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, gi, kc_i64(k, 0), ""), LLVMBuildAdd(b, gi, dim, ""), gi, "");
        }
        for (int d = bd + q; d < it->rank; d++)
            in_idx[d] = idx[ri + d - bd - q];
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, in_idx, ist, it->rank), oct);
    }
    if (IS("Tile")) {
        const kiln_type *it = vt(c, n->inputs[0]);
        LLVMValueRef ist[KILN_MAX_RANK], in_idx[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        for (int d = 0; d < orank; d++)
            in_idx[d] = LLVMBuildSRem(b, idx[d], kc_dim(k, it->dims[d]), "");
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, in_idx, ist, orank), oct);
    }
    if (IS("Pad")) {
        const kiln_type *it = vt(c, n->inputs[0]);
        int64_t pads[2 * KILN_MAX_RANK], axes[KILN_MAX_RANK];
        int np = const_ints(c, n, 1, pads, 2 * KILN_MAX_RANK);
        int na = n->n_inputs > 3 && n->inputs[3] >= 0 ? const_ints(c, n, 3, axes, KILN_MAX_RANK) : -2;
        if (np < 0 || na == -1) {
            cg_fail(c, n, "Pad amounts must be known at compile time");
            return kc_f(k, oct, 0);
        }
        if (na == -2) {
            na = it->rank;
            for (int i = 0; i < na; i++)
                axes[i] = i;
        }
        int64_t begin[KILN_MAX_RANK] = {0};
        for (int i = 0; i < na; i++)
            begin[axes[i] < 0 ? axes[i] + it->rank : axes[i]] = pads[i];
        const char *mode = kiln_node_string(n, "mode");
        LLVMValueRef ist[KILN_MAX_RANK], in_idx[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        LLVMValueRef inb = LLVMConstInt(c->t_i1, 1, 0);
        for (int d = 0; d < orank; d++) {
            LLVMValueRef dim = kc_dim(k, it->dims[d]);
            LLVMValueRef j = LLVMBuildSub(b, idx[d], kc_i64(k, begin[d]), "");
            LLVMValueRef neg = LLVMBuildICmp(b, LLVMIntSLT, j, kc_i64(k, 0), "");
            LLVMValueRef big = LLVMBuildICmp(b, LLVMIntSGE, j, dim, "");
            LLVMValueRef dm1 = LLVMBuildSub(b, dim, kc_i64(k, 1), "");
            if (!strcmp(mode, "edge")) {
                j = LLVMBuildSelect(b, neg, kc_i64(k, 0), LLVMBuildSelect(b, big, dm1, j, ""), "");
            } else if (!strcmp(mode, "reflect")) {
                /* period 2(d-1): fold into [0, d-1] */
                LLVMValueRef per = LLVMBuildMul(b, dm1, kc_i64(k, 2), "");
                LLVMValueRef safe = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntEQ, per, kc_i64(k, 0), ""), kc_i64(k, 1), per, "");
                LLVMValueRef m = LLVMBuildSRem(b, j, safe, "");
                m = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, m, kc_i64(k, 0), ""), LLVMBuildAdd(b, m, safe, ""), m, "");
                j = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSGT, m, dm1, ""), LLVMBuildSub(b, safe, m, ""), m, "");
            } else if (!strcmp(mode, "wrap")) {
                LLVMValueRef m = LLVMBuildSRem(b, j, dim, "");
                j = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, m, kc_i64(k, 0), ""), LLVMBuildAdd(b, m, dim, ""), m, "");
            } else {
                inb = LLVMBuildAnd(b, inb, LLVMBuildNot(b, LLVMBuildOr(b, neg, big, ""), ""), "");
                j = LLVMBuildSelect(b, neg, kc_i64(k, 0), LLVMBuildSelect(b, big, dm1, j, ""), "");
            }
            in_idx[d] = j;
        }
        LLVMValueRef v = kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, in_idx, ist, orank), oct);
        LLVMValueRef cv = kc_f(k, oct, 0);
        if (n->n_inputs > 2 && n->inputs[2] >= 0)
            cv = kc_load(k, vt(c, n->inputs[2])->dtype, kc_ptr(k, n->inputs[2]), kc_i64(k, 0), oct);
        return LLVMBuildSelect(b, inb, v, cv, "");
    }
    if (IS("Trilu")) {
        LLVMValueRef kk = kc_i64(k, 0);
        if (n->n_inputs > 1 && n->inputs[1] >= 0)
            kk = kc_load(k, vt(c, n->inputs[1])->dtype, kc_ptr(k, n->inputs[1]), kc_i64(k, 0), CT_I64);
        LLVMValueRef row = idx[orank - 2], col = idx[orank - 1];
        LLVMValueRef diff = LLVMBuildSub(b, col, row, ""); /* keep: upper col-row >= k, lower col-row <= k */
        LLVMValueRef keep = kiln_node_int(n, "upper") ? LLVMBuildICmp(b, LLVMIntSGE, diff, kk, "")
                                                      : LLVMBuildICmp(b, LLVMIntSLE, diff, kk, "");
        LLVMValueRef st[KILN_MAX_RANK];
        kc_strides(k, ot, st);
        LLVMValueRef v = kc_load(k, ot->dtype, kc_ptr(k, n->inputs[0]), dot(k, idx, st, orank), oct);
        return LLVMBuildSelect(b, keep, v, kc_f(k, oct, 0), "");
    }
    if (IS("Range")) {
        LLVMValueRef s = kc_load(k, vt(c, n->inputs[0])->dtype, kc_ptr(k, n->inputs[0]), kc_i64(k, 0), oct);
        LLVMValueRef dl = kc_load(k, vt(c, n->inputs[2])->dtype, kc_ptr(k, n->inputs[2]), kc_i64(k, 0), oct);
        LLVMValueRef i = kc_convert(k, idx[0], CT_I64, oct);
        return oct == CT_I64 ? LLVMBuildAdd(b, s, LLVMBuildMul(b, i, dl, ""), "")
                             : LLVMBuildFAdd(b, s, LLVMBuildFMul(b, i, dl, ""), "");
    }
    if (IS("ConstantOfShape"))
        return kc_f(k, oct, kiln_node_float(n, "value"));
    if (IS("Shape")) {
        const kiln_type *it = vt(c, n->inputs[0]);
        int64_t s = kiln_node_has_attr(n, "start") ? kiln_node_int(n, "start") : 0;
        if (s < 0)
            s += it->rank;
        if (s < 0)
            s = 0;
        /* out[i] = dim(s + i): select among the dims */
        LLVMValueRef v = kc_i64(k, 0);
        for (int d = 0; d < it->rank; d++)
            v = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntEQ, idx[0], kc_i64(k, d - s), ""), kc_dim(k, it->dims[d]), v, "");
        return kc_convert(k, v, CT_I64, oct);
    }
    if (IS("Size")) {
        const kiln_type *it = vt(c, n->inputs[0]);
        LLVMValueRef v = kc_i64(k, 1);
        for (int d = 0; d < it->rank; d++)
            v = LLVMBuildMul(b, v, kc_dim(k, it->dims[d]), "");
        return kc_convert(k, v, CT_I64, oct);
    }
    if (IS("EyeLike")) {
        LLVMValueRef diff = LLVMBuildSub(b, idx[1], idx[0], "");
        LLVMValueRef on = LLVMBuildICmp(b, LLVMIntEQ, diff, kc_i64(k, kiln_node_int(n, "k")), "");
        return kc_convert(k, LLVMBuildZExt(b, on, c->t_i64, ""), CT_I64, oct);
    }
    if (IS("OneHot")) {
        const kiln_type *xt = vt(c, n->inputs[0]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += orank;
        LLVMValueRef xst[KILN_MAX_RANK], xi[KILN_MAX_RANK];
        kc_strides(k, xt, xst);
        for (int d = 0, q = 0; d < orank; d++)
            if (d != axis)
                xi[q++] = idx[d];
        LLVMValueRef v = kc_load(k, xt->dtype, kc_ptr(k, n->inputs[0]), dot(k, xi, xst, xt->rank), CT_I64);
        LLVMValueRef depth = kc_load(k, vt(c, n->inputs[1])->dtype, kc_ptr(k, n->inputs[1]), kc_i64(k, 0), CT_I64);
        v = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, v, kc_i64(k, 0), ""), LLVMBuildAdd(b, v, depth, ""), v, "");
        LLVMValueRef on = LLVMBuildICmp(b, LLVMIntEQ, v, idx[axis], "");
        const kiln_type *vt2 = vt(c, n->inputs[2]);
        LLVMValueRef off = kc_load(k, vt2->dtype, kc_ptr(k, n->inputs[2]), kc_i64(k, 0), oct);
        LLVMValueRef onv = kc_load(k, vt2->dtype, kc_ptr(k, n->inputs[2]), kc_i64(k, 1), oct);
        return LLVMBuildSelect(b, on, onv, off, "");
    }
    if (IS("Split")) {
        const kiln_type *it = vt(c, n->inputs[0]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += it->rank;
        LLVMValueRef ist[KILN_MAX_RANK], in_idx[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        LLVMValueRef off = kc_i64(k, 0);
        for (int q = 0; q < which; q++)
            off = LLVMBuildAdd(b, off, kc_dim(k, vt(c, n->outputs[q])->dims[axis]), "");
        for (int d = 0; d < orank; d++)
            in_idx[d] = d == axis ? LLVMBuildAdd(b, idx[d], off, "") : idx[d];
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[0]), dot(k, in_idx, ist, orank), oct);
    }
    if (IS("Concat")) { /* element `which` input, at its own index */
        const kiln_type *it = vt(c, n->inputs[which]);
        LLVMValueRef ist[KILN_MAX_RANK];
        kc_strides(k, it, ist);
        return kc_load(k, it->dtype, kc_ptr(k, n->inputs[which]), dot(k, idx, ist, it->rank), oct);
    }
    cg_fail(c, n, "no CPU lowering for %s", op);
    return kc_f(k, oct, 0);
}

/* Stores a map kernel's element: Cast's own conversion rules for Cast. */
static void map_store(kc *k, const kiln_node *n, kiln_dtype dt, LLVMValueRef base, LLVMValueRef off,
                      LLVMValueRef v, ctype ct)
{
    const char *op = n->op->name;
    if (IS("Cast") || IS("CastLike")) {
        const char *rm = kiln_node_string(n, "round_mode");
        int mode = !strcmp(rm, "down") ? KILN_ROUND_DOWN : !strcmp(rm, "nearest") ? KILN_ROUND_NEAREST : KILN_ROUND_UP;
        kc_store_cast(k, dt, base, off, v, ct, kiln_node_int(n, "saturate") != 0, mode);
        return;
    }
    kc_store(k, dt, base, off, v, ct);
}

LLVMValueRef cg_map_value(kc *k, const kiln_node *n, LLVMValueRef *idx, ctype *ct)
{
    return map_value(k, n, 0, idx, ct);
}

int cg_group_last(const cg *c, int group)
{
    int last = -1;
    for (int i = 0; i < c->g->n_nodes; i++)
        if (c->g->nodes[i].kernel == group)
            last = i;
    return last;
}

/* Grain: outer iterations per thread chunk, aiming at ~32K elements. */
static int64_t grain_for(cg *c, const kiln_type *t)
{
    int64_t inner = 1;
    for (int d = 1; d < t->rank; d++) {
        int64_t v = kiln_plan_dim(c->g, c->plan, t->dims[d]);
        inner *= v > 0 ? v : 1;
    }
    int64_t g = 32768 / (inner > 0 ? inner : 1);
    return g < 1 ? 1 : g;
}

/* One map kernel: iterate over `it` (iteration shape); write to value dst
 * at Σ idx·strides(dst) + axis offset (Concat) . */
static int map_kernel(cg *c, int ni, int which, const kiln_type *it, int dst, int concat_axis)
{
    const kiln_node *n = &c->g->nodes[ni];
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    const kiln_type *dt = vt(c, dst);
    LLVMValueRef dst_st[KILN_MAX_RANK];
    kc_strides(&k, dt, dst_st);
    LLVMValueRef base_off = kc_i64(&k, 0);
    if (concat_axis >= 0) {
        for (int q = 0; q < which; q++)
            base_off = LLVMBuildAdd(b, base_off, kc_dim(&k, vt(c, n->inputs[q])->dims[concat_axis]), "");
        base_off = LLVMBuildMul(b, base_off, dst_st[concat_axis], "");
    }
    LLVMValueRef optr = kc_ptr(&k, dst);
    k.map_dst = dst;
    k.group = n->kernel;
    int rank = it->rank;
    LLVMValueRef idx[KILN_MAX_RANK];
    kc_loop loops[KILN_MAX_RANK];
    if (rank == 0) {
        ctype ct;
        LLVMValueRef v = map_value(&k, n, which, idx, &ct);
        map_store(&k, n, dt->dtype, optr, base_off, v, ct);
    } else {
        idx[0] = kc_for(&k, &loops[0], k.begin, k.end, "d0");
        for (int d = 1; d < rank; d++)
            idx[d] = kc_for(&k, &loops[d], kc_i64(&k, 0), kc_dim(&k, it->dims[d]), "d");
        ctype ct;
        LLVMValueRef v = map_value(&k, n, which, idx, &ct);
        LLVMValueRef off = LLVMBuildAdd(b, base_off, dot(&k, idx, dst_st, rank), "");
        map_store(&k, n, dt->dtype, optr, off, v, ct);
        for (int d = rank - 1; d >= 0; d--)
            kc_for_end(&k, &loops[d]);
    }
    kc_end(&k);
    kiln_dim trip = rank ? it->dims[0] : 1;
    cg_launch(c, k.fn, &trip, 1, grain_for(c, it), ni);
    return c->failed ? -1 : 0;
}

int cg_lower_map_group(cg *c, int last)
{
    const kiln_node *n = &c->g->nodes[last];
    return map_kernel(c, last, 0, vt(c, n->outputs[0]), n->outputs[0], -1);
}

int cg_lower_map(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    if (IS("Concat")) {
        int axis = (int)kiln_node_int(n, "axis");
        int r = vt(c, n->outputs[0])->rank;
        if (axis < 0)
            axis += r;
        for (int i = 0; i < n->n_inputs; i++)
            if (kiln_type_numel(vt(c, n->inputs[i])) != 0 &&
                map_kernel(c, ni, i, vt(c, n->inputs[i]), n->outputs[0], axis))
                return -1;
        return 0;
    }
    if (IS("Split")) {
        for (int o = 0; o < n->n_outputs; o++)
            if (map_kernel(c, ni, o, vt(c, n->outputs[o]), n->outputs[o], -1))
                return -1;
        return 0;
    }
    /* views whose output the plan aliased to the input need no kernel */
    for (int o = 0; o < n->n_outputs; o++) {
        int v = n->outputs[o];
        kiln_buf_kind bk = c->plan->bufs[v].kind;
        if (bk == KILN_BUF_NONE || (bk == KILN_BUF_ALIAS && !(n->op->flags & KILN_OP_ELEMENTWISE && o == 0 &&
                                                              strcmp(op, "Identity") && strcmp(op, "Dropout"))))
            continue;
        if (map_kernel(c, ni, o, vt(c, v), v, -1))
            return -1;
    }
    return 0;
}
