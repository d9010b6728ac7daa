/* gpu_decode.c - times batch-1 greedy decoding of a language model built by
 * `kiln build MODEL --shared --weights external` (CPU or CUDA target):
 *
 *   cc -O2 -DKILN_HEADER=\"DIR/model.h\" bench/gpu_decode.c DIR/model.so -Wl,-rpath,DIR -o decode
 *   ./decode DIR/model.weights PROMPT_TOKENS NEW_TOKENS [SEED]
 *
 * One warm-up generation (module load, graph capture), then the timed one
 * on the same KV slot: the prompt's prefill time, and the time between
 * consecutive generated tokens (a timestamp per token from the streaming
 * callback). Prints one JSON object. */
#include KILN_HEADER

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct rec {
    double *t;
    int32_t *ids;
    int n, cap;
} rec;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int on_token(void *user, int32_t tok, const char *text, size_t len)
{
    rec *r = user;
    (void)text;
    (void)len;
    if (tok >= 0 && r->n < r->cap) {
        r->t[r->n] = now_s();
        r->ids[r->n++] = tok;
    }
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.weights PROMPT_TOKENS NEW_TOKENS [SEED]\n", argv[0]);
        return 2;
    }
    int np = atoi(argv[2]), ng = atoi(argv[3]);
    unsigned long long seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 1;
    char err[512];
    kiln_model *m = kiln_open(argv[1], err, sizeof err);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    int V = kiln_vocab_size(m);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(np > 0 ? np : 1));
    for (int i = 0; i < np; i++) { /* xorshift: reproducible prompt ids */
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ids[i] = (int32_t)(seed % (unsigned long long)V);
    }
    rec r = {malloc(sizeof(double) * (size_t)(ng + 1)), malloc(sizeof(int32_t) * (size_t)(ng + 1)), 0, ng};
    kiln_gen_params p;
    kiln_gen_params_default(&p);
    p.temperature = 0;
    p.repeat_penalty = 1.0f;
    kiln_gen_stats st;
    /* warm-up on the same slot (the decode graph is captured for its KV buffers) */
    p.max_tokens = ng < 16 ? ng : 16;
    if (kiln_generate_ids(m, ids, np, &p, on_token, &r, &st, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    kiln_lm_rewind(m, 0, 0);
    r.n = 0;
    p.max_tokens = ng;
    double t0 = now_s();
    if (kiln_generate_ids(m, ids, np, &p, on_token, &r, &st, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    double total = now_s() - t0;
    /* per-token intervals between consecutive generated tokens */
    int ni = r.n > 1 ? r.n - 1 : 0;
    double *dt = malloc(sizeof(double) * (size_t)(ni + 1)), sum = 0;
    for (int i = 0; i < ni; i++) {
        dt[i] = r.t[i + 1] - r.t[i];
        sum += dt[i];
    }
    qsort(dt, (size_t)ni, sizeof *dt, cmp_d);
    double med = ni ? dt[ni / 2] : 0;
    printf("{\"prompt_tokens\": %d, \"prefill_s\": %.6f, \"new_tokens\": %d, \"decode_s\": %.6f, \"total_s\": %.6f, "
           "\"median_token_s\": %.7f, \"mean_token_s\": %.7f, \"p10_token_s\": %.7f, \"p90_token_s\": %.7f, \"stop\": %d, "
           "\"ids\": [",
           np, st.prefill_s, r.n, st.decode_s, total, med, ni ? sum / ni : 0, ni ? dt[ni / 10] : 0, ni ? dt[ni * 9 / 10] : 0,
           st.stop_reason);
    for (int i = 0; i < r.n && i < 64; i++)
        printf("%s%d", i ? ", " : "", r.ids[i]);
    printf("]}\n");
    free(dt);
    free(r.t);
    free(r.ids);
    free(ids);
    kiln_close(m);
    return 0;
}
