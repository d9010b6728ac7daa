/* build.c - from a graph to a deployable artifact: plan memory, stream the
 * weights into one blob, generate the model object, link with the runtime.
 * Everything goes to a temporary directory first; the artifact appears
 * (renamed into place) only when every step succeeded. */
#include "kiln_codegen.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- descriptor ---- */

static int dim_expr(const kiln_graph *g, const kiln_plan *p, kiln_dim d, kiln_dimexpr *e, kiln_err *err)
{
    if (e->n >= KILN_DIMEXPR_MAX - 1)
        return kiln_errf(err, "dimension expression too long");
    if (KILN_DIM_IS_STATIC(d)) {
        e->op[e->n] = KILN_DX_CONST;
        e->arg[e->n++] = d;
        return 0;
    }
    if (d == KILN_DIM_ANY)
        return kiln_errf(err, "a graph input or output has an unknown dimension");
    const kiln_sym *s = &g->syms.syms[KILN_DIM_SYM_ID(d)];
    if (s->kind == KILN_SYM_VAR) {
        for (int i = 0; i < p->n_syms; i++)
            if (p->sym_id[i] == KILN_DIM_SYM_ID(d)) {
                e->op[e->n] = KILN_DX_SYM;
                e->arg[e->n++] = i;
                return 0;
            }
        return kiln_errf(err, "symbol '%s' is not planned", s->name);
    }
    if (dim_expr(g, p, s->a, e, err) || dim_expr(g, p, s->b, e, err))
        return -1;
    e->op[e->n] = s->kind == KILN_SYM_ADD ? KILN_DX_ADD : s->kind == KILN_SYM_SUB ? KILN_DX_SUB
                : s->kind == KILN_SYM_MUL ? KILN_DX_MUL : KILN_DX_DIV;
    e->arg[e->n++] = 0;
    return 0;
}

int kiln_desc_from_graph(const kiln_graph *g, const kiln_plan *p, kiln_desc *d, kiln_err *err)
{
    snprintf(d->kiln_version, sizeof d->kiln_version, "%s", KILN_VERSION);
    if (!d->name[0])
        snprintf(d->name, sizeof d->name, "%s", g->name);
    if (!d->target[0])
        snprintf(d->target, sizeof d->target, "cpu");
    d->abi = KILN_ABI_VERSION;
    d->n_syms = p->n_syms;
    for (int i = 0; i < p->n_syms; i++) {
        snprintf(d->sym_names[i], sizeof d->sym_names[i], "%s", g->syms.syms[p->sym_id[i]].name);
        d->sym_max[i] = p->sym_max[i];
    }
    d->n_inputs = g->n_inputs;
    d->n_outputs = g->n_outputs;
    if (g->n_inputs + g->n_outputs > KILN_MAX_IO)
        return kiln_errf(err, "too many inputs and outputs (%d)", g->n_inputs + g->n_outputs);
    kiln_io_desc *roles = d->io; /* caller may pre-fill roles (LM builds) */
    d->io = kiln_xcalloc((size_t)(g->n_inputs + g->n_outputs) + 1, sizeof *d->io);
    for (int i = 0; i < g->n_inputs + g->n_outputs; i++) {
        int v = i < g->n_inputs ? g->inputs[i] : g->outputs[i - g->n_inputs];
        const kiln_value *val = &g->values[v];
        kiln_io_desc *io = &d->io[i];
        snprintf(io->name, sizeof io->name, "%s", val->name);
        io->dtype = val->type.dtype;
        io->rank = val->type.rank;
        if (io->rank < 0) {
            free(d->io);
            d->io = roles;
            return kiln_errf(err, "%%%s: rank unknown at compile time", val->name);
        }
        for (int k = 0; k < io->rank; k++)
            if (dim_expr(g, p, val->type.dims[k], &io->dims[k], err)) {
                free(d->io);
                d->io = roles;
                return kiln_err_prefix(err, "%%%s: ", val->name);
            }
        if (roles) {
            io->role = roles[i].role;
            io->layer = roles[i].layer;
        }
    }
    free(roles);
    d->arena_bytes = (uint64_t)p->arena_bytes;
    return 0;
}

/* ---- weights blob ---- */

