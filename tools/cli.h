/* cli.h - the kiln command-line tool: subcommand table and shared helpers. */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include "kiln_ir.h"

/* Exit statuses: 0 success, 1 a check failed (e.g. tests, mismatches),
 * 2 bad input or usage (one line on stderr naming file/node/tensor). */
enum { KILN_EXIT_OK = 0, KILN_EXIT_FAIL = 1, KILN_EXIT_INPUT = 2 };

typedef struct kiln_cmd {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    const char *summary;
    const char *usage;
} kiln_cmd;

int kiln_cmd_ir(int argc, char **argv);
int kiln_cmd_eval(int argc, char **argv);
int kiln_cmd_ops(int argc, char **argv);
int kiln_cmd_build(int argc, char **argv);
int kiln_cmd_tokenize(int argc, char **argv);
int kiln_cmd_run(int argc, char **argv);
int kiln_cmd_conformance(int argc, char **argv);
int kiln_cmd_viz(int argc, char **argv);

/* Loads a model of any supported format (by extension / directory) into a
 * graph. NULL with err set on failure. */
kiln_graph *kiln_cli_load(const char *path, kiln_err *err);

/* Prints "kiln <cmd>: msg" on stderr and returns KILN_EXIT_INPUT. */
int kiln_cli_fail(const char *cmd, const kiln_err *err);
int kiln_cli_usage(const char *cmd);

/* ---- shared by kiln build and kiln conformance (cmd_build.c) ---- */

/* The runtime archive, main() object and kiln.h embedded in the kiln
 * binary, written into a fresh temporary folder for the linker. */
typedef struct kiln_cli_rt {
    char dir[4096];
    char lib[4200], main_obj[4200], header[4200];
} kiln_cli_rt;
int kiln_cli_extract_runtime(kiln_cli_rt *rt, kiln_err *err);
/* Deletes the folder (no-op when nothing was extracted). */
void kiln_cli_remove_runtime(kiln_cli_rt *rt);

/* Specialization before the passes. bind_shape gives graph input `name`
 * static dims (they must agree with its static ones); bind_input turns it
 * into a constant holding a copy of t (same dtype) and removes it from the
 * graph's inputs, so shape math that depends on it folds. Types are stale
 * until kiln_cli_reinfer re-runs inference over every node and verifies. */
int kiln_cli_bind_shape(kiln_graph *g, const char *name, int rank, const int64_t *dims, kiln_err *err);
int kiln_cli_bind_input(kiln_graph *g, const char *name, const kiln_tensor *t, kiln_err *err);
int kiln_cli_reinfer(kiln_graph *g, kiln_err *err);

#endif
