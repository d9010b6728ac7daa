/* parse.c - reader for the text form. Recursive descent straight off the
 * characters; every error carries path:line:col. */
#include "kiln_ir.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct P {
    const char *s;
    size_t pos;
    int line, col;
    const char *path;
    kiln_err *err;
    int failed;
    kiln_graph *g;
} P;

static int errat_v(P *p, int line, int col, const char *fmt, va_list ap)
{
    if (p->failed)
        return -1;
    p->failed = 1;
    char msg[768];
    vsnprintf(msg, sizeof msg, fmt, ap);
    return kiln_errf(p->err, "%s:%d:%d: error: %s", p->path, line, col, msg);
}

__attribute__((format(printf, 2, 3))) static int err(P *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errat_v(p, p->line, p->col, fmt, ap);
    va_end(ap);
    return -1;
}

__attribute__((format(printf, 4, 5))) static int errat(P *p, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errat_v(p, line, col, fmt, ap);
    va_end(ap);
    return -1;
}

static int cur(P *p) { return (unsigned char)p->s[p->pos]; }

static void adv(P *p)
{
    if (!p->s[p->pos])
        return;
    if (p->s[p->pos] == '\n') {
        p->line++;
        p->col = 1;
    } else {
        p->col++;
    }
    p->pos++;
}

static void ws(P *p)
{
    for (;;) {
        int c = cur(p);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            adv(p);
        else if (c == '#')
            while (cur(p) && cur(p) != '\n')
                adv(p);
        else
            return;
    }
}

static int accept(P *p, int ch)
{
    ws(p);
    if (cur(p) == ch) {
        adv(p);
        return 1;
    }
    return 0;
}

static int expect(P *p, int ch, const char *what)
{
    if (accept(p, ch))
        return 0;
    if (!cur(p))
        return err(p, "expected '%c' %s, found end of file", ch, what);
    return err(p, "expected '%c' %s, found '%c'", ch, what, cur(p));
}

static int is_ident_start(int c) { return isalpha(c) || c == '_'; }
static int is_ident_char(int c) { return isalnum(c) || c == '_' || c == '.'; }

/* Identifier into buf; 0 if none here. */
static int ident(P *p, char *buf, size_t len)
{
    ws(p);
    if (!is_ident_start(cur(p)))
        return 0;
    size_t n = 0;
    while (is_ident_char(cur(p))) {
        if (n + 1 < len)
            buf[n++] = (char)cur(p);
        adv(p);
    }
    buf[n] = 0;
    return 1;
}

static int peek_keyword(P *p, const char *kw)
{
    ws(p);
    size_t n = strlen(kw);
    return strncmp(p->s + p->pos, kw, n) == 0 && !is_ident_char((unsigned char)p->s[p->pos + n]);
}

static int keyword(P *p, const char *kw)
{
    if (!peek_keyword(p, kw))
        return 0;
    for (size_t i = 0; kw[i]; i++)
        adv(p);
    return 1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Quoted string; caller frees *out. */
static int string(P *p, char **out)
{
    ws(p);
    if (cur(p) != '"')
        return err(p, "expected a string");
    adv(p);
    kiln_sb b = {0};
    kiln_sb_put(&b, "", 0);
    for (;;) {
        int c = cur(p);
        if (!c || c == '\n') {
            kiln_sb_free(&b);
            return err(p, "unterminated string");
        }
        adv(p);
        if (c == '"')
            break;
        if (c == '\\') {
            int e = cur(p);
            adv(p);
            char ch;
            if (e == 'n')
                ch = '\n';
            else if (e == 't')
                ch = '\t';
            else if (e == '"' || e == '\\')
                ch = (char)e;
            else if (e == 'x') {
                int h1 = hexval(cur(p));
                adv(p);
                int h2 = hexval(cur(p));
                adv(p);
                if (h1 < 0 || h2 < 0) {
                    kiln_sb_free(&b);
                    return err(p, "bad \\x escape in string");
                }
                ch = (char)(h1 * 16 + h2);
            } else {
                kiln_sb_free(&b);
                return err(p, "unknown escape '\\%c' in string", e);
            }
            kiln_sb_put(&b, &ch, 1);
        } else {
            char ch = (char)c;
            kiln_sb_put(&b, &ch, 1);
        }
    }
    *out = b.s;
    return 0;
}

static int int64_tok(P *p, int64_t *v)
{
    ws(p);
    const char *start = p->s + p->pos;
    char *end;
    errno = 0;
    long long x = strtoll(start, &end, 10);
    if (end == start || (!isdigit((unsigned char)*start) && *start != '-'))
        return err(p, "expected an integer");
    if (errno == ERANGE)
        return err(p, "integer out of range");
    if (*end == '.' || *end == 'e' || *end == 'E')
        return err(p, "expected an integer, found a float");
    while (p->s + p->pos < end)
        adv(p);
    *v = x;
    return 0;
}

static int uint64_tok(P *p, uint64_t *v)
{
    ws(p);
    const char *start = p->s + p->pos;
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*start))
        return err(p, "expected a non-negative integer");
    unsigned long long x = strtoull(start, &end, 10);
    if (errno == ERANGE)
        return err(p, "integer out of range");
    while (p->s + p->pos < end)
        adv(p);
    *v = x;
    return 0;
}

