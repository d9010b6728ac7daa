/* cpu_reduce.c - Reduce* ops and ArgMax/ArgMin: one output element per
 * outer iteration, nested loops over the reduced axes, f64 accumulation
 * (i64 for integers) like the reference kernels. */
#include "cg.h"

#include <math.h>
#include <string.h>

static const kiln_type *vt(cg *c, int vid) { return &c->g->values[vid].type; }

enum { R_SUM, R_MEAN, R_MAX, R_MIN, R_PROD, R_L1, R_L2, R_LOGSUM, R_LOGSUMEXP, R_SUMSQ, R_ARGMAX, R_ARGMIN };

static int reduce_kind(const char *op)
{
    static const char *names[] = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                  "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                  "ReduceSumSquare", "ArgMax", "ArgMin"};
    for (int i = 0; i < (int)(sizeof names / sizeof *names); i++)
        if (!strcmp(op, names[i]))
            return i;
    return -1;
}

/* Emits the loops over the reduced axes; body(acc, value) -> new acc.
 * red[] marks reduced input axes; idx[] holds the kept axes' indices. */
typedef struct rctx {
    kc *k;
    const kiln_type *it;
    LLVMValueRef ptr;
    LLVMValueRef st[KILN_MAX_RANK];
    LLVMValueRef idx[KILN_MAX_RANK];
    int red[KILN_MAX_RANK];
    ctype ct;
} rctx;

typedef LLVMValueRef (*step_fn)(kc *k, int kind, LLVMValueRef acc, LLVMValueRef v, LLVMValueRef pos, LLVMValueRef extra,
                                ctype ct, LLVMValueRef *acc2);

static LLVMValueRef fold(kc *k, int kind, LLVMValueRef acc, LLVMValueRef v, ctype ct, LLVMValueRef extra)
{
    LLVMBuilderRef b = k->c->b;
    int fl = ct != CT_I64;
    switch (kind) {
    case R_SUM: case R_MEAN: case R_LOGSUM:
        return fl ? LLVMBuildFAdd(b, acc, v, "") : LLVMBuildAdd(b, acc, v, "");
    case R_PROD: return fl ? LLVMBuildFMul(b, acc, v, "") : LLVMBuildMul(b, acc, v, "");
    case R_L1: return fl ? LLVMBuildFAdd(b, acc, kc_intr1(k, "llvm.fabs", v), "")
                         : LLVMBuildAdd(b, acc, LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, v, kc_i64(k, 0), ""), LLVMBuildNeg(b, v, ""), v, ""), "");
    case R_L2: case R_SUMSQ:
        return fl ? LLVMBuildFAdd(b, acc, LLVMBuildFMul(b, v, v, ""), "") : LLVMBuildAdd(b, acc, LLVMBuildMul(b, v, v, ""), "");
    case R_LOGSUMEXP: return LLVMBuildFAdd(b, acc, kc_exp(k, LLVMBuildFSub(b, v, extra, ""), ct), "");
    case R_MAX: case R_MIN: {
        int mx = kind == R_MAX;
        if (!fl)
            return LLVMBuildSelect(b, LLVMBuildICmp(b, mx ? LLVMIntSGT : LLVMIntSLT, v, acc, ""), v, acc, "");
        /* NaN wins, as in the reference */
        LLVMValueRef better = LLVMBuildFCmp(b, mx ? LLVMRealUGT : LLVMRealULT, v, acc, "");
        LLVMValueRef accnan = LLVMBuildFCmp(b, LLVMRealUNO, acc, acc, "");
        return LLVMBuildSelect(b, LLVMBuildAnd(b, better, LLVMBuildNot(b, accnan, ""), ""), v, acc, "");
    }
    }
    return acc;
}

/* Nested loops over reduced axes (from axis d on), folding into acc. */
static LLVMValueRef loop_axes(rctx *r, int d, int kind, LLVMValueRef acc, LLVMValueRef extra)
{
    kc *k = r->k;
    if (d == r->it->rank) {
        LLVMValueRef off = kc_i64(k, 0);
        for (int q = 0; q < r->it->rank; q++)
            off = LLVMBuildAdd(k->c->b, off, LLVMBuildMul(k->c->b, r->idx[q], r->st[q], ""), "");
        LLVMValueRef v = kc_load(k, r->it->dtype, r->ptr, off, r->ct);
        return fold(k, kind, acc, v, r->ct, extra);
    }
    if (!r->red[d])
        return loop_axes(r, d + 1, kind, acc, extra);
    kc_loop l;
    r->idx[d] = kc_for(k, &l, kc_i64(k, 0), kc_dim(k, r->it->dims[d]), "r");
    LLVMValueRef phi = kc_phi(k, &l, acc);
    LLVMValueRef nx = loop_axes(r, d + 1, kind, phi, extra);
    kc_phi_next(k, &l, phi, nx);
    kc_for_end(k, &l);
    return phi;
}

