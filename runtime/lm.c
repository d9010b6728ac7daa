/* lm.c - the decoding runtime: KV-cache slots, prefill/decode steps through
 * the generated graph code, tokenization, sampling, streaming generation.
 *
 * The compiled graph takes tokens [1, seq] and past/present K/V per layer.
 * The code generator placed the KV cache in place (see codegen: the
 * attention lowering writes new rows at positions past..past+seq-1 of the
 * buffer it is given), so each slot owns one [kv_heads, max_ctx, head_dim]
 * buffer per layer and passes it as both past and present. */
#include "kiln.h"
#include "kiln_artifact.h"
#include "kiln_cuda.h"
#include "kiln_model_internal.h"
#include "kiln_sample.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int seterr(char *err, size_t len, const char *msg)
{
    if (err && len)
        snprintf(err, len, "%s", msg);
    return -1;
}

static int single_sym(const kiln_dimexpr *e) { return e->n == 1 && e->op[0] == KILN_DX_SYM ? (int)e->arg[0] : -1; }

int kiln_lm_init(kiln_model *m, kiln_err *err)
{
    const kiln_desc *d = &m->desc;
    m->io_tokens = m->io_logits = -1;
    m->sym_batch = m->sym_seq = m->sym_past = -1;
    for (int i = 0; i < d->n_inputs + d->n_outputs; i++) {
        const kiln_io_desc *io = &d->io[i];
        if (io->role == KILN_ROLE_TOKENS) {
            m->io_tokens = i;
            if (io->rank == 2) {
                m->sym_batch = single_sym(&io->dims[0]);
                m->sym_seq = single_sym(&io->dims[1]);
            }
        } else if (io->role == KILN_ROLE_LOGITS) {
            m->io_logits = i;
        } else if (io->role == KILN_ROLE_PAST_KEY && io->rank == 4 && m->sym_past < 0) {
            m->sym_past = single_sym(&io->dims[2]);
        } else if (i < d->n_inputs && io->role != KILN_ROLE_PAST_KEY && io->role != KILN_ROLE_PAST_VALUE &&
                   io->role != KILN_ROLE_ATTN_MASK && io->role != KILN_ROLE_POSITIONS) {
            return kiln_errf(err, "language model input '%s' has no role the decoder can fill", io->name);
        }
    }
    if (m->io_tokens < 0 || m->io_logits < 0 || m->sym_batch < 0 || m->sym_seq < 0 || m->sym_past < 0)
        return kiln_errf(err, "language model descriptor lacks tokens/logits/past roles");
    for (int s = 0; s < d->n_syms; s++)
        if (s != m->sym_batch && s != m->sym_seq && s != m->sym_past)
            return kiln_errf(err, "language model has an unexpected size '%s'", d->sym_names[s]);
    m->chunk = d->sym_max[m->sym_seq];
    if (m->chunk < 1)
        m->chunk = 1;
    if (d->tokenizer_bytes) {
        if (kiln_tok_load(&m->tok, d->tokenizer, (size_t)d->tokenizer_bytes, err))
            return kiln_err_prefix(err, "embedded tokenizer: ");
        m->has_tok = 1;
    }
    return 0;
}

/* KV buffers live in host memory, or on the GPU for CUDA models. */
static void *kv_alloc(kiln_model *m, size_t bytes)
{
    return m->cuda ? kiln_cuda_alloc(m, bytes) : calloc(1, bytes);
}

static void kv_free(kiln_model *m, void *p)
{
    if (m->cuda)
        kiln_cuda_free(m, p);
    else
        free(p);
}

static void slot_free(kiln_model *m, kiln_lm_slot *s)
{
    for (int l = 0; s->k && l < m->desc.kv.n_layers; l++) {
        kv_free(m, s->k[l]);
        kv_free(m, s->v[l]);
        if (s->k2) {
            kv_free(m, s->k2[l]);
            kv_free(m, s->v2[l]);
        }
    }
    free(s->k);
    free(s->v);
    free(s->k2);
    free(s->v2);
    free(s->tokens);
    memset(s, 0, sizeof *s);
}

void kiln_lm_free(kiln_model *m)
{
    for (int i = 0; i < m->n_slots; i++)
        slot_free(m, &m->slots[i]);
    free(m->slots);
    m->slots = NULL;
    m->n_slots = 0;
}

