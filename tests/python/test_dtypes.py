"""Exotic element types: i2/u2, i4/u4 with odd lengths, f4e2m1, the FNUZ
float8s and f8e8m0, through the ONNX importer (graph inputs, raw_data and
int32_data initializers, .pb tensor files), Cast/CastLike (saturate,
round_mode) and kiln's widened .npy output.

Expected values come from onnx's reference evaluator and ml_dtypes (the
reference's element types); f8e8m0's special values from onnxruntime, which
follows the Cast spec's table where the reference does not (infinities, zero,
values outside the range).
"""
import json
import os

import ml_dtypes as md
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from kiln_util import run_kiln
from test_onnx_import import kiln_eval, save

RNG = np.random.default_rng(7)

# onnx type -> (ml_dtypes type, dtype of kiln's widened .npy output)
TYPES = {
    TP.INT2: (md.int2, np.int8),
    TP.UINT2: (md.uint2, np.uint8),
    TP.INT4: (md.int4, np.int8),
    TP.UINT4: (md.uint4, np.uint8),
    TP.FLOAT4E2M1: (md.float4_e2m1fn, np.float32),
    TP.FLOAT8E4M3FNUZ: (md.float8_e4m3fnuz, np.float32),
    TP.FLOAT8E5M2FNUZ: (md.float8_e5m2fnuz, np.float32),
    TP.FLOAT8E8M0: (md.float8_e8m0fnu, np.float32),
}
FLOAT8 = (TP.FLOAT8E4M3FNUZ, TP.FLOAT8E5M2FNUZ)
INTS = (TP.INT2, TP.UINT2, TP.INT4, TP.UINT4)
NAMES = {t: TP.DataType.Name(t) for t in TYPES}


def model(nodes, inputs, outputs, inits=()):
    vi = lambda t: helper.make_tensor_value_info(*t)  # noqa: E731
    g = helper.make_graph(nodes, "g", [vi(t) for t in inputs], [vi(t) for t in outputs],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 25)])
    m.ir_version = 13  # the first with INT2/UINT2
    return m


def same(got, want):
    """Bit-level agreement of kiln's widened output with an expected array:
    equal values, equal signs of zero, NaN where NaN is expected."""
    assert got.shape == want.shape
    if np.issubdtype(got.dtype, np.integer):
        np.testing.assert_array_equal(got, want.astype(got.dtype))
        return
    w = want.astype(np.float32)
    bad = ~((np.isnan(got) & np.isnan(w)) | ((got == w) & (np.signbit(got) == np.signbit(w))))
    assert not bad.any(), (np.flatnonzero(bad)[:10], got[bad][:10], w[bad][:10])


def all_values(t):
    """Every value of type t once (NaN codes included), as its ml_dtypes type."""
    mdt = TYPES[t][0]
    bits = 2 if t in (TP.INT2, TP.UINT2) else 4 if t in (TP.INT4, TP.UINT4, TP.FLOAT4E2M1) else 8
    codes = np.arange(1 << bits, dtype=np.uint8)
    if bits == 8:
        return codes.view(mdt)
    if t == TP.FLOAT4E2M1:  # decode the codes by hand
        sign = np.where(codes & 8, -1.0, 1.0)
        e, m = (codes >> 1) & 3, codes & 1
        v = np.where(e == 0, m * 0.5, (1 + m / 2) * 2.0 ** (e.astype(np.float64) - 1))
        return (sign * v).astype(mdt)
    lo = -(1 << (bits - 1)) if t in (TP.INT2, TP.INT4) else 0
    return np.arange(lo, lo + (1 << bits)).astype(mdt)


