/* ops_shape.c - data movement and shape ops: Reshape, Transpose, Concat,
 * Split, Slice, Gather (also from block-quantized embedding tables),
 * GatherElements, GatherND, ScatterElements, ScatterND, Expand, Squeeze,
 * Unsqueeze, Flatten, Shape, Size, Tile, Pad.
 *
 * Kernels move whole elements (kiln_copy_elem), so every dtype works,
 * packed i4/u4 included. Inference tracks the contents of small integer
 * vectors (Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains), so
 * shapes computed at run time by exported graphs stay symbolic here. */
#include "op_util.h"

/* Longest integer vector whose contents inference tracks. */
#define SV_MAX 64

static int is_int_vec(const kiln_type *t)
{
    return t && kiln_dtype_get(t->dtype)->is_int && t->rank >= 0 && t->rank <= 1;
}

static kiln_dim dims_prod(kiln_symtab *s, const kiln_dim *d, int n)
{
    kiln_dim p = 1;
    for (int i = 0; i < n; i++)
        p = kiln_dim_mul(s, p, d[i]);
    return p;
}

static int64_t prod64(const int64_t *d, int n)
{
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        p *= d[i];
    return p;
}

/* Static dims that disagree are an error; otherwise the more specific one. */
static int merge_dim(kiln_infer_ctx *c, kiln_dim a, kiln_dim b, kiln_dim *out, const char *what)
{
    if (a == b || b == KILN_DIM_ANY) {
        *out = a;
        return 0;
    }
    if (a == KILN_DIM_ANY) {
        *out = b;
        return 0;
    }
    if (KILN_DIM_IS_STATIC(a) && KILN_DIM_IS_STATIC(b))
        return OPERR(c, "%s: dimension %lld does not match %lld", what, (long long)b,
                     (long long)a);
    *out = KILN_DIM_IS_STATIC(a) ? a : b; /* symbolic vs static: the static size */
    return 0;
}

/* Output 0 keeps input 0's known contents (views of small vectors). */
static void pass_contents(kiln_infer_ctx *c)
{
    kiln_dim v[SV_MAX];
    if (!is_int_vec(c->in[0]) || c->out[0].rank > 1)
        return;
    int n = kiln_infer_vec(c, 0, v, SV_MAX);
    if (n >= 0)
        kiln_infer_set_sym(c, 0, v, n);
}

/* Views (Reshape, Flatten, Squeeze, Unsqueeze) copy the bytes unchanged. */
static int view_eval(kiln_eval_ctx *c)
{
    if (c->out[0]->nbytes)
        memcpy(c->out[0]->data, c->in[0]->data, c->out[0]->nbytes);
    return 0;
}

/* ---- Reshape ---- */

static const kiln_attr_spec attrs_reshape[] = {{"allowzero", KILN_ATTR_INT, 0, 0, 0, 0}, {0}};

static int reshape_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *s = c->in[1];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "shape"))
        return -1;
    if (s->rank > 1)
        return OPERR(c, "shape must be 1-D, got rank %d", s->rank);
    int allowzero = kiln_node_int(c->node, "allowzero") != 0;
    kiln_dim t[KILN_MAX_RANK];
    int n = kiln_infer_vec(c, 1, t, KILN_MAX_RANK);
    if (n == -2)
        return OPERR(c, "target shape has more than %d dims", KILN_MAX_RANK);
    kiln_type o = kiln_type_make(x->dtype, -1, NULL);
    if (n < 0) { /* contents unknown: only the rank, from the shape's length */
        if (s->rank == 1 && KILN_DIM_IS_STATIC(s->dims[0])) {
            if (s->dims[0] > KILN_MAX_RANK)
                return OPERR(c, "target shape has more than %d dims", KILN_MAX_RANK);
            o = kiln_type_make(x->dtype, (int)s->dims[0], NULL);
        }
        c->out[0] = o;
        return 0;
    }
    o.rank = n;
    int neg = -1, zeros = 0;
    for (int i = 0; i < n; i++) {
        int64_t v;
        kiln_dim d = t[i];
        if (kiln_sv_int(t[i], &v)) {
            if (v == -1) {
                if (neg >= 0)
                    return OPERR(c, "target shape has more than one -1");
                neg = i;
                d = 1;
            } else if (v < -1) {
                return OPERR(c, "invalid target dimension %lld", (long long)v);
            } else if (v == 0 && !allowzero) {
                if (x->rank >= 0 && i >= x->rank)
                    return OPERR(c, "target dimension %d is 0 (copy), but the input has rank %d",
                                 i, x->rank);
                d = x->rank < 0 ? KILN_DIM_ANY : x->dims[i];
            } else if (v == 0) {
                zeros++;
            }
        }
        o.dims[i] = d;
    }
    if (allowzero && zeros && neg >= 0)
        return OPERR(c, "allowzero=1 target has both 0 and -1");
    kiln_dim total = x->rank < 0 ? KILN_DIM_ANY : dims_prod(c->syms, x->dims, x->rank);
    kiln_dim known = dims_prod(c->syms, o.dims, n); /* the -1 entry counts as 1 */
    if (KILN_DIM_IS_STATIC(total) && KILN_DIM_IS_STATIC(known)) {
        if (neg >= 0) {
            if (known == 0)
                return OPERR(c, "cannot infer the -1 dimension next to a zero-size dimension");
            if (total % known)
                return OPERR(c, "cannot reshape %lld elements into a multiple of %lld",
                             (long long)total, (long long)known);
            o.dims[neg] = total / known;
        } else if (total != known) {
            return OPERR(c, "cannot reshape %lld elements into %lld", (long long)total,
                         (long long)known);
        }
    } else if (neg >= 0) {
        o.dims[neg] = kiln_dim_div(c->syms, total, known);
    }
    c->out[0] = o;
    pass_contents(c);
    return 0;
}

static const kiln_op_def op_reshape = {
    "Reshape", 2, 2, 1, 1, attrs_reshape, KILN_OP_SHAPE_ONLY, reshape_infer, view_eval,
    "new shape for the same elements (0 copies a dim unless allowzero, -1 is inferred)", NULL};

/* ---- Transpose ---- */

static const kiln_attr_spec attrs_transpose[] = {{"perm", KILN_ATTR_INTS, 0, 0, 0, 0}, {0}};

/* perm attribute (default: reversed dims), checked against rank. */
static int get_perm(const kiln_node *n, int rank, int *perm, kiln_err *err)
{
    int np;
    const int64_t *p = kiln_node_ints(n, "perm", &np);
    if (!kiln_node_has_attr(n, "perm")) {
        for (int i = 0; i < rank; i++)
            perm[i] = rank - 1 - i;
        return 0;
    }
    if (np != rank)
        return kiln_errf(err, "perm has %d entries for rank %d", np, rank);
    int seen[KILN_MAX_RANK] = {0};
    for (int i = 0; i < np; i++) {
        if (p[i] < 0 || p[i] >= rank || seen[p[i]]++)
            return kiln_errf(err, "perm is not a permutation of 0..%d", rank - 1);
        perm[i] = (int)p[i];
    }
    return 0;
}

static int transpose_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0))
        return -1;
    int rank = x->rank, perm[KILN_MAX_RANK];
    if (rank < 0) {
        int np;
        kiln_node_ints(c->node, "perm", &np);
        c->out[0] = kiln_type_make(x->dtype, kiln_node_has_attr(c->node, "perm") ? np : -1, NULL);
        return 0;
    }
    if (get_perm(c->node, rank, perm, c->err))
        return -1;
    kiln_type o = kiln_type_make(x->dtype, rank, NULL);
    for (int i = 0; i < rank; i++)
        o.dims[i] = x->dims[perm[i]];
    c->out[0] = o;
    return 0;
}

