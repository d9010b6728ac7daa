/* cg_module.c - the CPU code generator's driver: one LLVM module with the
 * kernels, the host function kiln_model_run, the descriptor and the
 * constants; optimized with LLVM's O3 pipeline and emitted as an object. */
#include "cg.h"

#include <llvm-c/Analysis.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct launch {
    LLVMValueRef fn;
    kiln_dim dims[KILN_MAX_RANK];
    int ndims;
    int64_t grain;
} launch;

/* launches live beside the cg (cg.h keeps only the function list) */
typedef struct cg_ext {
    cg c;
    launch *l;
    int nl, capl;
} cg_ext;

void cg_launch(cg *c, LLVMValueRef fn, const kiln_dim *trip_dims, int ntrip, int64_t grain, int ni)
{
    cg_ext *x = (cg_ext *)c;
    (void)ni;
    if (x->nl == x->capl) {
        x->capl = x->capl ? x->capl * 2 : 64;
        x->l = kiln_xrealloc(x->l, sizeof *x->l * (size_t)x->capl);
    }
    launch *L = &x->l[x->nl++];
    L->fn = fn;
    L->ndims = ntrip;
    for (int i = 0; i < ntrip && i < KILN_MAX_RANK; i++)
        L->dims[i] = trip_dims[i];
    L->grain = grain;
}

static int is_matmul(const char *op)
{
    return !strcmp(op, "MatMul") || !strcmp(op, "Gemm") || !strcmp(op, "Linear") ||
           !strcmp(op, "FusedMatMul") || !strcmp(op, "Einsum");
}

static int is_reduce(const char *op) { return !strncmp(op, "Reduce", 6) || !strcmp(op, "ArgMax") || !strcmp(op, "ArgMin"); }

static int is_nn(const char *op)
{
    static const char *n[] = {"Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "RMSNormalization",
                              "SimplifiedLayerNormalization", "SkipLayerNormalization",
                              "SkipSimplifiedLayerNormalization", "BatchNormalization",
                              "InstanceNormalization", "GroupNormalization", "RotaryEmbedding",
                              "Attention", "GQAttention", NULL};
    for (int i = 0; n[i]; i++)
        if (!strcmp(op, n[i]))
            return 1;
    return 0;
}

/* Dequantize, and Gather from a block-quantized table: the runtime's row
 * dequantizer per row. */
static int lower_dequant_rows(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    int gather = !strcmp(n->op->name, "Gather");
    const kiln_type *wt = &c->g->values[n->inputs[0]].type, *ot = &c->g->values[n->outputs[0]].type;
    if (!kiln_dtype_get(wt->dtype)->is_quant) {
        return cg_lower_map(c, ni);
    }
    int64_t K = wt->dims[wt->rank - 1];
    if (!KILN_DIM_IS_STATIC(K))
        return cg_fail(c, n, "quantized rows must have a static length");
    if (gather && (kiln_node_int(n, "axis") != 0 || wt->rank != 2))
        return cg_fail(c, n, "quantized Gather must take rows (axis 0) of a 2-D table");
    kc k;
    kc_begin(c, &k, n);
    LLVMBuilderRef b = c->b;
    LLVMValueRef W = kc_ptr(&k, n->inputs[0]), O = kc_ptr(&k, n->outputs[0]);
    LLVMValueRef rowbytes = kc_i64(&k, (int64_t)kiln_dtype_storage(wt->dtype, K));
    kc_loop l;
    LLVMValueRef r = kc_for(&k, &l, k.begin, k.end, "row");
    LLVMValueRef src_row = r;
    if (gather) {
        const kiln_type *it = &c->g->values[n->inputs[1]].type;
        LLVMValueRef iv = kc_load(&k, it->dtype, kc_ptr(&k, n->inputs[1]), r, CT_I64);
        LLVMValueRef rows = kc_dim(&k, wt->dims[0]);
        src_row = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, iv, kc_i64(&k, 0), ""), LLVMBuildAdd(b, iv, rows, ""), iv, "");
    }
    LLVMValueRef boff = LLVMBuildMul(b, src_row, rowbytes, "");
    LLVMValueRef src = LLVMBuildGEP2(b, c->t_i8, W, &boff, 1, "");
    LLVMValueRef doff = LLVMBuildMul(b, r, kc_i64(&k, K), "");
    LLVMValueRef dst = LLVMBuildGEP2(b, c->t_f32, O, &doff, 1, "");
    if (ot->dtype != KILN_F32)
        return cg_fail(c, n, "dequantized rows must be f32");
    kc_call_dequant(&k, wt->dtype, src, dst, kc_i64(&k, K));
    kc_for_end(&k, &l);
    kc_end(&k);
    kiln_dim trip[KILN_MAX_RANK];
    int nt = 0;
    for (int d = 0; d < ot->rank - 1; d++)
        trip[nt++] = ot->dims[d];
    cg_launch(c, k.fn, trip, nt, 16, ni);
    return c->failed ? -1 : 0;
}

