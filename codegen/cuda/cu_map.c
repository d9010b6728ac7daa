/* cu_map.c - "map" kernels for the CUDA target: one thread per output
 * element computed from a few input elements. Elementwise math (with
 * broadcasting; chains of single-use elementwise ops evaluated inline) and
 * data movement (Transpose, Slice, Gather, Concat, Split, Expand, Pad, ...).
 * Mirrors the CPU generator's cpu_map.c / cpu_scalar.c formulas. */
#include "cu.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define IS(s) (strcmp(op, s) == 0)
#define MAP_BLOCK 256

static const char *const map_ops[] = {
    "Where", "Clip", "Cast", "CastLike", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Identity", "Expand", "Slice", "Gather", "GatherElements", "GatherND", "Tile", "Pad", "Trilu", "Range",
    "ConstantOfShape", "Shape", "Size", "EyeLike", "Concat", "Split", "Dropout", "OneHot",
    "FastGelu", "BiasGelu", "QuickGelu", NULL,
};

int cu_is_map(const kiln_node *n)
{
    if (n->op->flags & KILN_OP_ELEMENTWISE)
        return 1;
    for (int i = 0; map_ops[i]; i++)
        if (!strcmp(map_ops[i], n->op->name))
            return 1;
    return 0;
}

/* ---- scalar functions ---- */

static int is_fl(const char *t) { return strcmp(t, "i64") != 0; }
static const char *fc(ck *k, const char *t, double v)
{
    if (!strcmp(t, "i64"))
        return ck_s(k, "(%lldLL)", (long long)v);
    if (isinf(v))
        return ck_s(k, "(%s(%s)KINF)", v < 0 ? "-" : "", t);
    return ck_s(k, "((%s)%.17g)", t, v);
}
/* libm name for the compute type: expf for float, exp for double */
static const char *fn(ck *k, const char *name, const char *t)
{
    return !strcmp(t, "double") ? name : ck_s(k, "%sf", name);
}
#define F1(name) ck_s(k, "%s(%s)", fn(k, name, t), x)

static const char *sigm(ck *k, const char *x, const char *t)
{
    return !strcmp(t, "double") ? ck_s(k, "ksigmoidd(%s)", x) : ck_s(k, "ksigmoid(%s)", x);
}

static const char *softplus(ck *k, const char *x, const char *t)
{
    return ck_s(k, "(%s > %s ? %s : %s(%s(%s)))", x, fc(k, t, 30), x, fn(k, "log1p", t), fn(k, "exp", t), x);
}

