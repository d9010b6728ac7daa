/* ops_nn.c - neural-network ops: the softmax family, normalizations (layer,
 * RMS, batch, instance, group and the onnxruntime contrib fusions around
 * them), GELU fusions, rotary embedding, and attention (ONNX Attention and
 * kiln's GQAttention with a KV cache).
 *
 * Kernels read whole inputs as doubles, accumulate in double and round once
 * when storing, so every float element type shares one code path and the
 * interpreter stays a trustworthy oracle for the lowered versions. */
#include "op_util.h"

/* ---- shared helpers ------------------------------------------------------ */

static const kiln_tensor *opt_in(const kiln_eval_ctx *c, int i)
{
    return i < c->n_inputs ? c->in[i] : NULL;
}

static const kiln_type *opt_type(const kiln_infer_ctx *c, int i)
{
    return i < c->n_inputs ? c->in[i] : NULL;
}

/* Input i is present and a plain float type (block formats need Dequantize). */
static int need_float(kiln_infer_ctx *c, int i, const char *what)
{
    const kiln_type *t = opt_type(c, i);
    if (!t)
        return OPERR(c, "%s (input %d) is absent", what, i);
    const kiln_dtype_info *di = kiln_dtype_get(t->dtype);
    if (!di->is_float || di->is_quant)
        return OPERR(c, "%s (input %d) must be a float type, got %s", what, i, di->name);
    return 0;
}

/* Input i has the same element type as input j. */
static int same_dtype(kiln_infer_ctx *c, int i, int j, const char *what_i, const char *what_j)
{
    if (c->in[i]->dtype != c->in[j]->dtype)
        return OPERR(c, "%s is %s but %s is %s", what_i, kiln_dtype_name(c->in[i]->dtype), what_j,
                     kiln_dtype_name(c->in[j]->dtype));
    return 0;
}

/* Two dims that must agree provably disagree (only static ones can). */
static int dim_differs(kiln_dim a, kiln_dim b)
{
    return KILN_DIM_IS_STATIC(a) && KILN_DIM_IS_STATIC(b) && a != b;
}

/* The better known of two dims that must be equal: static, then symbolic. */
static kiln_dim dim_pick(kiln_dim a, kiln_dim b)
{
    if (KILN_DIM_IS_STATIC(a))
        return a;
    if (KILN_DIM_IS_STATIC(b) || a == KILN_DIM_ANY)
        return b;
    return a;
}

/* Checks that dim a equals dim b where both are known; *out gets the pick. */
static int dim_match(kiln_infer_ctx *c, kiln_dim a, kiln_dim b, kiln_dim *out, const char *what)
{
    if (dim_differs(a, b))
        return OPERR(c, "%s: %lld vs %lld", what, (long long)a, (long long)b);
    if (out)
        *out = dim_pick(a, b);
    return 0;
}

/* a / k for a head count k; a static a must divide evenly. */
static int dim_div_heads(kiln_infer_ctx *c, kiln_dim a, int64_t k, kiln_dim *out, const char *what)
{
    if (KILN_DIM_IS_STATIC(a) && a % k)
        return OPERR(c, "%s %lld is not a multiple of %lld heads", what, (long long)a,
                     (long long)k);
    *out = kiln_dim_div(c->syms, a, k);
    return 0;
}

/* `s` must broadcast to `x` without growing it (ONNX unidirectional
 * broadcasting, as scale and bias inputs use). */
static int check_unibcast(kiln_infer_ctx *c, const kiln_type *x, const kiln_type *s,
                          const char *what)
{
    if (x->rank < 0 || s->rank < 0)
        return 0;
    if (s->rank > x->rank)
        return OPERR(c, "%s has rank %d, more than the input's %d", what, s->rank, x->rank);
    for (int i = 0; i < s->rank; i++) {
        kiln_dim ds = s->dims[i], dx = x->dims[x->rank - s->rank + i];
        if (ds != 1 && dim_differs(ds, dx))
            return OPERR(c, "%s dimension %d is %lld, cannot broadcast to %lld", what, i,
                         (long long)ds, (long long)dx);
    }
    return 0;
}

/* Input i is a rank-1 tensor of `n` elements (n may be symbolic). */
static int check_vec(kiln_infer_ctx *c, int i, kiln_dim n, const char *what)
{
    const kiln_type *t = c->in[i];
    if (t->rank < 0)
        return 0;
    if (t->rank != 1)
        return OPERR(c, "%s must have rank 1, got rank %d", what, t->rank);
    if (dim_differs(t->dims[0], n))
        return OPERR(c, "%s has %lld elements, expected %lld", what, (long long)t->dims[0],
                     (long long)n);
    return 0;
}

static int64_t dims_prod(const int64_t *d, int from, int to)
{
    int64_t p = 1;
    for (int i = from; i < to; i++)
        p *= d[i];
    return p;
}

/* ONNX TensorProto element codes used by stash_type / softmax_precision. */
static kiln_dtype onnx_float_code(int64_t code)
{
    switch (code) {
    case 1: return KILN_F32;
    case 10: return KILN_F16;
    case 11: return KILN_F64;
    case 16: return KILN_BF16;
    default: return KILN_DT_INVALID;
    }
}

static int stash_dtype(kiln_infer_ctx *c, kiln_dtype *dt)
{
    int64_t st = kiln_node_int(c->node, "stash_type");
    *dt = onnx_float_code(st);
    if (*dt == KILN_DT_INVALID)
        return OPERR(c, "stash_type %lld is not a float type code (1, 10, 11 or 16)",
                     (long long)st);
    return 0;
}

/* Shape of per-row statistics: dims before axis, then ones. */
static kiln_type stats_type(kiln_dtype dt, const kiln_type *x, int axis)
{
    kiln_type t = *x;
    t.dtype = dt;
    for (int i = axis; i < t.rank; i++)
        t.dims[i] = 1;
    return t;
}

/* Softmax of w[0..n) in place, max-subtracted so exp never overflows. A row
 * whose maximum is -inf (every entry masked) becomes zeros instead of NaN. */
static void softmax_row(double *w, int64_t n)
{
    double m = -INFINITY;
    for (int64_t j = 0; j < n; j++)
        if (w[j] > m || isnan(w[j]))
            m = w[j]; /* a NaN sticks and poisons the row, as in numpy */
    if (m == -INFINITY) {
        for (int64_t j = 0; j < n; j++)
            w[j] = 0;
        return;
    }
    double s = 0;
    for (int64_t j = 0; j < n; j++) {
        w[j] = exp(w[j] - m);
        s += w[j];
    }
    for (int64_t j = 0; j < n; j++)
        w[j] /= s;
}

