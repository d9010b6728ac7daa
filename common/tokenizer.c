/* tokenizer.c - encodes text to ids and decodes ids to text with a
 * tokenizer blob (layout: kiln_tokenizer.h, docs/tokenizers.md).
 *
 * Encoding follows the Hugging Face `tokenizers` pipeline, whose ids it must
 * reproduce exactly: added tokens are cut out of the raw text first, each
 * piece in between is normalized, pre-tokenized (split into words) and each
 * word goes through the model (BPE or WordPiece). The blob is read in place
 * with byte-wise little-endian loads, so it needs no alignment. */
#include "kiln_tokenizer.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* element i of the u32 array whose offset is header field f */
static uint32_t arr(const kiln_tokenizer *t, int f, size_t i)
{
    return rd32(t->blob + t->h[f] + 4 * i);
}

static const uint8_t *pool(const kiln_tokenizer *t, uint32_t off)
{
    return t->blob + t->h[KILN_TOKH_POOL_OFF] + off;
}

static const uint8_t *tok_str(const kiln_tokenizer *t, int id, size_t *len)
{
    uint32_t a = arr(t, KILN_TOKH_TOKS_OFF, (size_t)id), b = arr(t, KILN_TOKH_TOKS_OFF, (size_t)id + 1);
    *len = b - a;
    return pool(t, a);
}

/* op i of a table (5 u32 each) into o[5] */
static void op_at(const kiln_tokenizer *t, int f, int i, uint32_t o[5])
{
    for (int k = 0; k < 5; k++)
        o[k] = arr(t, f, (size_t)i * 5 + k);
}

/* Vocabulary lookup of pre + s (pre lets WordPiece look up "##" + piece
 * without building the string). */
static int vocab_find2(const kiln_tokenizer *t, const uint8_t *pre, size_t np, const uint8_t *s, size_t n)
{
    uint32_t cap = t->h[KILN_TOKH_VHASH_CAP];
    uint32_t h = kiln_tok_hash(kiln_tok_hash(KILN_TOK_HASH_INIT, pre, np), s, n);
    for (uint32_t i = h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        uint32_t v = arr(t, KILN_TOKH_VHASH_OFF, i);
        if (!v)
            return -1;
        size_t len;
        const uint8_t *p = tok_str(t, (int)v - 1, &len);
        if (len == np + n && memcmp(p, pre, np) == 0 && memcmp(p + np, s, n) == 0)
            return (int)v - 1;
    }
}

static int vocab_find(const kiln_tokenizer *t, const uint8_t *s, size_t n)
{
    return vocab_find2(t, (const uint8_t *)"", 0, s, n);
}

/* Index of the merge (a, b) or -1. */
static int merge_find(const kiln_tokenizer *t, uint32_t a, uint32_t b)
{
    uint32_t cap = t->h[KILN_TOKH_MHASH_CAP];
    if (!cap)
        return -1;
    for (uint32_t i = kiln_tok_pair_hash(a, b) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        uint32_t v = arr(t, KILN_TOKH_MHASH_OFF, i);
        if (!v)
            return -1;
        if (arr(t, KILN_TOKH_MERGES_OFF, 4 * (size_t)(v - 1)) == a &&
            arr(t, KILN_TOKH_MERGES_OFF, 4 * (size_t)(v - 1) + 1) == b)
            return (int)v - 1;
    }
}

/* ---- loading ----------------------------------------------------------- */

/* Is [off, off + n) inside the blob? (64-bit math: no wraparound) */
static int in_blob(const kiln_tokenizer *t, uint64_t off, uint64_t n)
{
    return off <= t->size && n <= t->size - off;
}

static int pool_ok(const kiln_tokenizer *t, uint32_t off, uint32_t len)
{
    return (uint64_t)off + len <= t->h[KILN_TOKH_POOL_LEN];
}

/* Checks one op table: kinds known, string arguments inside the pool. */
static int check_ops(const kiln_tokenizer *t, int off_f, int n_f, const char *what, kiln_err *err)
{
    uint32_t n = t->h[n_f];
    if (n > 64 || !in_blob(t, t->h[off_f], (uint64_t)n * 20))
        return kiln_errf(err, "tokenizer blob: %s table out of bounds", what);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t o[5];
        op_at(t, off_f, (int)i, o);
        /* str1/str2: (a, b) / (c, d) are pool strings; nonempty: a,b must not be empty */
        int str2 = 0, str1 = 0, nonempty = 0, ok;
        if (off_f == KILN_TOKH_NORM_OFF) {
            ok = o[0] >= KILN_NORM_BERT && o[0] <= KILN_NORM_STRIP;
            str1 = o[0] == KILN_NORM_PREPEND || o[0] == KILN_NORM_REPLACE;
            str2 = nonempty = o[0] == KILN_NORM_REPLACE;
        } else if (off_f == KILN_TOKH_PRE_OFF) {
            ok = o[0] >= KILN_PRE_REGEX && o[0] <= KILN_PRE_WHITESPACE;
            if (o[0] == KILN_PRE_REGEX)
                ok = o[1] >= KILN_RE_GPT2 && o[1] <= KILN_RE_QWEN2;
            str1 = nonempty = o[0] == KILN_PRE_METASPACE;
        } else {
            ok = o[0] >= KILN_DEC_BYTELEVEL && o[0] <= KILN_DEC_STRIP;
            str1 = o[0] == KILN_DEC_WORDPIECE || o[0] == KILN_DEC_METASPACE || o[0] == KILN_DEC_REPLACE;
            str2 = o[0] == KILN_DEC_REPLACE;
            nonempty = o[0] == KILN_DEC_METASPACE || o[0] == KILN_DEC_REPLACE;
            if (o[0] == KILN_DEC_STRIP)
                ok = o[1] < KILN_UC_INVALID && o[2] < 1000 && o[3] < 1000;
        }
        if (!ok)
            return kiln_errf(err, "tokenizer blob: %s op %u has unknown kind %u", what, i, o[0]);
        if ((str1 && !pool_ok(t, o[1], o[2])) || (str2 && !pool_ok(t, o[3], o[4])))
            return kiln_errf(err, "tokenizer blob: %s op %u string out of bounds", what, i);
        if (nonempty && o[2] == 0)
            return kiln_errf(err, "tokenizer blob: %s op %u has an empty pattern", what, i);
    }
    return 0;
}

/* A hash table: capacity a power of two, entries at most max, and at least
 * one empty slot (or probing would never end). */
static int check_hash(const kiln_tokenizer *t, int off_f, int cap_f, uint32_t max, const char *what,
                      kiln_err *err)
{
    uint32_t cap = t->h[cap_f];
    if (cap < 2 || (cap & (cap - 1)) || !in_blob(t, t->h[off_f], (uint64_t)cap * 4))
        return kiln_errf(err, "tokenizer blob: bad %s hash table", what);
    uint32_t empty = 0;
    for (uint32_t i = 0; i < cap; i++) {
        uint32_t v = arr(t, off_f, i);
        if (v > max)
            return kiln_errf(err, "tokenizer blob: %s hash entry %u out of range", what, i);
        empty += v == 0;
    }
    if (!empty)
        return kiln_errf(err, "tokenizer blob: %s hash table is full", what);
    return 0;
}

