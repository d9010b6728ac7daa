/* lm_build.c - builds kiln graphs for transformer LMs and BERT encoders from
 * a kiln_lm_config and a tensor source (see kiln_models.h).
 *
 * One builder serves every importer so that the graph convention (input and
 * output names, KV-cache layout, position computation) lives in one place:
 * the decoding runtime and the code generators rely on it. */
#include "kiln_models.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct builder {
    kiln_graph *g;
    const kiln_lm_config *c;
    const kiln_lm_source *src;
    kiln_err *err;
    int hd;      /* head_dim */
    int rot;     /* rotated dims per head */
    int pos_ids; /* position ids [batch, seq] (decoders) */
    int cos, sin;
} builder;

/* ---- nodes ---- */

/* Adds a node; returns the id of output 0 (all outputs in outs[] when
 * given), -1 on failure. out_names may be NULL (fresh names). */
static int op_n(builder *b, const char *op, const int *in, int n_in, const kiln_attr *at, int n_at,
                const char *const *out_names, int n_out, int *outs)
{
    int ni = kiln_graph_add_node(b->g, op, NULL, in, n_in, out_names, n_out, at, n_at, b->err);
    if (ni < 0)
        return kiln_err_prefix(b->err, "%s: ", b->src->origin);
    const kiln_node *n = &b->g->nodes[ni];
    for (int i = 0; outs && i < n_out; i++)
        outs[i] = n->outputs[i];
    return n->outputs[0];
}

static int op(builder *b, const char *opname, const char *out, const int *in, int n_in,
              const kiln_attr *at, int n_at)
{
    const char *names[1] = {out};
    return op_n(b, opname, in, n_in, at, n_at, out ? names : NULL, 1, NULL);
}

#define OP(b, name, out, ...) \
    op((b), (name), (out), (const int[]){__VA_ARGS__}, (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int)), NULL, 0)
#define OPA(b, name, out, attrs, ...)                                                                       \
    op((b), (name), (out), (const int[]){__VA_ARGS__}, (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int)), \
       (attrs), (int)(sizeof(attrs) / sizeof *(attrs)))

/* Small inline constants; name NULL picks a fresh one. */
static int add_const(builder *b, const char *name, const kiln_type *t, const void *data, size_t n)
{
    char *fresh = name ? NULL : kiln_graph_fresh_name(b->g, "c");
    int id = kiln_graph_add_const(b->g, name ? name : fresh, t, data, n, b->err);
    free(fresh);
    return id;
}

static int const_i64(builder *b, const int64_t *v, int n, int scalar)
{
    kiln_type t = {KILN_I64, scalar ? 0 : 1, {n}};
    return add_const(b, NULL, &t, v, sizeof(int64_t) * (size_t)n);
}

static int const_f32(builder *b, float v)
{
    kiln_type t = {KILN_F32, 0, {0}};
    return add_const(b, NULL, &t, &v, sizeof v);
}

/* ---- weights ---- */

static void shape_str(const int64_t *d, int rank, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < rank && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? ", " : "", (long long)d[i]);
    if (n < len)
        snprintf(buf + n, len - n, "]");
}

/* The weight stored under canonical name `cname`, checked against the
 * expected shape (rank values; -1 entries match anything). Returns the value
 * id; -2 when absent and optional; -1 on error. */
static int weight(builder *b, const char *cname, int required, int rank, const int64_t *dims)
{
    kiln_lm_tensor t;
    memset(&t, 0, sizeof t);
    int r = b->src->find(b->src->ctx, cname, &t, b->err);
    if (r < 0)
        return -1;
    if (r == 0) {
        if (!required)
            return -2;
        return kiln_errf(b->err, "%s: missing tensor '%s'", b->src->origin, t.name[0] ? t.name : cname);
    }
    int ok = t.rank == rank;
    for (int i = 0; ok && i < rank; i++)
        ok = dims[i] < 0 || dims[i] == t.dims[i];
    if (!ok) {
        char have[128], want[128];
        shape_str(t.dims, t.rank, have, sizeof have);
        shape_str(dims, rank, want, sizeof want);
        for (char *p = want; (p = strstr(p, "-1")) != NULL;)
            memcpy(p, "? ", 2);
        return kiln_errf(b->err, "%s: tensor '%s' has shape %s, expected %s", b->src->origin, t.name,
                         have, want);
    }
    const kiln_dtype_info *di = kiln_dtype_get(t.dtype);
    if (!di->is_float)
        return kiln_errf(b->err, "%s: tensor '%s' has element type %s, expected a float type",
                         b->src->origin, t.name, di->name);
    int id = kiln_graph_find(b->g, t.name);
    if (id >= 0) /* tied weights: one value, used twice */
        return id;
    kiln_type ty;
    memset(&ty, 0, sizeof ty);
    ty.dtype = t.dtype;
    ty.rank = t.rank;
    for (int i = 0; i < t.rank; i++)
        ty.dims[i] = t.dims[i];
    int f = kiln_graph_add_file(b->g, t.path);
    return kiln_graph_add_weight(b->g, t.name, &ty, f, t.offset, b->err);
}

