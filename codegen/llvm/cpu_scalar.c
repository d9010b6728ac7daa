/* cpu_scalar.c - the scalar function of every elementwise op, as LLVM IR.
 * Mirrors the reference kernels in ir/ops_elementwise.c: same formulas,
 * float math in f32 (f64 for f64 tensors), integers in i64. */
#include "cg.h"

#include <math.h>
#include <string.h>

static LLVMValueRef fsel(kc *k, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b, LLVMValueRef t,
                         LLVMValueRef f)
{
    return LLVMBuildSelect(k->c->b, LLVMBuildFCmp(k->c->b, p, a, b, ""), t, f, "");
}

static LLVMValueRef isel(kc *k, LLVMIntPredicate p, LLVMValueRef a, LLVMValueRef b, LLVMValueRef t,
                         LLVMValueRef f)
{
    return LLVMBuildSelect(k->c->b, LLVMBuildICmp(k->c->b, p, a, b, ""), t, f, "");
}

static LLVMValueRef bool64(kc *k, LLVMValueRef i1) { return LLVMBuildZExt(k->c->b, i1, k->c->t_i64, ""); }

static LLVMValueRef sigmoid(kc *k, LLVMValueRef x, ctype t)
{
    LLVMBuilderRef b = k->c->b;
    LLVMValueRef e = kc_exp(k, LLVMBuildFNeg(b, x, ""), t);
    return LLVMBuildFDiv(b, kc_f(k, t, 1), LLVMBuildFAdd(b, kc_f(k, t, 1), e, ""), "");
}

static LLVMValueRef softplus(kc *k, LLVMValueRef x, ctype t)
{
    LLVMValueRef sp = kc_libm1(k, "log1p", kc_exp(k, x, t), t);
    return fsel(k, LLVMRealOGT, x, kc_f(k, t, 30), x, sp);
}

/* NaN-propagating min/max like the reference (fmin/fmax would drop NaN). */
static LLVMValueRef fminmax(kc *k, LLVMValueRef x, LLVMValueRef y, int is_max)
{
    LLVMBuilderRef b = k->c->b;
    LLVMValueRef m = LLVMBuildSelect(b, LLVMBuildFCmp(b, is_max ? LLVMRealOGT : LLVMRealOLT, x, y, ""), x, y, "");
    LLVMValueRef nan = LLVMBuildOr(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), LLVMBuildFCmp(b, LLVMRealUNO, y, y, ""), "");
    return LLVMBuildSelect(b, nan, LLVMBuildFAdd(b, x, y, ""), m, "");
}

