/* load.c - opens a model file of any supported format as a graph. */
#include "cli.h"

#include <string.h>

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

kiln_graph *kiln_cli_load(const char *path, kiln_err *err)
{
    if (ends_with(path, ".kir"))
        return kiln_parse_file(path, err);
    kiln_errf(err, "%s: unrecognized model format (expected .kir)", path);
    return NULL;
}
