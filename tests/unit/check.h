/* check.h - minimal assertion helpers for C unit tests. Each test binary
 * ends with a line "N passed, N failed" and exits nonzero on failure. */
#ifndef KILN_CHECK_H
#define KILN_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int check_pass, check_fail;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond)                                                                \
            check_pass++;                                                        \
        else {                                                                   \
            check_fail++;                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

#define CHECK_STR(a, b)                                                                   \
    do {                                                                                  \
        const char *a_ = (a), *b_ = (b);                                                  \
        if (a_ && b_ && strcmp(a_, b_) == 0)                                              \
            check_pass++;                                                                 \
        else {                                                                            \
            check_fail++;                                                                 \
            fprintf(stderr, "%s:%d: expected \"%s\", got \"%s\"\n", __FILE__, __LINE__,   \
                    b_ ? b_ : "(null)", a_ ? a_ : "(null)");                              \
        }                                                                                 \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                             \
    do {                                                                                  \
        double a_ = (a), b_ = (b);                                                        \
        if (fabs(a_ - b_) <= (tol))                                                       \
            check_pass++;                                                                 \
        else {                                                                            \
            check_fail++;                                                                 \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %.9g\n", __FILE__, __LINE__, #a, a_, b_); \
        }                                                                                 \
    } while (0)

static int check_report(void)
{
    printf("%d passed, %d failed\n", check_pass, check_fail);
    return check_fail ? 1 : 0;
}

#endif