static double gelu_erf(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

static double gelu_tanh(double x)
{
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* ---- Softmax, LogSoftmax, Hardmax ------------------------------------------- */

enum { SM_SOFTMAX, SM_LOGSOFTMAX, SM_HARDMAX };
static const int sm_softmax = SM_SOFTMAX, sm_logsoftmax = SM_LOGSOFTMAX, sm_hardmax = SM_HARDMAX;

static int softmax_infer(kiln_infer_ctx *c)
{
    if (need_float(c, 0, "input"))
        return -1;
    int axis;
    if (c->in[0]->rank >= 0 &&
        kiln_axis(c->err, kiln_node_int(c->node, "axis"), c->in[0]->rank, &axis))
        return -1;
    c->out[0] = *c->in[0];
    return 0;
}

static int softmax_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int kind = *(const int *)c->node->op->impl, axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    int64_t outer = dims_prod(x->dims, 0, axis), n = x->rank ? x->dims[axis] : 1;
    int64_t inner = dims_prod(x->dims, axis + 1, x->rank);
    double *w = kiln_xmalloc(sizeof(double) * (size_t)(n + 1));
    for (int64_t a = 0; a < outer; a++)
        for (int64_t b = 0; b < inner; b++) {
            int64_t base = a * n * inner + b;
            for (int64_t j = 0; j < n; j++)
                w[j] = kiln_load_f64(x->dtype, x->data, base + j * inner);
            double m = -INFINITY;
            int64_t arg = 0;
            for (int64_t j = 0; j < n; j++)
                if (!isnan(m) && (w[j] > m || isnan(w[j]))) { /* first maximum, NaN wins */
                    m = w[j];
                    arg = j;
                }
            if (kind == SM_HARDMAX) {
                for (int64_t j = 0; j < n; j++)
                    w[j] = j == arg;
            } else {
                /* exp(x - max) never overflows; all -inf rows give NaN as in ONNX */
                double s = 0;
                for (int64_t j = 0; j < n; j++)
                    s += exp(w[j] - m);
                for (int64_t j = 0; j < n; j++)
                    w[j] = kind == SM_SOFTMAX ? exp(w[j] - m) / s : w[j] - m - log(s);
            }
            for (int64_t j = 0; j < n; j++)
                kiln_store_f64(o->dtype, o->data, base + j * inner, w[j]);
        }
    free(w);
    return 0;
}

static const kiln_attr_spec attrs_axis_last[] = {{"axis", KILN_ATTR_INT, 0, -1, 0, 0}, {0}};

static const kiln_op_def op_softmax = {"Softmax", 1, 1, 1, 1, attrs_axis_last, 0, softmax_infer,
                                       softmax_eval, "exp(x)/sum(exp(x)) along axis", &sm_softmax};
static const kiln_op_def op_logsoftmax = {"LogSoftmax", 1, 1, 1, 1, attrs_axis_last, 0,
                                          softmax_infer, softmax_eval,
                                          "x - log(sum(exp(x))) along axis", &sm_logsoftmax};
static const kiln_op_def op_hardmax = {"Hardmax", 1, 1, 1, 1, attrs_axis_last, 0, softmax_infer,
                                       softmax_eval, "1 at the first maximum along axis, else 0",
                                       &sm_hardmax};

/* ---- row normalization core ------------------------------------------------- */

/* Mean and 1/sqrt(var + eps) of `rows` contiguous rows of n values. Two
 * passes, so a large mean does not cancel the variance away. With rms set
 * the mean is taken as 0 and the variance is the mean square. */
static void row_stats(const double *xv, int64_t rows, int64_t n, double eps, int rms, double *mean,
                      double *inv)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *x = xv + r * n;
        double m = 0, v = 0;
        if (!rms) {
            for (int64_t k = 0; k < n; k++)
                m += x[k];
            m /= (double)n;
        }
        for (int64_t k = 0; k < n; k++)
            v += (x[k] - m) * (x[k] - m);
        v /= (double)n;
        mean[r] = m;
        inv[r] = 1 / sqrt(v + eps);
    }
}

/* out = (xv - mean[row]) * inv[row] * scale + bias, where rows hold n
 * elements and scale / bias (bias may be NULL) broadcast to out's shape. */
static void norm_affine(const double *xv, int64_t n, const double *mean, const double *inv,
                        const kiln_tensor *scale, const kiln_tensor *bias, kiln_tensor *o)
{
    int64_t total = kiln_tensor_numel(o);
    int64_t st[2][KILN_MAX_RANK], off[2] = {0, 0}, idx[KILN_MAX_RANK] = {0};
    kiln_bcast_strides(scale, o->rank, o->dims, st[0]);
    if (bias)
        kiln_bcast_strides(bias, o->rank, o->dims, st[1]);
    else
        memset(st[1], 0, sizeof st[1]);
    for (int64_t k = 0; k < total; k++) {
        int64_t r = k / n;
        double y = (xv[k] - mean[r]) * inv[r] * kiln_load_f64(scale->dtype, scale->data, off[0]);
        if (bias)
            y += kiln_load_f64(bias->dtype, bias->data, off[1]);
        kiln_store_f64(o->dtype, o->data, k, y);
        kiln_next_index(idx, o->dims, o->rank, 2, off, st);
    }
}

static void store_rows(kiln_tensor *o, const double *v, int64_t rows)
{
    for (int64_t r = 0; r < rows; r++)
        kiln_store_f64(o->dtype, o->data, r, v[r]);
}

/* ---- LayerNormalization, RMSNormalization, SimplifiedLayerNormalization -------- */

typedef struct lnorm_impl {
    int rms;       /* no mean subtraction */
    int mean_slot; /* output index of Mean, -1 if the op has none */
    int inv_slot;  /* output index of InvStdDev, -1 if none */
} lnorm_impl;

static const lnorm_impl impl_layernorm = {0, 1, 2};
static const lnorm_impl impl_rmsnorm = {1, -1, -1};
static const lnorm_impl impl_simplified = {1, -1, 1};

