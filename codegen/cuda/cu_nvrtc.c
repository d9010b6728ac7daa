/* cu_nvrtc.c - compiling the generated CUDA C with NVRTC, loaded with
 * dlopen so the kiln binary runs (and builds CPU targets) without CUDA.
 * Search: $KILN_NVRTC (the library file, or a folder holding it), then
 * libnvrtc.so.13 / .12 / libnvrtc.so on the loader path, then the usual
 * toolkit folders. */
#include "cu.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvrtcResult;
typedef struct _nvrtcProgram *nvrtcProgram;

typedef struct nvrtc {
    void *lib;
    nvrtcResult (*create)(nvrtcProgram *, const char *, const char *, int, const char *const *, const char *const *);
    nvrtcResult (*compile)(nvrtcProgram, int, const char *const *);
    nvrtcResult (*log_size)(nvrtcProgram, size_t *);
    nvrtcResult (*log)(nvrtcProgram, char *);
    nvrtcResult (*cubin_size)(nvrtcProgram, size_t *);
    nvrtcResult (*cubin)(nvrtcProgram, char *);
    nvrtcResult (*ptx_size)(nvrtcProgram, size_t *);
    nvrtcResult (*ptx)(nvrtcProgram, char *);
    nvrtcResult (*destroy)(nvrtcProgram *);
    const char *(*errstr)(nvrtcResult);
    nvrtcResult (*version)(int *, int *);
} nvrtc;

static void *try_open(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }

static int load_nvrtc(nvrtc *n, kiln_err *err)
{
    memset(n, 0, sizeof *n);
    static const char *const names[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so", NULL};
    static const char *const dirs[] = {"/usr/local/cuda/lib64", "/usr/local/cuda/lib",
                                       "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu", NULL};
    const char *env = getenv("KILN_NVRTC");
    char path[4200];
    if (env && *env) {
        n->lib = try_open(env);
        for (int i = 0; !n->lib && names[i]; i++) {
            snprintf(path, sizeof path, "%s/%s", env, names[i]);
            n->lib = try_open(path);
        }
        if (!n->lib)
            return kiln_errf(err, "KILN_NVRTC=%s: cannot load NVRTC from there (%s)", env, dlerror());
    }
    for (int i = 0; !n->lib && names[i]; i++)
        n->lib = try_open(names[i]);
    for (int d = 0; !n->lib && dirs[d]; d++)
        for (int i = 0; !n->lib && names[i]; i++) {
            snprintf(path, sizeof path, "%s/%s", dirs[d], names[i]);
            n->lib = try_open(path);
        }
    if (!n->lib)
        return kiln_errf(err, "NVRTC (libnvrtc.so) not found: install the CUDA toolkit's NVRTC or set "
                              "KILN_NVRTC to the library's path");
#define SYM(f, name)                                                                       \
    do {                                                                                   \
        *(void **)&n->f = dlsym(n->lib, name);                                             \
        if (!n->f) {                                                                       \
            dlclose(n->lib);                                                               \
            n->lib = NULL;                                                                 \
            return kiln_errf(err, "NVRTC library lacks %s (too old?)", name);              \
        }                                                                                  \
    } while (0)
    SYM(create, "nvrtcCreateProgram");
    SYM(compile, "nvrtcCompileProgram");
    SYM(log_size, "nvrtcGetProgramLogSize");
    SYM(log, "nvrtcGetProgramLog");
    SYM(cubin_size, "nvrtcGetCUBINSize");
    SYM(cubin, "nvrtcGetCUBIN");
    SYM(ptx_size, "nvrtcGetPTXSize");
    SYM(ptx, "nvrtcGetPTX");
    SYM(destroy, "nvrtcDestroyProgram");
    SYM(errstr, "nvrtcGetErrorString");
    SYM(version, "nvrtcVersion");
#undef SYM
    return 0;
}

/* Line `line` (1-based) of src, trimmed, into buf. */
static void src_line(const char *src, int line, char *buf, size_t len)
{
    const char *p = src;
    for (int l = 1; l < line && p; l++) {
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    buf[0] = 0;
    if (!p)
        return;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = 0;
    while (p[n] && p[n] != '\n' && n + 1 < len)
        n++;
    memcpy(buf, p, n);
    buf[n] = 0;
}

/* Turns NVRTC's log into one line: the first error, its generated source
 * line and the node whose kernel holds it. */
static int report(cu *c, const char *log, const char *src, const char *target, kiln_err *err)
{
    const char *e = strstr(log, ": error");
    if (!e)
        e = strstr(log, "error");
    const char *ls = e;
    while (ls && ls > log && ls[-1] != '\n')
        ls--;
    char first[400] = "";
    if (ls) {
        size_t n = 0;
        while (ls[n] && ls[n] != '\n' && n + 1 < sizeof first)
            n++;
        memcpy(first, ls, n);
        first[n] = 0;
    } else {
        snprintf(first, sizeof first, "%.300s", log);
    }
    int line = 0;
    const char *lp = ls ? strchr(ls, '(') : NULL;
    if (lp && lp < e)
        line = atoi(lp + 1);
    char code[240] = "", where[240] = "";
    if (line > 0) {
        src_line(src, line, code, sizeof code);
        for (int i = 0; i < c->nk; i++)
            if (line >= c->kern[i].line0 && line < c->kern[i].line1) {
                char lab[160];
                const kiln_node *n = c->kern[i].node >= 0 ? &c->g->nodes[c->kern[i].node] : NULL;
                snprintf(where, sizeof where, " in kernel %s (%s)", c->kern[i].name,
                         n ? kiln_node_label(c->g, n, lab, sizeof lab) : "output copy");
            }
    }
    for (char *q = first; *q; q++)
        if (*q == '\n' || *q == '\r')
            *q = ' ';
    return kiln_errf(err, "NVRTC (%s) rejected the generated CUDA: %s%s; generated line %d: %s", target, first, where,
                     line, code);
}

static int compile_one(cu *c, nvrtc *n, const char *src, const char *arch_opt, int want_cubin, cu_image *out,
                       kiln_err *err)
{
    nvrtcProgram prog;
    nvrtcResult r = n->create(&prog, src, "kiln_model.cu", 0, NULL, NULL);
    if (r)
        return kiln_errf(err, "NVRTC: cannot create a program: %s", n->errstr(r));
    const char *opts[] = {arch_opt, "--std=c++17", "-w"};
    r = n->compile(prog, 3, opts);
    int rc = 0;
    if (r) {
        size_t ls = 0;
        n->log_size(prog, &ls);
        char *log = kiln_xmalloc(ls + 1);
        log[0] = 0;
        if (ls)
            n->log(prog, log);
        log[ls] = 0;
        rc = report(c, log, src, arch_opt + strlen("--gpu-architecture="), err);
        free(log);
    } else {
        size_t sz = 0;
        r = want_cubin ? n->cubin_size(prog, &sz) : n->ptx_size(prog, &sz);
        if (r || !sz) {
            rc = kiln_errf(err, "NVRTC produced no %s for %s", want_cubin ? "cubin" : "PTX", arch_opt);
        } else {
            out->data = kiln_xmalloc(sz);
            out->size = sz;
            r = want_cubin ? n->cubin(prog, (char *)out->data) : n->ptx(prog, (char *)out->data);
            if (r)
                rc = kiln_errf(err, "NVRTC: %s", n->errstr(r));
        }
    }
    n->destroy(&prog);
    return rc;
}

int cu_nvrtc_compile(cu *c, const char *src, const int *archs, int narch, cu_image *out, int *nout,
                     kiln_err *err)
{
    nvrtc n;
    *nout = 0;
    if (load_nvrtc(&n, err))
        return -1;
    int rc = 0, minarch = archs[0];
    for (int i = 0; i < narch; i++)
        if (archs[i] < minarch)
            minarch = archs[i];
    char opt[64];
    for (int i = 0; i < narch && !rc; i++) {
        snprintf(opt, sizeof opt, "--gpu-architecture=sm_%d", archs[i]);
        out[*nout].arch = archs[i];
        rc = compile_one(c, &n, src, opt, 1, &out[*nout], err);
        if (out[*nout].data)
            (*nout)++;
    }
    if (!rc) { /* PTX for GPUs newer than every cubin: the driver JIT-compiles it */
        snprintf(opt, sizeof opt, "--gpu-architecture=compute_%d", minarch);
        out[*nout].arch = 0;
        rc = compile_one(c, &n, src, opt, 0, &out[*nout], err);
        if (out[*nout].data)
            (*nout)++;
    }
    /* NVRTC stays loaded: its C++ runtime keeps allocations (the exception
     * emergency pool) that unloading would turn into leaks */
    return rc;
}
