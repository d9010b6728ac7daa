"""MatMul, Gemm, FusedMatMul, Einsum, Linear and Dequantize against numpy,
onnx's ReferenceEvaluator, onnxruntime and the gguf package.

Each case builds the op twice: as a single-node ONNX model (run by the
reference) and as .kir text (run by `kiln eval`)."""
import glob
import os
import re
import tempfile

import gguf
import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from kiln_util import ROOT, eval_kir, run_kiln

RNG = np.random.default_rng(1234)
NODE_DATA = os.path.join(ROOT, ".cache", "onnx-testdata", "usr", "share", "libonnx-testdata",
                         "data", "node")

KIR_DT = {np.float32: "f32", np.float16: "f16", np.float64: "f64", np.int8: "i8",
          np.uint8: "u8", np.int16: "i16", np.uint16: "u16", np.int32: "i32",
          np.uint32: "u32", np.int64: "i64", np.uint64: "u64", np.bool_: "bool"}


def kir_type(arr, dims=None):
    dims = arr.shape if dims is None else dims
    return f"{KIR_DT[arr.dtype.type]}[{', '.join(map(str, dims))}]"


def kir_attr(k, v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        return f'{k} = "{v}"'
    if isinstance(v, float):  # ONNX float attributes are float32
        return f"{k} = {float(np.float32(v))!r}"
    if isinstance(v, (list, tuple)):
        return f"{k} = [{', '.join(map(str, v))}]"
    return f"{k} = {int(v)}"


def kir_node(op, inputs, attrs=None, consts=(), dims=None, syms=()):
    """.kir text for one node. inputs: list of (name, array or None);
    names in `consts` become constants, the rest graph inputs; dims maps a
    name to declared (possibly symbolic) dims."""
    dims = dims or {}
    lines = ["kir 1", 'graph "g" {']
    if syms:
        lines.append("  sym " + ", ".join(syms))
    for name, arr in inputs:
        if arr is None:
            continue
        if name in consts:
            data = np.ascontiguousarray(arr).tobytes().hex()
            lines.append(f'  const %{name} : {kir_type(arr)} = hex "{data}"')
        else:
            lines.append(f"  input %{name} : {kir_type(arr, dims.get(name))}")
    args = ", ".join("_" if a is None else f"%{n}" for n, a in inputs)
    at = ""
    if attrs:
        at = " {" + ", ".join(kir_attr(k, v) for k, v in attrs.items()) + "}"
    lines.append(f"  %y = {op}({args}){at}")
    lines.append("  output %y")
    lines.append("}")
    return "\n".join(lines) + "\n"


def kiln_run(op, inputs, attrs=None, consts=(), **kw):
    text = kir_node(op, inputs, attrs, consts, **kw)
    feeds = {n: a for n, a in inputs if a is not None and n not in consts}
    return eval_kir(text, feeds)["y"]


def onnx_ref(op, inputs, attrs=None, domain="", opset=None):
    """Output of the single-node ONNX model on onnx's ReferenceEvaluator."""
    names = [n if a is not None else "" for n, a in inputs]
    node = helper.make_node(op, names, ["y"], domain=domain or None, **(attrs or {}))
    vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
          for n, a in inputs if a is not None]
    out = helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None)
    g = helper.make_graph([node], "g", vi, [out])
    ops = [helper.make_opsetid("", opset or 21)]
    if domain:
        ops.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(g, opset_imports=ops)
    return model, ReferenceEvaluator(model).run(None, {n: a for n, a in inputs if a is not None})[0]


def infer_types(text):
    """Types `kiln ir` infers: dict value name -> type text."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.kir")
        with open(p, "w") as f:
            f.write(text)
        out = run_kiln("ir", p).stdout
    return dict(re.findall(r"%(\w+) : ([^=\n]+?) = ", out))


def kiln_fails(text, *needles):
    """`kiln eval` rejects the model with exit code 2 and a one-line message."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.kir")
        with open(p, "w") as f:
            f.write(text)
        r = run_kiln("eval", p, check=False)
    assert r.returncode == 2, r.stderr
    msg = r.stderr.strip()
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def rnd(shape, dtype=np.float32):
    if np.issubdtype(dtype, np.integer):
        return RNG.integers(-5, 6, size=shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def tol(dtype):
    return {np.float16: 2e-3, np.float64: 1e-12}.get(np.dtype(dtype).type, 1e-5)


def check_close(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got, want)
    else:
        t = tol(want.dtype)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=t * 10,
                                   atol=t * 10)


