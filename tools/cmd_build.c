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
                     kiln_dtype kv_dtype, int64_t kv_budget, kiln_err *err);

/* "123", "64K", "512M", "2G" -> bytes; -1 if malformed. */
static int64_t parse_bytes(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v < 0)
        return -1;
    int64_t m = 1;
    if (*end == 'K' || *end == 'k')
        m = 1024, end++;
    else if (*end == 'M' || *end == 'm')
        m = 1024 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        m = 1024LL * 1024 * 1024, end++;
    if (*end == 'B' || *end == 'b')
        end++;
    return *end ? -1 : v * m;
}

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

int kiln_cli_extract_runtime(kiln_cli_rt *rt, kiln_err *err)
{
    memset(rt, 0, sizeof *rt);
    char tmpl[] = "/tmp/kiln_rt_XXXXXX";
    if (!mkdtemp(tmpl))
        return kiln_errf(err, "cannot create a temporary directory: %s", strerror(errno));
    snprintf(rt->dir, sizeof rt->dir, "%s", tmpl);
    snprintf(rt->lib, sizeof rt->lib, "%s/libkiln_rt.a", tmpl);
    snprintf(rt->main_obj, sizeof rt->main_obj, "%s/kiln_main.o", tmpl);
    snprintf(rt->header, sizeof rt->header, "%s/kiln.h", tmpl);
    if (dump(rt->lib, kiln_embed_rt_lib, kiln_embed_rt_lib_end, err) ||
        dump(rt->main_obj, kiln_embed_rt_main, kiln_embed_rt_main_end, err) ||
        dump(rt->header, kiln_embed_rt_header, kiln_embed_rt_header_end, err)) {
        kiln_cli_remove_runtime(rt);
        return -1;
    }
    return 0;
}

void kiln_cli_remove_runtime(kiln_cli_rt *rt)
{
    if (!rt->dir[0])
        return;
    unlink(rt->lib);
    unlink(rt->main_obj);
    unlink(rt->header);
    rmdir(rt->dir);
    rt->dir[0] = 0;
}

/* ---- specialization: inputs made static or constant before the passes ---- */

static int find_input(const kiln_graph *g, const char *name, kiln_err *err)
{
    for (int i = 0; i < g->n_inputs; i++)
        if (!strcmp(g->values[g->inputs[i]].name, name))
            return i;
    return kiln_errf(err, "the model has no input named '%s'", name);
}

static int set_input_shape(kiln_graph *g, int vid, int rank, const int64_t *dims, kiln_err *err)
{
    kiln_value *v = &g->values[vid];
    if (rank < 0 || rank > KILN_MAX_RANK)
        return kiln_errf(err, "input '%s': rank %d is not supported", v->name, rank);
    if (v->type.rank >= 0 && v->type.rank != rank)
        return kiln_errf(err, "input '%s': given rank %d, the model has rank %d", v->name, rank,
                         v->type.rank);
    for (int k = 0; k < rank; k++) {
        if (dims[k] < 0)
            return kiln_errf(err, "input '%s': dimension %d is negative", v->name, k);
        if (v->type.rank >= 0 && KILN_DIM_IS_STATIC(v->type.dims[k]) && v->type.dims[k] != dims[k])
            return kiln_errf(err, "input '%s': dimension %d is %lld, the model has %lld", v->name, k,
                             (long long)dims[k], (long long)v->type.dims[k]);
    }
    v->type.rank = rank;
    for (int k = 0; k < rank; k++)
        v->type.dims[k] = dims[k];
    return 0;
}

int kiln_cli_bind_shape(kiln_graph *g, const char *name, int rank, const int64_t *dims, kiln_err *err)
{
    int i = find_input(g, name, err);
    return i < 0 ? -1 : set_input_shape(g, g->inputs[i], rank, dims, err);
}

