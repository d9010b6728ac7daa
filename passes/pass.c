/* pass.c - the pass registry, the pipeline runner (with --verify-each), and
 * the rewriter every pass builds its output graph with. */
#include "kiln_passes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kiln_pass_canonicalize(kiln_graph **g, const kiln_pass_opts *o, kiln_err *err);
int kiln_pass_fuse(kiln_graph **g, const kiln_pass_opts *o, kiln_err *err);
int kiln_pass_fuse_elementwise(kiln_graph **g, const kiln_pass_opts *o, kiln_err *err);

static const kiln_pass passes[] = {
    {"canonicalize", kiln_pass_canonicalize,
     "constant folding, dead code and common subexpression elimination, shape chains to reshapes, "
     "transposes folded into matmuls"},
    {"fuse", kiln_pass_fuse, "decomposed norms, GELU/SiLU, softmax, RoPE and attention to single ops; merge projections sharing an input"},
    {"fuse_elementwise", kiln_pass_fuse_elementwise,
     "group elementwise chains, and matmul epilogues (bias, residual, activation), into kernels"},
};

#define N_PASSES (int)(sizeof passes / sizeof *passes)

const kiln_pass *kiln_pass_find(const char *name)
{
    for (int i = 0; i < N_PASSES; i++)
        if (strcmp(passes[i].name, name) == 0)
            return &passes[i];
    return NULL;
}

int kiln_pass_count(void) { return N_PASSES; }
const kiln_pass *kiln_pass_at(int i) { return i >= 0 && i < N_PASSES ? &passes[i] : NULL; }
const char *kiln_default_pipeline(void) { return "canonicalize,fuse,canonicalize,fuse_elementwise"; }

/* ---- random inputs ---- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int64_t default_binding(const kiln_pass_opts *o, const char *name)
{
    for (int i = 0; o && i < o->n_bind; i++)
        if (strcmp(o->bind_names[i], name) == 0)
            return o->bind_vals[i];
    if (strstr(name, "batch"))
        return 2;
    return 3;
}

int kiln_random_run(kiln_graph *g, const kiln_pass_opts *o, uint64_t seed, kiln_tensor **outputs,
                    kiln_err *err)
{
    int64_t *vars = kiln_xmalloc(sizeof(int64_t) * (size_t)(g->syms.n + 1));
    for (int i = 0; i < g->syms.n; i++)
        vars[i] = g->syms.syms[i].kind == KILN_SYM_VAR ? default_binding(o, g->syms.syms[i].name) : -1;
    kiln_tensor *ins = kiln_xcalloc((size_t)g->n_inputs + 1, sizeof *ins);
    int rc = -1;
    uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
    for (int i = 0; i < g->n_inputs; i++) {
        const kiln_value *v = &g->values[g->inputs[i]];
        int64_t dims[KILN_MAX_RANK];
        if (v->type.rank < 0) {
            kiln_errf(err, "input %%%s has unknown rank; cannot make random inputs", v->name);
            goto out;
        }
        for (int d = 0; d < v->type.rank; d++) {
            dims[d] = kiln_dim_eval(&g->syms, v->type.dims[d], vars);
            if (dims[d] < 0) {
                kiln_errf(err, "input %%%s: dimension %d has no value for random inputs", v->name, d);
                goto out;
            }
        }
        kiln_tensor_alloc(&ins[i], v->type.dtype, v->type.rank, dims);
        int64_t n = kiln_tensor_numel(&ins[i]);
        const kiln_dtype_info *di = kiln_dtype_get(v->type.dtype);
        /* integer inputs used as Gather indices (token ids, token types)
         * stay inside the smallest table they index */
        int64_t bound = 8;
        for (int ni = 0; ni < g->n_nodes; ni++) {
            const kiln_node *n = &g->nodes[ni];
            if (strcmp(n->op->name, "Gather") || n->n_inputs < 2 || n->inputs[1] != g->inputs[i])
                continue;
            const kiln_type *dt = &g->values[n->inputs[0]].type;
            int64_t ax = kiln_node_int(n, "axis");
            if (ax < 0)
                ax += dt->rank;
            if (ax >= 0 && ax < dt->rank && KILN_DIM_IS_STATIC(dt->dims[ax]) && dt->dims[ax] > 0 &&
                dt->dims[ax] < bound)
                bound = dt->dims[ax];
        }
        if (di->is_quant) {
            kiln_errf(err, "input %%%s: random block-quantized inputs are not supported", v->name);
            goto out;
        }
        for (int64_t k = 0; k < n; k++) {
            uint64_t r = splitmix(&s);
            if (v->type.dtype == KILN_BOOL)
                kiln_store_i64(KILN_BOOL, ins[i].data, k, (int64_t)(r & 1));
            else if (di->is_int)
                kiln_store_i64(v->type.dtype, ins[i].data, k, (int64_t)(r % (uint64_t)bound));
            else
                kiln_store_f64(v->type.dtype, ins[i].data, k, (double)(r >> 11) / 9007199254740992.0 * 2 - 1);
        }
    }
    *outputs = kiln_xcalloc((size_t)g->n_outputs + 1, sizeof(kiln_tensor));
    if (kiln_interp_run(g, ins, *outputs, err)) {
        free(*outputs);
        *outputs = NULL;
        goto out;
    }
    rc = 0;
