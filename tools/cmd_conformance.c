/* cmd_conformance.c - `kiln conformance`: runs ONNX backend node tests
 * (model.onnx + test_data_set_*) through import -> verify -> reference
 * interpreter (--target interp) or the compiled CPU path (--target cpu:
 * the `kiln build` pipeline into a shared library, loaded and run in the
 * child) and compares with the stored outputs.
 *
 * Every test runs in a forked child under a time limit, so a crash or hang
 * is one failed test ("crash: signal 11", "timeout") and the run goes on. The
 * child reports over a pipe: one "O\t<op>" line per op type (sent before the
 * import, so even a crashing test is counted under its ops), then one
 * "S\t<status>\t<detail>" line. */
#include "cli.h"
#include "kiln.h"
#include "kiln_codegen.h"
#include "kiln_onnx.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ONNX's backend tests compare with these (onnx/backend/test/runner). */
#define RTOL 1e-3
#define ATOL 1e-7

enum { ST_PASS, ST_FAIL, ST_UNSUP };
static const char *const status_names[] = {"pass", "fail", "unsupported"};

/* The "transformer set": tests whose ops all come from this list. */
static const char *const transformer_ops[] = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Tanh", "Erf",
    "Sigmoid", "Relu", "Neg", "Abs", "Cos", "Sin", "Where", "Equal", "Less", "Greater", "Not",
    "And", "Or", "Cast", "MatMul", "Gemm", "Reshape", "Transpose", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "Expand", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape",
    "Range", "ConstantOfShape", "Constant", "ReduceMean", "ReduceSum", "ReduceMax", "Softmax",
    "LogSoftmax", "LayerNormalization", "RMSNormalization", "Gelu", "RotaryEmbedding",
    "Attention", "Trilu", "CumSum", "ArgMax", "TopK", "Einsum", "Min", "Max", "Clip", "Dropout",
    NULL};

/* What the children run; shared read-only with every child. */
typedef struct conf_opts {
    int cpu;         /* compiled CPU path instead of the interpreter */
    int opt_level;   /* LLVM optimization level for --target cpu */
    const char *work; /* scratch folder for the compiled libraries */
    const kiln_cli_rt *rt;
} conf_opts;

typedef struct test_result {
    char *name;
    char **ops;
    int n_ops;
    int status;
    int crashed;
    int transformer;
    int finished;
    char *detail;
} test_result;

/* ---- child side ---- */

