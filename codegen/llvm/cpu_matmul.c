/* cpu_matmul.c - contractions: MatMul, Gemm, FusedMatMul, Linear, Einsum.
 *
 * Fast paths use explicit <8 x float> vectors (LLVM 16's C API cannot set
 * fast-math flags, so reductions would not vectorize on their own):
 *  - Linear: parallel over weight rows; each row is converted to f32 once
 *    (dequantized for block formats) and dotted with every row of x, so a
 *    decode step reads each weight byte once;
 *  - f32 MatMul: out row += a[m,k] * B row k, vectorized over n.
 * Everything else takes a plain scalar loop nest (f64 accumulation for f64). */
#include "cg.h"

#include <stdlib.h>
#include <string.h>

#define VW KC_VW

static const kiln_type *vt(cg *c, int vid) { return &c->g->values[vid].type; }

/* ---- weight rows to f32 ----
 * GGML blocks of 32 decoded with vector IR (no call per row): Q4_0
 * x = (q-8)*d, Q4_1 x = q*d + m (low nibbles are elements 0..15 of a block,
 * high nibbles 16..31), Q8_0 x = q*d. Returns 0 if handled. */

static LLVMValueRef splat_i8(cg *c, int v, int n)
{
    LLVMValueRef e[32];
    for (int i = 0; i < n; i++)
        e[i] = LLVMConstInt(c->t_i8, (unsigned long long)v, 0);
    return LLVMConstVector(e, (unsigned)n);
}

static LLVMValueRef splat_f(kc *k, LLVMValueRef f, int n)
{
    cg *c = k->c;
    LLVMTypeRef vt16 = LLVMVectorType(c->t_f32, (unsigned)n);
    LLVMValueRef v = LLVMBuildInsertElement(c->b, LLVMGetUndef(vt16), f, kc_i64(k, 0), "");
    return LLVMBuildShuffleVector(c->b, v, LLVMGetUndef(vt16), LLVMConstNull(LLVMVectorType(c->t_i32, (unsigned)n)), "");
}

static LLVMValueRef load_half(kc *k, LLVMValueRef p)
{
    LLVMValueRef h = LLVMBuildLoad2(k->c->b, k->c->t_f16, p, "");
    LLVMSetAlignment(h, 1);
    return LLVMBuildFPExt(k->c->b, h, k->c->t_f32, "");
}

static void store_vec(kc *k, LLVMValueRef dst, LLVMValueRef idx, LLVMValueRef v)
{
    LLVMValueRef p = LLVMBuildGEP2(k->c->b, k->c->t_f32, dst, &idx, 1, "");
    LLVMSetAlignment(LLVMBuildStore(k->c->b, v, p), 4);
}

static int emit_decode_row(kc *k, kiln_dtype dt, LLVMValueRef src, LLVMValueRef dst, int64_t K)
{
    cg *c = k->c;
    LLVMBuilderRef b = c->b;
    if (dt != KILN_Q4_0 && dt != KILN_Q4_1 && dt != KILN_Q8_0)
        return -1;
    int bb = kiln_dtype_get(dt)->block_bytes;
    LLVMTypeRef v16i8 = LLVMVectorType(c->t_i8, 16), v16i32 = LLVMVectorType(c->t_i32, 16);
    LLVMTypeRef v16f = LLVMVectorType(c->t_f32, 16);
    kc_loop l;
    LLVMValueRef blk = kc_for(k, &l, kc_i64(k, 0), kc_i64(k, K / 32), "blk");
    LLVMValueRef boff = LLVMBuildMul(b, blk, kc_i64(k, bb), "");
    LLVMValueRef bp = LLVMBuildGEP2(b, c->t_i8, src, &boff, 1, "");
    LLVMValueRef d = splat_f(k, load_half(k, bp), 16);
    LLVMValueRef out0 = LLVMBuildMul(b, blk, kc_i64(k, 32), "");
    LLVMValueRef out1 = LLVMBuildAdd(b, out0, kc_i64(k, 16), "");
    if (dt == KILN_Q8_0) {
        for (int h = 0; h < 2; h++) {
            LLVMValueRef qo = kc_i64(k, 2 + 16 * h);
            LLVMValueRef qp = LLVMBuildGEP2(b, c->t_i8, bp, &qo, 1, "");
            LLVMValueRef q = LLVMBuildLoad2(b, v16i8, qp, "");
            LLVMSetAlignment(q, 1);
            LLVMValueRef f = LLVMBuildSIToFP(b, LLVMBuildSExt(b, q, v16i32, ""), v16f, "");
            store_vec(k, dst, h ? out1 : out0, LLVMBuildFMul(b, f, d, ""));
        }
    } else {
        int q1 = dt == KILN_Q4_1;
        LLVMValueRef qo = kc_i64(k, q1 ? 4 : 2);
        LLVMValueRef qp = LLVMBuildGEP2(b, c->t_i8, bp, &qo, 1, "");
        LLVMValueRef q = LLVMBuildLoad2(b, v16i8, qp, "");
        LLVMSetAlignment(q, 1);
        LLVMValueRef lo = LLVMBuildAnd(b, q, splat_i8(c, 15, 16), "");
        LLVMValueRef hi = LLVMBuildLShr(b, q, splat_i8(c, 4, 16), "");
        LLVMValueRef mv = NULL;
        if (q1) {
            LLVMValueRef mo = kc_i64(k, 2);
            mv = splat_f(k, load_half(k, LLVMBuildGEP2(b, c->t_i8, bp, &mo, 1, "")), 16);
        }
        LLVMValueRef halves[2] = {lo, hi};
        for (int h = 0; h < 2; h++) {
            LLVMValueRef f = LLVMBuildUIToFP(b, LLVMBuildZExt(b, halves[h], v16i32, ""), v16f, "");
            LLVMValueRef v = q1 ? LLVMBuildFAdd(b, LLVMBuildFMul(b, f, d, ""), mv, "")
                                : LLVMBuildFMul(b, LLVMBuildFSub(b, f, splat_f(k, kc_f(k, CT_F32, 8), 16), ""), d, "");
            store_vec(k, dst, h ? out1 : out0, v);
        }
    }
    kc_for_end(k, &l);
    return 0;
}

