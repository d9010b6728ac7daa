/* kiln_tokenizer.h - the tokenizer runtime: text -> token ids -> text.
 *
 * A tokenizer is a self-contained little-endian blob built at compile time
 * by frontend/tokenizer_import.c (from tokenizer.json or GGUF metadata) and
 * embedded in the artifact. kiln_tok_load checks the blob once and then
 * reads it in place: no copy, no allocation; the blob must outlive the
 * kiln_tokenizer. The byte layout is documented in docs/tokenizers.md.
 *
 * Supported: byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM pre-tokenizers),
 * BPE over characters with byte fallback (SentencePiece/Llama-2 style) and
 * WordPiece (BERT). Encoding allocates a few scratch buffers per call; the
 * kiln_tokenizer itself is read-only, so one may be shared by threads. */
#ifndef KILN_TOKENIZER_H
#define KILN_TOKENIZER_H

#include "kiln_common.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- blob format ------------------------------------------------------- */

#define KILN_TOK_MAGIC 0x4b4f544bu /* "KTOK" read as a little-endian u32 */
#define KILN_TOK_VERSION 1u
#define KILN_TOK_NONE 0xffffffffu /* absent id */

/* The blob starts with KILN_TOKH_COUNT u32 header fields, in this order.
 * *_OFF fields are byte offsets from the blob start (4-byte aligned);
 * strings are (offset, length) pairs into the string pool. */
enum kiln_tok_hdr {
    KILN_TOKH_MAGIC,
    KILN_TOKH_VERSION,
    KILN_TOKH_SIZE,      /* total blob bytes */
    KILN_TOKH_MODEL,     /* KILN_TOK_BPE / KILN_TOK_WORDPIECE */
    KILN_TOKH_FLAGS,     /* KILN_TOKF_* */
    KILN_TOKH_N_VOCAB,
    KILN_TOKH_UNK,       /* special ids or KILN_TOK_NONE */
    KILN_TOKH_BOS,
    KILN_TOKH_EOS,
    KILN_TOKH_PAD,
    KILN_TOKH_WP_MAX_CHARS, /* WordPiece: longer words become unk */
    KILN_TOKH_WP_PREFIX_OFF, /* WordPiece continuing-subword prefix ("##") */
    KILN_TOKH_WP_PREFIX_LEN,
    KILN_TOKH_POOL_OFF,  /* string pool */
    KILN_TOKH_POOL_LEN,
    KILN_TOKH_TOKS_OFF,  /* u32[n_vocab + 1]: token i is pool[toks[i] .. toks[i+1]) */
    KILN_TOKH_ATTR_OFF,  /* u8[n_vocab]: KILN_TOKA_* */
    KILN_TOKH_VHASH_OFF, /* u32[vhash_cap]: id + 1 or 0 (empty); FNV-1a, linear probing */
    KILN_TOKH_VHASH_CAP, /* power of two */
    KILN_TOKH_MERGES_OFF, /* u32[4 * n_merges]: left id, right id, merged id, rank */
    KILN_TOKH_N_MERGES,
    KILN_TOKH_MHASH_OFF, /* u32[mhash_cap]: merge index + 1 or 0 */
    KILN_TOKH_MHASH_CAP, /* power of two (0 when there are no merges) */
    KILN_TOKH_ADDED_OFF, /* u32[4 * n_added]: id, KILN_ADDF_* flags, match string off, len */
    KILN_TOKH_N_ADDED,   /* sorted by first byte of the match string, then longest first */
    KILN_TOKH_NORM_OFF,  /* normalizer ops: u32[5 * n] {KILN_NORM_*, a, b, c, d} */
    KILN_TOKH_N_NORM,
    KILN_TOKH_PRE_OFF,   /* pre-tokenizer ops: u32[5 * n] {KILN_PRE_*, a, b, c, d} */
    KILN_TOKH_N_PRE,
    KILN_TOKH_DEC_OFF,   /* decoder ops: u32[5 * n] {KILN_DEC_*, a, b, c, d} */
    KILN_TOKH_N_DEC,
    KILN_TOKH_PREFIX_OFF, /* u32[n]: ids put before the text when adding specials */
    KILN_TOKH_N_PREFIX,
    KILN_TOKH_SUFFIX_OFF, /* u32[n]: ids put after it */
    KILN_TOKH_N_SUFFIX,
    KILN_TOKH_CHAT_KIND, /* KILN_CHAT_* */
    KILN_TOKH_CHAT_SYS_OFF, /* default system prompt of the template ("" if none) */
    KILN_TOKH_CHAT_SYS_LEN,
    KILN_TOKH_CHAT_SRC_OFF, /* start of the template source, for error messages */
    KILN_TOKH_CHAT_SRC_LEN,
    KILN_TOKH_COUNT
};

