"""ONNX importer: models built here with onnx.helper, imported by kiln and run
with the reference interpreter, compared against onnxruntime.

Covers common exporter patterns (decomposed LayerNorm, GELU in erf and tanh
forms), older-opset forms the importer rewrites, com.microsoft ops,
Constant/ConstantOfShape, symbolic dims, and weights referenced in place
(raw_data and external data) rather than copied.
"""
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from kiln_util import kiln_bin, run_kiln

RNG = np.random.default_rng(20240611)


def rnd(*shape, scale=1.0, dtype=np.float32):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


# ---- helpers shared by the test_onnx_* files --------------------------------------

def make_model(nodes, inputs, outputs, inits=(), opset=17, ms=False, name="g", value_info=()):
    """inputs/outputs: (name, TensorProto type, shape or None)."""
    vi = lambda t: helper.make_tensor_value_info(*t)  # noqa: E731
    graph = helper.make_graph(nodes, name, [vi(t) for t in inputs], [vi(t) for t in outputs],
                              list(inits), value_info=[vi(t) for t in value_info])
    ops = [helper.make_opsetid("", opset)]
    if ms:
        ops.append(helper.make_opsetid("com.microsoft", 1))
    m = helper.make_model(graph, opset_imports=ops)
    m.ir_version = 8 if opset <= 17 else 10
    return m


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def save(model, path, **kw):
    onnx.save_model(model, str(path), **kw)
    return str(path)


def kiln_eval(path, inputs, tmp_path):
    """Runs `kiln eval` on an .onnx file; returns {output name: array}."""
    out = os.path.join(str(tmp_path), "kiln_out")
    args = ["eval", path, "--output-dir", out]
    for i, (name, arr) in enumerate(inputs.items()):
        fn = os.path.join(str(tmp_path), f"in{i}.npy")
        np.save(fn, arr)
        args += ["--input", f"{name}={fn}"]
    p = run_kiln(*args)
    res = {}
    for line in p.stdout.splitlines():
        name, _, rest = line.partition(": ")
        if "-> " in rest:
            res[name] = np.load(rest.split("-> ", 1)[1])
    return res


def ort_eval(path, inputs):
    so = ort.SessionOptions()
    # the unoptimized graph: ORT's fusions would change the numerics under test
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, inputs)))


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_against_ort(model, inputs, tmp_path, rtol=1e-5, atol=1e-6, fname="m.onnx"):
    path = save(model, os.path.join(str(tmp_path), fname))
    want = ort_eval(path, inputs)
    got = kiln_eval(path, inputs, tmp_path)
    assert set(got) == set(want), (got.keys(), want.keys())
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)
    return path


def kiln_ir(path):
    return run_kiln("ir", path).stdout


def weight_lines(text):
    """name -> (dtype, dims, file, offset) from `kiln ir` text."""
    out = {}
    pat = re.compile(r'weight %(?:"([^"]+)"|(\S+)) : (\w+)\[([^\]]*)\] @ "([^"]+)" offset (\d+)')
    for line in text.splitlines():
        m = pat.search(line)
        if m:
            out[m.group(1) or m.group(2)] = (m.group(3), m.group(4), m.group(5), int(m.group(6)))
    return out


# ---- exporter patterns ------------------------------------------------------------

def layernorm_decomposed(x, g, b, out, eps=1e-5, p=""):
    """LayerNorm as older exporters write it: ReduceMean/Sub/Pow/Sqrt/Div."""
    return [
        helper.make_node("ReduceMean", [x], [p + "mean"], axes=[-1]),
        helper.make_node("Sub", [x, p + "mean"], [p + "d"]),
        helper.make_node("Pow", [p + "d", p + "two"], [p + "sq"]),
        helper.make_node("ReduceMean", [p + "sq"], [p + "var"], axes=[-1]),
        helper.make_node("Add", [p + "var", p + "eps"], [p + "ve"]),
        helper.make_node("Sqrt", [p + "ve"], [p + "std"]),
        helper.make_node("Div", [p + "d", p + "std"], [p + "n"]),
        helper.make_node("Mul", [p + "n", g], [p + "ng"]),
        helper.make_node("Add", [p + "ng", b], [out]),
    ], [init(p + "two", np.float32(2)), init(p + "eps", np.float32(eps))]


