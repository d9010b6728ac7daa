/* main.c - main() of executables built by `kiln build` (non-LM models):
 *   ./NAME --input x=in.npy ... [--output-dir DIR] [-t THREADS] [--weights FILE] [--repeat N]
 * Reads inputs as .npy, runs the model, writes one .npy per output. */
#include "kiln.h"
#include "kiln_artifact.h"
#include "kiln_model_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int usage(const char *prog)
{
    fprintf(stderr, "usage: %s --input NAME=FILE.npy ... [--output-dir DIR] [-t THREADS] "
                    "[--weights FILE] [--repeat N]\n", prog);
    return 2;
}

int kiln_main_generic(int argc, char **argv);

int kiln_main_generic(int argc, char **argv)
{
    const char *outdir = ".", *weights = NULL;
    const char *names[KILN_MAX_IO], *files[KILN_MAX_IO];
    int n_in = 0, threads = 0, repeat = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--input") && i + 1 < argc) {
            char *eq = strchr(argv[++i], '=');
            if (!eq || n_in == KILN_MAX_IO)
                return usage(argv[0]);
            *eq = 0;
            names[n_in] = argv[i];
            files[n_in++] = eq + 1;
        } else if (!strcmp(argv[i], "--output-dir") && i + 1 < argc) {
            outdir = argv[++i];
        } else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--weights") && i + 1 < argc) {
            weights = argv[++i];
        } else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) {
            repeat = atoi(argv[++i]);
        } else {
            return usage(argv[0]);
        }
    }
    kiln_model *m = NULL;
    kiln_err err;
    if (kiln_model_open_internal(&m, weights, threads, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        return 2;
    }
    const kiln_desc *d = &m->desc;
    int rc = 2;
    kiln_npy *arr = kiln_xcalloc((size_t)d->n_inputs + 1, sizeof *arr);
    kiln_buffer *in = kiln_xcalloc((size_t)d->n_inputs + 1, sizeof *in);
    kiln_buffer *out = kiln_xcalloc((size_t)d->n_outputs + 1, sizeof *out);
    for (int i = 0; i < d->n_inputs; i++) {
        int k = -1;
        for (int j = 0; j < n_in; j++)
            if (!strcmp(names[j], d->io[i].name))
                k = j;
        if (k < 0) {
            fprintf(stderr, "%s: missing --input %s=FILE.npy\n", argv[0], d->io[i].name);
            goto done;
        }
        if (kiln_npy_read(files[k], &arr[i], &err)) {
            fprintf(stderr, "%s: %s\n", argv[0], err.msg);
            goto done;
        }
        in[i].dtype = (int)arr[i].dtype;
        in[i].rank = arr[i].rank;
        memcpy(in[i].dims, arr[i].dims, sizeof(int64_t) * (size_t)arr[i].rank);
        in[i].data = arr[i].data;
    }
    for (int j = 0; j < n_in; j++) {
        int found = 0;
        for (int i = 0; i < d->n_inputs; i++)
            found |= !strcmp(names[j], d->io[i].name);
        if (!found) {
            fprintf(stderr, "%s: the model has no input named '%s'\n", argv[0], names[j]);
            goto done;
        }
    }
    char msg[1024];
    double best = 1e30;
    for (int r = 0; r < (repeat > 0 ? repeat : 1); r++) {
        if (r)
            for (int o = 0; o < d->n_outputs; o++)
                kiln_buffer_free(&out[o]);
        double t0 = now_s();
        if (kiln_run(m, in, out, msg, sizeof msg)) {
            fprintf(stderr, "%s: %s\n", argv[0], msg);
            goto done;
        }
        double t = now_s() - t0;
        if (t < best)
            best = t;
    }
    if (repeat > 1)
        fprintf(stderr, "%s: best of %d runs: %.3f ms\n", argv[0], repeat, best * 1e3);
    if (mkdir(outdir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create %s: %s\n", argv[0], outdir, strerror(errno));
        goto done;
    }
    for (int o = 0; o < d->n_outputs; o++) {
        char fn[4096], clean[256];
        const char *name = d->io[d->n_inputs + o].name;
        size_t q = 0;
        for (; name[q] && q + 1 < sizeof clean; q++)
            clean[q] = (name[q] == '/' || name[q] == ':' || name[q] == ' ' || name[q] == '\\') ? '_' : name[q];
        clean[q] = 0;
        snprintf(fn, sizeof fn, "%s/%s.npy", outdir, clean);
        if (kiln_npy_write(fn, (kiln_dtype)out[o].dtype, out[o].rank, out[o].dims, out[o].data, &err)) {
            fprintf(stderr, "%s: %s\n", argv[0], err.msg);
            goto done;
        }
        printf("%s -> %s\n", name, fn);
    }
    rc = 0;
done:
    for (int o = 0; o < d->n_outputs; o++)
        kiln_buffer_free(&out[o]);
    for (int i = 0; i < d->n_inputs; i++)
        kiln_npy_free(&arr[i]);
    free(arr);
    free(in);
    free(out);
    kiln_close(m);
    return rc;
}

/* ---- language models: llama.cpp-style CLI ---- */

typedef struct out_state {
    int ids_mode;
    int first;
} out_state;

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    out_state *o = user;
    if (o->ids_mode || !text) {
        if (token >= 0) {
            printf("%s%d", o->first ? "" : ",", token);
            o->first = 0;
        }
    } else {
        fwrite(text, 1, len, stdout);
    }
    fflush(stdout);
    return 0;
}

