/* model.c - opening a compiled model and running it (non-LM path). */
#include "kiln.h"
#include "kiln_artifact.h"
#include "kiln_cuda.h"
#include "kiln_model_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Defined by the generated object. */
extern const uint8_t kiln_model_desc[];
extern const uint64_t kiln_model_desc_size;
/* CPU objects define kiln_model_run, CUDA objects the launch program. */
int kiln_model_run(kiln_rt *rt, void **io, const int64_t *syms, uint8_t *arena, const uint8_t *weights)
    __attribute__((weak));
extern const uint8_t kiln_cuda_prog[] __attribute__((weak));
extern const uint64_t kiln_cuda_prog_size __attribute__((weak));
/* Defined by the embedded-weights object when the model embeds its weights. */
extern const uint8_t kiln_weights_blob[] __attribute__((weak));

static int seterr(char *err, size_t len, const char *msg)
{
    if (err && len)
        snprintf(err, len, "%s", msg);
    return -1;
}

/* Path of the running executable or shared object, for NAME.weights. */
static void self_path(char *buf, size_t len)
{
    buf[0] = 0;
    {
        ssize_t n = readlink("/proc/self/exe", buf, len - 1);
        if (n > 0)
            buf[n] = 0;
    }
}

static int check_weights(kiln_model *m, const uint8_t *blob, size_t avail, kiln_err *err)
{
    if (avail < sizeof(kiln_weights_header))
        return kiln_errf(err, "weights blob too short");
    kiln_weights_header h;
    memcpy(&h, blob, sizeof h);
    if (memcmp(h.magic, KILN_WEIGHTS_MAGIC, 8) != 0)
        return kiln_errf(err, "not a kiln weights file (bad magic)");
    if (h.abi != KILN_ABI_VERSION)
        return kiln_errf(err, "weights written with ABI %u, runtime has ABI %d: rebuild the model",
                         h.abi, KILN_ABI_VERSION);
    if (h.data_bytes != m->desc.weights_bytes || h.hash != m->desc.weights_hash)
        return kiln_errf(err, "weights do not belong to this model (size or hash differs): "
                              "use the .weights file built with it");
    if (avail - h.header_bytes < h.data_bytes)
        return kiln_errf(err, "weights file truncated");
    m->weights = blob + h.header_bytes;
    return 0;
}

int kiln_model_open_internal(kiln_model **out, const char *weights_path, int threads, kiln_err *err)
{
    kiln_model *m = kiln_xcalloc(1, sizeof *m);
    if (kiln_desc_read(kiln_model_desc, kiln_model_desc_size, &m->desc, err)) {
        free(m);
        return -1;
    }
    if (m->desc.weights_bytes == 0) {
        m->weights = NULL;
    } else if (kiln_weights_blob && !weights_path) {
        if (check_weights(m, kiln_weights_blob, (size_t)-1 / 2, err))
            goto fail;
    } else {
        char path[4096];
        if (weights_path) {
            snprintf(path, sizeof path, "%s", weights_path);
        } else {
            const char *env = getenv("KILN_WEIGHTS");
            if (env)
                snprintf(path, sizeof path, "%s", env);
            else {
                char self[4000];
                self_path(self, sizeof self);
                char *dot = strrchr(self, '.'), *slash = strrchr(self, '/');
                if (dot && (!slash || dot > slash) && strcmp(dot, ".so") == 0)
                    *dot = 0;
                snprintf(path, sizeof path, "%s.weights", self);
            }
        }
        if (kiln_map_file(path, &m->wmap, err))
            goto fail;
        if (check_weights(m, m->wmap.data, m->wmap.size, err)) {
            kiln_err_prefix(err, "%s: ", path);
            goto fail;
        }
    }
    m->arena = NULL;
    if (!strcmp(m->desc.target, "cuda")) {
        if (kiln_cuda_open(m, kiln_cuda_prog, kiln_cuda_prog ? (size_t)kiln_cuda_prog_size : 0, err))
            goto fail;
    } else if (m->desc.arena_bytes) {
        if (posix_memalign((void **)&m->arena, 64, m->desc.arena_bytes)) {
            kiln_errf(err, "cannot allocate the %llu-byte arena", (unsigned long long)m->desc.arena_bytes);
            goto fail;
        }
    }
    m->rt = kiln_rt_create(threads);
    if (!m->rt) {
        kiln_errf(err, "cannot start threads");
        goto fail;
    }
    if (m->desc.kind == KILN_MODEL_LM && kiln_lm_init(m, err))
        goto fail;
    *out = m;
    return 0;
fail:
    kiln_model_close_internal(m);
    return -1;
}

void kiln_model_close_internal(kiln_model *m)
{
    if (!m)
        return;
    kiln_lm_free(m);
    kiln_cuda_close(m);
    kiln_rt_destroy(m->rt);
    free(m->arena);
    kiln_unmap_file(&m->wmap);
    kiln_desc_free(&m->desc);
    free(m);
}

