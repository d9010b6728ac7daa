/* tokenizer_import.c - converts a model's tokenizer (Hugging Face
 * tokenizer.json or GGUF tokenizer.ggml.* metadata) into the compact blob
 * the runtime reads (layout: common/kiln_tokenizer.h, docs/tokenizers.md).
 *
 * Everything the runtime would otherwise compute at load time is done here:
 * byte-level vocabularies are turned back into raw bytes, merges become
 * (left id, right id) -> (merged id, rank) hash entries, SentencePiece
 * scores become merge ranks, and the pipeline's components become small op
 * tables. Anything kiln cannot reproduce exactly is refused with an error
 * naming it, rather than silently tokenizing differently. */
#include "kiln_tokenizer_import.h"
#include "kiln_tokenizer.h" /* blob format + the runtime checks it */

#include "cJSON.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct tb_added {
    int id;
    uint32_t flags;   /* KILN_ADDF_* */
    char *match;      /* string matched in the text (owned) */
    size_t mlen;
} tb_added;

enum { TB_MAX_OPS = 64 };

/* A tokenizer being built. Every pointer is owned and freed by tb_free. */
typedef struct tb {
    const char *name; /* source, for error messages */
    uint32_t model, flags;
    int n;            /* vocabulary size */
    char **tok;       /* token strings (bytes, not NUL-terminated in general) */
    uint32_t *tlen;
    uint8_t *attr;
    uint32_t *merges; /* 4 per merge: left, right, merged, rank */
    size_t n_merges, mcap;
    tb_added *added;
    int n_added, acap;
    uint32_t norm[TB_MAX_OPS][5], pre[TB_MAX_OPS][5], dec[TB_MAX_OPS][5];
    int n_norm, n_pre, n_dec;
    kiln_sb pool; /* strings the ops refer to */
    uint32_t prefix[16], suffix[16];
    int n_prefix, n_suffix;
    uint32_t unk, bos, eos, pad, wp_max, wp_pre_off, wp_pre_len;
    uint32_t chat_kind, sys_off, sys_len, src_off, src_len;
} tb;

static void tb_init(tb *b, const char *name)
{
    memset(b, 0, sizeof *b);
    b->name = name;
    b->unk = b->bos = b->eos = b->pad = KILN_TOK_NONE;
    b->wp_max = 100;
    kiln_sb_put(&b->pool, "", 0);
}

static void tb_free(tb *b)
{
    for (int i = 0; i < b->n; i++)
        free(b->tok[i]);
    free(b->tok);
    free(b->tlen);
    free(b->attr);
    free(b->merges);
    for (int i = 0; i < b->n_added; i++)
        free(b->added[i].match);
    free(b->added);
    kiln_sb_free(&b->pool);
}

static void tb_alloc_vocab(tb *b, int n)
{
    b->n = n;
    b->tok = kiln_xcalloc((size_t)n, sizeof *b->tok);
    b->tlen = kiln_xcalloc((size_t)n, sizeof *b->tlen);
    b->attr = kiln_xcalloc((size_t)n, 1);
}

static void tb_set_tok(tb *b, int id, const char *s, size_t n)
{
    free(b->tok[id]);
    b->tok[id] = kiln_xmalloc(n + 1);
    memcpy(b->tok[id], s, n);
    b->tok[id][n] = 0;
    b->tlen[id] = (uint32_t)n;
}

static uint32_t pool_add(tb *b, const char *s, size_t n)
{
    uint32_t off = (uint32_t)b->pool.len;
    kiln_sb_put(&b->pool, s, n);
    return off;
}

/* Appends an op {kind, a, b, c, d}; -1 when the table is full. */
static int add_op(uint32_t ops[][5], int *n, uint32_t kind, uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
    if (*n >= TB_MAX_OPS)
        return -1;
    uint32_t *o = ops[(*n)++];
    o[0] = kind, o[1] = a, o[2] = b, o[3] = c, o[4] = d;
    return 0;
}

static void add_merge(tb *b, int l, int r, int m, uint32_t rank)
{
    if (b->n_merges == b->mcap) {
        b->mcap = b->mcap ? 2 * b->mcap : 1024;
        b->merges = kiln_xrealloc(b->merges, b->mcap * 4 * sizeof *b->merges);
    }
    uint32_t *e = b->merges + 4 * b->n_merges++;
    e[0] = (uint32_t)l, e[1] = (uint32_t)r, e[2] = (uint32_t)m, e[3] = rank;
}

static void add_added(tb *b, int id, uint32_t flags, const char *s, size_t n)
{
    if (b->n_added == b->acap) {
        b->acap = b->acap ? 2 * b->acap : 64;
        b->added = kiln_xrealloc(b->added, (size_t)b->acap * sizeof *b->added);
    }
    tb_added *a = &b->added[b->n_added++];
    a->id = id;
    a->flags = flags;
    a->match = kiln_xmalloc(n + 1);
    memcpy(a->match, s, n);
    a->match[n] = 0;
    a->mlen = n;
}

/* "<0xNN>" byte-fallback token? */
static int is_byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return 0;
    }
    return 1;
}

/* ---- serialization ---------------------------------------------------------- */

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t c = 2;
    while (c < n)
        c *= 2;
    return c;
}

static int cmp_added(const void *pa, const void *pb)
{
    const tb_added *a = pa, *b = pb;
    int fa = (uint8_t)a->match[0], fb = (uint8_t)b->match[0];
    if (fa != fb)
        return fa - fb;
    if (a->mlen != b->mlen)
        return a->mlen > b->mlen ? -1 : 1; /* longest first: leftmost-longest matching */
    return a->id - b->id;
}

