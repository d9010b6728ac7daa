/* ops_misc.c - generators and index ops: Range, ConstantOfShape, EyeLike,
 * Trilu, CumSum, TopK, ArgMax/ArgMin, Dropout (inference only), OneHot,
 * NonZero.
 *
 * Integer inputs take exact int64 paths (wrapping like the hardware);
 * floats compute in double. */
#include "op_util.h"

#define SV_MAX 64

static int is_numeric(kiln_dtype dt)
{
    const kiln_dtype_info *i = kiln_dtype_get(dt);
    return (i->is_float || i->is_int) && !i->is_quant;
}

/* Input i must be absent or hold one element (a scalar or a [1] vector). */
static int require_one(kiln_infer_ctx *c, int i, const char *what)
{
    const kiln_type *t = i < c->n_inputs ? c->in[i] : NULL;
    int64_t n = t ? kiln_type_numel(t) : 1;
    if (t && (t->rank > 1 || (n >= 0 && n != 1)))
        return OPERR(c, "%s must be a single value", what);
    return 0;
}

static int64_t prod64(const int64_t *d, int n)
{
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        p *= d[i];
    return p;
}

/* ---- Range ---- */

/* Element count of an integer range (exact, no overflow). */
static int64_t range_count_i(int64_t s, int64_t l, int64_t d)
{
    if (d > 0)
        return l > s ? (int64_t)(((uint64_t)l - (uint64_t)s - 1) / (uint64_t)d + 1) : 0;
    return s > l ? (int64_t)(((uint64_t)s - (uint64_t)l - 1) / (0 - (uint64_t)d) + 1) : 0;
}

static int range_infer(kiln_infer_ctx *c)
{
    kiln_dtype dt = c->in[0]->dtype;
    const kiln_dtype_info *di = kiln_dtype_get(dt);
    if (!is_numeric(dt))
        return OPERR(c, "element type %s not supported", di->name);
    static const char *const names[] = {"start", "limit", "delta"};
    for (int i = 0; i < 3; i++) {
        if (c->in[i]->dtype != dt)
            return OPERR(c, "%s is %s but start is %s", names[i], kiln_dtype_name(c->in[i]->dtype),
                         di->name);
        if (require_one(c, i, names[i]))
            return -1;
    }
    kiln_dim n = KILN_DIM_ANY;
    if (di->is_int) {
        int64_t v[3][1];
        int known = 1;
        for (int i = 0; i < 3; i++)
            known &= kiln_infer_ivec(c, i, v[i], 1) == 1;
        if (known) {
            if (v[2][0] == 0)
                return OPERR(c, "delta is 0");
            n = range_count_i(v[0][0], v[1][0], v[2][0]);
        } else {
            /* symbolic bounds (e.g. from Shape): limit - start, over delta */
            kiln_dim s[1], l[1];
            int64_t d[1];
            if (kiln_infer_vec(c, 0, s, 1) == 1 && kiln_infer_vec(c, 1, l, 1) == 1 &&
                kiln_infer_ivec(c, 2, d, 1) == 1 && d[0] > 0 && kiln_sv_is_dim(s[0]) &&
                kiln_sv_is_dim(l[0])) {
                n = kiln_dim_sub(c->syms, l[0], s[0]);
                if (d[0] > 1)
                    n = kiln_dim_div(c->syms, kiln_dim_add(c->syms, n, d[0] - 1), d[0]);
            }
        }
        if (known && n <= SV_MAX) {
            kiln_dim r[SV_MAX];
            for (int64_t k = 0; k < n; k++)
                r[k] = kiln_sv_lit((int64_t)((uint64_t)v[0][0] + (uint64_t)k * (uint64_t)v[2][0]));
            kiln_infer_set_sym(c, 0, r, (int)n);
        }
    } else {
        double s, l, d;
        if (kiln_infer_scalar_f64(c, 0, &s) && kiln_infer_scalar_f64(c, 1, &l) &&
            kiln_infer_scalar_f64(c, 2, &d)) {
            if (d == 0)
                return OPERR(c, "delta is 0");
            double q = ceil((l - s) / d);
            if (!(q < 1e15))
                return OPERR(c, "range of %g elements", q);
            n = q > 0 ? (int64_t)q : 0;
        }
    }
    c->out[0] = kiln_type_make(dt, 1, &n);
    return 0;
}