def test_layernorm_decomposed_symbolic(tmp_path):
    D = 16
    nodes, inits = layernorm_decomposed("x", "g", "b", "y")
    inits += [init("g", rnd(D)), init("b", rnd(D))]
    # opset 13: ReduceMean still takes axes as an attribute (an input from 18)
    m = make_model(nodes, [("x", TP.FLOAT, ["batch", "seq", D])],
                   [("y", TP.FLOAT, ["batch", "seq", D])], inits, opset=13)
    path = check_against_ort(m, {"x": rnd(2, 5, D, scale=3)}, tmp_path)
    check_against_ort(m, {"x": rnd(3, 1, D)}, tmp_path)  # other sizes, same graph
    ir = kiln_ir(path)
    assert "sym batch, seq" in ir
    assert re.search(r"%y : f32\[batch, seq, 16\]", ir), ir


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_gelu_decomposed(tmp_path, form):
    if form == "erf":  # 0.5 * x * (1 + erf(x / sqrt(2)))
        nodes = [
            helper.make_node("Div", ["x", "sqrt2"], ["a"]),
            helper.make_node("Erf", ["a"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]),
            helper.make_node("Mul", ["x", "e1"], ["xe"]),
            helper.make_node("Mul", ["xe", "half"], ["y"]),
        ]
        inits = [init("sqrt2", np.float32(np.sqrt(2))), init("one", np.float32(1)),
                 init("half", np.float32(0.5))]
    else:  # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        nodes = [
            helper.make_node("Pow", ["x", "three"], ["x3"]),
            helper.make_node("Mul", ["x3", "c"], ["cx3"]),
            helper.make_node("Add", ["x", "cx3"], ["inner"]),
            helper.make_node("Mul", ["inner", "k"], ["ki"]),
            helper.make_node("Tanh", ["ki"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["t1"]),
            helper.make_node("Mul", ["x", "t1"], ["xt"]),
            helper.make_node("Mul", ["xt", "half"], ["y"]),
        ]
        inits = [init("three", np.float32(3)), init("c", np.float32(0.044715)),
                 init("k", np.float32(np.sqrt(2 / np.pi))), init("one", np.float32(1)),
                 init("half", np.float32(0.5))]
    m = make_model(nodes, [("x", TP.FLOAT, ["n", 32])], [("y", TP.FLOAT, ["n", 32])], inits)
    check_against_ort(m, {"x": rnd(7, 32, scale=3)}, tmp_path)


# ---- older opset forms --------------------------------------------------------------

OLD_FORMS = {
    # name: (opset, nodes, inputs {name: array}, output names, inits)
    "squeeze_unsqueeze_11": (11, [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
        helper.make_node("Squeeze", ["u"], ["y"], axes=[0]),
    ], {"x": rnd(3, 4)}, ["y"], []),
    "split_attr_11": (11, [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3]),
    ], {"x": rnd(2, 4)}, ["a", "b"], []),
    "split_equal_13": (13, [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1),
    ], {"x": rnd(2, 6)}, ["a", "b"], []),
    "reduce_axes_attr_13": (13, [
        helper.make_node("ReduceMax", ["x"], ["a"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["x"], ["b"], axes=[0, 2]),
    ], {"x": rnd(2, 3, 4)}, ["a", "b"], []),
    "reduce_sum_axes_attr_11": (11, [
        helper.make_node("ReduceSum", ["x"], ["y"], axes=[-1], keepdims=1),
    ], {"x": rnd(2, 3, 4)}, ["y"], []),
    "slice_attrs_9": (9, [
        helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, -1], axes=[0, 2]),
    ], {"x": rnd(4, 3, 5)}, ["y"], []),
    "clip_attrs_6": (6, [
        helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25),
    ], {"x": rnd(3, 5)}, ["y"], []),
    "pad_attrs_2": (2, [
        helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 2], value=1.5),
    ], {"x": rnd(2, 3)}, ["y"], []),
    "topk_attr_1": (9, [
        helper.make_node("TopK", ["x"], ["v", "i"], k=2, axis=1),
    ], {"x": rnd(3, 6)}, ["v", "i"], []),
    "softmax_coerced_2d_11": (11, [  # axis=1 of a 3-D input: softmax over dims 1 and 2 together
        helper.make_node("Softmax", ["x"], ["y"], axis=1),
    ], {"x": rnd(2, 3, 4)}, ["y"], []),
    "logsoftmax_default_axis_11": (11, [
        helper.make_node("LogSoftmax", ["x"], ["y"]),
    ], {"x": rnd(2, 3, 4)}, ["y"], []),
    "softmax_last_axis_11": (11, [
        helper.make_node("Softmax", ["x"], ["y"], axis=-1),
    ], {"x": rnd(2, 3, 4)}, ["y"], []),
    "dropout_ratio_attr_10": (10, [
        helper.make_node("Dropout", ["x"], ["y"], ratio=0.3),
    ], {"x": rnd(3, 4)}, ["y"], []),
    "dropout_inference_13": (13, [
        helper.make_node("Dropout", ["x", "r"], ["y"]),
    ], {"x": rnd(3, 4)}, ["y"], [init("r", np.float32(0.2))]),
    "concat_cast_reshape_7": (7, [
        helper.make_node("Concat", ["x", "x"], ["c"], axis=0),
        helper.make_node("Cast", ["c"], ["i"], to=TP.INT32),
        helper.make_node("Reshape", ["i", "shape"], ["y"]),
    ], {"x": rnd(2, 3, scale=5)}, ["y"], [init("shape", np.array([3, -1], np.int64))]),
}


