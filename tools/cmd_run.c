/* cmd_run.c - `kiln run`: greedy decoding of an LM graph with the reference
 * interpreter. Prefill of the given ids, then one-token steps that feed
 * present_key/value.{i} back as past_key/value.{i}. This is the oracle the
 * compiled binaries are compared with, so it does nothing clever. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Parses "1,2,3" into a malloc'd array. */
static int parse_ids(const char *s, int64_t **ids, int *n)
{
    int cap = 16, cnt = 0;
    int64_t *v = kiln_xmalloc(sizeof *v * (size_t)cap);
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 0) {
            free(v);
            return -1;
        }
        if (cnt == cap) {
            cap *= 2;
            v = kiln_xrealloc(v, sizeof *v * (size_t)cap);
        }
        v[cnt++] = x;
        if (*end == 0)
            break;
        if (*end != ',') {
            free(v);
            return -1;
        }
        p = end + 1;
    }
    *ids = v;
    *n = cnt;
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Where each graph input comes from: the tokens, or the present output it
 * continues (for past_key.{i} that is present_key.{i}). */
typedef struct run_plan {
    int tokens_slot;
    int *src_out; /* per input: output index feeding it, -1 for tokens */
    int logits_out;
} run_plan;

static int make_plan(const kiln_graph *g, run_plan *p, kiln_err *err)
{
    p->tokens_slot = -1;
    p->logits_out = -1;
    p->src_out = kiln_xmalloc(sizeof(int) * (size_t)(g->n_inputs + 1));
    for (int i = 0; i < g->n_outputs; i++)
        if (strcmp(g->values[g->outputs[i]].name, "logits") == 0)
            p->logits_out = i;
    for (int i = 0; i < g->n_inputs; i++) {
        const kiln_value *v = &g->values[g->inputs[i]];
        p->src_out[i] = -1;
        if (strcmp(v->name, "tokens") == 0) {
            if (v->type.dtype != KILN_I64 || v->type.rank != 2)
                return kiln_errf(err, "input %%tokens must be i64[batch, seq]");
            p->tokens_slot = i;
            continue;
        }
        const char *suffix = NULL;
        if (strncmp(v->name, "past_", 5) == 0)
            suffix = v->name + 5;
        char want[256];
        snprintf(want, sizeof want, "present_%s", suffix ? suffix : "");
        for (int k = 0; suffix && k < g->n_outputs; k++)
            if (strcmp(g->values[g->outputs[k]].name, want) == 0)
                p->src_out[i] = k;
        if (p->src_out[i] < 0)
            return kiln_errf(err, "input %%%s is neither tokens nor a past_* state with a matching "
                             "present_* output (not an LM graph; use kiln eval)", v->name);
        if (v->type.dtype != KILN_F32 || v->type.rank != 4 || !KILN_DIM_IS_STATIC(v->type.dims[1]) ||
            !KILN_DIM_IS_STATIC(v->type.dims[3]))
            return kiln_errf(err, "input %%%s must be f32[batch, kv_heads, past, head_dim] with static "
                             "kv_heads and head_dim", v->name);
    }
    if (p->tokens_slot < 0 || p->logits_out < 0)
        return kiln_errf(err, "not an LM graph (needs input %%tokens and output %%logits; use kiln eval)");
    return 0;
}