int kiln_tok_load(kiln_tokenizer *t, const void *blob, size_t len, kiln_err *err)
{
    memset(t, 0, sizeof *t);
    const uint8_t *b = blob;
    if (!b || len < 4 * KILN_TOKH_COUNT)
        return kiln_errf(err, "tokenizer blob truncated (%zu bytes)", len);
    for (int i = 0; i < KILN_TOKH_COUNT; i++)
        t->h[i] = rd32(b + 4 * i);
    if (t->h[KILN_TOKH_MAGIC] != KILN_TOK_MAGIC)
        return kiln_errf(err, "not a kiln tokenizer blob (bad magic)");
    if (t->h[KILN_TOKH_VERSION] != KILN_TOK_VERSION)
        return kiln_errf(err, "tokenizer blob version %u, this runtime reads version %u",
                         t->h[KILN_TOKH_VERSION], KILN_TOK_VERSION);
    if (t->h[KILN_TOKH_SIZE] > len || t->h[KILN_TOKH_SIZE] < 4 * KILN_TOKH_COUNT)
        return kiln_errf(err, "tokenizer blob truncated (%zu of %u bytes)", len, t->h[KILN_TOKH_SIZE]);
    t->blob = b;
    t->size = t->h[KILN_TOKH_SIZE];
    uint32_t *h = t->h, nv = h[KILN_TOKH_N_VOCAB];
    if (h[KILN_TOKH_MODEL] != KILN_TOK_BPE && h[KILN_TOKH_MODEL] != KILN_TOK_WORDPIECE)
        return kiln_errf(err, "tokenizer blob: unknown model kind %u", h[KILN_TOKH_MODEL]);
    if (nv == 0 || nv > (1u << 26))
        return kiln_errf(err, "tokenizer blob: bad vocabulary size %u", nv);
    t->n_vocab = (int)nv;
    if (!in_blob(t, h[KILN_TOKH_POOL_OFF], h[KILN_TOKH_POOL_LEN]) ||
        !in_blob(t, h[KILN_TOKH_TOKS_OFF], ((uint64_t)nv + 1) * 4) ||
        !in_blob(t, h[KILN_TOKH_ATTR_OFF], nv))
        return kiln_errf(err, "tokenizer blob: vocabulary out of bounds");
    uint32_t prev = 0;
    for (uint32_t i = 0; i <= nv; i++) {
        uint32_t o = arr(t, KILN_TOKH_TOKS_OFF, i);
        if (o < prev || o > h[KILN_TOKH_POOL_LEN])
            return kiln_errf(err, "tokenizer blob: token %u string out of bounds", i);
        if (i && (int)(o - prev) > t->max_tok_len)
            t->max_tok_len = (int)(o - prev);
        prev = o;
    }
    if (t->max_tok_len > (1 << 20))
        return kiln_errf(err, "tokenizer blob: token longer than 1 MiB");
    if (check_hash(t, KILN_TOKH_VHASH_OFF, KILN_TOKH_VHASH_CAP, nv, "vocabulary", err))
        return -1;
    uint32_t nm = h[KILN_TOKH_N_MERGES];
    if (!in_blob(t, h[KILN_TOKH_MERGES_OFF], (uint64_t)nm * 16))
        return kiln_errf(err, "tokenizer blob: merges out of bounds");
    for (uint32_t i = 0; i < nm; i++)
        for (int k = 0; k < 3; k++)
            if (arr(t, KILN_TOKH_MERGES_OFF, 4 * (size_t)i + k) >= nv)
                return kiln_errf(err, "tokenizer blob: merge %u refers to a token out of range", i);
    if (nm && check_hash(t, KILN_TOKH_MHASH_OFF, KILN_TOKH_MHASH_CAP, nm, "merge", err))
        return -1;
    if (!nm)
        h[KILN_TOKH_MHASH_CAP] = 0;
    uint32_t na = h[KILN_TOKH_N_ADDED];
    if (na > nv || !in_blob(t, h[KILN_TOKH_ADDED_OFF], (uint64_t)na * 16))
        return kiln_errf(err, "tokenizer blob: added tokens out of bounds");
    int first = 0, prev_fb = 0; /* added_first[c] = index of the first token starting with byte >= c */
    for (uint32_t i = 0; i < na; i++) {
        uint32_t id = arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)i);
        uint32_t fl = arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)i + 1);
        uint32_t so = arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)i + 2);
        uint32_t sl = arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)i + 3);
        if (id >= nv || sl == 0 || !pool_ok(t, so, sl))
            return kiln_errf(err, "tokenizer blob: added token %u out of range", i);
        int fb = *pool(t, so);
        if (fb < prev_fb)
            return kiln_errf(err, "tokenizer blob: added tokens not sorted");
        prev_fb = fb;
        for (; first <= fb; first++)
            t->added_first[first] = (int)i;
        if (fl & KILN_ADDF_NORMALIZED)
            t->has_norm_added = 1;
    }
    for (; first <= 256; first++)
        t->added_first[first] = (int)na;
    if (check_ops(t, KILN_TOKH_NORM_OFF, KILN_TOKH_N_NORM, "normalizer", err) ||
        check_ops(t, KILN_TOKH_PRE_OFF, KILN_TOKH_N_PRE, "pre-tokenizer", err) ||
        check_ops(t, KILN_TOKH_DEC_OFF, KILN_TOKH_N_DEC, "decoder", err))
        return -1;
    for (int f = KILN_TOKH_PREFIX_OFF; f <= KILN_TOKH_SUFFIX_OFF; f += 2) {
        uint32_t n = h[f + 1];
        if (n > 16 || !in_blob(t, h[f], (uint64_t)n * 4))
            return kiln_errf(err, "tokenizer blob: special-token template out of bounds");
        for (uint32_t i = 0; i < n; i++)
            if (arr(t, f, i) >= nv)
                return kiln_errf(err, "tokenizer blob: special-token template id out of range");
    }
    for (int f = KILN_TOKH_UNK; f <= KILN_TOKH_PAD; f++)
        if (h[f] != KILN_TOK_NONE && h[f] >= nv)
            return kiln_errf(err, "tokenizer blob: special id %u out of range", h[f]);
    if (!pool_ok(t, h[KILN_TOKH_WP_PREFIX_OFF], h[KILN_TOKH_WP_PREFIX_LEN]) ||
        !pool_ok(t, h[KILN_TOKH_CHAT_SYS_OFF], h[KILN_TOKH_CHAT_SYS_LEN]) ||
        !pool_ok(t, h[KILN_TOKH_CHAT_SRC_OFF], h[KILN_TOKH_CHAT_SRC_LEN]))
        return kiln_errf(err, "tokenizer blob: string out of bounds");
    if (h[KILN_TOKH_WP_MAX_CHARS] == 0)
        h[KILN_TOKH_WP_MAX_CHARS] = 100;

    uint32_t fl = h[KILN_TOKH_FLAGS];
    for (int c = 0; c < 256; c++) {
        uint8_t s[6] = {(uint8_t)c};
        static const char hex[] = "0123456789ABCDEF";
        if (fl & KILN_TOKF_BYTE_UNITS) {
            t->byte_tok[c] = vocab_find(t, s, 1); /* bytes that never occur in UTF-8 may lack one */
        } else if (fl & KILN_TOKF_BYTE_FALLBACK) {
            memcpy(s, "<0x", 3);
            s[3] = (uint8_t)hex[c >> 4];
            s[4] = (uint8_t)hex[c & 15];
            s[5] = '>';
            t->byte_tok[c] = vocab_find(t, s, 6);
        } else {
            t->byte_tok[c] = -1;
        }
    }
    return 0;
}