const char *cu_scalar(ck *k, const kiln_node *n, const char **a, const char **at, const char *rt)
{
    const char *op = n->op->name;
    const char *x = a[0], *y = n->n_inputs > 1 ? a[1] : NULL, *t = at[0];
    int fl = is_fl(t);
    if (IS("Cast") || IS("CastLike") || IS("Identity") || IS("Dropout"))
        return x;
    if (IS("Where"))
        return ck_s(k, "(%s != 0 ? %s : %s)", a[0], a[1], a[2]);
    if (IS("Clip")) {
        const char *v = x;
        if (n->n_inputs > 1 && a[1])
            v = ck_s(k, "(%s < %s ? %s : %s)", v, a[1], a[1], v);
        if (n->n_inputs > 2 && a[2])
            v = ck_s(k, "(%s > %s ? %s : %s)", v, a[2], a[2], v);
        return v;
    }
    if (IS("Neg"))
        return ck_s(k, "(-%s)", x);
    if (IS("Abs"))
        return fl ? F1("fabs") : ck_s(k, "(%s < 0 ? -%s : %s)", x, x, x);
    if (IS("Relu"))
        return fl ? ck_s(k, "((%s != %s || %s > 0) ? %s : %s)", x, x, x, x, fc(k, t, 0))
                  : ck_s(k, "(%s > 0 ? %s : 0LL)", x, x);
    if (IS("Sign")) {
        if (!fl)
            return ck_s(k, "(%s > 0 ? 1LL : %s < 0 ? -1LL : 0LL)", x, x);
        return ck_s(k, "(%s > 0 ? %s : %s < 0 ? %s : %s == 0 ? %s : %s)", x, fc(k, t, 1), x, fc(k, t, -1), x,
                    fc(k, t, 0), x);
    }
    if (IS("Not"))
        return ck_s(k, "((i64)(%s == 0))", x);
    if (IS("BitwiseNot"))
        return ck_s(k, "(~%s)", x);
    static const char *const un[][2] = {
        {"Sqrt", "sqrt"}, {"Exp", "exp"}, {"Log", "log"}, {"Cos", "cos"}, {"Sin", "sin"}, {"Floor", "floor"},
        {"Ceil", "ceil"}, {"Round", "rint"}, {"Tanh", "tanh"}, {"Erf", "erf"}, {"Tan", "tan"}, {"Acos", "acos"},
        {"Asin", "asin"}, {"Atan", "atan"}, {"Cosh", "cosh"}, {"Sinh", "sinh"}, {"Acosh", "acosh"},
        {"Asinh", "asinh"}, {"Atanh", "atanh"},
    };
    for (size_t i = 0; i < sizeof un / sizeof *un; i++)
        if (IS(un[i][0]))
            return F1(un[i][1]);
    if (IS("Reciprocal"))
        return ck_s(k, "(%s / %s)", fc(k, t, 1), x);
    if (IS("Sigmoid"))
        return sigm(k, x, t);
    if (IS("Silu"))
        return ck_s(k, "(%s * %s)", x, sigm(k, x, t));
    if (IS("Softplus"))
        return softplus(k, x, t);
    if (IS("Softsign"))
        return ck_s(k, "(%s / (%s + %s(%s)))", x, fc(k, t, 1), fn(k, "fabs", t), x);
    if (IS("Mish"))
        return ck_s(k, "(%s * %s(%s))", x, fn(k, "tanh", t), softplus(k, x, t));
    if (IS("HardSwish"))
        return ck_s(k, "(%s * %s(%s(%s / %s + %s, %s), %s))", x, fn(k, "fmax", t), fn(k, "fmin", t), x, fc(k, t, 6),
                    fc(k, t, 0.5), fc(k, t, 1), fc(k, t, 0));
    if (IS("IsNaN"))
        return ck_s(k, "((i64)(%s != %s))", x, x);
    if (IS("IsInf")) {
        const char *r = "0";
        if (kiln_node_int(n, "detect_positive"))
            r = ck_s(k, "(%s || %s == %s)", r, x, fc(k, t, INFINITY));
        if (kiln_node_int(n, "detect_negative"))
            r = ck_s(k, "(%s || %s == %s)", r, x, fc(k, t, -INFINITY));
        return ck_s(k, "((i64)%s)", r);
    }
    if (IS("LeakyRelu"))
        return ck_s(k, "(%s >= 0 ? %s : %s * %s)", x, x, x, fc(k, t, kiln_node_float(n, "alpha")));
    if (IS("Elu") || IS("Selu")) {
        const char *neg = ck_s(k, "(%s * (%s(%s) - %s))", fc(k, t, kiln_node_float(n, "alpha")), fn(k, "exp", t), x, fc(k, t, 1));
        const char *r = ck_s(k, "(%s %s 0 ? %s : %s)", x, IS("Elu") ? ">=" : ">", x, neg);
        return IS("Selu") ? ck_s(k, "(%s * %s)", r, fc(k, t, kiln_node_float(n, "gamma"))) : r;
    }
    if (IS("Celu")) {
        const char *al = fc(k, t, kiln_node_float(n, "alpha"));
        return ck_s(k, "(%s(%s, %s) + %s(%s * (%s(%s / %s) - %s), %s))", fn(k, "fmax", t), x, fc(k, t, 0), fn(k, "fmin", t),
                    al, fn(k, "exp", t), x, al, fc(k, t, 1), fc(k, t, 0));
    }
    if (IS("HardSigmoid"))
        return ck_s(k, "%s(%s(%s * %s + %s, %s), %s)", fn(k, "fmax", t), fn(k, "fmin", t), x,
                    fc(k, t, kiln_node_float(n, "alpha")), fc(k, t, kiln_node_float(n, "beta")), fc(k, t, 1), fc(k, t, 0));
    if (IS("ThresholdedRelu"))
        return ck_s(k, "(%s > %s ? %s : %s)", x, fc(k, t, kiln_node_float(n, "alpha")), x, fc(k, t, 0));
    if (IS("QuickGelu"))
        return ck_s(k, "(%s * %s)", x, sigm(k, ck_s(k, "(%s * %s)", x, fc(k, t, kiln_node_float(n, "alpha"))), t));
    if (IS("Gelu") || IS("FastGelu") || IS("BiasGelu")) {
        if (!IS("Gelu") && y)
            x = ck_s(k, "(%s + %s)", x, y);
        const char *inner;
        if (IS("FastGelu") || (IS("Gelu") && !strcmp(kiln_node_string(n, "approximate"), "tanh")))
            inner = ck_s(k, "%s(%s * (%s + %s * %s * %s * %s))", fn(k, "tanh", t), fc(k, t, sqrt(2 / M_PI)), x,
                         fc(k, t, 0.044715), x, x, x);
        else
            inner = ck_s(k, "%s(%s * %s)", fn(k, "erf", t), x, fc(k, t, 1 / sqrt(2.0)));
        return ck_s(k, "(%s * %s * (%s + %s))", fc(k, t, 0.5), x, fc(k, t, 1), inner);
    }
    if (IS("Add") || IS("Sum") || IS("Mean")) {
        const char *acc = x;
        for (int i = 1; i < n->n_inputs; i++)
            acc = ck_s(k, "(%s + %s)", acc, a[i]);
        if (IS("Mean"))
            acc = ck_s(k, "(%s / %s)", acc, fc(k, t, n->n_inputs));
        return acc;
    }
    if (IS("Min") || IS("Max")) {
        int mx = IS("Max");
        const char *acc = x;
        for (int i = 1; i < n->n_inputs; i++)
            acc = fl ? ck_s(k, "k%s%s(%s, %s)", !strcmp(t, "double") ? "d" : "f", mx ? "max" : "min", acc, a[i])
                     : ck_s(k, "(%s %s %s ? %s : %s)", acc, mx ? ">" : "<", a[i], acc, a[i]);
        return acc;
    }
    if (!y)
        goto unknown;
    if (IS("Sub"))
        return ck_s(k, "(%s - %s)", x, y);
    if (IS("Mul"))
        return ck_s(k, "(%s * %s)", x, y);
    if (IS("Div"))
        return fl ? ck_s(k, "(%s / %s)", x, y) : ck_s(k, "kidiv(%s, %s)", x, y);
    if (IS("Pow")) {
        if (fl)
            return ck_s(k, "%s(%s, (%s)%s)", fn(k, "pow", t), x, t, y);
        return ck_s(k, "((i64)pow((double)%s, (double)%s))", x, y);
    }
    if (IS("Mod")) {
        int fm = (int)kiln_node_int(n, "fmod");
        if (fl)
            return ck_s(k, "k%smod(%s, %s, %d)", !strcmp(t, "double") ? "d" : "f", x, y, fm);
        return ck_s(k, "kimod(%s, %s, %d)", x, y, fm);
    }
    if (IS("PRelu")) {
        const char *s = ck_s(k, "((%s)%s)", t, y);
        return ck_s(k, "(%s >= 0 ? %s : %s * %s)", x, x, x, s);
    }
    {
        static const char *const cmp[][2] = {{"Equal", "=="}, {"Less", "<"}, {"Greater", ">"},
                                             {"LessOrEqual", "<="}, {"GreaterOrEqual", ">="}};
        for (size_t i = 0; i < sizeof cmp / sizeof *cmp; i++)
            if (IS(cmp[i][0]))
                return ck_s(k, "((i64)(%s %s %s))", x, cmp[i][1], y);
    }
    if (IS("And") || IS("BitwiseAnd"))
        return ck_s(k, "(%s & %s)", x, y);
    if (IS("Or") || IS("BitwiseOr"))
        return ck_s(k, "(%s | %s)", x, y);
    if (IS("Xor") || IS("BitwiseXor"))
        return ck_s(k, "(%s ^ %s)", x, y);
    if (IS("BitShift")) {
        int left = !strcmp(kiln_node_string(n, "direction"), "LEFT");
        return ck_s(k, "((u64)%s >= 64 ? 0LL : (i64)((u64)%s %s %s))", y, x, left ? "<<" : ">>", y);
    }
unknown:
    (void)rt;
    cu_fail(k->c, n, "no CUDA lowering for elementwise op %s", op);
    return "0";
}

