/* cmd_tokenize.c - `kiln tokenize`: encode text to ids or decode ids to text
 * with a model's tokenizer (tokenizer.json, HF directory, .gguf or .ktok),
 * through the same blob and runtime code a compiled model uses. */
#include "cli.h"
#include "kiln_tokenizer.h"
#include "kiln_tokenizer_import.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Writes s as a JSON string (UTF-8 passed through). */
static void put_json(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static int read_stdin(char **data, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *p = kiln_xmalloc(cap);
    size_t k;
    while ((k = fread(p + n, 1, cap - n, stdin)) > 0) {
        n += k;
        if (n == cap)
            p = kiln_xrealloc(p, cap *= 2);
    }
    *data = p;
    *len = n;
    return 0;
}

/* "1,2,3" (commas and/or spaces) into a malloc'd array. */
static int parse_ids(const char *s, int32_t **ids, int *n, kiln_err *err)
{
    int cap = 16, cnt = 0;
    int32_t *v = kiln_xmalloc((size_t)cap * sizeof *v);
    while (*s) {
        if (*s == ',' || *s == ' ' || *s == '\n' || *s == '\t') {
            s++;
            continue;
        }
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno || x < 0 || x > INT32_MAX) {
            free(v);
            return kiln_errf(err, "--decode: bad token id near '%.20s'", s);
        }
        if (cnt == cap)
            v = kiln_xrealloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[cnt++] = (int32_t)x;
        s = end;
    }
    *ids = v;
    *n = cnt;
    return 0;
}

/* --batch: the input holds records separated by NUL bytes; each gives one
 * line {"ids": [...], "text": decode(ids)} (or {"norm": ...}), so tests can
 * check many strings with one process. */
static int run_batch(const kiln_tokenizer *tok, const char *text, size_t len, int flags, int dflags, int normalize)
{
    kiln_err err;
    int cap = 1024;
    int32_t *ids = kiln_xmalloc((size_t)cap * sizeof *ids);
    char *dec = NULL;
    size_t dcap = 0;
    for (size_t start = 0; start <= len;) {
        const char *end = memchr(text + start, 0, len - start);
        size_t n = end ? (size_t)(end - (text + start)) : len - start;
        if (normalize) {
            size_t nl;
            char *nt = kiln_tok_normalize(tok, text + start, n, &nl);
            fputs("{\"norm\": ", stdout);
            put_json(stdout, nt, nl);
            fputs("}\n", stdout);
            free(nt);
        } else {
            int k = kiln_tok_encode(tok, text + start, n, flags, ids, cap, &err);
            if (k > cap) {
                ids = kiln_xrealloc(ids, (size_t)(cap = k) * sizeof *ids);
                k = kiln_tok_encode(tok, text + start, n, flags, ids, cap, &err);
            }
            long need = k < 0 ? -1 : kiln_tok_decode(tok, ids, k, dflags, NULL, 0, &err);
            if (need < 0) {
                free(ids);
                free(dec);
                return kiln_cli_fail("tokenize", &err);
            }
            if ((size_t)need + 1 > dcap)
                dec = kiln_xrealloc(dec, dcap = (size_t)need + 1);
            kiln_tok_decode(tok, ids, k, dflags, dec, dcap, &err);
            fputs("{\"ids\": [", stdout);
            for (int i = 0; i < k; i++)
                printf(i ? ", %d" : "%d", (int)ids[i]);
            fputs("], \"text\": ", stdout);
            put_json(stdout, dec, (size_t)need);
            fputs("}\n", stdout);
        }
        if (!end)
            break;
        start += n + 1;
    }
    free(ids);
    free(dec);
    return 0;
}

