/* load.c - opens a model file of any supported format as a graph. */
#include "cli.h"
#include "kiln_models.h"
#include "kiln_onnx.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

kiln_graph *kiln_cli_load(const char *path, kiln_err *err)
{
    if (ends_with(path, ".kir"))
        return kiln_parse_file(path, err);
    if (ends_with(path, ".onnx"))
        return kiln_import_onnx(path, NULL, err);
    /* checkpoints: GGUF, llama2.c .bin, Hugging Face folders with config.json */
    if (ends_with(path, ".gguf"))
        return kiln_import_gguf(path, err);
    if (ends_with(path, ".bin"))
        return kiln_import_llama2c(path, err);
    struct stat st;
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && stat(cfg, &st) == 0)
        return kiln_import_hf(path, err);
    kiln_errf(err, "%s: unrecognized model format (expected .kir, .onnx, .gguf, .bin (llama2.c) or a "
              "folder with config.json)", path);
    return NULL;
}