int kiln_cmd_run(int argc, char **argv)
{
    const char *path = NULL, *ids_arg = NULL, *logits_path = NULL;
    long steps = 0;
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ids") == 0 && i + 1 < argc) {
            ids_arg = argv[++i];
        } else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char *end;
            steps = strtol(argv[++i], &end, 10);
            if (*end || steps < 0 || steps > 1000000) {
                fprintf(stderr, "kiln run: -n takes a non-negative count, got '%s'\n", argv[i]);
                return KILN_EXIT_INPUT;
            }
        } else if (strcmp(argv[i], "--logits") == 0 && i + 1 < argc) {
            logits_path = argv[++i];
        } else if (strcmp(argv[i], "-v") == 0) {
            verbose = 1;
        } else if (argv[i][0] == '-' || path) {
            return kiln_cli_usage("run");
        } else {
            path = argv[i];
        }
    }
    if (!path || !ids_arg)
        return kiln_cli_usage("run");
    int64_t *ids;
    int n_ids;
    if (parse_ids(ids_arg, &ids, &n_ids)) {
        fprintf(stderr, "kiln run: --ids takes comma-separated non-negative integers, got '%s'\n",
                ids_arg);
        return KILN_EXIT_INPUT;
    }
    kiln_err err = {{0}};
    double t0 = now();
    kiln_graph *g = kiln_cli_load(path, &err);
    if (!g) {
        free(ids);
        fprintf(stderr, "kiln run: %s\n", err.msg);
        return KILN_EXIT_INPUT;
    }
    if (verbose)
        fprintf(stderr, "kiln run: loaded %s in %.2fs (%d nodes)\n", path, now() - t0, g->n_nodes);
    int rc = KILN_EXIT_INPUT;
    run_plan plan = {0, NULL, 0};
    kiln_tensor *ins = kiln_xcalloc((size_t)g->n_inputs + 1, sizeof *ins);
    kiln_tensor *outs = kiln_xcalloc((size_t)g->n_outputs + 1, sizeof *outs);
    float *logits = NULL;
    int64_t vocab = 0;
    int n_fwd = steps > 0 ? (int)steps : 1; /* forward passes; the last token needs none */
    int64_t *gen = kiln_xmalloc(sizeof(int64_t) * (size_t)(steps + 1));
    if (kiln_verify(g, &err) || make_plan(g, &plan, &err)) {
        fprintf(stderr, "kiln run: %s: %s\n", path, err.msg);
        goto done;
    }
    const kiln_type *lt = &g->values[g->outputs[plan.logits_out]].type;
    if (lt->rank == 2 && KILN_DIM_IS_STATIC(lt->dims[1])) {
        for (int i = 0; i < n_ids; i++)
            if (ids[i] >= lt->dims[1]) {
                fprintf(stderr, "kiln run: token id %lld is outside the vocabulary (%lld tokens)\n",
                        (long long)ids[i], (long long)lt->dims[1]);
                goto done;
            }
    }
    /* empty caches: [1, kv_heads, 0, head_dim] */
    for (int i = 0; i < g->n_inputs; i++) {
        if (i == plan.tokens_slot)
            continue;
        const kiln_type *t = &g->values[g->inputs[i]].type;
        int64_t dims[4] = {1, t->dims[1], 0, t->dims[3]};
        kiln_tensor_alloc(&ins[i], KILN_F32, 4, dims);
    }
    for (int s = 0; s < n_fwd; s++) {
        double ts = now();
        kiln_tensor *tok = &ins[plan.tokens_slot];
        kiln_tensor_free(tok);
        int64_t n = s == 0 ? n_ids : 1;
        kiln_tensor_alloc(tok, KILN_I64, 2, (const int64_t[]){1, n});
        if (s == 0)
            memcpy(tok->data, ids, sizeof(int64_t) * (size_t)n_ids);
        else
            ((int64_t *)tok->data)[0] = gen[s - 1];
        if (kiln_interp_run(g, ins, outs, &err)) {
            fprintf(stderr, "kiln run: %s: step %d: %s\n", path, s, err.msg);
            goto done;
        }
        kiln_tensor *lg = &outs[plan.logits_out];
        if (lg->dtype != KILN_F32 || lg->rank != 2 || lg->dims[0] != 1) {
            fprintf(stderr, "kiln run: %s: logits must be f32[1, vocab]\n", path);
            for (int i = 0; i < g->n_outputs; i++)
                kiln_tensor_free(&outs[i]);
            goto done;
        }
        if (!logits) {
            vocab = lg->dims[1];
            logits = kiln_xmalloc(sizeof(float) * (size_t)(vocab * n_fwd + 1));
        }
        const float *row = lg->data;
        memcpy(logits + (size_t)s * (size_t)vocab, row, sizeof(float) * (size_t)vocab);
        int64_t best = 0; /* greedy; ties go to the lowest id */
        for (int64_t v = 1; v < vocab; v++)
            if (row[v] > row[best])
                best = v;
        gen[s] = best;
        /* the presents become the next step's pasts */
        for (int i = 0; i < g->n_inputs; i++)
            if (plan.src_out[i] >= 0) {
                kiln_tensor_free(&ins[i]);
                ins[i] = outs[plan.src_out[i]];
                outs[plan.src_out[i]].owned = 0;
                outs[plan.src_out[i]].data = NULL;
            }
        for (int i = 0; i < g->n_outputs; i++)
            kiln_tensor_free(&outs[i]);
        if (verbose)
            fprintf(stderr, "kiln run: step %d (%lld tokens): %.3fs -> %lld\n", s, (long long)n,
                    now() - ts, (long long)best);
    }
    if (logits_path &&
        kiln_npy_write(logits_path, KILN_F32, 2, (const int64_t[]){n_fwd, vocab}, logits, &err)) {
        fprintf(stderr, "kiln run: %s\n", err.msg);
        goto done;
    }
    for (long s = 0; s < steps; s++)
        printf("%s%lld", s ? "," : "", (long long)gen[s]);
    printf("\n");
    rc = 0;
done:
    for (int i = 0; i < g->n_inputs; i++)
        kiln_tensor_free(&ins[i]);
    free(ins);
    free(outs);
    free(plan.src_out);
    free(logits);
    free(gen);
    free(ids);
    kiln_graph_free(g);
    return rc;
}