# ---------------------------------------------------------------- MatMul

MATMUL_CASES = [
    ((3, 4), (4, 5), np.float32),
    ((4,), (4,), np.float32),
    ((4,), (2, 4, 5), np.float32),
    ((2, 3, 4), (4,), np.float32),
    ((2, 1, 3, 4), (5, 4, 2), np.float32),
    ((3, 4), (2, 4, 5), np.float32),
    ((1, 3, 4), (6, 4, 2), np.float64),
    ((2, 3, 8), (8, 5), np.float16),
    ((3, 4), (4, 5), np.int32),
    ((2, 3, 4), (2, 4, 5), np.int64),
    ((3, 4), (4, 2), np.uint32),
    ((3, 0), (0, 4), np.float32),  # K = 0: zeros
    ((0, 4), (4, 3), np.float32),  # M = 0
    ((2, 0, 3, 4), (4, 5), np.float32),  # empty batch
]


@pytest.mark.parametrize("sa,sb,dt", MATMUL_CASES)
def test_matmul(sa, sb, dt):
    a, b = rnd(sa, dt), rnd(sb, dt)
    _, want = onnx_ref("MatMul", [("a", a), ("b", b)])
    got = kiln_run("MatMul", [("a", a), ("b", b)])
    check_close(got, want.astype(dt))
    # numpy agrees on what the reference computes
    check_close(got, np.matmul(a, b).astype(dt))


def test_matmul_int_wraps():
    a = np.array([[2**31 - 1, 2]], np.int32)
    b = np.array([[3], [5]], np.int32)
    got = kiln_run("MatMul", [("a", a), ("b", b)])
    np.testing.assert_array_equal(got, np.matmul(a, b))  # numpy wraps too


def test_matmul_symbolic_inference():
    x, w = rnd((2, 3, 4)), rnd((4, 5))
    text = kir_node("MatMul", [("x", x), ("w", w)], dims={"x": ["b", "s", 4]}, syms=["b", "s"])
    assert infer_types(text)["y"] == "f32[b, s, 5]"
    text = kir_node("MatMul", [("x", x), ("w", rnd((1, 4, 5)))],
                    dims={"x": ["b", "s", 4], "w": [1, 4, "n"]}, syms=["b", "s", "n"])
    assert infer_types(text)["y"] == "f32[b, s, n]"
    # the symbolic model runs and binds b, s from the input
    got = eval_kir(kir_node("MatMul", [("x", x), ("w", w)], dims={"x": ["b", "s", 4]},
                            syms=["b", "s"]), {"x": x, "w": w})["y"]
    check_close(got, x @ w)


def test_matmul_errors():
    kiln_fails(kir_node("MatMul", [("a", rnd((3, 4))), ("b", rnd((5, 2)))]), "MatMul", "4", "5")
    kiln_fails(kir_node("MatMul", [("a", rnd((3, 4))), ("b", rnd((4, 2), np.float64))]),
               "MatMul")
    kiln_fails(kir_node("MatMul", [("a", rnd((2, 3, 4))), ("b", rnd((3, 4, 2)))]), "broadcast")
    kiln_fails(kir_node("MatMul", [("a", np.float32(1.0).reshape(())), ("b", rnd((4,)))]),
               "rank")


# ---------------------------------------------------------------- Gemm

GEMM_CASES = [
    ((3, 4), (4, 5), None, {}),
    ((3, 4), (4, 5), (5,), {}),
    ((3, 4), (4, 5), (3, 5), {"alpha": 0.5, "beta": 2.0}),
    ((4, 3), (4, 5), (3, 1), {"transA": 1}),
    ((3, 4), (5, 4), (1, 5), {"transB": 1, "beta": -1.5}),
    ((4, 3), (5, 4), (), {"transA": 1, "transB": 1, "alpha": 0.25, "beta": 0.35}),
    ((3, 4), (4, 5), (1,), {}),
    ((3, 0), (0, 5), (5,), {}),
]


