"""kiln build --target cpu: compiled executables and shared libraries against
the reference interpreter (kiln eval), artifact hygiene and ABI checks."""
import os
import subprocess
import tempfile

import numpy as np
import pytest

from kiln_util import run_kiln, kiln_bin

MLP = """kir 1
graph "mlp" {
  sym batch
  input %x : f32[batch, 8]
  weight %w1 : f32[16, 8] @ "w.bin" offset 0
  weight %b1 : f32[16] @ "w.bin" offset 512
  weight %w2 : f32[4, 16] @ "w.bin" offset 576
  %h = Linear(%x, %w1, %b1)
  %a = Gelu(%h)
  %t = Transpose(%a) {perm = [1, 0]}
  %tt = Transpose(%t) {perm = [1, 0]}
  %o = Linear(%tt, %w2)
  %s = Softmax(%o) {axis = -1}
  %m = ReduceMean(%o, %axes) {keepdims = 0}
  const %axes : i64[1] = [1]
  output %s, %m
}
"""


def write_model(d, text=MLP):
    rng = np.random.RandomState(0)
    w1 = rng.randn(16, 8).astype(np.float32)
    b1 = rng.randn(16).astype(np.float32)
    w2 = rng.randn(4, 16).astype(np.float32)
    with open(os.path.join(d, "w.bin"), "wb") as f:
        f.write(w1.tobytes() + b1.tobytes() + w2.tobytes())
    # consts must be declared before use: move the const line up
    text = text.replace('  const %axes : i64[1] = [1]\n', '')
    text = text.replace('  %h = Linear', '  const %axes : i64[1] = [1]\n  %h = Linear')
    p = os.path.join(d, "m.kir")
    with open(p, "w") as f:
        f.write(text)
    return p


def eval_ref(model, inputs, d):
    args = ["eval", model, "--output-dir", os.path.join(d, "ref")]
    for k, v in inputs.items():
        fn = os.path.join(d, f"ref_in_{k}.npy")
        np.save(fn, v)
        args += ["--input", f"{k}={fn}"]
    run_kiln(*args)
    return {n: np.load(os.path.join(d, "ref", n + ".npy")) for n in ("s", "m")}


