/* graph.c - graphs, values, attributes, tensors, node inference. */
#include "op_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- types and tensors ---- */

int64_t kiln_type_numel(const kiln_type *t)
{
    if (t->rank < 0)
        return -1;
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++) {
        if (t->dims[i] < 0)
            return -1;
        n *= t->dims[i];
    }
    return n;
}

int kiln_type_is_static(const kiln_type *t) { return kiln_type_numel(t) >= 0; }

void kiln_type_print(const kiln_symtab *syms, const kiln_type *t, kiln_sb *sb)
{
    kiln_sb_printf(sb, "%s[", kiln_dtype_name(t->dtype));
    if (t->rank < 0)
        kiln_sb_put(sb, "*", 1);
    for (int i = 0; i < t->rank; i++) {
        if (i)
            kiln_sb_put(sb, ", ", 2);
        kiln_dim_print(syms, t->dims[i], sb);
    }
    kiln_sb_put(sb, "]", 1);
}

int64_t kiln_tensor_numel(const kiln_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++)
        n *= t->dims[i];
    return n;
}

void kiln_tensor_alloc(kiln_tensor *t, kiln_dtype dt, int rank, const int64_t *dims)
{
    t->dtype = dt;
    t->rank = rank;
    int64_t n = 1;
    for (int i = 0; i < rank; i++) {
        t->dims[i] = dims[i];
        n *= dims[i];
    }
    t->nbytes = kiln_dtype_storage(dt, n);
    t->data = kiln_xcalloc(1, t->nbytes + 8); /* slack: packed types touch whole bytes */
    t->owned = 1;
}

void kiln_tensor_align(kiln_tensor *t)
{
    if (t->owned || !t->data || ((uintptr_t)t->data % 16) == 0)
        return;
    void *p = kiln_xmalloc(t->nbytes + 16);
    memcpy(p, t->data, t->nbytes);
    t->data = p;
    t->owned = 1;
}

void kiln_tensor_free(kiln_tensor *t)
{
    if (t->owned)
        free(t->data);
    t->data = NULL;
    t->owned = 0;
}

double kiln_tensor_get(const kiln_tensor *t, int64_t i) { return kiln_load_f64(t->dtype, t->data, i); }
int64_t kiln_tensor_get_i64(const kiln_tensor *t, int64_t i) { return kiln_load_i64(t->dtype, t->data, i); }

double *kiln_tensor_to_f64(const kiln_tensor *t)
{
    int64_t n = kiln_tensor_numel(t);
    double *r = kiln_xmalloc(sizeof(double) * (size_t)(n ? n : 1));
    if (kiln_dtype_get(t->dtype)->is_quant) {
        float *f = kiln_tensor_to_f32(t);
        for (int64_t i = 0; i < n; i++)
            r[i] = f[i];
        free(f);
        return r;
    }
    for (int64_t i = 0; i < n; i++)
        r[i] = kiln_load_f64(t->dtype, t->data, i);
    return r;
}

float *kiln_tensor_to_f32(const kiln_tensor *t)
{
    int64_t n = kiln_tensor_numel(t);
    float *r = kiln_xmalloc(sizeof(float) * (size_t)(n ? n : 1));
    if (kiln_dtype_get(t->dtype)->is_quant) {
        kiln_dequant_row(t->dtype, t->data, r, n);
        return r;
    }
    if (t->dtype == KILN_F32) {
        memcpy(r, t->data, sizeof(float) * (size_t)n);
        return r;
    }
    for (int64_t i = 0; i < n; i++)
        r[i] = (float)kiln_load_f64(t->dtype, t->data, i);
    return r;
}

/* ---- attributes ---- */

void kiln_attr_clear(kiln_attr *a)
{
    free(a->name);
    free(a->s);
    free(a->ints);
    free(a->floats);
    for (int i = 0; a->strings && i < a->n; i++)
        free(a->strings[i]);
    free(a->strings);
    memset(a, 0, sizeof *a);
}

static kiln_attr attr_view(const char *name, kiln_attr_kind kind)
{
    kiln_attr a;
    memset(&a, 0, sizeof a);
    a.name = (char *)name;
    a.kind = kind;
    return a;
}

