/* onnx_ops.c - converts ONNX nodes to kiln nodes.
 *
 * kiln ops follow the latest ONNX opset, so most nodes map 1:1 by name, with
 * attributes converted by the kiln op's schema. This file turns older opset
 * forms into the latest one (attributes that became inputs, changed
 * defaults, legacy broadcasting and 2-D softmax), handles Constant and
 * ConstantOfShape, and maps the com.microsoft ops kiln implements. Anything
 * else is a one-line "not supported" error naming op, domain, opset, node. */
#include "onnx_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NODE_ATTRS 64

/* A kiln node being assembled from an ONNX node. */
typedef struct pnode {
    onnx_ctx *c;
    const Onnx__NodeProto *n;
    const char *label;
    const char *op; /* kiln op name */
    int in[KILN_MAX_OP_INPUTS];
    int n_in;
    const char *out[KILN_MAX_OP_OUTPUTS]; /* NULL: unnamed optional output */
    int n_out;
    kiln_attr attrs[MAX_NODE_ATTRS];
    int n_attrs;
    unsigned char taken[MAX_NODE_ATTRS]; /* ONNX attributes already converted */
    int lowered; /* replaced by another construct: remaining attributes do not apply */
} pnode;

/* One-line error "file: node ... : msg"; `unsupported` marks a missing
 * feature (as opposed to a malformed model). Returns -1. */
__attribute__((format(printf, 3, 4))) static int perr(pnode *p, int unsupported, const char *fmt,
                                                      ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (unsupported)
        p->c->unsupported = 1;
    return kiln_errf(p->c->err, "%s: %s: %s", p->c->path, p->label, msg);
}

/* ---- ONNX attributes ---- */

static Onnx__AttributeProto__AttributeType atype(const Onnx__AttributeProto *a)
{
    if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED)
        return a->type;
    /* very old models leave the type out; the set field tells */
    if (a->has_f)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
    if (a->has_i)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    if (a->has_s)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
    if (a->t)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
    if (a->g)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
    if (a->n_floats)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS;
    if (a->n_ints)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
    if (a->n_strings)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS;
    if (a->n_graphs)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS;
    if (a->n_tensors)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS;
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED;
}

static const Onnx__AttributeProto *find(const pnode *p, const char *name)
{
    for (size_t i = 0; i < p->n->n_attribute; i++)
        if (p->n->attribute[i]->name && strcmp(p->n->attribute[i]->name, name) == 0)
            return p->n->attribute[i];
    return NULL;
}

/* Finds ONNX attribute `name` and marks it converted. */
static const Onnx__AttributeProto *take(pnode *p, const char *name)
{
    for (size_t i = 0; i < p->n->n_attribute; i++) {
        const Onnx__AttributeProto *a = p->n->attribute[i];
        if (a->name && strcmp(a->name, name) == 0) {
            p->taken[i] = 1;
            return a;
        }
    }
    return NULL;
}

static int is_int(const Onnx__AttributeProto *a)
{
    return atype(a) == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
}

