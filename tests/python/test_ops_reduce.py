"""The ten ONNX reductions (opset-18+ form) against onnx's ReferenceEvaluator
and numpy, including the ONNX node conformance data."""
import numpy as np
import pytest

from kiln_util import eval_kir
from test_ops_linalg import (check_close, infer_types, kiln_fails, kiln_run, kir_node,
                             load_node_case, node_cases, onnx_ref)

RNG = np.random.default_rng(99)

OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
       "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
FLOAT_ONLY = {"ReduceLogSum", "ReduceLogSumExp"}


def data_for(op, shape, dt=np.float32):
    if np.issubdtype(dt, np.integer):
        lo = 0 if np.issubdtype(dt, np.unsignedinteger) else -4
        return RNG.integers(lo, 5, size=shape).astype(dt)
    x = RNG.standard_normal(shape)
    if op == "ReduceLogSum":
        x = np.abs(x) + 0.1  # log of a positive sum
    if op == "ReduceProd":
        x = 0.5 + np.abs(x)  # keep products tame
    return x.astype(dt)


def case(op, x, axes, attrs, axes_const=True):
    """Runs op on kiln and on the reference; axes None means absent."""
    ins = [("x", x)]
    if axes is not None:
        ins.append(("axes", np.array(axes, np.int64).reshape(-1)))
    _, want = onnx_ref(op, ins, attrs, opset=20)
    got = kiln_run(op, ins, attrs, consts=("axes",) if axes_const else ())
    return got, np.asarray(want)


AXES = [None, [], [1], [-1], [0, 2], [2, 0], [0, 1, 2], [-3]]
KEEP = [{}, {"keepdims": 0}, {"noop_with_empty_axes": 1}, {"keepdims": 0, "noop_with_empty_axes": 1}]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axes", AXES, ids=str)
@pytest.mark.parametrize("attrs", KEEP, ids=str)
def test_reduce_f32(op, axes, attrs):
    x = data_for(op, (3, 4, 5))
    got, want = case(op, x, axes, attrs)
    check_close(got, want.astype(np.float32))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dt", [np.float64, np.float16])
def test_reduce_float_dtypes(op, dt):
    x = data_for(op, (2, 3, 6), dt)
    got, want = case(op, x, [1, 2], {"keepdims": 0})
    assert got.dtype == dt
    # the reference reduces f16 in f16; kiln accumulates in double
    exact = np.asarray(case(op, x.astype(np.float64), [1, 2], {"keepdims": 0})[1])
    np.testing.assert_allclose(got.astype(np.float64), exact, rtol=2e-3 if dt == np.float16 else 1e-12,
                               atol=2e-3 if dt == np.float16 else 1e-12)
    check_close(got, want.astype(dt))


# ONNX allows the 8-bit types for ReduceMax/Min only
INT_CASES = [(op, dt) for op in sorted(set(OPS) - FLOAT_ONLY)
             for dt in (np.int32, np.int64, np.uint32, np.int8, np.uint8)
             if dt not in (np.int8, np.uint8) or op in ("ReduceMax", "ReduceMin")]


@pytest.mark.parametrize("op,dt", INT_CASES)
@pytest.mark.parametrize("axes", [None, [1], [0, 2]], ids=str)
def test_reduce_int(op, dt, axes):
    x = data_for(op, (3, 4, 3), dt)
    got, want = case(op, x, axes, {})
    assert got.dtype == dt
    np.testing.assert_array_equal(got, want.astype(dt))


def test_reduce_int_mean_truncates():
    x = np.array([[-1, -2], [3, 4], [7, 0]], np.int32)
    got, want = case("ReduceMean", x, [1], {"keepdims": 0})
    np.testing.assert_array_equal(got, np.array([-1, 3, 3], np.int32))
    np.testing.assert_array_equal(got, want)


def test_reduce_u64_order():
    x = np.array([[1, 2**63 + 5, 7], [2**64 - 1, 0, 3]], np.uint64)
    got = kiln_run("ReduceMax", [("x", x), ("axes", np.array([1]))], consts=("axes",))
    np.testing.assert_array_equal(got, x.max(axis=1, keepdims=True))
    got = kiln_run("ReduceMin", [("x", x), ("axes", np.array([0]))], consts=("axes",))
    np.testing.assert_array_equal(got, x.min(axis=0, keepdims=True))


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_bool(op):
    x = RNG.integers(0, 2, size=(3, 4)).astype(bool)
    x[0, :] = True
    x[1, :] = False
    for axes in (None, [1], [0]):
        got, want = case(op, x, axes, {})
        np.testing.assert_array_equal(got, want)


EMPTY_CASES = [((2, 0, 4), [1]), ((2, 0, 4), [0]), ((2, 0, 4), None), ((0,), None),
               ((3, 0), [1])]


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape,axes", EMPTY_CASES, ids=str)
@pytest.mark.parametrize("keep", [1, 0])
def test_reduce_empty(op, shape, axes, keep):
    x = np.zeros(shape, np.float32)
    got, want = case(op, x, axes, {"keepdims": keep})
    check_close(got, want.astype(np.float32))