/* ---- register-blocked f32 micro-kernel ----
 * An MR x NR tile of C stays in vector registers while k runs: per k, NR/W
 * vector loads of B's row and MR broadcasts of A's column feed MR*NR/W
 * fused multiply-adds. W is the target's vector width (8 or 16 lanes). */

static LLVMTypeRef vtw(cg *c, int w) { return LLVMVectorType(c->t_f32, (unsigned)w); }

static LLVMValueRef vld_w(kc *k, LLVMValueRef base, LLVMValueRef idx, int w)
{
    LLVMValueRef p = LLVMBuildGEP2(k->c->b, k->c->t_f32, base, &idx, 1, "");
    LLVMValueRef l = LLVMBuildLoad2(k->c->b, vtw(k->c, w), p, "");
    LLVMSetAlignment(l, 4);
    return l;
}

static void vst_w(kc *k, LLVMValueRef base, LLVMValueRef idx, LLVMValueRef v)
{
    LLVMValueRef p = LLVMBuildGEP2(k->c->b, k->c->t_f32, base, &idx, 1, "");
    LLVMSetAlignment(LLVMBuildStore(k->c->b, v, p), 4);
}

static LLVMValueRef vfma_w(kc *k, LLVMValueRef a, LLVMValueRef b, LLVMValueRef acc, int w)
{
    cg *c = k->c;
    LLVMTypeRef t = vtw(c, w);
    unsigned id = LLVMLookupIntrinsicID("llvm.fmuladd", 12);
    LLVMValueRef f = LLVMGetIntrinsicDeclaration(c->mod, id, &t, 1);
    LLVMValueRef args[3] = {a, b, acc};
    return LLVMBuildCall2(c->b, LLVMIntrinsicGetType(c->ctx, id, &t, 1), f, args, 3, "");
}

static LLVMValueRef vsplat_w(kc *k, LLVMValueRef f, int w)
{
    cg *c = k->c;
    LLVMValueRef v = LLVMBuildInsertElement(c->b, LLVMGetUndef(vtw(c, w)), f, kc_i64(k, 0), "");
    return LLVMBuildShuffleVector(c->b, v, LLVMGetUndef(vtw(c, w)), LLVMConstNull(LLVMVectorType(c->t_i32, (unsigned)w)), "");
}

void kc_if_begin(kc *k, kc_if *f, LLVMValueRef cond)
{
    cg *c = k->c;
    f->then_bb = LLVMAppendBasicBlockInContext(c->ctx, k->fn, "then");
    f->else_bb = LLVMAppendBasicBlockInContext(c->ctx, k->fn, "else");
    f->merge = LLVMAppendBasicBlockInContext(c->ctx, k->fn, "merge");
    LLVMBuildCondBr(c->b, cond, f->then_bb, f->else_bb);
    LLVMPositionBuilderAtEnd(c->b, f->then_bb);
}

void kc_if_else(kc *k, kc_if *f)
{
    LLVMBuildBr(k->c->b, f->merge);
    LLVMPositionBuilderAtEnd(k->c->b, f->else_bb);
}

void kc_if_end(kc *k, kc_if *f)
{
    LLVMBuildBr(k->c->b, f->merge);
    LLVMPositionBuilderAtEnd(k->c->b, f->merge);
}

/* C[m0..m0+MR, n0..n0+NR] = A[m0.., :] B[:, n0..] for one full tile.
 * a: A base + row m0 offset, lda = K stride of rows; b: B base + batch offset. */
void kc_micro_tile(kc *k, int MR, int NV, int W, LLVMValueRef A, LLVMValueRef aoff, LLVMValueRef lda,
                       LLVMValueRef a_k, LLVMValueRef B, LLVMValueRef boff, LLVMValueRef ldb, LLVMValueRef O, LLVMValueRef ooff,
                       LLVMValueRef ldo, LLVMValueRef n0, LLVMValueRef K)
{
    LLVMBuilderRef b = k->c->b;
    kc_loop lk;
    LLVMValueRef kk = kc_for(k, &lk, kc_i64(k, 0), K, "mk");
    LLVMValueRef acc[8][4];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = kc_phi(k, &lk, LLVMConstNull(vtw(k->c, W)));
    LLVMValueRef brow = LLVMBuildAdd(b, LLVMBuildAdd(b, boff, LLVMBuildMul(b, kk, ldb, ""), ""), n0, "");
    LLVMValueRef bv[4];
    for (int v = 0; v < NV; v++)
        bv[v] = vld_w(k, B, LLVMBuildAdd(b, brow, kc_i64(k, v * W), ""), W);
    for (int r = 0; r < MR; r++) {
        LLVMValueRef ai = LLVMBuildAdd(b, LLVMBuildAdd(b, aoff, LLVMBuildMul(b, kc_i64(k, r), lda, ""), ""),
                                       LLVMBuildMul(b, kk, a_k, ""), "");
        LLVMValueRef av = vsplat_w(k, kc_load(k, KILN_F32, A, ai, CT_F32), W);
        for (int v = 0; v < NV; v++)
            kc_phi_next(k, &lk, acc[r][v], vfma_w(k, av, bv[v], acc[r][v], W));
    }
    kc_for_end(k, &lk);
    for (int r = 0; r < MR; r++) {
        LLVMValueRef orow = LLVMBuildAdd(b, LLVMBuildAdd(b, ooff, LLVMBuildMul(b, kc_i64(k, r), ldo, ""), ""), n0, "");
        for (int v = 0; v < NV; v++)
            vst_w(k, O, LLVMBuildAdd(b, orow, kc_i64(k, v * W), ""), acc[r][v]);
    }
}

/* ---- Linear ---- */

/* ---- fused epilogues ----
 * A Linear/MatMul anchoring a kernel group writes the group's final value:
 * each output element goes through the group's elementwise chain (bias,
 * residual, activation) right after it is computed. */

typedef struct epi {
    int last;   /* node index of the group's last node, -1: no epilogue */
    int anchor_out;
    int final;  /* value the kernel writes */
} epi;

