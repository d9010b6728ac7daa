/* cu_matmul.c - contractions for the CUDA target.
 *
 * Linear (y = x W^T, W [N, K] in f32/f16/bf16 or a GGML block format):
 *  - decode (at most CU_GEMV_MAX_M rows of x): a memory-bound GEMV. Each
 *    128-thread block streams two weight rows with 16-byte loads
 *    (ld.global.nc, no L1 allocation), x read through L1; epilogues fuse the
 *    bias, the residual add, a whole q/k/v group, or SwiGLU (gate and up
 *    rows in the same block), and the preceding RMSNorm is folded in;
 *  - prefill: a tiled GEMM on the tensor cores (mma.sync m16n8k16 bf16 with
 *    f32 accumulation; activations rounded to bf16) for 16-bit weights, and
 *    a tiled f32 SIMT GEMM for f32 and block-quantized weights.
 * MatMul / Gemm / FusedMatMul: a plain kernel, one thread per output.
 * Dequantize and Gather from block-quantized tables decode per element. */
#include "cu.h"

#include <string.h>

#define GV_T 128 /* threads per GEMV block */
#define GV_RPB 2 /* weight rows per block */
#define GV_J 2   /* 16-byte loads per row and thread in flight */
#define GV_MIN_BLOCKS 12 /* resident GEMV blocks per SM (65536 registers / (128 x 40)) */

static const char *qname(kiln_dtype dt)
{
    switch (dt) {
    case KILN_Q4_0: return "q4_0";
    case KILN_Q4_1: return "q4_1";
    case KILN_Q8_0: return "q8_0";
    case KILN_Q4_K: return "q4_k";
    case KILN_Q6_K: return "q6_k";
    default: return NULL;
    }
}

/* Expression for element (row n, column k) of weight value w as float. */
static const char *w_elem(ck *k, int w, const char *n, const char *kk, int64_t K)
{
    kiln_dtype dt = cu_vt(k->c, w)->dtype;
    const char *p = ck_ptr(k, w);
    if (kiln_dtype_get(dt)->is_quant)
        return ck_s(k, "kq_%s(%s + (i64)(%s) * %lldLL, %s)", qname(dt), p, n, (long long)kiln_dtype_storage(dt, K), kk);
    return ck_load_as(k, w, ck_s(k, "(i64)(%s) * %lldLL + (%s)", n, (long long)K, kk), "float");
}

static void set_m_cond(cu_launch *L, kiln_dim M, int le)
{
    if (KILN_DIM_IS_STATIC(M))
        return;
    L->cond = le ? KILN_CU_COND_LE : KILN_CU_COND_GT;
    L->cond_d = M;
    L->cond_c = CU_GEMV_MAX_M;
}

/* ---- decode GEMV ---- */

/* One part of the rows a GEMV computes: rows [wrow0, wrow0 + n) of weight
 * w (bias from the same rows), written to out [M, n], or through the
 * epilogue of node `anchor` when it has one. */
typedef struct gseg {
    int w, bias, out, anchor;
    int64_t wrow0, n;
} gseg;

void cu_epilogue(ck *k, int ni, const char *m, const char *n, const char *v)
{
    cu *c = k->c;
    int A = c->g->nodes[ni].outputs[0], E = c->ni[ni].epi;
    const kiln_type *t = cu_vt(c, A);
    int r = t->rank;
    const char *N = ck_d(k, t->dims[r - 1]);
    if (E < 0) {
        ck_store(k, A, ck_s(k, "(%s) * %s + (%s)", m, N, n), v, "float");
        return;
    }
    /* the chain's output has the anchor's shape: index it from (m, n) */
    const char *idx[KILN_MAX_RANK];
    int id = k->npool;
    ck_line(k, "{ i64 er%d = %s;", id, m);
    idx[r - 1] = n;
    for (int d = r - 2; d >= 0; d--) {
        if (d > 0)
            ck_line(k, "  const i64 e%d_%d = er%d %% %s; er%d /= %s;", id, d, id, ck_d(k, t->dims[d]), id, ck_d(k, t->dims[d]));
        else
            ck_line(k, "  const i64 e%d_0 = er%d;", id, id);
        idx[d] = ck_s(k, "e%d_%d", id, d);
    }
    k->subst_vid = A;
    k->subst = v;
    const char *rct;
    const char *e = cu_map_value(k, E, 0, idx, &rct);
    k->subst_vid = -1;
    ck_store(k, c->g->nodes[E].outputs[0], ck_s(k, "(%s) * %s + (%s)", m, N, n), e, rct);
    ck_line(k, "}");
}