kiln_attr kiln_attr_int(const char *name, int64_t v)
{
    kiln_attr a = attr_view(name, KILN_ATTR_INT);
    a.i = v;
    return a;
}

kiln_attr kiln_attr_float(const char *name, double v)
{
    kiln_attr a = attr_view(name, KILN_ATTR_FLOAT);
    a.f = v;
    return a;
}

kiln_attr kiln_attr_ints(const char *name, int64_t *v, int n)
{
    kiln_attr a = attr_view(name, KILN_ATTR_INTS);
    a.ints = v;
    a.n = n;
    return a;
}

kiln_attr kiln_attr_str(const char *name, const char *s)
{
    kiln_attr a = attr_view(name, KILN_ATTR_STRING);
    a.s = (char *)s;
    return a;
}

kiln_attr kiln_attr_dtype(const char *name, kiln_dtype dt)
{
    kiln_attr a = attr_view(name, KILN_ATTR_DTYPE);
    a.i = dt;
    return a;
}

void kiln_attr_copy(kiln_attr *dst, const kiln_attr *src)
{
    memset(dst, 0, sizeof *dst);
    dst->name = kiln_xstrdup(src->name);
    dst->kind = src->kind;
    dst->i = src->i;
    dst->f = src->f;
    dst->n = src->n;
    if (src->s)
        dst->s = kiln_xstrdup(src->s);
    if (src->kind == KILN_ATTR_INTS) {
        dst->ints = kiln_xmalloc(sizeof(int64_t) * (size_t)(src->n + 1));
        if (src->n)
            memcpy(dst->ints, src->ints, sizeof(int64_t) * (size_t)src->n);
    }
    if (src->kind == KILN_ATTR_FLOATS) {
        dst->floats = kiln_xmalloc(sizeof(double) * (size_t)(src->n + 1));
        if (src->n)
            memcpy(dst->floats, src->floats, sizeof(double) * (size_t)src->n);
    }
    if (src->kind == KILN_ATTR_STRINGS) {
        dst->strings = kiln_xcalloc((size_t)src->n + 1, sizeof(char *));
        for (int i = 0; i < src->n; i++)
            dst->strings[i] = kiln_xstrdup(src->strings[i]);
    }
}

const kiln_attr_spec *kiln_op_attr_spec(const kiln_op_def *op, const char *name)
{
    for (const kiln_attr_spec *s = op->attrs; s && s->name; s++)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

const kiln_attr *kiln_node_attr(const kiln_node *n, const char *name)
{
    for (int i = 0; i < n->n_attrs; i++)
        if (strcmp(n->attrs[i].name, name) == 0)
            return &n->attrs[i];
    return NULL;
}

int kiln_node_has_attr(const kiln_node *n, const char *name) { return kiln_node_attr(n, name) != NULL; }

int64_t kiln_node_int(const kiln_node *n, const char *name)
{
    const kiln_attr *a = kiln_node_attr(n, name);
    if (a)
        return a->kind == KILN_ATTR_FLOAT ? (int64_t)a->f : a->i;
    const kiln_attr_spec *s = kiln_op_attr_spec(n->op, name);
    return s ? s->def_i : 0;
}

double kiln_node_float(const kiln_node *n, const char *name)
{
    const kiln_attr *a = kiln_node_attr(n, name);
    if (a)
        return a->kind == KILN_ATTR_INT ? (double)a->i : a->f;
    const kiln_attr_spec *s = kiln_op_attr_spec(n->op, name);
    return s ? s->def_f : 0;
}

const char *kiln_node_string(const kiln_node *n, const char *name)
{
    const kiln_attr *a = kiln_node_attr(n, name);
    if (a && a->kind == KILN_ATTR_STRING)
        return a->s;
    const kiln_attr_spec *s = kiln_op_attr_spec(n->op, name);
    return s && s->def_s ? s->def_s : "";
}

const int64_t *kiln_node_ints(const kiln_node *n, const char *name, int *count)
{
    const kiln_attr *a = kiln_node_attr(n, name);
    if (a && a->kind == KILN_ATTR_INTS) {
        *count = a->n;
        return a->ints;
    }
    *count = 0;
    return NULL;
}

const double *kiln_node_floats(const kiln_node *n, const char *name, int *count)
{
    const kiln_attr *a = kiln_node_attr(n, name);
    if (a && a->kind == KILN_ATTR_FLOATS) {
        *count = a->n;
        return a->floats;
    }
    *count = 0;
    return NULL;
}

/* ---- graph ---- */

kiln_graph *kiln_graph_new(const char *name)
{
    kiln_graph *g = kiln_xcalloc(1, sizeof *g);
    g->name = kiln_xstrdup(name ? name : "main");
    return g;
}

static void node_clear(kiln_node *n)
{
    free(n->name);
    free(n->inputs);
    free(n->outputs);
    for (int i = 0; i < n->n_attrs; i++)
        kiln_attr_clear(&n->attrs[i]);
    free(n->attrs);
}

void kiln_graph_free(kiln_graph *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n_values; i++) {
        free(g->values[i].name);
        free(g->values[i].data);
        free(g->values[i].symval);
    }
    free(g->values);
    for (int i = 0; i < g->n_nodes; i++)
        node_clear(&g->nodes[i]);
    free(g->nodes);
    free(g->inputs);
    free(g->outputs);
    for (int i = 0; i < g->n_files; i++) {
        if (g->files[i].mapped)
            kiln_unmap_file(&g->files[i].map);
        free(g->files[i].path);
    }
    free(g->files);
    kiln_symtab_free(&g->syms);
    kiln_strmap_free(&g->names);
    free(g->name);
    free(g->base_dir);
    free(g);
}