/* ---- map values ---- */

/* Integer contents of a node input known at compile time; -1 if not. */
static int const_ints(cu *c, const kiln_node *n, int i, int64_t *v, int max)
{
    return i < n->n_inputs ? kiln_graph_const_ints(c->g, n->inputs[i], v, max) : -1;
}

/* Σ idx[d]·stride(t, d) over t's dims (row-major, contiguous). */
static const char *dot(ck *k, const kiln_type *t, const char *const *idx, int rank)
{
    kiln_sb sb = {0};
    kiln_sb_printf(&sb, "(0LL");
    for (int d = 0; d < rank; d++)
        kiln_sb_printf(&sb, " + %s * %s", idx[d], ck_prod(k, t, d + 1, t->rank));
    kiln_sb_put(&sb, ")", 1);
    const char *r = ck_s(k, "%s", sb.s);
    kiln_sb_free(&sb);
    return r;
}

/* Offset of input type t broadcast against an output index of orank dims
 * (right-aligned; static size-1 dims repeat). */
static const char *bcast_off(ck *k, const kiln_type *t, const char *const *idx, int orank)
{
    kiln_sb sb = {0};
    kiln_sb_printf(&sb, "(0LL");
    for (int d = 0; d < t->rank; d++) {
        if (KILN_DIM_IS_STATIC(t->dims[d]) && t->dims[d] == 1)
            continue;
        kiln_sb_printf(&sb, " + %s * %s", idx[orank - t->rank + d], ck_prod(k, t, d + 1, t->rank));
    }
    kiln_sb_put(&sb, ")", 1);
    const char *r = ck_s(k, "%s", sb.s);
    kiln_sb_free(&sb);
    return r;
}