def cast_inputs(t):
    """f32 values that exercise Cast to t: every value of t and the points
    halfway between neighbours (ties), just off them, out of range, specials."""
    vals = all_values(t).astype(np.float32)
    fin = np.unique(vals[np.isfinite(vals)])
    mid = ((fin[1:].astype(np.float64) + fin[:-1]) / 2).astype(np.float32)
    x = np.concatenate([vals, mid, np.nextafter(mid, np.float32(np.inf)),
                        np.nextafter(mid, np.float32(-np.inf)),
                        (RNG.standard_normal(64) * min(float(fin.max()) / 2, 1e30)).astype(np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, np.inf, -np.inf, np.nan, -np.nan])])
    if t in INTS:
        # integers: out of range values wrap; stay in int32 (beyond, the result is undefined)
        x = np.concatenate([x[np.isfinite(x)], np.float32([100.7, -100.7, 1e6, -1e6])])
    if t == TP.FLOAT8E8M0:
        # the reference follows the spec for normal floats in [2^-126, 2^127] only;
        # test_cast_e8m0_special_values covers the rest
        x = np.abs(x[np.isfinite(x)]).astype(np.float64)
        x = np.concatenate([x, [2.0 ** k for k in range(-126, 128)]])
        x = np.concatenate([x, x * 1.25, x * 1.5, x * 1.75])
        x = x[(x >= 2.0 ** -126) & (x <= 2.0 ** 127)]
    return x.astype(np.float32)


def run_onnx(tmp_path, m, inputs, name="m.onnx"):
    return kiln_eval(save(m, tmp_path / name), inputs, tmp_path)


def cast_attrs(t, saturate, round_mode=None):
    a = {"to": t}
    if saturate is not None:
        a["saturate"] = saturate
    if round_mode is not None:
        a["round_mode"] = round_mode
    return a


CAST_CASES = [(t, None, None) for t in (TP.INT2, TP.UINT2, TP.INT4, TP.UINT4, TP.FLOAT4E2M1)]
CAST_CASES += [(t, s, None) for t in FLOAT8 for s in (1, 0)]
CAST_CASES += [(TP.FLOAT8E8M0, s, r) for s in (1, 0) for r in ("up", "down", "nearest")]


@pytest.mark.parametrize("t,saturate,round_mode", CAST_CASES,
                         ids=[f"{NAMES[t]}-sat{s}-{r}" for t, s, r in CAST_CASES])
def test_cast_from_float(tmp_path, t, saturate, round_mode):
    x = cast_inputs(t)
    # odd length, so packed types end mid-byte
    if x.size % 2 == 0:
        x = x[:-1]
    n = helper.make_node("Cast", ["x"], ["y"], **cast_attrs(t, saturate, round_mode))
    # kiln's output is widened; a second Cast back to f32 in kiln is checked too
    n2 = helper.make_node("Cast", ["y"], ["z"], to=TP.FLOAT)
    m = model([n, n2], [("x", TP.FLOAT, [x.size])], [("y", t, [x.size]), ("z", TP.FLOAT, [x.size])])
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    got = run_onnx(tmp_path, m, {"x": x})
    same(got["y"], want)
    same(got["z"], want)


def test_cast_from_float16_and_double(tmp_path):
    # the reference converts through f32; so does kiln
    for src, npt in ((TP.FLOAT16, np.float16), (TP.DOUBLE, np.float64)):
        for t in (TP.FLOAT4E2M1, TP.FLOAT8E4M3FNUZ, TP.FLOAT8E5M2FNUZ, TP.INT2, TP.FLOAT8E8M0):
            x = cast_inputs(t)
            if src == TP.FLOAT16:
                x = x[~np.isfinite(x) | (np.abs(x) < 60000)]
            x = x.astype(npt)
            if t == TP.FLOAT8E8M0:
                x = x[x.astype(np.float32) >= 2.0 ** -126]
            n = helper.make_node("Cast", ["x"], ["y"], to=t)
            m = model([n], [("x", src, [x.size])], [("y", t, [x.size])])
            want = ReferenceEvaluator(m).run(None, {"x": x})[0]
            same(run_onnx(tmp_path, m, {"x": x})["y"], want)