def test_reduce_empty_identities():
    """The identities themselves, independent of the reference evaluator."""
    x = np.zeros((2, 0), np.float32)
    want = {"ReduceSum": 0, "ReduceProd": 1, "ReduceMax": -np.inf, "ReduceMin": np.inf,
            "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf, "ReduceL1": 0, "ReduceL2": 0,
            "ReduceSumSquare": 0, "ReduceMean": np.nan}
    for op, v in want.items():
        got = kiln_run(op, [("x", x), ("axes", np.array([1]))], {"keepdims": 0}, consts=("axes",))
        np.testing.assert_array_equal(got, np.full((2,), v, np.float32), err_msg=op)
    xi = np.zeros((0, 3), np.int32)
    got = kiln_run("ReduceMax", [("x", xi), ("axes", np.array([0]))], consts=("axes",))
    np.testing.assert_array_equal(got, np.full((1, 3), np.iinfo(np.int32).min, np.int32))
    got = kiln_run("ReduceMin", [("x", xi.astype(np.uint8)), ("axes", np.array([0]))],
                   consts=("axes",))
    np.testing.assert_array_equal(got, np.full((1, 3), 255, np.uint8))


def test_reduce_nan_and_inf():
    x = np.array([[1, np.nan, 3], [-np.inf, 2, 5], [np.inf, 1, -1]], np.float32)
    for op in ("ReduceMax", "ReduceMin", "ReduceSum"):
        got, want = case(op, x, [1], {})
        check_close(got, want.astype(np.float32))
    # log-sum-exp is stable for large values and exact for infinities
    x = np.array([[1000, 1000, 999], [-np.inf, -np.inf, -np.inf], [np.inf, 0, 1]], np.float32)
    got = kiln_run("ReduceLogSumExp", [("x", x), ("axes", np.array([1]))], {"keepdims": 0},
                   consts=("axes",))
    x64 = x[0].astype(np.float64)
    want0 = x64.max() + np.log(np.exp(x64 - x64.max()).sum())
    np.testing.assert_allclose(got[0], want0, rtol=1e-6)
    assert got[1] == -np.inf and got[2] == np.inf


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2"])
@pytest.mark.parametrize("axes", [[], [1], [0, -1]], ids=str)
@pytest.mark.parametrize("attrs", KEEP, ids=str)
def test_reduce_runtime_axes(op, axes, attrs):
    """axes as a graph input: the type is only known at run time."""
    x = data_for(op, (3, 4, 5))
    got, want = case(op, x, axes, attrs, axes_const=False)
    check_close(got, want.astype(np.float32))


def test_reduce_inference():
    x = np.zeros((2, 3, 8), np.float32)
    syms = ["b", "s"]
    dims = {"x": ["b", "s", 8]}
    ax = [("x", x), ("axes", np.array([-1], np.int64))]
    t = infer_types(kir_node("ReduceMean", ax, consts=("axes",), dims=dims, syms=syms))
    assert t["y"] == "f32[b, s, 1]"
    t = infer_types(kir_node("ReduceSum", ax, {"keepdims": 0}, consts=("axes",), dims=dims,
                             syms=syms))
    assert t["y"] == "f32[b, s]"
    ax0 = [("x", x), ("axes", np.array([0, 1], np.int64))]
    t = infer_types(kir_node("ReduceMax", ax0, {"keepdims": 0}, consts=("axes",), dims=dims,
                             syms=syms))
    assert t["y"] == "f32[8]"
    t = infer_types(kir_node("ReduceL2", [("x", x)], {"keepdims": 0}, dims=dims, syms=syms))
    assert t["y"] == "f32[]"
    t = infer_types(kir_node("ReduceL1", [("x", x)], {"noop_with_empty_axes": 1}, dims=dims,
                             syms=syms))
    assert t["y"] == "f32[b, s, 8]"
    # runtime axes: rank known, dims not
    t = infer_types(kir_node("ReduceSum", ax, {"keepdims": 0}, dims=dims, syms=syms))
    assert t["y"] == "f32[?, ?]"
    t = infer_types(kir_node("ReduceSum", ax, dims=dims, syms=syms))
    assert t["y"] == "f32[?, ?, ?]"


@pytest.mark.parametrize("op,x,axes,needle", [
    ("ReduceSum", np.zeros((2, 3), np.float32), [2], "out of range"),
    ("ReduceSum", np.zeros((2, 3), np.float32), [-3], "out of range"),
    ("ReduceMean", np.zeros((2, 3), np.float32), [1, -1], "twice"),
    ("ReduceLogSum", np.zeros((2, 3), np.int32), [1], "i32"),
    ("ReduceLogSumExp", np.zeros((2, 3), np.int64), [1], "i64"),
    ("ReduceSum", np.zeros((2, 3), bool), [1], "bool"),
    ("ReduceProd", np.zeros((2, 3), np.float32), np.zeros((1, 1), np.int64), "1-D"),
])
def test_reduce_errors(op, x, axes, needle):
    ins = [("x", x), ("axes", np.asarray(axes, np.int64))]
    kiln_fails(kir_node(op, ins, consts=("axes",)), op, needle)


def test_reduce_runtime_axis_error():
    """Bad axes known only at run time are reported, not crashed on."""
    x = np.zeros((2, 3), np.float32)
    text = kir_node("ReduceSum", [("x", x), ("axes", np.array([5], np.int64))])
    with pytest.raises(AssertionError, match="out of range"):
        eval_kir(text, {"x": x, "axes": np.array([5], np.int64)})


REDUCE_NODE_TESTS = node_cases(["test_reduce_"])


@pytest.mark.skipif(not REDUCE_NODE_TESTS, reason="ONNX node test data not extracted")
@pytest.mark.parametrize("name", REDUCE_NODE_TESTS)
@pytest.mark.parametrize("axes_const", [True, False])
def test_onnx_node_data(name, axes_const):
    op, ins, attrs, want = load_node_case(name)
    consts = ("in1",) if axes_const else ()
    got = kiln_run(op, ins, attrs, consts=consts)
    check_close(got, want)