static int lower_argminmax(cg *c, int ni, int kind);

int cg_lower_reduce(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    int kind = reduce_kind(n->op->name);
    if (kind < 0)
        return cg_fail(c, n, "no CPU lowering for %s", n->op->name);
    if (kind >= R_ARGMAX)
        return lower_argminmax(c, ni, kind);
    const kiln_type *it = vt(c, n->inputs[0]), *ot = vt(c, n->outputs[0]);
    int rank = it->rank;
    int red[KILN_MAX_RANK] = {0};
    int64_t axes[KILN_MAX_RANK];
    int na = 0;
    if (n->n_inputs > 1 && n->inputs[1] >= 0) {
        kiln_tensor t;
        const kiln_value *av = &c->g->values[n->inputs[1]];
        if ((av->kind != KILN_VAL_CONST && av->kind != KILN_VAL_WEIGHT) || kiln_graph_value_tensor(c->g, n->inputs[1], &t, NULL))
            return cg_fail(c, n, "reduction axes must be known at compile time");
        na = (int)kiln_tensor_numel(&t);
        for (int i = 0; i < na && i < KILN_MAX_RANK; i++)
            axes[i] = kiln_tensor_get_i64(&t, i);
    }
    if (na == 0) {
        if (kiln_node_int(n, "noop_with_empty_axes"))
            na = 0;
        else
            for (int i = 0; i < rank; i++)
                red[i] = 1;
    }
    for (int i = 0; i < na; i++)
        red[axes[i] < 0 ? axes[i] + rank : axes[i]] = 1;
    int keep = (int)kiln_node_int(n, "keepdims");
    int64_t cnt_static = 1;
    (void)cnt_static;
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    rctx r;
    memset(&r, 0, sizeof r);
    r.k = &k;
    r.it = it;
    r.ptr = kc_ptr(&k, n->inputs[0]);
    kc_strides(&k, it, r.st);
    memcpy(r.red, red, sizeof red);
    r.ct = kc_ctype(it->dtype) == CT_I64 ? CT_I64 : CT_F64;
    /* output elements, flattened */
    kc_loop lo;
    LLVMValueRef o = kc_for(&k, &lo, k.begin, k.end, "out");
    LLVMValueRef rem = o;
    for (int d = rank - 1; d >= 0; d--) {
        if (red[d]) {
            r.idx[d] = kc_i64(&k, 0);
            continue;
        }
        LLVMValueRef dim = kc_dim(&k, it->dims[d]);
        r.idx[d] = LLVMBuildSRem(b, rem, dim, "");
        rem = LLVMBuildSDiv(b, rem, dim, "");
    }
    ctype ct = r.ct;
    LLVMValueRef init;
    switch (kind) {
    case R_PROD: init = kc_f(&k, ct, 1); break;
    case R_MAX: init = ct == CT_I64 ? kc_i64(&k, INT64_MIN) : kc_f(&k, ct, -INFINITY); break;
    case R_MIN: init = ct == CT_I64 ? kc_i64(&k, INT64_MAX) : kc_f(&k, ct, INFINITY); break;
    default: init = kc_f(&k, ct, 0); break;
    }
    LLVMValueRef extra = NULL;
    if (kind == R_LOGSUMEXP) {
        extra = loop_axes(&r, 0, R_MAX, kc_f(&k, ct, -INFINITY), NULL);
        /* all -inf: use 0 so exp(x - m) stays defined */
        extra = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, extra, kc_f(&k, ct, -INFINITY), ""), kc_f(&k, ct, 0), extra, "");
    }
    LLVMValueRef acc = loop_axes(&r, 0, kind, init, extra);
    LLVMValueRef cntv = kc_i64(&k, 1);
    for (int d = 0; d < rank; d++)
        if (red[d])
            cntv = LLVMBuildMul(b, cntv, kc_dim(&k, it->dims[d]), "");
    switch (kind) {
    case R_MEAN:
        acc = ct == CT_I64 ? LLVMBuildSDiv(b, acc, cntv, "") : LLVMBuildFDiv(b, acc, kc_convert(&k, cntv, CT_I64, ct), "");
        break;
    case R_L2: acc = kc_intr1(&k, "llvm.sqrt", kc_convert(&k, acc, ct, CT_F64)); ct = CT_F64; break;
    case R_LOGSUM: acc = kc_intr1(&k, "llvm.log", kc_convert(&k, acc, ct, CT_F64)); ct = CT_F64; break;
    case R_LOGSUMEXP: acc = LLVMBuildFAdd(b, kc_intr1(&k, "llvm.log", acc), extra, ""); break;
    default: break;
    }
    kc_store(&k, ot->dtype, kc_ptr(&k, n->outputs[0]), o, acc, ct);
    kc_for_end(&k, &lo);
    kc_end(&k);
    (void)keep;
    kiln_dim trip[KILN_MAX_RANK];
    int ntrip = 0;
    for (int d = 0; d < ot->rank; d++)
        trip[ntrip++] = ot->dims[d];
    cg_launch(c, k.fn, trip, ntrip, 64, ni);
    return c->failed ? -1 : 0;
}