static int lm_usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [-p PROMPT | -f FILE | --ids 1,2,3 | --batch-file FILE | -i] [-n N] [--temp T]\n"
            "       [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [--chat|--no-chat]\n"
            "       [--system TEXT] [--stop STR]... [-t THREADS] [--weights FILE] [--logits FILE.npy (with --ids: greedy)]\n",
            prog);
    return 2;
}

static void report(const char *prog, const kiln_gen_stats *st)
{
    int prefill = st->prompt_tokens - st->reused_tokens;
    fprintf(stderr, "\n%s: prompt %d tokens (%d reused) in %.3f s (%.1f tok/s), generated %d tokens in %.3f s (%.1f tok/s)%s\n",
            prog, st->prompt_tokens, st->reused_tokens, st->prefill_s, st->prefill_s > 0 ? prefill / st->prefill_s : 0,
            st->new_tokens, st->decode_s, st->decode_s > 0 ? st->new_tokens / st->decode_s : 0,
            st->stop_reason == 3 ? " [context full]" : "");
}

static char *read_text(const char *path)
{
    char *t;
    kiln_err err;
    if (kiln_read_file(path, &t, NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    return t;
}

static int kiln_main_lm(int argc, char **argv)
{
    const char *prompt = NULL, *prompt_file = NULL, *ids_arg = NULL, *batch_file = NULL, *weights = NULL;
    const char *logits_file = NULL;
    const char *stops[16];
    int interactive = 0, threads = 0, chat = -1;
    kiln_gen_params p;
    kiln_gen_params_default(&p);
    p.n_stop = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "-p") && more) prompt = argv[++i];
        else if (!strcmp(a, "-f") && more) prompt_file = argv[++i];
        else if (!strcmp(a, "--ids") && more) ids_arg = argv[++i];
        else if (!strcmp(a, "--batch-file") && more) batch_file = argv[++i];
        else if (!strcmp(a, "-i")) interactive = 1;
        else if (!strcmp(a, "-n") && more) p.max_tokens = atoi(argv[++i]);
        else if (!strcmp(a, "--temp") && more) p.temperature = (float)atof(argv[++i]);
        else if (!strcmp(a, "--top-k") && more) p.top_k = atoi(argv[++i]);
        else if (!strcmp(a, "--top-p") && more) p.top_p = (float)atof(argv[++i]);
        else if (!strcmp(a, "--min-p") && more) p.min_p = (float)atof(argv[++i]);
        else if (!strcmp(a, "--repeat-penalty") && more) p.repeat_penalty = (float)atof(argv[++i]);
        else if (!strcmp(a, "--seed") && more) p.seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--no-chat")) chat = 0;
        else if (!strcmp(a, "--system") && more) p.system = argv[++i];
        else if (!strcmp(a, "--stop") && more && p.n_stop < 16) stops[p.n_stop++] = argv[++i];
        else if (!strcmp(a, "-t") && more) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--weights") && more) weights = argv[++i];
        else if (!strcmp(a, "--logits") && more) logits_file = argv[++i];
        else return lm_usage(argv[0]);
    }
    p.stop = stops;
    if (!prompt && !prompt_file && !ids_arg && !batch_file && !interactive)
        return lm_usage(argv[0]);
    kiln_model *m = NULL;
    kiln_err err;
    if (kiln_model_open_internal(&m, weights, threads, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        return 2;
    }
    /* chat by default when the model ships a template */
    if (chat < 0) {
        kiln_chat_msg probe = {"user", "x"};
        chat = m->has_tok && kiln_chat_format(&m->tok, &probe, 1, 1, NULL, 0, &err) >= 0;
    }
    p.chat = chat;
    char msg[1024];
    int rc = 2;
    kiln_gen_stats st;
    out_state os = {0, 1};
    if (ids_arg) {
        int cap = 16, n = 0;
        int32_t *ids = kiln_xmalloc(sizeof(int32_t) * (size_t)cap);
        for (const char *q = ids_arg; *q;) {
            char *end;
            long v = strtol(q, &end, 10);
            if (end == q) {
                fprintf(stderr, "%s: --ids takes comma-separated integers\n", argv[0]);
                free(ids);
                goto done;
            }
            if (n == cap)
                ids = kiln_xrealloc(ids, sizeof(int32_t) * (size_t)(cap *= 2));
            ids[n++] = (int32_t)v;
            q = *end == ',' ? end + 1 : end;
        }
        os.ids_mode = 1;
        if (logits_file) {
            /* greedy decoding that records every step's logits [steps, vocab] */
            int V = kiln_vocab_size(m), steps = p.max_tokens > 0 ? p.max_tokens : 1;
            float *all = kiln_xcalloc((size_t)steps * (size_t)V, sizeof(float));
            int r = kiln_lm_forward(m, 0, ids, n, all, msg, sizeof msg);
            for (int t = 0; r == 0 && t < steps; t++) {
                int32_t best = 0;
                for (int v = 1; v < V; v++)
                    if (all[(size_t)t * V + v] > all[(size_t)t * V + best])
                        best = v;
                on_token(&os, best, NULL, 0);
                if (t + 1 < steps)
                    r = kiln_lm_forward(m, 0, &best, 1, all + (size_t)(t + 1) * V, msg, sizeof msg);
            }
            printf("\n");
            int64_t dims[2] = {steps, V};
            if (r == 0 && kiln_npy_write(logits_file, KILN_F32, 2, dims, all, &err))
                snprintf(msg, sizeof msg, "%s", err.msg), r = -1;
            free(all);
            free(ids);
            if (r) {
                fprintf(stderr, "%s: %s\n", argv[0], msg);
                goto done;
            }
            rc = 0;
            goto done;
        }
        int r = kiln_generate_ids(m, ids, n, &p, on_token, &os, &st, msg, sizeof msg);
        free(ids);
        printf("\n");
        if (r) {
            fprintf(stderr, "%s: %s\n", argv[0], msg);
            goto done;
        }
        report(argv[0], &st);
    } else if (batch_file) {
        char *all = read_text(batch_file);
        if (!all)
            goto done;
        int slot = 0;
        for (char *save = NULL, *line = strtok_r(all, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            if (!*line)
                continue;
            printf("[%d] ", slot);
            p.slot = slot++; /* every prompt its own KV slot */
            if (kiln_generate(m, line, &p, on_token, &os, &st, msg, sizeof msg)) {
                fprintf(stderr, "%s: prompt %d: %s\n", argv[0], slot - 1, msg);
                free(all);
                goto done;
            }
            printf("\n");
            report(argv[0], &st);
        }
        free(all);
    } else if (interactive) {
        /* a running conversation: the whole history is re-rendered each
         * turn and its cached prefix reused, so only new tokens are computed */
        if (!m->has_tok || !chat) {
            fprintf(stderr, "%s: -i needs a model with a tokenizer and a chat template\n", argv[0]);
            goto done;
        }
        kiln_chat_msg hist[256];
        char *owned[256];
        int nh = 0;
        if (p.system) {
            hist[nh] = (kiln_chat_msg){"system", p.system};
            owned[nh++] = NULL;
        }
        char line[8192];
        for (;;) {
            fprintf(stderr, "> ");
            if (!fgets(line, sizeof line, stdin))
                break;
            line[strcspn(line, "\n")] = 0;
            if (!line[0])
                continue;
            if (nh + 2 >= 256)
                break;
            owned[nh] = kiln_xstrdup(line);
            hist[nh] = (kiln_chat_msg){"user", owned[nh]};
            nh++;
            long need = kiln_chat_format(&m->tok, hist, nh, 1, NULL, 0, &err);
            char *text = kiln_xmalloc((size_t)need + 1);
            kiln_chat_format(&m->tok, hist, nh, 1, text, (size_t)need + 1, &err);
            int cap = (int)need + 8;
            int32_t *ids = kiln_xmalloc(sizeof(int32_t) * (size_t)cap);
            int n = kiln_tok_encode(&m->tok, text, strlen(text), KILN_TOK_PARSE_SPECIAL, ids, cap, &err);
            free(text);
            /* collect the reply for the history */
            if (kiln_generate_ids(m, ids, n, &p, on_token, &os, &st, msg, sizeof msg)) {
                fprintf(stderr, "%s: %s\n", argv[0], msg);
                free(ids);
                break;
            }
            printf("\n");
            int pos = kiln_lm_position(m, 0);
            long rl = kiln_tok_decode(&m->tok, m->slots[0].tokens + n, pos - n > 0 ? pos - n : 0, KILN_TOK_SKIP_SPECIAL, NULL, 0, &err);
            char *reply = kiln_xmalloc(rl > 0 ? (size_t)rl + 1 : 1);
            reply[0] = 0;
            if (rl > 0)
                kiln_tok_decode(&m->tok, m->slots[0].tokens + n, pos - n, KILN_TOK_SKIP_SPECIAL, reply, (size_t)rl + 1, &err);
            owned[nh] = reply;
            hist[nh] = (kiln_chat_msg){"assistant", reply};
            nh++;
            free(ids);
            report(argv[0], &st);
        }
        for (int i = 0; i < nh; i++)
            free(owned[i]);
    } else {
        char *text = prompt_file ? read_text(prompt_file) : NULL;
        if (prompt_file && !text)
            goto done;
        int r = kiln_generate(m, text ? text : prompt, &p, on_token, &os, &st, msg, sizeof msg);
        free(text);
        printf("\n");
        if (r) {
            fprintf(stderr, "%s: %s\n", argv[0], msg);
            goto done;
        }
        report(argv[0], &st);
    }
    rc = 0;
done:
    kiln_close(m);
    return rc;
}

extern const uint8_t kiln_model_desc[];
extern const uint64_t kiln_model_desc_size;

int main(int argc, char **argv)
{
    kiln_desc d;
    kiln_err err;
    if (kiln_desc_read(kiln_model_desc, kiln_model_desc_size, &d, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        return 2;
    }
    int lm = d.kind == KILN_MODEL_LM;
    kiln_desc_free(&d);
    return lm ? kiln_main_lm(argc, argv) : kiln_main_generic(argc, argv);
}
