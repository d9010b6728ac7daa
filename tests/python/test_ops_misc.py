"""Range, ConstantOfShape, EyeLike, Trilu, CumSum, TopK, ArgMax/ArgMin,
Dropout, OneHot and NonZero against onnx's ReferenceEvaluator (opset 24),
onnxruntime and numpy."""
import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln_util import eval_kir
from test_ops_linalg import load_node_case, node_cases
from test_ops_shape import (DTYPES, F64, Dt, i64, kir_graph, kiln, kiln_rejects, kiln_rejects_run,
                            load_outputs, ort, ref, rnd, same, sym_case, sym_twin, types_of)

RNG = np.random.default_rng(77)


def close(got, want, tol=1e-6):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                                   atol=tol)
    else:
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- Range

RANGE_CASES = [
    (np.int64, 0, 10, 3), (np.int64, 10, 0, -3), (np.int64, 5, 5, 1), (np.int64, 5, 2, 1),
    (np.int32, -7, 8, 5), (np.int32, 10, 6, -3), (np.float32, 1.0, 5.0, 0.5),
    (np.float32, 3.0, -1.0, -0.7), (np.float64, 0.1, 1.0, 0.2), (np.float32, 0.0, 0.0, 1.0),
    (np.int16, 2, 30, 7), (np.int64, -(2**62), 2**62, 2**61),
]


@pytest.mark.parametrize("dt,start,limit,delta", RANGE_CASES, ids=str)
@pytest.mark.parametrize("const", [True, False])
def test_range(dt, start, limit, delta, const):
    ins = [("s", np.array(start, dt)), ("l", np.array(limit, dt)), ("d", np.array(delta, dt))]
    got = kiln("Range", ins, consts=("s", "l", "d") if const else ())[0]
    want = ref("Range", ins)[0]
    close(got, want, 1e-6)
    close(got, np.arange(start, limit, delta).astype(dt) if dt != np.float32 else
          np.arange(np.float32(start), np.float32(limit), np.float32(delta)).astype(dt), 1e-6)


def test_range_static_type_and_errors():
    text = kir_graph("Range", [("s", i64(2)[0]), ("l", i64(11)[0]), ("d", i64(3)[0])],
                     consts=("s", "l", "d"))
    assert types_of(text)["y"] == f"i64[{len(range(2, 11, 3))}]"
    kiln_rejects(kir_graph("Range", [("s", i64(2)[0]), ("l", i64(11)[0]), ("d", i64(0)[0])],
                           consts=("s", "l", "d")), "delta")
    kiln_rejects(kir_graph("Range", [("s", i64(2)[0]), ("l", np.float32(3)),
                                     ("d", i64(1)[0])]), "limit")
    kiln_rejects(kir_graph("Range", [("s", i64(2, 3)), ("l", i64(5)[0]), ("d", i64(1)[0])]),
                 "single")
    kiln_rejects_run("Range", [("s", np.float32(0)), ("l", np.float32(1)),
                               ("d", np.float32(0))], None, (), 1, "delta")


def test_range_symbolic():
    text = """kir 1
graph "g" {
  sym batch, seq
  input %x : f32[batch, seq]
  const %i0 : i64[] = [0]
  const %i1 : i64[] = [1]
  const %two : i64[] = [2]
  %s = Shape(%x)
  %b = Gather(%s, %i0)
  %n = Gather(%s, %i1)
  %r = Range(%i0, %n, %i1)
  %q = Range(%b, %n, %two)
  %e = Range(%i1, %n, %i1)
  output %r, %e
}
"""

    def shapes(env):
        b, s = env["batch"], env["seq"]
        return {"r": (s,), "e": (len(range(1, s)),)}

    res, types = sym_case(text, lambda env: {"x": rnd((env["batch"], env["seq"]))}, shapes,
                          ["r", "e"])
    assert types["r"] == "i64[seq]"
    assert types["q"].startswith("i64[")  # (seq-batch+1)/2: symbolic, run-time checked
    same(res["r"], np.arange(7, dtype=np.int64))


# ---------------------------------------------------------------- ConstantOfShape

COS_CASES = [([2, 3], 0.0, np.float32), ([4], 1.5, np.float32), ([], 7.0, np.int64),
             ([2, 0, 3], 1.0, np.float32), ([3, 2], 1.0, np.bool_), ([2, 2], -2.25, np.float16),
             ([1, 2, 1], -3.0, np.int32), ([5], 0.1, np.float64), ([3], 9.0, np.uint8)]