static epi epi_of(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    epi e = {-1, n->outputs[0], n->outputs[0]};
    if (n->kernel >= 0) {
        int last = cg_group_last(c, n->kernel);
        if (last > ni) {
            e.last = last;
            e.final = c->g->nodes[last].outputs[0];
        }
    }
    return e;
}

/* The chain applied to the anchor's value v at output index idx. */
static LLVMValueRef epi_apply(kc *k, const epi *e, LLVMValueRef v, LLVMValueRef *idx)
{
    if (e->last < 0)
        return v;
    const kiln_node *last = &k->c->g->nodes[e->last];
    k->group = k->c->g->nodes[e->last].kernel;
    k->given_vid = e->anchor_out;
    k->given_val = v;
    ctype ct;
    LLVMValueRef r = cg_map_value(k, last, idx, &ct);
    k->given_vid = -1;
    return kc_convert(k, r, ct, CT_F32);
}

/* Applies the chain in place over row elements [n0, n1) of buffer O (f32). */
static void epi_row(kc *k, const epi *e, LLVMValueRef O, LLVMValueRef rowoff, LLVMValueRef *idx, int col_axis,
                    LLVMValueRef n0, LLVMValueRef n1)
{
    if (e->last < 0)
        return;
    LLVMBuilderRef b = k->c->b;
    kc_loop l;
    LLVMValueRef j = kc_for(k, &l, n0, n1, "epi");
    LLVMValueRef off = LLVMBuildAdd(b, rowoff, j, "");
    idx[col_axis] = j;
    kc_store(k, KILN_F32, O, off, epi_apply(k, e, kc_load(k, KILN_F32, O, off, CT_F32), idx), CT_F32);
    kc_for_end(k, &l);
}

static int lower_linear(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *xt = vt(c, n->inputs[0]), *wt = vt(c, n->inputs[1]), *ot = vt(c, n->outputs[0]);
    int has_bias = n->n_inputs > 2 && n->inputs[2] >= 0;
    int64_t K = wt->dims[1];
    if (!KILN_DIM_IS_STATIC(K) || !KILN_DIM_IS_STATIC(wt->dims[0]))
        return cg_fail(c, n, "Linear weight must have a static shape");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    epi ep = epi_of(c, ni);
    LLVMValueRef x = kc_ptr(&k, n->inputs[0]), w = kc_ptr(&k, n->inputs[1]), y = kc_ptr(&k, ep.final);
    LLVMValueRef bias = has_bias ? kc_ptr(&k, n->inputs[2]) : NULL;
    LLVMValueRef M = kc_i64(&k, 1);
    for (int d = 0; d < xt->rank - 1; d++)
        M = LLVMBuildMul(b, M, kc_dim(&k, xt->dims[d]), "");
    LLVMValueRef Kv = kc_i64(&k, K), Nv = kc_i64(&k, wt->dims[0]);
    /* x rows as f32: convert once per kernel call chunk if x is not f32 */
    LLVMValueRef xs = x;
    int xconv = xt->dtype != KILN_F32;
    LLVMValueRef row = wt->dtype == KILN_F32 ? NULL : kc_entry_alloca(&k, K);
    if (xconv) {
        /* convert all of x into a heap-free stack copy would be unbounded:
         * convert row by row instead, inside the m loop */
    }
    LLVMValueRef xrow = xconv ? kc_entry_alloca(&k, K) : NULL;
    kc_loop ln;
    LLVMValueRef nn = kc_for(&k, &ln, k.begin, k.end, "n");
    LLVMValueRef wrow;
    if (wt->dtype == KILN_F32) {
        wrow = w;
    } else {
        const kiln_dtype_info *di = kiln_dtype_get(wt->dtype);
        LLVMValueRef rowbytes = kc_i64(&k, (int64_t)kiln_dtype_storage(wt->dtype, K));
        LLVMValueRef src = LLVMBuildGEP2(b, c->t_i8, w, (LLVMValueRef[]){LLVMBuildMul(b, nn, rowbytes, "")}, 1, "");
        if (di->is_quant) {
            if (emit_decode_row(&k, wt->dtype, src, row, K))
                kc_call_dequant(&k, wt->dtype, src, row, Kv);
        } else {
            kc_loop lk;
            LLVMValueRef kk = kc_for(&k, &lk, kc_i64(&k, 0), Kv, "cvt");
            kc_store(&k, KILN_F32, row, kk, kc_load(&k, wt->dtype, src, kk, CT_F32), CT_F32);
            kc_for_end(&k, &lk);
        }
        wrow = row;
    }
    LLVMValueRef woff = wt->dtype == KILN_F32 ? LLVMBuildMul(b, nn, Kv, "") : kc_i64(&k, 0);
    LLVMValueRef bv = has_bias ? kc_load(&k, vt(c, n->inputs[2])->dtype, bias, nn, CT_F32) : NULL;
    kc_loop lm;
    LLVMValueRef m = kc_for(&k, &lm, kc_i64(&k, 0), M, "m");
    LLVMValueRef xoff = LLVMBuildMul(b, m, Kv, "");
    if (xconv) {
        kc_loop lk;
        LLVMValueRef kk = kc_for(&k, &lk, kc_i64(&k, 0), Kv, "xcvt");
        kc_store(&k, KILN_F32, xrow, kk, kc_load(&k, xt->dtype, x, LLVMBuildAdd(b, xoff, kk, ""), CT_F32), CT_F32);
        kc_for_end(&k, &lk);
        xs = xrow;
        xoff = kc_i64(&k, 0);
    }
    LLVMValueRef acc = kc_dot_f32(&k, xs, xoff, wrow, woff, Kv);
    if (bv)
        acc = LLVMBuildFAdd(b, acc, bv, "");
    if (ep.last >= 0) {
        LLVMValueRef idx[KILN_MAX_RANK], rem = m;
        idx[ot->rank - 1] = nn;
        for (int d = ot->rank - 2; d >= 0; d--) {
            LLVMValueRef dim = kc_dim(&k, ot->dims[d]);
            idx[d] = LLVMBuildSRem(b, rem, dim, "");
            rem = LLVMBuildSDiv(b, rem, dim, "");
        }
        acc = epi_apply(&k, &ep, acc, idx);
    }
    kc_store(&k, ot->dtype, y, LLVMBuildAdd(b, LLVMBuildMul(b, m, Nv, ""), nn, ""), acc, CT_F32);
    kc_for_end(&k, &lm);
    kc_for_end(&k, &ln);
    kc_end(&k);
    kiln_dim trip = wt->dims[0];
    cg_launch(c, k.fn, &trip, 1, 8, ni);
    return c->failed ? -1 : 0;
}