static void send_line(int fd, const char *tag, const char *a, const char *b)
{
    kiln_sb sb = {0};
    kiln_sb_printf(&sb, "%s\t%s", tag, a);
    if (b) {
        kiln_sb_put(&sb, "\t", 1);
        for (const char *p = b; *p; p++) /* keep the detail on one line */
            kiln_sb_put(&sb, (*p == '\n' || *p == '\t') ? " " : p, 1);
    }
    kiln_sb_put(&sb, "\n", 1);
    size_t off = 0;
    while (off < sb.len) {
        ssize_t w = write(fd, sb.s + off, sb.len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    kiln_sb_free(&sb);
}

static void index_text(const int64_t *dims, int rank, int64_t flat, char *buf, size_t len)
{
    int64_t idx[KILN_MAX_RANK];
    for (int i = rank - 1; i >= 0; i--) {
        idx[i] = dims[i] ? flat % dims[i] : 0;
        flat = dims[i] ? flat / dims[i] : 0;
    }
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < rank && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)idx[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* 0 when got matches want; else a message in err. */
static int compare(const char *name, const kiln_tensor *got, const kiln_tensor *want, kiln_err *err)
{
    if (got->dtype != want->dtype)
        return kiln_errf(err, "output '%s': element type %s, expected %s", name,
                         kiln_dtype_name(got->dtype), kiln_dtype_name(want->dtype));
    int same = got->rank == want->rank;
    for (int i = 0; same && i < got->rank; i++)
        same = got->dims[i] == want->dims[i];
    if (!same) {
        kiln_sb a = {0}, b = {0};
        for (int i = 0; i < got->rank; i++)
            kiln_sb_printf(&a, "%s%lld", i ? "," : "", (long long)got->dims[i]);
        for (int i = 0; i < want->rank; i++)
            kiln_sb_printf(&b, "%s%lld", i ? "," : "", (long long)want->dims[i]);
        kiln_errf(err, "output '%s': shape [%s], expected [%s]", name, a.s ? a.s : "",
                  b.s ? b.s : "");
        kiln_sb_free(&a);
        kiln_sb_free(&b);
        return -1;
    }
    int64_t n = kiln_tensor_numel(want), bad = 0, first = -1;
    int exact = !kiln_dtype_get(want->dtype)->is_float;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        int ok;
        if (exact) {
            ok = kiln_tensor_get_i64(got, i) == kiln_tensor_get_i64(want, i);
        } else {
            double g = kiln_tensor_get(got, i), w = kiln_tensor_get(want, i);
            if (isnan(w) || isnan(g))
                ok = isnan(w) && isnan(g);
            else if (isinf(w) || isinf(g))
                ok = g == w;
            else
                ok = fabs(g - w) <= ATOL + RTOL * fabs(w);
            if (!ok && !isnan(g - w) && fabs(g - w) > worst)
                worst = fabs(g - w);
        }
        if (!ok) {
            if (first < 0)
                first = i;
            bad++;
        }
    }
    if (!bad)
        return 0;
    char where[128];
    index_text(want->dims, want->rank, first, where, sizeof where);
    if (exact)
        return kiln_errf(err, "output '%s': %lld of %lld values differ; first at %s: %lld, expected %lld",
                         name, (long long)bad, (long long)n, where,
                         (long long)kiln_tensor_get_i64(got, first),
                         (long long)kiln_tensor_get_i64(want, first));
    return kiln_errf(err, "output '%s': %lld of %lld values differ (max abs err %.3g); first at %s: %.9g, expected %.9g",
                     name, (long long)bad, (long long)n, worst, where, kiln_tensor_get(got, first),
                     kiln_tensor_get(want, first));
}

/* Reads <set>/<prefix>_0.pb, _1.pb ... until one is missing. */
static int read_pbs(const char *set, const char *prefix, kiln_tensor **ts, char ***names, int *n,
                    kiln_err *err)
{
    *ts = NULL;
    *names = NULL;
    *n = 0;
    for (int k = 0;; k++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s_%d.pb", set, prefix, k);
        if (stat(path, &st) != 0)
            return 0;
        *ts = kiln_xrealloc(*ts, sizeof **ts * (size_t)(k + 1));
        *names = kiln_xrealloc(*names, sizeof **names * (size_t)(k + 1));
        if (kiln_onnx_read_tensor(path, &(*ts)[k], &(*names)[k], err))
            return -1;
        *n = k + 1;
    }
}

static void free_pbs(kiln_tensor *ts, char **names, int n)
{
    for (int i = 0; i < n; i++) {
        kiln_tensor_free(&ts[i]);
        free(names[i]);
    }
    free(ts);
    free(names);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of entries of dir starting with prefix (or holding
 * model.onnx when want_model). */
static char **list_dir(const char *dir, const char *prefix, int want_model, int *n)
{
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char **v = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        char p[4096];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s%s", dir, e->d_name, want_model ? "/model.onnx" : "");
        if (stat(p, &st) != 0 || (want_model ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode)))
            continue;
        v = kiln_xrealloc(v, sizeof *v * (size_t)(*n + 1));
        v[(*n)++] = kiln_xstrdup(e->d_name);
    }
    closedir(d);
    if (*n)
        qsort(v, (size_t)*n, sizeof *v, cmp_str);
    return v;
}

static void free_list(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Slot of a stored tensor among names[]: by name, else by position. */
static int match_slot(const char *name, int pos, const kiln_graph *g, const int *ids, int n)
{
    if (name)
        for (int i = 0; i < n; i++)
            if (strcmp(g->values[ids[i]].name, name) == 0)
                return i;
    return pos < n ? pos : -1;
}

static int run_set(kiln_graph *g, const char *set, kiln_err *err)
{
    kiln_tensor *ins = NULL, *want = NULL;
    char **in_names = NULL, **out_names = NULL;
    int n_in = 0, n_want = 0, rc = -1;
    kiln_tensor *args = kiln_xcalloc((size_t)g->n_inputs + 1, sizeof *args);
    kiln_tensor *outs = kiln_xcalloc((size_t)g->n_outputs + 1, sizeof *outs);
    char *have = kiln_xcalloc((size_t)g->n_inputs + 1, 1);
    int ran = 0;
    if (read_pbs(set, "input", &ins, &in_names, &n_in, err) ||
        read_pbs(set, "output", &want, &out_names, &n_want, err))
        goto done;
    for (int k = 0; k < n_in; k++) {
        int s = match_slot(in_names[k], k, g, g->inputs, g->n_inputs);
        if (s < 0 || have[s]) {
            kiln_errf(err, "input_%d.pb ('%s') matches no graph input", k,
                      in_names[k] ? in_names[k] : "");
            goto done;
        }
        args[s] = ins[k];
        args[s].owned = 0;
        have[s] = 1;
    }
    for (int i = 0; i < g->n_inputs; i++)
        if (!have[i]) {
            kiln_errf(err, "no test data for graph input '%s'", g->values[g->inputs[i]].name);
            goto done;
        }
    if (n_want != g->n_outputs) {
        kiln_errf(err, "%d expected outputs, graph has %d", n_want, g->n_outputs);
        goto done;
    }
    if (kiln_interp_run(g, args, outs, err)) {
        kiln_err_prefix(err, "run: ");
        goto done;
    }
    ran = 1;
    for (int k = 0; k < n_want; k++) {
        int s = match_slot(out_names[k], k, g, g->outputs, g->n_outputs);
        if (s < 0) {
            kiln_errf(err, "output_%d.pb matches no graph output", k);
            goto done;
        }
        if (compare(g->values[g->outputs[s]].name, &outs[s], &want[k], err))
            goto done;
    }
    rc = 0;
done:
    if (ran)
        for (int i = 0; i < g->n_outputs; i++)
            kiln_tensor_free(&outs[i]);
    free_pbs(ins, in_names, n_in);
    free_pbs(want, out_names, n_want);
    free(args);
    free(outs);
    free(have);
    return rc;
}

/* ---- the compiled CPU path ---- */

/* Outcome of one compile attempt. */
enum { CC_OK, CC_REFUSED, CC_ERROR };

/* Imports the model afresh, gives every input the data's static shape,
 * turns the inputs flagged in bind[] into constants, then compiles like
 * `kiln build --shared` into so_path. */
static int compile_cpu(const char *model, const kiln_tensor *const *data, const char *bind,
                       const conf_opts *co, const char *so_path, kiln_err *err)
{
    kiln_graph *g = kiln_import_onnx(model, NULL, err);
    if (!g)
        return CC_ERROR;
    int n = g->n_inputs, rc = CC_ERROR;
    int *vids = kiln_xcalloc((size_t)n + 1, sizeof *vids);
    if (n > 0) /* a model with no inputs has no input array */
        memcpy(vids, g->inputs, sizeof *vids * (size_t)n);
    for (int i = 0; i < n; i++) {
        const char *name = g->values[vids[i]].name;
        if (bind[i] ? kiln_cli_bind_input(g, name, data[i], err)
                    : kiln_cli_bind_shape(g, name, data[i]->rank, data[i]->dims, err))
            goto done;
    }
    if (kiln_cli_reinfer(g, err)) {
        kiln_err_prefix(err, "specialized: ");
        goto done;
    }
    rc = CC_REFUSED;
    kiln_build_opts o;
    memset(&o, 0, sizeof o);
    if (kiln_run_pipeline(&g, NULL, &o.passes, err))
        goto done;
    o.out = so_path;
    o.target = "cpu";
    o.shared = 1;
    o.opt_level = co->opt_level;
    o.rt_lib = co->rt->lib;
    o.rt_main = co->rt->main_obj; /* no header: nothing compiles against the library */
    snprintf(o.meta.name, sizeof o.meta.name, "%s", g->name);
    if (kiln_build(g, &o, err)) {
        /* a refusal names what the compiled path cannot do; internal errors
         * and a failing linker are bugs or a broken setup */
        if (strstr(err->msg, "internal error") || strstr(err->msg, " failed: "))
            rc = CC_ERROR;
        goto done;
    }
    rc = CC_OK;
done:
    free(vids);
    kiln_graph_free(g);
    return rc;
}

/* Inputs whose values may determine shapes: small integer tensors, and
 * scalars of any type (Range's float limits, OneHot's depth). */
static int shape_candidate(const kiln_tensor *t)
{
    int64_t n = kiln_tensor_numel(t);
    return (kiln_dtype_get(t->dtype)->is_int && n <= 1024) || n == 1;
}

typedef kiln_model *(*open_fn)(const char *, int, char *, size_t, int);
typedef void (*close_fn)(kiln_model *);
typedef int (*run_fn)(kiln_model *, const kiln_buffer *, kiln_buffer *, char *, size_t);
typedef void (*buffer_free_fn)(kiln_buffer *);
typedef int (*count_fn)(const kiln_model *);
typedef const char *(*name_fn)(const kiln_model *, int);

/* Loads the library, runs it on data (slots of g's inputs), compares with
 * want (slots of g's outputs via want_slot). */
static int run_library(const char *so_path, const kiln_graph *g, const kiln_tensor *const *data,
                       const kiln_tensor *want, const int *want_slot, int n_want, kiln_err *err)
{
    void *h = dlopen(so_path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return kiln_errf(err, "cannot load the compiled library: %s", dlerror());
    open_fn open_m = (open_fn)dlsym(h, "kiln_open_abi");
    close_fn close_m = (close_fn)dlsym(h, "kiln_close");
    run_fn run_m = (run_fn)dlsym(h, "kiln_run");
    buffer_free_fn buf_free = (buffer_free_fn)dlsym(h, "kiln_buffer_free");
    count_fn n_in = (count_fn)dlsym(h, "kiln_num_inputs"), n_out = (count_fn)dlsym(h, "kiln_num_outputs");
    name_fn in_name = (name_fn)dlsym(h, "kiln_input_name");
    int rc = -1;
    kiln_model *m = NULL;
    kiln_buffer *in = NULL, *out = NULL;
    int nin = 0, nout = 0, ran = 0;
    if (!open_m || !close_m || !run_m || !buf_free || !n_in || !n_out || !in_name) {
        kiln_errf(err, "the compiled library lacks the kiln.h API");
        goto done;
    }
    char msg[1024];
    m = open_m(NULL, 1, msg, sizeof msg, KILN_H_ABI); /* one thread: children run side by side */
    if (!m) {
        kiln_errf(err, "compiled model: %s", msg);
        goto done;
    }
    nin = n_in(m);
    nout = n_out(m);
    if (nout != g->n_outputs) {
        kiln_errf(err, "compiled model has %d outputs, the graph %d", nout, g->n_outputs);
        goto done;
    }
    in = kiln_xcalloc((size_t)nin + 1, sizeof *in);
    out = kiln_xcalloc((size_t)nout + 1, sizeof *out);
    for (int i = 0; i < nin; i++) {
        const char *name = in_name(m, i);
        int s = 0;
        while (s < g->n_inputs && strcmp(g->values[g->inputs[s]].name, name) != 0)
            s++;
        if (s == g->n_inputs) {
            kiln_errf(err, "compiled model input '%s' is not a graph input", name);
            goto done;
        }
        in[i].dtype = (int)data[s]->dtype;
        in[i].rank = data[s]->rank;
        memcpy(in[i].dims, data[s]->dims, sizeof in[i].dims[0] * (size_t)data[s]->rank);
        in[i].data = data[s]->data;
    }
    if (run_m(m, in, out, msg, sizeof msg)) {
        kiln_errf(err, "run: %s", msg);
        goto done;
    }
    ran = 1;
    for (int k = 0; k < n_want; k++) {
        const kiln_buffer *b = &out[want_slot[k]];
        kiln_tensor got;
        memset(&got, 0, sizeof got);
        got.dtype = (kiln_dtype)b->dtype;
        got.rank = b->rank;
        memcpy(got.dims, b->dims, sizeof got.dims[0] * (size_t)b->rank);
        got.data = b->data;
        got.nbytes = kiln_dtype_storage(got.dtype, kiln_tensor_numel(&got));
        if (compare(g->values[g->outputs[want_slot[k]]].name, &got, &want[k], err))
            goto done;
    }
    rc = 0;
done:
    if (ran)
        for (int o = 0; o < nout; o++)
            buf_free(&out[o]);
    free(in);
    free(out);
    if (m)
        close_m(m);
    dlclose(h);
    return rc;
}

/* One data set through the compiled path. Shapes come from the data; when
 * compiling with static shapes alone is refused for want of values known
 * at compile time, the small inputs (shape_candidate) are bound as constants, then
 * each is unbound again if the model compiles without it, so exactly the
 * inputs that determine shapes end up bound; bound[i] is set for them.
 * *unsup is set when the compiled path refuses the model. */
static int run_set_cpu(const char *model, const kiln_graph *g, const char *set, const conf_opts *co,
                       const char *so_path, char *bound, int *unsup, kiln_err *err)
{
    kiln_tensor *ins = NULL, *want = NULL;
    char **in_names = NULL, **out_names = NULL;
    int n_in = 0, n_want = 0, rc = -1;
    const kiln_tensor **data = kiln_xcalloc((size_t)g->n_inputs + 1, sizeof *data);
    char *bind = kiln_xcalloc((size_t)g->n_inputs + 1, 1);
    int *want_slot = NULL;
    if (read_pbs(set, "input", &ins, &in_names, &n_in, err) ||
        read_pbs(set, "output", &want, &out_names, &n_want, err))
        goto done;
    for (int k = 0; k < n_in; k++) {
        int s = match_slot(in_names[k], k, g, g->inputs, g->n_inputs);
        if (s < 0 || data[s]) {
            kiln_errf(err, "input_%d.pb ('%s') matches no graph input", k, in_names[k] ? in_names[k] : "");
            goto done;
        }
        data[s] = &ins[k];
    }
    for (int i = 0; i < g->n_inputs; i++)
        if (!data[i]) {
            kiln_errf(err, "no test data for graph input '%s'", g->values[g->inputs[i]].name);
            goto done;
        }
    if (n_want != g->n_outputs) {
        kiln_errf(err, "%d expected outputs, graph has %d", n_want, g->n_outputs);
        goto done;
    }
    want_slot = kiln_xcalloc((size_t)n_want + 1, sizeof *want_slot);
    for (int k = 0; k < n_want; k++) {
        want_slot[k] = match_slot(out_names[k], k, g, g->outputs, g->n_outputs);
        if (want_slot[k] < 0) {
            kiln_errf(err, "output_%d.pb matches no graph output", k);
            goto done;
        }
    }
    int cc = compile_cpu(model, data, bind, co, so_path, err);
    if (cc == CC_REFUSED && strstr(err->msg, "at compile time")) {
        kiln_err first = *err;
        int nb = 0;
        for (int i = 0; i < g->n_inputs; i++) {
            bind[i] = (char)shape_candidate(data[i]);
            nb += bind[i];
        }
        cc = nb ? compile_cpu(model, data, bind, co, so_path, err) : CC_REFUSED;
        if (cc == CC_OK && nb > 1) {
            for (int i = 0; i < g->n_inputs; i++) {
                if (!bind[i])
                    continue;
                kiln_err trial;
                bind[i] = 0;
                if (compile_cpu(model, data, bind, co, so_path, &trial) != CC_OK)
                    bind[i] = 1; /* needed; the library on disk still matches bind[] */
            }
        }
        if (cc == CC_REFUSED && !nb)
            *err = first;
    }
    if (cc != CC_OK) {
        *unsup = cc == CC_REFUSED;
        kiln_err_prefix(err, "compile: ");
        goto done;
    }
    for (int i = 0; i < g->n_inputs; i++)
        bound[i] |= bind[i];
    rc = run_library(so_path, g, data, want, want_slot, n_want, err);
done:
    unlink(so_path);
    free_pbs(ins, in_names, n_in);
    free_pbs(want, out_names, n_want);
    free(data);
    free(bind);
    free(want_slot);
    return rc;
}

static void child_run(const char *dir, const char *test, const conf_opts *co, int fd)
{
    char model[4200], tdir[4096];
    kiln_err err = {{0}};
    if (snprintf(tdir, sizeof tdir, "%s/%s", dir, test) >= (int)sizeof tdir) {
        send_line(fd, "S", "fail", "path too long");
        return;
    }
    snprintf(model, sizeof model, "%s/model.onnx", tdir);
    char **ops;
    int n_ops;
    if (kiln_onnx_model_ops(model, &ops, &n_ops, &err)) {
        send_line(fd, "S", "fail", err.msg);
        return;
    }
    for (int i = 0; i < n_ops; i++)
        send_line(fd, "O", ops[i], NULL);
    kiln_onnx_free_strings(ops, n_ops);

    kiln_onnx_status st;
    kiln_graph *g = kiln_import_onnx(model, &st, &err);
    if (!g) {
        send_line(fd, "S", st.unsupported ? "unsupported" : "fail", err.msg);
        return;
    }
    if (kiln_verify(g, &err)) {
        kiln_err_prefix(&err, "verify: ");
        send_line(fd, "S", "fail", err.msg);
        kiln_graph_free(g);
        return;
    }
    int n_sets;
    char **sets = list_dir(tdir, "test_data_set_", 0, &n_sets);
    int ok = n_sets > 0, unsup = 0;
    char work[4200] = "";
    char *bound = kiln_xcalloc((size_t)g->n_inputs + 1, 1);
    if (!ok)
        kiln_errf(&err, "no test_data_set_* folders");
    if (ok && co->cpu) {
        snprintf(work, sizeof work, "%s/t_XXXXXX", co->work);
        if (!mkdtemp(work)) {
            kiln_errf(&err, "cannot create a folder in %s: %s", co->work, strerror(errno));
            work[0] = 0;
            ok = 0;
        }
    }
    for (int i = 0; i < n_sets && ok; i++) {
        char set[8200], so[4300];
        snprintf(set, sizeof set, "%s/%s", tdir, sets[i]);
        snprintf(so, sizeof so, "%s/set%d.so", work, i); /* a fresh path per dlopen */
        if (co->cpu ? run_set_cpu(model, g, set, co, so, bound, &unsup, &err) : run_set(g, set, &err)) {
            kiln_err_prefix(&err, "%s: ", sets[i]);
            ok = 0;
        }
    }
    if (work[0])
        rmdir(work);
    kiln_sb note = {0}; /* a pass says which inputs the compiled path took as constants */
    for (int i = 0; i < g->n_inputs; i++)
        if (bound[i])
            kiln_sb_printf(&note, "%s%s", note.len ? ", " : "bound inputs: ", g->values[g->inputs[i]].name);
    free(bound);
    free_list(sets, n_sets);
    kiln_graph_free(g);
    send_line(fd, "S", ok ? "pass" : unsup ? "unsupported" : "fail", ok ? (note.s ? note.s : "") : err.msg);
    kiln_sb_free(&note);
}

/* ---- parent side ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void parse_report(test_result *r, char *buf)
{
    int got_status = 0;
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!nl)
            break; /* a partial line: the child died mid-write */
        *nl = 0;
        if (line[0] == 'O' && line[1] == '\t') {
            r->ops = kiln_xrealloc(r->ops, sizeof *r->ops * (size_t)(r->n_ops + 1));
            r->ops[r->n_ops++] = kiln_xstrdup(line + 2);
        } else if (line[0] == 'S' && line[1] == '\t') {
            char *st = line + 2, *det = strchr(st, '\t');
            if (det)
                *det++ = 0;
            r->status = strcmp(st, "pass") == 0 ? ST_PASS
                        : strcmp(st, "unsupported") == 0 ? ST_UNSUP : ST_FAIL;
            free(r->detail);
            r->detail = kiln_xstrdup(det ? det : "");
            got_status = 1;
        }
        line = nl + 1;
    }
    if (!got_status) {
        r->status = ST_FAIL;
        r->detail = kiln_xstrdup("no result reported");
    }
}

/* One test running in a forked child. */
typedef struct job {
    test_result *r;
    pid_t pid;
    int fd;
    char *buf;
    size_t len, cap;
    double deadline;
    int timed_out;
} job;

/* Forks the child for r; 0 when started, else r holds the failure. */
static int job_start(job *j, const char *dir, test_result *r, const conf_opts *co, double timeout,
                     long mem_mb)
{
    int fds[2];
    memset(j, 0, sizeof *j);
    j->r = r;
    r->status = ST_FAIL;
    if (pipe(fds) != 0) {
        r->detail = kiln_xstrdup("pipe failed");
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        r->detail = kiln_xstrdup("fork failed");
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
#ifndef __SANITIZE_ADDRESS__
        if (mem_mb > 0) { /* a runaway test fails alone instead of starving the machine */
            struct rlimit rl = {(rlim_t)mem_mb << 20, (rlim_t)mem_mb << 20};
            setrlimit(RLIMIT_AS, &rl);
        }
#else
        (void)mem_mb;
#endif
        child_run(dir, r->name, co, fds[1]);
        close(fds[1]);
        _exit(0); /* no atexit handlers or stdio flushes of the parent's state */
    }
    close(fds[1]);
    j->pid = pid;
    j->fd = fds[0];
    j->cap = 4096;
    j->buf = kiln_xmalloc(j->cap);
    j->deadline = now_s() + timeout;
    return 0;
}

/* Reads what the child wrote; 1 when the pipe is closed. */
static int job_read(job *j)
{
    if (j->len + 1024 > j->cap) {
        j->cap *= 2;
        j->buf = kiln_xrealloc(j->buf, j->cap);
    }
    ssize_t got = read(j->fd, j->buf + j->len, j->cap - j->len - 1);
    if (got < 0 && errno == EINTR)
        return 0;
    if (got <= 0)
        return 1;
    j->len += (size_t)got;
    return 0;
}

/* Reaps the child and turns its report (or its death) into r. */
static void job_finish(job *j, double timeout)
{
    test_result *r = j->r;
    j->buf[j->len] = 0;
    if (j->timed_out)
        kill(j->pid, SIGKILL);
    close(j->fd);
    int ws = 0;
    while (waitpid(j->pid, &ws, 0) < 0 && errno == EINTR)
        ;
    parse_report(r, j->buf);
    free(j->buf);
    j->buf = NULL;
    char msg[128] = "";
    if (j->timed_out)
        snprintf(msg, sizeof msg, "timeout after %.0f s", timeout);
    else if (WIFSIGNALED(ws))
        snprintf(msg, sizeof msg, "crash: signal %d", WTERMSIG(ws));
    else if (WIFEXITED(ws) && WEXITSTATUS(ws) != 0)
        snprintf(msg, sizeof msg, "crash: exit status %d", WEXITSTATUS(ws));
    if (msg[0]) {
        r->status = ST_FAIL;
        r->crashed = !j->timed_out;
        free(r->detail);
        r->detail = kiln_xstrdup(msg);
    }
}

/* Runs every test in res[0..n), up to njobs children at a time; calls
 * done(i) as each finishes. */
static void run_all(const char *dir, test_result *res, int n, const conf_opts *co, double timeout,
                    long mem_mb, int njobs, void (*done)(test_result *res, int n, int i, void *arg),
                    void *arg)
{
    job *jobs = kiln_xcalloc((size_t)njobs, sizeof *jobs);
    struct pollfd *pf = kiln_xcalloc((size_t)njobs, sizeof *pf);
    int next = 0, active = 0;
    while (next < n || active) {
        while (active < njobs && next < n) {
            int i = next++;
            if (job_start(&jobs[active], dir, &res[i], co, timeout, mem_mb) == 0)
                active++;
            else
                done(res, n, i, arg);
        }
        if (!active)
            continue;
        double wait = 1e9, now = now_s();
        for (int a = 0; a < active; a++) {
            pf[a].fd = jobs[a].fd;
            pf[a].events = POLLIN;
            pf[a].revents = 0;
            if (jobs[a].deadline - now < wait)
                wait = jobs[a].deadline - now;
        }
        int pr = poll(pf, (nfds_t)active, wait > 0 ? (int)(wait * 1000) + 1 : 0);
        if (pr < 0 && errno != EINTR)
            break;
        now = now_s();
        for (int a = active - 1; a >= 0; a--) {
            int closed = 0;
            if (pr > 0 && (pf[a].revents & (POLLIN | POLLHUP | POLLERR)))
                closed = job_read(&jobs[a]);
            if (!closed && now >= jobs[a].deadline)
                closed = jobs[a].timed_out = 1;
            if (!closed)
                continue;
            job_finish(&jobs[a], timeout);
            done(res, n, (int)(jobs[a].r - res), arg);
            jobs[a] = jobs[--active];
            pf[a] = pf[active];
        }
    }
    free(jobs);
    free(pf);
}

static int in_transformer_set(const test_result *r)
{
    if (!r->n_ops)
        return 0;
    for (int i = 0; i < r->n_ops; i++) {
        int found = 0;
        for (int k = 0; transformer_ops[k] && !found; k++)
            found = strcmp(transformer_ops[k], r->ops[i]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

/* For --transformer-set: whether a test's model uses transformer-set ops
 * only (read without importing; an unreadable model is left out). */
static int model_in_transformer_set(const char *parent, const char *test)
{
    char path[8400];
    test_result r;
    memset(&r, 0, sizeof r);
    snprintf(path, sizeof path, "%s/%s/model.onnx", parent, test);
    if (kiln_onnx_model_ops(path, &r.ops, &r.n_ops, NULL))
        return 0;
    int in = in_transformer_set(&r);
    kiln_onnx_free_strings(r.ops, r.n_ops);
    return in;
}

static void json_str(kiln_sb *sb, const char *s)
{
    kiln_sb_put(sb, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            kiln_sb_printf(sb, "\\%c", *p);
        else if (*p < 0x20)
            kiln_sb_printf(sb, "\\u%04x", *p);
        else
            kiln_sb_put(sb, (const char *)p, 1);
    }
    kiln_sb_put(sb, "\"", 1);
}

typedef struct op_stat {
    char *op;
    int n[3];
    int crashes;
} op_stat;

static int cmp_opstat(const void *a, const void *b)
{
    return strcmp(((const op_stat *)a)->op, ((const op_stat *)b)->op);
}

/* Progress: results print in test order as soon as all earlier ones are in. */
typedef struct progress {
    int printed;
    int verbose;
} progress;

static void test_done(test_result *res, int n, int i, void *arg)
{
    progress *p = arg;
    res[i].finished = 1;
    res[i].transformer = in_transformer_set(&res[i]);
    for (; p->printed < n && res[p->printed].finished; p->printed++) {
        const test_result *r = &res[p->printed];
        if (!p->verbose && r->status != ST_FAIL)
            continue;
        printf("%-12s %s", r->status == ST_PASS ? "PASS" : r->status == ST_FAIL ? "FAIL" : "UNSUPPORTED",
               r->name);
        if (r->detail && r->detail[0])
            printf(": %s", r->detail);
        printf("\n");
    }
    fflush(stdout);
}

/* Removes the scratch folder: files and one level of subfolders (what
 * children killed mid-test leave behind). */
static void remove_work(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) != 0) {
            DIR *sd = opendir(p);
            struct dirent *f;
            while (sd && (f = readdir(sd))) {
                char q[4700];
                snprintf(q, sizeof q, "%s/%s", p, f->d_name);
                unlink(q);
            }
            if (sd)
                closedir(sd);
            rmdir(p);
        }
    }
    closedir(d);
    rmdir(dir);
}

int kiln_cmd_conformance(int argc, char **argv)
{
    const char *dir = NULL, *json = NULL, *filter = NULL;
    double timeout = 60;
    long mem_mb = 8192;
    int verbose = 0, jobs = 1, only_ts = 0;
    conf_opts co;
    memset(&co, 0, sizeof co);
    co.opt_level = 3; /* what kiln build produces by default */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json = argv[++i];
        else if (strcmp(argv[i], "--target") == 0 && i + 1 < argc) {
            const char *t = argv[++i];
            if (strcmp(t, "cpu") != 0 && strcmp(t, "interp") != 0) {
                fprintf(stderr, "kiln conformance: unknown target '%s' (interp or cpu)\n", t);
                return KILN_EXIT_INPUT;
            }
            co.cpu = strcmp(t, "cpu") == 0;
        } else if (!strncmp(argv[i], "-O", 2) && argv[i][2] >= '0' && argv[i][2] <= '3' && !argv[i][3])
            co.opt_level = argv[i][2] - '0';
        else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            timeout = atof(argv[++i]);
        else if (strcmp(argv[i], "--mem-limit-mb") == 0 && i + 1 < argc)
            mem_mb = atol(argv[++i]);
        else if ((strcmp(argv[i], "-j") == 0 && i + 1 < argc) || (!strncmp(argv[i], "-j", 2) && argv[i][2])) {
            jobs = atoi(argv[i][2] ? argv[i] + 2 : argv[++i]);
            if (jobs < 1 || jobs > 256)
                return kiln_cli_usage("conformance");
        }
        else if (strcmp(argv[i], "-v") == 0)
            verbose = 1;
        else if (strcmp(argv[i], "--transformer-set") == 0)
            only_ts = 1;
        else if (argv[i][0] == '-' || dir)
            return kiln_cli_usage("conformance");
        else
            dir = argv[i];
    }
    if (!dir || timeout <= 0)
        return kiln_cli_usage("conformance");

    /* DIR is a tree of test folders, or one test folder */
    char parent[4096], single[4096];
    struct stat st;
    int n_tests = 0;
    char **names;
    snprintf(single, sizeof single, "%s/model.onnx", dir);
    if (stat(single, &st) == 0) {
        snprintf(parent, sizeof parent, "%s/..", dir);
        const char *base = strrchr(dir, '/');
        names = kiln_xmalloc(sizeof *names);
        names[0] = kiln_xstrdup(base && base[1] ? base + 1 : dir);
        n_tests = 1;
        if (base && !base[1]) {
            fprintf(stderr, "kiln conformance: give the test folder without a trailing '/'\n");
            free_list(names, n_tests);
            return KILN_EXIT_INPUT;
        }
        if (base)
            snprintf(parent, sizeof parent, "%.*s", (int)(base - dir), dir);
        else
            snprintf(parent, sizeof parent, ".");
    } else {
        snprintf(parent, sizeof parent, "%s", dir);
        names = list_dir(dir, "", 1, &n_tests);
        if (!names && stat(dir, &st) != 0) {
            fprintf(stderr, "kiln conformance: %s: %s\n", dir, strerror(errno));
            return KILN_EXIT_INPUT;
        }
    }
    test_result *res = kiln_xcalloc((size_t)n_tests + 1, sizeof *res);
    int n = 0;
    for (int i = 0; i < n_tests; i++) {
        if (filter && !strstr(names[i], filter))
            continue;
        if (only_ts && !model_in_transformer_set(parent, names[i]))
            continue;
        res[n++].name = kiln_xstrdup(names[i]);
    }
    free_list(names, n_tests);
    if (!n) {
        fprintf(stderr, "kiln conformance: %s: no test folders (with model.onnx)%s\n", dir,
                filter || only_ts ? " match the filter" : "");
        free(res);
        return KILN_EXIT_INPUT;
    }

    kiln_cli_rt rt;
    memset(&rt, 0, sizeof rt);
    char work[64] = "";
    if (co.cpu) {
        kiln_err err = {{0}};
        snprintf(work, sizeof work, "/tmp/kiln_conf_XXXXXX");
        int made = mkdtemp(work) != NULL;
        if (!made)
            kiln_errf(&err, "cannot create a temporary directory: %s", strerror(errno));
        if (!made || kiln_cli_extract_runtime(&rt, &err)) {
            fprintf(stderr, "kiln conformance: %s\n", err.msg);
            if (made)
                rmdir(work);
            for (int i = 0; i < n; i++)
                free(res[i].name);
            free(res);
            return KILN_EXIT_INPUT;
        }
        co.work = work;
        co.rt = &rt;
    }

    double t0 = now_s();
    progress prog = {0, verbose};
    run_all(parent, res, n, &co, timeout, mem_mb, jobs, test_done, &prog);
    double secs = now_s() - t0;
    if (co.cpu) {
        kiln_cli_remove_runtime(&rt);
        remove_work(work);
    }
    int count[3] = {0}, tcount[3] = {0}, crashes = 0, n_trans = 0;
    for (int i = 0; i < n; i++) {
        const test_result *r = &res[i];
        count[r->status]++;
        crashes += r->crashed;
        if (r->transformer) {
            n_trans++;
            tcount[r->status]++;
        }
    }

    /* per-op table over every test that uses the op */
    op_stat *ops = NULL;
    int n_opst = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < res[i].n_ops; k++) {
            int j = 0;
            while (j < n_opst && strcmp(ops[j].op, res[i].ops[k]) != 0)
                j++;
            if (j == n_opst) {
                ops = kiln_xrealloc(ops, sizeof *ops * (size_t)(n_opst + 1));
                memset(&ops[j], 0, sizeof *ops);
                ops[j].op = res[i].ops[k];
                n_opst++;
            }
            ops[j].n[res[i].status]++;
            ops[j].crashes += res[i].crashed;
        }
    if (n_opst)
        qsort(ops, (size_t)n_opst, sizeof *ops, cmp_opstat);
    printf("\n%-36s %6s %6s %6s %6s\n", "op", "tests", "pass", "fail", "unsup");
    for (int j = 0; j < n_opst; j++)
        printf("%-36s %6d %6d %6d %6d\n", ops[j].op, ops[j].n[0] + ops[j].n[1] + ops[j].n[2],
               ops[j].n[ST_PASS], ops[j].n[ST_FAIL], ops[j].n[ST_UNSUP]);
    printf("\nall tests:       %d: %d pass, %d fail, %d unsupported (%.1f%% pass)\n", n,
           count[ST_PASS], count[ST_FAIL], count[ST_UNSUP], 100.0 * count[ST_PASS] / n);
    printf("transformer set: %d: %d pass, %d fail, %d unsupported (%.1f%% pass)\n", n_trans,
           tcount[ST_PASS], tcount[ST_FAIL], tcount[ST_UNSUP],
           n_trans ? 100.0 * tcount[ST_PASS] / n_trans : 0.0);
    printf("crashes: %d\ntime: %.1f s (target %s", crashes, secs, co.cpu ? "cpu" : "interp");
    if (co.cpu)
        printf(", -O%d", co.opt_level);
    printf(", %d job%s)\n", jobs, jobs > 1 ? "s" : "");

    int rc = crashes ? KILN_EXIT_FAIL : KILN_EXIT_OK;
    if (json) {
        kiln_sb sb = {0};
        kiln_sb_printf(&sb, "{\n  \"suite\": ");
        json_str(&sb, dir);
        kiln_sb_printf(&sb, ",\n  \"target\": \"%s\"", co.cpu ? "cpu" : "interp");
        kiln_sb_printf(&sb, ",\n  \"tests\": [\n");
        for (int i = 0; i < n; i++) {
            const test_result *r = &res[i];
            kiln_sb_printf(&sb, "    {\"test\": ");
            json_str(&sb, r->name);
            kiln_sb_printf(&sb, ", \"ops\": [");
            for (int k = 0; k < r->n_ops; k++) {
                if (k)
                    kiln_sb_printf(&sb, ", ");
                json_str(&sb, r->ops[k]);
            }
            kiln_sb_printf(&sb, "], \"status\": \"%s\", \"transformer_set\": %s, \"crash\": %s, \"detail\": ",
                           status_names[r->status], r->transformer ? "true" : "false",
                           r->crashed ? "true" : "false");
            json_str(&sb, r->detail ? r->detail : "");
            kiln_sb_printf(&sb, "}%s\n", i + 1 < n ? "," : "");
        }
        kiln_sb_printf(&sb, "  ],\n  \"ops\": {\n");
        for (int j = 0; j < n_opst; j++) {
            kiln_sb_printf(&sb, "    ");
            json_str(&sb, ops[j].op);
            kiln_sb_printf(&sb, ": {\"pass\": %d, \"fail\": %d, \"unsupported\": %d, \"crashes\": %d}%s\n",
                           ops[j].n[ST_PASS], ops[j].n[ST_FAIL], ops[j].n[ST_UNSUP],
                           ops[j].crashes, j + 1 < n_opst ? "," : "");
        }
        kiln_sb_printf(&sb,
                       "  },\n  \"summary\": {\"total\": %d, \"pass\": %d, \"fail\": %d, "
                       "\"unsupported\": %d, \"crashes\": %d, \"seconds\": %.1f,\n"
                       "    \"transformer_set\": {\"total\": %d, \"pass\": %d, \"fail\": %d, "
                       "\"unsupported\": %d}}\n}\n",
                       n, count[ST_PASS], count[ST_FAIL], count[ST_UNSUP], crashes, secs, n_trans,
                       tcount[ST_PASS], tcount[ST_FAIL], tcount[ST_UNSUP]);
        FILE *f = fopen(json, "w");
        if (!f || fwrite(sb.s, 1, sb.len, f) != sb.len) {
            fprintf(stderr, "kiln conformance: cannot write %s: %s\n", json, strerror(errno));
            rc = KILN_EXIT_INPUT;
        }
        if (f && fclose(f) != 0 && rc == KILN_EXIT_OK) {
            fprintf(stderr, "kiln conformance: cannot write %s\n", json);
            rc = KILN_EXIT_INPUT;
        }
        kiln_sb_free(&sb);
    }
    for (int i = 0; i < n; i++) {
        free(res[i].name);
        kiln_onnx_free_strings(res[i].ops, res[i].n_ops);
        free(res[i].detail);
    }
    free(res);
    free(ops);
    return rc;
}
