/* onnx_import.c - ONNX ModelProto -> kiln graph: opsets, initializers
 * (referenced in place), graph inputs with symbolic dims, nodes (converted
 * in onnx_ops.c), outputs and value_info. */
#include "onnx_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The decoded metadata of one model; the weights stay in the file. */
typedef struct onnx_model {
    onnx_split split;
    Onnx__ModelProto *model;
    Onnx__GraphProto *graph;
} onnx_model;

static void model_free(onnx_model *m)
{
    if (m->graph)
        onnx__graph_proto__free_unpacked(m->graph, NULL);
    if (m->model)
        onnx__model_proto__free_unpacked(m->model, NULL);
    onnx_split_free(&m->split);
    memset(m, 0, sizeof *m);
}

/* Maps the file only while splitting it: afterwards every payload is known
 * by offset and the graph maps the file again, lazily, for weights. */
static int model_load(const char *path, onnx_model *m, kiln_err *err)
{
    memset(m, 0, sizeof *m);
    kiln_map map;
    if (kiln_map_file(path, &map, err))
        return -1;
    int rc = onnx_split_model(map.data, map.size, &m->split, err);
    kiln_unmap_file(&map);
    if (rc)
        return kiln_err_prefix(err, "%s: ", path);
    m->model = onnx__model_proto__unpack(NULL, m->split.model_len, m->split.model);
    if (!m->model) {
        model_free(m);
        return kiln_errf(err, "%s: malformed ModelProto (truncated or not an ONNX model)", path);
    }
    if (!m->split.has_graph) {
        model_free(m);
        return kiln_errf(err, "%s: not an ONNX model (no graph)", path);
    }
    m->graph = onnx__graph_proto__unpack(NULL, m->split.graph_len, m->split.graph);
    if (!m->graph) {
        model_free(m);
        return kiln_errf(err, "%s: malformed GraphProto (truncated or corrupted)", path);
    }
    return 0;
}

/* ---- symbolic dims ---- */

static int sym_var_exists(const kiln_graph *g, const char *name)
{
    for (int i = 0; i < g->syms.n; i++)
        if (g->syms.syms[i].kind == KILN_SYM_VAR && strcmp(g->syms.syms[i].name, name) == 0)
            return 1;
    return 0;
}

/* name reduced to [A-Za-z_][A-Za-z0-9_]*; caller frees */
static char *sanitize(const char *name)
{
    size_t n = strlen(name);
    char *s = kiln_xmalloc(n + 2), *o = s;
    if (!n || (name[0] >= '0' && name[0] <= '9'))
        *o++ = '_';
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '_';
        *o++ = ok ? ch : '_';
    }
    *o = 0;
    return s;
}

/* A new variable named after base (suffixed until unused). */
static kiln_dim fresh_var(kiln_graph *g, const char *base)
{
    char *s = sanitize(base);
    size_t cap = strlen(s) + 24;
    char *name = kiln_xmalloc(cap);
    snprintf(name, cap, "%s", s);
    for (int k = 2; sym_var_exists(g, name); k++)
        snprintf(name, cap, "%s_%d", s, k);
    kiln_dim d = kiln_dim_var(&g->syms, name);
    free(name);
    free(s);
    return d;
}

/* dim_param strings map to one variable each; distinct strings that
 * sanitize alike ("a-b", "a.b") still get distinct variables. */
static kiln_dim param_dim(kiln_graph *g, kiln_strmap *params, const char *param)
{
    int id;
    if (kiln_strmap_get(params, param, &id))
        return KILN_DIM_FROM_SYM(id);
    /* "past_sequence_length + sequence_length" (optimum's exports): a sum of
     * names and integers is that expression, so it equals the dims the graph
     * computes from the named inputs */
    if (strchr(param, '+')) {
        kiln_dim sum = 0;
        const char *p = param;
        for (;;) {
            const char *e = strchr(p, '+');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            while (n && (*p == ' ')) { p++; n--; }
            while (n && p[n - 1] == ' ') n--;
            if (!n)
                goto opaque;
            char term[256];
            if (n >= sizeof term)
                goto opaque;
            memcpy(term, p, n);
            term[n] = 0;
            kiln_dim d;
            if (term[0] >= '0' && term[0] <= '9') {
                char *end;
                long long v = strtoll(term, &end, 10);
                if (*end)
                    goto opaque;
                d = v;
            } else {
                d = param_dim(g, params, term);
            }
            sum = kiln_dim_add(&g->syms, sum, d);
            if (!e)
                break;
            p = e + 1;
        }
        return sum;
    }
opaque:;
    kiln_dim d = fresh_var(g, param);
    kiln_strmap_put(params, param, KILN_DIM_SYM_ID(d));
    return d;
}