/* Number of any form: ints, floats, inf, nan. */
static int number(P *p, double *v, int *is_float)
{
    ws(p);
    int neg = 0;
    if (cur(p) == '-') {
        neg = 1;
        adv(p);
    }
    if (keyword(p, "inf")) {
        *v = neg ? -INFINITY : INFINITY;
        *is_float = 1;
        return 0;
    }
    if (keyword(p, "nan")) {
        *v = NAN;
        *is_float = 1;
        return 0;
    }
    const char *start = p->s + p->pos;
    if (!isdigit((unsigned char)*start) && *start != '.')
        return err(p, "expected a number");
    char *end;
    double x = strtod(start, &end);
    if (end == start)
        return err(p, "expected a number");
    *is_float = 0;
    for (const char *q = start; q < end; q++)
        if (*q == '.' || *q == 'e' || *q == 'E')
            *is_float = 1;
    while (p->s + p->pos < end)
        adv(p);
    *v = neg ? -x : x;
    return 0;
}

/* %name or %"quoted name"; caller frees. */
static int value_name(P *p, char **out)
{
    ws(p);
    if (cur(p) != '%')
        return err(p, "expected a value name starting with '%%'");
    adv(p);
    if (cur(p) == '"')
        return string(p, out);
    kiln_sb b = {0};
    while (is_ident_char(cur(p))) {
        char ch = (char)cur(p);
        kiln_sb_put(&b, &ch, 1);
        adv(p);
    }
    if (!b.len)
        return err(p, "empty value name");
    *out = b.s;
    return 0;
}

/* ---- dims and types ---- */

static int dim_expr(P *p, kiln_dim *d);

static int dim_factor(P *p, kiln_dim *d)
{
    ws(p);
    char name[128];
    if (accept(p, '(')) {
        if (dim_expr(p, d))
            return -1;
        return expect(p, ')', "to close a dimension expression");
    }
    if (accept(p, '?')) {
        *d = KILN_DIM_ANY;
        return 0;
    }
    if (isdigit(cur(p))) {
        int64_t v;
        if (int64_tok(p, &v))
            return -1;
        *d = v;
        return 0;
    }
    if (ident(p, name, sizeof name)) {
        *d = kiln_dim_var(&p->g->syms, name);
        return 0;
    }
    return err(p, "expected a dimension (integer, symbol or '?')");
}

static int dim_term(P *p, kiln_dim *d)
{
    if (dim_factor(p, d))
        return -1;
    for (;;) {
        ws(p);
        int op = cur(p);
        if (op != '*' && op != '/')
            return 0;
        adv(p);
        kiln_dim r;
        if (dim_factor(p, &r))
            return -1;
        *d = op == '*' ? kiln_dim_mul(&p->g->syms, *d, r) : kiln_dim_div(&p->g->syms, *d, r);
    }
}