@pytest.mark.parametrize("sa,sb,sc,attrs", GEMM_CASES)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gemm(sa, sb, sc, attrs, dt):
    ins = [("a", rnd(sa, dt)), ("b", rnd(sb, dt))]
    if sc is not None:
        ins.append(("c", rnd(sc, dt)))
    _, want = onnx_ref("Gemm", ins, attrs)
    check_close(kiln_run("Gemm", ins, attrs), want.astype(dt))


def test_gemm_int_and_f16():
    ins = [("a", rnd((3, 4), np.int32)), ("b", rnd((4, 2), np.int32)), ("c", rnd((2,), np.int32))]
    a, b, c = (x for _, x in ins)
    np.testing.assert_array_equal(kiln_run("Gemm", ins), a @ b + c)
    ins = [("a", rnd((3, 8), np.float16)), ("b", rnd((2, 8), np.float16))]
    want = (ins[0][1].astype(np.float64) @ ins[1][1].astype(np.float64).T * 2).astype(np.float16)
    check_close(kiln_run("Gemm", ins, {"transB": 1, "alpha": 2.0}), want)


def test_gemm_beta_zero_ignores_c():
    a, b = rnd((2, 3)), rnd((3, 4))
    c = np.full((2, 4), np.nan, np.float32)
    got = kiln_run("Gemm", [("a", a), ("b", b), ("c", c)], {"beta": 0.0})
    check_close(got, a @ b)


def test_gemm_errors():
    kiln_fails(kir_node("Gemm", [("a", rnd((2, 3, 4))), ("b", rnd((4, 5)))]), "Gemm", "2-D")
    kiln_fails(kir_node("Gemm", [("a", rnd((3, 4))), ("b", rnd((4, 5))), ("c", rnd((2, 5)))]),
               "Gemm", "broadcast")
    kiln_fails(kir_node("Gemm", [("a", rnd((3, 4))), ("b", rnd((4, 5)))], {"transB": 1}), "Gemm")


# ---------------------------------------------------------------- FusedMatMul

