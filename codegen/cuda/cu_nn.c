/* cu_nn.c - row-wise NN kernels for the CUDA target: softmax family,
 * layer/RMS norms (plain and skip forms), rotary embeddings, and attention
 * (ONNX Attention and GQAttention): flash-decoding over the KV cache split
 * across the sequence, GQA heads sharing each K/V row, rope optionally
 * applied inside. Statistics accumulate in double like the reference. */
#include "cu.h"

#include <math.h>
#include <string.h>

#define IS(s) (strcmp(op, s) == 0)
#define ROW_BLOCK 256
#define ATT_BLOCK 256
#define ATT_WARPS (ATT_BLOCK / 32)
#define ATT_UNROLL 4 /* keys per warp per round */
#define ATT_SPLIT_KEYS 32 /* keys per split of a decode step (one round of the block) */
#define ATT_MAX_SPLITS 64

int cu_is_nn(const char *op)
{
    static const char *n[] = {"Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "RMSNormalization",
                              "SimplifiedLayerNormalization", "SkipLayerNormalization",
                              "SkipSimplifiedLayerNormalization", "RotaryEmbedding", "Attention", "GQAttention", NULL};
    for (int i = 0; n[i]; i++)
        if (!strcmp(op, n[i]))
            return 1;
    return 0;
}

static int has_out(cu *c, const kiln_node *n, int o)
{
    return o < n->n_outputs && cu_has_buf(c, n->outputs[o]) &&
           (c->plan->bufs[n->outputs[o]].last >= 0 || c->plan->bufs[n->outputs[o]].kind == KILN_BUF_OUTPUT);
}

static void set_cond(cu *c, int ni, cu_launch *L)
{
    if (c->ni[ni].prefill_only) {
        L->cond = KILN_CU_COND_GT;
        L->cond_d = c->ni[ni].rows;
        L->cond_c = CU_GEMV_MAX_M;
    }
}

/* ---- Softmax / LogSoftmax / Hardmax ---- */

static int lower_softmax(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    const kiln_type *xt = cu_vt(c, n->inputs[0]);
    int axis = (int)kiln_node_int(n, "axis");
    if (axis < 0)
        axis += xt->rank;
    int X = n->inputs[0], Y = n->outputs[0];
    ck k;
    ck_begin(c, &k, ni, ROW_BLOCK);
    ck_line(&k, "__shared__ double sh[33]; __shared__ i64 si[32];");
    ck_line(&k, "const i64 inner = %s, len = %s;", ck_prod(&k, xt, axis + 1, xt->rank), ck_d(&k, xt->dims[axis]));
    ck_line(&k, "const i64 r = blockIdx.x, base = (r / inner) * len * inner + r %% inner;");
    ck_line(&k, "double bv = -(double)KINF; i64 bj = len;");
    ck_line(&k, "for (i64 j = threadIdx.x; j < len; j += blockDim.x) { double v = %s; if (v > bv || (v == bv && j < bj)) { bv = v; bj = j; } }",
            ck_load_as(&k, X, "base + j * inner", "double"));
    if (IS("Hardmax")) {
        /* first index of the maximum, as the reference */
        ck_line(&k, "for (int o = 16; o > 0; o >>= 1) { double ov = __shfl_xor_sync(0xffffffffu, bv, o); i64 oj = __shfl_xor_sync(0xffffffffu, bj, o); if (ov > bv || (ov == bv && oj < bj)) { bv = ov; bj = oj; } }");
        ck_line(&k, "if ((threadIdx.x & 31) == 0) { sh[threadIdx.x >> 5] = bv; si[threadIdx.x >> 5] = bj; }");
        ck_line(&k, "__syncthreads();");
        ck_line(&k, "if (threadIdx.x == 0) { for (int w = 1; w < (int)(blockDim.x >> 5); w++) if (sh[w] > sh[0] || (sh[w] == sh[0] && si[w] < si[0])) { sh[0] = sh[w]; si[0] = si[w]; } if (si[0] >= len) si[0] = 0; }");
        ck_line(&k, "__syncthreads();");
        ck_line(&k, "const i64 mi = si[0];");
        ck_line(&k, "for (i64 j = threadIdx.x; j < len; j += blockDim.x) {");
        ck_store(&k, Y, "base + j * inner", "(double)(j == mi)", "double");
        ck_line(&k, "}");
    } else {
        ck_line(&k, "double mx = kbmaxd(bv, sh); if (mx == -(double)KINF) mx = 0;");
        ck_line(&k, "double s = 0; for (i64 j = threadIdx.x; j < len; j += blockDim.x) s += exp(%s - mx);",
                ck_load_as(&k, X, "base + j * inner", "double"));
        ck_line(&k, "const double sum = kbsumd(s, sh);");
        ck_line(&k, "for (i64 j = threadIdx.x; j < len; j += blockDim.x) {");
        ck_line(&k, "  const double v = %s;", ck_load_as(&k, X, "base + j * inner", "double"));
        ck_store(&k, Y, "base + j * inner", IS("Softmax") ? "exp(v - mx) / sum" : "v - mx - log(sum)", "double");
        ck_line(&k, "}");
    }
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    kiln_dim rows = kiln_dim_mul(&c->g->syms, cu_dprod(c, xt, 0, axis), cu_dprod(c, xt, axis + 1, xt->rank));
    cu_launch_k(c, &k, kern, rows, 1, 1, 1);
    return 0;
}

/* ---- layer norms ---- */

/* scale/bias broadcast against the normalized row: same trailing shape or
 * one element (the layouts the CPU lowering accepts) */
