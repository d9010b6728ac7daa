/* ops_elementwise.c - elementwise ops: unary math, binary arithmetic and
 * comparisons with numpy broadcasting, logic, Where, Clip, Cast.
 *
 * Each op is one table entry whose `impl` holds its scalar function; one
 * broadcasting loop evaluates them all. Integer inputs take an exact int64
 * path where the op has one, so int64 values beyond 2^53 stay exact. */
#include "op_util.h"

#include <float.h>

typedef struct ew_params {
    double p[4]; /* float attributes, in the order of ew_impl.params */
    int64_t ip[2];
} ew_params;

enum ew_types {
    EW_FLOAT,   /* float inputs only */
    EW_NUMERIC, /* float or integer */
    EW_INT,     /* integers only */
    EW_BOOL,    /* bool only */
    EW_ANY,     /* any element type */
};

typedef struct ew_impl {
    int arity; /* 1, 2, 3; -1 variadic */
    enum ew_types types;
    int out_bool; /* result is bool (comparisons, predicates) */
    double (*f1)(double, const ew_params *);
    double (*f2)(double, double, const ew_params *);
    int64_t (*i1)(int64_t, const ew_params *);
    int64_t (*i2)(int64_t, int64_t, const ew_params *);
    const char *params[4];  /* float attributes to fetch */
    const char *iparams[2]; /* int attributes to fetch */
} ew_impl;

/* ---- inference ---- */

/* Integer arithmetic on vectors whose contents are known (shape math such
 * as past+arange(seq), or seq-1 for a causal mask slice) keeps the contents,
 * so later Reshape/Range/Slice see symbolic sizes. */
static void sym_arith(kiln_infer_ctx *c)
{
    const char *op = c->node->op->name;
    int kind = !strcmp(op, "Add") ? 0 : !strcmp(op, "Sub") ? 1 : !strcmp(op, "Mul") ? 2
             : !strcmp(op, "Div") ? 3 : -1;
    if (kind < 0 || c->n_inputs != 2 || !kiln_dtype_get(c->in[0]->dtype)->is_int)
        return;
    if (c->in[0]->rank > 1 || c->in[1]->rank > 1 || c->in[0]->rank < 0 || c->in[1]->rank < 0)
        return;
    kiln_dim a[64], b[64], r[64];
    int na = kiln_infer_vec(c, 0, a, 64), nb = kiln_infer_vec(c, 1, b, 64);
    if (na < 0 || nb < 0 || (na != nb && na != 1 && nb != 1))
        return;
    int n = na > nb ? na : nb;
    int has_sym = 0;
    for (int i = 0; i < n; i++) {
        kiln_dim x = a[na == 1 ? 0 : i], y = b[nb == 1 ? 0 : i];
        int64_t xi, yi;
        if (kiln_sv_int(x, &xi) && kiln_sv_int(y, &yi)) {
            int64_t v = kind == 0 ? xi + yi : kind == 1 ? xi - yi : kind == 2 ? xi * yi
                      : (yi ? xi / yi : 0);
            r[i] = kiln_sv_lit(v);
        } else if (kiln_sv_is_dim(x) && kiln_sv_is_dim(y)) {
            r[i] = kind == 0 ? kiln_dim_add(c->syms, x, y) : kind == 1 ? kiln_dim_sub(c->syms, x, y)
                 : kind == 2 ? kiln_dim_mul(c->syms, x, y) : kiln_dim_div(c->syms, x, y);
            has_sym = 1;
        } else {
            r[i] = KILN_DIM_ANY;
        }
    }
    (void)has_sym;
    /* a scalar result keeps the rank-0 shape; contents are still one entry */
    kiln_infer_set_sym(c, 0, r, n);
}

static int ew_infer(kiln_infer_ctx *c)
{
    const ew_impl *im = c->node->op->impl;
    const kiln_type *a = c->in[0];
    kiln_type r = *a;
    for (int i = 0; i < c->n_inputs; i++) {
        if (!c->in[i])
            return OPERR(c, "input %d is absent", i);
        kiln_dtype dt = c->in[i]->dtype;
        const kiln_dtype_info *di = kiln_dtype_get(dt);
        if (di->is_quant)
            return OPERR(c, "input %d: block-quantized %s needs Dequantize first", i, di->name);
        int ok = 1;
        switch (im->types) {
        case EW_FLOAT: ok = di->is_float; break;
        case EW_NUMERIC: ok = di->is_float || di->is_int; break;
        case EW_INT: ok = di->is_int; break;
        case EW_BOOL: ok = dt == KILN_BOOL; break;
        case EW_ANY: ok = 1; break;
        }
        if (!ok)
            return OPERR(c, "input %d: element type %s not supported", i, di->name);
        /* Pow's exponent may differ in type; all others must match */
        if (i > 0 && dt != a->dtype && strcmp(c->node->op->name, "Pow") != 0)
            return OPERR(c, "input %d is %s but input 0 is %s", i, di->name,
                         kiln_dtype_name(a->dtype));
        if (i > 0 && kiln_bcast_type(c, &r, c->in[i], &r))
            return -1;
    }
    r.dtype = im->out_bool ? KILN_BOOL : a->dtype;
    c->out[0] = r;
    sym_arith(c);
    return 0;
}

