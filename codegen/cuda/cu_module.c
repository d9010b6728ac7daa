/* cu_module.c - the CUDA code generator's driver: lowers every node to CUDA
 * C kernels (deduplicated by text), compiles the translation unit with
 * NVRTC for each target architecture, and writes the model object: the
 * descriptor plus the program blob (kiln_cuda.h), assembled with `cc`. */
#include "cu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int cu_fail(cu *c, const kiln_node *n, const char *fmt, ...)
{
    if (c->failed)
        return -1;
    c->failed = 1;
    char msg[700], lab[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n)
        kiln_errf(c->err, "%s: %s (CUDA target)", kiln_node_label(c->g, n, lab, sizeof lab), msg);
    else
        kiln_errf(c->err, "%s (CUDA target)", msg);
    return -1;
}

const kiln_type *cu_vt(cu *c, int vid) { return &c->g->values[vid].type; }

int cu_root(cu *c, int vid) { return kiln_plan_root(c->plan, vid); }

int cu_has_buf(cu *c, int vid)
{
    if (vid < 0)
        return 0;
    kiln_buf_kind k = c->plan->bufs[cu_root(c, vid)].kind;
    return k != KILN_BUF_NONE && k != KILN_BUF_ALIAS;
}

int cu_overlap(cu *c, int a, int b)
{
    int ra = cu_root(c, a), rb = cu_root(c, b);
    if (ra == rb)
        return 1;
    const kiln_buf *x = &c->plan->bufs[ra], *y = &c->plan->bufs[rb];
    if (x->kind != y->kind || (x->kind != KILN_BUF_ARENA && x->kind != KILN_BUF_INPUT && x->kind != KILN_BUF_OUTPUT))
        return 0;
    if (x->kind != KILN_BUF_ARENA) /* distinct caller buffers (KV roles may share: treat as overlapping) */
        return c->lm;
    return x->offset < y->offset + y->bytes && y->offset < x->offset + x->bytes;
}

const char *cu_ctype(kiln_dtype dt)
{
    switch (dt) {
    case KILN_F32: return "float";
    case KILN_F64: return "double";
    case KILN_F16: case KILN_BF16: return "u16";
    case KILN_I8: return "i8";
    case KILN_U8: case KILN_BOOL: return "u8";
    case KILN_I16: return "i16";
    case KILN_U16: return "u16";
    case KILN_I32: return "i32";
    case KILN_U32: return "u32";
    case KILN_I64: return "i64";
    case KILN_U64: return "u64";
    default: return kiln_dtype_get(dt)->is_quant ? "u8" : NULL;
    }
}

int cu_dtype_ok(kiln_dtype dt) { return cu_ctype(dt) != NULL && !kiln_dtype_get(dt)->is_quant; }

const char *cu_ctyp(kiln_dtype dt)
{
    if (dt == KILN_F64)
        return "double";
    if (dt == KILN_F32 || dt == KILN_F16 || dt == KILN_BF16)
        return "float";
    return "i64";
}

/* ---- kernel builder ---- */

void ck_begin(cu *c, ck *k, int node, int block)
{
    memset(k, 0, sizeof *k);
    k->c = c;
    k->node = node;
    k->n = node >= 0 ? &c->g->nodes[node] : NULL;
    k->block = block;
    k->subst_vid = -1;
}

static const char *pool(ck *k, char *s)
{
    if (k->npool == (int)(sizeof k->pool / sizeof *k->pool)) {
        cu_fail(k->c, k->n, "kernel too complex");
        free(s);
        return "0";
    }
    k->pool[k->npool++] = s;
    return s;
}

const char *ck_s(ck *k, const char *fmt, ...)
{
    kiln_sb sb = {0};
    va_list ap;
    va_start(ap, fmt);
    kiln_sb_vprintf(&sb, fmt, ap);
    va_end(ap);
    if (!sb.s)
        return pool(k, kiln_xstrdup(""));
    return pool(k, sb.s);
}

void ck_line(ck *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kiln_sb_put(&k->body, "  ", 2);
    kiln_sb_vprintf(&k->body, fmt, ap);
    va_end(ap);
    kiln_sb_put(&k->body, "\n", 1);
}

static int sym_index(cu *c, int id)
{
    for (int i = 0; i < c->plan->n_syms; i++)
        if (c->plan->sym_id[i] == id)
            return i;
    return -1;
}