int kiln_graph_find(const kiln_graph *g, const char *name)
{
    int id;
    return kiln_strmap_get(&g->names, name, &id) ? id : -1;
}

char *kiln_graph_fresh_name(const kiln_graph *g, const char *prefix)
{
    char buf[256];
    for (int i = g->n_values;; i++) {
        snprintf(buf, sizeof buf, "%s%d", prefix, i);
        if (kiln_graph_find(g, buf) < 0 && (!g->reserve || kiln_graph_find(g->reserve, buf) < 0))
            return kiln_xstrdup(buf);
    }
}

/* A fresh name that is also none of the names a node is about to define. */
static char *fresh_output_name(const kiln_graph *g, const char *const *taken, int n)
{
    for (int salt = 0;; salt++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, salt ? "t%d_" : "t", salt);
        char *nm = kiln_graph_fresh_name(g, prefix);
        int clash = 0;
        for (int i = 0; taken && i < n; i++)
            clash |= taken[i] && !strcmp(taken[i], nm);
        if (!clash)
            return nm;
        free(nm);
    }
}

static int new_value(kiln_graph *g, const char *name, const kiln_type *t, kiln_value_kind kind,
                     kiln_err *err)
{
    if (kiln_graph_find(g, name) >= 0)
        return kiln_errf(err, "value %%%s defined twice", name);
    if (g->n_values == g->cap_values) {
        g->cap_values = g->cap_values ? g->cap_values * 2 : 64;
        g->values = kiln_xrealloc(g->values, sizeof *g->values * (size_t)g->cap_values);
    }
    int id = g->n_values++;
    kiln_value *v = &g->values[id];
    memset(v, 0, sizeof *v);
    v->name = kiln_xstrdup(name);
    v->type = *t;
    v->kind = kind;
    v->producer = -1;
    v->file = -1;
    kiln_strmap_put(&g->names, name, id);
    return id;
}

int kiln_graph_add_input(kiln_graph *g, const char *name, const kiln_type *t, kiln_err *err)
{
    int id = new_value(g, name, t, KILN_VAL_INPUT, err);
    if (id < 0)
        return -1;
    g->inputs = kiln_xrealloc(g->inputs, sizeof(int) * (size_t)(g->n_inputs + 1));
    g->inputs[g->n_inputs++] = id;
    return id;
}

int kiln_graph_add_weight(kiln_graph *g, const char *name, const kiln_type *t, int file,
                          uint64_t offset, kiln_err *err)
{
    int64_t n = kiln_type_numel(t);
    if (n < 0)
        return kiln_errf(err, "weight %%%s: shape must be static", name);
    if (file < 0 || file >= g->n_files)
        return kiln_errf(err, "weight %%%s: no such weight file #%d", name, file);
    int id = new_value(g, name, t, KILN_VAL_WEIGHT, err);
    if (id < 0)
        return -1;
    g->values[id].file = file;
    g->values[id].offset = offset;
    g->values[id].nbytes = kiln_dtype_storage(t->dtype, n);
    return id;
}

