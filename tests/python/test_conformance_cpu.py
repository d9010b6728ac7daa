"""The compiled CPU path on ONNX's node tests (`kiln conformance --target
cpu`) and the specialization it relies on (`kiln build --bind-input`,
`--bind-shape`). Expected values come from numpy / ml_dtypes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kiln_util import ROOT, kiln_bin, run_kiln

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def run_exe(exe, inputs, d):
    out = os.path.join(d, "out")
    args = [exe, "--output-dir", out]
    for k, v in inputs.items():
        fn = os.path.join(d, f"in_{k}.npy")
        np.save(fn, v)
        args += ["--input", f"{k}={fn}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return p, out


def write(d, name, text):
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(text)
    return p


RESHAPE = """kir 1
graph "rs" {
  input %x : f32[2, 3, 4]
  input %shape : i64[2]
  %y = Reshape(%x, %shape)
  %z = Softmax(%y) {axis = -1}
  output %z
}
"""


def softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_bind_input_folds_shape_math(tmp_path):
    d = str(tmp_path)
    model = write(d, "rs.kir", RESHAPE)
    exe = os.path.join(d, "rs")
    # without the shape's value the output size is unknown: a clean refusal
    p = run_kiln("build", model, "-o", exe, check=False)
    assert p.returncode == 2 and "unknown at compile time" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    shape = np.array([6, -1], dtype=np.int64)
    np.save(os.path.join(d, "shape.npy"), shape)
    run_kiln("build", model, "-o", exe, "--bind-input", f"shape={os.path.join(d, 'shape.npy')}")
    x = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)
    p, out = run_exe(exe, {"x": x}, d)
    assert p.returncode == 0, p.stderr
    got = np.load(os.path.join(out, "z.npy"))
    assert got.shape == (6, 4)
    np.testing.assert_allclose(got, softmax(x.reshape(6, 4)), rtol=1e-5, atol=1e-6)
    # the bound input is gone from the artifact
    p, _ = run_exe(exe, {"x": x, "shape": shape}, d)
    assert p.returncode == 2 and "no input named 'shape'" in p.stderr


def test_bind_input_errors(tmp_path):
    d = str(tmp_path)
    model = write(d, "rs.kir", RESHAPE)
    exe = os.path.join(d, "rs")
    np.save(os.path.join(d, "f.npy"), np.array([6.0, 4.0], dtype=np.float32))
    np.save(os.path.join(d, "i.npy"), np.array([6, 4], dtype=np.int64))
    np.save(os.path.join(d, "x.npy"), np.zeros((2, 3, 5), dtype=np.float32))
    cases = [
        (f"shape={d}/f.npy", "the bound value is f32, the model takes i64"),
        (f"nosuch={d}/i.npy", "the model has no input named 'nosuch'"),
        (f"x={d}/x.npy", "dimension 2 is 5, the model has 4"),
        ("shape", "--bind-input takes NAME=FILE.npy"),
    ]
    for arg, msg in cases:
        p = run_kiln("build", model, "-o", exe, "--bind-input", arg, check=False)
        assert p.returncode == 2, (arg, p.stderr)
        assert msg in p.stderr, (arg, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1
        assert not os.path.exists(exe)


SYMBOLIC = """kir 1
graph "sym" {
  sym batch
  input %x : f32[batch, 4]
  %y = Mul(%x, %x)
  %s = ReduceSum(%y, %ax) {keepdims = 0}
  const %ax : i64[1] = [1]
  output %s
}
"""


def test_bind_shape_makes_symbols_static(tmp_path):
    d = str(tmp_path)
    text = SYMBOLIC.replace("  const %ax : i64[1] = [1]\n", "")
    text = text.replace("  %y = Mul", "  const %ax : i64[1] = [1]\n  %y = Mul")
    model = write(d, "sym.kir", text)
    exe = os.path.join(d, "sym")
    run_kiln("build", model, "-o", exe, "--bind-shape", "x=3,4")
    x = np.random.RandomState(1).randn(3, 4).astype(np.float32)
    p, out = run_exe(exe, {"x": x}, d)
    # `batch` no longer sizes anything: the artifact must not ask for it
    assert p.returncode == 0, p.stderr
    np.testing.assert_allclose(np.load(os.path.join(out, "s.npy")), (x * x).sum(axis=1), rtol=1e-5)
    p, _ = run_exe(exe, {"x": np.zeros((5, 4), np.float32)}, d)
    assert p.returncode == 2 and "dimension 0 is 5, expected 3" in p.stderr
    p = run_kiln("build", model, "-o", exe, "--bind-shape", "x=3,5", check=False)
    assert p.returncode == 2 and "dimension 1 is 5, the model has 4" in p.stderr


def test_runtime_dtype_fallback_matches_ml_dtypes(tmp_path):
    """Types the code generator does not handle inline go through the
    runtime's element functions."""
    mld = pytest.importorskip("ml_dtypes")
    d = str(tmp_path)
    text = """kir 1
graph "dt" {
  input %x : f32[64]
  %a = Cast(%x) {to = f8e4m3fnuz}
  %b = Cast(%a) {to = f32}
  %c = Cast(%x) {to = f8e5m2fnuz, saturate = 0}
  %e = Cast(%c) {to = f32}
  output %b, %e
}
"""
    model = write(d, "dt.kir", text)
    exe = os.path.join(d, "dt")
    run_kiln("build", model, "-o", exe)
    x = (np.random.RandomState(2).randn(64) * 40).astype(np.float32)
    x[:4] = [1e6, -1e6, 0.0, 300.0]
    p, out = run_exe(exe, {"x": x}, d)
    assert p.returncode == 0, p.stderr
    # saturating: out-of-range values clamp to the largest finite value
    want_b = np.clip(x, -240, 240).astype(mld.float8_e4m3fnuz).astype(np.float32)
    np.testing.assert_array_equal(np.load(os.path.join(out, "b.npy")), want_b)
    # not saturating: ml_dtypes' plain conversion gives NaN past the range
    want_e = x.astype(mld.float8_e5m2fnuz).astype(np.float32)
    np.testing.assert_array_equal(np.load(os.path.join(out, "e.npy")), want_e)