static int tb_write(tb *b, uint8_t **out, size_t *outlen, kiln_err *err)
{
    uint32_t n = (uint32_t)b->n, nm = (uint32_t)b->n_merges, na = (uint32_t)b->n_added;
    if (!n)
        return kiln_errf(err, "%s: empty vocabulary", b->name);
    for (uint32_t i = 0; i < n; i++)
        if (!b->tok[i]) {
            tb_set_tok(b, (int)i, "", 0);
            b->attr[i] |= KILN_TOKA_UNUSED;
        } else if (is_byte_token(b->tok[i], b->tlen[i])) {
            b->attr[i] |= KILN_TOKA_BYTE;
        }
    qsort(b->added, na, sizeof *b->added, cmp_added);
    uint32_t h[KILN_TOKH_COUNT] = {0};
    uint64_t off = 4 * KILN_TOKH_COUNT;
#define SECTION(field, bytes) (h[field] = (uint32_t)off, off += ((uint64_t)(bytes) + 3) / 4 * 4)
    uint32_t vcap = pow2_at_least(2 * (uint64_t)n), mcap = nm ? pow2_at_least(2 * (uint64_t)nm) : 0;
    SECTION(KILN_TOKH_TOKS_OFF, 4 * ((uint64_t)n + 1));
    SECTION(KILN_TOKH_ATTR_OFF, n);
    SECTION(KILN_TOKH_VHASH_OFF, 4 * (uint64_t)vcap);
    SECTION(KILN_TOKH_MERGES_OFF, 16 * (uint64_t)nm);
    SECTION(KILN_TOKH_MHASH_OFF, 4 * (uint64_t)mcap);
    SECTION(KILN_TOKH_ADDED_OFF, 16 * (uint64_t)na);
    SECTION(KILN_TOKH_NORM_OFF, 20 * (uint64_t)b->n_norm);
    SECTION(KILN_TOKH_PRE_OFF, 20 * (uint64_t)b->n_pre);
    SECTION(KILN_TOKH_DEC_OFF, 20 * (uint64_t)b->n_dec);
    SECTION(KILN_TOKH_PREFIX_OFF, 4 * (uint64_t)b->n_prefix);
    SECTION(KILN_TOKH_SUFFIX_OFF, 4 * (uint64_t)b->n_suffix);
#undef SECTION
    /* pool: op strings, then added-token match strings, then the tokens */
    uint32_t *added_off = kiln_xcalloc(na + 1, sizeof *added_off);
    size_t pool_base = b->pool.len; /* restored at the end: tb_write may run twice */
    for (uint32_t i = 0; i < na; i++)
        added_off[i] = pool_add(b, b->added[i].match, b->added[i].mlen);
    uint64_t tok_base = b->pool.len, pool_len = b->pool.len;
    for (uint32_t i = 0; i < n; i++)
        pool_len += b->tlen[i];
    h[KILN_TOKH_POOL_OFF] = (uint32_t)off;
    h[KILN_TOKH_POOL_LEN] = (uint32_t)pool_len;
    uint64_t total = off + pool_len;
    if (total > 0xFFFFFFF0u || pool_len > 0xFFFFFFF0u) {
        free(added_off);
        return kiln_errf(err, "%s: tokenizer too large for the blob format (%llu bytes)", b->name,
                         (unsigned long long)total);
    }
    uint8_t *blob = kiln_xcalloc(total, 1);
    h[KILN_TOKH_MAGIC] = KILN_TOK_MAGIC;
    h[KILN_TOKH_VERSION] = KILN_TOK_VERSION;
    h[KILN_TOKH_SIZE] = (uint32_t)total;
    h[KILN_TOKH_MODEL] = b->model;
    h[KILN_TOKH_FLAGS] = b->flags;
    h[KILN_TOKH_N_VOCAB] = n;
    h[KILN_TOKH_UNK] = b->unk;
    h[KILN_TOKH_BOS] = b->bos;
    h[KILN_TOKH_EOS] = b->eos;
    h[KILN_TOKH_PAD] = b->pad;
    h[KILN_TOKH_WP_MAX_CHARS] = b->wp_max;
    h[KILN_TOKH_WP_PREFIX_OFF] = b->wp_pre_off;
    h[KILN_TOKH_WP_PREFIX_LEN] = b->wp_pre_len;
    h[KILN_TOKH_VHASH_CAP] = vcap;
    h[KILN_TOKH_N_MERGES] = nm;
    h[KILN_TOKH_MHASH_CAP] = mcap;
    h[KILN_TOKH_N_ADDED] = na;
    h[KILN_TOKH_N_NORM] = (uint32_t)b->n_norm;
    h[KILN_TOKH_N_PRE] = (uint32_t)b->n_pre;
    h[KILN_TOKH_N_DEC] = (uint32_t)b->n_dec;
    h[KILN_TOKH_N_PREFIX] = (uint32_t)b->n_prefix;
    h[KILN_TOKH_N_SUFFIX] = (uint32_t)b->n_suffix;
    h[KILN_TOKH_CHAT_KIND] = b->chat_kind;
    h[KILN_TOKH_CHAT_SYS_OFF] = b->sys_off;
    h[KILN_TOKH_CHAT_SYS_LEN] = b->sys_len;
    h[KILN_TOKH_CHAT_SRC_OFF] = b->src_off;
    h[KILN_TOKH_CHAT_SRC_LEN] = b->src_len;
    for (int i = 0; i < KILN_TOKH_COUNT; i++)
        wr32(blob + 4 * i, h[i]);

    uint8_t *pool = blob + h[KILN_TOKH_POOL_OFF];
    memcpy(pool, b->pool.s, b->pool.len);
    uint64_t p = tok_base;
    for (uint32_t i = 0; i < n; i++) {
        wr32(blob + h[KILN_TOKH_TOKS_OFF] + 4 * i, (uint32_t)p);
        memcpy(pool + p, b->tok[i], b->tlen[i]);
        p += b->tlen[i];
        blob[h[KILN_TOKH_ATTR_OFF] + i] = b->attr[i];
    }
    wr32(blob + h[KILN_TOKH_TOKS_OFF] + 4 * n, (uint32_t)p);

    /* vocabulary hash: the lowest id wins if two tokens share a string */
    uint8_t *vh = blob + h[KILN_TOKH_VHASH_OFF];
    for (uint32_t i = 0; i < n; i++) {
        if (b->attr[i] & KILN_TOKA_UNUSED)
            continue;
        uint32_t k = kiln_tok_hash(KILN_TOK_HASH_INIT, b->tok[i], b->tlen[i]) & (vcap - 1);
        for (;; k = (k + 1) & (vcap - 1)) {
            uint8_t *slot = vh + 4 * k;
            uint32_t v = slot[0] | (uint32_t)slot[1] << 8 | (uint32_t)slot[2] << 16 | (uint32_t)slot[3] << 24;
            if (!v) {
                wr32(slot, i + 1);
                break;
            }
            if (b->tlen[v - 1] == b->tlen[i] && memcmp(b->tok[v - 1], b->tok[i], b->tlen[i]) == 0)
                break;
        }
    }
    /* merges; a pair listed twice keeps its last rank, as tokenizers' map does */
    uint8_t *mh = blob + h[KILN_TOKH_MHASH_OFF];
    for (uint32_t i = 0; i < nm; i++) {
        const uint32_t *m = b->merges + 4 * (size_t)i;
        for (int k = 0; k < 4; k++)
            wr32(blob + h[KILN_TOKH_MERGES_OFF] + 16 * (size_t)i + 4 * k, m[k]);
        uint32_t k = kiln_tok_pair_hash(m[0], m[1]) & (mcap - 1);
        for (;; k = (k + 1) & (mcap - 1)) {
            uint8_t *slot = mh + 4 * k;
            uint32_t v = slot[0] | (uint32_t)slot[1] << 8 | (uint32_t)slot[2] << 16 | (uint32_t)slot[3] << 24;
            if (!v || (b->merges[4 * (size_t)(v - 1)] == m[0] && b->merges[4 * (size_t)(v - 1) + 1] == m[1])) {
                wr32(slot, i + 1);
                break;
            }
        }
    }
    for (uint32_t i = 0; i < na; i++) {
        uint8_t *a = blob + h[KILN_TOKH_ADDED_OFF] + 16 * (size_t)i;
        wr32(a, (uint32_t)b->added[i].id);
        wr32(a + 4, b->added[i].flags);
        wr32(a + 8, added_off[i]);
        wr32(a + 12, (uint32_t)b->added[i].mlen);
    }
    free(added_off);
    b->pool.len = pool_base;
    for (int k = 0; k < b->n_norm; k++)
        for (int j = 0; j < 5; j++)
            wr32(blob + h[KILN_TOKH_NORM_OFF] + 20 * (size_t)k + 4 * j, b->norm[k][j]);
    for (int k = 0; k < b->n_pre; k++)
        for (int j = 0; j < 5; j++)
            wr32(blob + h[KILN_TOKH_PRE_OFF] + 20 * (size_t)k + 4 * j, b->pre[k][j]);
    for (int k = 0; k < b->n_dec; k++)
        for (int j = 0; j < 5; j++)
            wr32(blob + h[KILN_TOKH_DEC_OFF] + 20 * (size_t)k + 4 * j, b->dec[k][j]);
    for (int k = 0; k < b->n_prefix; k++)
        wr32(blob + h[KILN_TOKH_PREFIX_OFF] + 4 * k, b->prefix[k]);
    for (int k = 0; k < b->n_suffix; k++)
        wr32(blob + h[KILN_TOKH_SUFFIX_OFF] + 4 * k, b->suffix[k]);

    /* the runtime's own checks are the final word on the blob */
    kiln_tokenizer t;
    if (kiln_tok_load(&t, blob, total, err)) {
        free(blob);
        return kiln_err_prefix(err, "%s: internal error building the tokenizer: ", b->name);
    }
    *out = blob;
    *outlen = total;
    return 0;
}

