/* cu_fuse.c - which nodes the CUDA generator fuses, decided before any
 * kernel is emitted. Decode steps (few rows) are bound by reading weights
 * once, and by the number of launches, so around the matrix-vector
 * products the generator fuses:
 *   - RMSNorm -> Linear(s): the GEMV normalizes its input itself;
 *   - Linears sharing an input (q/k/v): one GEMV launch;
 *   - Silu(Linear(x, Wg)) * Linear(x, Wu): one GEMV computing both (SwiGLU);
 *   - Add(Linear(..), r): the residual is the GEMV/GEMM epilogue;
 *   - RotaryEmbedding -> GQAttention: rope inside the attention kernels;
 *   - chains of elementwise ops: one map kernel.
 * Prefill (many rows) keeps the materialized forms for the tiled GEMM.
 * Every fusion checks that what the fused kernel reads is still intact
 * (lifetimes and arena placement from the memory plan), else it is not done. */
#include "cu.h"

#include <stdlib.h>
#include <string.h>

static int op_is(const kiln_node *n, const char *s) { return !strcmp(n->op->name, s); }

/* Producer node of value v, or -1. */
static int producer(cu *c, int v) { return v >= 0 && c->g->values[v].kind == KILN_VAL_NODE ? c->g->values[v].producer : -1; }

static int is_graph_output(cu *c, int v)
{
    for (int i = 0; i < c->g->n_outputs; i++)
        if (c->g->outputs[i] == v)
            return 1;
    return 0;
}

/* The only node reading v (v no graph output), else -1. */
static int sole_user(cu *c, int v)
{
    if (c->uses[v] != 1 || is_graph_output(c, v))
        return -1;
    for (int ni = 0; ni < c->g->n_nodes; ni++) {
        const kiln_node *n = &c->g->nodes[ni];
        for (int i = 0; i < n->n_inputs; i++)
            if (n->inputs[i] == v)
                return ni;
    }
    return -1;
}

static int same_dims(const kiln_type *a, const kiln_type *b)
{
    if (a->rank != b->rank || a->rank < 0)
        return 0;
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] != b->dims[i] || a->dims[i] == KILN_DIM_ANY)
            return 0;
    return 1;
}

/* Storage of v is still intact when node `at` runs. */
static int alive_at(cu *c, int v, int at)
{
    int r = cu_root(c, v);
    kiln_buf_kind k = c->plan->bufs[r].kind;
    if (k == KILN_BUF_WEIGHT || k == KILN_BUF_CONST || k == KILN_BUF_INPUT)
        return 1;
    return c->plan->bufs[r].last >= at;
}

/* A fused kernel reading `in` and writing `out` element by element at the
 * same index is safe if they do not share bytes, or share them exactly. */
static int rw_ok_same_index(cu *c, int in, int out)
{
    if (!cu_overlap(c, in, out))
        return 1;
    const kiln_type *a = cu_vt(c, in), *b = cu_vt(c, out);
    const kiln_buf *ba = &c->plan->bufs[cu_root(c, in)], *bb = &c->plan->bufs[cu_root(c, out)];
    return ba->kind == KILN_BUF_ARENA && ba->offset == bb->offset && same_dims(a, b) &&
           kiln_dtype_storage(a->dtype, 1) == kiln_dtype_storage(b->dtype, 1);
}

static int linear_ok(cu *c, const kiln_node *n)
{
    const kiln_type *wt = cu_vt(c, n->inputs[1]), *xt = cu_vt(c, n->inputs[0]), *ot = cu_vt(c, n->outputs[0]);
    int li = (int)(n - c->g->nodes);
    return wt->rank == 2 && KILN_DIM_IS_STATIC(wt->dims[0]) && KILN_DIM_IS_STATIC(wt->dims[1]) &&
           xt->dtype == KILN_F32 && ot->dtype == KILN_F32 && (cu_has_buf(c, n->outputs[0]) || c->ni[li].epi >= 0);
}

