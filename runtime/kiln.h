/* kiln.h - the public C API of a model compiled by kiln.
 *
 * Link against a kiln-built shared library (kiln build --shared) or use it
 * inside a kiln-built executable. Everything a model needs (weights mapping,
 * threads, arena) is owned by the kiln_model handle.
 *
 *   char err[256];
 *   kiln_model *m = kiln_open(NULL, err, sizeof err);   // NULL: embedded or NAME.weights
 *   ...
 *   kiln_close(m);
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes; kiln_open refuses a library built with
 * another one, so a stale header and library never run together. */
#define KILN_H_ABI 1

typedef struct kiln_model kiln_model;

kiln_model *kiln_open_abi(const char *weights_path, int threads, char *err, size_t errlen, int abi);
#define kiln_open(weights_path, err, errlen) kiln_open_abi((weights_path), 0, (err), (errlen), KILN_H_ABI)
void kiln_close(kiln_model *m);

/* Model metadata. */
const char *kiln_model_name(const kiln_model *m);
int kiln_num_inputs(const kiln_model *m);
int kiln_num_outputs(const kiln_model *m);
const char *kiln_input_name(const kiln_model *m, int i);
const char *kiln_output_name(const kiln_model *m, int i);

/* A tensor crossing the API: element type (kiln dtype code, see
 * kiln_common.h: 1 = f32, 2 = f16, 13 = i64 ...), shape, data. */
typedef struct kiln_buffer {
    int dtype;
    int rank;
    int64_t dims[8];
    void *data;
} kiln_buffer;

/* Runs a non-LM model. inputs[] in model order with shapes set; outputs[]
 * receive shapes and malloc'd data (free with kiln_buffer_free). Returns 0,
 * or -1 with a message in err. */
int kiln_run(kiln_model *m, const kiln_buffer *inputs, kiln_buffer *outputs, char *err, size_t errlen);
void kiln_buffer_free(kiln_buffer *b);

/* ---- language models (models built from GGUF / HF / llama2.c checkpoints,
 * or ONNX exports with past_key_values) ---- */

int kiln_is_lm(const kiln_model *m);
int kiln_vocab_size(const kiln_model *m);
int kiln_max_context(const kiln_model *m);
int kiln_has_tokenizer(const kiln_model *m);

/* Text <-> token ids with the model's own tokenizer. kiln_tokenize returns
 * the number of ids the text has (call again with more room if larger than
 * max), or -1. kiln_detokenize works like snprintf. */
int kiln_tokenize(kiln_model *m, const char *text, int add_special, int32_t *ids, int max);
long kiln_detokenize(kiln_model *m, const int32_t *ids, int n, char *out, size_t cap);

/* Low level: appends ids to sequence `slot` (its own KV cache; slots are
 * created on first use) and, if logits is not NULL, writes the next-token
 * logits (vocab floats). Returns 0, or -1 with err (e.g. context full). */
int kiln_lm_forward(kiln_model *m, int slot, const int32_t *ids, int n, float *logits, char *err, size_t errlen);
/* Forgets a slot's tokens from position pos on (0: all). */
void kiln_lm_rewind(kiln_model *m, int slot, int pos);
int kiln_lm_position(const kiln_model *m, int slot);

typedef struct kiln_gen_params {
    int max_tokens;       /* new tokens to generate (default 128) */
    float temperature;    /* 0.8; <= 0: greedy */
    int top_k;            /* 40; 0 = off */
    float top_p;          /* 0.95; 1 = off */
    float min_p;          /* 0.05; 0 = off */
    float repeat_penalty; /* 1.0 = off */
    int repeat_last_n;    /* 64 */
    uint64_t seed;        /* for reproducible sampling */
    int chat;             /* format the prompt with the model's chat template (if it has one) */
    const char *system;   /* chat: system message (NULL: the template's default) */
    const char *const *stop; /* extra stop strings */
    int n_stop;
    int slot;             /* KV slot (sequence) to use; its cached prefix is reused */
} kiln_gen_params;

void kiln_gen_params_default(kiln_gen_params *p);

typedef struct kiln_gen_stats {
    int prompt_tokens, new_tokens, reused_tokens;
    double prefill_s, decode_s;
    int stop_reason; /* 0 max tokens, 1 end of sequence, 2 stop string, 3 context full, 4 callback */
} kiln_gen_stats;

/* Called for every piece of generated text (valid UTF-8; may be empty for
 * a token that completes no character yet). Return nonzero to stop. */
typedef int (*kiln_token_cb)(void *user, int32_t token, const char *text, size_t len);

/* Generates a continuation of prompt (or the assistant's reply when
 * p->chat). Returns 0, or -1 with err. */
int kiln_generate(kiln_model *m, const char *prompt, const kiln_gen_params *p, kiln_token_cb cb, void *user,
                  kiln_gen_stats *st, char *err, size_t errlen);
/* The same from token ids (models without a tokenizer); cb gets text NULL. */
int kiln_generate_ids(kiln_model *m, const int32_t *ids, int n, const kiln_gen_params *p, kiln_token_cb cb,
                      void *user, kiln_gen_stats *st, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
