/* memplan.c - where every value lives when a compiled model runs.
 *
 * Sizes are taken at the planning bounds of the symbolic dims (the largest
 * sizes the artifact accepts), so one arena allocated once serves every
 * call. Three steps:
 *  1. views: Reshape-like ops alias their input (no copy); elementwise ops
 *     write over an input that dies at them (in place);
 *  2. lifetimes: from the defining node to the last use (of any alias);
 *  3. packing: largest first, each into the best-fitting gap among the
 *     already placed values whose lifetimes overlap (best fit by size and
 *     lifetime). */
#include "kiln_passes.h"

#include <stdlib.h>
#include <string.h>

#define ALIGN 64
/* consts bigger than this go to the weights blob rather than the code */
#define CONST_INLINE_MAX 65536

int64_t kiln_plan_dim(const kiln_graph *g, const kiln_plan *p, kiln_dim d)
{
    int64_t vals[256];
    int n = g->syms.n < 256 ? g->syms.n : 256;
    for (int i = 0; i < n; i++)
        vals[i] = -1;
    for (int i = 0; i < p->n_syms; i++)
        if (p->sym_id[i] < n)
            vals[p->sym_id[i]] = p->sym_max[i];
    return kiln_dim_eval(&g->syms, d, vals);
}

int64_t kiln_plan_value_bytes(const kiln_graph *g, const kiln_plan *p, int vid)
{
    const kiln_type *t = &g->values[vid].type;
    if (t->rank < 0)
        return -1;
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++) {
        int64_t d = kiln_plan_dim(g, p, t->dims[i]);
        if (d < 0)
            return -1;
        n *= d;
    }
    return (int64_t)kiln_dtype_storage(t->dtype, n);
}

int kiln_plan_root(const kiln_plan *p, int vid)
{
    for (int guard = 0; guard < p->n_values && p->bufs[vid].kind == KILN_BUF_ALIAS; guard++)
        vid = p->bufs[vid].alias;
    return vid;
}

static int64_t align_up(int64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

static int is_view_op(const char *op)
{
    return !strcmp(op, "Reshape") || !strcmp(op, "Flatten") || !strcmp(op, "Squeeze") ||
           !strcmp(op, "Unsqueeze") || !strcmp(op, "Identity") || !strcmp(op, "Dropout");
}

static int same_shape(const kiln_type *a, const kiln_type *b)
{
    if (a->rank != b->rank || a->rank < 0)
        return 0;
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] != b->dims[i] || a->dims[i] == KILN_DIM_ANY)
            return 0;
    return 1;
}

typedef struct ival {
    int64_t off, end;
} ival;

