/* dims.c - symbolic dimensions.
 *
 * Every expression is normalized through a polynomial (sum of coefficient x
 * product-of-atoms terms; atoms are variables and floor divisions that did
 * not divide exactly) and rebuilt in one canonical order, so `seq+past` and
 * `past+seq` intern to the same symbol and print the same way. Atom order is
 * by printed text, never by table position, so a graph printed and parsed
 * back canonicalizes identically.
 */
#include "kiln_ir.h"

#include <stdlib.h>
#include <string.h>

#define MAX_TERMS 16
#define MAX_ATOMS 8

typedef struct term {
    int64_t coef;
    int n;
    int atoms[MAX_ATOMS]; /* symbol ids, sorted by text */
} term;

typedef struct poly {
    int n;
    int ok; /* 0 when the expression got too big to normalize */
    term t[MAX_TERMS];
} poly;

static int intern(kiln_symtab *t, kiln_sym_kind kind, const char *name, kiln_dim a, kiln_dim b)
{
    for (int i = 0; i < t->n; i++) {
        kiln_sym *s = &t->syms[i];
        if (s->kind != kind)
            continue;
        if (kind == KILN_SYM_VAR ? strcmp(s->name, name) == 0 : (s->a == a && s->b == b))
            return i;
    }
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->syms = kiln_xrealloc(t->syms, sizeof *t->syms * (size_t)t->cap);
    }
    kiln_sym *s = &t->syms[t->n];
    s->kind = kind;
    s->name = name ? kiln_xstrdup(name) : NULL;
    s->a = a;
    s->b = b;
    return t->n++;
}

kiln_dim kiln_dim_var(kiln_symtab *t, const char *name)
{
    return KILN_DIM_FROM_SYM(intern(t, KILN_SYM_VAR, name, 0, 0));
}

/* ---- printing (also the atom order key) ---- */

static void print_prec(const kiln_symtab *t, kiln_dim d, int parent, kiln_sb *sb)
{
    if (d == KILN_DIM_ANY) {
        kiln_sb_put(sb, "?", 1);
        return;
    }
    if (d >= 0) {
        kiln_sb_printf(sb, "%lld", (long long)d);
        return;
    }
    const kiln_sym *s = &t->syms[KILN_DIM_SYM_ID(d)];
    if (s->kind == KILN_SYM_VAR) {
        kiln_sb_printf(sb, "%s", s->name);
        return;
    }
    int prec = (s->kind == KILN_SYM_ADD || s->kind == KILN_SYM_SUB) ? 1 : 2;
    const char *op = s->kind == KILN_SYM_ADD ? "+" : s->kind == KILN_SYM_SUB ? "-"
                   : s->kind == KILN_SYM_MUL ? "*" : "/";
    if (prec < parent)
        kiln_sb_put(sb, "(", 1);
    print_prec(t, s->a, prec, sb);
    kiln_sb_put(sb, op, 1);
    print_prec(t, s->b, prec + 1, sb);
    if (prec < parent)
        kiln_sb_put(sb, ")", 1);
}

void kiln_dim_print(const kiln_symtab *t, kiln_dim d, kiln_sb *sb) { print_prec(t, d, 0, sb); }

static int atom_cmp(const kiln_symtab *t, int a, int b)
{
    if (a == b)
        return 0;
    kiln_sb x = {0}, y = {0};
    print_prec(t, KILN_DIM_FROM_SYM(a), 3, &x);
    print_prec(t, KILN_DIM_FROM_SYM(b), 3, &y);
    int r = strcmp(x.s, y.s);
    kiln_sb_free(&x);
    kiln_sb_free(&y);
    return r;
}

/* ---- polynomial normal form ---- */

static int mono_cmp(const kiln_symtab *t, const term *a, const term *b)
{
    if (a->n != b->n)
        return b->n - a->n; /* higher degree first, constants last */
    for (int i = 0; i < a->n; i++) {
        int c = atom_cmp(t, a->atoms[i], b->atoms[i]);
        if (c)
            return c;
    }
    return 0;
}

static void poly_add_term(const kiln_symtab *t, poly *p, const term *x)
{
    if (!p->ok || x->coef == 0)
        return;
    for (int i = 0; i < p->n; i++)
        if (mono_cmp(t, &p->t[i], x) == 0) {
            p->t[i].coef += x->coef;
            if (p->t[i].coef == 0) {
                p->t[i] = p->t[p->n - 1];
                p->n--;
            }
            return;
        }
    if (p->n == MAX_TERMS) {
        p->ok = 0;
        return;
    }
    p->t[p->n++] = *x;
}

static void poly_const(poly *p, int64_t c)
{
    p->n = 0;
    p->ok = 1;
    if (c) {
        p->t[0].coef = c;
        p->t[0].n = 0;
        p->n = 1;
    }
}