/* ArgMax/ArgMin along one axis: first (or last) index of the extreme. */
static int lower_argminmax(cg *c, int ni, int kind)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *it = vt(c, n->inputs[0]), *ot = vt(c, n->outputs[0]);
    int rank = it->rank;
    int axis = (int)kiln_node_int(n, "axis");
    if (axis < 0)
        axis += rank;
    int last = (int)kiln_node_int(n, "select_last_index");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef st[KILN_MAX_RANK], idx[KILN_MAX_RANK];
    kc_strides(&k, it, st);
    LLVMValueRef ptr = kc_ptr(&k, n->inputs[0]);
    kc_loop lo;
    LLVMValueRef o = kc_for(&k, &lo, k.begin, k.end, "out");
    LLVMValueRef rem = o;
    for (int d = rank - 1; d >= 0; d--) {
        if (d == axis) {
            idx[d] = kc_i64(&k, 0);
            continue;
        }
        LLVMValueRef dim = kc_dim(&k, it->dims[d]);
        idx[d] = LLVMBuildSRem(b, rem, dim, "");
        rem = LLVMBuildSDiv(b, rem, dim, "");
    }
    LLVMValueRef base = kc_i64(&k, 0);
    for (int d = 0; d < rank; d++)
        base = LLVMBuildAdd(b, base, LLVMBuildMul(b, idx[d], st[d], ""), "");
    ctype ct = kc_ctype(it->dtype) == CT_I64 ? CT_I64 : CT_F64;
    LLVMValueRef first = kc_load(&k, it->dtype, ptr, base, ct);
    kc_loop l;
    LLVMValueRef j = kc_for(&k, &l, kc_i64(&k, 1), kc_dim(&k, it->dims[axis]), "a");
    LLVMValueRef best = kc_phi(&k, &l, first), bi = kc_phi(&k, &l, kc_i64(&k, 0));
    LLVMValueRef v = kc_load(&k, it->dtype, ptr, LLVMBuildAdd(b, base, LLVMBuildMul(b, j, st[axis], ""), ""), ct);
    int mx = kind == R_ARGMAX;
    LLVMValueRef better;
    if (ct == CT_I64)
        better = LLVMBuildICmp(b, mx ? (last ? LLVMIntSGE : LLVMIntSGT) : (last ? LLVMIntSLE : LLVMIntSLT), v, best, "");
    else
        better = LLVMBuildFCmp(b, mx ? (last ? LLVMRealOGE : LLVMRealOGT) : (last ? LLVMRealOLE : LLVMRealOLT), v, best, "");
    kc_phi_next(&k, &l, best, LLVMBuildSelect(b, better, v, best, ""));
    kc_phi_next(&k, &l, bi, LLVMBuildSelect(b, better, j, bi, ""));
    kc_for_end(&k, &l);
    kc_store(&k, ot->dtype, kc_ptr(&k, n->outputs[0]), o, bi, CT_I64);
    kc_for_end(&k, &lo);
    kc_end(&k);
    kiln_dim trip[KILN_MAX_RANK];
    int ntrip = 0;
    for (int d = 0; d < ot->rank; d++)
        trip[ntrip++] = ot->dims[d];
    cg_launch(c, k.fn, trip, ntrip, 64, ni);
    return c->failed ? -1 : 0;
}