int kiln_tok_n_vocab(const kiln_tokenizer *t) { return t->n_vocab; }

static int id_or_neg(uint32_t v) { return v == KILN_TOK_NONE ? -1 : (int)v; }
int kiln_tok_bos(const kiln_tokenizer *t) { return id_or_neg(t->h[KILN_TOKH_BOS]); }
int kiln_tok_eos(const kiln_tokenizer *t) { return id_or_neg(t->h[KILN_TOKH_EOS]); }
int kiln_tok_unk(const kiln_tokenizer *t) { return id_or_neg(t->h[KILN_TOKH_UNK]); }

int kiln_tok_attr(const kiln_tokenizer *t, int id)
{
    if (id < 0 || id >= t->n_vocab)
        return 0;
    return t->blob[t->h[KILN_TOKH_ATTR_OFF] + (uint32_t)id];
}

const char *kiln_tok_piece(const kiln_tokenizer *t, int id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab)
        return NULL;
    return (const char *)tok_str(t, id, len);
}

int kiln_tok_find(const kiln_tokenizer *t, const char *s, size_t len)
{
    return vocab_find(t, (const uint8_t *)s, len);
}

const char *kiln_tok_model_name(const kiln_tokenizer *t)
{
    if (t->h[KILN_TOKH_MODEL] == KILN_TOK_WORDPIECE)
        return "wordpiece";
    return t->h[KILN_TOKH_FLAGS] & KILN_TOKF_BYTE_UNITS ? "bpe-bytelevel" : "bpe";
}

/* ---- encoder scratch ---------------------------------------------------- */

typedef struct span {
    size_t off, len; /* in the arena */
    int first;       /* starts at the very beginning of the input text */
} span;

typedef struct spans {
    span *v;
    size_t n, cap;
} spans;

typedef struct bsym {
    int id, prev, next; /* id -1: merged into its left neighbour */
} bsym;

typedef struct bmerge {
    uint32_t rank;
    int pos, result;
} bmerge;

typedef struct enc {
    const kiln_tokenizer *t;
    int flags;
    int32_t *ids;
    int cap;
    int64_t n;
    uint8_t *buf; /* arena holding the current segment's transformed text */
    size_t blen, bcap;
    spans a, b;
    uint32_t *cp, *cp2;
    size_t cpcap, cp2cap;
    bsym *sym;
    size_t symcap;
    bmerge *heap;
    size_t nheap, heapcap;
} enc;

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap && p) /* never NULL: memcpy of 0 bytes still wants a pointer */
        return p;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    *cap = c;
    return kiln_xrealloc(p, c * elem);
}

static void reserve(enc *e, size_t n)
{
    e->buf = grow(e->buf, &e->bcap, e->blen + n, 1);
}

static void emit(enc *e, int id)
{
    if (id < 0)
        return;
    if (e->n < e->cap)
        e->ids[e->n] = id;
    e->n++;
}

static void push(spans *s, size_t off, size_t len, int first)
{
    if (!len)
        return;
    s->v = grow(s->v, &s->cap, s->n + 1, sizeof *s->v);
    s->v[s->n++] = (span){off, len, first};
}

/* Code point at s[i] (invalid bytes become 0x110000 + byte, so they
 * survive normalization and come back out unchanged). */
static int cp_at(const uint8_t *s, size_t n, size_t i, uint32_t *cp)
{
    int l = kiln_utf8_next(s + i, n - i, cp);
    if (*cp == KILN_UC_INVALID)
        *cp = KILN_UC_INVALID + s[i];
    return l;
}

static unsigned cls_at(const uint8_t *s, size_t n, size_t i, int *len)
{
    uint32_t c;
    *len = cp_at(s, n, i, &c);
    return kiln_uc_class(c);
}

static int put_cp(uint32_t cp, uint8_t *o)
{
    if (cp >= KILN_UC_INVALID) {
        o[0] = (uint8_t)(cp - KILN_UC_INVALID);
        return 1;
    }
    return kiln_utf8_put(cp, o);
}

#define WORD_CLS KILN_UC_WORD

/* Class of the character ending at s[i] (i > 0); *start gets where it begins. */
static unsigned cls_before(const uint8_t *s, size_t i, size_t *start)
{
    size_t k = i - 1;
    while (k > 0 && (s[k] & 0xC0) == 0x80 && i - k < 4)
        k--;
    int l;
    unsigned c = cls_at(s, i, k, &l);
    if (k + (size_t)l != i) { /* the last byte alone is malformed */
        k = i - 1;
        c = KILN_UC_C;
    }
    *start = k;
    return c;
}

static int ws_before(const uint8_t *s, size_t i, size_t *start)
{
    return (cls_before(s, i, start) & KILN_UC_WS) != 0;
}

/* ---- normalizers ---------------------------------------------------------- */

static int is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Replaces every occurrence of pat in src (left to right, not overlapping). */
static size_t replace_all(const uint8_t *src, size_t n, const uint8_t *pat, size_t pn, const uint8_t *rep,
                          size_t rn, uint8_t *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (pn && i + pn <= n && memcmp(src + i, pat, pn) == 0) {
            memcpy(dst + o, rep, rn);
            o += rn;
            i += pn;
        } else {
            dst[o++] = src[i++];
        }
    }
    return o;
}

