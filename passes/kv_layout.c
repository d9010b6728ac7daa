/* kv_layout.c - choosing how a language model's KV cache is stored.
 *
 * Inputs: the cache shape (layers, KV heads, head size), the context and
 * slot count to plan for, the element type of the model's activations and
 * a memory budget. The cache is one contiguous [kv_heads, max_ctx, head_dim]
 * buffer per layer and slot (the code generator keeps it in place: new rows
 * are written at their positions, nothing is copied). The element type is
 * the widest that fits the budget: the activations' own type, then 16-bit
 * floats, then int8 with one f32 scale per head and token. */
#include "kiln_passes.h"

#include <string.h>

int64_t kiln_kv_bytes(const kiln_kv_desc *kv)
{
    int64_t rows = 2LL * kv->n_layers * kv->kv_heads * kv->max_ctx * (kv->max_batch > 0 ? kv->max_batch : 1);
    int64_t b = rows * (int64_t)kiln_dtype_storage(kv->dtype, kv->head_dim);
    if (kv->dtype == KILN_I8)
        b += rows * 4; /* per-head-per-token scales */
    return b;
}

int kiln_kv_choose(kiln_kv_desc *kv, kiln_dtype act, int64_t budget, kiln_err *err)
{
    kiln_dtype cands[4];
    int n = 0;
    cands[n++] = act == KILN_BF16 || act == KILN_F16 ? act : KILN_F32;
    if (cands[0] == KILN_F32)
        cands[n++] = act == KILN_BF16 ? KILN_BF16 : KILN_F16;
    cands[n++] = KILN_I8;
    if (kv->kind == KILN_KV_FUNCTIONAL) /* the packed form keeps the graph's own type */
        n = 1;
    for (int i = 0; i < n; i++) {
        kv->dtype = cands[i];
        if (budget <= 0 || kiln_kv_bytes(kv) <= budget)
            return 0;
    }
    kv->dtype = cands[n - 1];
    return kiln_errf(err, "the KV cache needs %lld bytes even as %s (%d layers x %d heads x %lld positions x %d); "
                          "the budget is %lld: lower --max-ctx or raise --kv-budget",
                     (long long)kiln_kv_bytes(kv), kiln_dtype_name(kv->dtype), kv->n_layers, kv->kv_heads,
                     (long long)kv->max_ctx, kv->head_dim, (long long)budget);
}
