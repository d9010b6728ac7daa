/* ops_linalg.c - matrix products and weight dequantization: MatMul, Gemm,
 * FusedMatMul (com.microsoft), Einsum, and the kiln-only Linear and
 * Dequantize that LLM frontends use for projections with GGML weights.
 *
 * The batched products share one kernel: each operand is described as a
 * strided view (so transposes cost nothing), every matrix slice is packed
 * once into a contiguous buffer (B transposed, so the inner loop is a dot
 * product over contiguous memory) and sums are accumulated in double, or in
 * wrapping int64 for integer types. */
#include "op_util.h"

/* ---- shared helpers ---- */

/* Element i of a plain tensor as double; f32 inline since it dominates. */
static inline double ld(const kiln_tensor *t, int64_t i)
{
    if (t->dtype == KILN_F32)
        return ((const float *)t->data)[i];
    return kiln_load_f64(t->dtype, t->data, i);
}

static inline void st(kiln_tensor *t, int64_t i, double v)
{
    if (t->dtype == KILN_F32)
        ((float *)t->data)[i] = (float)v;
    else
        kiln_store_f64(t->dtype, t->data, i, v);
}

/* Wrapping integer arithmetic (unsigned, so overflow is defined). */
static inline int64_t iadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static inline int64_t imul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }

/* Input i must be a plain (not block-quantized) numeric tensor. */
static int check_numeric(kiln_infer_ctx *c, int i, int allow_int)
{
    const kiln_dtype_info *di = kiln_dtype_get(c->in[i]->dtype);
    if (di->is_quant)
        return OPERR(c, "input %d: block-quantized %s needs Dequantize (or Linear) first", i,
                     di->name);
    if (!(di->is_float || (allow_int && di->is_int)))
        return OPERR(c, "input %d: element type %s not supported", i, di->name);
    return 0;
}

static int check_same_dtype(kiln_infer_ctx *c, int i, int j)
{
    if (c->in[i]->dtype != c->in[j]->dtype)
        return OPERR(c, "input %d is %s but input %d is %s", j, kiln_dtype_name(c->in[j]->dtype), i,
                     kiln_dtype_name(c->in[i]->dtype));
    return 0;
}

/* Two dims that must be equal: static disagreement is an error; otherwise
 * the more informative one is kept. */
static int dims_match(kiln_infer_ctx *c, kiln_dim a, kiln_dim b, kiln_dim *out, const char *what)
{
    if (KILN_DIM_IS_STATIC(a) && KILN_DIM_IS_STATIC(b) && a != b)
        return OPERR(c, "%s: %lld vs %lld", what, (long long)a, (long long)b);
    *out = KILN_DIM_IS_STATIC(a) || b == KILN_DIM_ANY ? a : b;
    return 0;
}

/* ---- batched matrix product kernel ---- */

/* A strided view of a tensor: a permutation of its dims. */
typedef struct mm_view {
    const kiln_tensor *t;
    int rank;
    int64_t dims[KILN_MAX_RANK];
    int64_t st[KILN_MAX_RANK];
} mm_view;

/* perm == NULL: identity. */
static void mm_view_make(mm_view *v, const kiln_tensor *t, const int *perm)
{
    int64_t own[KILN_MAX_RANK];
    kiln_strides(t->dims, t->rank, own);
    v->t = t;
    v->rank = t->rank;
    for (int i = 0; i < t->rank; i++) {
        int p = perm ? perm[i] : i;
        v->dims[i] = t->dims[p];
        v->st[i] = own[p];
    }
}

/* Packs the [rows, K] matrix at base offset `off` (row stride rs, column
 * stride cs) into dst, as double or int64. */
static void mm_pack(const kiln_tensor *t, int64_t off, int64_t rows, int64_t K, int64_t rs,
                    int64_t cs, int is_int, double *dst, int64_t *idst)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < K; k++) {
            int64_t i = off + r * rs + k * cs;
            if (is_int)
                idst[r * K + k] = kiln_load_i64(t->dtype, t->data, i);
            else
                dst[r * K + k] = ld(t, i);
        }
}

/* res[batch..., M, N] = A @ B with numpy matmul semantics (1-D operands
 * promoted and their unit dim dropped, batch dims broadcast). Writes doubles
 * into res or int64 into ires (whichever matches is_int); both hold numel
 * of the output. Shapes were checked by inference. */