int kiln_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *file = NULL, *decode = NULL, *save = NULL, *system = NULL;
    int pieces = 0, chat = 0, chat_text = 0, no_special = 0, no_parse = 0, skip_special = 0, stream = 0,
        info = 0, timing = 0, batch = 0, normalize = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--ids") == 0)
            pieces = 0;
        else if (strcmp(a, "--pieces") == 0)
            pieces = 1;
        else if (strcmp(a, "--decode") == 0 && more)
            decode = argv[++i];
        else if (strcmp(a, "--file") == 0 && more)
            file = argv[++i];
        else if (strcmp(a, "--save") == 0 && more)
            save = argv[++i];
        else if (strcmp(a, "--system") == 0 && more)
            system = argv[++i];
        else if (strcmp(a, "--chat") == 0)
            chat = 1;
        else if (strcmp(a, "--chat-text") == 0)
            chat = chat_text = 1;
        else if (strcmp(a, "--no-special") == 0)
            no_special = 1;
        else if (strcmp(a, "--no-parse-special") == 0)
            no_parse = 1;
        else if (strcmp(a, "--skip-special") == 0)
            skip_special = 1;
        else if (strcmp(a, "--stream") == 0)
            stream = 1;
        else if (strcmp(a, "--info") == 0)
            info = 1;
        else if (strcmp(a, "--time") == 0)
            timing = 1;
        else if (strcmp(a, "--batch") == 0)
            batch = 1;
        else if (strcmp(a, "--normalize") == 0)
            normalize = 1;
        else if (a[0] == '-' && a[1] == '-')
            return kiln_cli_usage("tokenize");
        else if (!model)
            model = a;
        else if (!text)
            text = a;
        else
            return kiln_cli_usage("tokenize");
    }
    if (!model || (text && file) || (decode && (text || file || chat)))
        return kiln_cli_usage("tokenize");

    kiln_err err;
    uint8_t *blob;
    size_t blen;
    if (kiln_tokenizer_import(model, &blob, &blen, &err))
        return kiln_cli_fail("tokenize", &err);
    kiln_tokenizer tok;
    int rc = 0;
    char *buf = NULL, *rendered = NULL;
    int32_t *ids = NULL;
    if (kiln_tok_load(&tok, blob, blen, &err)) {
        rc = kiln_cli_fail("tokenize", &err);
        goto done;
    }
    if (save) {
        FILE *f = fopen(save, "wb");
        if (!f || fwrite(blob, 1, blen, f) != blen || fclose(f) != 0) {
            kiln_errf(&err, "%s: cannot write", save);
            rc = kiln_cli_fail("tokenize", &err);
            goto done;
        }
    }
    if (info) {
        printf("model: %s\nvocab: %d\nbos: %d\neos: %d\nunk: %d\nchat_template: %s\n", kiln_tok_model_name(&tok),
               kiln_tok_n_vocab(&tok), kiln_tok_bos(&tok), kiln_tok_eos(&tok), kiln_tok_unk(&tok),
               kiln_chat_kind_name((int)tok.h[KILN_TOKH_CHAT_KIND]));
        goto done;
    }
    if (decode) {
        int n = 0;
        if (parse_ids(decode, &ids, &n, &err)) {
            rc = kiln_cli_fail("tokenize", &err);
            goto done;
        }
        int flags = skip_special ? KILN_TOK_SKIP_SPECIAL : 0;
        if (stream) { /* one JSON string per token, as the stream emits it */
            kiln_tok_stream st;
            kiln_tok_stream_init(&st, &tok, flags);
            size_t bound = kiln_tok_stream_bound(&tok);
            buf = kiln_xmalloc(bound);
            for (int i = 0; i <= n; i++) {
                int k = i < n ? kiln_tok_stream_put(&st, ids[i], buf, bound) : kiln_tok_stream_flush(&st, buf, bound);
                if (k < 0) {
                    kiln_errf(&err, "token id %d out of range (vocabulary has %d)", (int)ids[i], kiln_tok_n_vocab(&tok));
                    rc = kiln_cli_fail("tokenize", &err);
                    goto done;
                }
                put_json(stdout, buf, (size_t)k);
                fputc('\n', stdout);
            }
            goto done;
        }
        long need = kiln_tok_decode(&tok, ids, n, flags, NULL, 0, &err);
        if (need < 0) {
            rc = kiln_cli_fail("tokenize", &err);
            goto done;
        }
        buf = kiln_xmalloc((size_t)need + 1);
        kiln_tok_decode(&tok, ids, n, flags, buf, (size_t)need + 1, &err);
        fwrite(buf, 1, (size_t)need, stdout);
        fputc('\n', stdout);
        goto done;
    }
    if (!text && !file) {
        if (save)
            goto done;
        rc = kiln_cli_usage("tokenize");
        goto done;
    }
    size_t len;
    if (file) {
        if (strcmp(file, "-") == 0 ? read_stdin(&buf, &len) : kiln_read_file(file, &buf, &len, &err)) {
            rc = kiln_cli_fail("tokenize", &err);
            goto done;
        }
        text = buf;
    } else {
        len = strlen(text);
    }
    int flags = (no_special ? 0 : KILN_TOK_ADD_SPECIAL) | (no_parse ? 0 : KILN_TOK_PARSE_SPECIAL);
    if (batch) {
        rc = run_batch(&tok, text, len, flags, skip_special ? KILN_TOK_SKIP_SPECIAL : 0, normalize);
        goto done;
    }
    if (normalize) {
        size_t nl;
        char *nt = kiln_tok_normalize(&tok, text, len, &nl);
        fwrite(nt, 1, nl, stdout);
        fputc('\n', stdout);
        free(nt);
        goto done;
    }
    if (chat) {
        /* the rendered prompt already holds its special tokens, as text */
        kiln_chat_msg msgs[2];
        int nm = 0;
        char *user = kiln_xmalloc(len + 1);
        memcpy(user, text, len);
        user[len] = 0;
        if (system)
            msgs[nm++] = (kiln_chat_msg){"system", system};
        msgs[nm++] = (kiln_chat_msg){"user", user};
        long need = kiln_chat_format(&tok, msgs, nm, 1, NULL, 0, &err);
        if (need >= 0) {
            rendered = kiln_xmalloc((size_t)need + 1);
            kiln_chat_format(&tok, msgs, nm, 1, rendered, (size_t)need + 1, &err);
        }
        free(user);
        if (need < 0) {
            rc = kiln_cli_fail("tokenize", &err);
            goto done;
        }
        if (chat_text) {
            fwrite(rendered, 1, (size_t)need, stdout);
            goto done;
        }
        text = rendered;
        len = (size_t)need;
        flags = KILN_TOK_PARSE_SPECIAL;
    }
    double t0 = now_s();
    int cap = (int)(len < 1 << 20 ? len : 1 << 20) + 16;
    ids = kiln_xmalloc((size_t)cap * sizeof *ids);
    int n = kiln_tok_encode(&tok, text, len, flags, ids, cap, &err);
    if (n > cap) {
        ids = kiln_xrealloc(ids, (size_t)n * sizeof *ids);
        n = kiln_tok_encode(&tok, text, len, flags, ids, n, &err);
    }
    if (n < 0) {
        rc = kiln_cli_fail("tokenize", &err);
        goto done;
    }
    if (timing)
        fprintf(stderr, "encoded %zu bytes into %d tokens in %.3f s\n", len, n, now_s() - t0);
    for (int i = 0; i < n; i++) {
        if (pieces) {
            size_t pl;
            const char *p = kiln_tok_piece(&tok, ids[i], &pl);
            printf("%d\t", (int)ids[i]);
            put_json(stdout, p, pl);
            fputc('\n', stdout);
        } else {
            printf(i ? " %d" : "%d", (int)ids[i]);
        }
    }
    if (!pieces)
        fputc('\n', stdout);
done:
    free(blob);
    free(buf);
    free(rendered);
    free(ids);
    return rc;
}
