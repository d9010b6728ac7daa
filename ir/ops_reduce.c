/* ops_reduce.c - the ONNX reductions in their opset-18+ form: inputs
 * (data, axes?), attributes keepdims and noop_with_empty_axes.
 *
 * Absent or empty axes reduce over every axis, unless noop_with_empty_axes
 * is set: then nothing is reduced but the per-element part still applies
 * (ReduceSumSquare squares, ReduceL1 takes |x|, ...), which falls out of
 * treating it as a reduction over an empty set of axes. Reducing over
 * zero elements gives the identity (sum 0, prod 1, max -inf or the lowest
 * integer, min +inf or the highest, log-sums -inf; mean 0/0 = NaN).
 *
 * One loop serves all ops: each input element is folded into the
 * accumulator of its output element. Floats accumulate in double; integer
 * types use exact wrapping int64 arithmetic. */
#include "op_util.h"

#define RED_MAX_AXES 64

enum red_kind {
    R_SUM,
    R_MEAN,
    R_MAX,
    R_MIN,
    R_PROD,
    R_L1,
    R_L2,
    R_LOGSUM,
    R_LOGSUMEXP,
    R_SUMSQ,
};

typedef struct red_impl {
    enum red_kind kind;
    int float_only; /* defined through exp/log: no integer inputs */
    int allow_bool;
} red_impl;

/* Reduced-axis mask from an axes list (already read). */
static int red_mask(kiln_err *err, const int64_t *ax, int n, int rank, int noop, int *mask)
{
    for (int d = 0; d < KILN_MAX_RANK; d++)
        mask[d] = n == 0 && !noop && d < rank;
    for (int i = 0; i < n; i++) {
        int64_t a = ax[i] < 0 ? ax[i] + rank : ax[i];
        if (a < 0 || a >= rank)
            return kiln_errf(err, "axis %lld out of range for rank %d", (long long)ax[i], rank);
        if (mask[a])
            return kiln_errf(err, "axis %lld given twice", (long long)ax[i]);
        mask[a] = 1;
    }
    return 0;
}

static int red_infer(kiln_infer_ctx *c)
{
    const red_impl *im = c->node->op->impl;
    const kiln_type *x = c->in[0];
    const kiln_dtype_info *di = kiln_dtype_get(x->dtype);
    if (di->is_quant)
        return OPERR(c, "block-quantized %s needs Dequantize first", di->name);
    int ok = di->is_float || (!im->float_only && di->is_int) ||
             (im->allow_bool && x->dtype == KILN_BOOL);
    if (!ok)
        return OPERR(c, "element type %s not supported", di->name);
    int keep = kiln_node_int(c->node, "keepdims") != 0;
    int noop = kiln_node_int(c->node, "noop_with_empty_axes") != 0;
    const kiln_type *ax = c->n_inputs > 1 ? c->in[1] : NULL;
    if (ax && !kiln_dtype_get(ax->dtype)->is_int)
        return OPERR(c, "axes must be an integer tensor, got %s", kiln_dtype_name(ax->dtype));
    if (ax && ax->rank > 1)
        return OPERR(c, "axes must be 1-D, got rank %d", ax->rank);
    int64_t vals[RED_MAX_AXES];
    int n = ax ? kiln_infer_ints(c, 1, vals, RED_MAX_AXES) : 0;
    if (n == -2)
        return OPERR(c, "more than %d axes", RED_MAX_AXES);
    kiln_type r = *x;
    if (x->rank < 0) {
        c->out[0] = r;
        return 0;
    }
    if (n < 0) {
        /* axes known only at run time: which dims go is unknown */
        if (keep) {
            for (int d = 0; d < r.rank; d++)
                if (r.dims[d] != 1)
                    r.dims[d] = KILN_DIM_ANY;
        } else if (ax->rank == 1 && KILN_DIM_IS_STATIC(ax->dims[0]) && ax->dims[0] > 0 &&
                   ax->dims[0] <= x->rank) {
            r = kiln_type_make(x->dtype, x->rank - (int)ax->dims[0], NULL);
        } else {
            r.rank = -1;
        }
        c->out[0] = r;
        return 0;
    }
    int mask[KILN_MAX_RANK];
    if (red_mask(c->err, vals, n, x->rank, noop, mask))
        return -1;
    r.rank = 0;
    for (int d = 0; d < x->rank; d++) {
        if (!mask[d])
            r.dims[r.rank++] = x->dims[d];
        else if (keep)
            r.dims[r.rank++] = 1;
    }
    c->out[0] = r;
    return 0;
}

/* Lowest and highest value of an integer (or bool) type, as the int64 bit
 * patterns kiln_load_i64 produces. */
