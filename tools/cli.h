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

/* Loads a model of any supported format (by extension / directory) into a
 * graph. NULL with err set on failure. */
kiln_graph *kiln_cli_load(const char *path, kiln_err *err);

/* Prints "kiln <cmd>: msg" on stderr and returns KILN_EXIT_INPUT. */
int kiln_cli_fail(const char *cmd, const kiln_err *err);
int kiln_cli_usage(const char *cmd);

#endif