static int transpose_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int rank = x->rank, perm[KILN_MAX_RANK];
    if (get_perm(c->node, rank, perm, c->err))
        return -1;
    int64_t ist[KILN_MAX_RANK], st[1][KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0}, off = 0;
    kiln_strides(x->dims, rank, ist);
    for (int d = 0; d < rank; d++)
        st[0][d] = ist[perm[d]];
    int64_t n = kiln_tensor_numel(o);
    for (int64_t k = 0; k < n; k++) {
        kiln_copy_elem(o, k, x, off);
        kiln_next_index(idx, o->dims, rank, 1, &off, st);
    }
    return 0;
}

static const kiln_op_def op_transpose = {"Transpose", 1, 1, 1, 1, attrs_transpose,
                                         KILN_OP_SHAPE_ONLY, transpose_infer, transpose_eval,
                                         "permute dims (default: reverse them)", NULL};

/* ---- Concat ---- */

static const kiln_attr_spec attrs_concat[] = {{"axis", KILN_ATTR_INT, 1, 0, 0, 0}, {0}};

static int concat_infer(kiln_infer_ctx *c)
{
    int64_t axis_attr = kiln_node_int(c->node, "axis");
    int rank = -1;
    for (int i = 0; i < c->n_inputs; i++) {
        if (kiln_require_unquant(c, i))
            return -1;
        if (c->in[i]->dtype != c->in[0]->dtype)
            return OPERR(c, "input %d is %s but input 0 is %s", i,
                         kiln_dtype_name(c->in[i]->dtype), kiln_dtype_name(c->in[0]->dtype));
        if (c->in[i]->rank < 0)
            continue;
        if (c->in[i]->rank == 0)
            return OPERR(c, "input %d is a scalar; Concat needs rank >= 1", i);
        if (rank >= 0 && c->in[i]->rank != rank)
            return OPERR(c, "input %d has rank %d but others have rank %d", i, c->in[i]->rank,
                         rank);
        rank = c->in[i]->rank;
    }
    if (rank < 0) {
        c->out[0] = kiln_type_make(c->in[0]->dtype, -1, NULL);
        return 0;
    }
    int axis;
    if (kiln_axis(c->err, axis_attr, rank, &axis))
        return -1;
    kiln_type o = kiln_type_make(c->in[0]->dtype, rank, NULL);
    kiln_dim sum = 0;
    for (int i = 0; i < c->n_inputs; i++) {
        const kiln_type *t = c->in[i];
        if (t->rank < 0) {
            sum = KILN_DIM_ANY;
            continue;
        }
        for (int d = 0; d < rank; d++) {
            if (d == axis)
                continue;
            char what[32];
            snprintf(what, sizeof what, "input %d", i);
            if (merge_dim(c, o.dims[d], t->dims[d], &o.dims[d], what))
                return -1;
        }
        sum = kiln_dim_add(c->syms, sum, t->dims[axis]);
    }
    o.dims[axis] = sum;
    c->out[0] = o;
    /* contents of concatenated shape vectors */
    if (rank == 1 && kiln_dtype_get(o.dtype)->is_int) {
        kiln_dim v[SV_MAX];
        int n = 0;
        for (int i = 0; i < c->n_inputs; i++) {
            int k = kiln_infer_vec(c, i, v + n, SV_MAX - n);
            if (k < 0)
                return 0;
            n += k;
        }
        kiln_infer_set_sym(c, 0, v, n);
    }
    return 0;
}

static int concat_eval(kiln_eval_ctx *c)
{
    kiln_tensor *o = c->out[0];
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), o->rank, &axis))
        return -1;
    int64_t outer = prod64(o->dims, axis), inner = prod64(o->dims + axis + 1, o->rank - axis - 1);
    int64_t orow = o->dims[axis] * inner, pos = 0;
    for (int i = 0; i < c->n_inputs; i++) {
        const kiln_tensor *x = c->in[i];
        int64_t row = x->dims[axis] * inner;
        for (int64_t q = 0; q < outer; q++)
            kiln_copy_elems(o, q * orow + pos, x, q * row, row);
        pos += row;
    }
    return 0;
}

static const kiln_op_def op_concat = {"Concat", 1, KILN_MAX_OP_INPUTS, 1, 1, attrs_concat,
                                      KILN_OP_SHAPE_ONLY, concat_infer, concat_eval,
                                      "join tensors along an axis", NULL};

/* ---- Split ---- */

static const kiln_attr_spec attrs_split[] = {{"axis", KILN_ATTR_INT, 0, 0, 0, 0},
                                             {"num_outputs", KILN_ATTR_INT, 0, 0, 0, 0},
                                             {0}};

static int split_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    int nout = c->n_outputs;
    if (kiln_require_unquant(c, 0))
        return -1;
    int has_split = c->n_inputs > 1 && c->in[1];
    if (kiln_node_has_attr(c->node, "num_outputs")) {
        if (has_split)
            return OPERR(c, "give either the split input or num_outputs, not both");
        if (kiln_node_int(c->node, "num_outputs") != nout)
            return OPERR(c, "num_outputs is %lld but the node has %d outputs",
                         (long long)kiln_node_int(c->node, "num_outputs"), nout);
    }
    if (has_split && kiln_require_int(c, 1, "split"))
        return -1;
    if (x->rank < 0) {
        for (int o = 0; o < nout; o++)
            c->out[o] = kiln_type_make(x->dtype, -1, NULL);
        return 0;
    }
    int axis;
    if (x->rank == 0)
        return OPERR(c, "cannot split a scalar");
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    kiln_dim d = x->dims[axis], sizes[KILN_MAX_OP_OUTPUTS];
    if (has_split) {
        int64_t sp[KILN_MAX_OP_OUTPUTS];
        int n = kiln_infer_ivec(c, 1, sp, KILN_MAX_OP_OUTPUTS);
        if (n == -2)
            return OPERR(c, "split has more entries than the %d outputs", nout);
        if (n >= 0) {
            if (n != nout)
                return OPERR(c, "split has %d entries for %d outputs", n, nout);
            int64_t sum = 0;
            for (int o = 0; o < nout; o++) {
                if (sp[o] < 0)
                    return OPERR(c, "split size %lld is negative", (long long)sp[o]);
                sizes[o] = sp[o];
                sum += sp[o];
            }
            if (KILN_DIM_IS_STATIC(d) && sum != d)
                return OPERR(c, "split sizes sum to %lld but the axis has %lld",
                             (long long)sum, (long long)d);
        } else {
            for (int o = 0; o < nout; o++)
                sizes[o] = KILN_DIM_ANY;
        }
    } else if (KILN_DIM_IS_STATIC(d)) {
        /* ceil-sized chunks; the last ones take what is left (maybe nothing) */
        int64_t chunk = (d + nout - 1) / nout;
        for (int o = 0; o < nout; o++) {
            int64_t left = d - chunk * o;
            sizes[o] = left < 0 ? 0 : left < chunk ? left : chunk;
        }
    } else {
        for (int o = 0; o < nout; o++)
            sizes[o] = nout == 1 ? d : KILN_DIM_ANY;
    }
    for (int o = 0; o < nout; o++) {
        c->out[o] = *x;
        c->out[o].dims[axis] = sizes[o];
    }
    return 0;
}

static int split_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    int64_t outer = prod64(x->dims, axis), inner = prod64(x->dims + axis + 1, x->rank - axis - 1);
    int64_t irow = x->dims[axis] * inner, pos = 0;
    for (int o = 0; o < c->n_outputs; o++) {
        kiln_tensor *y = c->out[o];
        int64_t row = y->dims[axis] * inner;
        for (int64_t q = 0; q < outer; q++)
            kiln_copy_elems(y, q * row, x, q * irow + pos, row);
        pos += row;
    }
    return 0;
}