static int attr_float(const Onnx__AttributeProto *a, double *v)
{
    if (atype(a) == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
        *v = a->f;
    else if (is_int(a))
        *v = (double)a->i;
    else
        return -1;
    return 0;
}

/* The string of a STRING attribute (bytes, not NUL-terminated) into buf. */
static const char *attr_str(const Onnx__AttributeProto *a, char *buf, size_t len)
{
    size_t n = a->s.len < len - 1 ? a->s.len : len - 1;
    if (n)
        memcpy(buf, a->s.data, n);
    buf[n] = 0;
    return buf;
}

/* ---- building kiln attributes ---- */

static kiln_attr *new_attr(pnode *p, const char *name, kiln_attr_kind kind)
{
    if (p->n_attrs == MAX_NODE_ATTRS)
        return NULL;
    kiln_attr *a = &p->attrs[p->n_attrs++];
    memset(a, 0, sizeof *a);
    a->name = kiln_xstrdup(name);
    a->kind = kind;
    return a;
}

static void set_int(pnode *p, const char *name, kiln_attr_kind kind, int64_t v)
{
    kiln_attr *a = new_attr(p, name, kind);
    if (a)
        a->i = v;
}

static void set_float(pnode *p, const char *name, double v)
{
    kiln_attr *a = new_attr(p, name, KILN_ATTR_FLOAT);
    if (a)
        a->f = v;
}

static void set_string(pnode *p, const char *name, const char *s)
{
    kiln_attr *a = new_attr(p, name, KILN_ATTR_STRING);
    if (a)
        a->s = kiln_xstrdup(s);
}

static int has_kiln_attr(const pnode *p, const char *name)
{
    for (int i = 0; i < p->n_attrs; i++)
        if (strcmp(p->attrs[i].name, name) == 0)
            return 1;
    return 0;
}

static void pnode_clear(pnode *p)
{
    for (int i = 0; i < p->n_attrs; i++)
        kiln_attr_clear(&p->attrs[i]);
    p->n_attrs = 0;
}

/* ---- values made by the importer ---- */

static const kiln_type *in_type(const pnode *p, int i)
{
    if (i >= p->n_in || p->in[i] < 0)
        return NULL;
    return &p->c->g->values[p->in[i]].type;
}

static void set_input(pnode *p, int slot, int vid)
{
    while (p->n_in <= slot)
        p->in[p->n_in++] = -1;
    p->in[slot] = vid;
}

/* Names for values the importer invents: derived from the node's first
 * output with a "::" that ONNX exporters do not produce. Caller frees. */
static char *fresh(const pnode *p, const char *what)
{
    const char *base = p->n->n_output && p->n->output[0][0] ? p->n->output[0] : "onnx";
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s::%s", base, what);
    return kiln_graph_fresh_name(p->c->g, prefix);
}

static int add_const(pnode *p, const char *what, kiln_dtype dt, int rank, const int64_t *dims,
                     const void *data, size_t nbytes)
{
    kiln_type t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.rank = rank;
    for (int i = 0; i < rank; i++)
        t.dims[i] = dims[i];
    char *name = fresh(p, what);
    int vid = kiln_graph_add_const(p->c->g, name, &t, data, nbytes, p->c->err);
    free(name);
    if (vid < 0)
        kiln_err_prefix(p->c->err, "%s: %s: ", p->c->path, p->label);
    return vid;
}

static int const_i64(pnode *p, const char *what, const int64_t *v, int n)
{
    int64_t d = n;
    return add_const(p, what, KILN_I64, 1, &d, v, sizeof(int64_t) * (size_t)n);
}

/* A rank-0 constant of element type dt holding v. */
static int const_scalar(pnode *p, const char *what, kiln_dtype dt, double v)
{
    uint64_t buf[2] = {0, 0};
    if (kiln_dtype_get(dt)->block_elems != 1)
        return perr(p, 1, "element type %s is not supported here", kiln_dtype_name(dt));
    kiln_store_f64(dt, buf, 0, v);
    return add_const(p, what, dt, 0, NULL, buf, kiln_dtype_storage(dt, 1));
}

/* Moves INTS attribute `name` to input `slot` as an i64 vector. */
static int ints_to_input(pnode *p, const char *name, int slot)
{
    const Onnx__AttributeProto *a = take(p, name);
    if (!a)
        return 0;
    if (atype(a) != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS)
        return perr(p, 0, "attribute '%s' must be a list of ints", name);
    int vid = const_i64(p, name, a->ints, (int)a->n_ints);
    if (vid < 0)
        return -1;
    set_input(p, slot, vid);
    return 0;
}

/* Emits one kiln node with explicit inputs; returns its first output id. */
static int emit_simple(pnode *p, const char *op, const int *ins, int n_in, const kiln_attr *attrs,
                       int n_attrs, const char *out_name)
{
    if (!kiln_op_find(op))
        return perr(p, 1, "needs kiln op %s, which is not in the registry", op);
    char *name = out_name ? NULL : fresh(p, op);
    const char *on = out_name ? out_name : name;
    int rc = kiln_graph_add_node(p->c->g, op, p->n->name, ins, n_in, &on, 1, attrs, n_attrs,
                                 p->c->err);
    free(name);
    if (rc < 0)
        return kiln_err_prefix(p->c->err, "%s: %s: ", p->c->path, p->label);
    return p->c->g->nodes[p->c->g->n_nodes - 1].outputs[0];
}

/* ---- special forms ---- */

static int convert_constant(pnode *p)
{
    onnx_ctx *c = p->c;
    const Onnx__NodeProto *n = p->n;
    if (n->n_output != 1 || !n->output[0][0])
        return perr(p, 0, "Constant needs exactly one named output");
    const char *out = n->output[0];
    if (n->n_attribute != 1)
        return perr(p, 0, "Constant needs exactly one value attribute, got %zu", n->n_attribute);
    const Onnx__AttributeProto *a = n->attribute[0];
    const char *an = a->name ? a->name : "";
    if (strcmp(an, "value") == 0 && a->t) {
        char what[300];
        snprintf(what, sizeof what, "%s: tensor", p->label);
        return onnx_add_tensor_const(c, a->t, out, what);
    }
    kiln_type t;
    memset(&t, 0, sizeof t);
    int rc;
    if (strcmp(an, "value_float") == 0) {
        float f = a->f;
        t.dtype = KILN_F32;
        rc = kiln_graph_add_const(c->g, out, &t, &f, sizeof f, c->err);
    } else if (strcmp(an, "value_int") == 0) {
        t.dtype = KILN_I64;
        rc = kiln_graph_add_const(c->g, out, &t, &a->i, sizeof a->i, c->err);
    } else if (strcmp(an, "value_floats") == 0) {
        t.dtype = KILN_F32;
        t.rank = 1;
        t.dims[0] = (kiln_dim)a->n_floats;
        rc = kiln_graph_add_const(c->g, out, &t, a->floats, sizeof(float) * a->n_floats, c->err);
    } else if (strcmp(an, "value_ints") == 0) {
        t.dtype = KILN_I64;
        t.rank = 1;
        t.dims[0] = (kiln_dim)a->n_ints;
        rc = kiln_graph_add_const(c->g, out, &t, a->ints, sizeof(int64_t) * a->n_ints, c->err);
    } else if (strcmp(an, "value_string") == 0 || strcmp(an, "value_strings") == 0) {
        return perr(p, 1, "string constants are not supported");
    } else if (strcmp(an, "sparse_value") == 0) {
        return perr(p, 1, "sparse constants are not supported");
    } else {
        return perr(p, 0, "unknown Constant attribute '%s'", an);
    }
    if (rc < 0)
        return kiln_err_prefix(c->err, "%s: %s: ", c->path, p->label);
    return 0;
}

/* ConstantOfShape's one-element tensor attribute -> kiln's value + dtype. */
static int convert_constant_of_shape(pnode *p)
{
    const Onnx__AttributeProto *a = take(p, "value");
    kiln_dtype dt = KILN_F32;
    double v = 0;
    if (a) {
        if (!a->t)
            return perr(p, 0, "attribute 'value' must be a tensor");
        kiln_type ty;
        int unsup = 0;
        void *data;
        size_t nb;
        if (a->t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
            return perr(p, 1, "external data in attribute 'value' is not supported");
        if (onnx_tensor_type(a->t, "attribute 'value'", &ty, &unsup, p->c->err) ||
            onnx_tensor_inline_data(a->t, &ty, "attribute 'value'", &data, &nb, p->c->err)) {
            p->c->unsupported |= unsup;
            return kiln_err_prefix(p->c->err, "%s: %s: ", p->c->path, p->label);
        }
        if (kiln_type_numel(&ty) != 1) {
            free(data);
            return perr(p, 0, "attribute 'value' must hold one element");
        }
        dt = ty.dtype;
        v = kiln_dtype_get(dt)->block_elems == 1 ? kiln_load_f64(dt, data, 0) : 0;
        free(data);
    }
    set_float(p, "value", v);
    set_int(p, "dtype", KILN_ATTR_DTYPE, dt);
    return 0;
}

/* Softmax, LogSoftmax, Hardmax before opset 13 work on the input coerced to
 * 2-D at `axis` (default 1): the op runs over all trailing dims at once.
 * Same as the new form when axis is the last dim; otherwise
 * Flatten -> op(axis=1) -> Reshape back. */
static int convert_legacy_softmax(pnode *p)
{
    const Onnx__AttributeProto *a = take(p, "axis");
    int64_t axis = a ? a->i : 1;
    const kiln_type *t = in_type(p, 0);
    if (!t)
        return perr(p, 0, "input 0 is absent");
    if (t->rank < 0)
        return perr(p, 1, "opset < 13 form needs the input's rank, which is unknown");
    if (axis < -t->rank || axis > t->rank || (t->rank > 0 && axis == t->rank))
        return perr(p, 0, "axis %lld out of range for rank %d", (long long)axis, t->rank);
    if (axis < 0)
        axis += t->rank;
    if (t->rank == 0 || axis == t->rank - 1) {
        set_int(p, "axis", KILN_ATTR_INT, -1);
        return 0;
    }
    kiln_attr at;
    memset(&at, 0, sizeof at);
    at.name = "axis";
    at.kind = KILN_ATTR_INT;
    at.i = axis;
    int x = p->in[0];
    int flat = emit_simple(p, "Flatten", &x, 1, &at, 1, NULL);
    if (flat < 0)
        return -1;
    at.i = 1;
    int y = emit_simple(p, p->op, &flat, 1, &at, 1, NULL);
    if (y < 0)
        return -1;
    /* shape back: a constant when static, else the input's Shape */
    int shp;
    if (kiln_type_is_static(t)) {
        int64_t dims[KILN_MAX_RANK];
        for (int i = 0; i < t->rank; i++)
            dims[i] = t->dims[i];
        shp = const_i64(p, "shape", dims, t->rank);
    } else {
        shp = emit_simple(p, "Shape", &x, 1, NULL, 0, NULL);
    }
    if (shp < 0)
        return -1;
    int ins[2] = {y, shp};
    p->op = "Reshape";
    p->lowered = 1;
    p->n_in = 0;
    set_input(p, 0, ins[0]);
    set_input(p, 1, ins[1]);
    return 0;
}

/* Before opset 7, Add/Mul/... broadcast only with broadcast=1, B aligned at
 * `axis` of A; numpy's rule gives the same result when B is aligned right. */
static int convert_legacy_broadcast(pnode *p)
{
    const Onnx__AttributeProto *b = take(p, "broadcast"), *ax = take(p, "axis");
    if (!b || !b->i || !ax)
        return 0;
    const kiln_type *ta = in_type(p, 0), *tb = in_type(p, 1);
    if (!ta || !tb || ta->rank < 0 || tb->rank < 0)
        return perr(p, 1, "legacy broadcast with axis needs known ranks");
    int64_t axis = ax->i < 0 ? ax->i + ta->rank : ax->i;
    if (axis != ta->rank - tb->rank)
        return perr(p, 1, "legacy broadcast at axis %lld (not right-aligned) is not supported",
                    (long long)ax->i);
    return 0;
}

/* Dropout is the identity at inference. Kept as kiln's Dropout only when
 * its mask is used or training_mode may be on. */
static int convert_dropout(pnode *p)
{
    take(p, "ratio");
    take(p, "is_test");
    take(p, "seed");
    int training = 0;
    if (p->c->opset >= 12 && p->n_in > 2 && p->in[2] >= 0) {
        kiln_graph *g = p->c->g;
        kiln_value *v = &g->values[p->in[2]];
        kiln_tensor t;
        if ((v->kind == KILN_VAL_CONST || v->kind == KILN_VAL_WEIGHT) &&
            kiln_graph_value_tensor(g, p->in[2], &t, NULL) == 0 && kiln_tensor_numel(&t) == 1)
            training = kiln_tensor_get(&t, 0) != 0;
        else
            training = 1; /* decided at run time: needs the real op */
    }
    int mask = p->n_out > 1 && p->out[1];
    if (!training && !mask) {
        p->op = "Identity";
        p->lowered = 1;
        p->n_in = 1;
        p->n_out = 1;
        return 0;
    }
    if (!kiln_op_find("Dropout"))
        return perr(p, 1, "%s is not supported (no kiln Dropout op)",
                    training ? "training-mode Dropout" : "Dropout's mask output");
    return 0;
}

/* Upsample (opset 7-9) and Resize-10 resample with output = input * scale,
 * coordinates mapped asymmetrically (x_in = x_out / scale) and nearest
 * rounding down: Resize with those modes, scales moved to input 2. */
static int convert_old_resize(pnode *p)
{
    const Onnx__AttributeProto *sc = take(p, "scales");
    const Onnx__AttributeProto *md = take(p, "mode");
    if (take(p, "height_scale") || take(p, "width_scale"))
        return perr(p, 1, "Upsample-1 (height_scale/width_scale) is not supported");
    int scales;
    if (sc) {
        float *f = kiln_xmalloc(sizeof(float) * (sc->n_floats + 1));
        for (size_t i = 0; i < sc->n_floats; i++)
            f[i] = sc->floats[i];
        int64_t d = (int64_t)sc->n_floats;
        scales = add_const(p, "scales", KILN_F32, 1, &d, f, sizeof(float) * sc->n_floats);
        free(f);
        if (scales < 0)
            return -1;
    } else {
        if (p->n_in < 2 || p->in[1] < 0)
            return perr(p, 0, "scales missing");
        scales = p->in[1];
    }
    char mode[32] = "nearest";
    if (md)
        attr_str(md, mode, sizeof mode);
    if (strcmp(mode, "bilinear") == 0 || strcmp(mode, "trilinear") == 0)
        strcpy(mode, "linear");
    p->op = "Resize";
    p->n_in = 1;
    set_input(p, 2, scales);
    set_string(p, "mode", mode);
    set_string(p, "coordinate_transformation_mode", "asymmetric");
    if (strcmp(mode, "nearest") == 0)
        set_string(p, "nearest_mode", "floor");
    return 0;
}

/* Opset < 11 Pad: pads (opset 1: paddings) and value are attributes. */
static int convert_old_pad(pnode *p)
{
    const Onnx__AttributeProto *pads = take(p, "pads");
    if (!pads)
        pads = take(p, "paddings");
    const Onnx__AttributeProto *val = take(p, "value");
    if (!pads)
        return perr(p, 0, "attribute 'pads' missing");
    int vid = const_i64(p, "pads", pads->ints, (int)pads->n_ints);
    if (vid < 0)
        return -1;
    set_input(p, 1, vid);
    double v = 0;
    if (val && attr_float(val, &v) == 0 && v != 0) {
        const kiln_type *t = in_type(p, 0);
        int cv = const_scalar(p, "value", t ? t->dtype : KILN_F32, v);
        if (cv < 0)
            return -1;
        set_input(p, 2, cv);
    }
    return 0;
}

/* Opset < 11 Clip: min and max are float attributes. */
static int convert_old_clip(pnode *p)
{
    static const char *names[2] = {"min", "max"};
    const kiln_type *t = in_type(p, 0);
    for (int k = 0; k < 2; k++) {
        const Onnx__AttributeProto *a = take(p, names[k]);
        double v;
        if (!a || attr_float(a, &v))
            continue;
        int vid = const_scalar(p, names[k], t ? t->dtype : KILN_F32, v);
        if (vid < 0)
            return -1;
        set_input(p, 1 + k, vid);
    }
    return 0;
}

static int convert_old_topk(pnode *p)
{
    const Onnx__AttributeProto *a = take(p, "k");
    if (!a)
        return perr(p, 0, "attribute 'k' missing");
    int vid = const_i64(p, "k", &a->i, 1);
    if (vid < 0)
        return -1;
    set_input(p, 1, vid);
    return 0;
}

/* Opset < 6 Cast names the target type as a string ("FLOAT"). */
static int convert_old_cast(pnode *p)
{
    const Onnx__AttributeProto *a = take(p, "to");
    if (!a)
        return perr(p, 0, "attribute 'to' missing");
    int code = -1;
    if (is_int(a)) {
        code = (int)a->i;
    } else {
        char s[64], nb[32];
        attr_str(a, s, sizeof s);
        for (int k = 1; k < 64 && code < 0; k++)
            if (strcmp(onnx_dtype_name(k, nb, sizeof nb), s) == 0)
                code = k;
    }
    kiln_dtype dt = kiln_onnx_dtype(code);
    if (dt == KILN_DT_INVALID) {
        char nb[32];
        return perr(p, 1, "Cast to %s is not supported", onnx_dtype_name(code, nb, sizeof nb));
    }
    set_int(p, "to", KILN_ATTR_DTYPE, dt);
    return 0;
}

/* Swish (opset 24) is x * sigmoid(alpha * x): kiln's Silu when alpha is 1,
 * else spelled out. */
static int convert_swish(pnode *p)
{
    const Onnx__AttributeProto *a = take(p, "alpha");
    double alpha = 1;
    if (a && attr_float(a, &alpha))
        return perr(p, 0, "attribute 'alpha' must be a float");
    p->op = "Silu";
    p->lowered = 1;
    if (alpha == 1)
        return 0;
    const kiln_type *t = in_type(p, 0);
    if (!t)
        return perr(p, 0, "input 0 is absent");
    int ca = const_scalar(p, "alpha", t->dtype, alpha);
    if (ca < 0)
        return -1;
    int ins[2] = {p->in[0], ca};
    int ax = emit_simple(p, "Mul", ins, 2, NULL, 0, NULL);
    if (ax < 0)
        return -1;
    int sg = emit_simple(p, "Sigmoid", &ax, 1, NULL, 0, NULL);
    if (sg < 0)
        return -1;
    p->op = "Mul";
    set_input(p, 1, sg);
    return 0;
}

static int is_reduce(const char *op)
{
    return strncmp(op, "Reduce", 6) == 0;
}

/* Older-opset forms -> the latest form. */
static int convert_legacy(pnode *p)
{
    const char *op = p->op;
    int64_t v = p->c->opset;
    static const char *const bcast_ops[] = {"Add",     "Sub",  "Mul", "Div", "Pow", "And",
                                            "Or",      "Xor",  "Equal", "Greater", "Less",
                                            "Gemm",    NULL};
    if (v < 7)
        for (int i = 0; bcast_ops[i]; i++)
            if (strcmp(op, bcast_ops[i]) == 0 && convert_legacy_broadcast(p))
                return -1;
    if ((strcmp(op, "Squeeze") == 0 || strcmp(op, "Unsqueeze") == 0) && v < 13)
        return ints_to_input(p, "axes", 1);
    if (strcmp(op, "Split") == 0) {
        if (v < 13 && ints_to_input(p, "split", 1))
            return -1;
        /* before 18, no split meant equal parts, one per output */
        if (v < 18 && (p->n_in < 2 || p->in[1] < 0) && !take(p, "num_outputs"))
            set_int(p, "num_outputs", KILN_ATTR_INT, (int64_t)p->n->n_output);
        return 0;
    }
    if (is_reduce(op) && (strcmp(op, "ReduceSum") == 0 ? v < 13 : v < 18))
        return ints_to_input(p, "axes", 1);
    if (strcmp(op, "Slice") == 0 && v < 10)
        return ints_to_input(p, "starts", 1) || ints_to_input(p, "ends", 2) ||
               ints_to_input(p, "axes", 3);
    if (strcmp(op, "Reshape") == 0 && v < 5)
        return ints_to_input(p, "shape", 1);
    if (strcmp(op, "Pad") == 0 && v < 11)
        return convert_old_pad(p);
    if (strcmp(op, "Clip") == 0 && v < 11)
        return convert_old_clip(p);
    if (strcmp(op, "TopK") == 0 && v < 10)
        return convert_old_topk(p);
    if (strcmp(op, "Dropout") == 0)
        return convert_dropout(p);
    if (strcmp(op, "Upsample") == 0 || (strcmp(op, "Resize") == 0 && v < 11))
        return convert_old_resize(p);
    if ((strcmp(op, "Softmax") == 0 || strcmp(op, "LogSoftmax") == 0 ||
         strcmp(op, "Hardmax") == 0) && v < 13)
        return convert_legacy_softmax(p);
    if (strcmp(op, "Cast") == 0 && v < 6)
        return convert_old_cast(p);
    if (strcmp(op, "Concat") == 0 && v < 4 && !find(p, "axis"))
        set_int(p, "axis", KILN_ATTR_INT, 1); /* the default before axis became required */
    if (strcmp(op, "BatchNormalization") == 0) {
        take(p, "is_test");
        const Onnx__AttributeProto *sp = take(p, "spatial");
        if (sp && sp->i != 1)
            return perr(p, 1, "spatial=0 (per-element statistics) is not supported");
    }
    if (strcmp(op, "ConstantOfShape") == 0)
        return convert_constant_of_shape(p);
    if (strcmp(op, "Swish") == 0)
        return convert_swish(p);
    return 0;
}

/* ---- generic attribute conversion by the kiln op's schema ---- */

static int convert_attr(pnode *p, const kiln_op_def *op, const Onnx__AttributeProto *a)
{
    const char *name = a->name ? a->name : "";
    Onnx__AttributeProto__AttributeType t = atype(a);
    switch (t) {
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS:
        return perr(p, 1, "subgraph attribute '%s' is not supported", name);
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSOR:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSORS:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTO:
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTOS:
        return perr(p, 1, "tensor/type attribute '%s' is not supported", name);
    default:
        break;
    }
    const kiln_attr_spec *s = kiln_op_attr_spec(op, name);
    if (!s)
        return perr(p, 1, "attribute '%s' is not supported by kiln's %s", name, op->name);
    kiln_attr *k = new_attr(p, name, s->kind);
    if (!k)
        return perr(p, 1, "too many attributes");
    int ok = 1;
    switch (s->kind) {
    case KILN_ATTR_INT:
        ok = is_int(a);
        k->i = a->i;
        break;
    case KILN_ATTR_DTYPE: {
        ok = is_int(a);
        kiln_dtype dt = kiln_onnx_dtype((int)a->i);
        if (ok && dt == KILN_DT_INVALID) {
            char nb[32];
            return perr(p, 1, "attribute '%s': element type %s is not supported", name,
                        onnx_dtype_name((int)a->i, nb, sizeof nb));
        }
        k->i = dt;
        break;
    }
    case KILN_ATTR_FLOAT:
        ok = attr_float(a, &k->f) == 0;
        break;
    case KILN_ATTR_STRING: {
        ok = t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
        k->s = kiln_xmalloc(a->s.len + 1);
        if (a->s.len)
            memcpy(k->s, a->s.data, a->s.len);
        k->s[a->s.len] = 0;
        break;
    }
    case KILN_ATTR_INTS:
        ok = t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS ||
             (t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED);
        k->n = (int)a->n_ints;
        k->ints = kiln_xmalloc(sizeof(int64_t) * (a->n_ints + 1));
        for (size_t i = 0; i < a->n_ints; i++)
            k->ints[i] = a->ints[i];
        break;
    case KILN_ATTR_FLOATS:
        ok = t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS ||
             t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS ||
             t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED;
        k->n = (int)(t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS ? a->n_ints : a->n_floats);
        k->floats = kiln_xmalloc(sizeof(double) * ((size_t)k->n + 1));
        for (int i = 0; i < k->n; i++)
            k->floats[i] = t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS ? (double)a->ints[i]
                                                                           : a->floats[i];
        break;
    case KILN_ATTR_STRINGS:
        ok = t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS ||
             t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED;
        k->n = (int)a->n_strings;
        k->strings = kiln_xcalloc(a->n_strings + 1, sizeof(char *));
        for (size_t i = 0; i < a->n_strings; i++) {
            k->strings[i] = kiln_xmalloc(a->strings[i].len + 1);
            if (a->strings[i].len)
                memcpy(k->strings[i], a->strings[i].data, a->strings[i].len);
            k->strings[i][a->strings[i].len] = 0;
        }
        break;
    }
    if (!ok)
        return perr(p, 0, "attribute '%s' has the wrong type for kiln's %s", name, op->name);
    return 0;
}

/* ---- domains ---- */

/* com.microsoft ops that kiln implements under the same name and signature. */
static const char *const ms_ops[] = {
    "Gelu",      "FusedMatMul", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization", "FastGelu", "BiasGelu", "QuickGelu", NULL,
};

/* Renamed ops: deprecated names whose semantics live on under another. */
static const char *renamed(const char *op, int64_t opset)
{
    if (strcmp(op, "Scatter") == 0 && opset < 11)
        return "ScatterElements";
    return op;
}

int onnx_convert_node(onnx_ctx *c, const Onnx__NodeProto *n, const char *label)
{
    pnode *p = kiln_xcalloc(1, sizeof *p);
    p->c = c;
    p->n = n;
    p->label = label;
    int rc = -1;
    const char *dom = n->domain && n->domain[0] ? n->domain : "ai.onnx";
    const char *op = n->op_type ? n->op_type : "";
    if (!op[0]) {
        perr(p, 0, "node has no op_type");
        goto done;
    }
    if (n->n_attribute > MAX_NODE_ATTRS) {
        perr(p, 1, "more than %d attributes", MAX_NODE_ATTRS);
        goto done;
    }
    if (strcmp(dom, "ai.onnx") == 0) {
        if (c->opset <= 0) {
            perr(p, 0, "the model does not import the default ONNX opset");
            goto done;
        }
        if (c->opset > KILN_ONNX_MAX_OPSET) {
            perr(p, 1, "unsupported opset %lld of domain ai.onnx (kiln supports 1..%d)",
                 (long long)c->opset, KILN_ONNX_MAX_OPSET);
            goto done;
        }
    } else if (strcmp(dom, "com.microsoft") == 0) {
        int known = 0;
        for (int i = 0; ms_ops[i] && !known; i++)
            known = strcmp(ms_ops[i], op) == 0;
        if (!known) {
            perr(p, 1, "unsupported op %s of domain com.microsoft", op);
            goto done;
        }
    } else {
        perr(p, 1, "unsupported op %s: domain %s is not supported", op, dom);
        goto done;
    }
    if (strcmp(op, "Constant") == 0) {
        rc = convert_constant(p);
        goto done;
    }
    p->op = renamed(op, c->opset);

    /* inputs by name; "" is an absent optional input */
    if (n->n_input > KILN_MAX_OP_INPUTS || n->n_output > KILN_MAX_OP_OUTPUTS) {
        perr(p, 1, "too many inputs or outputs");
        goto done;
    }
    for (size_t i = 0; i < n->n_input; i++) {
        const char *nm = n->input[i];
        int vid = -1;
        if (nm[0] && (vid = kiln_graph_find(c->g, nm)) < 0) {
            perr(p, 0, "input '%s' is not defined before this node", nm);
            goto done;
        }
        set_input(p, (int)i, vid);
    }
    while (p->n_in > 0 && p->in[p->n_in - 1] < 0)
        p->n_in--;
    for (size_t i = 0; i < n->n_output; i++)
        p->out[i] = n->output[i][0] ? n->output[i] : NULL;
    p->n_out = (int)n->n_output;
    for (int i = 0; i < p->n_out; i++)
        for (int j = 0; j < i; j++)
            if (p->out[i] && p->out[j] && strcmp(p->out[i], p->out[j]) == 0) {
                perr(p, 0, "output '%s' listed twice", p->out[i]);
                goto done;
            }
    while (p->n_out > 0 && !p->out[p->n_out - 1])
        p->n_out--;
    if (p->n_out == 0) {
        rc = 0; /* no output is used: nothing to compute */
        goto done;
    }

    /* an op kiln lacks fails here, before its attributes are looked at */
    const char *need = p->op;
    if (strcmp(need, "Upsample") == 0 || (strcmp(need, "Resize") == 0 && c->opset < 11))
        need = "Resize";
    if (strcmp(need, "Swish") == 0)
        need = "Silu";
    if (strcmp(need, "Dropout") != 0 && !kiln_op_find(need)) {
        perr(p, 1, "unsupported op %s (not in kiln's op registry)", op);
        goto done;
    }
    if (convert_legacy(p))
        goto done;

    const kiln_op_def *def = kiln_op_find(p->op);
    if (!def) {
        perr(p, 1, "unsupported op %s (needs kiln op %s)", op, p->op);
        goto done;
    }
    /* a node lowered to another construct has no attributes left to map */
    for (size_t i = 0; i < n->n_attribute && !p->lowered; i++) {
        const Onnx__AttributeProto *a = n->attribute[i];
        if (p->taken[i])
            continue;
        if (a->name && strcmp(a->name, "consumed_inputs") == 0)
            continue; /* opset < 6 memory hint, no meaning for inference */
        if (a->name && has_kiln_attr(p, a->name))
            continue;
        if (convert_attr(p, def, a))
            goto done;
    }
    if (p->n_in > def->max_inputs) {
        perr(p, 1, "input %d ('%s') is not supported by kiln's %s", def->max_inputs,
             def->max_inputs < (int)n->n_input ? n->input[def->max_inputs] : "", def->name);
        goto done;
    }
    if (p->n_out > def->max_outputs) {
        perr(p, 1, "output %d ('%s') is not supported by kiln's %s", def->max_outputs,
             p->out[def->max_outputs] ? p->out[def->max_outputs] : "", def->name);
        goto done;
    }
    /* unnamed optional outputs in the middle get importer names */
    char *names[KILN_MAX_OP_OUTPUTS] = {0};
    for (int i = 0; i < p->n_out; i++) {
        char what[32];
        snprintf(what, sizeof what, "unused%d_", i); /* distinct: none is in the graph yet */
        if (!p->out[i])
            p->out[i] = names[i] = fresh(p, what);
    }
    int r = kiln_graph_add_node(c->g, def->name, n->name, p->in, p->n_in, p->out, p->n_out,
                                p->attrs, p->n_attrs, c->err);
    for (int i = 0; i < p->n_out; i++)
        free(names[i]);
    if (r < 0) {
        /* kiln's message starts with its own "Op 'name': "; the label says more */
        char kl[300];
        snprintf(kl, sizeof kl, n->name && n->name[0] ? "%s '%s': " : "%s: ", def->name,
                 n->name ? n->name : "");
        size_t kn = strlen(kl);
        if (strncmp(c->err->msg, kl, kn) == 0)
            memmove(c->err->msg, c->err->msg + kn, strlen(c->err->msg + kn) + 1);
        kiln_err_prefix(c->err, "%s: %s: ", c->path, label);
        goto done;
    }
    rc = 0;
done:
    pnode_clear(p);
    free(p);
    return rc;
}
