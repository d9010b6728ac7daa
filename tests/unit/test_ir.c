/* Unit tests of the IR core: symbolic dims, text round trip, parse errors,
 * verifier rejections, interpreter basics. */
#include "check.h"
#include "kiln_ir.h"

#include <stdlib.h>

static char *dimstr(kiln_symtab *t, kiln_dim d)
{
    static char buf[8][128];
    static int k;
    kiln_sb sb = {0};
    kiln_dim_print(t, d, &sb);
    char *r = buf[k++ % 8];
    snprintf(r, 128, "%s", sb.s);
    kiln_sb_free(&sb);
    return r;
}

static void test_dims(void)
{
    kiln_symtab t = {0};
    kiln_dim seq = kiln_dim_var(&t, "seq"), past = kiln_dim_var(&t, "past"),
             batch = kiln_dim_var(&t, "batch");
    kiln_dim a = kiln_dim_add(&t, seq, past), b = kiln_dim_add(&t, past, seq);
    CHECK(a == b);
    CHECK_STR(dimstr(&t, a), "past+seq");
    CHECK(kiln_dim_add(&t, seq, 0) == seq);
    CHECK(kiln_dim_mul(&t, seq, 1) == seq);
    CHECK(kiln_dim_mul(&t, seq, 0) == 0);
    kiln_dim bs = kiln_dim_mul(&t, batch, seq);
    CHECK_STR(dimstr(&t, bs), "batch*seq");
    kiln_dim bs384 = kiln_dim_mul(&t, bs, 384);
    CHECK_STR(dimstr(&t, bs384), "384*batch*seq");
    CHECK(kiln_dim_div(&t, bs384, 384) == bs);
    CHECK(kiln_dim_div(&t, bs384, seq) == kiln_dim_mul(&t, batch, 384));
    kiln_dim q = kiln_dim_div(&t, seq, 2); /* not exact: opaque */
    CHECK_STR(dimstr(&t, q), "seq/2");
    CHECK(kiln_dim_sub(&t, kiln_dim_add(&t, seq, 5), 5) == seq);
    CHECK(kiln_dim_sub(&t, a, past) == seq);
    kiln_dim e = kiln_dim_mul(&t, kiln_dim_add(&t, seq, 1), 2);
    CHECK_STR(dimstr(&t, e), "2*seq+2");
    CHECK(kiln_dim_add(&t, KILN_DIM_ANY, seq) == KILN_DIM_ANY);
    int64_t vals[8];
    for (int i = 0; i < 8; i++)
        vals[i] = -1;
    vals[KILN_DIM_SYM_ID(seq)] = 7;
    vals[KILN_DIM_SYM_ID(past)] = 3;
    vals[KILN_DIM_SYM_ID(batch)] = 2;
    CHECK(kiln_dim_eval(&t, a, vals) == 10);
    CHECK(kiln_dim_eval(&t, bs384, vals) == 2 * 7 * 384);
    CHECK(kiln_dim_eval(&t, q, vals) == 3);
    kiln_symtab_free(&t);
}

static const char *good =
    "kir 1\n"
    "graph \"g\" {\n"
    "  sym batch, seq\n"
    "  input %x : f32[batch, seq, 4]\n"
    "  input %m : bool[4]\n"
    "  const %c : f32[4] = [1, 2.5, -3, 1e-05]\n"
    "  const %big : i64[70] = hex \"" /* filled below */;

static void test_roundtrip(void)
{
    kiln_sb src = {0};
    kiln_sb_printf(&src, "%s", good);
    for (int i = 0; i < 70; i++)
        kiln_sb_printf(&src, "%02x00000000000000", i);
    kiln_sb_printf(&src,
                   "\"\n"
                   "  %%a : f32[batch, seq, 4] = Add(%%x, %%c)\n"
                   "  %%b : f32[batch, seq, 4] = Where(%%m, %%a, %%x) loc \"w\\\"1\"\n"
                   "  %%\"odd name/0\" : f32[batch, seq, 4] = LeakyRelu(%%b) {alpha = 0.1}\n"
                   "  %%d : f16[batch, seq, 4] = Cast(%%\"odd name/0\") {to = f16}\n"
                   "  output %%d, %%a\n"
                   "}\n");
    kiln_err err;
    kiln_graph *g = kiln_parse_string(src.s, "t.kir", NULL, &err);
    CHECK(g != NULL);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        kiln_sb_free(&src);
        return;
    }
    CHECK(kiln_verify(g, &err) == 0);
    kiln_sb p1 = {0}, p2 = {0};
    kiln_print(g, &p1);
    kiln_graph *g2 = kiln_parse_string(p1.s, "t2.kir", NULL, &err);
    CHECK(g2 != NULL);
    if (g2) {
        kiln_print(g2, &p2);
        CHECK_STR(p2.s, p1.s);
        kiln_graph_free(g2);
    }
    CHECK(strstr(p1.s, "alpha = 0.1") != NULL);
    kiln_sb_free(&p1);
    kiln_sb_free(&p2);
    kiln_graph_free(g);
    kiln_sb_free(&src);
}

static void expect_parse_error(const char *text, const char *pos, const char *what)
{
    kiln_err err = {{0}};
    kiln_graph *g = kiln_parse_string(text, "bad.kir", NULL, &err);
    CHECK(g == NULL);
    kiln_graph_free(g);
    if (!strstr(err.msg, pos) || !strstr(err.msg, what) || strchr(err.msg, '\n')) {
        fprintf(stderr, "  message was: %s (want %s ... %s)\n", err.msg, pos, what);
        check_fail++;
    } else {
        check_pass++;
    }
}