/* Code-point level normalizers: text at (off, len) -> new arena text. */
static void norm_cps(enc *e, const uint32_t *op, size_t *off, size_t *len)
{
    /* worst case growth: NFD x4 (Chinese spacing x3 never decomposes), lowercase x2 */
    size_t cap = 8 * *len + 8, n = 0, m = 0;
    e->cp = grow(e->cp, &e->cpcap, cap, sizeof *e->cp);
    e->cp2 = grow(e->cp2, &e->cp2cap, cap, sizeof *e->cp2);
    uint32_t *a = e->cp, *b = e->cp2, *tmp;
    for (size_t i = 0; i < *len;)
        i += (size_t)cp_at(e->buf + *off, *len, i, &a[n++]);
#define NEXT_PASS() (tmp = a, a = b, b = tmp, n = m, m = 0)
    uint32_t kind = op[0], bf = op[1];
    if (kind == KILN_NORM_BERT) {
        for (size_t i = 0; i < n; i++) {
            uint32_t c = a[i];
            if (bf & KILN_BERT_CLEAN) {
                int ws = c == '\t' || c == '\n' || c == '\r';
                if (c == 0 || c == 0xFFFD || (!ws && (kiln_uc_class(c) & KILN_UC_C)))
                    continue;
                if (ws || (kiln_uc_class(c) & KILN_UC_WS))
                    c = ' ';
            }
            if ((bf & KILN_BERT_CHINESE) && is_cjk(c)) {
                b[m++] = ' ';
                b[m++] = c;
                b[m++] = ' ';
            } else {
                b[m++] = c;
            }
        }
        NEXT_PASS();
        if (bf & KILN_BERT_STRIP_ACCENTS) {
            m = kiln_uc_nfd(a, n, b);
            NEXT_PASS();
            for (size_t i = 0; i < n; i++)
                if (!(kiln_uc_class(a[i]) & KILN_UC_MN))
                    b[m++] = a[i];
            NEXT_PASS();
        }
        if (bf & KILN_BERT_LOWERCASE) {
            for (size_t i = 0; i < n; i++)
                m += (size_t)kiln_uc_lower(a[i], b + m);
            NEXT_PASS();
        }
    } else if (kind == KILN_NORM_LOWERCASE) {
        for (size_t i = 0; i < n; i++)
            m += (size_t)kiln_uc_lower(a[i], b + m);
        NEXT_PASS();
    } else if (kind == KILN_NORM_STRIP_ACCENTS) { /* tokenizers' StripAccents drops every mark */
        for (size_t i = 0; i < n; i++)
            if (!(kiln_uc_class(a[i]) & KILN_UC_M))
                b[m++] = a[i];
        NEXT_PASS();
    } else { /* NFD, NFC */
        m = kiln_uc_nfd(a, n, b);
        NEXT_PASS();
        if (kind == KILN_NORM_NFC)
            n = kiln_uc_nfc(a, n);
    }
#undef NEXT_PASS
    reserve(e, 4 * n);
    *off = e->blen;
    for (size_t i = 0; i < n; i++)
        e->blen += (size_t)put_cp(a[i], e->buf + e->blen);
    *len = e->blen - *off;
}

static void normalize(enc *e, size_t *off, size_t *len)
{
    const kiln_tokenizer *t = e->t;
    for (int i = 0; i < (int)t->h[KILN_TOKH_N_NORM]; i++) {
        uint32_t o[5];
        op_at(t, KILN_TOKH_NORM_OFF, i, o);
        if (o[0] == KILN_NORM_PREPEND) {
            if (!*len)
                continue;
            reserve(e, o[2] + *len);
            memcpy(e->buf + e->blen, pool(t, o[1]), o[2]);
            memcpy(e->buf + e->blen + o[2], e->buf + *off, *len);
            *off = e->blen;
            *len += o[2];
            e->blen += *len;
        } else if (o[0] == KILN_NORM_REPLACE) {
            size_t worst = o[4] > o[2] ? *len / o[2] * o[4] + *len : *len;
            reserve(e, worst);
            size_t n = replace_all(e->buf + *off, *len, pool(t, o[1]), o[2], pool(t, o[3]), o[4],
                                   e->buf + e->blen);
            *off = e->blen;
            *len = n;
            e->blen += n;
        } else if (o[0] == KILN_NORM_STRIP) {
            int l;
            size_t st;
            while (o[1] && *len && (cls_at(e->buf + *off, *len, 0, &l) & KILN_UC_WS))
                *off += (size_t)l, *len -= (size_t)l;
            while (o[2] && *len && ws_before(e->buf + *off, *len, &st))
                *len = st;
        } else {
            norm_cps(e, o, off, len);
        }
    }
}

char *kiln_tok_normalize(const kiln_tokenizer *t, const char *text, size_t len, size_t *out_len)
{
    enc e = {.t = t};
    reserve(&e, len);
    memcpy(e.buf, text, len);
    e.blen = len;
    size_t off = 0, n = len;
    normalize(&e, &off, &n);
    char *r = kiln_xmalloc(n + 1);
    memcpy(r, e.buf + off, n);
    r[n] = 0;
    *out_len = n;
    free(e.buf);
    free(e.cp);
    free(e.cp2);
    return r;
}

/* ---- pre-tokenizers --------------------------------------------------------- */

/* End of the run of characters starting at i whose class intersects mask
 * (or, with invert, whose class does not). */
static size_t run(const uint8_t *s, size_t n, size_t i, unsigned mask, int invert)
{
    while (i < n) {
        int l;
        unsigned c = cls_at(s, n, i, &l);
        if (!(c & mask) != !!invert)
            break;
        i += (size_t)l;
    }
    return i;
}

/* 's 't 're 've 'm 'll 'd at s[i] (s[i] == '\''): their length or 0. */
static size_t contraction(const uint8_t *s, size_t n, size_t i, int icase)
{
    int c1 = i + 1 < n ? s[i + 1] : 0, c2 = i + 2 < n ? s[i + 2] : 0;
    if (icase) {
        c1 = c1 >= 'A' && c1 <= 'Z' ? c1 + 32 : c1;
        c2 = c2 >= 'A' && c2 <= 'Z' ? c2 + 32 : c2;
    }
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
        return 2;
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
        return 3;
    return 0;
}

#define LNW (KILN_UC_L | KILN_UC_N | KILN_UC_WS)

/* Whitespace run at i: `\s+(?!\S)|\s+` - all of it at the end of the text,
 * else all but its last character when that leaves some. */