@pytest.mark.parametrize("case", sorted(OLD_FORMS))
def test_old_opset_forms(tmp_path, case):
    opset, nodes, inputs, outs, inits = OLD_FORMS[case]
    ins = [(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in inputs.items()]
    m = make_model(nodes, ins, [(o, TP.UNDEFINED, None) for o in outs], inits, opset=opset)
    # outputs typed by ONNX's own shape inference, as exporters would write them
    m = onnx.shape_inference.infer_shapes(m)
    check_against_ort(m, inputs, tmp_path)


# ---- com.microsoft ops transformer exports contain ------------------------------------

def test_microsoft_ops(tmp_path):
    D = 8
    nodes = [
        helper.make_node("FusedMatMul", ["x", "w"], ["mm"], domain="com.microsoft", alpha=0.5,
                         transB=1),
        helper.make_node("SkipLayerNormalization", ["mm", "skip", "g", "b"], ["ln"],
                         domain="com.microsoft", epsilon=1e-5),
        helper.make_node("FastGelu", ["ln", "bias"], ["fg"], domain="com.microsoft"),
        helper.make_node("BiasGelu", ["ln", "bias"], ["bg"], domain="com.microsoft"),
        helper.make_node("Gelu", ["ln"], ["g1"], domain="com.microsoft"),
        helper.make_node("QuickGelu", ["ln"], ["qg"], domain="com.microsoft", alpha=1.702),
        helper.make_node("SkipSimplifiedLayerNormalization", ["fg", "bg", "g"], ["ssl"],
                         domain="com.microsoft", epsilon=1e-6),
        helper.make_node("SimplifiedLayerNormalization", ["qg", "g"], ["sl"], axis=-1,
                         epsilon=1e-6),
    ]
    inits = [init("w", rnd(D, D)), init("g", rnd(D)), init("b", rnd(D)), init("bias", rnd(D))]
    outs = [("ssl", TP.FLOAT, None), ("sl", TP.FLOAT, None), ("g1", TP.FLOAT, None)]
    m = make_model(nodes, [("x", TP.FLOAT, ["b", "s", D]), ("skip", TP.FLOAT, ["b", "s", D])],
                   outs, inits, ms=True)
    check_against_ort(m, {"x": rnd(2, 3, D), "skip": rnd(2, 3, D)}, tmp_path, rtol=1e-4,
                      atol=1e-5)


# ---- constants ------------------------------------------------------------------------

def test_constants_and_constant_of_shape(tmp_path):
    nodes = [
        helper.make_node("Constant", [], ["cf"], value_float=2.5),
        helper.make_node("Constant", [], ["cfs"], value_floats=[1.0, -2.0, 3.0]),
        helper.make_node("Constant", [], ["ci"], value_int=4),
        helper.make_node("Constant", [], ["cis"], value_ints=[2, 3]),
        helper.make_node("Constant", [], ["ct"],
                         value=helper.make_tensor("t", TP.FLOAT16, [3], [0.5, 1.5, -1])),
        helper.make_node("Mul", ["x", "cf"], ["a"]),
        helper.make_node("Add", ["a", "cfs"], ["b"]),
        helper.make_node("Cast", ["ct"], ["ct32"], to=TP.FLOAT),
        helper.make_node("Sub", ["b", "ct32"], ["y"]),
        helper.make_node("ConstantOfShape", ["cis"], ["z"],
                         value=helper.make_tensor("v", TP.INT64, [1], [7])),
        helper.make_node("Mul", ["z", "ci"], ["zi"]),
        helper.make_node("ConstantOfShape", ["cis"], ["zf"]),
    ]
    # typed-field initializers (float_data / int64_data) become inline consts
    typed = helper.make_tensor("typed", TP.FLOAT, [3], [0.25, 0.5, 0.75])
    nodes.append(helper.make_node("Mul", ["y", "typed"], ["yt"]))
    m = make_model(nodes, [("x", TP.FLOAT, [2, 3])],
                   [("yt", TP.FLOAT, None), ("zi", TP.INT64, None), ("zf", TP.FLOAT, None)],
                   [typed])
    path = check_against_ort(m, {"x": rnd(2, 3)}, tmp_path)
    ir = kiln_ir(path)
    assert re.search(r"const %typed : f32\[3\]", ir), ir


# ---- symbolic dims --------------------------------------------------------------------

def test_dim_params_sanitized_and_fresh(tmp_path):
    nodes = [helper.make_node("Add", ["x", "y"], ["z"])]
    m = make_model(nodes, [("x", TP.FLOAT, ["batch size", "2seq", 4]),
                           ("y", TP.FLOAT, ["batch size", "2seq", None])],
                   [("z", TP.FLOAT, None)])
    path = save(m, tmp_path / "m.onnx")
    ir = kiln_ir(path)
    syms = re.search(r"^\s*sym (.*)$", ir, re.M).group(1).split(", ")
    assert "batch_size" in syms and "_2seq" in syms, syms
    assert len(syms) == 3, syms  # the unnamed dim got a fresh symbol of its own
    for s in syms:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s), s
    assert re.search(r"input %x : f32\[batch_size, _2seq, 4\]", ir), ir
    x = rnd(2, 3, 4)
    np.testing.assert_allclose(kiln_eval(path, {"x": x, "y": x}, tmp_path)["z"], 2 * x)