@pytest.mark.parametrize("shape,value,dt", COS_CASES, ids=str)
@pytest.mark.parametrize("const", [True, False])
def test_constant_of_shape(shape, value, dt, const):
    s = np.array(shape, np.int64)
    tensor = helper.make_tensor("value", helper.np_dtype_to_tensor_dtype(np.dtype(dt)), [1],
                                [dt(value)] if dt != np.bool_ else [bool(value)])
    want = ref("ConstantOfShape", [("s", s)], {"value": tensor})[0]
    kat = {"value": F64(value), "dtype": Dt({np.float32: "f32", np.int64: "i64",
                                               np.bool_: "bool", np.float16: "f16",
                                               np.int32: "i32", np.float64: "f64",
                                               np.uint8: "u8"}[dt])}
    got = kiln("ConstantOfShape", [("s", s)], kat, consts=("s",) if const else ())[0]
    close(got, want, 0)
    close(got, np.full(shape, value, dt), 0)


def test_constant_of_shape_default_and_errors():
    got = kiln("ConstantOfShape", [("s", i64(2, 2))], consts=("s",))[0]
    same(got, ref("ConstantOfShape", [("s", i64(2, 2))])[0])
    kiln_rejects(kir_graph("ConstantOfShape", [("s", i64(2, -1))], consts=("s",)), "negative")
    kiln_rejects(kir_graph("ConstantOfShape", [("s", np.array([2.0], np.float32))]), "shape")
    kiln_rejects(kir_graph("ConstantOfShape", [("s", i64(2))], {"dtype": Dt("q8_0")},
                           consts=("s",)), "q8_0")


def test_constant_of_shape_bf16():
    text = kir_graph("ConstantOfShape", [("s", i64(2, 3))], {"value": 0.3, "dtype": Dt("bf16")},
                     consts=("s",))
    assert types_of(text)["y"] == "bf16[2, 3]"
    got = eval_kir(text, {})["y"]  # .npy widens bf16 to f32
    same(got, np.full((2, 3), ml_dtypes.bfloat16(np.float32(0.3))).astype(np.float32))


# ---------------------------------------------------------------- EyeLike

@pytest.mark.parametrize("shape", [(3, 3), (3, 5), (5, 2), (0, 3), (1, 1)], ids=str)
@pytest.mark.parametrize("k", [0, 1, -1, 2, -4, 7])
def test_eyelike(shape, k):
    x = rnd(shape)
    got = kiln("EyeLike", [("x", x)], {"k": k})[0]
    same(got, ref("EyeLike", [("x", x)], {"k": k})[0])
    same(got, np.eye(*shape, k=k, dtype=np.float32))


def test_eyelike_dtypes_and_errors():
    x = rnd((3, 4), np.int32)
    same(kiln("EyeLike", [("x", x)])[0], ref("EyeLike", [("x", x)])[0])
    for onnx_dt, kdt in [(TensorProto.DOUBLE, "f64"), (TensorProto.BOOL, "bool"),
                         (TensorProto.INT64, "i64"), (TensorProto.FLOAT16, "f16")]:
        want = ref("EyeLike", [("x", x)], {"dtype": onnx_dt, "k": 1})[0]
        same(kiln("EyeLike", [("x", x)], {"dtype": Dt(kdt), "k": 1})[0], want)
    kiln_rejects(kir_graph("EyeLike", [("x", rnd((2, 3, 4)))]), "2-D")


# ---------------------------------------------------------------- Trilu

@pytest.mark.parametrize("shape", [(4, 5), (5, 4), (2, 3, 3), (3, 1, 4, 2), (0, 3), (3, 0)],
                         ids=str)
@pytest.mark.parametrize("k", [None, 0, 1, -1, 3, -7, 2**40])
@pytest.mark.parametrize("upper", [0, 1])
def test_trilu(shape, k, upper):
    x = rnd(shape)
    ins = [("x", x), ("k", np.array(k, np.int64) if k is not None else None)]
    got = kiln("Trilu", ins, {"upper": upper})[0]
    same(got, ref("Trilu", ins, {"upper": upper})[0])
    kk = 0 if k is None else k
    same(got, np.triu(x, kk) if upper else np.tril(x, kk))


