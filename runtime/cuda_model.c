/* cuda_model.c - running a `--target cuda` artifact.
 *
 * Open: driver (dlopen), primary context, module from the image for this
 * GPU (exact cubin, else a cubin of the same major version, else PTX),
 * weights and constants uploaded once, arena / scratch / I/O staging
 * allocated once at the compiled bounds.
 * Exec: symbol values go to a small device array the kernels read; the
 * launch list is replayed with grids evaluated from the symbols. Language
 * models capture each decode step as a CUDA graph keyed by the grids and
 * the buffers used (a new KV slot or a new shape captures another), so the
 * per-step cost is one graph launch; greedy decoding runs the argmax on the
 * GPU and copies back one int. */
#include "cuda_api.h"
#include "kiln_cuda.h"
#include "kiln_model_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GRAPHS 4

typedef struct kcu_graph {
    CUgraphExec exec;
    int64_t *key; /* grids/conds of every launch, then the io device pointers, then the greedy flag */
    size_t nkey;
    uint64_t used;
} kcu_graph;

typedef struct kcu {
    kiln_cu_api a;
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUstream st;
    int sm;
    kiln_cu_prog prog;
    CUfunction *fn;
    CUfunction argmax;
    CUdeviceptr weights, arena, consts, scratch, syms, out1;
    CUdeviceptr *io_dev; /* staging per descriptor I/O (0 for KV roles) */
    size_t *io_cap;
    int64_t *key;        /* this step's key */
    size_t nkey;
    kcu_graph graphs[MAX_GRAPHS];
    uint64_t tick;
    int graph_misses, no_graphs, check;
    int pdl; /* programmatic dependent launch: sm_90 cubin and a driver with cuLaunchKernelEx */
    /* host staging in page-locked memory: symbols, small inputs, the argmax */
    uint8_t *pin;
    size_t pin_cap;
    /* KILN_CUDA_STATS / KILN_CUDA_PROFILE: step counts; per-launch GPU time */
    int stats, prof;
    long n_replay, n_capture, n_direct;
    CUevent *ev;
    double *prof_ms;
    long *prof_n;
    char err[512];
} kcu;

#define PIN_BYTES (64 << 10)