static int tmp_id(ck *k) { return k->npool; }

static const char *map_value(ck *k, int ni, int which, const char *const *idx, const char **rct);

const char *cu_map_value(ck *k, int ni, int which, const char *const *idx, const char **rct)
{
    return map_value(k, ni, which, idx, rct);
}

/* Input i of node n at output index idx as compute type want (inlined
 * producers are evaluated in place, rounded as storing would round them;
 * an anchor's result inside its epilogue is the substituted variable). */
static const char *load_in(ck *k, const kiln_node *n, int i, const char *const *idx, int orank, const char *want)
{
    cu *c = k->c;
    int v = n->inputs[i];
    if (v == k->subst_vid)
        return strcmp(want, "float") ? ck_s(k, "((%s)%s)", want, k->subst) : k->subst;
    if (c->g->values[v].kind == KILN_VAL_NODE && c->ni[c->g->values[v].producer].inline_ok) {
        const char *pt;
        const char *e = map_value(k, c->g->values[v].producer, 0, idx, &pt);
        kiln_dtype dt = cu_vt(c, v)->dtype;
        if (dt == KILN_F16)
            e = ck_s(k, "kh2f(kf2h((float)%s))", e);
        else if (dt == KILN_BF16)
            e = ck_s(k, "kb2f(kf2b((float)%s))", e);
        if (dt == KILN_F16 || dt == KILN_BF16)
            pt = "float";
        return strcmp(pt, want) ? ck_s(k, "((%s)%s)", want, e) : e;
    }
    return ck_load_as(k, v, bcast_off(k, cu_vt(c, v), idx, orank), want);
}

static const char *clamp_start(ck *k, int64_t s, int64_t step, const char *dim)
{
    const char *v = ck_s(k, "%lldLL", (long long)s);
    if (s < 0)
        v = ck_s(k, "(%s + %s)", v, dim);
    const char *hi = step > 0 ? dim : ck_s(k, "(%s - 1)", dim);
    return ck_s(k, "kclampi(%s, 0LL, %s)", v, hi);
}

static const char *wrap_idx(ck *k, const char *gi, const char *dim)
{
    return ck_s(k, "(%s < 0 ? %s + %s : %s)", gi, gi, dim, gi);
}

/* Element of output `which` (Split/Dropout) or from input `which` (Concat)
 * of node ni at idx; *rct gets its compute type. Emits temporaries. */