def ort_double_cast(x, attrs):
    """onnxruntime's f32 -> f8e8m0 -> f32 (it has no numpy type for f8e8m0)."""
    n1 = helper.make_node("Cast", ["x"], ["t"], **attrs)
    n2 = helper.make_node("Cast", ["t"], ["y"], to=TP.FLOAT)
    m = model([n1, n2], [("x", TP.FLOAT, [x.size])], [("y", TP.FLOAT, [x.size])])
    m.ir_version = 12
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0], m


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
def test_cast_e8m0_special_values(tmp_path, saturate, round_mode):
    x = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, -1.5, -2.0, 1e-39, 2.0 ** -127,
                    1.5 * 2.0 ** -127, 2.0 ** -130, 2.0 ** 127, 1.25 * 2.0 ** 127, 3e38, 1.0, 0.75])
    want, m = ort_double_cast(x, cast_attrs(TP.FLOAT8E8M0, saturate, round_mode))
    got = run_onnx(tmp_path, m, {"x": x})["y"]
    same(got, want)


@pytest.mark.parametrize("t", list(TYPES), ids=[NAMES[t] for t in TYPES])
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "int32_data"])
def test_cast_to_float_from_initializer(tmp_path, t, raw):
    vals = all_values(t)
    vals = np.concatenate([vals, vals[:1]])  # odd length: the last byte is half used
    if vals.size % 2 == 0:
        vals = vals[:-1]
    if raw:
        tensor = numpy_helper.from_array(vals, "c")
        assert tensor.HasField("raw_data")
    elif TYPES[t][1] == np.float32 and t != TP.FLOAT4E2M1:  # one 8-bit code per entry
        tensor = TP(name="c", data_type=t, dims=[vals.size])
        tensor.int32_data.extend(vals.view(np.uint8).tolist())
    else:  # packed: onnx.helper packs the bytes
        tensor = helper.make_tensor("c", t, [vals.size], vals.tolist(), raw=False)
        assert not tensor.HasField("raw_data")
    nodes = [helper.make_node("Cast", ["c"], ["f"], to=TP.FLOAT),
             helper.make_node("Identity", ["c"], ["y"])]
    m = model(nodes, [], [("f", TP.FLOAT, [vals.size]), ("y", t, [vals.size])], [tensor])
    got = run_onnx(tmp_path, m, {})
    same(got["f"], vals.astype(np.float32))
    same(got["y"], vals)
    if t in INTS:  # to a wider integer, exactly
        n = helper.make_node("Cast", ["c"], ["i"], to=TP.INT8 if TYPES[t][1] == np.int8 else TP.UINT8)
        m = model([n], [], [("i", TP.INT8 if TYPES[t][1] == np.int8 else TP.UINT8, [vals.size])],
                  [tensor])
        np.testing.assert_array_equal(run_onnx(tmp_path, m, {}, "i.onnx")["i"],
                                      vals.astype(TYPES[t][1]))


@pytest.mark.parametrize("t", [TP.INT4, TP.UINT4, TP.INT2, TP.UINT2],
                         ids=[NAMES[t] for t in (TP.INT4, TP.UINT4, TP.INT2, TP.UINT2)])
def test_packed_odd_rows_move(tmp_path, t):
    # ONNX packs over the flattened tensor; rows of odd length start mid-byte
    mdt, wide = TYPES[t]
    info = md.iinfo(mdt)
    a = RNG.integers(int(info.min), int(info.max) + 1, size=(3, 5)).astype(mdt)
    starts = numpy_helper.from_array(np.int64([1]), "st")
    ends = numpy_helper.from_array(np.int64([4]), "en")
    axes = numpy_helper.from_array(np.int64([1]), "ax")
    nodes = [helper.make_node("Transpose", ["a"], ["tr"], perm=[1, 0]),
             helper.make_node("Slice", ["a", "st", "en", "ax"], ["sl"]),
             helper.make_node("Concat", ["a", "a"], ["cc"], axis=1),
             helper.make_node("Cast", ["tr"], ["trw"], to=TP.INT8 if wide == np.int8 else TP.UINT8)]
    wt = TP.INT8 if wide == np.int8 else TP.UINT8
    m = model(nodes, [], [("tr", t, [5, 3]), ("sl", t, [3, 3]), ("cc", t, [3, 10]),
                          ("trw", wt, [5, 3])],
              [numpy_helper.from_array(a, "a"), starts, ends, axes])
    got = run_onnx(tmp_path, m, {})
    ref = ReferenceEvaluator(m).run(None, {})
    for k, name in enumerate(["tr", "sl", "cc", "trw"]):
        np.testing.assert_array_equal(got[name], ref[k].astype(wide), err_msg=name)
    np.testing.assert_array_equal(got["tr"], a.T.astype(wide))