def run_exe(exe, inputs, d, extra=()):
    args = [exe, "--output-dir", os.path.join(d, "out"), *extra]
    for k, v in inputs.items():
        fn = os.path.join(d, f"in_{k}.npy")
        np.save(fn, v)
        args += ["--input", f"{k}={fn}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return p


@pytest.mark.parametrize("weights", ["embed", "external"])
def test_exe_matches_interpreter(weights):
    d = tempfile.mkdtemp(prefix="kiln_build_")
    model = write_model(d)
    exe = os.path.join(d, "mlp")
    run_kiln("build", model, "-o", exe, "--bound", "batch=32", "--weights", weights)
    assert os.path.exists(exe)
    assert os.path.exists(exe + ".weights") == (weights == "external")
    for batch in (1, 7, 32):
        x = np.random.RandomState(batch).randn(batch, 8).astype(np.float32)
        p = run_exe(exe, {"x": x}, d)
        assert p.returncode == 0, p.stderr
        ref = eval_ref(model, {"x": x}, d)
        for n in ("s", "m"):
            got = np.load(os.path.join(d, "out", n + ".npy"))
            assert got.shape == ref[n].shape
            np.testing.assert_allclose(got, ref[n], rtol=1e-5, atol=1e-5)
    # beyond the compiled bound: a clear message, exit 2
    x = np.zeros((33, 8), np.float32)
    p = run_exe(exe, {"x": x}, d)
    assert p.returncode == 2 and "batch = 33 exceeds the compiled bound 32" in p.stderr


def test_exe_needs_only_libc():
    d = tempfile.mkdtemp(prefix="kiln_build_")
    model = write_model(d)
    exe = os.path.join(d, "mlp")
    run_kiln("build", model, "-o", exe, "--bound", "batch=4")
    libs = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
    names = [l.split()[0] for l in libs.splitlines() if l.strip()]
    allowed = ("linux-vdso", "libc.so", "libm.so", "libpthread", "libdl", "/lib64/ld-linux", "ld-linux")
    bad = [n for n in names if not any(a in n for a in allowed)]
    assert not bad, f"unexpected libraries: {bad}"
    assert "LLVM" not in libs


def test_external_weights_checked():
    d = tempfile.mkdtemp(prefix="kiln_build_")
    model = write_model(d)
    exe = os.path.join(d, "mlp")
    run_kiln("build", model, "-o", exe, "--bound", "batch=4", "--weights", "external")
    x = np.ones((2, 8), np.float32)
    # a weights file from another build (different weights) is refused
    other = os.path.join(d, "other")
    os.makedirs(other)
    m2 = write_model(other, MLP.replace("offset 576", "offset 0"))
    run_kiln("build", m2, "-o", os.path.join(other, "mlp"), "--bound", "batch=4", "--weights", "external")
    p = run_exe(exe, {"x": x}, d, ["--weights", os.path.join(other, "mlp.weights")])
    assert p.returncode == 2 and "do not belong to this model" in p.stderr
    os.remove(exe + ".weights")
    p = run_exe(exe, {"x": x}, d)
    assert p.returncode == 2 and "mlp.weights" in p.stderr


def test_shared_library_and_header():
    d = tempfile.mkdtemp(prefix="kiln_build_")
    model = write_model(d)
    so = os.path.join(d, "libmlp.so")
    run_kiln("build", model, "-o", so, "--shared", "--bound", "batch=4")
    hdr = os.path.join(d, "libmlp.h")
    assert os.path.exists(so) and os.path.exists(hdr)
    prog = os.path.join(d, "use.c")
    with open(prog, "w") as f:
        f.write("""
#include "libmlp.h"
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    char err[256];
    kiln_model *m = kiln_open(NULL, err, sizeof err);
    if (!m) { fprintf(stderr, "%s\\n", err); return 2; }
    float x[2 * 8];
    for (int i = 0; i < 16; i++) x[i] = (float)i / 10.0f - 0.5f;
    kiln_buffer in = {1, 2, {2, 8}, x};
    kiln_buffer out[2];
    if (kiln_run(m, &in, out, err, sizeof err)) { fprintf(stderr, "%s\\n", err); return 2; }
    for (int o = 0; o < 2; o++) {
        long n = 1;
        for (int k = 0; k < out[o].rank; k++) n *= out[o].dims[k];
        printf("%s", kiln_output_name(m, o));
        for (long i = 0; i < n; i++) printf(" %.6f", ((float *)out[o].data)[i]);
        printf("\\n");
        kiln_buffer_free(&out[o]);
    }
    kiln_close(m);
    return 0;
}
""")
    exe = os.path.join(d, "use")
    subprocess.run(["cc", "-o", exe, prog, "-I", d, so, "-Wl,-rpath," + d], check=True)
    p = subprocess.run([exe], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    x = (np.arange(16, dtype=np.float32) / 10.0 - 0.5).reshape(2, 8)
    ref = eval_ref(model, {"x": x}, d)
    lines = dict(l.split(" ", 1) for l in p.stdout.strip().splitlines())
    np.testing.assert_allclose(np.array(lines["s"].split(), np.float32), ref["s"].ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(lines["m"].split(), np.float32), ref["m"].ravel(), rtol=1e-5, atol=1e-5)
    # a header from another ABI is refused with a clear message
    with open(prog) as f:
        src = f.read().replace('#include "libmlp.h"', '#include "libmlp.h"\n#undef KILN_H_ABI\n#define KILN_H_ABI 999')
    with open(prog, "w") as f:
        f.write(src)
    subprocess.run(["cc", "-o", exe, prog, "-I", d, so, "-Wl,-rpath," + d], check=True)
    p = subprocess.run([exe], capture_output=True, text=True)
    assert p.returncode == 2 and "ABI 999" in p.stderr


def test_bad_model_leaves_nothing():
    d = tempfile.mkdtemp(prefix="kiln_build_")
    bad = os.path.join(d, "bad.kir")
    with open(bad, "w") as f:
        f.write('kir 1\ngraph g {\n  input %x : f32[2]\n  %y = Frobnicate(%x)\n  output %y\n}\n')
    out = os.path.join(d, "bad")
    p = run_kiln("build", bad, "-o", out, check=False)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "Frobnicate" in p.stderr
    assert not os.path.exists(out)
    # missing weight file: named, exit 2, no artifact
    model = write_model(d)
    os.remove(os.path.join(d, "w.bin"))
    p = run_kiln("build", model, "-o", out, check=False)
    assert p.returncode == 2 and "w.bin" in p.stderr and not os.path.exists(out)


OPS_CASES = [
    # (name, kir body, inputs)
    ("elementwise_bcast", """
  input %a : f32[3, 1, 5]
  input %b : f32[4, 5]
  %c = Add(%a, %b)
  %d = Mul(%c, %c)
  %e = Sub(%d, %b)
  %f = Div(%e, %c)
  %g = Max(%f, %a, %b)
  %h = Where(%k, %g, %f)
  %k = Greater(%a, %b)
  output %h, %k""", {"a": (3, 1, 5), "b": (4, 5)}),
    ("shape_ops", """
  input %a : f32[2, 3, 4]
  const %idx : i64[2] = [2, 0]
  const %st : i64[1] = [1]
  const %en : i64[1] = [3]
  const %ax : i64[1] = [2]
  %t = Transpose(%a) {perm = [2, 0, 1]}
  %g = Gather(%t, %idx) {axis = 0}
  %s = Slice(%a, %st, %en, %ax)
  %c = Concat(%s, %a) {axis = 2}
  %r = ReduceSum(%c, %ax) {keepdims = 1}
  %sp0, %sp1 = Split(%a) {axis = 2, num_outputs = 2}
  output %g, %c, %r, %sp1""", {"a": (2, 3, 4)}),
    ("norms_attention", """
  input %x : f32[1, 5, 8]
  const %sc : f32[8] = [1, 2, 0.5, 1, 1, 3, 1, 1]
  %ln = LayerNormalization(%x, %sc) {axis = -1}
  %rms = RMSNormalization(%x, %sc)
  %y, %pk, %pv = GQAttention(%ln, %rms, %x) {num_heads = 2, kv_num_heads = 2}
  %sm = LogSoftmax(%y) {axis = 1}
  output %sm, %pk""", {"x": (1, 5, 8)}),
    ("matmul_batched", """
  input %a : f32[2, 3, 4, 5]
  input %b : f32[3, 5, 6]
  %m = MatMul(%a, %b)
  %e = Einsum(%a, %b) {equation = "abij,bjk->abik"}
  %d = Sub(%m, %e)
  output %m, %d""", {"a": (2, 3, 4, 5), "b": (3, 5, 6)}),
    # many queries per head take the tiled attention path (query tiles
    # through the GEMM micro-kernel); 37 and 19 rows leave partial tiles
    ("attention_tiled_gqa_causal", """
  input %q : f32[2, 37, 64]
  input %k : f32[2, 37, 32]
  input %v : f32[2, 37, 32]
  %y, %pk, %pv = GQAttention(%q, %k, %v) {num_heads = 4, kv_num_heads = 2, causal = 1}
  output %y""", {"q": (2, 37, 64), "k": (2, 37, 32), "v": (2, 37, 32)}),
    ("attention_tiled_window_softcap", """
  input %q : f32[1, 21, 32]
  input %k : f32[1, 21, 32]
  input %v : f32[1, 21, 32]
  %y, %pk, %pv = GQAttention(%q, %k, %v) {num_heads = 2, kv_num_heads = 2, causal = 1, window = 5, softcap = 30.0}
  output %y""", {"q": (1, 21, 32), "k": (1, 21, 32), "v": (1, 21, 32)}),
    ("attention_tiled_mask_past", """
  input %q : f32[1, 2, 19, 8]
  input %k : f32[1, 2, 23, 8]
  input %v : f32[1, 2, 23, 12]
  input %m : f32[19, 27]
  input %pk : f32[1, 2, 4, 8]
  input %pv : f32[1, 2, 4, 12]
  %y, %ok, %ov = Attention(%q, %k, %v, %m, %pk, %pv)
  output %y, %ok, %ov""", {"q": (1, 2, 19, 8), "k": (1, 2, 23, 8), "v": (1, 2, 23, 12), "m": (19, 27),
                           "pk": (1, 2, 4, 8), "pv": (1, 2, 4, 12)}),
]


@pytest.mark.parametrize("name,body,shapes", OPS_CASES, ids=[c[0] for c in OPS_CASES])
def test_ops_compiled(name, body, shapes):
    d = tempfile.mkdtemp(prefix="kiln_ops_")
    # the Where case uses %k before definition in the list above: reorder
    lines = body.strip("\n").split("\n")
    if name == "elementwise_bcast":
        lines = [l for l in lines if "%k = Greater" not in l]
        lines.insert(len(lines) - 2, "  %k = Greater(%a, %b)")
    text = 'kir 1\ngraph "%s" {\n%s\n}\n' % (name, "\n".join(lines))
    model = os.path.join(d, "m.kir")
    with open(model, "w") as f:
        f.write(text)
    rng = np.random.RandomState(1)
    inputs = {k: rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
    exe = os.path.join(d, "m")
    run_kiln("build", model, "-o", exe)
    p = run_exe(exe, inputs, d)
    assert p.returncode == 0, p.stderr
    args = ["eval", model, "--output-dir", os.path.join(d, "ref")]
    for k, v in inputs.items():
        fn = os.path.join(d, f"r_{k}.npy")
        np.save(fn, v)
        args += ["--input", f"{k}={fn}"]
    run_kiln(*args)
    outs = [l.split(" -> ")[0] for l in p.stdout.strip().splitlines()]
    assert outs
    for o in outs:
        got = np.load(os.path.join(d, "out", o + ".npy"))
        ref = np.load(os.path.join(d, "ref", o + ".npy"))
        assert got.shape == ref.shape and got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
