/* print.c - the text form of a graph (see docs/ir.md for the grammar).
 * Print, parse and print again gives identical text. */
#include "kiln_ir.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Inline constants up to this many elements print as numbers, larger ones
 * as hex bytes (still exact, and compact). */
#define LIST_LIMIT 64

static int ident_char(int ch) { return isalnum(ch) || ch == '_' || ch == '.'; }

static void print_string(kiln_sb *sb, const char *s)
{
    kiln_sb_put(sb, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            kiln_sb_printf(sb, "\\%c", *p);
        else if (*p == '\n')
            kiln_sb_put(sb, "\\n", 2);
        else if (*p == '\t')
            kiln_sb_put(sb, "\\t", 2);
        else if (*p < 0x20 || *p == 0x7f)
            kiln_sb_printf(sb, "\\x%02x", *p);
        else
            kiln_sb_put(sb, (const char *)p, 1);
    }
    kiln_sb_put(sb, "\"", 1);
}

static void print_value_name(kiln_sb *sb, const char *name)
{
    int plain = name[0] != 0;
    for (const char *p = name; *p; p++)
        plain &= ident_char((unsigned char)*p);
    kiln_sb_put(sb, "%", 1);
    if (plain)
        kiln_sb_printf(sb, "%s", name);
    else
        print_string(sb, name);
}

/* Doubles print with 17 significant digits, marked as floats by a '.', 'e',
 * "inf" or "nan" so the text says which attributes are floats. */
static void print_double(kiln_sb *sb, double v, int digits, int mark)
{
    if (isnan(v)) {
        kiln_sb_printf(sb, "nan");
        return;
    }
    if (isinf(v)) {
        kiln_sb_printf(sb, v < 0 ? "-inf" : "inf");
        return;
    }
    char buf[64];
    /* shortest text that reads back as the same value */
    for (int d = 1; d <= digits; d++) {
        snprintf(buf, sizeof buf, "%.*g", d, v);
        if (digits <= 9 ? (float)strtod(buf, NULL) == (float)v : strtod(buf, NULL) == v)
            break;
    }
    if (mark && !strpbrk(buf, ".e"))
        strcat(buf, ".0");
    kiln_sb_printf(sb, "%s", buf);
}

static void print_attr(kiln_sb *sb, const kiln_attr *a)
{
    kiln_sb_printf(sb, "%s = ", a->name);
    switch (a->kind) {
    case KILN_ATTR_INT: kiln_sb_printf(sb, "%lld", (long long)a->i); break;
    case KILN_ATTR_FLOAT: print_double(sb, a->f, 17, 1); break;
    case KILN_ATTR_STRING: print_string(sb, a->s ? a->s : ""); break;
    case KILN_ATTR_DTYPE: kiln_sb_printf(sb, "%s", kiln_dtype_name((kiln_dtype)a->i)); break;
    case KILN_ATTR_INTS:
    case KILN_ATTR_FLOATS:
    case KILN_ATTR_STRINGS:
        kiln_sb_put(sb, "[", 1);
        for (int i = 0; i < a->n; i++) {
            if (i)
                kiln_sb_put(sb, ", ", 2);
            if (a->kind == KILN_ATTR_INTS)
                kiln_sb_printf(sb, "%lld", (long long)a->ints[i]);
            else if (a->kind == KILN_ATTR_FLOATS)
                print_double(sb, a->floats[i], 17, 1);
            else
                print_string(sb, a->strings[i]);
        }
        kiln_sb_put(sb, "]", 1);
        break;
    }
}

static void print_const_data(kiln_sb *sb, const kiln_value *v)
{
    int64_t n = kiln_type_numel(&v->type);
    kiln_dtype dt = v->type.dtype;
    const kiln_dtype_info *di = kiln_dtype_get(dt);
    if (di->is_quant || n > LIST_LIMIT) {
        const unsigned char *p = v->data;
        kiln_sb_put(sb, "hex \"", 5);
        for (size_t i = 0; i < v->nbytes; i++)
            kiln_sb_printf(sb, "%02x", p[i]);
        kiln_sb_put(sb, "\"", 1);
        return;
    }
    kiln_sb_put(sb, "[", 1);
    for (int64_t i = 0; i < n; i++) {
        if (i)
            kiln_sb_put(sb, ", ", 2);
        if (dt == KILN_U64)
            kiln_sb_printf(sb, "%llu", (unsigned long long)((const uint64_t *)v->data)[i]);
        else if (di->is_int || dt == KILN_BOOL)
            kiln_sb_printf(sb, "%lld", (long long)kiln_load_i64(dt, v->data, i));
        else
            print_double(sb, kiln_load_f64(dt, v->data, i), dt == KILN_F64 ? 17 : 9, 0);
    }
    kiln_sb_put(sb, "]", 1);
}

