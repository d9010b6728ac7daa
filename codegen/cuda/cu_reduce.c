/* cu_reduce.c - Reduce* and ArgMax/ArgMin for the CUDA target: one thread
 * per output element looping over the reduced axes, accumulating in double
 * (i64 for integers) like the reference kernels. */
#include "cu.h"

#include <string.h>

#define RED_BLOCK 128

enum { R_SUM, R_MEAN, R_MAX, R_MIN, R_PROD, R_L1, R_L2, R_LOGSUM, R_LOGSUMEXP, R_SUMSQ, R_ARGMAX, R_ARGMIN };

static int reduce_kind(const char *op)
{
    static const char *names[] = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                  "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                  "ReduceSumSquare", "ArgMax", "ArgMin"};
    for (int i = 0; i < (int)(sizeof names / sizeof *names); i++)
        if (!strcmp(op, names[i]))
            return i;
    return -1;
}

int cu_is_reduce(const char *op) { return reduce_kind(op) >= 0; }

static const char *fold(ck *k, int kind, const char *acc, const char *v, int fl)
{
    switch (kind) {
    case R_SUM: case R_MEAN: case R_LOGSUM: return ck_s(k, "%s + %s", acc, v);
    case R_PROD: return ck_s(k, "%s * %s", acc, v);
    case R_L1: return fl ? ck_s(k, "%s + fabs(%s)", acc, v) : ck_s(k, "%s + (%s < 0 ? -%s : %s)", acc, v, v, v);
    case R_L2: case R_SUMSQ: return ck_s(k, "%s + %s * %s", acc, v, v);
    case R_LOGSUMEXP: return ck_s(k, "%s + exp(%s - ex)", acc, v);
    case R_MAX: case R_MIN: {
        const char *cmp = kind == R_MAX ? ">" : "<";
        if (!fl)
            return ck_s(k, "(%s %s %s ? %s : %s)", v, cmp, acc, v, acc);
        /* NaN wins, as in the reference */
        return ck_s(k, "((%s != %s) ? %s : (!(%s %s %s) ? %s : %s))", acc, acc, acc, v, kind == R_MAX ? "<=" : ">=", acc,
                    v, acc);
    }
    default: return acc;
    }
}