static int lnorm_infer(kiln_infer_ctx *c)
{
    const lnorm_impl *im = c->node->op->impl;
    if (need_float(c, 0, "X") || need_float(c, 1, "scale"))
        return -1;
    const kiln_type *x = c->in[0];
    int axis = 0;
    if (x->rank >= 0 && kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    kiln_dtype sdt;
    if (stash_dtype(c, &sdt) || check_unibcast(c, x, c->in[1], "scale"))
        return -1;
    if (!im->rms && same_dtype(c, 1, 0, "scale", "X"))
        return -1;
    if (opt_type(c, 2)) {
        if (need_float(c, 2, "B") || same_dtype(c, 2, 0, "B", "X") ||
            check_unibcast(c, x, c->in[2], "B"))
            return -1;
    }
    c->out[0] = *x;
    for (int o = 1; o < c->n_outputs; o++)
        c->out[o] = stats_type(sdt, x, axis);
    return 0;
}

static int lnorm_eval(kiln_eval_ctx *c)
{
    const lnorm_impl *im = c->node->op->impl;
    const kiln_tensor *x = c->in[0];
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    int64_t rows = dims_prod(x->dims, 0, axis), n = dims_prod(x->dims, axis, x->rank);
    double *xv = kiln_tensor_to_f64(x);
    double *mean = kiln_xmalloc(sizeof(double) * (size_t)(rows + 1));
    double *inv = kiln_xmalloc(sizeof(double) * (size_t)(rows + 1));
    row_stats(xv, rows, n, kiln_node_float(c->node, "epsilon"), im->rms, mean, inv);
    norm_affine(xv, n, mean, inv, c->in[1], opt_in(c, 2), c->out[0]);
    if (im->mean_slot > 0 && im->mean_slot < c->n_outputs)
        store_rows(c->out[im->mean_slot], mean, rows);
    if (im->inv_slot > 0 && im->inv_slot < c->n_outputs)
        store_rows(c->out[im->inv_slot], inv, rows);
    free(xv);
    free(mean);
    free(inv);
    return 0;
}

static const kiln_attr_spec attrs_lnorm[] = {{"axis", KILN_ATTR_INT, 0, -1, 0, 0},
                                             {"epsilon", KILN_ATTR_FLOAT, 0, 0, 1e-5, 0},
                                             {"stash_type", KILN_ATTR_INT, 0, 1, 0, 0},
                                             {0}};

static const kiln_op_def op_layernorm = {
    "LayerNormalization", 2, 3, 1, 3, attrs_lnorm, 0, lnorm_infer, lnorm_eval,
    "(x-mean)/sqrt(var+eps)*scale+B over dims axis..; also Mean, InvStdDev (stash_type)",
    &impl_layernorm};
static const kiln_op_def op_rmsnorm = {"RMSNormalization", 2, 2, 1, 1, attrs_lnorm, 0, lnorm_infer,
                                       lnorm_eval, "x/sqrt(mean(x^2)+eps)*scale over dims axis..",
                                       &impl_rmsnorm};
static const kiln_op_def op_simplified_ln = {
    "SimplifiedLayerNormalization", 2, 2, 1, 2, attrs_lnorm, 0, lnorm_infer, lnorm_eval,
    "onnxruntime RMS norm: x/sqrt(mean(x^2)+eps)*scale; also inv_std_var", &impl_simplified};

/* ---- SkipLayerNormalization, SkipSimplifiedLayerNormalization (com.microsoft) ---- */

typedef struct skipnorm_impl {
    int rms;
    int beta; /* input index of beta, -1 if the op has none */
    int bias; /* input index of the bias added before normalizing */
} skipnorm_impl;

static const skipnorm_impl impl_skipln = {0, 3, 4};
static const skipnorm_impl impl_skipsln = {1, -1, 3};

static int skipnorm_infer(kiln_infer_ctx *c)
{
    const skipnorm_impl *im = c->node->op->impl;
    if (need_float(c, 0, "input") || need_float(c, 1, "skip") || need_float(c, 2, "gamma") ||
        same_dtype(c, 1, 0, "skip", "input") || same_dtype(c, 2, 0, "gamma", "input"))
        return -1;
    const kiln_type *x = c->in[0];
    if (x->rank == 0)
        return OPERR(c, "input must have rank >= 1");
    if (check_unibcast(c, x, c->in[1], "skip"))
        return -1;
    kiln_dim hidden = x->rank > 0 ? x->dims[x->rank - 1] : KILN_DIM_ANY;
    if (check_vec(c, 2, hidden, "gamma"))
        return -1;
    int opt[2] = {im->beta, im->bias};
    const char *names[2] = {"beta", "bias"};
    for (int k = 0; k < 2; k++)
        if (opt[k] >= 0 && opt_type(c, opt[k]) &&
            (need_float(c, opt[k], names[k]) || same_dtype(c, opt[k], 0, names[k], "input") ||
             check_vec(c, opt[k], hidden, names[k])))
            return -1;
    c->out[0] = *x;
    for (int o = 1; o < c->n_outputs; o++)
        c->out[o] = o == 3 ? *x : stats_type(KILN_F32, x, x->rank > 0 ? x->rank - 1 : 0);
    return 0;
}

static int skipnorm_eval(kiln_eval_ctx *c)
{
    const skipnorm_impl *im = c->node->op->impl;
    const kiln_tensor *x = c->in[0], *skip = c->in[1];
    const kiln_tensor *beta = im->beta >= 0 ? opt_in(c, im->beta) : NULL;
    const kiln_tensor *bias = opt_in(c, im->bias);
    int64_t total = kiln_tensor_numel(x), n = x->dims[x->rank - 1];
    int64_t rows = n ? total / n : 0;
    double *sum = kiln_xmalloc(sizeof(double) * (size_t)(total + 1));
    int64_t st[2][KILN_MAX_RANK], off[2] = {0, 0}, idx[KILN_MAX_RANK] = {0};
    kiln_bcast_strides(skip, x->rank, x->dims, st[0]);
    memset(st[1], 0, sizeof st[1]);
    for (int64_t k = 0; k < total; k++) {
        sum[k] =
            kiln_load_f64(x->dtype, x->data, k) + kiln_load_f64(skip->dtype, skip->data, off[0]);
        if (bias)
            sum[k] += kiln_load_f64(bias->dtype, bias->data, k % n);
        kiln_next_index(idx, x->dims, x->rank, 2, off, st);
    }
    /* the sum output is the residual stream: rounded to T like any output */
    if (c->n_outputs > 3)
        store_rows(c->out[3], sum, total);
    double *mean = kiln_xmalloc(sizeof(double) * (size_t)(rows + 1));
    double *inv = kiln_xmalloc(sizeof(double) * (size_t)(rows + 1));
    row_stats(sum, rows, n, kiln_node_float(c->node, "epsilon"), im->rms, mean, inv);
    norm_affine(sum, n, mean, inv, c->in[2], beta, c->out[0]);
    /* the RMS form subtracts no mean, so its Mean output is the 0 it used */
    if (c->n_outputs > 1)
        store_rows(c->out[1], mean, rows);
    if (c->n_outputs > 2)
        store_rows(c->out[2], inv, rows);
    free(sum);
    free(mean);
    free(inv);
    return 0;
}

static const kiln_attr_spec attrs_skipnorm[] = {{"epsilon", KILN_ATTR_FLOAT, 0, 0, 1e-12, 0}, {0}};

static const kiln_op_def op_skipln = {
    "SkipLayerNormalization", 3, 5, 1, 4, attrs_skipnorm, 0, skipnorm_infer, skipnorm_eval,
    "com.microsoft: s=input+skip+bias; LayerNorm(s, last axis)*gamma+beta; also mean, "
    "inv_std_var, s",
    &impl_skipln};
static const kiln_op_def op_skipsln = {
    "SkipSimplifiedLayerNormalization", 3, 4, 1, 4, attrs_skipnorm, 0, skipnorm_infer,
    skipnorm_eval,
    "com.microsoft: s=input+skip+bias; s/sqrt(mean(s^2)+eps)*gamma; also mean (0), "
    "inv_std_var, s",
    &impl_skipsln};

/* ---- BatchNormalization (inference), InstanceNormalization, GroupNormalization ---- */

/* Channel count of an [N, C, ...] input (a rank-1 input is [N] with C = 1). */
static kiln_dim channels(const kiln_type *x) { return x->rank == 1 ? 1 : x->dims[1]; }

static int channel_norm_check(kiln_infer_ctx *c, int first, int last, int min_rank)
{
    static const char *const names[] = {"X", "scale", "B", "mean", "var"};
    for (int i = 0; i <= last; i++)
        if (need_float(c, i, names[i]))
            return -1;
    const kiln_type *x = c->in[0];
    if (x->rank >= 0 && x->rank < min_rank)
        return OPERR(c, "X must have rank >= %d, got %d", min_rank, x->rank);
    kiln_dim ch = x->rank >= 0 ? channels(x) : KILN_DIM_ANY;
    for (int i = first; i <= last; i++)
        if (check_vec(c, i, ch, names[i]))
            return -1;
    c->out[0] = *x;
    return 0;
}

static int batchnorm_infer(kiln_infer_ctx *c)
{
    if (kiln_node_int(c->node, "training_mode"))
        return OPERR(c, "training_mode=1 is not supported (inference only)");
    if (c->n_outputs > 1)
        return OPERR(c, "running_mean/running_var outputs exist only with training_mode=1");
    return channel_norm_check(c, 1, 4, 1);
}

static int batchnorm_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int64_t N = x->dims[0], C = x->rank == 1 ? 1 : x->dims[1], sp = dims_prod(x->dims, 2, x->rank);
    double eps = kiln_node_float(c->node, "epsilon");
    for (int64_t ch = 0; ch < C; ch++) {
        double sc = kiln_tensor_get(c->in[1], ch), b = kiln_tensor_get(c->in[2], ch);
        double m = kiln_tensor_get(c->in[3], ch), v = kiln_tensor_get(c->in[4], ch);
        double inv = 1 / sqrt(v + eps);
        for (int64_t nn = 0; nn < N; nn++)
            for (int64_t k = 0; k < sp; k++) {
                int64_t i = (nn * C + ch) * sp + k;
                double y = (kiln_load_f64(x->dtype, x->data, i) - m) * inv * sc + b;
                kiln_store_f64(o->dtype, o->data, i, y);
            }
    }
    return 0;
}

/* Normalizes each of N*groups contiguous blocks of an [N, C, ...] input,
 * then applies per-channel scale and bias. */
static int group_norm_run(kiln_eval_ctx *c, int64_t groups)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int64_t N = x->dims[0], C = x->dims[1], sp = dims_prod(x->dims, 2, x->rank);
    if (N * C * sp == 0) /* nothing to do, and C / groups may be 0 / 0 */
        return 0;
    int64_t rows = N * groups, n = C / groups * sp;
    double *xv = kiln_tensor_to_f64(x);
    double *mean = kiln_xmalloc(sizeof(double) * (size_t)(rows + 1));
    double *inv = kiln_xmalloc(sizeof(double) * (size_t)(rows + 1));
    row_stats(xv, rows, n, kiln_node_float(c->node, "epsilon"), 0, mean, inv);
    int64_t total = N * C * sp;
    for (int64_t i = 0; i < total; i++) {
        int64_t ch = (i / sp) % C, r = n ? i / n : 0;
        double y = (xv[i] - mean[r]) * inv[r] * kiln_tensor_get(c->in[1], ch) +
                   kiln_tensor_get(c->in[2], ch);
        kiln_store_f64(o->dtype, o->data, i, y);
    }
    free(xv);
    free(mean);
    free(inv);
    return 0;
}

static int instnorm_infer(kiln_infer_ctx *c) { return channel_norm_check(c, 1, 2, 2); }