static int weight1(builder *b, const char *cname, int required, int64_t d0)
{
    return weight(b, cname, required, 1, (const int64_t[]){d0});
}

static int weight2(builder *b, const char *cname, int required, int64_t d0, int64_t d1)
{
    return weight(b, cname, required, 2, (const int64_t[]){d0, d1});
}

/* Small vectors (norm scales, biases, position tables) computed in f32:
 * element-wise ops want matching input types. */
static int as_f32(builder *b, int v)
{
    if (v < 0 || b->g->values[v].type.dtype == KILN_F32)
        return v;
    kiln_attr at[] = {kiln_attr_dtype("to", KILN_F32)};
    return OPA(b, "Cast", NULL, at, v);
}

static int weight_f32(builder *b, const char *cname, int required, int64_t d0)
{
    int v = weight1(b, cname, required, d0);
    return v < 0 ? v : as_f32(b, v);
}

/* ---- building blocks ---- */

/* Linear with an optional bias (bias id < 0: none). */
static int linear(builder *b, const char *out, int x, int w, int bias)
{
    if (bias >= 0)
        return OP(b, "Linear", out, x, w, as_f32(b, bias));
    return OP(b, "Linear", out, x, w);
}

/* Norm of x with weights "<prefix>.weight" (and ".bias" for LayerNorm). */
static int norm(builder *b, const char *out, int x, const char *prefix)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int w = weight_f32(b, name, 1, b->c->dim);
    if (w < 0)
        return -1;
    if (b->c->norm_plus_one) {
        int one = const_f32(b, 1.0f);
        if (one < 0)
            return -1;
        w = OP(b, "Add", NULL, w, one);
        if (w < 0)
            return -1;
    }
    kiln_attr at[] = {kiln_attr_float("epsilon", b->c->norm_eps)};
    if (!b->c->norm_layer)
        return OPA(b, "RMSNormalization", out, at, x, w);
    snprintf(name, sizeof name, "%s.bias", prefix);
    int bias = weight_f32(b, name, 1, b->c->dim);
    if (bias < 0)
        return -1;
    return OPA(b, "LayerNormalization", out, at, x, w, bias);
}

static int activation(builder *b, int x)
{
    switch (b->c->act) {
    case KILN_LM_ACT_SILU: return OP(b, "Silu", NULL, x);
    case KILN_LM_ACT_RELU: return OP(b, "Relu", NULL, x);
    case KILN_LM_ACT_GELU_TANH: {
        kiln_attr at[] = {kiln_attr_str("approximate", "tanh")};
        return OPA(b, "Gelu", NULL, at, x);
    }
    default: return OP(b, "Gelu", NULL, x);
    }
}

/* ---- positions and RoPE ---- */

/* position_ids = past + arange(seq), broadcast to [batch, seq]; past is the
 * sequence length of past_key.0, so positions continue across decode steps.
 * Range runs from 0 to seq (not past to past+seq) so that its length is the
 * symbol `seq` for static shape inference: elementwise ops on shape values
 * do not carry symbolic contents. */
static int positions(builder *b, int tokens, int past0)
{
    kiln_attr past_at[] = {kiln_attr_int("start", 2), kiln_attr_int("end", 3)};
    kiln_attr seq_at[] = {kiln_attr_int("start", 1), kiln_attr_int("end", 2)};
    int axes0 = const_i64(b, (const int64_t[]){0}, 1, 0);
    int zero = const_i64(b, (const int64_t[]){0}, 1, 1);
    int one = const_i64(b, (const int64_t[]){1}, 1, 1);
    if (axes0 < 0 || zero < 0 || one < 0)
        return -1;
    int s_tok = OP(b, "Shape", "tokens_shape", tokens);
    int s_past = OPA(b, "Shape", "past_len", past_at, past0);
    int s_seq = s_tok < 0 ? -1 : OPA(b, "Shape", "seq_len", seq_at, tokens);
    int p0 = s_past < 0 || s_seq < 0 ? -1 : OP(b, "Squeeze", "past_scalar", s_past, axes0);
    int n = p0 < 0 ? -1 : OP(b, "Squeeze", "seq_scalar", s_seq, axes0);
    int r = n < 0 ? -1 : OP(b, "Range", "pos_range", zero, n, one);
    int pos = r < 0 ? -1 : OP(b, "Add", "pos_abs", r, p0);
    int u = pos < 0 ? -1 : OP(b, "Unsqueeze", "pos_row", pos, axes0);
    return u < 0 ? -1 : OP(b, "Expand", "position_ids", u, s_tok);
}