static void print_typed(kiln_sb *sb, const kiln_graph *g, const kiln_value *v)
{
    print_value_name(sb, v->name);
    kiln_sb_put(sb, " : ", 3);
    kiln_type_print(&g->syms, &v->type, sb);
}

void kiln_print(const kiln_graph *g, kiln_sb *sb)
{
    kiln_sb_printf(sb, "kir %d\ngraph ", KILN_IR_TEXT_VERSION);
    print_string(sb, g->name ? g->name : "main");
    kiln_sb_put(sb, " {\n", 3);
    int nvars = 0;
    for (int i = 0; i < g->syms.n; i++)
        if (g->syms.syms[i].kind == KILN_SYM_VAR) {
            kiln_sb_printf(sb, "%s%s", nvars ? ", " : "  sym ", g->syms.syms[i].name);
            nvars++;
        }
    if (nvars)
        kiln_sb_put(sb, "\n", 1);
    for (int i = 0; i < g->n_inputs; i++) {
        kiln_sb_put(sb, "  input ", 8);
        print_typed(sb, g, &g->values[g->inputs[i]]);
        kiln_sb_put(sb, "\n", 1);
    }
    for (int i = 0; i < g->n_values; i++) {
        const kiln_value *v = &g->values[i];
        if (v->kind == KILN_VAL_WEIGHT) {
            kiln_sb_put(sb, "  weight ", 9);
            print_typed(sb, g, v);
            kiln_sb_put(sb, " @ ", 3);
            print_string(sb, g->files[v->file].path);
            kiln_sb_printf(sb, " offset %llu\n", (unsigned long long)v->offset);
        } else if (v->kind == KILN_VAL_CONST) {
            kiln_sb_put(sb, "  const ", 8);
            print_typed(sb, g, v);
            kiln_sb_put(sb, " = ", 3);
            print_const_data(sb, v);
            kiln_sb_put(sb, "\n", 1);
        }
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const kiln_node *n = &g->nodes[i];
        kiln_sb_put(sb, "  ", 2);
        for (int k = 0; k < n->n_outputs; k++) {
            if (k)
                kiln_sb_put(sb, ", ", 2);
            print_typed(sb, g, &g->values[n->outputs[k]]);
        }
        kiln_sb_printf(sb, " = %s(", n->op->name);
        for (int k = 0; k < n->n_inputs; k++) {
            if (k)
                kiln_sb_put(sb, ", ", 2);
            if (n->inputs[k] < 0)
                kiln_sb_put(sb, "_", 1);
            else
                print_value_name(sb, g->values[n->inputs[k]].name);
        }
        kiln_sb_put(sb, ")", 1);
        if (n->n_attrs) {
            kiln_sb_put(sb, " {", 2);
            for (int k = 0; k < n->n_attrs; k++) {
                if (k)
                    kiln_sb_put(sb, ", ", 2);
                print_attr(sb, &n->attrs[k]);
            }
            kiln_sb_put(sb, "}", 1);
        }
        if (n->name) {
            kiln_sb_put(sb, " loc ", 5);
            print_string(sb, n->name);
        }
        if (n->kernel >= 0)
            kiln_sb_printf(sb, " kernel %d", n->kernel);
        kiln_sb_put(sb, "\n", 1);
    }
    if (g->n_outputs) {
        kiln_sb_put(sb, "  output ", 9);
        for (int i = 0; i < g->n_outputs; i++) {
            if (i)
                kiln_sb_put(sb, ", ", 2);
            print_value_name(sb, g->values[g->outputs[i]].name);
        }
        kiln_sb_put(sb, "\n", 1);
    }
    kiln_sb_put(sb, "}\n", 2);
}

int kiln_print_file(const kiln_graph *g, FILE *f)
{
    kiln_sb sb = {0};
    kiln_print(g, &sb);
    size_t w = fwrite(sb.s, 1, sb.len, f);
    int ok = w == sb.len;
    kiln_sb_free(&sb);
    return ok ? 0 : -1;
}