/* Builds the blob; tokens matched after normalization get their match
 * string normalized first, using the runtime's own normalizer. */
static int tb_finish(tb *b, uint8_t **out, size_t *outlen, kiln_err *err)
{
    for (int i = 0; i < b->n_added; i++)
        if (b->added[i].mlen == 0)
            return kiln_errf(err, "%s: added token %d is empty", b->name, b->added[i].id);
    int need = 0;
    for (int i = 0; i < b->n_added; i++)
        need |= (b->added[i].flags & KILN_ADDF_NORMALIZED) && b->n_norm;
    if (need) {
        uint8_t *tmp;
        size_t tl;
        if (tb_write(b, &tmp, &tl, err))
            return -1;
        kiln_tokenizer t;
        kiln_tok_load(&t, tmp, tl, NULL);
        for (int i = 0; i < b->n_added; i++) {
            if (!(b->added[i].flags & KILN_ADDF_NORMALIZED))
                continue;
            size_t nl;
            char *nm = kiln_tok_normalize(&t, b->added[i].match, b->added[i].mlen, &nl);
            free(b->added[i].match);
            b->added[i].match = nm;
            b->added[i].mlen = nl;
            if (nl) /* tokenizers stores (and so decodes) such a token normalized */
                tb_set_tok(b, b->added[i].id, nm, nl);
            if (!nl)
                return free(tmp), kiln_errf(err, "%s: added token %d normalizes to nothing", b->name,
                                           b->added[i].id);
        }
        free(tmp);
    }
    return tb_write(b, out, outlen, err);
}

/* ---- GPT-2 byte-level alphabet ---------------------------------------------- */

/* GPT-2 shows each byte as a printable character: printable Latin-1 bytes
 * as themselves, the other 68 as U+0100 onward in byte order. Returns the
 * byte for code point cp, or -1. */
static int bytelevel_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68)
        return -1;
    int k = (int)cp - 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        if (!printable && k-- == 0)
            return b;
    }
    return -1;
}

/* Turns byte-level token id back into raw bytes; a token with a character
 * outside the alphabet (an added token's text) is kept as it is. */
static void bytelevel_decode(tb *b, int id)
{
    const uint8_t *u = (const uint8_t *)b->tok[id];
    uint32_t n = b->tlen[id];
    char *out = kiln_xmalloc((size_t)n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)kiln_utf8_next(u + i, n - i, &cp);
        int c = bytelevel_byte(cp);
        if (c < 0) {
            free(out);
            return;
        }
        out[o++] = (char)c;
    }
    tb_set_tok(b, id, out, o);
    free(out);
}

/* ---- chat template detection --------------------------------------------------- */

static const char *find(const char *s, size_t n, const char *pat)
{
    size_t m = strlen(pat);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, pat, m) == 0)
            return s + i;
    return NULL;
}

/* ChatML templates that insert a default system turn write it as one
 * quoted literal '<|im_start|>system\n...<|im_end|>'; find that text. */
static char *chatml_default_system(const char *s, size_t n)
{
    const char *tag = "<|im_start|>system";
    for (const char *p = s; (p = find(p, n - (size_t)(p - s), tag)) != NULL; p++) {
        if (p == s || (p[-1] != '\'' && p[-1] != '"'))
            continue;
        char quote = p[-1];
        const char *q = p + strlen(tag), *end = s + n;
        if (q < end && *q == '\n')
            q++;
        else if (q + 1 < end && q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *e = find(q, (size_t)(end - q), "<|im_end|>");
        if (!e)
            continue;
        kiln_sb sys = {0};
        kiln_sb_put(&sys, "", 0);
        int plain = 1;
        for (const char *c = q; c < e && plain; c++) {
            if (*c == quote || (*c == '{' && c + 1 < e && (c[1] == '{' || c[1] == '%')))
                plain = 0;
            else if (*c == '\\' && c + 1 < e) {
                c++;
                kiln_sb_put(&sys, *c == 'n' ? "\n" : *c == 't' ? "\t" : c, 1);
            } else {
                kiln_sb_put(&sys, c, 1);
            }
        }
        if (plain)
            return sys.s;
        kiln_sb_free(&sys);
    }
    return NULL;
}

int kiln_chat_detect(const char *s, size_t n, char **default_system)
{
    if (default_system)
        *default_system = NULL;
    if (!s || !n)
        return KILN_CHAT_NONE;
    if (find(s, n, "<|im_start|>") && find(s, n, "<|im_end|>")) {
        if (default_system)
            *default_system = chatml_default_system(s, n);
        return KILN_CHAT_CHATML;
    }
    if (find(s, n, "<|start_header_id|>") && find(s, n, "<|end_header_id|>") && find(s, n, "<|eot_id|>")) {
        /* Llama-3.1+ templates write a dated system preamble and tool
         * prompts: not the plain Llama-3 format */
        if (find(s, n, "Cutting Knowledge Date"))
            return KILN_CHAT_UNKNOWN;
        return KILN_CHAT_LLAMA3;
    }
    if (find(s, n, "[INST]") && find(s, n, "<<SYS>>"))
        return KILN_CHAT_LLAMA2;
    return KILN_CHAT_UNKNOWN;
}

static void tb_chat(tb *b, const char *tmpl, size_t n)
{
    char *sys = NULL;
    b->chat_kind = (uint32_t)kiln_chat_detect(tmpl, n, &sys);
    if (sys) {
        b->sys_len = (uint32_t)strlen(sys);
        b->sys_off = pool_add(b, sys, b->sys_len);
        free(sys);
    }
    if (tmpl && n) {
        size_t k = n < 60 ? n : 60;
        while (k > 0 && k < n && ((uint8_t)tmpl[k] & 0xC0) == 0x80) /* whole characters */
            k--;
        b->src_len = (uint32_t)k;
        b->src_off = pool_add(b, tmpl, k);
    }
}

/* ---- tokenizer.json ------------------------------------------------------------------ */

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* bool field with a default */
static int jbool(const cJSON *o, const char *key, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static const char *jtype(const cJSON *o)
{
    const char *t = jstr(o, "type");
    return t ? t : "(no type)";
}

static int jarr_has_type(const cJSON *o, const char *type)
{
    if (!cJSON_IsObject(o))
        return 0;
    const char *t = jstr(o, "type");
    if (t && strcmp(t, type) == 0)
        return 1;
    const cJSON *item;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
    if (!list)
        list = cJSON_GetObjectItemCaseSensitive(o, "decoders");
    cJSON_ArrayForEach(item, list) if (jarr_has_type(item, type)) return 1;
    return 0;
}

/* The literal string of a {"String": s} pattern, else NULL (a {"Regex": r}
 * pattern sets *regex). */
static const char *jpattern(const cJSON *o, const char **regex)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    *regex = jstr(p, "Regex");
    return jstr(p, "String");
}

static const char RE_GPT2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int prepend_scheme(const cJSON *o)
{
    const char *s = jstr(o, "prepend_scheme");
    if (s)
        return strcmp(s, "always") == 0 ? KILN_PREPEND_ALWAYS
               : strcmp(s, "first") == 0 ? KILN_PREPEND_FIRST
                                         : KILN_PREPEND_NEVER;
    return jbool(o, "add_prefix_space", 1) ? KILN_PREPEND_ALWAYS : KILN_PREPEND_NEVER;
}

static int json_normalizer(tb *b, const cJSON *o, kiln_err *err)
{
    if (!o || cJSON_IsNull(o))
        return 0;
    const char *t = jtype(o);
    int r = 0;
    if (strcmp(t, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "normalizers")) if (json_normalizer(b, item, err)) return -1;
        return 0;
    } else if (strcmp(t, "BertNormalizer") == 0) {
        int lower = jbool(o, "lowercase", 1);
        uint32_t f = (jbool(o, "clean_text", 1) ? KILN_BERT_CLEAN : 0) |
                     (jbool(o, "handle_chinese_chars", 1) ? KILN_BERT_CHINESE : 0) |
                     (jbool(o, "strip_accents", lower) ? KILN_BERT_STRIP_ACCENTS : 0) |
                     (lower ? KILN_BERT_LOWERCASE : 0);
        r = add_op(b->norm, &b->n_norm, KILN_NORM_BERT, f, 0, 0, 0);
    } else if (strcmp(t, "Lowercase") == 0) {
        r = add_op(b->norm, &b->n_norm, KILN_NORM_LOWERCASE, 0, 0, 0, 0);
    } else if (strcmp(t, "StripAccents") == 0) {
        r = add_op(b->norm, &b->n_norm, KILN_NORM_STRIP_ACCENTS, 0, 0, 0, 0);
    } else if (strcmp(t, "NFD") == 0) {
        r = add_op(b->norm, &b->n_norm, KILN_NORM_NFD, 0, 0, 0, 0);
    } else if (strcmp(t, "NFC") == 0) {
        r = add_op(b->norm, &b->n_norm, KILN_NORM_NFC, 0, 0, 0, 0);
    } else if (strcmp(t, "Prepend") == 0) {
        const char *p = jstr(o, "prepend");
        if (!p)
            return kiln_errf(err, "%s: Prepend normalizer without a string", b->name);
        r = add_op(b->norm, &b->n_norm, KILN_NORM_PREPEND, pool_add(b, p, strlen(p)), (uint32_t)strlen(p), 0, 0);
    } else if (strcmp(t, "Replace") == 0) {
        const char *re, *p = jpattern(o, &re), *c = jstr(o, "content");
        if (!p || !*p || !c)
            return kiln_errf(err, "%s: Replace normalizer with a regex or empty pattern is not supported", b->name);
        uint32_t po = pool_add(b, p, strlen(p)), co = pool_add(b, c, strlen(c));
        r = add_op(b->norm, &b->n_norm, KILN_NORM_REPLACE, po, (uint32_t)strlen(p), co, (uint32_t)strlen(c));
    } else if (strcmp(t, "Strip") == 0) {
        r = add_op(b->norm, &b->n_norm, KILN_NORM_STRIP, (uint32_t)jbool(o, "strip_left", 1),
                   (uint32_t)jbool(o, "strip_right", 1), 0, 0);
    } else {
        return kiln_errf(err, "%s: normalizer %s is not supported", b->name, t);
    }
    return r ? kiln_errf(err, "%s: normalizer chain too long", b->name) : 0;
}