static int norm_param_ok(cu *c, const kiln_type *xt, int axis, int vid)
{
    const kiln_type *t = cu_vt(c, vid);
    if (kiln_type_numel(t) == 1)
        return 1;
    int tail = xt->rank - axis;
    for (int d = 0; d < t->rank - tail; d++)
        if (t->dims[d] != 1)
            return 0;
    int r = t->rank < tail ? t->rank : tail;
    for (int d = 0; d < r; d++)
        if (t->dims[t->rank - 1 - d] != xt->dims[xt->rank - 1 - d])
            return 0;
    return 1;
}

static const char *param_at(ck *k, int vid, const char *j)
{
    const kiln_type *t = cu_vt(k->c, vid);
    return ck_load_as(k, vid, kiln_type_numel(t) == 1 ? "0" : ck_s(k, "(%s %% N)", j), "double");
}

static int lower_norms(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    int x = n->inputs[0], skip = -1, bias = -1, scale, beta = -1, rms, y = n->outputs[0], mean = -1, inv = -1, sum = -1;
    const kiln_type *xt = cu_vt(c, x);
    int axis;
#define OUT(o) (has_out(c, n, (o)) ? n->outputs[(o)] : -1)
#define IN(i) (n->n_inputs > (i) ? n->inputs[(i)] : -1)
    if (IS("LayerNormalization") || IS("RMSNormalization") || IS("SimplifiedLayerNormalization")) {
        axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += xt->rank;
        scale = n->inputs[1];
        beta = IS("LayerNormalization") ? IN(2) : -1;
        rms = !IS("LayerNormalization");
        if (IS("LayerNormalization")) {
            mean = OUT(1);
            inv = OUT(2);
        } else if (IS("SimplifiedLayerNormalization")) {
            inv = OUT(1);
        }
    } else {
        axis = xt->rank - 1;
        skip = n->inputs[1];
        scale = n->inputs[2];
        rms = IS("SkipSimplifiedLayerNormalization");
        beta = rms ? -1 : IN(3);
        bias = rms ? IN(3) : IN(4);
        mean = OUT(1);
        inv = OUT(2);
        sum = OUT(3);
    }
#undef OUT
#undef IN
    if (!norm_param_ok(c, xt, axis, scale) || (beta >= 0 && !norm_param_ok(c, xt, axis, beta)))
        return cu_fail(c, n, "scale/bias broadcasting pattern not supported");
    double eps = kiln_node_float(n, "epsilon");
    ck k;
    ck_begin(c, &k, ni, ROW_BLOCK);
    ck_line(&k, "__shared__ double sh[33];");
    ck_line(&k, "const i64 N = %s, r = blockIdx.x, base = r * N;", ck_prod(&k, xt, axis, xt->rank));
    /* element j of the (skip-)summed row */
    const char *xv = ck_load_as(&k, x, "base + j", "double");
    if (skip >= 0) {
        const kiln_type *st = cu_vt(c, skip);
        int64_t sn = kiln_type_numel(st), xn = kiln_type_numel(xt);
        const char *si = sn < 0 || sn == xn ? "base + j" : ck_s(&k, "((base + j) %% %lldLL)", (long long)(sn > 0 ? sn : 1));
        xv = ck_s(&k, "(%s + %s)", xv, ck_load_as(&k, skip, si, "double"));
    }
    if (bias >= 0)
        xv = ck_s(&k, "(%s + %s)", xv, ck_load_as(&k, bias, "(j % N)", "double"));
    ck_line(&k, "double s1 = 0, s2 = 0;");
    ck_line(&k, "for (i64 j = threadIdx.x; j < N; j += blockDim.x) {");
    ck_line(&k, "  const double v = %s;", xv);
    if (sum >= 0)
        ck_store(&k, sum, "base + j", "v", "double");
    ck_line(&k, "  s1 += v; s2 += v * v;");
    ck_line(&k, "}");
    ck_line(&k, "s1 = kbsumd(s1, sh); s2 = kbsumd(s2, sh);");
    ck_line(&k, "const double mean = %s;", rms ? "0.0" : "s1 / (double)N");
    ck_line(&k, "const double inv = 1.0 / sqrt(s2 / (double)N - mean * mean + %.17g);", eps);
    ck_line(&k, "for (i64 j = threadIdx.x; j < N; j += blockDim.x) {");
    ck_line(&k, "  const double v = %s;", xv);
    const char *o = ck_s(&k, "(v - mean) * inv * %s%s", param_at(&k, scale, "j"),
                         beta >= 0 ? ck_s(&k, " + %s", param_at(&k, beta, "j")) : "");
    ck_store(&k, y, "base + j", o, "double");
    ck_line(&k, "}");
    if (mean >= 0 || inv >= 0) {
        ck_line(&k, "if (threadIdx.x == 0) {");
        if (mean >= 0)
            ck_store(&k, mean, "r", "mean", "double");
        if (inv >= 0)
            ck_store(&k, inv, "r", "inv", "double");
        ck_line(&k, "}");
    }
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch *L = cu_launch_k(c, &k, kern, cu_dprod(c, xt, 0, axis), 1, 1, 1);
    set_cond(c, ni, L);
    return 0;
}

/* ---- rotary embeddings ---- */

typedef struct rope {
    int x, cos, sin, pos; /* value ids (pos -1 when absent) */
    int64_t rd;           /* rotary dims (static) */
    int inter;
} rope;

static int rope_of(cu *c, const kiln_node *n, int64_t D, rope *r)
{
    r->x = n->inputs[0];
    r->cos = n->inputs[1];
    r->sin = n->inputs[2];
    r->pos = n->n_inputs > 3 ? n->inputs[3] : -1;
    r->rd = kiln_node_int(n, "rotary_embedding_dim");
    if (!r->rd)
        r->rd = D;
    r->inter = kiln_node_int(n, "interleaved") != 0;
    if (r->rd > D || r->rd % 2)
        return cu_fail(c, n, "rotary_embedding_dim %lld does not fit head size %lld", (long long)r->rd, (long long)D);
    return 0;
}