/* ---- evaluation ---- */

static void fetch_params(const kiln_node *n, const ew_impl *im, ew_params *p)
{
    memset(p, 0, sizeof *p);
    for (int i = 0; i < 4 && im->params[i]; i++)
        p->p[i] = kiln_node_float(n, im->params[i]);
    for (int i = 0; i < 2 && im->iparams[i]; i++)
        p->ip[i] = kiln_node_int(n, im->iparams[i]);
}

static int ew_eval(kiln_eval_ctx *c)
{
    const ew_impl *im = c->node->op->impl;
    kiln_tensor *o = c->out[0];
    int64_t n = kiln_tensor_numel(o);
    if (n == 0)
        return 0;
    int nin = c->n_inputs;
    int64_t st[KILN_MAX_OP_INPUTS][KILN_MAX_RANK];
    int64_t off[KILN_MAX_OP_INPUTS] = {0};
    int64_t idx[KILN_MAX_RANK] = {0};
    for (int i = 0; i < nin; i++)
        kiln_bcast_strides(c->in[i], o->rank, o->dims, st[i]);
    ew_params prm;
    fetch_params(c->node, im, &prm);
    kiln_dtype in_dt = c->in[0]->dtype;
    int int_path = kiln_dtype_is_intlike(in_dt) && (im->i1 || im->i2);
    for (int64_t k = 0; k < n; k++) {
        if (int_path) {
            int64_t acc = kiln_load_i64(in_dt, c->in[0]->data, off[0]);
            if (im->arity == 1)
                acc = im->i1(acc, &prm);
            for (int i = 1; i < nin; i++)
                acc = im->i2(acc, kiln_load_i64(c->in[i]->dtype, c->in[i]->data, off[i]), &prm);
            kiln_store_i64(o->dtype, o->data, k, acc);
        } else {
            double acc = kiln_load_f64(in_dt, c->in[0]->data, off[0]);
            if (im->arity == 1)
                acc = im->f1(acc, &prm);
            for (int i = 1; i < nin; i++)
                acc = im->f2(acc, kiln_load_f64(c->in[i]->dtype, c->in[i]->data, off[i]), &prm);
            if (im->out_bool || o->dtype == KILN_BOOL)
                kiln_store_i64(KILN_BOOL, o->data, k, acc != 0);
            else
                kiln_store_f64(o->dtype, o->data, k, acc);
        }
        kiln_next_index(idx, o->dims, o->rank, nin, off, st);
    }
    return 0;
}

/* ---- scalar functions ---- */

#define F1(name, expr) \
    static double name(double x, const ew_params *p) { (void)p; return (expr); }
#define F2(name, expr) \
    static double name(double x, double y, const ew_params *p) { (void)p; return (expr); }
#define I1(name, expr) \
    static int64_t name(int64_t x, const ew_params *p) { (void)p; return (expr); }
#define I2(name, expr) \
    static int64_t name(int64_t x, int64_t y, const ew_params *p) { (void)p; return (expr); }

static double sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

F1(f_neg, -x)
F1(f_abs, fabs(x))
F1(f_sqrt, sqrt(x))
F1(f_recip, 1 / x)
F1(f_exp, exp(x))
F1(f_log, log(x))
F1(f_tanh, tanh(x))
F1(f_erf, erf(x))
F1(f_sigmoid, sigmoid(x))
F1(f_relu, x > 0 ? x : (isnan(x) ? x : 0))
F1(f_cos, cos(x))
F1(f_sin, sin(x))
F1(f_tan, tan(x))
F1(f_acos, acos(x))
F1(f_asin, asin(x))
F1(f_atan, atan(x))
F1(f_cosh, cosh(x))
F1(f_sinh, sinh(x))
F1(f_acosh, acosh(x))
F1(f_asinh, asinh(x))
F1(f_atanh, atanh(x))
F1(f_floor, floor(x))
F1(f_ceil, ceil(x))
F1(f_round, nearbyint(x)) /* half to even in the default rounding mode */
F1(f_sign, x > 0 ? 1 : x < 0 ? -1 : (isnan(x) ? x : 0))
F1(f_softplus, x > 30 ? x : log1p(exp(x)))
F1(f_softsign, x / (1 + fabs(x)))
F1(f_silu, x *sigmoid(x))
F1(f_mish, x *tanh(x > 30 ? x : log1p(exp(x))))
F1(f_identity, x)
F1(f_isnan, isnan(x) ? 1 : 0)
F1(f_not, x == 0)
F1(f_hardswish, x *fmax(0, fmin(1, x / 6 + 0.5)))
F1(f_leakyrelu, x >= 0 ? x : p->p[0] * x)
F1(f_elu, x >= 0 ? x : p->p[0] * (exp(x) - 1))
F1(f_celu, fmax(0, x) + fmin(0, p->p[0] * (exp(x / p->p[0]) - 1)))
F1(f_selu, p->p[1] * (x > 0 ? x : p->p[0] * (exp(x) - 1)))
F1(f_hardsigmoid, fmax(0, fmin(1, p->p[0] * x + p->p[1])))
F1(f_thresholdedrelu, x > p->p[0] ? x : 0)