static int json_pretokenizer(tb *b, const cJSON *o, kiln_err *err)
{
    if (!o || cJSON_IsNull(o))
        return 0;
    const char *t = jtype(o);
    int r = 0;
    if (strcmp(t, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "pretokenizers")) if (json_pretokenizer(b, item, err)) return -1;
        return 0;
    } else if (strcmp(t, "ByteLevel") == 0) {
        r = add_op(b->pre, &b->n_pre, KILN_PRE_BYTELEVEL, (uint32_t)jbool(o, "add_prefix_space", 1),
                   (uint32_t)jbool(o, "use_regex", 1), 0, 0);
    } else if (strcmp(t, "Split") == 0) {
        const char *re, *lit = jpattern(o, &re), *beh = jstr(o, "behavior");
        uint32_t id = !re ? 0
                      : strcmp(re, RE_GPT2) == 0 ? KILN_RE_GPT2
                      : strcmp(re, RE_LLAMA3) == 0 ? KILN_RE_LLAMA3
                      : strcmp(re, RE_QWEN2) == 0 ? KILN_RE_QWEN2
                                                  : 0;
        if (!id || !beh || strcmp(beh, "Isolated") != 0 || jbool(o, "invert", 0))
            return kiln_errf(err, "%s: Split pre-tokenizer on %s%.60s%s (%s) is not supported (kiln knows the GPT-2, "
                                  "Llama-3 and Qwen2 regexes, isolated)",
                             b->name, re ? "regex '" : "string '", re ? re : lit ? lit : "?", "'", beh ? beh : "?");
        r = add_op(b->pre, &b->n_pre, KILN_PRE_REGEX, id, 0, 0, 0);
    } else if (strcmp(t, "Digits") == 0) {
        r = add_op(b->pre, &b->n_pre, KILN_PRE_DIGITS, (uint32_t)jbool(o, "individual_digits", 0), 0, 0, 0);
    } else if (strcmp(t, "Metaspace") == 0) {
        const char *rep = jstr(o, "replacement");
        if (!rep || !*rep)
            rep = "\xe2\x96\x81";
        r = add_op(b->pre, &b->n_pre, KILN_PRE_METASPACE, pool_add(b, rep, strlen(rep)), (uint32_t)strlen(rep),
                   (uint32_t)prepend_scheme(o), (uint32_t)jbool(o, "split", 1));
    } else if (strcmp(t, "BertPreTokenizer") == 0) {
        r = add_op(b->pre, &b->n_pre, KILN_PRE_BERT, 0, 0, 0, 0);
    } else if (strcmp(t, "WhitespaceSplit") == 0) {
        r = add_op(b->pre, &b->n_pre, KILN_PRE_WHITESPACE_SPLIT, 0, 0, 0, 0);
    } else if (strcmp(t, "Whitespace") == 0) {
        r = add_op(b->pre, &b->n_pre, KILN_PRE_WHITESPACE, 0, 0, 0, 0);
    } else {
        return kiln_errf(err, "%s: pre-tokenizer %s is not supported", b->name, t);
    }
    return r ? kiln_errf(err, "%s: pre-tokenizer chain too long", b->name) : 0;
}