static int instnorm_eval(kiln_eval_ctx *c) { return group_norm_run(c, c->in[0]->dims[1]); }

static int groupnorm_infer(kiln_infer_ctx *c)
{
    kiln_dtype sdt;
    if (stash_dtype(c, &sdt) || channel_norm_check(c, 1, 2, 2))
        return -1;
    int64_t g = kiln_node_int(c->node, "num_groups");
    kiln_dim ch = c->in[0]->rank >= 2 ? c->in[0]->dims[1] : KILN_DIM_ANY;
    if (g <= 0)
        return OPERR(c, "num_groups must be positive, got %lld", (long long)g);
    if (KILN_DIM_IS_STATIC(ch) && ch % g)
        return OPERR(c, "%lld channels do not split into %lld groups", (long long)ch, (long long)g);
    return 0;
}

static int groupnorm_eval(kiln_eval_ctx *c)
{
    return group_norm_run(c, kiln_node_int(c->node, "num_groups"));
}

static const kiln_attr_spec attrs_batchnorm[] = {{"epsilon", KILN_ATTR_FLOAT, 0, 0, 1e-5, 0},
                                                 {"momentum", KILN_ATTR_FLOAT, 0, 0, 0.9, 0},
                                                 {"training_mode", KILN_ATTR_INT, 0, 0, 0, 0},
                                                 {0}};
static const kiln_attr_spec attrs_instnorm[] = {{"epsilon", KILN_ATTR_FLOAT, 0, 0, 1e-5, 0}, {0}};
static const kiln_attr_spec attrs_groupnorm[] = {{"num_groups", KILN_ATTR_INT, 1, 0, 0, 0},
                                                 {"epsilon", KILN_ATTR_FLOAT, 0, 0, 1e-5, 0},
                                                 {"stash_type", KILN_ATTR_INT, 0, 1, 0, 0},
                                                 {0}};

static const kiln_op_def op_batchnorm = {
    "BatchNormalization", 5, 5, 1, 3, attrs_batchnorm, 0, batchnorm_infer, batchnorm_eval,
    "inference: (x-mean[c])/sqrt(var[c]+eps)*scale[c]+B[c] on [N, C, ...]", NULL};
static const kiln_op_def op_instnorm = {
    "InstanceNormalization", 3, 3, 1, 1, attrs_instnorm, 0, instnorm_infer, instnorm_eval,
    "normalize each (n, c) over the spatial dims, then *scale[c]+B[c]", NULL};
static const kiln_op_def op_groupnorm = {
    "GroupNormalization", 3, 3, 1, 1, attrs_groupnorm, 0, groupnorm_infer, groupnorm_eval,
    "normalize each (n, group of channels) over channels and spatial dims, then *scale[c]+bias[c]",
    NULL};

/* ---- FastGelu, BiasGelu, QuickGelu (com.microsoft) ---------------------------- */

enum { GELU_FAST, GELU_BIAS, GELU_QUICK };
static const int gelu_fast = GELU_FAST, gelu_bias = GELU_BIAS, gelu_quick = GELU_QUICK;

static int xgelu_infer(kiln_infer_ctx *c)
{
    if (need_float(c, 0, "X"))
        return -1;
    if (opt_type(c, 1) && (need_float(c, 1, "bias") || same_dtype(c, 1, 0, "bias", "X") ||
                           check_unibcast(c, c->in[0], c->in[1], "bias")))
        return -1;
    c->out[0] = *c->in[0];
    return 0;
}

static int xgelu_eval(kiln_eval_ctx *c)
{
    int kind = *(const int *)c->node->op->impl;
    const kiln_tensor *x = c->in[0], *b = opt_in(c, 1);
    kiln_tensor *o = c->out[0];
    double alpha = kind == GELU_QUICK ? kiln_node_float(c->node, "alpha") : 0;
    int64_t total = kiln_tensor_numel(o), st[1][KILN_MAX_RANK], off[1] = {0};
    int64_t idx[KILN_MAX_RANK] = {0};
    if (b)
        kiln_bcast_strides(b, o->rank, o->dims, st[0]);
    else
        memset(st[0], 0, sizeof st[0]);
    for (int64_t k = 0; k < total; k++) {
        double v = kiln_load_f64(x->dtype, x->data, k);
        if (b)
            v += kiln_load_f64(b->dtype, b->data, off[0]);
        double y;
        if (kind == GELU_FAST)
            y = gelu_tanh(v);
        else if (kind == GELU_BIAS)
            y = gelu_erf(v);
        else /* x*sigmoid(alpha*x), in the form that cannot overflow exp */
            y = alpha * v >= 0 ? v / (1 + exp(-alpha * v))
                               : v * exp(alpha * v) / (1 + exp(alpha * v));
        kiln_store_f64(o->dtype, o->data, k, y);
        kiln_next_index(idx, o->dims, o->rank, 1, off, st);
    }
    return 0;
}

static const kiln_attr_spec attrs_quickgelu[] = {{"alpha", KILN_ATTR_FLOAT, 0, 0, 1.702, 0}, {0}};

static const kiln_op_def op_fastgelu = {
    "FastGelu", 1, 2, 1, 1, NULL, KILN_OP_ELEMENTWISE, xgelu_infer, xgelu_eval,
    "com.microsoft: tanh-approximated GELU of x (+ optional broadcast bias)", &gelu_fast};
static const kiln_op_def op_biasgelu = {
    "BiasGelu", 2, 2, 1, 1, NULL, KILN_OP_ELEMENTWISE, xgelu_infer, xgelu_eval,
    "com.microsoft: erf GELU of A + B (B broadcast)", &gelu_bias};
static const kiln_op_def op_quickgelu = {"QuickGelu", 1, 1, 1, 1, attrs_quickgelu,
                                         KILN_OP_ELEMENTWISE, xgelu_infer, xgelu_eval,
                                         "com.microsoft: x*sigmoid(alpha*x)", &gelu_quick};

/* ---- RotaryEmbedding ------------------------------------------------------------ */

static int rope_infer(kiln_infer_ctx *c)
{
    if (need_float(c, 0, "X") || need_float(c, 1, "cos_cache") || need_float(c, 2, "sin_cache") ||
        same_dtype(c, 1, 0, "cos_cache", "X") || same_dtype(c, 2, 0, "sin_cache", "X"))
        return -1;
    const kiln_type *x = c->in[0], *cs = c->in[1], *sn = c->in[2], *pos = opt_type(c, 3);
    int64_t heads = kiln_node_int(c->node, "num_heads");
    int64_t rd = kiln_node_int(c->node, "rotary_embedding_dim");
    c->out[0] = *x;
    if (x->rank < 0)
        return 0;
    if (x->rank != 3 && x->rank != 4)
        return OPERR(c, "X must be 3-D [batch, seq, hidden] or 4-D [batch, heads, seq, head], "
                        "got rank %d", x->rank);
    if (heads < 0 || rd < 0)
        return OPERR(c, "num_heads and rotary_embedding_dim must be non-negative");
    kiln_dim B = x->dims[0], S, D = KILN_DIM_ANY;
    if (x->rank == 4) {
        S = x->dims[2];
        D = x->dims[3];
        if (heads && dim_differs(x->dims[1], heads))
            return OPERR(c, "num_heads %lld disagrees with X's %lld heads", (long long)heads,
                         (long long)x->dims[1]);
    } else {
        S = x->dims[1];
        if (!heads)
            return OPERR(c, "a 3-D X needs the num_heads attribute");
        if (dim_div_heads(c, x->dims[2], heads, &D, "hidden size"))
            return -1;
    }
    if (rd && rd % 2)
        return OPERR(c, "rotary_embedding_dim %lld must be even", (long long)rd);
    if (!rd && KILN_DIM_IS_STATIC(D) && D % 2)
        return OPERR(c, "head size %lld must be even", (long long)D);
    if (rd && KILN_DIM_IS_STATIC(D) && rd > D)
        return OPERR(c, "rotary_embedding_dim %lld exceeds the head size %lld", (long long)rd,
                     (long long)D);
    kiln_dim half = rd ? rd / 2 : (KILN_DIM_IS_STATIC(D) ? D / 2 : KILN_DIM_ANY);
    if (cs->rank >= 0 && sn->rank >= 0) {
        if (cs->rank != sn->rank)
            return OPERR(c, "cos_cache and sin_cache differ in rank");
        for (int i = 0; i < cs->rank; i++)
            if (dim_differs(cs->dims[i], sn->dims[i]))
                return OPERR(c, "cos_cache and sin_cache differ in shape");
        if (pos) {
            if (cs->rank != 2)
                return OPERR(c, "with position_ids the caches must be 2-D [max_position, dim/2]");
            if (pos->dtype != KILN_I64)
                return OPERR(c, "position_ids must be i64, got %s", kiln_dtype_name(pos->dtype));
            if (pos->rank >= 0 && pos->rank != 2)
                return OPERR(c, "position_ids must be 2-D [batch, seq]");
            if (pos->rank == 2 && ((pos->dims[0] != 1 && dim_differs(pos->dims[0], B)) ||
                                   dim_differs(pos->dims[1], S)))
                return OPERR(c, "position_ids shape [%lld, %lld] does not match [batch, seq]",
                             (long long)pos->dims[0], (long long)pos->dims[1]);
        } else {
            if (cs->rank != 3)
                return OPERR(c, "without position_ids the caches must be 3-D [batch, seq, dim/2]");
            if ((cs->dims[0] != 1 && dim_differs(cs->dims[0], B)) || dim_differs(cs->dims[1], S))
                return OPERR(c, "cache shape [%lld, %lld, ...] does not match [batch, seq]",
                             (long long)cs->dims[0], (long long)cs->dims[1]);
        }
        if (dim_differs(cs->dims[cs->rank - 1], half))
            return OPERR(c, "cache last dimension %lld is not rotary dim / 2 = %lld",
                         (long long)cs->dims[cs->rank - 1], (long long)half);
    }
    return 0;
}