static double f_gelu(double x, const ew_params *p)
{
    if (p->ip[0]) /* tanh approximation */
        return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
}

static double f_isinf(double x, const ew_params *p)
{
    /* ip: detect_negative, detect_positive */
    return isinf(x) && ((x < 0 && p->ip[0]) || (x > 0 && p->ip[1]));
}

I1(i_neg, (int64_t)(0 - (uint64_t)x))
I1(i_abs, x < 0 ? (int64_t)(0 - (uint64_t)x) : x)
I1(i_sign, x > 0 ? 1 : x < 0 ? -1 : 0)
I1(i_relu, x > 0 ? x : 0)
I1(i_identity, x)
I1(i_not, !x)
I1(i_bitnot, ~x)

F2(f_add, x + y)
F2(f_sub, x - y)
F2(f_mul, x *y)
F2(f_div, x / y)
F2(f_min, (isnan(x) || isnan(y)) ? NAN : fmin(x, y))
F2(f_max, (isnan(x) || isnan(y)) ? NAN : fmax(x, y))
F2(f_eq, x == y)
F2(f_lt, x < y)
F2(f_gt, x > y)
F2(f_le, x <= y)
F2(f_ge, x >= y)
F2(f_and, (x != 0) && (y != 0))
F2(f_or, (x != 0) || (y != 0))
F2(f_xor, (x != 0) != (y != 0))
F2(f_prelu, x >= 0 ? x : x * y)

static double f_pow(double x, double y, const ew_params *p)
{
    (void)p;
    return pow(x, y);
}

static double f_mod(double x, double y, const ew_params *p)
{
    if (p->ip[0]) /* fmod=1: sign of the dividend */
        return fmod(x, y);
    double r = fmod(x, y);
    if (r != 0 && ((r < 0) != (y < 0)))
        r += y;
    return r;
}

/* Wrapping int arithmetic (unsigned, so overflow is defined). */
I2(i_add, (int64_t)((uint64_t)x + (uint64_t)y))
I2(i_sub, (int64_t)((uint64_t)x - (uint64_t)y))
I2(i_mul, (int64_t)((uint64_t)x * (uint64_t)y))
I2(i_min, x < y ? x : y)
I2(i_max, x > y ? x : y)
I2(i_eq, x == y)
I2(i_lt, x < y)
I2(i_gt, x > y)
I2(i_le, x <= y)
I2(i_ge, x >= y)
I2(i_and, x && y)
I2(i_or, x || y)
I2(i_xor, (!x) != (!y))
I2(i_bitand, x &y)
I2(i_bitor, x | y)
I2(i_bitxor, x ^ y)
I2(i_prelu, x >= 0 ? x : x * y)

static int64_t i_div(int64_t x, int64_t y, const ew_params *p)
{
    (void)p;
    if (y == 0)
        return 0;
    if (y == -1)
        return (int64_t)(0 - (uint64_t)x);
    return x / y; /* truncation, as C and the ONNX reference do */
}

static int64_t i_mod(int64_t x, int64_t y, const ew_params *p)
{
    if (y == 0)
        return 0;
    if (y == -1)
        return 0;
    int64_t r = x % y;
    if (!p->ip[0] && r != 0 && ((r < 0) != (y < 0)))
        r += y;
    return r;
}

static int64_t i_pow(int64_t x, int64_t y, const ew_params *p)
{
    (void)p;
    if (y < 0)
        return x == 1 ? 1 : (x == -1 ? (y % 2 ? -1 : 1) : 0);
    uint64_t r = 1, b = (uint64_t)x;
    while (y) {
        if (y & 1)
            r *= b;
        b *= b;
        y >>= 1;
    }
    return (int64_t)r;
}

/* BitShift works on unsigned values; p->ip[0] is 1 for "LEFT". */
static int64_t i_bitshift(int64_t x, int64_t y, const ew_params *p)
{
    if (y < 0 || y >= 64)
        return 0;
    return p->ip[0] ? (int64_t)((uint64_t)x << y) : (int64_t)((uint64_t)x >> y);
}

/* ---- table ---- */

static const kiln_attr_spec attrs_alpha001[] = {{"alpha", KILN_ATTR_FLOAT, 0, 0, 0.01, 0}, {0}};
static const kiln_attr_spec attrs_alpha1[] = {{"alpha", KILN_ATTR_FLOAT, 0, 0, 1.0, 0}, {0}};
static const kiln_attr_spec attrs_selu[] = {
    {"alpha", KILN_ATTR_FLOAT, 0, 0, 1.67326319217681884765625, 0},
    {"gamma", KILN_ATTR_FLOAT, 0, 0, 1.05070102214813232421875, 0},
    {0}};