static int dim_expr(P *p, kiln_dim *d)
{
    if (dim_term(p, d))
        return -1;
    for (;;) {
        ws(p);
        int op = cur(p);
        if (op != '+' && op != '-')
            return 0;
        adv(p);
        kiln_dim r;
        if (dim_term(p, &r))
            return -1;
        *d = op == '+' ? kiln_dim_add(&p->g->syms, *d, r) : kiln_dim_sub(&p->g->syms, *d, r);
    }
}

static int type(P *p, kiln_type *t)
{
    char name[64];
    memset(t, 0, sizeof *t);
    ws(p);
    int line = p->line, col = p->col;
    if (!ident(p, name, sizeof name))
        return err(p, "expected a type like f32[2, 3]");
    t->dtype = kiln_dtype_from_name(name);
    if (t->dtype == KILN_DT_INVALID)
        return errat(p, line, col, "unknown element type '%s'", name);
    if (expect(p, '[', "after the element type"))
        return -1;
    if (accept(p, '*')) {
        t->rank = -1;
        return expect(p, ']', "after '*'");
    }
    if (accept(p, ']'))
        return 0;
    for (;;) {
        if (t->rank == KILN_MAX_RANK)
            return err(p, "rank exceeds %d", KILN_MAX_RANK);
        if (dim_expr(p, &t->dims[t->rank++]))
            return -1;
        if (accept(p, ']'))
            return 0;
        if (expect(p, ',', "between dimensions"))
            return -1;
    }
}

/* ---- attributes ---- */

static int attr_value(P *p, const kiln_attr_spec *spec, kiln_attr *a)
{
    a->kind = spec->kind;
    double v;
    int isf;
    switch (spec->kind) {
    case KILN_ATTR_INT:
        return int64_tok(p, &a->i);
    case KILN_ATTR_FLOAT:
        if (number(p, &v, &isf))
            return -1;
        a->f = v;
        return 0;
    case KILN_ATTR_STRING:
        return string(p, &a->s);
    case KILN_ATTR_DTYPE: {
        char name[64];
        int line = (ws(p), p->line), col = p->col;
        if (!ident(p, name, sizeof name))
            return err(p, "expected an element type name");
        a->i = kiln_dtype_from_name(name);
        if (a->i == KILN_DT_INVALID)
            return errat(p, line, col, "unknown element type '%s'", name);
        return 0;
    }
    default:
        break;
    }
    if (expect(p, '[', "to open a list attribute"))
        return -1;
    int cap = 0;
    if (accept(p, ']'))
        goto empty;
    for (;;) {
        if (a->n == cap) {
            cap = cap ? cap * 2 : 8;
            if (spec->kind == KILN_ATTR_INTS)
                a->ints = kiln_xrealloc(a->ints, sizeof(int64_t) * (size_t)cap);
            else if (spec->kind == KILN_ATTR_FLOATS)
                a->floats = kiln_xrealloc(a->floats, sizeof(double) * (size_t)cap);
            else
                a->strings = kiln_xrealloc(a->strings, sizeof(char *) * (size_t)cap);
        }
        if (spec->kind == KILN_ATTR_INTS) {
            if (int64_tok(p, &a->ints[a->n]))
                return -1;
        } else if (spec->kind == KILN_ATTR_FLOATS) {
            if (number(p, &a->floats[a->n], &isf))
                return -1;
        } else {
            a->strings[a->n] = NULL;
            if (string(p, &a->strings[a->n])) {
                return -1;
            }
        }
        a->n++;
        if (accept(p, ']'))
            break;
        if (expect(p, ',', "between list elements"))
            return -1;
    }
empty:
    /* lists always own an array so copies and frees are uniform */
    if (spec->kind == KILN_ATTR_INTS && !a->ints)
        a->ints = kiln_xmalloc(sizeof(int64_t));
    if (spec->kind == KILN_ATTR_FLOATS && !a->floats)
        a->floats = kiln_xmalloc(sizeof(double));
    if (spec->kind == KILN_ATTR_STRINGS && !a->strings)
        a->strings = kiln_xcalloc(1, sizeof(char *));
    return 0;
}

/* ---- statements ---- */

