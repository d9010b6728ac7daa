/* kiln_model_internal.h - the runtime's model handle, shared by the runtime's
 * own files (model.c, main.c, the LM loop). Not installed. */
#ifndef KILN_MODEL_INTERNAL_H
#define KILN_MODEL_INTERNAL_H

#include "kiln.h"
#include "kiln_artifact.h"
#include "kiln_rt.h"

#include "kiln_tokenizer.h"

/* One sequence's KV cache: per layer a K and a V buffer [kv_heads, max_ctx, head_dim]. */
typedef struct kiln_lm_slot {
    void **k, **v;
    void **k2, **v2; /* KILN_KV_FUNCTIONAL: the present buffers (swapped each step) */
    int32_t *tokens; /* ids whose keys/values are cached (positions 0..pos-1) */
    int pos;
} kiln_lm_slot;

struct kiln_model {
    kiln_desc desc;
    kiln_rt *rt;
    const uint8_t *weights; /* start of the weights data (after the header) */
    kiln_map wmap;          /* external weights mapping, if any */
    uint8_t *arena;
    /* language models */
    int has_tok;
    kiln_tokenizer tok;
    int io_tokens, io_logits; /* descriptor I/O indexes */
    int sym_batch, sym_seq, sym_past;
    int64_t chunk; /* most tokens one step takes (seq bound) */
    kiln_lm_slot *slots;
    int n_slots;
    /* CUDA target (runtime/cuda_model.c): device state; NULL on the CPU */
    void *cuda;
    int cuda_greedy;   /* the next steps decode greedily: argmax on the GPU */
    int32_t cuda_next; /* that argmax after each step */
};

int kiln_lm_init(kiln_model *m, kiln_err *err);
void kiln_lm_free(kiln_model *m);

int kiln_model_open_internal(kiln_model **m, const char *weights_path, int threads, kiln_err *err);
void kiln_model_close_internal(kiln_model *m);
/* Binds symbol values from input shapes and checks every input dim. */
int kiln_model_bind(kiln_model *m, const kiln_buffer *inputs, int64_t *syms, kiln_err *err);
/* Runs the generated graph code on io buffers (inputs then outputs). */
int kiln_model_exec(kiln_model *m, void **io, const int64_t *syms);

#endif