static int write_weights(kiln_graph *g, const kiln_plan *p, const char *path, uint64_t *hash, kiln_err *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return kiln_errf(err, "%s: cannot create: %s", path, strerror(errno));
    kiln_weights_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, KILN_WEIGHTS_MAGIC, 8);
    h.abi = KILN_ABI_VERSION;
    h.header_bytes = sizeof h;
    h.data_bytes = (uint64_t)p->weights_bytes;
    fwrite(&h, 1, sizeof h, f); /* rewritten with the hash at the end */
    uint64_t hh = KILN_FNV_INIT, pos = 0;
    static const uint8_t zeros[64];
    for (int v = 0; v < g->n_values; v++) {
        const kiln_buf *b = &p->bufs[v];
        if (b->kind != KILN_BUF_WEIGHT || b->last < 0)
            continue;
        while (pos < (uint64_t)b->offset) { /* alignment padding */
            size_t n = (size_t)((uint64_t)b->offset - pos) > sizeof zeros ? sizeof zeros : (size_t)((uint64_t)b->offset - pos);
            fwrite(zeros, 1, n, f);
            hh = kiln_fnv1a(hh, zeros, n);
            pos += n;
        }
        const void *data = kiln_graph_value_data(g, v, err);
        if (!data) {
            fclose(f);
            return -1;
        }
        size_t nb = g->values[v].nbytes;
        /* stream in chunks: source pages are read once and dropped */
        for (size_t off = 0; off < nb; off += 1 << 20) {
            size_t n = nb - off < (1 << 20) ? nb - off : (1 << 20);
            if (fwrite((const uint8_t *)data + off, 1, n, f) != n) {
                fclose(f);
                return kiln_errf(err, "%s: write failed", path);
            }
            hh = kiln_fnv1a(hh, (const uint8_t *)data + off, n);
        }
        pos += nb;
    }
    while (pos < (uint64_t)p->weights_bytes) {
        size_t n = (size_t)((uint64_t)p->weights_bytes - pos) > sizeof zeros ? sizeof zeros : (size_t)((uint64_t)p->weights_bytes - pos);
        fwrite(zeros, 1, n, f);
        hh = kiln_fnv1a(hh, zeros, n);
        pos += n;
    }
    h.hash = hh;
    fseek(f, 0, SEEK_SET);
    fwrite(&h, 1, sizeof h, f);
    if (fclose(f) != 0)
        return kiln_errf(err, "%s: write failed", path);
    *hash = hh;
    return 0;
}

/* ---- running the linker (and the CUDA target's host compiler) ---- */

int kiln_run_cmd(char *const argv[], int verbose, kiln_err *err)
{
    if (verbose) {
        fprintf(stderr, "kiln:");
        for (int i = 0; argv[i]; i++)
            fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, "\n");
    }
    int pfd[2];
    if (pipe(pfd) != 0)
        return kiln_errf(err, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        return kiln_errf(err, "fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(pfd[1], 2);
        dup2(pfd[1], 1);
        close(pfd[0]);
        execvp(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    char out[2048];
    size_t n = 0;
    ssize_t r;
    while ((r = read(pfd[0], out + n, sizeof out - 1 - n)) > 0) {
        n += (size_t)r;
        if (n >= sizeof out - 1)
            n = sizeof out - 1;
    }
    out[n] = 0;
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        for (char *q = out; *q; q++)
            if (*q == '\n')
                *q = ' ';
        return kiln_errf(err, "%s failed: %.900s", argv[0], out);
    }
    return 0;
}

/* Moves a finished file into place: rename(2), or mv across file systems. */
static int move_file(const char *from, const char *to, kiln_err *err)
{
    if (rename(from, to) == 0)
        return 0;
    if (errno != EXDEV)
        return kiln_errf(err, "cannot move the result to %s: %s", to, strerror(errno));
    char *argv[] = {"mv", "-f", (char *)from, (char *)to, NULL};
    return kiln_run_cmd(argv, 0, err);
}

/* Removes the build's temporary folder, which holds plain files only
 * (best effort: a leftover temp folder is harmless). */
static void rm_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* Symbols the memory plan lists but no value's shape mentions (an input
 * made static or constant by specialization leaves its symbols unused)
 * are dropped: no input could bind them at run time. */
static void mark_dim(const kiln_graph *g, kiln_dim d, char *used)
{
    if (!KILN_DIM_IS_SYM(d) || used[KILN_DIM_SYM_ID(d)])
        return;
    const kiln_sym *s = &g->syms.syms[KILN_DIM_SYM_ID(d)];
    used[KILN_DIM_SYM_ID(d)] = 1;
    if (s->kind != KILN_SYM_VAR) {
        mark_dim(g, s->a, used);
        mark_dim(g, s->b, used);
    }
}

static void drop_unused_syms(const kiln_graph *g, kiln_plan *p)
{
    char *used = kiln_xcalloc((size_t)g->syms.n + 1, 1);
    for (int v = 0; v < g->n_values; v++) {
        const kiln_type *t = &g->values[v].type;
        for (int k = 0; k < t->rank; k++)
            mark_dim(g, t->dims[k], used);
    }
    int n = 0;
    for (int i = 0; i < p->n_syms; i++)
        if (used[p->sym_id[i]]) {
            p->sym_id[n] = p->sym_id[i];
            p->sym_max[n++] = p->sym_max[i];
        }
    p->n_syms = n;
    free(used);
}