LLVMValueRef cg_scalar(kc *k, const kiln_node *n, LLVMValueRef *a, const ctype *at, ctype rt)
{
    LLVMBuilderRef b = k->c->b;
    const char *op = n->op->name;
    LLVMValueRef x = a[0], y = n->n_inputs > 1 ? a[1] : NULL;
    ctype t = at[0];
    int fl = t != CT_I64;
#define IS(s) (strcmp(op, s) == 0)
    if (IS("Cast") || IS("CastLike"))
        return kc_convert(k, x, t, rt);
    if (IS("Identity") || IS("Dropout"))
        return x;
    if (IS("Where"))
        return LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntNE, a[0], kc_i64(k, 0), ""), a[1], a[2], "");
    if (IS("Clip")) {
        LLVMValueRef v = x;
        if (n->n_inputs > 1 && a[1])
            v = fl ? fsel(k, LLVMRealOLT, v, a[1], a[1], v) : isel(k, LLVMIntSLT, v, a[1], a[1], v);
        if (n->n_inputs > 2 && a[2])
            v = fl ? fsel(k, LLVMRealOGT, v, a[2], a[2], v) : isel(k, LLVMIntSGT, v, a[2], a[2], v);
        return v;
    }
    /* unary */
    if (IS("Neg"))
        return fl ? LLVMBuildFNeg(b, x, "") : LLVMBuildSub(b, kc_i64(k, 0), x, "");
    if (IS("Abs"))
        return fl ? kc_intr1(k, "llvm.fabs", x) : isel(k, LLVMIntSLT, x, kc_i64(k, 0), LLVMBuildSub(b, kc_i64(k, 0), x, ""), x);
    if (IS("Relu"))
        return fl ? fsel(k, LLVMRealULE, x, kc_f(k, t, 0), fsel(k, LLVMRealUNO, x, x, x, kc_f(k, t, 0)), x)
                  : isel(k, LLVMIntSGT, x, kc_i64(k, 0), x, kc_i64(k, 0));
    if (IS("Sign")) {
        if (!fl)
            return isel(k, LLVMIntSGT, x, kc_i64(k, 0), kc_i64(k, 1), isel(k, LLVMIntSLT, x, kc_i64(k, 0), kc_i64(k, -1), kc_i64(k, 0)));
        LLVMValueRef r = fsel(k, LLVMRealOLT, x, kc_f(k, t, 0), kc_f(k, t, -1), fsel(k, LLVMRealOEQ, x, kc_f(k, t, 0), kc_f(k, t, 0), x));
        return fsel(k, LLVMRealOGT, x, kc_f(k, t, 0), kc_f(k, t, 1), r);
    }
    if (IS("Not"))
        return bool64(k, LLVMBuildICmp(b, LLVMIntEQ, x, kc_i64(k, 0), ""));
    if (IS("BitwiseNot"))
        return LLVMBuildNot(b, x, "");
    if (IS("Sqrt")) return kc_intr1(k, "llvm.sqrt", x);
    if (IS("Reciprocal")) return LLVMBuildFDiv(b, kc_f(k, t, 1), x, "");
    if (IS("Exp")) return kc_exp(k, x, t);
    if (IS("Log")) return kc_intr1(k, "llvm.log", x);
    if (IS("Cos")) return kc_intr1(k, "llvm.cos", x);
    if (IS("Sin")) return kc_intr1(k, "llvm.sin", x);
    if (IS("Floor")) return kc_intr1(k, "llvm.floor", x);
    if (IS("Ceil")) return kc_intr1(k, "llvm.ceil", x);
    if (IS("Round")) return kc_intr1(k, "llvm.roundeven", x);
    if (IS("Tanh")) return kc_tanh(k, x, t);
    if (IS("Erf")) return kc_erf(k, x, t);
    if (IS("Tan")) return kc_libm1(k, "tan", x, t);
    if (IS("Acos")) return kc_libm1(k, "acos", x, t);
    if (IS("Asin")) return kc_libm1(k, "asin", x, t);
    if (IS("Atan")) return kc_libm1(k, "atan", x, t);
    if (IS("Cosh")) return kc_libm1(k, "cosh", x, t);
    if (IS("Sinh")) return kc_libm1(k, "sinh", x, t);
    if (IS("Acosh")) return kc_libm1(k, "acosh", x, t);
    if (IS("Asinh")) return kc_libm1(k, "asinh", x, t);
    if (IS("Atanh")) return kc_libm1(k, "atanh", x, t);
    if (IS("Sigmoid")) return sigmoid(k, x, t);
    if (IS("Silu")) return LLVMBuildFMul(b, x, sigmoid(k, x, t), "");
    if (IS("Softplus")) return softplus(k, x, t);
    if (IS("Softsign"))
        return LLVMBuildFDiv(b, x, LLVMBuildFAdd(b, kc_f(k, t, 1), kc_intr1(k, "llvm.fabs", x), ""), "");
    if (IS("Mish"))
        return LLVMBuildFMul(b, x, kc_tanh(k, softplus(k, x, t), t), "");
    if (IS("HardSwish")) {
        LLVMValueRef h = LLVMBuildFAdd(b, LLVMBuildFDiv(b, x, kc_f(k, t, 6), ""), kc_f(k, t, 0.5), "");
        h = kc_intr2(k, "llvm.maxnum", kc_intr2(k, "llvm.minnum", h, kc_f(k, t, 1)), kc_f(k, t, 0));
        return LLVMBuildFMul(b, x, h, "");
    }
    if (IS("IsNaN"))
        return bool64(k, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""));
    if (IS("IsInf")) {
        LLVMValueRef inf = kc_f(k, t, INFINITY);
        LLVMValueRef r = LLVMConstInt(k->c->t_i1, 0, 0);
        if (kiln_node_int(n, "detect_positive"))
            r = LLVMBuildOr(b, r, LLVMBuildFCmp(b, LLVMRealOEQ, x, inf, ""), "");
        if (kiln_node_int(n, "detect_negative"))
            r = LLVMBuildOr(b, r, LLVMBuildFCmp(b, LLVMRealOEQ, x, LLVMBuildFNeg(b, inf, ""), ""), "");
        return bool64(k, r);
    }
    if (IS("LeakyRelu"))
        return fsel(k, LLVMRealOGE, x, kc_f(k, t, 0), x, LLVMBuildFMul(b, x, kc_f(k, t, kiln_node_float(n, "alpha")), ""));
    if (IS("Elu") || IS("Selu")) {
        LLVMValueRef al = kc_f(k, t, kiln_node_float(n, "alpha"));
        LLVMValueRef neg = LLVMBuildFMul(b, al, LLVMBuildFSub(b, kc_exp(k, x, t), kc_f(k, t, 1), ""), "");
        LLVMValueRef r = fsel(k, IS("Elu") ? LLVMRealOGE : LLVMRealOGT, x, kc_f(k, t, 0), x, neg);
        return IS("Selu") ? LLVMBuildFMul(b, r, kc_f(k, t, kiln_node_float(n, "gamma")), "") : r;
    }
    if (IS("Celu")) {
        LLVMValueRef al = kc_f(k, t, kiln_node_float(n, "alpha"));
        LLVMValueRef e = LLVMBuildFMul(b, al, LLVMBuildFSub(b, kc_exp(k, LLVMBuildFDiv(b, x, al, ""), t), kc_f(k, t, 1), ""), "");
        return LLVMBuildFAdd(b, kc_intr2(k, "llvm.maxnum", x, kc_f(k, t, 0)), kc_intr2(k, "llvm.minnum", e, kc_f(k, t, 0)), "");
    }
    if (IS("HardSigmoid")) {
        LLVMValueRef v = LLVMBuildFAdd(b, LLVMBuildFMul(b, x, kc_f(k, t, kiln_node_float(n, "alpha")), ""),
                                       kc_f(k, t, kiln_node_float(n, "beta")), "");
        return kc_intr2(k, "llvm.maxnum", kc_intr2(k, "llvm.minnum", v, kc_f(k, t, 1)), kc_f(k, t, 0));
    }
    if (IS("ThresholdedRelu"))
        return fsel(k, LLVMRealOGT, x, kc_f(k, t, kiln_node_float(n, "alpha")), x, kc_f(k, t, 0));
    if (IS("QuickGelu"))
        return LLVMBuildFMul(b, x, sigmoid(k, LLVMBuildFMul(b, x, kc_f(k, t, kiln_node_float(n, "alpha")), ""), t), "");
    if (IS("Gelu") || IS("FastGelu") || IS("BiasGelu")) {
        LLVMValueRef inner;
        if (!IS("Gelu") && y)
            x = LLVMBuildFAdd(b, x, y, "");
        if (IS("FastGelu") || (IS("Gelu") && !strcmp(kiln_node_string(n, "approximate"), "tanh"))) {
            LLVMValueRef x3 = LLVMBuildFMul(b, LLVMBuildFMul(b, x, x, ""), x, "");
            inner = LLVMBuildFMul(b, kc_f(k, t, sqrt(2 / M_PI)),
                                  LLVMBuildFAdd(b, x, LLVMBuildFMul(b, kc_f(k, t, 0.044715), x3, ""), ""), "");
            inner = kc_tanh(k, inner, t);
        } else {
            inner = kc_erf(k, LLVMBuildFMul(b, x, kc_f(k, t, 1 / sqrt(2.0)), ""), t);
        }
        return LLVMBuildFMul(b, LLVMBuildFMul(b, kc_f(k, t, 0.5), x, ""), LLVMBuildFAdd(b, kc_f(k, t, 1), inner, ""), "");
    }
    /* variadic (one input allowed), then binary */
    if (IS("Add") || IS("Sum") || IS("Mean")) {
        LLVMValueRef acc = x;
        for (int i = 1; i < n->n_inputs; i++)
            acc = fl ? LLVMBuildFAdd(b, acc, a[i], "") : LLVMBuildAdd(b, acc, a[i], "");
        if (IS("Mean"))
            acc = LLVMBuildFDiv(b, acc, kc_f(k, t, n->n_inputs), "");
        return acc;
    }
    if (IS("Min") || IS("Max")) {
        int mx = IS("Max");
        LLVMValueRef acc = x;
        for (int i = 1; i < n->n_inputs; i++)
            acc = fl ? fminmax(k, acc, a[i], mx)
                     : isel(k, mx ? LLVMIntSGT : LLVMIntSLT, acc, a[i], acc, a[i]);
        return acc;
    }
    if (!y)
        goto unknown;
    if (IS("Sub")) return fl ? LLVMBuildFSub(b, x, y, "") : LLVMBuildSub(b, x, y, "");
    if (IS("Mul")) return fl ? LLVMBuildFMul(b, x, y, "") : LLVMBuildMul(b, x, y, "");
    if (IS("Div")) {
        if (fl)
            return LLVMBuildFDiv(b, x, y, "");
        /* the reference defines x/0 = 0 and avoids INT64_MIN/-1 */
        LLVMValueRef zero = LLVMBuildICmp(b, LLVMIntEQ, y, kc_i64(k, 0), "");
        LLVMValueRef m1 = LLVMBuildICmp(b, LLVMIntEQ, y, kc_i64(k, -1), "");
        LLVMValueRef safe = LLVMBuildSelect(b, LLVMBuildOr(b, zero, m1, ""), kc_i64(k, 1), y, "");
        LLVMValueRef q = LLVMBuildSDiv(b, x, safe, "");
        q = LLVMBuildSelect(b, m1, LLVMBuildSub(b, kc_i64(k, 0), x, ""), q, "");
        return LLVMBuildSelect(b, zero, kc_i64(k, 0), q, "");
    }
    if (IS("Pow")) {
        if (fl)
            return kc_intr2(k, "llvm.pow", x, kc_convert(k, y, at[1], t));
        LLVMValueRef fx = kc_convert(k, x, CT_I64, CT_F64), fy = kc_convert(k, y, at[1], CT_F64);
        return kc_convert(k, kc_intr2(k, "llvm.pow", fx, fy), CT_F64, CT_I64);
    }
    if (IS("Mod")) {
        int fm = (int)kiln_node_int(n, "fmod");
        if (fl) {
            LLVMValueRef r = LLVMBuildFRem(b, x, y, "");
            if (fm)
                return r;
            LLVMValueRef adj = LLVMBuildAnd(b, LLVMBuildFCmp(b, LLVMRealONE, r, kc_f(k, t, 0), ""),
                                            LLVMBuildXor(b, LLVMBuildFCmp(b, LLVMRealOLT, r, kc_f(k, t, 0), ""),
                                                         LLVMBuildFCmp(b, LLVMRealOLT, y, kc_f(k, t, 0), ""), ""), "");
            return LLVMBuildSelect(b, adj, LLVMBuildFAdd(b, r, y, ""), r, "");
        }
        LLVMValueRef bad = LLVMBuildOr(b, LLVMBuildICmp(b, LLVMIntEQ, y, kc_i64(k, 0), ""),
                                       LLVMBuildICmp(b, LLVMIntEQ, y, kc_i64(k, -1), ""), "");
        LLVMValueRef r = LLVMBuildSRem(b, x, LLVMBuildSelect(b, bad, kc_i64(k, 1), y, ""), "");
        if (!fm) {
            LLVMValueRef adj = LLVMBuildAnd(b, LLVMBuildICmp(b, LLVMIntNE, r, kc_i64(k, 0), ""),
                                            LLVMBuildXor(b, LLVMBuildICmp(b, LLVMIntSLT, r, kc_i64(k, 0), ""),
                                                         LLVMBuildICmp(b, LLVMIntSLT, y, kc_i64(k, 0), ""), ""), "");
            r = LLVMBuildSelect(b, adj, LLVMBuildAdd(b, r, y, ""), r, "");
        }
        return LLVMBuildSelect(b, bad, kc_i64(k, 0), r, "");
    }
    if (IS("PRelu")) {
        LLVMValueRef s = kc_convert(k, y, at[1], t);
        return fl ? fsel(k, LLVMRealOGE, x, kc_f(k, t, 0), x, LLVMBuildFMul(b, x, s, ""))
                  : isel(k, LLVMIntSGE, x, kc_i64(k, 0), x, LLVMBuildMul(b, x, s, ""));
    }
    {
        struct { const char *n; LLVMRealPredicate f; LLVMIntPredicate i; } cmp[] = {
            {"Equal", LLVMRealOEQ, LLVMIntEQ},       {"Less", LLVMRealOLT, LLVMIntSLT},
            {"Greater", LLVMRealOGT, LLVMIntSGT},    {"LessOrEqual", LLVMRealOLE, LLVMIntSLE},
            {"GreaterOrEqual", LLVMRealOGE, LLVMIntSGE},
        };
        for (size_t i = 0; i < sizeof cmp / sizeof *cmp; i++)
            if (IS(cmp[i].n))
                return bool64(k, fl ? LLVMBuildFCmp(b, cmp[i].f, x, y, "") : LLVMBuildICmp(b, cmp[i].i, x, y, ""));
    }
    if (IS("And") || IS("BitwiseAnd")) return LLVMBuildAnd(b, x, y, "");
    if (IS("Or") || IS("BitwiseOr")) return LLVMBuildOr(b, x, y, "");
    if (IS("Xor") || IS("BitwiseXor")) return LLVMBuildXor(b, x, y, "");
    if (IS("BitShift")) {
        int left = !strcmp(kiln_node_string(n, "direction"), "LEFT");
        LLVMValueRef big = LLVMBuildICmp(b, LLVMIntUGE, y, kc_i64(k, 64), "");
        LLVMValueRef sy = LLVMBuildSelect(b, big, kc_i64(k, 0), y, "");
        LLVMValueRef r = left ? LLVMBuildShl(b, x, sy, "") : LLVMBuildLShr(b, x, sy, "");
        return LLVMBuildSelect(b, big, kc_i64(k, 0), r, "");
    }
#undef IS
unknown:
    cg_fail(k->c, n, "no CPU lowering for elementwise op %s", op);
    return kc_f(k, rt, 0);
}