out:
    for (int i = 0; i < g->n_inputs; i++)
        kiln_tensor_free(&ins[i]);
    free(ins);
    free(vars);
    return rc;
}

double kiln_tensor_maxdiff(const kiln_tensor *a, const kiln_tensor *b)
{
    if (a->dtype != b->dtype || a->rank != b->rank)
        return -1;
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] != b->dims[i])
            return -1;
    int64_t n = kiln_tensor_numel(a);
    double m = 0;
    if (kiln_dtype_get(a->dtype)->is_int || a->dtype == KILN_BOOL) {
        for (int64_t i = 0; i < n; i++)
            if (kiln_tensor_get_i64(a, i) != kiln_tensor_get_i64(b, i))
                return INFINITY;
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        double x = kiln_tensor_get(a, i), y = kiln_tensor_get(b, i);
        if (isnan(x) && isnan(y))
            continue;
        if (isinf(x) && x == y)
            continue;
        double d = fabs(x - y) / (1 + fabs(y));
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static void free_outputs(kiln_tensor *t, int n)
{
    for (int i = 0; t && i < n; i++)
        kiln_tensor_free(&t[i]);
    free(t);
}

/* Tolerance for --verify-each: passes may reassociate float math. */
#define VERIFY_TOL 1e-4

int kiln_run_pipeline(kiln_graph **g, const char *pipeline, const kiln_pass_opts *o, kiln_err *err)
{
    char *list = kiln_xstrdup(pipeline ? pipeline : kiln_default_pipeline());
    int rc = -1, found_dump = o && o->dump_after ? 0 : 1;
    kiln_tensor *ref = NULL;
    int nref = 0;
    if (o && o->verify_each) {
        if (kiln_verify(*g, err)) {
            kiln_err_prefix(err, "before passes: ");
            goto out;
        }
        if (kiln_random_run(*g, o, 1, &ref, err)) {
            kiln_err_prefix(err, "--verify-each: interpreter before passes: ");
            goto out;
        }
        nref = (*g)->n_outputs;
    }
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        while (*name == ' ')
            name++;
        if (!*name)
            continue;
        const kiln_pass *p = kiln_pass_find(name);
        if (!p) {
            kiln_errf(err, "unknown pass '%s' (kiln ir --list-passes shows them)", name);
            goto out;
        }
        int before = (*g)->n_nodes;
        if (p->run(g, o, err)) {
            kiln_err_prefix(err, "pass %s: ", name);
            goto out;
        }
        if (o && o->verbose)
            fprintf(stderr, "kiln: pass %-14s %d -> %d nodes\n", name, before, (*g)->n_nodes);
        if (o && o->verify_each) {
            kiln_tensor *got = NULL;
            if (kiln_verify(*g, err)) {
                kiln_err_prefix(err, "--verify-each: after pass %s: ", name);
                goto out;
            }
            if (kiln_random_run(*g, o, 1, &got, err)) {
                kiln_err_prefix(err, "--verify-each: interpreter after pass %s: ", name);
                goto out;
            }
            for (int i = 0; i < nref; i++) {
                double d = kiln_tensor_maxdiff(&got[i], &ref[i]);
                if (d < 0 || d > VERIFY_TOL) {
                    kiln_errf(err, "--verify-each: pass %s changed output %%%s (%s %.3g)", name,
                              (*g)->values[(*g)->outputs[i]].name, d < 0 ? "shape/type differs" : "max rel diff",
                              d);
                    free_outputs(got, nref);
                    goto out;
                }
            }
            free_outputs(got, nref);
        }
        if (o && o->dump_after && strcmp(o->dump_after, name) == 0) {
            found_dump = 1;
            break;
        }
    }
    if (!found_dump) {
        kiln_errf(err, "pass '%s' is not in the pipeline", o->dump_after);
        goto out;
    }
    rc = 0;
out:
    free_outputs(ref, nref);
    free(list);
    return rc;
}

