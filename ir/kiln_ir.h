/* kiln_ir.h - kiln's typed tensor IR: dims, types, graphs, the op registry,
 * the text form, the verifier and the reference interpreter.
 *
 * Ownership: a kiln_graph owns every value, node, attribute, symbol and
 * inline constant inside it; kiln_graph_free releases all of it. Weights are
 * references (file + offset), mapped lazily, never copied.
 */
#ifndef KILN_IR_H
#define KILN_IR_H

#include "kiln_common.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_MAX_RANK 8
#define KILN_IR_TEXT_VERSION 1
#define KILN_MAX_OP_INPUTS 64
#define KILN_MAX_OP_OUTPUTS 16

/* ---- dimensions ----------------------------------------------------------
 * A kiln_dim is >= 0 for a static size, KILN_DIM_ANY when unknown, and
 * otherwise -(1 + id) naming entry `id` of the graph's symbol table, which is
 * either a variable (`seq`) or an interned expression over other dims
 * (`past+seq`, `batch*seq`). Expressions are canonical, so equal dims have
 * equal codes within one table. */
typedef int64_t kiln_dim;
#define KILN_DIM_ANY INT64_MIN
#define KILN_DIM_IS_STATIC(d) ((d) >= 0)
#define KILN_DIM_IS_SYM(d) ((d) < 0 && (d) != KILN_DIM_ANY)
#define KILN_DIM_SYM_ID(d) ((int)(-1 - (d)))
#define KILN_DIM_FROM_SYM(id) ((kiln_dim)(-1 - (int64_t)(id)))

typedef enum kiln_sym_kind {
    KILN_SYM_VAR,
    KILN_SYM_ADD,
    KILN_SYM_SUB,
    KILN_SYM_MUL,
    KILN_SYM_DIV, /* floor division, both operands known non-negative */
} kiln_sym_kind;

typedef struct kiln_sym {
    kiln_sym_kind kind;
    char *name; /* VAR only */
    kiln_dim a, b;
} kiln_sym;

typedef struct kiln_symtab {
    kiln_sym *syms;
    int n, cap;
} kiln_symtab;

kiln_dim kiln_dim_var(kiln_symtab *t, const char *name);
kiln_dim kiln_dim_add(kiln_symtab *t, kiln_dim a, kiln_dim b);
kiln_dim kiln_dim_sub(kiln_symtab *t, kiln_dim a, kiln_dim b);
kiln_dim kiln_dim_mul(kiln_symtab *t, kiln_dim a, kiln_dim b);
kiln_dim kiln_dim_div(kiln_symtab *t, kiln_dim a, kiln_dim b);
/* Appends the text of d ("64", "seq", "past+seq", "?") to sb. */
void kiln_dim_print(const kiln_symtab *t, kiln_dim d, kiln_sb *sb);
/* Value of d given values for the symbol table's variables (indexed by
 * symbol id; entries of non-variables ignored). -1 if d is unknown or a
 * variable is unbound (value < 0). */
int64_t kiln_dim_eval(const kiln_symtab *t, kiln_dim d, const int64_t *var_vals);
/* Copies the expression d from table src into dst (interning there). */
kiln_dim kiln_dim_import(kiln_symtab *dst, const kiln_symtab *src, kiln_dim d);
void kiln_symtab_free(kiln_symtab *t);

/* ---- types ------------------------------------------------------------------- */

typedef struct kiln_type {
    kiln_dtype dtype;
    int rank; /* -1: unknown rank */
    kiln_dim dims[KILN_MAX_RANK];
} kiln_type;

/* Number of elements if all dims are static, else -1. */
int64_t kiln_type_numel(const kiln_type *t);
int kiln_type_is_static(const kiln_type *t);
void kiln_type_print(const kiln_symtab *syms, const kiln_type *t, kiln_sb *sb);

/* ---- concrete tensors (interpreter, constants) ------------------------------- */

typedef struct kiln_tensor {
    kiln_dtype dtype;
    int rank;
    int64_t dims[KILN_MAX_RANK];
    void *data;
    size_t nbytes;
    int owned; /* data is malloc'd and belongs to this tensor */
} kiln_tensor;

