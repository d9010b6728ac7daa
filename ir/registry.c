/* registry.c - the op table: one list per op family, each entry defined
 * (attributes, inference, reference kernel) in its family's ops_*.c file. */
#include "kiln_ir.h"

#include <string.h>

extern const kiln_op_def *const kiln_ops_elementwise[];
extern const kiln_op_def *const kiln_ops_shape[];
extern const kiln_op_def *const kiln_ops_reduce[];
extern const kiln_op_def *const kiln_ops_linalg[];
extern const kiln_op_def *const kiln_ops_nn[];
extern const kiln_op_def *const kiln_ops_misc[];
extern const kiln_op_def *const kiln_ops_lm[];

static const kiln_op_def *const *const families[] = {
    kiln_ops_elementwise, kiln_ops_shape, kiln_ops_reduce,
    kiln_ops_linalg,      kiln_ops_nn,    kiln_ops_misc,
    kiln_ops_lm,
};

#define N_FAMILIES (int)(sizeof families / sizeof *families)

const kiln_op_def *kiln_op_find(const char *name)
{
    for (int f = 0; f < N_FAMILIES; f++)
        for (const kiln_op_def *const *p = families[f]; *p; p++)
            if (strcmp((*p)->name, name) == 0)
                return *p;
    return NULL;
}

int kiln_op_count(void)
{
    int n = 0;
    for (int f = 0; f < N_FAMILIES; f++)
        for (const kiln_op_def *const *p = families[f]; *p; p++)
            n++;
    return n;
}

const kiln_op_def *kiln_op_at(int i)
{
    for (int f = 0; f < N_FAMILIES; f++)
        for (const kiln_op_def *const *p = families[f]; *p; p++)
            if (i-- == 0)
                return *p;
    return NULL;
}
