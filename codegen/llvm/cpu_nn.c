/* cpu_nn.c - row-wise NN kernels: softmax family, layer/RMS norms (plain
 * and com.microsoft skip forms), batch/instance/group norm, rotary
 * embeddings, and attention (ONNX Attention and kiln GQAttention share one
 * lowering). Statistics accumulate in f64 like the reference kernels. */
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

static int has_out(cg *c, const kiln_node *n, int o)
{
    return o < n->n_outputs && c->plan->bufs[n->outputs[o]].kind != KILN_BUF_NONE &&
           c->plan->bufs[n->outputs[o]].last >= 0;
}

/* ---- Softmax / LogSoftmax / Hardmax ---- */

static int lower_softmax(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    const kiln_type *xt = vt(c, n->inputs[0]);
    int axis = (int)kiln_node_int(n, "axis");
    if (axis < 0)
        axis += xt->rank;
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef inner = prod_dims(&k, xt, axis + 1, xt->rank), len = kc_dim(&k, xt->dims[axis]);
    LLVMValueRef X = kc_ptr(&k, n->inputs[0]), Y = kc_ptr(&k, n->outputs[0]);
    kc_loop lr;
    LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "row"); /* r = outer*inner + in */
    LLVMValueRef outer = LLVMBuildSDiv(b, r, inner, ""), in = LLVMBuildSRem(b, r, inner, "");
    LLVMValueRef base = LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildMul(b, outer, len, ""), inner, ""), in, "");
    ctype ct = CT_F64;
#define AT(j) LLVMBuildAdd(b, base, LLVMBuildMul(b, (j), inner, ""), "")
    kc_loop l1;
    LLVMValueRef j = kc_for(&k, &l1, kc_i64(&k, 0), len, "max");
    LLVMValueRef mx = kc_phi(&k, &l1, kc_f(&k, ct, -INFINITY)), mi = kc_phi(&k, &l1, kc_i64(&k, 0));
    LLVMValueRef v = kc_load(&k, xt->dtype, X, AT(j), ct);
    LLVMValueRef gt = LLVMBuildFCmp(b, LLVMRealOGT, v, mx, "");
    kc_phi_next(&k, &l1, mx, LLVMBuildSelect(b, gt, v, mx, ""));
    kc_phi_next(&k, &l1, mi, LLVMBuildSelect(b, gt, j, mi, ""));
    kc_for_end(&k, &l1);
    if (IS("Hardmax")) {
        kc_loop l2;
        LLVMValueRef j2 = kc_for(&k, &l2, kc_i64(&k, 0), len, "hm");
        LLVMValueRef one = LLVMBuildSIToFP(b, LLVMBuildZExt(b, LLVMBuildICmp(b, LLVMIntEQ, j2, mi, ""), c->t_i64, ""), c->t_f64, "");
        kc_store(&k, xt->dtype, Y, AT(j2), one, ct);
        kc_for_end(&k, &l2);
    } else {
        /* -inf everywhere: keep exp defined */
        LLVMValueRef m = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, mx, kc_f(&k, ct, -INFINITY), ""), kc_f(&k, ct, 0), mx, "");
        kc_loop l2;
        LLVMValueRef j2 = kc_for(&k, &l2, kc_i64(&k, 0), len, "sum");
        LLVMValueRef sum = kc_phi(&k, &l2, kc_f(&k, ct, 0));
        LLVMValueRef e = kc_exp(&k, LLVMBuildFSub(b, kc_load(&k, xt->dtype, X, AT(j2), ct), m, ""), ct);
        if (IS("Softmax"))
            kc_store(&k, xt->dtype == KILN_F64 ? KILN_F64 : KILN_F32, Y, AT(j2), e, ct); /* f32 scratch in Y */
        kc_phi_next(&k, &l2, sum, LLVMBuildFAdd(b, sum, e, ""));
        kc_for_end(&k, &l2);
        kc_loop l3;
        LLVMValueRef j3 = kc_for(&k, &l3, kc_i64(&k, 0), len, "norm");
        LLVMValueRef o;
        if (IS("Softmax")) {
            /* recompute exp for narrow dtypes (Y cannot hold f32 scratch) */
            LLVMValueRef e3 = xt->dtype == KILN_F32 || xt->dtype == KILN_F64
                                  ? kc_load(&k, xt->dtype, Y, AT(j3), ct)
                                  : kc_exp(&k, LLVMBuildFSub(b, kc_load(&k, xt->dtype, X, AT(j3), ct), m, ""), ct);
            o = LLVMBuildFDiv(b, e3, sum, "");
        } else {
            o = LLVMBuildFSub(b, LLVMBuildFSub(b, kc_load(&k, xt->dtype, X, AT(j3), ct), m, ""), kc_intr1(&k, "llvm.log", sum), "");
        }
        kc_store(&k, xt->dtype, Y, AT(j3), o, ct);
        kc_for_end(&k, &l3);
    }
#undef AT
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

/* ---- layer norms ---- */

/* Offset of element j of a normalized row in a scale/bias tensor that
 * broadcasts against x's trailing dims (the common layouts: same trailing
 * shape, or one element). */
static int norm_param_ok(cg *c, const kiln_type *xt, int axis, int vid)
{
    const kiln_type *t = vt(c, vid);
    if (kiln_type_numel(t) == 1)
        return 1;
    int tail = xt->rank - axis;
    if (t->rank > tail) {
        for (int d = 0; d < t->rank - tail; d++)
            if (t->dims[d] != 1)
                return 0;
    }
    int r = t->rank < tail ? t->rank : tail;
    for (int d = 0; d < r; d++)
        if (t->dims[t->rank - 1 - d] != xt->dims[xt->rank - 1 - d])
            return 0;
    /* missing leading dims of the tail must be 1-extent repeats: only allow exact */
    return t->rank >= tail || kiln_type_numel(t) == kiln_type_numel(xt) / 1 || r == tail;
}

static LLVMValueRef param_at(kc *k, int vid, LLVMValueRef j, LLVMValueRef n, ctype ct)
{
    const kiln_type *t = vt(k->c, vid);
    LLVMValueRef idx = kiln_type_numel(t) == 1 ? kc_i64(k, 0) : LLVMBuildSRem(k->c->b, j, n, "");
    return kc_load(k, t->dtype, kc_ptr(k, vid), idx, ct);
}

typedef struct lnspec {
    int x, skip, bias, scale, beta; /* value ids, -1 absent */
    int rms;
    int y, mean, inv, sum;          /* outputs, -1 absent */
    double eps;
    int axis;
} lnspec;

static LLVMValueRef xval(kc *k, const lnspec *s, const kiln_type *xt, LLVMValueRef X, LLVMValueRef base,
                         LLVMValueRef j, LLVMValueRef N);

static int lower_lnorm(cg *c, int ni, const lnspec *s)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *xt = vt(c, s->x);
    if (!norm_param_ok(c, xt, s->axis, s->scale) || (s->beta >= 0 && !norm_param_ok(c, xt, s->axis, s->beta)))
        return cg_fail(c, n, "scale/bias broadcasting pattern not supported by the CPU lowering");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef N = prod_dims(&k, xt, s->axis, xt->rank);
    LLVMValueRef X = kc_ptr(&k, s->x), Y = kc_ptr(&k, s->y);
    ctype ct = CT_F64;
    kc_loop lr;
    LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "row");
    LLVMValueRef base = LLVMBuildMul(b, r, N, "");
    /* element j of the (skip-)summed row */
#define XV(j) xval(&k, s, xt, X, base, (j), N)
    kc_loop l1;
    LLVMValueRef j = kc_for(&k, &l1, kc_i64(&k, 0), N, "stat");
    LLVMValueRef s1 = kc_phi(&k, &l1, kc_f(&k, ct, 0)), s2 = kc_phi(&k, &l1, kc_f(&k, ct, 0));
    LLVMValueRef v = XV(j);
    if (s->sum >= 0)
        kc_store(&k, vt(c, s->sum)->dtype, kc_ptr(&k, s->sum), LLVMBuildAdd(b, base, j, ""), v, ct);
    kc_phi_next(&k, &l1, s1, LLVMBuildFAdd(b, s1, v, ""));
    kc_phi_next(&k, &l1, s2, LLVMBuildFAdd(b, s2, LLVMBuildFMul(b, v, v, ""), ""));
    kc_for_end(&k, &l1);
    LLVMValueRef Nf = LLVMBuildSIToFP(b, N, c->t_f64, "");
    LLVMValueRef mean = s->rms ? kc_f(&k, ct, 0) : LLVMBuildFDiv(b, s1, Nf, "");
    LLVMValueRef var = LLVMBuildFSub(b, LLVMBuildFDiv(b, s2, Nf, ""), LLVMBuildFMul(b, mean, mean, ""), "");
    LLVMValueRef inv = LLVMBuildFDiv(b, kc_f(&k, ct, 1), kc_intr1(&k, "llvm.sqrt", LLVMBuildFAdd(b, var, kc_f(&k, ct, s->eps), "")), "");
    kc_loop l2;
    LLVMValueRef j2 = kc_for(&k, &l2, kc_i64(&k, 0), N, "norm");
    LLVMValueRef o = LLVMBuildFMul(b, LLVMBuildFSub(b, XV(j2), mean, ""), inv, "");
    o = LLVMBuildFMul(b, o, param_at(&k, s->scale, j2, N, ct), "");
    if (s->beta >= 0)
        o = LLVMBuildFAdd(b, o, param_at(&k, s->beta, j2, N, ct), "");
    kc_store(&k, xt->dtype, Y, LLVMBuildAdd(b, base, j2, ""), o, ct);
    kc_for_end(&k, &l2);
    if (s->mean >= 0)
        kc_store(&k, vt(c, s->mean)->dtype, kc_ptr(&k, s->mean), r, mean, ct);
    if (s->inv >= 0)
        kc_store(&k, vt(c, s->inv)->dtype, kc_ptr(&k, s->inv), r, inv, ct);