static int dim_c(cu *c, kiln_dim d, kiln_sb *sb)
{
    if (KILN_DIM_IS_STATIC(d)) {
        kiln_sb_printf(sb, "%lldLL", (long long)d);
        return 0;
    }
    if (d == KILN_DIM_ANY)
        return -1;
    const kiln_sym *s = &c->g->syms.syms[KILN_DIM_SYM_ID(d)];
    if (s->kind == KILN_SYM_VAR) {
        int i = sym_index(c, KILN_DIM_SYM_ID(d));
        if (i < 0)
            return -1;
        kiln_sb_printf(sb, "KS[%d]", i);
        return 0;
    }
    static const char ops[] = {'?', '+', '-', '*', '/'};
    kiln_sb_put(sb, "(", 1);
    if (dim_c(c, s->a, sb))
        return -1;
    kiln_sb_put(sb, &ops[s->kind], 1);
    if (dim_c(c, s->b, sb))
        return -1;
    kiln_sb_put(sb, ")", 1);
    return 0;
}

const char *ck_d(ck *k, kiln_dim d)
{
    kiln_sb sb = {0};
    if (dim_c(k->c, d, &sb)) {
        kiln_sb_free(&sb);
        cu_fail(k->c, k->n, "a size is unknown at compile time");
        return "0LL";
    }
    return pool(k, sb.s);
}

const char *ck_prod(ck *k, const kiln_type *t, int from, int to)
{
    if (from >= to)
        return "1LL";
    kiln_sb sb = {0};
    kiln_sb_put(&sb, "(", 1);
    for (int d = from; d < to; d++) {
        if (d > from)
            kiln_sb_put(&sb, "*", 1);
        if (dim_c(k->c, t->dims[d], &sb)) {
            kiln_sb_free(&sb);
            cu_fail(k->c, k->n, "a size is unknown at compile time");
            return "0LL";
        }
    }
    kiln_sb_put(&sb, ")", 1);
    return pool(k, sb.s);
}

static int add_arg(ck *k, int kind, int64_t v, int vid, const char *ptype)
{
    for (int i = 0; i < k->nargs; i++)
        if (k->args[i].kind == kind && k->args[i].v == v)
            return i;
    if (k->nargs == KILN_CU_MAX_ARGS) {
        cu_fail(k->c, k->n, "too many kernel arguments");
        return 0;
    }
    int i = k->nargs++;
    k->args[i].kind = kind;
    k->args[i].v = v;
    k->vid[i] = vid;
    snprintf(k->ptype[i], sizeof k->ptype[i], "%s", ptype);
    return i;
}

const char *ck_ptr_dt(ck *k, int vid, kiln_dtype dt)
{
    cu *c = k->c;
    int r = cu_root(c, vid);
    const kiln_value *val = &c->g->values[vid];
    const char *ct = cu_ctype(dt);
    if (!ct) {
        cu_fail(c, k->n, "element type %s is not supported", kiln_dtype_name(dt));
        return "a0";
    }
    if (!cu_has_buf(c, vid)) {
        cu_fail(c, k->n, "%%%s has no storage", val->name);
        return "a0";
    }
    kiln_buf_kind bk = c->plan->bufs[r].kind;
    char pt[48];
    snprintf(pt, sizeof pt, "%s%s *", bk == KILN_BUF_WEIGHT || bk == KILN_BUF_CONST ? "const " : "", ct);
    int i = add_arg(k, KILN_CU_ARG_SLOT, r, r, pt);
    if (strcmp(k->ptype[i], pt) != 0)
        cu_fail(c, k->n, "%%%s is viewed with two element types", val->name);
    return ck_s(k, "a%d", i);
}

const char *ck_ptr(ck *k, int vid) { return ck_ptr_dt(k, vid, k->c->g->values[vid].type.dtype); }

const char *ck_scratch(ck *k, int64_t off, const char *ctype)
{
    char pt[48];
    snprintf(pt, sizeof pt, "%s *", ctype);
    int i = add_arg(k, KILN_CU_ARG_SCRATCH, off, -1, pt);
    return ck_s(k, "a%d", i);
}

