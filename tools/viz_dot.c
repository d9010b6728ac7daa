/* viz_dot.c - the graph as Graphviz DOT text for `kiln viz -o x.dot`.
 *
 * Ids: n<i> for node i, v<id> for graph inputs (by value id), o<i> for
 * graph output i. Fused kernels become `subgraph cluster_k<id>`. Edges run
 * once per (value, consumer), labelled dtype[shape]; weights and consts
 * are not drawn (they are listed in each node's tooltip). */
#include "viz_common.h"

#include <stdio.h>
#include <stdlib.h>

/* Appends s as the inside of a DOT quoted string (Graphviz reads UTF-8:
 * invalid bytes become '?', control characters spaces). */
static void dot_put(kiln_sb *sb, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; p && *p;) {
        int n = kiln_viz_utf8_len(p);
        if (n > 1) {
            kiln_sb_put(sb, (const char *)p, (size_t)n);
            p += n;
            continue;
        }
        if (n == 0)
            kiln_sb_put(sb, "?", 1);
        else if (*p == '"' || *p == '\\')
            kiln_sb_printf(sb, "\\%c", *p);
        else if (*p == '\n')
            kiln_sb_put(sb, "\\n", 2);
        else if (*p < 0x20)
            kiln_sb_put(sb, " ", 1);
        else
            kiln_sb_put(sb, (const char *)p, 1);
        p++;
    }
}

static void dot_node(const kiln_graph *g, int ni, kiln_sb *sb, const char *indent)
{
    const kiln_node *n = &g->nodes[ni];
    kiln_sb t = {0};
    kiln_sb_printf(sb, "%sn%d [label=\"", indent, ni);
    kiln_sb_printf(&t, "%s\n", n->op->name);
    kiln_viz_node_name(g, n, &t);
    dot_put(sb, t.s);
    t.len = 0;
    kiln_sb_printf(sb, "\", tooltip=\"");
    kiln_viz_node_details(g, ni, &t);
    dot_put(sb, t.s);
    kiln_sb_printf(sb, "\"];\n");
    kiln_sb_free(&t);
}

/* The box a value comes from: "n<i>" / "v<id>", or 0 for weights/consts. */
static int value_src(const kiln_graph *g, int v, kiln_sb *sb)
{
    const kiln_value *val = &g->values[v];
    if (val->kind == KILN_VAL_NODE)
        kiln_sb_printf(sb, "n%d", val->producer);
    else if (val->kind == KILN_VAL_INPUT)
        kiln_sb_printf(sb, "v%d", v);
    else
        return 0;
    return 1;
}

static void dot_edge(const kiln_graph *g, int v, const char *dst, kiln_sb *sb)
{
    kiln_sb src = {0}, t = {0};
    if (value_src(g, v, &src)) {
        kiln_viz_type(g, v, &t);
        kiln_sb_printf(sb, "  %s -> %s [label=\"", src.s, dst);
        dot_put(sb, t.s);
        kiln_sb_printf(sb, "\", tooltip=\"%%");
        dot_put(sb, g->values[v].name);
        kiln_sb_printf(sb, "\"];\n");
    }
    kiln_sb_free(&src);
    kiln_sb_free(&t);
}

typedef struct kpair {
    int kernel, node;
} kpair;

static int cmp_kpair(const void *a, const void *b)
{
    const kpair *x = a, *y = b;
    if (x->kernel != y->kernel)
        return x->kernel < y->kernel ? -1 : 1;
    return x->node - y->node;
}

void kiln_viz_dot(const kiln_graph *g, kiln_sb *out)
{
    kiln_sb_printf(out, "digraph \"");
    dot_put(out, g->name);
    kiln_sb_printf(out, "\" {\n  graph [rankdir=TB, fontname=\"Helvetica\", fontsize=11, "
                        "labelloc=t, label=\"");
    dot_put(out, g->name);
    kiln_sb_printf(out, ": %d nodes\"];\n  node [shape=box, style=\"rounded,filled\", "
                        "fillcolor=\"#d6e6f7\", fontname=\"Helvetica\", fontsize=10];\n"
                        "  edge [fontname=\"Helvetica\", fontsize=8, color=\"#667788\"];\n",
                   g->n_nodes);
    for (int i = 0; i < g->n_inputs; i++) {
        int v = g->inputs[i];
        kiln_sb t = {0};
        kiln_sb_printf(out, "  v%d [shape=ellipse, fillcolor=white, label=\"input\\n%%", v);
        dot_put(out, g->values[v].name);
        kiln_viz_type(g, v, &t);
        kiln_sb_printf(out, "\", tooltip=\"");
        dot_put(out, t.s);
        kiln_sb_printf(out, "\"];\n");
        kiln_sb_free(&t);
    }
    /* clusters: the nodes of each kernel id, (kernel, node) pairs sorted */
    kpair *ord = kiln_xmalloc(sizeof *ord * (size_t)(g->n_nodes + 1));
    int n_fused = 0;
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].kernel >= 0)
            ord[n_fused++] = (kpair){g->nodes[i].kernel, i};
    qsort(ord, (size_t)n_fused, sizeof *ord, cmp_kpair);
    for (int a = 0; a < n_fused;) {
        int k = ord[a].kernel;
        kiln_sb_printf(out, "  subgraph cluster_k%d {\n    label=\"kernel %d\"; style=\"dashed,rounded\"; "
                            "color=\"#c08a2a\";\n",
                       k, k);
        for (; a < n_fused && ord[a].kernel == k; a++)
            dot_node(g, ord[a].node, out, "    ");
        kiln_sb_printf(out, "  }\n");
    }
    free(ord);
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].kernel < 0)
            dot_node(g, i, out, "  ");
    for (int i = 0; i < g->n_outputs; i++) {
        kiln_sb_printf(out, "  o%d [shape=ellipse, fillcolor=white, label=\"output\\n%%", i);
        dot_put(out, g->values[g->outputs[i]].name);
        kiln_sb_printf(out, "\"];\n");
    }
    char dst[32];
    for (int i = 0; i < g->n_nodes; i++) {
        const kiln_node *n = &g->nodes[i];
        snprintf(dst, sizeof dst, "n%d", i);
        for (int k = 0; k < n->n_inputs; k++) {
            int v = n->inputs[k], dup = 0;
            for (int q = 0; q < k; q++)
                dup |= n->inputs[q] == v;
            if (v >= 0 && !dup)
                dot_edge(g, v, dst, out);
        }
    }
    for (int i = 0; i < g->n_outputs; i++) {
        snprintf(dst, sizeof dst, "o%d", i);
        dot_edge(g, g->outputs[i], dst, out);
    }
    kiln_sb_printf(out, "}\n");
}