static const kiln_op_def op_split = {"Split", 1, 2, 1, KILN_MAX_OP_OUTPUTS, attrs_split,
                                     KILN_OP_SHAPE_ONLY, split_infer, split_eval,
                                     "cut along an axis by sizes or into equal chunks", NULL};

/* ---- Slice ---- */

/* Start and element count of one sliced axis of size d (ONNX clamping). */
static int64_t slice_axis(int64_t d, int64_t s, int64_t e, int64_t step, int64_t *start)
{
    if (s < 0)
        s += d;
    if (e < 0)
        e += d;
    if (step > 0) {
        s = s < 0 ? 0 : s > d ? d : s;
        e = e < 0 ? 0 : e > d ? d : e;
        *start = s;
        return e > s ? (e - s - 1) / step + 1 : 0;
    }
    s = s < 0 ? 0 : s > d - 1 ? d - 1 : s;
    e = e < -1 ? -1 : e > d - 1 ? d - 1 : e;
    *start = s;
    int64_t mag = step == INT64_MIN ? INT64_MAX : -step;
    return s > e ? (s - e - 1) / mag + 1 : 0;
}

/* Sliced size of a symbolic axis, assuming its bounds need no clamping (the
 * run-time check catches a model where they do). KILN_DIM_ANY if unknown. */
static kiln_dim slice_sym(kiln_symtab *sy, kiln_dim d, kiln_dim sc, kiln_dim ec, int64_t step)
{
    int64_t s, e;
    kiln_dim b, en;
    if (step <= 0 || step > INT32_MAX || d == KILN_DIM_ANY)
        return KILN_DIM_ANY;
    if (kiln_sv_int(sc, &s))
        b = s >= 0 ? s : kiln_dim_sub(sy, d, -s);
    else
        b = sc;
    if (kiln_sv_int(ec, &e)) {
        if (e >= ((int64_t)1 << 31) || (KILN_DIM_IS_STATIC(d) && e >= d))
            en = d; /* "to the end" */
        else
            en = e >= 0 ? e : kiln_dim_sub(sy, d, -e);
    } else {
        en = ec;
    }
    if (!kiln_sv_is_dim(b) || !kiln_sv_is_dim(en))
        return KILN_DIM_ANY;
    if (KILN_DIM_IS_STATIC(b) && KILN_DIM_IS_STATIC(en))
        return en > b ? (en - b - 1) / step + 1 : 0;
    kiln_dim n = kiln_dim_sub(sy, en, b);
    if (step > 1)
        n = kiln_dim_div(sy, kiln_dim_add(sy, n, step - 1), step);
    return n;
}

typedef struct slice_args {
    int n;                       /* number of sliced axes; -1 unknown */
    int axes_known;
    int64_t axes[KILN_MAX_RANK]; /* normalized */
    int steps_known;
    int have_vals;               /* starts, ends, steps all known exactly */
    int64_t starts[KILN_MAX_RANK], ends[KILN_MAX_RANK], steps[KILN_MAX_RANK];
} slice_args;

/* Reads and checks Slice's inputs as far as they are known. */
static int slice_read(kiln_infer_ctx *c, int rank, slice_args *a)
{
    int has_axes = c->n_inputs > 3 && c->in[3], has_steps = c->n_inputs > 4 && c->in[4];
    int ns = kiln_infer_ivec(c, 1, a->starts, KILN_MAX_RANK);
    int ne = kiln_infer_ivec(c, 2, a->ends, KILN_MAX_RANK);
    int na = has_axes ? kiln_infer_ivec(c, 3, a->axes, KILN_MAX_RANK) : -3;
    int np = has_steps ? kiln_infer_ivec(c, 4, a->steps, KILN_MAX_RANK) : -3;
    if (ns == -2 || ne == -2 || na == -2 || np == -2)
        return OPERR(c, "more slice parameters than dims (rank %d)", rank);
    int n = -1;
    const int lens[4] = {ns, ne, na, np};
    for (int i = 0; i < 4; i++) {
        if (lens[i] < 0)
            continue;
        if (n >= 0 && lens[i] != n)
            return OPERR(c, "starts, ends, axes and steps differ in length");
        n = lens[i];
    }
    if (n < 0 && c->in[1]->rank == 1 && KILN_DIM_IS_STATIC(c->in[1]->dims[0]))
        n = (int)c->in[1]->dims[0];
    if (n > rank)
        return OPERR(c, "%d slice axes for rank %d", n, rank);
    a->n = n;
    a->axes_known = n >= 0 && (na >= 0 || !has_axes);
    if (a->axes_known) {
        int seen[KILN_MAX_RANK] = {0};
        for (int i = 0; i < n; i++) {
            int ax;
            if (!has_axes)
                a->axes[i] = i;
            if (kiln_axis(c->err, a->axes[i], rank, &ax))
                return -1;
            if (seen[ax]++)
                return OPERR(c, "axis %d sliced twice", ax);
            a->axes[i] = ax;
        }
    }
    if (np < 0 && !has_steps && n >= 0) {
        for (int i = 0; i < n; i++)
            a->steps[i] = 1;
        np = n;
    }
    for (int i = 0; i < np; i++)
        if (a->steps[i] == 0)
            return OPERR(c, "slice step is 0");
    a->steps_known = np >= 0;
    a->have_vals = ns >= 0 && ne >= 0 && np >= 0;
    return 0;
}

static int slice_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "starts") ||
        kiln_require_int(c, 2, "ends"))
        return -1;
    if (c->n_inputs > 3 && c->in[3] && kiln_require_int(c, 3, "axes"))
        return -1;
    if (c->n_inputs > 4 && c->in[4] && kiln_require_int(c, 4, "steps"))
        return -1;
    if (x->rank < 0) {
        c->out[0] = kiln_type_make(x->dtype, -1, NULL);
        return 0;
    }
    slice_args a;
    if (slice_read(c, x->rank, &a))
        return -1;
    kiln_type o = *x;
    if (!a.axes_known) {
        for (int d = 0; d < o.rank; d++)
            o.dims[d] = KILN_DIM_ANY;
        c->out[0] = o;
        return 0;
    }
    kiln_dim sc[KILN_MAX_RANK], ec[KILN_MAX_RANK];
    int scn = kiln_infer_vec(c, 1, sc, KILN_MAX_RANK);
    int ecn = kiln_infer_vec(c, 2, ec, KILN_MAX_RANK);
    for (int i = 0; i < a.n; i++) {
        int ax = (int)a.axes[i];
        kiln_dim d = x->dims[ax];
        if (a.have_vals && KILN_DIM_IS_STATIC(d)) {
            int64_t st;
            o.dims[ax] = slice_axis(d, a.starts[i], a.ends[i], a.steps[i], &st);
        } else if (a.steps_known && scn == a.n && ecn == a.n) {
            o.dims[ax] = slice_sym(c->syms, d, sc[i], ec[i], a.steps[i]);
        } else {
            o.dims[ax] = KILN_DIM_ANY;
        }
    }
    c->out[0] = o;
    /* contents of a slice of a known shape vector */
    kiln_dim v[SV_MAX], r[SV_MAX];
    if (x->rank == 1 && a.have_vals && kiln_dtype_get(x->dtype)->is_int &&
        KILN_DIM_IS_STATIC(x->dims[0]) && kiln_infer_vec(c, 0, v, SV_MAX) == x->dims[0]) {
        int64_t st = 0, cnt = x->dims[0], step = 1;
        if (a.n == 1) {
            step = a.steps[0];
            cnt = slice_axis(x->dims[0], a.starts[0], a.ends[0], step, &st);
        }
        for (int64_t k = 0; k < cnt; k++)
            r[k] = v[st + k * step];
        kiln_infer_set_sym(c, 0, r, (int)cnt);
    }
    return 0;
}