/* ---- MatMul / Gemm / FusedMatMul ---- */

typedef struct mm {
    int a, b, cbias;           /* value ids (cbias -1 if none) */
    int ta, tb;                /* transposed operands (last two dims) */
    double alpha, beta;
    int a_vec, b_vec;          /* 1-D operands promoted per numpy */
} mm;

/* Offsets of output row r (batch..., m) in A, B and the output; the batch
 * ids go to bidx. */
static LLVMValueRef mm_row(kc *k, LLVMValueRef r, LLVMValueRef Md, const kiln_type *ot, int nbatch, int a_vec,
                           LLVMValueRef a_m, const LLVMValueRef *a_bst, const LLVMValueRef *b_bst, const LLVMValueRef *ost,
                           LLVMValueRef *aoff, LLVMValueRef *boff, LLVMValueRef *ooff, LLVMValueRef *bidx)
{
    LLVMBuilderRef bl = k->c->b;
    LLVMValueRef m = LLVMBuildSRem(bl, r, Md, "");
    LLVMValueRef bi = LLVMBuildSDiv(bl, r, Md, "");
    *aoff = LLVMBuildMul(bl, m, a_m, "");
    *boff = kc_i64(k, 0);
    *ooff = kc_i64(k, 0);
    for (int d = nbatch - 1; d >= 0; d--) {
        LLVMValueRef dim = kc_dim(k, ot->dims[d]);
        LLVMValueRef id = LLVMBuildSRem(bl, bi, dim, "");
        bi = LLVMBuildSDiv(bl, bi, dim, "");
        *aoff = LLVMBuildAdd(bl, *aoff, LLVMBuildMul(bl, id, a_bst[d], ""), "");
        bidx[d] = id;
        *boff = LLVMBuildAdd(bl, *boff, LLVMBuildMul(bl, id, b_bst[d], ""), "");
        *ooff = LLVMBuildAdd(bl, *ooff, LLVMBuildMul(bl, id, ost[d], ""), "");
    }
    if (!a_vec)
        *ooff = LLVMBuildAdd(bl, *ooff, LLVMBuildMul(bl, m, ost[nbatch], ""), "");
    return m;
}

/* Row m starts a full tile of MR rows. */
static LLVMValueRef mm_full_tile(kc *k, LLVMValueRef m, int MR, LLVMValueRef Md)
{
    LLVMBuilderRef bl = k->c->b;
    return LLVMBuildAnd(bl, LLVMBuildICmp(bl, LLVMIntEQ, LLVMBuildSRem(bl, m, kc_i64(k, MR), ""), kc_i64(k, 0), ""),
                        LLVMBuildICmp(bl, LLVMIntSLE, LLVMBuildAdd(bl, m, kc_i64(k, MR), ""), Md, ""), "");
}