static int rope_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *cs = c->in[1], *sn = c->in[2], *pos = opt_in(c, 3);
    kiln_tensor *o = c->out[0];
    int four = x->rank == 4;
    int64_t B = x->dims[0], H, S, D;
    if (four) {
        H = x->dims[1];
        S = x->dims[2];
        D = x->dims[3];
    } else {
        H = kiln_node_int(c->node, "num_heads");
        S = x->dims[1];
        D = x->dims[2] / H;
    }
    int64_t rd = kiln_node_int(c->node, "rotary_embedding_dim");
    if (!rd)
        rd = D;
    int64_t half = rd / 2;
    int inter = kiln_node_int(c->node, "interleaved") != 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++) {
            int64_t row; /* cache row of this token */
            if (pos) {
                int64_t p =
                    kiln_load_i64(pos->dtype, pos->data, (pos->dims[0] == 1 ? 0 : b) * S + s);
                if (p < 0 || p >= cs->dims[0])
                    return OPERR(c, "position id %lld out of range [0, %lld)", (long long)p,
                                 (long long)cs->dims[0]);
                row = p;
            } else {
                row = (cs->dims[0] == 1 ? 0 : b) * S + s;
            }
            for (int64_t h = 0; h < H; h++) {
                int64_t base = four ? ((b * H + h) * S + s) * D : ((b * S + s) * H + h) * D;
                for (int64_t k = 0; k < half; k++) {
                    int64_t i1 = inter ? 2 * k : k, i2 = inter ? 2 * k + 1 : k + half;
                    double x1 = kiln_load_f64(x->dtype, x->data, base + i1);
                    double x2 = kiln_load_f64(x->dtype, x->data, base + i2);
                    double co = kiln_load_f64(cs->dtype, cs->data, row * half + k);
                    double si = kiln_load_f64(sn->dtype, sn->data, row * half + k);
                    kiln_store_f64(o->dtype, o->data, base + i1, co * x1 - si * x2);
                    kiln_store_f64(o->dtype, o->data, base + i2, si * x1 + co * x2);
                }
                for (int64_t d = rd; d < D; d++)
                    kiln_store_f64(o->dtype, o->data, base + d,
                                   kiln_load_f64(x->dtype, x->data, base + d));
            }
        }
    return 0;
}

static const kiln_attr_spec attrs_rope[] = {{"interleaved", KILN_ATTR_INT, 0, 0, 0, 0},
                                            {"num_heads", KILN_ATTR_INT, 0, 0, 0, 0},
                                            {"rotary_embedding_dim", KILN_ATTR_INT, 0, 0, 0, 0},
                                            {0}};

static const kiln_op_def op_rope = {
    "RotaryEmbedding", 3, 4, 1, 1, attrs_rope, 0, rope_infer, rope_eval,
    "rotate (half-split or interleaved) pairs of the first rotary_embedding_dim dims by cos/sin "
    "caches, indexed by position_ids",
    NULL};

/* ---- attention: shared pieces ---------------------------------------------------- */

/* Keys or values of the whole context as doubles in [B, H, P+S, D] layout:
 * the P cached rows (past, may be NULL) then the S new ones from cur, which
 * is [B, S, H*D] when cur3 is set and [B, H, S, D] otherwise. */
static double *kv_concat(const kiln_tensor *past, const kiln_tensor *cur, int cur3, int64_t B,
                         int64_t H, int64_t P, int64_t S, int64_t D)
{
    int64_t T = P + S;
    double *o = kiln_xmalloc(sizeof(double) * (size_t)(B * H * T * D + 1));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t j = 0; j < T; j++)
                for (int64_t d = 0; d < D; d++) {
                    double v;
                    if (j < P)
                        v = kiln_load_f64(past->dtype, past->data, ((b * H + h) * P + j) * D + d);
                    else if (cur3)
                        v = kiln_load_f64(cur->dtype, cur->data, ((b * S + j - P) * H + h) * D + d);
                    else
                        v = kiln_load_f64(cur->dtype, cur->data, ((b * H + h) * S + j - P) * D + d);
                    o[((b * H + h) * T + j) * D + d] = v;
                }
    return o;
}