static const kiln_attr_spec attrs_hardsigmoid[] = {{"alpha", KILN_ATTR_FLOAT, 0, 0, 0.2, 0},
                                                   {"beta", KILN_ATTR_FLOAT, 0, 0, 0.5, 0},
                                                   {0}};
static const kiln_attr_spec attrs_gelu[] = {{"approximate", KILN_ATTR_STRING, 0, 0, 0, "none"}, {0}};
static const kiln_attr_spec attrs_isinf[] = {{"detect_negative", KILN_ATTR_INT, 0, 1, 0, 0},
                                             {"detect_positive", KILN_ATTR_INT, 0, 1, 0, 0},
                                             {0}};
static const kiln_attr_spec attrs_mod[] = {{"fmod", KILN_ATTR_INT, 0, 0, 0, 0}, {0}};
static const kiln_attr_spec attrs_bitshift[] = {{"direction", KILN_ATTR_STRING, 1, 0, 0, 0}, {0}};

#define UNARY(ID, NAME, TYPES, F, I, DOC, ...)                                                  \
    static const ew_impl impl_##ID = {1, TYPES, 0, F, NULL, I, NULL, __VA_ARGS__};             \
    static const kiln_op_def op_##ID = {NAME, 1, 1, 1, 1, NULL, KILN_OP_ELEMENTWISE, ew_infer, \
                                        ew_eval, DOC, &impl_##ID};
#define UNARY_A(ID, NAME, TYPES, F, ATTRS, DOC, ...)                                            \
    static const ew_impl impl_##ID = {1, TYPES, 0, F, NULL, NULL, NULL, __VA_ARGS__};          \
    static const kiln_op_def op_##ID = {NAME, 1, 1, 1, 1, ATTRS, KILN_OP_ELEMENTWISE, ew_infer, \
                                        ew_eval, DOC, &impl_##ID};
#define BINARY(ID, NAME, TYPES, BOOLOUT, F, I, FLAGS, ATTRS, DOC, ...)                         \
    static const ew_impl impl_##ID = {2, TYPES, BOOLOUT, NULL, F, NULL, I, __VA_ARGS__};       \
    static const kiln_op_def op_##ID = {NAME,     2,       2,   1, 1, ATTRS,                   \
                                        KILN_OP_ELEMENTWISE | (FLAGS), ew_infer, ew_eval, DOC, \
                                        &impl_##ID};
#define VARIADIC(ID, NAME, F, I, DOC)                                                           \
    static const ew_impl impl_##ID = {-1, EW_NUMERIC, 0, NULL, F, NULL, I, {0}, {0}};          \
    static const kiln_op_def op_##ID = {NAME,     1,       KILN_MAX_OP_INPUTS, 1, 1, NULL,      \
                                        KILN_OP_ELEMENTWISE | KILN_OP_COMMUTATIVE, ew_infer,    \
                                        ew_eval,  DOC,     &impl_##ID};