int cu_lower_reduce(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    int kind = reduce_kind(n->op->name);
    const kiln_type *it = cu_vt(c, n->inputs[0]), *ot = cu_vt(c, n->outputs[0]);
    int rank = it->rank;
    if (!cu_dtype_ok(it->dtype) || !cu_dtype_ok(ot->dtype))
        return cu_fail(c, n, "element type not supported");
    int red[KILN_MAX_RANK] = {0};
    if (kind >= R_ARGMAX) {
        int axis = (int)kiln_node_int(n, "axis");
        red[axis < 0 ? axis + rank : axis] = 1;
    } else {
        int64_t axes[KILN_MAX_RANK];
        int na = 0;
        if (n->n_inputs > 1 && n->inputs[1] >= 0) {
            kiln_tensor t;
            const kiln_value *av = &c->g->values[n->inputs[1]];
            if ((av->kind != KILN_VAL_CONST && av->kind != KILN_VAL_WEIGHT) ||
                kiln_graph_value_tensor(c->g, n->inputs[1], &t, NULL))
                return cu_fail(c, n, "reduction axes must be known at compile time");
            na = (int)kiln_tensor_numel(&t);
            for (int i = 0; i < na && i < KILN_MAX_RANK; i++)
                axes[i] = kiln_tensor_get_i64(&t, i);
        }
        if (na == 0 && !kiln_node_int(n, "noop_with_empty_axes"))
            for (int i = 0; i < rank; i++)
                red[i] = 1;
        for (int i = 0; i < na; i++)
            red[axes[i] < 0 ? axes[i] + rank : axes[i]] = 1;
    }
    int fl = strcmp(cu_ctyp(it->dtype), "i64") != 0;
    const char *ct = fl ? "double" : "i64";
    ck k;
    ck_begin(c, &k, ni, RED_BLOCK);
    ck_line(&k, "const i64 total = %s;", ck_prod(&k, ot, 0, ot->rank));
    ck_line(&k, "const i64 o = (i64)blockIdx.x * blockDim.x + threadIdx.x;");
    ck_line(&k, "if (o >= total) return;");
    ck_line(&k, "i64 rem = o;");
    for (int d = rank - 1; d >= 0; d--) {
        if (red[d])
            continue;
        ck_line(&k, "const i64 x%d = rem %% %s; rem /= %s;", d, ck_d(&k, it->dims[d]), ck_d(&k, it->dims[d]));
    }
    /* offset of the kept coordinates, then loops over the reduced axes */
    kiln_sb base = {0};
    kiln_sb_printf(&base, "0LL");
    for (int d = 0; d < rank; d++)
        if (!red[d])
            kiln_sb_printf(&base, " + x%d * %s", d, ck_prod(&k, it, d + 1, rank));
    ck_line(&k, "const i64 base = %s;", base.s);
    kiln_sb_free(&base);
    kiln_sb off = {0};
    kiln_sb_printf(&off, "base");
    for (int d = 0; d < rank; d++)
        if (red[d])
            kiln_sb_printf(&off, " + r%d * %s", d, ck_prod(&k, it, d + 1, rank));
    const char *offs = ck_s(&k, "%s", off.s);
    kiln_sb_free(&off);
    if (kind >= R_ARGMAX) {
        int axis = 0;
        for (int d = 0; d < rank; d++)
            if (red[d])
                axis = d;
        int last = (int)kiln_node_int(n, "select_last_index");
        const char *cmp = kind == R_ARGMAX ? (last ? ">=" : ">") : (last ? "<=" : "<");
        ck_line(&k, "const i64 st = %s;", ck_prod(&k, it, axis + 1, rank));
        ck_line(&k, "%s best = %s; i64 bi = 0;", ct, ck_load_as(&k, n->inputs[0], "base", ct));
        ck_line(&k, "for (i64 j = 1; j < %s; j++) { const %s v = %s; if (v %s best) { best = v; bi = j; } }",
                ck_d(&k, it->dims[axis]), ct, ck_load_as(&k, n->inputs[0], "base + j * st", ct), cmp);
        ck_store(&k, n->outputs[0], "o", "bi", "i64");
    } else {
        const char *init = kind == R_PROD ? (fl ? "1.0" : "1LL")
                         : kind == R_MAX ? (fl ? "-(double)KINF" : "(-9223372036854775807LL - 1)")
                         : kind == R_MIN ? (fl ? "(double)KINF" : "9223372036854775807LL")
                         : (fl ? "0.0" : "0LL");
        int nest = 0;
        if (kind == R_LOGSUMEXP) {
            ck_line(&k, "double ex = -(double)KINF;");
            for (int d = 0; d < rank; d++)
                if (red[d]) {
                    ck_line(&k, "for (i64 r%d = 0; r%d < %s; r%d++) {", d, d, ck_d(&k, it->dims[d]), d);
                    nest++;
                }
            ck_line(&k, "{ const double v = %s; ex = %s; }", ck_load_as(&k, n->inputs[0], offs, "double"), fold(&k, R_MAX, "ex", "v", 1));
            for (; nest > 0; nest--)
                ck_line(&k, "}");
            ck_line(&k, "if (ex == -(double)KINF) ex = 0;");
        }
        ck_line(&k, "%s acc = %s;", ct, init);
        for (int d = 0; d < rank; d++)
            if (red[d]) {
                ck_line(&k, "for (i64 r%d = 0; r%d < %s; r%d++) {", d, d, ck_d(&k, it->dims[d]), d);
                nest++;
            }
        ck_line(&k, "{ const %s v = %s; acc = %s; }", ct, ck_load_as(&k, n->inputs[0], offs, ct), fold(&k, kind, "acc", "v", fl));
        for (; nest > 0; nest--)
            ck_line(&k, "}");
        kiln_sb cnt = {0};
        kiln_sb_printf(&cnt, "1LL");
        for (int d = 0; d < rank; d++)
            if (red[d])
                kiln_sb_printf(&cnt, " * %s", ck_d(&k, it->dims[d]));
        const char *cn = ck_s(&k, "(%s)", cnt.s);
        kiln_sb_free(&cnt);
        const char *res = "acc", *rt = ct;
        switch (kind) {
        case R_MEAN: res = fl ? ck_s(&k, "acc / (double)%s", cn) : ck_s(&k, "(%s ? acc / %s : 0LL)", cn, cn); break;
        case R_L2: res = "sqrt((double)acc)"; rt = "double"; break;
        case R_LOGSUM: res = "log((double)acc)"; rt = "double"; break;
        case R_LOGSUMEXP: res = "log(acc) + ex"; break;
        default: break;
        }
        ck_store(&k, n->outputs[0], "o", res, rt);
    }
    int kern = ck_end(&k);
    if (kern < 0)
        return -1;
    cu_launch_k(c, &k, kern, cu_dprod(c, ot, 0, ot->rank), RED_BLOCK, 1, 1);
    return 0;
}