#undef XV
    kc_for_end(&k, &lr);
    kc_end(&k);
    kiln_dim trip[KILN_MAX_RANK];
    for (int d = 0; d < s->axis; d++)
        trip[d] = xt->dims[d];
    cg_launch(c, k.fn, trip, s->axis, 8, ni);
    return c->failed ? -1 : 0;
}

/* Element j of a row: x (+ skip + bias for the skip forms), in f64. */
static LLVMValueRef xval(kc *k, const lnspec *s, const kiln_type *xt, LLVMValueRef X, LLVMValueRef base,
                         LLVMValueRef j, LLVMValueRef N)
{
    LLVMBuilderRef b = k->c->b;
    LLVMValueRef i = LLVMBuildAdd(b, base, j, "");
    LLVMValueRef v = kc_load(k, xt->dtype, X, i, CT_F64);
    if (s->skip >= 0) {
        const kiln_type *st = vt(k->c, s->skip);
        LLVMValueRef si = kiln_type_numel(st) >= 0 && kiln_type_numel(st) == kiln_type_numel(xt) ? i
                          : LLVMBuildSRem(b, i, kc_i64(k, kiln_type_numel(st) > 0 ? kiln_type_numel(st) : 1), "");
        if (kiln_type_numel(st) < 0)
            si = i;
        v = LLVMBuildFAdd(b, v, kc_load(k, st->dtype, kc_ptr(k, s->skip), si, CT_F64), "");
    }
    if (s->bias >= 0)
        v = LLVMBuildFAdd(b, v, kc_load(k, vt(k->c, s->bias)->dtype, kc_ptr(k, s->bias), LLVMBuildSRem(b, j, N, ""), CT_F64), "");
    return v;
}

static int lower_norms(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    lnspec s;
    memset(&s, -1, sizeof s);
    s.rms = 0;
    s.eps = kiln_node_float(n, "epsilon");
    const kiln_type *xt = vt(c, n->inputs[0]);
#define OUT(o) (has_out(c, n, (o)) ? n->outputs[(o)] : -1)
#define IN(i) (n->n_inputs > (i) ? n->inputs[(i)] : -1)
    s.x = n->inputs[0];
    s.y = n->outputs[0];
    if (IS("LayerNormalization") || IS("RMSNormalization") || IS("SimplifiedLayerNormalization")) {
        s.axis = (int)kiln_node_int(n, "axis");
        if (s.axis < 0)
            s.axis += xt->rank;
        s.scale = n->inputs[1];
        s.beta = IS("LayerNormalization") ? IN(2) : -1;
        s.rms = !IS("LayerNormalization");
        if (IS("LayerNormalization")) {
            s.mean = OUT(1);
            s.inv = OUT(2);
        } else if (IS("SimplifiedLayerNormalization")) {
            s.inv = OUT(1);
        }
    } else { /* SkipLayerNormalization / SkipSimplifiedLayerNormalization */
        s.axis = xt->rank - 1;
        s.skip = n->inputs[1];
        s.scale = n->inputs[2];
        s.rms = IS("SkipSimplifiedLayerNormalization");
        s.beta = s.rms ? -1 : IN(3);
        s.bias = s.rms ? IN(3) : IN(4);
        s.mean = OUT(1);
        s.inv = OUT(2);
        s.sum = OUT(3);
    }
#undef OUT
#undef IN
    return lower_lnorm(c, ni, &s);
}

/* ---- BatchNormalization (inference), Instance/GroupNormalization ---- */

static int lower_groupish(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    const kiln_type *xt = vt(c, n->inputs[0]);
    double eps = kiln_node_float(n, "epsilon");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef X = kc_ptr(&k, n->inputs[0]), Y = kc_ptr(&k, n->outputs[0]);
    LLVMValueRef C = kc_dim(&k, xt->dims[1]), HW = prod_dims(&k, xt, 2, xt->rank);
    ctype ct = CT_F64;
    kiln_dim trip[2] = {xt->dims[0], xt->dims[1]};
    int ntrip = 2;
    if (IS("BatchNormalization")) {
        /* row = (n, c): y = (x - mean[c]) / sqrt(var[c] + eps) * scale[c] + B[c] */
        kc_loop lr;
        LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "nc");
        LLVMValueRef ch = LLVMBuildSRem(b, r, C, "");
        LLVMValueRef sc = kc_load(&k, vt(c, n->inputs[1])->dtype, kc_ptr(&k, n->inputs[1]), ch, ct);
        LLVMValueRef bi = kc_load(&k, vt(c, n->inputs[2])->dtype, kc_ptr(&k, n->inputs[2]), ch, ct);
        LLVMValueRef mu = kc_load(&k, vt(c, n->inputs[3])->dtype, kc_ptr(&k, n->inputs[3]), ch, ct);
        LLVMValueRef va = kc_load(&k, vt(c, n->inputs[4])->dtype, kc_ptr(&k, n->inputs[4]), ch, ct);
        LLVMValueRef inv = LLVMBuildFDiv(b, kc_f(&k, ct, 1), kc_intr1(&k, "llvm.sqrt", LLVMBuildFAdd(b, va, kc_f(&k, ct, eps), "")), "");
        kc_loop l;
        LLVMValueRef j = kc_for(&k, &l, kc_i64(&k, 0), HW, "hw");
        LLVMValueRef i = LLVMBuildAdd(b, LLVMBuildMul(b, r, HW, ""), j, "");
        LLVMValueRef v = LLVMBuildFMul(b, LLVMBuildFSub(b, kc_load(&k, xt->dtype, X, i, ct), mu, ""), inv, "");
        kc_store(&k, xt->dtype, Y, i, LLVMBuildFAdd(b, LLVMBuildFMul(b, v, sc, ""), bi, ""), ct);
        kc_for_end(&k, &l);
        kc_for_end(&k, &lr);
    } else {
        /* groups of C/G channels: stats over (C/G)*HW values */
        LLVMValueRef G = IS("InstanceNormalization") ? C : kc_i64(&k, kiln_node_int(n, "num_groups"));
        LLVMValueRef cpg = LLVMBuildSDiv(b, C, G, "");
        LLVMValueRef len = LLVMBuildMul(b, cpg, HW, "");
        kc_loop lr;
        LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "ng"); /* r = n*G + g */
        LLVMValueRef base = LLVMBuildMul(b, r, len, "");
        kc_loop l1;
        LLVMValueRef j = kc_for(&k, &l1, kc_i64(&k, 0), len, "stat");
        LLVMValueRef s1 = kc_phi(&k, &l1, kc_f(&k, ct, 0)), s2 = kc_phi(&k, &l1, kc_f(&k, ct, 0));
        LLVMValueRef v = kc_load(&k, xt->dtype, X, LLVMBuildAdd(b, base, j, ""), ct);
        kc_phi_next(&k, &l1, s1, LLVMBuildFAdd(b, s1, v, ""));
        kc_phi_next(&k, &l1, s2, LLVMBuildFAdd(b, s2, LLVMBuildFMul(b, v, v, ""), ""));
        kc_for_end(&k, &l1);
        LLVMValueRef lf = LLVMBuildSIToFP(b, len, c->t_f64, "");
        LLVMValueRef mean = LLVMBuildFDiv(b, s1, lf, "");
        LLVMValueRef var = LLVMBuildFSub(b, LLVMBuildFDiv(b, s2, lf, ""), LLVMBuildFMul(b, mean, mean, ""), "");
        LLVMValueRef inv = LLVMBuildFDiv(b, kc_f(&k, ct, 1), kc_intr1(&k, "llvm.sqrt", LLVMBuildFAdd(b, var, kc_f(&k, ct, eps), "")), "");
        kc_loop l2;
        LLVMValueRef j2 = kc_for(&k, &l2, kc_i64(&k, 0), len, "norm");
        LLVMValueRef ch = LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildSRem(b, r, G, ""), cpg, ""), LLVMBuildSDiv(b, j2, HW, ""), "");
        LLVMValueRef i = LLVMBuildAdd(b, base, j2, "");
        LLVMValueRef o = LLVMBuildFMul(b, LLVMBuildFSub(b, kc_load(&k, xt->dtype, X, i, ct), mean, ""), inv, "");
        o = LLVMBuildFMul(b, o, kc_load(&k, vt(c, n->inputs[1])->dtype, kc_ptr(&k, n->inputs[1]), ch, ct), "");
        o = LLVMBuildFAdd(b, o, kc_load(&k, vt(c, n->inputs[2])->dtype, kc_ptr(&k, n->inputs[2]), ch, ct), "");
        kc_store(&k, xt->dtype, Y, i, o, ct);
        kc_for_end(&k, &l2);
        kc_for_end(&k, &lr);
        if (!IS("InstanceNormalization")) {
            trip[1] = kiln_node_int(n, "num_groups");
        }
    }
    kc_end(&k);
    cg_launch(c, k.fn, trip, ntrip, 1, ni);
    return c->failed ? -1 : 0;
}