const char *ck_load_dt(ck *k, int vid, kiln_dtype dt, const char *idx, const char *ct)
{
    const char *p = ck_ptr_dt(k, vid, dt);
    const char *own = cu_ctyp(dt), *e;
    switch (dt) {
    case KILN_F32: case KILN_F64: e = ck_s(k, "%s[%s]", p, idx); break;
    case KILN_F16: e = ck_s(k, "kh2f(%s[%s])", p, idx); break;
    case KILN_BF16: e = ck_s(k, "kb2f(%s[%s])", p, idx); break;
    default:
        /* integers straight from storage: u64 converts by value */
        return ck_s(k, "((%s)%s[%s])", ct ? ct : "i64", p, idx);
    }
    if (!ct || !strcmp(own, ct))
        return e;
    return ck_s(k, "((%s)%s)", ct, e);
}

const char *ck_load(ck *k, int vid, const char *idx)
{
    return ck_load_dt(k, vid, k->c->g->values[vid].type.dtype, idx, NULL);
}

const char *ck_load_as(ck *k, int vid, const char *idx, const char *ct)
{
    return ck_load_dt(k, vid, k->c->g->values[vid].type.dtype, idx, ct);
}

void ck_store_dt(ck *k, int vid, kiln_dtype dt, const char *idx, const char *v, const char *ct)
{
    const char *p = ck_ptr_dt(k, vid, dt);
    int fl = strcmp(ct, "i64") != 0;
    switch (dt) {
    case KILN_F32: ck_line(k, "%s[%s] = (float)(%s);", p, idx, v); return;
    case KILN_F64: ck_line(k, "%s[%s] = (double)(%s);", p, idx, v); return;
    case KILN_F16: ck_line(k, "%s[%s] = kf2h((float)(%s));", p, idx, v); return;
    case KILN_BF16: ck_line(k, "%s[%s] = kf2b((float)(%s));", p, idx, v); return;
    case KILN_BOOL: ck_line(k, "%s[%s] = (u8)((%s) != 0);", p, idx, v); return;
    default: break;
    }
    if (!fl) {
        ck_line(k, "%s[%s] = (%s)(%s);", p, idx, cu_ctype(dt), v);
        return;
    }
    /* floats into integers: clamp to the type's range, NaN to 0 (the
     * reference's kiln_store_f64) */
    static const struct { kiln_dtype dt; const char *lo, *hi; } r[] = {
        {KILN_I8, "-128.0", "127.0"}, {KILN_U8, "0.0", "255.0"}, {KILN_I16, "-32768.0", "32767.0"},
        {KILN_U16, "0.0", "65535.0"}, {KILN_I32, "-2147483648.0", "2147483647.0"},
        {KILN_U32, "0.0", "4294967295.0"}, {KILN_I64, "-9.2233720368547758e18", "9.2233720368547748e18"},
    };
    for (size_t i = 0; i < sizeof r / sizeof *r; i++)
        if (r[i].dt == dt) {
            ck_line(k, "%s[%s] = (%s)kclampd((double)(%s), %s, %s);", p, idx, cu_ctype(dt), v, r[i].lo, r[i].hi);
            return;
        }
    ck_line(k, "%s[%s] = kd2u64((double)(%s));", p, idx, v); /* u64 */
}

void ck_store(ck *k, int vid, const char *idx, const char *v, const char *ct)
{
    ck_store_dt(k, vid, k->c->g->values[vid].type.dtype, idx, v, ct);
}

int ck_end(ck *k)
{
    cu *c = k->c;
    int idx = -1;
    if (!c->failed) {
        kiln_sb t = {0};
        if (k->min_blocks > 0)
            kiln_sb_printf(&t, "extern \"C\" __global__ void __launch_bounds__(%d, %d) @NAME@(const i64 *__restrict__ KS", k->block,
                           k->min_blocks);
        else
            kiln_sb_printf(&t, "extern \"C\" __global__ void __launch_bounds__(%d) @NAME@(const i64 *__restrict__ KS", k->block);
        for (int i = 0; i < k->nargs; i++)
            kiln_sb_printf(&t, ", %sa%d", k->ptype[i], i);
        /* every kernel waits for its predecessor's results before touching
         * activations (programmatic dependent launch on sm_90), then lets the
         * next kernel's blocks start their prologue */
        kiln_sb_printf(&t, ")\n{\n%s  kgdc_launch();\n%s}\n", k->own_wait ? "" : "  kgdc_wait();\n", k->body.s ? k->body.s : "");
        for (int i = 0; i < c->nk && idx < 0; i++)
            if (!strcmp(c->kern[i].text, t.s))
                idx = i;
        if (idx >= 0) {
            kiln_sb_free(&t);
        } else {
            if (c->nk == c->capk) {
                c->capk = c->capk ? 2 * c->capk : 64;
                c->kern = kiln_xrealloc(c->kern, sizeof *c->kern * (size_t)c->capk);
            }
            idx = c->nk++;
            cu_kernel *K = &c->kern[idx];
            memset(K, 0, sizeof *K);
            K->text = t.s;
            K->node = k->node;
            char name[32];
            snprintf(name, sizeof name, "k%d", idx);
            K->name = kiln_xstrdup(name);
        }
    }
    kiln_sb_free(&k->body);
    for (int i = 0; i < k->npool; i++)
        free(k->pool[i]);
    k->npool = 0;
    return c->failed ? -1 : idx;
}