/* cos/sin caches [n_ctx, rot/2] for the family's frequencies and scaling. */
static int rope_caches(builder *b)
{
    const kiln_lm_config *c = b->c;
    int half = b->rot / 2;
    int64_t n = c->n_ctx > 0 ? c->n_ctx : 4096;
    if (n > KILN_LM_MAX_CTX)
        n = KILN_LM_MAX_CTX;
    double *inv = kiln_xmalloc(sizeof(double) * (size_t)half);
    for (int i = 0; i < half; i++) {
        double f = pow(c->rope_base, -2.0 * i / b->rot);
        if (c->rope_scaling == KILN_LM_ROPE_LINEAR) {
            f /= c->rope_factor; /* positions divided by the factor */
        } else if (c->rope_scaling == KILN_LM_ROPE_LLAMA3) {
            /* Llama 3.1: long wavelengths slowed by `factor`, short ones
             * kept, a smooth blend between the two cut-offs */
            double wavelen = 2 * M_PI / f;
            double lo_wl = c->rope_orig_ctx / c->rope_low_freq;
            double hi_wl = c->rope_orig_ctx / c->rope_high_freq;
            if (wavelen > lo_wl) {
                f /= c->rope_factor;
            } else if (wavelen >= hi_wl) {
                double s = (c->rope_orig_ctx / wavelen - c->rope_low_freq) /
                           (c->rope_high_freq - c->rope_low_freq);
                f = (1 - s) * f / c->rope_factor + s * f;
            }
        }
        if (c->rope_freq_factors)
            f /= c->rope_freq_factors[i];
        inv[i] = f;
    }
    size_t cnt = (size_t)n * (size_t)half;
    float *cs = kiln_xmalloc(sizeof(float) * (cnt ? cnt : 1));
    float *sn = kiln_xmalloc(sizeof(float) * (cnt ? cnt : 1));
    for (int64_t p = 0; p < n; p++)
        for (int i = 0; i < half; i++) {
            cs[p * half + i] = (float)cos((double)p * inv[i]);
            sn[p * half + i] = (float)sin((double)p * inv[i]);
        }
    kiln_type t = {KILN_F32, 2, {n, half}};
    b->cos = add_const(b, "rope_cos", &t, cs, sizeof(float) * cnt);
    b->sin = b->cos < 0 ? -1 : add_const(b, "rope_sin", &t, sn, sizeof(float) * cnt);
    free(inv);
    free(cs);
    free(sn);
    return b->sin < 0 ? -1 : 0;
}

static int rope(builder *b, const char *out, int x, int heads)
{
    kiln_attr at[] = {kiln_attr_int("num_heads", heads), kiln_attr_int("interleaved", b->c->interleaved),
                      kiln_attr_int("rotary_embedding_dim", b->rot == b->hd ? 0 : b->rot)};
    return OPA(b, "RotaryEmbedding", out, at, x, b->cos, b->sin, b->pos_ids);
}

/* ---- decoder pieces ---- */

static int attention(builder *b, int i, int q, int k, int v, int pk, int pv, int heads, int kv_heads,
                     int bias, int causal)
{
    char yn[64], kn[64], vn[64];
    snprintf(yn, sizeof yn, "blk.%d.attn", i);
    snprintf(kn, sizeof kn, "present_key.%d", i);
    snprintf(vn, sizeof vn, "present_value.%d", i);
    const char *names[3] = {yn, kn, vn};
    kiln_attr at[5];
    int na = 0;
    at[na++] = kiln_attr_int("num_heads", heads);
    at[na++] = kiln_attr_int("kv_num_heads", kv_heads);
    at[na++] = kiln_attr_int("causal", causal);
    if (b->c->attn_scale > 0)
        at[na++] = kiln_attr_float("scale", b->c->attn_scale);
    if (b->c->window > 0)
        at[na++] = kiln_attr_int("window", b->c->window);
    int in[6] = {q, k, v, pk, pv, bias};
    int n_in = bias >= 0 ? 6 : (pk >= 0 ? 5 : 3);
    return op_n(b, "GQAttention", in, n_in, at, na, names, 3, NULL);
}