/* ---- RotaryEmbedding ---- */

static int lower_rope(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *xt = vt(c, n->inputs[0]), *cst = vt(c, n->inputs[1]);
    int four = xt->rank == 4;
    int has_pos = n->n_inputs > 3 && n->inputs[3] >= 0;
    int64_t Hattr = kiln_node_int(n, "num_heads");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef X = kc_ptr(&k, n->inputs[0]), Y = kc_ptr(&k, n->outputs[0]);
    LLVMValueRef COS = kc_ptr(&k, n->inputs[1]), SIN = kc_ptr(&k, n->inputs[2]);
    LLVMValueRef H, S, D;
    if (four) {
        H = kc_dim(&k, xt->dims[1]);
        S = kc_dim(&k, xt->dims[2]);
        D = kc_dim(&k, xt->dims[3]);
    } else {
        H = kc_i64(&k, Hattr);
        S = kc_dim(&k, xt->dims[1]);
        D = LLVMBuildSDiv(b, kc_dim(&k, xt->dims[2]), H, "");
    }
    int64_t rdv = kiln_node_int(n, "rotary_embedding_dim");
    LLVMValueRef rd = rdv ? kc_i64(&k, rdv) : D;
    LLVMValueRef half = LLVMBuildSDiv(b, rd, kc_i64(&k, 2), "");
    int inter = kiln_node_int(n, "interleaved") != 0;
    ctype ct = CT_F32;
    /* outer iteration: (b, s) token */
    kc_loop lt;
    LLVMValueRef t = kc_for(&k, &lt, k.begin, k.end, "tok");
    LLVMValueRef bb = LLVMBuildSDiv(b, t, S, ""), ss = LLVMBuildSRem(b, t, S, "");
    LLVMValueRef row;
    if (has_pos) {
        const kiln_type *pt = vt(c, n->inputs[3]);
        LLVMValueRef pb = KILN_DIM_IS_STATIC(pt->dims[0]) && pt->dims[0] == 1 ? kc_i64(&k, 0) : bb;
        row = kc_load(&k, pt->dtype, kc_ptr(&k, n->inputs[3]), LLVMBuildAdd(b, LLVMBuildMul(b, pb, S, ""), ss, ""), CT_I64);
    } else {
        LLVMValueRef cb = KILN_DIM_IS_STATIC(cst->dims[0]) && cst->dims[0] == 1 ? kc_i64(&k, 0) : bb;
        row = LLVMBuildAdd(b, LLVMBuildMul(b, cb, S, ""), ss, "");
    }
    kc_loop lh;
    LLVMValueRef h = kc_for(&k, &lh, kc_i64(&k, 0), H, "head");
    LLVMValueRef base = four ? LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, H, ""), h, ""), S, ""), ss, ""), D, "")
                             : LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, S, ""), ss, ""), H, ""), h, ""), D, "");
    kc_loop lk;
    LLVMValueRef kk = kc_for(&k, &lk, kc_i64(&k, 0), half, "pair");
    LLVMValueRef i1 = inter ? LLVMBuildMul(b, kk, kc_i64(&k, 2), "") : kk;
    LLVMValueRef i2 = inter ? LLVMBuildAdd(b, i1, kc_i64(&k, 1), "") : LLVMBuildAdd(b, kk, half, "");
    i1 = LLVMBuildAdd(b, base, i1, "");
    i2 = LLVMBuildAdd(b, base, i2, "");
    LLVMValueRef x1 = kc_load(&k, xt->dtype, X, i1, ct), x2 = kc_load(&k, xt->dtype, X, i2, ct);
    LLVMValueRef ci = LLVMBuildAdd(b, LLVMBuildMul(b, row, half, ""), kk, "");
    LLVMValueRef co = kc_load(&k, cst->dtype, COS, ci, ct), si = kc_load(&k, cst->dtype, SIN, ci, ct);
    kc_store(&k, xt->dtype, Y, i1, LLVMBuildFSub(b, LLVMBuildFMul(b, co, x1, ""), LLVMBuildFMul(b, si, x2, ""), ""), ct);
    kc_store(&k, xt->dtype, Y, i2, LLVMBuildFAdd(b, LLVMBuildFMul(b, si, x1, ""), LLVMBuildFMul(b, co, x2, ""), ""), ct);
    kc_for_end(&k, &lk);
    kc_loop lp;
    LLVMValueRef d = kc_for(&k, &lp, rd, D, "pass");
    LLVMValueRef id = LLVMBuildAdd(b, base, d, "");
    kc_store(&k, xt->dtype, Y, id, kc_load(&k, xt->dtype, X, id, ct), ct);
    kc_for_end(&k, &lp);
    kc_for_end(&k, &lh);
    kc_for_end(&k, &lt);
    kc_end(&k);
    kiln_dim trip[2] = {xt->dims[0], four ? xt->dims[2] : xt->dims[1]};
    cg_launch(c, k.fn, trip, 2, 4, ni);
    return c->failed ? -1 : 0;
}

/* ---- attention ---- */

typedef struct attn {
    int q, k, v, pk, pv, mask, nonpad; /* value ids, -1 absent */
    int y, present_k, present_v, qk;   /* outputs, -1 absent */
    int three;                         /* q/k/v are [B, S, H*D] */
    kiln_dim B, Hq, Hkv, Sq, Skv, P, D, Dv;
    double scale, softcap;
    int causal;                        /* ONNX is_causal / GQA causal (both bottom-right) */
    int64_t window, lw, rw;            /* GQA window; ONNX left/right windows (-1 off) */
    int mode;                          /* ONNX qk_matmul_output_mode */
    int mask_bool, mask_short;         /* ONNX: short masks pad "not allowed" */
    int bias_bcast_last;
    int is_gqa;
    /* KV cache in place: past and present are the runtime's cache buffers
     * [B, Hkv, kv_ctx, D]; new rows are written at P.., nothing is copied */
    int inplace;
    int64_t kv_ctx;
    kiln_dtype kv_dtype;
} attn;

/* present = concat(past, new) along the sequence axis, [B, H, T, D]. */
static int lower_present(cg *c, int ni, const attn *a, int past, int cur, int out, kiln_dim Dd)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *ot = vt(c, out);
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef H = kc_dim(&k, a->Hkv), T = kc_dim(&k, ot->dims[2]), D = kc_dim(&k, Dd);
    LLVMValueRef P = past >= 0 ? kc_dim(&k, a->P) : kc_i64(&k, 0), S = kc_dim(&k, a->Skv);
    LLVMValueRef O = kc_ptr(&k, out), C = kc_ptr(&k, cur), PP = past >= 0 ? kc_ptr(&k, past) : NULL;
    kiln_dtype odt = ot->dtype;
    kc_loop lr;
    LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "bh"); /* r = b*H + h */
    LLVMValueRef bb = LLVMBuildSDiv(b, r, H, ""), h = LLVMBuildSRem(b, r, H, "");
    kc_loop lj;
    LLVMValueRef j = kc_for(&k, &lj, kc_i64(&k, 0), T, "t");
    LLVMValueRef obase = LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, r, T, ""), j, ""), D, "");
    LLVMValueRef in_past = LLVMBuildICmp(b, LLVMIntSLT, j, P, "");
    LLVMValueRef jn = LLVMBuildSub(b, j, P, "");
    LLVMValueRef cbase = a->three ? LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, S, ""), jn, ""), H, ""), h, ""), D, "")
                                  : LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, r, S, ""), jn, ""), D, "");
    LLVMValueRef pbase = LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, r, P, ""), j, ""), D, "");
    kc_loop ld;
    LLVMValueRef d = kc_for(&k, &ld, kc_i64(&k, 0), D, "d");
    LLVMValueRef v;
    if (PP) {
        /* branch-free: clamp indices so both loads are in bounds */
        LLVMValueRef pi = LLVMBuildSelect(b, in_past, LLVMBuildAdd(b, pbase, d, ""), kc_i64(&k, 0), "");
        LLVMValueRef ci = LLVMBuildSelect(b, in_past, kc_i64(&k, 0), LLVMBuildAdd(b, cbase, d, ""), "");
        LLVMValueRef pv = kc_load(&k, vt(c, past)->dtype, PP, pi, CT_F32);
        LLVMValueRef cv = kc_load(&k, vt(c, cur)->dtype, C, ci, CT_F32);
        v = LLVMBuildSelect(b, in_past, pv, cv, "");
    } else {
        v = kc_load(&k, vt(c, cur)->dtype, C, LLVMBuildAdd(b, cbase, d, ""), CT_F32);
    }
    kc_store(&k, odt, O, LLVMBuildAdd(b, obase, d, ""), v, CT_F32);
    kc_for_end(&k, &ld);
    kc_for_end(&k, &lj);
    kc_for_end(&k, &lr);
    kc_end(&k);
    kiln_dim trip[2] = {a->B, a->Hkv};
    cg_launch(c, k.fn, trip, 2, 1, ni);
    return c->failed ? -1 : 0;
}