static int cmp_ival(const void *a, const void *b)
{
    const ival *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

int kiln_plan_memory(kiln_graph *g, const kiln_pass_opts *o, kiln_plan *p, kiln_err *err)
{
    memset(p, 0, sizeof *p);
    p->n_values = g->n_values;
    p->bufs = kiln_xcalloc((size_t)g->n_values + 1, sizeof *p->bufs);
    for (int i = 0; i < g->syms.n; i++) {
        if (g->syms.syms[i].kind != KILN_SYM_VAR)
            continue;
        if (p->n_syms == KILN_MAX_SYMS_PLAN)
            return kiln_errf(err, "more than %d symbolic dimensions", KILN_MAX_SYMS_PLAN);
        int64_t bound = 1;
        for (int k = 0; o && k < o->n_bind; k++)
            if (!strcmp(o->bind_names[k], g->syms.syms[i].name))
                bound = o->bind_vals[k];
        p->sym_id[p->n_syms] = i;
        p->sym_max[p->n_syms++] = bound;
    }
    int nn = g->n_nodes;
    for (int v = 0; v < g->n_values; v++) {
        kiln_buf *b = &p->bufs[v];
        b->alias = -1;
        b->io = -1;
        b->first = -1;
        b->last = -1;
        b->bytes = kiln_plan_value_bytes(g, p, v);
        const kiln_value *val = &g->values[v];
        if (val->kind == KILN_VAL_NODE && b->bytes < 0)
            return kiln_errf(err, "%%%s: size unknown at compile time (its shape depends on input "
                                  "values; bind them with --bind-input)", val->name);
        switch (val->kind) {
        case KILN_VAL_INPUT: b->kind = KILN_BUF_INPUT; break;
        case KILN_VAL_WEIGHT: b->kind = KILN_BUF_WEIGHT; break;
        case KILN_VAL_CONST: b->kind = val->nbytes > CONST_INLINE_MAX ? KILN_BUF_WEIGHT : KILN_BUF_CONST; break;
        case KILN_VAL_NODE: b->kind = KILN_BUF_ARENA; b->first = val->producer; break;
        }
    }
    for (int i = 0; i < g->n_inputs; i++)
        p->bufs[g->inputs[i]].io = i;
    for (int i = 0; i < g->n_outputs; i++) {
        int v = g->outputs[i];
        if (g->values[v].kind == KILN_VAL_NODE && p->bufs[v].kind == KILN_BUF_ARENA) {
            p->bufs[v].kind = KILN_BUF_OUTPUT;
            p->bufs[v].io = i;
        }
    }
    /* uses; a fused kernel runs at its last node, so everything its nodes
     * read stays live until then */
    int max_kernel = -1;
    for (int ni = 0; ni < nn; ni++)
        if (g->nodes[ni].kernel > max_kernel)
            max_kernel = g->nodes[ni].kernel;
    int *kernel_at = kiln_xmalloc(sizeof(int) * (size_t)(max_kernel + 2));
    for (int k = 0; k <= max_kernel; k++)
        kernel_at[k] = -1;
    for (int ni = 0; ni < nn; ni++)
        if (g->nodes[ni].kernel >= 0)
            kernel_at[g->nodes[ni].kernel] = ni;
    for (int ni = 0; ni < nn; ni++) {
        const kiln_node *n = &g->nodes[ni];
        int at = n->kernel >= 0 ? kernel_at[n->kernel] : ni;
        for (int k = 0; k < n->n_inputs; k++)
            if (n->inputs[k] >= 0 && p->bufs[n->inputs[k]].last < at)
                p->bufs[n->inputs[k]].last = at;
    }
    free(kernel_at);
    for (int i = 0; i < g->n_outputs; i++)
        p->bufs[g->outputs[i]].last = nn;
    /* values computed inside a fused kernel and used only there need no buffer */
    for (int v = 0; v < g->n_values; v++) {
        const kiln_value *val = &g->values[v];
        if (val->kind != KILN_VAL_NODE || p->bufs[v].kind != KILN_BUF_ARENA)
            continue;
        int k = g->nodes[val->producer].kernel;
        if (k < 0)
            continue;
        int internal = 1;
        for (int ni = 0; ni < nn && internal; ni++) {
            const kiln_node *n = &g->nodes[ni];
            for (int q = 0; q < n->n_inputs; q++)
                if (n->inputs[q] == v && n->kernel != k)
                    internal = 0;
        }
        if (internal && p->bufs[v].last >= 0)
            p->bufs[v].kind = KILN_BUF_NONE;
    }
    /* views and in-place */
    for (int ni = 0; ni < nn; ni++) {
        const kiln_node *n = &g->nodes[ni];
        int out = n->outputs[0];
        kiln_buf *ob = &p->bufs[out];
        if (ob->kind != KILN_BUF_ARENA || n->n_inputs < 1 || n->inputs[0] < 0)
            continue;
        if (is_view_op(n->op->name)) {
            ob->kind = KILN_BUF_ALIAS;
            ob->alias = n->inputs[0];
            int root = kiln_plan_root(p, out);
            if (p->bufs[root].last < ob->last)
                p->bufs[root].last = ob->last;
            continue;
        }
        if (!(n->op->flags & KILN_OP_ELEMENTWISE) || n->kernel >= 0)
            continue;
        const kiln_type *ot = &g->values[out].type;
        for (int k = 0; k < n->n_inputs; k++) {
            int in = n->inputs[k];
            if (in < 0)
                continue;
            int root = kiln_plan_root(p, in);
            const kiln_type *it = &g->values[in].type;
            if (p->bufs[root].kind != KILN_BUF_ARENA || p->bufs[root].last != ni ||
                !same_shape(it, ot) ||
                kiln_dtype_storage(it->dtype, 1) != kiln_dtype_storage(ot->dtype, 1) ||
                kiln_dtype_get(it->dtype)->block_elems != 1)
                continue;
            /* every input sharing that storage must read element i only */
            int ok = 1;
            for (int q = 0; q < n->n_inputs; q++)
                if (n->inputs[q] >= 0 && kiln_plan_root(p, n->inputs[q]) == root &&
                    !same_shape(&g->values[n->inputs[q]].type, ot))
                    ok = 0;
            if (!ok)
                continue;
            ob->kind = KILN_BUF_ALIAS;
            ob->alias = in;
            p->bufs[root].last = ob->last > ni ? ob->last : ni;
            break;
        }
    }
    /* weights layout */
    int64_t woff = 0;
    for (int v = 0; v < g->n_values; v++) {
        kiln_buf *b = &p->bufs[v];
        if (b->kind != KILN_BUF_WEIGHT || b->last < 0)
            continue;
        b->offset = woff;
        woff = align_up(woff + (int64_t)g->values[v].nbytes);
    }
    p->weights_bytes = woff;
    /* pack the arena */
    int *order = kiln_xmalloc(sizeof(int) * (size_t)(g->n_values + 1));
    int no = 0;
    for (int v = 0; v < g->n_values; v++)
        if (p->bufs[v].kind == KILN_BUF_ARENA) {
            if (p->bufs[v].last < 0)
                p->bufs[v].last = p->bufs[v].first; /* unused result still gets written */
            order[no++] = v;
            p->naive_bytes += align_up(p->bufs[v].bytes);
        }
    /* largest first; ties keep definition order (insertion sort is stable) */
    for (int i = 1; i < no; i++)
        for (int j = i; j > 0 && (p->bufs[order[j]].bytes > p->bufs[order[j - 1]].bytes); j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    ival *iv = kiln_xmalloc(sizeof(ival) * (size_t)(no + 1));
    for (int i = 0; i < no; i++) {
        kiln_buf *b = &p->bufs[order[i]];
        int64_t size = align_up(b->bytes);
        int ni = 0;
        for (int j = 0; j < i; j++) {
            const kiln_buf *c = &p->bufs[order[j]];
            if (c->first <= b->last && b->first <= c->last)
                iv[ni++] = (ival){c->offset, c->offset + align_up(c->bytes)};
        }
        qsort(iv, (size_t)ni, sizeof *iv, cmp_ival);
        int64_t best = -1, best_gap = INT64_MAX, pos = 0;
        for (int j = 0; j <= ni; j++) {
            int64_t gap_end = j < ni ? iv[j].off : INT64_MAX;
            if (gap_end - pos >= size && (best < 0 || gap_end - pos < best_gap)) {
                best = pos;
                best_gap = gap_end - pos;
            }
            if (j < ni && iv[j].end > pos)
                pos = iv[j].end;
        }
        b->offset = best;
        if (best + size > p->arena_bytes)
            p->arena_bytes = best + size;
    }
    /* lower bound: bytes live at the busiest node */
    for (int t = 0; t <= nn; t++) {
        int64_t live = 0;
        for (int i = 0; i < no; i++) {
            const kiln_buf *b = &p->bufs[order[i]];
            if (b->first <= t && t <= b->last)
                live += align_up(b->bytes);
        }
        if (live > p->lower_bound)
            p->lower_bound = live;
    }
    free(iv);
    free(order);
    return 0;
}

void kiln_plan_free(kiln_plan *p)
{
    free(p->bufs);
    p->bufs = NULL;
}
