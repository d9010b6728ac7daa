/* pool.c - a small fork-join thread pool for generated kernels.
 * Static partitioning: each worker takes one contiguous range, which keeps
 * every thread on its own rows of the output (good for caches, no atomics). */
#include "kiln_rt.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct kiln_rt {
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t generation; /* bumped per job */
    int pending;         /* workers still running the current job */
    int quit;
    /* current job */
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
    pthread_mutex_lock(&rt->mu);
    for (;;) {
        while (!rt->quit && rt->generation == seen)
            pthread_cond_wait(&rt->go, &rt->mu);
        if (rt->quit)
            break;
        seen = rt->generation;
        int parts = rt->parts;
        pthread_mutex_unlock(&rt->mu);
        if (id < parts)
            run_part(rt, id);
        pthread_mutex_lock(&rt->mu);
        if (--rt->pending == 0)
            pthread_cond_signal(&rt->done);
    }
    pthread_mutex_unlock(&rt->mu);
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
    pthread_cond_init(&rt->done, NULL);
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
    rt->quit = 1;
    pthread_cond_broadcast(&rt->go);
    pthread_mutex_unlock(&rt->mu);
    for (int i = 1; i < rt->nthreads; i++)
        pthread_join(rt->threads[i], NULL);
    free(rt->threads);
    pthread_mutex_destroy(&rt->mu);
    pthread_cond_destroy(&rt->go);
    pthread_cond_destroy(&rt->done);
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
    pthread_mutex_lock(&rt->mu);
    rt->fn = fn;
    rt->bufs = bufs;
    rt->syms = syms;
    rt->n = n;
    rt->parts = (int)parts;
    rt->pending = rt->nthreads - 1;
    rt->generation++;
    pthread_cond_broadcast(&rt->go);
    pthread_mutex_unlock(&rt->mu);
    run_part(rt, 0);
    pthread_mutex_lock(&rt->mu);
    while (rt->pending > 0)
        pthread_cond_wait(&rt->done, &rt->mu);
    pthread_mutex_unlock(&rt->mu);
}