/* ---- rewriter ---- */

void kiln_rw_begin(kiln_rewriter *rw, kiln_graph *src)
{
    rw->src = src;
    rw->dst = kiln_graph_new(src->name);
    kiln_graph *d = rw->dst;
    d->reserve = src;
    if (src->base_dir)
        d->base_dir = kiln_xstrdup(src->base_dir);
    /* variables first, in their order, so printed graphs stay stable */
    for (int i = 0; i < src->syms.n; i++) {
        const kiln_sym *s = &src->syms.syms[i];
        if (s->kind == KILN_SYM_VAR)
            kiln_dim_var(&d->syms, s->name);
        else
            kiln_dim_import(&d->syms, &src->syms, KILN_DIM_FROM_SYM(i));
    }
    for (int i = 0; i < src->n_files; i++)
        kiln_graph_add_file(d, src->files[i].path);
    rw->map = kiln_xmalloc(sizeof(int) * (size_t)(src->n_values + 1));
    for (int i = 0; i < src->n_values; i++)
        rw->map[i] = -1;
    for (int i = 0; i < src->n_inputs; i++) {
        const kiln_value *v = &src->values[src->inputs[i]];
        kiln_type t = v->type;
        for (int k = 0; k < t.rank; k++)
            t.dims[k] = kiln_dim_import(&d->syms, &src->syms, t.dims[k]);
        rw->map[src->inputs[i]] = kiln_graph_add_input(d, v->name, &t, NULL);
    }
}

static void import_type(kiln_rewriter *rw, kiln_type *t)
{
    for (int k = 0; k < t->rank; k++)
        t->dims[k] = kiln_dim_import(&rw->dst->syms, &rw->src->syms, t->dims[k]);
}

int kiln_rw_value(kiln_rewriter *rw, int vid)
{
    if (vid < 0)
        return -1;
    if (rw->map[vid] >= 0)
        return rw->map[vid];
    const kiln_value *v = &rw->src->values[vid];
    kiln_type t = v->type;
    import_type(rw, &t);
    if (v->kind == KILN_VAL_WEIGHT)
        rw->map[vid] = kiln_graph_add_weight(rw->dst, v->name, &t, v->file, v->offset, NULL);
    else if (v->kind == KILN_VAL_CONST)
        rw->map[vid] = kiln_graph_add_const(rw->dst, v->name, &t, v->data, v->nbytes, NULL);
    return rw->map[vid];
}

void kiln_rw_set(kiln_rewriter *rw, int src_vid, int dst_vid) { rw->map[src_vid] = dst_vid; }