static int json_decoder(tb *b, const cJSON *o, int *fused, kiln_err *err)
{
    if (!o || cJSON_IsNull(o))
        return 0;
    const char *t = jtype(o);
    int r = 0;
    if (*fused && strcmp(t, "Strip") != 0)
        return kiln_errf(err, "%s: decoder %s after Fuse is not supported", b->name, t);
    if (strcmp(t, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "decoders")) if (json_decoder(b, item, fused, err)) return -1;
        return 0;
    } else if (strcmp(t, "ByteLevel") == 0) {
        r = add_op(b->dec, &b->n_dec, KILN_DEC_BYTELEVEL, 0, 0, 0, 0);
    } else if (strcmp(t, "WordPiece") == 0) {
        const char *p = jstr(o, "prefix");
        if (!p)
            p = "##";
        r = add_op(b->dec, &b->n_dec, KILN_DEC_WORDPIECE, pool_add(b, p, strlen(p)), (uint32_t)strlen(p),
                   (uint32_t)jbool(o, "cleanup", 1), 0);
    } else if (strcmp(t, "Metaspace") == 0) {
        const char *rep = jstr(o, "replacement");
        if (!rep || !*rep)
            rep = "\xe2\x96\x81";
        r = add_op(b->dec, &b->n_dec, KILN_DEC_METASPACE, pool_add(b, rep, strlen(rep)), (uint32_t)strlen(rep),
                   (uint32_t)prepend_scheme(o), 0);
    } else if (strcmp(t, "Replace") == 0) {
        const char *re, *p = jpattern(o, &re), *c = jstr(o, "content");
        if (!p || !*p || !c)
            return kiln_errf(err, "%s: Replace decoder with a regex or empty pattern is not supported", b->name);
        uint32_t po = pool_add(b, p, strlen(p)), co = pool_add(b, c, strlen(c));
        r = add_op(b->dec, &b->n_dec, KILN_DEC_REPLACE, po, (uint32_t)strlen(p), co, (uint32_t)strlen(c));
    } else if (strcmp(t, "ByteFallback") == 0) {
        r = add_op(b->dec, &b->n_dec, KILN_DEC_BYTE_FALLBACK, 0, 0, 0, 0);
    } else if (strcmp(t, "Fuse") == 0) {
        *fused = 1;
        r = add_op(b->dec, &b->n_dec, KILN_DEC_FUSE, 0, 0, 0, 0);
    } else if (strcmp(t, "Strip") == 0) {
        const char *c = jstr(o, "content");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "start"), *sp = cJSON_GetObjectItemCaseSensitive(o, "stop");
        uint32_t cp = ' ';
        if (c && *c)
            kiln_utf8_next((const uint8_t *)c, strlen(c), &cp);
        uint32_t start = cJSON_IsNumber(st) && st->valuedouble > 0 ? (uint32_t)fmin(st->valuedouble, 999) : 0;
        uint32_t stop = cJSON_IsNumber(sp) && sp->valuedouble > 0 ? (uint32_t)fmin(sp->valuedouble, 999) : 0;
        if (*fused && stop)
            return kiln_errf(err, "%s: Strip decoder with stop > 0 after Fuse is not supported", b->name);
        r = add_op(b->dec, &b->n_dec, KILN_DEC_STRIP, cp, start, stop, 0);
    } else {
        return kiln_errf(err, "%s: decoder %s is not supported", b->name, t);
    }
    return r ? kiln_errf(err, "%s: decoder chain too long", b->name) : 0;
}

/* id of a token string: the vocabulary map, then added tokens. -1 if none. */
static int json_tok_id(const kiln_strmap *vocab, const tb *b, const char *s)
{
    int id;
    if (s && kiln_strmap_get(vocab, s, &id))
        return id;
    for (int i = 0; s && i < b->n_added; i++)
        if (strcmp(b->added[i].match, s) == 0)
            return b->added[i].id;
    return -1;
}

static int json_post(tb *b, const cJSON *o, const kiln_strmap *vocab, kiln_err *err)
{
    if (!o || cJSON_IsNull(o))
        return 0;
    const char *t = jtype(o);
    if (strcmp(t, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "processors")) if (json_post(b, item, vocab, err)) return -1;
        return 0;
    }
    if (strcmp(t, "ByteLevel") == 0) /* offsets only */
        return 0;
    if (strcmp(t, "BertProcessing") == 0 || strcmp(t, "RobertaProcessing") == 0) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(o, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(o, "sep");
        const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
        if (!cJSON_IsNumber(ci) || !cJSON_IsNumber(si) || ci->valuedouble < 0 || ci->valuedouble >= b->n ||
            si->valuedouble < 0 || si->valuedouble >= b->n)
            return kiln_errf(err, "%s: %s without valid cls/sep ids", b->name, t);
        b->n_prefix = b->n_suffix = 0;
        b->prefix[b->n_prefix++] = (uint32_t)ci->valuedouble;
        b->suffix[b->n_suffix++] = (uint32_t)si->valuedouble;
        return 0;
    }
    if (strcmp(t, "TemplateProcessing") == 0) {
        const cJSON *item, *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
        int after = 0;
        b->n_prefix = b->n_suffix = 0;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "single"))
        {
            if (cJSON_GetObjectItemCaseSensitive(item, "Sequence")) {
                after = 1;
                continue;
            }
            const char *name = jstr(cJSON_GetObjectItemCaseSensitive(item, "SpecialToken"), "id");
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(specials, name ? name : ""), "ids");
            if (!name || !cJSON_IsArray(ids)) {
                /* some files omit the table: fall back to the vocabulary */
                int id = json_tok_id(vocab, b, name);
                if (id < 0)
                    return kiln_errf(err, "%s: template special token '%s' not found", b->name, name ? name : "?");
                if ((after ? b->n_suffix : b->n_prefix) >= 16)
                    return kiln_errf(err, "%s: template too long", b->name);
                (after ? b->suffix : b->prefix)[after ? b->n_suffix++ : b->n_prefix++] = (uint32_t)id;
                continue;
            }
            const cJSON *idv;
            cJSON_ArrayForEach(idv, ids)
            {
                if (!cJSON_IsNumber(idv) || idv->valuedouble < 0 || idv->valuedouble >= b->n)
                    return kiln_errf(err, "%s: template special token '%s' has a bad id", b->name, name);
                if ((after ? b->n_suffix : b->n_prefix) >= 16)
                    return kiln_errf(err, "%s: template too long", b->name);
                (after ? b->suffix : b->prefix)[after ? b->n_suffix++ : b->n_prefix++] = (uint32_t)idv->valuedouble;
            }
        }
        return 0;
    }
    return kiln_errf(err, "%s: post-processor %s is not supported", b->name, t);
}

/* bos_token / eos_token of tokenizer_config.json: a string or {"content": s}. */
static const char *cfg_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v))
        return v->valuestring;
    return jstr(v, "content");
}