/* Mixture-of-experts feed-forward: router Linear, then one SparseMoE node
 * over all experts (stacked tensors when the file has them). */
static int moe(builder *b, int i, int x)
{
    const kiln_lm_config *c = b->c;
    int64_t E = c->n_expert, F = c->ffn_dim, D = c->dim;
    char name[128];
    snprintf(name, sizeof name, "blk.%d.ffn_gate_inp.weight", i);
    int router = weight2(b, name, 1, E, D);
    if (router < 0)
        return -1;
    int logits = linear(b, NULL, x, router, -1);
    if (logits < 0)
        return -1;
    int in[2 + 3 * 20];
    int n_in = 2;
    in[0] = x;
    in[1] = logits;
    static const char *parts[3] = {"gate", "up", "down"};
    snprintf(name, sizeof name, "blk.%d.ffn_gate_exps.weight", i);
    int stacked = weight(b, name, 0, 3, (const int64_t[]){E, F, D});
    if (stacked == -1)
        return -1;
    if (stacked >= 0) {
        in[n_in++] = stacked;
        snprintf(name, sizeof name, "blk.%d.ffn_up_exps.weight", i);
        in[n_in++] = weight(b, name, 1, 3, (const int64_t[]){E, F, D});
        snprintf(name, sizeof name, "blk.%d.ffn_down_exps.weight", i);
        in[n_in++] = weight(b, name, 1, 3, (const int64_t[]){E, D, F});
        if (in[3] < 0 || in[4] < 0)
            return -1;
    } else {
        if (E > 20)
            return kiln_errf(b->err, "%s: %lld experts stored as separate tensors (at most 20 are "
                             "supported in that form)", b->src->origin, (long long)E);
        for (int p = 0; p < 3; p++)
            for (int e = 0; e < E; e++) {
                snprintf(name, sizeof name, "blk.%d.ffn_%s.%d.weight", i, parts[p], e);
                int w = p < 2 ? weight2(b, name, 1, F, D) : weight2(b, name, 1, D, F);
                if (w < 0)
                    return -1;
                in[n_in++] = w;
            }
    }
    static const char *acts[] = {"silu", "gelu", "gelu_tanh", "relu"};
    kiln_attr at[] = {kiln_attr_int("top_k", c->n_expert_used), kiln_attr_int("normalize", c->moe_norm),
                      kiln_attr_str("activation", acts[c->act])};
    return op(b, "SparseMoE", NULL, in, n_in, at, 3);
}

static int ffn(builder *b, int i, int x)
{
    const kiln_lm_config *c = b->c;
    if (c->n_expert > 0)
        return moe(b, i, x);
    char name[128];
    int64_t F = c->ffn_dim, D = c->dim;
    snprintf(name, sizeof name, "blk.%d.ffn_up.weight", i);
    int up_w = weight2(b, name, 1, F, D);
    snprintf(name, sizeof name, "blk.%d.ffn_up.bias", i);
    int up_b = up_w < 0 ? -1 : weight1(b, name, 0, F);
    snprintf(name, sizeof name, "blk.%d.ffn_down.weight", i);
    int down_w = up_b == -1 ? -1 : weight2(b, name, 1, D, F);
    snprintf(name, sizeof name, "blk.%d.ffn_down.bias", i);
    int down_b = down_w < 0 ? -1 : weight1(b, name, 0, D);
    if (down_b == -1)
        return -1;
    int up = linear(b, NULL, x, up_w, up_b);
    if (up < 0)
        return -1;
    int hid;
    if (c->gated) {
        snprintf(name, sizeof name, "blk.%d.ffn_gate.weight", i);
        int gate_w = weight2(b, name, 1, F, D);
        snprintf(name, sizeof name, "blk.%d.ffn_gate.bias", i);
        int gate_b = gate_w < 0 ? -1 : weight1(b, name, 0, F);
        int gate = gate_b == -1 ? -1 : linear(b, NULL, x, gate_w, gate_b);
        int act = gate < 0 ? -1 : activation(b, gate);
        hid = act < 0 ? -1 : OP(b, "Mul", NULL, act, up);
    } else {
        hid = activation(b, up);
    }
    return hid < 0 ? -1 : linear(b, NULL, hid, down_w, down_b);
}

/* Projection weight + optional bias for a llama-style attention. */
static int proj(builder *b, int i, const char *what, int x, int64_t n, int64_t k, const char *out)
{
    char name[128];
    snprintf(name, sizeof name, "blk.%d.%s.weight", i, what);
    int w = weight2(b, name, 1, n, k);
    if (w < 0)
        return -1;
    snprintf(name, sizeof name, "blk.%d.%s.bias", i, what);
    int bias = weight1(b, name, 0, n);
    if (bias == -1)
        return -1;
    return linear(b, out, x, w, bias);
}