/* Emits `float out` = element d of the rotated head starting at element
 * `base` of x, with cos/sin row `row` (all names of kernel variables). */
static void rope_elem(ck *k, const rope *r, const char *base, const char *d, const char *row, const char *out)
{
    long long rd = (long long)r->rd, half = rd / 2;
    ck_line(k, "float %s;", out);
    ck_line(k, "if (%s < %lld) {", d, rd);
    if (r->inter) {
        ck_line(k, "  const i64 kk = %s >> 1, i1 = 2 * kk, i2 = i1 + 1; const int first = !(%s & 1);", d, d);
    } else {
        ck_line(k, "  const int first = %s < %lld; const i64 kk = first ? %s : %s - %lld, i1 = kk, i2 = kk + %lld;", d, half, d, d, half, half);
    }
    ck_line(k, "  const float x1 = %s, x2 = %s;", ck_load_as(k, r->x, ck_s(k, "%s + i1", base), "float"),
            ck_load_as(k, r->x, ck_s(k, "%s + i2", base), "float"));
    ck_line(k, "  const float co = %s, si = %s;", ck_load_as(k, r->cos, ck_s(k, "%s * %lld + kk", row, half), "float"),
            ck_load_as(k, r->sin, ck_s(k, "%s * %lld + kk", row, half), "float"));
    ck_line(k, "  %s = first ? co * x1 - si * x2 : si * x1 + co * x2;", out);
    ck_line(k, "} else %s = %s;", out, ck_load_as(k, r->x, ck_s(k, "%s + %s", base, d), "float"));
}

/* Position row of token (b, s) for the cos/sin caches. */
static const char *rope_row(ck *k, const rope *r, const char *b, const char *s, const char *S)
{
    cu *c = k->c;
    if (r->pos >= 0) {
        const kiln_type *pt = cu_vt(c, r->pos);
        const char *pb = KILN_DIM_IS_STATIC(pt->dims[0]) && pt->dims[0] == 1 ? "0" : b;
        return ck_load_as(k, r->pos, ck_s(k, "(%s * %s + %s)", pb, S, s), "i64");
    }
    const kiln_type *cst = cu_vt(c, r->cos);
    const char *cb = KILN_DIM_IS_STATIC(cst->dims[0]) && cst->dims[0] == 1 ? "0" : b;
    return ck_s(k, "(%s * %s + %s)", cb, S, s);
}

static int lower_rope(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *xt = cu_vt(c, n->inputs[0]);
    int four = xt->rank == 4;
    int64_t H = four ? xt->dims[1] : kiln_node_int(n, "num_heads");
    kiln_dim Dd = four ? xt->dims[3] : (KILN_DIM_IS_STATIC(xt->dims[2]) && H > 0 ? xt->dims[2] / H : KILN_DIM_ANY);
    if (!KILN_DIM_IS_STATIC(Dd) || !KILN_DIM_IS_STATIC(H) || H <= 0)
        return cu_fail(c, n, "head count and size must be static");
    rope r;
    if (rope_of(c, n, Dd, &r))
        return -1;
    ck k;
    ck_begin(c, &k, ni, ROW_BLOCK);
    ck_line(&k, "const i64 S = %s, H = %lldLL, D = %lldLL;", ck_d(&k, four ? xt->dims[2] : xt->dims[1]), (long long)H, (long long)Dd);
    ck_line(&k, "const i64 total = %s;", ck_prod(&k, xt, 0, xt->rank));
    ck_line(&k, "const i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;");
    ck_line(&k, "if (e >= total) return;");
    ck_line(&k, "const i64 d = e %% D, row_e = e / D;");
    if (four)
        ck_line(&k, "const i64 ss = row_e %% S, bb = row_e / (S * H);");
    else
        ck_line(&k, "const i64 ss = (row_e / H) %% S, bb = row_e / (H * S);");
    ck_line(&k, "const i64 base = row_e * D, row = %s;", rope_row(&k, &r, "bb", "ss", "S"));
    rope_elem(&k, &r, "base", "d", "row", "y");
    ck_store(&k, n->outputs[0], "e", "y", "float");
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch_k(c, &k, kern, cu_dprod(c, xt, 0, xt->rank), ROW_BLOCK, 1, 1);
    return 0;
}

/* ---- attention ---- */

typedef struct attn {
    int q, k, v, pk, pv;          /* value ids, -1 absent */
    int y, present_k, present_v;  /* outputs, -1 absent */
    int three;                    /* q/k/v are [B, S, H*D] */
    kiln_dim B, Sq, Skv, P;
    int64_t Hq, Hkv, D, Dv;
    double scale, softcap;
    int causal;
    int64_t window, lw, rw;
    int inplace;
    int64_t kv_ctx;
    kiln_dtype kv_dtype;
    rope rq, rk;                  /* fused rope (x = -1 when none) */
} attn;

/* KV append: the new rows of k (roped when fused) and v go to rows P.. of
 * the in-place cache [B, Hkv, kv_ctx, D]. Grid: x = token, y = chunks of
 * ATT_BLOCK elements of its Hkv x max(D, Dv) rows, one element of k and of
 * v per thread (a decode step is one short kernel, not a serial walk). */
static void set_bq_cond(cu_launch *L, const attn *a, cu *c, int cond)
{
    if (!cond)
        return;
    L->cond = cond;
    L->cond_d = kiln_dim_mul(&c->g->syms, a->B, a->Sq);
    L->cond_c = 1;
}

/* The new K/V value as the cache stores it: what a later step reads back. */
static const char *kv_rounded(ck *k, kiln_dtype dt, const char *v)
{
    if (dt == KILN_F16)
        return ck_s(k, "kh2f(kf2h(%s))", v);
    if (dt == KILN_BF16)
        return ck_s(k, "kb2f(kf2b(%s))", v);
    return v;
}

