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

#define MEMORY_TOP 10 /* largest buffers listed by --memory */

/* `kiln ir --memory`: how well the planner packs the arena. Lines are
 * "key: value" so scripts can read them. */
static void memory_report(const kiln_graph *g, const kiln_plan *p)
{
    printf("memory plan of graph \"%s\" (%d nodes", g->name ? g->name : "", g->n_nodes);
    for (int i = 0; i < p->n_syms; i++)
        printf("%s%s=%lld", i ? " " : "; bounds ", g->syms.syms[p->sym_id[i]].name,
               (long long)p->sym_max[i]);
    printf(")\n");
    printf("peak arena bytes: %lld\n", (long long)p->arena_bytes);
    printf("naive sum bytes: %lld\n", (long long)p->naive_bytes);
    printf("lower bound bytes: %lld\n", (long long)p->lower_bound);
    if (p->naive_bytes > 0)
        printf("peak / naive: %.4f\n", (double)p->arena_bytes / (double)p->naive_bytes);
    else
        printf("peak / naive: n/a\n");
    if (p->lower_bound > 0)
        printf("peak / lower bound: %.4f\n", (double)p->arena_bytes / (double)p->lower_bound);
    else
        printf("peak / lower bound: n/a\n");
    int n_arena = 0, n_alias = 0, n_fused = 0;
    for (int v = 0; v < p->n_values; v++) {
        n_arena += p->bufs[v].kind == KILN_BUF_ARENA;
        n_alias += p->bufs[v].kind == KILN_BUF_ALIAS;
        n_fused += p->bufs[v].kind == KILN_BUF_NONE;
    }
    printf("arena buffers: %d\naliased values: %d\nvalues inside fused kernels: %d\n", n_arena, n_alias,
           n_fused);
    printf("weights bytes: %lld\n", (long long)p->weights_bytes);
    if (!n_arena)
        return;
    /* the largest by selection: MEMORY_TOP passes over the values */
    char *taken = kiln_xcalloc((size_t)p->n_values + 1, 1);
    printf("largest buffers:\n  %12s %12s %11s  value (producer)\n", "bytes", "offset", "nodes");
    for (int r = 0; r < MEMORY_TOP && r < n_arena; r++) {
        int best = -1;
        for (int v = 0; v < p->n_values; v++)
            if (p->bufs[v].kind == KILN_BUF_ARENA && !taken[v] &&
                (best < 0 || p->bufs[v].bytes > p->bufs[best].bytes))
                best = v;
        taken[best] = 1;
        const kiln_buf *b = &p->bufs[best];
        char label[256], span[32];
        snprintf(span, sizeof span, "%d..%d", b->first, b->last);
        const kiln_node *n = &g->nodes[g->values[best].producer];
        printf("  %12lld %12lld %11s  %%%s (%s)\n", (long long)b->bytes, (long long)b->offset, span,
               g->values[best].name, kiln_node_label(g, n, label, sizeof label));
    }
    free(taken);
}

int kiln_cmd_ir(int argc, char **argv)
{
    const char *path = NULL, *pipeline = NULL, *format = "text";
    int verify = 1, list = 0, memory = 0;
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
        else if (strcmp(argv[i], "--memory") == 0)
            memory = 1;
        else if (strcmp(argv[i], "--passes") == 0 && i + 1 < argc)
            pipeline = argv[++i];
        else if (strncmp(argv[i], "--passes=", 9) == 0)
            pipeline = argv[i] + 9;
        else if (strcmp(argv[i], "--after") == 0 && i + 1 < argc)
            o.dump_after = argv[++i];
        else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
            format = argv[++i];
        else if ((strcmp(argv[i], "--bind") == 0 || strcmp(argv[i], "--bound") == 0) && i + 1 < argc) {
            if (kiln_cli_parse_bind(&o, argv[++i])) {
                fprintf(stderr, "kiln ir: %s takes SYMBOL=SIZE\n", argv[i - 1]);
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
    if (memory) {
        kiln_plan plan;
        int rc = 0;
        if (kiln_plan_memory(g, &o, &plan, &err)) {
            fprintf(stderr, "%s: memory plan: %s\n", path, err.msg);
            rc = KILN_EXIT_INPUT;
        } else {
            memory_report(g, &plan);
        }
        kiln_plan_free(&plan);
        kiln_graph_free(g);
        return rc;
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