cu_launch *cu_launch_k(cu *c, ck *k, int kern, kiln_dim gx, int64_t px, kiln_dim gy, kiln_dim gz)
{
    if (c->nl == c->capl) {
        c->capl = c->capl ? 2 * c->capl : 256;
        c->l = kiln_xrealloc(c->l, sizeof *c->l * (size_t)c->capl);
    }
    cu_launch *L = &c->l[c->nl++];
    memset(L, 0, sizeof *L);
    L->kind = KILN_CU_LAUNCH_KERNEL;
    L->kernel = kern;
    L->block = k->block;
    L->grid[0] = gx;
    L->grid[1] = gy;
    L->grid[2] = gz;
    L->per[0] = px > 0 ? px : 1;
    L->per[1] = L->per[2] = 1;
    L->nargs = k->nargs;
    memcpy(L->args, k->args, sizeof L->args[0] * (size_t)k->nargs);
    L->node = k->node;
    return L;
}

kiln_dim cu_dprod(cu *c, const kiln_type *t, int from, int to)
{
    kiln_dim d = 1;
    for (int i = from; i < to; i++)
        d = kiln_dim_mul(&c->g->syms, d, t->dims[i]);
    return d;
}

kiln_dim cu_rows(cu *c, int vid)
{
    const kiln_type *t = cu_vt(c, vid);
    return cu_dprod(c, t, 0, t->rank - 1);
}

/* ---- node dispatch ---- */

static int lower_node(cu *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    /* an anchor's kernels run where its epilogue chain ends: every value
     * the chain reads exists by then */
    if (c->ni[ni].epi_anchor >= 0) {
        int a = c->ni[ni].epi_anchor;
        return !strcmp(c->g->nodes[a].op->name, "Linear") ? cu_lower_linear(c, a, 1) : cu_lower_matmul(c, a);
    }
    if (c->ni[ni].skip)
        return 0;
    if (c->ni[ni].epi >= 0) /* only the SwiGLU dual GEMV runs at the anchor itself */
        return !strcmp(op, "Linear") ? cu_lower_linear(c, ni, 0) : 0;
    /* nothing to compute when every output is a view or unmaterialized */
    int needed = 0;
    for (int o = 0; o < n->n_outputs; o++) {
        kiln_buf_kind k = c->plan->bufs[n->outputs[o]].kind;
        needed |= k != KILN_BUF_NONE && k != KILN_BUF_ALIAS;
        if (k == KILN_BUF_ALIAS && (n->op->flags & KILN_OP_ELEMENTWISE) && strcmp(op, "Identity") && strcmp(op, "Dropout"))
            needed = 1; /* in-place elementwise still computes */
    }
    if (!needed)
        return 0;
    for (int i = 0; i < n->n_inputs; i++)
        if (n->inputs[i] >= 0 && !cu_ctype(cu_vt(c, n->inputs[i])->dtype))
            return cu_fail(c, n, "element type %s is not supported", kiln_dtype_name(cu_vt(c, n->inputs[i])->dtype));
    if (!strcmp(op, "Linear"))
        return cu_lower_linear(c, ni, 1);
    if (!strcmp(op, "MatMul") || !strcmp(op, "Gemm") || !strcmp(op, "FusedMatMul"))
        return cu_lower_matmul(c, ni);
    if (!strcmp(op, "Dequantize") ||
        (!strcmp(op, "Gather") && kiln_dtype_get(cu_vt(c, n->inputs[0])->dtype)->is_quant))
        return cu_lower_dequant(c, ni);
    if (cu_is_reduce(op))
        return cu_lower_reduce(c, ni);
    if (cu_is_nn(op))
        return cu_lower_nn(c, ni);
    if (cu_is_map(n))
        return cu_lower_map(c, ni);
    return cu_fail(c, n, "no CUDA lowering for %s", op);
}

