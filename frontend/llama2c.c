/* llama2c.c - imports llama2.c checkpoints (Karpathy's run.c format).
 *
 * Header: 7 int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len}; a negative vocab_size means the classifier is stored
 * separately (unshared). Then f32 tensors, each for all layers at once:
 * token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim],
 * wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim],
 * w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim],
 * rms_final [dim], two legacy RoPE tables [seq_len, head_size/2] (skipped),
 * then wcls [vocab, dim] when unshared. Matrices are [out, in], as Linear
 * wants. run.c rotates adjacent pairs and uses RMSNorm eps 1e-5. */
#include "kiln_models.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct l2c_src {
    char *path;
    int64_t dim, hidden, n_layers, kv_dim, vocab, head;
    uint64_t off[11]; /* start of each tensor group, in file order */
    uint64_t wcls;
} l2c_src;

enum { T_EMB, T_RMS_ATT, T_WQ, T_WK, T_WV, T_WO, T_RMS_FFN, T_W1, T_W2, T_W3, T_RMS_FINAL };

static int l2c_find(void *ctx, const char *name, kiln_lm_tensor *t, kiln_err *err)
{
    (void)err;
    const l2c_src *s = ctx;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->path = s->path;
    t->dtype = KILN_F32;
    int layer = -1, n = 0;
    const char *key = name;
    if (sscanf(name, "blk.%d.%n", &layer, &n) == 1 && n > 0)
        key = name + n;
    int64_t D = s->dim, H = s->hidden, KV = s->kv_dim;
    struct {
        const char *key;
        int group;
        int64_t rows, cols; /* cols 0: a vector */
    } map[] = {
        {"token_embd.weight", T_EMB, s->vocab, D},  {"output_norm.weight", T_RMS_FINAL, D, 0},
        {"attn_norm.weight", T_RMS_ATT, D, 0},      {"attn_q.weight", T_WQ, D, D},
        {"attn_k.weight", T_WK, KV, D},             {"attn_v.weight", T_WV, KV, D},
        {"attn_output.weight", T_WO, D, D},         {"ffn_norm.weight", T_RMS_FFN, D, 0},
        {"ffn_gate.weight", T_W1, H, D},            {"ffn_down.weight", T_W2, D, H},
        {"ffn_up.weight", T_W3, H, D},
    };
    if (strcmp(name, "output.weight") == 0) {
        if (!s->wcls)
            return 0;
        t->offset = s->wcls;
        t->rank = 2;
        t->dims[0] = s->vocab;
        t->dims[1] = D;
        return 1;
    }
    for (size_t i = 0; i < sizeof map / sizeof *map; i++) {
        if (strcmp(map[i].key, key) != 0)
            continue;
        int per_layer = map[i].group != T_EMB && map[i].group != T_RMS_FINAL;
        if (per_layer != (layer >= 0) || layer >= s->n_layers)
            return 0;
        int64_t elems = map[i].rows * (map[i].cols ? map[i].cols : 1);
        t->offset = s->off[map[i].group] + (uint64_t)(per_layer ? layer : 0) * (uint64_t)elems * 4;
        t->rank = map[i].cols ? 2 : 1;
        t->dims[0] = map[i].rows;
        t->dims[1] = map[i].cols;
        return 1;
    }
    return 0; /* e.g. biases: llama2.c has none */
}

kiln_graph *kiln_import_llama2c(const char *path, kiln_err *err)
{
    kiln_map m;
    if (kiln_map_file(path, &m, err))
        return NULL;
    kiln_graph *g = NULL;
    int32_t h[7];
    if (m.size < sizeof h) {
        kiln_errf(err, "%s: truncated llama2.c checkpoint (%zu bytes, header needs 28)", path, m.size);
        goto out;
    }
    memcpy(h, m.data, sizeof h);
    int shared = h[5] > 0;
    int64_t dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4];
    int64_t vocab = h[5] < 0 ? -(int64_t)h[5] : h[5], seq_len = h[6];
    if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || vocab <= 0 ||
        seq_len <= 0 || dim % heads || heads % kv_heads || (dim / heads) % 2 || dim > 65536 ||
        hidden > 1 << 20 || layers > 1024 || vocab > 1 << 24 || seq_len > 1 << 24) {
        kiln_errf(err, "%s: not a llama2.c checkpoint (header dim %d, hidden %d, layers %d, heads %d, "
                  "kv_heads %d, vocab %d, seq_len %d)", path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
        goto out;
    }
    l2c_src s;
    memset(&s, 0, sizeof s);
    s.dim = dim;
    s.hidden = hidden;
    s.n_layers = layers;
    s.head = dim / heads;
    s.kv_dim = kv_heads * s.head;
    s.vocab = vocab;
    /* element counts of the groups, in file order */
    int64_t sizes[11] = {vocab * dim,          layers * dim,          layers * dim * dim,
                         layers * s.kv_dim * dim, layers * s.kv_dim * dim, layers * dim * dim,
                         layers * dim,          layers * hidden * dim, layers * dim * hidden,
                         layers * hidden * dim, dim};
    uint64_t off = sizeof h;
    for (int i = 0; i < 11; i++) {
        s.off[i] = off;
        off += (uint64_t)sizes[i] * 4;
    }
    off += 2 * (uint64_t)seq_len * (uint64_t)(s.head / 2) * 4; /* legacy RoPE tables */
    if (!shared) {
        s.wcls = off;
        off += (uint64_t)vocab * (uint64_t)dim * 4;
    }
    if (off > m.size) {
        kiln_errf(err, "%s: truncated llama2.c checkpoint (needs %llu bytes, has %zu)", path,
                  (unsigned long long)off, m.size);
        goto out;
    }
    s.path = realpath(path, NULL);
    if (!s.path)
        s.path = kiln_xstrdup(path);
    kiln_lm_config c;
    memset(&c, 0, sizeof c);
    c.arch = "llama2c";
    c.kind = KILN_LM_LLAMA;
    c.n_layer = (int)layers;
    c.dim = (int)dim;
    c.n_head = (int)heads;
    c.n_kv_head = (int)kv_heads;
    c.ffn_dim = (int)hidden;
    c.vocab = (int)vocab;
    c.n_ctx = (int)seq_len;
    c.norm_eps = 1e-5;
    c.act = KILN_LM_ACT_SILU;
    c.gated = 1;
    c.interleaved = 1;
    c.rope_base = 10000.0;
    c.tied = shared;
    kiln_lm_source src = {path, &s, l2c_find};
    g = kiln_lm_build(&c, &src, err);
    free(s.path);
out:
    kiln_unmap_file(&m);
    return g;
}