static int emit_gemv(cu *c, int ni, int x, const gseg *s, int nseg, int dual, int normnode, kiln_dim M)
{
    const kiln_type *wt = cu_vt(c, s[0].w);
    kiln_dtype wdt = wt->dtype;
    int64_t K = wt->dims[1];
    int quant = kiln_dtype_get(wdt)->is_quant != 0;
    int w16 = wdt == KILN_F16 || wdt == KILN_BF16;
    int per = w16 ? 8 : 4;
    int vec = (w16 && K % 8 == 0) || (wdt == KILN_F32 && K % 4 == 0);
    /* x straight from global memory (L1/L2 hits: every block reads the
     * same rows); a fused RMSNorm multiplies x by its weight on the fly and
     * the dot products by 1/rms at the end, from the sum of squares the
     * block gathers while it reads x: nothing runs before the weight loads */
    int X = normnode >= 0 ? c->g->nodes[normnode].inputs[0] : x;
    int NW = normnode >= 0 ? c->g->nodes[normnode].inputs[1] : -1;
    int nw32 = NW >= 0 && cu_vt(c, NW)->dtype == KILN_F32;
    ck k;
    ck_begin(c, &k, ni, GV_T);
    /* occupancy is what keeps loads in flight: at most 40 registers */
    k.min_blocks = GV_MIN_BLOCKS;
    const char *xp = ck_ptr(&k, X), *np = NW >= 0 ? ck_ptr(&k, NW) : NULL;
    ck_line(&k, "const int K = %lld; const i64 M = %s;", (long long)K, ck_d(&k, M));
    ck_line(&k, "const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;");
    const char *wct = quant ? "u8" : cu_ctype(wdt);
    int64_t rowb = (int64_t)kiln_dtype_storage(wdt, K);
    int64_t R = 0;
    for (int i = 0; i < nseg; i++)
        R += s[i].n;
    if (dual)
        R = s[0].n;
    /* each block: GV_RPB weight rows (dual: the gate and up rows of one output) */
    ck_line(&k, "const %s *wp[%d]; int ok[%d], rowid[%d];", wct, GV_RPB, GV_RPB, GV_RPB);
    if (dual) {
        ck_line(&k, "{ const int row = blockIdx.x; const int v = row < %lld; const i64 r = v ? row : 0;", (long long)R);
        ck_line(&k, "  wp[0] = (const %s *)((const u8 *)%s + (r + %lldLL) * %lldLL); wp[1] = (const %s *)((const u8 *)%s + (r + %lldLL) * %lldLL);",
                wct, ck_ptr(&k, s[0].w), (long long)s[0].wrow0, (long long)rowb, wct, ck_ptr(&k, s[1].w), (long long)s[1].wrow0,
                (long long)rowb);
        ck_line(&k, "  ok[0] = ok[1] = v; rowid[0] = rowid[1] = row; }");
    } else {
        ck_line(&k, "#pragma unroll");
        ck_line(&k, "for (int rr = 0; rr < %d; rr++) {", GV_RPB);
        ck_line(&k, "  const int row = blockIdx.x * %d + rr; ok[rr] = row < %lld; rowid[rr] = row;", GV_RPB, (long long)R);
        ck_line(&k, "  const int r = ok[rr] ? row : 0;");
        int64_t off = 0;
        for (int i = 0; i < nseg; i++) {
            ck_line(&k, "  %sif (r < %lld) wp[rr] = (const %s *)((const u8 *)%s + (i64)(r - %lld + %lld) * %lldLL);", i ? "else " : "",
                    (long long)(off + s[i].n), wct, ck_ptr(&k, s[i].w), (long long)off, (long long)s[i].wrow0, (long long)rowb);
            off += s[i].n;
        }
        ck_line(&k, "}");
    }
    /* with programmatic dependent launch the next kernel's blocks are
     * released at once, the row addresses computed before waiting (an L2
     * prefetch of the rows here, tried in run 4, cost 10% of decode speed) */
    ck_line(&k, "kgdc_wait();");
    k.own_wait = 1;
    ck_line(&k, "float acc[%d][%d], ss[%d];", GV_RPB, CU_GEMV_MAX_M, CU_GEMV_MAX_M);
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int m = 0; m < %d; m++) { ss[m] = 0.f; _Pragma(\"unroll\") for (int rr = 0; rr < %d; rr++) acc[rr][m] = 0.f; }",
            CU_GEMV_MAX_M, GV_RPB);
    /* x element (m, kk) times the norm weight, adding x^2 to ss[m] */
    const char *nwv = np ? ck_load_as(&k, NW, "kk", "float") : NULL;
    if (quant) {
        ck_line(&k, "for (int gq = tid; gq < K / 32; gq += %d) {", GV_T);
        ck_line(&k, "  float xv[%d][32];", CU_GEMV_MAX_M);
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int m = 0; m < %d; m++) if (m < M) {", CU_GEMV_MAX_M);
        ck_line(&k, "    #pragma unroll");
        ck_line(&k, "    for (int j = 0; j < 32; j++) { const int kk = gq * 32 + j; const float v = %s[(i64)m * K + kk];%s }", xp,
                np ? ck_s(&k, " ss[m] += v * v; xv[m][j] = v * %s;", nwv) : " xv[m][j] = v;");
        ck_line(&k, "  }");
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int rr = 0; rr < %d; rr++) {", GV_RPB);
        ck_line(&k, "    float y[32]; kg_%s((const u8 *)wp[rr], gq, y);", qname(wdt));
        ck_line(&k, "    #pragma unroll");
        ck_line(&k, "    for (int m = 0; m < %d; m++) if (m < M) {", CU_GEMV_MAX_M);
        ck_line(&k, "      float a = 0.f;");
        ck_line(&k, "      #pragma unroll");
        ck_line(&k, "      for (int j = 0; j < 32; j++) a += y[j] * xv[m][j];");
        ck_line(&k, "      acc[rr][m] += a;");
        ck_line(&k, "    }");
        ck_line(&k, "  }");
        ck_line(&k, "}");
    } else if (vec) {
        /* batches of J 16-byte loads per row and thread, all issued before
         * any is used; many small blocks (GV_RPB rows each) rather than one
         * wave of long-lived warps, so blocks drift apart and the memory
         * system always has loads queued (bench/gemv_lab.cu measured this
         * structure at 2.6-3.0 TB/s on the 1B shapes, one wave of 2-row
         * warps at 1.4-2.8) */
        int64_t nch = K / per, J = (nch + GV_T - 1) / GV_T;
        if (J > GV_J)
            J = GV_J;
        int guard = nch % (GV_T * J) != 0;
        ck_line(&k, "const int NCH = %lld;", (long long)nch);
        ck_line(&k, "#pragma unroll 1");
        ck_line(&k, "for (int c0 = 0; c0 < NCH; c0 += %lld) {", (long long)(GV_T * J));
        ck_line(&k, "  uint4 wb[%d][%lld];", GV_RPB, (long long)J);
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int u = 0; u < %lld; u++) { const int cc = c0 + u * %d + tid;", (long long)J, GV_T);
        ck_line(&k, "    #pragma unroll");
        ck_line(&k, "    for (int rr = 0; rr < %d; rr++) wb[rr][u] = %s; }", GV_RPB,
                ck_s(&k, guard ? "cc < NCH ? kldg4(wp[rr] + cc * %d) : make_uint4(0u, 0u, 0u, 0u)" : "kldg4(wp[rr] + cc * %d)", per));
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int u = 0; u < %lld; u++) { const int cc = c0 + u * %d + tid, k0 = cc * %d;%s", (long long)J, GV_T, per,
                guard ? " if (cc >= NCH) break;" : "");
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int m = 0; m < %d; m++) if (m < M) {", CU_GEMV_MAX_M);
        ck_line(&k, "    float xf[%d];", per);
        ck_line(&k, "    { const float4 *x4 = (const float4 *)(%s + (i64)m * K + k0);", xp);
        ck_line(&k, "      const float4 xa = x4[0]; xf[0] = xa.x; xf[1] = xa.y; xf[2] = xa.z; xf[3] = xa.w;%s }",
                per == 8 ? " const float4 xb = x4[1]; xf[4] = xb.x; xf[5] = xb.y; xf[6] = xb.z; xf[7] = xb.w;" : "");
        if (np) {
            ck_line(&k, "    #pragma unroll");
            ck_line(&k, "    for (int j = 0; j < %d; j++) ss[m] += xf[j] * xf[j];", per);
            if (nw32) {
                ck_line(&k, "    { const float4 *n4 = (const float4 *)(%s + k0);", np);
                ck_line(&k, "      const float4 na = n4[0]; xf[0] *= na.x; xf[1] *= na.y; xf[2] *= na.z; xf[3] *= na.w;%s }",
                        per == 8 ? " const float4 nb = n4[1]; xf[4] *= nb.x; xf[5] *= nb.y; xf[6] *= nb.z; xf[7] *= nb.w;" : "");
            } else {
                ck_line(&k, "    #pragma unroll");
                ck_line(&k, "    for (int j = 0; j < %d; j++) { const int kk = k0 + j; xf[j] *= %s; }", per, nwv);
            }
        }
        ck_line(&k, "    #pragma unroll");
        ck_line(&k, "    for (int rr = 0; rr < %d; rr++) {", GV_RPB);
        ck_line(&k, "      const uint4 w = wb[rr][u];");
        if (wdt == KILN_F32)
            ck_line(&k, "      acc[rr][m] += __uint_as_float(w.x) * xf[0] + __uint_as_float(w.y) * xf[1] + "
                        "__uint_as_float(w.z) * xf[2] + __uint_as_float(w.w) * xf[3];");
        else {
            const char *sf = wdt == KILN_BF16 ? "b" : "h";
            ck_line(&k, "      acc[rr][m] += klo_%s(w.x) * xf[0] + khi_%s(w.x) * xf[1] + klo_%s(w.y) * xf[2] + "
                        "khi_%s(w.y) * xf[3] + klo_%s(w.z) * xf[4] + khi_%s(w.z) * xf[5] + klo_%s(w.w) * xf[6] + "
                        "khi_%s(w.w) * xf[7];", sf, sf, sf, sf, sf, sf, sf, sf);
        }
        ck_line(&k, "    }");
        ck_line(&k, "  }");
        ck_line(&k, "  }");
        ck_line(&k, "}");
    } else {
        const char *ld = wdt == KILN_F32 ? "%s[kk]" : wdt == KILN_BF16 ? "kb2f(%s[kk])" : "kh2f(%s[kk])";
        ck_line(&k, "for (int kk = tid; kk < K; kk += %d) {", GV_T);
        ck_line(&k, "  float xf[%d];", CU_GEMV_MAX_M);
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int m = 0; m < %d; m++) if (m < M) { const float v = %s[(i64)m * K + kk];%s }", CU_GEMV_MAX_M, xp,
                np ? ck_s(&k, " ss[m] += v * v; xf[m] = v * %s;", nwv) : " xf[m] = v;");
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int rr = 0; rr < %d; rr++) {", GV_RPB);
        ck_line(&k, "    const float w = %s;", ck_s(&k, ld, "wp[rr]"));
        ck_line(&k, "    #pragma unroll");
        ck_line(&k, "    for (int m = 0; m < %d; m++) if (m < M) acc[rr][m] += w * xf[m];", CU_GEMV_MAX_M);
        ck_line(&k, "  }");
        ck_line(&k, "}");
    }
    /* block sum: warp shuffles, then thread 0 adds the warps' partials and
     * runs the epilogue (at most GV_RPB x CU_GEMV_MAX_M outputs) */
    ck_line(&k, "__shared__ float red[%d][%d];", GV_T / 32, (GV_RPB + 1) * CU_GEMV_MAX_M);
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int m = 0; m < %d; m++) {", CU_GEMV_MAX_M);
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int rr = 0; rr < %d; rr++) { const float v = kwsum(acc[rr][m]); if (lane == 0) red[warp][rr * %d + m] = v; }",
            GV_RPB, CU_GEMV_MAX_M);
    if (np)
        ck_line(&k, "  { const float v = kwsum(ss[m]); if (lane == 0) red[warp][%d + m] = v; }", GV_RPB * CU_GEMV_MAX_M);
    ck_line(&k, "}");
    ck_line(&k, "__syncthreads();");
    ck_line(&k, "if (tid != 0) return;");
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int m = 0; m < %d; m++) {", CU_GEMV_MAX_M);
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int rr = 0; rr < %d; rr++) { float v = 0.f; for (int w = 0; w < %d; w++) v += red[w][rr * %d + m]; acc[rr][m] = v; }",
            GV_RPB, GV_T / 32, CU_GEMV_MAX_M);
    if (np) {
        const kiln_node *Rn = &c->g->nodes[normnode];
        ck_line(&k, "  float sq = 0.f; for (int w = 0; w < %d; w++) sq += red[w][%d + m];", GV_T / 32, GV_RPB * CU_GEMV_MAX_M);
        ck_line(&k, "  const float r = (float)(1.0 / sqrt((double)sq / (double)K + %.17g));", kiln_node_float(Rn, "epsilon"));
        ck_line(&k, "  #pragma unroll");
        ck_line(&k, "  for (int rr = 0; rr < %d; rr++) acc[rr][m] *= r;", GV_RPB);
    }
    ck_line(&k, "}");
    if (dual) {
        ck_line(&k, "if (!ok[0]) return;");
        ck_line(&k, "for (int m = 0; m < (int)M; m++) {");
        ck_line(&k, "  const float gv = acc[0][m], uv = acc[1][m], o = (gv * ksigmoid(gv)) * uv;");
        ck_store(&k, s[0].out, ck_s(&k, "(i64)m * %lldLL + rowid[0]", (long long)R), "o", "float");
        ck_line(&k, "}");
    } else {
        ck_line(&k, "#pragma unroll");
        ck_line(&k, "for (int rr = 0; rr < %d; rr++) {", GV_RPB);
        ck_line(&k, "  if (!ok[rr]) continue;");
        ck_line(&k, "  const int row = rowid[rr];");
        ck_line(&k, "  for (int m = 0; m < (int)M; m++) {");
        ck_line(&k, "    float v = acc[rr][m];");
        int64_t off = 0;
        for (int i = 0; i < nseg; i++) {
            ck_line(&k, "    %sif (row < %lld) {", i ? "else " : "", (long long)(off + s[i].n));
            ck_line(&k, "      const int n = row - %lld;", (long long)off);
            if (s[i].bias >= 0)
                ck_line(&k, "      v += %s;", ck_load_as(&k, s[i].bias, ck_s(&k, "n + %lld", (long long)s[i].wrow0), "float"));
            if (s[i].anchor >= 0 && c->ni[s[i].anchor].epi >= 0)
                cu_epilogue(&k, s[i].anchor, "(i64)m", "n", "v");
            else
                ck_store(&k, s[i].out, ck_s(&k, "(i64)m * %lldLL + n", (long long)s[i].n), "v", "float");
            ck_line(&k, "    }");
            off += s[i].n;
        }
        ck_line(&k, "  }");
        ck_line(&k, "}");
    }
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch *L = cu_launch_k(c, &k, kern, R, dual ? 1 : GV_RPB, 1, 1);
    set_m_cond(L, M, 1);
    return 0;
}