static void poly_atom(poly *p, int id)
{
    p->ok = 1;
    p->n = 1;
    p->t[0].coef = 1;
    p->t[0].n = 1;
    p->t[0].atoms[0] = id;
}

static void to_poly(const kiln_symtab *t, kiln_dim d, poly *p);

static void poly_mul(const kiln_symtab *t, const poly *a, const poly *b, poly *r)
{
    r->n = 0;
    r->ok = a->ok && b->ok;
    for (int i = 0; r->ok && i < a->n; i++)
        for (int j = 0; r->ok && j < b->n; j++) {
            term x;
            x.coef = a->t[i].coef * b->t[j].coef;
            if (a->t[i].n + b->t[j].n > MAX_ATOMS) {
                r->ok = 0;
                break;
            }
            /* merge two sorted atom lists */
            int ia = 0, ib = 0;
            x.n = 0;
            while (ia < a->t[i].n || ib < b->t[j].n) {
                if (ib >= b->t[j].n ||
                    (ia < a->t[i].n && atom_cmp(t, a->t[i].atoms[ia], b->t[j].atoms[ib]) <= 0))
                    x.atoms[x.n++] = a->t[i].atoms[ia++];
                else
                    x.atoms[x.n++] = b->t[j].atoms[ib++];
            }
            poly_add_term(t, r, &x);
        }
}

static void to_poly(const kiln_symtab *t, kiln_dim d, poly *p)
{
    if (d >= 0) {
        poly_const(p, d);
        return;
    }
    if (d == KILN_DIM_ANY) {
        p->ok = 0;
        p->n = 0;
        return;
    }
    int id = KILN_DIM_SYM_ID(d);
    const kiln_sym *s = &t->syms[id];
    poly a, b;
    switch (s->kind) {
    case KILN_SYM_VAR:
    case KILN_SYM_DIV:
        poly_atom(p, id);
        return;
    case KILN_SYM_ADD:
    case KILN_SYM_SUB:
        to_poly(t, s->a, &a);
        to_poly(t, s->b, &b);
        *p = a;
        for (int i = 0; i < b.n; i++) {
            term x = b.t[i];
            if (s->kind == KILN_SYM_SUB)
                x.coef = -x.coef;
            poly_add_term(t, p, &x);
        }
        p->ok = a.ok && b.ok && p->ok;
        return;
    case KILN_SYM_MUL:
        to_poly(t, s->a, &a);
        to_poly(t, s->b, &b);
        poly_mul(t, &a, &b, p);
        return;
    }
}

static int cmp_ctx_terms(const kiln_symtab *t, const term *a, const term *b)
{
    int c = mono_cmp(t, a, b);
    if (c)
        return c;
    return a->coef < b->coef ? -1 : a->coef > b->coef;
}

static kiln_dim from_poly(kiln_symtab *t, poly *p)
{
    /* insertion sort: few terms */
    for (int i = 1; i < p->n; i++)
        for (int j = i; j > 0 && cmp_ctx_terms(t, &p->t[j - 1], &p->t[j]) > 0; j--) {
            term x = p->t[j];
            p->t[j] = p->t[j - 1];
            p->t[j - 1] = x;
        }
    if (p->n == 0)
        return 0;
    kiln_dim acc = KILN_DIM_ANY;
    for (int i = 0; i < p->n; i++) {
        term *x = &p->t[i];
        int64_t mag = x->coef < 0 ? -x->coef : x->coef;
        kiln_dim m;
        int k0 = 0;
        if (x->n == 0)
            m = mag;
        else if (mag != 1)
            m = mag; /* coefficient leads: 384*batch*seq */
        else
            m = KILN_DIM_FROM_SYM(x->atoms[k0++]);
        for (int k = k0; k < x->n; k++)
            m = KILN_DIM_FROM_SYM(intern(t, KILN_SYM_MUL, NULL, m, KILN_DIM_FROM_SYM(x->atoms[k])));
        if (acc == KILN_DIM_ANY) {
            if (x->coef < 0) /* leading negative term: 0 - m */
                acc = KILN_DIM_FROM_SYM(intern(t, KILN_SYM_SUB, NULL, 0, m));
            else
                acc = m;
        } else {
            acc = KILN_DIM_FROM_SYM(
                intern(t, x->coef < 0 ? KILN_SYM_SUB : KILN_SYM_ADD, NULL, acc, m));
        }
    }
    return acc;
}