static int range_eval(kiln_eval_ctx *c)
{
    kiln_tensor *o = c->out[0];
    int64_t n = o->dims[0];
    if (kiln_dtype_is_intlike(o->dtype)) {
        uint64_t s = (uint64_t)kiln_tensor_get_i64(c->in[0], 0);
        uint64_t d = (uint64_t)kiln_tensor_get_i64(c->in[2], 0);
        for (int64_t k = 0; k < n; k++)
            kiln_store_i64(o->dtype, o->data, k, (int64_t)(s + (uint64_t)k * d));
    } else {
        double s = kiln_tensor_get(c->in[0], 0), d = kiln_tensor_get(c->in[2], 0);
        for (int64_t k = 0; k < n; k++)
            kiln_store_f64(o->dtype, o->data, k, s + (double)k * d);
    }
    return 0;
}

static const kiln_op_def op_range = {"Range", 3, 3, 1, 1, NULL, 0, range_infer, range_eval,
                                     "start, start+delta, ... up to (not including) limit", NULL};

/* ---- ConstantOfShape ---- */

static const kiln_attr_spec attrs_cos[] = {{"value", KILN_ATTR_FLOAT, 0, 0, 0.0, 0},
                                           {"dtype", KILN_ATTR_DTYPE, 0, KILN_F32, 0, 0},
                                           {0}};

static int cos_infer(kiln_infer_ctx *c)
{
    const kiln_type *s = c->in[0];
    kiln_dtype dt = (kiln_dtype)kiln_node_int(c->node, "dtype");
    if (kiln_dtype_get(dt)->is_quant || dt == KILN_DT_INVALID)
        return OPERR(c, "cannot fill a %s tensor", kiln_dtype_name(dt));
    if (kiln_require_int(c, 0, "shape"))
        return -1;
    if (s->rank > 1)
        return OPERR(c, "shape must be 1-D, got rank %d", s->rank);
    kiln_dim t[KILN_MAX_RANK];
    int n = kiln_infer_vec(c, 0, t, KILN_MAX_RANK);
    if (n == -2)
        return OPERR(c, "shape has more than %d dims", KILN_MAX_RANK);
    if (n < 0) {
        int r = s->rank == 1 && KILN_DIM_IS_STATIC(s->dims[0]) ? (int)s->dims[0] : -1;
        if (r > KILN_MAX_RANK)
            return OPERR(c, "shape has more than %d dims", KILN_MAX_RANK);
        c->out[0] = kiln_type_make(dt, r, NULL);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        int64_t v;
        if (kiln_sv_int(t[i], &v) && v < 0)
            return OPERR(c, "negative dimension %lld", (long long)v);
    }
    c->out[0] = kiln_type_make(dt, n, t);
    return 0;
}

static int cos_eval(kiln_eval_ctx *c)
{
    kiln_tensor *o = c->out[0];
    double v = kiln_node_float(c->node, "value");
    int64_t n = kiln_tensor_numel(o);
    int isint = kiln_dtype_is_intlike(o->dtype);
    for (int64_t k = 0; k < n; k++) {
        if (isint)
            kiln_store_i64(o->dtype, o->data, k, o->dtype == KILN_BOOL ? v != 0 : (int64_t)v);
        else
            kiln_store_f64(o->dtype, o->data, k, v);
    }
    return 0;
}

static const kiln_op_def op_cos = {"ConstantOfShape", 1, 1, 1, 1, attrs_cos, 0, cos_infer,
                                   cos_eval, "tensor of the given shape filled with value", NULL};

/* ---- EyeLike ---- */

static const kiln_attr_spec attrs_eyelike[] = {{"dtype", KILN_ATTR_DTYPE, 0, 0, 0, 0},
                                               {"k", KILN_ATTR_INT, 0, 0, 0, 0},
                                               {0}};

static int eyelike_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    kiln_dtype dt = x->dtype;
    if (kiln_node_has_attr(c->node, "dtype"))
        dt = (kiln_dtype)kiln_node_int(c->node, "dtype");
    if (kiln_dtype_get(dt)->is_quant || dt == KILN_DT_INVALID)
        return OPERR(c, "cannot fill a %s tensor", kiln_dtype_name(dt));
    if (x->rank >= 0 && x->rank != 2)
        return OPERR(c, "input must be 2-D, got rank %d", x->rank);
    c->out[0] = *x;
    c->out[0].dtype = dt;
    return 0;
}