/* logits = head(norm(h[:, -1, :])): the norm is per position, so taking
 * the last position first saves the work on all the others. */
static int lm_head(builder *b, int h)
{
    const kiln_lm_config *c = b->c;
    kiln_attr at[] = {kiln_attr_int("axis", 1)};
    int minus1 = const_i64(b, (const int64_t[]){-1}, 1, 1);
    int last = minus1 < 0 ? -1 : OPA(b, "Gather", "last_hidden", at, h, minus1);
    int x = last < 0 ? -1 : norm(b, "final_norm", last, "output_norm");
    if (x < 0)
        return -1;
    int w = -2;
    if (!c->tied)
        w = weight2(b, "output.weight", 1, c->vocab, c->dim);
    else
        w = weight2(b, "token_embd.weight", 1, c->vocab, c->dim);
    if (w < 0)
        return -1;
    return linear(b, "logits", x, w, -1);
}

static int embed(builder *b, int tokens)
{
    const kiln_lm_config *c = b->c;
    int tab = weight2(b, "token_embd.weight", 1, c->vocab, c->dim);
    if (tab < 0)
        return -1;
    kiln_attr at[] = {kiln_attr_int("axis", 0)};
    int h = as_f32(b, OPA(b, "Gather", "embed", at, tab, tokens));
    if (h >= 0 && c->embed_scale > 0) {
        int s = const_f32(b, (float)c->embed_scale);
        h = s < 0 ? -1 : OP(b, "Mul", NULL, h, s);
    }
    return h;
}

/* GPT-2's Conv1D: weight stored [in, out], so y = x @ W + bias. */
static int conv1d(builder *b, int i, const char *what, int x, int64_t k, int64_t n)
{
    char name[128];
    snprintf(name, sizeof name, "blk.%d.%s.weight", i, what);
    int w = as_f32(b, weight2(b, name, 1, k, n));
    snprintf(name, sizeof name, "blk.%d.%s.bias", i, what);
    int bias = w < 0 ? -1 : weight_f32(b, name, 1, n);
    int mm = bias < 0 ? -1 : OP(b, "MatMul", NULL, x, w);
    return mm < 0 ? -1 : OP(b, "Add", NULL, mm, bias);
}