/* out[batch..., m, n] = alpha * Σ_k A'[.., m, k] B'[.., k, n] + beta * C */
static int lower_mm(cg *c, int ni, const mm *p)
{
    const kiln_node *n = &c->g->nodes[ni];
    epi ep = epi_of(c, ni);
    LLVMValueRef bidx[KILN_MAX_RANK];
    const kiln_type *at = vt(c, p->a), *bt = vt(c, p->b), *ot = vt(c, n->outputs[0]);
    int orank = ot->rank;
    /* logical shapes with promotions */
    kiln_dim adims[KILN_MAX_RANK], bdims[KILN_MAX_RANK];
    int ar = at->rank, br = bt->rank;
    memcpy(adims, at->dims, sizeof(kiln_dim) * (size_t)ar);
    memcpy(bdims, bt->dims, sizeof(kiln_dim) * (size_t)br);
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef bl = c->b;
    LLVMValueRef ast[KILN_MAX_RANK], bst[KILN_MAX_RANK], ost[KILN_MAX_RANK];
    kc_strides(&k, at, ast);
    kc_strides(&k, bt, bst);
    kc_strides(&k, ot, ost);
    /* (m, k) strides of A and (k, n) strides of B */
    LLVMValueRef a_m, a_k, b_k, b_n, Kd;
    if (p->a_vec) {
        a_m = kc_i64(&k, 0);
        a_k = ast[0];
        Kd = kc_dim(&k, adims[0]);
    } else {
        a_m = p->ta ? ast[ar - 1] : ast[ar - 2];
        a_k = p->ta ? ast[ar - 2] : ast[ar - 1];
        Kd = kc_dim(&k, p->ta ? adims[ar - 2] : adims[ar - 1]);
    }
    if (p->b_vec) {
        b_k = bst[0];
        b_n = kc_i64(&k, 0);
    } else {
        b_k = p->tb ? bst[br - 1] : bst[br - 2];
        b_n = p->tb ? bst[br - 2] : bst[br - 1];
    }
    /* output's logical (batch..., M, N) */
    int nbatch = orank - (p->a_vec ? 0 : 1) - (p->b_vec ? 0 : 1);
    LLVMValueRef Md = p->a_vec ? kc_i64(&k, 1) : kc_dim(&k, ot->dims[nbatch]);
    LLVMValueRef Nd = p->b_vec ? kc_i64(&k, 1) : kc_dim(&k, ot->dims[orank - 1]);
    /* batch strides (broadcast: 0 for size-1 / missing dims) */
    int a_nb = p->a_vec ? 0 : ar - 2, b_nb = p->b_vec ? 0 : br - 2;
    LLVMValueRef a_bst[KILN_MAX_RANK], b_bst[KILN_MAX_RANK];
    for (int d = 0; d < nbatch; d++) {
        int ia = d - (nbatch - a_nb), ib = d - (nbatch - b_nb);
        a_bst[d] = (ia < 0 || (KILN_DIM_IS_STATIC(adims[ia]) && adims[ia] == 1 && ot->dims[d] != 1)) ? kc_i64(&k, 0) : ast[ia];
        b_bst[d] = (ib < 0 || (KILN_DIM_IS_STATIC(bdims[ib]) && bdims[ib] == 1 && ot->dims[d] != 1)) ? kc_i64(&k, 0) : bst[ib];
    }
    LLVMValueRef A = kc_ptr(&k, p->a), B = kc_ptr(&k, p->b), O = kc_ptr(&k, ep.final);
    int fast = at->dtype == KILN_F32 && bt->dtype == KILN_F32 && ot->dtype == KILN_F32 && !p->tb && !p->b_vec &&
               p->cbias < 0 && p->alpha == 1.0;
    /* the micro-kernel's geometry (AVX-512: 8 x 48 tiles, 24 of the 32
     * vector registers hold C) */
    int W = c->vw ? c->vw : 8, MR = W == 16 ? 8 : 6, NV = W == 16 ? 3 : 2, NR = NV * W;
    LLVMValueRef aoff, boff, ooff, m;
    LLVMValueRef nfull = LLVMBuildMul(bl, LLVMBuildSDiv(bl, Nd, kc_i64(&k, NR), ""), kc_i64(&k, NR), "");
    if (fast) {
        /* full tiles, column panel by column panel: B's panel (K x NR) stays
         * in L2 while every row tile of this thread passes over it (row
         * tiles inside would stream all of B from L3 once per row tile) */
        kc_loop lt, lr0;
        LLVMValueRef t = kc_for(&k, &lt, kc_i64(&k, 0), LLVMBuildSDiv(bl, nfull, kc_i64(&k, NR), ""), "ntile");
        LLVMValueRef r0 = kc_for(&k, &lr0, k.begin, k.end, "trow0");
        m = mm_row(&k, r0, Md, ot, nbatch, p->a_vec, a_m, a_bst, b_bst, ost, &aoff, &boff, &ooff, bidx);
        LLVMValueRef full0 = mm_full_tile(&k, m, MR, Md);
        kc_if f0;
        kc_if_begin(&k, &f0, full0);
        kc_micro_tile(&k, MR, NV, W, A, aoff, a_m, a_k, B, boff, b_k, O, ooff, ost[orank - 1 - 1 + (p->a_vec ? 1 : 0)],
                      LLVMBuildMul(bl, t, kc_i64(&k, NR), ""), Kd);
        kc_if_else(&k, &f0);
        kc_if_end(&k, &f0);
        kc_for_end(&k, &lr0);
        kc_for_end(&k, &lt);
    }
    /* outer loop over batch*M rows */
    kc_loop lr;
    LLVMValueRef r = kc_for(&k, &lr, k.begin, k.end, "row");
    m = mm_row(&k, r, Md, ot, nbatch, p->a_vec, a_m, a_bst, b_bst, ost, &aoff, &boff, &ooff, bidx);
    /* output index of element (m, n) for the epilogue: batch ids, m, n */
    LLVMValueRef eidx[KILN_MAX_RANK];
    for (int d = 0; d < nbatch; d++)
        eidx[d] = bidx[d];
    int m_axis = nbatch, n_axis = orank - 1;
    LLVMValueRef on_st = p->b_vec ? kc_i64(&k, 0) : ost[orank - 1];
    ctype ct = ot->dtype == KILN_F64 ? CT_F64 : kiln_dtype_get(ot->dtype)->is_float ? CT_F32 : CT_I64;
    if (fast) {
        /* full MR-row tiles: the NR-wide panels are done above; here a
         * W-wide pass over what is left of N, scalar dot products for the
         * last columns, and the epilogue; a partial row tile (the last one)
         * takes the row-by-row axpy path */
        LLVMValueRef full = mm_full_tile(&k, m, MR, Md);
        LLVMValueRef tail_row = LLVMBuildICmp(bl, LLVMIntSGT, LLVMBuildMul(bl, LLVMBuildAdd(bl, LLVMBuildSDiv(bl, m, kc_i64(&k, MR), ""), kc_i64(&k, 1), ""), kc_i64(&k, MR), ""), Md, "");
        kc_if f1;
        kc_if_begin(&k, &f1, full);
        {
            if (NV > 1) {
                LLVMValueRef n1 = LLVMBuildMul(bl, LLVMBuildSDiv(bl, Nd, kc_i64(&k, W), ""), kc_i64(&k, W), "");
                kc_loop lt1;
                LLVMValueRef t1 = kc_for(&k, &lt1, LLVMBuildSDiv(bl, nfull, kc_i64(&k, W), ""), LLVMBuildSDiv(bl, n1, kc_i64(&k, W), ""), "ntile1");
                kc_micro_tile(&k, MR, 1, W, A, aoff, a_m, a_k, B, boff, b_k, O, ooff, ost[orank - 1 - 1 + (p->a_vec ? 1 : 0)],
                              LLVMBuildMul(bl, t1, kc_i64(&k, W), ""), Kd);
                kc_for_end(&k, &lt1);
                nfull = n1;
            }
            /* remaining columns of the tile's rows */
            kc_loop lr2;
            LLVMValueRef rr = kc_for(&k, &lr2, kc_i64(&k, 0), kc_i64(&k, MR), "trow");
            LLVMValueRef ar = LLVMBuildAdd(bl, aoff, LLVMBuildMul(bl, rr, a_m, ""), "");
            LLVMValueRef orr = LLVMBuildAdd(bl, ooff, LLVMBuildMul(bl, rr, ost[orank - 2 + (p->a_vec ? 1 : 0)], ""), "");
            kc_loop lc;
            LLVMValueRef jc = kc_for(&k, &lc, nfull, Nd, "tcol");
            kc_loop lk2;
            LLVMValueRef kk2 = kc_for(&k, &lk2, kc_i64(&k, 0), Kd, "tk");
            LLVMValueRef sacc = kc_phi(&k, &lk2, kc_f(&k, CT_F32, 0));
            LLVMValueRef av = kc_load(&k, KILN_F32, A, LLVMBuildAdd(bl, ar, LLVMBuildMul(bl, kk2, a_k, ""), ""), CT_F32);
            LLVMValueRef bvv = kc_load(&k, KILN_F32, B, LLVMBuildAdd(bl, LLVMBuildAdd(bl, boff, LLVMBuildMul(bl, kk2, b_k, ""), ""), jc, ""), CT_F32);
            kc_phi_next(&k, &lk2, sacc, LLVMBuildFAdd(bl, sacc, LLVMBuildFMul(bl, av, bvv, ""), ""));
            kc_for_end(&k, &lk2);
            kc_store(&k, KILN_F32, O, LLVMBuildAdd(bl, orr, jc, ""), sacc, CT_F32);
            kc_for_end(&k, &lc);
            kc_for_end(&k, &lr2);
            if (ep.last >= 0) { /* the tile's rows are complete and cache-hot */
                kc_loop le;
                LLVMValueRef re = kc_for(&k, &le, kc_i64(&k, 0), kc_i64(&k, MR), "erow");
                eidx[m_axis] = LLVMBuildAdd(bl, m, re, "");
                epi_row(&k, &ep, O, LLVMBuildAdd(bl, ooff, LLVMBuildMul(bl, re, ost[orank - 2 + (p->a_vec ? 1 : 0)], ""), ""),
                        eidx, n_axis, kc_i64(&k, 0), Nd);
                kc_for_end(&k, &le);
            }
        }
        kc_if_else(&k, &f1);
        kc_if f2;
        /* rows of a tile are done by its first row; only the last partial
         * tile's rows compute themselves */
        kc_if_begin(&k, &f2, tail_row);
        {
        /* out row = 0; for k: out row += A[m,k] * B[k, :] (B rows contiguous) */
        kc_loop lz;
        LLVMValueRef j = kc_for(&k, &lz, kc_i64(&k, 0), Nd, "zero");
        kc_store(&k, KILN_F32, O, LLVMBuildAdd(bl, ooff, j, ""), kc_f(&k, CT_F32, 0), CT_F32);
        kc_for_end(&k, &lz);
        kc_loop lk;
        LLVMValueRef kk = kc_for(&k, &lk, kc_i64(&k, 0), Kd, "k");
        LLVMValueRef av = kc_load(&k, KILN_F32, A, LLVMBuildAdd(bl, aoff, LLVMBuildMul(bl, kk, a_k, ""), ""), CT_F32);
        LLVMValueRef brow = LLVMBuildAdd(bl, boff, LLVMBuildMul(bl, kk, b_k, ""), "");
        LLVMValueRef splat = LLVMBuildInsertElement(bl, LLVMGetUndef(kc_vec_t(c)), av, kc_i64(&k, 0), "");
        LLVMValueRef zeros = LLVMConstNull(LLVMVectorType(c->t_i32, VW));
        splat = LLVMBuildShuffleVector(bl, splat, LLVMGetUndef(kc_vec_t(c)), zeros, "");
        LLVMValueRef nv = LLVMBuildMul(bl, LLVMBuildSDiv(bl, Nd, kc_i64(&k, VW), ""), kc_i64(&k, VW), "");
        kc_loop lv;
        LLVMValueRef jv = kc_for(&k, &lv, kc_i64(&k, 0), LLVMBuildSDiv(bl, nv, kc_i64(&k, VW), ""), "nv");
        LLVMValueRef j0 = LLVMBuildMul(bl, jv, kc_i64(&k, VW), "");
        LLVMValueRef oi = LLVMBuildAdd(bl, ooff, j0, "");
        kc_vstore(&k, O, oi, kc_vfma(&k, splat, kc_vload(&k, B, LLVMBuildAdd(bl, brow, j0, "")), kc_vload(&k, O, oi)));
        kc_for_end(&k, &lv);
        kc_loop lt;
        LLVMValueRef jt = kc_for(&k, &lt, nv, Nd, "nt");
        LLVMValueRef oj = LLVMBuildAdd(bl, ooff, jt, "");
        LLVMValueRef bvv = kc_load(&k, KILN_F32, B, LLVMBuildAdd(bl, brow, jt, ""), CT_F32);
        LLVMValueRef ov = kc_load(&k, KILN_F32, O, oj, CT_F32);
        kc_store(&k, KILN_F32, O, oj, LLVMBuildFAdd(bl, ov, LLVMBuildFMul(bl, av, bvv, ""), ""), CT_F32);
        kc_for_end(&k, &lt);
        kc_for_end(&k, &lk);
        if (!p->a_vec)
            eidx[m_axis] = m;
        epi_row(&k, &ep, O, ooff, eidx, n_axis, kc_i64(&k, 0), Nd);
        }
        kc_if_else(&k, &f2);
        kc_if_end(&k, &f2);
        kc_if_end(&k, &f1);
    } else {
        kc_loop ln;
        LLVMValueRef j = kc_for(&k, &ln, kc_i64(&k, 0), Nd, "n");
        kc_loop lk;
        LLVMValueRef kk = kc_for(&k, &lk, kc_i64(&k, 0), Kd, "k");
        LLVMValueRef acc = kc_phi(&k, &lk, kc_f(&k, ct == CT_I64 ? CT_I64 : CT_F64, 0));
        ctype act = ct == CT_I64 ? CT_I64 : CT_F64;
        LLVMValueRef av = kc_load(&k, at->dtype, A, LLVMBuildAdd(bl, aoff, LLVMBuildMul(bl, kk, a_k, ""), ""), act);
        LLVMValueRef bv = kc_load(&k, bt->dtype, B,
                                  LLVMBuildAdd(bl, LLVMBuildAdd(bl, boff, LLVMBuildMul(bl, kk, b_k, ""), ""),
                                               LLVMBuildMul(bl, j, b_n, ""), ""), act);
        kc_phi_next(&k, &lk, acc, act == CT_I64 ? LLVMBuildAdd(bl, acc, LLVMBuildMul(bl, av, bv, ""), "")
                                                : LLVMBuildFAdd(bl, acc, LLVMBuildFMul(bl, av, bv, ""), ""));
        kc_for_end(&k, &lk);
        LLVMValueRef v = acc;
        if (act == CT_F64) {
            if (p->alpha != 1.0)
                v = LLVMBuildFMul(bl, v, kc_f(&k, CT_F64, p->alpha), "");
            if (p->cbias >= 0) {
                const kiln_type *ctt = vt(c, p->cbias);
                LLVMValueRef cst[KILN_MAX_RANK];
                LLVMValueRef idx2[2] = {m, j};
                kc_bcast_strides(&k, ctt, 2, cst);
                LLVMValueRef co = LLVMBuildAdd(bl, LLVMBuildMul(bl, idx2[0], cst[0], ""), LLVMBuildMul(bl, idx2[1], cst[1], ""), "");
                LLVMValueRef cv = kc_load(&k, ctt->dtype, kc_ptr(&k, p->cbias), co, CT_F64);
                v = LLVMBuildFAdd(bl, v, LLVMBuildFMul(bl, cv, kc_f(&k, CT_F64, p->beta), ""), "");
            }
        }
        if (ep.last >= 0) {
            if (!p->a_vec)
                eidx[m_axis] = m;
            eidx[n_axis] = j;
            v = epi_apply(&k, &ep, kc_convert(&k, v, act, CT_F32), eidx);
            act = CT_F32;
        }
        kc_store(&k, ot->dtype, O, LLVMBuildAdd(bl, ooff, LLVMBuildMul(bl, j, on_st, ""), ""), v, act);
        kc_for_end(&k, &ln);
    }
    kc_for_end(&k, &lr);
    kc_end(&k);
    kiln_dim trip[KILN_MAX_RANK];
    int nt = 0;
    for (int d = 0; d < nbatch; d++)
        trip[nt++] = ot->dims[d];
    if (!p->a_vec)
        trip[nt++] = ot->dims[nbatch];
    cg_launch(c, k.fn, trip, nt, 4, ni);
    return c->failed ? -1 : 0;
}