def ort_fused(a, b, attrs):
    import onnxruntime as ort
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", **attrs)
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, x.shape)
          for n, x in (("a", a), ("b", b))]
    g = helper.make_graph([node], "g", vi,
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.microsoft", 1)])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"a": a, "b": b})[0]


def fused_numpy(a, b, attrs):
    """Independent statement of the contrib spec: transBatch moves dim 0 just
    before the matrix dims, trans swaps the last two; vectors stay put."""
    def eff(x, t, tb):
        r = x.ndim
        if r < 2:
            return x
        perm = list(range(r))
        if tb:
            perm = perm[1:r - 1] + [0, r - 1]
        if t:
            perm[-1], perm[-2] = perm[-2], perm[-1]
        return x.transpose(perm)
    return attrs.get("alpha", 1.0) * np.matmul(
        eff(a.astype(np.float64), attrs.get("transA", 0), attrs.get("transBatchA", 0)),
        eff(b.astype(np.float64), attrs.get("transB", 0), attrs.get("transBatchB", 0)))


FUSED_CASES = [
    ((3, 4), (4, 5), {}),
    ((4, 3), (4, 5), {"transA": 1, "alpha": 0.5}),
    ((2, 3, 4), (2, 5, 4), {"transB": 1}),
    ((2, 4, 3), (4, 5), {"transA": 1, "alpha": -2.0}),
    ((3, 2, 4), (2, 4, 5), {"transBatchA": 1}),
    ((4, 2, 3), (2, 4, 5), {"transBatchA": 1, "transA": 1}),
    ((2, 3, 4), (4, 2, 5), {"transBatchB": 1}),
    ((2, 3, 4), (5, 2, 4), {"transBatchB": 1, "transB": 1, "alpha": 0.125}),
    ((3, 2, 6, 4), (2, 6, 4, 5), {"transBatchA": 1}),
    ((3, 2, 6, 4), (5, 2, 6, 4), {"transBatchA": 1, "transBatchB": 1, "transB": 1}),
    ((3, 4), (4,), {}),
    ((4,), (5, 4), {"transB": 1}),
]


@pytest.mark.parametrize("sa,sb,attrs", FUSED_CASES)
def test_fusedmatmul(sa, sb, attrs):
    a, b = rnd(sa), rnd(sb)
    got = kiln_run("FusedMatMul", [("a", a), ("b", b)], attrs)
    want = ort_fused(a, b, attrs)
    check_close(got, want)
    check_close(got, fused_numpy(a, b, attrs).astype(np.float32))


def test_fusedmatmul_trans_vector():
    # onnxruntime's CPU kernel ignores transA when B is a vector (it reads A's
    # memory untransposed) although its shape inference transposes; kiln
    # follows the spec: op(A) = A^T.
    a, b = rnd((4, 3)), rnd((4,))
    got = kiln_run("FusedMatMul", [("a", a), ("b", b)], {"transA": 1})
    check_close(got, fused_numpy(a, b, {"transA": 1}).astype(np.float32))


def test_fusedmatmul_inference():
    a, b = rnd((3, 2, 6, 4)), rnd((2, 6, 4, 5))
    text = kir_node("FusedMatMul", [("a", a), ("b", b)], {"transBatchA": 1},
                    dims={"a": ["s", "h", 6, 4], "b": ["h", 6, 4, 5]}, syms=["s", "h"])
    assert infer_types(text)["y"] == "f32[h, 6, s, 5]"


# ---------------------------------------------------------------- Einsum

EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(4, 4)]),
    ("iij->j", [(3, 3, 5)]),
    ("iji->ij", [(3, 2, 3)]),
    ("...ii->...i", [(2, 3, 4, 4)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("...ij,...jk", [(2, 1, 3, 4), (5, 4, 2)]),
    ("i...,i...->...", [(3, 2, 4), (3, 4)]),
    ("ij...->ji...", [(2, 3, 4, 5)]),
    ("i,i", [(5,), (5,)]),
    ("i,i->", [(5,), (5,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij->", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("->", [()]),
    (",->", [(), ()]),
    ("ba,Ab", [(2, 3), (4, 2)]),
    ("abc,cd,de->ae", [(2, 3, 4), (4, 5), (5, 6)]),
    ("ij,ij->ij", [(1, 3), (2, 3)]),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("i j , j k -> i k", [(2, 3), (3, 2)]),
    ("ij,jk->ik", [(3, 0), (0, 2)]),
    ("a,b,c,d,e->abcde", [(2,), (1,), (3,), (2,), (2,)]),
    ("i...j,j...k->i...k", [(2, 3, 4), (4, 3, 5)]),
    ("i...j,j...k", [(2, 1, 4), (4, 3, 5)]),
    ("a...,...a->...", [(3, 2, 2), (2, 3)]),
    ("ij,jk,kl,lm,mn->in", [(2, 3), (3, 2), (2, 2), (2, 3), (3, 1)]),
    ("iii->i", [(3, 3, 3)]),
    ("ijji->ij", [(2, 3, 3, 2)]),
    ("...", [(2, 3)]),
    ("ij,ij,ij->", [(2, 3), (2, 1), (1, 3)]),
]


@pytest.mark.parametrize("eq,shapes", EINSUM_CASES)
def test_einsum(eq, shapes):
    ins = [(f"x{i}", rnd(s)) for i, s in enumerate(shapes)]
    got = kiln_run("Einsum", ins, {"equation": eq})
    want = np.einsum(eq, *[x.astype(np.float64) for _, x in ins]).astype(np.float32)
    check_close(got, np.asarray(want))


def test_einsum_reference_evaluator():
    ins = [("x0", rnd((2, 3, 4))), ("x1", rnd((2, 4, 5)))]
    _, want = onnx_ref("Einsum", ins, {"equation": "bij,bjk->bik"})
    check_close(kiln_run("Einsum", ins, {"equation": "bij,bjk->bik"}), want)


@pytest.mark.parametrize("dt", [np.int32, np.int64, np.float64, np.float16])
def test_einsum_dtypes(dt):
    ins = [("x0", rnd((3, 4), dt)), ("x1", rnd((4, 4, 2), dt))]
    got = kiln_run("Einsum", ins, {"equation": "ij,jjk->ik"})
    want = np.einsum("ij,jjk->ik", *[x.astype(np.float64) for _, x in ins]).astype(dt)
    check_close(got, want)


def test_einsum_symbolic():
    ins = [("q", rnd((1, 2, 3, 4))), ("k", rnd((1, 2, 5, 4)))]
    text = kir_node("Einsum", ins, {"equation": "bhqd,bhkd->bhqk"},
                    dims={"q": ["b", 2, "s", 4], "k": ["b", 2, "t", 4]}, syms=["b", "s", "t"])
    assert infer_types(text)["y"] == "f32[b, 2, s, t]"


@pytest.mark.parametrize("eq,shapes,needle", [
    ("ij,jk->il", [(2, 3), (3, 4)], "'l'"),
    ("ij,jk->ik", [(2, 3)], "terms"),
    ("ij->ik", [(2, 3)], "'k'"),
    ("ijk->i", [(2, 3)], "rank"),
    ("ij,jk->ik", [(2, 3), (4, 5)], "size"),
    ("...ij->ij", [(2, 3, 4)], "..."),
    ("ij->ii", [(2, 3)], "repeated"),
    ("i..j->ij", [(2, 3)], "..."),
    ("i1->i", [(2, 3)], "character"),
    ("ii->i", [(2, 3)], "Einsum"),
])
def test_einsum_errors(eq, shapes, needle):
    ins = [(f"x{i}", rnd(s)) for i, s in enumerate(shapes)]
    kiln_fails(kir_node("Einsum", ins, {"equation": eq}), "Einsum", needle)


# ---------------------------------------------------------------- ONNX node tests

def node_cases(prefixes):
    out = []
    for d in sorted(glob.glob(os.path.join(NODE_DATA, "test_*"))):
        name = os.path.basename(d)
        if name.endswith("_expanded") or not any(name.startswith(p) for p in prefixes):
            continue
        out.append(name)
    return out


def load_node_case(name):
    d = os.path.join(NODE_DATA, name)
    model = onnx.load(os.path.join(d, "model.onnx"))
    node = model.graph.node[0]
    feeds = {}
    for i, gi in enumerate(model.graph.input):
        t = onnx.TensorProto()
        with open(os.path.join(d, "test_data_set_0", f"input_{i}.pb"), "rb") as f:
            t.ParseFromString(f.read())
        feeds[gi.name] = numpy_helper.to_array(t)
    ins = [(f"in{i}", feeds[n] if n else None) for i, n in enumerate(node.input)]
    t = onnx.TensorProto()
    with open(os.path.join(d, "test_data_set_0", "output_0.pb"), "rb") as f:
        t.ParseFromString(f.read())
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return node.op_type, ins, attrs, numpy_helper.to_array(t)


LINALG_NODE_TESTS = node_cases(["test_matmul_", "test_gemm_", "test_einsum_"])


@pytest.mark.skipif(not LINALG_NODE_TESTS, reason="ONNX node test data not extracted")
@pytest.mark.parametrize("name", LINALG_NODE_TESTS)
def test_onnx_node_data(name):
    op, ins, attrs, want = load_node_case(name)
    if op == "MatMul" and name == "test_matmulinteger":
        pytest.skip("MatMulInteger is not a linalg op here")
    check_close(kiln_run(op, ins, attrs), want)


# ---------------------------------------------------------------- Linear / Dequantize

QTYPES = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
          "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_k": gguf.GGMLQuantizationType.Q4_K,
          "q6_k": gguf.GGMLQuantizationType.Q6_K}


def make_quant(qname, n, k):
    """Quantized bytes of an [n, k] weight and its dequantized value (both
    from the gguf package). gguf cannot quantize to the k-quants, so those
    get random blocks with sane f16 scales: every bit pattern of the other
    fields is a valid block."""
    qt = QTYPES[qname]
    if qname in ("q4_k", "q6_k"):
        blk, bb = gguf.GGML_QUANT_SIZES[qt]
        raw = RNG.integers(0, 256, size=(n, k // blk, bb), dtype=np.uint8)
        scale = (RNG.uniform(0.001, 0.02, size=(n, k // blk)).astype(np.float16)
                 .view(np.uint8).reshape(n, k // blk, 2))
        if qname == "q4_k":  # d, dmin first
            raw[:, :, 0:2] = scale
            dmin = (RNG.uniform(0.0, 0.02, size=(n, k // blk)).astype(np.float16)
                    .view(np.uint8).reshape(n, k // blk, 2))
            raw[:, :, 2:4] = dmin
        else:  # d last
            raw[:, :, bb - 2:bb] = scale
        q = raw.reshape(n, k // blk * bb)
    else:
        q = gguf.quants.quantize(rnd((n, k)), qt)
    return q, gguf.quants.dequantize(q, qt).astype(np.float32)


def linear_kir(x_dims, n, k, wtype, wdecl, bias=None, x_dt="f32", syms=()):
    lines = ["kir 1", 'graph "g" {']
    if syms:
        lines.append("  sym " + ", ".join(syms))
    lines.append(f"  input %x : {x_dt}[{', '.join(map(str, x_dims))}]")
    lines.append(f"  {wdecl}")
    args = "%x, %w"
    if bias is not None:
        lines.append(f'  const %bias : {kir_type(bias)} = hex "{bias.tobytes().hex()}"')
        args += ", %bias"
    lines.append(f"  %y = Linear({args})")
    lines.append("  output %y")
    lines.append("}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("qname", list(QTYPES))
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_quant(qname, with_bias):
    n, k = 5, 512
    q, wf = make_quant(qname, n, k)
    x = rnd((2, 3, k))
    bias = rnd((n,)) if with_bias else None
    text = linear_kir([2, 3, k], n, k, qname,
                      f'const %w : {qname}[{n}, {k}] = hex "{q.tobytes().hex()}"', bias)
    got = eval_kir(text, {"x": x})["y"]
    want = x.astype(np.float64) @ wf.astype(np.float64).T
    if with_bias:
        want = want + bias
    assert got.dtype == np.float32 and got.shape == (2, 3, n)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("qname", ["q4_0", "q8_0", "q6_k"])
def test_linear_weight_file(qname, tmp_path):
    n, k = 7, 256
    q, wf = make_quant(qname, n, k)
    pad = b"\xab" * 96  # the weight sits at an offset, as in a GGUF file
    (tmp_path / "w.bin").write_bytes(pad + q.tobytes())
    x = rnd((4, k))
    text = linear_kir(["s", k], n, k, qname,
                      f'weight %w : {qname}[{n}, {k}] @ "w.bin" offset {len(pad)}', syms=["s"])
    assert infer_types(text.replace('"w.bin"', f'"{tmp_path}/w.bin"'))["y"] == f"f32[s, {n}]"
    got = eval_kir(text, {"x": x}, tmpdir=str(tmp_path))["y"]
    np.testing.assert_allclose(got, x.astype(np.float64) @ wf.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("wdt", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("xdt", ["f32", "f16"])
def test_linear_float_weights(wdt, xdt):
    n, k = 6, 10
    npdt = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}[wdt]
    w = rnd((n, k)).astype(npdt)
    x = rnd((3, k)).astype(np.float16 if xdt == "f16" else np.float32)
    bias = rnd((n,))
    text = linear_kir([3, k], n, k, wdt, f'const %w : {wdt}[{n}, {k}] = hex "{w.tobytes().hex()}"',
                      bias, x_dt=xdt)
    got = eval_kir(text, {"x": x})["y"]
    want = x.astype(np.float64) @ w.astype(np.float64).T + bias
    assert got.dtype == x.dtype
    t = 2e-3 if xdt == "f16" else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=t, atol=t)


def test_linear_bf16_activations():
    n, k = 4, 64
    q, wf = make_quant("q8_0", n, k)
    x = rnd((2, k))
    text = ("kir 1\ngraph \"g\" {\n  input %x : f32[2, 64]\n"
            f'  const %w : q8_0[{n}, {k}] = hex "{q.tobytes().hex()}"\n'
            "  %xb = Cast(%x) {to = bf16}\n  %yb = Linear(%xb, %w)\n"
            "  %y = Cast(%yb) {to = f32}\n  output %y\n}\n")
    assert infer_types(text)["yb"] == "bf16[2, 4]"
    got = eval_kir(text, {"x": x})["y"]
    xb = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    want = (xb @ wf.astype(np.float64).T).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_linear_vector_and_empty():
    n, k = 3, 32
    q, wf = make_quant("q4_1", n, k)
    wdecl = f'const %w : q4_1[{n}, {k}] = hex "{q.tobytes().hex()}"'
    x = rnd((k,))
    got = eval_kir(linear_kir([k], n, k, "q4_1", wdecl), {"x": x})["y"]
    np.testing.assert_allclose(got, x.astype(np.float64) @ wf.T, rtol=1e-5, atol=1e-4)
    got = eval_kir(linear_kir([0, k], n, k, "q4_1", wdecl), {"x": np.zeros((0, k), np.float32)})
    assert got["y"].shape == (0, n)


def test_linear_large_is_fast():
    """A projection of a small LLM's size (1536x576, q8_0, 16 tokens) must
    take well under a second in the reference kernel."""
    import time
    n, k = 1536, 576
    q, wf = make_quant("q8_0", n, k)
    x = rnd((16, k))
    text = linear_kir([16, k], n, k, "q8_0", f'const %w : q8_0[{n}, {k}] = hex "{q.tobytes().hex()}"')
    t0 = time.time()
    got = eval_kir(text, {"x": x})["y"]
    dt = time.time() - t0
    np.testing.assert_allclose(got, x.astype(np.float64) @ wf.astype(np.float64).T, rtol=1e-5,
                               atol=1e-4)
    assert dt < 20, dt  # generous: shared CI machines; typical is a fraction of a second


def test_linear_errors():
    q, _ = make_quant("q4_0", 2, 64)
    wdecl = f'const %w : q4_0[2, 64] = hex "{q.tobytes().hex()}"'
    kiln_fails(linear_kir([3, 32], 2, 64, "q4_0", wdecl), "Linear", "64")
    kiln_fails(linear_kir([3, 64], 2, 64, "q4_0", wdecl, bias=rnd((3,))), "Linear", "bias")
    kiln_fails(linear_kir([3, 64], 2, 64, "q4_0", wdecl, x_dt="i32"), "Linear")
    w3 = rnd((2, 4, 4))
    kiln_fails(linear_kir([3, 4], 2, 4, "f32", f'const %w : f32[2, 4, 4] = hex "{w3.tobytes().hex()}"'),
               "Linear", "2-D")


@pytest.mark.parametrize("qname", list(QTYPES))
def test_dequantize(qname):
    q, wf = make_quant(qname, 3, 512)
    text = ("kir 1\ngraph \"g\" {\n"
            f'  const %w : {qname}[3, 512] = hex "{q.tobytes().hex()}"\n'
            "  %y = Dequantize(%w)\n  output %y\n}\n")
    assert infer_types(text)["y"] == "f32[3, 512]"
    got = eval_kir(text, {})["y"]
    np.testing.assert_array_equal(got, wf)


@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_dequantize_half(dt):
    npdt = np.float16 if dt == "f16" else ml_dtypes.bfloat16
    w = rnd((2, 3, 5)).astype(npdt)
    text = ("kir 1\ngraph \"g\" {\n"
            f'  const %w : {dt}[2, 3, 5] = hex "{w.tobytes().hex()}"\n'
            "  %y = Dequantize(%w)\n  output %y\n}\n")
    np.testing.assert_array_equal(eval_kir(text, {})["y"], w.astype(np.float32))


def test_dequantize_rejects_ints():
    text = ("kir 1\ngraph \"g\" {\n  input %w : i32[2, 4]\n"
            "  %y = Dequantize(%w)\n  output %y\n}\n")
    kiln_fails(text, "Dequantize", "i32")