def test_trilu_dtypes_and_errors():
    for dt in DTYPES:
        x = rnd((3, 4), dt)
        ins = [("x", x), ("k", np.array(1, np.int64))]
        same(kiln("Trilu", ins, {"upper": 0}, consts=("k",))[0], ref("Trilu", ins, {"upper": 0})[0])
    kiln_rejects(kir_graph("Trilu", [("x", rnd((4,)))]), "rank")
    kiln_rejects(kir_graph("Trilu", [("x", rnd((4, 4))), ("k", np.float32(1))]), "k")


# ---------------------------------------------------------------- CumSum

@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("dt", [np.float32, np.float64, np.int32, np.int64, np.uint64])
def test_cumsum(axis, exclusive, reverse, dt):
    x = rnd((3, 4, 5), dt)
    ins = [("x", x), ("a", np.array(axis, np.int64))]
    attrs = {"exclusive": exclusive, "reverse": reverse}
    got = kiln("CumSum", ins, attrs, consts=("a",))[0]
    close(got, ref("CumSum", ins, attrs)[0], 1e-5)
    # independent: numpy on flipped / shifted data
    y = np.flip(x, axis) if reverse else x
    c = np.cumsum(y.astype(np.float64), axis=axis)
    if exclusive:
        c = c - y
    if reverse:
        c = np.flip(c, axis)
    close(got, c.astype(dt), 1e-5)


def test_cumsum_misc():
    x = rnd((4, 3), np.float16)
    ins = [("x", x), ("a", np.array(0, np.int32))]
    close(kiln("CumSum", ins)[0], np.cumsum(x.astype(np.float64), 0).astype(np.float16), 2e-3)
    ins = [("x", rnd((0, 3))), ("a", np.array(0, np.int64))]
    same(kiln("CumSum", ins)[0], ref("CumSum", ins)[0])
    big = np.array([2**62, 2**62, -5], np.int64)  # wraps like int64 hardware
    same(kiln("CumSum", [("x", big), ("a", np.array(0, np.int64))])[0], np.cumsum(big))
    kiln_rejects(kir_graph("CumSum", [("x", rnd((2, 3))), ("a", np.array(2, np.int64))],
                           consts=("a",)), "axis 2")
    kiln_rejects(kir_graph("CumSum", [("x", rnd((2, 3), np.bool_)),
                                      ("a", np.array(0, np.int64))]), "bool")
    kiln_rejects_run("CumSum", [("x", rnd((2, 3))), ("a", np.array(-3, np.int64))], None, (), 1,
                     "axis -3")


# ---------------------------------------------------------------- TopK

@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_topk(axis, largest, k):
    x = rnd((4, 6, 6))
    x[0, :3] = 0.5  # ties: the lower index comes first
    k = min(k, x.shape[axis])
    ins = [("x", x), ("k", i64(k))]
    attrs = {"axis": axis, "largest": largest}
    got = kiln("TopK", ins, attrs, consts=("k",), nout=2)
    want = ref("TopK", ins, attrs, nout=2)
    same(got[0], want[0])
    same(got[1], want[1])
    same(got[1], ort("TopK", ins, attrs, nout=2)[1])


@pytest.mark.parametrize("dt", [np.int64, np.int32, np.uint64, np.float16, np.float64, np.uint8])
def test_topk_dtypes(dt):
    x = rnd((3, 9), dt)
    if dt == np.uint64:
        x[0, :4] = [2**64 - 1, 2**63, 2**63 + 1, 5]
    for largest in (0, 1):
        ins = [("x", x), ("k", i64(4))]
        got = kiln("TopK", ins, {"largest": largest}, nout=2)
        want = ref("TopK", ins, {"largest": largest}, nout=2)
        same(got[0], want[0])
        same(got[1], want[1])


def test_topk_nan_symbolic_and_errors():
    x = np.array([[1.0, np.nan, 3.0, np.nan, -1.0]], np.float32)
    for largest in (0, 1):
        ins = [("x", x), ("k", i64(5))]
        got = kiln("TopK", ins, {"largest": largest}, nout=2)
        want = ref("TopK", ins, {"largest": largest}, nout=2)
        same(got[0], want[0])
        same(got[1], want[1])
    text = kir_graph("TopK", [("x", rnd((2, 7))), ("k", i64(3))], consts=("k",),
                     dims={"x": ["b", 7]}, syms=["b"], nout=2)
    t = types_of(text)
    assert t["y0"] == "f32[b, 3]" and t["y1"] == "i64[b, 3]"
    kiln_rejects(kir_graph("TopK", [("x", rnd((2, 7))), ("k", i64(8))], consts=("k",), nout=2),
                 "exceeds")
    kiln_rejects(kir_graph("TopK", [("x", rnd((2, 7))), ("k", i64(-1))], consts=("k",), nout=2),
                 "negative")
    kiln_rejects(kir_graph("TopK", [("x", rnd((2, 7))), ("k", i64(1, 2))], nout=2), "single")


