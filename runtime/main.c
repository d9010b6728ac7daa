/* main.c - main() of executables built by `kiln build` (non-LM models):
 *   ./NAME --input x=in.npy ... [--output-dir DIR] [-t THREADS] [--weights FILE] [--repeat N]
 * Reads inputs as .npy, runs the model, writes one .npy per output. */
#include "kiln.h"
#include "kiln_artifact.h"
#include "kiln_model_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int usage(const char *prog)
{
    fprintf(stderr, "usage: %s --input NAME=FILE.npy ... [--output-dir DIR] [-t THREADS] "
                    "[--weights FILE] [--repeat N]\n", prog);
    return 2;
}

int kiln_main_generic(int argc, char **argv);

int kiln_main_generic(int argc, char **argv)
{
    const char *outdir = ".", *weights = NULL;
    const char *names[KILN_MAX_IO], *files[KILN_MAX_IO];
    int n_in = 0, threads = 0, repeat = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--input") && i + 1 < argc) {
            char *eq = strchr(argv[++i], '=');
            if (!eq || n_in == KILN_MAX_IO)
                return usage(argv[0]);
            *eq = 0;
            names[n_in] = argv[i];
            files[n_in++] = eq + 1;
        } else if (!strcmp(argv[i], "--output-dir") && i + 1 < argc) {
            outdir = argv[++i];
        } else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--weights") && i + 1 < argc) {
            weights = argv[++i];
        } else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) {
            repeat = atoi(argv[++i]);
        } else {
            return usage(argv[0]);
        }
    }
    kiln_model *m = NULL;
    kiln_err err;
    if (kiln_model_open_internal(&m, weights, threads, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        return 2;
    }
    const kiln_desc *d = &m->desc;
    int rc = 2;
    kiln_npy *arr = kiln_xcalloc((size_t)d->n_inputs + 1, sizeof *arr);
    kiln_buffer *in = kiln_xcalloc((size_t)d->n_inputs + 1, sizeof *in);
    kiln_buffer *out = kiln_xcalloc((size_t)d->n_outputs + 1, sizeof *out);
    for (int i = 0; i < d->n_inputs; i++) {
        int k = -1;
        for (int j = 0; j < n_in; j++)
            if (!strcmp(names[j], d->io[i].name))
                k = j;
        if (k < 0) {
            fprintf(stderr, "%s: missing --input %s=FILE.npy\n", argv[0], d->io[i].name);
            goto done;
        }
        if (kiln_npy_read(files[k], &arr[i], &err)) {
            fprintf(stderr, "%s: %s\n", argv[0], err.msg);
            goto done;
        }
        in[i].dtype = (int)arr[i].dtype;
        in[i].rank = arr[i].rank;
        memcpy(in[i].dims, arr[i].dims, sizeof(int64_t) * (size_t)arr[i].rank);
        in[i].data = arr[i].data;
    }
    for (int j = 0; j < n_in; j++) {
        int found = 0;
        for (int i = 0; i < d->n_inputs; i++)
            found |= !strcmp(names[j], d->io[i].name);
        if (!found) {
            fprintf(stderr, "%s: the model has no input named '%s'\n", argv[0], names[j]);
            goto done;
        }
    }
    char msg[1024];
    double best = 1e30;
    for (int r = 0; r < (repeat > 0 ? repeat : 1); r++) {
        if (r)
            for (int o = 0; o < d->n_outputs; o++)
                kiln_buffer_free(&out[o]);
        double t0 = now_s();
        if (kiln_run(m, in, out, msg, sizeof msg)) {
            fprintf(stderr, "%s: %s\n", argv[0], msg);
            goto done;
        }
        double t = now_s() - t0;
        if (t < best)
            best = t;
    }
    if (repeat > 1)
        fprintf(stderr, "%s: best of %d runs: %.3f ms\n", argv[0], repeat, best * 1e3);
    if (mkdir(outdir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create %s: %s\n", argv[0], outdir, strerror(errno));
        goto done;
    }
    for (int o = 0; o < d->n_outputs; o++) {
        char fn[4096], clean[256];
        const char *name = d->io[d->n_inputs + o].name;
        size_t q = 0;
        for (; name[q] && q + 1 < sizeof clean; q++)
            clean[q] = (name[q] == '/' || name[q] == ':' || name[q] == ' ' || name[q] == '\\') ? '_' : name[q];
        clean[q] = 0;
        snprintf(fn, sizeof fn, "%s/%s.npy", outdir, clean);
        if (kiln_npy_write(fn, (kiln_dtype)out[o].dtype, out[o].rank, out[o].dims, out[o].data, &err)) {
            fprintf(stderr, "%s: %s\n", argv[0], err.msg);
            goto done;
        }
        printf("%s -> %s\n", name, fn);
    }
    rc = 0;
done:
    for (int o = 0; o < d->n_outputs; o++)
        kiln_buffer_free(&out[o]);
    for (int i = 0; i < d->n_inputs; i++)
        kiln_npy_free(&arr[i]);
    free(arr);
    free(in);
    free(out);
    kiln_close(m);
    return rc;
}

int main(int argc, char **argv) { return kiln_main_generic(argc, argv); }