int64_t kiln_tensor_numel(const kiln_tensor *t);
/* Allocates zeroed storage for the given shape; t->owned = 1. */
void kiln_tensor_alloc(kiln_tensor *t, kiln_dtype dt, int rank, const int64_t *dims);
void kiln_tensor_free(kiln_tensor *t);
/* Replaces a view whose data is not 16-byte aligned (a weight at an odd
 * offset inside a model file) with an owned aligned copy, so kernels may
 * read it through typed pointers. */
void kiln_tensor_align(kiln_tensor *t);
/* Element i as double (dequantizing block formats row by row is the
 * caller's job: this returns NaN for them). */
double kiln_tensor_get(const kiln_tensor *t, int64_t i);
int64_t kiln_tensor_get_i64(const kiln_tensor *t, int64_t i);
/* Whole tensor as malloc'd doubles / floats (block formats dequantized). */
double *kiln_tensor_to_f64(const kiln_tensor *t);
float *kiln_tensor_to_f32(const kiln_tensor *t);

/* ---- attributes ---------------------------------------------------------------- */

typedef enum kiln_attr_kind {
    KILN_ATTR_INT,
    KILN_ATTR_FLOAT,
    KILN_ATTR_STRING,
    KILN_ATTR_INTS,
    KILN_ATTR_FLOATS,
    KILN_ATTR_STRINGS,
    KILN_ATTR_DTYPE,
} kiln_attr_kind;

typedef struct kiln_attr {
    char *name;
    kiln_attr_kind kind;
    int64_t i;    /* INT, DTYPE (a kiln_dtype) */
    double f;     /* FLOAT */
    char *s;      /* STRING */
    int n;        /* list length */
    int64_t *ints;
    double *floats;
    char **strings;
} kiln_attr;

/* Attribute schema entry of an op. Lists default to empty. */
typedef struct kiln_attr_spec {
    const char *name;
    kiln_attr_kind kind;
    int required;
    int64_t def_i;
    double def_f;
    const char *def_s;
} kiln_attr_spec;

void kiln_attr_clear(kiln_attr *a);
void kiln_attr_copy(kiln_attr *dst, const kiln_attr *src);
/* Attribute views for kiln_graph_add_node (which copies them): the name,
 * string and list are borrowed, not owned. */
kiln_attr kiln_attr_int(const char *name, int64_t v);
kiln_attr kiln_attr_float(const char *name, double v);
kiln_attr kiln_attr_ints(const char *name, int64_t *v, int n);
kiln_attr kiln_attr_str(const char *name, const char *s);
kiln_attr kiln_attr_dtype(const char *name, kiln_dtype dt);

/* ---- graph ------------------------------------------------------------------------ */

typedef enum kiln_value_kind {
    KILN_VAL_INPUT,
    KILN_VAL_WEIGHT, /* data in a file, by reference */
    KILN_VAL_CONST,  /* small inline data owned by the graph */
    KILN_VAL_NODE,   /* produced by a node */
} kiln_value_kind;

typedef struct kiln_value {
    char *name;
    kiln_type type;
    kiln_value_kind kind;
    int producer;     /* node index for KILN_VAL_NODE, else -1 */
    int producer_out; /* output slot of the producer */
    int file;         /* WEIGHT: index into graph files */
    uint64_t offset;  /* WEIGHT: byte offset in that file */
    void *data;       /* CONST: owned inline data */
    size_t nbytes;    /* CONST and WEIGHT: storage bytes */
    /* Known contents of small integer vectors (shapes, axes) as dims, filled
     * by inference: lets Shape->Gather->Concat->Reshape chains produce
     * symbolic shapes. Owned; NULL when unknown. */
    kiln_dim *symval;
    int symval_n;
} kiln_value;

struct kiln_op_def;

typedef struct kiln_node {
    const struct kiln_op_def *op;
    char *name; /* origin, e.g. the ONNX node name; may be NULL */
    int *inputs;
    int n_inputs; /* -1 entries: optional input absent */
    int *outputs;
    int n_outputs;
    kiln_attr *attrs;
    int n_attrs;
    int kernel; /* fused-kernel group assigned by the fusion pass; -1 = none */
} kiln_node;

typedef struct kiln_wfile {
    char *path; /* as given (relative paths resolve against graph->base_dir) */
    kiln_map map;
    int mapped;
} kiln_wfile;