def test_f4e2m1_moves(tmp_path):
    a = all_values(TP.FLOAT4E2M1)[:15].reshape(3, 5)
    cond = numpy_helper.from_array(RNG.integers(0, 2, size=(3, 5)).astype(bool), "cond")
    neg = numpy_helper.from_array(-a.astype(np.float32), "neg")
    nodes = [helper.make_node("Transpose", ["a"], ["tr"], perm=[1, 0]),
             helper.make_node("Cast", ["neg"], ["b"], to=TP.FLOAT4E2M1),
             helper.make_node("Where", ["cond", "a", "b"], ["w"])]
    m = model(nodes, [], [("tr", TP.FLOAT4E2M1, [5, 3]), ("w", TP.FLOAT4E2M1, [3, 5])],
              [numpy_helper.from_array(a, "a"), cond, neg])
    got = run_onnx(tmp_path, m, {})
    ref = ReferenceEvaluator(m).run(None, {})
    same(got["tr"], ref[0])
    same(got["w"], ref[1])


@pytest.mark.parametrize("t,saturate,round_mode",
                         [(TP.FLOAT8E4M3FNUZ, 0, None), (TP.FLOAT8E5M2FNUZ, 1, None),
                          (TP.FLOAT8E8M0, 1, "down"), (TP.FLOAT4E2M1, None, None),
                          (TP.UINT2, None, None)],
                         ids=["e4m3fnuz-nosat", "e5m2fnuz", "e8m0-down", "f4e2m1", "uint2"])
def test_castlike(tmp_path, t, saturate, round_mode):
    x = cast_inputs(t)
    like = numpy_helper.from_array(np.zeros(1, TYPES[t][0]), "like")
    attrs = cast_attrs(t, saturate, round_mode)
    del attrs["to"]
    n = helper.make_node("CastLike", ["x", "like"], ["y"], **attrs)
    m = model([n], [("x", TP.FLOAT, [x.size])], [("y", t, [x.size])], [like])
    # CastLike is Cast to like's type (the reference's CastLike lacks round_mode)
    c = model([helper.make_node("Cast", ["x"], ["y"], **cast_attrs(t, saturate, round_mode))],
              [("x", TP.FLOAT, [x.size])], [("y", t, [x.size])])
    want = ReferenceEvaluator(c).run(None, {"x": x})[0]
    same(run_onnx(tmp_path, m, {"x": x})["y"], want)


def test_conformance_runner_reads_exotic_pb(tmp_path):
    """`kiln conformance` on tests written here: .pb inputs and outputs of the
    new types with odd shapes, outputs from the reference evaluator."""
    root = tmp_path / "suite"
    cases = []
    for t in TYPES:
        vals = all_values(t)
        fin = vals[np.isfinite(vals.astype(np.float32))] if t != TP.FLOAT8E8M0 else vals
        a = RNG.choice(fin, size=(3, 5))
        m = model([helper.make_node("Cast", ["x"], ["y"], to=TP.FLOAT)], [("x", t, [3, 5])],
                  [("y", TP.FLOAT, [3, 5])])
        cases.append((f"test_from_{NAMES[t]}", m, a))
        x = RNG.standard_normal((3, 5)).astype(np.float32) * 4
        if t == TP.FLOAT8E8M0:
            x = np.abs(x) + 0.1
        m = model([helper.make_node("Cast", ["x"], ["y"], to=t)], [("x", TP.FLOAT, [3, 5])],
                  [("y", t, [3, 5])])
        cases.append((f"test_to_{NAMES[t]}", m, x))
    for name, m, x in cases:
        d = root / name / "test_data_set_0"
        d.mkdir(parents=True)
        onnx.save(m, str(root / name / "model.onnx"))
        y = ReferenceEvaluator(m).run(None, {"x": x})[0]
        (d / "input_0.pb").write_bytes(numpy_helper.from_array(x, "x").SerializeToString())
        (d / "output_0.pb").write_bytes(numpy_helper.from_array(y, "y").SerializeToString())
    out = tmp_path / "r.json"
    run_kiln("conformance", root, "--json", out)
    rep = json.loads(out.read_text())
    assert len(rep["tests"]) == len(cases)
    bad = [(t["test"], t["detail"]) for t in rep["tests"] if t["status"] != "pass"]
    assert not bad, bad