/* Output written by a Linear's kernels: its own, or its epilogue's. */
static int linear_out(cu *c, int li)
{
    return c->ni[li].epi >= 0 ? c->g->nodes[c->ni[li].epi].outputs[0] : c->g->nodes[li].outputs[0];
}

/* Where a node's kernels run: at the end of its epilogue, if any. */
static int emit_pos(cu *c, int ni) { return c->ni[ni].epi >= 0 ? c->ni[ni].epi : ni; }

static int has_bias(const kiln_node *n) { return n->n_inputs > 2 && n->inputs[2] >= 0; }

/* What a Linear's decode GEMV reads: its x, or the input of the RMSNorm it
 * applies itself. */
static int gemv_input(cu *c, int li)
{
    const kiln_node *L = &c->g->nodes[li];
    return c->ni[li].norm_of >= 0 ? c->g->nodes[c->ni[li].norm_of].inputs[0] : L->inputs[0];
}

/* Inputs of an inlined elementwise chain rooted at node p, as value ids. */
static int chain_inputs(cu *c, int p, int *vals, int max)
{
    const kiln_node *n = &c->g->nodes[p];
    int cnt = 0;
    for (int i = 0; i < n->n_inputs; i++) {
        int v = n->inputs[i];
        if (v < 0)
            continue;
        int q = producer(c, v);
        if (q >= 0 && c->ni[q].inline_ok)
            cnt += chain_inputs(c, q, vals + cnt, max - cnt);
        else if (cnt < max)
            vals[cnt++] = v;
    }
    return cnt;
}

/* Elementwise ops whose single result feeds an elementwise consumer of the
 * same shape are computed inside the consumer's kernel. */
static void fuse_elementwise(cu *c)
{
    kiln_graph *g = c->g;
    for (int p = 0; p < g->n_nodes; p++) {
        const kiln_node *n = &g->nodes[p];
        if (n->kernel >= 0 || c->ni[p].skip)
            continue; /* kiln's groups already decide */
        if (!(n->op->flags & KILN_OP_ELEMENTWISE) || n->n_outputs != 1 || op_is(n, "Identity") ||
            op_is(n, "Dropout") || op_is(n, "Cast") || op_is(n, "CastLike"))
            continue;
        int v = n->outputs[0];
        kiln_dtype dt = cu_vt(c, v)->dtype;
        if (dt != KILN_F32 && dt != KILN_F64 && dt != KILN_I64 && dt != KILN_BOOL)
            continue;
        int m = sole_user(c, v);
        if (m < 0 || m != p + 1 || c->ni[m].skip || g->nodes[m].kernel >= 0) /* adjacent, and the consumer runs a map kernel */
            continue;
        const kiln_node *mn = &g->nodes[m];
        if (!(mn->op->flags & KILN_OP_ELEMENTWISE) || mn->n_outputs != 1 || op_is(mn, "Identity") || op_is(mn, "Dropout"))
            continue;
        if (!same_dims(cu_vt(c, v), cu_vt(c, mn->outputs[0])))
            continue;
        int ok = 1;
        int ins[64];
        int ni_ = chain_inputs(c, p, ins, 64);
        /* only skipped nodes lie between the chain and its consumer, so its
         * inputs are intact unless the consumer's output reuses their bytes */
        for (int i = 0; i < ni_ && ok; i++)
            ok = rw_ok_same_index(c, ins[i], mn->outputs[0]);
        if (!ok)
            continue;
        c->ni[p].inline_ok = 1;
        c->ni[p].skip = 1;
    }
}

/* Kernel groups chosen by kiln's fuse_elementwise pass (node->kernel): the
 * values inside a group have no buffer, so they are computed where the
 * group ends: an elementwise chain inside its last node's map kernel, an
 * anchor (Linear, MatMul) and its chain as the anchor's epilogue. */
