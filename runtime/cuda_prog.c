/* cuda_prog.c - reading the CUDA program blob (format in kiln_cuda.h).
 * Every read is bounds-checked; the blob comes from the artifact, but an
 * artifact may be truncated or damaged and must fail with a message. */
#include "kiln_cuda.h"

#include <stdlib.h>
#include <string.h>

typedef struct rd {
    const uint8_t *p, *end;
    int bad;
} rd;

static uint64_t rd_u(rd *r, int n)
{
    if (r->bad || (size_t)(r->end - r->p) < (size_t)n) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += n;
    return v;
}

static const uint8_t *rd_bytes(rd *r, uint64_t n)
{
    if (r->bad || (uint64_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}

static void rd_dimexpr(rd *r, kiln_dimexpr *e)
{
    memset(e, 0, sizeof *e);
    int n = (int)rd_u(r, 1);
    if (n > KILN_DIMEXPR_MAX) {
        r->bad = 1;
        return;
    }
    e->n = n;
    for (int i = 0; i < n; i++) {
        e->op[i] = (uint8_t)rd_u(r, 1);
        e->arg[i] = (int64_t)rd_u(r, 8);
        if (e->op[i] > KILN_DX_DIV || (e->op[i] == KILN_DX_SYM && (e->arg[i] < 0 || e->arg[i] >= KILN_MAX_SYMS)))
            r->bad = 1;
    }
}

void kiln_cu_prog_free(kiln_cu_prog *p)
{
    if (p->names)
        for (int i = 0; i < p->n_kernels; i++)
            free(p->names[i]);
    free(p->names);
    free(p->slots);
    free(p->launches);
    free(p->images);
    memset(p, 0, sizeof *p);
}

int kiln_cu_prog_read(const uint8_t *buf, size_t len, kiln_cu_prog *p, kiln_err *err)
{
    memset(p, 0, sizeof *p);
    rd r = {buf, buf + len, 0};
    const uint8_t *magic = rd_bytes(&r, 8);
    if (!magic || memcmp(magic, KILN_CU_MAGIC, 8) != 0)
        return kiln_errf(err, "not a kiln CUDA program (bad magic)");
    uint32_t ver = (uint32_t)rd_u(&r, 4);
    if (ver != KILN_CU_VERSION)
        return kiln_errf(err, "CUDA program version %u, this runtime reads %d: rebuild the model", ver, KILN_CU_VERSION);
    p->flags = (uint32_t)rd_u(&r, 4);
    uint32_t ns = (uint32_t)rd_u(&r, 4), nk = (uint32_t)rd_u(&r, 4), nl = (uint32_t)rd_u(&r, 4),
             ni = (uint32_t)rd_u(&r, 4);
    p->const_bytes = rd_u(&r, 8);
    p->scratch_bytes = rd_u(&r, 8);
    if (r.bad || ns > (1u << 24) || nk > (1u << 20) || nl > (1u << 22) || ni > 64)
        return kiln_errf(err, "CUDA program header is damaged");
    p->consts = rd_bytes(&r, p->const_bytes);
    p->n_slots = (int)ns;
    p->slots = kiln_xcalloc(ns + 1, sizeof *p->slots);
    for (uint32_t i = 0; i < ns && !r.bad; i++) {
        p->slots[i].kind = (int)rd_u(&r, 1);
        p->slots[i].io = (int)(int32_t)rd_u(&r, 4);
        p->slots[i].offset = (int64_t)rd_u(&r, 8);
        if (p->slots[i].kind > KILN_CU_SLOT_CONST)
            r.bad = 1;
    }
    p->n_kernels = (int)nk;
    p->names = kiln_xcalloc(nk + 1, sizeof *p->names);
    for (uint32_t i = 0; i < nk && !r.bad; i++) {
        uint32_t n = (uint32_t)rd_u(&r, 2);
        const uint8_t *s = rd_bytes(&r, n);
        if (!s)
            break;
        p->names[i] = kiln_xmalloc(n + 1);
        memcpy(p->names[i], s, n);
        p->names[i][n] = 0;
    }
    p->n_launches = (int)nl;
    p->launches = kiln_xcalloc(nl + 1, sizeof *p->launches);
    for (uint32_t i = 0; i < nl && !r.bad; i++) {
        kiln_cu_launch *L = &p->launches[i];
        L->kind = (int)rd_u(&r, 1);
        L->kernel = (int)(int32_t)rd_u(&r, 4);
        L->block = (int)rd_u(&r, 4);
        L->smem = (int)rd_u(&r, 4);
        for (int a = 0; a < 3; a++) {
            rd_dimexpr(&r, &L->grid[a]);
            L->per[a] = (int64_t)rd_u(&r, 8);
            if (L->per[a] < 1)
                r.bad = 1;
        }
        L->cond = (int)rd_u(&r, 1);
        rd_dimexpr(&r, &L->cond_e);
        L->cond_c = (int64_t)rd_u(&r, 8);
        L->nargs = (int)rd_u(&r, 2);
        if (L->nargs > KILN_CU_MAX_ARGS || L->kind > KILN_CU_LAUNCH_COPY || L->cond > KILN_CU_COND_GT ||
            (L->kind == KILN_CU_LAUNCH_KERNEL && (L->kernel < 0 || L->kernel >= (int)nk)) ||
            (L->kind == KILN_CU_LAUNCH_COPY && L->nargs != 2)) {
            r.bad = 1;
            break;
        }
        for (int a = 0; a < L->nargs; a++) {
            L->args[a].kind = (int)rd_u(&r, 1);
            L->args[a].v = (int64_t)rd_u(&r, 8);
            if (L->args[a].kind == KILN_CU_ARG_SLOT && (L->args[a].v < 0 || L->args[a].v >= (int64_t)ns))
                r.bad = 1;
            if (L->args[a].kind == KILN_CU_ARG_SCRATCH && (L->args[a].v < 0 || (uint64_t)L->args[a].v > p->scratch_bytes))
                r.bad = 1;
        }
        L->node = (int)(int32_t)rd_u(&r, 4);
    }
    p->n_images = (int)ni;
    p->images = kiln_xcalloc(ni + 1, sizeof *p->images);
    for (uint32_t i = 0; i < ni && !r.bad; i++) {
        p->images[i].arch = (int)rd_u(&r, 4);
        p->images[i].size = rd_u(&r, 8);
        p->images[i].data = rd_bytes(&r, p->images[i].size);
    }
    if (r.bad) {
        kiln_cu_prog_free(p);
        return kiln_errf(err, "CUDA program is truncated or damaged");
    }
    return 0;
}