static int slice_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int rank = x->rank;
    int64_t start[KILN_MAX_RANK], step[KILN_MAX_RANK];
    for (int d = 0; d < rank; d++) {
        start[d] = 0;
        step[d] = 1;
    }
    int64_t n = kiln_tensor_numel(c->in[1]);
    for (int i = 0; i < n; i++) {
        int64_t ax = c->n_inputs > 3 && c->in[3] ? kiln_tensor_get_i64(c->in[3], i) : i;
        if (ax < 0)
            ax += rank;
        int64_t sp = c->n_inputs > 4 && c->in[4] ? kiln_tensor_get_i64(c->in[4], i) : 1;
        int64_t cnt = slice_axis(x->dims[ax], kiln_tensor_get_i64(c->in[1], i),
                                 kiln_tensor_get_i64(c->in[2], i), sp, &start[ax]);
        step[ax] = cnt > 1 ? sp : 1; /* a huge step taking one element must not overflow */
    }
    int64_t ist[KILN_MAX_RANK], st[1][KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0}, off = 0;
    kiln_strides(x->dims, rank, ist);
    for (int d = 0; d < rank; d++) {
        st[0][d] = ist[d] * step[d];
        off += start[d] * ist[d];
    }
    int64_t total = kiln_tensor_numel(o);
    for (int64_t k = 0; k < total; k++) {
        kiln_copy_elem(o, k, x, off);
        kiln_next_index(idx, o->dims, rank, 1, &off, st);
    }
    return 0;
}

static const kiln_op_def op_slice = {"Slice", 3, 5, 1, 1, NULL, KILN_OP_SHAPE_ONLY, slice_infer,
                                     slice_eval, "strided sub-tensor (starts, ends, axes, steps)",
                                     NULL};

/* ---- Gather ---- */

static const kiln_attr_spec attrs_axis0[] = {{"axis", KILN_ATTR_INT, 0, 0, 0, 0}, {0}};

static int gather_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *ix = c->in[1];
    if (kiln_require_int(c, 1, "indices"))
        return -1;
    const kiln_dtype_info *xi = kiln_dtype_get(x->dtype);
    kiln_dtype odt = xi->is_quant ? KILN_F32 : x->dtype;
    if (x->rank < 0 || ix->rank < 0) {
        c->out[0] = kiln_type_make(odt, -1, NULL);
        return 0;
    }
    if (x->rank == 0)
        return OPERR(c, "data must have rank >= 1");
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    if (xi->is_quant) {
        if (x->rank != 2 || axis != 0)
            return OPERR(c, "block-quantized %s data must be a 2-D table gathered along axis 0",
                         xi->name);
        if (KILN_DIM_IS_STATIC(x->dims[1]) && x->dims[1] % xi->block_elems)
            return OPERR(c, "%s rows of %lld elements are not whole blocks of %d", xi->name,
                         (long long)x->dims[1], xi->block_elems);
    }
    int orank = x->rank - 1 + ix->rank;
    if (orank > KILN_MAX_RANK)
        return OPERR(c, "output rank %d exceeds %d", orank, KILN_MAX_RANK);
    kiln_type o = kiln_type_make(odt, orank, NULL);
    int k = 0;
    for (int d = 0; d < axis; d++)
        o.dims[k++] = x->dims[d];
    for (int d = 0; d < ix->rank; d++)
        o.dims[k++] = ix->dims[d];
    for (int d = axis + 1; d < x->rank; d++)
        o.dims[k++] = x->dims[d];
    c->out[0] = o;
    int64_t iv[SV_MAX];
    int ni = kiln_infer_ivec(c, 1, iv, SV_MAX);
    kiln_dim D = x->dims[axis];
    for (int j = 0; j < ni && KILN_DIM_IS_STATIC(D); j++)
        if (iv[j] < -D || iv[j] >= D)
            return OPERR(c, "index %lld out of range for axis %d of size %lld", (long long)iv[j],
                         axis, (long long)D);
    /* contents of entries picked from a known shape vector */
    kiln_dim v[SV_MAX], r[SV_MAX];
    int nv;
    if (x->rank == 1 && ix->rank <= 1 && ni >= 0 && xi->is_int &&
        (nv = kiln_infer_vec(c, 0, v, SV_MAX)) >= 0) {
        for (int j = 0; j < ni; j++) {
            int64_t q = iv[j] < 0 ? iv[j] + nv : iv[j];
            if (q < 0 || q >= nv)
                return OPERR(c, "index %lld out of range for %d entries", (long long)iv[j], nv);
            r[j] = v[q];
        }
        kiln_infer_set_sym(c, 0, r, ni);
    }
    return 0;
}

static int gather_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *ix = c->in[1];
    kiln_tensor *o = c->out[0];
    int axis;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis))
        return -1;
    int64_t outer = prod64(x->dims, axis), D = x->dims[axis];
    int64_t inner = prod64(x->dims + axis + 1, x->rank - axis - 1), ni = kiln_tensor_numel(ix);
    int quant = kiln_dtype_get(x->dtype)->is_quant;
    size_t rowbytes = quant ? kiln_dtype_storage(x->dtype, inner) : 0;
    for (int64_t j = 0; j < ni; j++) {
        int64_t q = kiln_load_i64(ix->dtype, ix->data, j);
        if (q < -D || q >= D)
            return OPERR(c, "index %lld out of range for axis %d of size %lld", (long long)q,
                         axis, (long long)D);
        if (q < 0)
            q += D;
        if (quant) {
            kiln_dequant_row(x->dtype, (const uint8_t *)x->data + (size_t)q * rowbytes,
                             (float *)o->data + j * inner, inner);
            continue;
        }
        for (int64_t p = 0; p < outer; p++)
            kiln_copy_elems(o, (p * ni + j) * inner, x, (p * D + q) * inner, inner);
    }
    return 0;
}

static const kiln_op_def op_gather = {
    "Gather", 2, 2, 1, 1, attrs_axis0, KILN_OP_SHAPE_ONLY, gather_infer, gather_eval,
    "take entries along an axis (block-quantized 2-D tables give f32 rows)", NULL};

/* ---- GatherElements ---- */

static int gather_elements_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *ix = c->in[1];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "indices"))
        return -1;
    c->out[0] = *ix;
    c->out[0].dtype = x->dtype;
    if (x->rank < 0 || ix->rank < 0)
        return 0;
    if (x->rank != ix->rank)
        return OPERR(c, "indices have rank %d but data has rank %d", ix->rank, x->rank);
    if (x->rank == 0)
        return OPERR(c, "data must have rank >= 1");
    int axis;
    return kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis);
}

static int gather_elements_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *ix = c->in[1];
    kiln_tensor *o = c->out[0];
    int axis, rank = x->rank;
    if (kiln_axis(c->err, kiln_node_int(c->node, "axis"), rank, &axis))
        return -1;
    for (int d = 0; d < rank; d++)
        if (d != axis && ix->dims[d] > x->dims[d])
            return OPERR(c, "indices dim %d is %lld but data's is %lld", d,
                         (long long)ix->dims[d], (long long)x->dims[d]);
    int64_t xst[KILN_MAX_RANK], st[1][KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0}, off = 0;
    kiln_strides(x->dims, rank, xst);
    for (int d = 0; d < rank; d++)
        st[0][d] = d == axis ? 0 : xst[d];
    int64_t n = kiln_tensor_numel(ix), D = x->dims[axis];
    for (int64_t k = 0; k < n; k++) {
        int64_t q = kiln_load_i64(ix->dtype, ix->data, k);
        if (q < -D || q >= D)
            return OPERR(c, "index %lld out of range for axis %d of size %lld", (long long)q,
                         axis, (long long)D);
        if (q < 0)
            q += D;
        kiln_copy_elem(o, k, x, off + q * xst[axis]);
        kiln_next_index(idx, ix->dims, rank, 1, &off, st);
    }
    return 0;
}

