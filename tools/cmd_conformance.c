/* cmd_conformance.c - `kiln conformance`: runs ONNX backend node tests
 * (model.onnx + test_data_set_*) through import -> verify -> reference
 * interpreter and compares with the stored outputs.
 *
 * Every test runs in a forked child under a time limit, so a crash or hang
 * is one failed test ("crash: signal 11", "timeout") and the run goes on. The
 * child reports over a pipe: one "O\t<op>" line per op type (sent before the
 * import, so even a crashing test is counted under its ops), then one
 * "S\t<status>\t<detail>" line. */
#include "cli.h"
#include "kiln_onnx.h"

#include <dirent.h>
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

typedef struct test_result {
    char *name;
    char **ops;
    int n_ops;
    int status;
    int crashed;
    int transformer;
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

static void child_run(const char *dir, const char *test, int fd)
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
    int ok = n_sets > 0;
    if (!ok)
        kiln_errf(&err, "no test_data_set_* folders");
    for (int i = 0; i < n_sets && ok; i++) {
        char set[8200];
        snprintf(set, sizeof set, "%s/%s", tdir, sets[i]);
        if (run_set(g, set, &err)) {
            kiln_err_prefix(&err, "%s: ", sets[i]);
            ok = 0;
        }
    }
    free_list(sets, n_sets);
    kiln_graph_free(g);
    send_line(fd, "S", ok ? "pass" : "fail", ok ? "" : err.msg);
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

static void run_one(const char *dir, test_result *r, double timeout, long mem_mb)
{
    int fds[2];
    r->status = ST_FAIL;
    if (pipe(fds) != 0) {
        r->detail = kiln_xstrdup("pipe failed");
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        r->detail = kiln_xstrdup("fork failed");
        return;
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
        child_run(dir, r->name, fds[1]);
        close(fds[1]);
        _exit(0); /* no atexit handlers or stdio flushes of the parent's state */
    }
    close(fds[1]);
    size_t cap = 4096, len = 0;
    char *buf = kiln_xmalloc(cap);
    double deadline = now_s() + timeout;
    int timed_out = 0;
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd pf = {fds[0], POLLIN, 0};
        int pr = poll(&pf, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            continue; /* re-check the deadline */
        if (len + 1024 > cap) {
            cap *= 2;
            buf = kiln_xrealloc(buf, cap);
        }
        ssize_t got = read(fds[0], buf + len, cap - len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    buf[len] = 0;
    if (timed_out)
        kill(pid, SIGKILL);
    close(fds[0]);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
        ;
    parse_report(r, buf);
    free(buf);
    char msg[128] = "";
    if (timed_out)
        snprintf(msg, sizeof msg, "timeout after %.0f s", timeout);
    else if (WIFSIGNALED(ws))
        snprintf(msg, sizeof msg, "crash: signal %d", WTERMSIG(ws));
    else if (WIFEXITED(ws) && WEXITSTATUS(ws) != 0)
        snprintf(msg, sizeof msg, "crash: exit status %d", WEXITSTATUS(ws));
    if (msg[0]) {
        r->status = ST_FAIL;
        r->crashed = !timed_out;
        free(r->detail);
        r->detail = kiln_xstrdup(msg);
    }
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

int kiln_cmd_conformance(int argc, char **argv)
{
    const char *dir = NULL, *json = NULL, *filter = NULL;
    double timeout = 60;
    long mem_mb = 8192;
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json = argv[++i];
        else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            timeout = atof(argv[++i]);
        else if (strcmp(argv[i], "--mem-limit-mb") == 0 && i + 1 < argc)
            mem_mb = atol(argv[++i]);
        else if (strcmp(argv[i], "-v") == 0)
            verbose = 1;
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
        res[n++].name = kiln_xstrdup(names[i]);
    }
    free_list(names, n_tests);
    if (!n) {
        fprintf(stderr, "kiln conformance: %s: no test folders (with model.onnx)%s\n", dir,
                filter ? " match the filter" : "");
        free(res);
        return KILN_EXIT_INPUT;
    }

    double t0 = now_s();
    int count[3] = {0}, tcount[3] = {0}, crashes = 0, n_trans = 0;
    for (int i = 0; i < n; i++) {
        test_result *r = &res[i];
        run_one(parent, r, timeout, mem_mb);
        r->transformer = in_transformer_set(r);
        count[r->status]++;
        crashes += r->crashed;
        if (r->transformer) {
            n_trans++;
            tcount[r->status]++;
        }
        if (verbose || r->status == ST_FAIL) {
            printf("%-12s %s", r->status == ST_PASS ? "PASS" : r->status == ST_FAIL ? "FAIL" : "UNSUPPORTED",
                   r->name);
            if (r->detail && r->detail[0])
                printf(": %s", r->detail);
            printf("\n");
        }
    }
    double secs = now_s() - t0;

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
    printf("crashes: %d\ntime: %.1f s\n", crashes, secs);

    int rc = crashes ? KILN_EXIT_FAIL : KILN_EXIT_OK;
    if (json) {
        kiln_sb sb = {0};
        kiln_sb_printf(&sb, "{\n  \"suite\": ");
        json_str(&sb, dir);
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