static void int_range(kiln_dtype dt, int64_t *lo, int64_t *hi)
{
    switch (dt) {
    case KILN_BOOL: *lo = 0; *hi = 1; break;
    case KILN_I4: *lo = -8; *hi = 7; break;
    case KILN_U4: *lo = 0; *hi = 15; break;
    case KILN_I2: *lo = -2; *hi = 1; break;
    case KILN_U2: *lo = 0; *hi = 3; break;
    case KILN_I8: *lo = INT8_MIN; *hi = INT8_MAX; break;
    case KILN_U8: *lo = 0; *hi = UINT8_MAX; break;
    case KILN_I16: *lo = INT16_MIN; *hi = INT16_MAX; break;
    case KILN_U16: *lo = 0; *hi = UINT16_MAX; break;
    case KILN_I32: *lo = INT32_MIN; *hi = INT32_MAX; break;
    case KILN_U32: *lo = 0; *hi = UINT32_MAX; break;
    case KILN_U64: *lo = 0; *hi = -1; break; /* UINT64_MAX */
    default: *lo = INT64_MIN; *hi = INT64_MAX; break;
    }
}

static inline int64_t iadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static inline int64_t imul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }

/* a < b in the order of the element type (u64 compares unsigned). */
static inline int ilt(int64_t a, int64_t b, int is_u64)
{
    return is_u64 ? (uint64_t)a < (uint64_t)b : a < b;
}

static void red_int(const red_impl *im, const kiln_tensor *x, kiln_tensor *o, const int64_t *ost,
                    int64_t count)
{
    int64_t nout = kiln_tensor_numel(o), nin = kiln_tensor_numel(x);
    int64_t *acc = kiln_xmalloc(sizeof *acc * (size_t)(nout + 1));
    int64_t lo, hi;
    int_range(x->dtype, &lo, &hi);
    int is_u64 = x->dtype == KILN_U64, is_signed = kiln_dtype_get(x->dtype)->is_signed;
    for (int64_t i = 0; i < nout; i++)
        acc[i] = im->kind == R_PROD ? 1 : im->kind == R_MAX ? lo : im->kind == R_MIN ? hi : 0;
    int64_t idx[KILN_MAX_RANK] = {0}, off = 0, stt[1][KILN_MAX_RANK];
    memcpy(stt[0], ost, sizeof stt[0]);
    for (int64_t i = 0; i < nin; i++) {
        int64_t v = kiln_load_i64(x->dtype, x->data, i), *a = &acc[off];
        switch (im->kind) {
        case R_SUM:
        case R_MEAN: *a = iadd(*a, v); break;
        case R_L1: *a = iadd(*a, is_signed && v < 0 ? (int64_t)(0 - (uint64_t)v) : v); break;
        case R_L2:
        case R_SUMSQ: *a = iadd(*a, imul(v, v)); break;
        case R_PROD: *a = imul(*a, v); break;
        case R_MAX: if (ilt(*a, v, is_u64)) *a = v; break;
        case R_MIN: if (ilt(v, *a, is_u64)) *a = v; break;
        default: break;
        }
        kiln_next_index(idx, x->dims, x->rank, 1, &off, stt);
    }
    for (int64_t i = 0; i < nout; i++) {
        int64_t v = acc[i];
        if (im->kind == R_MEAN) /* numpy: the mean cast back to the integer type */
            v = count == 0 ? 0 : is_signed ? v / count : (int64_t)((uint64_t)v / (uint64_t)count);
        else if (im->kind == R_L2)
            v = (int64_t)sqrt(is_signed ? (double)v : (double)(uint64_t)v);
        kiln_store_i64(o->dtype, o->data, i, v);
    }
    free(acc);
}

static inline double ldx(const kiln_tensor *t, int64_t i)
{
    return t->dtype == KILN_F32 ? ((const float *)t->data)[i] : kiln_load_f64(t->dtype, t->data, i);
}