# ---------------------------------------------------------------- ArgMax / ArgMin

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, -1, 2])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_argmax_argmin(op, axis, keepdims, last):
    x = RNG.integers(-3, 3, size=(3, 4, 5)).astype(np.float32)  # many ties
    attrs = {"axis": axis, "keepdims": keepdims, "select_last_index": last}
    got = kiln(op, [("x", x)], attrs)[0]
    same(got, ref(op, [("x", x)], attrs)[0])
    f = np.argmax if op == "ArgMax" else np.argmin
    y = np.flip(x, axis) if last else x
    want = f(y, axis=axis)
    if last:
        want = x.shape[axis] - 1 - want
    if keepdims:
        want = np.expand_dims(want, axis)
    same(got, want.astype(np.int64))


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dt", [np.int64, np.int8, np.uint32, np.uint64, np.float16, np.float64])
def test_arg_dtypes(op, dt):
    x = rnd((4, 7), dt)
    if dt == np.uint64:
        x[1, :3] = [2**64 - 1, 2**63, 7]
    for last in (0, 1):
        attrs = {"axis": 1, "select_last_index": last}
        same(kiln(op, [("x", x)], attrs)[0], ref(op, [("x", x)], attrs)[0])


def test_arg_nan_and_errors():
    x = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -1.0, 5.0]], np.float32)
    for op in ("ArgMax", "ArgMin"):
        for last in (0, 1):
            attrs = {"axis": 1, "select_last_index": last}
            same(kiln(op, [("x", x)], attrs)[0], ref(op, [("x", x)], attrs)[0])
    kiln_rejects(kir_graph("ArgMax", [("x", rnd((2, 0)))], {"axis": 1}), "empty")
    kiln_rejects(kir_graph("ArgMax", [("x", rnd((2, 3)))], {"axis": 2}), "axis 2")
    kiln_rejects(kir_graph("ArgMin", [("x", rnd(()))]), "rank")
    text = kir_graph("ArgMax", [("x", rnd((2, 3, 4)))], {"axis": -1, "keepdims": 0},
                     dims={"x": ["b", "s", 4]}, syms=["b", "s"])
    assert types_of(text)["y"] == "i64[b, s]"


# ---------------------------------------------------------------- Dropout

def test_dropout_inference():
    x = rnd((3, 4))
    ins = [("x", x), ("r", np.array(0.3, np.float32)), ("t", np.array(False))]
    got = kiln("Dropout", ins, consts=("r", "t"), nout=2)
    want = ref("Dropout", ins, nout=2)
    same(got[0], want[0])
    same(got[1], want[1])
    same(kiln("Dropout", [("x", x)], {"seed": 3})[0], x)
    got = kiln("Dropout", [("x", x.astype(np.float16)), ("r", np.array(0.5, np.float16))], nout=2)
    same(got[0], x.astype(np.float16))
    same(got[1], np.ones(x.shape, bool))
    # training mode with ratio 0 is the identity as well
    ins = [("x", x), ("r", np.array(0.0, np.float32)), ("t", np.array(True))]
    got = kiln("Dropout", ins, consts=("r", "t"), nout=2)
    want = ref("Dropout", ins, nout=2)
    same(got[0], want[0])
    same(got[1], want[1])


def test_dropout_training_rejected():
    x = rnd((3, 4))
    msg = kiln_rejects(kir_graph("Dropout", [("x", x), ("r", np.array(0.1, np.float32)),
                                             ("t", np.array(True))], consts=("r", "t")),
                       "training-mode Dropout is not supported")
    assert "Dropout" in msg
    kiln_rejects(kir_graph("Dropout", [("x", x), ("r", None), ("t", np.array(True))],
                           consts=("t",)), "training-mode Dropout is not supported")
    # known only at run time
    kiln_rejects_run("Dropout", [("x", x), ("r", np.array(0.5, np.float32)),
                                 ("t", np.array(True))], None, (), 1,
                     "training-mode Dropout is not supported")
    kiln_rejects(kir_graph("Dropout", [("x", x), ("r", np.array(1.5, np.float32))],
                           consts=("r",)), "ratio")
    kiln_rejects(kir_graph("Dropout", [("x", x), ("r", np.array(0.5, np.float32)),
                                       ("t", np.array(1, np.int64))]), "training_mode")