static size_t ws_run(const uint8_t *s, size_t n, size_t i)
{
    size_t last = i, k = i;
    while (k < n) {
        int l;
        if (!(cls_at(s, n, k, &l) & KILN_UC_WS))
            break;
        last = k;
        k += (size_t)l;
    }
    if (k == n || last == i)
        return k;
    return last;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t re_gpt2(const uint8_t *s, size_t n, size_t i)
{
    if (s[i] == '\'') {
        size_t k = contraction(s, n, i, 0);
        if (k)
            return i + k;
    }
    size_t j = i;
    int l;
    unsigned c = cls_at(s, n, i, &l);
    if (s[i] == ' ' && i + 1 < n) {
        c = cls_at(s, n, i + 1, &l);
        if (!(c & KILN_UC_WS))
            j = i + 1;
        else
            c = KILN_UC_WS;
    }
    if (c & KILN_UC_L)
        return run(s, n, j, KILN_UC_L, 0);
    if (c & KILN_UC_N)
        return run(s, n, j, KILN_UC_N, 0);
    if (!(c & KILN_UC_WS))
        return run(s, n, j, LNW, 1);
    return ws_run(s, n, i);
}

/* Llama-3 (digits = 3) and Qwen2 (digits = 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t re_llama3(const uint8_t *s, size_t n, size_t i, int digits)
{
    if (s[i] == '\'') {
        size_t k = contraction(s, n, i, 1);
        if (k)
            return i + k;
    }
    int l, l2;
    unsigned c = cls_at(s, n, i, &l);
    if (c & KILN_UC_L)
        return run(s, n, i, KILN_UC_L, 0);
    if (!(c & KILN_UC_N) && s[i] != '\r' && s[i] != '\n' && i + (size_t)l < n &&
        (cls_at(s, n, i + (size_t)l, &l2) & KILN_UC_L))
        return run(s, n, i + (size_t)l, KILN_UC_L, 0);
    if (c & KILN_UC_N) {
        size_t k = i;
        for (int d = 0; d < digits && k < n && (cls_at(s, n, k, &l2) & KILN_UC_N); d++)
            k += (size_t)l2;
        return k;
    }
    size_t j = i;
    if (s[i] == ' ' && i + 1 < n && !(cls_at(s, n, i + 1, &l2) & LNW))
        j = i + 1;
    if (!(cls_at(s, n, j, &l2) & LNW)) {
        size_t k = run(s, n, j, LNW, 1);
        while (k < n && (s[k] == '\r' || s[k] == '\n'))
            k++;
        return k;
    }
    /* whitespace: up to and including its last newline, if it has one */
    size_t k = i, nl = 0;
    while (k < n && (cls_at(s, n, k, &l2) & KILN_UC_WS)) {
        if (s[k] == '\r' || s[k] == '\n')
            nl = k + 1;
        k += (size_t)l2;
    }
    if (nl)
        return nl;
    return ws_run(s, n, i);
}

static void split_regex(enc *e, span p, uint32_t re)
{
    const uint8_t *s = e->buf + p.off;
    for (size_t i = 0; i < p.len;) {
        size_t k = re == KILN_RE_GPT2 ? re_gpt2(s, p.len, i) : re_llama3(s, p.len, i, re == KILN_RE_LLAMA3 ? 3 : 1);
        if (k <= i) /* cannot happen: every alternative consumes; guards the loop */
            k = i + 1;
        push(&e->b, p.off + i, k - i, p.first && i == 0);
        i = k;
    }
}

/* Copies text into the arena after prefix (pn bytes); returns the new span. */
static span prepend(enc *e, span p, const uint8_t *pre, size_t pn)
{
    reserve(e, pn + p.len);
    memcpy(e->buf + e->blen, pre, pn);
    memcpy(e->buf + e->blen + pn, e->buf + p.off, p.len);
    span r = {e->blen, pn + p.len, p.first};
    e->blen += r.len;
    return r;
}

static void pre_metaspace(enc *e, span p, const uint32_t *o)
{
    const uint8_t *rep = pool(e->t, o[1]);
    size_t rn = o[2];
    reserve(e, (p.len + 1) * rn + rn);
    uint8_t *d = e->buf + e->blen;
    const uint8_t *s = e->buf + p.off;
    size_t m = 0;
    for (size_t i = 0; i < p.len; i++) {
        if (s[i] == ' ') {
            memcpy(d + m, rep, rn);
            m += rn;
        } else {
            d[m++] = s[i];
        }
    }
    int pre = o[3] == KILN_PREPEND_ALWAYS || (o[3] == KILN_PREPEND_FIRST && p.first);
    if (pre && !(m >= rn && memcmp(d, rep, rn) == 0)) {
        memmove(d + rn, d, m);
        memcpy(d, rep, rn);
        m += rn;
    }
    size_t base = e->blen;
    e->blen += m;
    if (!o[4]) {
        push(&e->b, base, m, p.first);
        return;
    }
    /* split before each replacement character (it stays with what follows) */
    size_t start = 0;
    for (size_t i = 1; i + rn <= m; i++)
        if (memcmp(d + i, rep, rn) == 0) {
            push(&e->b, base + start, i - start, p.first && start == 0);
            start = i;
        }
    push(&e->b, base + start, m - start, p.first && start == 0);
}

static int is_ascii_punct(uint8_t b)
{
    return (b >= 0x21 && b <= 0x2F) || (b >= 0x3A && b <= 0x40) || (b >= 0x5B && b <= 0x60) ||
           (b >= 0x7B && b <= 0x7E);
}

static void pre_apply(enc *e, const uint32_t *o, span p)
{
    const uint8_t *s = e->buf + p.off;
    int l;
    switch (o[0]) {
    case KILN_PRE_REGEX:
        split_regex(e, p, o[1]);
        break;
    case KILN_PRE_BYTELEVEL:
        if (o[1] && s[0] != ' ')
            p = prepend(e, p, (const uint8_t *)" ", 1);
        if (o[2])
            split_regex(e, p, KILN_RE_GPT2);
        else
            push(&e->b, p.off, p.len, p.first);
        break;
    case KILN_PRE_DIGITS: {
        /* individual: each digit alone; else runs of digits and non-digits alternate */
        size_t start = 0;
        int prev_num = -1;
        for (size_t i = 0; i < p.len; i += (size_t)l) {
            int num = (cls_at(s, p.len, i, &l) & KILN_UC_N) != 0;
            if ((num && o[1]) || (prev_num >= 0 && num != prev_num)) {
                push(&e->b, p.off + start, i - start, p.first && start == 0);
                start = i;
            }
            if (num && o[1]) {
                push(&e->b, p.off + i, (size_t)l, p.first && i == 0);
                start = i + (size_t)l;
            }
            prev_num = num;
        }
        push(&e->b, p.off + start, p.len - start, p.first && start == 0);
        break;
    }
    case KILN_PRE_METASPACE:
        pre_metaspace(e, p, o);
        break;
    case KILN_PRE_BERT:
    case KILN_PRE_WHITESPACE_SPLIT: {
        size_t start = 0;
        for (size_t i = 0; i < p.len;) {
            unsigned c = cls_at(s, p.len, i, &l);
            int punct = o[0] == KILN_PRE_BERT && (is_ascii_punct(s[i]) || (c & KILN_UC_P));
            if ((c & KILN_UC_WS) || punct) {
                push(&e->b, p.off + start, i - start, p.first && start == 0);
                if (punct)
                    push(&e->b, p.off + i, (size_t)l, p.first && i == 0);
                start = i + (size_t)l;
            }
            i += (size_t)l;
        }
        push(&e->b, p.off + start, p.len - start, p.first && start == 0);
        break;
    }
    case KILN_PRE_WHITESPACE: /* \w+|[^\w\s]+ */
        for (size_t i = 0; i < p.len;) {
            unsigned c = cls_at(s, p.len, i, &l);
            size_t k;
            if (c & WORD_CLS)
                k = run(s, p.len, i, WORD_CLS, 0);
            else if (!(c & KILN_UC_WS))
                k = run(s, p.len, i, WORD_CLS | KILN_UC_WS, 1);
            else {
                i += (size_t)l;
                continue;
            }
            push(&e->b, p.off + i, k - i, p.first && i == 0);
            i = k;
        }
        break;
    }
}

