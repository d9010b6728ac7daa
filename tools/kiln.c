/* kiln.c - entry point of the kiln CLI: dispatches to subcommands. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const kiln_cmd commands[] = {
    {"ir", kiln_cmd_ir, "load and verify a model, run passes, print its IR",
     "kiln ir MODEL [--passes P1,P2,...] [--after PASS] [--verify-each] [--bind SYM=N]... "
     "[--format text|json] [--memory [--bound SYM=N]...] [--no-verify] [-v] | kiln ir --list-passes"},
    {"eval", kiln_cmd_eval, "run a model with the reference interpreter (.npy in and out)",
     "kiln eval MODEL --input NAME=FILE.npy ... [--output-dir DIR]"},
    {"build", kiln_cmd_build, "compile a model into an executable or a shared library",
     "kiln build MODEL -o NAME [--target cpu|cuda] [--cuda-arch N,...] [--shared] [--weights embed|external] "
     "[--bound SYM=N]... [--bind-input NAME=FILE.npy]... [--bind-shape NAME=D0,D1,...]... [--max-ctx N] [--kv-budget BYTES] [--kv-dtype f32|f16|bf16|i8] [--kv-layout inplace|functional] [--triple T] [--cpu NAME] [--features F] [-O0..3] [--passes P,...] [--verify-each] "
     "[--emit-obj FILE] [--keep-temps] [-v]"},
    {"ops", kiln_cmd_ops, "list the op registry (--markdown for the IR reference table)",
     "kiln ops [--markdown]"},
    {"tokenize", kiln_cmd_tokenize, "encode text to token ids or decode ids, with a model's tokenizer",
     "kiln tokenize MODEL_OR_TOKENIZER [TEXT | --file F] [--ids | --pieces | --decode 1,2,3 [--stream]]\n"
     "       [--chat [--system S] | --chat-text] [--no-special] [--no-parse-special] [--skip-special]\n"
     "       [--save FILE.ktok] [--info] [--time] [--batch] [--normalize]"},
    {"run", kiln_cmd_run, "greedy decoding of an LM with the reference interpreter (the oracle)",
     "kiln run MODEL --ids 1,2,3 [-n N] [--logits out.npy] [-v]"},
    {"conformance", kiln_cmd_conformance, "run ONNX backend node tests (reference interpreter or compiled CPU code)",
     "kiln conformance DIR [--target interp|cpu] [-O0..3] [-j N] [--transformer-set] [--json OUT.json] "
     "[--filter SUBSTR] [--timeout SEC] [--mem-limit-mb MB] [-v]"},
    {"viz", kiln_cmd_viz, "draw the graph (fused kernels as clusters) and the memory plan",
     "kiln viz MODEL -o OUT.html|OUT.svg|OUT.dot [--passes P,...] [--after PASS] [--bound SYM=N]... "
     "[--no-verify] [-v]"},
};

#define N_COMMANDS (int)(sizeof commands / sizeof *commands)

static void usage(FILE *f)
{
    fprintf(f, "kiln %s - ahead-of-time compiler for transformer models\n\nusage: kiln COMMAND ...\n\n",
            KILN_VERSION);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nkiln COMMAND --help shows a command's options.\n");
}

int kiln_cli_usage(const char *cmd)
{
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, cmd) == 0)
            fprintf(stderr, "usage: %s\n", commands[i].usage);
    return KILN_EXIT_INPUT;
}

int kiln_cli_fail(const char *cmd, const kiln_err *err)
{
    fprintf(stderr, "kiln %s: %s\n", cmd, err->msg);
    return KILN_EXIT_INPUT;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return KILN_EXIT_INPUT;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("kiln %s (abi %d)\n", KILN_VERSION, KILN_ABI_VERSION);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, argv[1]) == 0) {
            for (int k = 2; k < argc; k++)
                if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
                    printf("usage: %s\n%s\n", commands[i].usage, commands[i].summary);
                    return 0;
                }
            return commands[i].run(argc - 1, argv + 1);
        }
    fprintf(stderr, "kiln: unknown command '%s' (see kiln --help)\n", argv[1]);
    return KILN_EXIT_INPUT;
}
