/* cmd_ir.c - `kiln ir`: load, verify, optionally run passes, print the IR. */
#include "cli.h"
#include "kiln_passes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses NAME=VALUE symbol bindings into the pass options. */
int kiln_cli_parse_bind(kiln_pass_opts *o, char *arg)
{
    char *eq = strchr(arg, '=');
    if (!eq || o->n_bind == 16)
        return -1;
    *eq = 0;
    char *end;
    long long v = strtoll(eq + 1, &end, 10);
    if (*end || v < 0)
        return -1;
    o->bind_names[o->n_bind] = arg;
    o->bind_vals[o->n_bind++] = v;
    return 0;
}

int kiln_cmd_ir(int argc, char **argv)
{
    const char *path = NULL, *pipeline = NULL, *format = "text";
    int verify = 1, list = 0;
    kiln_pass_opts o;
    memset(&o, 0, sizeof o);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-verify") == 0)
            verify = 0;
        else if (strcmp(argv[i], "--verify-each") == 0)
            o.verify_each = 1;
        else if (strcmp(argv[i], "--list-passes") == 0)
            list = 1;
        else if (strcmp(argv[i], "-v") == 0)
            o.verbose = 1;
        else if (strcmp(argv[i], "--passes") == 0 && i + 1 < argc)
            pipeline = argv[++i];
        else if (strncmp(argv[i], "--passes=", 9) == 0)
            pipeline = argv[i] + 9;
        else if (strcmp(argv[i], "--after") == 0 && i + 1 < argc)
            o.dump_after = argv[++i];
        else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
            format = argv[++i];
        else if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc) {
            if (kiln_cli_parse_bind(&o, argv[++i])) {
                fprintf(stderr, "kiln ir: --bind takes SYMBOL=SIZE\n");
                return KILN_EXIT_INPUT;
            }
        } else if (argv[i][0] == '-' && argv[i][1])
            return kiln_cli_usage("ir");
        else if (!path)
            path = argv[i];
        else
            return kiln_cli_usage("ir");
    }
    if (list) {
        printf("default pipeline: %s\n", kiln_default_pipeline());
        for (int i = 0; i < kiln_pass_count(); i++)
            printf("  %-14s %s\n", kiln_pass_at(i)->name, kiln_pass_at(i)->doc);
        return 0;
    }
    if (!path || (strcmp(format, "text") != 0 && strcmp(format, "json") != 0))
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
    if (pipeline || o.dump_after || o.verify_each) {
        if (kiln_run_pipeline(&g, pipeline, &o, &err)) {
            fprintf(stderr, "%s: %s\n", path, err.msg);
            kiln_graph_free(g);
            return KILN_EXIT_INPUT;
        }
    }
    if (strcmp(format, "json") == 0) {
        kiln_sb sb = {0};
        kiln_print_json(g, &sb);
        fwrite(sb.s, 1, sb.len, stdout);
        kiln_sb_free(&sb);
    } else {
        kiln_print_file(g, stdout);
    }
    kiln_graph_free(g);
    return 0;
}