/* Emits `float out` = element d of the new key row of token (bb, ss) (S
 * new tokens per sequence) for KV head h, roped when the rope is fused;
 * the arguments name kernel variables. */
static void new_key_elem(ck *k, const attn *a, const char *bb, const char *ss, const char *S, const char *h, const char *d,
                         const char *out)
{
    ck_line(k, "const i64 ksrc = ((%s * %s + %s) * %lldLL + %s) * %lldLL;", bb, S, ss, (long long)a->Hkv, h, (long long)a->D);
    if (a->rk.x >= 0) {
        ck_line(k, "const i64 krow = %s;", rope_row(k, &a->rk, bb, ss, S));
        rope_elem(k, &a->rk, "ksrc", d, "krow", out);
    } else {
        ck_line(k, "const float %s = %s;", out, ck_load_as(k, a->k, ck_s(k, "ksrc + %s", d), "float"));
    }
}

static int lower_kv_append(cu *c, int ni, const attn *a, int cond)
{
    int64_t wide = a->Hkv * (a->D > a->Dv ? a->D : a->Dv);
    ck k;
    ck_begin(c, &k, ni, ATT_BLOCK);
    ck_line(&k, "const i64 S = %s, P = %s, t = blockIdx.x, bb = t / S, ss = t %% S;", ck_d(&k, a->Skv), ck_d(&k, a->P));
    ck_line(&k, "const i64 Hk = %lldLL, D = %lldLL, Dv = %lldLL, CTX = %lldLL;", (long long)a->Hkv, (long long)a->D,
            (long long)a->Dv, (long long)a->kv_ctx);
    ck_line(&k, "const i64 e = (i64)blockIdx.y * blockDim.x + threadIdx.x;");
    ck_line(&k, "if (e < Hk * D) {");
    ck_line(&k, "  const i64 h = e / D, d = e %% D;");
    new_key_elem(&k, a, "bb", "ss", "S", "h", "d", "kv");
    ck_store_dt(&k, a->present_k, a->kv_dtype, "((bb * Hk + h) * CTX + P + ss) * D + d", "kv", "float");
    ck_line(&k, "}");
    ck_line(&k, "if (e < Hk * Dv) {");
    ck_line(&k, "  const i64 h = e / Dv, d = e %% Dv;");
    ck_store_dt(&k, a->present_v, a->kv_dtype, "((bb * Hk + h) * CTX + P + ss) * Dv + d",
             ck_load_as(&k, a->v, "(t * Hk + h) * Dv + d", "float"), "float");
    ck_line(&k, "}");
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch *L = cu_launch_k(c, &k, kern, kiln_dim_mul(&c->g->syms, a->B, a->Skv), 1, (wide + ATT_BLOCK - 1) / ATT_BLOCK, 1);
    set_bq_cond(L, a, c, cond);
    return 0;
}

/* present = concat(past, new) along the sequence, [B, H, P+S, D]. */
static int lower_present(cu *c, int ni, const attn *a, int past, int cur, int out, int64_t Dd)
{
    const kiln_type *ot = cu_vt(c, out);
    ck k;
    ck_begin(c, &k, ni, ROW_BLOCK);
    ck_line(&k, "const i64 H = %lldLL, T = %s, D = %lldLL, P = %s, S = %s;", (long long)a->Hkv, ck_d(&k, ot->dims[2]),
            (long long)Dd, past >= 0 ? ck_d(&k, a->P) : "0LL", ck_d(&k, a->Skv));
    ck_line(&k, "const i64 total = %s;", ck_prod(&k, ot, 0, ot->rank));
    ck_line(&k, "const i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;");
    ck_line(&k, "if (e >= total) return;");
    ck_line(&k, "const i64 d = e %% D, j = (e / D) %% T, r = e / (D * T), bb = r / H, h = r %% H, jn = j - P;");
    const char *cidx = a->three ? "((bb * S + jn) * H + h) * D + d" : "((r * S) + jn) * D + d";
    if (past >= 0) {
        ck_line(&k, "float v; if (j < P) v = %s; else v = %s;", ck_load_as(&k, past, "(r * P + j) * D + d", "float"),
                ck_load_as(&k, cur, cidx, "float"));
    } else {
        ck_line(&k, "const float v = %s;", ck_load_as(&k, cur, cidx, "float"));
    }
    ck_store(&k, out, "e", "v", "float");
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch_k(c, &k, kern, cu_dprod(c, ot, 0, ot->rank), ROW_BLOCK, 1, 1);
    return 0;
}

/* Attention core. Grid: x = splits of the key range, y = KV head, z =
 * (batch, query). Each block loads the query rows of its GQA group once,
 * then its ATT_WARPS warps walk the keys with an online softmax; partials of the
 * splits are combined by the last block to finish (a counter in scratch).
 * `decode`: launched for one query per batch row (cond: when that is not
 * static), with the key range split; else one block per query.
 * `fold` (in-place cache, decode): the KV append happens here, not in a
 * kernel of its own: keys at P.. are read from k/v (roped, rounded to the
 * cache's type) and block (split 0, query 0) of each head writes them. */