/* Graph outputs that are not a node's own OUTPUT buffer are copied into the
 * caller's buffer (slot n_values + i) by a device copy. */
static int output_copy(cu *c, int i)
{
    int v = c->g->outputs[i];
    const kiln_type *t = cu_vt(c, v);
    if (kiln_dtype_get(t->dtype)->is_quant || !cu_dtype_ok(t->dtype))
        return cu_fail(c, NULL, "output %%%s has element type %s", c->g->values[v].name, kiln_dtype_name(t->dtype));
    if (!cu_has_buf(c, v))
        return cu_fail(c, NULL, "output %%%s has no storage", c->g->values[v].name);
    if (c->nl == c->capl) {
        c->capl = c->capl ? 2 * c->capl : 256;
        c->l = kiln_xrealloc(c->l, sizeof *c->l * (size_t)c->capl);
    }
    cu_launch *L = &c->l[c->nl++];
    memset(L, 0, sizeof *L);
    L->kind = KILN_CU_LAUNCH_COPY;
    L->kernel = -1;
    L->grid[0] = cu_dprod(c, t, 0, t->rank);
    L->grid[1] = L->grid[2] = 1;
    L->per[0] = (int64_t)kiln_dtype_storage(t->dtype, 1);
    L->per[1] = L->per[2] = 1;
    L->nargs = 2;
    L->args[0].kind = L->args[1].kind = KILN_CU_ARG_SLOT;
    L->args[0].v = cu_root(c, v);
    L->args[1].v = c->g->n_values + i;
    L->node = -1;
    return 0;
}

/* ---- serialization ---- */

typedef struct wb {
    kiln_sb sb;
} wb;

static void w_u(wb *w, uint64_t v, int n)
{
    uint8_t b[8];
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    kiln_sb_put(&w->sb, (const char *)b, (size_t)n);
}

static int dimexpr(cu *c, kiln_dim d, kiln_dimexpr *e)
{
    if (e->n >= KILN_DIMEXPR_MAX - 1)
        return -1;
    if (KILN_DIM_IS_STATIC(d)) {
        e->op[e->n] = KILN_DX_CONST;
        e->arg[e->n++] = d;
        return 0;
    }
    if (d == KILN_DIM_ANY)
        return -1;
    const kiln_sym *s = &c->g->syms.syms[KILN_DIM_SYM_ID(d)];
    if (s->kind == KILN_SYM_VAR) {
        int i = sym_index(c, KILN_DIM_SYM_ID(d));
        if (i < 0)
            return -1;
        e->op[e->n] = KILN_DX_SYM;
        e->arg[e->n++] = i;
        return 0;
    }
    if (dimexpr(c, s->a, e) || dimexpr(c, s->b, e))
        return -1;
    e->op[e->n] = s->kind == KILN_SYM_ADD ? KILN_DX_ADD : s->kind == KILN_SYM_SUB ? KILN_DX_SUB
                : s->kind == KILN_SYM_MUL ? KILN_DX_MUL : KILN_DX_DIV;
    e->arg[e->n++] = 0;
    return 0;
}

static int w_dim(cu *c, wb *w, kiln_dim d)
{
    kiln_dimexpr e;
    memset(&e, 0, sizeof e);
    if (dimexpr(c, d, &e))
        return cu_fail(c, NULL, "a launch size cannot be expressed over the model's symbols");
    w_u(w, (uint64_t)e.n, 1);
    for (int i = 0; i < e.n; i++) {
        w_u(w, e.op[i], 1);
        w_u(w, (uint64_t)e.arg[i], 8);
    }
    return 0;
}