static int lower_node(cg *c, int ni)
{
    const kiln_node *n = &c->g->nodes[ni];
    const char *op = n->op->name;
    if (n->kernel >= 0) {
        /* a fused group is generated once, at its last node: by then every
         * value it reads from outside has been computed */
        int first = -1, last = cg_group_last(c, n->kernel);
        for (int i = 0; i < c->g->n_nodes && first < 0; i++)
            if (c->g->nodes[i].kernel == n->kernel)
                first = i;
        if (ni != last)
            return 0;
        if (is_matmul(c->g->nodes[first].op->name))
            return cg_lower_matmul(c, first);
        return cg_lower_map_group(c, last);
    }
    /* nothing to compute when every output is a view or kernel-internal */
    int needed = 0;
    for (int o = 0; o < n->n_outputs; o++) {
        kiln_buf_kind k = c->plan->bufs[n->outputs[o]].kind;
        needed |= k != KILN_BUF_NONE && k != KILN_BUF_ALIAS;
        if (k == KILN_BUF_ALIAS && (n->op->flags & KILN_OP_ELEMENTWISE) && strcmp(op, "Identity") && strcmp(op, "Dropout"))
            needed = 1; /* in-place elementwise still computes */
    }
    if (!needed)
        return 0;
    if (!strcmp(op, "Dequantize") || (!strcmp(op, "Gather") && kiln_dtype_get(c->g->values[n->inputs[0]].type.dtype)->is_quant))
        return lower_dequant_rows(c, ni);
    if (is_matmul(op))
        return cg_lower_matmul(c, ni);
    if (is_reduce(op))
        return cg_lower_reduce(c, ni);
    if (is_nn(op))
        return cg_lower_nn(c, ni);
    if (cg_is_map_op(n))
        return cg_lower_map(c, ni);
    return cg_lower_misc(c, ni);
}

/* Graph outputs that are not a node's own buffer (inputs, weights, consts,
 * views, duplicates) are copied into the caller's output buffer: slot
 * n_values + i holds that buffer. */
static int lower_output_copy(cg *c, int i)
{
    int v = c->g->outputs[i];
    const kiln_type *t = &c->g->values[v].type;
    kc k;
    kc_begin(c, &k, NULL);
    LLVMBuilderRef b = c->b;
    LLVMValueRef src = kc_ptr(&k, v);
    LLVMValueRef slot = kc_i64(&k, c->g->n_values + i);
    LLVMValueRef dst = LLVMBuildLoad2(b, c->t_ptr, LLVMBuildGEP2(b, c->t_ptr, k.bufs, &slot, 1, ""), "");
    LLVMValueRef n = kc_i64(&k, 1);
    for (int d = 0; d < t->rank; d++)
        n = LLVMBuildMul(b, n, kc_dim(&k, t->dims[d]), "");
    const kiln_dtype_info *di = kiln_dtype_get(t->dtype);
    LLVMValueRef bytes = LLVMBuildMul(b, LLVMBuildSDiv(b, LLVMBuildAdd(b, n, kc_i64(&k, di->block_elems - 1), ""), kc_i64(&k, di->block_elems), ""),
                                      kc_i64(&k, di->block_bytes), "");
    LLVMBuildMemCpy(b, dst, 1, src, 1, bytes);
    kc_end(&k);
    kiln_dim one = 1;
    cg_launch(c, k.fn, &one, 1, 1, -1);
    return c->failed ? -1 : 0;
}