static void red_float(const red_impl *im, const kiln_tensor *x, kiln_tensor *o,
                      const int64_t *ost, int64_t count)
{
    int64_t nout = kiln_tensor_numel(o), nin = kiln_tensor_numel(x);
    double *acc = kiln_xmalloc(sizeof *acc * (size_t)(nout + 1));
    double *shift = NULL;
    int64_t idx[KILN_MAX_RANK] = {0}, off = 0, stt[1][KILN_MAX_RANK];
    memcpy(stt[0], ost, sizeof stt[0]);
    for (int64_t i = 0; i < nout; i++)
        acc[i] = im->kind == R_PROD ? 1 : im->kind == R_MAX ? -INFINITY
                                          : im->kind == R_MIN ? INFINITY : 0;
    if (im->kind == R_LOGSUMEXP) {
        /* shift by the largest finite element so exp cannot overflow;
         * infinities then come out right on their own */
        shift = kiln_xmalloc(sizeof *shift * (size_t)(nout + 1));
        for (int64_t i = 0; i < nout; i++)
            shift[i] = -INFINITY;
        for (int64_t i = 0; i < nin; i++) {
            double v = ldx(x, i);
            if (isfinite(v) && v > shift[off])
                shift[off] = v;
            kiln_next_index(idx, x->dims, x->rank, 1, &off, stt);
        }
        for (int64_t i = 0; i < nout; i++)
            if (!isfinite(shift[i]))
                shift[i] = 0;
        off = 0;
        memset(idx, 0, sizeof idx);
    }
    for (int64_t i = 0; i < nin; i++) {
        double v = ldx(x, i), *a = &acc[off];
        switch (im->kind) {
        case R_SUM:
        case R_MEAN:
        case R_LOGSUM: *a += v; break;
        case R_L1: *a += fabs(v); break;
        case R_L2:
        case R_SUMSQ: *a += v * v; break;
        case R_PROD: *a *= v; break;
        case R_MAX: if (isnan(v) || v > *a) *a = v; break; /* NaN sticks: v > NaN is false */
        case R_MIN: if (isnan(v) || v < *a) *a = v; break;
        case R_LOGSUMEXP: *a += exp(v - shift[off]); break;
        }
        kiln_next_index(idx, x->dims, x->rank, 1, &off, stt);
    }
    for (int64_t i = 0; i < nout; i++) {
        double v = acc[i];
        switch (im->kind) {
        case R_MEAN: v = v / (double)count; break;
        case R_L2: v = sqrt(v); break;
        case R_LOGSUM: v = log(v); break;
        case R_LOGSUMEXP: v = log(v) + shift[i]; break;
        default: break;
        }
        kiln_store_f64(o->dtype, o->data, i, v);
    }
    free(acc);
    free(shift);
}

static int red_eval(kiln_eval_ctx *c)
{
    const red_impl *im = c->node->op->impl;
    const kiln_tensor *x = c->in[0], *ax = c->n_inputs > 1 ? c->in[1] : NULL;
    int64_t vals[RED_MAX_AXES];
    int n = ax ? (int)kiln_tensor_numel(ax) : 0;
    if (n > RED_MAX_AXES)
        return OPERR(c, "more than %d axes", RED_MAX_AXES);
    for (int i = 0; i < n; i++)
        vals[i] = kiln_tensor_get_i64(ax, i);
    int mask[KILN_MAX_RANK];
    if (red_mask(c->err, vals, n, x->rank, (int)kiln_node_int(c->node, "noop_with_empty_axes"),
                 mask))
        return -1;
    /* output offset of each input dim: the keepdims layout, reduced dims 0
     * (keepdims=0 has the same memory layout) */
    int64_t kd[KILN_MAX_RANK], ost[KILN_MAX_RANK] = {0}, count = 1;
    for (int d = 0; d < x->rank; d++) {
        kd[d] = mask[d] ? 1 : x->dims[d];
        if (mask[d])
            count *= x->dims[d];
    }
    kiln_strides(kd, x->rank, ost);
    for (int d = 0; d < x->rank; d++)
        if (mask[d])
            ost[d] = 0;
    if (kiln_dtype_is_intlike(x->dtype))
        red_int(im, x, c->out[0], ost, count);
    else
        red_float(im, x, c->out[0], ost, count);
    return 0;
}

static const kiln_attr_spec attrs_reduce[] = {{"keepdims", KILN_ATTR_INT, 0, 1, 0, 0},
                                              {"noop_with_empty_axes", KILN_ATTR_INT, 0, 0, 0, 0},
                                              {0}};

#define REDUCE(ID, NAME, KIND, FLOAT_ONLY, BOOL_OK, DOC)                                 \
    static const red_impl impl_##ID = {KIND, FLOAT_ONLY, BOOL_OK};                      \
    static const kiln_op_def op_##ID = {NAME,      1,        2,   1, 1, attrs_reduce, 0, \
                                        red_infer, red_eval, DOC, &impl_##ID};

REDUCE(sum, "ReduceSum", R_SUM, 0, 0, "sum over axes")
REDUCE(mean, "ReduceMean", R_MEAN, 0, 0, "mean over axes")
REDUCE(max, "ReduceMax", R_MAX, 0, 1, "maximum over axes (NaN propagates)")
REDUCE(min, "ReduceMin", R_MIN, 0, 1, "minimum over axes (NaN propagates)")
REDUCE(prod, "ReduceProd", R_PROD, 0, 0, "product over axes")
REDUCE(l1, "ReduceL1", R_L1, 0, 0, "sum of abs(x) over axes")
REDUCE(l2, "ReduceL2", R_L2, 0, 0, "sqrt of the sum of x^2 over axes")
REDUCE(logsum, "ReduceLogSum", R_LOGSUM, 1, 0, "log of the sum over axes")
REDUCE(logsumexp, "ReduceLogSumExp", R_LOGSUMEXP, 1, 0, "log of the sum of e^x over axes (stable)")
REDUCE(sumsq, "ReduceSumSquare", R_SUMSQ, 0, 0, "sum of x^2 over axes")

const kiln_op_def *const kiln_ops_reduce[] = {
    &op_sum, &op_mean, &op_max, &op_min, &op_prod, &op_l1, &op_l2, &op_logsum, &op_logsumexp,
    &op_sumsq, NULL,
};
