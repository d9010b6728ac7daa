/* chat.c - renders a conversation in the chat format a model was trained on.
 *
 * kiln runs no Jinja: the importer recognizes which well-known template the
 * model ships (ChatML, Llama-2, Llama-3) and records it in the tokenizer
 * blob; this file writes the text that template would produce. */
#include "kiln_tokenizer.h"

#include <string.h>

typedef struct outbuf {
    char *p;
    size_t cap, len;
} outbuf;

static void put(outbuf *o, const char *s, size_t n)
{
    if (o->len < o->cap) {
        size_t room = o->cap - o->len, k = n < room ? n : room;
        memcpy(o->p + o->len, s, k);
    }
    o->len += n;
}

static void puts0(outbuf *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Python's str.isspace(), which Jinja's trim filter and str.strip() use. */
static int py_space(uint32_t c)
{
    return (c >= 0x1C && c <= 0x1F) || (kiln_uc_class(c) & KILN_UC_WS);
}

/* Strips leading (if left) and trailing whitespace of s: sets [*b, *b + *n). */
static void strip(const char *s, int left, const char **b, size_t *n)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t len = strlen(s), i = 0;
    while (left && i < len) {
        uint32_t c;
        int l = kiln_utf8_next(u + i, len - i, &c);
        if (!py_space(c))
            break;
        i += (size_t)l;
    }
    size_t end = i, k = i;
    while (k < len) { /* end: just past the last non-space character */
        uint32_t c;
        int l = kiln_utf8_next(u + k, len - k, &c);
        k += (size_t)l;
        if (!py_space(c))
            end = k;
    }
    *b = s + i;
    *n = end - i;
}

static void put_stripped(outbuf *o, const char *s)
{
    const char *b;
    size_t n;
    strip(s, 1, &b, &n);
    put(o, b, n);
}

static int put_special(outbuf *o, const kiln_tokenizer *t, int id, const char *what, kiln_err *err)
{
    size_t n;
    const char *s = id >= 0 ? kiln_tok_piece(t, id, &n) : NULL;
    if (!s)
        return kiln_errf(err, "chat template needs the %s token, which the tokenizer lacks", what);
    put(o, s, n);
    return 0;
}

const char *kiln_chat_kind_name(int kind)
{
    switch (kind) {
    case KILN_CHAT_NONE: return "none";
    case KILN_CHAT_CHATML: return "chatml";
    case KILN_CHAT_LLAMA2: return "llama2";
    case KILN_CHAT_LLAMA3: return "llama3";
    default: return "unknown";
    }
}

long kiln_chat_format(const kiln_tokenizer *t, const kiln_chat_msg *msgs, int n, int add_assistant, char *out,
                      size_t cap, kiln_err *err)
{
    outbuf o = {out, cap ? cap - 1 : 0, 0};
    const char *pool = (const char *)t->blob + t->h[KILN_TOKH_POOL_OFF];
    int kind = (int)t->h[KILN_TOKH_CHAT_KIND];
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return kiln_errf(err, "chat message %d has no role or content", i);
    switch (kind) {
    case KILN_CHAT_CHATML:
        /* the template's own system prompt when the conversation brings none */
        if (n > 0 && strcmp(msgs[0].role, "system") != 0 && t->h[KILN_TOKH_CHAT_SYS_LEN]) {
            puts0(&o, "<|im_start|>system\n");
            put(&o, pool + t->h[KILN_TOKH_CHAT_SYS_OFF], t->h[KILN_TOKH_CHAT_SYS_LEN]);
            puts0(&o, "<|im_end|>\n");
        }
        for (int i = 0; i < n; i++) {
            puts0(&o, "<|im_start|>");
            puts0(&o, msgs[i].role);
            puts0(&o, "\n");
            puts0(&o, msgs[i].content);
            puts0(&o, "<|im_end|>\n");
        }
        if (add_assistant)
            puts0(&o, "<|im_start|>assistant\n");
        break;
    case KILN_CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            if (i == 0 && put_special(&o, t, kiln_tok_bos(t), "BOS", err))
                return -1;
            puts0(&o, "<|start_header_id|>");
            puts0(&o, msgs[i].role);
            puts0(&o, "<|end_header_id|>\n\n");
            put_stripped(&o, msgs[i].content);
            puts0(&o, "<|eot_id|>");
        }
        if (add_assistant)
            puts0(&o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case KILN_CHAT_LLAMA2: {
        /* [INST] turns; the system prompt is folded into the first user turn */
        int start = 0;
        const char *sys = NULL;
        if (n > 0 && strcmp(msgs[0].role, "system") == 0)
            sys = msgs[0].content, start = 1;
        for (int i = start; i < n; i++) {
            int k = i - start, user = strcmp(msgs[i].role, "user") == 0;
            if (user != (k % 2 == 0))
                return kiln_errf(err, "Llama-2 chat template: roles must alternate user/assistant/user/...");
            if (user) {
                if (put_special(&o, t, kiln_tok_bos(t), "BOS", err))
                    return -1;
                puts0(&o, "[INST] ");
                const char *b;
                size_t len;
                if (k == 0 && sys) {
                    strip(msgs[i].content, 0, &b, &len);
                    puts0(&o, "<<SYS>>\n");
                    puts0(&o, sys);
                    /* the template strips the joined text: blank content eats the "\n\n" */
                    puts0(&o, len ? "\n<</SYS>>\n\n" : "\n<</SYS>>");
                    put(&o, b, len);
                } else {
                    put_stripped(&o, msgs[i].content);
                }
                puts0(&o, " [/INST]");
            } else if (strcmp(msgs[i].role, "assistant") == 0) {
                puts0(&o, " ");
                put_stripped(&o, msgs[i].content);
                puts0(&o, " ");
                if (put_special(&o, t, kiln_tok_eos(t), "EOS", err))
                    return -1;
            }
        }
        break;
    }
    case KILN_CHAT_NONE:
        return kiln_errf(err, "the model ships no chat template");
    default:
        return kiln_errf(err, "unrecognized chat template (kiln knows ChatML, Llama-2 and Llama-3): \"%.*s...\"",
                         (int)t->h[KILN_TOKH_CHAT_SRC_LEN], pool + t->h[KILN_TOKH_CHAT_SRC_OFF]);
    }
    if (cap)
        out[o.len < cap - 1 ? o.len : cap - 1] = 0;
    return (long)o.len;
}
