/* hf_config.c - imports a Hugging Face model folder: config.json (cJSON)
 * plus model.safetensors or a sharded model.safetensors.index.json.
 *
 * config.json picks the family; a per-family table maps kiln's canonical
 * tensor names (GGUF naming) to the transformers state-dict names. Fused
 * projections (phi3's qkv_proj and gate_up_proj) are split by row ranges of
 * the stored tensor, so they stay zero-copy file references. */
#include "kiln_models.h"
#include "kiln_safetensors.h"

#include "cJSON.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FAM_LLAMA, FAM_PHI3, FAM_MIXTRAL, FAM_GPT2, FAM_BERT };

typedef struct name_map {
    const char *canon; /* canonical key without "blk.N." and ".weight"/".bias" */
    const char *native; /* printf format; %d is the layer */
} name_map;

static const name_map llama_names[] = {
    {"token_embd", "model.embed_tokens"},
    {"output_norm", "model.norm"},
    {"output", "lm_head"},
    {"attn_norm", "model.layers.%d.input_layernorm"},
    {"attn_q", "model.layers.%d.self_attn.q_proj"},
    {"attn_k", "model.layers.%d.self_attn.k_proj"},
    {"attn_v", "model.layers.%d.self_attn.v_proj"},
    {"attn_output", "model.layers.%d.self_attn.o_proj"},
    {"ffn_norm", "model.layers.%d.post_attention_layernorm"},
    {"ffn_gate", "model.layers.%d.mlp.gate_proj"},
    {"ffn_up", "model.layers.%d.mlp.up_proj"},
    {"ffn_down", "model.layers.%d.mlp.down_proj"},
    /* mixtral */
    {"ffn_gate_inp", "model.layers.%d.block_sparse_moe.gate"},
    {"ffn_gate.", "model.layers.%d.block_sparse_moe.experts.%d.w1"},
    {"ffn_up.", "model.layers.%d.block_sparse_moe.experts.%d.w3"},
    {"ffn_down.", "model.layers.%d.block_sparse_moe.experts.%d.w2"},
    /* phi3: row ranges of fused tensors (see hf_find) */
    {"attn_qkv", "model.layers.%d.self_attn.qkv_proj"},
    {"ffn_gate_up", "model.layers.%d.mlp.gate_up_proj"},
    {0, 0}};

static const name_map gpt2_names[] = {
    {"token_embd", "wte"},
    {"position_embd", "wpe"},
    {"output_norm", "ln_f"},
    {"output", "lm_head"},
    {"attn_norm", "h.%d.ln_1"},
    {"attn_qkv", "h.%d.attn.c_attn"},
    {"attn_output", "h.%d.attn.c_proj"},
    {"ffn_norm", "h.%d.ln_2"},
    {"ffn_up", "h.%d.mlp.c_fc"},
    {"ffn_down", "h.%d.mlp.c_proj"},
    {0, 0}};

static const name_map bert_names[] = {
    {"token_embd", "embeddings.word_embeddings"},
    {"position_embd", "embeddings.position_embeddings"},
    {"token_types", "embeddings.token_type_embeddings"},
    {"token_embd_norm", "embeddings.LayerNorm"},
    {"attn_q", "encoder.layer.%d.attention.self.query"},
    {"attn_k", "encoder.layer.%d.attention.self.key"},
    {"attn_v", "encoder.layer.%d.attention.self.value"},
    {"attn_output", "encoder.layer.%d.attention.output.dense"},
    {"attn_output_norm", "encoder.layer.%d.attention.output.LayerNorm"},
    {"ffn_up", "encoder.layer.%d.intermediate.dense"},
    {"ffn_down", "encoder.layer.%d.output.dense"},
    {"layer_output_norm", "encoder.layer.%d.output.LayerNorm"},
    {0, 0}};

typedef struct hf_src {
    kiln_safetensors *st;
    int family;
    const name_map *names;
    const char *alt_prefix; /* tried when the plain name is absent ("transformer.", "bert.") */
    int64_t q_rows, kv_rows, ffn; /* phi3 fused row ranges */
} hf_src;

