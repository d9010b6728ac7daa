/* cpu_misc.c - CumSum, TopK, ScatterElements, ScatterND. */
#include "cg.h"

#include <math.h>
#include <string.h>

#define IS(s) (strcmp(op, s) == 0)

static const kiln_type *vt(cg *c, int vid) { return &c->g->values[vid].type; }

static LLVMValueRef prod_dims(kc *k, const kiln_type *t, int from, int to)
{
    LLVMValueRef v = kc_i64(k, 1);
    for (int d = from; d < to; d++)
        v = LLVMBuildMul(k->c->b, v, kc_dim(k, t->dims[d]), "");
    return v;
}

static int const_axis(cg *c, const kiln_node *n, int input, int rank, int *axis)
{
    kiln_tensor t;
    const kiln_value *v = &c->g->values[n->inputs[input]];
    if ((v->kind != KILN_VAL_CONST && v->kind != KILN_VAL_WEIGHT) || kiln_graph_value_tensor(c->g, n->inputs[input], &t, NULL))
        return cg_fail(c, n, "axis must be known at compile time");
    int64_t a = kiln_tensor_get_i64(&t, 0);
    *axis = (int)(a < 0 ? a + rank : a);
    return 0;
}

static int lower_cumsum(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *xt = vt(c, n->inputs[0]);
    int axis = 0;
    if (const_axis(c, n, 1, xt->rank, &axis))
        return -1;
    int excl = (int)kiln_node_int(n, "exclusive"), rev = (int)kiln_node_int(n, "reverse");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef inner = prod_dims(&k, xt, axis + 1, xt->rank), len = kc_dim(&k, xt->dims[axis]);
    ctype ct = kc_ctype(xt->dtype) == CT_I64 ? CT_I64 : CT_F64;
    LLVMValueRef X = kc_ptr(&k, n->inputs[0]), Y = kc_ptr(&k, n->outputs[0]);
    kc_loop lr;
    LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "line");
    LLVMValueRef base = LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildMul(b, LLVMBuildSDiv(b, r, inner, ""), len, ""), inner, ""),
                                     LLVMBuildSRem(b, r, inner, ""), "");
    kc_loop l;
    LLVMValueRef t = kc_for(&k, &l, kc_i64(&k, 0), len, "t");
    LLVMValueRef acc = kc_phi(&k, &l, kc_f(&k, ct, 0));
    LLVMValueRef j = rev ? LLVMBuildSub(b, LLVMBuildSub(b, len, kc_i64(&k, 1), ""), t, "") : t;
    LLVMValueRef off = LLVMBuildAdd(b, base, LLVMBuildMul(b, j, inner, ""), "");
    LLVMValueRef v = kc_load(&k, xt->dtype, X, off, ct);
    LLVMValueRef nx = ct == CT_I64 ? LLVMBuildAdd(b, acc, v, "") : LLVMBuildFAdd(b, acc, v, "");
    kc_store(&k, xt->dtype, Y, off, excl ? acc : nx, ct);
    kc_phi_next(&k, &l, acc, nx);
    kc_for_end(&k, &l);
    kc_for_end(&k, &lr);
    kc_end(&k);
    kiln_dim trip[KILN_MAX_RANK];
    int nt = 0;
    for (int d = 0; d < xt->rank; d++)
        if (d != axis)
            trip[nt++] = xt->dims[d];
    cg_launch(c, k.fn, trip, nt, 16, ni);
    return c->failed ? -1 : 0;
}

/* TopK: per line, insertion into a sorted list of the K best (ties: lower
 * index first, as the reference). */
