/* lm_meta.c - recognizes language-model graphs (the LM convention of
 * docs/models.md, and the past_key_values/present names of ONNX exports)
 * and fills what the runtime's decoder needs: I/O roles, the KV cache
 * layout, symbol bounds and the tokenizer blob. */
#include "cli.h"
#include "kiln_codegen.h"
#include "kiln_tokenizer_import.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Role and layer of a graph input/output name; KILN_ROLE_DATA if none. */
static int io_role(const char *name, int is_input, int *layer)
{
    static const struct { const char *fmt; int in; int role; } pats[] = {
        {"past_key.%d%n", 1, KILN_ROLE_PAST_KEY},
        {"past_value.%d%n", 1, KILN_ROLE_PAST_VALUE},
        {"past_key_values.%d.key%n", 1, KILN_ROLE_PAST_KEY},
        {"past_key_values.%d.value%n", 1, KILN_ROLE_PAST_VALUE},
        {"present_key.%d%n", 0, KILN_ROLE_PRESENT_KEY},
        {"present_value.%d%n", 0, KILN_ROLE_PRESENT_VALUE},
        {"present.%d.key%n", 0, KILN_ROLE_PRESENT_KEY},
        {"present.%d.value%n", 0, KILN_ROLE_PRESENT_VALUE},
    };
    *layer = 0;
    if (is_input && (!strcmp(name, "tokens") || !strcmp(name, "input_ids")))
        return KILN_ROLE_TOKENS;
    if (is_input && !strcmp(name, "attention_mask"))
        return KILN_ROLE_ATTN_MASK;
    if (is_input && !strcmp(name, "position_ids"))
        return KILN_ROLE_POSITIONS;
    if (!is_input && !strcmp(name, "logits"))
        return KILN_ROLE_LOGITS;
    for (size_t i = 0; i < sizeof pats / sizeof *pats; i++) {
        int l = -1, used = -1;
        if (pats[i].in == is_input && sscanf(name, pats[i].fmt, &l, &used) == 1 && used == (int)strlen(name)) {
            *layer = l;
            return pats[i].role;
        }
    }
    return KILN_ROLE_DATA;
}

static int sym_index(const kiln_graph *g, kiln_dim d)
{
    if (!KILN_DIM_IS_SYM(d) || g->syms.syms[KILN_DIM_SYM_ID(d)].kind != KILN_SYM_VAR)
        return -1;
    return KILN_DIM_SYM_ID(d);
}

static void set_bound(kiln_pass_opts *o, const char *name, int64_t v)
{
    for (int i = 0; i < o->n_bind; i++)
        if (!strcmp(o->bind_names[i], name))
            return; /* the user's --bound wins */
    if (o->n_bind < 16) {
        o->bind_names[o->n_bind] = name;
        o->bind_vals[o->n_bind++] = v;
    }
}