static double dot(const double *a, const double *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* y[0..Dv) = sum_j p[j] * v[j][0..Dv) for rows of Dv values. */
static void weighted_sum(const double *p, const double *v, int64_t T, int64_t Dv, double *y)
{
    for (int64_t d = 0; d < Dv; d++)
        y[d] = 0;
    for (int64_t j = 0; j < T; j++)
        if (p[j] != 0)
            for (int64_t d = 0; d < Dv; d++)
                y[d] += p[j] * v[j * Dv + d];
}

/* Strides that map a [B, H, S, T] score position onto a right-aligned
 * broadcast mask/bias of rank <= 4 (size-1 and missing dims get 0). A
 * size-1 key dim broadcasts only with bcast_last; ONNX Attention instead
 * reads it as a one-key mask padded with "not allowed". */
static void mask_strides(const kiln_tensor *m, int bcast_last, int64_t st[4])
{
    int64_t own[KILN_MAX_RANK];
    kiln_strides(m->dims, m->rank, own);
    for (int t = 0; t < 4; t++) {
        int a = t - (4 - m->rank);
        st[t] = (a < 0 || (m->dims[a] == 1 && (t < 3 || bcast_last))) ? 0 : own[a];
    }
}

/* Checks a mask/bias type against target dims [B, H, S, T]: rank 1..4,
 * right-aligned, leading dims 1 or equal; the last dim equals T, or with
 * `short_ok` may be shorter (keys beyond it are masked). */
static int check_mask_type(kiln_infer_ctx *c, const kiln_type *m, const kiln_dim tgt[4],
                           int short_ok, const char *what)
{
    if (m->rank < 0)
        return 0;
    if (m->rank < 1 || m->rank > 4)
        return OPERR(c, "%s must have rank 1 to 4, got %d", what, m->rank);
    for (int a = 0; a < m->rank; a++) {
        int t = 4 - m->rank + a;
        kiln_dim d = m->dims[a];
        if (t < 3 || !short_ok) {
            if (d != 1 && dim_differs(d, tgt[t]))
                return OPERR(c, "%s dimension %d is %lld, cannot broadcast to %lld", what, a,
                             (long long)d, (long long)tgt[t]);
        } else if (KILN_DIM_IS_STATIC(d) && KILN_DIM_IS_STATIC(tgt[3]) && d > tgt[3]) {
            return OPERR(c, "%s covers %lld keys but there are only %lld", what, (long long)d,
                         (long long)tgt[3]);
        }
    }
    return 0;
}

/* ---- Attention (ONNX) -------------------------------------------------------------- */

enum { AT_Q, AT_K, AT_V, AT_MASK, AT_PAST_K, AT_PAST_V, AT_NONPAD };

static int attention_infer(kiln_infer_ctx *c)
{
    const kiln_node *n = c->node;
    if (need_float(c, AT_Q, "Q") || need_float(c, AT_K, "K") || need_float(c, AT_V, "V") ||
        same_dtype(c, AT_K, AT_Q, "K", "Q"))
        return -1;
    const kiln_type *q = c->in[AT_Q], *k = c->in[AT_K], *v = c->in[AT_V];
    const kiln_type *mask = opt_type(c, AT_MASK), *pk = opt_type(c, AT_PAST_K);
    const kiln_type *pv = opt_type(c, AT_PAST_V), *np = opt_type(c, AT_NONPAD);
    int64_t qh = kiln_node_int(n, "q_num_heads"), kvh = kiln_node_int(n, "kv_num_heads");
    int64_t mode = kiln_node_int(n, "qk_matmul_output_mode");
    int64_t prec = kiln_node_int(n, "softmax_precision");
    int64_t lw = kiln_node_int(n, "left_window_size"), rw = kiln_node_int(n, "right_window_size");
    if (mode < 0 || mode > 3)
        return OPERR(c, "qk_matmul_output_mode must be 0..3, got %lld", (long long)mode);
    if (prec && onnx_float_code(prec) == KILN_DT_INVALID)
        return OPERR(c, "softmax_precision %lld is not a float type code", (long long)prec);
    if (lw < -1 || rw < -1)
        return OPERR(c, "window sizes must be -1 or non-negative");
    if (kiln_node_float(n, "softcap") < 0)
        return OPERR(c, "softcap must be non-negative");
    if (qh < 0 || kvh < 0)
        return OPERR(c, "head counts must be positive");
    if (!pk != !pv)
        return OPERR(c, "past_key and past_value must be given together");
    if (np && pk)
        return OPERR(c, "nonpad_kv_seqlen cannot be combined with past_key/past_value");
    kiln_dtype qdt = q->dtype, vdt = v->dtype;
    c->out[0] = kiln_type_make(qdt, -1, NULL);
    for (int o = 1; o < c->n_outputs; o++)
        c->out[o] = kiln_type_make(o == 2 ? vdt : qdt, -1, NULL);
    if (q->rank < 0 || k->rank < 0 || v->rank < 0)
        return 0;
    int r = q->rank;
    if ((r != 3 && r != 4) || k->rank != r || v->rank != r)
        return OPERR(c, "Q, K and V must all be 3-D or all 4-D, got ranks %d, %d, %d", q->rank,
                     k->rank, v->rank);
    kiln_dim B = KILN_DIM_ANY, Hq, Hkv = KILN_DIM_ANY, Sq, Skv = KILN_DIM_ANY;
    kiln_dim D = KILN_DIM_ANY, Dk = KILN_DIM_ANY, Dv = KILN_DIM_ANY;
    if (dim_match(c, q->dims[0], k->dims[0], &B, "batch of Q and K") ||
        dim_match(c, B, v->dims[0], &B, "batch of Q and V"))
        return -1;
    if (r == 3) {
        if (!qh || !kvh)
            return OPERR(c, "3-D inputs need q_num_heads and kv_num_heads");
        Hq = qh;
        Hkv = kvh;
        Sq = q->dims[1];
        if (dim_match(c, k->dims[1], v->dims[1], &Skv, "sequence of K and V") ||
            dim_div_heads(c, q->dims[2], qh, &D, "Q hidden size") ||
            dim_div_heads(c, k->dims[2], kvh, &Dk, "K hidden size") ||
            dim_div_heads(c, v->dims[2], kvh, &Dv, "V hidden size"))
            return -1;
    } else {
        Hq = q->dims[1];
        Sq = q->dims[2];
        D = q->dims[3];
        Dk = k->dims[3];
        Dv = v->dims[3];
        if (dim_match(c, k->dims[1], v->dims[1], &Hkv, "heads of K and V") ||
            dim_match(c, k->dims[2], v->dims[2], &Skv, "sequence of K and V"))
            return -1;
        if ((qh && dim_differs(qh, Hq)) || (kvh && dim_differs(kvh, Hkv)))
            return OPERR(c, "q_num_heads/kv_num_heads disagree with the 4-D input shapes");
    }
    if (dim_match(c, D, Dk, &D, "head size of Q and K"))
        return -1;
    if (KILN_DIM_IS_STATIC(Hq) && KILN_DIM_IS_STATIC(Hkv) && (Hkv == 0 || Hq % Hkv))
        return OPERR(c, "%lld query heads do not group over %lld key/value heads", (long long)Hq,
                     (long long)Hkv);
    kiln_dim T = Skv;
    if (pk) {
        if (need_float(c, AT_PAST_K, "past_key") || need_float(c, AT_PAST_V, "past_value") ||
            same_dtype(c, AT_PAST_K, AT_K, "past_key", "K") ||
            same_dtype(c, AT_PAST_V, AT_V, "past_value", "V"))
            return -1;
        if (pk->rank >= 0 && pv->rank >= 0) {
            if (pk->rank != 4 || pv->rank != 4)
                return OPERR(c, "past_key and past_value must be 4-D [batch, heads, past, head]");
            kiln_dim P;
            if (dim_match(c, pk->dims[0], B, NULL, "batch of past_key") ||
                dim_match(c, pv->dims[0], B, NULL, "batch of past_value") ||
                dim_match(c, pk->dims[1], Hkv, NULL, "heads of past_key") ||
                dim_match(c, pv->dims[1], Hkv, NULL, "heads of past_value") ||
                dim_match(c, pk->dims[2], pv->dims[2], &P, "past length of key and value") ||
                dim_match(c, pk->dims[3], D, NULL, "head size of past_key") ||
                dim_match(c, pv->dims[3], Dv, NULL, "head size of past_value"))
                return -1;
            T = kiln_dim_add(c->syms, P, Skv);
        } else {
            T = KILN_DIM_ANY;
        }
    }
    if (np) {
        if (np->dtype != KILN_I64)
            return OPERR(c, "nonpad_kv_seqlen must be i64, got %s", kiln_dtype_name(np->dtype));
        if (np->rank >= 0 && (np->rank != 1 || dim_differs(np->dims[0], B)))
            return OPERR(c, "nonpad_kv_seqlen must be 1-D [batch]");
    }
    if (mask) {
        if (mask->dtype != KILN_BOOL && need_float(c, AT_MASK, "attn_mask"))
            return -1;
        kiln_dim tgt[4] = {B, Hq, Sq, T};
        if (check_mask_type(c, mask, tgt, 1, "attn_mask"))
            return -1;
    }
    kiln_dim ydims[4] = {B, Hq, Sq, Dv};
    if (r == 3) {
        ydims[1] = Sq;
        ydims[2] = kiln_dim_mul(c->syms, Hq, Dv);
    }
    kiln_dim kd[4] = {B, Hkv, T, D}, vd[4] = {B, Hkv, T, Dv}, sd[4] = {B, Hq, Sq, T};
    c->out[0] = kiln_type_make(qdt, r, ydims);
    if (c->n_outputs > 1)
        c->out[1] = kiln_type_make(k->dtype, 4, kd);
    if (c->n_outputs > 2)
        c->out[2] = kiln_type_make(vdt, 4, vd);
    if (c->n_outputs > 3)
        c->out[3] = kiln_type_make(qdt, 4, sd);
    return 0;
}

static int attention_eval(kiln_eval_ctx *c)
{
    const kiln_node *n = c->node;
    const kiln_tensor *Q = c->in[AT_Q], *K = c->in[AT_K], *V = c->in[AT_V];
    const kiln_tensor *mask = opt_in(c, AT_MASK), *pk = opt_in(c, AT_PAST_K);
    const kiln_tensor *pv = opt_in(c, AT_PAST_V), *np = opt_in(c, AT_NONPAD);
    int three = Q->rank == 3;
    int64_t B = Q->dims[0], Hq, Hkv, Sq, Skv, D, Dv;
    if (three) {
        Hq = kiln_node_int(n, "q_num_heads");
        Hkv = kiln_node_int(n, "kv_num_heads");
        Sq = Q->dims[1];
        Skv = K->dims[1];
        D = Q->dims[2] / Hq;
        Dv = V->dims[2] / Hkv;
    } else {
        Hq = Q->dims[1];
        Hkv = K->dims[1];
        Sq = Q->dims[2];
        Skv = K->dims[2];
        D = Q->dims[3];
        Dv = V->dims[3];
    }
    int64_t P = pk ? pk->dims[2] : 0, T = P + Skv, grp = Hq / Hkv;
    double scale = kiln_node_has_attr(n, "scale") ? kiln_node_float(n, "scale")
                                                  : (D > 0 ? 1 / sqrt((double)D) : 1);
    double cap = kiln_node_float(n, "softcap");
    int causal = kiln_node_int(n, "is_causal") != 0;
    int64_t mode = kiln_node_int(n, "qk_matmul_output_mode");
    int64_t lw = kiln_node_int(n, "left_window_size"), rw = kiln_node_int(n, "right_window_size");

    double *q = kiln_tensor_to_f64(Q);
    double *kc = kv_concat(pk, K, three, B, Hkv, P, Skv, D);
    double *vc = kv_concat(pv, V, three, B, Hkv, P, Skv, Dv);
    double *w = kiln_xmalloc(sizeof(double) * (size_t)(3 * T + Dv + 1));
    double *raw = w + T, *capped = w + 2 * T, *y = w + 3 * T;
    int64_t mst[4] = {0, 0, 0, 0}, M = 0;
    int mbool = 0;
    if (mask) {
        mask_strides(mask, 0, mst);
        M = mask->dims[mask->rank - 1];
        mbool = mask->dtype == KILN_BOOL;
    }
    kiln_tensor *oy = c->out[0], *oqk = c->n_outputs > 3 ? c->out[3] : NULL;
    for (int64_t b = 0; b < B; b++) {
        /* keys before the query block: the cache, or what nonpad says is valid */
        int64_t offset = P, valid = T;
        if (np) {
            valid = kiln_load_i64(np->dtype, np->data, b);
            offset = valid - Sq;
        }
        for (int64_t h = 0; h < Hq; h++) {
            int64_t kvh = h / grp;
            const double *kb = kc + (b * Hkv + kvh) * T * D, *vb = vc + (b * Hkv + kvh) * T * Dv;
            for (int64_t i = 0; i < Sq; i++) {
                const double *qr = q + (three ? (b * Sq + i) * Hq * D + h * D
                                              : ((b * Hq + h) * Sq + i) * D);
                int64_t moff = b * mst[0] + h * mst[1] + i * mst[2];
                int all_masked = 1;
                for (int64_t j = 0; j < T; j++) {
                    double s = dot(qr, kb + j * D, D) * scale;
                    raw[j] = s;
                    if (cap > 0)
                        s = cap * tanh(s / cap); /* before masking, so -inf stays -inf */
                    capped[j] = s;
                    double bias = 0;
                    if (mask) {
                        if (j >= M)
                            bias = -INFINITY; /* a short mask pads with "not allowed" */
                        else if (mbool)
                            bias = kiln_load_i64(KILN_BOOL, mask->data, moff + j) ? 0 : -INFINITY;
                        else
                            bias = kiln_load_f64(mask->dtype, mask->data, moff + j);
                    }
                    int64_t pos = i + offset; /* absolute position of the query */
                    if (causal && j > pos)
                        bias += -INFINITY;
                    if ((lw >= 0 && pos - j > lw) || (rw >= 0 && j - pos > rw))
                        bias += -INFINITY;
                    if (np && j >= valid)
                        bias += -INFINITY;
                    if (!(isinf(bias) && bias < 0))
                        all_masked = 0;
                    w[j] = s + bias;
                }
                int64_t so = ((b * Hq + h) * Sq + i) * T;
                if (oqk && mode < 3)
                    for (int64_t j = 0; j < T; j++)
                        kiln_store_f64(oqk->dtype, oqk->data, so + j,
                                       mode == 0 ? raw[j] : mode == 1 ? capped[j] : w[j]);
                softmax_row(w, T);
                if (all_masked) /* decided on the bias, as ONNX specifies */
                    for (int64_t j = 0; j < T; j++)
                        w[j] = 0;
                if (oqk && mode == 3)
                    for (int64_t j = 0; j < T; j++)
                        kiln_store_f64(oqk->dtype, oqk->data, so + j, w[j]);
                weighted_sum(w, vb, T, Dv, y);
                int64_t yo = three ? (b * Sq + i) * Hq * Dv + h * Dv : ((b * Hq + h) * Sq + i) * Dv;
                for (int64_t d = 0; d < Dv; d++)
                    kiln_store_f64(oy->dtype, oy->data, yo + d, y[d]);
            }
        }
    }
    if (c->n_outputs > 1)
        store_rows(c->out[1], kc, B * Hkv * T * D);
    if (c->n_outputs > 2)
        store_rows(c->out[2], vc, B * Hkv * T * Dv);
    free(q);
    free(kc);
    free(vc);
    free(w);
    return 0;
}

static const kiln_attr_spec attrs_attention[] = {
    {"is_causal", KILN_ATTR_INT, 0, 0, 0, 0},
    {"kv_num_heads", KILN_ATTR_INT, 0, 0, 0, 0},
    {"q_num_heads", KILN_ATTR_INT, 0, 0, 0, 0},
    {"qk_matmul_output_mode", KILN_ATTR_INT, 0, 0, 0, 0},
    {"scale", KILN_ATTR_FLOAT, 0, 0, 0, 0}, /* absent: 1/sqrt(head size) */
    {"softcap", KILN_ATTR_FLOAT, 0, 0, 0, 0},
    /* ONNX type code, 0: unset; checked only, the softmax runs in double anyway */
    {"softmax_precision", KILN_ATTR_INT, 0, 0, 0, 0},
    {"left_window_size", KILN_ATTR_INT, 0, -1, 0, 0},
    {"right_window_size", KILN_ATTR_INT, 0, -1, 0, 0},
    {0}};

static const kiln_op_def op_attention = {
    "Attention", 3, 7, 1, 4, attrs_attention, 0, attention_infer, attention_eval,
    "scaled dot-product attention (ONNX): 3-D/4-D, GQA, mask, causal, window, softcap, KV "
    "cache; Y, present K/V, QK scores",
    NULL};

/* ---- GQAttention (kiln) ---------------------------------------------------------------- */

enum { GQ_Q, GQ_K, GQ_V, GQ_PAST_K, GQ_PAST_V, GQ_BIAS };

static int gqa_infer(kiln_infer_ctx *c)
{
    const kiln_node *n = c->node;
    int64_t H = kiln_node_int(n, "num_heads"), KVH = kiln_node_int(n, "kv_num_heads");
    if (need_float(c, GQ_Q, "q") || need_float(c, GQ_K, "k") || need_float(c, GQ_V, "v") ||
        same_dtype(c, GQ_K, GQ_Q, "k", "q") || same_dtype(c, GQ_V, GQ_Q, "v", "q"))
        return -1;
    if (H <= 0 || KVH <= 0 || H % KVH)
        return OPERR(c, "num_heads %lld must be a positive multiple of kv_num_heads %lld",
                     (long long)H, (long long)KVH);
    if (kiln_node_int(n, "window") < 0 || kiln_node_float(n, "softcap") < 0)
        return OPERR(c, "window and softcap must be non-negative");
    const kiln_type *q = c->in[GQ_Q], *k = c->in[GQ_K], *v = c->in[GQ_V];
    const kiln_type *pk = opt_type(c, GQ_PAST_K), *pv = opt_type(c, GQ_PAST_V);
    const kiln_type *bias = opt_type(c, GQ_BIAS);
    if (!pk != !pv)
        return OPERR(c, "past_k and past_v must be given together");
    kiln_dtype dt = q->dtype;
    for (int o = 0; o < c->n_outputs; o++)
        c->out[o] = kiln_type_make(dt, -1, NULL);
    if (q->rank < 0 || k->rank < 0 || v->rank < 0)
        return 0;
    if (q->rank != 3 || k->rank != 3 || v->rank != 3)
        return OPERR(c, "q, k and v must be 3-D [batch, seq, heads*head_size]");
    kiln_dim B = KILN_DIM_ANY, S = KILN_DIM_ANY, D = KILN_DIM_ANY, Dk = KILN_DIM_ANY;
    kiln_dim Dv = KILN_DIM_ANY, P = 0;
    if (dim_match(c, q->dims[0], k->dims[0], &B, "batch of q and k") ||
        dim_match(c, B, v->dims[0], &B, "batch of q and v") ||
        dim_match(c, q->dims[1], k->dims[1], &S, "sequence of q and k") ||
        dim_match(c, S, v->dims[1], &S, "sequence of q and v") ||
        dim_div_heads(c, q->dims[2], H, &D, "q hidden size") ||
        dim_div_heads(c, k->dims[2], KVH, &Dk, "k hidden size") ||
        dim_div_heads(c, v->dims[2], KVH, &Dv, "v hidden size") ||
        dim_match(c, D, Dk, &D, "head size of q and k"))
        return -1;
    if (pk) {
        if (need_float(c, GQ_PAST_K, "past_k") || need_float(c, GQ_PAST_V, "past_v") ||
            same_dtype(c, GQ_PAST_K, GQ_Q, "past_k", "q") ||
            same_dtype(c, GQ_PAST_V, GQ_Q, "past_v", "q"))
            return -1;
        if (pk->rank < 0 || pv->rank < 0) {
            P = KILN_DIM_ANY;
        } else {
            if (pk->rank != 4 || pv->rank != 4)
                return OPERR(c, "past_k and past_v must be 4-D [batch, kv_heads, past, head_size]");
            if (dim_match(c, pk->dims[0], B, NULL, "batch of past_k") ||
                dim_match(c, pv->dims[0], B, NULL, "batch of past_v") ||
                dim_match(c, pk->dims[1], KVH, NULL, "kv heads of past_k") ||
                dim_match(c, pv->dims[1], KVH, NULL, "kv heads of past_v") ||
                dim_match(c, pk->dims[2], pv->dims[2], &P, "past length of past_k and past_v") ||
                dim_match(c, pk->dims[3], D, NULL, "head size of past_k") ||
                dim_match(c, pv->dims[3], Dv, NULL, "head size of past_v"))
                return -1;
        }
    }
    kiln_dim T = pk ? kiln_dim_add(c->syms, P, S) : S;
    if (bias) {
        kiln_dim tgt[4] = {B, H, S, T};
        if (need_float(c, GQ_BIAS, "bias") || check_mask_type(c, bias, tgt, 0, "bias"))
            return -1;
    }
    kiln_dim yd[3] = {B, S, kiln_dim_mul(c->syms, H, Dv)};
    kiln_dim kd[4] = {B, KVH, T, D}, vd[4] = {B, KVH, T, Dv};
    c->out[0] = kiln_type_make(dt, 3, yd);
    if (c->n_outputs > 1)
        c->out[1] = kiln_type_make(dt, 4, kd);
    if (c->n_outputs > 2)
        c->out[2] = kiln_type_make(dt, 4, vd);
    return 0;
}

static int gqa_eval(kiln_eval_ctx *c)
{
    const kiln_node *n = c->node;
    const kiln_tensor *Q = c->in[GQ_Q], *K = c->in[GQ_K], *V = c->in[GQ_V];
    const kiln_tensor *pk = opt_in(c, GQ_PAST_K), *pv = opt_in(c, GQ_PAST_V);
    const kiln_tensor *bias = opt_in(c, GQ_BIAS);
    int64_t H = kiln_node_int(n, "num_heads"), KVH = kiln_node_int(n, "kv_num_heads");
    int64_t B = Q->dims[0], S = Q->dims[1], D = Q->dims[2] / H, Dv = V->dims[2] / KVH;
    int64_t P = pk ? pk->dims[2] : 0, T = P + S, grp = H / KVH;
    double scale = kiln_node_float(n, "scale");
    if (scale == 0)
        scale = D > 0 ? 1 / sqrt((double)D) : 1;
    double cap = kiln_node_float(n, "softcap");
    int causal = kiln_node_int(n, "causal") != 0;
    int64_t window = kiln_node_int(n, "window");

    double *q = kiln_tensor_to_f64(Q);
    double *kc = kv_concat(pk, K, 1, B, KVH, P, S, D);
    double *vc = kv_concat(pv, V, 1, B, KVH, P, S, Dv);
    double *w = kiln_xmalloc(sizeof(double) * (size_t)(T + Dv + 1)), *y = w + T;
    int64_t bst[4] = {0, 0, 0, 0};
    if (bias)
        mask_strides(bias, 1, bst);
    kiln_tensor *oy = c->out[0];
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            int64_t kvh = h / grp;
            const double *kb = kc + (b * KVH + kvh) * T * D, *vb = vc + (b * KVH + kvh) * T * Dv;
            for (int64_t i = 0; i < S; i++) {
                const double *qr = q + (b * S + i) * H * D + h * D;
                int64_t p = P + i; /* bottom-right aligned: new tokens follow the cache */
                int64_t bo = b * bst[0] + h * bst[1] + i * bst[2];
                for (int64_t j = 0; j < T; j++) {
                    /* a window bounds both sides, so it implies causal */
                    int masked = (causal && j > p) || (window > 0 && (j <= p - window || j > p));
                    if (masked) {
                        w[j] = -INFINITY;
                        continue;
                    }
                    double s = dot(qr, kb + j * D, D) * scale;
                    if (cap > 0)
                        s = cap * tanh(s / cap);
                    if (bias)
                        s += kiln_load_f64(bias->dtype, bias->data, bo + j * bst[3]);
                    w[j] = s;
                }
                softmax_row(w, T); /* a row with every key masked gives zeros */
                weighted_sum(w, vb, T, Dv, y);
                int64_t yo = (b * S + i) * H * Dv + h * Dv;
                for (int64_t d = 0; d < Dv; d++)
                    kiln_store_f64(oy->dtype, oy->data, yo + d, y[d]);
            }
        }
    if (c->n_outputs > 1)
        store_rows(c->out[1], kc, B * KVH * T * D);
    if (c->n_outputs > 2)
        store_rows(c->out[2], vc, B * KVH * T * Dv);
    free(q);
    free(kc);
    free(vc);
    free(w);
    return 0;
}