static int write_prog(cu *c, const cu_image *img, int nimg, int argmax, uint8_t **out, size_t *len)
{
    kiln_graph *g = c->g;
    wb w = {{0}};
    /* constants: every CONST value a kernel may read, 64-byte aligned */
    int64_t *coff = kiln_xcalloc((size_t)g->n_values + 1, sizeof *coff);
    kiln_sb cb = {0};
    for (int v = 0; v < g->n_values; v++) {
        if (c->plan->bufs[v].kind != KILN_BUF_CONST || c->plan->bufs[v].last < 0)
            continue;
        while (cb.len % 64)
            kiln_sb_put(&cb, "", 1);
        coff[v] = (int64_t)cb.len;
        if (g->values[v].nbytes)
            kiln_sb_put(&cb, (const char *)g->values[v].data, g->values[v].nbytes);
    }
    kiln_sb_put(&w.sb, KILN_CU_MAGIC, 8);
    w_u(&w, KILN_CU_VERSION, 4);
    w_u(&w, argmax ? KILN_CU_HAS_ARGMAX : 0, 4);
    int nslots = g->n_values + g->n_outputs;
    w_u(&w, (uint64_t)nslots, 4);
    w_u(&w, (uint64_t)(c->nk + (argmax ? 1 : 0)), 4);
    w_u(&w, (uint64_t)c->nl, 4);
    w_u(&w, (uint64_t)nimg, 4);
    w_u(&w, cb.len, 8);
    w_u(&w, (uint64_t)c->scratch, 8);
    if (cb.len)
        kiln_sb_put(&w.sb, cb.s, cb.len);
    kiln_sb_free(&cb);
    for (int s = 0; s < nslots; s++) {
        int kind = KILN_CU_SLOT_NONE, io = -1;
        int64_t off = 0;
        if (s >= g->n_values) {
            kind = KILN_CU_SLOT_OUTPUT;
            io = s - g->n_values;
        } else {
            const kiln_buf *b = &c->plan->bufs[cu_root(c, s)];
            switch (b->kind) {
            case KILN_BUF_INPUT: kind = KILN_CU_SLOT_INPUT; io = b->io; break;
            case KILN_BUF_OUTPUT: kind = KILN_CU_SLOT_OUTPUT; io = b->io; break;
            case KILN_BUF_WEIGHT: kind = KILN_CU_SLOT_WEIGHT; off = b->offset; break;
            case KILN_BUF_ARENA: kind = KILN_CU_SLOT_ARENA; off = b->offset; break;
            case KILN_BUF_CONST: kind = KILN_CU_SLOT_CONST; off = coff[cu_root(c, s)]; break;
            default: break;
            }
        }
        w_u(&w, (uint64_t)kind, 1);
        w_u(&w, (uint64_t)(uint32_t)io, 4);
        w_u(&w, (uint64_t)off, 8);
    }
    free(coff);
    for (int i = 0; i < c->nk; i++) {
        w_u(&w, strlen(c->kern[i].name), 2);
        kiln_sb_put(&w.sb, c->kern[i].name, strlen(c->kern[i].name));
    }
    if (argmax) {
        w_u(&w, strlen(KILN_CU_ARGMAX_KERNEL), 2);
        kiln_sb_put(&w.sb, KILN_CU_ARGMAX_KERNEL, strlen(KILN_CU_ARGMAX_KERNEL));
    }
    for (int i = 0; i < c->nl && !c->failed; i++) {
        const cu_launch *L = &c->l[i];
        w_u(&w, (uint64_t)L->kind, 1);
        w_u(&w, (uint64_t)(uint32_t)L->kernel, 4);
        w_u(&w, (uint64_t)L->block, 4);
        w_u(&w, (uint64_t)L->smem, 4);
        for (int a = 0; a < 3; a++) {
            w_dim(c, &w, L->grid[a]);
            w_u(&w, (uint64_t)L->per[a], 8);
        }
        w_u(&w, (uint64_t)L->cond, 1);
        w_dim(c, &w, L->cond ? L->cond_d : 1);
        w_u(&w, (uint64_t)L->cond_c, 8);
        w_u(&w, (uint64_t)L->nargs, 2);
        for (int a = 0; a < L->nargs; a++) {
            w_u(&w, (uint64_t)L->args[a].kind, 1);
            w_u(&w, (uint64_t)L->args[a].v, 8);
        }
        w_u(&w, (uint64_t)(uint32_t)L->node, 4);
    }
    for (int i = 0; i < nimg; i++) {
        w_u(&w, (uint64_t)img[i].arch, 4);
        w_u(&w, img[i].size, 8);
        kiln_sb_put(&w.sb, (const char *)img[i].data, img[i].size);
    }
    if (c->failed) {
        kiln_sb_free(&w.sb);
        return -1;
    }
    *out = (uint8_t *)w.sb.s;
    *len = w.sb.len;
    return 0;
}

/* ---- object emission ---- */

