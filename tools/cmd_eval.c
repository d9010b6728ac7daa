/* cmd_eval.c - `kiln eval`: run a model with the reference interpreter. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Output names may hold '/', ':' ...; file names get '_' instead. */
static void file_name(const char *name, char *out, size_t len)
{
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++) {
        char ch = name[i];
        out[i] = (ch == '/' || ch == '\\' || ch == ':' || ch == ' ') ? '_' : ch;
    }
    out[i] = 0;
}

int kiln_cmd_eval(int argc, char **argv)
{
    const char *path = NULL, *outdir = NULL;
    const char *in_names[256], *in_files[256];
    int n_in = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) {
            char *eq = strchr(argv[++i], '=');
            if (!eq || n_in == 256) {
                fprintf(stderr, "kiln eval: --input takes NAME=FILE.npy, got '%s'\n", argv[i]);
                return KILN_EXIT_INPUT;
            }
            *eq = 0;
            in_names[n_in] = argv[i];
            in_files[n_in++] = eq + 1;
        } else if (strcmp(argv[i], "--output-dir") == 0 && i + 1 < argc) {
            outdir = argv[++i];
        } else if (argv[i][0] == '-') {
            return kiln_cli_usage("eval");
        } else if (!path) {
            path = argv[i];
        } else {
            return kiln_cli_usage("eval");
        }
    }
    if (!path)
        return kiln_cli_usage("eval");
    kiln_err err = {{0}};
    kiln_graph *g = kiln_cli_load(path, &err);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return KILN_EXIT_INPUT;
    }
    int rc = KILN_EXIT_INPUT;
    kiln_tensor *ins = kiln_xcalloc((size_t)g->n_inputs + 1, sizeof *ins);
    kiln_tensor *outs = kiln_xcalloc((size_t)g->n_outputs + 1, sizeof *outs);
    kiln_npy *npys = kiln_xcalloc((size_t)g->n_inputs + 1, sizeof *npys);
    if (kiln_verify(g, &err)) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto done;
    }
    for (int k = 0; k < n_in; k++) {
        int vid = kiln_graph_find(g, in_names[k]);
        int slot = -1;
        for (int i = 0; i < g->n_inputs; i++)
            if (g->inputs[i] == vid)
                slot = i;
        if (slot < 0) {
            fprintf(stderr, "kiln eval: %s: graph has no input named '%s'\n", path, in_names[k]);
            goto done;
        }
        if (kiln_npy_read(in_files[k], &npys[slot], &err)) {
            fprintf(stderr, "kiln eval: %s\n", err.msg);
            goto done;
        }
        kiln_tensor *t = &ins[slot];
        t->dtype = npys[slot].dtype;
        t->rank = npys[slot].rank;
        memcpy(t->dims, npys[slot].dims, sizeof(int64_t) * (size_t)t->rank);
        t->data = npys[slot].data;
        t->nbytes = npys[slot].nbytes;
    }
    for (int i = 0; i < g->n_inputs; i++)
        if (!ins[i].data && kiln_type_numel(&g->values[g->inputs[i]].type) != 0) {
            fprintf(stderr, "kiln eval: %s: missing --input for '%s'\n", path,
                    g->values[g->inputs[i]].name);
            goto done;
        }
    if (kiln_interp_run(g, ins, outs, &err)) {
        fprintf(stderr, "kiln eval: %s: %s\n", path, err.msg);
        goto done;
    }
    if (outdir && mkdir(outdir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "kiln eval: cannot create %s: %s\n", outdir, strerror(errno));
        goto done;
    }
    for (int i = 0; i < g->n_outputs; i++) {
        const char *name = g->values[g->outputs[i]].name;
        kiln_tensor *t = &outs[i];
        printf("%s: %s[", name, kiln_dtype_name(t->dtype));
        for (int d = 0; d < t->rank; d++)
            printf("%s%lld", d ? ", " : "", (long long)t->dims[d]);
        printf("]");
        if (outdir) {
            char fn[512], full[1024];
            file_name(name, fn, sizeof fn);
            snprintf(full, sizeof full, "%s/%s.npy", outdir, fn);
            if (kiln_npy_write(full, t->dtype, t->rank, t->dims, t->data, &err)) {
                fprintf(stderr, "\nkiln eval: %s\n", err.msg);
                goto done;
            }
            printf(" -> %s", full);
        } else {
            int64_t n = kiln_tensor_numel(t);
            printf(" =");
            for (int64_t k = 0; k < n && k < 8; k++)
                printf(" %g", kiln_tensor_get(t, k));
            if (n > 8)
                printf(" ...");
        }
        printf("\n");
    }
    rc = 0;
done:
    for (int i = 0; i < g->n_outputs; i++)
        kiln_tensor_free(&outs[i]);
    for (int i = 0; i < g->n_inputs; i++)
        kiln_npy_free(&npys[i]);
    free(ins);
    free(outs);
    free(npys);
    kiln_graph_free(g);
    return rc;
}