int kiln_graph_add_const(kiln_graph *g, const char *name, const kiln_type *t, const void *data,
                         size_t nbytes, kiln_err *err)
{
    int64_t n = kiln_type_numel(t);
    if (n < 0)
        return kiln_errf(err, "const %%%s: shape must be static", name);
    if (nbytes != kiln_dtype_storage(t->dtype, n))
        return kiln_errf(err, "const %%%s: %zu bytes of data for %lld elements of %s", name,
                         nbytes, (long long)n, kiln_dtype_name(t->dtype));
    int id = new_value(g, name, t, KILN_VAL_CONST, err);
    if (id < 0)
        return -1;
    kiln_value *v = &g->values[id];
    v->data = kiln_xmalloc(nbytes + 8);
    memset(v->data, 0, nbytes + 8);
    if (nbytes)
        memcpy(v->data, data, nbytes);
    v->nbytes = nbytes;
    return id;
}

int kiln_graph_add_file(kiln_graph *g, const char *path)
{
    for (int i = 0; i < g->n_files; i++)
        if (strcmp(g->files[i].path, path) == 0)
            return i;
    g->files = kiln_xrealloc(g->files, sizeof *g->files * (size_t)(g->n_files + 1));
    kiln_wfile *f = &g->files[g->n_files];
    memset(f, 0, sizeof *f);
    f->path = kiln_xstrdup(path);
    return g->n_files++;
}

void kiln_graph_set_outputs(kiln_graph *g, const int *ids, int n)
{
    free(g->outputs);
    g->outputs = kiln_xmalloc(sizeof(int) * (size_t)(n ? n : 1));
    memcpy(g->outputs, ids, sizeof(int) * (size_t)n);
    g->n_outputs = n;
}

const void *kiln_graph_value_data(kiln_graph *g, int vid, kiln_err *err)
{
    kiln_value *v = &g->values[vid];
    if (v->kind == KILN_VAL_CONST)
        return v->data;
    if (v->kind != KILN_VAL_WEIGHT) {
        kiln_errf(err, "%%%s has no stored data", v->name);
        return NULL;
    }
    kiln_wfile *f = &g->files[v->file];
    if (!f->mapped) {
        char *path = f->path;
        char *joined = NULL;
        if (path[0] != '/' && g->base_dir && g->base_dir[0]) {
            size_t n = strlen(g->base_dir) + strlen(path) + 2;
            joined = kiln_xmalloc(n);
            snprintf(joined, n, "%s/%s", g->base_dir, path);
            path = joined;
        }
        int rc = kiln_map_file(path, &f->map, err);
        free(joined);
        if (rc) {
            kiln_err_prefix(err, "weight %%%s: ", v->name);
            return NULL;
        }
        f->mapped = 1;
    }
    if (v->offset > f->map.size || f->map.size - v->offset < v->nbytes) {
        kiln_errf(err, "weight %%%s: file %s too short (needs %zu bytes at offset %llu, has %zu)",
                  v->name, f->path, v->nbytes, (unsigned long long)v->offset, f->map.size);
        return NULL;
    }
    return f->map.data + v->offset;
}

int kiln_graph_value_tensor(kiln_graph *g, int vid, kiln_tensor *t, kiln_err *err)
{
    kiln_value *v = &g->values[vid];
    memset(t, 0, sizeof *t);
    if (!kiln_type_is_static(&v->type))
        return kiln_errf(err, "%%%s: shape not static", v->name);
    const void *d = kiln_graph_value_data(g, vid, err);
    if (!d)
        return -1;
    t->dtype = v->type.dtype;
    t->rank = v->type.rank;
    for (int i = 0; i < t->rank; i++)
        t->dims[i] = v->type.dims[i];
    t->data = (void *)d;
    t->nbytes = v->nbytes;
    t->owned = 0;
    return 0;
}