int kiln_cli_bind_input(kiln_graph *g, const char *name, const kiln_tensor *t, kiln_err *err)
{
    int i = find_input(g, name, err);
    if (i < 0)
        return -1;
    int vid = g->inputs[i];
    kiln_value *v = &g->values[vid];
    if (t->dtype != v->type.dtype)
        return kiln_errf(err, "input '%s': the bound value is %s, the model takes %s", name,
                         kiln_dtype_name(t->dtype), kiln_dtype_name(v->type.dtype));
    if (kiln_dtype_get(t->dtype)->is_quant)
        return kiln_errf(err, "input '%s': block-quantized values cannot be bound", name);
    if (set_input_shape(g, vid, t->rank, t->dims, err))
        return -1;
    size_t nb = kiln_dtype_storage(t->dtype, kiln_tensor_numel(t));
    v->kind = KILN_VAL_CONST;
    v->data = kiln_xmalloc(nb ? nb : 1);
    memcpy(v->data, t->data, nb);
    v->nbytes = nb;
    memmove(&g->inputs[i], &g->inputs[i + 1], sizeof *g->inputs * (size_t)(g->n_inputs - i - 1));
    g->n_inputs--;
    return 0;
}

int kiln_cli_reinfer(kiln_graph *g, kiln_err *err)
{
    /* node order is topological, so one sweep carries the new types through */
    for (int ni = 0; ni < g->n_nodes; ni++)
        if (kiln_infer_node(g, ni, 1, err))
            return -1;
    return kiln_verify(g, err);
}

/* NAME=FILE.npy */
static int bind_npy(kiln_graph *g, char *arg, kiln_err *err)
{
    char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1])
        return kiln_errf(err, "--bind-input takes NAME=FILE.npy");
    *eq = 0;
    kiln_npy a;
    if (kiln_npy_read(eq + 1, &a, err))
        return -1;
    kiln_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = a.dtype;
    t.rank = a.rank;
    memcpy(t.dims, a.dims, sizeof t.dims[0] * (size_t)a.rank);
    t.data = a.data;
    t.nbytes = a.nbytes;
    int rc = kiln_cli_bind_input(g, arg, &t, err);
    if (rc)
        kiln_err_prefix(err, "%s: ", eq + 1);
    kiln_npy_free(&a);
    *eq = '=';
    return rc;
}

/* NAME=D0,D1,... (NAME= alone: a scalar) */
static int bind_shape_arg(kiln_graph *g, char *arg, kiln_err *err)
{
    char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return kiln_errf(err, "--bind-shape takes NAME=D0,D1,...");
    int64_t dims[KILN_MAX_RANK];
    int rank = 0;
    for (char *p = eq + 1; *p;) {
        char *end;
        long long d = strtoll(p, &end, 10);
        if (end == p || d < 0 || rank == KILN_MAX_RANK || (*end && *end != ','))
            return kiln_errf(err, "--bind-shape %s: expected NAME=D0,D1,... with sizes >= 0", arg);
        dims[rank++] = d;
        p = *end ? end + 1 : end;
    }
    *eq = 0;
    int rc = kiln_cli_bind_shape(g, arg, rank, dims, err);
    *eq = '=';
    return rc;
}