static void mm_compute(const mm_view *a, const mm_view *b, int is_int, double *res, int64_t *ires)
{
    int ra = a->rank, rb = b->rank;
    int64_t M = ra == 1 ? 1 : a->dims[ra - 2], K = a->dims[ra - 1];
    int64_t N = rb == 1 ? 1 : b->dims[rb - 1];
    int64_t a_rs = ra == 1 ? 0 : a->st[ra - 2], a_cs = a->st[ra - 1];
    int64_t b_ks = rb == 1 ? b->st[0] : b->st[rb - 2], b_ns = rb == 1 ? 0 : b->st[rb - 1];
    int nba = ra > 2 ? ra - 2 : 0, nbb = rb > 2 ? rb - 2 : 0;
    int nb = nba > nbb ? nba : nbb;
    int64_t bd[KILN_MAX_RANK], sa[KILN_MAX_RANK], sb[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0};
    int64_t nbatch = 1;
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - nba), ib = i - (nb - nbb);
        int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
        bd[i] = da == 1 ? db : da;
        sa[i] = ia >= 0 && da != 1 ? a->st[ia] : 0;
        sb[i] = ib >= 0 && db != 1 ? b->st[ib] : 0;
        nbatch *= bd[i];
    }
    if (nbatch == 0 || M == 0 || N == 0)
        return;
    size_t an = (size_t)(M * K) + 1, bn = (size_t)(N * K) + 1;
    double *pa = NULL, *pb = NULL;
    int64_t *ipa = NULL, *ipb = NULL;
    if (is_int) {
        ipa = kiln_xmalloc(an * sizeof *ipa);
        ipb = kiln_xmalloc(bn * sizeof *ipb);
    } else {
        pa = kiln_xmalloc(an * sizeof *pa);
        pb = kiln_xmalloc(bn * sizeof *pb);
    }
    int64_t offa = 0, offb = 0, last_a = -1, last_b = -1;
    for (int64_t bi = 0; bi < nbatch; bi++) {
        /* broadcast operands (weights) are packed once, not per batch */
        if (offa != last_a)
            mm_pack(a->t, offa, M, K, a_rs, a_cs, is_int, pa, ipa);
        if (offb != last_b)
            mm_pack(b->t, offb, N, K, b_ns, b_ks, is_int, pb, ipb);
        last_a = offa;
        last_b = offb;
        int64_t base = bi * M * N;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                if (is_int) {
                    const int64_t *x = ipa + m * K, *y = ipb + n * K;
                    int64_t s = 0;
                    for (int64_t k = 0; k < K; k++)
                        s = iadd(s, imul(x[k], y[k]));
                    ires[base + m * N + n] = s;
                } else {
                    const double *x = pa + m * K, *y = pb + n * K;
                    double s = 0;
                    for (int64_t k = 0; k < K; k++)
                        s += x[k] * y[k];
                    res[base + m * N + n] = s;
                }
            }
        for (int d = nb - 1; d >= 0; d--) {
            idx[d]++;
            offa += sa[d];
            offb += sb[d];
            if (idx[d] < bd[d])
                break;
            offa -= sa[d] * idx[d];
            offb -= sb[d] * idx[d];
            idx[d] = 0;
        }
    }
    free(pa);
    free(pb);
    free(ipa);
    free(ipb);
}

/* Output type of a matrix product of operands with (already transposed)
 * types a and b. */
static int mm_out_type(kiln_infer_ctx *c, const kiln_type *a, const kiln_type *b, kiln_type *out)
{
    if (a->rank == 0 || b->rank == 0)
        return OPERR(c, "operands must have rank >= 1 (got %d and %d)", a->rank, b->rank);
    if (a->rank < 0 || b->rank < 0) {
        *out = kiln_type_make(a->dtype, -1, NULL);
        return 0;
    }
    kiln_dim k;
    if (dims_match(c, a->dims[a->rank - 1], b->rank == 1 ? b->dims[0] : b->dims[b->rank - 2], &k,
                   "inner dimensions of the product differ"))
        return -1;
    kiln_type ba = kiln_type_make(a->dtype, a->rank > 2 ? a->rank - 2 : 0, a->dims);
    kiln_type bb = kiln_type_make(b->dtype, b->rank > 2 ? b->rank - 2 : 0, b->dims);
    kiln_type r;
    if (kiln_bcast_type(c, &ba, &bb, &r))
        return -1;
    if (a->rank > 1)
        r.dims[r.rank++] = a->dims[a->rank - 2];
    if (b->rank > 1)
        r.dims[r.rank++] = b->dims[b->rank - 1];
    r.dtype = a->dtype;
    *out = r;
    return 0;
}

/* Stores a computed product into out, scaled by alpha (float path). */
static void mm_store(kiln_tensor *out, int is_int, const double *res, const int64_t *ires,
                     double alpha)
{
    int64_t n = kiln_tensor_numel(out);
    for (int64_t i = 0; i < n; i++) {
        if (is_int)
            kiln_store_i64(out->dtype, out->data, i, ires[i]);
        else
            st(out, i, alpha * res[i]);
    }
}

/* Runs the kernel on two views and stores into c->out[0]. */
static int mm_run(kiln_eval_ctx *c, const mm_view *a, const mm_view *b, double alpha)
{
    kiln_tensor *o = c->out[0];
    int is_int = kiln_dtype_is_intlike(o->dtype);
    size_t n = (size_t)kiln_tensor_numel(o);
    double *res = is_int ? NULL : kiln_xcalloc(n ? n : 1, sizeof *res);
    int64_t *ires = is_int ? kiln_xcalloc(n ? n : 1, sizeof *ires) : NULL;
    mm_compute(a, b, is_int, res, ires);
    mm_store(o, is_int, res, ires, alpha);
    free(res);
    free(ires);
    return 0;
}