def test_value_info_refines_unknown_dims(tmp_path):
    # NonZero-free example: Reshape to a runtime shape leaves dims unknown to
    # inference; the declared value_info fills them in
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    m = make_model(nodes, [("x", TP.FLOAT, [2, 6]), ("s", TP.INT64, [2])],
                   [("y", TP.FLOAT, [3, 4])], value_info=[("r", TP.FLOAT, [3, 4])])
    path = save(m, tmp_path / "m.onnx")
    ir = kiln_ir(path)
    assert re.search(r"%r : f32\[3, 4\]", ir), ir
    got = kiln_eval(path, {"x": rnd(2, 6), "s": np.array([3, 4], np.int64)}, tmp_path)
    assert got["y"].shape == (3, 4)


# ---- weights: referenced in place -------------------------------------------------------

def test_raw_initializers_are_file_references(tmp_path):
    w = rnd(16, 8)
    b = np.arange(8, dtype=np.int64)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Cast", ["b"], ["bf"], to=TP.FLOAT),
             helper.make_node("Add", ["y", "bf"], ["z"])]
    m = make_model(nodes, [("x", TP.FLOAT, ["n", 16])], [("z", TP.FLOAT, ["n", 8])],
                   [init("w", w), init("b", b)])
    path = check_against_ort(m, {"x": rnd(3, 16)}, tmp_path)
    ws = weight_lines(kiln_ir(path))
    raw = open(path, "rb").read()
    for name, arr in (("w", w), ("b", b)):
        dt, dims, f, off = ws[name]
        assert os.path.samefile(f, path)
        assert dims == ", ".join(map(str, arr.shape))
        assert raw[off:off + arr.nbytes] == arr.tobytes()