/* In-place KV cache: the new rows of k/v ([B, S, Hkv*D]) go to rows
 * P..P+S-1 of the cache buffer [B, Hkv, kv_ctx, D] in the cache's dtype. */
static int lower_kv_write(cg *c, int ni, const attn *a, int cur, int cache, kiln_dim Dd)
{
    const kiln_node *n = &c->g->nodes[ni];
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef H = kc_dim(&k, a->Hkv), S = kc_dim(&k, a->Skv), D = kc_dim(&k, Dd);
    LLVMValueRef P = a->pk >= 0 ? kc_dim(&k, a->P) : kc_i64(&k, 0);
    LLVMValueRef C = kc_ptr(&k, cur), O = kc_ptr(&k, cache);
    kc_loop lr;
    LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "bs"); /* r = b*S + s */
    LLVMValueRef bb = LLVMBuildSDiv(b, r, S, ""), ss = LLVMBuildSRem(b, r, S, "");
    kc_loop lh;
    LLVMValueRef h = kc_for(&k, &lh, kc_i64(&k, 0), H, "h");
    LLVMValueRef src = LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, r, H, ""), h, ""), D, "");
    LLVMValueRef row = LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, H, ""), h, ""), kc_i64(&k, a->kv_ctx), ""),
                                    LLVMBuildAdd(b, P, ss, ""), "");
    LLVMValueRef dst = LLVMBuildMul(b, row, D, "");
    LLVMValueRef inv = NULL;
    if (a->kv_dtype == KILN_I8) {
        /* symmetric int8 with one f32 scale per head and token, stored after
         * the int8 rows of the whole cache */
        kc_loop lm;
        LLVMValueRef d0 = kc_for(&k, &lm, kc_i64(&k, 0), D, "amax");
        LLVMValueRef am = kc_phi(&k, &lm, kc_f(&k, CT_F32, 0));
        LLVMValueRef x = kc_intr1(&k, "llvm.fabs", kc_load(&k, vt(c, cur)->dtype, C, LLVMBuildAdd(b, src, d0, ""), CT_F32));
        kc_phi_next(&k, &lm, am, kc_intr2(&k, "llvm.maxnum", am, x));
        kc_for_end(&k, &lm);
        LLVMValueRef scale = LLVMBuildFDiv(b, am, kc_f(&k, CT_F32, 127), "");
        LLVMValueRef zero = LLVMBuildFCmp(b, LLVMRealOEQ, am, kc_f(&k, CT_F32, 0), "");
        inv = LLVMBuildSelect(b, zero, kc_f(&k, CT_F32, 0), LLVMBuildFDiv(b, kc_f(&k, CT_F32, 1), scale, ""), "");
        LLVMValueRef sbase = LLVMBuildMul(b, LLVMBuildMul(b, LLVMBuildMul(b, kc_dim(&k, a->B), H, ""), kc_i64(&k, a->kv_ctx), ""), D, "");
        LLVMValueRef sp = LLVMBuildGEP2(b, c->t_i8, O, &sbase, 1, "");
        kc_store(&k, KILN_F32, sp, row, scale, CT_F32);
    }
    kc_loop ld;
    LLVMValueRef d = kc_for(&k, &ld, kc_i64(&k, 0), D, "d");
    LLVMValueRef xv = kc_load(&k, vt(c, cur)->dtype, C, LLVMBuildAdd(b, src, d, ""), CT_F32);
    if (inv)
        xv = kc_intr1(&k, "llvm.roundeven", LLVMBuildFMul(b, xv, inv, ""));
    kc_store(&k, a->kv_dtype, O, LLVMBuildAdd(b, dst, d, ""), xv, CT_F32);
    kc_for_end(&k, &ld);
    kc_for_end(&k, &lh);
    kc_for_end(&k, &lr);
    kc_end(&k);
    kiln_dim trip[2] = {a->B, a->Skv};
    cg_launch(c, k.fn, trip, 2, 16, ni);
    return c->failed ? -1 : 0;
}

/* f32 scale of int8 cache row j of (b, kv head g): scales follow the int8
 * rows of the whole [B, Hkv, kv_ctx, D] cache. */
static LLVMValueRef kv_scale(kc *k, const attn *a, int cache, LLVMValueRef bb, LLVMValueRef g, LLVMValueRef j,
                             LLVMValueRef Hk, LLVMValueRef D)
{
    LLVMBuilderRef b = k->c->b;
    LLVMValueRef ctx = kc_i64(k, a->kv_ctx);
    LLVMValueRef sbase = LLVMBuildMul(b, LLVMBuildMul(b, LLVMBuildMul(b, kc_dim(k, a->B), Hk, ""), ctx, ""), D, "");
    LLVMValueRef sp = LLVMBuildGEP2(b, k->c->t_i8, kc_ptr(k, cache), &sbase, 1, "");
    LLVMValueRef row = LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, Hk, ""), g, ""), ctx, ""), j, "");
    return kc_load(k, KILN_F32, sp, row, CT_F32);
}

/* Pointer+offset of key/value row j for (b, kv head g). */
static LLVMValueRef kv_row(kc *k, const attn *a, int past, int cur, LLVMValueRef bb, LLVMValueRef g, LLVMValueRef j,
                           LLVMValueRef P, LLVMValueRef S, LLVMValueRef Hk, LLVMValueRef D, LLVMValueRef *ptr)
{
    LLVMBuilderRef b = k->c->b;
    if (a->inplace) { /* every key row, past or new, lives in the cache */
        *ptr = kc_ptr(k, cur);
        return LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, Hk, ""), g, ""),
                                                            kc_i64(k, a->kv_ctx), ""), j, ""), D, "");
    }
    LLVMValueRef jn = LLVMBuildSub(b, j, P, "");
    LLVMValueRef coff = a->three ? LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, S, ""), jn, ""), Hk, ""), g, ""), D, "")
                                 : LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, Hk, ""), g, ""), S, ""), jn, ""), D, "");
    LLVMValueRef cp = kc_ptr(k, cur);
    if (past < 0) {
        *ptr = cp;
        return coff;
    }
    LLVMValueRef poff = LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, Hk, ""), g, ""), P, ""), j, ""), D, "");
    LLVMValueRef inp = LLVMBuildICmp(b, LLVMIntSLT, j, P, "");
    *ptr = LLVMBuildSelect(b, inp, kc_ptr(k, past), cp, "");
    return LLVMBuildSelect(b, inp, poff, coff, "");
}

/* What the row and tile paths of one attention kernel share. */
typedef struct actx {
    const attn *a;
    const kiln_type *qt, *yt;
    kiln_dtype kdt, vdt;
    int f32kv;
    LLVMValueRef Hq, Hk, Sq, Skv, P, T, D, Dv, grp;
    LLVMValueRef Q, Y;
} actx;

/* Per query row: its position and the mask addressing. */
typedef struct arow {
    LLVMValueRef pos, valid, moff, mst3, M;
} arow;

static void attn_rowinfo(kc *k, const actx *x, LLVMValueRef bb, LLVMValueRef h, LLVMValueRef i, arow *ri)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    const attn *a = x->a;
    /* query position: past (or nonpad-derived offset) + i */
    LLVMValueRef offset = x->P;
    ri->valid = x->T;
    if (a->nonpad >= 0) {
        ri->valid = kc_load(k, vt(c, a->nonpad)->dtype, kc_ptr(k, a->nonpad), bb, CT_I64);
        offset = LLVMBuildSub(b, ri->valid, x->Sq, "");
    }
    ri->pos = LLVMBuildAdd(b, offset, i, "");
    ri->moff = kc_i64(k, 0);
    ri->mst3 = kc_i64(k, 0);
    ri->M = kc_i64(k, 0);
    if (a->mask >= 0) {
        const kiln_type *mt = vt(c, a->mask);
        LLVMValueRef own[KILN_MAX_RANK];
        kc_strides(k, mt, own);
        LLVMValueRef idx4[4] = {bb, h, i, kc_i64(k, 0)};
        for (int t = 0; t < 3; t++) {
            int ax = t - (4 - mt->rank);
            if (ax >= 0 && !(KILN_DIM_IS_STATIC(mt->dims[ax]) && mt->dims[ax] == 1))
                ri->moff = LLVMBuildAdd(b, ri->moff, LLVMBuildMul(b, idx4[t], own[ax], ""), "");
        }
        int last = mt->rank - 1;
        ri->M = kc_dim(k, mt->dims[last]);
        ri->mst3 = (KILN_DIM_IS_STATIC(mt->dims[last]) && mt->dims[last] == 1 && a->bias_bcast_last) ? kc_i64(k, 0) : own[last];
        if (!a->mask_short)
            ri->M = x->T; /* no padding: the mask covers (or broadcasts over) every key */
    }
}

