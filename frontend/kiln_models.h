/* kiln_models.h - importers for model checkpoints: GGUF files, Hugging Face
 * folders (config.json + safetensors), llama2.c .bin checkpoints.
 *
 * Each importer returns a graph following kiln's LM convention (decoders):
 *   inputs  tokens : i64[batch, seq]
 *           past_key.{i}, past_value.{i} : f32[batch, kv_heads, past, head_dim]
 *   outputs logits : f32[batch, vocab]          (last position only)
 *           present_key.{i}, present_value.{i} : f32[batch, kv_heads, past+seq, head_dim]
 * or, for BERT encoders,
 *   inputs  input_ids, attention_mask [, token_type_ids] : i64[batch, seq]
 *   outputs last_hidden_state : f32[batch, seq, hidden]
 *           sentence_embedding : f32[batch, hidden]  (attention-masked mean)
 * Weights stay in their files (referenced by path + offset, quantized types
 * kept as they are). The caller owns the graph (kiln_graph_free). */
#ifndef KILN_MODELS_H
#define KILN_MODELS_H

#include "kiln_ir.h"

#ifdef __cplusplus
extern "C" {
#endif

kiln_graph *kiln_import_gguf(const char *path, kiln_err *err);
/* dir holds config.json and model.safetensors (or a sharded index). */
kiln_graph *kiln_import_hf(const char *dir, kiln_err *err);
kiln_graph *kiln_import_llama2c(const char *path, kiln_err *err);

/* ---- the shared LM graph builder (used by the importers above) ----------
 * Importers describe the model with a kiln_lm_config and hand the builder a
 * lookup function for tensors under canonical names (GGUF's naming:
 * "token_embd.weight", "blk.3.attn_q.weight", "output.weight", ...). */

enum { KILN_LM_ACT_SILU, KILN_LM_ACT_GELU, KILN_LM_ACT_GELU_TANH, KILN_LM_ACT_RELU };
enum { KILN_LM_ROPE_PLAIN, KILN_LM_ROPE_LINEAR, KILN_LM_ROPE_LLAMA3 };
enum { KILN_LM_LLAMA, KILN_LM_GPT2, KILN_LM_BERT }; /* graph shapes the builder knows */

/* Longest context for which cos/sin caches are built at import: they are
 * graph constants, so a 128k-context model would otherwise carry 64 MB. */
#define KILN_LM_MAX_CTX 32768

typedef struct kiln_lm_config {
    const char *arch; /* family name, for the graph name and messages */
    int kind;         /* KILN_LM_LLAMA (pre-norm decoder with RoPE), _GPT2, _BERT */
    int n_layer, dim, n_head, n_kv_head, head_dim, ffn_dim, vocab, n_ctx;
    int norm_layer;   /* LayerNormalization with bias (else RMSNormalization) */
    int norm_plus_one; /* gemma: the norm scale is (1 + weight) */
    double norm_eps;
    int act;   /* KILN_LM_ACT_* */
    int gated; /* ffn = down(act(gate(x)) * up(x)); else down(act(up(x))) */
    int interleaved; /* RoPE rotates adjacent pairs (GGUF llama, llama2.c), else halves */
    int rope_dim;    /* rotated dims per head; 0 = head_dim */
    double rope_base;
    int rope_scaling; /* KILN_LM_ROPE_* */
    double rope_factor, rope_low_freq, rope_high_freq;
    int rope_orig_ctx;
    const float *rope_freq_factors; /* GGUF rope_freqs: divisors per frequency (rope_dim/2), or NULL */
    int window;         /* sliding-window attention size, 0 = off */
    double attn_scale;  /* 0 = 1/sqrt(head_dim) */
    double embed_scale; /* embeddings are multiplied by this (gemma: sqrt(dim)); 0 = off */
    int tied;           /* logits use token_embd (no output.weight) */
    int n_expert, n_expert_used, moe_norm; /* mixture of experts: counts, renormalize top-k */
    int type_vocab;     /* BERT token types (0: none) */
} kiln_lm_config;

/* A stored tensor: data at `offset` in file `path`. */
typedef struct kiln_lm_tensor {
    char name[256];   /* the tensor's own name in its file (also for messages) */
    const char *path; /* absolute path; owned by the source */
    uint64_t offset;
    kiln_dtype dtype;
    int rank;
    int64_t dims[8];
} kiln_lm_tensor;

typedef struct kiln_lm_source {
    const char *origin; /* file or folder, for messages */
    void *ctx;
    /* Looks up canonical tensor `name`. Returns 1 and fills t when found;
     * 0 when absent (t->name still gets the name the file would use, for
     * the "missing tensor" message); -1 with err set on other errors. */
    int (*find)(void *ctx, const char *name, kiln_lm_tensor *t, kiln_err *err);
} kiln_lm_source;

/* Builds the graph; validates every tensor's shape against the config.
 * Errors are one line naming the origin and the tensor. */
kiln_graph *kiln_lm_build(const kiln_lm_config *cfg, const kiln_lm_source *src, kiln_err *err);

#ifdef __cplusplus
}
#endif
#endif