int kiln_cmd_build(int argc, char **argv)
{
    const char *path = NULL, *pipeline = NULL;
    int64_t max_ctx = 2048;
    int kv_functional = 0;
    kiln_dtype kv_dtype = KILN_DT_INVALID; /* chosen by the KV layout pass */
    int64_t kv_budget = 0;
    kiln_build_opts o;
    memset(&o, 0, sizeof o);
    o.opt_level = 3;
    o.target = "cpu";
    /* --bind-input / --bind-shape arguments, applied in order after loading */
    char *binds[64];
    int bind_value[64], n_binds = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "-o") && more)
            o.out = argv[++i];
        else if (!strcmp(a, "--target") && more)
            o.target = argv[++i];
        else if (!strcmp(a, "--cuda-arch") && more)
            o.cuda_archs = argv[++i];
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
        } else if ((!strcmp(a, "--bind-input") || !strcmp(a, "--bind-shape")) && more) {
            if (n_binds == 64) {
                fprintf(stderr, "kiln build: at most 64 --bind-input/--bind-shape options\n");
                return KILN_EXIT_INPUT;
            }
            bind_value[n_binds] = !strcmp(a, "--bind-input");
            binds[n_binds++] = argv[++i];
        } else if (!strcmp(a, "--max-ctx") && more) {
            max_ctx = strtoll(argv[++i], NULL, 10);
            if (max_ctx < 1 || max_ctx > (1 << 24)) {
                fprintf(stderr, "kiln build: --max-ctx takes a positive size\n");
                return KILN_EXIT_INPUT;
            }
        } else if (!strcmp(a, "--kv-layout") && more) {
            const char *l = argv[++i];
            if (!strcmp(l, "functional"))
                kv_functional = 1;
            else if (strcmp(l, "inplace") != 0) {
                fprintf(stderr, "kiln build: --kv-layout takes inplace or functional\n");
                return KILN_EXIT_INPUT;
            }
        } else if (!strcmp(a, "--kv-dtype") && more) {
            kv_dtype = kiln_dtype_from_name(argv[++i]);
            if (kv_dtype != KILN_F32 && kv_dtype != KILN_F16 && kv_dtype != KILN_BF16 && kv_dtype != KILN_I8) {
                fprintf(stderr, "kiln build: --kv-dtype takes f32, f16, bf16 or i8\n");
                return KILN_EXIT_INPUT;
            }
        } else if (!strcmp(a, "--kv-budget") && more) {
            kv_budget = parse_bytes(argv[++i]);
            if (kv_budget <= 0) {
                fprintf(stderr, "kiln build: --kv-budget takes a size in bytes (e.g. 64M)\n");
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
    if (strcmp(o.target, "cpu") != 0 && strcmp(o.target, "cuda") != 0) {
        fprintf(stderr, "kiln build: unknown target '%s' (supported: cpu, cuda)\n", o.target);
        return KILN_EXIT_INPUT;
    }
    kiln_err err = {{0}};
    kiln_graph *g = kiln_cli_load(path, &err);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return KILN_EXIT_INPUT;
    }
    int rc = KILN_EXIT_INPUT;
    kiln_cli_rt rt;
    memset(&rt, 0, sizeof rt);
    if (kiln_verify(g, &err))
        goto fail;
    for (int i = 0; i < n_binds; i++)
        if (bind_value[i] ? bind_npy(g, binds[i], &err) : bind_shape_arg(g, binds[i], &err))
            goto fail;
    if (n_binds && kiln_cli_reinfer(g, &err))
        goto fail;
    if (kiln_run_pipeline(&g, pipeline, &o.passes, &err))
        goto fail;
    if (kiln_cli_extract_runtime(&rt, &err)) {
        fprintf(stderr, "kiln build: %s\n", err.msg);
        goto out;
    }
    o.rt_lib = rt.lib;
    o.rt_main = rt.main_obj;
    o.rt_header = rt.header;
    snprintf(o.meta.name, sizeof o.meta.name, "%s", g->name);
    if (kv_functional)
        o.meta.kv.kind = KILN_KV_FUNCTIONAL; /* read by the layout choice */
    if (kiln_cli_lm_meta(path, g, &o, max_ctx, kv_dtype, kv_budget, &err) < 0) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto out;
    }
    if (kv_functional && o.meta.kind == KILN_MODEL_LM)
        o.meta.kv.kind = KILN_KV_FUNCTIONAL;
    if (kiln_build(g, &o, &err)) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto out;
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "%s: %s\n", path, err.msg);
out:
    kiln_cli_remove_runtime(&rt);
    free((void *)o.meta.tokenizer);
    kiln_graph_free(g);
    return rc;
}
