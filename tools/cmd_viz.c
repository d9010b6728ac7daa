/* cmd_viz.c - `kiln viz`: pictures of a model's graph and memory plan.
 *
 * Loads and verifies the model, runs passes the way `kiln ir` does (only
 * when --passes/--after ask for them), plans memory at the --bound sizes,
 * and writes one file whose extension picks the format: .dot (Graphviz),
 * .svg (kiln's own layered layout plus the memory timeline), .html (the
 * same SVG with pan/zoom/hover, one self-contained file). */
#include "cli.h"
#include "viz_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kiln_cli_parse_bind(kiln_pass_opts *o, char *arg);

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

int kiln_cmd_viz(int argc, char **argv)
{
    const char *path = NULL, *out = NULL, *pipeline = NULL;
    int verify = 1;
    kiln_pass_opts o;
    memset(&o, 0, sizeof o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "-o") && more)
            out = argv[++i];
        else if (!strcmp(a, "--passes") && more)
            pipeline = argv[++i];
        else if (!strcmp(a, "--after") && more)
            o.dump_after = argv[++i];
        else if ((!strcmp(a, "--bound") || !strcmp(a, "--bind")) && more) {
            if (kiln_cli_parse_bind(&o, argv[++i])) {
                fprintf(stderr, "kiln viz: %s takes SYMBOL=SIZE (at most 16)\n", a);
                return KILN_EXIT_INPUT;
            }
        } else if (!strcmp(a, "--no-verify"))
            verify = 0;
        else if (!strcmp(a, "-v"))
            o.verbose = 1;
        else if (a[0] == '-' && a[1])
            return kiln_cli_usage("viz");
        else if (!path)
            path = a;
        else
            return kiln_cli_usage("viz");
    }
    if (!path || !out)
        return kiln_cli_usage("viz");
    int fmt = ends_with(out, ".dot") ? 0 : ends_with(out, ".svg") ? 1 : ends_with(out, ".html") ? 2 : -1;
    if (fmt < 0) {
        fprintf(stderr, "kiln viz: %s: output must end in .dot, .svg or .html\n", out);
        return KILN_EXIT_INPUT;
    }
    kiln_err err = {{0}};
    kiln_graph *g = kiln_cli_load(path, &err);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return KILN_EXIT_INPUT;
    }
    if ((verify && kiln_verify(g, &err)) ||
        ((pipeline || o.dump_after) && kiln_run_pipeline(&g, pipeline, &o, &err))) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        kiln_graph_free(g);
        return KILN_EXIT_INPUT;
    }
    kiln_sb sb = {0};
    if (fmt == 0) {
        kiln_viz_dot(g, &sb);
    } else {
        /* a model whose sizes depend on input values cannot be planned; the
         * picture still shows the graph and says why the timeline is missing */
        kiln_plan plan;
        kiln_err perr = {{0}};
        int planned = kiln_plan_memory(g, &o, &plan, &perr) == 0;
        if (!planned)
            fprintf(stderr, "kiln viz: %s: no memory timeline: %s\n", path, perr.msg);
        kiln_viz_layout L;
        kiln_viz_layout_build(g, &L);
        if (fmt == 1)
            kiln_viz_svg(g, &L, planned ? &plan : NULL, perr.msg, &sb);
        else
            kiln_viz_html(g, &L, planned ? &plan : NULL, perr.msg, &sb);
        kiln_viz_layout_free(&L);
        kiln_plan_free(&plan);
    }
    int rc = 0;
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(sb.s, 1, sb.len, f) != sb.len) {
        fprintf(stderr, "kiln viz: %s: cannot write: %s\n", out, strerror(errno));
        rc = KILN_EXIT_INPUT;
    }
    if (f && fclose(f) != 0 && rc == 0) {
        fprintf(stderr, "kiln viz: %s: cannot write: %s\n", out, strerror(errno));
        rc = KILN_EXIT_INPUT;
    }
    kiln_sb_free(&sb);
    kiln_graph_free(g);
    return rc;
}