UNARY(neg, "Neg", EW_NUMERIC, f_neg, i_neg, "y = -x", {0}, {0})
UNARY(abs, "Abs", EW_NUMERIC, f_abs, i_abs, "y = |x|", {0}, {0})
UNARY(sqrt, "Sqrt", EW_FLOAT, f_sqrt, NULL, "y = sqrt(x)", {0}, {0})
UNARY(recip, "Reciprocal", EW_FLOAT, f_recip, NULL, "y = 1/x", {0}, {0})
UNARY(exp, "Exp", EW_FLOAT, f_exp, NULL, "y = e^x", {0}, {0})
UNARY(log, "Log", EW_FLOAT, f_log, NULL, "natural logarithm", {0}, {0})
UNARY(tanh, "Tanh", EW_FLOAT, f_tanh, NULL, "hyperbolic tangent", {0}, {0})
UNARY(erf, "Erf", EW_FLOAT, f_erf, NULL, "Gauss error function", {0}, {0})
UNARY(sigmoid, "Sigmoid", EW_FLOAT, f_sigmoid, NULL, "1/(1+e^-x)", {0}, {0})
UNARY(relu, "Relu", EW_NUMERIC, f_relu, i_relu, "max(x, 0)", {0}, {0})
UNARY(cos, "Cos", EW_FLOAT, f_cos, NULL, "cosine", {0}, {0})
UNARY(sin, "Sin", EW_FLOAT, f_sin, NULL, "sine", {0}, {0})
UNARY(tan, "Tan", EW_FLOAT, f_tan, NULL, "tangent", {0}, {0})
UNARY(acos, "Acos", EW_FLOAT, f_acos, NULL, "arc cosine", {0}, {0})
UNARY(asin, "Asin", EW_FLOAT, f_asin, NULL, "arc sine", {0}, {0})
UNARY(atan, "Atan", EW_FLOAT, f_atan, NULL, "arc tangent", {0}, {0})
UNARY(cosh, "Cosh", EW_FLOAT, f_cosh, NULL, "hyperbolic cosine", {0}, {0})
UNARY(sinh, "Sinh", EW_FLOAT, f_sinh, NULL, "hyperbolic sine", {0}, {0})
UNARY(acosh, "Acosh", EW_FLOAT, f_acosh, NULL, "inverse hyperbolic cosine", {0}, {0})
UNARY(asinh, "Asinh", EW_FLOAT, f_asinh, NULL, "inverse hyperbolic sine", {0}, {0})
UNARY(atanh, "Atanh", EW_FLOAT, f_atanh, NULL, "inverse hyperbolic tangent", {0}, {0})
UNARY(floor, "Floor", EW_FLOAT, f_floor, NULL, "round down", {0}, {0})
UNARY(ceil, "Ceil", EW_FLOAT, f_ceil, NULL, "round up", {0}, {0})
UNARY(round, "Round", EW_FLOAT, f_round, NULL, "round half to even", {0}, {0})
UNARY(sign, "Sign", EW_NUMERIC, f_sign, i_sign, "-1, 0 or 1", {0}, {0})
UNARY(softplus, "Softplus", EW_FLOAT, f_softplus, NULL, "log(1+e^x)", {0}, {0})
UNARY(softsign, "Softsign", EW_FLOAT, f_softsign, NULL, "x/(1+|x|)", {0}, {0})
UNARY(silu, "Silu", EW_FLOAT, f_silu, NULL, "x*sigmoid(x) (SiLU, swish)", {0}, {0})
UNARY(mish, "Mish", EW_FLOAT, f_mish, NULL, "x*tanh(softplus(x))", {0}, {0})
UNARY(hardswish, "HardSwish", EW_FLOAT, f_hardswish, NULL, "x*hardsigmoid(x, 1/6, 1/2)", {0}, {0})
UNARY(identity, "Identity", EW_ANY, f_identity, i_identity, "y = x", {0}, {0})
UNARY(not, "Not", EW_BOOL, f_not, i_not, "logical not", {0}, {0})
UNARY(bitnot, "BitwiseNot", EW_INT, NULL, i_bitnot, "bitwise not", {0}, {0})
UNARY_A(leakyrelu, "LeakyRelu", EW_FLOAT, f_leakyrelu, attrs_alpha001, "x if x>=0 else alpha*x", {"alpha"}, {0})
UNARY_A(elu, "Elu", EW_FLOAT, f_elu, attrs_alpha1, "x if x>=0 else alpha*(e^x-1)", {"alpha"}, {0})
UNARY_A(celu, "Celu", EW_FLOAT, f_celu, attrs_alpha1, "max(0,x)+min(0,alpha*(e^(x/alpha)-1))", {"alpha"}, {0})
UNARY_A(selu, "Selu", EW_FLOAT, f_selu, attrs_selu, "gamma*(x if x>0 else alpha*(e^x-1))", {"alpha", "gamma"}, {0})
UNARY_A(hardsigmoid, "HardSigmoid", EW_FLOAT, f_hardsigmoid, attrs_hardsigmoid, "clamp(alpha*x+beta, 0, 1)", {"alpha", "beta"}, {0})
UNARY_A(thresholdedrelu, "ThresholdedRelu", EW_FLOAT, f_thresholdedrelu, attrs_alpha1, "x if x>alpha else 0", {"alpha"}, {0})
static const ew_impl impl_isinf = {1, EW_FLOAT, 1, f_isinf, NULL, NULL, NULL, {0}, {"detect_negative", "detect_positive"}};
static const kiln_op_def op_isinf = {"IsInf", 1, 1, 1, 1, attrs_isinf, KILN_OP_ELEMENTWISE, ew_infer,
                                     ew_eval, "x is +-inf (bool)", &impl_isinf};

/* Gelu's attribute is a string; the eval reads it into ip[0] below. */
static const ew_impl impl_gelu = {1, EW_FLOAT, 0, f_gelu, NULL, NULL, NULL, {0}, {0}};
static int gelu_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    ew_params prm;
    memset(&prm, 0, sizeof prm);
    prm.ip[0] = strcmp(kiln_node_string(c->node, "approximate"), "tanh") == 0;
    int64_t n = kiln_tensor_numel(o);
    for (int64_t i = 0; i < n; i++)
        kiln_store_f64(o->dtype, o->data, i, f_gelu(kiln_load_f64(x->dtype, x->data, i), &prm));
    return 0;
}
static int gelu_infer(kiln_infer_ctx *c)
{
    const char *a = kiln_node_string(c->node, "approximate");
    if (strcmp(a, "none") != 0 && strcmp(a, "tanh") != 0)
        return OPERR(c, "approximate must be \"none\" or \"tanh\", got \"%s\"", a);
    return ew_infer(c);
}
static const kiln_op_def op_gelu = {"Gelu", 1, 1, 1, 1, attrs_gelu, KILN_OP_ELEMENTWISE, gelu_infer,
                                    gelu_eval, "Gaussian error linear unit (erf or tanh form)",
                                    &impl_gelu};