int kiln_graph_const_ints(kiln_graph *g, int vid, int64_t *v, int max)
{
    if (vid < 0 || (g->values[vid].kind != KILN_VAL_CONST && g->values[vid].kind != KILN_VAL_WEIGHT))
        return -1;
    kiln_tensor t;
    if (kiln_graph_value_tensor(g, vid, &t, NULL))
        return -1;
    int64_t cnt = kiln_tensor_numel(&t);
    if (cnt > max)
        return -1;
    for (int64_t q = 0; q < cnt; q++)
        v[q] = kiln_tensor_get_i64(&t, q);
    return (int)cnt;
}

char *kiln_graph_live_nodes(const kiln_graph *g)
{
    char *live_v = kiln_xcalloc((size_t)g->n_values + 1, 1);
    char *live_n = kiln_xcalloc((size_t)g->n_nodes + 1, 1);
    for (int i = 0; i < g->n_outputs; i++)
        live_v[g->outputs[i]] = 1;
    for (int ni = g->n_nodes - 1; ni >= 0; ni--) {
        const kiln_node *n = &g->nodes[ni];
        int live = (n->op->flags & KILN_OP_STATEFUL) != 0;
        for (int k = 0; k < n->n_outputs; k++)
            live |= live_v[n->outputs[k]];
        if (!live)
            continue;
        live_n[ni] = 1;
        for (int k = 0; k < n->n_inputs; k++)
            if (n->inputs[k] >= 0)
                live_v[n->inputs[k]] = 1;
    }
    free(live_v);
    return live_n;
}

const char *kiln_node_label(const kiln_graph *g, const kiln_node *n, char *buf, size_t len)
{
    const char *op = n->op ? n->op->name : "?";
    if (n->name && n->name[0])
        snprintf(buf, len, "%s '%s'", op, n->name);
    else if (n->n_outputs > 0 && n->outputs[0] >= 0)
        snprintf(buf, len, "%s %%%s", op, g->values[n->outputs[0]].name);
    else
        snprintf(buf, len, "%s", op);
    return buf;
}

/* ---- inference ---- */

/* Known contents of small integer values: consts and weights up to this many
 * elements are offered to inference as values. */
#define KNOWN_VALUE_LIMIT 4096

int kiln_check_attrs(const kiln_op_def *op, const kiln_attr *attrs, int n, const char *label,
                       kiln_err *err)
{
    for (int i = 0; i < n; i++) {
        const kiln_attr_spec *s = kiln_op_attr_spec(op, attrs[i].name);
        if (!s)
            return kiln_errf(err, "%s: unknown attribute '%s'", label, attrs[i].name);
        if (s->kind != attrs[i].kind) {
            static const char *kn[] = {"int", "float", "string", "ints", "floats", "strings", "dtype"};
            return kiln_errf(err, "%s: attribute '%s' must be %s, got %s", label, attrs[i].name,
                             kn[s->kind], kn[attrs[i].kind]);
        }
        for (int j = 0; j < i; j++)
            if (strcmp(attrs[j].name, attrs[i].name) == 0)
                return kiln_errf(err, "%s: attribute '%s' given twice", label, attrs[i].name);
    }
    for (const kiln_attr_spec *s = op->attrs; s && s->name; s++) {
        if (!s->required)
            continue;
        int found = 0;
        for (int i = 0; i < n; i++)
            found |= strcmp(attrs[i].name, s->name) == 0;
        if (!found)
            return kiln_errf(err, "%s: missing required attribute '%s'", label, s->name);
    }
    return 0;
}

/* Fills c from the node's input values; tensors for known values are
 * returned in vals (views, not owned). */