def test_external_data(tmp_path):
    D, F = 32, 64
    ws = {"w1": rnd(D, F), "w2": rnd(F, D), "b1": rnd(F), "g": rnd(D), "bb": rnd(D)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Gelu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["o"]),
        helper.make_node("LayerNormalization", ["o", "g", "bb"], ["y"], epsilon=1e-5),
    ]
    m = make_model(nodes, [("x", TP.FLOAT, ["b", "s", D])], [("y", TP.FLOAT, ["b", "s", D])],
                   [init(k, v) for k, v in ws.items()], opset=20)
    sub = tmp_path / "model"
    sub.mkdir()
    path = save(m, sub / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location="m.weights", size_threshold=0)
    x = rnd(2, 3, D)
    want = ort_eval(path, {"x": x})["y"]
    got = kiln_eval(path, {"x": x}, tmp_path)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    lines = weight_lines(kiln_ir(path))
    data = open(sub / "m.weights", "rb").read()
    for k, v in ws.items():
        _, _, f, off = lines[k]
        assert os.path.samefile(f, sub / "m.weights")
        assert data[off:off + v.nbytes] == v.tobytes()
    # a missing or short external file is a clean one-line error
    os.rename(sub / "m.weights", sub / "gone")
    p = run_kiln("ir", path, check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "m.weights" in p.stderr
    with open(sub / "m.weights", "wb") as f:
        f.write(data[:len(data) // 2])
    p = run_kiln("ir", path, check=False)
    assert p.returncode == 2 and "too short" in p.stderr


def test_external_data_outside_model_dir_rejected(tmp_path):
    w = rnd(4, 4)
    t = init("w", w)
    t.data_location = TP.EXTERNAL
    for k, v in (("location", "../w.bin"), ("offset", "0"), ("length", str(w.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.ClearField("raw_data")
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    sub = tmp_path / "m"
    sub.mkdir()
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", TP.FLOAT, [1, 4])],
                   [("y", TP.FLOAT, None)], [t])
    path = save(m, sub / "m.onnx")
    p = run_kiln("ir", path, check=False)
    assert p.returncode == 2 and "outside the model's directory" in p.stderr


def test_large_model_not_held_twice(tmp_path):
    """A 256 MB initializer: importing it must not read or copy the payload."""
    n = 64 * 1024 * 1024  # f32 elements
    big = np.zeros(n, np.float32)
    big[::4096] = 1.0
    nodes = [helper.make_node("Gather", ["w", "i"], ["y"])]
    m = make_model(nodes, [("i", TP.INT64, [3])], [("y", TP.FLOAT, [3])], [init("w", big)])
    path = save(m, tmp_path / "big.onnx")
    del big, m
    small = make_model(nodes, [("i", TP.INT64, [3])], [("y", TP.FLOAT, [3])],
                       [init("w", np.ones(16, np.float32))])
    small_path = save(small, tmp_path / "small.onnx")
    # peak RSS of kiln alone: measured by a fresh process whose only child it is
    probe = ("import resource, subprocess, sys;"
             "p = subprocess.run(sys.argv[1:], capture_output=True);"
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")

    def peak_kib(model_path):
        out = subprocess.run([sys.executable, "-c", probe, kiln_bin(), "ir", model_path],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == "0"
        return int(out[1])

    base, rss = peak_kib(small_path), peak_kib(path)
    # the binary alone (shared libraries) sets the base; the payload is 256 MiB
    assert rss - base < 32 * 1024, f"kiln ir: {rss} KiB for a 256 MiB model, {base} KiB for a tiny one"
    got = kiln_eval(path, {"i": np.array([0, 4096, 5], np.int64)}, tmp_path)["y"]
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0])


@pytest.mark.parametrize("alpha", [1.0, 0.75])
def test_swish(tmp_path, alpha):
    m = make_model([helper.make_node("Swish", ["x"], ["y"], alpha=alpha)],
                   [("x", TP.FLOAT, [3, 5])], [("y", TP.FLOAT, [3, 5])], opset=24)
    x = rnd(3, 5, scale=3)
    got = kiln_eval(save(m, tmp_path / "m.onnx"), {"x": x}, tmp_path)["y"]
    want = x / (1 + np.exp(-alpha * x.astype(np.float64)))  # x * sigmoid(alpha x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_opset_below_7_forms(tmp_path):
    """Legacy broadcasting (broadcast=1, axis) and Cast's string `to`; onnxruntime
    no longer loads opset < 7, so numpy is the reference."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], broadcast=1, axis=1),
        helper.make_node("Mul", ["s", "c"], ["p"], broadcast=1),
        helper.make_node("Cast", ["p"], ["y"], to="DOUBLE"),
        helper.make_node("Relu", ["y"], ["r"], consumed_inputs=[0]),
    ]
    m = make_model(nodes, [("a", TP.FLOAT, [2, 3, 4]), ("b", TP.FLOAT, [3, 4]),
                           ("c", TP.FLOAT, [4])], [("r", TP.DOUBLE, None)], opset=5)
    a, b, c = rnd(2, 3, 4), rnd(3, 4), rnd(4)
    got = kiln_eval(save(m, tmp_path / "m.onnx"), {"a": a, "b": b, "c": c}, tmp_path)["r"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.maximum((a + b) * c, 0), rtol=1e-6)
    # B aligned at an axis other than the trailing ones is not rewritten
    bad = make_model([helper.make_node("Add", ["a", "b"], ["s"], broadcast=1, axis=0)],
                     [("a", TP.FLOAT, [2, 3, 4]), ("b", TP.FLOAT, [2])], [("s", TP.FLOAT, None)],
                     opset=5)
    p = run_kiln("ir", save(bad, tmp_path / "bad.onnx"), check=False)
    assert p.returncode == 2 and "legacy broadcast" in p.stderr


def test_protobuf_c_linked_statically():
    """The kiln binary must run where libprotobuf-c is not installed."""
    p = subprocess.run(["ldd", kiln_bin()], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("ldd unavailable")
    assert "protobuf-c" not in p.stdout, p.stdout