int kiln_tokenizer_import_json(const char *json, size_t json_len, const char *config_json, const char *name,
                               uint8_t **blob, size_t *len, kiln_err *err)
{
    cJSON *root = cJSON_ParseWithLength(json, json_len);
    if (!root)
        return kiln_errf(err, "%s: not valid JSON", name);
    cJSON *cfg = config_json ? cJSON_Parse(config_json) : NULL;
    tb b;
    tb_init(&b, name);
    kiln_strmap vocab = {0};
    int rc = -1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vjs = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const char *mtype = jstr(model, "type");
    if (!mtype)
        mtype = merges ? "BPE" : cJSON_IsArray(vjs) ? "Unigram" : "WordPiece";
    if (strcmp(mtype, "BPE") == 0) {
        b.model = KILN_TOK_BPE;
    } else if (strcmp(mtype, "WordPiece") == 0) {
        b.model = KILN_TOK_WORDPIECE;
    } else {
        kiln_errf(err, "%s: tokenizer model %s is not supported (kiln supports BPE and WordPiece)", name, mtype);
        goto done;
    }
    if (!cJSON_IsObject(vjs)) {
        kiln_errf(err, "%s: model.vocab is not an object", name);
        goto done;
    }
    /* vocabulary size: the largest id among the vocabulary and added tokens */
    int max_id = -1;
    const cJSON *item;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    cJSON_ArrayForEach(item, vjs)
    {
        if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble >= (1 << 24)) {
            kiln_errf(err, "%s: vocabulary entry '%.40s' has a bad id", name, item->string);
            goto done;
        }
        max_id = (int)fmax(max_id, item->valuedouble);
    }
    cJSON_ArrayForEach(item, added)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 24) || !jstr(item, "content")) {
            kiln_errf(err, "%s: added token without a valid id and content", name);
            goto done;
        }
        max_id = (int)fmax(max_id, id->valuedouble);
    }
    if (max_id < 0) {
        kiln_errf(err, "%s: empty vocabulary", name);
        goto done;
    }
    tb_alloc_vocab(&b, max_id + 1);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    int byte_level = b.model == KILN_TOK_BPE && (jarr_has_type(pre, "ByteLevel") || jarr_has_type(dec, "ByteLevel"));
    cJSON_ArrayForEach(item, vjs)
    {
        int id = (int)item->valuedouble;
        kiln_strmap_put(&vocab, item->string, id);
        tb_set_tok(&b, id, item->string, strlen(item->string));
        if (byte_level)
            bytelevel_decode(&b, id);
    }
    cJSON_ArrayForEach(item, added)
    {
        int id = (int)cJSON_GetObjectItemCaseSensitive(item, "id")->valuedouble;
        const char *c = jstr(item, "content");
        int special = jbool(item, "special", 0);
        uint32_t f = (special ? KILN_ADDF_SPECIAL : 0) | (jbool(item, "normalized", !special) ? KILN_ADDF_NORMALIZED : 0) |
                     (jbool(item, "lstrip", 0) ? KILN_ADDF_LSTRIP : 0) | (jbool(item, "rstrip", 0) ? KILN_ADDF_RSTRIP : 0) |
                     (jbool(item, "single_word", 0) ? KILN_ADDF_SINGLE_WORD : 0);
        if (!*c) {
            kiln_errf(err, "%s: added token %d is empty", name, id);
            goto done;
        }
        tb_set_tok(&b, id, c, strlen(c));
        b.attr[id] |= KILN_TOKA_ADDED | (special ? KILN_TOKA_SPECIAL : 0);
        add_added(&b, id, f, c, strlen(c));
    }

    const char *unk = jstr(model, "unk_token");
    if (unk) {
        int id = json_tok_id(&vocab, &b, unk);
        if (id < 0) {
            kiln_errf(err, "%s: unk_token '%s' is not in the vocabulary", name, unk);
            goto done;
        }
        b.unk = (uint32_t)id;
    }
    if (b.model == KILN_TOK_BPE) {
        const char *cs = jstr(model, "continuing_subword_prefix"), *ew = jstr(model, "end_of_word_suffix");
        const cJSON *drop = cJSON_GetObjectItemCaseSensitive(model, "dropout");
        if ((cs && *cs) || (ew && *ew)) {
            kiln_errf(err, "%s: BPE with continuing_subword_prefix/end_of_word_suffix is not supported", name);
            goto done;
        }
        if (cJSON_IsNumber(drop) && drop->valuedouble > 0) {
            kiln_errf(err, "%s: BPE dropout (random segmentation) is not supported", name);
            goto done;
        }
        b.flags = (byte_level ? KILN_TOKF_BYTE_UNITS : 0) | (jbool(model, "byte_fallback", 0) ? KILN_TOKF_BYTE_FALLBACK : 0) |
                  (jbool(model, "fuse_unk", 0) ? KILN_TOKF_FUSE_UNK : 0) |
                  (jbool(model, "ignore_merges", 0) ? KILN_TOKF_IGNORE_MERGES : 0);
        int rank = 0;
        cJSON_ArrayForEach(item, merges)
        {
            char *l = NULL, *r = NULL;
            if (cJSON_IsString(item)) { /* "left right" */
                const char *s = item->valuestring, *sp = strchr(s + (*s ? 1 : 0), ' ');
                if (sp && !strchr(sp + 1, ' ')) {
                    l = kiln_xmalloc((size_t)(sp - s) + 1);
                    memcpy(l, s, (size_t)(sp - s));
                    l[sp - s] = 0;
                    r = kiln_xstrdup(sp + 1);
                }
            } else if (cJSON_GetArraySize(item) == 2 && cJSON_IsString(cJSON_GetArrayItem(item, 0)) &&
                       cJSON_IsString(cJSON_GetArrayItem(item, 1))) {
                l = kiln_xstrdup(cJSON_GetArrayItem(item, 0)->valuestring);
                r = kiln_xstrdup(cJSON_GetArrayItem(item, 1)->valuestring);
            }
            int li, ri, mi = -1;
            if (l && r) {
                size_t ll = strlen(l), rl = strlen(r);
                char *m = kiln_xmalloc(ll + rl + 1);
                memcpy(m, l, ll);
                memcpy(m + ll, r, rl + 1);
                if (!kiln_strmap_get(&vocab, l, &li) || !kiln_strmap_get(&vocab, r, &ri) || !kiln_strmap_get(&vocab, m, &mi))
                    mi = -1;
                free(m);
            }
            free(l);
            free(r);
            if (mi < 0) {
                kiln_errf(err, "%s: merge %d is malformed or refers to a token not in the vocabulary", name, rank);
                goto done;
            }
            add_merge(&b, li, ri, mi, (uint32_t)rank++);
        }
    } else {
        const char *p = jstr(model, "continuing_subword_prefix");
        if (!p)
            p = "##";
        b.wp_pre_len = (uint32_t)strlen(p);
        b.wp_pre_off = pool_add(&b, p, b.wp_pre_len);
        const cJSON *mc = cJSON_GetObjectItemCaseSensitive(model, "max_input_chars_per_word");
        if (cJSON_IsNumber(mc) && mc->valuedouble >= 1)
            b.wp_max = (uint32_t)fmin(mc->valuedouble, 1e9);
    }
    int fused = 0;
    if (json_normalizer(&b, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err) ||
        json_pretokenizer(&b, pre, err) || json_decoder(&b, dec, &fused, err) ||
        json_post(&b, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), &vocab, err))
        goto done;
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "padding"), "pad_id");
    if (cJSON_IsNumber(pad) && pad->valuedouble >= 0 && pad->valuedouble < b.n)
        b.pad = (uint32_t)pad->valuedouble;
    /* BOS/EOS: tokenizer_config.json names them; else the template's ends */
    int bos = json_tok_id(&vocab, &b, cfg_token(cfg, "bos_token"));
    int eos = json_tok_id(&vocab, &b, cfg_token(cfg, "eos_token"));
    if (bos < 0 && b.n_prefix)
        bos = (int)b.prefix[0];
    if (eos < 0 && b.n_suffix)
        eos = (int)b.suffix[b.n_suffix - 1];
    b.bos = bos < 0 ? KILN_TOK_NONE : (uint32_t)bos;
    b.eos = eos < 0 ? KILN_TOK_NONE : (uint32_t)eos;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
    if (cJSON_IsArray(ct)) { /* named templates: the default one, else the first */
        cJSON_ArrayForEach(item, ct)
        {
            const char *nm = jstr(item, "name");
            if (!tmpl || (nm && strcmp(nm, "default") == 0))
                tmpl = jstr(item, "template");
        }
    }
    tb_chat(&b, tmpl, tmpl ? strlen(tmpl) : 0);
    rc = tb_finish(&b, blob, len, err);
done:
    kiln_strmap_free(&vocab);
    tb_free(&b);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return rc;
}

/* ---- GGUF ---------------------------------------------------------------------------- */

enum { GGUF_TT_NORMAL = 1, GGUF_TT_UNKNOWN = 2, GGUF_TT_CONTROL = 3, GGUF_TT_USER = 4, GGUF_TT_UNUSED = 5,
       GGUF_TT_BYTE = 6 };

static int cmp_f32_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y ? 1 : 0;
}

/* SentencePiece BPE merges the adjacent pair whose concatenation is the
 * highest-scoring token. Every split of every token into two tokens is a
 * merge, ranked by the score of the result (equal scores share a rank so
 * the leftmost pair wins, as in llama.cpp). */