static int const_data(P *p, const kiln_type *t, void **data, size_t *nbytes)
{
    int64_t n = kiln_type_numel(t);
    size_t nb = kiln_dtype_storage(t->dtype, n);
    unsigned char *buf = kiln_xcalloc(1, nb + 8);
    *data = buf;
    *nbytes = nb;
    if (keyword(p, "hex")) {
        char *hex = NULL;
        int line = (ws(p), p->line), col = p->col;
        if (string(p, &hex))
            return -1;
        size_t hl = strlen(hex);
        if (hl != nb * 2) {
            free(hex);
            return errat(p, line, col, "hex data has %zu bytes, type needs %zu", hl / 2, nb);
        }
        for (size_t i = 0; i < nb; i++) {
            int h1 = hexval(hex[2 * i]), h2 = hexval(hex[2 * i + 1]);
            if (h1 < 0 || h2 < 0) {
                free(hex);
                return errat(p, line, col, "bad hex digit in data");
            }
            buf[i] = (unsigned char)(h1 * 16 + h2);
        }
        free(hex);
        return 0;
    }
    if (kiln_dtype_get(t->dtype)->is_quant)
        return err(p, "block-quantized constants must be given as hex data");
    if (expect(p, '[', "to open constant data"))
        return -1;
    int64_t i = 0;
    if (!accept(p, ']')) {
        for (;;) {
            int line = (ws(p), p->line), col = p->col;
            if (i >= n)
                return errat(p, line, col, "more than %lld elements for this type", (long long)n);
            if (kiln_dtype_get(t->dtype)->is_int || t->dtype == KILN_BOOL) {
                if (t->dtype == KILN_U64) {
                    uint64_t u;
                    if (uint64_tok(p, &u))
                        return -1;
                    ((uint64_t *)buf)[i] = u;
                } else {
                    int64_t v;
                    if (int64_tok(p, &v))
                        return -1;
                    kiln_store_i64(t->dtype, buf, i, v);
                }
            } else {
                double v;
                int isf;
                if (number(p, &v, &isf))
                    return -1;
                kiln_store_f64(t->dtype, buf, i, v);
            }
            i++;
            if (accept(p, ']'))
                break;
            if (expect(p, ',', "between constant elements"))
                return -1;
        }
    }
    if (i != n)
        return err(p, "constant has %lld elements, type needs %lld", (long long)i, (long long)n);
    return 0;
}

static int lookup(P *p, const char *name, int line, int col)
{
    int id = kiln_graph_find(p->g, name);
    if (id < 0)
        return errat(p, line, col, "use of undefined value %%%s", name);
    return id;
}

#define MAX_RESULTS KILN_MAX_OP_OUTPUTS

