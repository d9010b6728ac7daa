/* sample.c - token sampling: repetition penalty, temperature, top-k, top-p,
 * min-p, and a seeded PCG32 generator (see kiln_sample.h). */
#include "kiln_sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int kiln_sampler_init(kiln_sampler *s, int n_vocab, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    if (n_vocab < 1)
        return -1;
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    s->repeat_penalty = 1.0f;
    s->n_vocab = n_vocab;
    s->idx = malloc(2 * (size_t)n_vocab * sizeof *s->idx); /* second half: sort scratch */
    s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
    s->seen = calloc((size_t)n_vocab, 1);
    if (!s->idx || !s->prob || !s->seen) {
        kiln_sampler_free(s);
        return -1;
    }
    kiln_sampler_seed(s, seed);
    return 0;
}

void kiln_sampler_free(kiln_sampler *s)
{
    free(s->idx);
    free(s->prob);
    free(s->seen);
    s->idx = NULL;
    s->prob = NULL;
    s->seen = NULL;
}

/* PCG32 (XSH RR): 64-bit LCG state, 32-bit output; the seeding sequence is
 * PCG's reference one, so a seed means the same stream everywhere. */
uint32_t kiln_sampler_rand(kiln_sampler *s)
{
    uint64_t old = s->rng_state;
    s->rng_state = old * 6364136223846793005ull + s->rng_inc;
    uint32_t x = (uint32_t)(((old >> 18) ^ old) >> 27), rot = (uint32_t)(old >> 59);
    return (x >> rot) | (x << ((32 - rot) & 31));
}

void kiln_sampler_seed(kiln_sampler *s, uint64_t seed)
{
    s->rng_state = 0;
    s->rng_inc = (0xda3e39cb94b95bdbull << 1) | 1; /* fixed stream */
    kiln_sampler_rand(s);
    s->rng_state += seed;
    kiln_sampler_rand(s);
}

float kiln_sampler_uniform(kiln_sampler *s)
{
    return (float)(kiln_sampler_rand(s) >> 8) * (1.0f / 16777216.0f);
}

/* Sorts ids by logit, larger first, lower id on ties (so the order is
 * deterministic). A merge sort, because qsort's comparator could only
 * reach the logits through a global. */
static void sort_desc(int *v, int n, const float *lg, int *tmp)
{
    if (n < 2)
        return;
    int h = n / 2;
    sort_desc(v, h, lg, tmp);
    sort_desc(v + h, n - h, lg, tmp);
    int i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int a = v[i], b = v[j];
        if (lg[a] > lg[b] || (lg[a] == lg[b] && a < b))
            tmp[k++] = v[i++];
        else
            tmp[k++] = v[j++];
    }
    while (i < h)
        tmp[k++] = v[i++];
    while (j < n)
        tmp[k++] = v[j++];
    memcpy(v, tmp, (size_t)n * sizeof *v);
}

/* Moves the k largest (by logit, ties to lower id) to v[0..k), unordered. */
static void select_top(int *v, int n, int k, const float *lg)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int p = v[(lo + hi) / 2], i = lo, j = hi;
        while (i <= j) {
            while (lg[v[i]] > lg[p] || (lg[v[i]] == lg[p] && v[i] < p))
                i++;
            while (lg[p] > lg[v[j]] || (lg[p] == lg[v[j]] && p < v[j]))
                j--;
            if (i <= j) {
                int t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

int kiln_sample(kiln_sampler *s, float *logits, int n_vocab, const int *recent, int n_recent)
{
    if (n_vocab < 1 || n_vocab > s->n_vocab)
        return -1;
    for (int i = 0; i < n_vocab; i++) /* a NaN would break every comparison below */
        if (logits[i] != logits[i])
            logits[i] = -INFINITY;
    if (s->repeat_penalty != 1.0f && recent) {
        /* each distinct recent token once, however often it occurred */
        for (int i = 0; i < n_recent; i++) {
            int t = recent[i];
            if (t < 0 || t >= n_vocab || s->seen[t])
                continue;
            s->seen[t] = 1;
            logits[t] = logits[t] > 0 ? logits[t] / s->repeat_penalty : logits[t] * s->repeat_penalty;
        }
        for (int i = 0; i < n_recent; i++)
            if (recent[i] >= 0 && recent[i] < n_vocab)
                s->seen[recent[i]] = 0;
    }
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    float inv_t = 1.0f / s->temperature;
    if (s->temperature <= 0.0f || s->top_k == 1 || isinf(inv_t) || isinf(logits[best]))
        return best;
    int *v = s->idx, n = n_vocab;
    for (int i = 0; i < n; i++)
        v[i] = i;
    int sorted = 0;
    if (s->top_k > 0 && s->top_k < n) {
        select_top(v, n, s->top_k, logits);
        n = s->top_k;
    }
    if (s->top_p < 1.0f) {
        sort_desc(v, n, logits, s->idx + s->n_vocab);
        sorted = 1;
    }
    /* softmax(logits / T) weights relative to the best token (weight 1);
     * scaling the difference never overflows, however small T is */
    float mx = logits[best];
    double total = 0;
    for (int i = 0; i < n; i++) {
        s->prob[i] = expf((logits[v[i]] - mx) * inv_t);
        total += s->prob[i];
    }
    if (s->top_p < 1.0f && sorted) {
        /* smallest prefix whose probability reaches top_p */
        double cum = 0, want = (double)s->top_p * total;
        int k = 0;
        while (k < n) {
            cum += s->prob[k++];
            if (cum >= want)
                break;
        }
        n = k;
        total = cum;
    }
    if (s->min_p > 0.0f) {
        /* the top weight is 1, so the cut is min_p itself (the top always stays) */
        float cut = s->min_p < 1.0f ? s->min_p : 1.0f;
        int k = 0;
        total = 0;
        for (int i = 0; i < n; i++)
            if (s->prob[i] >= cut) {
                v[k] = v[i];
                s->prob[k] = s->prob[i];
                total += s->prob[k++];
            }
        n = k;
    }
    double u = (double)kiln_sampler_uniform(s) * total, cum = 0;
    for (int i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum)
            return v[i];
    }
    return v[n - 1];
}