static const char *map_value(ck *k, int ni, int which, const char *const *idx, const char **rct)
{
    cu *c = k->c;
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    int out = n->outputs[(IS("Split") || IS("Dropout")) ? which : 0];
    const kiln_type *ot = cu_vt(c, out);
    int orank = ot->rank;
    const char *oct = cu_ctyp(ot->dtype);
    *rct = oct;
    const char *val = NULL;
    if (IS("Dropout") && which == 1) {
        *rct = "i64";
        return "1LL";
    }
    if (IS("Cast") || IS("CastLike")) {
        const char *ict = cu_ctyp(cu_vt(c, n->inputs[0])->dtype);
        if (!strcmp(ict, "i64") && strcmp(oct, "i64"))
            ict = oct;
        *rct = ict;
        val = load_in(k, n, 0, idx, orank, ict);
    } else if (((n->op->flags & KILN_OP_ELEMENTWISE) && !IS("Identity") && !IS("Dropout")) || IS("FastGelu") ||
               IS("BiasGelu") || IS("QuickGelu")) {
        const char *args[KILN_MAX_OP_INPUTS], *at[KILN_MAX_OP_INPUTS];
        for (int i = 0; i < n->n_inputs; i++) {
            args[i] = NULL;
            at[i] = "i64";
            if (n->inputs[i] < 0)
                continue;
            at[i] = cu_ctyp(cu_vt(c, n->inputs[i])->dtype);
            if (IS("Clip") && i > 0)
                at[i] = cu_ctyp(cu_vt(c, n->inputs[0])->dtype);
            if (IS("Where") && i > 0)
                at[i] = oct;
            args[i] = load_in(k, n, i, idx, orank, at[i]);
        }
        const char *rt = ot->dtype == KILN_BOOL ? "i64" : oct;
        *rct = rt;
        val = cu_scalar(k, n, args, at, rt);
    } else if (IS("Identity") || IS("Dropout") || IS("Reshape") || IS("Flatten") || IS("Squeeze") || IS("Unsqueeze")) {
        val = ck_load_as(k, n->inputs[0], dot(k, ot, idx, orank), oct);
    } else if (IS("Expand")) {
        val = load_in(k, n, 0, idx, orank, oct);
    } else if (IS("Transpose")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]);
        int np;
        const int64_t *perm = kiln_node_ints(n, "perm", &np);
        kiln_sb sb = {0};
        kiln_sb_printf(&sb, "(0LL");
        for (int d = 0; d < orank; d++) {
            int src = perm ? (int)perm[d] : orank - 1 - d;
            kiln_sb_printf(&sb, " + %s * %s", idx[d], ck_prod(k, it, src + 1, it->rank));
        }
        kiln_sb_put(&sb, ")", 1);
        val = ck_load_as(k, n->inputs[0], ck_s(k, "%s", sb.s), oct);
        kiln_sb_free(&sb);
    } else if (IS("Slice")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]);
        int64_t starts[KILN_MAX_RANK], ends[KILN_MAX_RANK], axes[KILN_MAX_RANK], steps[KILN_MAX_RANK];
        int ns = const_ints(c, n, 1, starts, KILN_MAX_RANK);
        int ne = const_ints(c, n, 2, ends, KILN_MAX_RANK);
        int has_axes = n->n_inputs > 3 && n->inputs[3] >= 0, has_steps = n->n_inputs > 4 && n->inputs[4] >= 0;
        int na = has_axes ? const_ints(c, n, 3, axes, KILN_MAX_RANK) : ns;
        int nst = has_steps ? const_ints(c, n, 4, steps, KILN_MAX_RANK) : ns;
        if (ns < 0 || ne < 0 || na < 0 || nst < 0) {
            cu_fail(c, n, "Slice parameters must be known at compile time");
            return "0";
        }
        for (int i = 0; i < ns; i++) {
            if (!has_axes)
                axes[i] = i;
            if (!has_steps)
                steps[i] = 1;
        }
        const char *in_idx[KILN_MAX_RANK];
        for (int d = 0; d < orank; d++)
            in_idx[d] = idx[d];
        for (int i = 0; i < ns; i++) {
            int a = (int)(axes[i] < 0 ? axes[i] + it->rank : axes[i]);
            const char *s0 = clamp_start(k, starts[i], steps[i], ck_d(k, it->dims[a]));
            in_idx[a] = ck_s(k, "(%s + %s * %lldLL)", s0, idx[a], (long long)steps[i]);
        }
        val = ck_load_as(k, n->inputs[0], dot(k, it, in_idx, orank), oct);
    } else if (IS("Gather")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]), *xt = cu_vt(c, n->inputs[1]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += it->rank;
        int r = xt->rank;
        const char *gi = ck_load_as(k, n->inputs[1], dot(k, xt, idx + axis, r), "i64");
        const char *in_idx[KILN_MAX_RANK];
        for (int d = 0; d < axis; d++)
            in_idx[d] = idx[d];
        in_idx[axis] = wrap_idx(k, gi, ck_d(k, it->dims[axis]));
        for (int d = axis + 1; d < it->rank; d++)
            in_idx[d] = idx[d - 1 + r];
        val = ck_load_as(k, n->inputs[0], dot(k, it, in_idx, it->rank), oct);
    } else if (IS("GatherElements")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]), *xt = cu_vt(c, n->inputs[1]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += it->rank;
        const char *gi = ck_load_as(k, n->inputs[1], dot(k, xt, idx, orank), "i64");
        const char *in_idx[KILN_MAX_RANK];
        for (int d = 0; d < orank; d++)
            in_idx[d] = d == axis ? wrap_idx(k, gi, ck_d(k, it->dims[axis])) : idx[d];
        val = ck_load_as(k, n->inputs[0], dot(k, it, in_idx, orank), oct);
    } else if (IS("GatherND")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]), *xt = cu_vt(c, n->inputs[1]);
        int bd = (int)kiln_node_int(n, "batch_dims"), ri = xt->rank - 1;
        kiln_dim qd = xt->dims[ri];
        if (!KILN_DIM_IS_STATIC(qd) || bd + qd > it->rank) {
            cu_fail(c, n, "GatherND index depth must be known at compile time");
            return "0";
        }
        int q = (int)qd;
        const char *in_idx[KILN_MAX_RANK];
        /* start of the index vector: the first ri dims of indices */
        kiln_sb sb = {0};
        kiln_sb_printf(&sb, "(0LL");
        for (int d = 0; d < ri; d++)
            kiln_sb_printf(&sb, " + %s * %s", idx[d], ck_prod(k, xt, d + 1, xt->rank));
        kiln_sb_put(&sb, ")", 1);
        const char *xbase = ck_s(k, "%s", sb.s);
        kiln_sb_free(&sb);
        for (int d = 0; d < bd; d++)
            in_idx[d] = idx[d];
        for (int j = 0; j < q; j++) {
            const char *gi = ck_load_as(k, n->inputs[1], ck_s(k, "(%s + %d)", xbase, j), "i64");
            in_idx[bd + j] = wrap_idx(k, gi, ck_d(k, it->dims[bd + j]));
        }
        for (int d = bd + q; d < it->rank; d++)
            in_idx[d] = idx[ri + d - bd - q];
        val = ck_load_as(k, n->inputs[0], dot(k, it, in_idx, it->rank), oct);
    } else if (IS("Tile")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]);
        const char *in_idx[KILN_MAX_RANK];
        for (int d = 0; d < orank; d++)
            in_idx[d] = ck_s(k, "(%s %% %s)", idx[d], ck_d(k, it->dims[d]));
        val = ck_load_as(k, n->inputs[0], dot(k, it, in_idx, orank), oct);
    } else if (IS("Pad")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]);
        int64_t pads[2 * KILN_MAX_RANK], axes[KILN_MAX_RANK];
        int np = const_ints(c, n, 1, pads, 2 * KILN_MAX_RANK);
        int na = n->n_inputs > 3 && n->inputs[3] >= 0 ? const_ints(c, n, 3, axes, KILN_MAX_RANK) : -2;
        if (np < 0 || na == -1) {
            cu_fail(c, n, "Pad amounts must be known at compile time");
            return "0";
        }
        if (na == -2) {
            na = it->rank;
            for (int i = 0; i < na; i++)
                axes[i] = i;
        }
        int64_t begin[KILN_MAX_RANK] = {0};
        for (int i = 0; i < na; i++)
            begin[axes[i] < 0 ? axes[i] + it->rank : axes[i]] = pads[i];
        const char *mode = kiln_node_string(n, "mode");
        const char *in_idx[KILN_MAX_RANK];
        const char *inb = "1";
        for (int d = 0; d < orank; d++) {
            const char *dim = ck_d(k, it->dims[d]);
            int id = tmp_id(k);
            ck_line(k, "i64 j%d = %s - %lldLL;", id, idx[d], (long long)begin[d]);
            if (!strcmp(mode, "edge")) {
                ck_line(k, "j%d = kclampi(j%d, 0LL, %s - 1);", id, id, dim);
            } else if (!strcmp(mode, "reflect")) {
                ck_line(k, "{ i64 per = (%s - 1) * 2; if (per == 0) per = 1; i64 m = j%d %% per; if (m < 0) m += per; "
                           "j%d = m > %s - 1 ? per - m : m; }", dim, id, id, dim);
            } else if (!strcmp(mode, "wrap")) {
                ck_line(k, "{ i64 m = j%d %% %s; j%d = m < 0 ? m + %s : m; }", id, dim, id, dim);
            } else {
                inb = ck_s(k, "(%s && j%d >= 0 && j%d < %s)", inb, id, id, dim);
                ck_line(k, "i64 c%d = kclampi(j%d, 0LL, %s - 1);", id, id, dim);
                ck_line(k, "j%d = c%d;", id, id);
            }
            in_idx[d] = ck_s(k, "j%d", id);
        }
        const char *cv = fc(k, oct, 0);
        if (n->n_inputs > 2 && n->inputs[2] >= 0)
            cv = ck_load_as(k, n->inputs[2], "0", oct);
        val = ck_s(k, "(%s ? %s : %s)", inb, ck_load_as(k, n->inputs[0], dot(k, it, in_idx, orank), oct), cv);
    } else if (IS("Trilu")) {
        const char *kk = "0LL";
        if (n->n_inputs > 1 && n->inputs[1] >= 0)
            kk = ck_load_as(k, n->inputs[1], "0", "i64");
        const char *diff = ck_s(k, "(%s - %s)", idx[orank - 1], idx[orank - 2]);
        const char *keep = ck_s(k, "(%s %s %s)", diff, kiln_node_int(n, "upper") ? ">=" : "<=", kk);
        val = ck_s(k, "(%s ? %s : %s)", keep, ck_load_as(k, n->inputs[0], dot(k, ot, idx, orank), oct), fc(k, oct, 0));
    } else if (IS("Range")) {
        const char *s = ck_load_as(k, n->inputs[0], "0", oct), *dl = ck_load_as(k, n->inputs[2], "0", oct);
        val = ck_s(k, "(%s + (%s)%s * %s)", s, oct, idx[0], dl);
    } else if (IS("ConstantOfShape")) {
        val = fc(k, oct, kiln_node_float(n, "value"));
    } else if (IS("Shape")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]);
        int64_t s = kiln_node_has_attr(n, "start") ? kiln_node_int(n, "start") : 0;
        if (s < 0)
            s += it->rank;
        if (s < 0)
            s = 0;
        const char *v = "0LL";
        for (int d = 0; d < it->rank; d++)
            v = ck_s(k, "(%s == %lldLL ? %s : %s)", idx[0], (long long)(d - s), ck_d(k, it->dims[d]), v);
        val = ck_s(k, "((%s)%s)", oct, v);
    } else if (IS("Size")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]);
        val = ck_s(k, "((%s)%s)", oct, ck_prod(k, it, 0, it->rank));
    } else if (IS("EyeLike")) {
        val = ck_s(k, "((%s)(%s - %s == %lldLL))", oct, idx[1], idx[0], (long long)kiln_node_int(n, "k"));
    } else if (IS("OneHot")) {
        const kiln_type *xt = cu_vt(c, n->inputs[0]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += orank;
        const char *xi[KILN_MAX_RANK];
        for (int d = 0, q = 0; d < orank; d++)
            if (d != axis)
                xi[q++] = idx[d];
        const char *v = ck_load_as(k, n->inputs[0], dot(k, xt, xi, xt->rank), "i64");
        const char *depth = ck_load_as(k, n->inputs[1], "0", "i64");
        v = ck_s(k, "(%s < 0 ? %s + %s : %s)", v, v, depth, v);
        val = ck_s(k, "(%s == %s ? %s : %s)", v, idx[axis], ck_load_as(k, n->inputs[2], "1", oct),
                   ck_load_as(k, n->inputs[2], "0", oct));
    } else if (IS("Split")) {
        const kiln_type *it = cu_vt(c, n->inputs[0]);
        int axis = (int)kiln_node_int(n, "axis");
        if (axis < 0)
            axis += it->rank;
        const char *off = "0LL";
        for (int q = 0; q < which; q++)
            off = ck_s(k, "(%s + %s)", off, ck_d(k, cu_vt(c, n->outputs[q])->dims[axis]));
        const char *in_idx[KILN_MAX_RANK];
        for (int d = 0; d < orank; d++)
            in_idx[d] = d == axis ? ck_s(k, "(%s + %s)", idx[d], off) : idx[d];
        val = ck_load_as(k, n->inputs[0], dot(k, it, in_idx, orank), oct);
    } else if (IS("Concat")) {
        const kiln_type *it = cu_vt(c, n->inputs[which]);
        val = ck_load_as(k, n->inputs[which], dot(k, it, idx, it->rank), oct);
    } else {
        cu_fail(c, n, "no CUDA lowering for %s", op);
        return "0";
    }
    /* name the value: chains stay linear in size however often reused */
    int id = tmp_id(k);
    ck_line(k, "const %s t%d = %s;", *rct, id, val);
    return ck_s(k, "t%d", id);
}