/* Score of key j from the raw dot product: scale, softcap, masks (-inf
 * where masked). *raw and *capped receive the intermediate values. */
static LLVMValueRef attn_score(kc *k, const actx *x, const arow *ri, LLVMValueRef dot, LLVMValueRef j, LLVMValueRef *raw,
                               LLVMValueRef *capped)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    const attn *a = x->a;
    ctype ct = CT_F32;
    LLVMValueRef s = LLVMBuildFMul(b, dot, kc_f(k, ct, a->scale), "");
    if (raw)
        *raw = s;
    if (a->softcap > 0)
        s = LLVMBuildFMul(b, kc_f(k, ct, a->softcap), kc_tanh(k, LLVMBuildFDiv(b, s, kc_f(k, ct, a->softcap), ""), ct), "");
    if (capped)
        *capped = s;
    LLVMValueRef pos = ri->pos;
    LLVMValueRef masked = LLVMConstInt(c->t_i1, 0, 0);
    if (a->causal)
        masked = LLVMBuildOr(b, masked, LLVMBuildICmp(b, LLVMIntSGT, j, pos, ""), "");
    if (a->window > 0)
        masked = LLVMBuildOr(b, masked, LLVMBuildOr(b, LLVMBuildICmp(b, LLVMIntSLE, j, LLVMBuildSub(b, pos, kc_i64(k, a->window), ""), ""),
                                                    LLVMBuildICmp(b, LLVMIntSGT, j, pos, ""), ""), "");
    if (a->lw >= 0)
        masked = LLVMBuildOr(b, masked, LLVMBuildICmp(b, LLVMIntSGT, LLVMBuildSub(b, pos, j, ""), kc_i64(k, a->lw), ""), "");
    if (a->rw >= 0)
        masked = LLVMBuildOr(b, masked, LLVMBuildICmp(b, LLVMIntSGT, LLVMBuildSub(b, j, pos, ""), kc_i64(k, a->rw), ""), "");
    if (a->nonpad >= 0)
        masked = LLVMBuildOr(b, masked, LLVMBuildICmp(b, LLVMIntSGE, j, ri->valid, ""), "");
    if (a->mask >= 0) {
        const kiln_type *mt = vt(c, a->mask);
        LLVMValueRef beyond = LLVMBuildICmp(b, LLVMIntSGE, j, ri->M, "");
        LLVMValueRef mi = LLVMBuildSelect(b, beyond, kc_i64(k, 0), LLVMBuildAdd(b, ri->moff, LLVMBuildMul(b, j, ri->mst3, ""), ""), "");
        masked = LLVMBuildOr(b, masked, beyond, "");
        if (a->mask_bool) {
            LLVMValueRef mv = kc_load(k, KILN_BOOL, kc_ptr(k, a->mask), mi, CT_I64);
            masked = LLVMBuildOr(b, masked, LLVMBuildICmp(b, LLVMIntEQ, mv, kc_i64(k, 0), ""), "");
        } else {
            s = LLVMBuildFAdd(b, s, kc_load(k, mt->dtype, kc_ptr(k, a->mask), mi, ct), "");
        }
    }
    return LLVMBuildSelect(b, masked, kc_f(k, ct, -INFINITY), s, "");
}

/* Row w[0..T) of scores (max mx) to probabilities in place, 1/sum applied
 * when `normalize`; returns 1/sum (0 for a row with every key masked). */
static LLVMValueRef attn_softmax(kc *k, const actx *x, LLVMValueRef w, LLVMValueRef wo, LLVMValueRef mx, int normalize)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    ctype ct = CT_F32;
    LLVMValueRef T = x->T;
    LLVMValueRef allm = LLVMBuildFCmp(b, LLVMRealOEQ, mx, kc_f(k, ct, -INFINITY), "");
    LLVMValueRef m0 = LLVMBuildSelect(b, allm, kc_f(k, ct, 0), mx, "");
    /* exponentials 8 at a time (explicit vectors: the sum is a reduction
     * LLVM would not vectorize), then the tail */
    LLVMValueRef tv = LLVMBuildMul(b, LLVMBuildSDiv(b, T, kc_i64(k, KC_VW), ""), kc_i64(k, KC_VW), "");
    LLVMValueRef m0v = LLVMBuildShuffleVector(b, LLVMBuildInsertElement(b, LLVMGetUndef(kc_vec_t(c)), m0, kc_i64(k, 0), ""),
                                              LLVMGetUndef(kc_vec_t(c)), LLVMConstNull(LLVMVectorType(c->t_i32, KC_VW)), "");
    kc_loop lev;
    LLVMValueRef jv = kc_for(k, &lev, kc_i64(k, 0), LLVMBuildSDiv(b, tv, kc_i64(k, KC_VW), ""), "expv");
    LLVMValueRef vsum = kc_phi(k, &lev, kc_vzero(k));
    LLVMValueRef j8 = LLVMBuildAdd(b, wo, LLVMBuildMul(b, jv, kc_i64(k, KC_VW), ""), "");
    LLVMValueRef ev = kc_exp(k, LLVMBuildFSub(b, kc_vload(k, w, j8), m0v, ""), CT_F32);
    kc_vstore(k, w, j8, ev);
    kc_phi_next(k, &lev, vsum, LLVMBuildFAdd(b, vsum, ev, ""));
    kc_for_end(k, &lev);
    LLVMValueRef vtotal = kc_hsum(k, vsum);
    kc_loop le;
    LLVMValueRef j2 = kc_for(k, &le, tv, T, "exp");
    LLVMValueRef sum = kc_phi(k, &le, vtotal);
    LLVMValueRef wi = LLVMBuildAdd(b, wo, j2, "");
    LLVMValueRef e = kc_exp(k, LLVMBuildFSub(b, kc_load(k, KILN_F32, w, wi, ct), m0, ""), ct);
    kc_store(k, KILN_F32, w, wi, e, ct);
    kc_phi_next(k, &le, sum, LLVMBuildFAdd(b, sum, e, ""));
    kc_for_end(k, &le);
    LLVMValueRef invs = LLVMBuildSelect(b, allm, kc_f(k, ct, 0), LLVMBuildFDiv(b, kc_f(k, ct, 1), sum, ""), "");
    if (normalize) {
        LLVMValueRef iv = LLVMBuildShuffleVector(b, LLVMBuildInsertElement(b, LLVMGetUndef(kc_vec_t(c)), invs, kc_i64(k, 0), ""),
                                                 LLVMGetUndef(kc_vec_t(c)), LLVMConstNull(LLVMVectorType(c->t_i32, KC_VW)), "");
        kc_loop ln;
        LLVMValueRef jn = kc_for(k, &ln, kc_i64(k, 0), LLVMBuildSDiv(b, tv, kc_i64(k, KC_VW), ""), "normv");
        LLVMValueRef jo = LLVMBuildAdd(b, wo, LLVMBuildMul(b, jn, kc_i64(k, KC_VW), ""), "");
        kc_vstore(k, w, jo, LLVMBuildFMul(b, kc_vload(k, w, jo), iv, ""));
        kc_for_end(k, &ln);
        kc_loop lt;
        LLVMValueRef jt = kc_for(k, &lt, tv, T, "norm");
        LLVMValueRef wt = LLVMBuildAdd(b, wo, jt, "");
        kc_store(k, KILN_F32, w, wt, LLVMBuildFMul(b, kc_load(k, KILN_F32, w, wt, ct), invs, ""), ct);
        kc_for_end(k, &lt);
    }
    return invs;
}

/* Offset of query row (bb, h, i) in q, and of the output row in y. */
static LLVMValueRef attn_qoff(kc *k, const actx *x, LLVMValueRef bb, LLVMValueRef h, LLVMValueRef i, LLVMValueRef Dd)
{
    LLVMBuilderRef b = k->c->b;
    if (x->a->three)
        return LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, x->Sq, ""), i, ""), x->Hq, ""), h, ""), Dd, "");
    return LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, LLVMBuildAdd(b, LLVMBuildMul(b, bb, x->Hq, ""), h, ""), x->Sq, ""), i, ""), Dd, "");
}

/* One query row r = (b*Hq + h)*Sq + i: scores key by key, softmax, the
 * weighted sum of values. Used for decode (one query per head) and for
 * rows a tile does not cover. */