static void spm_merges_from_scores(tb *b, const float *score, const int32_t *type, const kiln_strmap *vocab)
{
    float *sorted = kiln_xmalloc((size_t)b->n * sizeof *sorted);
    memcpy(sorted, score, (size_t)b->n * sizeof *sorted);
    qsort(sorted, (size_t)b->n, sizeof *sorted, cmp_f32_desc);
    for (int id = 0; id < b->n; id++) {
        if (type[id] != GGUF_TT_NORMAL || b->tlen[id] < 2)
            continue;
        /* rank: index of the first occurrence of this score among the sorted */
        int lo = 0, hi = b->n - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (sorted[mid] > score[id])
                lo = mid + 1;
            else
                hi = mid;
        }
        const char *s = b->tok[id];
        char *tmp = kiln_xmalloc(b->tlen[id] + 1);
        for (uint32_t k = 1; k < b->tlen[id]; k++) {
            if (((uint8_t)s[k] & 0xC0) == 0x80)
                continue;
            int l, r;
            memcpy(tmp, s, k);
            tmp[k] = 0;
            if (!kiln_strmap_get(vocab, tmp, &l) || type[l] != GGUF_TT_NORMAL)
                continue;
            if (!kiln_strmap_get(vocab, s + k, &r) || type[r] != GGUF_TT_NORMAL)
                continue;
            add_merge(b, l, r, id, (uint32_t)lo);
        }
        free(tmp);
    }
    free(sorted);
}

static int gguf_id(const kiln_gguf *g, const char *key, int n)
{
    int64_t v = kiln_gguf_get_int(g, key, -1);
    return v >= 0 && v < n ? (int)v : -1;
}

int kiln_tokenizer_import_gguf(const kiln_gguf *g, uint8_t **blob, size_t *len, kiln_err *err)
{
    const char *name = kiln_gguf_path(g);
    size_t ml;
    const char *mstr = kiln_gguf_get_str(g, "tokenizer.ggml.model", &ml);
    if (!mstr)
        return kiln_errf(err, "%s: no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)", name);
    char model[32];
    snprintf(model, sizeof model, "%.*s", (int)(ml < 31 ? ml : 31), mstr);
    int64_t n = kiln_gguf_arr_len(g, "tokenizer.ggml.tokens");
    if (n <= 0 || n > (1 << 24) || kiln_gguf_arr_type(g, "tokenizer.ggml.tokens") != KILN_GGUF_STRING)
        return kiln_errf(err, "%s: tokenizer.ggml.tokens missing or not a string array", name);
    int is_gpt2 = strcmp(model, "gpt2") == 0, is_llama = strcmp(model, "llama") == 0,
        is_bert = strcmp(model, "bert") == 0;
    if (!is_gpt2 && !is_llama && !is_bert)
        return kiln_errf(err, "%s: GGUF tokenizer model '%s' is not supported (kiln supports gpt2, llama, bert)",
                         name, model);
    int64_t nt = kiln_gguf_arr_len(g, "tokenizer.ggml.token_type");
    if (nt >= 0 && nt != n)
        return kiln_errf(err, "%s: tokenizer.ggml.token_type has %lld entries for %lld tokens", name, (long long)nt,
                         (long long)n);
    tb b;
    tb_init(&b, name);
    tb_alloc_vocab(&b, (int)n);
    kiln_strmap vocab = {0};
    int32_t *type = kiln_xmalloc((size_t)n * sizeof *type);
    float *score = kiln_xcalloc((size_t)n, sizeof *score);
    int rc = -1;
    for (int64_t i = 0; i < n; i++) {
        size_t l;
        const char *s = kiln_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &l);
        type[i] = nt >= 0 ? (int32_t)kiln_gguf_arr_int(g, "tokenizer.ggml.token_type", i) : GGUF_TT_NORMAL;
        if (is_llama && kiln_gguf_arr_len(g, "tokenizer.ggml.scores") == n)
            score[i] = (float)kiln_gguf_arr_num(g, "tokenizer.ggml.scores", i);
        if (memchr(s, 0, l)) {
            kiln_errf(err, "%s: token %lld contains a NUL byte", name, (long long)i);
            goto done;
        }
        tb_set_tok(&b, (int)i, s, l);
        if (!kiln_strmap_get(&vocab, b.tok[i], &(int){0}))
            kiln_strmap_put(&vocab, b.tok[i], (int)i);
    }
    b.unk = (uint32_t)gguf_id(g, "tokenizer.ggml.unknown_token_id", (int)n);
    b.bos = (uint32_t)gguf_id(g, "tokenizer.ggml.bos_token_id", (int)n);
    b.eos = (uint32_t)gguf_id(g, "tokenizer.ggml.eos_token_id", (int)n);
    b.pad = (uint32_t)gguf_id(g, "tokenizer.ggml.padding_token_id", (int)n);
    /* (uint32_t)-1 is KILN_TOK_NONE */
    for (int64_t i = 0; i < n; i++) {
        if (type[i] == GGUF_TT_CONTROL || type[i] == GGUF_TT_USER) {
            uint32_t f = type[i] == GGUF_TT_CONTROL ? KILN_ADDF_SPECIAL : 0;
            b.attr[i] |= KILN_TOKA_ADDED | (f ? KILN_TOKA_SPECIAL : 0);
            if (b.tlen[i])
                add_added(&b, (int)i, f, b.tok[i], b.tlen[i]);
        } else if (type[i] == GGUF_TT_UNUSED) {
            b.attr[i] |= KILN_TOKA_UNUSED;
        } else if (type[i] == GGUF_TT_UNKNOWN && b.unk == KILN_TOK_NONE) {
            b.unk = (uint32_t)i;
        }
    }
    size_t pl = 0;
    const char *pre = kiln_gguf_get_str(g, "tokenizer.ggml.pre", &pl);
    char pname[64] = "";
    if (pre)
        snprintf(pname, sizeof pname, "%.*s", (int)(pl < 63 ? pl : 63), pre);
    int add_bos = (int)kiln_gguf_get_int(g, "tokenizer.ggml.add_bos_token", is_gpt2 ? 0 : 1);
    int add_eos = (int)kiln_gguf_get_int(g, "tokenizer.ggml.add_eos_token", is_bert ? 1 : 0);
    if (is_gpt2) {
        b.model = KILN_TOK_BPE;
        b.flags = KILN_TOKF_BYTE_UNITS;
        b.unk = KILN_TOK_NONE; /* llama.cpp drops bytes missing from a byte-level vocabulary */
        static const char *const gpt2_like[] = {"gpt2", "gpt-2", NULL};
        static const char *const smollm_like[] = {"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva", NULL};
        static const char *const llama3_like[] = {"llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe", NULL};
        int kind = 0;
        for (int i = 0; gpt2_like[i]; i++)
            kind = strcmp(pname, gpt2_like[i]) == 0 ? 1 : kind;
        for (int i = 0; smollm_like[i]; i++)
            kind = strcmp(pname, smollm_like[i]) == 0 ? 2 : kind;
        for (int i = 0; llama3_like[i]; i++)
            kind = strcmp(pname, llama3_like[i]) == 0 ? 3 : kind;
        kind = strcmp(pname, "qwen2") == 0 ? 4 : kind;
        if (!kind) {
            kiln_errf(err, "%s: GGUF pre-tokenizer '%s' is not supported (kiln knows gpt2, smollm/starcoder, "
                           "llama3 and qwen2)", name, pre ? pname : "(none)");
            goto done;
        }
        if (kind == 2)
            add_op(b.pre, &b.n_pre, KILN_PRE_DIGITS, 1, 0, 0, 0);
        add_op(b.pre, &b.n_pre, KILN_PRE_REGEX, kind <= 2 ? KILN_RE_GPT2 : kind == 3 ? KILN_RE_LLAMA3 : KILN_RE_QWEN2,
               0, 0, 0);
        if (kind == 3)
            b.flags |= KILN_TOKF_IGNORE_MERGES;
        add_op(b.dec, &b.n_dec, KILN_DEC_BYTELEVEL, 0, 0, 0, 0);
        for (int i = 0; i < b.n; i++) /* special tokens keep their text; the rest are byte-level */
            if (!(b.attr[i] & KILN_TOKA_ADDED))
                bytelevel_decode(&b, i);
        int64_t nm = kiln_gguf_arr_len(g, "tokenizer.ggml.merges");
        for (int64_t i = 0; i < nm; i++) {
            size_t l;
            const char *s = kiln_gguf_arr_str(g, "tokenizer.ggml.merges", i, &l);
            /* "left right", both in byte-level form (so neither holds a space) */
            const char *sp = s && l > 1 ? memchr(s + 1, ' ', l - 1) : NULL;
            int li = -1, ri = -1, mi = -1;
            if (sp) {
                size_t a = (size_t)(sp - s), r = l - a - 1;
                char *lft = kiln_xmalloc(l + 1), *rgt = kiln_xmalloc(l + 1), *m = kiln_xmalloc(l + 1);
                memcpy(lft, s, a);
                lft[a] = 0;
                memcpy(rgt, sp + 1, r);
                rgt[r] = 0;
                memcpy(m, lft, a);
                memcpy(m + a, rgt, r + 1);
                if (!kiln_strmap_get(&vocab, lft, &li) || !kiln_strmap_get(&vocab, rgt, &ri) ||
                    !kiln_strmap_get(&vocab, m, &mi))
                    mi = -1;
                free(lft);
                free(rgt);
                free(m);
            }
            if (mi < 0) {
                kiln_errf(err, "%s: merge %lld is malformed or refers to a token not in the vocabulary", name,
                          (long long)i);
                goto done;
            }
            add_merge(&b, li, ri, mi, (uint32_t)i);
        }
    } else if (is_llama) {
        b.model = KILN_TOK_BPE;
        b.flags = KILN_TOKF_BYTE_FALLBACK | KILN_TOKF_FUSE_UNK;
        spm_merges_from_scores(&b, score, type, &vocab);
        int space_prefix = (int)kiln_gguf_get_int(g, "tokenizer.ggml.add_space_prefix", 1);
        const char *sp = "\xe2\x96\x81";
        uint32_t spo = pool_add(&b, sp, 3), blank = pool_add(&b, " ", 1);
        if (space_prefix)
            add_op(b.norm, &b.n_norm, KILN_NORM_PREPEND, spo, 3, 0, 0);
        add_op(b.norm, &b.n_norm, KILN_NORM_REPLACE, blank, 1, spo, 3);
        add_op(b.dec, &b.n_dec, KILN_DEC_REPLACE, spo, 3, blank, 1);
        add_op(b.dec, &b.n_dec, KILN_DEC_BYTE_FALLBACK, 0, 0, 0, 0);
        add_op(b.dec, &b.n_dec, KILN_DEC_FUSE, 0, 0, 0, 0);
        if (space_prefix)
            add_op(b.dec, &b.n_dec, KILN_DEC_STRIP, ' ', 1, 0, 0);
    } else { /* bert: llama.cpp stores "##x" as "x" and word-initial "x" as "▁x" */
        b.model = KILN_TOK_WORDPIECE;
        kiln_strmap_free(&vocab);
        for (int i = 0; i < b.n; i++) {
            char *s = b.tok[i];
            size_t l = b.tlen[i];
            if (b.attr[i] & KILN_TOKA_ADDED || (l >= 2 && s[0] == '[' && s[l - 1] == ']'))
                continue;
            if (l >= 3 && memcmp(s, "\xe2\x96\x81", 3) == 0) {
                memmove(s, s + 3, l - 3);
                b.tlen[i] = (uint32_t)(l - 3);
            } else {
                char *t = kiln_xmalloc(l + 3);
                memcpy(t, "##", 2);
                memcpy(t + 2, s, l + 1);
                free(s);
                b.tok[i] = t;
                b.tlen[i] = (uint32_t)(l + 2);
            }
        }
        b.wp_pre_len = 2;
        b.wp_pre_off = pool_add(&b, "##", 2);
        add_op(b.norm, &b.n_norm, KILN_NORM_BERT,
               KILN_BERT_CLEAN | KILN_BERT_CHINESE | KILN_BERT_STRIP_ACCENTS | KILN_BERT_LOWERCASE, 0, 0, 0);
        add_op(b.pre, &b.n_pre, KILN_PRE_BERT, 0, 0, 0, 0);
        add_op(b.dec, &b.n_dec, KILN_DEC_WORDPIECE, b.wp_pre_off, 2, 1, 0);
        int cls = gguf_id(g, "tokenizer.ggml.cls_token_id", b.n), sep = gguf_id(g, "tokenizer.ggml.seperator_token_id", b.n);
        if (cls >= 0)
            b.bos = (uint32_t)cls;
        if (sep >= 0)
            b.eos = (uint32_t)sep;
    }
    if (add_bos && b.bos != KILN_TOK_NONE)
        b.prefix[b.n_prefix++] = b.bos;
    if (add_eos && b.eos != KILN_TOK_NONE)
        b.suffix[b.n_suffix++] = b.eos;
    size_t cl = 0;
    const char *chat = kiln_gguf_get_str(g, "tokenizer.chat_template", &cl);
    tb_chat(&b, chat, chat ? cl : 0);
    rc = tb_finish(&b, blob, len, err);