/* ---- MatMul ---- */

static int matmul_infer(kiln_infer_ctx *c)
{
    if (check_numeric(c, 0, 1) || check_numeric(c, 1, 1) || check_same_dtype(c, 0, 1))
        return -1;
    return mm_out_type(c, c->in[0], c->in[1], &c->out[0]);
}

static int matmul_eval(kiln_eval_ctx *c)
{
    mm_view a, b;
    mm_view_make(&a, c->in[0], NULL);
    mm_view_make(&b, c->in[1], NULL);
    return mm_run(c, &a, &b, 1.0);
}

static const kiln_op_def op_matmul = {
    "MatMul", 2, 2, 1, 1, NULL, 0, matmul_infer, matmul_eval,
    "matrix product with numpy semantics (1-D promotion, batch broadcasting)", NULL};

/* ---- FusedMatMul (com.microsoft) ----
 * alpha * op(A) @ op(B), where op moves the first dim of a batched operand
 * just before the matrix dims (transBatch: [d0, d1.., dr-2, dr-1] ->
 * [d1.., dr-2, d0, dr-1]) and then swaps the last two (trans). Rank-1
 * operands are never transposed. */

static void fmm_perm(int rank, int trans, int tbatch, int *perm)
{
    if (rank < 2) {
        perm[0] = 0;
        return;
    }
    int n = 0;
    for (int i = tbatch ? 1 : 0; i < (tbatch ? rank - 1 : rank - 2); i++)
        perm[n++] = i;
    int row = tbatch ? 0 : rank - 2, col = rank - 1;
    perm[n++] = trans ? col : row;
    perm[n++] = trans ? row : col;
}

static void fmm_perms(const kiln_node *node, int ra, int rb, int *pa, int *pb)
{
    fmm_perm(ra, (int)kiln_node_int(node, "transA"), (int)kiln_node_int(node, "transBatchA"), pa);
    fmm_perm(rb, (int)kiln_node_int(node, "transB"), (int)kiln_node_int(node, "transBatchB"), pb);
}

static int fusedmatmul_infer(kiln_infer_ctx *c)
{
    if (check_numeric(c, 0, 0) || check_numeric(c, 1, 0) || check_same_dtype(c, 0, 1))
        return -1;
    const kiln_type *a = c->in[0], *b = c->in[1];
    if (a->rank < 0 || b->rank < 0)
        return mm_out_type(c, a, b, &c->out[0]);
    int pa[KILN_MAX_RANK], pb[KILN_MAX_RANK];
    fmm_perms(c->node, a->rank, b->rank, pa, pb);
    kiln_type ta = *a, tb = *b;
    for (int i = 0; i < a->rank; i++)
        ta.dims[i] = a->dims[pa[i]];
    for (int i = 0; i < b->rank; i++)
        tb.dims[i] = b->dims[pb[i]];
    return mm_out_type(c, &ta, &tb, &c->out[0]);
}

static int fusedmatmul_eval(kiln_eval_ctx *c)
{
    int pa[KILN_MAX_RANK], pb[KILN_MAX_RANK];
    fmm_perms(c->node, c->in[0]->rank, c->in[1]->rank, pa, pb);
    mm_view a, b;
    mm_view_make(&a, c->in[0], pa);
    mm_view_make(&b, c->in[1], pb);
    return mm_run(c, &a, &b, kiln_node_float(c->node, "alpha"));
}

static const kiln_attr_spec attrs_fusedmatmul[] = {
    {"alpha", KILN_ATTR_FLOAT, 0, 0, 1.0, 0},  {"transA", KILN_ATTR_INT, 0, 0, 0, 0},
    {"transB", KILN_ATTR_INT, 0, 0, 0, 0},     {"transBatchA", KILN_ATTR_INT, 0, 0, 0, 0},
    {"transBatchB", KILN_ATTR_INT, 0, 0, 0, 0}, {0}};

static const kiln_op_def op_fusedmatmul = {
    "FusedMatMul", 2, 2, 1, 1, attrs_fusedmatmul, 0, fusedmatmul_infer, fusedmatmul_eval,
    "alpha * MatMul with optional transposes of the matrix and batch dims (com.microsoft)", NULL};

/* ---- Gemm ---- */