static void kiln_groups(cu *c)
{
    kiln_graph *g = c->g;
    for (int ni = 0; ni < g->n_nodes; ni++) {
        int kid = g->nodes[ni].kernel;
        if (kid < 0)
            continue;
        int first = -1, last = -1, n = 0;
        for (int j = 0; j < g->n_nodes; j++)
            if (g->nodes[j].kernel == kid) {
                if (first < 0)
                    first = j;
                last = j;
                n++;
            }
        if (first != ni || n < 2)
            continue; /* each group once, from its first node */
        const kiln_node *F = &g->nodes[first];
        int anchor = (op_is(F, "Linear") || op_is(F, "MatMul")) && F->n_outputs == 1;
        for (int j = first; j <= last; j++) {
            if (g->nodes[j].kernel != kid || (anchor && j == first))
                continue;
            if (j == last && !anchor)
                continue;
            c->ni[j].skip = 1;
            c->ni[j].inline_ok = j != last;
        }
        if (anchor) {
            c->ni[first].epi = last;
            c->ni[last].epi_anchor = first;
        }
    }
}

/* Without kiln's groups: Add(Linear(..), r) right after the Linear is the
 * Linear's epilogue. */
static void fuse_residual(cu *c)
{
    kiln_graph *g = c->g;
    for (int li = 0; li + 1 < g->n_nodes; li++) {
        const kiln_node *L = &g->nodes[li];
        if (!op_is(L, "Linear") || !linear_ok(c, L) || c->ni[li].epi >= 0 || L->kernel >= 0)
            continue;
        int a = li + 1;
        const kiln_node *A = &g->nodes[a];
        if (!op_is(A, "Add") || A->n_inputs != 2 || A->kernel >= 0 || sole_user(c, L->outputs[0]) != a)
            continue;
        int other = A->inputs[0] == L->outputs[0] ? A->inputs[1] : A->inputs[0];
        if (other == L->outputs[0] || !same_dims(cu_vt(c, other), cu_vt(c, A->outputs[0])) ||
            !same_dims(cu_vt(c, L->outputs[0]), cu_vt(c, A->outputs[0])) || cu_vt(c, other)->dtype != KILN_F32 ||
            cu_vt(c, A->outputs[0])->dtype != KILN_F32 || !cu_has_buf(c, A->outputs[0]))
            continue;
        if (cu_overlap(c, A->outputs[0], L->inputs[0]) || !rw_ok_same_index(c, other, A->outputs[0]))
            continue;
        c->ni[li].epi = a;
        c->ni[a].epi_anchor = li;
        c->ni[a].skip = 1;
    }
}

/* Sizes of a Split along the last axis (static), or -1. */
static int split_sizes(cu *c, const kiln_node *S, int64_t *sz, int max)
{
    const kiln_type *it = cu_vt(c, S->inputs[0]);
    int axis = (int)kiln_node_int(S, "axis");
    if (axis < 0)
        axis += it->rank;
    if (axis != it->rank - 1 || S->n_outputs > max)
        return -1;
    for (int i = 0; i < S->n_outputs; i++) {
        const kiln_type *ot = cu_vt(c, S->outputs[i]);
        if (!KILN_DIM_IS_STATIC(ot->dims[axis]) || !cu_has_buf(c, S->outputs[i]) || ot->dtype != KILN_F32)
            return -1;
        sz[i] = ot->dims[axis];
    }
    return S->n_outputs;
}

/* Linear(x, W) followed by a Split of its output along the last axis (a
 * merged projection): the decode GEMV writes the parts directly. */
static void fuse_split(cu *c)
{
    kiln_graph *g = c->g;
    for (int li = 0; li + 1 < g->n_nodes; li++) {
        const kiln_node *L = &g->nodes[li], *S = &g->nodes[li + 1];
        int64_t sz[16];
        if (!op_is(L, "Linear") || !linear_ok(c, L) || c->ni[li].epi >= 0 || !op_is(S, "Split") ||
            S->inputs[0] != L->outputs[0] || sole_user(c, L->outputs[0]) != li + 1 || split_sizes(c, S, sz, 16) < 0)
            continue;
        int ok = 1;
        for (int i = 0; i < S->n_outputs && ok; i++)
            ok = !cu_overlap(c, S->outputs[i], gemv_input(c, li));
        if (!ok)
            continue;
        c->ni[li].split = li + 1;
        c->ni[li + 1].prefill_only = 1;
        c->ni[li + 1].rows = cu_rows(c, L->inputs[0]);
    }
}