done:
    kiln_strmap_free(&vocab);
    free(type);
    free(score);
    tb_free(&b);
    return rc;
}

/* ---- files ----------------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

int kiln_tokenizer_import(const char *path, uint8_t **blob, size_t *len, kiln_err *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return kiln_errf(err, "%s: no such file or directory", path);
    if (S_ISDIR(st.st_mode)) {
        kiln_sb p = {0};
        kiln_sb_printf(&p, "%s/tokenizer.json", path);
        if (stat(p.s, &st) != 0) {
            kiln_errf(err, "%s: directory has no tokenizer.json", path);
            kiln_sb_free(&p);
            return -1;
        }
        int r = kiln_tokenizer_import(p.s, blob, len, err);
        kiln_sb_free(&p);
        return r;
    }
    if (ends_with(path, ".gguf")) {
        kiln_gguf *g = kiln_gguf_open(path, err);
        if (!g)
            return -1;
        int r = kiln_tokenizer_import_gguf(g, blob, len, err);
        kiln_gguf_close(g);
        return r;
    }
    char *data;
    size_t n;
    if (kiln_read_file(path, &data, &n, err))
        return -1;
    if (ends_with(path, ".ktok")) {
        kiln_tokenizer t;
        if (kiln_tok_load(&t, data, n, err)) {
            free(data);
            return kiln_err_prefix(err, "%s: ", path);
        }
        *blob = (uint8_t *)data;
        *len = n;
        return 0;
    }
    /* tokenizer_config.json beside it carries the chat template and BOS/EOS */
    char *cfg = NULL;
    size_t cfgn;
    kiln_sb cp = {0};
    const char *slash = strrchr(path, '/');
    kiln_sb_printf(&cp, "%.*stokenizer_config.json", slash ? (int)(slash - path + 1) : 0, path);
    if (stat(cp.s, &st) == 0 && kiln_read_file(cp.s, &cfg, &cfgn, NULL))
        cfg = NULL;
    kiln_sb_free(&cp);
    int r = kiln_tokenizer_import_json(data, n, cfg, path, blob, len, err);
    free(data);
    free(cfg);
    return r;
}
