/* kiln_sample.h - picking the next token from a model's logits.
 *
 * Order of the steps (those switched on): repetition penalty, temperature,
 * top-k, top-p, min-p, then one draw from what is left, renormalized.
 * temperature <= 0 (or top_k == 1) is greedy. The generator is PCG32 over
 * integers, so a seed gives the same draws on every machine. libc only;
 * the sampler owns one scratch allocation sized for the vocabulary. */
#ifndef KILN_SAMPLE_H
#define KILN_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_sampler {
    /* parameters: set after kiln_sampler_init, which writes the defaults */
    float temperature;    /* 1; <= 0: greedy */
    int top_k;            /* 0 (off): keep the k most likely tokens */
    float top_p;          /* 1 (off): keep the smallest set holding this much probability */
    float min_p;          /* 0 (off): drop tokens below min_p * the top probability */
    float repeat_penalty; /* 1 (off): llama.cpp's: recent tokens' positive logits are divided by
                             it, negative ones multiplied */
    /* state */
    uint64_t rng_state, rng_inc; /* PCG32 */
    int n_vocab;
    int *idx;      /* scratch (owned): candidate ids */
    float *prob;   /* scratch (owned): their weights */
    uint8_t *seen; /* scratch (owned): repetition-penalty marks */
} kiln_sampler;

/* Defaults as above; allocates scratch for n_vocab. -1 if n_vocab < 1. */
int kiln_sampler_init(kiln_sampler *s, int n_vocab, uint64_t seed);
void kiln_sampler_free(kiln_sampler *s);
void kiln_sampler_seed(kiln_sampler *s, uint64_t seed);

uint32_t kiln_sampler_rand(kiln_sampler *s);      /* next PCG32 output */
float kiln_sampler_uniform(kiln_sampler *s);      /* in [0, 1), 24-bit resolution */

/* Picks a token. logits (n_vocab <= the init size) are modified in place by
 * the repetition penalty (NaNs become -inf). recent: the last tokens generated (may
 * be NULL), for the repetition penalty; ids outside the vocabulary are
 * ignored. Returns the token id, or -1 if n_vocab is out of range. */
int kiln_sample(kiln_sampler *s, float *logits, int n_vocab, const int *recent, int n_recent);

#ifdef __cplusplus
}
#endif
#endif