/* ---- weights and constants ---- */

static int unsup(onnx_ctx *c)
{
    c->unsupported = 1;
    return -1;
}

/* External data: "location" relative to the model's directory, never above
 * it; the file must hold offset + nbytes. */
static int add_external(onnx_ctx *c, const Onnx__TensorProto *t, const char *name,
                        const kiln_type *ty)
{
    const char *loc = NULL;
    int64_t off = 0, length = -1;
    for (size_t i = 0; i < t->n_external_data; i++) {
        const char *k = t->external_data[i]->key, *v = t->external_data[i]->value;
        if (!k || !v)
            continue;
        char *end;
        if (strcmp(k, "location") == 0) {
            loc = v;
        } else if (strcmp(k, "offset") == 0 || strcmp(k, "length") == 0) {
            errno = 0;
            long long x = strtoll(v, &end, 10);
            if (errno || *end || x < 0)
                return kiln_errf(c->err, "%s: initializer '%s': bad external data %s '%s'",
                                 c->path, name, k, v);
            *(k[0] == 'o' ? &off : &length) = x;
        }
    }
    if (!loc || !loc[0])
        return kiln_errf(c->err, "%s: initializer '%s': external data without a location",
                         c->path, name);
    if (loc[0] == '/' || strcmp(loc, "..") == 0 || strncmp(loc, "../", 3) == 0 ||
        strstr(loc, "/../") || (strlen(loc) >= 3 && strcmp(loc + strlen(loc) - 3, "/..") == 0))
        return kiln_errf(c->err,
                         "%s: initializer '%s': external data location '%s' is outside the "
                         "model's directory",
                         c->path, name, loc);
    size_t nb = kiln_dtype_storage(ty->dtype, kiln_type_numel(ty));
    if (length >= 0 && (uint64_t)length != nb)
        return kiln_errf(c->err, "%s: initializer '%s': external data length %lld, %s tensor needs %zu",
                         c->path, name, (long long)length, kiln_dtype_name(ty->dtype), nb);
    size_t pl = strlen(c->dir) + strlen(loc) + 2;
    char *full = kiln_xmalloc(pl);
    snprintf(full, pl, "%s/%s", c->dir, loc);
    struct stat st;
    int rc = 0;
    if (stat(full, &st) != 0)
        rc = kiln_errf(c->err, "%s: initializer '%s': external data file %s: %s", c->path, name,
                       full, strerror(errno));
    else if ((uint64_t)st.st_size < (uint64_t)off || (uint64_t)st.st_size - (uint64_t)off < nb)
        rc = kiln_errf(c->err,
                       "%s: initializer '%s': external data file %s too short (needs %zu bytes "
                       "at offset %lld, has %lld)",
                       c->path, name, full, nb, (long long)off, (long long)st.st_size);
    if (rc == 0) {
        int f = kiln_graph_add_file(c->g, full);
        if (kiln_graph_add_weight(c->g, name, ty, f, (uint64_t)off, c->err) < 0)
            rc = kiln_err_prefix(c->err, "%s: ", c->path);
    }
    free(full);
    return rc;
}