static LLVMValueRef bytes_global(cg *c, const char *name, const void *data, size_t n, int align, int exported)
{
    LLVMValueRef init = LLVMConstStringInContext(c->ctx, (const char *)data, (unsigned)n, 1);
    LLVMValueRef gv = LLVMAddGlobal(c->mod, LLVMTypeOf(init), name);
    LLVMSetInitializer(gv, init);
    LLVMSetGlobalConstant(gv, 1);
    LLVMSetAlignment(gv, (unsigned)align);
    LLVMSetLinkage(gv, exported ? LLVMExternalLinkage : LLVMPrivateLinkage);
    return gv;
}

/* int kiln_model_run(kiln_rt *rt, void **io, const int64_t *syms, uint8_t *arena, const uint8_t *weights) */
static void build_host(cg_ext *x)
{
    cg *c = &x->c;
    kiln_graph *g = c->g;
    const kiln_plan *p = c->plan;
    LLVMBuilderRef b = c->b;
    LLVMTypeRef pt[5] = {c->t_ptr, c->t_ptr, c->t_ptr, c->t_ptr, c->t_ptr};
    LLVMTypeRef ft = LLVMFunctionType(c->t_i32, pt, 5, 0);
    LLVMValueRef fn = LLVMAddFunction(c->mod, "kiln_model_run", ft);
    LLVMValueRef rt = LLVMGetParam(fn, 0), io = LLVMGetParam(fn, 1), syms = LLVMGetParam(fn, 2);
    LLVMValueRef arena = LLVMGetParam(fn, 3), weights = LLVMGetParam(fn, 4);
    LLVMPositionBuilderAtEnd(b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
    int nslots = g->n_values + g->n_outputs;
    LLVMValueRef bufs = LLVMBuildArrayAlloca(b, c->t_ptr, LLVMConstInt(c->t_i64, (unsigned long long)nslots + 1, 0), "bufs");
#define I64(v) LLVMConstInt(c->t_i64, (unsigned long long)(v), 0)
#define SLOT(s) LLVMBuildGEP2(b, c->t_ptr, bufs, (LLVMValueRef[]){I64(s)}, 1, "")
#define IOP(i) LLVMBuildLoad2(b, c->t_ptr, LLVMBuildGEP2(b, c->t_ptr, io, (LLVMValueRef[]){I64(i)}, 1, ""), "")
    char name[64];
    for (int v = 0; v < g->n_values; v++) {
        const kiln_buf *bf = &p->bufs[v];
        LLVMValueRef ptr = NULL;
        switch (bf->kind) {
        case KILN_BUF_INPUT: ptr = IOP(bf->io); break;
        case KILN_BUF_OUTPUT: ptr = IOP(g->n_inputs + bf->io); break;
        case KILN_BUF_WEIGHT: ptr = LLVMBuildGEP2(b, c->t_i8, weights, (LLVMValueRef[]){I64(bf->offset)}, 1, ""); break;
        case KILN_BUF_ARENA: ptr = LLVMBuildGEP2(b, c->t_i8, arena, (LLVMValueRef[]){I64(bf->offset)}, 1, ""); break;
        case KILN_BUF_CONST:
            if (bf->last < 0)
                break;
            snprintf(name, sizeof name, "kiln_c%d", v);
            ptr = bytes_global(c, name, g->values[v].data, g->values[v].nbytes ? g->values[v].nbytes : 1, 64, 0);
            break;
        default: break;
        }
        if (ptr)
            LLVMBuildStore(b, ptr, SLOT(v));
    }
    /* aliases after their roots are set */
    for (int v = 0; v < g->n_values; v++)
        if (p->bufs[v].kind == KILN_BUF_ALIAS) {
            int root = kiln_plan_root(p, v);
            LLVMValueRef rp = LLVMBuildLoad2(b, c->t_ptr, SLOT(root), "");
            LLVMBuildStore(b, rp, SLOT(v));
        }
    for (int i = 0; i < g->n_outputs; i++)
        LLVMBuildStore(b, IOP(g->n_inputs + i), SLOT(g->n_values + i));
    /* launches */
    LLVMTypeRef ppt[6] = {c->t_ptr, c->t_ptr, c->t_ptr, c->t_ptr, c->t_i64, c->t_i64};
    LLVMTypeRef pft = LLVMFunctionType(c->t_void, ppt, 6, 0);
    LLVMValueRef par = LLVMAddFunction(c->mod, "kiln_rt_parallel", pft);
    /* symbol values for dims in trip counts */
    LLVMValueRef symv[KILN_MAX_SYMS_CG];
    for (int i = 0; i < p->n_syms; i++)
        symv[i] = LLVMBuildLoad2(b, c->t_i64, LLVMBuildGEP2(b, c->t_i64, syms, (LLVMValueRef[]){I64(i)}, 1, ""), "");
    for (int li = 0; li < x->nl; li++) {
        launch *L = &x->l[li];
        /* trip = product of dims; a tiny kc lets kc_dim work in the host */
        kc hk;
        memset(&hk, 0, sizeof hk);
        hk.c = c;
        hk.fn = fn;
        for (int i = 0; i < p->n_syms; i++)
            hk.symv[i] = symv[i];
        LLVMValueRef trip = I64(1);
        for (int d = 0; d < L->ndims; d++)
            trip = LLVMBuildMul(b, trip, kc_dim(&hk, L->dims[d]), "");
        LLVMValueRef args[6] = {rt, L->fn, bufs, syms, trip, I64(L->grain)};
        LLVMBuildCall2(b, pft, par, args, 6, "");
    }
    LLVMBuildRet(b, LLVMConstInt(c->t_i32, 0, 0));
#undef I64
#undef SLOT
#undef IOP
}

int kiln_codegen_cpu(kiln_graph *g, const kiln_plan *p, const kiln_build_opts *o, const char *obj_path,
                     kiln_err *err)
{
    LLVMInitializeAllTargetInfos();
    LLVMInitializeAllTargets();
    LLVMInitializeAllTargetMCs();
    LLVMInitializeAllAsmPrinters();
    cg_ext x;
    memset(&x, 0, sizeof x);
    cg *c = &x.c;
    c->g = g;
    c->plan = p;
    c->o = o;
    c->err = err;
    c->ctx = LLVMContextCreate();
    c->mod = LLVMModuleCreateWithNameInContext("kiln_model", c->ctx);
    c->b = LLVMCreateBuilderInContext(c->ctx);
    c->t_void = LLVMVoidTypeInContext(c->ctx);
    c->t_i1 = LLVMInt1TypeInContext(c->ctx);
    c->t_i8 = LLVMInt8TypeInContext(c->ctx);
    c->t_i16 = LLVMInt16TypeInContext(c->ctx);
    c->t_i32 = LLVMInt32TypeInContext(c->ctx);
    c->t_i64 = LLVMInt64TypeInContext(c->ctx);
    c->t_f16 = LLVMHalfTypeInContext(c->ctx);
    c->t_f32 = LLVMFloatTypeInContext(c->ctx);
    c->t_f64 = LLVMDoubleTypeInContext(c->ctx);
    c->t_ptr = LLVMPointerTypeInContext(c->ctx, 0);
    LLVMTypeRef kp[4] = {c->t_ptr, c->t_ptr, c->t_i64, c->t_i64};
    c->t_kfn = LLVMFunctionType(c->t_void, kp, 4, 0);
    int rc = -1;
    char *triple = o && o->triple ? kiln_xstrdup(o->triple) : LLVMGetDefaultTargetTriple();
    char *cpu = o && o->cpu ? kiln_xstrdup(o->cpu) : LLVMGetHostCPUName();
    char *feat = o && o->features ? kiln_xstrdup(o->features) : (o && o->triple ? kiln_xstrdup("") : LLVMGetHostCPUFeatures());
    LLVMTargetMachineRef tm = NULL;
    LLVMSetTarget(c->mod, triple);
    c->vw = strstr(feat, "+avx512f") ? 16 : 8;

    for (int ni = 0; ni < g->n_nodes && !c->failed; ni++)
        if (lower_node(c, ni))
            break;
    for (int i = 0; i < g->n_outputs && !c->failed; i++)
        if (p->bufs[g->outputs[i]].kind != KILN_BUF_OUTPUT || p->bufs[g->outputs[i]].io != i)
            lower_output_copy(c, i);
    if (c->failed)
        goto out;
    build_host(&x);
    {
        /* descriptor */
        kiln_desc d = o ? o->meta : (kiln_desc){0};
        /* the cache stays in place only if every layer's attention was lowered so */
        if (d.kind == KILN_MODEL_LM && c->n_kv_inplace == 0)
            d.kv.kind = KILN_KV_FUNCTIONAL;
        else if (d.kind == KILN_MODEL_LM && c->n_kv_inplace != d.kv.n_layers) {
            kiln_errf(err, "internal error: %d of %d attention layers keep the KV cache in place",
                      c->n_kv_inplace, d.kv.n_layers);
            goto out;
        }
        if (kiln_desc_from_graph(g, p, &d, err))
            goto out;
        size_t dlen;
        uint8_t *dbytes = kiln_desc_write(&d, &dlen);
        free(d.io);
        bytes_global(c, "kiln_model_desc", dbytes, dlen, 8, 1);
        free(dbytes);
        LLVMValueRef sz = LLVMAddGlobal(c->mod, c->t_i64, "kiln_model_desc_size");
        LLVMSetInitializer(sz, LLVMConstInt(c->t_i64, dlen, 0));
        LLVMSetGlobalConstant(sz, 1);
    }
    char *msg = NULL;
    if (LLVMVerifyModule(c->mod, LLVMReturnStatusAction, &msg)) {
        kiln_errf(err, "internal error: generated LLVM IR does not verify: %.600s", msg);
        LLVMDisposeMessage(msg);
        if (getenv("KILN_DUMP_LLVM"))
            LLVMDumpModule(c->mod);
        goto out;
    }
    LLVMDisposeMessage(msg);
    LLVMTargetRef target;
    if (LLVMGetTargetFromTriple(triple, &target, &msg)) {
        kiln_errf(err, "target %s: %s", triple, msg);
        LLVMDisposeMessage(msg);
        goto out;
    }
    int opt = o && o->opt_level >= 0 ? o->opt_level : 3;
    tm = LLVMCreateTargetMachine(target, triple, cpu, feat,
                                 opt >= 2 ? LLVMCodeGenLevelAggressive : opt == 1 ? LLVMCodeGenLevelLess : LLVMCodeGenLevelNone,
                                 LLVMRelocPIC, LLVMCodeModelDefault);
    {
        LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
        char *layout = LLVMCopyStringRepOfTargetData(td);
        LLVMSetDataLayout(c->mod, layout);
        LLVMDisposeMessage(layout);
        LLVMDisposeTargetData(td);
    }
    if (getenv("KILN_DUMP_LLVM_PRE"))
        LLVMPrintModuleToFile(c->mod, getenv("KILN_DUMP_LLVM_PRE"), NULL);
    if (opt > 0) {
        char pipe[32];
        snprintf(pipe, sizeof pipe, "default<O%d>", opt > 3 ? 3 : opt);
        LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
        LLVMPassBuilderOptionsSetLoopVectorization(po, 1);
        LLVMPassBuilderOptionsSetSLPVectorization(po, 1);
        LLVMErrorRef e = LLVMRunPasses(c->mod, pipe, tm, po);
        LLVMDisposePassBuilderOptions(po);
        if (e) {
            char *em = LLVMGetErrorMessage(e);
            kiln_errf(err, "LLVM optimization failed: %s", em);
            LLVMDisposeErrorMessage(em);
            goto out;
        }
    }
    if (getenv("KILN_DUMP_LLVM"))
        LLVMPrintModuleToFile(c->mod, getenv("KILN_DUMP_LLVM"), NULL);
    if (LLVMTargetMachineEmitToFile(tm, c->mod, (char *)obj_path, LLVMObjectFile, &msg)) {
        kiln_errf(err, "%s: cannot emit object: %s", obj_path, msg);
        LLVMDisposeMessage(msg);
        goto out;
    }
    rc = 0;
out:
    if (tm)
        LLVMDisposeTargetMachine(tm);
    LLVMDisposeBuilder(c->b);
    LLVMDisposeModule(c->mod);
    LLVMContextDispose(c->ctx);
    LLVMDisposeMessage(triple);
    LLVMDisposeMessage(cpu);
    LLVMDisposeMessage(feat);
    free(x.l);
    return rc;
}
