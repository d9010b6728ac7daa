/* Unit tests of runtime/sample.c: each filter keeps exactly the tokens it
 * should, empirical frequencies match the target distribution (computed
 * here independently, in double), seeds reproduce, and the repetition
 * penalty works like llama.cpp's. */
#include "check.h"
#include "kiln_sample.h"

#include <stdlib.h>

#define NDRAW 40000

/* softmax(logits / t) restricted to keep[] (1 = candidate), in double */
static void target(const float *lg, int n, double t, const int *keep, double *p)
{
    double mx = -1e300, z = 0;
    for (int i = 0; i < n; i++)
        if (keep[i] && lg[i] > mx)
            mx = lg[i];
    for (int i = 0; i < n; i++) {
        p[i] = keep[i] ? exp((lg[i] - mx) / t) : 0;
        z += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] /= z;
}

/* Draws NDRAW tokens (fresh logits each time: kiln_sample may change them);
 * returns 1 if every frequency is within 5 standard errors of p and no
 * token with p = 0 was drawn. */
static int matches(kiln_sampler *s, const float *lg, int n, const double *p)
{
    float buf[64];
    int cnt[64] = {0};
    for (int d = 0; d < NDRAW; d++) {
        memcpy(buf, lg, (size_t)n * sizeof *buf);
        int t = kiln_sample(s, buf, n, NULL, 0);
        if (t < 0 || t >= n)
            return 0;
        cnt[t]++;
    }
    int ok = 1;
    for (int i = 0; i < n; i++) {
        double f = (double)cnt[i] / NDRAW, se = sqrt(p[i] * (1 - p[i]) / NDRAW);
        if ((p[i] == 0 && cnt[i]) || fabs(f - p[i]) > 5 * se + 1e-9) {
            fprintf(stderr, "token %d: frequency %.4f, expected %.4f\n", i, f, p[i]);
            ok = 0;
        }
    }
    return ok;
}

static void random_logits(float *lg, int n, unsigned *seed)
{
    for (int i = 0; i < n; i++)
        lg[i] = (float)(rand_r(seed) % 2000) / 500.0f - 2.0f;
}

static void test_greedy(void)
{
    kiln_sampler s;
    CHECK(kiln_sampler_init(&s, 50, 1) == 0);
    unsigned seed = 7;
    int bad = 0, bad_cold = 0;
    for (int trial = 0; trial < 200; trial++) {
        float lg[50], cp[50];
        random_logits(lg, 50, &seed);
        int best = 0;
        for (int i = 1; i < 50; i++)
            if (lg[i] > lg[best])
                best = i;
        /* a clear winner, so a near-zero temperature must pick it too */
        lg[best] += 0.05f;
        s.temperature = 0;
        memcpy(cp, lg, sizeof cp);
        bad += kiln_sample(&s, cp, 50, NULL, 0) != best;
        s.temperature = 1e-3f;
        for (int d = 0; d < 20; d++) {
            memcpy(cp, lg, sizeof cp);
            bad_cold += kiln_sample(&s, cp, 50, NULL, 0) != best;
        }
    }
    CHECK(bad == 0);
    CHECK(bad_cold == 0);
    kiln_sampler_free(&s);
}

static void test_temperature_distribution(void)
{
    float lg[8] = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.5f, 1.2f, 0.7f};
    int keep[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    double p[8];
    double temps[] = {1.0, 0.7, 1.8};
    for (int k = 0; k < 3; k++) {
        kiln_sampler s;
        kiln_sampler_init(&s, 8, 100 + k);
        s.temperature = (float)temps[k];
        target(lg, 8, temps[k], keep, p);
        CHECK(matches(&s, lg, 8, p));
        kiln_sampler_free(&s);
    }
}

static void test_top_k(void)
{
    unsigned seed = 3;
    for (int trial = 0; trial < 5; trial++) {
        float lg[40];
        random_logits(lg, 40, &seed);
        int k = 3 + trial * 2, keep[40] = {0};
        /* the k best, found independently by counting larger logits */
        for (int i = 0; i < 40; i++) {
            int larger = 0;
            for (int j = 0; j < 40; j++)
                larger += lg[j] > lg[i] || (lg[j] == lg[i] && j < i);
            keep[i] = larger < k;
        }
        kiln_sampler s;
        kiln_sampler_init(&s, 40, 11 + trial);
        s.top_k = k;
        s.temperature = 0.9f;
        double p[40];
        target(lg, 40, 0.9, keep, p);
        CHECK(matches(&s, lg, 40, p));
        kiln_sampler_free(&s);
    }
}

static void test_top_p_min_p(void)
{
    /* probabilities 0.45 0.25 0.15 0.1 0.05 (logits are their logs, shuffled) */
    float lg[5] = {logf(0.15f), logf(0.45f), logf(0.05f), logf(0.25f), logf(0.1f)};
    double p[5];
    kiln_sampler s;
    kiln_sampler_init(&s, 5, 42);
    s.top_p = 0.75f; /* 0.45 + 0.25 = 0.70 < 0.75: the nucleus needs 0.15 too */
    int nucleus[5] = {1, 1, 0, 1, 0};
    target(lg, 5, 1.0, nucleus, p);
    CHECK(matches(&s, lg, 5, p));
    s.top_p = 0.6f; /* 0.45 < 0.6 <= 0.70 */
    int nucleus2[5] = {0, 1, 0, 1, 0};
    target(lg, 5, 1.0, nucleus2, p);
    CHECK(matches(&s, lg, 5, p));
    s.top_p = 1.0f;
    s.min_p = 0.3f; /* cut at 0.3 * 0.45 = 0.135: keeps 0.45 0.25 0.15 */
    target(lg, 5, 1.0, nucleus, p);
    CHECK(matches(&s, lg, 5, p));
    s.min_p = 0.5f; /* cut 0.225: keeps 0.45 0.25 */
    target(lg, 5, 1.0, nucleus2, p);
    CHECK(matches(&s, lg, 5, p));
    /* combined: top-k 4 then top-p 0.9 of the renormalized 0.95 (0.947
     * needs all four) then min-p 0.2 (cut 0.09: drops nothing more) */
    s.top_k = 4;
    s.top_p = 0.9f;
    s.min_p = 0.2f;
    int four[5] = {1, 1, 0, 1, 1};
    target(lg, 5, 1.0, four, p);
    CHECK(matches(&s, lg, 5, p));
    kiln_sampler_free(&s);
}