static kiln_lm_slot *get_slot(kiln_model *m, int slot, kiln_err *err)
{
    if (slot < 0 || slot > 4096) {
        kiln_errf(err, "bad slot %d", slot);
        return NULL;
    }
    if (slot >= m->n_slots) {
        m->slots = kiln_xrealloc(m->slots, sizeof *m->slots * (size_t)(slot + 1));
        memset(m->slots + m->n_slots, 0, sizeof *m->slots * (size_t)(slot + 1 - m->n_slots));
        m->n_slots = slot + 1;
    }
    kiln_lm_slot *s = &m->slots[slot];
    if (!s->k) {
        const kiln_kv_desc *kv = &m->desc.kv;
        size_t bytes = kiln_dtype_storage(kv->dtype ? kv->dtype : KILN_F32,
                                          (int64_t)kv->kv_heads * kv->max_ctx * kv->head_dim);
        if (kv->dtype == KILN_I8) /* per-head-per-token f32 scales after the rows */
            bytes += sizeof(float) * (size_t)kv->kv_heads * (size_t)kv->max_ctx;
        int fn = kv->kind == KILN_KV_FUNCTIONAL;
        s->k = kiln_xcalloc((size_t)kv->n_layers, sizeof(void *));
        s->v = kiln_xcalloc((size_t)kv->n_layers, sizeof(void *));
        if (fn) {
            s->k2 = kiln_xcalloc((size_t)kv->n_layers, sizeof(void *));
            s->v2 = kiln_xcalloc((size_t)kv->n_layers, sizeof(void *));
        }
        for (int l = 0; l < kv->n_layers; l++) {
            s->k[l] = kv_alloc(m, bytes + 64);
            s->v[l] = kv_alloc(m, bytes + 64);
            int bad = !s->k[l] || !s->v[l];
            if (fn) {
                s->k2[l] = kv_alloc(m, bytes + 64);
                s->v2[l] = kv_alloc(m, bytes + 64);
                bad |= !s->k2[l] || !s->v2[l];
            }
            if (bad) {
                slot_free(m, s);
                kiln_errf(err, "cannot allocate the KV cache (%zu bytes per layer)", 2 * bytes);
                return NULL;
            }
        }
        s->tokens = kiln_xmalloc(sizeof(int32_t) * (size_t)(kv->max_ctx + 1));
        s->pos = 0;
    }
    return s;
}

int kiln_is_lm(const kiln_model *m) { return m->desc.kind == KILN_MODEL_LM; }
int kiln_vocab_size(const kiln_model *m) { return (int)m->desc.vocab; }
int kiln_max_context(const kiln_model *m) { return (int)m->desc.kv.max_ctx; }
int kiln_has_tokenizer(const kiln_model *m) { return m->has_tok; }
int kiln_lm_position(const kiln_model *m, int slot) { return slot < m->n_slots ? m->slots[slot].pos : 0; }

/* Shortens a slot to pos tokens. A packed (functional) cache stores head h
 * at h*P*D, so its rows move when P changes. */
static void truncate_slot(kiln_model *m, kiln_lm_slot *s, int pos)
{
    const kiln_kv_desc *kv = &m->desc.kv;
    if (pos >= s->pos)
        return;
    if (kv->kind == KILN_KV_FUNCTIONAL && s->k) {
        size_t row = kiln_dtype_storage(kv->dtype ? kv->dtype : KILN_F32, kv->head_dim);
        for (int l = 0; l < kv->n_layers; l++)
            for (int h = 0; h < kv->kv_heads; h++) {
                memmove((char *)s->k[l] + (size_t)h * pos * row, (char *)s->k[l] + (size_t)h * s->pos * row, (size_t)pos * row);
                memmove((char *)s->v[l] + (size_t)h * pos * row, (char *)s->v[l] + (size_t)h * s->pos * row, (size_t)pos * row);
            }
    }
    s->pos = pos;
}

void kiln_lm_rewind(kiln_model *m, int slot, int pos)
{
    if (slot < m->n_slots && pos >= 0)
        truncate_slot(m, &m->slots[slot], pos);
}