static const kiln_op_def op_gather_elements = {
    "GatherElements", 2, 2, 1, 1, attrs_axis0, KILN_OP_SHAPE_ONLY, gather_elements_infer,
    gather_elements_eval, "out[i][j] = data[i][indices[i][j]] along an axis", NULL};

/* ---- GatherND ---- */

static const kiln_attr_spec attrs_gathernd[] = {{"batch_dims", KILN_ATTR_INT, 0, 0, 0, 0}, {0}};

static int gathernd_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *ix = c->in[1];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "indices"))
        return -1;
    int64_t b = kiln_node_int(c->node, "batch_dims");
    if (x->rank < 0 || ix->rank < 0) {
        c->out[0] = kiln_type_make(x->dtype, -1, NULL);
        return 0;
    }
    int r = x->rank, q = ix->rank;
    if (r < 1 || q < 1)
        return OPERR(c, "data and indices must have rank >= 1");
    if (!KILN_DIM_IS_STATIC(ix->dims[q - 1])) {
        c->out[0] = kiln_type_make(x->dtype, -1, NULL);
        return 0;
    }
    if (b < 0 || b >= (r < q ? r : q))
        return OPERR(c, "batch_dims %lld must be below both ranks (%d, %d)", (long long)b, r, q);
    int64_t m = ix->dims[q - 1];
    if (m < 1 || m > r - b)
        return OPERR(c, "index tuples of length %lld for data rank %d with %lld batch dims",
                     (long long)m, r, (long long)b);
    int orank = (int)(q - 1 + r - b - m);
    if (orank > KILN_MAX_RANK)
        return OPERR(c, "output rank %d exceeds %d", orank, KILN_MAX_RANK);
    kiln_type o = kiln_type_make(x->dtype, orank, NULL);
    int k = 0;
    for (int d = 0; d < q - 1; d++) {
        o.dims[k] = ix->dims[d];
        if (d < b && merge_dim(c, ix->dims[d], x->dims[d], &o.dims[k], "batch dims"))
            return -1;
        k++;
    }
    for (int d = (int)(b + m); d < r; d++)
        o.dims[k++] = x->dims[d];
    c->out[0] = o;
    return 0;
}

static int gathernd_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *ix = c->in[1];
    kiln_tensor *o = c->out[0];
    int r = x->rank, q = ix->rank, b = (int)kiln_node_int(c->node, "batch_dims");
    int m = (int)ix->dims[q - 1];
    int64_t xst[KILN_MAX_RANK];
    kiln_strides(x->dims, r, xst);
    int64_t nb = prod64(x->dims, b), per_batch = prod64(x->dims + b, r - b);
    int64_t ni = prod64(ix->dims + b, q - 1 - b), inner = prod64(x->dims + b + m, r - b - m);
    for (int64_t bi = 0; bi < nb; bi++)
        for (int64_t j = 0; j < ni; j++) {
            int64_t t = bi * ni + j, off = bi * per_batch;
            for (int k = 0; k < m; k++) {
                int64_t v = kiln_load_i64(ix->dtype, ix->data, t * m + k), dim = x->dims[b + k];
                if (v < -dim || v >= dim)
                    return OPERR(c, "index %lld out of range for dim %d of size %lld",
                                 (long long)v, b + k, (long long)dim);
                off += (v < 0 ? v + dim : v) * xst[b + k];
            }
            kiln_copy_elems(o, t * inner, x, off, inner);
        }
    return 0;
}

static const kiln_op_def op_gathernd = {
    "GatherND", 2, 2, 1, 1, attrs_gathernd, KILN_OP_SHAPE_ONLY, gathernd_infer, gathernd_eval,
    "gather slices addressed by index tuples (last dim of indices)", NULL};

/* ---- ScatterElements / ScatterND ---- */

enum { RED_NONE, RED_ADD, RED_MUL, RED_MAX, RED_MIN };

static int get_reduction(const kiln_node *n, kiln_err *err)
{
    static const char *const names[] = {"none", "add", "mul", "max", "min"};
    const char *s = kiln_node_string(n, "reduction");
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, names[i]))
            return i;
    return kiln_errf(err, "reduction must be none, add, mul, max or min, got \"%s\"", s);
}

/* out[oi] = reduction(out[oi], upd[ui]); integers stay exact (and wrap). */
static void scatter_one(kiln_tensor *o, int64_t oi, const kiln_tensor *u, int64_t ui, int red)
{
    if (red == RED_NONE) {
        kiln_copy_elem(o, oi, u, ui);
    } else if (kiln_dtype_is_intlike(o->dtype)) {
        uint64_t a = (uint64_t)kiln_load_i64(o->dtype, o->data, oi);
        uint64_t b = (uint64_t)kiln_load_i64(u->dtype, u->data, ui);
        int64_t sa = (int64_t)a, sb = (int64_t)b, r;
        int uns = !kiln_dtype_get(o->dtype)->is_signed && o->dtype != KILN_BOOL;
        switch (red) {
        case RED_ADD: r = (int64_t)(a + b); break;
        case RED_MUL: r = (int64_t)(a * b); break;
        case RED_MAX: r = (uns ? a > b : sa > sb) ? sa : sb; break;
        default: r = (uns ? a < b : sa < sb) ? sa : sb; break;
        }
        kiln_store_i64(o->dtype, o->data, oi, r);
    } else {
        double a = kiln_load_f64(o->dtype, o->data, oi), b = kiln_load_f64(u->dtype, u->data, ui);
        double r;
        switch (red) {
        case RED_ADD: r = a + b; break;
        case RED_MUL: r = a * b; break;
        case RED_MAX: r = isnan(a) || isnan(b) ? NAN : a > b ? a : b; break;
        default: r = isnan(a) || isnan(b) ? NAN : a < b ? a : b; break;
        }
        kiln_store_f64(o->dtype, o->data, oi, r);
    }
}

static const kiln_attr_spec attrs_scatter_el[] = {{"axis", KILN_ATTR_INT, 0, 0, 0, 0},
                                                  {"reduction", KILN_ATTR_STRING, 0, 0, 0, "none"},
                                                  {0}};
static const kiln_attr_spec attrs_scatternd[] = {
    {"reduction", KILN_ATTR_STRING, 0, 0, 0, "none"}, {0}};

static int scatter_common(kiln_infer_ctx *c)
{
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "indices"))
        return -1;
    if (c->in[2]->dtype != c->in[0]->dtype)
        return OPERR(c, "updates are %s but data is %s", kiln_dtype_name(c->in[2]->dtype),
                     kiln_dtype_name(c->in[0]->dtype));
    if (get_reduction(c->node, c->err) < 0)
        return -1;
    c->out[0] = *c->in[0];
    return 0;
}

static int scatter_elements_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *ix = c->in[1], *u = c->in[2];
    if (scatter_common(c))
        return -1;
    if (x->rank < 0 || ix->rank < 0 || u->rank < 0)
        return 0;
    if (ix->rank != x->rank || u->rank != x->rank)
        return OPERR(c, "data, indices and updates must have one rank (got %d, %d, %d)", x->rank,
                     ix->rank, u->rank);
    if (x->rank == 0)
        return OPERR(c, "data must have rank >= 1");
    for (int d = 0; d < x->rank; d++) {
        kiln_dim t;
        if (merge_dim(c, ix->dims[d], u->dims[d], &t, "updates vs indices"))
            return -1;
    }
    int axis;
    return kiln_axis(c->err, kiln_node_int(c->node, "axis"), x->rank, &axis);
}