static const ew_impl impl_isnan = {1, EW_FLOAT, 1, f_isnan, NULL, NULL, NULL, {0}, {0}};
static const kiln_op_def op_isnan = {"IsNaN", 1, 1, 1, 1, NULL, KILN_OP_ELEMENTWISE, ew_infer,
                                     ew_eval, "x is NaN (bool)", &impl_isnan};

BINARY(add, "Add", EW_NUMERIC, 0, f_add, i_add, KILN_OP_COMMUTATIVE, NULL, "a + b", {0}, {0})
BINARY(sub, "Sub", EW_NUMERIC, 0, f_sub, i_sub, 0, NULL, "a - b", {0}, {0})
BINARY(mul, "Mul", EW_NUMERIC, 0, f_mul, i_mul, KILN_OP_COMMUTATIVE, NULL, "a * b", {0}, {0})
BINARY(div, "Div", EW_NUMERIC, 0, f_div, i_div, 0, NULL, "a / b (integers truncate)", {0}, {0})
BINARY(pow, "Pow", EW_NUMERIC, 0, f_pow, i_pow, 0, NULL, "a ^ b (result has a's type)", {0}, {0})
BINARY(mod, "Mod", EW_NUMERIC, 0, f_mod, i_mod, 0, attrs_mod, "remainder (sign of divisor unless fmod=1)", {0}, {"fmod"})
BINARY(prelu, "PRelu", EW_NUMERIC, 0, f_prelu, i_prelu, 0, NULL, "x if x>=0 else slope*x", {0}, {0})
BINARY(eq, "Equal", EW_ANY, 1, f_eq, i_eq, KILN_OP_COMMUTATIVE, NULL, "a == b (bool)", {0}, {0})
BINARY(lt, "Less", EW_NUMERIC, 1, f_lt, i_lt, 0, NULL, "a < b (bool)", {0}, {0})
BINARY(gt, "Greater", EW_NUMERIC, 1, f_gt, i_gt, 0, NULL, "a > b (bool)", {0}, {0})
BINARY(le, "LessOrEqual", EW_NUMERIC, 1, f_le, i_le, 0, NULL, "a <= b (bool)", {0}, {0})
BINARY(ge, "GreaterOrEqual", EW_NUMERIC, 1, f_ge, i_ge, 0, NULL, "a >= b (bool)", {0}, {0})
BINARY(and, "And", EW_BOOL, 1, f_and, i_and, KILN_OP_COMMUTATIVE, NULL, "logical and", {0}, {0})
BINARY(or, "Or", EW_BOOL, 1, f_or, i_or, KILN_OP_COMMUTATIVE, NULL, "logical or", {0}, {0})
BINARY(xor, "Xor", EW_BOOL, 1, f_xor, i_xor, KILN_OP_COMMUTATIVE, NULL, "logical xor", {0}, {0})
BINARY(bitand, "BitwiseAnd", EW_INT, 0, NULL, i_bitand, KILN_OP_COMMUTATIVE, NULL, "bitwise and", {0}, {0})
BINARY(bitor, "BitwiseOr", EW_INT, 0, NULL, i_bitor, KILN_OP_COMMUTATIVE, NULL, "bitwise or", {0}, {0})
BINARY(bitxor, "BitwiseXor", EW_INT, 0, NULL, i_bitxor, KILN_OP_COMMUTATIVE, NULL, "bitwise xor", {0}, {0})
VARIADIC(min, "Min", f_min, i_min, "elementwise minimum of all inputs")
VARIADIC(max, "Max", f_max, i_max, "elementwise maximum of all inputs")
VARIADIC(sum, "Sum", f_add, i_add, "elementwise sum of all inputs")

/* BitShift: direction is a string; unsigned integer inputs. */
static const ew_impl impl_bitshift = {2, EW_INT, 0, NULL, NULL, NULL, i_bitshift, {0}, {0}};
static int bitshift_eval(kiln_eval_ctx *c)
{
    kiln_tensor *o = c->out[0];
    int64_t n = kiln_tensor_numel(o), idx[KILN_MAX_RANK] = {0}, off[2] = {0};
    int64_t st[2][KILN_MAX_RANK];
    ew_params prm;
    memset(&prm, 0, sizeof prm);
    prm.ip[0] = strcmp(kiln_node_string(c->node, "direction"), "LEFT") == 0;
    for (int i = 0; i < 2; i++)
        kiln_bcast_strides(c->in[i], o->rank, o->dims, st[i]);
    for (int64_t k = 0; k < n; k++) {
        int64_t a = kiln_load_i64(c->in[0]->dtype, c->in[0]->data, off[0]);
        int64_t b = kiln_load_i64(c->in[1]->dtype, c->in[1]->data, off[1]);
        kiln_store_i64(o->dtype, o->data, k, i_bitshift(a, b, &prm));
        kiln_next_index(idx, o->dims, o->rank, 2, off, st);
    }
    return 0;
}
static const kiln_op_def op_bitshift = {"BitShift", 2, 2, 1, 1, attrs_bitshift, KILN_OP_ELEMENTWISE,
                                        ew_infer, bitshift_eval, "shift left or right (unsigned)",
                                        &impl_bitshift};

