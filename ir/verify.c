/* verify.c - structural and type checks of a graph. Every message names the
 * offending value and op. */
#include "op_util.h"

#include <stdlib.h>
#include <string.h>

static int check_type(kiln_graph *g, const kiln_value *v, kiln_err *err)
{
    const kiln_type *t = &v->type;
    if (t->dtype <= KILN_DT_INVALID || t->dtype >= KILN_DT_COUNT)
        return kiln_errf(err, "verify: %%%s: invalid element type", v->name);
    if (t->rank > KILN_MAX_RANK || t->rank < -1)
        return kiln_errf(err, "verify: %%%s: invalid rank %d", v->name, t->rank);
    for (int i = 0; i < t->rank; i++) {
        kiln_dim d = t->dims[i];
        if (KILN_DIM_IS_SYM(d) && KILN_DIM_SYM_ID(d) >= g->syms.n)
            return kiln_errf(err, "verify: %%%s: dimension %d names no symbol", v->name, i);
    }
    const kiln_dtype_info *di = kiln_dtype_get(t->dtype);
    if (di->is_quant && t->rank > 0) { /* packed i4/u4 run across rows like ONNX */
        kiln_dim last = t->dims[t->rank - 1];
        if (KILN_DIM_IS_STATIC(last) && last % di->block_elems)
            return kiln_errf(err,
                             "verify: %%%s: %s stores blocks of %d along the last dimension, "
                             "which is %lld",
                             v->name, di->name, di->block_elems, (long long)last);
    }
    return 0;
}

int kiln_verify(kiln_graph *g, kiln_err *err)
{
    char *defined = kiln_xcalloc((size_t)g->n_values + 1, 1);
    int rc = -1;
    char label[256];
    for (int i = 0; i < g->n_values; i++) {
        kiln_value *v = &g->values[i];
        if (check_type(g, v, err))
            goto out;
        switch (v->kind) {
        case KILN_VAL_INPUT:
            defined[i] = 1;
            break;
        case KILN_VAL_CONST:
            if (kiln_type_numel(&v->type) < 0 ||
                v->nbytes != kiln_dtype_storage(v->type.dtype, kiln_type_numel(&v->type))) {
                kiln_errf(err, "verify: const %%%s: data size does not match its type", v->name);
                goto out;
            }
            defined[i] = 1;
            break;
        case KILN_VAL_WEIGHT:
            if (v->file < 0 || v->file >= g->n_files) {
                kiln_errf(err, "verify: weight %%%s: no weight file", v->name);
                goto out;
            }
            if (!kiln_graph_value_data(g, i, err)) {
                kiln_err_prefix(err, "verify: ");
                goto out;
            }
            defined[i] = 1;
            break;
        case KILN_VAL_NODE:
            if (v->producer < 0 || v->producer >= g->n_nodes) {
                kiln_errf(err, "verify: %%%s: has no producing node", v->name);
                goto out;
            }
            break;
        }
    }
    for (int i = 0; i < g->n_inputs; i++)
        if (g->inputs[i] < 0 || g->inputs[i] >= g->n_values ||
            g->values[g->inputs[i]].kind != KILN_VAL_INPUT) {
            kiln_errf(err, "verify: graph input #%d is not an input value", i);
            goto out;
        }
    for (int ni = 0; ni < g->n_nodes; ni++) {
        kiln_node *n = &g->nodes[ni];
        if (!n->op) {
            kiln_errf(err, "verify: node #%d has no op", ni);
            goto out;
        }
        kiln_node_label(g, n, label, sizeof label);
        if (n->n_inputs < n->op->min_inputs || n->n_inputs > n->op->max_inputs) {
            kiln_errf(err, "verify: %s: takes %d..%d inputs, has %d", label, n->op->min_inputs,
                      n->op->max_inputs, n->n_inputs);
            goto out;
        }
        if (n->n_outputs < n->op->min_outputs || n->n_outputs > n->op->max_outputs) {
            kiln_errf(err, "verify: %s: produces %d..%d outputs, has %d", label,
                      n->op->min_outputs, n->op->max_outputs, n->n_outputs);
            goto out;
        }
        for (int k = 0; k < n->n_inputs; k++) {
            int vid = n->inputs[k];
            if (vid < 0) {
                if (k < n->op->min_inputs) {
                    kiln_errf(err, "verify: %s: required input %d is absent", label, k);
                    goto out;
                }
                continue;
            }
            if (vid >= g->n_values) {
                kiln_errf(err, "verify: %s: input %d refers to no value", label, k);
                goto out;
            }
            if (!defined[vid]) {
                kiln_errf(err, "verify: %%%s used by %s before it is defined", g->values[vid].name,
                          label);
                goto out;
            }
        }
        if (kiln_check_attrs(n->op, n->attrs, n->n_attrs, label, err)) {
            kiln_err_prefix(err, "verify: ");
            goto out;
        }
        for (int k = 0; k < n->n_outputs; k++) {
            int vid = n->outputs[k];
            if (vid < 0 || vid >= g->n_values || g->values[vid].kind != KILN_VAL_NODE ||
                g->values[vid].producer != ni || g->values[vid].producer_out != k) {
                kiln_errf(err, "verify: %s: output %d is not linked back to this node", label, k);
                goto out;
            }
            if (defined[vid]) {
                kiln_errf(err, "verify: %%%s defined twice (again by %s)", g->values[vid].name, label);
                goto out;
            }
        }
        if (kiln_infer_node(g, ni, 0, err)) {
            kiln_err_prefix(err, "verify: ");
            goto out;
        }
        for (int k = 0; k < n->n_outputs; k++)
            defined[n->outputs[k]] = 1;
    }
    for (int i = 0; i < g->n_outputs; i++) {
        int vid = g->outputs[i];
        if (vid < 0 || vid >= g->n_values || !defined[vid]) {
            kiln_errf(err, "verify: graph output #%d is not a defined value", i);
            goto out;
        }
    }
    if (g->n_outputs == 0) {
        kiln_errf(err, "verify: graph '%s' has no outputs", g->name);
        goto out;
    }
    rc = 0;
out:
    free(defined);
    return rc;
}
