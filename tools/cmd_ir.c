/* cmd_ir.c - `kiln ir`: load, verify and print a model's IR. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kiln_cmd_ir(int argc, char **argv)
{
    const char *path = NULL;
    int verify = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-verify") == 0)
            verify = 0;
        else if (argv[i][0] == '-' && argv[i][1])
            return kiln_cli_usage("ir");
        else if (!path)
            path = argv[i];
        else
            return kiln_cli_usage("ir");
    }
    if (!path)
        return kiln_cli_usage("ir");
    kiln_err err = {{0}};
    kiln_graph *g = kiln_cli_load(path, &err);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return KILN_EXIT_INPUT;
    }
    if (verify && kiln_verify(g, &err)) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        kiln_graph_free(g);
        return KILN_EXIT_INPUT;
    }
    kiln_print_file(g, stdout);
    kiln_graph_free(g);
    return 0;
}