static int scatter_elements_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *ix = c->in[1], *u = c->in[2];
    kiln_tensor *o = c->out[0];
    int axis, rank = x->rank, red = get_reduction(c->node, c->err);
    if (red < 0 || kiln_axis(c->err, kiln_node_int(c->node, "axis"), rank, &axis))
        return -1;
    for (int d = 0; d < rank; d++)
        if (d != axis && ix->dims[d] > x->dims[d])
            return OPERR(c, "indices dim %d is %lld but data's is %lld", d,
                         (long long)ix->dims[d], (long long)x->dims[d]);
    memcpy(o->data, x->data, o->nbytes);
    int64_t xst[KILN_MAX_RANK], st[1][KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0}, off = 0;
    kiln_strides(x->dims, rank, xst);
    for (int d = 0; d < rank; d++)
        st[0][d] = d == axis ? 0 : xst[d];
    int64_t n = kiln_tensor_numel(ix), D = x->dims[axis];
    for (int64_t k = 0; k < n; k++) {
        int64_t q = kiln_load_i64(ix->dtype, ix->data, k);
        if (q < -D || q >= D)
            return OPERR(c, "index %lld out of range for axis %d of size %lld", (long long)q,
                         axis, (long long)D);
        if (q < 0)
            q += D;
        scatter_one(o, off + q * xst[axis], u, k, red);
        kiln_next_index(idx, ix->dims, rank, 1, &off, st);
    }
    return 0;
}

static const kiln_op_def op_scatter_elements = {
    "ScatterElements", 3, 3, 1, 1, attrs_scatter_el, 0, scatter_elements_infer,
    scatter_elements_eval, "write (or reduce) updates at per-element indices along an axis", NULL};

static int scatternd_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *ix = c->in[1], *u = c->in[2];
    if (scatter_common(c))
        return -1;
    if (x->rank < 0 || ix->rank < 0 || u->rank < 0)
        return 0;
    int r = x->rank, q = ix->rank;
    if (r < 1 || q < 1)
        return OPERR(c, "data and indices must have rank >= 1");
    if (!KILN_DIM_IS_STATIC(ix->dims[q - 1]))
        return 0;
    int64_t m = ix->dims[q - 1];
    if (m > r)
        return OPERR(c, "index tuples of length %lld for data rank %d", (long long)m, r);
    int urank = (int)(q - 1 + r - m);
    if (u->rank != urank)
        return OPERR(c, "updates must have rank %d, got %d", urank, u->rank);
    kiln_dim t;
    for (int d = 0; d < q - 1; d++)
        if (merge_dim(c, ix->dims[d], u->dims[d], &t, "updates vs indices"))
            return -1;
    for (int d = (int)m; d < r; d++)
        if (merge_dim(c, x->dims[d], u->dims[q - 1 + d - m], &t, "updates vs data"))
            return -1;
    return 0;
}

static int scatternd_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *ix = c->in[1], *u = c->in[2];
    kiln_tensor *o = c->out[0];
    int red = get_reduction(c->node, c->err);
    if (red < 0)
        return -1;
    memcpy(o->data, x->data, o->nbytes);
    int r = x->rank, q = ix->rank, m = (int)ix->dims[q - 1];
    int64_t xst[KILN_MAX_RANK];
    kiln_strides(x->dims, r, xst);
    int64_t nt = prod64(ix->dims, q - 1), inner = prod64(x->dims + m, r - m);
    for (int64_t t = 0; t < nt; t++) {
        int64_t off = 0;
        for (int k = 0; k < m; k++) {
            int64_t v = kiln_load_i64(ix->dtype, ix->data, t * m + k), dim = x->dims[k];
            if (v < -dim || v >= dim)
                return OPERR(c, "index %lld out of range for dim %d of size %lld", (long long)v,
                             k, (long long)dim);
            off += (v < 0 ? v + dim : v) * xst[k];
        }
        for (int64_t e = 0; e < inner; e++)
            scatter_one(o, off + e, u, t * inner + e, red);
    }
    return 0;
}

static const kiln_op_def op_scatternd = {
    "ScatterND", 3, 3, 1, 1, attrs_scatternd, 0, scatternd_infer, scatternd_eval,
    "write (or reduce) update slices at index tuples", NULL};

/* ---- Expand ---- */

static int expand_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *s = c->in[1];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "shape"))
        return -1;
    if (s->rank > 1)
        return OPERR(c, "shape must be 1-D, got rank %d", s->rank);
    kiln_dim t[KILN_MAX_RANK];
    int n = kiln_infer_vec(c, 1, t, KILN_MAX_RANK);
    if (n == -2)
        return OPERR(c, "target shape has more than %d dims", KILN_MAX_RANK);
    if (n < 0 || x->rank < 0) {
        /* the rank follows from the lengths; dims the input fixes (not 1) stay */
        if (x->rank >= 0 && s->rank == 1 && KILN_DIM_IS_STATIC(s->dims[0])) {
            if (s->dims[0] > KILN_MAX_RANK)
                return OPERR(c, "target shape has more than %d dims", KILN_MAX_RANK);
            int r = (int)s->dims[0] > x->rank ? (int)s->dims[0] : x->rank;
            kiln_type o = kiln_type_make(x->dtype, r, NULL);
            for (int i = 0; i < r; i++) {
                int k = i - (r - x->rank);
                if (k >= 0 && x->dims[k] != 1)
                    o.dims[i] = x->dims[k];
            }
            c->out[0] = o;
        } else {
            c->out[0] = kiln_type_make(x->dtype, -1, NULL);
        }
        return 0;
    }
    kiln_type st = kiln_type_make(x->dtype, n, NULL);
    for (int i = 0; i < n; i++) {
        int64_t v;
        if (kiln_sv_int(t[i], &v) && v < 0)
            return OPERR(c, "negative dimension %lld in the target shape", (long long)v);
        st.dims[i] = t[i];
    }
    if (kiln_bcast_type(c, x, &st, &c->out[0]))
        return -1;
    c->out[0].dtype = x->dtype;
    return 0;
}

static int expand_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int64_t st[1][KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0}, off = 0;
    kiln_bcast_strides(x, o->rank, o->dims, st[0]);
    int64_t n = kiln_tensor_numel(o);
    for (int64_t k = 0; k < n; k++) {
        kiln_copy_elem(o, k, x, off);
        kiln_next_index(idx, o->dims, o->rank, 1, &off, st);
    }
    return 0;
}

static const kiln_op_def op_expand = {"Expand", 2, 2, 1, 1, NULL, KILN_OP_SHAPE_ONLY,
                                      expand_infer, expand_eval,
                                      "broadcast to a shape (numpy rules, both ways)", NULL};

/* ---- Squeeze / Unsqueeze ---- */

static int squeeze_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0))
        return -1;
    int has_axes = c->n_inputs > 1 && c->in[1];
    if (has_axes && kiln_require_int(c, 1, "axes"))
        return -1;
    kiln_type o = kiln_type_make(x->dtype, -1, NULL);
    int drop[KILN_MAX_RANK] = {0};
    if (x->rank < 0) {
        c->out[0] = o;
        return 0;
    }
    if (has_axes) {
        int64_t ax[KILN_MAX_RANK];
        int n = kiln_infer_ivec(c, 1, ax, KILN_MAX_RANK);
        if (n == -2 || n > x->rank)
            return OPERR(c, "more axes than the rank %d", x->rank);
        if (n < 0) { /* which ones is unknown; the count may be */
            const kiln_type *a = c->in[1];
            if (a->rank == 1 && KILN_DIM_IS_STATIC(a->dims[0]) && a->dims[0] <= x->rank)
                o = kiln_type_make(x->dtype, x->rank - (int)a->dims[0], NULL);
            c->out[0] = o;
            return 0;
        }
        for (int i = 0; i < n; i++) {
            int a;
            if (kiln_axis(c->err, ax[i], x->rank, &a))
                return -1;
            if (drop[a]++)
                return OPERR(c, "axis %d given twice", a);
            if (KILN_DIM_IS_STATIC(x->dims[a]) && x->dims[a] != 1)
                return OPERR(c, "cannot squeeze axis %d of size %lld", a, (long long)x->dims[a]);
        }
    } else {
        /* a dim not known to be static might be 1: the rank is unknown */
        for (int d = 0; d < x->rank; d++) {
            if (!KILN_DIM_IS_STATIC(x->dims[d])) {
                c->out[0] = o;
                return 0;
            }
            drop[d] = x->dims[d] == 1;
        }
    }
    o.rank = 0;
    for (int d = 0; d < x->rank; d++)
        if (!drop[d])
            o.dims[o.rank++] = x->dims[d];
    c->out[0] = o;
    pass_contents(c);
    return 0;
}