static int lower_attn_core(cu *c, int ni, const attn *a, int decode, int fold, int cond)
{
    const kiln_node *n = &c->g->nodes[ni];
    int64_t grp = a->Hq / a->Hkv, E = (a->Dv + 31) / 32, ED = (a->D + 31) / 32;
    int64_t Tmax = kiln_plan_dim(c->g, c->plan, kiln_dim_add(&c->g->syms, a->pk >= 0 || a->inplace ? a->P : 0, a->Skv));
    if (a->inplace)
        Tmax = a->kv_ctx;
    if (Tmax < 0)
        return cu_fail(c, n, "attention sizes unknown at compile time");
    if (grp * a->D > 4096 || grp * a->Dv * ATT_WARPS > 8192 || E > 8 || ED > 8)
        return cu_fail(c, n, "attention head group too large for the CUDA kernel (%lld heads of %lld)", (long long)grp,
                       (long long)a->D);
    /* decode: enough splits that each block walks one or two rounds of keys
     * (the step's latency is one block's, not a long serial walk) */
    int64_t ns = (Tmax + ATT_SPLIT_KEYS - 1) / ATT_SPLIT_KEYS;
    if (ns > ATT_MAX_SPLITS)
        ns = ATT_MAX_SPLITS;
    if (ns < 1 || !decode)
        ns = 1;
    /* scratch: partials [Hq][ns][Dv + 2] for one query, then one counter per KV head */
    int64_t part_bytes = a->Hq * ns * (a->Dv + 2) * 4, cnt_bytes = a->Hkv * 4;
    if (c->scratch < part_bytes + cnt_bytes)
        c->scratch = part_bytes + cnt_bytes;
    ck k;
    ck_begin(c, &k, ni, ATT_BLOCK);
    const char *part = ck_scratch(&k, 0, "float");
    const char *cnt = ck_scratch(&k, part_bytes, "int");
    ck_line(&k, "const int D = %lld, Dv = %lld, G = %lld, Hq = %lld, Hk = %lld;", (long long)a->D, (long long)a->Dv,
            (long long)grp, (long long)a->Hq, (long long)a->Hkv);
    ck_line(&k, "__shared__ float qs[%lld];", (long long)(grp * a->D));
    ck_line(&k, "__shared__ float wm[%d][%lld], wl[%d][%lld], wacc[%d][%lld];", ATT_WARPS, (long long)grp, ATT_WARPS,
            (long long)grp, ATT_WARPS, (long long)(grp * a->Dv));
    ck_line(&k, "__shared__ int last;");
    ck_line(&k, "const i64 Sq = %s, Skv = %s, P = %s;", ck_d(&k, a->Sq), ck_d(&k, a->Skv),
            a->pk >= 0 || a->inplace ? ck_d(&k, a->P) : "0LL");
    ck_line(&k, "const i64 z = blockIdx.z, bb = z / Sq, i = z %% Sq, g = blockIdx.y, T = P + Skv, pos = P + i;");
    ck_line(&k, "const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, split = blockIdx.x, ns = gridDim.x;");
    /* query rows of the group (roped when fused) */
    ck_line(&k, "for (int e = threadIdx.x; e < G * D; e += blockDim.x) {");
    ck_line(&k, "  const int hh = e / D, d = e %% D; const i64 h = g * G + hh;");
    ck_line(&k, "  const i64 qb = %s;", a->three ? "((bb * Sq + i) * Hq + h) * D" : "((bb * Hq + h) * Sq + i) * D");
    if (a->rq.x >= 0) {
        ck_line(&k, "  const i64 row = %s;", rope_row(&k, &a->rq, "bb", "i", "Sq"));
        rope_elem(&k, &a->rq, "qb", "d", "row", "qv");
        ck_line(&k, "  qs[e] = qv;");
    } else {
        ck_line(&k, "  qs[e] = %s;", ck_load_as(&k, a->q, "qb + d", "float"));
    }
    ck_line(&k, "}");
    if (fold) {
        ck_line(&k, "if (split == 0 && i == 0) {");
        ck_line(&k, "  for (int e = threadIdx.x; e < Skv * D; e += blockDim.x) {");
        ck_line(&k, "    const i64 ss = e / D, d = e %% D;");
        new_key_elem(&k, a, "bb", "ss", "Skv", "g", "d", "kv");
        ck_store_dt(&k, a->present_k, a->kv_dtype, ck_s(&k, "((bb * Hk + g) * %lldLL + P + ss) * D + d", (long long)a->kv_ctx), "kv",
                    "float");
        ck_line(&k, "  }");
        ck_line(&k, "  for (int e = threadIdx.x; e < Skv * Dv; e += blockDim.x) {");
        ck_line(&k, "    const i64 ss = e / Dv, d = e %% Dv;");
        ck_store_dt(&k, a->present_v, a->kv_dtype, ck_s(&k, "((bb * Hk + g) * %lldLL + P + ss) * Dv + d", (long long)a->kv_ctx),
                    ck_load_as(&k, a->v, "((bb * Skv + ss) * Hk + g) * Dv + d", "float"), "float");
        ck_line(&k, "  }");
        ck_line(&k, "}");
    }
    ck_line(&k, "__syncthreads();");
    /* key range */
    ck_line(&k, "i64 lo = 0, hi = T;");
    if (a->causal)
        ck_line(&k, "if (hi > pos + 1) hi = pos + 1;");
    if (a->window > 0)
        ck_line(&k, "if (lo < pos - %lld + 1) lo = pos - %lld + 1; if (hi > pos + 1) hi = pos + 1;", (long long)a->window,
                (long long)a->window);
    if (a->lw >= 0)
        ck_line(&k, "if (lo < pos - %lld) lo = pos - %lld;", (long long)a->lw, (long long)a->lw);
    if (a->rw >= 0)
        ck_line(&k, "if (hi > pos + %lld + 1) hi = pos + %lld + 1;", (long long)a->rw, (long long)a->rw);
    ck_line(&k, "if (lo < 0) lo = 0;");
    ck_line(&k, "const i64 len = hi > lo ? hi - lo : 0;");
    /* splits past the ones the key range needs leave at once; the others
     * count themselves in, and the last one combines */
    ck_line(&k, "i64 act = (len + %d) / %d; if (act > ns) act = ns; if (act < 1) act = 1;", ATT_SPLIT_KEYS - 1, ATT_SPLIT_KEYS);
    ck_line(&k, "if (split >= act) return;");
    ck_line(&k, "const i64 chunk = (len + act - 1) / act, j0 = lo + split * chunk;");
    ck_line(&k, "const i64 j1 = j0 + chunk < hi ? j0 + chunk : hi;");
    ck_line(&k, "float m[%lld], l[%lld], acc[%lld][%lld];", (long long)grp, (long long)grp, (long long)grp, (long long)E);
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int hh = 0; hh < G; hh++) { m[hh] = -KINF; l[hh] = 0.f;");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int e = 0; e < %lld; e++) acc[hh][e] = 0.f; }", (long long)E);
    /* ATT_UNROLL keys per warp per round: their K/V rows are loaded
     * together and their scores reduced together, so a warp waits for
     * memory once per round rather than once per key. */
    ck_line(&k, "for (i64 jb = j0 + warp; jb < j1; jb += %d) {", ATT_WARPS * ATT_UNROLL);
    ck_line(&k, "  float kr[%d][%lld], vr[%d][%lld];", ATT_UNROLL, (long long)ED, ATT_UNROLL, (long long)E);
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int u = 0; u < %d; u++) {", ATT_UNROLL);
    ck_line(&k, "    const i64 j = jb + u * %d; const int jok = j < j1;", ATT_WARPS);
    if (a->inplace) {
        ck_line(&k, "    const i64 ko = ((bb * Hk + g) * %lldLL + j) * D, vo = ((bb * Hk + g) * %lldLL + j) * Dv;",
                (long long)a->kv_ctx, (long long)a->kv_ctx);
    }
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int e = 0; e < %lld; e++) { const int d = lane + 32 * e; kr[u][e] = 0.f; if (jok && d < D) {", (long long)ED);
    if (fold) {
        ck_line(&k, "      if (j < P) kr[u][e] = %s;", ck_load_dt(&k, a->present_k, a->kv_dtype, "ko + d", "float"));
        ck_line(&k, "      else {");
        ck_line(&k, "        const i64 ss = j - P;");
        new_key_elem(&k, a, "bb", "ss", "Skv", "g", "d", "kn");
        ck_line(&k, "        kr[u][e] = %s;", kv_rounded(&k, a->kv_dtype, "kn"));
        ck_line(&k, "      }");
    } else if (a->inplace) {
        ck_line(&k, "      kr[u][e] = %s;", ck_load_dt(&k, a->present_k, a->kv_dtype, "ko + d", "float"));
    } else {
        const char *cidx = a->three ? "((bb * Skv + (j - P)) * Hk + g) * D + d" : "((bb * Hk + g) * Skv + (j - P)) * D + d";
        if (a->pk >= 0)
            ck_line(&k, "      kr[u][e] = j < P ? %s : %s;", ck_load_as(&k, a->pk, "((bb * Hk + g) * P + j) * D + d", "float"),
                    ck_load_as(&k, a->k, cidx, "float"));
        else
            ck_line(&k, "      kr[u][e] = %s;", ck_load_as(&k, a->k, cidx, "float"));
    }
    ck_line(&k, "    } }");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int e = 0; e < %lld; e++) { const int d = lane + 32 * e; vr[u][e] = 0.f; if (jok && d < Dv) {", (long long)E);
    if (fold) {
        ck_line(&k, "      vr[u][e] = j < P ? %s : %s;", ck_load_dt(&k, a->present_v, a->kv_dtype, "vo + d", "float"),
                kv_rounded(&k, a->kv_dtype, ck_load_as(&k, a->v, "((bb * Skv + (j - P)) * Hk + g) * Dv + d", "float")));
    } else if (a->inplace) {
        ck_line(&k, "      vr[u][e] = %s;", ck_load_dt(&k, a->present_v, a->kv_dtype, "vo + d", "float"));
    } else {
        const char *cidx = a->three ? "((bb * Skv + (j - P)) * Hk + g) * Dv + d" : "((bb * Hk + g) * Skv + (j - P)) * Dv + d";
        if (a->pv >= 0)
            ck_line(&k, "      vr[u][e] = j < P ? %s : %s;", ck_load_as(&k, a->pv, "((bb * Hk + g) * P + j) * Dv + d", "float"),
                    ck_load_as(&k, a->v, cidx, "float"));
        else
            ck_line(&k, "      vr[u][e] = %s;", ck_load_as(&k, a->v, cidx, "float"));
    }
    ck_line(&k, "    } }");
    ck_line(&k, "  }");
    /* scores of the round's keys (a key past j1 scores -inf; the first is
     * always in range, so the running maximum below stays finite) */
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int hh = 0; hh < G; hh++) {");
    ck_line(&k, "    float s[%d];", ATT_UNROLL);
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int u = 0; u < %d; u++) {", ATT_UNROLL);
    ck_line(&k, "      float t = 0.f;");
    ck_line(&k, "      #pragma unroll");
    ck_line(&k, "      for (int e = 0; e < %lld; e++) { const int d = lane + 32 * e; if (d < D) t += qs[hh * D + d] * kr[u][e]; }", (long long)ED);
    ck_line(&k, "      t = kwsum(t) * %.9ef;", a->scale);
    if (a->softcap > 0)
        ck_line(&k, "      t = %.9ef * tanhf(t / %.9ef);", a->softcap, a->softcap);
    ck_line(&k, "      s[u] = jb + u * %d < j1 ? t : -KINF;", ATT_WARPS);
    ck_line(&k, "    }");
    ck_line(&k, "    float mn = m[hh];");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int u = 0; u < %d; u++) mn = fmaxf(mn, s[u]);", ATT_UNROLL);
    ck_line(&k, "    const float corr = expf(m[hh] - mn);");
    ck_line(&k, "    float ps = 0.f;");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int e = 0; e < %lld; e++) acc[hh][e] *= corr;", (long long)E);
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int u = 0; u < %d; u++) {", ATT_UNROLL);
    ck_line(&k, "      const float p = expf(s[u] - mn); ps += p;");
    ck_line(&k, "      #pragma unroll");
    ck_line(&k, "      for (int e = 0; e < %lld; e++) acc[hh][e] += p * vr[u][e];", (long long)E);
    ck_line(&k, "    }");
    ck_line(&k, "    l[hh] = l[hh] * corr + ps; m[hh] = mn;");
    ck_line(&k, "  }");
    ck_line(&k, "}");
    /* combine the warps */
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int hh = 0; hh < G; hh++) {");
    ck_line(&k, "  if (lane == 0) { wm[warp][hh] = m[hh]; wl[warp][hh] = l[hh]; }");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int e = 0; e < %lld; e++) { const int d = lane + 32 * e; if (d < Dv) wacc[warp][hh * Dv + d] = acc[hh][e]; }", (long long)E);
    ck_line(&k, "}");
    ck_line(&k, "__syncthreads();");
    ck_line(&k, "const i64 ybase = %s;", a->three ? "(bb * Sq + i) * Hq" : "bb * Hq * Sq");
    ck_line(&k, "for (int e = threadIdx.x; e < G * Dv; e += blockDim.x) {");
    ck_line(&k, "  const int hh = e / Dv, d = e %% Dv; const i64 h = g * G + hh;");
    ck_line(&k, "  float M = -KINF; for (int w = 0; w < %d; w++) M = fmaxf(M, wm[w][hh]);", ATT_WARPS);
    ck_line(&k, "  float L = 0.f, A = 0.f;");
    ck_line(&k, "  for (int w = 0; w < %d; w++) if (wm[w][hh] != -KINF) { const float f = expf(wm[w][hh] - M); L += wl[w][hh] * f; A += wacc[w][hh * Dv + d] * f; }", ATT_WARPS);
    ck_line(&k, "  if (act == 1) {");
    ck_line(&k, "    const float o = L > 0.f ? A / L : 0.f;");
    ck_store(&k, a->y, a->three ? "(ybase + h) * Dv + d" : "((bb * Hq + h) * Sq + i) * Dv + d", "o", "float");
    ck_line(&k, "  } else {");
    ck_line(&k, "    float *pp = %s + (h * ns + split) * (Dv + 2);", part);
    ck_line(&k, "    pp[2 + d] = A; if (d == 0) { pp[0] = M; pp[1] = L; }");
    ck_line(&k, "  }");
    ck_line(&k, "}");
    ck_line(&k, "if (act == 1) return;");
    ck_line(&k, "__threadfence();");
    ck_line(&k, "__syncthreads();");
    ck_line(&k, "if (threadIdx.x == 0) last = atomicAdd(%s + g, 1) == act - 1;", cnt);
    ck_line(&k, "__syncthreads();");
    ck_line(&k, "if (!last) return;");
    ck_line(&k, "__threadfence();");
    ck_line(&k, "for (int e = threadIdx.x; e < G * Dv; e += blockDim.x) {");
    ck_line(&k, "  const int hh = e / Dv, d = e %% Dv; const i64 h = g * G + hh;");
    ck_line(&k, "  const volatile float *pp = %s + h * ns * (Dv + 2);", part);
    ck_line(&k, "  float M = -KINF; for (int s = 0; s < act; s++) M = fmaxf(M, pp[s * (Dv + 2)]);");
    ck_line(&k, "  float L = 0.f, A = 0.f;");
    ck_line(&k, "  for (int s = 0; s < act; s++) { const float ms = pp[s * (Dv + 2)]; if (ms != -KINF) { const float f = expf(ms - M); L += pp[s * (Dv + 2) + 1] * f; A += pp[s * (Dv + 2) + 2 + d] * f; } }");
    ck_line(&k, "  const float o = L > 0.f ? A / L : 0.f;");
    ck_store(&k, a->y, a->three ? "(ybase + h) * Dv + d" : "((bb * Hq + h) * Sq + i) * Dv + d", "o", "float");
    ck_line(&k, "}");
    ck_line(&k, "if (threadIdx.x == 0) %s[g] = 0;", cnt);
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    kiln_dim bq = kiln_dim_mul(&c->g->syms, a->B, a->Sq);
    set_bq_cond(cu_launch_k(c, &k, kern, ns, 1, a->Hkv, bq), a, c, cond);
    return 0;
}