/* ---- Einsum: a generic loop nest over output and summed labels ----
 * Labels: 'A'-'Z' -> 0..25, 'a'-'z' -> 26..51 (ASCII order, which is
 * numpy's implicit output order), ellipsis dim j -> 52 + j, right-aligned
 * across operands. Inference already checked the equation against the
 * operands; a mismatch here only fails the build. */

#define ES_LETTERS 52
#define ES_MAX (ES_LETTERS + KILN_MAX_RANK)

typedef struct esum {
    int lab[KILN_MAX_OP_INPUTS][KILN_MAX_RANK]; /* label of each operand dim */
    int nout, out[KILN_MAX_RANK];
    int nsum, sum[ES_MAX];
} esum;

static int es_label(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return 26 + ch - 'a';
    return -1;
}

static int es_letters(const char *s, size_t len, int *has_ell)
{
    int n = 0;
    *has_ell = 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '.')
            *has_ell = 1;
        else
            n++;
    return n;
}

/* Labels of a term for `rank` dims; -1 if it does not fit. */
static int es_expand(const char *s, size_t len, int rank, int ell_rank, int *lab)
{
    int has_ell, nl = es_letters(s, len, &has_ell), ell_n = rank - nl, d = 0;
    if (rank > KILN_MAX_RANK || ell_n < 0 || (!has_ell && ell_n) || ell_n > ell_rank)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            for (int j = 0; j < ell_n; j++)
                lab[d++] = ES_LETTERS + ell_rank - ell_n + j;
            i += 2;
            continue;
        }
        if ((lab[d++] = es_label(s[i])) < 0)
            return -1;
    }
    return d == rank ? 0 : -1;
}