static int prepare_infer(kiln_graph *g, const kiln_node *n, kiln_infer_ctx *c, kiln_tensor *vals,
                         kiln_err *err)
{
    memset(c, 0, sizeof *c);
    c->node = n;
    c->syms = &g->syms;
    c->n_inputs = n->n_inputs;
    c->n_outputs = n->n_outputs;
    c->err = err;
    for (int i = 0; i < n->n_inputs; i++) {
        int vid = n->inputs[i];
        if (vid < 0)
            continue;
        kiln_value *v = &g->values[vid];
        c->in[i] = &v->type;
        /* small stored values are offered to inference; a weight file that
         * cannot be read just leaves the value unknown (the verifier reports it) */
        if ((v->kind == KILN_VAL_CONST || v->kind == KILN_VAL_WEIGHT) &&
            kiln_type_numel(&v->type) >= 0 && kiln_type_numel(&v->type) <= KNOWN_VALUE_LIMIT &&
            kiln_graph_value_tensor(g, vid, &vals[i], NULL) == 0) {
            kiln_tensor_align(&vals[i]);
            c->in_val[i] = &vals[i];
        }
        if (v->symval) {
            c->in_sym[i] = v->symval;
            c->in_sym_n[i] = v->symval_n;
        }
    }
    for (int i = 0; i < n->n_outputs; i++)
        c->out[i].dtype = KILN_DT_INVALID;
    return 0;
}

static void free_vals(kiln_infer_ctx *c, kiln_tensor *vals)
{
    for (int i = 0; i < c->n_inputs; i++)
        if (c->in_val[i])
            kiln_tensor_free(&vals[i]);
}

static void free_out_sym(kiln_infer_ctx *c)
{
    for (int i = 0; i < KILN_MAX_OP_OUTPUTS; i++) {
        free(c->out_sym[i]);
        c->out_sym[i] = NULL;
    }
}

/* Declared type `d` agrees with inferred `t` (unknowns in t accept anything). */
static int type_agrees(const kiln_type *t, const kiln_type *d)
{
    if (t->dtype != d->dtype)
        return 0;
    if (t->rank < 0)
        return 1;
    if (t->rank != d->rank)
        return 0;
    for (int i = 0; i < t->rank; i++)
        if (t->dims[i] != KILN_DIM_ANY && t->dims[i] != d->dims[i])
            return 0;
    return 1;
}

int kiln_infer_node(kiln_graph *g, int ni, int apply, kiln_err *err)
{
    kiln_node *n = &g->nodes[ni];
    char label[256];
    kiln_node_label(g, n, label, sizeof label);
    kiln_infer_ctx c;
    kiln_tensor vals[KILN_MAX_OP_INPUTS];
    if (prepare_infer(g, n, &c, vals, err))
        return kiln_err_prefix(err, "%s: ", label);
    int irc = n->op->infer(&c);
    free_vals(&c, vals);
    if (irc) {
        free_out_sym(&c);
        return kiln_err_prefix(err, "%s: ", label);
    }
    int rc = 0;
    for (int i = 0; i < n->n_outputs && rc == 0; i++) {
        if (n->outputs[i] < 0)
            continue;
        kiln_value *v = &g->values[n->outputs[i]];
        if (c.out[i].dtype == KILN_DT_INVALID) {
            rc = kiln_errf(err, "%s: inference left output %d untyped", label, i);
            break;
        }
        if (apply) {
            /* keep declared refinements where inference knows less */
            if (v->type.dtype != KILN_DT_INVALID && type_agrees(&c.out[i], &v->type))
                ;
            else
                v->type = c.out[i];
            free(v->symval);
            v->symval = c.out_sym[i];
            v->symval_n = c.out_sym_n[i];
            c.out_sym[i] = NULL;
        } else if (!type_agrees(&c.out[i], &v->type)) {
            kiln_sb a = {0}, b = {0};
            kiln_type_print(&g->syms, &v->type, &a);
            kiln_type_print(&g->syms, &c.out[i], &b);
            rc = kiln_errf(err, "%%%s (%s): declared type %s, but inference gives %s", v->name,
                           label, a.s, b.s);
            kiln_sb_free(&a);
            kiln_sb_free(&b);
        }
    }
    free_out_sym(&c);
    return rc;
}

