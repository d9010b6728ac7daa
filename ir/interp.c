/* interp.c - the reference interpreter: runs any verified graph with simple
 * loops. It is the oracle every importer, pass and code generator is tested
 * against, so it favors obviousness over speed. */
#include "op_util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int kiln_interp_node(const kiln_node *n, const kiln_tensor *const *in, int n_in,
                     kiln_tensor *out, int n_out, kiln_err *err)
{
    kiln_infer_ctx c;
    memset(&c, 0, sizeof c);
    kiln_symtab scratch = {0};
    kiln_type types[KILN_MAX_OP_INPUTS];
    c.node = n;
    c.syms = &scratch;
    c.n_inputs = n_in;
    c.n_outputs = n_out;
    c.err = err;
    for (int i = 0; i < n_in; i++) {
        if (!in[i])
            continue;
        kiln_tensor_type(in[i], &types[i]);
        c.in[i] = &types[i];
        c.in_val[i] = in[i];
    }
    for (int i = 0; i < n_out; i++)
        c.out[i].dtype = KILN_DT_INVALID;
    int rc = n->op->infer(&c);
    for (int i = 0; rc == 0 && i < n_out; i++) {
        if (c.out[i].dtype == KILN_DT_INVALID || kiln_type_numel(&c.out[i]) < 0) {
            rc = kiln_errf(err, "output %d shape unknown at run time", i);
            break;
        }
    }
    for (int i = 0; i < KILN_MAX_OP_OUTPUTS; i++)
        free(c.out_sym[i]);
    kiln_symtab_free(&scratch);
    if (rc)
        return -1;
    kiln_eval_ctx e;
    memset(&e, 0, sizeof e);
    e.node = n;
    e.n_inputs = n_in;
    e.n_outputs = n_out;
    e.err = err;
    for (int i = 0; i < n_in; i++)
        e.in[i] = in[i];
    for (int i = 0; i < n_out; i++) {
        int64_t dims[KILN_MAX_RANK];
        for (int d = 0; d < c.out[i].rank; d++)
            dims[d] = c.out[i].dims[d];
        kiln_tensor_alloc(&out[i], c.out[i].dtype, c.out[i].rank, dims);
        e.out[i] = &out[i];
    }
    if (!n->op->eval) {
        rc = kiln_errf(err, "no reference kernel");
    } else {
        rc = n->op->eval(&e);
    }
    if (rc)
        for (int i = 0; i < n_out; i++)
            kiln_tensor_free(&out[i]);
    return rc;
}

/* Binds (or checks) the graph's symbolic dims against a concrete shape. */
static int bind_shape(const kiln_graph *g, const kiln_value *v, const int64_t *dims, int rank,
                      int64_t *vars, int allow_bind, kiln_err *err)
{
    const kiln_type *t = &v->type;
    if (t->rank < 0)
        return 0;
    if (t->rank != rank)
        return kiln_errf(err, "%%%s: expected rank %d, got %d", v->name, t->rank, rank);
    for (int pass = 0; pass < 2; pass++) /* variables first, then expressions */
        for (int i = 0; i < rank; i++) {
            kiln_dim d = t->dims[i];
            if (d == KILN_DIM_ANY)
                continue;
            if (KILN_DIM_IS_SYM(d) && g->syms.syms[KILN_DIM_SYM_ID(d)].kind == KILN_SYM_VAR &&
                vars[KILN_DIM_SYM_ID(d)] < 0) {
                if (pass == 0 && allow_bind)
                    vars[KILN_DIM_SYM_ID(d)] = dims[i];
                continue;
            }
            if (pass == 0)
                continue;
            int64_t want = kiln_dim_eval(&g->syms, d, vars);
            if (want >= 0 && want != dims[i]) {
                kiln_sb s = {0};
                kiln_dim_print(&g->syms, d, &s);
                kiln_errf(err, "%%%s: dimension %d is %lld, but %s = %lld", v->name, i,
                          (long long)dims[i], s.s, (long long)want);
                kiln_sb_free(&s);
                return -1;
            }
        }
    return 0;
}

