/* ops_lm.c - op family for LM-specific ops that have no ONNX counterpart.
 *
 * SparseMoE: a mixture-of-experts feed-forward layer (Mixtral style) as ONE
 * op, so later stages see a grouped GEMM over variable-sized expert batches
 * instead of a dense loop over every expert. */
#include "op_util.h"

/* ---- SparseMoE ----
 * inputs: x [..., D], router_logits [..., E], then the expert weights,
 *   either stacked: w_gate [E, F, D], w_up [E, F, D], w_down [E, D, F]
 *   or one tensor per expert: w_gate_0..E-1 [F, D], w_up_0.. [F, D], w_down_0.. [D, F]
 * (nn.Linear layout [out, in]; any float or block-quantized dtype).
 * Each token takes the top_k experts of softmax(router_logits) (ties: lower
 * index first); with normalize the chosen probabilities are rescaled to sum
 * to 1. y = sum_e p_e * down_e(act(gate_e(x)) * up_e(x)). */

enum { MOE_SILU, MOE_GELU, MOE_GELU_TANH, MOE_RELU };

static int moe_act(const char *s)
{
    if (strcmp(s, "silu") == 0)
        return MOE_SILU;
    if (strcmp(s, "gelu") == 0)
        return MOE_GELU;
    if (strcmp(s, "gelu_tanh") == 0)
        return MOE_GELU_TANH;
    if (strcmp(s, "relu") == 0)
        return MOE_RELU;
    return -1;
}

static double apply_act(int act, double x)
{
    switch (act) {
    case MOE_SILU: return x / (1 + exp(-x));
    case MOE_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case MOE_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    default: return x > 0 ? x : 0;
    }
}

/* Checks a weight's dims against the expected ones (static dims only). */
static int moe_check(kiln_infer_ctx *c, int i, int rank, const kiln_dim *want)
{
    const kiln_type *t = c->in[i];
    if (!t)
        return OPERR(c, "input %d is absent", i);
    const kiln_dtype_info *di = kiln_dtype_get(t->dtype);
    if (!di->is_float)
        return OPERR(c, "input %d: element type %s is not a float type", i, di->name);
    if (t->rank < 0)
        return 0;
    if (t->rank != rank)
        return OPERR(c, "input %d: expected rank %d, got %d", i, rank, t->rank);
    for (int d = 0; d < rank; d++)
        if (KILN_DIM_IS_STATIC(want[d]) && KILN_DIM_IS_STATIC(t->dims[d]) && want[d] != t->dims[d])
            return OPERR(c, "input %d: dimension %d is %lld, expected %lld", i, d,
                         (long long)t->dims[d], (long long)want[d]);
    if (di->is_quant && KILN_DIM_IS_STATIC(t->dims[rank - 1]) &&
        t->dims[rank - 1] % di->block_elems)
        return OPERR(c, "input %d: rows of %lld are not whole %s blocks", i,
                     (long long)t->dims[rank - 1], di->name);
    return 0;
}