static const kiln_attr_spec attrs_gqa[] = {{"num_heads", KILN_ATTR_INT, 1, 0, 0, 0},
                                           {"kv_num_heads", KILN_ATTR_INT, 1, 0, 0, 0},
                                           {"scale", KILN_ATTR_FLOAT, 0, 0, 0, 0},
                                           {"causal", KILN_ATTR_INT, 0, 1, 0, 0},
                                           {"window", KILN_ATTR_INT, 0, 0, 0, 0},
                                           {"softcap", KILN_ATTR_FLOAT, 0, 0, 0, 0},
                                           {0}};

static const kiln_op_def op_gqa = {
    "GQAttention", 3, 6, 1, 3, attrs_gqa, 0, gqa_infer, gqa_eval,
    "grouped-query attention with KV cache: q/k/v [B, S, heads*D], past [B, KVH, P, D]; y, "
    "present K/V [B, KVH, P+S, D]",
    NULL};

const kiln_op_def *const kiln_ops_nn[] = {
    &op_softmax,   &op_logsoftmax, &op_hardmax,  &op_layernorm,     &op_rmsnorm,
    &op_simplified_ln, &op_skipln, &op_skipsln,  &op_batchnorm,     &op_instnorm,
    &op_groupnorm, &op_fastgelu,   &op_biasgelu, &op_quickgelu,     &op_rope,
    &op_attention, &op_gqa,        NULL,
};