/* ---- prefill GEMM ---- */

/* Tensor-core GEMM: 128x128 tiles, 8 warps (64x32 each), k-steps of 32
 * with the next tile's global loads in flight during the mma work.
 * Precision: activations are split into two bf16 parts (hi + lo, 16
 * significant bits together) and f16 weights likewise, so the products
 * match f32 arithmetic to about 1e-5 instead of bf16's 4e-3; the extra mma
 * work is cheap next to the tile loads. */
static int emit_gemm_tc(cu *c, int ni, int x, int w, int bias, kiln_dim M)
{
    const kiln_type *wt = cu_vt(c, w);
    int64_t N = wt->dims[0], K = wt->dims[1];
    int f16 = wt->dtype == KILN_F16;
    ck k;
    ck_begin(c, &k, ni, 256);
    const char *A = ck_ptr(&k, x), *W = ck_ptr(&k, w);
    ck_line(&k, "const i64 M = %s; const int N = %lld, K = %lld;", ck_d(&k, M), (long long)N, (long long)K);
    ck_line(&k, "__shared__ __align__(16) u16 Ah[128 * 40], Al[128 * 40], Bh[128 * 40]%s;", f16 ? ", Bl[128 * 40]" : "");
    ck_line(&k, "const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;");
    ck_line(&k, "const i64 m0 = (i64)blockIdx.y * 128; const int n0 = blockIdx.x * 128;");
    ck_line(&k, "const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;");
    ck_line(&k, "float acc[4][4][4];");
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int a = 0; a < 4; a++) { _Pragma(\"unroll\") for (int b = 0; b < 4; b++) { _Pragma(\"unroll\") for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f; } }");
    ck_line(&k, "float4 ra[4]; uint4 rb[2];");
    ck_line(&k, "#define KLOAD(k0) { \\");
    ck_line(&k, "  _Pragma(\"unroll\") for (int q = 0; q < 4; q++) { const int id = tid + 256 * q, r = id >> 3, c4 = (id & 7) * 4; const i64 gm = m0 + r; \\");
    ck_line(&k, "    ra[q] = gm < M ? *(const float4 *)(%s + gm * K + (k0) + c4) : make_float4(0.f, 0.f, 0.f, 0.f); } \\", A);
    ck_line(&k, "  _Pragma(\"unroll\") for (int q = 0; q < 2; q++) { const int id = tid + 256 * q, r = id >> 2, c8 = (id & 3) * 8; const int gn = n0 + r; \\");
    ck_line(&k, "    rb[q] = gn < N ? kldg4(%s + (i64)gn * K + (k0) + c8) : make_uint4(0u, 0u, 0u, 0u); } }", W);
    ck_line(&k, "KLOAD(0);");
    ck_line(&k, "for (int k0 = 0; k0 < K; k0 += 32) {");
    ck_line(&k, "  __syncthreads();");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int q = 0; q < 4; q++) { const int id = tid + 256 * q, r = id >> 3, c4 = (id & 7) * 4;");
    ck_line(&k, "    const float f[4] = {ra[q].x, ra[q].y, ra[q].z, ra[q].w}; u16 h[4], l[4];");
    ck_line(&k, "    _Pragma(\"unroll\") for (int e = 0; e < 4; e++) { h[e] = kf2b(f[e]); l[e] = kf2b(f[e] - kb2f(h[e])); }");
    ck_line(&k, "    *(uint2 *)&Ah[r * 40 + c4] = make_uint2((u32)h[0] | ((u32)h[1] << 16), (u32)h[2] | ((u32)h[3] << 16));");
    ck_line(&k, "    *(uint2 *)&Al[r * 40 + c4] = make_uint2((u32)l[0] | ((u32)l[1] << 16), (u32)l[2] | ((u32)l[3] << 16)); }");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int q = 0; q < 2; q++) { const int id = tid + 256 * q, r = id >> 2, c8 = (id & 3) * 8;");
    if (f16) {
        ck_line(&k, "    const u32 wv[4] = {rb[q].x, rb[q].y, rb[q].z, rb[q].w}; u32 hv[4], lv[4];");
        ck_line(&k, "    _Pragma(\"unroll\") for (int e = 0; e < 4; e++) { const float a = klo_h(wv[e]), b = khi_h(wv[e]); const u16 ha = kf2b(a), hb = kf2b(b);");
        ck_line(&k, "      hv[e] = (u32)ha | ((u32)hb << 16); lv[e] = (u32)kf2b(a - kb2f(ha)) | ((u32)kf2b(b - kb2f(hb)) << 16); }");
        ck_line(&k, "    *(uint4 *)&Bh[r * 40 + c8] = make_uint4(hv[0], hv[1], hv[2], hv[3]);");
        ck_line(&k, "    *(uint4 *)&Bl[r * 40 + c8] = make_uint4(lv[0], lv[1], lv[2], lv[3]); }");
    } else {
        ck_line(&k, "    *(uint4 *)&Bh[r * 40 + c8] = rb[q]; }");
    }
    ck_line(&k, "  __syncthreads();");
    ck_line(&k, "  if (k0 + 32 < K) KLOAD(k0 + 32);");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int kk = 0; kk < 32; kk += 16) {");
    ck_line(&k, "    u32 ah[4][4], al[4][4], bh[4][2]%s;", f16 ? ", bl[4][2]" : "");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int mt = 0; mt < 4; mt++) { const int r = wm + mt * 16 + gid;");
    ck_line(&k, "      const int o0 = r * 40 + kk + tig * 2, o1 = (r + 8) * 40 + kk + tig * 2;");
    ck_line(&k, "      ah[mt][0] = *(const u32 *)&Ah[o0]; ah[mt][1] = *(const u32 *)&Ah[o1]; ah[mt][2] = *(const u32 *)&Ah[o0 + 8]; ah[mt][3] = *(const u32 *)&Ah[o1 + 8];");
    ck_line(&k, "      al[mt][0] = *(const u32 *)&Al[o0]; al[mt][1] = *(const u32 *)&Al[o1]; al[mt][2] = *(const u32 *)&Al[o0 + 8]; al[mt][3] = *(const u32 *)&Al[o1 + 8]; }");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int nt = 0; nt < 4; nt++) { const int o = (wn + nt * 8 + gid) * 40 + kk + tig * 2;");
    ck_line(&k, "      bh[nt][0] = *(const u32 *)&Bh[o]; bh[nt][1] = *(const u32 *)&Bh[o + 8];%s }",
            f16 ? " bl[nt][0] = *(const u32 *)&Bl[o]; bl[nt][1] = *(const u32 *)&Bl[o + 8];" : "");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int mt = 0; mt < 4; mt++) { _Pragma(\"unroll\") for (int nt = 0; nt < 4; nt++) {");
    ck_line(&k, "      kmma_bf16(acc[mt][nt], ah[mt], bh[nt]); kmma_bf16(acc[mt][nt], al[mt], bh[nt]);%s } }",
            f16 ? " kmma_bf16(acc[mt][nt], ah[mt], bl[nt]);" : "");
    ck_line(&k, "  }");
    ck_line(&k, "}");
    ck_line(&k, "#undef KLOAD");
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int mt = 0; mt < 4; mt++) {");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int nt = 0; nt < 4; nt++) {");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int e = 0; e < 4; e++) {");
    ck_line(&k, "      const i64 gm = m0 + wm + mt * 16 + gid + (e >> 1) * 8; const int gn = n0 + wn + nt * 8 + tig * 2 + (e & 1);");
    ck_line(&k, "      if (gm < M && gn < N) {");
    ck_line(&k, "        float v = acc[mt][nt][e];");
    if (bias >= 0)
        ck_line(&k, "        v += %s;", ck_load_as(&k, bias, "gn", "float"));
    cu_epilogue(&k, ni, "gm", "gn", "v");
    ck_line(&k, "      }");
    ck_line(&k, "    }");
    ck_line(&k, "  }");
    ck_line(&k, "}");
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch *L = cu_launch_k(c, &k, kern, N, 128, 1, 1);
    L->grid[1] = M;
    L->per[1] = 128;
    set_m_cond(L, M, 0);
    return 0;
}