static void attn_row(kc *k, const actx *x, LLVMValueRef r, LLVMValueRef w, LLVMValueRef acc, LLVMValueRef qrow)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    const attn *a = x->a;
    ctype ct = CT_F32;
    LLVMValueRef i = LLVMBuildSRem(b, r, x->Sq, "");
    LLVMValueRef bh = LLVMBuildSDiv(b, r, x->Sq, "");
    LLVMValueRef h = LLVMBuildSRem(b, bh, x->Hq, ""), bb = LLVMBuildSDiv(b, bh, x->Hq, "");
    LLVMValueRef g = LLVMBuildSDiv(b, h, x->grp, "");
    LLVMValueRef qoff = attn_qoff(k, x, bb, h, i, x->D);
    LLVMValueRef qp = x->Q, qo = qoff;
    if (!x->f32kv) {
        kc_loop lc;
        LLVMValueRef d = kc_for(k, &lc, kc_i64(k, 0), x->D, "qc");
        kc_store(k, KILN_F32, qrow, d, kc_load(k, x->qt->dtype, x->Q, LLVMBuildAdd(b, qoff, d, ""), ct), ct);
        kc_for_end(k, &lc);
        qp = qrow;
        qo = kc_i64(k, 0);
    }
    arow ri;
    attn_rowinfo(k, x, bb, h, i, &ri);
    /* scores */
    kc_loop lj;
    LLVMValueRef j = kc_for(k, &lj, kc_i64(k, 0), x->T, "key");
    LLVMValueRef mx = kc_phi(k, &lj, kc_f(k, ct, -INFINITY));
    LLVMValueRef kp;
    LLVMValueRef ko = kv_row(k, a, a->pk, a->inplace ? a->present_k : a->k, bb, g, j, x->P, x->Skv, x->Hk, x->D, &kp);
    LLVMValueRef dot;
    if (x->f32kv) {
        dot = kc_dot_f32(k, qp, qo, kp, ko, x->D);
    } else {
        kc_loop ld;
        LLVMValueRef d = kc_for(k, &ld, kc_i64(k, 0), x->D, "qk");
        LLVMValueRef sa = kc_phi(k, &ld, kc_f(k, ct, 0));
        LLVMValueRef kv = kc_load(k, x->kdt, kp, LLVMBuildAdd(b, ko, d, ""), ct);
        kc_phi_next(k, &ld, sa, LLVMBuildFAdd(b, sa, LLVMBuildFMul(b, kc_load(k, KILN_F32, qp, LLVMBuildAdd(b, qo, d, ""), ct), kv, ""), ""));
        kc_for_end(k, &ld);
        dot = sa;
        if (a->inplace && x->kdt == KILN_I8)
            dot = LLVMBuildFMul(b, dot, kv_scale(k, a, a->present_k, bb, g, j, x->Hk, x->D), "");
    }
    LLVMValueRef raw, capped;
    LLVMValueRef s = attn_score(k, x, &ri, dot, j, &raw, &capped);
    if (a->qk >= 0 && a->mode < 3) {
        LLVMValueRef qo2 = LLVMBuildAdd(b, LLVMBuildMul(b, r, x->T, ""), j, "");
        kc_store(k, vt(c, a->qk)->dtype, kc_ptr(k, a->qk), qo2, a->mode == 0 ? raw : a->mode == 1 ? capped : s, ct);
    }
    kc_store(k, KILN_F32, w, j, s, ct);
    LLVMValueRef gt = LLVMBuildFCmp(b, LLVMRealOGT, s, mx, "");
    kc_phi_next(k, &lj, mx, LLVMBuildSelect(b, gt, s, mx, ""));
    kc_for_end(k, &lj);
    /* softmax; a row with every key masked gives zeros */
    LLVMValueRef invs = attn_softmax(k, x, w, kc_i64(k, 0), mx, 0);
    /* acc = Σ p_j v_j */
    kc_loop lz;
    LLVMValueRef dz = kc_for(k, &lz, kc_i64(k, 0), x->Dv, "z");
    kc_store(k, KILN_F32, acc, dz, kc_f(k, ct, 0), ct);
    kc_for_end(k, &lz);
    kc_loop lv;
    LLVMValueRef j3 = kc_for(k, &lv, kc_i64(k, 0), x->T, "val");
    LLVMValueRef p = LLVMBuildFMul(b, kc_load(k, KILN_F32, w, j3, ct), invs, "");
    if (a->qk >= 0 && a->mode == 3)
        kc_store(k, vt(c, a->qk)->dtype, kc_ptr(k, a->qk), LLVMBuildAdd(b, LLVMBuildMul(b, r, x->T, ""), j3, ""), p, ct);
    LLVMValueRef vp;
    LLVMValueRef vo = kv_row(k, a, a->pv, a->inplace ? a->present_v : a->v, bb, g, j3, x->P, x->Skv, x->Hk, x->Dv, &vp);
    kc_loop ld2;
    LLVMValueRef d2 = kc_for(k, &ld2, kc_i64(k, 0), x->Dv, "vd");
    LLVMValueRef pv = p;
    if (a->inplace && x->vdt == KILN_I8)
        pv = LLVMBuildFMul(b, p, kv_scale(k, a, a->present_v, bb, g, j3, x->Hk, x->Dv), "");
    LLVMValueRef vv = kc_load(k, x->f32kv ? KILN_F32 : x->vdt, vp, LLVMBuildAdd(b, vo, d2, ""), ct);
    LLVMValueRef av = kc_load(k, KILN_F32, acc, d2, ct);
    kc_store(k, KILN_F32, acc, d2, LLVMBuildFAdd(b, av, LLVMBuildFMul(b, pv, vv, ""), ""), ct);
    kc_for_end(k, &ld2);
    kc_for_end(k, &lv);
    LLVMValueRef yoff = attn_qoff(k, x, bb, h, i, x->Dv);
    kc_loop lo;
    LLVMValueRef d3 = kc_for(k, &lo, kc_i64(k, 0), x->Dv, "yo");
    kc_store(k, x->yt->dtype, x->Y, LLVMBuildAdd(b, yoff, d3, ""), kc_load(k, KILN_F32, acc, d3, ct), ct);
    kc_for_end(k, &lo);
}

/* ---- tiled attention (many queries per head: encoders, prefill) ----
 * The keys of one (batch, kv head) are transposed once into kt [D][Tp]
 * and the values copied into vc [T][Dvp] (converted to f32, int8 scales
 * applied); then ATT_MR query rows at a time go through the GEMM
 * micro-kernel twice: scores = Q kt, softmax per row in place, out = P vc.
 * Scratch lives on the stack, so the path is taken only while it stays
 * small (ATT_TILE_STACK). */
#define ATT_TILE_STACK (256 * 1024)

typedef struct atile {
    int MR, W, NVs, NVo;
    int64_t Tp, Dvp; /* padded widths (multiples of NVs*W, NVo*W) */
    LLVMValueRef kt, vc, sc, yt;
} atile;

static int attn_tile_plan(cg *c, const attn *a, int64_t Tmax, int64_t Dmax, int64_t Dvmax, atile *t)
{
    if (a->qk >= 0 || !KILN_DIM_IS_STATIC(a->Dv))
        return 0;
    t->W = c->vw ? c->vw : 8;
    t->MR = t->W == 16 ? 8 : 6;
    t->NVs = 2;
    int64_t ns = t->NVs * t->W;
    t->Tp = (Tmax + ns - 1) / ns * ns;
    t->Dvp = (Dvmax + t->W - 1) / t->W * t->W;
    int64_t nvo = t->Dvp / t->W;
    t->NVo = nvo % 2 == 0 ? 2 : 1; /* MR x NVo accumulators stay in registers */
    int64_t bytes = 4 * (Dmax * t->Tp + Tmax * t->Dvp + t->MR * t->Tp + t->MR * t->Dvp);
    return bytes <= ATT_TILE_STACK;
}