static int decoder(builder *b)
{
    const kiln_lm_config *c = b->c;
    kiln_graph *g = b->g;
    kiln_dim batch = kiln_dim_var(&g->syms, "batch");
    kiln_dim seq = kiln_dim_var(&g->syms, "seq");
    kiln_dim past = kiln_dim_var(&g->syms, "past");
    int kvh = c->kind == KILN_LM_GPT2 ? c->n_head : c->n_kv_head;
    kiln_type tt = {KILN_I64, 2, {batch, seq}};
    kiln_type kt = {KILN_F32, 4, {batch, kvh, past, b->hd}};
    int tokens = kiln_graph_add_input(g, "tokens", &tt, b->err);
    if (tokens < 0)
        return -1;
    int *pk = kiln_xmalloc(sizeof(int) * (size_t)c->n_layer * 2);
    int *outs = kiln_xmalloc(sizeof(int) * ((size_t)c->n_layer * 2 + 1));
    int rc = -1;
    for (int i = 0; i < c->n_layer; i++) {
        char name[64];
        snprintf(name, sizeof name, "past_key.%d", i);
        pk[2 * i] = kiln_graph_add_input(g, name, &kt, b->err);
        snprintf(name, sizeof name, "past_value.%d", i);
        pk[2 * i + 1] = pk[2 * i] < 0 ? -1 : kiln_graph_add_input(g, name, &kt, b->err);
        if (pk[2 * i + 1] < 0)
            goto out;
    }
    b->pos_ids = positions(b, tokens, pk[0]);
    if (b->pos_ids < 0 || (c->kind == KILN_LM_LLAMA && rope_caches(b)))
        goto out;
    int h = embed(b, tokens);
    if (h < 0)
        goto out;
    int64_t D = c->dim, Q = (int64_t)c->n_head * b->hd, KV = (int64_t)kvh * b->hd;
    if (c->kind == KILN_LM_GPT2) {
        int pe = weight2(b, "position_embd.weight", 1, -1, D);
        kiln_attr at[] = {kiln_attr_int("axis", 0)};
        int pos = pe < 0 ? -1 : as_f32(b, OPA(b, "Gather", "pos_embed", at, pe, b->pos_ids));
        h = pos < 0 ? -1 : OP(b, "Add", NULL, h, pos);
        if (h < 0)
            goto out;
    }
    for (int i = 0; i < c->n_layer; i++) {
        char pre[64], name[64], qn[64], kn[64], vn[64];
        snprintf(pre, sizeof pre, "blk.%d.attn_norm", i);
        snprintf(name, sizeof name, "blk.%d.attn_in", i);
        int x = norm(b, name, h, pre);
        if (x < 0)
            goto out;
        snprintf(qn, sizeof qn, "blk.%d.q", i);
        snprintf(kn, sizeof kn, "blk.%d.k", i);
        snprintf(vn, sizeof vn, "blk.%d.v", i);
        int q, k, v, y, o;
        if (c->kind == KILN_LM_GPT2) {
            /* GPT-2 has one fused projection; split its output */
            int qkv = conv1d(b, i, "attn_qkv", x, D, 3 * D);
            int split = qkv < 0 ? -1 : const_i64(b, (const int64_t[]){D, D, D}, 3, 0);
            if (split < 0)
                goto out;
            kiln_attr at[] = {kiln_attr_int("axis", -1)};
            const char *names[3] = {qn, kn, vn};
            int parts[3];
            if (op_n(b, "Split", (const int[]){qkv, split}, 2, at, 1, names, 3, parts) < 0)
                goto out;
            q = parts[0];
            k = parts[1];
            v = parts[2];
        } else {
            q = proj(b, i, "attn_q", x, Q, D, qn);
            k = q < 0 ? -1 : proj(b, i, "attn_k", x, KV, D, kn);
            v = k < 0 ? -1 : proj(b, i, "attn_v", x, KV, D, vn);
            if (v < 0)
                goto out;
            snprintf(qn, sizeof qn, "blk.%d.q_rot", i);
            snprintf(kn, sizeof kn, "blk.%d.k_rot", i);
            q = rope(b, qn, q, c->n_head);
            k = q < 0 ? -1 : rope(b, kn, k, kvh);
            if (k < 0)
                goto out;
        }
        y = attention(b, i, q, k, v, pk[2 * i], pk[2 * i + 1], c->n_head, kvh, -1, 1);
        if (y < 0)
            goto out;
        snprintf(name, sizeof name, "present_key.%d", i);
        outs[1 + 2 * i] = kiln_graph_find(g, name);
        snprintf(name, sizeof name, "present_value.%d", i);
        outs[2 + 2 * i] = kiln_graph_find(g, name);
        if (c->kind == KILN_LM_GPT2)
            o = conv1d(b, i, "attn_output", y, D, D);
        else
            o = proj(b, i, "attn_output", y, D, Q, NULL);
        snprintf(name, sizeof name, "blk.%d.attn_res", i);
        h = o < 0 ? -1 : OP(b, "Add", name, h, o);
        if (h < 0)
            goto out;
        snprintf(pre, sizeof pre, "blk.%d.ffn_norm", i);
        snprintf(name, sizeof name, "blk.%d.ffn_in", i);
        x = norm(b, name, h, pre);
        if (x < 0)
            goto out;
        int f;
        if (c->kind == KILN_LM_GPT2) {
            int u = conv1d(b, i, "ffn_up", x, D, c->ffn_dim);
            u = u < 0 ? -1 : activation(b, u);
            f = u < 0 ? -1 : conv1d(b, i, "ffn_down", u, c->ffn_dim, D);
        } else {
            f = ffn(b, i, x);
        }
        snprintf(name, sizeof name, "blk.%d.out", i);
        h = f < 0 ? -1 : OP(b, "Add", name, h, f);
        if (h < 0)
            goto out;
    }
    outs[0] = lm_head(b, h);
    if (outs[0] < 0)
        goto out;
    kiln_graph_set_outputs(g, outs, 1 + 2 * c->n_layer);
    rc = 0;
out:
    free(pk);
    free(outs);
    return rc;
}

/* ---- BERT encoder ---- */