int kiln_build(kiln_graph *g, const kiln_build_opts *o, kiln_err *err)
{
    if (!o->out && !o->emit_object)
        return kiln_errf(err, "no output path");
    int cuda = o->target && !strcmp(o->target, "cuda");
    if (o->target && strcmp(o->target, "cpu") != 0 && !cuda)
        return kiln_errf(err, "target '%s' is not supported by this build step", o->target);
    char tmp[] = "/tmp/kiln_build_XXXXXX";
    if (!mkdtemp(tmp))
        return kiln_errf(err, "cannot create a temporary directory: %s", strerror(errno));
    int rc = -1;
    kiln_plan plan;
    memset(&plan, 0, sizeof plan);
    char obj[4200], wts[4200], wasm[4200], wobj[4200], hdr[4200], outtmp[4200];
    snprintf(obj, sizeof obj, "%s/model.o", tmp);
    snprintf(wts, sizeof wts, "%s/model.weights", tmp);
    snprintf(wasm, sizeof wasm, "%s/weights.S", tmp);
    snprintf(wobj, sizeof wobj, "%s/weights.o", tmp);
    snprintf(outtmp, sizeof outtmp, "%s/out.bin", tmp);
    if (kiln_plan_memory(g, &o->passes, &plan, err))
        goto out;
    drop_unused_syms(g, &plan);
    kiln_build_opts oo = *o;
    uint64_t hash = KILN_FNV_INIT;
    if (plan.weights_bytes && write_weights(g, &plan, wts, &hash, err))
        goto out;
    oo.meta.weights_bytes = (uint64_t)plan.weights_bytes;
    oo.meta.weights_hash = plan.weights_bytes ? hash : 0;
    if (cuda ? kiln_codegen_cuda(g, &plan, &oo, obj, err) : kiln_codegen_cpu(g, &plan, &oo, obj, err))
        goto out;
    if (o->emit_object) {
        rc = move_file(obj, o->emit_object, err);
        goto out;
    }
    int embed = plan.weights_bytes && !o->weights_external;
    if (embed) {
        FILE *f = fopen(wasm, "w");
        if (!f) {
            kiln_errf(err, "%s: cannot create", wasm);
            goto out;
        }
        fprintf(f, "\t.section .rodata.kiln_weights,\"a\"\n\t.balign 64\n\t.globl kiln_weights_blob\n"
                   "\t.type kiln_weights_blob, @object\nkiln_weights_blob:\n\t.incbin \"%s\"\n"
                   "\t.section .note.GNU-stack,\"\",@progbits\n", wts);
        fclose(f);
    }
    const char *cc = o->cc ? o->cc : getenv("CC") ? getenv("CC") : "cc";
    if (embed) {
        char *argv[] = {(char *)cc, "-c", "-o", wobj, wasm, NULL};
        if (kiln_run_cmd(argv, o->verbose, err))
            goto out;
    }
    {
        char *argv[32];
        int a = 0;
        argv[a++] = (char *)cc;
        if (o->shared)
            argv[a++] = "-shared";
        argv[a++] = "-o";
        argv[a++] = outtmp;
        argv[a++] = obj;
        if (embed)
            argv[a++] = wobj;
        if (!o->shared)
            argv[a++] = (char *)o->rt_main;
        if (o->shared) /* the library exports the whole kiln.h API */
            argv[a++] = "-Wl,--whole-archive";
        argv[a++] = (char *)o->rt_lib;
        if (o->shared)
            argv[a++] = "-Wl,--no-whole-archive";
        argv[a++] = "-lm";
        argv[a++] = "-lpthread";
        argv[a++] = "-ldl";
        argv[a] = NULL;
        if (!o->rt_lib || (!o->shared && !o->rt_main)) {
            kiln_errf(err, "runtime library not available to link against");
            goto out;
        }
        if (kiln_run_cmd(argv, o->verbose, err))
            goto out;
    }
    /* everything built: move into place */
    if (plan.weights_bytes && o->weights_external) {
        char wdst[4200];
        snprintf(wdst, sizeof wdst, "%s", o->out);
        char *dot = strrchr(wdst, '.'), *slash = strrchr(wdst, '/');
        if (o->shared && dot && (!slash || dot > slash) && !strcmp(dot, ".so"))
            *dot = 0;
        strncat(wdst, ".weights", sizeof wdst - strlen(wdst) - 1);
        if (move_file(wts, wdst, err))
            goto out;
    }
    if (o->shared && o->rt_header) {
        snprintf(hdr, sizeof hdr, "%s", o->out);
        char *dot = strrchr(hdr, '.'), *slash = strrchr(hdr, '/');
        if (dot && (!slash || dot > slash))
            *dot = 0;
        strncat(hdr, ".h", sizeof hdr - strlen(hdr) - 1);
        char *argv[] = {"cp", (char *)o->rt_header, hdr, NULL};
        if (kiln_run_cmd(argv, 0, err))
            goto out;
    }
    if (move_file(outtmp, o->out, err))
        goto out;
    rc = 0;
out:
    kiln_plan_free(&plan);
    if (o->keep_temps)
        fprintf(stderr, "kiln: intermediate files kept in %s\n", tmp);
    else
        rm_tmp(tmp);
    return rc;
}