/* Tiled f32 GEMM (64x64 tiles, 4x4 outputs per thread) for every weight
 * type; the general fallback. */
static int emit_gemm_simt(cu *c, int ni, int x, int w, int bias, kiln_dim M, int cond)
{
    const kiln_type *wt = cu_vt(c, w);
    int64_t N = wt->dims[0], K = wt->dims[1];
    ck k;
    ck_begin(c, &k, ni, 256);
    ck_line(&k, "const i64 M = %s; const int N = %lld, K = %lld;", ck_d(&k, M), (long long)N, (long long)K);
    ck_line(&k, "__shared__ float As[16][65], Bs[16][65];");
    ck_line(&k, "const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;");
    ck_line(&k, "const i64 m0 = (i64)blockIdx.y * 64; const int n0 = blockIdx.x * 64;");
    ck_line(&k, "float acc[4][4];");
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int i = 0; i < 4; i++) { _Pragma(\"unroll\") for (int j = 0; j < 4; j++) acc[i][j] = 0.f; }");
    ck_line(&k, "for (int k0 = 0; k0 < K; k0 += 16) {");
    ck_line(&k, "  for (int e = tid; e < 64 * 16; e += 256) {");
    ck_line(&k, "    const int r = e >> 4, kq = e & 15, gk = k0 + kq; const i64 gm = m0 + r; const int gn = n0 + r;");
    ck_line(&k, "    As[kq][r] = (gm < M && gk < K) ? %s : 0.f;", ck_load_as(&k, x, "gm * K + gk", "float"));
    ck_line(&k, "    Bs[kq][r] = (gn < N && gk < K) ? %s : 0.f;", w_elem(&k, w, "gn", "gk", K));
    ck_line(&k, "  }");
    ck_line(&k, "  __syncthreads();");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int kq = 0; kq < 16; kq++) {");
    ck_line(&k, "    float a[4], b[4];");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int i = 0; i < 4; i++) { a[i] = As[kq][ty + 16 * i]; b[i] = Bs[kq][tx + 16 * i]; }");
    ck_line(&k, "    #pragma unroll");
    ck_line(&k, "    for (int i = 0; i < 4; i++) { _Pragma(\"unroll\") for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j]; }");
    ck_line(&k, "  }");
    ck_line(&k, "  __syncthreads();");
    ck_line(&k, "}");
    ck_line(&k, "#pragma unroll");
    ck_line(&k, "for (int i = 0; i < 4; i++) {");
    ck_line(&k, "  #pragma unroll");
    ck_line(&k, "  for (int j = 0; j < 4; j++) {");
    ck_line(&k, "    const i64 gm = m0 + ty + 16 * i; const int gn = n0 + tx + 16 * j;");
    ck_line(&k, "    if (gm < M && gn < N) {");
    ck_line(&k, "      float v = acc[i][j];");
    if (bias >= 0)
        ck_line(&k, "      v += %s;", ck_load_as(&k, bias, "gn", "float"));
    cu_epilogue(&k, ni, "gm", "gn", "v");
    ck_line(&k, "    }");
    ck_line(&k, "  }");
    ck_line(&k, "}");
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch *L = cu_launch_k(c, &k, kern, N, 64, 1, 1);
    L->grid[1] = M;
    L->per[1] = 64;
    if (cond)
        set_m_cond(L, M, 0);
    return 0;
}