int onnx_add_tensor_const(onnx_ctx *c, const Onnx__TensorProto *t, const char *name,
                          const char *what)
{
    kiln_type ty;
    if (onnx_tensor_type(t, what, &ty, &c->unsupported, c->err))
        return kiln_err_prefix(c->err, "%s: ", c->path);
    if (t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
        return add_external(c, t, name, &ty);
    void *data;
    size_t nb;
    if (onnx_tensor_inline_data(t, &ty, what, &data, &nb, c->err))
        return kiln_err_prefix(c->err, "%s: ", c->path);
    int rc = kiln_graph_add_const(c->g, name, &ty, data, nb, c->err) < 0 ? -1 : 0;
    free(data);
    if (rc)
        kiln_err_prefix(c->err, "%s: ", c->path);
    return rc;
}

/* An initializer: raw bytes become a weight pointing into the .onnx file,
 * external data a weight in its file, typed fields an inline const. */
static int add_initializer(onnx_ctx *c, const onnx_init_ref *r, int index)
{
    Onnx__TensorProto *t = onnx__tensor_proto__unpack(NULL, r->meta_len, r->meta);
    if (!t)
        return kiln_errf(c->err, "%s: initializer #%d: malformed TensorProto", c->path, index);
    int rc = -1;
    char what[300];
    if (!t->name || !t->name[0]) {
        kiln_errf(c->err, "%s: initializer #%d has no name", c->path, index);
        goto done;
    }
    snprintf(what, sizeof what, "initializer '%s'", t->name);
    if (kiln_graph_find(c->g, t->name) >= 0) {
        kiln_errf(c->err, "%s: %s defined twice", c->path, what);
        goto done;
    }
    if (r->has_raw && t->data_location != ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        kiln_type ty;
        if (onnx_tensor_type(t, what, &ty, &c->unsupported, c->err)) {
            kiln_err_prefix(c->err, "%s: ", c->path);
            goto done;
        }
        size_t nb = kiln_dtype_storage(ty.dtype, kiln_type_numel(&ty));
        if (r->raw_len != nb) {
            kiln_errf(c->err, "%s: %s: raw_data has %llu bytes, %s[%lld] needs %zu", c->path, what,
                      (unsigned long long)r->raw_len, kiln_dtype_name(ty.dtype),
                      (long long)kiln_type_numel(&ty), nb);
            goto done;
        }
        if (c->model_file < 0)
            c->model_file = kiln_graph_add_file(c->g, c->path);
        if (kiln_graph_add_weight(c->g, t->name, &ty, c->model_file, r->raw_off, c->err) < 0) {
            kiln_err_prefix(c->err, "%s: ", c->path);
            goto done;
        }
        rc = 0;
    } else {
        rc = onnx_add_tensor_const(c, t, t->name, what);
    }
done:
    onnx__tensor_proto__free_unpacked(t, NULL);
    return rc;
}

/* ---- types of graph inputs / declared values ---- */

static int input_type(onnx_ctx *c, const Onnx__ValueInfoProto *vi, kiln_strmap *params,
                      kiln_type *ty)
{
    const Onnx__TypeProto *tp = vi->type;
    if (!tp)
        return kiln_errf(c->err, "%s: graph input '%s' has no type", c->path, vi->name);
    if (tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE) {
        const char *kind = "non-tensor";
        switch (tp->value_case) {
        case ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE: kind = "sequence"; break;
        case ONNX__TYPE_PROTO__VALUE_MAP_TYPE: kind = "map"; break;
        case ONNX__TYPE_PROTO__VALUE_OPTIONAL_TYPE: kind = "optional"; break;
        case ONNX__TYPE_PROTO__VALUE_SPARSE_TENSOR_TYPE: kind = "sparse tensor"; break;
        default: break;
        }
        kiln_errf(c->err, "%s: graph input '%s': %s types are not supported", c->path, vi->name,
                  kind);
        return unsup(c);
    }
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    char nb[32];
    memset(ty, 0, sizeof *ty);
    ty->dtype = kiln_onnx_dtype(tt->elem_type);
    if (ty->dtype == KILN_DT_INVALID) {
        kiln_errf(c->err, "%s: graph input '%s': element type %s is not supported", c->path,
                  vi->name, onnx_dtype_name(tt->elem_type, nb, sizeof nb));
        return unsup(c);
    }
    if (!tt->shape) {
        ty->rank = -1;
        return 0;
    }
    if (tt->shape->n_dim > KILN_MAX_RANK) {
        kiln_errf(c->err, "%s: graph input '%s': rank %zu exceeds kiln's maximum %d", c->path,
                  vi->name, tt->shape->n_dim, KILN_MAX_RANK);
        return unsup(c);
    }
    ty->rank = (int)tt->shape->n_dim;
    for (int i = 0; i < ty->rank; i++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (d->dim_value < 0)
                return kiln_errf(c->err, "%s: graph input '%s': dimension %d is negative", c->path,
                                 vi->name, i);
            ty->dims[i] = d->dim_value;
        } else if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM &&
                   d->dim_param && d->dim_param[0]) {
            ty->dims[i] = param_dim(c->g, params, d->dim_param);
        } else { /* unnamed: a variable of its own */
            char base[300];
            snprintf(base, sizeof base, "%s_dim%d", vi->name, i);
            ty->dims[i] = fresh_var(c->g, base);
        }
    }
    return 0;
}

/* Fills unknown parts of an inferred type from a declared one (value_info,
 * graph outputs): static dims, and dim_params naming existing variables.
 * Disagreements are left to inference, which the verifier trusts. */