static const kiln_op_def op_squeeze = {"Squeeze", 1, 2, 1, 1, NULL, KILN_OP_SHAPE_ONLY,
                                       squeeze_infer, view_eval,
                                       "remove size-1 dims (the given axes, or all)", NULL};

static int unsqueeze_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *a = c->in[1];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "axes"))
        return -1;
    int64_t ax[KILN_MAX_RANK];
    int n = kiln_infer_ivec(c, 1, ax, KILN_MAX_RANK);
    if (n == -2)
        return OPERR(c, "more than %d axes", KILN_MAX_RANK);
    if (n < 0 || x->rank < 0) {
        int r = -1;
        if (x->rank >= 0 && n >= 0)
            r = x->rank + n;
        else if (x->rank >= 0 && a->rank == 1 && KILN_DIM_IS_STATIC(a->dims[0]))
            r = x->rank + (int)a->dims[0];
        if (r > KILN_MAX_RANK)
            return OPERR(c, "output rank %d exceeds %d", r, KILN_MAX_RANK);
        c->out[0] = kiln_type_make(x->dtype, r, NULL);
        return 0;
    }
    int orank = x->rank + n;
    if (orank > KILN_MAX_RANK)
        return OPERR(c, "output rank %d exceeds %d", orank, KILN_MAX_RANK);
    int mark[KILN_MAX_RANK] = {0};
    for (int i = 0; i < n; i++) {
        int q;
        if (kiln_axis(c->err, ax[i], orank, &q))
            return -1;
        if (mark[q]++)
            return OPERR(c, "axis %d given twice", q);
    }
    kiln_type o = kiln_type_make(x->dtype, orank, NULL);
    for (int d = 0, j = 0; d < orank; d++)
        o.dims[d] = mark[d] ? 1 : x->dims[j++];
    c->out[0] = o;
    pass_contents(c);
    return 0;
}

static const kiln_op_def op_unsqueeze = {"Unsqueeze", 2, 2, 1, 1, NULL, KILN_OP_SHAPE_ONLY,
                                         unsqueeze_infer, view_eval,
                                         "insert size-1 dims at the given output axes", NULL};

/* ---- Flatten ---- */

static const kiln_attr_spec attrs_flatten[] = {{"axis", KILN_ATTR_INT, 0, 1, 0, 0}, {0}};

static int flatten_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0))
        return -1;
    kiln_type o = kiln_type_make(x->dtype, 2, NULL);
    if (x->rank >= 0) {
        int64_t axis = kiln_node_int(c->node, "axis");
        int64_t a = axis < 0 ? axis + x->rank : axis;
        if (a < 0 || a > x->rank)
            return OPERR(c, "axis %lld out of range for rank %d", (long long)axis, x->rank);
        o.dims[0] = dims_prod(c->syms, x->dims, (int)a);
        o.dims[1] = dims_prod(c->syms, x->dims + a, x->rank - (int)a);
    }
    c->out[0] = o;
    return 0;
}

static const kiln_op_def op_flatten = {"Flatten", 1, 1, 1, 1, attrs_flatten, KILN_OP_SHAPE_ONLY,
                                       flatten_infer, view_eval,
                                       "2-D view: dims before axis x dims from axis", NULL};

/* ---- Shape / Size ---- */

static const kiln_attr_spec attrs_shape[] = {{"start", KILN_ATTR_INT, 0, 0, 0, 0},
                                             {"end", KILN_ATTR_INT, 0, 0, 0, 0},
                                             {0}};

/* [start, end) of the dims Shape reports, clamped as ONNX says. */
static void shape_range(const kiln_node *n, int rank, int *s, int *e)
{
    int64_t a = kiln_node_int(n, "start");
    int64_t b = kiln_node_has_attr(n, "end") ? kiln_node_int(n, "end") : rank;
    if (a < 0)
        a += rank;
    if (b < 0)
        b += rank;
    a = a < 0 ? 0 : a > rank ? rank : a;
    b = b < 0 ? 0 : b > rank ? rank : b;
    *s = (int)a;
    *e = (int)(b > a ? b : a);
}

static int shape_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    kiln_dim n = KILN_DIM_ANY;
    if (x->rank < 0) {
        c->out[0] = kiln_type_make(KILN_I64, 1, &n);
        return 0;
    }
    int s, e;
    shape_range(c->node, x->rank, &s, &e);
    n = e - s;
    c->out[0] = kiln_type_make(KILN_I64, 1, &n);
    kiln_infer_set_sym(c, 0, x->dims + s, e - s);
    return 0;
}

static int shape_eval(kiln_eval_ctx *c)
{
    int s, e;
    shape_range(c->node, c->in[0]->rank, &s, &e);
    for (int i = s; i < e; i++)
        kiln_store_i64(KILN_I64, c->out[0]->data, i - s, c->in[0]->dims[i]);
    return 0;
}

static const kiln_op_def op_shape = {"Shape", 1, 1, 1, 1, attrs_shape, KILN_OP_SHAPE_ONLY,
                                     shape_infer, shape_eval,
                                     "the input's dims as int64 (optionally a start:end slice)",
                                     NULL};

static int size_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    c->out[0] = kiln_type_make(KILN_I64, 0, NULL);
    kiln_dim n = x->rank < 0 ? KILN_DIM_ANY : dims_prod(c->syms, x->dims, x->rank);
    kiln_infer_set_sym(c, 0, &n, 1);
    return 0;
}

static int size_eval(kiln_eval_ctx *c)
{
    kiln_store_i64(KILN_I64, c->out[0]->data, 0, kiln_tensor_numel(c->in[0]));
    return 0;
}

static const kiln_op_def op_size = {"Size", 1, 1, 1, 1, NULL, KILN_OP_SHAPE_ONLY, size_infer,
                                    size_eval, "number of elements (int64 scalar)", NULL};

/* ---- Tile ---- */

static int tile_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0], *rp = c->in[1];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "repeats"))
        return -1;
    if (rp->rank > 1)
        return OPERR(c, "repeats must be 1-D, got rank %d", rp->rank);
    if (x->rank < 0) {
        c->out[0] = kiln_type_make(x->dtype, -1, NULL);
        return 0;
    }
    if (x->rank == 0)
        return OPERR(c, "cannot tile a scalar");
    kiln_dim t[KILN_MAX_RANK];
    int n = kiln_infer_vec(c, 1, t, KILN_MAX_RANK);
    if (n == -2 || (n >= 0 && n != x->rank))
        return OPERR(c, "repeats must have %d entries (one per dim)", x->rank);
    kiln_type o = kiln_type_make(x->dtype, x->rank, NULL);
    for (int d = 0; d < x->rank && n >= 0; d++) {
        int64_t v;
        if (kiln_sv_int(t[d], &v) && v < 0)
            return OPERR(c, "negative repeat %lld", (long long)v);
        o.dims[d] = kiln_sv_is_dim(t[d]) ? kiln_dim_mul(c->syms, x->dims[d], t[d]) : KILN_DIM_ANY;
    }
    c->out[0] = o;
    return 0;
}