static int es_plan(const char *eq, const kiln_type *const *in, int nin, esum *p)
{
    char buf[512];
    size_t n = 0;
    for (const char *s = eq; *s && n + 1 < sizeof buf; s++)
        if (*s != ' ' && *s != '\t')
            buf[n++] = *s;
    buf[n] = 0;
    memset(p, 0, sizeof *p);
    const char *arrow = strstr(buf, "->");
    size_t lhs = arrow ? (size_t)(arrow - buf) : n, start[KILN_MAX_OP_INPUTS], len[KILN_MAX_OP_INPUTS];
    size_t pos = 0;
    int ell_rank = 0;
    for (int i = 0; i < nin; i++) {
        size_t end = pos;
        while (end < lhs && buf[end] != ',')
            end++;
        if ((end == lhs) != (i == nin - 1))
            return -1;
        start[i] = pos;
        len[i] = end - pos;
        int has_ell, nl = es_letters(buf + pos, len[i], &has_ell);
        if (has_ell && in[i]->rank - nl > ell_rank)
            ell_rank = in[i]->rank - nl;
        pos = end + 1;
    }
    int count[ES_MAX] = {0}, in_out[ES_MAX] = {0};
    for (int i = 0; i < nin; i++) {
        if (es_expand(buf + start[i], len[i], in[i]->rank, ell_rank, p->lab[i]))
            return -1;
        for (int d = 0; d < in[i]->rank; d++)
            count[p->lab[i][d]]++;
    }
    if (arrow) {
        int has_ell, nl = es_letters(arrow + 2, strlen(arrow + 2), &has_ell);
        p->nout = nl + (has_ell ? ell_rank : 0);
        if (es_expand(arrow + 2, strlen(arrow + 2), p->nout, ell_rank, p->out))
            return -1;
    } else { /* implicit: broadcast dims, then the labels used exactly once */
        for (int j = 0; j < ell_rank; j++)
            p->out[p->nout++] = ES_LETTERS + j;
        for (int l = 0; l < ES_LETTERS; l++)
            if (count[l] == 1) {
                if (p->nout == KILN_MAX_RANK)
                    return -1;
                p->out[p->nout++] = l;
            }
    }
    for (int k = 0; k < p->nout; k++)
        in_out[p->out[k]] = 1;
    for (int l = 0; l < ES_MAX; l++)
        if (count[l] && !in_out[l])
            p->sum[p->nsum++] = l;
    return 0;
}