static void set_dual(cu *c, int host, int m, int wg, int64_t og, int wu, int64_t ou, kiln_dim rows)
{
    c->ni[host].dual_host = 1;
    c->ni[host].swiglu_mul = m;
    c->ni[host].dual_wg = wg;
    c->ni[host].dual_og = og;
    c->ni[host].dual_wu = wu;
    c->ni[host].dual_ou = ou;
    c->ni[m].prefill_only = 1;
    c->ni[m].rows = rows;
}

/* Mul(Silu(gate), up) where gate and up are Linear(x, Wg), Linear(x, Wu)
 * or the two halves of a merged projection's Split, all right before. */
static void fuse_swiglu(cu *c)
{
    kiln_graph *g = c->g;
    for (int m = 3; m < g->n_nodes; m++) {
        const kiln_node *M = &g->nodes[m];
        if (!op_is(M, "Mul") || M->n_inputs != 2 || cu_vt(c, M->outputs[0])->dtype != KILN_F32 ||
            !cu_has_buf(c, M->outputs[0]))
            continue;
        for (int side = 0; side < 2; side++) {
            int sv = M->inputs[side], uv = M->inputs[1 - side];
            int s = producer(c, sv), u = producer(c, uv);
            if (s < 0 || u < 0 || !op_is(&g->nodes[s], "Silu") || sole_user(c, sv) != m || sole_user(c, uv) != m ||
                !same_dims(cu_vt(c, sv), cu_vt(c, uv)))
                continue;
            int gv = g->nodes[s].inputs[0], gi = producer(c, gv);
            if (gi < 0 || sole_user(c, gv) != s)
                continue;
            const kiln_node *G = &g->nodes[gi], *U = &g->nodes[u];
            if (op_is(G, "Split") && gi == u && s == gi + 1 && m == gi + 2 && gi >= 1) {
                /* merged gate/up: Linear, Split, Silu, Mul */
                int li = gi - 1;
                const kiln_node *L = &g->nodes[li];
                int64_t sz[16];
                int ns = split_sizes(c, G, sz, 16), ig = -1, iu = -1;
                if (!op_is(L, "Linear") || c->ni[li].split != gi || ns < 0 || (L->n_inputs > 2 && L->inputs[2] >= 0))
                    continue;
                int64_t off[17] = {0};
                for (int i = 0; i < ns; i++) {
                    off[i + 1] = off[i] + sz[i];
                    if (G->outputs[i] == gv)
                        ig = i;
                    if (G->outputs[i] == uv)
                        iu = i;
                }
                if (ig < 0 || iu < 0 || ig == iu || cu_overlap(c, M->outputs[0], gemv_input(c, li)))
                    continue;
                c->ni[li].split = -1;
                set_dual(c, li, m, L->inputs[1], off[ig], L->inputs[1], off[iu], cu_rows(c, L->inputs[0]));
                c->ni[s].prefill_only = 1;
                c->ni[s].rows = c->ni[m].rows;
                break;
            }
            if (!op_is(G, "Linear") || !op_is(U, "Linear") || G->inputs[0] != U->inputs[0] || !linear_ok(c, G) ||
                !linear_ok(c, U) || has_bias(G) || has_bias(U))
                continue;
            const kiln_type *wg = cu_vt(c, G->inputs[1]), *wu = cu_vt(c, U->inputs[1]);
            if (wg->dtype != wu->dtype || wg->dims[0] != wu->dims[0] || wg->dims[1] != wu->dims[1])
                continue;
            int host = gi > u ? gi : u, lo = gi < u ? gi : u;
            /* layout: lo, host, Silu, Mul in a row (the Silu may also sit before host) */
            int order_ok = m == host + 2 && (s == host + 1 || s == lo + 1) && host == lo + 1 + (s == lo + 1);
            if (!order_ok || cu_overlap(c, M->outputs[0], gemv_input(c, gi)) || c->ni[gi].norm_of != c->ni[u].norm_of)
                continue;
            set_dual(c, host, m, G->inputs[1], 0, U->inputs[1], 0, cu_rows(c, G->inputs[0]));
            c->ni[gi].swiglu_member = c->ni[u].swiglu_member = 1;
            c->ni[s].prefill_only = 1;
            c->ni[s].rows = c->ni[m].rows;
            break;
        }
    }
}