int cu_lower_linear(cu *c, int ni, int phase)
{
    const kiln_node *n = &c->g->nodes[ni];
    const cu_node_info *f = &c->ni[ni];
    int x = n->inputs[0], w = n->inputs[1], bias = n->n_inputs > 2 ? n->inputs[2] : -1, out = n->outputs[0];
    const kiln_type *wt = cu_vt(c, w), *xt = cu_vt(c, x);
    if (wt->rank != 2 || !KILN_DIM_IS_STATIC(wt->dims[0]) || !KILN_DIM_IS_STATIC(wt->dims[1]))
        return cu_fail(c, n, "Linear weight must have a static shape");
    kiln_dtype wdt = wt->dtype;
    if (!(wdt == KILN_F32 || wdt == KILN_F16 || wdt == KILN_BF16 || qname(wdt)))
        return cu_fail(c, n, "Linear weights of type %s are not supported", kiln_dtype_name(wdt));
    int fin = f->epi >= 0 ? c->g->nodes[f->epi].outputs[0] : out;
    if (!cu_dtype_ok(xt->dtype) || !cu_dtype_ok(cu_vt(c, fin)->dtype))
        return cu_fail(c, n, "Linear activations must be plain floats");
    kiln_dim M = cu_rows(c, x);
    int64_t Mmax = kiln_plan_dim(c->g, c->plan, M);
    int fast_x = xt->dtype == KILN_F32 && cu_vt(c, out)->dtype == KILN_F32;
    int want_gemv = fast_x && (!KILN_DIM_IS_STATIC(M) || M <= CU_GEMV_MAX_M);
    int want_gemm = !fast_x || !KILN_DIM_IS_STATIC(M) || M > CU_GEMV_MAX_M;
    if (Mmax >= 0 && Mmax <= CU_GEMV_MAX_M && fast_x)
        want_gemm = 0; /* the bounds never reach prefill sizes */
    /* phase 0 (at the node, when its epilogue ends later): only the SwiGLU
     * dual GEMV, which reads nothing but x; phase 1: everything else */
    if (want_gemv && f->dual_host && (phase == 0 || f->epi < 0)) {
        int64_t F = cu_vt(c, c->g->nodes[f->swiglu_mul].outputs[0])->dims[xt->rank - 1];
        gseg s[2] = {{f->dual_wg, -1, c->g->nodes[f->swiglu_mul].outputs[0], -1, f->dual_og, F},
                     {f->dual_wu, -1, -1, -1, f->dual_ou, F}};
        if (emit_gemv(c, ni, x, s, 2, 1, f->norm_of, M))
            return -1;
    }
    if (phase == 0)
        return 0;
    if (want_gemv && !f->dual_host && !f->swiglu_member && !(f->in_group && !f->group_head)) {
        gseg s[16];
        int nseg = 0;
        if (f->split >= 0) {
            const kiln_node *S = &c->g->nodes[f->split];
            int64_t off = 0;
            for (int i = 0; i < S->n_outputs && i < 16; i++) {
                int64_t sz = cu_vt(c, S->outputs[i])->dims[cu_vt(c, S->outputs[i])->rank - 1];
                s[nseg++] = (gseg){w, bias, S->outputs[i], -1, off, sz};
                off += sz;
            }
        } else {
            for (int q = ni; q >= 0 && nseg < 16; q = f->group_head ? c->ni[q].group_next : -1) {
                const kiln_node *Q = &c->g->nodes[q];
                s[nseg++] = (gseg){Q->inputs[1], Q->n_inputs > 2 ? Q->inputs[2] : -1, Q->outputs[0], q, 0,
                                   cu_vt(c, Q->inputs[1])->dims[0]};
            }
        }
        if (emit_gemv(c, ni, x, s, nseg, 0, f->norm_of, M))
            return -1;
    }
    if (want_gemm) {
        int tc = fast_x && (wdt == KILN_BF16 || wdt == KILN_F16) && wt->dims[1] % 32 == 0;
        if (tc)
            return emit_gemm_tc(c, ni, x, w, bias, M);
        return emit_gemm_simt(c, ni, x, w, bias, M, fast_x);
    }
    return 0;
}