/* One map kernel over iteration type `it`, writing value dst at
 * Σ idx·strides(dst) (+ the Concat offset along concat_axis). */
static int map_kernel(cu *c, int ni, int which, const kiln_type *it, int dst, int concat_axis)
{
    const kiln_node *n = &c->g->nodes[ni];
    ck k;
    ck_begin(c, &k, ni, MAP_BLOCK);
    const kiln_type *dt = cu_vt(c, dst);
    int rank = it->rank;
    ck_line(&k, "const i64 total = %s;", ck_prod(&k, it, 0, rank));
    ck_line(&k, "const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;");
    ck_line(&k, "if (i >= total) return;");
    const char *idx[KILN_MAX_RANK];
    if (rank > 0) {
        ck_line(&k, "i64 r = i;");
        for (int d = rank - 1; d >= 0; d--) {
            if (d > 0) {
                ck_line(&k, "const i64 x%d = r %% %s; r /= %s;", d, ck_d(&k, it->dims[d]), ck_d(&k, it->dims[d]));
            } else {
                ck_line(&k, "const i64 x0 = r;");
            }
            idx[d] = ck_s(&k, "x%d", d);
        }
    }
    const char *rct;
    const char *v = map_value(&k, ni, which, idx, &rct);
    const char *off = dot(&k, dt, idx, rank);
    if (concat_axis >= 0) {
        const char *base = "0LL";
        for (int q = 0; q < which; q++)
            base = ck_s(&k, "(%s + %s)", base, ck_d(&k, cu_vt(c, n->inputs[q])->dims[concat_axis]));
        off = ck_s(&k, "(%s + %s * %s)", off, base, ck_prod(&k, dt, concat_axis + 1, dt->rank));
    }
    ck_store(&k, dst, off, v, rct);
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch *L = cu_launch_k(c, &k, kern, cu_dprod(c, it, 0, rank), MAP_BLOCK, 1, 1);
    if (c->ni[ni].prefill_only) {
        L->cond = KILN_CU_COND_GT;
        L->cond_d = c->ni[ni].rows;
        L->cond_c = CU_GEMV_MAX_M;
    }
    return c->failed ? -1 : 0;
}