static void refine_type(kiln_value *v, const Onnx__TypeProto *tp, const kiln_strmap *params)
{
    if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type->shape)
        return;
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    if (kiln_onnx_dtype(tt->elem_type) != v->type.dtype || tt->shape->n_dim > KILN_MAX_RANK)
        return;
    int rank = (int)tt->shape->n_dim;
    if (v->type.rank >= 0 && v->type.rank != rank)
        return;
    kiln_type t = v->type;
    if (t.rank < 0) {
        t.rank = rank;
        for (int i = 0; i < rank; i++)
            t.dims[i] = KILN_DIM_ANY;
    }
    for (int i = 0; i < rank; i++) {
        if (t.dims[i] != KILN_DIM_ANY)
            continue;
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        int id;
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
            d->dim_value >= 0)
            t.dims[i] = d->dim_value;
        else if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM &&
                 d->dim_param && kiln_strmap_get(params, d->dim_param, &id))
            t.dims[i] = KILN_DIM_FROM_SYM(id);
    }
    v->type = t;
}

/* ---- the model ---- */

static void setup_opsets(onnx_ctx *c, const Onnx__ModelProto *m)
{
    for (size_t i = 0; i < m->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = m->opset_import[i];
        const char *d = o->domain ? o->domain : "";
        if (!d[0] || strcmp(d, "ai.onnx") == 0)
            c->opset = o->version;
        else if (strcmp(d, "com.microsoft") == 0)
            c->ms_opset = o->version;
    }
    /* before IR version 3 models had no opset_import and meant opset 1 */
    if (!m->n_opset_import && m->has_ir_version && m->ir_version < 3)
        c->opset = 1;
}

static const char *node_domain(const Onnx__NodeProto *n)
{
    return n->domain && n->domain[0] ? n->domain : "ai.onnx";
}

/* "node 'name' (Op, domain ai.onnx, opset 13)" for messages. */
static void node_label(const onnx_ctx *c, const Onnx__ModelProto *m, const Onnx__NodeProto *n,
                       int index, char *buf, size_t len)
{
    const char *dom = node_domain(n);
    int64_t ver = strcmp(dom, "ai.onnx") == 0 ? c->opset : 0;
    for (size_t i = 0; i < m->n_opset_import && !ver; i++)
        if (m->opset_import[i]->domain && strcmp(m->opset_import[i]->domain, dom) == 0)
            ver = m->opset_import[i]->version;
    char who[200];
    if (n->name && n->name[0])
        snprintf(who, sizeof who, "node '%s'", n->name);
    else if (n->n_output && n->output[0][0])
        snprintf(who, sizeof who, "node #%d (output '%s')", index, n->output[0]);
    else
        snprintf(who, sizeof who, "node #%d", index);
    if (ver)
        snprintf(buf, len, "%s (%s, domain %s, opset %lld)", who, n->op_type ? n->op_type : "?",
                 dom, (long long)ver);
    else
        snprintf(buf, len, "%s (%s, domain %s)", who, n->op_type ? n->op_type : "?", dom);
}