/* One step: up to m->chunk tokens at position s->pos. */
static int step(kiln_model *m, kiln_lm_slot *s, const int32_t *ids, int n, float *logits, kiln_err *err)
{
    const kiln_desc *d = &m->desc;
    int nio = d->n_inputs + d->n_outputs;
    void *io[KILN_MAX_IO];
    void *scratch[KILN_MAX_IO];
    int64_t syms[KILN_MAX_SYMS];
    int rc = -1;
    memset(scratch, 0, sizeof scratch);
    for (int i = 0; i < KILN_MAX_SYMS; i++)
        syms[i] = 0;
    syms[m->sym_batch] = 1;
    syms[m->sym_seq] = n;
    syms[m->sym_past] = s->pos;
    kiln_dtype tdt = d->io[m->io_tokens].dtype;
    void *tok = kiln_xmalloc(kiln_dtype_storage(tdt, n) + 8);
    for (int i = 0; i < n; i++)
        kiln_store_i64(tdt, tok, i, ids[i]);
    /* logits may cover every position ([batch, seq, vocab], ONNX exports):
     * the last row is the next-token distribution */
    int64_t lrows = d->io[m->io_logits].rank == 3 ? n : 1;
    float *lg = kiln_xmalloc(sizeof(float) * (size_t)(d->vocab * lrows));
    int fn = d->kv.kind == KILN_KV_FUNCTIONAL;
    for (int i = 0; i < nio; i++) {
        const kiln_io_desc *x = &d->io[i];
        switch (x->role) {
        case KILN_ROLE_TOKENS: io[i] = tok; break;
        case KILN_ROLE_LOGITS: io[i] = lg; break;
        case KILN_ROLE_PAST_KEY: io[i] = s->k[x->layer]; break;
        case KILN_ROLE_PAST_VALUE: io[i] = s->v[x->layer]; break;
        case KILN_ROLE_PRESENT_KEY: io[i] = fn ? s->k2[x->layer] : s->k[x->layer]; break;
        case KILN_ROLE_PRESENT_VALUE: io[i] = fn ? s->v2[x->layer] : s->v[x->layer]; break;
        case KILN_ROLE_ATTN_MASK:
        case KILN_ROLE_POSITIONS: {
            /* all positions visible; positions count on from the cache */
            int64_t e = 1;
            for (int k = 0; k < x->rank; k++)
                e *= kiln_dimexpr_eval(&x->dims[k], syms);
            scratch[i] = kiln_xcalloc(1, kiln_dtype_storage(x->dtype, e) + 64);
            int64_t cols = x->rank ? kiln_dimexpr_eval(&x->dims[x->rank - 1], syms) : 1;
            for (int64_t q = 0; q < e; q++)
                kiln_store_i64(x->dtype, scratch[i], q, x->role == KILN_ROLE_ATTN_MASK ? 1 : s->pos + q % cols);
            io[i] = scratch[i];
            break;
        }
        default: {
            /* an output the decoder does not use: give it room */
            int64_t e = 1;
            for (int k = 0; k < x->rank; k++)
                e *= kiln_dimexpr_eval(&x->dims[k], syms);
            scratch[i] = kiln_xcalloc(1, kiln_dtype_storage(x->dtype, e) + 64);
            io[i] = scratch[i];
        }
        }
    }
    if (d->io[m->io_logits].dtype != KILN_F32) {
        kiln_errf(err, "logits must be f32");
        goto out;
    }
    if (kiln_model_exec(m, io, syms)) {
        kiln_errf(err, "model step failed");
        goto out;
    }
    if (logits && !m->cuda_greedy) /* GPU greedy steps leave the logits on the GPU */
        memcpy(logits, lg + (lrows - 1) * d->vocab, sizeof(float) * (size_t)d->vocab);
    if (fn) { /* this step's present is the next step's past */
        void **t = s->k;
        s->k = s->k2;
        s->k2 = t;
        t = s->v;
        s->v = s->v2;
        s->v2 = t;
    }
    memcpy(s->tokens + s->pos, ids, sizeof(int32_t) * (size_t)n);
    s->pos += n;
    rc = 0;
out:
    for (int i = 0; i < nio; i++)
        free(scratch[i]);
    free(tok);
    free(lg);
    return rc;
}

static int forward(kiln_model *m, int slot, const int32_t *ids, int n, float *logits, kiln_err *err)
{
    if (!kiln_is_lm(m))
        return kiln_errf(err, "not a language model");
    kiln_lm_slot *s = get_slot(m, slot, err);
    if (!s)
        return -1;
    if (s->pos + n > m->desc.kv.max_ctx)
        return kiln_errf(err, "context length %lld exceeded (%d cached + %d new tokens; rebuild with a larger --max-ctx)",
                         (long long)m->desc.kv.max_ctx, s->pos, n);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->desc.vocab)
            return kiln_errf(err, "token id %d outside the vocabulary of %lld", ids[i], (long long)m->desc.vocab);
    for (int off = 0; off < n;) {
        int len = n - off < m->chunk ? n - off : (int)m->chunk;
        int last = off + len == n;
        if (step(m, s, ids + off, len, last ? logits : NULL, err))
            return -1;
        off += len;
    }
    return 0;
}