enum { KILN_TOK_BPE = 1, KILN_TOK_WORDPIECE = 2 };

/* Hashes of the two lookup tables (the importer builds them with these). */
#define KILN_TOK_HASH_INIT 2166136261u
/* FNV-1a over bytes, continuing from h (so a prefix can be hashed apart). */
static inline uint32_t kiln_tok_hash(uint32_t h, const void *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}
static inline uint32_t kiln_tok_pair_hash(uint32_t a, uint32_t b)
{
    uint64_t x = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(x >> 32) ^ (uint32_t)x;
}

/* model flags */
enum {
    KILN_TOKF_BYTE_UNITS = 1,    /* BPE starts from bytes (byte-level BPE) rather than characters */
    KILN_TOKF_BYTE_FALLBACK = 2, /* characters missing from the vocab become <0xNN> tokens */
    KILN_TOKF_FUSE_UNK = 4,      /* consecutive unknown characters give one unk */
    KILN_TOKF_IGNORE_MERGES = 8, /* a pre-token found whole in the vocab is one token */
};

/* token attributes */
enum {
    KILN_TOKA_SPECIAL = 1, /* control token: skipped by KILN_TOK_SKIP_SPECIAL */
    KILN_TOKA_ADDED = 2,   /* listed in the added-token table */
    KILN_TOKA_BYTE = 4,    /* <0xNN> byte-fallback token */
    KILN_TOKA_UNUSED = 8,  /* hole in the id space */
};

/* added-token flags */
enum {
    KILN_ADDF_SPECIAL = 1,    /* matched only with KILN_TOK_PARSE_SPECIAL */
    KILN_ADDF_NORMALIZED = 2, /* matched in normalized text (match string is normalized) */
    KILN_ADDF_LSTRIP = 4,     /* swallows whitespace on its left */
    KILN_ADDF_RSTRIP = 8,     /* ... and on its right */
    KILN_ADDF_SINGLE_WORD = 16, /* matched only when not inside a word */
};

/* normalizer ops (strings are pool (off, len) pairs) */
enum {
    KILN_NORM_BERT = 1,     /* a: KILN_BERT_* flags */
    KILN_NORM_LOWERCASE,
    KILN_NORM_STRIP_ACCENTS, /* drops combining marks (M) */
    KILN_NORM_NFD,
    KILN_NORM_NFC,
    KILN_NORM_PREPEND,      /* a,b: string prepended to non-empty text */
    KILN_NORM_REPLACE,      /* a,b: pattern; c,d: replacement */
    KILN_NORM_STRIP,        /* a: strip leading whitespace, b: trailing */
};
enum { KILN_BERT_CLEAN = 1, KILN_BERT_CHINESE = 2, KILN_BERT_STRIP_ACCENTS = 4, KILN_BERT_LOWERCASE = 8 };

/* pre-tokenizer ops */
enum {
    KILN_PRE_REGEX = 1,    /* a: KILN_RE_*; splits into the regex's matches */
    KILN_PRE_BYTELEVEL,    /* a: add_prefix_space, b: use the GPT-2 regex */
    KILN_PRE_DIGITS,       /* a: each digit alone (else runs of digits) */
    KILN_PRE_METASPACE,    /* a,b: replacement; c: KILN_PREPEND_*; d: split on it */
    KILN_PRE_BERT,         /* whitespace removed, punctuation isolated */
    KILN_PRE_WHITESPACE_SPLIT, /* whitespace removed */
    KILN_PRE_WHITESPACE,   /* \w+|[^\w\s]+ */
};
enum { KILN_RE_GPT2 = 1, KILN_RE_LLAMA3, KILN_RE_QWEN2 };
enum { KILN_PREPEND_NEVER = 0, KILN_PREPEND_FIRST = 1, KILN_PREPEND_ALWAYS = 2 };