static kiln_dim combine(kiln_symtab *t, kiln_sym_kind kind, kiln_dim a, kiln_dim b)
{
    if (a == KILN_DIM_ANY || b == KILN_DIM_ANY)
        return KILN_DIM_ANY;
    if (a >= 0 && b >= 0) {
        switch (kind) {
        case KILN_SYM_ADD: return a + b;
        case KILN_SYM_SUB: return a - b >= 0 ? a - b : KILN_DIM_ANY;
        case KILN_SYM_MUL: return a * b;
        case KILN_SYM_DIV: return b ? a / b : KILN_DIM_ANY;
        default: return KILN_DIM_ANY;
        }
    }
    poly pa, pb, r;
    to_poly(t, a, &pa);
    to_poly(t, b, &pb);
    if (kind == KILN_SYM_MUL) {
        poly_mul(t, &pa, &pb, &r);
    } else if (kind == KILN_SYM_ADD || kind == KILN_SYM_SUB) {
        r = pa;
        for (int i = 0; i < pb.n; i++) {
            term x = pb.t[i];
            if (kind == KILN_SYM_SUB)
                x.coef = -x.coef;
            poly_add_term(t, &r, &x);
        }
        r.ok = r.ok && pa.ok && pb.ok;
    } else { /* DIV: exact when the divisor is one term dividing every term */
        r.ok = 0;
        if (b == 0)
            return KILN_DIM_ANY;
        if (pa.ok && pb.ok && pb.n == 1) {
            const term *dv = &pb.t[0];
            r.ok = 1;
            r.n = 0;
            for (int i = 0; i < pa.n && r.ok; i++) {
                term x = pa.t[i];
                if (dv->coef == 0 || x.coef % dv->coef) {
                    r.ok = 0;
                    break;
                }
                x.coef /= dv->coef;
                for (int k = 0; k < dv->n && r.ok; k++) { /* remove divisor atoms */
                    int found = -1;
                    for (int q = 0; q < x.n; q++)
                        if (x.atoms[q] == dv->atoms[k]) {
                            found = q;
                            break;
                        }
                    if (found < 0)
                        r.ok = 0;
                    else {
                        memmove(&x.atoms[found], &x.atoms[found + 1],
                                sizeof(int) * (size_t)(x.n - found - 1));
                        x.n--;
                    }
                }
                if (r.ok)
                    poly_add_term(t, &r, &x);
            }
        }
        if (!r.ok) {
            /* opaque floor division over canonical operands */
            if (!pa.ok || !pb.ok)
                return KILN_DIM_ANY;
            kiln_dim ca = from_poly(t, &pa), cb = from_poly(t, &pb);
            return KILN_DIM_FROM_SYM(intern(t, KILN_SYM_DIV, NULL, ca, cb));
        }
    }
    if (!r.ok)
        return KILN_DIM_ANY;
    /* a result with a negative constant only cannot be a size */
    if (r.n == 1 && r.t[0].n == 0 && r.t[0].coef < 0)
        return KILN_DIM_ANY;
    return from_poly(t, &r);
}

kiln_dim kiln_dim_add(kiln_symtab *t, kiln_dim a, kiln_dim b) { return combine(t, KILN_SYM_ADD, a, b); }
kiln_dim kiln_dim_sub(kiln_symtab *t, kiln_dim a, kiln_dim b) { return combine(t, KILN_SYM_SUB, a, b); }
kiln_dim kiln_dim_mul(kiln_symtab *t, kiln_dim a, kiln_dim b) { return combine(t, KILN_SYM_MUL, a, b); }
kiln_dim kiln_dim_div(kiln_symtab *t, kiln_dim a, kiln_dim b) { return combine(t, KILN_SYM_DIV, a, b); }

int64_t kiln_dim_eval(const kiln_symtab *t, kiln_dim d, const int64_t *vals)
{
    if (d >= 0)
        return d;
    if (d == KILN_DIM_ANY)
        return -1;
    int id = KILN_DIM_SYM_ID(d);
    if (id >= t->n)
        return -1;
    const kiln_sym *s = &t->syms[id];
    if (s->kind == KILN_SYM_VAR)
        return vals ? vals[id] : -1;
    int64_t a = kiln_dim_eval(t, s->a, vals), b = kiln_dim_eval(t, s->b, vals);
    if (a < 0 || b < 0)
        return -1;
    switch (s->kind) {
    case KILN_SYM_ADD: return a + b;
    case KILN_SYM_SUB: return a - b >= 0 ? a - b : -1;
    case KILN_SYM_MUL: return a * b;
    case KILN_SYM_DIV: return b ? a / b : -1;
    default: return -1;
    }
}

kiln_dim kiln_dim_import(kiln_symtab *dst, const kiln_symtab *src, kiln_dim d)
{
    if (!KILN_DIM_IS_SYM(d))
        return d;
    const kiln_sym *s = &src->syms[KILN_DIM_SYM_ID(d)];
    if (s->kind == KILN_SYM_VAR)
        return kiln_dim_var(dst, s->name);
    kiln_dim a = kiln_dim_import(dst, src, s->a), b = kiln_dim_import(dst, src, s->b);
    return combine(dst, s->kind, a, b);
}

void kiln_symtab_free(kiln_symtab *t)
{
    for (int i = 0; i < t->n; i++)
        free(t->syms[i].name);
    free(t->syms);
    memset(t, 0, sizeof *t);
}