static int node_stmt(P *p)
{
    int line = p->line, col = p->col;
    char *names[MAX_RESULTS] = {0};
    kiln_type decl[MAX_RESULTS];
    int has_decl[MAX_RESULTS] = {0};
    int nres = 0, rc = -1;
    int inputs[KILN_MAX_OP_INPUTS];
    int nin = 0;
    kiln_attr attrs[32];
    int nattr = 0;
    char *loc = NULL;
    memset(attrs, 0, sizeof attrs);

    for (;;) {
        if (nres == MAX_RESULTS) {
            err(p, "too many results");
            goto out;
        }
        if (value_name(p, &names[nres]))
            goto out;
        nres++;
        if (accept(p, ':')) {
            if (type(p, &decl[nres - 1]))
                goto out;
            has_decl[nres - 1] = 1;
        }
        if (!accept(p, ','))
            break;
    }
    if (expect(p, '=', "after the results"))
        goto out;
    char opname[64];
    ws(p);
    int oline = p->line, ocol = p->col;
    if (!ident(p, opname, sizeof opname)) {
        err(p, "expected an op name");
        goto out;
    }
    const kiln_op_def *op = kiln_op_find(opname);
    if (!op) {
        errat(p, oline, ocol, "unknown op '%s'", opname);
        goto out;
    }
    if (expect(p, '(', "to open the operand list"))
        goto out;
    if (!accept(p, ')')) {
        for (;;) {
            ws(p);
            int vline = p->line, vcol = p->col;
            if (nin == KILN_MAX_OP_INPUTS) {
                err(p, "too many operands");
                goto out;
            }
            if (accept(p, '_')) {
                inputs[nin++] = -1;
            } else {
                char *vn = NULL;
                if (value_name(p, &vn))
                    goto out;
                int id = lookup(p, vn, vline, vcol);
                free(vn);
                if (id < 0)
                    goto out;
                inputs[nin++] = id;
            }
            if (accept(p, ')'))
                break;
            if (expect(p, ',', "between operands"))
                goto out;
        }
    }
    if (accept(p, '{') && !accept(p, '}')) {
        for (;;) {
            char an[64];
            ws(p);
            int aline = p->line, acol = p->col;
            if (!ident(p, an, sizeof an)) {
                err(p, "expected an attribute name");
                goto out;
            }
            const kiln_attr_spec *spec = kiln_op_attr_spec(op, an);
            if (!spec) {
                errat(p, aline, acol, "op %s has no attribute '%s'", op->name, an);
                goto out;
            }
            if (nattr == 32) {
                err(p, "too many attributes");
                goto out;
            }
            for (int k = 0; k < nattr; k++)
                if (strcmp(attrs[k].name, an) == 0) {
                    errat(p, aline, acol, "attribute '%s' given twice", an);
                    goto out;
                }
            attrs[nattr].name = kiln_xstrdup(an);
            nattr++;
            if (expect(p, '=', "after the attribute name") || attr_value(p, spec, &attrs[nattr - 1]))
                goto out;
            if (accept(p, '}'))
                break;
            if (expect(p, ',', "between attributes"))
                goto out;
        }
    }
    if (keyword(p, "loc") && string(p, &loc))
        goto out;
    int64_t kernel = -1;
    if (keyword(p, "kernel") && int64_tok(p, &kernel))
        goto out;
    if (kernel < -1 || kernel > 1000000000) {
        err(p, "kernel id out of range");
        goto out;
    }

    kiln_err e2;
    int ni = kiln_graph_add_node(p->g, opname, loc, inputs, nin, (const char *const *)names, nres,
                                 attrs, nattr, &e2);
    if (ni < 0) {
        errat(p, line, col, "%s", e2.msg);
        goto out;
    }
    /* declared result types must agree with inference; they may refine it */
    kiln_node *n = &p->g->nodes[ni];
    n->kernel = (int)kernel;
    for (int k = 0; k < nres; k++) {
        if (!has_decl[k])
            continue;
        kiln_value *v = &p->g->values[n->outputs[k]];
        kiln_type inf = v->type;
        int ok = inf.dtype == decl[k].dtype && (inf.rank < 0 || inf.rank == decl[k].rank);
        for (int d = 0; ok && inf.rank > 0 && d < inf.rank; d++)
            ok = inf.dims[d] == KILN_DIM_ANY || inf.dims[d] == decl[k].dims[d];
        if (!ok) {
            kiln_sb a = {0}, b = {0};
            kiln_type_print(&p->g->syms, &decl[k], &a);
            kiln_type_print(&p->g->syms, &inf, &b);
            errat(p, line, col, "%%%s: declared type %s, but %s gives %s", v->name, a.s, opname, b.s);
            kiln_sb_free(&a);
            kiln_sb_free(&b);
            goto out;
        }
        v->type = decl[k];
    }
    rc = 0;
out:
    for (int k = 0; k < nres; k++)
        free(names[k]);
    for (int k = 0; k < nattr; k++)
        kiln_attr_clear(&attrs[k]);
    free(loc);
    return rc;
}