static int gemm_infer(kiln_infer_ctx *c)
{
    if (check_numeric(c, 0, 1) || check_numeric(c, 1, 1) || check_same_dtype(c, 0, 1))
        return -1;
    const kiln_type *a = c->in[0], *b = c->in[1], *cc = c->n_inputs > 2 ? c->in[2] : NULL;
    if (cc && (check_numeric(c, 2, 1) || check_same_dtype(c, 0, 2)))
        return -1;
    if ((a->rank >= 0 && a->rank != 2) || (b->rank >= 0 && b->rank != 2))
        return OPERR(c, "A and B must be 2-D (got rank %d and %d)", a->rank, b->rank);
    int ta = kiln_node_int(c->node, "transA") != 0, tb = kiln_node_int(c->node, "transB") != 0;
    kiln_dim m = a->rank == 2 ? a->dims[ta ? 1 : 0] : KILN_DIM_ANY;
    kiln_dim ka = a->rank == 2 ? a->dims[ta ? 0 : 1] : KILN_DIM_ANY;
    kiln_dim kb = b->rank == 2 ? b->dims[tb ? 1 : 0] : KILN_DIM_ANY;
    kiln_dim n = b->rank == 2 ? b->dims[tb ? 0 : 1] : KILN_DIM_ANY, k;
    if (dims_match(c, ka, kb, &k, "inner dimensions of A and B differ"))
        return -1;
    kiln_dim od[2] = {m, n};
    if (cc && cc->rank >= 0) {
        /* C broadcasts one way, to [M, N] */
        if (cc->rank > 2)
            return OPERR(c, "C must have rank <= 2, got %d", cc->rank);
        for (int i = 0; i < cc->rank; i++) {
            kiln_dim d = cc->dims[i], want = od[2 - cc->rank + i];
            if (KILN_DIM_IS_STATIC(d) && d != 1 && KILN_DIM_IS_STATIC(want) && d != want)
                return OPERR(c, "C dimension %d is %lld, cannot broadcast to %lld", i,
                             (long long)d, (long long)want);
        }
    }
    c->out[0] = kiln_type_make(a->dtype, 2, od);
    return 0;
}

static int gemm_eval(kiln_eval_ctx *c)
{
    int ta = kiln_node_int(c->node, "transA") != 0, tb = kiln_node_int(c->node, "transB") != 0;
    double alpha = kiln_node_float(c->node, "alpha"), beta = kiln_node_float(c->node, "beta");
    static const int id[2] = {0, 1}, sw[2] = {1, 0};
    mm_view a, b;
    mm_view_make(&a, c->in[0], ta ? sw : id);
    mm_view_make(&b, c->in[1], tb ? sw : id);
    const kiln_tensor *cc = c->n_inputs > 2 ? c->in[2] : NULL;
    kiln_tensor *o = c->out[0];
    int is_int = kiln_dtype_is_intlike(o->dtype);
    /* integers stay exact unless a scale forces fractions */
    int exact = is_int && alpha == 1.0 && (beta == 1.0 || !cc);
    size_t n = (size_t)kiln_tensor_numel(o);
    double *res = is_int ? NULL : kiln_xcalloc(n ? n : 1, sizeof *res);
    int64_t *ires = is_int ? kiln_xcalloc(n ? n : 1, sizeof *ires) : NULL;
    mm_compute(&a, &b, is_int, res, ires);
    int64_t cst[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0}, off = 0;
    if (cc)
        kiln_bcast_strides(cc, 2, o->dims, cst);
    for (int64_t i = 0; i < (int64_t)n; i++) {
        if (exact) {
            int64_t v = ires[i];
            if (cc)
                v = iadd(v, kiln_load_i64(cc->dtype, cc->data, off));
            kiln_store_i64(o->dtype, o->data, i, v);
        } else {
            double v = alpha * (is_int ? (double)ires[i] : res[i]);
            if (cc && beta != 0) /* beta = 0 ignores C entirely, NaNs included */
                v += beta * ld(cc, off);
            st(o, i, v);
        }
        if (cc)
            kiln_next_index(idx, o->dims, 2, 1, &off, &cst);
    }
    free(res);
    free(ires);
    return 0;
}

static const kiln_attr_spec attrs_gemm[] = {{"alpha", KILN_ATTR_FLOAT, 0, 0, 1.0, 0},
                                            {"beta", KILN_ATTR_FLOAT, 0, 0, 1.0, 0},
                                            {"transA", KILN_ATTR_INT, 0, 0, 0, 0},
                                            {"transB", KILN_ATTR_INT, 0, 0, 0, 0},
                                            {0}};

static const kiln_op_def op_gemm = {"Gemm", 2, 3, 1, 1, attrs_gemm, 0, gemm_infer, gemm_eval,
                                    "alpha * op(A) @ op(B) + beta * C (2-D; C broadcasts)", NULL};

/* ---- Einsum ----
 * Labels are letters; "..." stands for broadcast dims. Internally a label
 * is a small number: 'A'-'Z' -> 0..25, 'a'-'z' -> 26..51 (so sorting ids
 * sorts as ASCII, which is numpy's implicit output order) and ellipsis dim
 * j -> 52 + j, right-aligned across operands. */

#define ES_LETTERS 52
#define ES_MAX_LABELS (ES_LETTERS + KILN_MAX_RANK)