static int encoder(builder *b)
{
    const kiln_lm_config *c = b->c;
    kiln_graph *g = b->g;
    kiln_dim batch = kiln_dim_var(&g->syms, "batch");
    kiln_dim seq = kiln_dim_var(&g->syms, "seq");
    kiln_type tt = {KILN_I64, 2, {batch, seq}};
    int64_t D = c->dim;
    int ids = kiln_graph_add_input(g, "input_ids", &tt, b->err);
    int mask = ids < 0 ? -1 : kiln_graph_add_input(g, "attention_mask", &tt, b->err);
    if (mask < 0)
        return -1;
    int types = -2;
    kiln_attr ax0[] = {kiln_attr_int("axis", 0)};
    int type_tab = c->type_vocab > 0 ? weight2(b, "token_types.weight", 0, c->type_vocab, D) : -2;
    if (type_tab == -1)
        return -1;
    if (type_tab >= 0 && c->type_vocab > 1) {
        types = kiln_graph_add_input(g, "token_type_ids", &tt, b->err);
        if (types < 0)
            return -1;
    }
    int h = embed(b, ids);
    if (h < 0)
        return -1;
    /* absolute positions 0..seq-1 */
    kiln_attr seq_at[] = {kiln_attr_int("start", 1), kiln_attr_int("end", 2)};
    int zero = const_i64(b, (const int64_t[]){0}, 1, 1);
    int one = const_i64(b, (const int64_t[]){1}, 1, 1);
    int axes0 = const_i64(b, (const int64_t[]){0}, 1, 0);
    int s_seq = one < 0 || axes0 < 0 ? -1 : OPA(b, "Shape", "seq_len", seq_at, ids);
    int n = s_seq < 0 ? -1 : OP(b, "Squeeze", NULL, s_seq, axes0);
    int pos = n < 0 ? -1 : OP(b, "Range", "position_ids", zero, n, one);
    int pe = pos < 0 ? -1 : weight2(b, "position_embd.weight", 1, -1, D);
    int pv = pe < 0 ? -1 : as_f32(b, OPA(b, "Gather", "pos_embed", ax0, pe, pos));
    h = pv < 0 ? -1 : OP(b, "Add", NULL, h, pv);
    if (h < 0)
        return -1;
    if (type_tab >= 0) {
        int tv = types >= 0 ? OPA(b, "Gather", "type_embed", ax0, type_tab, types)
                            : OPA(b, "Gather", "type_embed", ax0, type_tab, zero);
        tv = as_f32(b, tv);
        h = tv < 0 ? -1 : OP(b, "Add", NULL, h, tv);
        if (h < 0)
            return -1;
    }
    h = norm(b, "embed_norm", h, "token_embd_norm");
    /* additive mask: 0 where attended, the most negative float elsewhere
     * (as transformers does), shaped [batch, 1, 1, seq] */
    kiln_attr cast_at[] = {kiln_attr_dtype("to", KILN_F32)};
    int mf = h < 0 ? -1 : OPA(b, "Cast", "mask_f32", cast_at, mask);
    int onef = mf < 0 ? -1 : const_f32(b, 1.0f);
    int negf = onef < 0 ? -1 : const_f32(b, -3.4028234663852886e+38f);
    int inv = negf < 0 ? -1 : OP(b, "Sub", NULL, onef, mf);
    int neg = inv < 0 ? -1 : OP(b, "Mul", NULL, inv, negf);
    int axes12 = neg < 0 ? -1 : const_i64(b, (const int64_t[]){1, 2}, 2, 0);
    int bias = axes12 < 0 ? -1 : OP(b, "Unsqueeze", "attn_bias", neg, axes12);
    if (bias < 0)
        return -1;
    for (int i = 0; i < c->n_layer; i++) {
        char name[64], pre[64];
        int q = proj(b, i, "attn_q", h, D, D, NULL);
        int k = q < 0 ? -1 : proj(b, i, "attn_k", h, D, D, NULL);
        int v = k < 0 ? -1 : proj(b, i, "attn_v", h, D, D, NULL);
        int y = v < 0 ? -1 : attention(b, i, q, k, v, -1, -1, c->n_head, c->n_head, bias, 0);
        int o = y < 0 ? -1 : proj(b, i, "attn_output", y, D, D, NULL);
        int r = o < 0 ? -1 : OP(b, "Add", NULL, h, o);
        snprintf(pre, sizeof pre, "blk.%d.attn_output_norm", i);
        snprintf(name, sizeof name, "blk.%d.attn_out", i);
        h = r < 0 ? -1 : norm(b, name, r, pre);
        int f = h < 0 ? -1 : ffn(b, i, h);
        r = f < 0 ? -1 : OP(b, "Add", NULL, h, f);
        snprintf(pre, sizeof pre, "blk.%d.layer_output_norm", i);
        snprintf(name, sizeof name, "blk.%d.out", i);
        h = r < 0 ? -1 : norm(b, name, r, pre);
        if (h < 0)
            return -1;
    }
    /* sentence_embedding = sum(h * mask) / max(sum(mask), 1e-9) over seq,
     * the mean pooling of sentence-transformers */
    int out = OP(b, "Identity", "last_hidden_state", h);
    int axes2 = out < 0 ? -1 : const_i64(b, (const int64_t[]){2}, 1, 0);
    int me = axes2 < 0 ? -1 : OP(b, "Unsqueeze", NULL, mf, axes2);
    int hm = me < 0 ? -1 : OP(b, "Mul", NULL, out, me);
    int axes1 = hm < 0 ? -1 : const_i64(b, (const int64_t[]){1}, 1, 0);
    kiln_attr red_at[] = {kiln_attr_int("keepdims", 0)};
    int sum = axes1 < 0 ? -1 : OPA(b, "ReduceSum", NULL, red_at, hm, axes1);
    int cnt = sum < 0 ? -1 : OPA(b, "ReduceSum", NULL, red_at, me, axes1);
    int eps = cnt < 0 ? -1 : const_f32(b, 1e-9f);
    int den = eps < 0 ? -1 : OP(b, "Max", NULL, cnt, eps);
    int pooled = den < 0 ? -1 : OP(b, "Div", "sentence_embedding", sum, den);
    if (pooled < 0)
        return -1;
    kiln_graph_set_outputs(g, (const int[]){out, pooled}, 2);
    return 0;
}

