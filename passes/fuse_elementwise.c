/* fuse_elementwise.c - groups nodes into kernels (node->kernel ids).
 *
 * A kernel is either a chain of elementwise ops, or an anchor (Linear,
 * MatMul) followed by an elementwise epilogue (bias, residual add,
 * activation). A node joins the kernel of the producer of one of its inputs
 * when that input has no other use, is not a graph output, and has exactly
 * the node's output shape (other inputs may broadcast). Values inside a
 * kernel get no buffer (the memory planner sees their uses stay inside),
 * and both code generators compute each group as one loop nest. The graph
 * itself is unchanged: --verify-each holds trivially, and the interpreter
 * ignores kernel ids. */
#include "kiln_passes.h"

#include <stdlib.h>
#include <string.h>

/* Elementwise ops the code generators can fuse (single scalar function). */
static int fusable_elementwise(const kiln_node *n)
{
    const char *op = n->op->name;
    if (!strcmp(op, "Identity") || !strcmp(op, "Dropout"))
        return 0;
    return (n->op->flags & KILN_OP_ELEMENTWISE) != 0;
}

static int is_anchor(const kiln_graph *g, const kiln_node *n)
{
    const char *op = n->op->name;
    const kiln_type *t = &g->values[n->outputs[0]].type;
    if (t->dtype != KILN_F32)
        return 0;
    if (!strcmp(op, "Linear"))
        return 1;
    if (!strcmp(op, "MatMul")) {
        const kiln_type *a = &g->values[n->inputs[0]].type, *b = &g->values[n->inputs[1]].type;
        return a->dtype == KILN_F32 && b->dtype == KILN_F32 && a->rank >= 2 && b->rank >= 2;
    }
    return 0;
}

static int same_type(const kiln_type *a, const kiln_type *b)
{
    if (a->dtype != b->dtype || a->rank != b->rank || a->rank < 0)
        return 0;
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] != b->dims[i] || a->dims[i] == KILN_DIM_ANY)
            return 0;
    return 1;
}

int kiln_pass_fuse_elementwise(kiln_graph **gp, const kiln_pass_opts *o, kiln_err *err)
{
    (void)o;
    (void)err;
    kiln_graph *g = *gp;
    int *uses = kiln_use_counts(g);
    char *is_out = kiln_xcalloc((size_t)g->n_values + 1, 1);
    for (int i = 0; i < g->n_outputs; i++)
        is_out[g->outputs[i]] = 1;
    int next = 0;
    for (int ni = 0; ni < g->n_nodes; ni++)
        if (g->nodes[ni].kernel >= next)
            next = g->nodes[ni].kernel + 1;
    /* group size bound keeps generated expressions reasonable */
    int *size = kiln_xcalloc((size_t)(next + g->n_nodes) + 1, sizeof(int));
    for (int ni = 0; ni < g->n_nodes; ni++) {
        kiln_node *n = &g->nodes[ni];
        if (n->kernel >= 0 || !fusable_elementwise(n) || n->n_outputs != 1)
            continue;
        const kiln_type *ot = &g->values[n->outputs[0]].type;
        if (!kiln_dtype_get(ot->dtype)->is_float && ot->dtype != KILN_BOOL && !kiln_dtype_get(ot->dtype)->is_int)
            continue;
        for (int k = 0; k < n->n_inputs; k++) {
            int v = n->inputs[k];
            if (v < 0 || g->values[v].kind != KILN_VAL_NODE || uses[v] != 1 || is_out[v])
                continue;
            int pi = g->values[v].producer;
            kiln_node *p = &g->nodes[pi];
            if (p->n_outputs != 1 || !same_type(&g->values[v].type, ot))
                continue;
            if (!fusable_elementwise(p) && !is_anchor(g, p))
                continue;
            if (p->kernel < 0) {
                p->kernel = next++;
                size[p->kernel] = 1;
            }
            if (size[p->kernel] >= 16)
                continue;
            n->kernel = p->kernel;
            size[p->kernel]++;
            break;
        }
    }
    /* a group of one node is no group */
    for (int ni = 0; ni < g->n_nodes; ni++) {
        int k = g->nodes[ni].kernel;
        if (k >= 0 && size[k] < 2)
            g->nodes[ni].kernel = -1;
    }
    free(size);
    free(uses);
    free(is_out);
    return 0;
}