static int moe_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *r = c->in[1];
    if (!x || !r)
        return OPERR(c, "x and router_logits are required");
    if (!kiln_dtype_is_float(x->dtype) || kiln_dtype_get(x->dtype)->is_quant)
        return OPERR(c, "x must be f32, f16 or bf16, got %s", kiln_dtype_name(x->dtype));
    if (!kiln_dtype_is_float(r->dtype) || kiln_dtype_get(r->dtype)->is_quant)
        return OPERR(c, "router_logits must be a float tensor");
    if (moe_act(kiln_node_string(c->node, "activation")) < 0)
        return OPERR(c, "activation must be silu, gelu, gelu_tanh or relu, got \"%s\"",
                     kiln_node_string(c->node, "activation"));
    if (x->rank == 0 || r->rank == 0)
        return OPERR(c, "x and router_logits need a last (feature / expert) axis");
    if (x->rank > 0 && r->rank > 0) {
        if (x->rank != r->rank)
            return OPERR(c, "x has rank %d but router_logits rank %d", x->rank, r->rank);
        for (int d = 0; d + 1 < x->rank; d++)
            if (KILN_DIM_IS_STATIC(x->dims[d]) && KILN_DIM_IS_STATIC(r->dims[d]) &&
                x->dims[d] != r->dims[d])
                return OPERR(c, "x and router_logits differ in dimension %d", d);
    }
    kiln_dim D = x->rank > 0 ? x->dims[x->rank - 1] : KILN_DIM_ANY;
    kiln_dim E = r->rank > 0 ? r->dims[r->rank - 1] : KILN_DIM_ANY;
    int nw = c->n_inputs - 2;
    int64_t k = kiln_node_int(c->node, "top_k");
    /* F comes from the first weight */
    const kiln_type *w0 = c->in[2];
    if (!w0)
        return OPERR(c, "expert weights are absent");
    kiln_dim F = w0->rank >= 2 ? w0->dims[w0->rank - 2] : KILN_DIM_ANY;
    if (nw == 3 && w0->rank == 3) {
        kiln_dim g[3] = {E, F, D}, dn[3] = {E, D, F};
        if (moe_check(c, 2, 3, g) || moe_check(c, 3, 3, g) || moe_check(c, 4, 3, dn))
            return -1;
    } else {
        if (nw % 3)
            return OPERR(c, "expects 3 stacked expert weights or 3 per expert, got %d", nw);
        int64_t ne = nw / 3;
        if (KILN_DIM_IS_STATIC(E) && E != ne)
            return OPERR(c, "router_logits has %lld experts but %lld weight triples are given",
                         (long long)E, (long long)ne);
        kiln_dim g[2] = {F, D}, dn[2] = {D, F};
        for (int i = 0; i < nw; i++)
            if (moe_check(c, 2 + i, 2, i < 2 * ne ? g : dn))
                return -1;
        E = ne;
    }
    if (k < 1 || (KILN_DIM_IS_STATIC(E) && k > E))
        return OPERR(c, "top_k %lld out of range for %lld experts", (long long)k, (long long)E);
    c->out[0] = *x;
    return 0;
}

/* Row r of weight matrix m (of expert e) dequantized into buf (k floats). */
typedef struct moe_w {
    const kiln_tensor *t; /* stacked tensor or the expert's own */
    int64_t base_row;     /* first row of this expert in t */
} moe_w;

static void load_row(const moe_w *w, int64_t r, int64_t k, float *buf)
{
    const kiln_tensor *t = w->t;
    const kiln_dtype_info *di = kiln_dtype_get(t->dtype);
    int64_t row = w->base_row + r;
    if (di->is_quant) {
        size_t rb = kiln_dtype_storage(t->dtype, k);
        kiln_dequant_row(t->dtype, (const uint8_t *)t->data + (size_t)row * rb, buf, k);
    } else if (t->dtype == KILN_F32) {
        memcpy(buf, (const float *)t->data + row * k, sizeof(float) * (size_t)k);
    } else {
        for (int64_t j = 0; j < k; j++)
            buf[j] = (float)kiln_load_f64(t->dtype, t->data, row * k + j);
    }
}