/* Consecutive Linears reading the same x: one decode GEMV. */
static void fuse_groups(cu *c)
{
    kiln_graph *g = c->g;
    for (int i = 0; i < g->n_nodes; i++) {
        const kiln_node *A = &g->nodes[i];
        if (!op_is(A, "Linear") || c->ni[i].in_group || c->ni[i].epi >= 0 || c->ni[i].swiglu_member ||
            c->ni[i].split >= 0 || c->ni[i].dual_host || !linear_ok(c, A))
            continue;
        int last = i;
        for (int j = i + 1; j < g->n_nodes; j++) {
            const kiln_node *B = &g->nodes[j];
            if (!op_is(B, "Linear") || B->inputs[0] != A->inputs[0] || c->ni[j].epi >= 0 ||
                c->ni[j].swiglu_member || c->ni[j].split >= 0 || c->ni[j].dual_host || !linear_ok(c, B) ||
                cu_vt(c, B->inputs[1])->dtype != cu_vt(c, A->inputs[1])->dtype ||
                cu_vt(c, B->inputs[1])->dims[1] != cu_vt(c, A->inputs[1])->dims[1])
                break;
            /* the member's output is written early: it must not share bytes
             * with the input or another member's output */
            int ok = !cu_overlap(c, B->outputs[0], gemv_input(c, i)) && c->ni[j].norm_of == c->ni[i].norm_of;
            for (int q = i; q <= last && ok; q = c->ni[q].group_next >= 0 ? c->ni[q].group_next : last + 1)
                ok = !cu_overlap(c, B->outputs[0], g->nodes[q].outputs[0]);
            if (!ok)
                break;
            c->ni[last].group_next = j;
            c->ni[j].in_group = 1;
            last = j;
        }
        if (last != i) {
            c->ni[i].group_head = 1;
            c->ni[i].in_group = 1;
        }
    }
}

/* RMSNorm whose output only feeds Linears: decode GEMVs normalize x
 * themselves; the norm runs only for prefill. */
static void fuse_norms(cu *c)
{
    kiln_graph *g = c->g;
    for (int r = 0; r < g->n_nodes; r++) {
        const kiln_node *R = &g->nodes[r];
        if (!op_is(R, "RMSNormalization") || R->n_outputs < 1 || is_graph_output(c, R->outputs[0]))
            continue;
        if (R->n_outputs > 1 && c->uses[R->outputs[1]])
            continue;
        const kiln_type *xt = cu_vt(c, R->inputs[0]), *st = cu_vt(c, R->inputs[1]);
        int axis = (int)kiln_node_int(R, "axis");
        if (axis < 0)
            axis += xt->rank;
        int64_t K = xt->rank > 0 ? xt->dims[xt->rank - 1] : -1;
        if (axis != xt->rank - 1 || K <= 0 || xt->dtype != KILN_F32 || st->rank != 1 || st->dims[0] != K ||
            !cu_dtype_ok(st->dtype))
            continue;
        int y = R->outputs[0], n_users = 0, ok = 1;
        for (int li = r + 1; li < g->n_nodes && ok; li++) {
            const kiln_node *L = &g->nodes[li];
            for (int i = 0; i < L->n_inputs; i++)
                if (L->inputs[i] == y) {
                    if (!op_is(L, "Linear") || i != 0 || !linear_ok(c, L) || !alive_at(c, R->inputs[0], emit_pos(c, li)) ||
                        cu_overlap(c, linear_out(c, li), R->inputs[0]))
                        ok = 0;
                    n_users++;
                }
        }
        if (!ok || !n_users || n_users != c->uses[y])
            continue;
        for (int li = r + 1; li < g->n_nodes; li++)
            if (op_is(&g->nodes[li], "Linear") && g->nodes[li].inputs[0] == y)
                c->ni[li].norm_of = r;
        c->ni[r].prefill_only = 1;
        c->ni[r].rows = cu_rows(c, R->inputs[0]);
    }
}

