/* generate.c - using a kiln-built language model from C.
 *
 *   kiln build SmolLM2-135M-Instruct.Q4_1.gguf -o libsmollm2.so --shared
 *   cc -o generate generate.c -include libsmollm2.h libsmollm2.so -Wl,-rpath,.
 *   ./generate "What is the capital of France?"
 *
 * Everything goes through kiln.h (generated next to the library as
 * libsmollm2.h); the executables `kiln build` makes use the same API. */
#ifndef KILN_H /* kiln.h, or the NAME.h written next to the library */
#include "kiln.h"
#endif

#include <stdio.h>
#include <string.h>

static int print_piece(void *user, int32_t token, const char *text, size_t len)
{
    (void)user;
    (void)token;
    if (text)
        fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* nonzero would stop generation */
}

int main(int argc, char **argv)
{
    char err[512];
    kiln_model *m = kiln_open(NULL, err, sizeof err); /* weights embedded in the library */
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (!kiln_is_lm(m) || !kiln_has_tokenizer(m)) {
        fprintf(stderr, "this example needs a language model with a tokenizer\n");
        kiln_close(m);
        return 2;
    }
    kiln_gen_params p;
    kiln_gen_params_default(&p);
    p.chat = 1;            /* use the model's chat template */
    p.temperature = 0;     /* greedy */
    p.max_tokens = 48;
    kiln_gen_stats st;
    const char *prompt = argc > 1 ? argv[1] : "What is the capital of France?";
    if (kiln_generate(m, prompt, &p, print_piece, NULL, &st, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        kiln_close(m);
        return 2;
    }
    printf("\n");
    fprintf(stderr, "%d prompt tokens, %d generated at %.1f tokens/s\n", st.prompt_tokens, st.new_tokens,
            st.decode_s > 0 ? st.new_tokens / st.decode_s : 0.0);

    /* the low-level interface: tokens in, logits out, one KV slot per sequence */
    int32_t ids[64];
    int n = kiln_tokenize(m, "The sky is", 1, ids, 64);
    static float logits[1 << 18];
    if (n > 0 && n <= 64 && kiln_vocab_size(m) <= (1 << 18) &&
        kiln_lm_forward(m, 1, ids, n, logits, err, sizeof err) == 0) {
        int best = 0;
        for (int i = 1; i < kiln_vocab_size(m); i++)
            if (logits[i] > logits[best])
                best = i;
        char piece[64];
        kiln_detokenize(m, &best, 1, piece, sizeof piece);
        printf("next token after \"The sky is\": %d (%s)\n", best, piece);
    }
    kiln_close(m);
    return 0;
}