static int eyelike_eval(kiln_eval_ctx *c)
{
    kiln_tensor *o = c->out[0];
    int64_t k = kiln_node_int(c->node, "k"), rows = o->dims[0], cols = o->dims[1];
    for (int64_t i = 0; i < rows; i++) {
        /* i + k without overflow for any k */
        if ((k >= 0 && k >= cols) || (k < 0 && -(k + 1) >= i))
            continue;
        int64_t j = i + k;
        if (j >= 0 && j < cols)
            kiln_store_i64(o->dtype, o->data, i * cols + j, 1);
    }
    return 0;
}

static const kiln_op_def op_eyelike = {"EyeLike", 1, 1, 1, 1, attrs_eyelike, 0, eyelike_infer,
                                       eyelike_eval, "2-D tensor with ones on diagonal k", NULL};

/* ---- Trilu ---- */

static const kiln_attr_spec attrs_trilu[] = {{"upper", KILN_ATTR_INT, 0, 1, 0, 0}, {0}};

static int trilu_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0))
        return -1;
    if (x->rank >= 0 && x->rank < 2)
        return OPERR(c, "input must have rank >= 2, got %d", x->rank);
    if (c->n_inputs > 1 && c->in[1] && (kiln_require_int(c, 1, "k") || require_one(c, 1, "k")))
        return -1;
    c->out[0] = *x;
    return 0;
}

static int trilu_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int64_t k = c->n_inputs > 1 && c->in[1] ? kiln_tensor_get_i64(c->in[1], 0) : 0;
    int upper = kiln_node_int(c->node, "upper") != 0;
    int64_t rows = x->dims[x->rank - 2], cols = x->dims[x->rank - 1];
    int64_t nb = prod64(x->dims, x->rank - 2);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) {
                /* j - i is small; compare with k without overflow */
                int64_t diff = j - i;
                int keep = upper ? diff >= k : diff <= k;
                int64_t off = (b * rows + i) * cols + j;
                if (keep)
                    kiln_copy_elem(o, off, x, off);
            }
    return 0;
}

static const kiln_op_def op_trilu = {"Trilu", 1, 2, 1, 1, attrs_trilu, 0, trilu_infer, trilu_eval,
                                     "keep the upper (j-i >= k) or lower (j-i <= k) triangle",
                                     NULL};

/* ---- CumSum ---- */

static const kiln_attr_spec attrs_cumsum[] = {{"exclusive", KILN_ATTR_INT, 0, 0, 0, 0},
                                              {"reverse", KILN_ATTR_INT, 0, 0, 0, 0},
                                              {0}};

static int cumsum_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (!is_numeric(x->dtype))
        return OPERR(c, "element type %s not supported", kiln_dtype_name(x->dtype));
    if (kiln_require_int(c, 1, "axis") || require_one(c, 1, "axis"))
        return -1;
    int64_t a[1];
    int ax;
    if (x->rank >= 0 && kiln_infer_ivec(c, 1, a, 1) == 1) {
        if (x->rank == 0)
            return OPERR(c, "input must have rank >= 1");
        if (kiln_axis(c->err, a[0], x->rank, &ax))
            return -1;
    }
    c->out[0] = *x;
    return 0;
}

static int cumsum_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int axis;
    if (kiln_axis(c->err, kiln_tensor_get_i64(c->in[1], 0), x->rank, &axis))
        return -1;
    int excl = kiln_node_int(c->node, "exclusive") != 0;
    int rev = kiln_node_int(c->node, "reverse") != 0;
    int64_t outer = prod64(x->dims, axis), D = x->dims[axis];
    int64_t inner = prod64(x->dims + axis + 1, x->rank - axis - 1);
    int isint = kiln_dtype_is_intlike(x->dtype);
    for (int64_t p = 0; p < outer; p++)
        for (int64_t q = 0; q < inner; q++) {
            uint64_t iacc = 0;
            double facc = 0;
            for (int64_t t = 0; t < D; t++) {
                int64_t j = rev ? D - 1 - t : t, off = (p * D + j) * inner + q;
                if (isint) {
                    uint64_t v = (uint64_t)kiln_load_i64(x->dtype, x->data, off);
                    if (!excl)
                        iacc += v;
                    kiln_store_i64(o->dtype, o->data, off, (int64_t)iacc);
                    if (excl)
                        iacc += v;
                } else {
                    double v = kiln_load_f64(x->dtype, x->data, off);
                    if (!excl)
                        facc += v;
                    kiln_store_f64(o->dtype, o->data, off, facc);
                    if (excl)
                        facc += v;
                }
            }
        }
    return 0;
}