/* Mean: sum then divide, so it cannot share the fold. */
static int mean_eval(kiln_eval_ctx *c)
{
    if (ew_eval(c))
        return -1;
    kiln_tensor *o = c->out[0];
    int64_t n = kiln_tensor_numel(o);
    for (int64_t i = 0; i < n; i++)
        kiln_store_f64(o->dtype, o->data, i, kiln_load_f64(o->dtype, o->data, i) / c->n_inputs);
    return 0;
}
static const ew_impl impl_mean = {-1, EW_FLOAT, 0, NULL, f_add, NULL, NULL, {0}, {0}};
static const kiln_op_def op_mean = {"Mean", 1, KILN_MAX_OP_INPUTS, 1, 1, NULL,
                                    KILN_OP_ELEMENTWISE | KILN_OP_COMMUTATIVE, ew_infer, mean_eval,
                                    "elementwise mean of all inputs", &impl_mean};

/* ---- Where ---- */

static int where_infer(kiln_infer_ctx *c)
{
    if (c->in[0]->dtype != KILN_BOOL)
        return OPERR(c, "condition must be bool, got %s", kiln_dtype_name(c->in[0]->dtype));
    if (c->in[1]->dtype != c->in[2]->dtype)
        return OPERR(c, "branches differ in type: %s vs %s", kiln_dtype_name(c->in[1]->dtype),
                     kiln_dtype_name(c->in[2]->dtype));
    kiln_type r;
    if (kiln_bcast_type(c, c->in[1], c->in[2], &r) || kiln_bcast_type(c, &r, c->in[0], &r))
        return -1;
    r.dtype = c->in[1]->dtype;
    c->out[0] = r;
    return 0;
}

static int where_eval(kiln_eval_ctx *c)
{
    kiln_tensor *o = c->out[0];
    int64_t n = kiln_tensor_numel(o), idx[KILN_MAX_RANK] = {0}, off[3] = {0};
    int64_t st[3][KILN_MAX_RANK];
    for (int i = 0; i < 3; i++)
        kiln_bcast_strides(c->in[i], o->rank, o->dims, st[i]);
    size_t es = kiln_dtype_storage(o->dtype, 1);
    int packed = kiln_dtype_get(o->dtype)->block_elems > 1;
    for (int64_t k = 0; k < n; k++) {
        int cond = ((const uint8_t *)c->in[0]->data)[off[0]] != 0;
        const kiln_tensor *src = cond ? c->in[1] : c->in[2];
        int64_t so = cond ? off[1] : off[2];
        if (packed)
            kiln_elem_copy(o->dtype, o->data, k, src->data, so);
        else
            memcpy((char *)o->data + (size_t)k * es, (const char *)src->data + (size_t)so * es, es);
        kiln_next_index(idx, o->dims, o->rank, 3, off, st);
    }
    return 0;
}

static const kiln_op_def op_where = {"Where", 3, 3, 1, 1, NULL, KILN_OP_ELEMENTWISE, where_infer,
                                     where_eval, "cond ? a : b with broadcasting", NULL};

/* ---- Clip ---- */

static int clip_infer(kiln_infer_ctx *c)
{
    for (int i = 1; i < c->n_inputs; i++)
        if (c->in[i] && c->in[i]->dtype != c->in[0]->dtype)
            return OPERR(c, "bound %d is %s, input is %s", i, kiln_dtype_name(c->in[i]->dtype),
                         kiln_dtype_name(c->in[0]->dtype));
    c->out[0] = *c->in[0];
    return 0;
}

static int clip_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int64_t n = kiln_tensor_numel(o);
    int isint = kiln_dtype_is_intlike(x->dtype);
    const kiln_tensor *lo = c->n_inputs > 1 ? c->in[1] : NULL, *hi = c->n_inputs > 2 ? c->in[2] : NULL;
    for (int64_t i = 0; i < n; i++) {
        if (isint) {
            int64_t v = kiln_load_i64(x->dtype, x->data, i);
            if (lo && v < kiln_tensor_get_i64(lo, 0))
                v = kiln_tensor_get_i64(lo, 0);
            if (hi && v > kiln_tensor_get_i64(hi, 0))
                v = kiln_tensor_get_i64(hi, 0);
            kiln_store_i64(o->dtype, o->data, i, v);
        } else {
            double v = kiln_load_f64(x->dtype, x->data, i);
            if (lo && v < kiln_tensor_get(lo, 0))
                v = kiln_tensor_get(lo, 0);
            if (hi && v > kiln_tensor_get(hi, 0))
                v = kiln_tensor_get(hi, 0);
            kiln_store_f64(o->dtype, o->data, i, v);
        }
    }
    return 0;
}

static const kiln_op_def op_clip = {"Clip", 1, 3, 1, 1, NULL, KILN_OP_ELEMENTWISE, clip_infer,
                                    clip_eval, "clamp to [min, max] (optional scalar inputs)", NULL};

