/* kiln_codegen.h - code generation and artifact building.
 *
 * kiln_build: plan memory, write the weights blob, generate the model object
 * (LLVM for CPU), link it with the runtime into an executable or a shared
 * library + header. Nothing is left behind on failure. */
#ifndef KILN_CODEGEN_H
#define KILN_CODEGEN_H

#include "kiln_artifact.h"
#include "kiln_passes.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_MAX_SYMS_CG KILN_MAX_SYMS_PLAN

typedef struct kiln_build_opts {
    const char *out;         /* output path: executable, or NAME.so with --shared */
    const char *target;      /* "cpu" (default) or "cuda" */
    const char *triple;      /* LLVM target triple; NULL = host */
    const char *cpu;         /* CPU name; NULL = host CPU */
    const char *features;    /* feature string; NULL = host features */
    int opt_level;           /* 0..3 (default 3) */
    int shared;              /* build NAME.so + NAME.h instead of an executable */
    int weights_external;    /* write NAME.weights next to the output instead of embedding */
    int keep_temps;          /* keep the intermediate object files (for inspection) */
    const char *emit_object; /* only write the model object here, no link */
    const char *cc;          /* linker driver; NULL = $CC or "cc" */
    const char *rt_lib;      /* runtime archive to link (libkiln_rt_dist.a) */
    const char *rt_main;     /* object with main() for executables */
    const char *rt_header;   /* kiln.h to copy next to a shared library */
    kiln_pass_opts passes;   /* symbol bounds etc. */
    kiln_desc meta;          /* model kind, LM fields, tokenizer blob (filled by the caller) */
    int verbose;
    const char *cuda_archs;  /* --target cuda: extra SM versions ("86,89") besides sm_80 and sm_90 */
} kiln_build_opts;

/* Emits the CPU object for g with plan p (no linking). */
int kiln_codegen_cpu(kiln_graph *g, const kiln_plan *p, const kiln_build_opts *o, const char *obj_path,
                     kiln_err *err);

/* Emits the CUDA object for g with plan p: kernels compiled by NVRTC
 * (cubins for sm_80, sm_90 and o->cuda_archs, plus PTX) and the launch
 * program (codegen/cuda, runtime/kiln_cuda.h). */
int kiln_codegen_cuda(kiln_graph *g, const kiln_plan *p, const kiln_build_opts *o, const char *obj_path,
                      kiln_err *err);

/* Plans memory, writes weights, generates code and links the artifact. */
int kiln_build(kiln_graph *g, const kiln_build_opts *o, kiln_err *err);

/* Runs argv (a NULL-terminated command line, argv[0] looked up in PATH);
 * on failure the error holds the command's first lines of output. */
int kiln_run_cmd(char *const argv[], int verbose, kiln_err *err);

/* Fills a descriptor's I/O and symbol tables from a graph and plan. */
int kiln_desc_from_graph(const kiln_graph *g, const kiln_plan *p, kiln_desc *d, kiln_err *err);

#ifdef __cplusplus
}
#endif
#endif