/* kt and vc for (bb, g): rows j < T, zero columns T..Tp of kt. */
static void attn_tile_kv(kc *k, const actx *x, const atile *t, LLVMValueRef bb, LLVMValueRef g)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    const attn *a = x->a;
    ctype ct = CT_F32;
    LLVMValueRef Tp = kc_i64(k, t->Tp), Dvp = kc_i64(k, t->Dvp);
    kc_loop lj;
    LLVMValueRef j = kc_for(k, &lj, kc_i64(k, 0), x->T, "ktj");
    LLVMValueRef kp, vp;
    LLVMValueRef ko = kv_row(k, a, a->pk, a->inplace ? a->present_k : a->k, bb, g, j, x->P, x->Skv, x->Hk, x->D, &kp);
    LLVMValueRef vo = kv_row(k, a, a->pv, a->inplace ? a->present_v : a->v, bb, g, j, x->P, x->Skv, x->Hk, x->Dv, &vp);
    LLVMValueRef ks = NULL, vs = NULL;
    if (a->inplace && x->kdt == KILN_I8)
        ks = kv_scale(k, a, a->present_k, bb, g, j, x->Hk, x->D);
    if (a->inplace && x->vdt == KILN_I8)
        vs = kv_scale(k, a, a->present_v, bb, g, j, x->Hk, x->Dv);
    kc_loop ld;
    LLVMValueRef d = kc_for(k, &ld, kc_i64(k, 0), x->D, "ktd");
    LLVMValueRef kv = kc_load(k, x->kdt, kp, LLVMBuildAdd(b, ko, d, ""), ct);
    if (ks)
        kv = LLVMBuildFMul(b, kv, ks, "");
    kc_store(k, KILN_F32, t->kt, LLVMBuildAdd(b, LLVMBuildMul(b, d, Tp, ""), j, ""), kv, ct);
    kc_for_end(k, &ld);
    kc_loop lv;
    LLVMValueRef dv = kc_for(k, &lv, kc_i64(k, 0), Dvp, "vcd");
    LLVMValueRef in = LLVMBuildICmp(b, LLVMIntSLT, dv, x->Dv, "");
    LLVMValueRef vv = kc_load(k, x->vdt, vp, LLVMBuildAdd(b, vo, LLVMBuildSelect(b, in, dv, kc_i64(k, 0), ""), ""), ct);
    if (vs)
        vv = LLVMBuildFMul(b, vv, vs, "");
    kc_store(k, KILN_F32, t->vc, LLVMBuildAdd(b, LLVMBuildMul(b, j, Dvp, ""), dv, ""), LLVMBuildSelect(b, in, vv, kc_f(k, ct, 0), ""), ct);
    kc_for_end(k, &lv);
    kc_for_end(k, &lj);
    kc_loop lp;
    LLVMValueRef dp = kc_for(k, &lp, kc_i64(k, 0), x->D, "ktpd");
    kc_loop lq;
    LLVMValueRef jp = kc_for(k, &lq, x->T, Tp, "ktpj");
    kc_store(k, KILN_F32, t->kt, LLVMBuildAdd(b, LLVMBuildMul(b, dp, Tp, ""), jp, ""), kc_f(k, ct, 0), ct);
    kc_for_end(k, &lq);
    kc_for_end(k, &lp);
}

/* Query rows i0 .. i0+MR of (bb, h): the two micro-kernel passes. */
static void attn_tile_rows(kc *k, const actx *x, const atile *t, LLVMValueRef bb, LLVMValueRef h, LLVMValueRef i0, LLVMValueRef qrow)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    const attn *a = x->a;
    ctype ct = CT_F32;
    LLVMValueRef Tp = kc_i64(k, t->Tp), Dvp = kc_i64(k, t->Dvp), one = kc_i64(k, 1), zero = kc_i64(k, 0);
    /* Q rows: straight from q (f32), else converted into qrow [MR][D] */
    LLVMValueRef A = x->Q, aoff = attn_qoff(k, x, bb, h, i0, x->D);
    LLVMValueRef lda = a->three ? LLVMBuildMul(b, x->Hq, x->D, "") : x->D;
    if (x->qt->dtype != KILN_F32) {
        kc_loop lr;
        LLVMValueRef m = kc_for(k, &lr, zero, kc_i64(k, t->MR), "qr");
        LLVMValueRef src = LLVMBuildAdd(b, aoff, LLVMBuildMul(b, m, lda, ""), "");
        kc_loop ld;
        LLVMValueRef d = kc_for(k, &ld, zero, x->D, "qd");
        kc_store(k, KILN_F32, qrow, LLVMBuildAdd(b, LLVMBuildMul(b, m, x->D, ""), d, ""),
                 kc_load(k, x->qt->dtype, x->Q, LLVMBuildAdd(b, src, d, ""), ct), ct);
        kc_for_end(k, &ld);
        kc_for_end(k, &lr);
        A = qrow;
        aoff = zero;
        lda = x->D;
    }
    /* scores [MR][Tp] */
    int64_t ns = t->NVs * t->W;
    kc_loop ln;
    LLVMValueRef nt = kc_for(k, &ln, zero, kc_i64(k, t->Tp / ns), "stile");
    kc_micro_tile(k, t->MR, t->NVs, t->W, A, aoff, lda, one, t->kt, zero, Tp, t->sc, zero, Tp,
                  LLVMBuildMul(b, nt, kc_i64(k, ns), ""), x->D);
    kc_for_end(k, &ln);
    /* per row: mask, softmax, normalized in place */
    for (int m = 0; m < t->MR; m++) {
        LLVMValueRef i = LLVMBuildAdd(b, i0, kc_i64(k, m), "");
        arow ri;
        attn_rowinfo(k, x, bb, h, i, &ri);
        LLVMValueRef wo = kc_i64(k, (int64_t)m * t->Tp);
        kc_loop lj;
        LLVMValueRef j = kc_for(k, &lj, zero, x->T, "tkey");
        LLVMValueRef mx = kc_phi(k, &lj, kc_f(k, ct, -INFINITY));
        LLVMValueRef wi = LLVMBuildAdd(b, wo, j, "");
        LLVMValueRef s = attn_score(k, x, &ri, kc_load(k, KILN_F32, t->sc, wi, ct), j, NULL, NULL);
        kc_store(k, KILN_F32, t->sc, wi, s, ct);
        LLVMValueRef gt = LLVMBuildFCmp(b, LLVMRealOGT, s, mx, "");
        kc_phi_next(k, &lj, mx, LLVMBuildSelect(b, gt, s, mx, ""));
        kc_for_end(k, &lj);
        attn_softmax(k, x, t->sc, wo, mx, 1);
    }
    /* out [MR][Dvp] = P vc, then the Dv columns to y */
    int64_t no = t->NVo * t->W;
    kc_loop lo;
    LLVMValueRef ot = kc_for(k, &lo, zero, kc_i64(k, t->Dvp / no), "otile");
    kc_micro_tile(k, t->MR, t->NVo, t->W, t->sc, zero, Tp, one, t->vc, zero, Dvp, t->yt, zero, Dvp,
                  LLVMBuildMul(b, ot, kc_i64(k, no), ""), x->T);
    kc_for_end(k, &lo);
    LLVMValueRef yoff = attn_qoff(k, x, bb, h, i0, x->Dv);
    LLVMValueRef ldy = a->three ? LLVMBuildMul(b, x->Hq, x->Dv, "") : x->Dv;
    kc_loop lr;
    LLVMValueRef m = kc_for(k, &lr, zero, kc_i64(k, t->MR), "yr");
    LLVMValueRef yr = LLVMBuildAdd(b, yoff, LLVMBuildMul(b, m, ldy, ""), "");
    kc_loop ld;
    LLVMValueRef d = kc_for(k, &ld, zero, x->Dv, "yd");
    kc_store(k, x->yt->dtype, x->Y, LLVMBuildAdd(b, yr, d, ""),
             kc_load(k, KILN_F32, t->yt, LLVMBuildAdd(b, LLVMBuildMul(b, m, Dvp, ""), d, ""), ct), ct);
    kc_for_end(k, &ld);
    kc_for_end(k, &lr);
}