typedef struct es_plan {
    int nin;
    int rank[KILN_MAX_OP_INPUTS];
    uint8_t lab[KILN_MAX_OP_INPUTS][KILN_MAX_RANK]; /* label of each operand dim */
    int ell_rank;                                   /* broadcast rank of "..." */
    int nout;
    uint8_t out[KILN_MAX_RANK]; /* output labels in order */
    int nsum;
    uint8_t sum[ES_MAX_LABELS]; /* labels summed over */
} es_plan;

static int es_letter(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return 26 + ch - 'a';
    return -1;
}

/* Parses one term ("ij", "...ij", "i...j") into letters and the position of
 * the ellipsis among them (-1 if none). Returns the letter count. */
static int es_term(kiln_err *err, const char *s, size_t len, int *letters, int *ell_at)
{
    int n = 0;
    *ell_at = -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            if (*ell_at >= 0 || i + 2 >= len || s[i + 1] != '.' || s[i + 2] != '.')
                return kiln_errf(err, "equation: malformed '...' in term '%.*s'", (int)len, s);
            *ell_at = n;
            i += 2;
            continue;
        }
        int l = es_letter(s[i]);
        if (l < 0)
            return kiln_errf(err, "equation: bad character '%c' in term '%.*s'", s[i], (int)len, s);
        if (n >= ES_MAX_LABELS)
            return kiln_errf(err, "equation: term '%.*s' too long", (int)len, s);
        letters[n++] = l;
    }
    return n;
}

/* Builds the plan for operands of the given ranks. */
static int es_parse(kiln_err *err, const char *eq, int nin, const int *ranks, es_plan *p)
{
    char buf[512];
    size_t n = 0;
    for (const char *s = eq; *s; s++)
        if (*s != ' ' && *s != '\t') {
            if (n + 1 >= sizeof buf)
                return kiln_errf(err, "equation too long");
            buf[n++] = *s;
        }
    buf[n] = 0;
    memset(p, 0, sizeof *p);
    p->nin = nin;
    const char *arrow = strstr(buf, "->");
    size_t lhs_len = arrow ? (size_t)(arrow - buf) : n;
    if (arrow && strstr(arrow + 2, "->"))
        return kiln_errf(err, "equation '%s' has more than one '->'", eq);
    int letters[KILN_MAX_OP_INPUTS][ES_MAX_LABELS], nlet[KILN_MAX_OP_INPUTS],
        ell_at[KILN_MAX_OP_INPUTS];
    int count[ES_LETTERS] = {0};
    size_t pos = 0;
    for (int i = 0; i < nin; i++) {
        size_t end = pos;
        while (end < lhs_len && buf[end] != ',')
            end++;
        if ((end == lhs_len) != (i == nin - 1))
            return kiln_errf(err, "equation '%s' has %s terms than the %d inputs", eq,
                             end == lhs_len ? "fewer" : "more", nin);
        nlet[i] = es_term(err, buf + pos, end - pos, letters[i], &ell_at[i]);
        if (nlet[i] < 0)
            return -1;
        int ell_n = ranks[i] - nlet[i];
        if (ell_at[i] < 0 ? ell_n != 0 : ell_n < 0)
            return kiln_errf(err, "equation term %d '%.*s' does not fit input rank %d", i,
                             (int)(end - pos), buf + pos, ranks[i]);
        if (ranks[i] > KILN_MAX_RANK)
            return kiln_errf(err, "input %d rank too large", i);
        if (ell_at[i] >= 0 && ell_n > p->ell_rank)
            p->ell_rank = ell_n;
        for (int k = 0; k < nlet[i]; k++)
            count[letters[i][k]]++;
        pos = end + 1;
    }
    /* expand each operand's labels now that the ellipsis rank is known */
    for (int i = 0; i < nin; i++) {
        int ell_n = ranks[i] - nlet[i], d = 0;
        p->rank[i] = ranks[i];
        for (int k = 0; k <= nlet[i]; k++) {
            if (k == ell_at[i])
                for (int j = 0; j < ell_n; j++)
                    p->lab[i][d++] = (uint8_t)(ES_LETTERS + p->ell_rank - ell_n + j);
            if (k < nlet[i])
                p->lab[i][d++] = (uint8_t)letters[i][k];
        }
    }
    int in_out[ES_MAX_LABELS] = {0};
    if (arrow) {
        int ol[ES_MAX_LABELS], oell;
        const char *os = arrow + 2;
        int no = es_term(err, os, strlen(os), ol, &oell);
        if (no < 0)
            return -1;
        if (oell < 0 && p->ell_rank > 0)
            return kiln_errf(err, "equation '%s': inputs broadcast over '...' but the output "
                             "has none", eq);
        if (no + (oell >= 0 ? p->ell_rank : 0) > KILN_MAX_RANK)
            return kiln_errf(err, "equation '%s': output rank too large", eq);
        for (int k = 0; k <= no; k++) {
            if (k == oell)
                for (int j = 0; j < p->ell_rank; j++)
                    p->out[p->nout++] = (uint8_t)(ES_LETTERS + j);
            if (k == no)
                break;
            if (!count[ol[k]])
                return kiln_errf(err, "equation '%s': output label '%c' is not in any input", eq,
                                 os[k + (oell >= 0 && k >= oell ? 3 : 0)]);
            if (in_out[ol[k]])
                return kiln_errf(err, "equation '%s': output label repeated", eq);
            in_out[ol[k]] = 1;
            p->out[p->nout++] = (uint8_t)ol[k];
        }
        for (int j = 0; j < p->ell_rank; j++)
            in_out[ES_LETTERS + j] = 1;
    } else {
        /* implicit: broadcast dims, then letters used exactly once, sorted */
        for (int j = 0; j < p->ell_rank; j++) {
            p->out[p->nout++] = (uint8_t)(ES_LETTERS + j);
            in_out[ES_LETTERS + j] = 1;
        }
        for (int l = 0; l < ES_LETTERS; l++)
            if (count[l] == 1) {
                if (p->nout >= KILN_MAX_RANK)
                    return kiln_errf(err, "equation '%s': output rank too large", eq);
                p->out[p->nout++] = (uint8_t)l;
                in_out[l] = 1;
            }
    }
    for (int l = 0; l < ES_LETTERS; l++)
        if (count[l] && !in_out[l])
            p->sum[p->nsum++] = (uint8_t)l;
    return 0;
}