/* One query per batch row (decode): split the keys, fold the KV append;
 * more queries: one block each, after an append kernel. Both sets of
 * launches are emitted when the query count is only known at run time. */
static int lower_attn_launches(cu *c, int ni, const attn *a)
{
    kiln_dim bq = kiln_dim_mul(&c->g->syms, a->B, a->Sq);
    int st = KILN_DIM_IS_STATIC(bq), dec = !(st && bq > 1), pre = !(st && bq <= 1);
    if (pre) {
        int cond = dec ? KILN_CU_COND_GT : KILN_CU_COND_ALWAYS;
        if (a->inplace && lower_kv_append(c, ni, a, cond))
            return -1;
        if (lower_attn_core(c, ni, a, 0, 0, cond))
            return -1;
    }
    if (dec && lower_attn_core(c, ni, a, 1, a->inplace, pre ? KILN_CU_COND_LE : KILN_CU_COND_ALWAYS))
        return -1;
    return 0;
}

static int lower_attention(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    attn a;
    memset(&a, 0, sizeof a);
    a.pk = a.pv = a.present_k = a.present_v = -1;
    a.rq.x = a.rk.x = -1;
    a.lw = a.rw = -1;
    a.q = n->inputs[0];
    a.k = n->inputs[1];
    a.v = n->inputs[2];
    a.y = n->outputs[0];
    const kiln_type *qt = cu_vt(c, a.q), *kt = cu_vt(c, a.k), *vt = cu_vt(c, a.v);
#define IN(i) (n->n_inputs > (i) && n->inputs[(i)] >= 0 ? n->inputs[(i)] : -1)
#define OUT(o) (has_out(c, n, (o)) ? n->outputs[(o)] : -1)
    a.B = qt->dims[0];
    if (IS("GQAttention")) {
        a.three = 1;
        a.Hq = kiln_node_int(n, "num_heads");
        a.Hkv = kiln_node_int(n, "kv_num_heads");
        a.pk = IN(3);
        a.pv = IN(4);
        if (IN(5) >= 0)
            return cu_fail(c, n, "attention masks are not supported yet");
        a.causal = kiln_node_int(n, "causal") != 0;
        a.window = kiln_node_int(n, "window");
        a.softcap = kiln_node_float(n, "softcap");
        a.scale = kiln_node_float(n, "scale");
    } else {
        a.three = qt->rank == 3;
        if (IN(3) >= 0 || IN(6) >= 0)
            return cu_fail(c, n, "attention masks are not supported yet");
        if (OUT(3) >= 0)
            return cu_fail(c, n, "the QK output is not supported");
        a.pk = IN(4);
        a.pv = IN(5);
        a.causal = kiln_node_int(n, "is_causal") != 0;
        a.softcap = kiln_node_float(n, "softcap");
        a.lw = kiln_node_int(n, "left_window_size");
        a.rw = kiln_node_int(n, "right_window_size");
        if (a.three) {
            a.Hq = kiln_node_int(n, "q_num_heads");
            a.Hkv = kiln_node_int(n, "kv_num_heads");
        } else {
            if (!KILN_DIM_IS_STATIC(qt->dims[1]) || !KILN_DIM_IS_STATIC(kt->dims[1]))
                return cu_fail(c, n, "head counts must be static");
            a.Hq = qt->dims[1];
            a.Hkv = kt->dims[1];
        }
        a.scale = kiln_node_has_attr(n, "scale") ? kiln_node_float(n, "scale") : 0;
    }
    a.present_k = OUT(1);
    a.present_v = OUT(2);
#undef IN
#undef OUT
    if (a.Hq <= 0 || a.Hkv <= 0 || a.Hq % a.Hkv)
        return cu_fail(c, n, "head counts %lld/%lld do not group", (long long)a.Hq, (long long)a.Hkv);
    kiln_dim D, Dv;
    if (a.three) {
        a.Sq = qt->dims[1];
        a.Skv = kt->dims[1];
        D = KILN_DIM_IS_STATIC(qt->dims[2]) ? qt->dims[2] / a.Hq : KILN_DIM_ANY;
        Dv = KILN_DIM_IS_STATIC(vt->dims[2]) ? vt->dims[2] / a.Hkv : KILN_DIM_ANY;
    } else {
        a.Sq = qt->dims[2];
        a.Skv = kt->dims[2];
        D = qt->dims[3];
        Dv = vt->dims[3];
    }
    if (!KILN_DIM_IS_STATIC(D) || !KILN_DIM_IS_STATIC(Dv))
        return cu_fail(c, n, "attention head size must be static");
    a.D = D;
    a.Dv = Dv;
    a.P = a.pk >= 0 ? cu_vt(c, a.pk)->dims[2] : 0;
    if (a.scale == 0)
        a.scale = 1.0 / sqrt((double)a.D);
    for (int i = 0; i < 3; i++)
        if (cu_vt(c, n->inputs[i])->dtype != KILN_F32 && cu_vt(c, n->inputs[i])->dtype != KILN_F16 &&
            cu_vt(c, n->inputs[i])->dtype != KILN_BF16)
            return cu_fail(c, n, "attention inputs must be floats");
    /* LM builds keep the KV cache in place: past and present are the same
     * runtime buffer, only the new rows are written */
    if (c->lm && a.three && a.pk >= 0 && a.present_k >= 0 && a.present_v >= 0 &&
        c->plan->bufs[a.pk].kind == KILN_BUF_INPUT && c->plan->bufs[a.pv].kind == KILN_BUF_INPUT &&
        c->plan->bufs[a.present_k].kind == KILN_BUF_OUTPUT && c->plan->bufs[a.present_v].kind == KILN_BUF_OUTPUT) {
        a.inplace = 1;
        c->n_kv_inplace++;
        a.kv_ctx = c->kv_ctx;
        a.kv_dtype = c->kv_dtype;
        if (c->ni[ni].rope_q >= 0) {
            const kiln_node *R = &c->g->nodes[c->ni[ni].rope_q];
            if (rope_of(c, R, a.D, &a.rq) || rope_of(c, &c->g->nodes[c->ni[ni].rope_k], a.D, &a.rk))
                return -1;
            a.q = a.rq.x;
            a.k = a.rk.x;
        }
        return lower_attn_launches(c, ni, &a);
    }
    if (a.present_k >= 0 && lower_present(c, ni, &a, a.pk, a.k, a.present_k, a.D))
        return -1;
    if (a.present_v >= 0 && lower_present(c, ni, &a, a.pv, a.v, a.present_v, a.Dv))
        return -1;
    return lower_attn_launches(c, ni, &a);
}

int cu_lower_nn(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    for (int i = 0; i < n->n_outputs; i++)
        if (has_out(c, n, i) && !cu_dtype_ok(cu_vt(c, n->outputs[i])->dtype))
            return cu_fail(c, n, "element type %s is not supported", kiln_dtype_name(cu_vt(c, n->outputs[i])->dtype));
    if (IS("Softmax") || IS("LogSoftmax") || IS("Hardmax"))
        return lower_softmax(c, ni);
    if (IS("RotaryEmbedding"))
        return lower_rope(c, ni);
    if (IS("Attention") || IS("GQAttention"))
        return lower_attention(c, ni);
    return lower_norms(c, ni);
}