int kiln_cli_lm_meta(const char *model_path, kiln_graph *g, kiln_build_opts *o, int64_t max_ctx,
                     kiln_dtype kv_dtype, int64_t kv_budget, kiln_err *err)
{
    int n = g->n_inputs + g->n_outputs;
    kiln_io_desc *io = kiln_xcalloc((size_t)n + 1, sizeof *io);
    int have_tokens = 0, have_logits = 0, n_layers = 0, kv_heads = 0, head_dim = 0;
    int tokens_vid = -1, past_vid = -1;
    for (int i = 0; i < n; i++) {
        int in = i < g->n_inputs;
        int v = in ? g->inputs[i] : g->outputs[i - g->n_inputs];
        const kiln_value *val = &g->values[v];
        io[i].role = io_role(val->name, in, &io[i].layer);
        if (io[i].role == KILN_ROLE_TOKENS) {
            have_tokens = 1;
            tokens_vid = v;
        }
        if (io[i].role == KILN_ROLE_LOGITS)
            have_logits = 1;
        if (io[i].role == KILN_ROLE_PAST_KEY) {
            if (io[i].layer + 1 > n_layers)
                n_layers = io[i].layer + 1;
            if (val->type.rank == 4 && KILN_DIM_IS_STATIC(val->type.dims[1]) && KILN_DIM_IS_STATIC(val->type.dims[3])) {
                kv_heads = (int)val->type.dims[1];
                head_dim = (int)val->type.dims[3];
                past_vid = v;
            }
        }
    }
    if (!have_tokens || !have_logits || !n_layers || past_vid < 0) {
        free(io);
        return 0; /* not a language model: a plain graph */
    }
    const kiln_type *tt = &g->values[tokens_vid].type, *lt = NULL;
    for (int i = 0; i < g->n_outputs; i++)
        if (io[g->n_inputs + i].role == KILN_ROLE_LOGITS)
            lt = &g->values[g->outputs[i]].type;
    int sb = tt->rank == 2 ? sym_index(g, tt->dims[0]) : -1, ss = tt->rank == 2 ? sym_index(g, tt->dims[1]) : -1;
    int sp = sym_index(g, g->values[past_vid].type.dims[2]);
    if (sb < 0 || ss < 0 || sp < 0 || !lt || lt->rank < 2 || lt->rank > 3 || !KILN_DIM_IS_STATIC(lt->dims[lt->rank - 1])) {
        free(io);
        return kiln_errf(err, "language model I/O does not follow the convention (tokens [batch, seq], "
                              "past_key.N [batch, heads, past, dim], logits [batch, vocab])");
    }
    o->meta.kind = KILN_MODEL_LM;
    o->meta.io = io;
    o->meta.vocab = lt->dims[lt->rank - 1];
    o->meta.bos = o->meta.eos = o->meta.eot = -1;
    o->meta.max_ctx = max_ctx;
    o->meta.kv.dtype = kv_dtype;
    o->meta.kv.n_layers = n_layers;
    o->meta.kv.kv_heads = kv_heads;
    o->meta.kv.head_dim = head_dim;
    o->meta.kv.max_ctx = max_ctx;
    o->meta.kv.max_batch = 1;
    /* on failure the role table goes back: only a build consumes it */
    if (o->meta.kv.kind == KILN_KV_FUNCTIONAL && kv_dtype != KILN_DT_INVALID && kv_dtype != KILN_F32) {
        kiln_errf(err, "the functional KV layout keeps the graph's f32 cache; --kv-dtype needs the in-place layout");
        goto fail;
    }
    if (kv_dtype == KILN_DT_INVALID && kiln_kv_choose(&o->meta.kv, KILN_F32, kv_budget, err)) /* the KV layout pass decides */
        goto fail;
    if (o->verbose)
        fprintf(stderr, "kiln: KV cache: %s, %d layers x %d heads x %lld positions x %d = %lld bytes per slot\n",
                kiln_dtype_name(o->meta.kv.dtype), n_layers, kv_heads, (long long)max_ctx, head_dim,
                (long long)kiln_kv_bytes(&o->meta.kv));
    /* plan for one sequence, prompt chunks of up to 512 tokens, max_ctx positions */
    set_bound(&o->passes, g->syms.syms[sb].name, 1);
    set_bound(&o->passes, g->syms.syms[ss].name, max_ctx < 512 ? max_ctx : 512);
    set_bound(&o->passes, g->syms.syms[sp].name, max_ctx);
    /* the tokenizer travels inside the artifact (none for bare llama2.c checkpoints) */
    uint8_t *blob = NULL;
    size_t len = 0;
    kiln_err e2;
    if (kiln_tokenizer_import(model_path, &blob, &len, &e2) == 0) {
        o->meta.tokenizer = blob;
        o->meta.tokenizer_bytes = len;
    } else if (!strstr(model_path, ".bin")) {
        fprintf(stderr, "kiln build: note: no tokenizer embedded (%s); the model will take token ids\n", e2.msg);
    }
    return 1;
fail:
    free(io);
    o->meta.io = NULL;
    return -1;
}