kiln_graph *kiln_import_onnx(const char *path, kiln_onnx_status *status, kiln_err *err)
{
    if (status)
        status->unsupported = 0;
    onnx_model m;
    if (model_load(path, &m, err))
        return NULL;
    const Onnx__GraphProto *gp = m.graph;
    onnx_ctx c;
    memset(&c, 0, sizeof c);
    c.path = path;
    c.err = err;
    c.model_file = -1;
    const char *slash = strrchr(path, '/');
    c.dir = slash ? kiln_xstrdup(path) : kiln_xstrdup(".");
    if (slash)
        c.dir[slash - path] = 0;
    if (slash == path)
        strcpy(c.dir, "/");
    c.g = kiln_graph_new(gp->name && gp->name[0] ? gp->name : "main");
    kiln_strmap params = {0}, declared = {0};
    int rc = -1;
    setup_opsets(&c, m.model);

    if (gp->n_sparse_initializer) {
        kiln_errf(err, "%s: sparse initializers are not supported", path);
        unsup(&c);
        goto done;
    }
    for (int i = 0; i < m.split.n_inits; i++)
        if (add_initializer(&c, &m.split.inits[i], i))
            goto done;

    /* graph inputs that are not initializers (old models list both) */
    for (size_t i = 0; i < gp->n_input; i++) {
        const Onnx__ValueInfoProto *vi = gp->input[i];
        if (!vi->name || !vi->name[0]) {
            kiln_errf(err, "%s: graph input #%zu has no name", path, i);
            goto done;
        }
        int vid = kiln_graph_find(c.g, vi->name);
        if (vid >= 0 && c.g->values[vid].kind != KILN_VAL_INPUT)
            continue;
        if (vid >= 0) {
            kiln_errf(err, "%s: graph input '%s' listed twice", path, vi->name);
            goto done;
        }
        kiln_type ty;
        if (input_type(&c, vi, &params, &ty))
            goto done;
        int id = kiln_graph_add_input(c.g, vi->name, &ty, err);
        if (id < 0) {
            kiln_err_prefix(err, "%s: ", path);
            goto done;
        }
    }

    /* declared types of intermediate values and outputs, by name */
    for (size_t i = 0; i < gp->n_value_info; i++)
        if (gp->value_info[i]->name)
            kiln_strmap_put(&declared, gp->value_info[i]->name, (int)i);
    for (size_t i = 0; i < gp->n_output; i++)
        if (gp->output[i]->name)
            kiln_strmap_put(&declared, gp->output[i]->name, -1 - (int)i);

    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *n = gp->node[i];
        char label[512];
        node_label(&c, m.model, n, (int)i, label, sizeof label);
        for (size_t f = 0; f < m.model->n_functions; f++) {
            const Onnx__FunctionProto *fn = m.model->functions[f];
            if (fn->name && n->op_type && strcmp(fn->name, n->op_type) == 0 &&
                strcmp(fn->domain ? fn->domain : "", n->domain ? n->domain : "") == 0) {
                kiln_errf(err, "%s: %s: model-local functions are not supported", path, label);
                unsup(&c);
                goto done;
            }
        }
        int before = c.g->n_values;
        if (onnx_convert_node(&c, n, label))
            goto done;
        /* refine the new values now, so later nodes infer from the better types */
        for (int v = before; v < c.g->n_values; v++) {
            int k;
            if (!kiln_strmap_get(&declared, c.g->values[v].name, &k))
                continue;
            const Onnx__ValueInfoProto *vi = k >= 0 ? gp->value_info[k] : gp->output[-1 - k];
            if (c.g->values[v].kind == KILN_VAL_NODE)
                refine_type(&c.g->values[v], vi->type, &params);
        }
    }

    int *outs = kiln_xmalloc(sizeof(int) * (gp->n_output + 1));
    for (size_t i = 0; i < gp->n_output; i++) {
        const char *name = gp->output[i]->name ? gp->output[i]->name : "";
        outs[i] = kiln_graph_find(c.g, name);
        if (outs[i] < 0) {
            kiln_errf(err, "%s: graph output '%s' is not produced by any node", path, name);
            free(outs);
            goto done;
        }
    }
    kiln_graph_set_outputs(c.g, outs, (int)gp->n_output);
    free(outs);
    if (!gp->n_output) {
        kiln_errf(err, "%s: graph has no outputs", path);
        goto done;
    }
    rc = 0;
done:
    if (rc && status)
        status->unsupported = c.unsupported;
    if (rc && err) /* names from the file may hold control characters; keep one line */
        for (char *q = err->msg; *q; q++)
            if ((unsigned char)*q < 0x20)
                *q = '?';
    if (rc) {
        kiln_graph_free(c.g);
        c.g = NULL;
    }
    kiln_strmap_free(&params);
    kiln_strmap_free(&declared);
    free(c.dir);
    model_free(&m);
    return c.g;
}

/* ---- op listing (conformance reports) ---- */

int kiln_onnx_model_ops(const char *path, char ***ops, int *n, kiln_err *err)
{
    *ops = NULL;
    *n = 0;
    onnx_model m;
    if (model_load(path, &m, err))
        return -1;
    const Onnx__GraphProto *gp = m.graph;
    char **list = kiln_xcalloc(gp->n_node + 1, sizeof *list);
    int cnt = 0;
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *nd = gp->node[i];
        const char *op = nd->op_type ? nd->op_type : "?";
        const char *dom = nd->domain ? nd->domain : "";
        size_t len = strlen(op) + strlen(dom) + 2;
        char *s = kiln_xmalloc(len);
        if (dom[0] && strcmp(dom, "ai.onnx") != 0)
            snprintf(s, len, "%s.%s", dom, op);
        else
            snprintf(s, len, "%s", op);
        int dup = 0;
        for (int k = 0; k < cnt && !dup; k++)
            dup = strcmp(list[k], s) == 0;
        if (dup)
            free(s);
        else
            list[cnt++] = s;
    }
    model_free(&m);
    *ops = list;
    *n = cnt;
    return 0;
}

void kiln_onnx_free_strings(char **s, int n)
{
    for (int i = 0; i < n; i++)
        free(s[i]);
    free(s);
}