static int write_file(const char *path, const void *data, size_t n, kiln_err *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return kiln_errf(err, "%s: cannot create: %s", path, strerror(errno));
    int ok = fwrite(data, 1, n, f) == n;
    ok &= fclose(f) == 0;
    return ok ? 0 : kiln_errf(err, "%s: write failed", path);
}

/* The object holds kiln_model_desc / kiln_model_desc_size (what every
 * runtime reads) and kiln_cuda_prog / kiln_cuda_prog_size. */
static int emit_object(const kiln_build_opts *o, const char *obj, const uint8_t *desc, size_t dlen,
                       const uint8_t *prog, size_t plen, kiln_err *err)
{
    char dpath[4300], ppath[4300], spath[4300];
    snprintf(dpath, sizeof dpath, "%s.desc", obj);
    snprintf(ppath, sizeof ppath, "%s.prog", obj);
    snprintf(spath, sizeof spath, "%s.S", obj);
    int rc = -1;
    if (write_file(dpath, desc, dlen, err) || write_file(ppath, prog, plen, err))
        goto out;
    FILE *f = fopen(spath, "w");
    if (!f) {
        kiln_errf(err, "%s: cannot create", spath);
        goto out;
    }
    fprintf(f, "\t.section .rodata.kiln_model,\"a\"\n"
               "\t.balign 64\n\t.globl kiln_model_desc\n\t.type kiln_model_desc, @object\n"
               "kiln_model_desc:\n\t.incbin \"%s\"\n\t.size kiln_model_desc, %zu\n"
               "\t.balign 8\n\t.globl kiln_model_desc_size\n\t.type kiln_model_desc_size, @object\n"
               "kiln_model_desc_size:\n\t.quad %zu\n\t.size kiln_model_desc_size, 8\n"
               "\t.balign 64\n\t.globl kiln_cuda_prog\n\t.type kiln_cuda_prog, @object\n"
               "kiln_cuda_prog:\n\t.incbin \"%s\"\n\t.size kiln_cuda_prog, %zu\n"
               "\t.balign 8\n\t.globl kiln_cuda_prog_size\n\t.type kiln_cuda_prog_size, @object\n"
               "kiln_cuda_prog_size:\n\t.quad %zu\n\t.size kiln_cuda_prog_size, 8\n"
               "\t.section .note.GNU-stack,\"\",@progbits\n",
            dpath, dlen, dlen, ppath, plen, plen);
    if (fclose(f) != 0) {
        kiln_errf(err, "%s: write failed", spath);
        goto out;
    }
    const char *cc = o && o->cc ? o->cc : getenv("CC") ? getenv("CC") : "cc";
    char *argv[] = {(char *)cc, "-c", "-o", (char *)obj, spath, NULL};
    rc = kiln_run_cmd(argv, o && o->verbose, err);
out:
    unlink(dpath);
    unlink(ppath);
    unlink(spath);
    return rc;
}

/* Architectures: sm_80 and sm_90 always, plus o->cuda_archs ("86,89"). */
static int parse_archs(const kiln_build_opts *o, int *archs, kiln_err *err)
{
    int n = 0;
    archs[n++] = 80;
    archs[n++] = 90;
    const char *s = o ? o->cuda_archs : NULL;
    while (s && *s) {
        char *end;
        long a = strtol(s, &end, 10);
        if (end == s || a < 50 || a > 200 || (*end && *end != ','))
            return kiln_errf(err, "--cuda-arch takes compute capabilities like 86 or 86,89 (got '%s')", o->cuda_archs);
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= archs[i] == a;
        if (!dup) {
            if (n == 16)
                return kiln_errf(err, "too many --cuda-arch values");
            archs[n++] = (int)a;
        }
        s = *end ? end + 1 : end;
    }
    return n;
}