static int lower_topk(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *xt = vt(c, n->inputs[0]), *ot = vt(c, n->outputs[0]);
    int axis = (int)kiln_node_int(n, "axis");
    if (axis < 0)
        axis += xt->rank;
    kiln_dim Kd = ot->dims[axis];
    if (!KILN_DIM_IS_STATIC(Kd))
        return cg_fail(c, n, "TopK's k must be known at compile time");
    int largest = (int)kiln_node_int(n, "largest");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef inner = prod_dims(&k, xt, axis + 1, xt->rank), len = kc_dim(&k, xt->dims[axis]);
    LLVMValueRef K = kc_i64(&k, Kd);
    ctype ct = kc_ctype(xt->dtype) == CT_I64 ? CT_I64 : CT_F64;
    LLVMTypeRef et = kc_ctype_llvm(&k, ct);
    /* scratch lists (values as f64/i64 and indices) */
    LLVMValueRef vals = kc_entry_alloca_t(&k, et, Kd + 1);
    LLVMValueRef idxs = kc_entry_alloca_t(&k, c->t_i64, Kd + 1);
    LLVMValueRef X = kc_ptr(&k, n->inputs[0]);
    kc_loop lr;
    LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "line");
    LLVMValueRef outer = LLVMBuildSDiv(b, r, inner, ""), in = LLVMBuildSRem(b, r, inner, "");
    LLVMValueRef base = LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildMul(b, outer, len, ""), inner, ""), in, "");
    LLVMValueRef obase = LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildMul(b, outer, K, ""), inner, ""), in, "");
    kc_loop lj;
    LLVMValueRef j = kc_for(&k, &lj, kc_i64(&k, 0), len, "j");
    LLVMValueRef cnt = kc_phi(&k, &lj, kc_i64(&k, 0));
    LLVMValueRef v = kc_load(&k, xt->dtype, X, LLVMBuildAdd(b, base, LLVMBuildMul(b, j, inner, ""), ""), ct);
    /* position p = number of kept entries at least as good as v; shift the rest */
    kc_loop lp;
    LLVMValueRef q = kc_for(&k, &lp, kc_i64(&k, 0), cnt, "pos");
    LLVMValueRef pos = kc_phi(&k, &lp, kc_i64(&k, 0));
    LLVMValueRef qv = LLVMBuildLoad2(b, et, LLVMBuildGEP2(b, et, vals, &q, 1, ""), "");
    LLVMValueRef keep = ct == CT_I64 ? LLVMBuildICmp(b, largest ? LLVMIntSGE : LLVMIntSLE, qv, v, "")
                                     : LLVMBuildFCmp(b, largest ? LLVMRealOGE : LLVMRealOLE, qv, v, "");
    kc_phi_next(&k, &lp, pos, LLVMBuildSelect(b, keep, LLVMBuildAdd(b, q, kc_i64(&k, 1), ""), pos, ""));
    kc_for_end(&k, &lp);
    /* shift [pos, min(cnt, K-1)) right by one, insert if pos < K */
    LLVMValueRef top = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, cnt, K, ""), cnt, LLVMBuildSub(b, K, kc_i64(&k, 1), ""), "");
    kc_loop ls;
    LLVMValueRef s = kc_for(&k, &ls, kc_i64(&k, 0), LLVMBuildSub(b, top, pos, ""), "shift");
    LLVMValueRef dst = LLVMBuildSub(b, top, s, ""), src = LLVMBuildSub(b, dst, kc_i64(&k, 1), "");
    LLVMBuildStore(b, LLVMBuildLoad2(b, et, LLVMBuildGEP2(b, et, vals, &src, 1, ""), ""), LLVMBuildGEP2(b, et, vals, &dst, 1, ""));
    LLVMBuildStore(b, LLVMBuildLoad2(b, c->t_i64, LLVMBuildGEP2(b, c->t_i64, idxs, &src, 1, ""), ""), LLVMBuildGEP2(b, c->t_i64, idxs, &dst, 1, ""));
    kc_for_end(&k, &ls);
    LLVMValueRef ins = LLVMBuildICmp(b, LLVMIntSLT, pos, K, "");
    LLVMValueRef at = LLVMBuildSelect(b, ins, pos, K, ""); /* slot K is a dummy */
    LLVMBuildStore(b, v, LLVMBuildGEP2(b, et, vals, &at, 1, ""));
    LLVMBuildStore(b, j, LLVMBuildGEP2(b, c->t_i64, idxs, &at, 1, ""));
    LLVMValueRef ncnt = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, cnt, K, ""), LLVMBuildAdd(b, cnt, kc_i64(&k, 1), ""), cnt, "");
    kc_phi_next(&k, &lj, cnt, ncnt);
    kc_for_end(&k, &lj);
    kc_loop lo;
    LLVMValueRef t = kc_for(&k, &lo, kc_i64(&k, 0), K, "out");
    LLVMValueRef oo = LLVMBuildAdd(b, obase, LLVMBuildMul(b, t, inner, ""), "");
    kc_store(&k, ot->dtype, kc_ptr(&k, n->outputs[0]), oo, LLVMBuildLoad2(b, et, LLVMBuildGEP2(b, et, vals, &t, 1, ""), ""), ct);
    kc_store(&k, vt(c, n->outputs[1])->dtype, kc_ptr(&k, n->outputs[1]), oo,
             LLVMBuildLoad2(b, c->t_i64, LLVMBuildGEP2(b, c->t_i64, idxs, &t, 1, ""), ""), CT_I64);
    kc_for_end(&k, &lo);
    kc_for_end(&k, &lr);
    kc_end(&k);
    kiln_dim trip[KILN_MAX_RANK];
    int nt = 0;
    for (int d = 0; d < xt->rank; d++)
        if (d != axis)
            trip[nt++] = xt->dims[d];
    cg_launch(c, k.fn, trip, nt, 4, ni);
    return c->failed ? -1 : 0;
}