def test_kir_text_round_trip(tmp_path):
    text = ("kir 1\ngraph \"g\" {\n"
            "  const %a : f4e2m1[3] = [0.5, -6, 1.5]\n"
            "  const %b : f8e8m0[3] = [5.877472e-39, 1, nan]\n"
            "  const %c : i2[5] = [1, -2, -1, 0, 1]\n"
            "  const %d : f8e4m3fnuz[2] = [240, -0.001953125]\n"
            "  const %e : f8e5m2fnuz[1] = [57344]\n"
            "  const %f : u2[3] = [3, 0, 2]\n"
            "  %y : f8e8m0[3] = Cast(%a) {to = f8e8m0, round_mode = \"nearest\", saturate = 0}\n"
            "  output %y, %b, %c, %d, %e, %f\n}\n")
    p = tmp_path / "g.kir"
    p.write_text(text)
    once = run_kiln("ir", p).stdout
    p2 = tmp_path / "g2.kir"
    p2.write_text(once)
    assert run_kiln("ir", p2).stdout == once
    out = tmp_path / "out"
    r = run_kiln("eval", p, "--output-dir", out).stdout
    assert "f8e8m0[3]" in r and "i2[5]" in r
    # nearest, not saturating: 0.5 -> 0.5, -6 -> NaN (no negatives), 1.5 -> 2 (ties up)
    same(np.load(out / "y.npy"), np.float32([0.5, np.nan, 2.0]))
    same(np.load(out / "b.npy"), np.float32([2.0 ** -127, 1, np.nan]))
    np.testing.assert_array_equal(np.load(out / "c.npy"), np.int8([1, -2, -1, 0, 1]))
    same(np.load(out / "d.npy"), np.float32([240, -0.001953125]))
    np.testing.assert_array_equal(np.load(out / "f.npy"), np.uint8([3, 0, 2]))


def test_errors(tmp_path):
    # an unknown round_mode is refused with one line naming it
    n = helper.make_node("Cast", ["x"], ["y"], to=TP.FLOAT8E8M0, round_mode="sideways")
    m = model([n], [("x", TP.FLOAT, [3])], [("y", TP.FLOAT8E8M0, [3])])
    p = run_kiln("ir", save(m, tmp_path / "rm.onnx"), check=False)
    assert p.returncode == 2 and "round_mode" in p.stderr and "sideways" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    # packed int32_data must hold exactly the packed bytes
    bad = helper.make_tensor("c", TP.INT2, [9], [1] * 9, raw=False)
    del bad.int32_data[:]
    bad.int32_data.extend([0x39, 0x39])  # 9 crumbs need 3 bytes
    m = model([helper.make_node("Identity", ["c"], ["y"])], [], [("y", TP.INT2, [9])], [bad])
    p = run_kiln("ir", save(m, tmp_path / "cnt.onnx"), check=False)
    assert p.returncode == 2 and "int32_data" in p.stderr and "'c'" in p.stderr
    # raw_data of the wrong length for a packed type
    t = numpy_helper.from_array(np.zeros(9, md.uint2), "c")
    t.raw_data = b"\0\0"
    m = model([helper.make_node("Identity", ["c"], ["y"])], [], [("y", TP.UINT2, [9])], [t])
    p = run_kiln("ir", save(m, tmp_path / "raw.onnx"), check=False)
    assert p.returncode == 2 and "raw_data" in p.stderr