/* decoder ops, applied per token in order */
enum {
    KILN_DEC_BYTELEVEL = 1, /* nothing to do: byte-level vocabularies are stored as bytes */
    KILN_DEC_WORDPIECE,     /* a,b: prefix; c: cleanup spaces before punctuation */
    KILN_DEC_METASPACE,     /* a,b: replacement; c: KILN_PREPEND_* */
    KILN_DEC_REPLACE,       /* a,b: pattern; c,d: replacement */
    KILN_DEC_BYTE_FALLBACK, /* <0xNN> tokens become the byte */
    KILN_DEC_FUSE,          /* later ops see the concatenated text */
    KILN_DEC_STRIP,         /* a: code point; b: strip that many at the start; c: at the end */
};

enum { KILN_CHAT_NONE = 0, KILN_CHAT_CHATML = 1, KILN_CHAT_LLAMA2 = 2, KILN_CHAT_LLAMA3 = 3,
       KILN_CHAT_UNKNOWN = 255 };

/* ---- loaded tokenizer --------------------------------------------------- */

typedef struct kiln_tokenizer {
    const uint8_t *blob;
    size_t size;
    uint32_t h[KILN_TOKH_COUNT]; /* header fields */
    int n_vocab;
    int byte_tok[256];     /* byte -> its token (byte-level) or <0xNN> token; -1 if none */
    int added_first[257];  /* added-table index range for each first byte */
    int max_tok_len;       /* longest token string in bytes */
    int has_norm_added;    /* some added token is matched after normalization */
} kiln_tokenizer;

/* Checks the blob and prepares t. Never reads outside [blob, blob + len). */
int kiln_tok_load(kiln_tokenizer *t, const void *blob, size_t len, kiln_err *err);

int kiln_tok_n_vocab(const kiln_tokenizer *t);
int kiln_tok_bos(const kiln_tokenizer *t); /* -1 when absent */
int kiln_tok_eos(const kiln_tokenizer *t);
int kiln_tok_unk(const kiln_tokenizer *t);
int kiln_tok_attr(const kiln_tokenizer *t, int id);
/* The token's vocabulary string (raw bytes for byte-level BPE; with "▁" and
 * "##" markers for SentencePiece and WordPiece). NULL for a bad id. */
const char *kiln_tok_piece(const kiln_tokenizer *t, int id, size_t *len);
/* Id of a vocabulary string, or -1. */
int kiln_tok_find(const kiln_tokenizer *t, const char *s, size_t len);
const char *kiln_tok_model_name(const kiln_tokenizer *t); /* "bpe", "bpe-bytelevel", "wordpiece" */

/* ---- encoding ---------------------------------------------------------- */

enum {
    KILN_TOK_ADD_SPECIAL = 1,   /* add BOS/EOS or the [CLS] ... [SEP] template */
    KILN_TOK_PARSE_SPECIAL = 2, /* special tokens written in the text are recognized */
    KILN_TOK_SKIP_SPECIAL = 4,  /* decoding leaves out special tokens */
};

/* Encodes len bytes of text (invalid UTF-8 is tolerated). Writes at most
 * cap ids and returns how many the text has: call again with a larger
 * buffer if that exceeds cap. -1 with err set if the count overflows int. */
int kiln_tok_encode(const kiln_tokenizer *t, const char *text, size_t len, int flags,
                    int32_t *ids, int cap, kiln_err *err);

/* Applies the normalizer to text: out is malloc'd (caller frees), NUL-terminated. */
char *kiln_tok_normalize(const kiln_tokenizer *t, const char *text, size_t len, size_t *out_len);

/* ---- decoding ----------------------------------------------------------- */

/* Streaming decoder: feed ids one at a time; the output is always valid
 * UTF-8 because a character split across tokens is held back until it is
 * complete (invalid bytes become U+FFFD). */