static const kiln_op_def op_cumsum = {"CumSum", 2, 2, 1, 1, attrs_cumsum, 0, cumsum_infer,
                                      cumsum_eval, "running sum along an axis (exclusive, reverse)",
                                      NULL};

/* ---- TopK ---- */

static const kiln_attr_spec attrs_topk[] = {{"axis", KILN_ATTR_INT, 0, -1, 0, 0},
                                            {"largest", KILN_ATTR_INT, 0, 1, 0, 0},
                                            {"sorted", KILN_ATTR_INT, 0, 1, 0, 0},
                                            {0}};

static int topk_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (!is_numeric(x->dtype))
        return OPERR(c, "element type %s not supported", kiln_dtype_name(x->dtype));
    if (kiln_require_int(c, 1, "K") || require_one(c, 1, "K"))
        return -1;
    kiln_type o = *x;
    if (x->rank >= 0) {
        int axis;
        if (x->rank == 0)
            return OPERR(c, "input must have rank >= 1");
        if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
            return -1;
        kiln_dim k[1];
        int64_t v;
        o.dims[axis] = KILN_DIM_ANY;
        if (kiln_infer_vec(c, 1, k, 1) == 1) {
            if (kiln_sv_int(k[0], &v)) {
                if (v < 0)
                    return OPERR(c, "K is negative (%lld)", (long long)v);
                if (KILN_DIM_IS_STATIC(x->dims[axis]) && v > x->dims[axis])
                    return OPERR(c, "K = %lld exceeds the axis size %lld", (long long)v,
                                 (long long)x->dims[axis]);
            }
            o.dims[axis] = kiln_sv_is_dim(k[0]) ? k[0] : KILN_DIM_ANY;
        }
    }
    c->out[0] = o;
    if (c->n_outputs > 1) {
        c->out[1] = o;
        c->out[1].dtype = KILN_I64;
    }
    return 0;
}

typedef struct topk_item {
    double v;   /* value (NaN sorts above everything, as numpy does) */
    int64_t iv; /* exact integer value; 0 for floats */
    int64_t i;  /* position along the axis */
} topk_item;

/* Ascending by value; NaN last; equal values by position. */
static int topk_cmp_value(const topk_item *a, const topk_item *b)
{
    int na = isnan(a->v), nb = isnan(b->v);
    if (na != nb)
        return na - nb;
    if (!na && a->v != b->v)
        return a->v < b->v ? -1 : 1;
    if (a->iv != b->iv)
        return a->iv < b->iv ? -1 : 1;
    return 0;
}

static int topk_cmp_small(const void *pa, const void *pb)
{
    const topk_item *a = pa, *b = pb;
    int r = topk_cmp_value(a, b);
    return r ? r : (a->i > b->i) - (a->i < b->i);
}

static int topk_cmp_large(const void *pa, const void *pb)
{
    const topk_item *a = pa, *b = pb;
    int r = topk_cmp_value(b, a);
    return r ? r : (a->i > b->i) - (a->i < b->i);
}