int kiln_lm_forward(kiln_model *m, int slot, const int32_t *ids, int n, float *logits, char *errbuf, size_t errlen)
{
    kiln_err err;
    if (forward(m, slot, ids, n, logits, &err))
        return seterr(errbuf, errlen, err.msg);
    return 0;
}

int kiln_tokenize(kiln_model *m, const char *text, int add_special, int32_t *ids, int max)
{
    if (!m->has_tok)
        return -1;
    kiln_err err;
    return kiln_tok_encode(&m->tok, text, strlen(text),
                           KILN_TOK_PARSE_SPECIAL | (add_special ? KILN_TOK_ADD_SPECIAL : 0), ids, max, &err);
}

long kiln_detokenize(kiln_model *m, const int32_t *ids, int n, char *out, size_t cap)
{
    if (!m->has_tok)
        return -1;
    kiln_err err;
    return kiln_tok_decode(&m->tok, ids, n, KILN_TOK_SKIP_SPECIAL, out, cap, &err);
}

void kiln_gen_params_default(kiln_gen_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_tokens = 128;
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0x5eed;
}

/* Ids that end a turn: the tokenizer's EOS and the usual end-of-turn tokens. */
static int is_end(const kiln_model *m, int id)
{
    if (!m->has_tok)
        return m->desc.eos >= 0 && id == m->desc.eos;
    if (id == kiln_tok_eos(&m->tok))
        return 1;
    static const char *ends[] = {"<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>"};
    size_t len;
    const char *piece = kiln_tok_piece(&m->tok, id, &len);
    for (size_t i = 0; piece && i < sizeof ends / sizeof *ends; i++)
        if (len == strlen(ends[i]) && !memcmp(piece, ends[i], len))
            return 1;
    return 0;
}

static int generate(kiln_model *m, const int32_t *prompt, int np, const kiln_gen_params *p, kiln_token_cb cb,
                    void *user, kiln_gen_stats *st, kiln_err *err)
{
    kiln_gen_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    kiln_lm_slot *s = get_slot(m, p->slot, err);
    if (!s)
        return -1;
    if (np < 1)
        return kiln_errf(err, "empty prompt");
    /* reuse the cached prefix (chat turns, repeated system prompts) */
    int keep = 0;
    while (keep < s->pos && keep < np - 1 && s->tokens[keep] == prompt[keep])
        keep++;
    truncate_slot(m, s, keep);
    st->reused_tokens = keep;
    st->prompt_tokens = np;
    int vocab = (int)m->desc.vocab;
    float *logits = kiln_xmalloc(sizeof(float) * (size_t)vocab);
    kiln_sampler smp;
    if (kiln_sampler_init(&smp, vocab, p->seed)) {
        free(logits);
        return kiln_errf(err, "cannot set up the sampler");
    }
    smp.temperature = p->temperature;
    smp.top_k = p->top_k;
    smp.top_p = p->top_p;
    smp.min_p = p->min_p;
    smp.repeat_penalty = p->repeat_penalty;
    kiln_tok_stream ts;
    size_t tb = m->has_tok ? kiln_tok_stream_bound(&m->tok) + 8 : 8;
    char *piece = kiln_xmalloc(tb);
    /* generated text kept for stop strings */
    size_t cap = 4096, len = 0;
    char *text = kiln_xmalloc(cap);
    text[0] = 0;
    if (m->has_tok)
        kiln_tok_stream_init(&ts, &m->tok, KILN_TOK_SKIP_SPECIAL);
    int rc = -1;
    /* greedy decoding on a GPU: the argmax runs there, one int comes back */
    m->cuda_greedy = m->cuda && (p->temperature <= 0.0f || p->top_k == 1) && p->repeat_penalty == 1.0f;
    double t0 = now_s();
    if (forward(m, p->slot, prompt + keep, np - keep, logits, err))
        goto out;
    st->prefill_s = now_s() - t0;
    double t1 = now_s();
    for (int i = 0; i < p->max_tokens; i++) {
        int nrec = s->pos < p->repeat_last_n ? s->pos : p->repeat_last_n;
        int id = m->cuda_greedy ? m->cuda_next : kiln_sample(&smp, logits, vocab, s->tokens + s->pos - nrec, nrec);
        if (id < 0) {
            kiln_errf(err, "sampling failed");
            goto out;
        }
        if (is_end(m, id)) {
            st->stop_reason = 1;
            break;
        }
        st->new_tokens++;
        int n = 0;
        if (m->has_tok) {
            n = kiln_tok_stream_put(&ts, id, piece, tb);
            if (n < 0)
                n = 0;
            if (len + (size_t)n + 1 > cap) {
                cap = (len + (size_t)n + 1) * 2;
                text = kiln_xrealloc(text, cap);
            }
            memcpy(text + len, piece, (size_t)n);
            len += (size_t)n;
            text[len] = 0;
        }
        if (cb && cb(user, id, m->has_tok ? piece : NULL, (size_t)n)) {
            st->stop_reason = 4;
            break;
        }
        int stopped = 0;
        for (int k = 0; k < p->n_stop && !stopped; k++)
            stopped = p->stop[k][0] && strstr(text, p->stop[k]) != NULL;
        if (stopped) {
            st->stop_reason = 2;
            break;
        }
        if (s->pos + 1 > m->desc.kv.max_ctx) {
            st->stop_reason = 3;
            break;
        }
        if (i + 1 < p->max_tokens) {
            int32_t one = id;
            if (forward(m, p->slot, &one, 1, logits, err))
                goto out;
        } else {
            /* remember the last token so a continuation can reuse the cache */
        }
    }
    if (m->has_tok && cb) {
        int n = kiln_tok_stream_flush(&ts, piece, tb);
        if (n > 0)
            cb(user, -1, piece, (size_t)n);
    }
    st->decode_s = now_s() - t1;
    rc = 0;
out:
    m->cuda_greedy = 0;
    kiln_sampler_free(&smp);
    free(logits);
    free(piece);
    free(text);
    return rc;
}

