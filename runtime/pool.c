/* pool.c - a small fork-join thread pool for generated kernels.
 *
 * Static partitioning: each worker takes one contiguous range, which keeps
 * every thread on its own rows of the output (good for caches). A model
 * step launches tens of kernels back to back, so workers spin briefly on the
 * job counter before sleeping: waking a sleeping thread costs more than most
 * kernels take. */
#include "kiln_rt.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* spin iterations before a worker sleeps (a few tens of microseconds) */
#define SPIN_ROUNDS 20000

struct kiln_rt {
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t go;
    atomic_uint_fast64_t generation; /* bumped per job */
    atomic_int pending;              /* workers still running the current job */
    atomic_int sleepers;             /* workers waiting on the condition variable */
    atomic_int quit;
    /* current job (written before generation is bumped) */
    kiln_kernel_fn fn;
    void **bufs;
    const int64_t *syms;
    int64_t n;
    int parts;
};

static void run_part(kiln_rt *rt, int part)
{
    int64_t b = rt->n * part / rt->parts, e = rt->n * (part + 1) / rt->parts;
    if (b < e)
        rt->fn(rt->bufs, rt->syms, b, e);
}

typedef struct worker_arg {
    kiln_rt *rt;
    int id;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    kiln_rt *rt = a->rt;
    int id = a->id;
    free(a);
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen = atomic_load_explicit(&rt->generation, memory_order_acquire);
        for (int spin = 0; gen == seen && spin < SPIN_ROUNDS && !atomic_load(&rt->quit); spin++)
            gen = atomic_load_explicit(&rt->generation, memory_order_acquire);
        if (gen == seen) {
            pthread_mutex_lock(&rt->mu);
            atomic_fetch_add(&rt->sleepers, 1);
            while (!atomic_load(&rt->quit) && (gen = atomic_load(&rt->generation)) == seen)
                pthread_cond_wait(&rt->go, &rt->mu);
            atomic_fetch_sub(&rt->sleepers, 1);
            pthread_mutex_unlock(&rt->mu);
        }
        if (atomic_load(&rt->quit))
            break;
        seen = gen;
        if (id < rt->parts)
            run_part(rt, id);
        atomic_fetch_sub_explicit(&rt->pending, 1, memory_order_acq_rel);
    }
    return NULL;
}

kiln_rt *kiln_rt_create(int threads)
{
    if (threads <= 0) {
        const char *env = getenv("KILN_THREADS");
        threads = env ? atoi(env) : 0;
        if (threads <= 0)
            threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (threads <= 0)
            threads = 1;
    }
    kiln_rt *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NULL;
    rt->nthreads = threads;
    pthread_mutex_init(&rt->mu, NULL);
    pthread_cond_init(&rt->go, NULL);
    atomic_init(&rt->generation, 0);
    atomic_init(&rt->pending, 0);
    atomic_init(&rt->sleepers, 0);
    atomic_init(&rt->quit, 0);
    /* the calling thread is worker 0; spawn the rest */
    rt->threads = calloc((size_t)threads, sizeof(pthread_t));
    for (int i = 1; i < threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        a->rt = rt;
        a->id = i;
        if (pthread_create(&rt->threads[i], NULL, worker, a) != 0) {
            free(a);
            rt->nthreads = i;
            break;
        }
    }
    return rt;
}

void kiln_rt_destroy(kiln_rt *rt)
{
    if (!rt)
        return;
    pthread_mutex_lock(&rt->mu);
    atomic_store(&rt->quit, 1);
    pthread_cond_broadcast(&rt->go);
    pthread_mutex_unlock(&rt->mu);
    for (int i = 1; i < rt->nthreads; i++)
        pthread_join(rt->threads[i], NULL);
    free(rt->threads);
    pthread_mutex_destroy(&rt->mu);
    pthread_cond_destroy(&rt->go);
    free(rt);
}

int kiln_rt_threads(const kiln_rt *rt) { return rt->nthreads; }

void kiln_rt_parallel(kiln_rt *rt, kiln_kernel_fn fn, void **bufs, const int64_t *syms, int64_t n,
                      int64_t grain)
{
    if (n <= 0)
        return;
    if (grain < 1)
        grain = 1;
    int64_t parts = n / grain;
    if (parts > rt->nthreads)
        parts = rt->nthreads;
    if (parts <= 1) {
        fn(bufs, syms, 0, n);
        return;
    }
    rt->fn = fn;
    rt->bufs = bufs;
    rt->syms = syms;
    rt->n = n;
    rt->parts = (int)parts;
    atomic_store_explicit(&rt->pending, rt->nthreads - 1, memory_order_relaxed);
    atomic_fetch_add(&rt->generation, 1); /* seq_cst: pairs with the sleepers count */
    if (atomic_load(&rt->sleepers) > 0) {
        pthread_mutex_lock(&rt->mu);
        pthread_cond_broadcast(&rt->go);
        pthread_mutex_unlock(&rt->mu);
    }
    run_part(rt, 0);
    while (atomic_load_explicit(&rt->pending, memory_order_acquire) > 0)
        ; /* workers finish within the kernel's time; no sleep needed */
}