typedef struct kiln_tok_stream {
    const kiln_tokenizer *t;
    int flags;       /* KILN_TOK_SKIP_SPECIAL */
    int64_t ntok;    /* tokens decoded so far (skipped ones not counted) */
    int strip_left;  /* code points still to strip at the start of the fused text */
    int npend;
    uint8_t pend[4]; /* incomplete UTF-8 sequence held back */
} kiln_tok_stream;

void kiln_tok_stream_init(kiln_tok_stream *s, const kiln_tokenizer *t, int flags);
/* Most bytes one kiln_tok_stream_put or _flush can write. */
size_t kiln_tok_stream_bound(const kiln_tokenizer *t);
/* Decodes one token into out (cap >= kiln_tok_stream_bound); returns the
 * bytes written (not NUL-terminated), or -1 for an id out of range. */
int kiln_tok_stream_put(kiln_tok_stream *s, int id, char *out, size_t cap);
/* Ends the stream: an incomplete trailing sequence becomes U+FFFD. */
int kiln_tok_stream_flush(kiln_tok_stream *s, char *out, size_t cap);

/* Decodes n ids into out like snprintf: writes at most cap bytes including
 * a NUL and returns the full length; -1 with err set for a bad id. */
long kiln_tok_decode(const kiln_tokenizer *t, const int32_t *ids, int n, int flags, char *out,
                     size_t cap, kiln_err *err);

/* ---- chat templates ------------------------------------------------------ */

typedef struct kiln_chat_msg {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} kiln_chat_msg;

const char *kiln_chat_kind_name(int kind);
/* Renders the conversation as the model's chat template would (the blob
 * records which known template the model ships), ending with the assistant
 * header when add_assistant. Like snprintf: returns the full length; -1 with
 * err set when the model has no or an unrecognized template. */
long kiln_chat_format(const kiln_tokenizer *t, const kiln_chat_msg *msgs, int n, int add_assistant,
                      char *out, size_t cap, kiln_err *err);

/* ---- Unicode helpers (common/unicode.c) -------------------------------- */

enum {
    KILN_UC_L = 1, KILN_UC_N = 2, KILN_UC_ND = 4, KILN_UC_P = 8, KILN_UC_PC = 16,
    KILN_UC_M = 32, KILN_UC_MN = 64, KILN_UC_WS = 128, /* White_Space property */
    KILN_UC_C = 256,     /* Cc Cf Co Cs */
    KILN_UC_WORD = 512,  /* \w of the Whitespace pre-tokenizer: alphabetic, marks, Nd, Pc, joiners */
    KILN_UC_CN = 1024    /* unassigned */
};
#define KILN_UC_INVALID 0x110000u /* what kiln_utf8_next yields for a bad byte */

/* Decodes the code point at s[0..n) (n >= 1): returns its length in bytes;
 * a malformed or truncated sequence is one byte long and gives KILN_UC_INVALID. */
int kiln_utf8_next(const uint8_t *s, size_t n, uint32_t *cp);
int kiln_utf8_put(uint32_t cp, uint8_t *out); /* returns 1..4 */
unsigned kiln_uc_class(uint32_t cp);          /* KILN_UC_* bits */
/* Lowercase mapping; writes 1 or 2 code points into out and returns the count. */
int kiln_uc_lower(uint32_t cp, uint32_t out[2]);
int kiln_uc_ccc(uint32_t cp); /* canonical combining class */
/* Full canonical decomposition of cp into out (at most 4); returns the count. */
int kiln_uc_decompose(uint32_t cp, uint32_t out[4]);
/* Primary composite of a + b, or 0. */
uint32_t kiln_uc_compose(uint32_t a, uint32_t b);
/* NFD of n code points into out (room for 4 * n); returns the count. */
size_t kiln_uc_nfd(const uint32_t *in, size_t n, uint32_t *out);
/* Composes NFD text in place (giving NFC); returns the new count. */
size_t kiln_uc_nfc(uint32_t *cps, size_t n);
extern const char kiln_uc_version[];

#ifdef __cplusplus
}
#endif
#endif