static void test_seed(void)
{
    float lg[16];
    unsigned seed = 9;
    random_logits(lg, 16, &seed);
    int a[200], b[200], c[200];
    for (int run = 0; run < 3; run++) {
        kiln_sampler s;
        kiln_sampler_init(&s, 16, run == 2 ? 1235 : 1234);
        s.temperature = 1.3f;
        s.top_k = 10;
        for (int i = 0; i < 200; i++) {
            float cp[16];
            memcpy(cp, lg, sizeof cp);
            (run == 0 ? a : run == 1 ? b : c)[i] = kiln_sample(&s, cp, 16, NULL, 0);
        }
        kiln_sampler_free(&s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    /* PCG32's reference stream (pcg32_srandom(42, 54)) pins the generator itself */
    kiln_sampler s;
    kiln_sampler_init(&s, 1, 0);
    s.rng_state = 0;
    s.rng_inc = (54ull << 1) | 1;
    kiln_sampler_rand(&s);
    s.rng_state += 42;
    kiln_sampler_rand(&s);
    CHECK(kiln_sampler_rand(&s) == 0xa15c02b7u);
    CHECK(kiln_sampler_rand(&s) == 0x7b47f409u);
    for (int i = 0; i < 1000; i++) {
        float u = kiln_sampler_uniform(&s);
        CHECK(u >= 0.0f && u < 1.0f);
    }
    kiln_sampler_free(&s);
}

static void test_repeat_penalty(void)
{
    kiln_sampler s;
    kiln_sampler_init(&s, 6, 5);
    s.repeat_penalty = 2.0f;
    s.temperature = 0; /* greedy: logits change only by the penalty */
    float lg[6] = {3.0f, 2.0f, -1.0f, 0.5f, -4.0f, 2.5f};
    float want[6];
    int recent[] = {0, 2, 2, 0, 4, 99, -3}; /* repeats count once; bad ids ignored */
    for (int i = 0; i < 6; i++)
        want[i] = lg[i];
    want[0] = 3.0f / 2.0f;
    want[2] = -1.0f * 2.0f;
    want[4] = -4.0f * 2.0f;
    int t = kiln_sample(&s, lg, 6, recent, 7);
    for (int i = 0; i < 6; i++)
        CHECK_NEAR(lg[i], want[i], 0);
    CHECK(t == 5); /* 3.0 was best; penalized to 1.5, 2.5 wins */
    /* penalty then sampling: the distribution follows the penalized logits */
    float base[4] = {1.0f, 0.8f, -0.2f, 0.1f}, pen[4];
    int rec[] = {0, 2};
    memcpy(pen, base, sizeof pen);
    pen[0] /= 1.5f;
    pen[2] *= 1.5f;
    int keep[4] = {1, 1, 1, 1};
    double p[4];
    target(pen, 4, 1.0, keep, p);
    kiln_sampler_free(&s);
    kiln_sampler_init(&s, 4, 77);
    s.repeat_penalty = 1.5f;
    int cnt[4] = {0};
    for (int d = 0; d < NDRAW; d++) {
        float cp[4];
        memcpy(cp, base, sizeof cp);
        cnt[kiln_sample(&s, cp, 4, rec, 2)]++;
    }
    for (int i = 0; i < 4; i++)
        CHECK(fabs((double)cnt[i] / NDRAW - p[i]) < 5 * sqrt(p[i] * (1 - p[i]) / NDRAW));
    kiln_sampler_free(&s);
}

static void test_edges(void)
{
    kiln_sampler s;
    CHECK(kiln_sampler_init(&s, 0, 1) == -1);
    kiln_sampler_init(&s, 4, 1);
    float lg[4] = {0.1f, NAN, 0.3f, 0.2f};
    CHECK(kiln_sample(&s, lg, 5, NULL, 0) == -1); /* more than the sampler was made for */
    int nan_drawn = 0;
    for (int d = 0; d < 1000; d++) {
        float cp[4] = {0.1f, NAN, 0.3f, 0.2f};
        nan_drawn += kiln_sample(&s, cp, 4, NULL, 0) == 1;
    }
    CHECK(nan_drawn == 0);
    s.temperature = 1e-30f; /* 1/T overflows: greedy */
    float lg2[4] = {0.1f, 0.5f, 0.3f, 0.2f};
    CHECK(kiln_sample(&s, lg2, 4, NULL, 0) == 1);
    s.temperature = 1.0f;
    s.min_p = 5.0f; /* above 1: only the top survives */
    float lg3[4] = {0.1f, 0.5f, 0.3f, 0.2f};
    CHECK(kiln_sample(&s, lg3, 4, NULL, 0) == 1);
    kiln_sampler_free(&s);
}

int main(void)
{
    test_greedy();
    test_temperature_distribution();
    test_top_k();
    test_top_p_min_p();
    test_seed();
    test_repeat_penalty();
    test_edges();
    return check_report();
}