def make_test(d, name, expected_delta=0.0):
    """An ONNX node-test folder: Range(start, limit, delta) + x, where the
    output length depends on input values; the stored output is computed by
    numpy (plus expected_delta, to make a test that must fail)."""
    t = os.path.join(d, name)
    os.makedirs(os.path.join(t, "test_data_set_0"))
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["y"])]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("start", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("limit", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("delta", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, os.path.join(t, "model.onnx"))
    vals = {"start": np.float32(1), "limit": np.float32(11), "delta": np.float32(2),
            "x": np.arange(5, dtype=np.float32) * 0.5}
    for i, (k, v) in enumerate(vals.items()):
        onnx.save_tensor(numpy_helper.from_array(np.asarray(v), k),
                         os.path.join(t, "test_data_set_0", f"input_{i}.pb"))
    y = np.arange(1, 11, 2, dtype=np.float32) + vals["x"] + np.float32(expected_delta)
    onnx.save_tensor(numpy_helper.from_array(y, "y"), os.path.join(t, "test_data_set_0", "output_0.pb"))
    return t


def conformance(d, *args):
    """Runs kiln conformance ARGS, writing its JSON report into folder d."""
    out = os.path.join(d, "r.json")
    p = run_kiln("conformance", *args, "--json", out, check=False)
    assert p.returncode in (0, 1), p.stderr
    with open(out) as f:
        return p, json.load(f)


def test_conformance_cpu_binds_shape_inputs_and_detects_wrong_results(tmp_path):
    d = str(tmp_path / "tests")
    make_test(d, "test_good")
    make_test(d, "test_bad", expected_delta=0.25)
    for target in ("interp", "cpu"):
        _, r = conformance(str(tmp_path), d, "--target", target, "-j", "2")
        assert r["target"] == target
        st = {t["test"]: t for t in r["tests"]}
        assert st["test_good"]["status"] == "pass", st["test_good"]
        assert st["test_bad"]["status"] == "fail"
        assert "values differ" in st["test_bad"]["detail"]
        if target == "cpu":
            # Range's limits decide the output length; x does not
            assert st["test_good"]["detail"] == "bound inputs: start, limit, delta"


def test_conformance_bad_target():
    p = run_kiln("conformance", ROOT, "--target", "gpu", check=False)
    assert p.returncode == 2 and "unknown target 'gpu'" in p.stderr


def test_compiled_transformer_set_baseline():
    """The whole node-test suite through the compiled path: the transformer
    set must not drop below the recorded cpu baseline, and nothing crashes."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "conformance", "check_baseline.py"),
                        "--kiln", kiln_bin(), "--target", "cpu"],
                       capture_output=True, text=True, timeout=1500)
    if p.returncode == 77:
        pytest.skip("ONNX node-test data unavailable")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