# ---------------------------------------------------------------- OneHot

ONEHOT_CASES = [((3,), -1), ((3,), 0), ((2, 3), 1), ((2, 3), -2), ((2, 3), -3), ((2, 3), 2),
                ((), 0), ((0, 2), -1)]


@pytest.mark.parametrize("shape,axis", ONEHOT_CASES, ids=str)
@pytest.mark.parametrize("idt", [np.int64, np.int32, np.float32])
def test_onehot(shape, axis, idt):
    depth = 5
    ix = RNG.integers(-7, 8, size=shape).astype(idt)  # some out of range: all off
    vals = np.array([-1.5, 2.0], np.float32)
    ins = [("i", ix), ("d", np.array(depth, np.int64)), ("v", vals)]
    got = kiln("OneHot", ins, {"axis": axis}, consts=("d",))[0]
    same(got, ref("OneHot", ins, {"axis": axis})[0])
    # independent: compare with a numpy construction
    a = axis if axis >= 0 else axis + len(shape) + 1
    t = np.where(ix < 0, ix + depth, ix).astype(np.int64)
    oh = (np.expand_dims(t, a) == np.arange(depth).reshape(
        [depth if d == a else 1 for d in range(len(shape) + 1)]))
    same(got, np.where(oh, vals[1], vals[0]).astype(np.float32))


def test_onehot_depth_and_value_types():
    ix = np.array([[0, 2], [1, -1]], np.int64)
    ins = [("i", ix), ("d", np.array(3.7, np.float32)), ("v", np.array([0, 9], np.int64))]
    got = kiln("OneHot", ins)[0]  # depth 3.7 -> 3
    same(got, ref("OneHot", [("i", ix), ("d", np.array(3, np.int64)), ins[2]])[0])
    same(got, np.array([[[9, 0, 0], [0, 0, 9]], [[0, 9, 0], [0, 0, 9]]], np.int64))
    # non-integer indices are cast to int64 first (the spec; onnxruntime agrees)
    fi = np.array([1.9, -0.5, 2.0, -1.2], np.float32)
    ins = [("i", fi), ("d", np.array(3, np.float32)), ("v", np.array([0.0, 1.0], np.float32))]
    got = kiln("OneHot", ins)[0]
    same(got, ort("OneHot", ins)[0])
    same(got, np.eye(3, dtype=np.float32)[[1, 0, 2, 2]])
    ins = [("i", fi), ("d", np.array(3, np.int64)), ("v", np.array([False, True]))]
    same(kiln("OneHot", ins)[0], np.eye(3, dtype=bool)[[1, 0, 2, 2]])
    kiln_rejects(kir_graph("OneHot", [("i", ix), ("d", np.array(3, np.int64)),
                                      ("v", np.array([0, 1, 2], np.float32))]), "values")
    kiln_rejects(kir_graph("OneHot", [("i", ix), ("d", np.array(3, np.int64)),
                                      ("v", np.array([0, 1], np.float32))], {"axis": 3}),
                 "axis 3")
    kiln_rejects(kir_graph("OneHot", [("i", ix), ("d", np.array(-2, np.int64)),
                                      ("v", np.array([0, 1], np.float32))], consts=("d",)),
                 "depth")
    text = kir_graph("OneHot", [("i", ix), ("d", np.array(4, np.int64)),
                                ("v", np.array([0, 1], np.float16))], {"axis": 1},
                     consts=("d",), dims={"i": ["b", 2]}, syms=["b"])
    assert types_of(text)["y"] == "f16[b, 4, 2]"


# ---------------------------------------------------------------- NonZero

@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (0, 3), ()], ids=str)
@pytest.mark.parametrize("dt", [np.float32, np.int64, np.bool_, np.float16, np.uint8])
def test_nonzero(shape, dt):
    x = (RNG.integers(0, 3, size=shape) * (RNG.integers(0, 2, size=shape))).astype(dt)
    got = kiln("NonZero", [("x", x)])[0]
    same(got, ref("NonZero", [("x", x)])[0])
    if shape:
        same(got, np.array(np.nonzero(x), np.int64).reshape(len(shape), -1))


