/* ops_shape.c - op family (see docs/ir.md). */
#include "op_util.h"

const kiln_op_def *const kiln_ops_shape[] = {
    NULL,
};