/* The stored tensor `native` (or alt_prefix + native). */
static const kiln_st_tensor *st_lookup(const hf_src *s, const char *native)
{
    const kiln_st_tensor *t = kiln_st_find(s->st, native);
    if (!t && s->alt_prefix) {
        char buf[300];
        snprintf(buf, sizeof buf, "%s%s", s->alt_prefix, native);
        t = kiln_st_find(s->st, buf);
    }
    return t;
}

static void fill(const hf_src *s, const kiln_st_tensor *st, kiln_lm_tensor *t)
{
    snprintf(t->name, sizeof t->name, "%s", st->name);
    t->path = kiln_st_file_path(s->st, st->file);
    t->offset = st->offset;
    t->dtype = st->dtype;
    t->rank = st->rank;
    for (int i = 0; i < st->rank && i < 8; i++)
        t->dims[i] = st->dims[i];
}

static int hf_find(void *ctx, const char *name, kiln_lm_tensor *t, kiln_err *err)
{
    const hf_src *s = ctx;
    int layer = -1, expert = -1, n = 0;
    char key[128], suffix[16];
    const char *rest = name;
    if (sscanf(name, "blk.%d.%n", &layer, &n) == 1 && n > 0)
        rest = name + n;
    const char *dot = strrchr(rest, '.');
    if (!dot || (size_t)(dot - rest) >= sizeof key)
        return kiln_errf(err, "internal: bad canonical tensor name '%s'", name);
    snprintf(key, sizeof key, "%.*s", (int)(dot - rest), rest);
    snprintf(suffix, sizeof suffix, "%s", dot + 1);
    /* expert tensors: "ffn_gate.3" -> key "ffn_gate.", expert 3 */
    char *edot = strchr(key, '.');
    if (edot) {
        expert = atoi(edot + 1);
        edot[1] = 0;
    }
    /* phi3 keeps q/k/v and gate/up fused: take row ranges */
    int64_t row0 = 0, rows = -1;
    if (s->family == FAM_PHI3) {
        if (strcmp(key, "attn_q") == 0 || strcmp(key, "attn_k") == 0 || strcmp(key, "attn_v") == 0) {
            row0 = key[5] == 'q' ? 0 : key[5] == 'k' ? s->q_rows : s->q_rows + s->kv_rows;
            rows = key[5] == 'q' ? s->q_rows : s->kv_rows;
            snprintf(key, sizeof key, "attn_qkv");
        } else if (strcmp(key, "ffn_gate") == 0 || strcmp(key, "ffn_up") == 0) {
            row0 = key[4] == 'g' ? 0 : s->ffn;
            rows = s->ffn;
            snprintf(key, sizeof key, "ffn_gate_up");
        }
    }
    const name_map *m = s->names;
    while (m->canon && strcmp(m->canon, key) != 0)
        m++;
    if (!m->canon) { /* this family has no such tensor */
        snprintf(t->name, sizeof t->name, "%s", name);
        return 0;
    }
    char native[256];
    if (expert >= 0)
        snprintf(native, sizeof native, m->native, layer, expert);
    else
        snprintf(native, sizeof native, m->native, layer);
    size_t nl = strlen(native);
    snprintf(native + nl, sizeof native - nl, ".%s", suffix);
    snprintf(t->name, sizeof t->name, "%s", native);
    const kiln_st_tensor *st = st_lookup(s, native);
    if (!st)
        return 0;
    fill(s, st, t);
    if (rows < 0)
        return 1;
    if (strcmp(suffix, "bias") == 0) { /* fused bias: element range */
        if (st->rank != 1 || st->dims[0] < row0 + rows)
            return kiln_errf(err, "tensor '%s' has %lld rows, too few for the configured heads",
                             st->name, (long long)(st->rank ? st->dims[0] : 0));
        t->offset += kiln_dtype_storage(st->dtype, row0);
        t->dims[0] = rows;
    } else {
        if (st->rank != 2 || st->dims[0] != (key[0] == 'a' ? s->q_rows + 2 * s->kv_rows : 2 * s->ffn))
            return kiln_errf(err, "tensor '%s' has %lld rows, expected %lld", st->name,
                             (long long)(st->rank ? st->dims[0] : 0),
                             (long long)(key[0] == 'a' ? s->q_rows + 2 * s->kv_rows : 2 * s->ffn));
        t->offset += kiln_dtype_storage(st->dtype, row0 * st->dims[1]);
        t->dims[0] = rows;
    }
    /* distinct value names for the slices of one stored tensor */
    nl = strlen(t->name);
    snprintf(t->name + nl, sizeof t->name - nl, ".rows_%lld_%lld", (long long)row0,
             (long long)(row0 + rows));
    return 1;
}