int kiln_generate_ids(kiln_model *m, const int32_t *ids, int n, const kiln_gen_params *p, kiln_token_cb cb,
                      void *user, kiln_gen_stats *st, char *errbuf, size_t errlen)
{
    kiln_err err;
    if (!kiln_is_lm(m))
        return seterr(errbuf, errlen, "not a language model");
    if (generate(m, ids, n, p, cb, user, st, &err))
        return seterr(errbuf, errlen, err.msg);
    return 0;
}

int kiln_generate(kiln_model *m, const char *prompt, const kiln_gen_params *p, kiln_token_cb cb, void *user,
                  kiln_gen_stats *st, char *errbuf, size_t errlen)
{
    kiln_err err;
    if (!kiln_is_lm(m))
        return seterr(errbuf, errlen, "not a language model");
    if (!m->has_tok)
        return seterr(errbuf, errlen, "this model has no tokenizer: give token ids");
    char *text = NULL;
    if (p->chat) {
        kiln_chat_msg msgs[2];
        int nm = 0;
        if (p->system)
            msgs[nm++] = (kiln_chat_msg){"system", p->system};
        msgs[nm++] = (kiln_chat_msg){"user", prompt};
        long need = kiln_chat_format(&m->tok, msgs, nm, 1, NULL, 0, &err);
        if (need < 0)
            return seterr(errbuf, errlen, err.msg);
        text = kiln_xmalloc((size_t)need + 1);
        kiln_chat_format(&m->tok, msgs, nm, 1, text, (size_t)need + 1, &err);
    } else {
        text = kiln_xstrdup(prompt);
    }
    /* chat text already carries its special tokens; plain prompts get BOS */
    int flags = KILN_TOK_PARSE_SPECIAL | (p->chat ? 0 : KILN_TOK_ADD_SPECIAL);
    int cap = 256;
    int32_t *ids = kiln_xmalloc(sizeof(int32_t) * (size_t)cap);
    int n = kiln_tok_encode(&m->tok, text, strlen(text), flags, ids, cap, &err);
    if (n > cap) {
        cap = n;
        ids = kiln_xrealloc(ids, sizeof(int32_t) * (size_t)cap);
        n = kiln_tok_encode(&m->tok, text, strlen(text), flags, ids, cap, &err);
    }
    free(text);
    int rc = n < 0 ? -1 : generate(m, ids, n, p, cb, user, st, &err);
    free(ids);
    if (rc)
        return seterr(errbuf, errlen, err.msg);
    return 0;
}