/* out = data, then (serially, in order) scatter the updates. */
static int lower_scatter(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    const kiln_type *dt = vt(c, n->inputs[0]), *it = vt(c, n->inputs[1]), *ut = vt(c, n->inputs[2]);
    const char *red = kiln_node_string(n, "reduction");
    int rk = !strcmp(red, "add") ? 1 : !strcmp(red, "mul") ? 2 : !strcmp(red, "max") ? 3 : !strcmp(red, "min") ? 4 : 0;
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    ctype ct = kc_ctype(dt->dtype) == CT_I64 ? CT_I64 : CT_F64;
    LLVMValueRef D = kc_ptr(&k, n->inputs[0]), I = kc_ptr(&k, n->inputs[1]), U = kc_ptr(&k, n->inputs[2]);
    LLVMValueRef O = kc_ptr(&k, n->outputs[0]);
    LLVMValueRef total = prod_dims(&k, dt, 0, dt->rank);
    kc_loop lc;
    LLVMValueRef e = kc_for(&k, &lc, kc_i64(&k, 0), total, "copy");
    kc_store(&k, dt->dtype, O, e, kc_load(&k, dt->dtype, D, e, ct), ct);
    kc_for_end(&k, &lc);
    LLVMValueRef dst_st[KILN_MAX_RANK];
    kc_strides(&k, dt, dst_st);
    LLVMValueRef nupd, upd_inner = kc_i64(&k, 1);
    int q = 0;
    if (IS("ScatterND")) {
        q = it->rank > 0 && KILN_DIM_IS_STATIC(it->dims[it->rank - 1]) ? (int)it->dims[it->rank - 1] : -1;
        if (q < 0)
            return cg_fail(c, n, "ScatterND index depth must be static");
        nupd = prod_dims(&k, it, 0, it->rank - 1);
        upd_inner = prod_dims(&k, dt, q, dt->rank);
    } else {
        nupd = prod_dims(&k, ut, 0, ut->rank);
    }
    int axis = (int)kiln_node_int(n, "axis");
    if (axis < 0)
        axis += dt->rank;
    kc_loop lu;
    LLVMValueRef u = kc_for(&k, &lu, kc_i64(&k, 0), nupd, "upd");
    LLVMValueRef target;
    if (IS("ScatterND")) {
        target = kc_i64(&k, 0);
        for (int a = 0; a < q; a++) {
            LLVMValueRef iv = kc_load(&k, it->dtype, I, LLVMBuildAdd(b, LLVMBuildMul(b, u, kc_i64(&k, q), ""), kc_i64(&k, a), ""), CT_I64);
            LLVMValueRef dim = kc_dim(&k, dt->dims[a]);
            iv = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, iv, kc_i64(&k, 0), ""), LLVMBuildAdd(b, iv, dim, ""), iv, "");
            target = LLVMBuildAdd(b, target, LLVMBuildMul(b, iv, dst_st[a], ""), "");
        }
    } else {
        /* element u of updates at multi-index m: target = m with m[axis] = indices[m] */
        LLVMValueRef rem = u, m[KILN_MAX_RANK];
        for (int d = ut->rank - 1; d >= 0; d--) {
            LLVMValueRef dim = kc_dim(&k, ut->dims[d]);
            m[d] = LLVMBuildSRem(b, rem, dim, "");
            rem = LLVMBuildSDiv(b, rem, dim, "");
        }
        LLVMValueRef iv = kc_load(&k, it->dtype, I, u, CT_I64);
        LLVMValueRef dim = kc_dim(&k, dt->dims[axis]);
        iv = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, iv, kc_i64(&k, 0), ""), LLVMBuildAdd(b, iv, dim, ""), iv, "");
        target = kc_i64(&k, 0);
        for (int d = 0; d < ut->rank; d++)
            target = LLVMBuildAdd(b, target, LLVMBuildMul(b, d == axis ? iv : m[d], dst_st[d], ""), "");
    }
    kc_loop li;
    LLVMValueRef w = kc_for(&k, &li, kc_i64(&k, 0), upd_inner, "w");
    LLVMValueRef to = LLVMBuildAdd(b, target, w, "");
    LLVMValueRef nv = kc_load(&k, ut->dtype, U, LLVMBuildAdd(b, LLVMBuildMul(b, u, upd_inner, ""), w, ""), ct);
    if (rk) {
        LLVMValueRef old = kc_load(&k, dt->dtype, O, to, ct);
        int fl = ct != CT_I64;
        if (rk == 1) nv = fl ? LLVMBuildFAdd(b, old, nv, "") : LLVMBuildAdd(b, old, nv, "");
        else if (rk == 2) nv = fl ? LLVMBuildFMul(b, old, nv, "") : LLVMBuildMul(b, old, nv, "");
        else {
            LLVMValueRef gt = fl ? LLVMBuildFCmp(b, LLVMRealOGT, nv, old, "") : LLVMBuildICmp(b, LLVMIntSGT, nv, old, "");
            nv = rk == 3 ? LLVMBuildSelect(b, gt, nv, old, "") : LLVMBuildSelect(b, gt, old, nv, "");
        }
    }
    kc_store(&k, dt->dtype, O, to, nv, ct);
    kc_for_end(&k, &li);
    kc_for_end(&k, &lu);
    kc_end(&k);
    kiln_dim one = 1;
    cg_launch(c, k.fn, &one, 1, 1, ni);
    return c->failed ? -1 : 0;
}

int cg_lower_misc(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    if (IS("CumSum"))
        return lower_cumsum(c, ni);
    if (IS("TopK"))
        return lower_topk(c, ni);
    if (IS("ScatterElements") || IS("ScatterND"))
        return lower_scatter(c, ni);
    return cg_fail(c, n, "no CPU lowering for op %s", op);
}