/* ---- config.json ---- */

typedef struct cfg_ctx {
    const cJSON *j;
    const char *path;
    kiln_err *err;
    int bad;
} cfg_ctx;

/* Integer field; def when absent or null; def < 0 makes it required. */
static int cfg_int(cfg_ctx *c, const char *key, int64_t def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->j, key);
    if (!v || cJSON_IsNull(v)) {
        if (def < 0 && !c->bad) {
            c->bad = 1;
            kiln_errf(c->err, "%s: missing \"%s\"", c->path, key);
        }
        return (int)(def < 0 ? 0 : def);
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > 1e9) {
        if (!c->bad) {
            c->bad = 1;
            kiln_errf(c->err, "%s: \"%s\" must be a non-negative integer", c->path, key);
        }
        return 0;
    }
    return (int)v->valuedouble;
}

static double cfg_num(cfg_ctx *c, const cJSON *obj, const char *key, double def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return def;
    if (!cJSON_IsNumber(v)) {
        if (!c->bad) {
            c->bad = 1;
            kiln_errf(c->err, "%s: \"%s\" must be a number", c->path, key);
        }
        return def;
    }
    return v->valuedouble;
}

static int cfg_bool(const cJSON *j, const char *key, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return def;
}

static const char *cfg_str(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int act_from_name(const char *s)
{
    if (!s)
        return -1;
    if (!strcmp(s, "silu") || !strcmp(s, "swish"))
        return KILN_LM_ACT_SILU;
    if (!strcmp(s, "gelu") || !strcmp(s, "gelu_python"))
        return KILN_LM_ACT_GELU;
    if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_fast"))
        return KILN_LM_ACT_GELU_TANH;
    if (!strcmp(s, "relu"))
        return KILN_LM_ACT_RELU;
    return -1;
}

static int parse_rope_scaling(cfg_ctx *cc, kiln_lm_config *c)
{
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(cc->j, "rope_scaling");
    if (!rs || cJSON_IsNull(rs))
        return 0;
    if (!cJSON_IsObject(rs))
        return kiln_errf(cc->err, "%s: \"rope_scaling\" must be an object or null", cc->path);
    const char *type = cfg_str(rs, "rope_type");
    if (!type)
        type = cfg_str(rs, "type");
    if (!type || !strcmp(type, "default"))
        return 0;
    c->rope_factor = cfg_num(cc, rs, "factor", 0);
    if (!strcmp(type, "linear")) {
        c->rope_scaling = KILN_LM_ROPE_LINEAR;
    } else if (!strcmp(type, "llama3")) {
        c->rope_scaling = KILN_LM_ROPE_LLAMA3;
        c->rope_low_freq = cfg_num(cc, rs, "low_freq_factor", 1);
        c->rope_high_freq = cfg_num(cc, rs, "high_freq_factor", 4);
        c->rope_orig_ctx = (int)cfg_num(cc, rs, "original_max_position_embeddings", 8192);
    } else {
        return kiln_errf(cc->err, "%s: rope_scaling type \"%s\" is not supported (default, linear, llama3)",
                         cc->path, type);
    }
    return cc->bad ? -1 : 0;
}

kiln_graph *kiln_import_hf(const char *dir, kiln_err *err)
{
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "%s/config.json", dir);
    char *text;
    size_t len;
    if (kiln_read_file(cpath, &text, &len, err))
        return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        kiln_errf(err, "%s: not a JSON object", cpath);
        return NULL;
    }
    kiln_graph *g = NULL;
    kiln_safetensors *st = NULL;
    cfg_ctx cc = {j, cpath, err, 0};
    char arch[64];
    const char *mt = cfg_str(j, "model_type");
    if (!mt) {
        kiln_errf(err, "%s: missing \"model_type\"", cpath);
        goto out;
    }
    snprintf(arch, sizeof arch, "%s", mt);
    kiln_lm_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    hf_src s;
    memset(&s, 0, sizeof s);
    s.names = llama_names;
    int family;
    int is_llama_like = 0;
    if (!strcmp(mt, "llama") || !strcmp(mt, "mistral") || !strcmp(mt, "qwen2") || !strcmp(mt, "gemma")) {
        family = FAM_LLAMA;
        is_llama_like = 1;
    } else if (!strcmp(mt, "phi3")) {
        family = FAM_PHI3;
        is_llama_like = 1;
    } else if (!strcmp(mt, "mixtral")) {
        family = FAM_MIXTRAL;
        is_llama_like = 1;
    } else if (!strcmp(mt, "gpt2")) {
        family = FAM_GPT2;
        s.names = gpt2_names;
        s.alt_prefix = "transformer.";
    } else if (!strcmp(mt, "bert")) {
        family = FAM_BERT;
        s.names = bert_names;
        s.alt_prefix = "bert.";
    } else {
        kiln_errf(err, "%s: model_type \"%s\" is not supported (llama, mistral, qwen2, phi3, gemma, "
                  "mixtral, gpt2, bert)", cpath, mt);
        goto out;
    }
    s.family = family;
    if (is_llama_like) {
        int gemma = !strcmp(mt, "gemma");
        c.kind = KILN_LM_LLAMA;
        c.dim = cfg_int(&cc, "hidden_size", -1);
        c.n_layer = cfg_int(&cc, "num_hidden_layers", -1);
        c.n_head = cfg_int(&cc, "num_attention_heads", -1);
        c.n_kv_head = cfg_int(&cc, "num_key_value_heads", c.n_head);
        c.ffn_dim = cfg_int(&cc, "intermediate_size", -1);
        c.vocab = cfg_int(&cc, "vocab_size", -1);
        c.n_ctx = cfg_int(&cc, "max_position_embeddings", 2048);
        c.head_dim = cfg_int(&cc, "head_dim", gemma ? 256 : 0);
        c.norm_eps = cfg_num(&cc, j, "rms_norm_eps", 1e-6);
        c.rope_base = cfg_num(&cc, j, "rope_theta", family == FAM_MIXTRAL ? 1e6 : 10000.0);
        c.gated = 1;
        c.interleaved = 0;
        c.tied = cfg_bool(j, "tie_word_embeddings", gemma);
        const char *act = gemma ? cfg_str(j, "hidden_activation") : cfg_str(j, "hidden_act");
        if (gemma && !act)
            act = "gelu_pytorch_tanh"; /* what transformers uses for gemma when unset */
        c.act = act ? act_from_name(act) : KILN_LM_ACT_SILU;
        if (c.act < 0) {
            kiln_errf(err, "%s: activation \"%s\" is not supported", cpath, act);
            goto out;
        }
        if (gemma) {
            c.norm_plus_one = 1;
            c.embed_scale = sqrt((double)c.dim);
        }
        if (!strcmp(mt, "qwen2") && cfg_bool(j, "use_sliding_window", 0)) {
            kiln_errf(err, "%s: qwen2 with use_sliding_window is not supported", cpath);
            goto out;
        }
        if (!strcmp(mt, "mistral") || family == FAM_PHI3 || family == FAM_MIXTRAL)
            c.window = cfg_int(&cc, "sliding_window", 0);
        if (family == FAM_PHI3) {
            double prf = cfg_num(&cc, j, "partial_rotary_factor", 1.0);
            int hd = c.head_dim > 0 ? c.head_dim : (c.n_head ? c.dim / c.n_head : 0);
            c.rope_dim = (int)(hd * prf);
            s.q_rows = (int64_t)c.n_head * hd;
            s.kv_rows = (int64_t)c.n_kv_head * hd;
            s.ffn = c.ffn_dim;
        }
        if (family == FAM_MIXTRAL) {
            c.n_expert = cfg_int(&cc, "num_local_experts", -1);
            c.n_expert_used = cfg_int(&cc, "num_experts_per_tok", 2);
            c.moe_norm = 1;
        }
        if (parse_rope_scaling(&cc, &c))
            goto out;
    } else if (family == FAM_GPT2) {
        c.kind = KILN_LM_GPT2;
        c.dim = cfg_int(&cc, "n_embd", -1);
        c.n_layer = cfg_int(&cc, "n_layer", -1);
        c.n_head = cfg_int(&cc, "n_head", -1);
        c.n_kv_head = c.n_head;
        c.ffn_dim = cfg_int(&cc, "n_inner", 4 * (int64_t)c.dim);
        c.vocab = cfg_int(&cc, "vocab_size", -1);
        c.n_ctx = cfg_int(&cc, "n_positions", 1024);
        c.norm_layer = 1;
        c.norm_eps = cfg_num(&cc, j, "layer_norm_epsilon", 1e-5);
        const char *act = cfg_str(j, "activation_function");
        c.act = act ? act_from_name(act) : KILN_LM_ACT_GELU_TANH;
        if (c.act < 0) {
            kiln_errf(err, "%s: activation \"%s\" is not supported", cpath, act);
            goto out;
        }
        c.tied = cfg_bool(j, "tie_word_embeddings", 1);
        if (cfg_bool(j, "scale_attn_by_inverse_layer_idx", 0) || !cfg_bool(j, "scale_attn_weights", 1)) {
            kiln_errf(err, "%s: gpt2 attention scaling options other than the default are not supported",
                      cpath);
            goto out;
        }
    } else {
        c.kind = KILN_LM_BERT;
        c.dim = cfg_int(&cc, "hidden_size", -1);
        c.n_layer = cfg_int(&cc, "num_hidden_layers", -1);
        c.n_head = cfg_int(&cc, "num_attention_heads", -1);
        c.n_kv_head = c.n_head;
        c.ffn_dim = cfg_int(&cc, "intermediate_size", -1);
        c.vocab = cfg_int(&cc, "vocab_size", -1);
        c.n_ctx = cfg_int(&cc, "max_position_embeddings", 512);
        c.type_vocab = cfg_int(&cc, "type_vocab_size", 2);
        c.norm_layer = 1;
        c.norm_eps = cfg_num(&cc, j, "layer_norm_eps", 1e-12);
        const char *act = cfg_str(j, "hidden_act");
        c.act = act ? act_from_name(act) : KILN_LM_ACT_GELU;
        if (c.act < 0) {
            kiln_errf(err, "%s: activation \"%s\" is not supported", cpath, act);
            goto out;
        }
        const char *pe = cfg_str(j, "position_embedding_type");
        if (pe && strcmp(pe, "absolute") != 0) {
            kiln_errf(err, "%s: position_embedding_type \"%s\" is not supported", cpath, pe);
            goto out;
        }
    }
    if (cc.bad)
        goto out;
    st = kiln_st_open(dir, err);
    if (!st)
        goto out;
    s.st = st;
    kiln_lm_source src = {dir, &s, hf_find};
    g = kiln_lm_build(&c, &src, err);
out:
    kiln_st_close(st);
    cJSON_Delete(j);
    return g;
}