static int lower_einsum(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const kiln_type *ins[KILN_MAX_OP_INPUTS];
    for (int t = 0; t < n->n_inputs; t++)
        ins[t] = vt(c, n->inputs[t]);
    const kiln_type *ot = vt(c, n->outputs[0]);
    esum p;
    if (es_plan(kiln_node_string(n, "equation"), ins, n->n_inputs, &p) || p.nout != ot->rank)
        return cg_fail(c, n, "equation '%s' does not fit the operands", kiln_node_string(n, "equation"));
    /* loop labels: output first, then summed */
    int order[ES_MAX], nl = 0, ol = p.nout;
    kiln_dim ldim[ES_MAX];
    for (int k = 0; k < p.nout; k++) {
        ldim[nl] = ot->dims[k];
        order[nl++] = p.out[k];
    }
    for (int k = 0; k < p.nsum; k++) {
        int l = p.sum[k];
        ldim[nl] = 1; /* every dim with the label may be a broadcast 1 */
        for (int t = 0; t < n->n_inputs; t++)
            for (int d = 0; d < ins[t]->rank; d++)
                if (p.lab[t][d] == l && !(KILN_DIM_IS_STATIC(ins[t]->dims[d]) && ins[t]->dims[d] == 1))
                    ldim[nl] = ins[t]->dims[d];
        order[nl++] = l;
    }
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef bl = c->b;
    LLVMValueRef idx[ES_MAX];
    kc_loop loops[ES_MAX];
    ctype ct = kc_ctype(ot->dtype) == CT_I64 ? CT_I64 : CT_F64;
    /* output loops (the outer one split across threads), then the sums */
    for (int l = 0; l < ol; l++)
        idx[l] = kc_for(&k, &loops[l], l == 0 ? k.begin : kc_i64(&k, 0), l == 0 ? k.end : kc_dim(&k, ldim[l]), "o");
    LLVMValueRef acc0 = kc_f(&k, ct, 0), phis[ES_MAX];
    for (int l = ol; l < nl; l++) {
        idx[l] = kc_for(&k, &loops[l], kc_i64(&k, 0), kc_dim(&k, ldim[l]), "r");
        phis[l] = kc_phi(&k, &loops[l], l == ol ? acc0 : phis[l - 1]);
    }
    LLVMValueRef prod = kc_f(&k, ct, 1);
    for (int t = 0; t < n->n_inputs; t++) {
        LLVMValueRef st[KILN_MAX_RANK], off = kc_i64(&k, 0);
        kc_strides(&k, ins[t], st);
        for (int d = 0; d < ins[t]->rank; d++) {
            int l = 0;
            while (order[l] != p.lab[t][d])
                l++;
            /* a broadcast unit dim stays at 0; a repeated label walks the diagonal */
            if (KILN_DIM_IS_STATIC(ins[t]->dims[d]) && ins[t]->dims[d] == 1)
                continue;
            off = LLVMBuildAdd(bl, off, LLVMBuildMul(bl, idx[l], st[d], ""), "");
        }
        LLVMValueRef v = kc_load(&k, ins[t]->dtype, kc_ptr(&k, n->inputs[t]), off, ct);
        prod = ct == CT_I64 ? LLVMBuildMul(bl, prod, v, "") : LLVMBuildFMul(bl, prod, v, "");
    }
    LLVMValueRef acc = prod;
    if (nl > ol) {
        LLVMValueRef last = phis[nl - 1];
        LLVMValueRef nx = ct == CT_I64 ? LLVMBuildAdd(bl, last, prod, "") : LLVMBuildFAdd(bl, last, prod, "");
        for (int l = nl - 1; l >= ol; l--) {
            kc_phi_next(&k, &loops[l], phis[l], l == nl - 1 ? nx : phis[l + 1]);
            kc_for_end(&k, &loops[l]);
        }
        acc = phis[ol];
    }
    LLVMValueRef ost[KILN_MAX_RANK], ooff = kc_i64(&k, 0);
    kc_strides(&k, ot, ost);
    for (int l = 0; l < ol; l++)
        ooff = LLVMBuildAdd(bl, ooff, LLVMBuildMul(bl, idx[l], ost[l], ""), "");
    kc_store(&k, ot->dtype, kc_ptr(&k, n->outputs[0]), ooff, acc, ct);
    for (int l = ol - 1; l >= 0; l--)
        kc_for_end(&k, &loops[l]);
    kc_end(&k);
    /* a rank-0 output ignores begin/end: launch exactly once */
    kiln_dim trip = ol ? ldim[0] : 1;
    cg_launch(c, k.fn, &trip, 1, 1, ni);
    return c->failed ? -1 : 0;
}

int cg_lower_matmul(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    mm p = {n->inputs[0], n->inputs[1], -1, 0, 0, 1.0, 1.0, 0, 0};
    if (!strcmp(op, "Linear"))
        return lower_linear(c, ni);
    if (!strcmp(op, "Einsum"))
        return lower_einsum(c, ni);
    if (!strcmp(op, "Gemm")) {
        p.ta = (int)kiln_node_int(n, "transA");
        p.tb = (int)kiln_node_int(n, "transB");
        p.alpha = kiln_node_float(n, "alpha");
        p.beta = kiln_node_float(n, "beta");
        if (n->n_inputs > 2 && n->inputs[2] >= 0)
            p.cbias = n->inputs[2];
    } else if (!strcmp(op, "FusedMatMul")) {
        if (kiln_node_int(n, "transBatchA") || kiln_node_int(n, "transBatchB"))
            return cg_fail(c, n, "FusedMatMul with transBatchA/B is not lowered yet");
        p.ta = (int)kiln_node_int(n, "transA");
        p.tb = (int)kiln_node_int(n, "transB");
        p.alpha = kiln_node_float(n, "alpha");
    }
    p.a_vec = vt(c, p.a)->rank == 1;
    p.b_vec = vt(c, p.b)->rank == 1;
    if (kiln_dtype_get(vt(c, p.a)->dtype)->is_quant || kiln_dtype_get(vt(c, p.b)->dtype)->is_quant)
        return cg_fail(c, n, "block-quantized MatMul operands must go through Linear");
    return lower_mm(c, ni, &p);
}