static int einsum_infer(kiln_infer_ctx *c)
{
    int ranks[KILN_MAX_OP_INPUTS];
    for (int i = 0; i < c->n_inputs; i++) {
        if (!c->in[i])
            return OPERR(c, "input %d is absent", i);
        if (check_numeric(c, i, 1) || check_same_dtype(c, 0, i))
            return -1;
        if (c->in[i]->rank < 0) {
            c->out[0] = kiln_type_make(c->in[0]->dtype, -1, NULL);
            return 0;
        }
        ranks[i] = c->in[i]->rank;
    }
    es_plan p;
    if (es_parse(c->err, kiln_node_string(c->node, "equation"), c->n_inputs, ranks, &p))
        return -1;
    kiln_dim size[ES_MAX_LABELS];
    int seen[ES_MAX_LABELS] = {0};
    for (int i = 0; i < p.nin; i++)
        for (int d = 0; d < p.rank[i]; d++) {
            int l = p.lab[i][d];
            kiln_dim v = c->in[i]->dims[d], s = size[l];
            /* sizes must agree, except that a unit dim broadcasts */
            if (!seen[l] || s == 1 || s == KILN_DIM_ANY)
                size[l] = v;
            else if (v == 1 || v == KILN_DIM_ANY || v == s)
                ;
            else if (KILN_DIM_IS_STATIC(v) && KILN_DIM_IS_STATIC(s))
                return OPERR(c, "input %d dimension %d is %lld, but the label has size %lld", i, d,
                             (long long)v, (long long)s);
            else if (KILN_DIM_IS_STATIC(v))
                size[l] = v; /* a symbol that must equal it (or be 1) */
            seen[l] = 1;
        }
    kiln_dim od[KILN_MAX_RANK];
    for (int k = 0; k < p.nout; k++)
        od[k] = size[p.out[k]];
    c->out[0] = kiln_type_make(c->in[0]->dtype, p.nout, od);
    return 0;
}