int cu_lower_map(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    for (int i = 0; i < n->n_outputs; i++)
        if (!cu_dtype_ok(cu_vt(c, n->outputs[i])->dtype))
            return cu_fail(c, n, "element type %s is not supported", kiln_dtype_name(cu_vt(c, n->outputs[i])->dtype));
    for (int i = 0; i < n->n_inputs; i++)
        if (n->inputs[i] >= 0 && !cu_dtype_ok(cu_vt(c, n->inputs[i])->dtype))
            return cu_fail(c, n, "element type %s is not supported", kiln_dtype_name(cu_vt(c, n->inputs[i])->dtype));
    if (IS("Concat")) {
        int axis = (int)kiln_node_int(n, "axis");
        int r = cu_vt(c, n->outputs[0])->rank;
        if (axis < 0)
            axis += r;
        for (int i = 0; i < n->n_inputs; i++)
            if (kiln_type_numel(cu_vt(c, n->inputs[i])) != 0 && map_kernel(c, ni, i, cu_vt(c, n->inputs[i]), n->outputs[0], axis))
                return -1;
        return 0;
    }
    if (IS("Split")) {
        for (int o = 0; o < n->n_outputs; o++)
            if (cu_has_buf(c, n->outputs[o]) && c->plan->bufs[n->outputs[o]].kind != KILN_BUF_ALIAS &&
                map_kernel(c, ni, o, cu_vt(c, n->outputs[o]), n->outputs[o], -1))
                return -1;
        return 0;
    }
    for (int o = 0; o < n->n_outputs; o++) {
        int v = n->outputs[o];
        kiln_buf_kind bk = c->plan->bufs[v].kind;
        if (bk == KILN_BUF_NONE || (bk == KILN_BUF_ALIAS && !((n->op->flags & KILN_OP_ELEMENTWISE) && o == 0 &&
                                                              strcmp(op, "Identity") && strcmp(op, "Dropout"))))
            continue;
        if (c->plan->bufs[v].last < 0 && bk != KILN_BUF_OUTPUT)
            continue;
        if (map_kernel(c, ni, o, cu_vt(c, v), v, -1))
            return -1;
    }
    return 0;
}