static int topk_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *vals = c->out[0], *inds = c->n_outputs > 1 ? c->out[1] : NULL;
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    int largest = kiln_node_int(c->node, "largest") != 0;
    int64_t outer = prod64(x->dims, axis), D = x->dims[axis], K = vals->dims[axis];
    int64_t inner = prod64(x->dims + axis + 1, x->rank - axis - 1);
    int isint = kiln_dtype_is_intlike(x->dtype), uns = !kiln_dtype_get(x->dtype)->is_signed;
    topk_item *it = kiln_xmalloc(sizeof *it * (size_t)(D ? D : 1));
    for (int64_t p = 0; p < outer; p++)
        for (int64_t q = 0; q < inner; q++) {
            for (int64_t j = 0; j < D; j++) {
                int64_t off = (p * D + j) * inner + q;
                it[j].i = j;
                it[j].v = kiln_load_f64(x->dtype, x->data, off);
                it[j].iv = isint ? kiln_load_i64(x->dtype, x->data, off) : 0;
                if (isint && uns) /* order unsigned 64-bit values by their bits */
                    it[j].iv = (int64_t)((uint64_t)it[j].iv ^ (UINT64_C(1) << 63));
            }
            qsort(it, (size_t)D, sizeof *it, largest ? topk_cmp_large : topk_cmp_small);
            for (int64_t j = 0; j < K; j++) {
                int64_t o = (p * K + j) * inner + q;
                kiln_copy_elem(vals, o, x, (p * D + it[j].i) * inner + q);
                if (inds)
                    kiln_store_i64(KILN_I64, inds->data, o, it[j].i);
            }
        }
    free(it);
    return 0;
}

static const kiln_op_def op_topk = {
    "TopK", 2, 2, 1, 2, attrs_topk, 0, topk_infer, topk_eval,
    "K largest (or smallest) values along an axis and their int64 indices (ties: lower index)",
    NULL};

/* ---- ArgMax / ArgMin ---- */

static const kiln_attr_spec attrs_arg[] = {{"axis", KILN_ATTR_INT, 0, 0, 0, 0},
                                           {"keepdims", KILN_ATTR_INT, 0, 1, 0, 0},
                                           {"select_last_index", KILN_ATTR_INT, 0, 0, 0, 0},
                                           {0}};

static int arg_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (!is_numeric(x->dtype))
        return OPERR(c, "element type %s not supported", kiln_dtype_name(x->dtype));
    int keep = kiln_node_int(c->node, "keepdims") != 0;
    if (x->rank < 0) {
        c->out[0] = kiln_type_make(KILN_I64, -1, NULL);
        return 0;
    }
    if (x->rank == 0)
        return OPERR(c, "input must have rank >= 1");
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    if (KILN_DIM_IS_STATIC(x->dims[axis]) && x->dims[axis] == 0)
        return OPERR(c, "axis %d is empty", axis);
    kiln_type o = kiln_type_make(KILN_I64, 0, NULL);
    for (int d = 0; d < x->rank; d++) {
        if (d != axis)
            o.dims[o.rank++] = x->dims[d];
        else if (keep)
            o.dims[o.rank++] = 1;
    }
    c->out[0] = o;
    return 0;
}

static int arg_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    int want_max = *(const int *)c->node->op->impl;
    int last = kiln_node_int(c->node, "select_last_index") != 0;
    int64_t outer = prod64(x->dims, axis), D = x->dims[axis];
    int64_t inner = prod64(x->dims + axis + 1, x->rank - axis - 1);
    int isint = kiln_dtype_is_intlike(x->dtype), uns = !kiln_dtype_get(x->dtype)->is_signed;
    for (int64_t p = 0; p < outer; p++)
        for (int64_t q = 0; q < inner; q++) {
            int64_t best = 0, bi = 0;
            double bf = 0;
            for (int64_t j = 0; j < D; j++) {
                int64_t off = (p * D + j) * inner + q;
                int take;
                if (isint) {
                    int64_t v = kiln_load_i64(x->dtype, x->data, off);
                    if (uns) /* compare unsigned values by their bits */
                        v = (int64_t)((uint64_t)v ^ (UINT64_C(1) << 63));
                    take = j == 0 || (want_max ? v > best : v < best) || (last && v == best);
                    if (take)
                        best = v;
                } else {
                    /* NaN wins over numbers, like numpy's argmax/argmin */
                    double v = kiln_load_f64(x->dtype, x->data, off);
                    if (j == 0)
                        take = 1;
                    else if (isnan(bf))
                        take = last && isnan(v);
                    else if (isnan(v))
                        take = 1;
                    else
                        take = (want_max ? v > bf : v < bf) || (last && v == bf);
                    if (take)
                        bf = v;
                }
                if (take)
                    bi = j;
            }
            kiln_store_i64(KILN_I64, o->data, p * inner + q, bi);
        }
    return 0;
}