static int einsum_eval(kiln_eval_ctx *c)
{
    int ranks[KILN_MAX_OP_INPUTS];
    for (int i = 0; i < c->n_inputs; i++)
        ranks[i] = c->in[i]->rank;
    es_plan p;
    if (es_parse(c->err, kiln_node_string(c->node, "equation"), c->n_inputs, ranks, &p))
        return -1;
    int nin = p.nin;
    int64_t size[ES_MAX_LABELS];
    for (int l = 0; l < ES_MAX_LABELS; l++)
        size[l] = -1;
    for (int i = 0; i < nin; i++)
        for (int d = 0; d < p.rank[i]; d++) {
            int l = p.lab[i][d];
            int64_t v = c->in[i]->dims[d];
            for (int e = 0; e < d; e++) /* a diagonal needs equal dims */
                if (p.lab[i][e] == l && c->in[i]->dims[e] != v)
                    return OPERR(c, "input %d: dims %d and %d share a label but are %lld and %lld",
                                 i, e, d, (long long)c->in[i]->dims[e], (long long)v);
            if (size[l] < 0 || size[l] == 1)
                size[l] = v;
            else if (v != 1 && v != size[l])
                return OPERR(c, "input %d dimension %d is %lld, but the label has size %lld", i, d,
                             (long long)v, (long long)size[l]);
        }
    /* loop order: output labels, then summed labels innermost */
    int L = 0;
    uint8_t order[ES_MAX_LABELS];
    int64_t sz[ES_MAX_LABELS], out_n = 1, sum_n = 1;
    for (int k = 0; k < p.nout; k++) {
        order[L] = p.out[k];
        sz[L] = size[p.out[k]] < 0 ? 1 : size[p.out[k]];
        out_n *= sz[L++];
    }
    for (int k = 0; k < p.nsum; k++) {
        order[L] = p.sum[k];
        sz[L] = size[p.sum[k]];
        sum_n *= sz[L++];
    }
    kiln_tensor *o = c->out[0];
    if (out_n == 0 || sum_n == 0)
        return 0; /* empty output, or sums over nothing: zeros as allocated */
    /* per operand, the stride of each loop position (repeated labels add
     * up, which walks the diagonal; broadcast unit dims contribute 0) */
    int64_t(*strd)[ES_MAX_LABELS] = kiln_xcalloc((size_t)nin, sizeof *strd);
    for (int i = 0; i < nin; i++) {
        int64_t own[KILN_MAX_RANK];
        kiln_strides(c->in[i]->dims, c->in[i]->rank, own);
        for (int d = 0; d < p.rank[i]; d++) {
            int l = p.lab[i][d];
            if (c->in[i]->dims[d] == 1 && size[l] != 1)
                continue;
            for (int q = 0; q < L; q++)
                if (order[q] == l)
                    strd[i][q] += own[d];
        }
    }
    int is_int = kiln_dtype_is_intlike(o->dtype);
    int64_t idx[ES_MAX_LABELS] = {0}, off[KILN_MAX_OP_INPUTS] = {0};
    for (int64_t oi = 0; oi < out_n; oi++) {
        double acc = 0;
        int64_t iacc = 0;
        for (int64_t s = 0; s < sum_n; s++) {
            if (is_int) {
                int64_t v = 1;
                for (int i = 0; i < nin; i++)
                    v = imul(v, kiln_load_i64(c->in[i]->dtype, c->in[i]->data, off[i]));
                iacc = iadd(iacc, v);
            } else {
                double v = 1;
                for (int i = 0; i < nin; i++)
                    v *= ld(c->in[i], off[i]);
                acc += v;
            }
            for (int q = L - 1; q >= 0; q--) {
                idx[q]++;
                for (int i = 0; i < nin; i++)
                    off[i] += strd[i][q];
                if (idx[q] < sz[q])
                    break;
                for (int i = 0; i < nin; i++)
                    off[i] -= strd[i][q] * idx[q];
                idx[q] = 0;
            }
        }
        if (is_int)
            kiln_store_i64(o->dtype, o->data, oi, iacc);
        else
            st(o, oi, acc);
    }
    free(strd);
    return 0;
}

static const kiln_attr_spec attrs_einsum[] = {{"equation", KILN_ATTR_STRING, 1, 0, 0, 0}, {0}};

static const kiln_op_def op_einsum = {
    "Einsum", 1, KILN_MAX_OP_INPUTS, 1, 1, attrs_einsum, 0, einsum_infer, einsum_eval,
    "Einstein summation (explicit/implicit output, diagonals, '...' broadcasting)", NULL};

/* ---- Linear (kiln) ----
 * y[..., n] = sum_k x[..., k] * w[n, k] + bias[n]. The weight keeps the
 * [out, in] layout of nn.Linear and GGUF, so block-quantized rows (blocks
 * along K) dequantize one at a time into a float buffer and are reused for
 * every row of x. */

static int weight_dtype_ok(kiln_dtype dt)
{
    return dt == KILN_F32 || dt == KILN_F16 || dt == KILN_BF16 || kiln_dtype_get(dt)->is_quant;
}

static int linear_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *w = c->in[1], *bias = c->n_inputs > 2 ? c->in[2] : NULL;
    if (x->dtype != KILN_F32 && x->dtype != KILN_F16 && x->dtype != KILN_BF16)
        return OPERR(c, "x must be f32, f16 or bf16, got %s", kiln_dtype_name(x->dtype));
    if (!weight_dtype_ok(w->dtype))
        return OPERR(c, "weight must be f32, f16, bf16 or block-quantized, got %s",
                     kiln_dtype_name(w->dtype));
    if (w->rank >= 0 && w->rank != 2)
        return OPERR(c, "weight must be 2-D [N, K], got rank %d", w->rank);
    if (x->rank == 0)
        return OPERR(c, "x must have rank >= 1");
    kiln_dim n = w->rank == 2 ? w->dims[0] : KILN_DIM_ANY;
    kiln_dim kw = w->rank == 2 ? w->dims[1] : KILN_DIM_ANY, k;
    int blk = kiln_dtype_get(w->dtype)->block_elems;
    if (KILN_DIM_IS_STATIC(kw) && kw % blk)
        return OPERR(c, "weight %s needs K divisible by %d, got %lld", kiln_dtype_name(w->dtype),
                     blk, (long long)kw);
    if (x->rank > 0 && dims_match(c, x->dims[x->rank - 1], kw, &k, "x's last dim and weight K differ"))
        return -1;
    if (bias) {
        const kiln_dtype_info *bi = kiln_dtype_get(bias->dtype);
        if (!bi->is_float || bi->is_quant)
            return OPERR(c, "bias must be a plain float type, got %s", bi->name);
        if (bias->rank >= 0 && bias->rank != 1)
            return OPERR(c, "bias must be 1-D [N], got rank %d", bias->rank);
        if (bias->rank == 1 && dims_match(c, bias->dims[0], n, &n, "bias length and weight N differ"))
            return -1;
    }
    kiln_type r = *x;
    if (r.rank > 0)
        r.dims[r.rank - 1] = n;
    c->out[0] = r;
    return 0;
}