static int moe_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *r = c->in[1];
    kiln_tensor *y = c->out[0];
    int64_t D = x->dims[x->rank - 1], E = r->dims[r->rank - 1];
    int64_t T = D ? kiln_tensor_numel(x) / D : 0;
    int stacked = c->n_inputs == 5 && c->in[2]->rank == 3;
    int64_t F = c->in[2]->dims[c->in[2]->rank - 2];
    int k = (int)kiln_node_int(c->node, "top_k");
    int norm = (int)kiln_node_int(c->node, "normalize");
    int act = moe_act(kiln_node_string(c->node, "activation"));
    if (T == 0)
        return 0;

    /* routing: top-k experts and weights per token */
    int64_t *sel = kiln_xmalloc(sizeof(int64_t) * (size_t)(T * k));
    double *wt = kiln_xmalloc(sizeof(double) * (size_t)(T * k));
    double *p = kiln_xmalloc(sizeof(double) * (size_t)E);
    int64_t *count = kiln_xcalloc((size_t)E + 1, sizeof(int64_t));
    for (int64_t t = 0; t < T; t++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t e = 0; e < E; e++) {
            p[e] = kiln_load_f64(r->dtype, r->data, t * E + e);
            mx = p[e] > mx ? p[e] : mx;
        }
        for (int64_t e = 0; e < E; e++)
            sum += (p[e] = exp(p[e] - mx));
        double chosen = 0;
        for (int j = 0; j < k; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++) {
                int used = 0;
                for (int q = 0; q < j; q++)
                    used |= sel[t * k + q] == e;
                if (!used && (best < 0 || p[e] > p[best]))
                    best = e;
            }
            sel[t * k + j] = best;
            wt[t * k + j] = p[best] / sum;
            chosen += p[best] / sum;
            count[best]++;
        }
        if (norm)
            for (int j = 0; j < k; j++)
                wt[t * k + j] /= chosen;
    }

    /* group the (token, weight) pairs by expert: counting sort */
    int64_t *start = kiln_xcalloc((size_t)E + 1, sizeof(int64_t));
    for (int64_t e = 0; e < E; e++)
        start[e + 1] = start[e] + count[e];
    int64_t *tok = kiln_xmalloc(sizeof(int64_t) * (size_t)(T * k));
    double *tw = kiln_xmalloc(sizeof(double) * (size_t)(T * k));
    int64_t *fill = kiln_xcalloc((size_t)E + 1, sizeof(int64_t));
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            int64_t e = sel[t * k + j], at = start[e] + fill[e]++;
            tok[at] = t;
            tw[at] = wt[t * k + j];
        }

    /* per expert: a GEMM over its batch of tokens, weight rows dequantized
     * once per expert and reused across the batch */
    int64_t maxn = 0;
    for (int64_t e = 0; e < E; e++)
        maxn = count[e] > maxn ? count[e] : maxn;
    float *xe = kiln_xmalloc(sizeof(float) * (size_t)(maxn * D + 1));
    double *hg = kiln_xmalloc(sizeof(double) * (size_t)(maxn * F + 1));
    float *row = kiln_xmalloc(sizeof(float) * (size_t)((D > F ? D : F) + 1));
    double *acc = kiln_xcalloc((size_t)(T * D + 1), sizeof(double));
    for (int64_t e = 0; e < E; e++) {
        int64_t n = count[e];
        if (!n)
            continue;
        moe_w wg, wu, wd;
        if (stacked) {
            wg = (moe_w){c->in[2], e * F};
            wu = (moe_w){c->in[3], e * F};
            wd = (moe_w){c->in[4], e * D};
        } else {
            wg = (moe_w){c->in[2 + e], 0};
            wu = (moe_w){c->in[2 + E + e], 0};
            wd = (moe_w){c->in[2 + 2 * E + e], 0};
        }
        for (int64_t i = 0; i < n; i++)
            for (int64_t d = 0; d < D; d++)
                xe[i * D + d] = (float)kiln_load_f64(x->dtype, x->data, tok[start[e] + i] * D + d);
        for (int64_t f = 0; f < F; f++) { /* gate */
            load_row(&wg, f, D, row);
            for (int64_t i = 0; i < n; i++) {
                double s = 0;
                for (int64_t d = 0; d < D; d++)
                    s += (double)xe[i * D + d] * row[d];
                hg[i * F + f] = apply_act(act, s);
            }
        }
        for (int64_t f = 0; f < F; f++) { /* up, times the activated gate */
            load_row(&wu, f, D, row);
            for (int64_t i = 0; i < n; i++) {
                double s = 0;
                for (int64_t d = 0; d < D; d++)
                    s += (double)xe[i * D + d] * row[d];
                hg[i * F + f] *= s;
            }
        }
        for (int64_t d = 0; d < D; d++) { /* down, weighted into the output */
            load_row(&wd, d, F, row);
            for (int64_t i = 0; i < n; i++) {
                double s = 0;
                for (int64_t f = 0; f < F; f++)
                    s += hg[i * F + f] * row[f];
                acc[tok[start[e] + i] * D + d] += tw[start[e] + i] * s;
            }
        }
    }
    for (int64_t i = 0; i < T * D; i++)
        kiln_store_f64(y->dtype, y->data, i, acc[i]);
    free(sel);
    free(wt);
    free(p);
    free(count);
    free(start);
    free(tok);
    free(tw);
    free(fill);
    free(xe);
    free(hg);
    free(row);
    free(acc);
    return 0;
}

static const kiln_attr_spec attrs_moe[] = {{"top_k", KILN_ATTR_INT, 0, 2, 0, 0},
                                           {"normalize", KILN_ATTR_INT, 0, 1, 0, 0},
                                           {"activation", KILN_ATTR_STRING, 0, 0, 0, "silu"},
                                           {0}};

static const kiln_op_def op_sparse_moe = {
    "SparseMoE", 5, KILN_MAX_OP_INPUTS, 1, 1, attrs_moe, 0, moe_infer, moe_eval,
    "mixture-of-experts gated MLP: top-k softmax routing, grouped GEMM per expert batch", NULL};

const kiln_op_def *const kiln_ops_lm[] = {
    &op_sparse_moe,
    NULL,
};
