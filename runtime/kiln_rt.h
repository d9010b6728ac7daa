/* kiln_rt.h - the interface between generated code and the runtime.
 *
 * A compiled model object defines:
 *   const uint8_t  kiln_model_desc[];       serialized kiln_desc (kiln_artifact.h)
 *   const uint64_t kiln_model_desc_size;
 *   int kiln_model_run(kiln_rt *rt, void **io, const int64_t *syms,
 *                      uint8_t *arena, const uint8_t *weights);
 * io holds the inputs then the outputs (descriptor order); syms the values
 * of the model's symbolic dims. Kernels run through kiln_rt_parallel. */
#ifndef KILN_RT_H
#define KILN_RT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_rt kiln_rt;

/* A kernel processes outer iterations [begin, end). */
typedef void (*kiln_kernel_fn)(void **bufs, const int64_t *syms, int64_t begin, int64_t end);

/* Runs fn over [0, n) split across the pool's threads; ranges smaller than
 * grain are not split further. Returns when all are done. */
void kiln_rt_parallel(kiln_rt *rt, kiln_kernel_fn fn, void **bufs, const int64_t *syms, int64_t n,
                      int64_t grain);

/* Thread pool. threads <= 0: one per online CPU (or $KILN_THREADS). */
kiln_rt *kiln_rt_create(int threads);
void kiln_rt_destroy(kiln_rt *rt);
int kiln_rt_threads(const kiln_rt *rt);

#ifdef __cplusplus
}
#endif
#endif