typedef struct kiln_graph {
    char *name;
    char *base_dir; /* directory for relative weight paths; may be NULL */
    kiln_value *values;
    int n_values, cap_values;
    kiln_node *nodes;
    int n_nodes, cap_nodes;
    int *inputs, n_inputs;
    int *outputs, n_outputs;
    kiln_wfile *files;
    int n_files;
    kiln_symtab syms;
    kiln_strmap names; /* value name -> value id */
    /* While a pass rebuilds a graph into this one, the source's names are
     * reserved too, so fresh names never collide with values still to be
     * copied (not owned). */
    const struct kiln_graph *reserve;
} kiln_graph;

kiln_graph *kiln_graph_new(const char *name);
void kiln_graph_free(kiln_graph *g);

/* Value ids are indexes into g->values. Names must be unique; the add
 * functions return -1 (and set err) on a duplicate. */
int kiln_graph_add_input(kiln_graph *g, const char *name, const kiln_type *t, kiln_err *err);
int kiln_graph_add_weight(kiln_graph *g, const char *name, const kiln_type *t, int file,
                          uint64_t offset, kiln_err *err);
/* Copies nbytes of data. */
int kiln_graph_add_const(kiln_graph *g, const char *name, const kiln_type *t, const void *data,
                         size_t nbytes, kiln_err *err);
int kiln_graph_add_file(kiln_graph *g, const char *path);
int kiln_graph_find(const kiln_graph *g, const char *name); /* -1 if absent */
/* A name not yet used in g, built from prefix. Caller frees. */
char *kiln_graph_fresh_name(const kiln_graph *g, const char *prefix);

/* Adds a node; the outputs are new values with the given names (NULL: fresh
 * names) and types inferred from the inputs. attrs are copied. On failure
 * (unknown op, bad arity or attribute, inference error) returns -1 with a
 * message naming the op and node and leaves the graph unchanged. */
int kiln_graph_add_node(kiln_graph *g, const char *op, const char *node_name,
                        const int *inputs, int n_inputs, const char *const *out_names,
                        int n_outputs, const kiln_attr *attrs, int n_attrs, kiln_err *err);
void kiln_graph_set_outputs(kiln_graph *g, const int *ids, int n);

/* Data of a WEIGHT or CONST value (maps the weight file on first use); NULL
 * with err set when the file is missing or too short. */
const void *kiln_graph_value_data(kiln_graph *g, int vid, kiln_err *err);
/* Tensor view of a WEIGHT/CONST with static shape (data not owned). */
int kiln_graph_value_tensor(kiln_graph *g, int vid, kiln_tensor *t, kiln_err *err);
/* Integer contents of value vid when it is a CONST/WEIGHT of at most max
 * elements: their count, else -1. */
int kiln_graph_const_ints(kiln_graph *g, int vid, int64_t *v, int max);
/* Per node: 1 when one of its outputs reaches a graph output (or the op is
 * stateful). Caller frees. */
char *kiln_graph_live_nodes(const kiln_graph *g);

/* Attribute lookup on a node, falling back to the op's schema default. */
const kiln_attr *kiln_node_attr(const kiln_node *n, const char *name);
int64_t kiln_node_int(const kiln_node *n, const char *name);
double kiln_node_float(const kiln_node *n, const char *name);
const char *kiln_node_string(const kiln_node *n, const char *name);
/* List attribute; *count receives the length (0 when unset). */
const int64_t *kiln_node_ints(const kiln_node *n, const char *name, int *count);
const double *kiln_node_floats(const kiln_node *n, const char *name, int *count);
int kiln_node_has_attr(const kiln_node *n, const char *name);
/* Describes a node for messages: "MatMul 'node_3'" or "MatMul %y". */
const char *kiln_node_label(const kiln_graph *g, const kiln_node *n, char *buf, size_t len);

/* ---- op registry ------------------------------------------------------------------
 * One kiln_op_def per op: attributes, type/shape inference and reference
 * kernel. Lowerings look ops up here; nothing else defines an op. */