/* Sum of a[k] * b[k] in double; four chains keep the FPU busy. */
static double dot_f32(const float *a, const float *b, int64_t K)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        s0 += (double)a[k] * b[k];
        s1 += (double)a[k + 1] * b[k + 1];
        s2 += (double)a[k + 2] * b[k + 2];
        s3 += (double)a[k + 3] * b[k + 3];
    }
    for (; k < K; k++)
        s0 += (double)a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

/* Row r of a [rows, K] weight as floats; returns buf or, for f32, the row
 * itself. */
static const float *weight_row(const kiln_tensor *w, int64_t r, int64_t K, float *buf)
{
    const kiln_dtype_info *di = kiln_dtype_get(w->dtype);
    if (w->dtype == KILN_F32)
        return (const float *)w->data + r * K;
    if (di->is_quant) {
        size_t rb = kiln_dtype_storage(w->dtype, K);
        kiln_dequant_row(w->dtype, (const uint8_t *)w->data + (size_t)r * rb, buf, K);
        return buf;
    }
    for (int64_t k = 0; k < K; k++)
        buf[k] = (float)kiln_load_f64(w->dtype, w->data, r * K + k);
    return buf;
}

static int linear_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *w = c->in[1], *bias = c->n_inputs > 2 ? c->in[2] : NULL;
    kiln_tensor *o = c->out[0];
    int64_t N = w->dims[0], K = w->dims[1];
    int64_t rows = K ? kiln_tensor_numel(x) / K : kiln_tensor_numel(o) / (N ? N : 1);
    if (rows == 0 || N == 0)
        return 0;
    float *xf = x->dtype == KILN_F32 ? NULL : kiln_tensor_to_f32(x);
    const float *xs = xf ? xf : (const float *)x->data;
    float *buf = kiln_xmalloc(sizeof(float) * (size_t)(K ? K : 1));
    for (int64_t n = 0; n < N; n++) {
        const float *wr = weight_row(w, n, K, buf);
        double b = bias ? ld(bias, n) : 0;
        for (int64_t r = 0; r < rows; r++)
            st(o, r * N + n, dot_f32(xs + r * K, wr, K) + b);
    }
    free(buf);
    free(xf);
    return 0;
}

static const kiln_op_def op_linear = {
    "Linear", 2, 3, 1, 1, NULL, 0, linear_infer, linear_eval,
    "y[..., n] = sum_k x[..., k] * w[n, k] + bias[n]; w is [N, K], f16/bf16/f32 or block-quantized",
    NULL};

/* ---- Dequantize (kiln) ---- */

static int dequantize_infer(kiln_infer_ctx *c)
{
    const kiln_dtype_info *di = kiln_dtype_get(c->in[0]->dtype);
    if (!di->is_float)
        return OPERR(c, "input must be block-quantized or a float type, got %s", di->name);
    const kiln_type *w = c->in[0];
    if (di->block_elems > 1 && w->rank > 0 && KILN_DIM_IS_STATIC(w->dims[w->rank - 1]) &&
        w->dims[w->rank - 1] % di->block_elems)
        return OPERR(c, "%s needs the last dim divisible by %d, got %lld", di->name,
                     di->block_elems, (long long)w->dims[w->rank - 1]);
    c->out[0] = *w;
    c->out[0].dtype = KILN_F32;
    return 0;
}

static int dequantize_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *w = c->in[0];
    kiln_tensor *o = c->out[0];
    int64_t n = kiln_tensor_numel(w);
    /* rows are whole blocks and contiguous, so the tensor is one long row */
    if (kiln_dtype_get(w->dtype)->is_quant)
        kiln_dequant_row(w->dtype, w->data, o->data, n);
    else
        for (int64_t i = 0; i < n; i++)
            ((float *)o->data)[i] = (float)ld(w, i);
    return 0;
}

static const kiln_op_def op_dequantize = {
    "Dequantize", 1, 1, 1, 1, NULL, 0, dequantize_infer, dequantize_eval,
    "block-quantized (GGML) or f16/bf16 weight -> f32 of the same shape", NULL};

const kiln_op_def *const kiln_ops_linalg[] = {
    &op_matmul, &op_fusedmatmul, &op_gemm, &op_einsum, &op_linear, &op_dequantize, NULL,
};