static int graph_body(P *p)
{
    kiln_graph *g = p->g;
    for (;;) {
        ws(p);
        int line = p->line, col = p->col;
        if (accept(p, '}'))
            return 0;
        if (!cur(p))
            return err(p, "expected '}' to close the graph, found end of file");
        if (keyword(p, "sym")) {
            for (;;) {
                char name[128];
                if (!ident(p, name, sizeof name))
                    return err(p, "expected a symbol name");
                kiln_dim_var(&g->syms, name);
                if (!accept(p, ','))
                    break;
            }
        } else if (peek_keyword(p, "input") || peek_keyword(p, "weight") ||
                   peek_keyword(p, "const")) {
            int is_input = keyword(p, "input");
            int is_weight = !is_input && keyword(p, "weight");
            if (!is_input && !is_weight)
                keyword(p, "const");
            char *name = NULL;
            kiln_type t;
            if (value_name(p, &name))
                return -1;
            if (expect(p, ':', "after the value name") || type(p, &t)) {
                free(name);
                return -1;
            }
            kiln_err e2;
            int id;
            if (is_input) {
                id = kiln_graph_add_input(g, name, &t, &e2);
            } else if (is_weight) {
                char *path = NULL;
                uint64_t off = 0;
                if (expect(p, '@', "before the weight file") || string(p, &path)) {
                    free(name);
                    return -1;
                }
                if (!keyword(p, "offset") || uint64_tok(p, &off)) {
                    free(name);
                    free(path);
                    return err(p, "expected 'offset N' after the weight file");
                }
                int f = kiln_graph_add_file(g, path);
                free(path);
                id = kiln_graph_add_weight(g, name, &t, f, off, &e2);
            } else {
                if (expect(p, '=', "before constant data")) {
                    free(name);
                    return -1;
                }
                if (kiln_type_numel(&t) < 0) {
                    free(name);
                    return errat(p, line, col, "constant must have a static shape");
                }
                void *data = NULL;
                size_t nb = 0;
                if (const_data(p, &t, &data, &nb)) {
                    free(data);
                    free(name);
                    return -1;
                }
                id = kiln_graph_add_const(g, name, &t, data, nb, &e2);
                free(data);
            }
            free(name);
            if (id < 0)
                return errat(p, line, col, "%s", e2.msg);
        } else if (keyword(p, "output")) {
            for (;;) {
                ws(p);
                int vl = p->line, vc = p->col;
                char *name = NULL;
                if (value_name(p, &name))
                    return -1;
                int id = lookup(p, name, vl, vc);
                free(name);
                if (id < 0)
                    return -1;
                g->outputs = kiln_xrealloc(g->outputs, sizeof(int) * (size_t)(g->n_outputs + 1));
                g->outputs[g->n_outputs++] = id;
                if (!accept(p, ','))
                    break;
            }
        } else if (cur(p) == '%') {
            if (node_stmt(p))
                return -1;
        } else {
            return err(p, "expected 'input', 'weight', 'const', 'sym', 'output' or a node");
        }
    }
}

kiln_graph *kiln_parse_string(const char *text, const char *path, const char *base_dir,
                              kiln_err *e)
{
    P p = {.s = text, .pos = 0, .line = 1, .col = 1, .path = path ? path : "<string>", .err = e};
    int64_t ver;
    if (!keyword(&p, "kir")) {
        err(&p, "expected 'kir VERSION' at the start of the file");
        return NULL;
    }
    if (int64_tok(&p, &ver))
        return NULL;
    if (ver != KILN_IR_TEXT_VERSION) {
        err(&p, "unsupported text format version %lld (this kiln reads %d)", (long long)ver,
            KILN_IR_TEXT_VERSION);
        return NULL;
    }
    if (!keyword(&p, "graph")) {
        err(&p, "expected 'graph'");
        return NULL;
    }
    char *name = NULL;
    char nbuf[256];
    ws(&p);
    if (cur(&p) == '"') {
        if (string(&p, &name))
            return NULL;
    } else if (ident(&p, nbuf, sizeof nbuf)) {
        name = kiln_xstrdup(nbuf);
    }
    p.g = kiln_graph_new(name ? name : "main");
    free(name);
    if (base_dir)
        p.g->base_dir = kiln_xstrdup(base_dir);
    if (expect(&p, '{', "to open the graph") || graph_body(&p)) {
        kiln_graph_free(p.g);
        return NULL;
    }
    ws(&p);
    if (cur(&p)) {
        err(&p, "unexpected text after the graph");
        kiln_graph_free(p.g);
        return NULL;
    }
    return p.g;
}

kiln_graph *kiln_parse_file(const char *path, kiln_err *e)
{
    char *text;
    if (kiln_read_file(path, &text, NULL, e))
        return NULL;
    char *dir = kiln_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    kiln_graph *g = kiln_parse_string(text, path, dir, e);
    free(dir);
    free(text);
    return g;
}