int kiln_codegen_cuda(kiln_graph *g, const kiln_plan *p, const kiln_build_opts *o, const char *obj_path,
                      kiln_err *err)
{
    cu c;
    memset(&c, 0, sizeof c);
    c.g = g;
    c.plan = p;
    c.o = o;
    c.err = err;
    int archs[16];
    int narch = parse_archs(o, archs, err);
    if (narch < 0)
        return -1;
    int rc = -1;
    cu_image img[17];
    int nimg = 0;
    kiln_sb tu = {0};
    uint8_t *prog = NULL, *dbytes = NULL;
    size_t plen = 0, dlen = 0;
    memset(img, 0, sizeof img);
    kiln_desc d = o ? o->meta : (kiln_desc){0};
    /* like the CPU generator, this consumes the caller's role table */
    kiln_io_desc *roles = d.io;
    d.io = NULL;
    if (o && o->meta.kind == KILN_MODEL_LM && o->meta.kv.max_ctx > 0) {
        c.lm = 1;
        c.kv_ctx = o->meta.kv.max_ctx;
        c.kv_dtype = o->meta.kv.dtype ? o->meta.kv.dtype : KILN_F32;
        if (c.kv_dtype != KILN_F32 && c.kv_dtype != KILN_F16 && c.kv_dtype != KILN_BF16) {
            kiln_errf(err, "the CUDA target keeps the KV cache in f32, f16 or bf16, not %s", kiln_dtype_name(c.kv_dtype));
            goto out;
        }
    }
    if (cu_fuse(&c))
        goto out;
    for (int ni = 0; ni < g->n_nodes && !c.failed; ni++)
        if (lower_node(&c, ni))
            break;
    for (int i = 0; i < g->n_outputs && !c.failed; i++)
        if (p->bufs[g->outputs[i]].kind != KILN_BUF_OUTPUT || p->bufs[g->outputs[i]].io != i)
            output_copy(&c, i);
    if (c.failed)
        goto out;
    if (c.lm && c.n_kv_inplace < o->meta.kv.n_layers) {
        kiln_errf(err, "the CUDA target needs every layer's attention in place on the KV cache "
                       "(%d of %d layers were recognized)", c.n_kv_inplace, o->meta.kv.n_layers);
        goto out;
    }
    /* translation unit: prelude, kernels, argmax */
    kiln_sb_printf(&tu, "%s", cu_prelude);
    int line = 1;
    for (const char *q = tu.s; *q; q++)
        line += *q == '\n';
    const char *inject = getenv("KILN_CUDA_INJECT_ERROR");
    for (int i = 0; i < c.nk; i++) {
        cu_kernel *K = &c.kern[i];
        K->line0 = line;
        kiln_sb_printf(&tu, "// %s\n", K->node >= 0 ? kiln_node_label(g, &g->nodes[K->node], (char[160]){0}, 160) : "output copy");
        line++;
        for (const char *q = K->text; *q; q++) {
            if (q[0] == '@' && !strncmp(q, "@NAME@", 6)) {
                kiln_sb_put(&tu, K->name, strlen(K->name));
                q += 5;
                continue;
            }
            kiln_sb_put(&tu, q, 1);
            if (*q != '\n')
                continue;
            line++;
            /* debug aid for testing the error path (KILN_CUDA_INJECT_ERROR=1):
             * a syntax error as the first statement of the first kernel */
            if (inject && *inject == '1' && q > K->text && q[-1] == '{') {
                kiln_sb_printf(&tu, "  int kiln_injected_error = ;\n");
                line++;
                inject = NULL;
            }
        }
        K->line1 = line;
    }
    int argmax = c.lm;
    if (argmax)
        kiln_sb_printf(&tu, "%s", cu_argmax_kernel);
    if (getenv("KILN_CUDA_DUMP")) {
        kiln_err e2;
        if (write_file(getenv("KILN_CUDA_DUMP"), tu.s, tu.len, &e2))
            fprintf(stderr, "kiln: %s\n", e2.msg);
    }
    if (cu_nvrtc_compile(&c, tu.s, archs, narch, img, &nimg, err))
        goto out;
    if (write_prog(&c, img, nimg, argmax, &prog, &plen))
        goto out;
    snprintf(d.target, sizeof d.target, "cuda");
    d.io = roles; /* kiln_desc_from_graph frees it once the I/O table is built */
    roles = NULL;
    if (kiln_desc_from_graph(g, p, &d, err))
        goto out;
    dbytes = kiln_desc_write(&d, &dlen);
    if (emit_object(o, obj_path, dbytes, dlen, prog, plen, err))
        goto out;
    rc = 0;
out:
    free(roles);
    free(d.io);
    free(dbytes);
    free(prog);
    kiln_sb_free(&tu);
    for (int i = 0; i < nimg; i++)
        free(img[i].data);
    for (int i = 0; i < c.nk; i++) {
        free(c.kern[i].name);
        free(c.kern[i].text);
    }
    free(c.kern);
    free(c.l);
    free(c.ni);
    free(c.uses);
    return rc;
}