/* ---- Cast ---- */

static const kiln_attr_spec attrs_cast[] = {{"to", KILN_ATTR_DTYPE, 1, 0, 0, 0},
                                            {"saturate", KILN_ATTR_INT, 0, 1, 0, 0},
                                            {"round_mode", KILN_ATTR_STRING, 0, 0, 0, "up"},
                                            {0}};

/* round_mode (only f8e8m0 targets use it) as KILN_ROUND_*, -1 if unknown. */
static int cast_round_mode(const kiln_node *n)
{
    const char *s = kiln_node_string(n, "round_mode");
    return !strcmp(s, "up") ? KILN_ROUND_UP : !strcmp(s, "down") ? KILN_ROUND_DOWN
         : !strcmp(s, "nearest") ? KILN_ROUND_NEAREST : -1;
}

/* Checks shared by Cast and CastLike; the result has x's shape and type `to`. */
static int cast_common_infer(kiln_infer_ctx *c, kiln_dtype to)
{
    if (kiln_dtype_get(to)->is_quant || kiln_dtype_get(c->in[0]->dtype)->is_quant)
        return OPERR(c, "Cast does not handle block-quantized types (use Dequantize)");
    if (cast_round_mode(c->node) < 0)
        return OPERR(c, "round_mode must be \"up\", \"down\" or \"nearest\", got \"%s\"",
                     kiln_node_string(c->node, "round_mode"));
    c->out[0] = *c->in[0];
    c->out[0].dtype = to;
    if (c->in_sym[0]) /* casts of shape vectors keep their known contents */
        kiln_infer_set_sym(c, 0, c->in_sym[0], c->in_sym_n[0]);
    return 0;
}

static int cast_infer(kiln_infer_ctx *c)
{
    return cast_common_infer(c, (kiln_dtype)kiln_node_int(c->node, "to"));
}

static int cast_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int64_t n = kiln_tensor_numel(o);
    int sat = kiln_node_int(c->node, "saturate") != 0, mode = cast_round_mode(c->node);
    int from_int = kiln_dtype_is_intlike(x->dtype), to_int = kiln_dtype_is_intlike(o->dtype);
    for (int64_t i = 0; i < n; i++) {
        if (from_int && to_int) { /* exact, wrapping like two's complement */
            kiln_store_i64(o->dtype, o->data, i, kiln_load_i64(x->dtype, x->data, i));
        } else if (from_int) {
            int64_t v = kiln_load_i64(x->dtype, x->data, i);
            double d = x->dtype == KILN_U64 ? (double)(uint64_t)v : (double)v;
            kiln_store_cast(o->dtype, o->data, i, d, sat, mode);
        } else {
            kiln_store_cast(o->dtype, o->data, i, kiln_load_f64(x->dtype, x->data, i), sat, mode);
        }
    }
    return 0;
}

static const kiln_op_def op_cast = {"Cast", 1, 1, 1, 1, attrs_cast, KILN_OP_ELEMENTWISE, cast_infer,
                                    cast_eval, "convert element type", NULL};

/* CastLike(x, like): Cast to like's element type. */
static int castlike_infer(kiln_infer_ctx *c) { return cast_common_infer(c, c->in[1]->dtype); }
static const kiln_attr_spec attrs_castlike[] = {{"saturate", KILN_ATTR_INT, 0, 1, 0, 0},
                                                {"round_mode", KILN_ATTR_STRING, 0, 0, 0, "up"},
                                                {0}};
static const kiln_op_def op_castlike = {"CastLike", 2, 2, 1, 1, attrs_castlike, KILN_OP_ELEMENTWISE,
                                        castlike_infer, cast_eval,
                                        "convert to the element type of the second input", NULL};

const kiln_op_def *const kiln_ops_elementwise[] = {
    &op_neg, &op_abs, &op_sqrt, &op_recip, &op_exp, &op_log, &op_tanh, &op_erf, &op_sigmoid,
    &op_relu, &op_cos, &op_sin, &op_tan, &op_acos, &op_asin, &op_atan, &op_cosh, &op_sinh,
    &op_acosh, &op_asinh, &op_atanh, &op_floor, &op_ceil, &op_round, &op_sign, &op_softplus,
    &op_softsign, &op_silu, &op_mish, &op_hardswish, &op_identity, &op_not, &op_bitnot,
    &op_leakyrelu, &op_elu, &op_celu, &op_selu, &op_hardsigmoid, &op_thresholdedrelu, &op_isinf,
    &op_gelu, &op_isnan, &op_add, &op_sub, &op_mul, &op_div, &op_pow, &op_mod, &op_prelu, &op_eq,
    &op_lt, &op_gt, &op_le, &op_ge, &op_and, &op_or, &op_xor, &op_bitand, &op_bitor, &op_bitxor,
    &op_min, &op_max, &op_sum, &op_mean, &op_bitshift, &op_where, &op_clip, &op_cast, &op_castlike,
    NULL,
};