/* ---- models --------------------------------------------------------------- */

static int heap_less(const bmerge *a, const bmerge *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(enc *e, bmerge m)
{
    e->heap = grow(e->heap, &e->heapcap, e->nheap + 1, sizeof *e->heap);
    size_t i = e->nheap++;
    while (i > 0 && heap_less(&m, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = m;
}

static bmerge heap_pop(enc *e)
{
    bmerge top = e->heap[0], last = e->heap[--e->nheap];
    size_t i = 0, n = e->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && heap_less(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!heap_less(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n)
        e->heap[i] = last;
    return top;
}

static void push_pair(enc *e, int pos)
{
    int nx = e->sym[pos].next;
    if (nx < 0)
        return;
    int m = merge_find(e->t, (uint32_t)e->sym[pos].id, (uint32_t)e->sym[nx].id);
    if (m >= 0)
        heap_push(e, (bmerge){arr(e->t, KILN_TOKH_MERGES_OFF, 4 * (size_t)m + 3), pos,
                              (int)arr(e->t, KILN_TOKH_MERGES_OFF, 4 * (size_t)m + 2)});
}

/* BPE on one word: start from bytes (byte-level) or characters, then apply
 * the lowest-ranked merge present (leftmost on ties) until none applies.
 * A heap of candidate pairs keeps long words O(n log n). */
static void bpe_word(enc *e, const uint8_t *s, size_t n)
{
    const kiln_tokenizer *t = e->t;
    uint32_t fl = t->h[KILN_TOKH_FLAGS];
    if (fl & KILN_TOKF_IGNORE_MERGES) {
        int id = vocab_find(t, s, n);
        if (id >= 0) {
            emit(e, id);
            return;
        }
    }
    e->sym = grow(e->sym, &e->symcap, n, sizeof *e->sym);
    int ns = 0, unk = id_or_neg(t->h[KILN_TOKH_UNK]);
    for (size_t i = 0; i < n;) {
        /* units: bytes (byte-level) or characters; a unit missing from the
         * vocabulary becomes its <0xNN> tokens, else unk, else nothing */
        uint32_t c;
        int l = fl & KILN_TOKF_BYTE_UNITS ? 1 : kiln_utf8_next(s + i, n - i, &c);
        int id = fl & KILN_TOKF_BYTE_UNITS ? t->byte_tok[s[i]] : vocab_find(t, s + i, (size_t)l);
        if (id >= 0) {
            e->sym[ns++].id = id;
        } else {
            int all = (fl & KILN_TOKF_BYTE_FALLBACK) && !(fl & KILN_TOKF_BYTE_UNITS);
            for (int k = 0; k < l && all; k++)
                all = t->byte_tok[s[i + k]] >= 0;
            if (all) {
                for (int k = 0; k < l; k++)
                    e->sym[ns++].id = t->byte_tok[s[i + k]];
            } else if (unk >= 0 && !((fl & KILN_TOKF_FUSE_UNK) && ns && e->sym[ns - 1].id == unk)) {
                e->sym[ns++].id = unk;
            }
        }
        i += (size_t)l;
    }
    for (int k = 0; k < ns; k++) {
        e->sym[k].prev = k - 1;
        e->sym[k].next = k + 1 < ns ? k + 1 : -1;
    }
    e->nheap = 0;
    for (int k = 0; k + 1 < ns; k++)
        push_pair(e, k);
    while (e->nheap) {
        bmerge m = heap_pop(e);
        bsym *a = &e->sym[m.pos];
        if (a->id < 0 || a->next < 0)
            continue;
        bsym *b = &e->sym[a->next];
        /* stale entry: the pair changed since it was queued */
        int cur = merge_find(t, (uint32_t)a->id, (uint32_t)b->id);
        if (cur < 0 || (int)arr(t, KILN_TOKH_MERGES_OFF, 4 * (size_t)cur + 2) != m.result)
            continue;
        a->id = m.result;
        a->next = b->next;
        if (b->next >= 0)
            e->sym[b->next].prev = m.pos;
        b->id = -1;
        if (a->prev >= 0)
            push_pair(e, a->prev);
        push_pair(e, m.pos);
    }
    for (int k = ns ? 0 : -1; k >= 0; k = e->sym[k].next)
        emit(e, e->sym[k].id);
}

/* WordPiece: greedy longest match, continuation pieces carry the prefix;
 * a word with an unmatchable part (or too long) is one unk. */
static void wp_word(enc *e, const uint8_t *s, size_t n)
{
    const kiln_tokenizer *t = e->t;
    int unk = id_or_neg(t->h[KILN_TOKH_UNK]);
    size_t nchars = 0;
    for (size_t i = 0; i < n; i++)
        nchars += (s[i] & 0xC0) != 0x80;
    if (nchars > t->h[KILN_TOKH_WP_MAX_CHARS]) {
        emit(e, unk);
        return;
    }
    const uint8_t *pre = pool(t, t->h[KILN_TOKH_WP_PREFIX_OFF]);
    size_t pn = t->h[KILN_TOKH_WP_PREFIX_LEN];
    int64_t n0 = e->n;
    for (size_t start = 0; start < n;) {
        size_t end = n, ppn = start ? pn : 0;
        int found = -1;
        while (end > start) {
            if (end - start + ppn <= (size_t)t->max_tok_len) {
                found = vocab_find2(t, pre, ppn, s + start, end - start);
                if (found >= 0)
                    break;
            }
            end--;
            while (end > start && (s[end] & 0xC0) == 0x80)
                end--;
        }
        if (found < 0) {
            e->n = n0;
            emit(e, unk);
            return;
        }
        emit(e, found);
        start = end;
    }
}

/* Pre-tokenizes arena text (off, len) and runs the model on each word. */
static void pretok_model(enc *e, size_t off, size_t len, int first)
{
    const kiln_tokenizer *t = e->t;
    e->a.n = 0;
    push(&e->a, off, len, first);
    for (int i = 0; i < (int)t->h[KILN_TOKH_N_PRE]; i++) {
        uint32_t o[5];
        op_at(t, KILN_TOKH_PRE_OFF, i, o);
        e->b.n = 0;
        for (size_t k = 0; k < e->a.n; k++)
            pre_apply(e, o, e->a.v[k]);
        spans tmp = e->a;
        e->a = e->b;
        e->b = tmp;
    }
    for (size_t k = 0; k < e->a.n; k++) {
        span p = e->a.v[k];
        if (t->h[KILN_TOKH_MODEL] == KILN_TOK_WORDPIECE)
            wp_word(e, e->buf + p.off, p.len);
        else
            bpe_word(e, e->buf + p.off, p.len);
    }
}

/* ---- added tokens ----------------------------------------------------------- */


/* Finds the leftmost-longest added token of this phase in s[from, n).
 * Returns 1 with the token's span (whitespace swallowed by lstrip/rstrip
 * included) in [*ms, *me) and its id. */
static int added_next(const enc *e, const uint8_t *s, size_t n, size_t from, int normalized, size_t *ms,
                      size_t *me, int *id)
{
    const kiln_tokenizer *t = e->t;
    for (size_t i = from; i < n; i++) {
        for (int k = t->added_first[s[i]]; k < t->added_first[s[i] + 1]; k++) {
            uint32_t fl = arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)k + 1);
            uint32_t len = arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)k + 3);
            if (!(fl & KILN_ADDF_NORMALIZED) != !normalized)
                continue;
            if ((fl & KILN_ADDF_SPECIAL) && !(e->flags & KILN_TOK_PARSE_SPECIAL))
                continue;
            if (len > n - i || memcmp(s + i, pool(t, arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)k + 2)), len))
                continue;
            size_t a = i, b = i + len, st;
            int l;
            if ((fl & KILN_ADDF_SINGLE_WORD) &&
                ((i > 0 && (cls_before(s, i, &st) & (WORD_CLS | KILN_UC_N))) ||
                 (b < n && (cls_at(s, n, b, &l) & (WORD_CLS | KILN_UC_N)))))
                continue;
            if (fl & KILN_ADDF_LSTRIP)
                while (a > from && ws_before(s, a, &st))
                    a = st;
            if (fl & KILN_ADDF_RSTRIP)
                while (b < n) {
                    if (!(cls_at(s, n, b, &l) & KILN_UC_WS))
                        break;
                    b += (size_t)l;
                }
            *ms = a;
            *me = b;
            *id = (int)arr(t, KILN_TOKH_ADDED_OFF, 4 * (size_t)k);
            return 1;
        }
    }
    return 0;
}