int kiln_model_bind(kiln_model *m, const kiln_buffer *inputs, int64_t *syms, kiln_err *err)
{
    const kiln_desc *d = &m->desc;
    for (int s = 0; s < KILN_MAX_SYMS; s++)
        syms[s] = -1;
    /* variables first: dims that are a bare symbol bind it */
    for (int i = 0; i < d->n_inputs; i++) {
        const kiln_io_desc *io = &d->io[i];
        if (inputs[i].rank != io->rank)
            return kiln_errf(err, "input '%s': expected rank %d, got %d", io->name, io->rank, inputs[i].rank);
        if (inputs[i].dtype != (int)io->dtype)
            return kiln_errf(err, "input '%s': expected %s, got %s", io->name, kiln_dtype_name(io->dtype),
                             kiln_dtype_name((kiln_dtype)inputs[i].dtype));
        for (int k = 0; k < io->rank; k++)
            if (io->dims[k].n == 1 && io->dims[k].op[0] == KILN_DX_SYM) {
                int64_t s = io->dims[k].arg[0];
                if (syms[s] < 0)
                    syms[s] = inputs[i].dims[k];
            }
    }
    for (int s = 0; s < d->n_syms; s++) {
        if (syms[s] < 0)
            return kiln_errf(err, "no input determines the size '%s'", d->sym_names[s]);
        if (syms[s] > d->sym_max[s])
            return kiln_errf(err, "%s = %lld exceeds the compiled bound %lld (rebuild with a larger bound)",
                             d->sym_names[s], (long long)syms[s], (long long)d->sym_max[s]);
    }
    for (int i = 0; i < d->n_inputs; i++) {
        const kiln_io_desc *io = &d->io[i];
        for (int k = 0; k < io->rank; k++) {
            int64_t want = kiln_dimexpr_eval(&io->dims[k], syms);
            if (want != inputs[i].dims[k])
                return kiln_errf(err, "input '%s': dimension %d is %lld, expected %lld", io->name, k,
                                 (long long)inputs[i].dims[k], (long long)want);
        }
    }
    return 0;
}

int kiln_model_exec(kiln_model *m, void **io, const int64_t *syms)
{
    if (m->cuda)
        return kiln_cuda_exec(m, io, syms);
    if (!kiln_model_run)
        return -1;
    return kiln_model_run(m->rt, io, syms, m->arena, m->weights);
}

/* ---- public API ---- */

kiln_model *kiln_open_abi(const char *weights_path, int threads, char *errbuf, size_t errlen, int abi)
{
    if (abi != KILN_ABI_VERSION) {
        char msg[200];
        snprintf(msg, sizeof msg, "kiln.h has ABI %d but the model library has ABI %d: use the header "
                                  "generated with this library", abi, KILN_ABI_VERSION);
        seterr(errbuf, errlen, msg);
        return NULL;
    }
    kiln_model *m = NULL;
    kiln_err err;
    if (kiln_model_open_internal(&m, weights_path, threads, &err)) {
        seterr(errbuf, errlen, err.msg);
        return NULL;
    }
    return m;
}

void kiln_close(kiln_model *m) { kiln_model_close_internal(m); }
const char *kiln_model_name(const kiln_model *m) { return m->desc.name; }
int kiln_num_inputs(const kiln_model *m) { return m->desc.n_inputs; }
int kiln_num_outputs(const kiln_model *m) { return m->desc.n_outputs; }
const char *kiln_input_name(const kiln_model *m, int i)
{
    return i >= 0 && i < m->desc.n_inputs ? m->desc.io[i].name : NULL;
}
const char *kiln_output_name(const kiln_model *m, int i)
{
    return i >= 0 && i < m->desc.n_outputs ? m->desc.io[m->desc.n_inputs + i].name : NULL;
}

void kiln_buffer_free(kiln_buffer *b)
{
    free(b->data);
    b->data = NULL;
}

int kiln_run(kiln_model *m, const kiln_buffer *inputs, kiln_buffer *outputs, char *errbuf, size_t errlen)
{
    kiln_err err;
    int64_t syms[KILN_MAX_SYMS];
    const kiln_desc *d = &m->desc;
    if (kiln_model_bind(m, inputs, syms, &err))
        return seterr(errbuf, errlen, err.msg);
    void **io = kiln_xcalloc((size_t)(d->n_inputs + d->n_outputs) + 1, sizeof(void *));
    for (int i = 0; i < d->n_inputs; i++)
        io[i] = inputs[i].data;
    for (int o = 0; o < d->n_outputs; o++) {
        const kiln_io_desc *od = &d->io[d->n_inputs + o];
        kiln_buffer *b = &outputs[o];
        int64_t n = 1;
        b->dtype = (int)od->dtype;
        b->rank = od->rank;
        for (int k = 0; k < od->rank; k++) {
            b->dims[k] = kiln_dimexpr_eval(&od->dims[k], syms);
            n *= b->dims[k];
        }
        size_t bytes = kiln_dtype_storage(od->dtype, n);
        b->data = kiln_xcalloc(1, bytes + 64);
        io[d->n_inputs + o] = b->data;
    }
    int rc = kiln_model_exec(m, io, syms);
    free(io);
    if (rc) {
        for (int o = 0; o < d->n_outputs; o++)
            kiln_buffer_free(&outputs[o]);
        return seterr(errbuf, errlen, "model execution failed");
    }
    return 0;
}
