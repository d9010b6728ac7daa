/* kiln_tokenizer_import.h - builds tokenizer blobs (the format the runtime's
 * kiln_tokenizer.h reads; see docs/tokenizers.md) from the files models
 * ship: Hugging Face tokenizer.json (+ tokenizer_config.json for the chat
 * template and BOS/EOS) or the tokenizer.ggml.* metadata of a GGUF file. */
#ifndef KILN_TOKENIZER_IMPORT_H
#define KILN_TOKENIZER_IMPORT_H

#include "kiln_common.h"
#include "kiln_gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* path: a tokenizer.json, a directory holding one, a .gguf file, or a .ktok
 * blob (checked and copied). On success *blob is malloc'd (caller frees). */
int kiln_tokenizer_import(const char *path, uint8_t **blob, size_t *len, kiln_err *err);

/* From an open GGUF file's metadata. */
int kiln_tokenizer_import_gguf(const kiln_gguf *g, uint8_t **blob, size_t *len, kiln_err *err);

/* From tokenizer.json text; config_json (tokenizer_config.json text) may be
 * NULL. name is used in error messages. */
int kiln_tokenizer_import_json(const char *json, size_t json_len, const char *config_json, const char *name,
                               uint8_t **blob, size_t *len, kiln_err *err);

/* Which known chat template (KILN_CHAT_*) a Jinja template source is. For
 * ChatML, *default_system receives the system prompt the template inserts
 * when the conversation has none (malloc'd, or NULL when it has none). */
int kiln_chat_detect(const char *tmpl, size_t len, char **default_system);

#ifdef __cplusplus
}
#endif
#endif
