/* print_json.c - the graph as JSON, for tools (kiln ir --format json, viz). */
#include "kiln_ir.h"

#include <math.h>

static void jstr(kiln_sb *sb, const char *s)
{
    kiln_sb_put(sb, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
        if (*p == '"' || *p == '\\')
            kiln_sb_printf(sb, "\\%c", *p);
        else if (*p < 0x20)
            kiln_sb_printf(sb, "\\u%04x", *p);
        else
            kiln_sb_put(sb, (const char *)p, 1);
    }
    kiln_sb_put(sb, "\"", 1);
}

static void jnum(kiln_sb *sb, double v)
{
    if (isnan(v) || isinf(v))
        jstr(sb, isnan(v) ? "nan" : v < 0 ? "-inf" : "inf");
    else
        kiln_sb_printf(sb, "%.17g", v);
}

static void jtype(kiln_sb *sb, const kiln_graph *g, const kiln_type *t)
{
    kiln_sb_printf(sb, "{\"dtype\": \"%s\", \"shape\": ", kiln_dtype_name(t->dtype));
    if (t->rank < 0) {
        kiln_sb_printf(sb, "null}");
        return;
    }
    kiln_sb_put(sb, "[", 1);
    for (int i = 0; i < t->rank; i++) {
        if (i)
            kiln_sb_put(sb, ", ", 2);
        if (KILN_DIM_IS_STATIC(t->dims[i]))
            kiln_sb_printf(sb, "%lld", (long long)t->dims[i]);
        else {
            kiln_sb d = {0};
            kiln_dim_print(&g->syms, t->dims[i], &d);
            jstr(sb, d.s);
            kiln_sb_free(&d);
        }
    }
    kiln_sb_put(sb, "]}", 2);
}

void kiln_print_json(const kiln_graph *g, kiln_sb *sb)
{
    static const char *kinds[] = {"input", "weight", "const", "node"};
    kiln_sb_printf(sb, "{\"name\": ");
    jstr(sb, g->name);
    kiln_sb_printf(sb, ",\n \"values\": [");
    for (int i = 0; i < g->n_values; i++) {
        const kiln_value *v = &g->values[i];
        kiln_sb_printf(sb, "%s\n  {\"id\": %d, \"name\": ", i ? "," : "", i);
        jstr(sb, v->name);
        kiln_sb_printf(sb, ", \"kind\": \"%s\", \"type\": ", kinds[v->kind]);
        jtype(sb, g, &v->type);
        if (v->kind == KILN_VAL_NODE)
            kiln_sb_printf(sb, ", \"producer\": %d", v->producer);
        if (v->kind == KILN_VAL_WEIGHT || v->kind == KILN_VAL_CONST)
            kiln_sb_printf(sb, ", \"bytes\": %zu", v->nbytes);
        kiln_sb_put(sb, "}", 1);
    }
    kiln_sb_printf(sb, "],\n \"nodes\": [");
    for (int i = 0; i < g->n_nodes; i++) {
        const kiln_node *n = &g->nodes[i];
        kiln_sb_printf(sb, "%s\n  {\"id\": %d, \"op\": \"%s\", \"name\": ", i ? "," : "", i, n->op->name);
        jstr(sb, n->name ? n->name : "");
        kiln_sb_printf(sb, ", \"kernel\": %d, \"inputs\": [", n->kernel);
        for (int k = 0; k < n->n_inputs; k++)
            kiln_sb_printf(sb, "%s%d", k ? ", " : "", n->inputs[k]);
        kiln_sb_printf(sb, "], \"outputs\": [");
        for (int k = 0; k < n->n_outputs; k++)
            kiln_sb_printf(sb, "%s%d", k ? ", " : "", n->outputs[k]);
        kiln_sb_printf(sb, "], \"attrs\": {");
        for (int k = 0; k < n->n_attrs; k++) {
            const kiln_attr *a = &n->attrs[k];
            kiln_sb_printf(sb, "%s", k ? ", " : "");
            jstr(sb, a->name);
            kiln_sb_put(sb, ": ", 2);
            switch (a->kind) {
            case KILN_ATTR_INT: kiln_sb_printf(sb, "%lld", (long long)a->i); break;
            case KILN_ATTR_FLOAT: jnum(sb, a->f); break;
            case KILN_ATTR_STRING: jstr(sb, a->s); break;
            case KILN_ATTR_DTYPE: jstr(sb, kiln_dtype_name((kiln_dtype)a->i)); break;
            default:
                kiln_sb_put(sb, "[", 1);
                for (int j = 0; j < a->n; j++) {
                    if (j)
                        kiln_sb_put(sb, ", ", 2);
                    if (a->kind == KILN_ATTR_INTS)
                        kiln_sb_printf(sb, "%lld", (long long)a->ints[j]);
                    else if (a->kind == KILN_ATTR_FLOATS)
                        jnum(sb, a->floats[j]);
                    else
                        jstr(sb, a->strings[j]);
                }
                kiln_sb_put(sb, "]", 1);
            }
        }
        kiln_sb_put(sb, "}}", 2);
    }
    kiln_sb_printf(sb, "],\n \"inputs\": [");
    for (int i = 0; i < g->n_inputs; i++)
        kiln_sb_printf(sb, "%s%d", i ? ", " : "", g->inputs[i]);
    kiln_sb_printf(sb, "],\n \"outputs\": [");
    for (int i = 0; i < g->n_outputs; i++)
        kiln_sb_printf(sb, "%s%d", i ? ", " : "", g->outputs[i]);
    kiln_sb_printf(sb, "]}\n");
}