/* GQAttention on the in-place cache, fed by RotaryEmbedding(q) and
 * RotaryEmbedding(k) right before it. */
static void fuse_rope(cu *c)
{
    kiln_graph *g = c->g;
    if (!c->lm)
        return;
    for (int a = 2; a < g->n_nodes; a++) {
        const kiln_node *A = &g->nodes[a];
        if (!op_is(A, "GQAttention") || (A->n_inputs > 5 && A->inputs[5] >= 0))
            continue;
        int rq = producer(c, A->inputs[0]), rk = producer(c, A->inputs[1]);
        if (rq < 0 || rk < 0 || !op_is(&g->nodes[rq], "RotaryEmbedding") || !op_is(&g->nodes[rk], "RotaryEmbedding") ||
            sole_user(c, A->inputs[0]) != a || sole_user(c, A->inputs[1]) != a)
            continue;
        const kiln_node *Q = &g->nodes[rq], *K = &g->nodes[rk];
        if (Q->n_inputs < 4 || K->n_inputs < 4 || Q->inputs[3] < 0 || Q->inputs[1] != K->inputs[1] ||
            Q->inputs[2] != K->inputs[2] || Q->inputs[3] != K->inputs[3] ||
            kiln_node_int(Q, "interleaved") != kiln_node_int(K, "interleaved") ||
            kiln_node_int(Q, "rotary_embedding_dim") != kiln_node_int(K, "rotary_embedding_dim") ||
            cu_vt(c, Q->inputs[0])->rank != 3 || cu_vt(c, K->inputs[0])->rank != 3)
            continue;
        int lo = rq < rk ? rq : rk, hi = rq < rk ? rk : rq;
        if (hi != a - 1 || lo != a - 2)
            continue;
        /* the attention kernel reads q pre-rope while it writes its output:
         * fine when they do not share bytes, or when the output lies exactly
         * over q (each block reads its heads' q before writing the same
         * heads' output). k and v are read by the append kernel before. */
        if (!rw_ok_same_index(c, Q->inputs[0], A->outputs[0]))
            continue;
        c->ni[a].rope_q = rq;
        c->ni[a].rope_k = rk;
        c->ni[rq].skip = c->ni[rk].skip = 1;
    }
}

int cu_fuse(cu *c)
{
    kiln_graph *g = c->g;
    c->uses = kiln_xcalloc((size_t)g->n_values + 1, sizeof *c->uses);
    for (int ni = 0; ni < g->n_nodes; ni++)
        for (int i = 0; i < g->nodes[ni].n_inputs; i++)
            if (g->nodes[ni].inputs[i] >= 0)
                c->uses[g->nodes[ni].inputs[i]]++;
    for (int i = 0; i < g->n_outputs; i++)
        c->uses[g->outputs[i]]++;
    c->ni = kiln_xcalloc((size_t)g->n_nodes + 1, sizeof *c->ni);
    for (int ni = 0; ni < g->n_nodes; ni++) {
        cu_node_info *f = &c->ni[ni];
        f->norm_of = f->epi = f->epi_anchor = f->swiglu_mul = f->dual_wg = f->dual_wu = -1;
        f->group_next = f->rope_q = f->rope_k = f->split = -1;
    }
    kiln_groups(c); /* not optional: values inside them have no buffer */
    if (getenv("KILN_CUDA_NOFUSE"))
        return 0;
    fuse_residual(c);
    fuse_norms(c);
    fuse_split(c);
    fuse_swiglu(c);
    fuse_groups(c);
    fuse_rope(c);
    fuse_elementwise(c);
    return 0;
}