/* ---- MatMul / Gemm / FusedMatMul ---- */

int cu_lower_matmul(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    int A = n->inputs[0], B = n->inputs[1], C = -1, ta = 0, tb = 0;
    double alpha = 1.0, beta = 1.0;
    if (!strcmp(op, "Gemm")) {
        ta = (int)kiln_node_int(n, "transA");
        tb = (int)kiln_node_int(n, "transB");
        alpha = kiln_node_float(n, "alpha");
        beta = kiln_node_float(n, "beta");
        if (n->n_inputs > 2 && n->inputs[2] >= 0)
            C = n->inputs[2];
    } else if (!strcmp(op, "FusedMatMul")) {
        if (kiln_node_int(n, "transBatchA") || kiln_node_int(n, "transBatchB"))
            return cu_fail(c, n, "FusedMatMul with transBatchA/B is not lowered yet");
        ta = (int)kiln_node_int(n, "transA");
        tb = (int)kiln_node_int(n, "transB");
        alpha = kiln_node_float(n, "alpha");
    }
    const kiln_type *at = cu_vt(c, A), *bt = cu_vt(c, B), *ot = cu_vt(c, n->outputs[0]);
    if (!cu_dtype_ok(at->dtype) || !cu_dtype_ok(bt->dtype) || !cu_dtype_ok(ot->dtype))
        return cu_fail(c, n, "operands must be plain element types (block-quantized weights go through Linear)");
    int a_vec = at->rank == 1, b_vec = bt->rank == 1, ar = at->rank, br = bt->rank, orank = ot->rank;
    int nbatch = orank - (a_vec ? 0 : 1) - (b_vec ? 0 : 1);
    const char *ct = ot->dtype == KILN_F64 ? "double" : kiln_dtype_get(ot->dtype)->is_float ? "double" : "i64";
    ck k;
    ck_begin(c, &k, ni, 256);
    ck_line(&k, "const i64 total = %s;", ck_prod(&k, ot, 0, orank));
    ck_line(&k, "const i64 o = (i64)blockIdx.x * blockDim.x + threadIdx.x;");
    ck_line(&k, "if (o >= total) return;");
    /* output index: batch..., m (unless a is a vector), n (unless b is) */
    ck_line(&k, "i64 rem = o;");
    for (int d = orank - 1; d >= 0; d--)
        ck_line(&k, "const i64 o%d = rem %% %s; rem /= %s;", d, ck_d(&k, ot->dims[d]), ck_d(&k, ot->dims[d]));
    const char *m = a_vec ? "0LL" : ck_s(&k, "o%d", nbatch);
    const char *nn = b_vec ? "0LL" : ck_s(&k, "o%d", orank - 1);
    /* A element (m, kk) and B element (kk, n) offsets with broadcast batches */
    kiln_sb ao = {0}, bo = {0};
    kiln_sb_printf(&ao, "0LL");
    kiln_sb_printf(&bo, "0LL");
    int a_nb = a_vec ? 0 : ar - 2, b_nb = b_vec ? 0 : br - 2;
    for (int d = 0; d < nbatch; d++) {
        int ia = d - (nbatch - a_nb), ib = d - (nbatch - b_nb);
        if (ia >= 0 && !(KILN_DIM_IS_STATIC(at->dims[ia]) && at->dims[ia] == 1 && ot->dims[d] != 1))
            kiln_sb_printf(&ao, " + o%d * %s", d, ck_prod(&k, at, ia + 1, ar));
        if (ib >= 0 && !(KILN_DIM_IS_STATIC(bt->dims[ib]) && bt->dims[ib] == 1 && ot->dims[d] != 1))
            kiln_sb_printf(&bo, " + o%d * %s", d, ck_prod(&k, bt, ib + 1, br));
    }
    const char *Kd, *a_m, *a_k, *b_k, *b_n;
    if (a_vec) {
        a_m = "0LL";
        a_k = "1LL";
        Kd = ck_d(&k, at->dims[0]);
    } else {
        a_m = ta ? "1LL" : ck_d(&k, at->dims[ar - 1]);
        a_k = ta ? ck_d(&k, at->dims[ar - 1]) : "1LL";
        Kd = ck_d(&k, ta ? at->dims[ar - 2] : at->dims[ar - 1]);
    }
    if (b_vec) {
        b_k = "1LL";
        b_n = "0LL";
    } else {
        b_k = tb ? "1LL" : ck_d(&k, bt->dims[br - 1]);
        b_n = tb ? ck_d(&k, bt->dims[br - 1]) : "1LL";
    }
    ck_line(&k, "const i64 ab = %s + %s * %s, bb = %s + %s * %s;", ao.s, m, a_m, bo.s, nn, b_n);
    kiln_sb_free(&ao);
    kiln_sb_free(&bo);
    ck_line(&k, "%s acc = 0;", ct);
    ck_line(&k, "for (i64 kk = 0; kk < %s; kk++) acc += %s * %s;", Kd, ck_load_as(&k, A, ck_s(&k, "ab + kk * %s", a_k), ct),
            ck_load_as(&k, B, ck_s(&k, "bb + kk * %s", b_k), ct));
    if (strcmp(ct, "i64")) {
        if (alpha != 1.0)
            ck_line(&k, "acc *= %.17g;", alpha);
        if (C >= 0) {
            const kiln_type *cct = cu_vt(c, C);
            /* C broadcasts against [M, N] */
            const char *ci = "0LL";
            if (cct->rank == 2)
                ci = ck_s(&k, "%s%s", !(KILN_DIM_IS_STATIC(cct->dims[0]) && cct->dims[0] == 1) ? ck_s(&k, "%s * %s + ", m, ck_d(&k, cct->dims[1])) : "",
                          !(KILN_DIM_IS_STATIC(cct->dims[1]) && cct->dims[1] == 1) ? nn : "0LL");
            else if (cct->rank == 1)
                ci = !(KILN_DIM_IS_STATIC(cct->dims[0]) && cct->dims[0] == 1) ? nn : "0LL";
            ck_line(&k, "acc += %s * %.17g;", ck_load_as(&k, C, ci, "double"), beta);
        }
    }
    if (c->ni[ni].epi >= 0) { /* kiln's kernel group: the elementwise chain after it */
        const char *N = ck_d(&k, ot->dims[orank - 1]);
        ck_line(&k, "const float v = (float)acc;");
        cu_epilogue(&k, ni, ck_s(&k, "(o / %s)", N), ck_s(&k, "(o %% %s)", N), "v");
    } else {
        ck_store(&k, n->outputs[0], "o", "acc", ct);
    }
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch_k(c, &k, kern, cu_dprod(c, ot, 0, orank), 256, 1, 1);
    return 0;
}