typedef struct kiln_infer_ctx {
    const kiln_node *node;
    kiln_symtab *syms;
    int n_inputs;
    const kiln_type *in[KILN_MAX_OP_INPUTS];       /* NULL for absent optional inputs */
    const kiln_tensor *in_val[KILN_MAX_OP_INPUTS]; /* known values (consts; all at run time) */
    const kiln_dim *in_sym[KILN_MAX_OP_INPUTS];    /* known small int vectors as dims */
    int in_sym_n[KILN_MAX_OP_INPUTS];
    int n_outputs;
    kiln_type out[KILN_MAX_OP_OUTPUTS];
    kiln_dim *out_sym[KILN_MAX_OP_OUTPUTS]; /* set by inference (malloc'd); taken by caller */
    int out_sym_n[KILN_MAX_OP_OUTPUTS];
    kiln_err *err;
} kiln_infer_ctx;

typedef struct kiln_eval_ctx {
    const kiln_node *node;
    int n_inputs;
    const kiln_tensor *in[KILN_MAX_OP_INPUTS]; /* NULL for absent optional inputs */
    int n_outputs;
    kiln_tensor *out[KILN_MAX_OP_OUTPUTS]; /* allocated by the interpreter from inference */
    kiln_err *err;
} kiln_eval_ctx;

enum {
    KILN_OP_ELEMENTWISE = 1 << 0, /* output[i] depends on input[i] only (with broadcasting) */
    KILN_OP_COMMUTATIVE = 1 << 1,
    KILN_OP_SHAPE_ONLY = 1 << 2, /* moves or views data, no arithmetic */
    KILN_OP_STATEFUL = 1 << 3,
};

typedef struct kiln_op_def {
    const char *name;
    int min_inputs, max_inputs; /* max_inputs <= KILN_MAX_OP_INPUTS */
    int min_outputs, max_outputs;
    const kiln_attr_spec *attrs; /* terminated by an entry with name NULL */
    unsigned flags;
    int (*infer)(kiln_infer_ctx *c);
    int (*eval)(kiln_eval_ctx *c);
    const char *doc;  /* one line for the IR reference */
    const void *impl; /* family-private data (e.g. the scalar function) */
} kiln_op_def;

const kiln_op_def *kiln_op_find(const char *name);
/* All ops, for documentation and coverage reports. */
int kiln_op_count(void);
const kiln_op_def *kiln_op_at(int i);
const kiln_attr_spec *kiln_op_attr_spec(const kiln_op_def *op, const char *name);

/* Runs op inference for node n of g from its inputs' current types; fills
 * types[]/syms of its outputs when `apply` is set, else only checks that the
 * declared output types agree. */
int kiln_infer_node(kiln_graph *g, int node_index, int apply, kiln_err *err);

/* ---- text form -------------------------------------------------------------------- */

/* Parses a .kir file. Errors read "path:line:col: error: ...". */
kiln_graph *kiln_parse_file(const char *path, kiln_err *err);
kiln_graph *kiln_parse_string(const char *text, const char *path_for_errors,
                              const char *base_dir, kiln_err *err);
/* Prints the graph in text form (exact round trip with the parser). */
void kiln_print(const kiln_graph *g, kiln_sb *out);
int kiln_print_file(const kiln_graph *g, FILE *f);
/* The graph as JSON (values, nodes with attributes, inputs, outputs) for tools. */
void kiln_print_json(const kiln_graph *g, kiln_sb *out);

/* ---- verifier ---------------------------------------------------------------------- */

/* Checks SSA form, operand counts and attribute kinds, and re-runs inference
 * on every node; the message names the value and op. */
int kiln_verify(kiln_graph *g, kiln_err *err);

/* ---- reference interpreter -------------------------------------------------------------- */

/* Runs g on concrete inputs (in g->inputs order) and fills outputs (in
 * g->outputs order; the caller frees them with kiln_tensor_free). Symbolic
 * dims bind from the inputs' shapes. */
int kiln_interp_run(kiln_graph *g, const kiln_tensor *inputs, kiln_tensor *outputs,
                    kiln_err *err);

/* Runs one node's reference kernel on concrete inputs: inference at run
 * time, allocation of outputs, evaluation. in[] entries may be NULL for
 * absent optional inputs. outputs are allocated here; caller frees. */
int kiln_interp_node(const kiln_node *n, const kiln_tensor *const *in, int n_in,
                     kiln_tensor *out, int n_out, kiln_err *err);

#ifdef __cplusplus
}
#endif
#endif