/* impl: 1 for the largest value, 0 for the smallest */
static const int arg_largest = 1, arg_smallest = 0;
static const kiln_op_def op_argmax = {"ArgMax", 1, 1, 1, 1, attrs_arg, 0, arg_infer, arg_eval,
                                      "index of the largest value along an axis (int64)",
                                      &arg_largest};
static const kiln_op_def op_argmin = {"ArgMin", 1, 1, 1, 1, attrs_arg, 0, arg_infer, arg_eval,
                                      "index of the smallest value along an axis (int64)",
                                      &arg_smallest};

/* ---- Dropout ---- */

static const kiln_attr_spec attrs_dropout[] = {{"seed", KILN_ATTR_INT, 0, 0, 0, 0}, {0}};

static int dropout_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0))
        return -1;
    if (!kiln_dtype_is_float(x->dtype))
        return OPERR(c, "data must be a float type, got %s", kiln_dtype_name(x->dtype));
    int has_ratio = c->n_inputs > 1 && c->in[1], has_mode = c->n_inputs > 2 && c->in[2];
    if (has_ratio && (!kiln_dtype_is_float(c->in[1]->dtype) || require_one(c, 1, "ratio")))
        return OPERR(c, "ratio must be a single float value");
    if (has_mode && (c->in[2]->dtype != KILN_BOOL || require_one(c, 2, "training_mode")))
        return OPERR(c, "training_mode must be a single bool value");
    double ratio = 0.5, mode = 0;
    int ratio_known = !has_ratio || kiln_infer_scalar_f64(c, 1, &ratio);
    if (has_ratio && ratio_known && !(ratio >= 0 && ratio < 1))
        return OPERR(c, "ratio %g is outside [0, 1)", ratio);
    /* inference mode is the identity; real dropout would need an RNG stream */
    if (has_mode && kiln_infer_scalar_f64(c, 2, &mode) && mode != 0 && ratio_known && ratio > 0)
        return OPERR(c, "training-mode Dropout is not supported");
    c->out[0] = *x;
    if (c->n_outputs > 1) {
        c->out[1] = *x;
        c->out[1].dtype = KILN_BOOL;
    }
    return 0;
}

static int dropout_eval(kiln_eval_ctx *c)
{
    if (c->out[0]->nbytes)
        memcpy(c->out[0]->data, c->in[0]->data, c->out[0]->nbytes);
    if (c->n_outputs > 1 && c->out[1]->nbytes)
        memset(c->out[1]->data, 1, c->out[1]->nbytes);
    return 0;
}

static const kiln_op_def op_dropout = {"Dropout", 1, 3, 1, 2, attrs_dropout, 0, dropout_infer,
                                       dropout_eval,
                                       "inference mode: identity, mask all true", NULL};

/* ---- OneHot ---- */

static const kiln_attr_spec attrs_onehot[] = {{"axis", KILN_ATTR_INT, 0, -1, 0, 0}, {0}};

static int onehot_infer(kiln_infer_ctx *c)
{
    const kiln_type *ix = c->in[0], *v = c->in[2];
    if (!is_numeric(ix->dtype))
        return OPERR(c, "indices: element type %s not supported", kiln_dtype_name(ix->dtype));
    if (!is_numeric(c->in[1]->dtype) || require_one(c, 1, "depth"))
        return OPERR(c, "depth must be a single numeric value");
    if (kiln_require_unquant(c, 2))
        return -1;
    if (v->rank >= 0 && (v->rank != 1 || (KILN_DIM_IS_STATIC(v->dims[0]) && v->dims[0] != 2)))
        return OPERR(c, "values must be [off_value, on_value]");
    if (ix->rank < 0) {
        c->out[0] = kiln_type_make(v->dtype, -1, NULL);
        return 0;
    }
    int orank = ix->rank + 1, axis;
    if (orank > KILN_MAX_RANK)
        return OPERR(c, "output rank %d exceeds %d", orank, KILN_MAX_RANK);
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), orank, &axis))
        return -1;
    kiln_dim depth = KILN_DIM_ANY, dv[1];
    double df;
    if (kiln_infer_scalar_f64(c, 1, &df)) {
        if (!(df >= 0 && df < 1e12))
            return OPERR(c, "depth %g is not a valid size", df);
        depth = (int64_t)df;
    } else if (kiln_dtype_get(c->in[1]->dtype)->is_int && kiln_infer_vec(c, 1, dv, 1) == 1 &&
               kiln_sv_is_dim(dv[0])) {
        depth = dv[0];
    }
    kiln_type o = kiln_type_make(v->dtype, orank, NULL);
    for (int d = 0, j = 0; d < orank; d++)
        o.dims[d] = d == axis ? depth : ix->dims[j++];
    c->out[0] = o;
    return 0;
}