#define CK(call)                                                                                     \
    do {                                                                                             \
        CUresult r_ = (call);                                                                        \
        if (r_) {                                                                                    \
            snprintf(x->err, sizeof x->err, "%s: %s", #call, kiln_cu_strerror(&x->a, r_));           \
            goto fail;                                                                               \
        }                                                                                            \
    } while (0)

static int is_kv(int role)
{
    return role == KILN_ROLE_PAST_KEY || role == KILN_ROLE_PAST_VALUE || role == KILN_ROLE_PRESENT_KEY ||
           role == KILN_ROLE_PRESENT_VALUE;
}

static size_t io_bytes(const kiln_io_desc *io, const int64_t *syms)
{
    int64_t n = 1;
    for (int k = 0; k < io->rank; k++) {
        int64_t d = kiln_dimexpr_eval(&io->dims[k], syms);
        n *= d > 0 ? d : 0;
    }
    return kiln_dtype_storage(io->dtype, n);
}

static int pick_image(kcu *x, const kiln_cu_prog *p)
{
    int best = -1;
    for (int i = 0; i < p->n_images; i++)
        if (p->images[i].arch == x->sm)
            return i;
    for (int i = 0; i < p->n_images; i++) {
        int a = p->images[i].arch;
        if (a && a / 10 == x->sm / 10 && a <= x->sm && (best < 0 || a > p->images[best].arch))
            best = i;
    }
    if (best >= 0)
        return best;
    for (int i = 0; i < p->n_images; i++)
        if (p->images[i].arch == 0)
            return i;
    return -1;
}

/* KILN_CUDA_STATS=1: how steps ran; KILN_CUDA_PROFILE=1 adds the GPU time
 * of every kernel (summed per kernel, largest first). */
static void report(kcu *x)
{
    fprintf(stderr, "kiln: CUDA: sm_%d, %s; steps: %ld graph replays, %ld graph captures, %ld direct\n", x->sm,
            x->pdl ? "programmatic dependent launch" : "plain launches", x->n_replay, x->n_capture, x->n_direct);
    if (!x->prof || !x->prof_ms)
        return;
    const kiln_cu_prog *p = &x->prog;
    int nk = p->n_kernels;
    double *ms = kiln_xcalloc((size_t)nk + 1, sizeof *ms), total = 0;
    long *cnt = kiln_xcalloc((size_t)nk + 1, sizeof *cnt);
    int *node = kiln_xcalloc((size_t)nk + 1, sizeof *node);
    for (int i = 0; i < p->n_launches; i++)
        if (p->launches[i].kind == KILN_CU_LAUNCH_KERNEL && x->prof_n[i]) {
            int kk = p->launches[i].kernel;
            ms[kk] += x->prof_ms[i];
            cnt[kk] += x->prof_n[i];
            node[kk] = p->launches[i].node;
            total += x->prof_ms[i];
        }
    fprintf(stderr, "kiln: CUDA profile: %.3f ms of kernels in total\n", total);
    for (int r = 0; r < 40; r++) {
        int best = -1;
        for (int kk = 0; kk < nk; kk++)
            if (cnt[kk] && (best < 0 || ms[kk] > ms[best]))
                best = kk;
        if (best < 0)
            break;
        fprintf(stderr, "kiln: CUDA profile: %-18s node %5d  %9.3f ms  %7ld launches  %8.2f us each\n", p->names[best],
                node[best], ms[best], cnt[best], 1e3 * ms[best] / (double)cnt[best]);
        cnt[best] = 0;
    }
    free(ms);
    free(cnt);
    free(node);
}

static void kcu_free(kiln_model *m)
{
    kcu *x = m->cuda;
    if (!x)
        return;
    if (x->stats || x->prof)
        report(x);
    if (x->a.lib && x->ctx) {
        x->a.CtxSetCurrent(x->ctx);
        if (x->pin)
            x->a.MemFreeHost(x->pin);
        for (int i = 0; x->ev && i < 2 * x->prog.n_launches; i++)
            if (x->ev[i])
                x->a.EventDestroy(x->ev[i]);
        for (int i = 0; i < MAX_GRAPHS; i++)
            if (x->graphs[i].exec)
                x->a.GraphExecDestroy(x->graphs[i].exec);
        CUdeviceptr bufs[] = {x->weights, x->arena, x->consts, x->scratch, x->syms, x->out1};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            if (bufs[i])
                x->a.MemFree(bufs[i]);
        for (int i = 0; x->io_dev && i < m->desc.n_inputs + m->desc.n_outputs; i++)
            if (x->io_dev[i])
                x->a.MemFree(x->io_dev[i]);
        if (x->mod)
            x->a.ModuleUnload(x->mod);
        if (x->st)
            x->a.StreamDestroy(x->st);
        x->a.PrimaryCtxRelease(x->dev);
    }
    for (int i = 0; i < MAX_GRAPHS; i++)
        free(x->graphs[i].key);
    free(x->ev);
    free(x->prof_ms);
    free(x->prof_n);
    free(x->key);
    free(x->fn);
    free(x->io_dev);
    free(x->io_cap);
    kiln_cu_prog_free(&x->prog);
    kiln_cu_api_unload(&x->a);
    free(x);
    m->cuda = NULL;
}

void kiln_cuda_close(kiln_model *m) { kcu_free(m); }

int kiln_cuda_open(kiln_model *m, const uint8_t *blob, size_t len, kiln_err *err)
{
    kcu *x = kiln_xcalloc(1, sizeof *x);
    m->cuda = x;
    x->check = getenv("KILN_CUDA_CHECK") && *getenv("KILN_CUDA_CHECK") == '1';
    x->stats = getenv("KILN_CUDA_STATS") && *getenv("KILN_CUDA_STATS") == '1';
    x->prof = getenv("KILN_CUDA_PROFILE") && *getenv("KILN_CUDA_PROFILE") == '1';
    x->no_graphs = getenv("KILN_CUDA_GRAPHS") && *getenv("KILN_CUDA_GRAPHS") == '0';
    if (!blob || kiln_cu_prog_read(blob, len, &x->prog, err))
        goto fail_msg;
    if (kiln_cu_api_load(&x->a, err))
        goto fail_msg;
    const kiln_cu_prog *p = &x->prog;
    int ndev = 0, devno = getenv("KILN_CUDA_DEVICE") ? atoi(getenv("KILN_CUDA_DEVICE")) : 0;
    CUresult r = x->a.Init(0);
    if (r == 0)
        r = x->a.DeviceGetCount(&ndev);
    if (r || ndev == 0) {
        kiln_errf(err, "this model runs on an NVIDIA GPU, but none is usable (%s)",
                  r ? kiln_cu_strerror(&x->a, r) : "no device");
        goto fail_msg;
    }
    if (devno < 0 || devno >= ndev) {
        kiln_errf(err, "KILN_CUDA_DEVICE=%d: there are %d GPUs", devno, ndev);
        goto fail_msg;
    }
    CK(x->a.DeviceGet(&x->dev, devno));
    int maj = 0, min = 0;
    CK(x->a.DeviceGetAttribute(&maj, KCU_ATTR_CC_MAJOR, x->dev));
    CK(x->a.DeviceGetAttribute(&min, KCU_ATTR_CC_MINOR, x->dev));
    x->sm = maj * 10 + min;
    CK(x->a.PrimaryCtxRetain(&x->ctx, x->dev));
    CK(x->a.CtxSetCurrent(x->ctx));
    CK(x->a.StreamCreate(&x->st, 1 /* non-blocking */));
    int img = pick_image(x, p);
    if (img < 0) {
        char have[128] = "";
        for (int i = 0; i < p->n_images; i++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s%d", i ? ", " : "", p->images[i].arch ? "sm_" : "compute_", p->images[i].arch);
        kiln_errf(err, "the model holds no code for this GPU (sm_%d; it has %s): rebuild with --cuda-arch %d", x->sm, have, x->sm);
        goto fail_msg;
    }
    /* programmatic dependent launch on sm_90 (KILN_CUDA_PDL=0 turns it
     * off): each kernel's launch and setup overlap the previous kernel's
     * tail; the code waits (griddepcontrol) before reading earlier results.
     * Measured 4-8% faster decoding on an H100 (docs/bench/gpu.md). */
    const char *pdl_env = getenv("KILN_CUDA_PDL");
    x->pdl = p->images[img].arch >= 90 && x->sm >= 90 && x->a.LaunchKernelEx && !(pdl_env && *pdl_env == '0');
    r = x->a.ModuleLoadData(&x->mod, p->images[img].data);
    if (r) {
        kiln_errf(err, "cannot load the model's GPU code (%s image) on sm_%d: %s",
                  p->images[img].arch ? "cubin" : "PTX", x->sm, kiln_cu_strerror(&x->a, r));
        goto fail_msg;
    }
    x->fn = kiln_xcalloc((size_t)p->n_kernels + 1, sizeof *x->fn);
    for (int i = 0; i < p->n_kernels; i++) {
        r = x->a.ModuleGetFunction(&x->fn[i], x->mod, p->names[i]);
        if (r) {
            kiln_errf(err, "GPU kernel %s missing from the module: %s", p->names[i], kiln_cu_strerror(&x->a, r));
            goto fail_msg;
        }
        if (!strcmp(p->names[i], KILN_CU_ARGMAX_KERNEL))
            x->argmax = x->fn[i];
    }
    for (int i = 0; i < p->n_launches; i++) /* dynamic shared memory beyond 48 KB must be allowed */
        if (p->launches[i].kind == KILN_CU_LAUNCH_KERNEL && p->launches[i].smem > 48 * 1024)
            CK(x->a.FuncSetAttribute(x->fn[p->launches[i].kernel], KCU_FUNC_MAX_DYNAMIC_SMEM, p->launches[i].smem));
    /* memory allocated once: weights, constants, arena, scratch, symbols */
    if (m->desc.weights_bytes) {
        CK(x->a.MemAlloc(&x->weights, m->desc.weights_bytes));
        for (uint64_t off = 0; off < m->desc.weights_bytes; off += 256ull << 20) {
            uint64_t n = m->desc.weights_bytes - off < (256ull << 20) ? m->desc.weights_bytes - off : (256ull << 20);
            CK(x->a.MemcpyHtoD(x->weights + off, m->weights + off, n));
        }
    }
    if (p->const_bytes) {
        CK(x->a.MemAlloc(&x->consts, p->const_bytes));
        CK(x->a.MemcpyHtoD(x->consts, p->consts, p->const_bytes));
    }
    if (m->desc.arena_bytes)
        CK(x->a.MemAlloc(&x->arena, m->desc.arena_bytes));
    CK(x->a.MemAlloc(&x->scratch, p->scratch_bytes + 256));
    CK(x->a.MemsetD8(x->scratch, 0, p->scratch_bytes + 256));
    CK(x->a.MemAlloc(&x->syms, KILN_MAX_SYMS * sizeof(int64_t)));
    CK(x->a.MemAlloc(&x->out1, 256));
    /* I/O staging at the compiled bounds (KV caches are the caller's device buffers) */
    int nio = m->desc.n_inputs + m->desc.n_outputs;
    x->io_dev = kiln_xcalloc((size_t)nio + 1, sizeof *x->io_dev);
    x->io_cap = kiln_xcalloc((size_t)nio + 1, sizeof *x->io_cap);
    for (int i = 0; i < nio; i++) {
        const kiln_io_desc *io = &m->desc.io[i];
        if (m->desc.kind == KILN_MODEL_LM && is_kv(io->role))
            continue;
        x->io_cap[i] = io_bytes(io, m->desc.sym_max) + 64;
        CK(x->a.MemAlloc(&x->io_dev[i], x->io_cap[i]));
    }
    x->nkey = (size_t)p->n_launches * 4 + (size_t)nio + 1;
    x->key = kiln_xcalloc(x->nkey, sizeof *x->key);
    if (x->a.MemHostAlloc((void **)&x->pin, PIN_BYTES, 0) == 0)
        x->pin_cap = PIN_BYTES;
    if (x->prof) {
        x->ev = kiln_xcalloc(2 * (size_t)p->n_launches + 1, sizeof *x->ev);
        x->prof_ms = kiln_xcalloc((size_t)p->n_launches + 1, sizeof *x->prof_ms);
        x->prof_n = kiln_xcalloc((size_t)p->n_launches + 1, sizeof *x->prof_n);
        for (int i = 0; i < 2 * p->n_launches; i++)
            CK(x->a.EventCreate(&x->ev[i], 0));
    }
    return 0;
fail:
    kiln_errf(err, "CUDA: %s", x->err);
fail_msg:
    kcu_free(m);
    return -1;
}

void *kiln_cuda_alloc(kiln_model *m, size_t bytes)
{
    kcu *x = m->cuda;
    CUdeviceptr d = 0;
    if (!x || x->a.CtxSetCurrent(x->ctx) || x->a.MemAlloc(&d, bytes ? bytes : 1) || x->a.MemsetD8(d, 0, bytes ? bytes : 1))
        return NULL;
    return (void *)(uintptr_t)d;
}

void kiln_cuda_free(kiln_model *m, void *p)
{
    kcu *x = m->cuda;
    if (x && p) {
        x->a.CtxSetCurrent(x->ctx);
        x->a.MemFree((CUdeviceptr)(uintptr_t)p);
    }
}

int kiln_cuda_move(kiln_model *m, void *dst, const void *src, size_t n)
{
    kcu *x = m->cuda;
    if (!x || x->a.MemcpyDtoDAsync((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n, x->st) ||
        x->a.StreamSynchronize(x->st))
        return -1;
    return 0;
}

static CUdeviceptr slot_ptr(kcu *x, const CUdeviceptr *io_ptr, int nin, int64_t s)
{
    const kiln_cu_slot *sl = &x->prog.slots[s];
    switch (sl->kind) {
    case KILN_CU_SLOT_INPUT: return io_ptr[sl->io];
    case KILN_CU_SLOT_OUTPUT: return io_ptr[nin + sl->io];
    case KILN_CU_SLOT_WEIGHT: return x->weights + (CUdeviceptr)sl->offset;
    case KILN_CU_SLOT_ARENA: return x->arena + (CUdeviceptr)sl->offset;
    case KILN_CU_SLOT_CONST: return x->consts + (CUdeviceptr)sl->offset;
    default: return 0;
    }
}

static int64_t ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

/* Grids and conditions of every launch at these symbol values, into key. */
static void eval_launches(kcu *x, const int64_t *syms)
{
    const kiln_cu_prog *p = &x->prog;
    for (int i = 0; i < p->n_launches; i++) {
        const kiln_cu_launch *L = &p->launches[i];
        int64_t *k = &x->key[4 * i];
        int run = 1;
        if (L->cond) {
            int64_t v = kiln_dimexpr_eval(&L->cond_e, syms);
            run = L->cond == KILN_CU_COND_LE ? v <= L->cond_c : v > L->cond_c;
        }
        if (L->kind == KILN_CU_LAUNCH_COPY) {
            k[0] = kiln_dimexpr_eval(&L->grid[0], syms) * L->per[0];
            k[1] = k[2] = 1;
        } else {
            for (int a = 0; a < 3; a++)
                k[a] = ceil_div(kiln_dimexpr_eval(&L->grid[a], syms), L->per[a]);
        }
        k[3] = run && k[0] > 0 && k[1] > 0 && k[2] > 0;
    }
}

/* Issues every launch on the stream (plain, or while capturing a graph). */
static int issue(kiln_model *m, const CUdeviceptr *io_ptr)
{
    kcu *x = m->cuda;
    const kiln_cu_prog *p = &x->prog;
    void *params[KILN_CU_MAX_ARGS + 1];
    CUdeviceptr args[KILN_CU_MAX_ARGS];
    for (int i = 0; i < p->n_launches; i++) {
        const kiln_cu_launch *L = &p->launches[i];
        const int64_t *k = &x->key[4 * i];
        if (!k[3])
            continue;
        for (int a = 0; a < L->nargs; a++)
            args[a] = L->args[a].kind == KILN_CU_ARG_SCRATCH ? x->scratch + (CUdeviceptr)L->args[a].v
                                                               : slot_ptr(x, io_ptr, m->desc.n_inputs, L->args[a].v);
        if (L->kind == KILN_CU_LAUNCH_COPY) {
            CK(x->a.MemcpyDtoDAsync(args[1], args[0], (size_t)k[0], x->st));
            continue;
        }
        params[0] = &x->syms;
        for (int a = 0; a < L->nargs; a++)
            params[1 + a] = &args[a];
        if (x->ev)
            x->a.EventRecord(x->ev[2 * i], x->st);
        CUresult r;
        if (x->pdl) {
            kcu_launch_attr at;
            memset(&at, 0, sizeof at);
            at.id = KCU_ATTR_PROGRAMMATIC_SERIALIZATION;
            at.v.value = 1;
            kcu_launch_config cfg = {(unsigned)k[0], (unsigned)k[1], (unsigned)k[2], (unsigned)L->block, 1, 1,
                                     (unsigned)L->smem, x->st, &at, 1};
            r = x->a.LaunchKernelEx(&cfg, x->fn[L->kernel], params, NULL);
        } else {
            r = x->a.LaunchKernel(x->fn[L->kernel], (unsigned)k[0], (unsigned)k[1], (unsigned)k[2], (unsigned)L->block, 1, 1,
                                  (unsigned)L->smem, x->st, params, NULL);
        }
        if (!r && x->ev)
            r = x->a.EventRecord(x->ev[2 * i + 1], x->st);
        if (!r && x->check)
            r = x->a.StreamSynchronize(x->st);
        if (r) {
            snprintf(x->err, sizeof x->err, "kernel %s (launch %d, graph node %d) failed: %s", p->names[L->kernel], i,
                     L->node, kiln_cu_strerror(&x->a, r));
            return -1;
        }
    }
    return 0;
fail:
    return -1;
}

static int logits_io(const kiln_model *m)
{
    const kiln_desc *d = &m->desc;
    for (int i = d->n_inputs; i < d->n_inputs + d->n_outputs; i++)
        if (d->io[i].role == KILN_ROLE_LOGITS)
            return i;
    return -1;
}

/* The argmax of the last logits row, on the GPU, into x->out1. */
static int issue_argmax(kiln_model *m, const CUdeviceptr *io_ptr, const int64_t *syms)
{
    kcu *x = m->cuda;
    int li = logits_io(m);
    const kiln_io_desc *io = &m->desc.io[li];
    int64_t rows = 1;
    for (int k = 0; k + 1 < io->rank; k++)
        rows *= kiln_dimexpr_eval(&io->dims[k], syms);
    int64_t V = kiln_dimexpr_eval(&io->dims[io->rank - 1], syms);
    CUdeviceptr src = io_ptr[li] + (CUdeviceptr)((rows - 1) * V * 4);
    void *params[3] = {&src, &V, &x->out1};
    CK(x->a.LaunchKernel(x->argmax, 1, 1, 1, 1024, 1, 1, 0, x->st, params, NULL));
    return 0;
fail:
    return -1;
}

static int run_graph(kiln_model *m, const CUdeviceptr *io_ptr, const int64_t *syms, int greedy, int *done)
{
    kcu *x = m->cuda;
    *done = 0;
    kcu_graph *g = NULL;
    for (int i = 0; i < MAX_GRAPHS && !g; i++)
        if (x->graphs[i].exec && x->graphs[i].nkey == x->nkey && !memcmp(x->graphs[i].key, x->key, x->nkey * sizeof *x->key))
            g = &x->graphs[i];
    if (!g) {
        /* a decode step never seen: capture it, replacing the least recently used */
        g = &x->graphs[0];
        for (int i = 1; i < MAX_GRAPHS; i++)
            if (!x->graphs[i].exec || (g->exec && x->graphs[i].used < g->used))
                g = &x->graphs[i];
        if (g->exec) {
            x->a.GraphExecDestroy(g->exec);
            g->exec = NULL;
        }
        CUgraph gr = NULL;
        CK(x->a.StreamBeginCapture(x->st, KCU_CAPTURE_THREAD_LOCAL));
        int rc = issue(m, io_ptr);
        if (!rc && greedy)
            rc = issue_argmax(m, io_ptr, syms);
        CUresult r = x->a.StreamEndCapture(x->st, &gr);
        if (rc || r) {
            if (gr)
                x->a.GraphDestroy(gr);
            if (!rc)
                snprintf(x->err, sizeof x->err, "graph capture failed: %s", kiln_cu_strerror(&x->a, r));
            return -1;
        }
        r = x->a.GraphInstantiate(&g->exec, gr, 0);
        x->a.GraphDestroy(gr);
        if (r) {
            g->exec = NULL;
            snprintf(x->err, sizeof x->err, "graph instantiation failed: %s", kiln_cu_strerror(&x->a, r));
            return -1;
        }
        free(g->key);
        g->key = kiln_xmalloc(x->nkey * sizeof *x->key);
        memcpy(g->key, x->key, x->nkey * sizeof *x->key);
        g->nkey = x->nkey;
        x->graph_misses++;
        x->n_capture++;
    } else {
        x->n_replay++;
    }
    g->used = ++x->tick;
    CK(x->a.GraphLaunch(g->exec, x->st));
    *done = 1;
    return 0;
fail:
    return -1;
}

int kiln_cuda_exec(kiln_model *m, void **io, const int64_t *syms)
{
    kcu *x = m->cuda;
    const kiln_desc *d = &m->desc;
    int nio = d->n_inputs + d->n_outputs;
    CUdeviceptr io_ptr[KILN_MAX_IO];
    x->err[0] = 0;
    if (x->a.CtxSetCurrent(x->ctx)) {
        snprintf(x->err, sizeof x->err, "cannot make the CUDA context current");
        goto fail;
    }
    int lm = d->kind == KILN_MODEL_LM;
    size_t pin_used = 0;
    for (int i = 0; i < nio; i++) {
        if (lm && is_kv(d->io[i].role)) {
            io_ptr[i] = (CUdeviceptr)(uintptr_t)io[i];
            continue;
        }
        io_ptr[i] = x->io_dev[i];
        size_t nb = io_bytes(&d->io[i], syms);
        if (nb > x->io_cap[i]) {
            snprintf(x->err, sizeof x->err, "'%s' needs %zu bytes, more than the compiled bound", d->io[i].name, nb);
            goto fail;
        }
        if (i < d->n_inputs && nb) {
            /* small inputs (token ids) go through page-locked memory: a
             * pageable copy costs a synchronous staging step */
            if (x->pin && pin_used + nb + 64 <= x->pin_cap) {
                memcpy(x->pin + pin_used, io[i], nb);
                CK(x->a.MemcpyHtoDAsync(io_ptr[i], x->pin + pin_used, nb, x->st));
                pin_used += (nb + 63) & ~(size_t)63;
            } else {
                CK(x->a.MemcpyHtoDAsync(io_ptr[i], io[i], nb, x->st));
            }
        }
    }
    if (x->pin && pin_used + KILN_MAX_SYMS * sizeof(int64_t) + 64 <= x->pin_cap) {
        memcpy(x->pin + pin_used, syms, KILN_MAX_SYMS * sizeof(int64_t));
        CK(x->a.MemcpyHtoDAsync(x->syms, x->pin + pin_used, KILN_MAX_SYMS * sizeof(int64_t), x->st));
    } else {
        CK(x->a.MemcpyHtoDAsync(x->syms, syms, KILN_MAX_SYMS * sizeof(int64_t), x->st));
    }
    if (x->check) { /* unwritten results show up as NaN */
        if (x->arena)
            CK(x->a.MemsetD32(x->arena, 0x7fc00000u, d->arena_bytes / 4));
        for (int i = d->n_inputs; i < nio; i++)
            if (x->io_dev[i])
                CK(x->a.MemsetD32(x->io_dev[i], 0x7fc00000u, x->io_cap[i] / 4));
    }
    int li = lm ? logits_io(m) : -1;
    int greedy = li >= 0 && m->cuda_greedy && x->argmax && d->io[li].dtype == KILN_F32;
    eval_launches(x, syms);
    for (int i = 0; i < nio; i++)
        x->key[4 * x->prog.n_launches + i] = (int64_t)io_ptr[i];
    x->key[x->nkey - 1] = greedy;
    int done = 0;
    /* decode steps of a language model replay captured graphs */
    if (lm && !x->no_graphs && !x->check && !x->prof && m->sym_seq >= 0 && syms[m->sym_seq] == 1 && x->graph_misses < 64) {
        if (run_graph(m, io_ptr, syms, greedy, &done))
            goto fail;
    }
    if (!done) {
        x->n_direct++;
        if (issue(m, io_ptr))
            goto fail;
        if (greedy && issue_argmax(m, io_ptr, syms))
            goto fail;
    }
    if (greedy)
        CK(x->a.MemcpyDtoHAsync(x->pin ? (void *)(x->pin + x->pin_cap - 64) : (void *)&m->cuda_next, x->out1, sizeof(int32_t), x->st));
    for (int i = d->n_inputs; i < nio; i++) {
        if (lm && is_kv(d->io[i].role))
            continue;
        if (greedy && i == li)
            continue; /* the decoder only needs the argmax */
        size_t nb = io_bytes(&d->io[i], syms);
        if (nb && io[i])
            CK(x->a.MemcpyDtoHAsync(io[i], io_ptr[i], nb, x->st));
    }
    CK(x->a.StreamSynchronize(x->st));
    if (greedy && x->pin)
        memcpy(&m->cuda_next, x->pin + x->pin_cap - 64, sizeof(int32_t));
    if (x->ev && !done)
        for (int i = 0; i < x->prog.n_launches; i++)
            if (x->key[4 * i + 3] && x->prog.launches[i].kind == KILN_CU_LAUNCH_KERNEL) {
                float ms = 0;
                if (x->a.EventElapsedTime(&ms, x->ev[2 * i], x->ev[2 * i + 1]) == 0) {
                    x->prof_ms[i] += ms;
                    x->prof_n[i]++;
                }
            }
    return 0;
fail:
    if (!x->err[0])
        snprintf(x->err, sizeof x->err, "unknown failure");
    fprintf(stderr, "kiln: CUDA: %s\n", x->err);
    return -1;
}
