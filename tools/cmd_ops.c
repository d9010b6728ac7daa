/* cmd_ops.c - `kiln ops`: the op registry, as text or a markdown table. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char *kind_name(kiln_attr_kind k)
{
    static const char *n[] = {"int", "float", "string", "ints", "floats", "strings", "dtype"};
    return n[k];
}

int kiln_cmd_ops(int argc, char **argv)
{
    int md = argc > 1 && strcmp(argv[1], "--markdown") == 0;
    if (argc > 2 || (argc == 2 && !md))
        return kiln_cli_usage("ops");
    if (md)
        printf("| op | inputs | outputs | attributes | meaning |\n|---|---|---|---|---|\n");
    for (int i = 0; i < kiln_op_count(); i++) {
        const kiln_op_def *op = kiln_op_at(i);
        char ins[32], outs[32];
        if (op->max_inputs >= KILN_MAX_OP_INPUTS)
            snprintf(ins, sizeof ins, "%d+", op->min_inputs);
        else if (op->min_inputs == op->max_inputs)
            snprintf(ins, sizeof ins, "%d", op->min_inputs);
        else
            snprintf(ins, sizeof ins, "%d-%d", op->min_inputs, op->max_inputs);
        if (op->min_outputs == op->max_outputs)
            snprintf(outs, sizeof outs, "%d", op->min_outputs);
        else
            snprintf(outs, sizeof outs, "%d-%d", op->min_outputs, op->max_outputs);
        kiln_sb attrs = {0};
        kiln_sb_put(&attrs, "", 0);
        for (const kiln_attr_spec *s = op->attrs; s && s->name; s++)
            kiln_sb_printf(&attrs, "%s%s:%s%s", attrs.len ? ", " : "", s->name, kind_name(s->kind),
                           s->required ? "!" : "");
        if (md)
            printf("| %s | %s | %s | %s | %s |\n", op->name, ins, outs, attrs.s, op->doc ? op->doc : "");
        else
            printf("%-24s in %-5s out %-4s %s\n", op->name, ins, outs, attrs.s);
        kiln_sb_free(&attrs);
    }
    return 0;
}
