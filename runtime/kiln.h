/* kiln.h - the public C API of a model compiled by kiln.
 *
 * Link against a kiln-built shared library (kiln build --shared) or use it
 * inside a kiln-built executable. Everything a model needs (weights mapping,
 * threads, arena) is owned by the kiln_model handle.
 *
 *   char err[256];
 *   kiln_model *m = kiln_open(NULL, err, sizeof err);   // NULL: embedded or NAME.weights
 *   ...
 *   kiln_close(m);
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes; kiln_open refuses a library built with
 * another one, so a stale header and library never run together. */
#define KILN_H_ABI 1

typedef struct kiln_model kiln_model;

kiln_model *kiln_open_abi(const char *weights_path, int threads, char *err, size_t errlen, int abi);
#define kiln_open(weights_path, err, errlen) kiln_open_abi((weights_path), 0, (err), (errlen), KILN_H_ABI)
void kiln_close(kiln_model *m);

/* Model metadata. */
const char *kiln_model_name(const kiln_model *m);
int kiln_num_inputs(const kiln_model *m);
int kiln_num_outputs(const kiln_model *m);
const char *kiln_input_name(const kiln_model *m, int i);
const char *kiln_output_name(const kiln_model *m, int i);

/* A tensor crossing the API: element type (kiln dtype code, see
 * kiln_common.h: 1 = f32, 2 = f16, 13 = i64 ...), shape, data. */
typedef struct kiln_buffer {
    int dtype;
    int rank;
    int64_t dims[8];
    void *data;
} kiln_buffer;

/* Runs a non-LM model. inputs[] in model order with shapes set; outputs[]
 * receive shapes and malloc'd data (free with kiln_buffer_free). Returns 0,
 * or -1 with a message in err. */
int kiln_run(kiln_model *m, const kiln_buffer *inputs, kiln_buffer *outputs, char *err, size_t errlen);
void kiln_buffer_free(kiln_buffer *b);

#ifdef __cplusplus
}
#endif
#endif