static int onehot_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *ix = c->in[0], *v = c->in[2];
    kiln_tensor *o = c->out[0];
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), o->rank, &axis))
        return -1;
    int64_t depth = o->dims[axis], n = kiln_tensor_numel(o);
    int64_t outer = prod64(o->dims, axis), inner = prod64(o->dims + axis + 1, o->rank - axis - 1);
    for (int64_t k = 0; k < n; k++)
        kiln_copy_elem(o, k, v, 0);
    int isint = kiln_dtype_is_intlike(ix->dtype);
    for (int64_t p = 0; p < outer; p++)
        for (int64_t q = 0; q < inner; q++) {
            int64_t off = p * inner + q, t;
            if (isint) {
                t = kiln_load_i64(ix->dtype, ix->data, off);
            } else { /* non-integer indices are cast to int64 (truncation) */
                double f = kiln_load_f64(ix->dtype, ix->data, off);
                if (!(f > -9e18 && f < 9e18))
                    continue;
                t = (int64_t)f;
            }
            if (t < 0 && t >= -depth)
                t += depth;
            if (t >= 0 && t < depth)
                kiln_copy_elem(o, (p * depth + t) * inner + q, v, 1);
        }
    return 0;
}

static const kiln_op_def op_onehot = {"OneHot", 3, 3, 1, 1, attrs_onehot, 0, onehot_infer,
                                      onehot_eval,
                                      "one-hot encoding with [off, on] values along a new axis",
                                      NULL};

/* ---- NonZero ---- */

static int64_t count_nonzero(const kiln_tensor *x)
{
    int64_t n = kiln_tensor_numel(x), cnt = 0;
    int isint = kiln_dtype_is_intlike(x->dtype);
    for (int64_t k = 0; k < n; k++)
        cnt += isint ? kiln_load_i64(x->dtype, x->data, k) != 0
                     : kiln_load_f64(x->dtype, x->data, k) != 0;
    return cnt;
}

static int nonzero_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0))
        return -1;
    /* a scalar gives [0, count], as the ONNX reference does */
    kiln_dim d[2] = {x->rank < 0 ? KILN_DIM_ANY : x->rank, KILN_DIM_ANY};
    if (c->in_val[0])
        d[1] = count_nonzero(c->in_val[0]);
    c->out[0] = kiln_type_make(KILN_I64, 2, d);
    return 0;
}

static int nonzero_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int rank = x->rank, isint = kiln_dtype_is_intlike(x->dtype);
    int64_t n = kiln_tensor_numel(x), nnz = o->dims[1], j = 0, idx[KILN_MAX_RANK] = {0};
    for (int64_t k = 0; k < n && rank > 0; k++) {
        int nz = isint ? kiln_load_i64(x->dtype, x->data, k) != 0
                       : kiln_load_f64(x->dtype, x->data, k) != 0;
        if (nz) {
            for (int d = 0; d < rank; d++)
                kiln_store_i64(KILN_I64, o->data, d * nnz + j, idx[d]);
            j++;
        }
        kiln_next_index(idx, x->dims, rank, 0, NULL, NULL);
    }
    return 0;
}

static const kiln_op_def op_nonzero = {"NonZero", 1, 1, 1, 1, NULL, 0, nonzero_infer,
                                       nonzero_eval,
                                       "int64 [rank, count] coordinates of the non-zero elements",
                                       NULL};

const kiln_op_def *const kiln_ops_misc[] = {
    &op_range, &op_cos,    &op_eyelike, &op_trilu,   &op_cumsum, &op_topk,
    &op_argmax, &op_argmin, &op_dropout, &op_onehot, &op_nonzero, NULL,
};