static void test_parse_errors(void)
{
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n  %y = Add(%x, %z)\n  output %y\n}\n",
                       "bad.kir:4:16: error:", "undefined value %z");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f33[2]\n}\n", "bad.kir:3:14: error:",
                       "unknown element type 'f33'");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n  %y = Frobnicate(%x)\n}\n",
                       "bad.kir:4:8: error:", "unknown op 'Frobnicate'");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n  input %y : f32[3]\n  %z = Add(%x, %y)\n}\n",
                       "bad.kir:5:3: error:", "broadcast");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n  %y : f32[3] = Neg(%x)\n}\n",
                       "bad.kir:4:3: error:", "declared type f32[3]");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n  %y = Cast(%x) {too = f16}\n}\n",
                       "bad.kir:4:18: error:", "no attribute 'too'");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n  %y = Cast(%x)\n}\n",
                       "bad.kir:4:3: error:", "missing required attribute 'to'");
    expect_parse_error("kir 1\ngraph g {\n  const %c : f32[3] = [1, 2]\n}\n", "bad.kir:3:", "2 elements");
    expect_parse_error("kir 2\n", "bad.kir:1:", "version 2");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n  input %x : f32[2]\n}\n",
                       "bad.kir:4:3: error:", "defined twice");
    expect_parse_error("kir 1\ngraph g {\n  input %x : f32[2]\n", "bad.kir:4:1: error:", "end of file");
    expect_parse_error("kir 1\ngraph g {\n  const %s : f32[] = \"abc\n}\n", "bad.kir:3:", "");
}

static kiln_graph *parse_ok(const char *text)
{
    kiln_err err;
    kiln_graph *g = kiln_parse_string(text, "v.kir", NULL, &err);
    if (!g)
        fprintf(stderr, "unexpected parse error: %s\n", err.msg);
    return g;
}

static void expect_verify_error(kiln_graph *g, const char *what)
{
    kiln_err err = {{0}};
    if (!g) {
        check_fail++;
        return;
    }
    int rc = kiln_verify(g, &err);
    if (rc == 0 || !strstr(err.msg, what)) {
        fprintf(stderr, "  verify gave rc=%d '%s', want '%s'\n", rc, err.msg, what);
        check_fail++;
    } else {
        check_pass++;
    }
}

static void test_verifier(void)
{
    const char *src = "kir 1\ngraph g {\n  input %x : f32[2, 3]\n  input %y : f32[3]\n"
                      "  %a = Add(%x, %y) loc \"add0\"\n  %b = Neg(%a)\n  output %b\n}\n";
    kiln_graph *g = parse_ok(src);
    CHECK(g && kiln_verify(g, NULL) == 0);
    /* use before definition: swap the two nodes */
    kiln_node tmp = g->nodes[0];
    g->nodes[0] = g->nodes[1];
    g->nodes[1] = tmp;
    expect_verify_error(g, "%a used by Neg %b before it is defined");
    kiln_graph_free(g);

    g = parse_ok(src);
    if (!g)
        return;
    g->values[kiln_graph_find(g, "a")].type.dims[1] = 4; /* wrong declared type */
    expect_verify_error(g, "%a (Add 'add0'): declared type f32[2, 4], but inference gives f32[2, 3]");
    kiln_graph_free(g);

    g = parse_ok(src);
    g->nodes[1].n_inputs = 0; /* arity */
    expect_verify_error(g, "Neg %b: takes 1..1 inputs, has 0");
    kiln_graph_free(g);

    g = parse_ok(src);
    g->values[kiln_graph_find(g, "y")].type.dtype = KILN_F16; /* operand types disagree */
    expect_verify_error(g, "Add 'add0': input 1 is f16 but input 0 is f32");
    kiln_graph_free(g);

    g = parse_ok(src);
    g->n_outputs = 0;
    expect_verify_error(g, "has no outputs");
    kiln_graph_free(g);

    g = parse_ok("kir 1\ngraph g {\n  weight %w : f32[4] @ \"/nonexistent/w.bin\" offset 0\n"
                 "  %b = Neg(%w)\n  output %b\n}\n");
    expect_verify_error(g, "weight %w");
    kiln_graph_free(g);

    g = parse_ok("kir 1\ngraph g {\n  input %q : q4_0[4, 48]\n  output %q\n}\n");
    expect_verify_error(g, "blocks of 32 along the last dimension, which is 48");
    kiln_graph_free(g);
}

static void test_interp(void)
{
    kiln_graph *g = parse_ok("kir 1\ngraph g {\n  sym n\n  input %x : f32[n, 3]\n  input %y : f32[3]\n"
                             "  %a = Add(%x, %y)\n  %b = Mul(%a, %a)\n  output %b\n}\n");
    if (!g)
        return;
    float xd[6] = {1, 2, 3, 4, 5, 6}, yd[3] = {1, 0, -1};
    kiln_tensor in[2] = {{KILN_F32, 2, {2, 3}, xd, sizeof xd, 0}, {KILN_F32, 1, {3}, yd, sizeof yd, 0}};
    kiln_tensor out[1];
    kiln_err err;
    CHECK(kiln_interp_run(g, in, out, &err) == 0);
    float want[6] = {4, 4, 4, 25, 25, 25};
    CHECK(out[0].rank == 2 && out[0].dims[0] == 2 && memcmp(out[0].data, want, sizeof want) == 0);
    kiln_tensor_free(&out[0]);
    /* shape mismatch against the declared type */
    in[1].dims[0] = 2;
    CHECK(kiln_interp_run(g, in, out, &err) != 0);
    CHECK(strstr(err.msg, "%y") != NULL);
    kiln_graph_free(g);
}

int main(void)
{
    test_dims();
    test_roundtrip();
    test_parse_errors();
    test_verifier();
    test_interp();
    return check_report();
}