/* One stretch of raw text between added tokens. */
static void encode_segment(enc *e, const uint8_t *s, size_t n, int first)
{
    if (!n)
        return;
    e->blen = 0;
    reserve(e, n);
    memcpy(e->buf, s, n);
    e->blen = n;
    size_t off = 0, len = n;
    normalize(e, &off, &len);
    if (!e->t->has_norm_added) {
        pretok_model(e, off, len, first);
        return;
    }
    /* tokens matched after normalization; the arena may move under pretok_model */
    size_t pos = 0, ms, me;
    int id;
    while (pos < len) {
        int found = added_next(e, e->buf + off, len, pos, 1, &ms, &me, &id);
        size_t stop = found ? ms : len;
        if (stop > pos) {
            size_t keep = e->blen;
            pretok_model(e, off + pos, stop - pos, first && pos == 0);
            e->blen = keep;
        }
        if (!found)
            break;
        emit(e, id);
        pos = me;
    }
}

int kiln_tok_encode(const kiln_tokenizer *t, const char *text, size_t len, int flags, int32_t *ids, int cap,
                    kiln_err *err)
{
    enc e = {.t = t, .flags = flags, .ids = ids, .cap = ids ? cap : 0};
    const uint8_t *s = (const uint8_t *)text;
    if (flags & KILN_TOK_ADD_SPECIAL)
        for (uint32_t i = 0; i < t->h[KILN_TOKH_N_PREFIX]; i++)
            emit(&e, (int)arr(t, KILN_TOKH_PREFIX_OFF, i));
    size_t pos = 0, ms, me;
    int id;
    while (pos < len) {
        int found = added_next(&e, s, len, pos, 0, &ms, &me, &id);
        size_t stop = found ? ms : len;
        encode_segment(&e, s + pos, stop - pos, pos == 0);
        if (!found)
            break;
        emit(&e, id);
        pos = me;
    }
    if (flags & KILN_TOK_ADD_SPECIAL)
        for (uint32_t i = 0; i < t->h[KILN_TOKH_N_SUFFIX]; i++)
            emit(&e, (int)arr(t, KILN_TOKH_SUFFIX_OFF, i));
    free(e.buf);
    free(e.a.v);
    free(e.b.v);
    free(e.cp);
    free(e.cp2);
    free(e.sym);
    free(e.heap);
    if (e.n > INT_MAX)
        return kiln_errf(err, "tokenizer: text gives %lld tokens, more than fit an int", (long long)e.n);
    return (int)e.n;
}

/* ---- decoding ------------------------------------------------------------------ */

/* Bytes one token's text can grow to through the decoder ops. */
static size_t dec_work(const kiln_tokenizer *t)
{
    size_t b = (size_t)t->max_tok_len + 1;
    for (int i = 0; i < (int)t->h[KILN_TOKH_N_DEC]; i++) {
        uint32_t o[5];
        op_at(t, KILN_TOKH_DEC_OFF, i, o);
        if (o[0] == KILN_DEC_REPLACE && o[4] > o[2])
            b += b / o[2] * (o[4] - o[2]);
        if (o[0] == KILN_DEC_WORDPIECE)
            b += 1;
    }
    return b + 8;
}

size_t kiln_tok_stream_bound(const kiln_tokenizer *t)
{
    size_t w = dec_work(t);
    return 3 * (w + 4) + 2 * w + 16;
}

void kiln_tok_stream_init(kiln_tok_stream *s, const kiln_tokenizer *t, int flags)
{
    memset(s, 0, sizeof *s);
    s->t = t;
    s->flags = flags;
    int fused = 0;
    for (int i = 0; i < (int)t->h[KILN_TOKH_N_DEC]; i++) {
        uint32_t o[5];
        op_at(t, KILN_TOKH_DEC_OFF, i, o);
        if (o[0] == KILN_DEC_FUSE)
            fused = 1;
        if (o[0] == KILN_DEC_STRIP && fused)
            s->strip_left = (int)o[2];
    }
}

/* Range the next byte of a sequence starting pend[0] must fall in. */
static void utf8_next_range(const uint8_t *pend, int npend, int *lo, int *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (npend == 1) {
        if (pend[0] == 0xE0)
            *lo = 0xA0;
        else if (pend[0] == 0xED)
            *hi = 0x9F;
        else if (pend[0] == 0xF0)
            *lo = 0x90;
        else if (pend[0] == 0xF4)
            *hi = 0x8F;
    }
}

static int utf8_seq_len(uint8_t b)
{
    if (b >= 0xC2 && b <= 0xDF)
        return 2;
    if (b >= 0xE0 && b <= 0xEF)
        return 3;
    if (b >= 0xF0 && b <= 0xF4)
        return 4;
    return 0;
}

