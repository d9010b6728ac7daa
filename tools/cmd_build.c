/* cmd_build.c - `kiln build`: compile a model into an executable or a
 * shared library + header. */
#include "cli.h"
#include "kiln_codegen.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern const unsigned char kiln_embed_rt_lib[], kiln_embed_rt_lib_end[];
extern const unsigned char kiln_embed_rt_main[], kiln_embed_rt_main_end[];
extern const unsigned char kiln_embed_rt_header[], kiln_embed_rt_header_end[];

int kiln_cli_parse_bind(kiln_pass_opts *o, char *arg);
int kiln_cli_lm_meta(const char *model_path, kiln_graph *g, kiln_build_opts *o, int64_t max_ctx,
                     kiln_dtype kv_dtype, kiln_err *err);

static int dump(const char *path, const unsigned char *b, const unsigned char *e, kiln_err *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return kiln_errf(err, "%s: cannot create: %s", path, strerror(errno));
    size_t n = (size_t)(e - b);
    int ok = fwrite(b, 1, n, f) == n;
    ok &= fclose(f) == 0;
    return ok ? 0 : kiln_errf(err, "%s: write failed", path);
}

int kiln_cli_extract_runtime(char *dir, size_t len, kiln_build_opts *o, kiln_err *err)
{
    char tmpl[] = "/tmp/kiln_rt_XXXXXX";
    if (!mkdtemp(tmpl))
        return kiln_errf(err, "cannot create a temporary directory: %s", strerror(errno));
    snprintf(dir, len, "%s", tmpl);
    static char lib[4200], mainobj[4200], hdr[4200];
    snprintf(lib, sizeof lib, "%s/libkiln_rt.a", tmpl);
    snprintf(mainobj, sizeof mainobj, "%s/kiln_main.o", tmpl);
    snprintf(hdr, sizeof hdr, "%s/kiln.h", tmpl);
    if (dump(lib, kiln_embed_rt_lib, kiln_embed_rt_lib_end, err) ||
        dump(mainobj, kiln_embed_rt_main, kiln_embed_rt_main_end, err) ||
        dump(hdr, kiln_embed_rt_header, kiln_embed_rt_header_end, err))
        return -1;
    o->rt_lib = lib;
    o->rt_main = mainobj;
    o->rt_header = hdr;
    return 0;
}

void kiln_cli_remove_runtime(const char *dir)
{
    char p[4200];
    const char *names[] = {"libkiln_rt.a", "kiln_main.o", "kiln.h"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int kiln_cmd_build(int argc, char **argv)
{
    const char *path = NULL, *pipeline = NULL;
    int64_t max_ctx = 2048;
    kiln_dtype kv_dtype = KILN_F32;
    kiln_build_opts o;
    memset(&o, 0, sizeof o);
    o.opt_level = 3;
    o.target = "cpu";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "-o") && more)
            o.out = argv[++i];
        else if (!strcmp(a, "--target") && more)
            o.target = argv[++i];
        else if (!strcmp(a, "--shared"))
            o.shared = 1;
        else if (!strcmp(a, "--weights") && more) {
            const char *w = argv[++i];
            if (!strcmp(w, "external"))
                o.weights_external = 1;
            else if (strcmp(w, "embed") != 0)
                return kiln_cli_usage("build");
        } else if (!strcmp(a, "--bound") && more) {
            if (kiln_cli_parse_bind(&o.passes, argv[++i])) {
                fprintf(stderr, "kiln build: --bound takes SYMBOL=SIZE\n");
                return KILN_EXIT_INPUT;
            }
        } else if (!strcmp(a, "--max-ctx") && more) {
            max_ctx = strtoll(argv[++i], NULL, 10);
            if (max_ctx < 1 || max_ctx > (1 << 24)) {
                fprintf(stderr, "kiln build: --max-ctx takes a positive size\n");
                return KILN_EXIT_INPUT;
            }
        } else if (!strcmp(a, "--kv-dtype") && more) {
            kv_dtype = kiln_dtype_from_name(argv[++i]);
            if (kv_dtype != KILN_F32 && kv_dtype != KILN_F16 && kv_dtype != KILN_BF16) {
                fprintf(stderr, "kiln build: --kv-dtype takes f32, f16 or bf16\n");
                return KILN_EXIT_INPUT;
            }
        } else if (!strcmp(a, "--triple") && more)
            o.triple = argv[++i];
        else if (!strcmp(a, "--cpu") && more)
            o.cpu = argv[++i];
        else if (!strcmp(a, "--features") && more)
            o.features = argv[++i];
        else if (!strncmp(a, "-O", 2) && a[2] >= '0' && a[2] <= '3' && !a[3])
            o.opt_level = a[2] - '0';
        else if (!strcmp(a, "--passes") && more)
            pipeline = argv[++i];
        else if (!strcmp(a, "--verify-each"))
            o.passes.verify_each = 1;
        else if (!strcmp(a, "--keep-temps"))
            o.keep_temps = 1;
        else if (!strcmp(a, "--emit-obj") && more)
            o.emit_object = argv[++i];
        else if (!strcmp(a, "-v"))
            o.verbose = o.passes.verbose = 1;
        else if (a[0] == '-')
            return kiln_cli_usage("build");
        else if (!path)
            path = a;
        else
            return kiln_cli_usage("build");
    }
    if (!path || (!o.out && !o.emit_object))
        return kiln_cli_usage("build");
    if (strcmp(o.target, "cpu") != 0) {
        fprintf(stderr, "kiln build: unknown target '%s' (supported: cpu)\n", o.target);
        return KILN_EXIT_INPUT;
    }
    kiln_err err = {{0}};
    kiln_graph *g = kiln_cli_load(path, &err);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return KILN_EXIT_INPUT;
    }
    int rc = KILN_EXIT_INPUT;
    char rtdir[4200] = "";
    if (kiln_verify(g, &err) || kiln_run_pipeline(&g, pipeline, &o.passes, &err)) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto out;
    }
    if (kiln_cli_extract_runtime(rtdir, sizeof rtdir, &o, &err)) {
        fprintf(stderr, "kiln build: %s\n", err.msg);
        goto out;
    }
    snprintf(o.meta.name, sizeof o.meta.name, "%s", g->name);
    if (kiln_cli_lm_meta(path, g, &o, max_ctx, kv_dtype, &err) < 0) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto out;
    }
    if (kiln_build(g, &o, &err)) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto out;
    }
    rc = 0;
out:
    if (rtdir[0])
        kiln_cli_remove_runtime(rtdir);
    free((void *)o.meta.tokenizer);
    kiln_graph_free(g);
    return rc;
}