/* ---- Dequantize, Gather from a block-quantized table ---- */

int cu_lower_dequant(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    int gather = !strcmp(n->op->name, "Gather");
    const kiln_type *wt = cu_vt(c, n->inputs[0]), *ot = cu_vt(c, n->outputs[0]);
    if (!kiln_dtype_get(wt->dtype)->is_quant) {
        if (!cu_dtype_ok(wt->dtype))
            return cu_fail(c, n, "element type %s is not supported", kiln_dtype_name(wt->dtype));
        ck k;
        ck_begin(c, &k, ni, 256);
        ck_line(&k, "const i64 total = %s, i = (i64)blockIdx.x * blockDim.x + threadIdx.x;", ck_prod(&k, ot, 0, ot->rank));
        ck_line(&k, "if (i >= total) return;");
        ck_store(&k, n->outputs[0], "i", ck_load_as(&k, n->inputs[0], "i", "float"), "float");
        int kern = ck_end(&k);
        if (kern < 0)
            return -1;
        cu_launch_k(c, &k, kern, cu_dprod(c, ot, 0, ot->rank), 256, 1, 1);
        return 0;
    }
    if (!qname(wt->dtype))
        return cu_fail(c, n, "block format %s is not supported", kiln_dtype_name(wt->dtype));
    int64_t K = wt->dims[wt->rank - 1];
    if (!KILN_DIM_IS_STATIC(K))
        return cu_fail(c, n, "quantized rows must have a static length");
    if (gather && (kiln_node_int(n, "axis") != 0 || wt->rank != 2))
        return cu_fail(c, n, "quantized Gather must take rows (axis 0) of a 2-D table");
    if (ot->dtype != KILN_F32)
        return cu_fail(c, n, "dequantized rows must be f32");
    ck k;
    ck_begin(c, &k, ni, 256);
    ck_line(&k, "const i64 K = %lldLL, total = %s, i = (i64)blockIdx.x * blockDim.x + threadIdx.x;", (long long)K,
            ck_prod(&k, ot, 0, ot->rank));
    ck_line(&k, "if (i >= total) return;");
    ck_line(&k, "const i64 r = i / K, kk = i %% K;");
    const char *row = "r";
    if (gather) {
        ck_line(&k, "i64 src = %s; if (src < 0) src += %s;", ck_load_as(&k, n->inputs[1], "r", "i64"), ck_d(&k, wt->dims[0]));
        row = "src";
    }
    ck_store(&k, n->outputs[0], "i",
             ck_s(&k, "kq_%s(%s + %s * %lldLL, kk)", qname(wt->dtype), ck_ptr(&k, n->inputs[0]), row,
                  (long long)kiln_dtype_storage(wt->dtype, K)),
             "float");
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch_k(c, &k, kern, cu_dprod(c, ot, 0, ot->rank), 256, 1, 1);
    return 0;
}