static int tile_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0];
    kiln_tensor *o = c->out[0];
    int rank = x->rank;
    int64_t xst[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0};
    kiln_strides(x->dims, rank, xst);
    int64_t n = kiln_tensor_numel(o);
    for (int64_t k = 0; k < n; k++) {
        int64_t off = 0;
        for (int d = 0; d < rank; d++)
            off += (idx[d] % x->dims[d]) * xst[d];
        kiln_copy_elem(o, k, x, off);
        kiln_next_index(idx, o->dims, rank, 0, NULL, NULL);
    }
    return 0;
}

static const kiln_op_def op_tile = {"Tile", 2, 2, 1, 1, NULL, KILN_OP_SHAPE_ONLY, tile_infer,
                                    tile_eval, "repeat the tensor along each dim", NULL};

/* ---- Pad ---- */

enum { PAD_CONSTANT, PAD_REFLECT, PAD_EDGE, PAD_WRAP };

static const kiln_attr_spec attrs_pad[] = {{"mode", KILN_ATTR_STRING, 0, 0, 0, "constant"}, {0}};

static int pad_mode(const kiln_node *n, kiln_err *err)
{
    static const char *const names[] = {"constant", "reflect", "edge", "wrap"};
    const char *s = kiln_node_string(n, "mode");
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i]))
            return i;
    return kiln_errf(err, "mode must be constant, reflect, edge or wrap, got \"%s\"", s);
}

/* Pads at the start and end of every dim. Returns 0, 1 when unknown (then
 * maybe[d] marks the dims that may be padded) or -1 on invalid input. */
static int pad_amounts(kiln_infer_ctx *c, int rank, int64_t *begin, int64_t *end, int *maybe)
{
    int64_t ax[KILN_MAX_RANK], pads[2 * KILN_MAX_RANK];
    int na = rank;
    for (int d = 0; d < rank; d++) {
        begin[d] = end[d] = 0;
        maybe[d] = 1;
        ax[d] = d;
    }
    if (c->n_inputs > 3 && c->in[3]) {
        na = kiln_infer_ivec(c, 3, ax, KILN_MAX_RANK);
        if (na == -2)
            return OPERR(c, "more axes than the rank %d", rank);
        if (na < 0)
            return 1;
        for (int d = 0; d < rank; d++)
            maybe[d] = 0;
    }
    int seen[KILN_MAX_RANK] = {0};
    for (int i = 0; i < na; i++) {
        int a;
        if (kiln_axis(c->err, ax[i], rank, &a))
            return -1;
        if (seen[a]++)
            return OPERR(c, "axis %d given twice", a);
        ax[i] = a;
        maybe[a] = 1;
    }
    int np = kiln_infer_ivec(c, 1, pads, 2 * KILN_MAX_RANK);
    if (np == -1)
        return 1;
    if (np != 2 * na)
        return OPERR(c, "pads must have %d entries (2 per axis)", 2 * na);
    for (int i = 0; i < na; i++) {
        begin[ax[i]] = pads[i];
        end[ax[i]] = pads[na + i];
    }
    return 0;
}

static int pad_infer(kiln_infer_ctx *c)
{
    const kiln_type *x = c->in[0];
    if (kiln_require_unquant(c, 0) || kiln_require_int(c, 1, "pads"))
        return -1;
    if (c->n_inputs > 3 && c->in[3] && kiln_require_int(c, 3, "axes"))
        return -1;
    if (c->n_inputs > 2 && c->in[2] && c->in[2]->dtype != x->dtype)
        return OPERR(c, "constant_value is %s but data is %s", kiln_dtype_name(c->in[2]->dtype),
                     kiln_dtype_name(x->dtype));
    int mode = pad_mode(c->node, c->err);
    if (mode < 0)
        return -1;
    if (x->rank < 0) {
        c->out[0] = kiln_type_make(x->dtype, -1, NULL);
        return 0;
    }
    int64_t begin[KILN_MAX_RANK], end[KILN_MAX_RANK];
    int maybe[KILN_MAX_RANK];
    int rc = pad_amounts(c, x->rank, begin, end, maybe);
    if (rc < 0)
        return -1;
    kiln_type o = *x;
    for (int d = 0; d < x->rank; d++) {
        if (rc == 1) {
            if (maybe[d])
                o.dims[d] = KILN_DIM_ANY;
            continue;
        }
        int64_t p = begin[d] + end[d];
        kiln_dim dd = x->dims[d];
        if (KILN_DIM_IS_STATIC(dd)) {
            if (dd + p < 0)
                return OPERR(c, "pads %lld, %lld make dim %d (size %lld) negative",
                             (long long)begin[d], (long long)end[d], d, (long long)dd);
            if (dd == 0 && mode != PAD_CONSTANT && (begin[d] > 0 || end[d] > 0))
                return OPERR(c, "cannot pad the empty dim %d in this mode", d);
            o.dims[d] = dd + p;
        } else {
            o.dims[d] = p >= 0 ? kiln_dim_add(c->syms, dd, p) : kiln_dim_sub(c->syms, dd, -p);
        }
    }
    c->out[0] = o;
    return 0;
}

static int pad_eval(kiln_eval_ctx *c)
{
    const kiln_tensor *x = c->in[0], *cv = c->n_inputs > 2 ? c->in[2] : NULL;
    kiln_tensor *o = c->out[0];
    int rank = x->rank, mode = pad_mode(c->node, c->err);
    if (mode < 0)
        return -1;
    int64_t begin[KILN_MAX_RANK] = {0}, xst[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0};
    int64_t np = kiln_tensor_numel(c->in[1]), na = np / 2;
    for (int64_t i = 0; i < na; i++) {
        int64_t a = c->n_inputs > 3 && c->in[3] ? kiln_tensor_get_i64(c->in[3], i) : i;
        begin[a < 0 ? a + rank : a] = kiln_tensor_get_i64(c->in[1], i);
    }
    kiln_strides(x->dims, rank, xst);
    int have_cv = cv && kiln_tensor_numel(cv) > 0;
    int64_t n = kiln_tensor_numel(o);
    for (int64_t k = 0; k < n; k++) {
        int64_t off = 0;
        int inside = 1;
        for (int d = 0; d < rank; d++) {
            int64_t dim = x->dims[d], j = idx[d] - begin[d];
            if (j < 0 || j >= dim) {
                switch (mode) {
                case PAD_EDGE: j = j < 0 ? 0 : dim - 1; break;
                case PAD_WRAP: j = ((j % dim) + dim) % dim; break;
                case PAD_REFLECT:
                    if (dim == 1) {
                        j = 0;
                    } else { /* mirror without repeating the edge: period 2(dim-1) */
                        int64_t per = 2 * (dim - 1);
                        j = ((j % per) + per) % per;
                        if (j >= dim)
                            j = per - j;
                    }
                    break;
                default: inside = 0; break;
                }
            }
            off += j * xst[d];
        }
        if (inside)
            kiln_copy_elem(o, k, x, off);
        else if (have_cv)
            kiln_copy_elem(o, k, cv, 0);
        kiln_next_index(idx, o->dims, rank, 0, NULL, NULL);
    }
    return 0;
}

static const kiln_op_def op_pad = {"Pad", 2, 4, 1, 1, attrs_pad, KILN_OP_SHAPE_ONLY, pad_infer,
                                   pad_eval,
                                   "pad (or crop, when negative) with a constant, mirror, edge or "
                                   "wrap",
                                   NULL};

const kiln_op_def *const kiln_ops_shape[] = {
    &op_reshape, &op_transpose, &op_concat,  &op_split,     &op_slice,
    &op_gather,  &op_gather_elements, &op_gathernd, &op_scatter_elements, &op_scatternd,
    &op_expand,  &op_squeeze,   &op_unsqueeze, &op_flatten, &op_shape,
    &op_size,    &op_tile,      &op_pad,     NULL,
};