/* ---- entry ---- */

static int check_config(const kiln_lm_config *c, const char *origin, kiln_err *err)
{
    if (c->n_layer < 1 || c->dim < 1 || c->n_head < 1 || c->vocab < 1 || c->ffn_dim < 1)
        return kiln_errf(err, "%s: bad model dimensions (layers %d, hidden %d, heads %d, vocab %d, ffn %d)",
                         origin, c->n_layer, c->dim, c->n_head, c->vocab, c->ffn_dim);
    if (c->n_layer > 4096 || c->n_head > 4096 || c->dim > (1 << 20))
        return kiln_errf(err, "%s: implausible model dimensions (layers %d, hidden %d, heads %d)", origin,
                         c->n_layer, c->dim, c->n_head);
    if (c->kind == KILN_LM_LLAMA) {
        if (c->n_kv_head < 1 || c->n_head % c->n_kv_head)
            return kiln_errf(err, "%s: %d attention heads are not a multiple of %d key/value heads",
                             origin, c->n_head, c->n_kv_head);
        int hd = c->head_dim > 0 ? c->head_dim : c->dim / c->n_head;
        int rot = c->rope_dim > 0 ? c->rope_dim : hd;
        if (hd < 2 || rot % 2 || rot > hd)
            return kiln_errf(err, "%s: bad rotary dimension %d for head size %d", origin, rot, hd);
        if (!(c->rope_base > 0))
            return kiln_errf(err, "%s: bad rope base %g", origin, c->rope_base);
        if (c->rope_scaling != KILN_LM_ROPE_PLAIN && !(c->rope_factor > 0))
            return kiln_errf(err, "%s: bad rope scaling factor %g", origin, c->rope_factor);
        if (c->rope_scaling == KILN_LM_ROPE_LLAMA3 &&
            !(c->rope_low_freq > 0 && c->rope_high_freq > c->rope_low_freq && c->rope_orig_ctx > 0))
            return kiln_errf(err, "%s: bad llama3 rope scaling parameters", origin);
    } else if (c->dim % c->n_head) {
        return kiln_errf(err, "%s: hidden size %d is not a multiple of %d heads", origin, c->dim,
                         c->n_head);
    }
    if (c->n_expert > 0 && (c->n_expert_used < 1 || c->n_expert_used > c->n_expert))
        return kiln_errf(err, "%s: %d experts per token out of %d", origin, c->n_expert_used,
                         c->n_expert);
    return 0;
}

kiln_graph *kiln_lm_build(const kiln_lm_config *cfg, const kiln_lm_source *src, kiln_err *err)
{
    if (check_config(cfg, src->origin, err))
        return NULL;
    builder b;
    memset(&b, 0, sizeof b);
    b.g = kiln_graph_new(cfg->arch);
    b.c = cfg;
    b.src = src;
    b.err = err;
    b.hd = cfg->head_dim > 0 ? cfg->head_dim : cfg->dim / cfg->n_head;
    b.rot = cfg->rope_dim > 0 ? cfg->rope_dim : b.hd;
    int rc = cfg->kind == KILN_LM_BERT ? encoder(&b) : decoder(&b);
    if (rc == 0 && kiln_verify(b.g, err))
        rc = kiln_err_prefix(err, "%s: ", src->origin);
    if (rc) {
        kiln_graph_free(b.g);
        return NULL;
    }
    return b.g;
}
