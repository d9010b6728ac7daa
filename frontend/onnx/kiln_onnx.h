/* kiln_onnx.h - the ONNX importer: .onnx models into the kiln IR, plus
 * readers for the TensorProto files of ONNX's backend tests.
 *
 * Initializers stored as raw bytes are never copied: they become kiln
 * weights that reference the .onnx file (or its external-data file) by byte
 * offset. See docs/onnx.md for the design and the op coverage.
 */
#ifndef KILN_ONNX_H
#define KILN_ONNX_H

#include "kiln_ir.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Highest default-domain opset the importer accepts. Opset 25 only widened
 * type lists and added Attention's window attributes, which kiln's Attention
 * has, so it imports like 24. */
#define KILN_ONNX_MAX_OPSET 25

typedef struct kiln_onnx_status {
    /* Set on failure when the model uses something kiln does not support
     * (op, opset, element type, attribute) rather than being malformed or
     * failing kiln's type checks. */
    int unsupported;
} kiln_onnx_status;

/* Imports the model at path. Returns a graph the caller frees with
 * kiln_graph_free, or NULL with a one-line error (naming the file and the
 * node, op type, domain and opset where there is one) in err. status may be
 * NULL. Nothing is written anywhere. */
kiln_graph *kiln_import_onnx(const char *path, kiln_onnx_status *status, kiln_err *err);

/* The op types a model uses, in order of first use, without importing it:
 * default-domain ops by name, others as "domain.OpType". *ops is a malloc'd
 * array of malloc'd strings; free with kiln_onnx_free_strings. */
int kiln_onnx_model_ops(const char *path, char ***ops, int *n, kiln_err *err);
void kiln_onnx_free_strings(char **s, int n);

/* Reads a serialized TensorProto (a backend test's input_0.pb) into t (data
 * owned by t; free with kiln_tensor_free). *name (may be NULL) receives the
 * tensor's name, malloc'd, or NULL when unnamed. */
int kiln_onnx_read_tensor(const char *path, kiln_tensor *t, char **name, kiln_err *err);

/* ONNX TensorProto.DataType code <-> kiln element type; KILN_DT_INVALID /
 * -1 where the other side has no equivalent. */
kiln_dtype kiln_onnx_dtype(int onnx_type);
int kiln_onnx_type_code(kiln_dtype dt);

#ifdef __cplusplus
}
#endif
#endif