static int lower_attn_core(cg *c, int ni, const attn *a)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *qt = vt(c, a->q), *kt = vt(c, a->k), *vtp = vt(c, a->v);
    int64_t Tmax = kiln_plan_dim(c->g, c->plan, kiln_dim_add(&c->g->syms, a->pk >= 0 ? a->P : 0, a->Skv));
    if (a->inplace)
        Tmax = Tmax < a->kv_ctx ? Tmax : a->kv_ctx;
    int64_t Dvmax = kiln_plan_dim(c->g, c->plan, a->Dv), Dmax = kiln_plan_dim(c->g, c->plan, a->D);
    if (Tmax < 0 || Dvmax < 0 || Dmax < 0)
        return cg_fail(c, n, "attention sizes unknown at compile time");
    actx x;
    memset(&x, 0, sizeof x);
    x.a = a;
    x.qt = qt;
    x.yt = vt(c, a->y);
    x.kdt = a->inplace ? a->kv_dtype : kt->dtype;
    x.vdt = a->inplace ? a->kv_dtype : vtp->dtype;
    x.f32kv = x.kdt == KILN_F32 && x.vdt == KILN_F32 && qt->dtype == KILN_F32 &&
              (a->inplace || a->pk < 0 || (vt(c, a->pk)->dtype == KILN_F32 && vt(c, a->pv)->dtype == KILN_F32));
    atile t;
    memset(&t, 0, sizeof t);
    int tiled = attn_tile_plan(c, a, Tmax, Dmax, Dvmax, &t);
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    x.Hq = kc_dim(&k, a->Hq);
    x.Hk = kc_dim(&k, a->Hkv);
    x.Sq = kc_dim(&k, a->Sq);
    x.Skv = kc_dim(&k, a->Skv);
    x.P = a->pk >= 0 ? kc_dim(&k, a->P) : kc_i64(&k, 0);
    x.T = LLVMBuildAdd(b, x.P, x.Skv, "");
    x.D = kc_dim(&k, a->D);
    x.Dv = kc_dim(&k, a->Dv);
    x.grp = LLVMBuildSDiv(b, x.Hq, x.Hk, "");
    x.Q = kc_ptr(&k, a->q);
    x.Y = kc_ptr(&k, a->y);
    LLVMValueRef w = kc_entry_alloca(&k, Tmax + 1);
    LLVMValueRef acc = kc_entry_alloca(&k, Dvmax + KC_VW);
    LLVMValueRef qrow = kc_entry_alloca(&k, (tiled ? t.MR : 1) * Dmax + 1);
    if (!tiled) {
        kc_loop lr;
        LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "bhi"); /* r = (b*Hq + h)*Sq + i */
        attn_row(&k, &x, r, w, acc, qrow);
        kc_for_end(&k, &lr);
    } else {
        t.kt = kc_entry_alloca(&k, Dmax * t.Tp);
        t.vc = kc_entry_alloca(&k, Tmax * t.Dvp);
        t.sc = kc_entry_alloca(&k, t.MR * t.Tp);
        t.yt = kc_entry_alloca(&k, t.MR * t.Dvp);
        /* the task's rows by (batch, head): whole tiles of MR queries, then
         * the remaining rows one by one (decode steps take only the latter) */
        LLVMValueRef one = kc_i64(&k, 1);
        LLVMValueRef bh0 = LLVMBuildSDiv(b, k.begin, x.Sq, "");
        LLVMValueRef bh1 = LLVMBuildAdd(b, LLVMBuildSDiv(b, LLVMBuildSub(b, k.end, one, ""), x.Sq, ""), one, "");
        kc_loop lh;
        LLVMValueRef bh = kc_for(&k, &lh, bh0, bh1, "bh");
        LLVMValueRef first = LLVMBuildMul(b, bh, x.Sq, ""), last = LLVMBuildAdd(b, first, x.Sq, "");
        LLVMValueRef lo = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSGT, k.begin, first, ""), k.begin, first, "");
        LLVMValueRef hi = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, k.end, last, ""), k.end, last, "");
        LLVMValueRef nb = LLVMBuildSDiv(b, LLVMBuildSub(b, hi, lo, ""), kc_i64(&k, t.MR), "");
        LLVMValueRef h = LLVMBuildSRem(b, bh, x.Hq, ""), bb = LLVMBuildSDiv(b, bh, x.Hq, "");
        kc_if f;
        kc_if_begin(&k, &f, LLVMBuildICmp(b, LLVMIntSGT, nb, kc_i64(&k, 0), ""));
        attn_tile_kv(&k, &x, &t, bb, LLVMBuildSDiv(b, h, x.grp, ""));
        kc_loop lt;
        LLVMValueRef tb = kc_for(&k, &lt, kc_i64(&k, 0), nb, "qtile");
        LLVMValueRef i0 = LLVMBuildSub(b, LLVMBuildAdd(b, lo, LLVMBuildMul(b, tb, kc_i64(&k, t.MR), ""), ""), first, "");
        attn_tile_rows(&k, &x, &t, bb, h, i0, qrow);
        kc_for_end(&k, &lt);
        kc_if_else(&k, &f);
        kc_if_end(&k, &f);
        kc_loop lr;
        LLVMValueRef r = kc_for(&k, &lr, LLVMBuildAdd(b, lo, LLVMBuildMul(b, nb, kc_i64(&k, t.MR), ""), ""), hi, "rest");
        attn_row(&k, &x, r, w, acc, qrow);
        kc_for_end(&k, &lr);
        kc_for_end(&k, &lh);
    }
    kc_end(&k);
    kiln_dim trip[3] = {a->B, a->Hq, a->Sq};
    cg_launch(c, k.fn, trip, 3, 1, ni);
    return c->failed ? -1 : 0;
}

static int lower_attention(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    attn a;
    memset(&a, 0, sizeof a);
    a.pk = a.pv = a.mask = a.nonpad = a.present_k = a.present_v = a.qk = -1;
    a.lw = a.rw = -1;
    a.q = n->inputs[0];
    a.k = n->inputs[1];
    a.v = n->inputs[2];
    a.y = n->outputs[0];
    const kiln_type *qt = vt(c, a.q), *kt = vt(c, a.k), *vv = vt(c, a.v);
#define IN(i) (n->n_inputs > (i) && n->inputs[(i)] >= 0 ? n->inputs[(i)] : -1)
#define OUT(o) (has_out(c, n, (o)) ? n->outputs[(o)] : -1)
    a.B = qt->dims[0];
    if (IS("GQAttention")) {
        a.is_gqa = 1;
        a.three = 1;
        a.Hq = kiln_node_int(n, "num_heads");
        a.Hkv = kiln_node_int(n, "kv_num_heads");
        a.pk = IN(3);
        a.pv = IN(4);
        a.mask = IN(5);
        a.bias_bcast_last = 1;
        a.causal = kiln_node_int(n, "causal") != 0;
        a.window = kiln_node_int(n, "window");
        a.softcap = kiln_node_float(n, "softcap");
        a.scale = kiln_node_float(n, "scale");
    } else {
        a.three = qt->rank == 3;
        a.mask = IN(3);
        a.pk = IN(4);
        a.pv = IN(5);
        a.nonpad = IN(6);
        a.causal = kiln_node_int(n, "is_causal") != 0;
        a.softcap = kiln_node_float(n, "softcap");
        a.lw = kiln_node_int(n, "left_window_size");
        a.rw = kiln_node_int(n, "right_window_size");
        a.mode = (int)kiln_node_int(n, "qk_matmul_output_mode");
        a.qk = OUT(3);
        a.mask_short = 1;
        if (a.three) {
            a.Hq = kiln_node_int(n, "q_num_heads");
            a.Hkv = kiln_node_int(n, "kv_num_heads");
        } else {
            a.Hq = qt->dims[1];
            a.Hkv = kt->dims[1];
        }
        a.scale = kiln_node_has_attr(n, "scale") ? kiln_node_float(n, "scale") : 0;
    }
    a.present_k = OUT(1);
    a.present_v = OUT(2);
#undef IN
#undef OUT
    if (a.mask >= 0)
        a.mask_bool = vt(c, a.mask)->dtype == KILN_BOOL;
    if (a.three) {
        a.Sq = qt->dims[1];
        a.Skv = kt->dims[1];
        a.D = kiln_dim_div(&c->g->syms, qt->dims[2], a.Hq);
        a.Dv = kiln_dim_div(&c->g->syms, vv->dims[2], a.Hkv);
    } else {
        a.Sq = qt->dims[2];
        a.Skv = kt->dims[2];
        a.D = qt->dims[3];
        a.Dv = vv->dims[3];
    }
    if (!KILN_DIM_IS_STATIC(a.D))
        return cg_fail(c, n, "attention head size must be static");
    a.P = a.pk >= 0 ? vt(c, a.pk)->dims[2] : 0;
    if (a.scale == 0)
        a.scale = 1.0 / sqrt((double)a.D);
    /* LM builds keep the KV cache in place: past_* and present_* are the same
     * runtime buffer, so only the new rows are written */
    if (c->o && c->o->meta.kind == KILN_MODEL_LM && c->o->meta.kv.max_ctx > 0 &&
        c->o->meta.kv.kind != KILN_KV_FUNCTIONAL && a.three && a.pk >= 0 &&
        a.present_k >= 0 && a.present_v >= 0 && c->plan->bufs[a.pk].kind == KILN_BUF_INPUT &&
        c->plan->bufs[a.pv].kind == KILN_BUF_INPUT && c->plan->bufs[a.present_k].kind == KILN_BUF_OUTPUT &&
        c->plan->bufs[a.present_v].kind == KILN_BUF_OUTPUT) {
        a.inplace = 1;
        c->n_kv_inplace++;
        a.kv_ctx = c->o->meta.kv.max_ctx;
        a.kv_dtype = c->o->meta.kv.dtype ? c->o->meta.kv.dtype : KILN_F32;
        if (lower_kv_write(c, ni, &a, a.k, a.present_k, a.D) || lower_kv_write(c, ni, &a, a.v, a.present_v, a.Dv))
            return -1;
        return lower_attn_core(c, ni, &a);
    }
    if (a.present_k >= 0 && lower_present(c, ni, &a, a.pk, a.k, a.present_k, a.D))
        return -1;
    if (a.present_v >= 0 && lower_present(c, ni, &a, a.pv, a.v, a.present_v, a.Dv))
        return -1;
    return lower_attn_core(c, ni, &a);
}

int cg_lower_nn(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    if (IS("Softmax") || IS("LogSoftmax") || IS("Hardmax"))
        return lower_softmax(c, ni);
    if (IS("LayerNormalization") || IS("RMSNormalization") || IS("SimplifiedLayerNormalization") ||
        IS("SkipLayerNormalization") || IS("SkipSimplifiedLayerNormalization"))
        return lower_norms(c, ni);
    if (IS("BatchNormalization") || IS("InstanceNormalization") || IS("GroupNormalization"))
        return lower_groupish(c, ni);
    if (IS("RotaryEmbedding"))
        return lower_rope(c, ni);
    if (IS("Attention") || IS("GQAttention"))
        return lower_attention(c, ni);
    return cg_fail(c, n, "no CPU lowering for %s", op);
}