int kiln_graph_add_node(kiln_graph *g, const char *opname, const char *node_name,
                        const int *inputs, int n_inputs, const char *const *out_names,
                        int n_outputs, const kiln_attr *attrs, int n_attrs, kiln_err *err)
{
    const kiln_op_def *op = kiln_op_find(opname);
    char label[256];
    snprintf(label, sizeof label, node_name && node_name[0] ? "%s '%s'" : "%s%s", opname,
             node_name ? node_name : "");
    if (!op)
        return kiln_errf(err, "%s: unknown op '%s'", label, opname);
    while (n_inputs > 0 && inputs[n_inputs - 1] < 0) /* trailing absent inputs */
        n_inputs--;
    if (n_inputs < op->min_inputs || n_inputs > op->max_inputs)
        return kiln_errf(err, "%s: takes %d..%d inputs, got %d", label, op->min_inputs,
                         op->max_inputs, n_inputs);
    if (n_outputs < op->min_outputs || n_outputs > op->max_outputs)
        return kiln_errf(err, "%s: produces %d..%d outputs, asked for %d", label, op->min_outputs,
                         op->max_outputs, n_outputs);
    for (int i = 0; i < n_inputs; i++) {
        if (inputs[i] >= g->n_values)
            return kiln_errf(err, "%s: input %d refers to no value", label, i);
        if (inputs[i] < 0 && i < op->min_inputs)
            return kiln_errf(err, "%s: required input %d is absent", label, i);
    }
    if (kiln_check_attrs(op, attrs, n_attrs, label, err))
        return -1;
    for (int i = 0; i < n_outputs; i++) {
        if (out_names && out_names[i] && kiln_graph_find(g, out_names[i]) >= 0)
            return kiln_errf(err, "%s: output %%%s already defined", label, out_names[i]);
        for (int j = 0; out_names && out_names[i] && j < i; j++)
            if (out_names[j] && !strcmp(out_names[i], out_names[j]))
                return kiln_errf(err, "%s: output %%%s named twice", label, out_names[i]);
    }

    /* build the node, infer, then commit outputs */
    if (g->n_nodes == g->cap_nodes) {
        g->cap_nodes = g->cap_nodes ? g->cap_nodes * 2 : 64;
        g->nodes = kiln_xrealloc(g->nodes, sizeof *g->nodes * (size_t)g->cap_nodes);
    }
    int ni = g->n_nodes;
    kiln_node *n = &g->nodes[ni];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->kernel = -1;
    n->name = node_name && node_name[0] ? kiln_xstrdup(node_name) : NULL;
    n->n_inputs = n_inputs;
    n->inputs = kiln_xmalloc(sizeof(int) * (size_t)(n_inputs + 1));
    if (n_inputs)
        memcpy(n->inputs, inputs, sizeof(int) * (size_t)n_inputs);
    n->n_attrs = n_attrs;
    n->attrs = kiln_xcalloc((size_t)n_attrs + 1, sizeof *n->attrs);
    for (int i = 0; i < n_attrs; i++)
        kiln_attr_copy(&n->attrs[i], &attrs[i]);
    n->n_outputs = n_outputs;
    n->outputs = kiln_xmalloc(sizeof(int) * (size_t)(n_outputs + 1));
    for (int i = 0; i < n_outputs; i++)
        n->outputs[i] = -1;

    kiln_infer_ctx c;
    kiln_tensor vals[KILN_MAX_OP_INPUTS];
    memset(vals, 0, sizeof vals);
    int prc = prepare_infer(g, n, &c, vals, err);
    int irc = prc ? -1 : op->infer(&c);
    free_vals(&c, vals);
    if (prc || irc) {
        free_out_sym(&c);
        node_clear(n);
        return kiln_err_prefix(err, "%s: ", label);
    }
    for (int i = 0; i < n_outputs; i++)
        if (c.out[i].dtype == KILN_DT_INVALID) {
            free_out_sym(&c);
            node_clear(n);
            return kiln_errf(err, "%s: inference left output %d untyped", label, i);
        }
    g->n_nodes++;
    for (int i = 0; i < n_outputs; i++) {
        char *fresh = NULL;
        const char *nm = out_names && out_names[i] ? out_names[i] : (fresh = fresh_output_name(g, out_names, n_outputs));
        int vid = new_value(g, nm, &c.out[i], KILN_VAL_NODE, err);
        free(fresh);
        n = &g->nodes[ni];
        n->outputs[i] = vid;
        g->values[vid].producer = ni;
        g->values[vid].producer_out = i;
        g->values[vid].symval = c.out_sym[i];
        g->values[vid].symval_n = c.out_sym_n[i];
        c.out_sym[i] = NULL;
    }
    free_out_sym(&c);
    return ni;
}