def test_nonzero_nan_and_type():
    x = np.array([[0.0, np.nan], [-0.0, 2.0]], np.float32)
    same(kiln("NonZero", [("x", x)])[0], np.array(np.nonzero(x), np.int64))
    text = kir_graph("NonZero", [("x", x)], dims={"x": ["b", 2]}, syms=["b"])
    assert types_of(text)["y"] == "i64[2, ?]"
    # a constant input is counted at compile time
    text = kir_graph("NonZero", [("x", x)], consts=("x",))
    assert types_of(text)["y"] == f"i64[2, {np.count_nonzero(x)}]"


# ---------------------------------------------------------------- ONNX conformance data

MISC_NODE_TESTS = node_cases([
    "test_range_", "test_constantofshape_", "test_eyelike_", "test_tril", "test_triu",
    "test_cumsum_", "test_top_k", "test_argmax_", "test_argmin_", "test_dropout_default",
    "test_onehot_", "test_nonzero_"])

ONNX_TO_KIR = {TensorProto.FLOAT: "f32", TensorProto.DOUBLE: "f64", TensorProto.INT64: "i64",
               TensorProto.INT32: "i32", TensorProto.FLOAT16: "f16", TensorProto.BOOL: "bool",
               TensorProto.INT8: "i8", TensorProto.UINT8: "u8", TensorProto.UINT64: "u64"}


@pytest.mark.skipif(not MISC_NODE_TESTS, reason="ONNX node test data not extracted")
@pytest.mark.parametrize("name", MISC_NODE_TESTS)
def test_onnx_node_data(name):
    op, ins, attrs, _ = load_node_case(name)
    model, outs = load_outputs(name)
    if op == "ConstantOfShape" and "value" in attrs:  # kiln's form: value + dtype
        t = attrs.pop("value")
        attrs["value"] = float(numpy_helper.to_array(t).reshape(-1)[0])
        attrs["dtype"] = Dt(ONNX_TO_KIR[t.data_type])
    if op == "EyeLike" and "dtype" in attrs:
        attrs["dtype"] = Dt(ONNX_TO_KIR[attrs["dtype"]])
    got = kiln(op, ins, attrs, nout=len(outs))
    for g, w in zip(got, outs):
        close(g, w, 1e-6)


# ---------------------------------------------------------------- symbolic input dims

SYM_TWINS = [
    ("EyeLike", [("x", rnd((3, 5)))], {"k": 1}, (), 1),
    ("Trilu", [("x", rnd((2, 4, 3))), ("k", np.array(-1, np.int64))], {"upper": 0}, ("k",), 1),
    ("CumSum", [("x", rnd((3, 4), np.int64).astype(np.float32)), ("a", np.array(-1, np.int64))],
     {"reverse": 1}, ("a",), 1),
    ("TopK", [("x", rnd((3, 7))), ("k", i64(2))], {"largest": 0}, ("k",), 2),
    ("ArgMax", [("x", rnd((3, 4, 5)))], {"axis": 1}, (), 1),
    ("ArgMin", [("x", rnd((3, 4, 5)))], {"axis": -1, "keepdims": 0}, (), 1),
    ("Dropout", [("x", rnd((3, 4)))], {}, (), 2),
    ("OneHot", [("x", i64(1, 0, 3, -1).reshape(2, 2)), ("d", np.array(4, np.int64)),
                ("v", np.array([0.5, 2.0], np.float32))], {"axis": 1}, ("d",), 1),
]


@pytest.mark.parametrize("op,inputs,attrs,consts,nout", SYM_TWINS,
                         ids=[f"{c[0]}{i}" for i, c in enumerate(SYM_TWINS)])
def test_symbolic_inputs(op, inputs, attrs, consts, nout):
    sym_twin(op, inputs, attrs, consts, nout)


def test_symbolic_nonzero():
    # data-dependent: the count is unknown until run time, the rank is not
    x = np.array([[0, 1, 2], [3, 0, 0]], np.int64)
    sym_twin("NonZero", [("x", x)], exact=False)
    text = kir_graph("NonZero", [("x", x)], dims={"x": ["a", "b"]}, syms=["a", "b"])
    assert types_of(text)["y"] == "i64[2, ?]"