static const uint8_t FFFD[3] = {0xEF, 0xBF, 0xBD};

/* Appends bytes to the output, completing/holding back UTF-8 sequences;
 * each maximal invalid subpart becomes one U+FFFD (as Python and Rust's
 * lossy decoders do). Returns the bytes written at out. */
static size_t utf8_feed(kiln_tok_stream *s, const uint8_t *src, size_t n, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint8_t b = src[i];
        if (s->npend) {
            int lo, hi;
            utf8_next_range(s->pend, s->npend, &lo, &hi);
            if (b >= lo && b <= hi) {
                s->pend[s->npend++] = b;
                i++;
                if (s->npend == utf8_seq_len(s->pend[0])) {
                    memcpy(out + o, s->pend, (size_t)s->npend);
                    o += (size_t)s->npend;
                    s->npend = 0;
                }
                continue;
            }
            memcpy(out + o, FFFD, 3); /* b is looked at again as a fresh byte */
            o += 3;
            s->npend = 0;
            continue;
        }
        i++;
        if (b < 0x80)
            out[o++] = b;
        else if (utf8_seq_len(b))
            s->pend[s->npend++] = b;
        else {
            memcpy(out + o, FFFD, 3);
            o += 3;
        }
    }
    return o;
}

/* Drops up to `max` copies of code point cp from the start of x. */
static size_t strip_front(uint8_t *x, size_t n, uint32_t cp, int max, int *stripped)
{
    uint8_t enc8[4];
    size_t l = (size_t)kiln_utf8_put(cp, enc8), k = 0;
    int c = 0;
    while (c < max && k + l <= n && memcmp(x + k, enc8, l) == 0)
        k += l, c++;
    memmove(x, x + k, n - k);
    if (stripped)
        *stripped = c;
    return n - k;
}

static const char *const wp_cleanup[][2] = {
    {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
    {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
};

int kiln_tok_stream_put(kiln_tok_stream *s, int id, char *out_, size_t cap)
{
    const kiln_tokenizer *t = s->t;
    if (id < 0 || id >= t->n_vocab || cap < kiln_tok_stream_bound(t))
        return -1;
    int attr = kiln_tok_attr(t, id);
    if ((s->flags & KILN_TOK_SKIP_SPECIAL) && (attr & KILN_TOKA_SPECIAL))
        return 0;
    size_t w = dec_work(t);
    uint8_t *out = (uint8_t *)out_, *x = out + 3 * (w + 4), *y = x + w, *tmp;
    size_t n;
    const uint8_t *p = tok_str(t, id, &n);
    memcpy(x, p, n);
    int fused = 0;
    for (int i = 0; i < (int)t->h[KILN_TOKH_N_DEC]; i++) {
        uint32_t o[5];
        op_at(t, KILN_TOKH_DEC_OFF, i, o);
        switch (o[0]) {
        case KILN_DEC_WORDPIECE: {
            const uint8_t *pre = pool(t, o[1]);
            if (s->ntok > 0) {
                if (n >= o[2] && memcmp(x, pre, o[2]) == 0) {
                    memmove(x, x + o[2], n - o[2]);
                    n -= o[2];
                } else {
                    memmove(x + 1, x, n);
                    x[0] = ' ';
                    n++;
                }
            }
            if (o[3])
                for (size_t k = 0; k < sizeof wp_cleanup / sizeof *wp_cleanup; k++) {
                    const char *a = wp_cleanup[k][0], *b = wp_cleanup[k][1];
                    n = replace_all(x, n, (const uint8_t *)a, strlen(a), (const uint8_t *)b, strlen(b), y);
                    tmp = x, x = y, y = tmp;
                }
            break;
        }
        case KILN_DEC_METASPACE:
            if (s->ntok == 0 && o[3] != KILN_PREPEND_NEVER)
                n = replace_all(x, n, pool(t, o[1]), o[2], (const uint8_t *)"", 0, y);
            else
                n = replace_all(x, n, pool(t, o[1]), o[2], (const uint8_t *)" ", 1, y);
            tmp = x, x = y, y = tmp;
            break;
        case KILN_DEC_REPLACE:
            n = replace_all(x, n, pool(t, o[1]), o[2], pool(t, o[3]), o[4], y);
            tmp = x, x = y, y = tmp;
            break;
        case KILN_DEC_BYTE_FALLBACK:
            if (attr & KILN_TOKA_BYTE) {
                unsigned v = 0;
                for (int k = 3; k < 5; k++) {
                    int c = p[k] | 0x20;
                    v = v * 16 + (unsigned)(c <= '9' ? c - '0' : c - 'a' + 10);
                }
                x[0] = (uint8_t)v;
                n = 1;
            }
            break;
        case KILN_DEC_FUSE:
            fused = 1;
            break;
        case KILN_DEC_STRIP:
            if (fused) {
                int c = 0;
                if (s->strip_left > 0)
                    n = strip_front(x, n, o[1], s->strip_left, &c);
                s->strip_left -= c;
                if (n)
                    s->strip_left = 0;
            } else {
                n = strip_front(x, n, o[1], (int)o[2], NULL);
                uint8_t e8[4];
                size_t l = (size_t)kiln_utf8_put(o[1], e8);
                for (uint32_t c = 0; c < o[3] && n >= l && memcmp(x + n - l, e8, l) == 0; c++)
                    n -= l;
            }
            break;
        default: /* KILN_DEC_BYTELEVEL: the vocabulary already holds bytes */
            break;
        }
    }
    s->ntok++;
    return (int)utf8_feed(s, x, n, out);
}

int kiln_tok_stream_flush(kiln_tok_stream *s, char *out, size_t cap)
{
    if (!s->npend || cap < 3)
        return 0;
    memcpy(out, FFFD, 3);
    s->npend = 0;
    return 3;
}

long kiln_tok_decode(const kiln_tokenizer *t, const int32_t *ids, int n, int flags, char *out, size_t cap,
                     kiln_err *err)
{
    kiln_tok_stream st;
    kiln_tok_stream_init(&st, t, flags);
    size_t bound = kiln_tok_stream_bound(t), total = 0;
    char *tmp = kiln_xmalloc(bound);
    for (int i = 0; i <= n; i++) {
        int k;
        if (i < n) {
            k = kiln_tok_stream_put(&st, ids[i], tmp, bound);
            if (k < 0) {
                free(tmp);
                return kiln_errf(err, "token id %d out of range (vocabulary has %d)", (int)ids[i], t->n_vocab);
            }
        } else {
            k = kiln_tok_stream_flush(&st, tmp, bound);
        }
        if (cap && total < cap - 1) {
            size_t c = (size_t)k < cap - 1 - total ? (size_t)k : cap - 1 - total;
            memcpy(out + total, tmp, c);
        }
        total += (size_t)k;
    }
    if (cap)
        out[total < cap - 1 ? total : cap - 1] = 0;
    free(tmp);
    return (long)total;
}