int kiln_rw_copy_node(kiln_rewriter *rw, int ni, kiln_err *err)
{
    const kiln_node *n = &rw->src->nodes[ni];
    int ins[KILN_MAX_OP_INPUTS];
    const char *names[KILN_MAX_OP_OUTPUTS];
    for (int k = 0; k < n->n_inputs; k++) {
        ins[k] = n->inputs[k] >= 0 ? kiln_rw_value(rw, n->inputs[k]) : -1;
        if (n->inputs[k] >= 0 && ins[k] < 0)
            return kiln_errf(err, "rewrite: %%%s used before it was produced",
                             rw->src->values[n->inputs[k]].name);
    }
    for (int k = 0; k < n->n_outputs; k++)
        names[k] = rw->src->values[n->outputs[k]].name;
    int nn = kiln_graph_add_node(rw->dst, n->op->name, n->name, ins, n->n_inputs, names,
                                 n->n_outputs, n->attrs, n->n_attrs, err);
    if (nn < 0)
        return -1;
    rw->dst->nodes[nn].kernel = n->kernel;
    const kiln_node *m = &rw->dst->nodes[nn];
    for (int k = 0; k < n->n_outputs; k++) {
        rw->map[n->outputs[k]] = m->outputs[k];
        /* keep refinements the source knew (e.g. from ONNX value_info) */
        kiln_value *dv = &rw->dst->values[m->outputs[k]];
        kiln_type st = rw->src->values[n->outputs[k]].type;
        import_type(rw, &st);
        if (st.dtype == dv->type.dtype && dv->type.rank >= 0 && st.rank == dv->type.rank) {
            int ok = 1;
            for (int d = 0; d < st.rank; d++)
                ok &= dv->type.dims[d] == KILN_DIM_ANY || dv->type.dims[d] == st.dims[d];
            if (ok)
                dv->type = st;
        }
    }
    return nn;
}

kiln_graph *kiln_rw_end(kiln_rewriter *rw, kiln_err *err)
{
    int *outs = kiln_xmalloc(sizeof(int) * (size_t)(rw->src->n_outputs + 1));
    for (int i = 0; i < rw->src->n_outputs; i++) {
        outs[i] = kiln_rw_value(rw, rw->src->outputs[i]);
        if (outs[i] < 0) {
            kiln_errf(err, "rewrite: graph output %%%s was dropped",
                      rw->src->values[rw->src->outputs[i]].name);
            free(outs);
            kiln_rw_abort(rw);
            return NULL;
        }
    }
    kiln_graph_set_outputs(rw->dst, outs, rw->src->n_outputs);
    free(outs);
    free(rw->map);
    kiln_graph_free(rw->src);
    kiln_graph *d = rw->dst;
    d->reserve = NULL;
    memset(rw, 0, sizeof *rw);
    return d;
}

void kiln_rw_abort(kiln_rewriter *rw)
{
    kiln_graph_free(rw->dst);
    free(rw->map);
    rw->dst = NULL;
    rw->map = NULL;
}

int kiln_add_const_tensor(kiln_graph *g, const char *hint, const kiln_tensor *t, kiln_err *err)
{
    kiln_type ty;
    memset(&ty, 0, sizeof ty);
    ty.dtype = t->dtype;
    ty.rank = t->rank;
    for (int i = 0; i < t->rank; i++)
        ty.dims[i] = t->dims[i];
    char *name = kiln_graph_fresh_name(g, hint);
    int id = kiln_graph_add_const(g, name, &ty, t->data, kiln_dtype_storage(t->dtype, kiln_tensor_numel(t)), err);
    free(name);
    return id;
}

int kiln_add_const_i64(kiln_graph *g, const char *hint, const int64_t *v, int n, kiln_err *err)
{
    kiln_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = KILN_I64;
    t.rank = 1;
    t.dims[0] = n;
    t.data = (void *)v;
    return kiln_add_const_tensor(g, hint, &t, err);
}

int *kiln_use_counts(const kiln_graph *g)
{
    int *u = kiln_xcalloc((size_t)g->n_values + 1, sizeof(int));
    for (int i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_inputs; k++)
            if (g->nodes[i].inputs[k] >= 0)
                u[g->nodes[i].inputs[k]]++;
    for (int i = 0; i < g->n_outputs; i++)
        u[g->outputs[i]]++;
    return u;
}