int kiln_interp_run(kiln_graph *g, const kiln_tensor *inputs, kiln_tensor *outputs, kiln_err *err)
{
    int nv = g->n_values;
    kiln_tensor *vals = kiln_xcalloc((size_t)nv + 1, sizeof *vals);
    char *have = kiln_xcalloc((size_t)nv + 1, 1);
    int *last_use = kiln_xmalloc(sizeof(int) * (size_t)(nv + 1));
    int64_t *vars = kiln_xmalloc(sizeof(int64_t) * (size_t)(g->syms.n + 1));
    int rc = -1;
    char label[256];
    for (int i = 0; i < g->syms.n; i++)
        vars[i] = -1;
    for (int i = 0; i < nv; i++)
        last_use[i] = -1;
    for (int ni = 0; ni < g->n_nodes; ni++)
        for (int k = 0; k < g->nodes[ni].n_inputs; k++)
            if (g->nodes[ni].inputs[k] >= 0)
                last_use[g->nodes[ni].inputs[k]] = ni;
    for (int i = 0; i < g->n_outputs; i++)
        last_use[g->outputs[i]] = INT_MAX;

    for (int i = 0; i < g->n_inputs; i++) {
        int vid = g->inputs[i];
        const kiln_value *v = &g->values[vid];
        if (inputs[i].dtype != v->type.dtype) {
            kiln_errf(err, "input %%%s: expected %s, got %s", v->name,
                      kiln_dtype_name(v->type.dtype), kiln_dtype_name(inputs[i].dtype));
            goto out;
        }
        if (bind_shape(g, v, inputs[i].dims, inputs[i].rank, vars, 1, err))
            goto out;
        vals[vid] = inputs[i];
        vals[vid].owned = 0;
        have[vid] = 1;
    }
    for (int i = 0; i < nv; i++) {
        kiln_value *v = &g->values[i];
        if (v->kind == KILN_VAL_CONST || v->kind == KILN_VAL_WEIGHT) {
            if (kiln_graph_value_tensor(g, i, &vals[i], err))
                goto out;
            kiln_tensor_align(&vals[i]);
            have[i] = 1;
        }
    }
    for (int ni = 0; ni < g->n_nodes; ni++) {
        kiln_node *n = &g->nodes[ni];
        const kiln_tensor *in[KILN_MAX_OP_INPUTS];
        kiln_tensor out[KILN_MAX_OP_OUTPUTS];
        memset(out, 0, sizeof out);
        kiln_node_label(g, n, label, sizeof label);
        for (int k = 0; k < n->n_inputs; k++) {
            int vid = n->inputs[k];
            if (vid >= 0 && !have[vid]) {
                kiln_errf(err, "%s: input %%%s has no value", label, g->values[vid].name);
                goto out;
            }
            in[k] = vid >= 0 ? &vals[vid] : NULL;
        }
        if (kiln_interp_node(n, in, n->n_inputs, out, n->n_outputs, err)) {
            kiln_err_prefix(err, "%s: ", label);
            goto out;
        }
        for (int k = 0; k < n->n_outputs; k++) {
            int vid = n->outputs[k];
            if (bind_shape(g, &g->values[vid], out[k].dims, out[k].rank, vars, 1, err) ||
                out[k].dtype != g->values[vid].type.dtype) {
                if (out[k].dtype != g->values[vid].type.dtype)
                    kiln_errf(err, "%%%s: kernel produced %s, type says %s", g->values[vid].name,
                              kiln_dtype_name(out[k].dtype),
                              kiln_dtype_name(g->values[vid].type.dtype));
                kiln_err_prefix(err, "%s: ", label);
                for (int q = k; q < n->n_outputs; q++)
                    kiln_tensor_free(&out[q]);
                goto out;
            }
            vals[vid] = out[k];
            have[vid] = 1;
        }
        /* drop intermediates after their last use */
        for (int k = 0; k < n->n_inputs; k++) {
            int vid = n->inputs[k];
            if (vid >= 0 && last_use[vid] == ni && vals[vid].owned) {
                kiln_tensor_free(&vals[vid]);
                have[vid] = 0;
            }
        }
        for (int k = 0; k < n->n_outputs; k++) {
            int vid = n->outputs[k];
            if (last_use[vid] < 0 && vals[vid].owned) { /* never used */
                kiln_tensor_free(&vals[vid]);
                have[vid] = 0;
            }
        }
    }
    for (int i = 0; i < g->n_outputs; i++) {
        int vid = g->outputs[i];
        kiln_tensor *t = &vals[vid];
        int dup = !t->owned;
        for (int j = 0; j < i; j++)
            dup |= g->outputs[j] == vid;
        if (dup) { /* outputs are always owned by the caller */
            kiln_tensor c;
            kiln_tensor_alloc(&c, t->dtype, t->rank, t->dims);
            if (t->nbytes)
                memcpy(c.data, t->data, t->nbytes);
            outputs[i] = c;
        } else {
            outputs[i] = *t;
            t->owned = 0;
        }
    }
    rc = 0;
out:
    for (int i = 0; i < nv; i++)
        kiln_tensor_free(&vals[i]);
    free(vals);
    free(have);
    free(last_use);
    free(vars);
    return rc;
}
