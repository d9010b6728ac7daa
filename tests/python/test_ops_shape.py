"""Shape and data-movement ops (Reshape, Transpose, Concat, Split, Slice,
Gather*, Scatter*, Expand, Squeeze, Unsqueeze, Flatten, Shape, Size, Tile,
Pad) against onnx's ReferenceEvaluator (opset 24) and numpy, plus the
static types `kiln ir` infers for symbolic shapes.

Every case builds the op twice: a single-node ONNX model for the reference
and .kir text for `kiln eval`. Symbolic types are checked by evaluating the
printed dims at several bindings and comparing with the shapes numpy gives
at those sizes."""
import itertools
import os
import re
import tempfile

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from kiln_util import ROOT, eval_kir, run_kiln
from test_ops_linalg import QTYPES, infer_types, load_node_case, make_quant, node_cases

OPSET = 24
RNG = np.random.default_rng(2024)
I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min

KIR_DT = {np.float32: "f32", np.float16: "f16", np.float64: "f64", np.int8: "i8",
          np.uint8: "u8", np.int16: "i16", np.uint16: "u16", np.int32: "i32",
          np.uint32: "u32", np.int64: "i64", np.uint64: "u64", np.bool_: "bool",
          ml_dtypes.bfloat16: "bf16"}


class Dt(str):
    """A dtype-kind attribute value for .kir (printed bare: `to = f16`)."""


class F64(float):
    """A float attribute kept in double precision (kiln's own attributes)."""


# ---------------------------------------------------------------- helpers

def kir_type(arr, dims=None):
    dims = arr.shape if dims is None else dims
    return f"{KIR_DT[arr.dtype.type]}[{', '.join(map(str, dims))}]"


def kir_attr(k, v):
    if isinstance(v, Dt):
        return f"{k} = {v}"
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        return f'{k} = "{v}"'
    if isinstance(v, F64):
        return f"{k} = {float(v)!r}"
    if isinstance(v, float):  # ONNX float attributes are float32
        return f"{k} = {float(np.float32(v))!r}"
    if isinstance(v, (list, tuple)):
        return f"{k} = [{', '.join(str(int(x)) for x in v)}]"
    return f"{k} = {int(v)}"


def out_names(nout):
    return ["y"] if nout == 1 else [f"y{i}" for i in range(nout)]


def kir_graph(op, inputs, attrs=None, consts=(), dims=None, syms=(), nout=1):
    """.kir text for one node. inputs: list of (name, array or None); names
    in `consts` become constants, the rest graph inputs; dims maps a name to
    declared (possibly symbolic) dims."""
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
    while inputs and inputs[-1][1] is None:
        inputs = inputs[:-1]
    args = ", ".join("_" if a is None else f"%{n}" for n, a in inputs)
    at = ""
    if attrs:
        at = " {" + ", ".join(kir_attr(k, v) for k, v in attrs.items()) + "}"
    outs = out_names(nout)
    lines.append(f"  {', '.join('%' + o for o in outs)} = {op}({args}){at}")
    lines.append(f"  output {', '.join('%' + o for o in outs)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def kiln(op, inputs, attrs=None, consts=(), nout=1, **kw):
    """Outputs of `kiln eval` on the one-node graph, as a list."""
    text = kir_graph(op, inputs, attrs, consts, nout=nout, **kw)
    feeds = {n: a for n, a in inputs if a is not None and n not in consts}
    res = eval_kir(text, feeds)
    return [res[o] for o in out_names(nout)]


def ref(op, inputs, attrs=None, nout=1, opset=OPSET):
    """Outputs of the single-node ONNX model on onnx's ReferenceEvaluator."""
    names = [n if a is not None else "" for n, a in inputs]
    while names and not names[-1]:
        names.pop()
    outs = out_names(nout)
    node = helper.make_node(op, names, outs, **(attrs or {}))
    vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
          for n, a in inputs if a is not None]
    ovi = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs]
    g = helper.make_graph([node], "g", vi, ovi)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: a for n, a in inputs if a is not None}
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


def same(got, want):
    """Data movement is exact: same shape, dtype and bits (NaN == NaN)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want)


def check(op, inputs, attrs=None, consts=(), nout=1, kiln_attrs=None):
    """kiln and the reference agree exactly on every output."""
    want = ref(op, inputs, attrs, nout)
    got = kiln(op, inputs, kiln_attrs if kiln_attrs is not None else attrs, consts, nout)
    for g, w in zip(got, want):
        same(g, w)
    return got


def kiln_rejects(text, *needles):
    """`kiln eval` rejects the model with exit code 2 and one line naming
    the problem (inputs are zero-filled from the declared static shapes)."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.kir")
        with open(p, "w") as f:
            f.write(text)
        r = run_kiln("eval", p, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    msg = r.stderr.strip()
    assert msg and "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def kiln_rejects_run(op, inputs, attrs=None, consts=(), nout=1, *needles):
    """Like kiln_rejects, but the error comes while running real inputs."""
    text = kir_graph(op, inputs, attrs, consts, nout=nout)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.kir")
        with open(p, "w") as f:
            f.write(text)
        args = ["eval", p, "--output-dir", os.path.join(d, "out")]
        for n, a in inputs:
            if a is not None and n not in consts:
                fn = os.path.join(d, f"{n}.npy")
                np.save(fn, a)
                args += ["--input", f"{n}={fn}"]
        r = run_kiln(*args, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    msg = r.stderr.strip()
    assert msg and "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def types_of(text):
    """Types `kiln ir` infers: dict value name -> type text (every output of
    multi-output nodes too)."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.kir")
        with open(p, "w") as f:
            f.write(text)
        out = run_kiln("ir", p).stdout
    types = {}
    for line in out.splitlines():
        lhs = line.split(" = ", 1)[0]
        for m in re.finditer(r"%(\w+) : (\w+\[[^\]]*\])", lhs):
            types[m.group(1)] = m.group(2)
    return types


def ort(op, inputs, attrs=None, nout=1, opset=OPSET):
    """Outputs of the single-node model on onnxruntime."""
    import onnxruntime
    names = [n if a is not None else "" for n, a in inputs]
    while names and not names[-1]:
        names.pop()
    outs = out_names(nout)
    node = helper.make_node(op, names, outs, **(attrs or {}))
    vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
          for n, a in inputs if a is not None]
    ovi = [onnx.ValueInfoProto(name=o) for o in outs]
    model = helper.make_model(helper.make_graph([node], "g", vi, ovi),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, {n: a for n, a in inputs if a is not None})


def dims_of(type_text):
    """'f32[batch, 6*seq]' -> ('f32', ['batch', '6*seq'])."""
    m = re.fullmatch(r"(\w+)\[(.*)\]", type_text.strip())
    assert m, type_text
    inner = m.group(2).strip()
    return m.group(1), [d.strip() for d in inner.split(",")] if inner else []


def eval_dims(type_text, env):
    """The printed dims evaluated at symbol values env (None where '?')."""
    dt, dims = dims_of(type_text)
    out = []
    for d in dims:
        if d == "?":
            out.append(None)
        else:
            assert re.fullmatch(r"[\w+\-*/() ]+", d), d
            out.append(int(eval(d.replace("/", "//"), {}, dict(env))))
    return dt, out


def rnd(shape, dtype=np.float32):
    if dtype == np.bool_:
        return RNG.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        lo = 0 if np.issubdtype(dtype, np.unsignedinteger) else -50
        return RNG.integers(lo, 50, size=shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def i64(*v):
    return np.array(v, np.int64)


DTYPES = [np.float32, np.int64, np.bool_, np.float16, np.int8, np.uint16, np.float64]


# ---------------------------------------------------------------- Reshape

RESHAPE_CASES = [
    ((2, 3, 4), [4, 6], 0),
    ((2, 3, 4), [4, -1], 0),
    ((2, 3, 4), [0, -1], 0),
    ((2, 3, 4), [-1], 0),
    ((2, 3, 4), [0, 0, 2, 2], 0),
    ((2, 3, 4), [2, 0, 4, 1], 0),
    ((2, 3, 4), [1, -1, 1, 2], 0),
    ((1,), [], 0),
    ((), [1, 1], 0),
    ((0, 3), [3, 0], 1),
    ((0, 3), [-1, 3], 0),
    ((0, 3), [0, 3], 0),
    ((2, 0, 4), [0, 4, 0], 1),
    ((4, 6), [2, 0, -1], 0),
]


@pytest.mark.parametrize("shape,target,allowzero", RESHAPE_CASES, ids=str)
def test_reshape(shape, target, allowzero):
    x = rnd(shape)
    attrs = {"allowzero": allowzero} if allowzero else {}
    check("Reshape", [("x", x), ("s", i64(*target))], attrs, consts=("s",))
    # the same with the target only known at run time
    check("Reshape", [("x", x), ("s", i64(*target))], attrs)


@pytest.mark.parametrize("dt", DTYPES)
def test_reshape_dtypes(dt):
    check("Reshape", [("x", rnd((2, 6), dt)), ("s", i64(3, -1, 2))], consts=("s",))


def test_reshape_i4_packed():
    # packed nibbles keep their order: reshape then cast back to i8
    x = RNG.integers(-8, 8, size=(3, 4)).astype(np.int8)
    text = ("kir 1\ngraph \"g\" {\n  input %x : i8[3, 4]\n  const %s : i64[2] = [2, 6]\n"
            "  %a = Cast(%x) {to = i4}\n  %b = Reshape(%a, %s)\n  %t = Transpose(%b)\n"
            "  %y = Cast(%t) {to = i8}\n  output %y\n}\n")
    same(eval_kir(text, {"x": x})["y"], x.reshape(2, 6).T.copy())


def test_reshape_errors():
    x = rnd((2, 3))
    kiln_rejects(kir_graph("Reshape", [("x", x), ("s", i64(4, 2))], consts=("s",)), "Reshape",
                 "6", "8")
    kiln_rejects(kir_graph("Reshape", [("x", x), ("s", i64(-1, -1))], consts=("s",)), "-1")
    kiln_rejects(kir_graph("Reshape", [("x", x), ("s", i64(-1, 4))], consts=("s",)),
                 "6", "4")
    kiln_rejects(kir_graph("Reshape", [("x", x), ("s", i64(3, 2, 0))], consts=("s",)),
                 "rank 2")
    kiln_rejects(kir_graph("Reshape", [("x", rnd((0, 3))), ("s", i64(0, -1))],
                           {"allowzero": 1}, consts=("s",)), "allowzero")
    kiln_rejects(kir_graph("Reshape", [("x", x), ("s", i64(2, -3))], consts=("s",)), "-3")
    kiln_rejects(kir_graph("Reshape", [("x", x), ("s", np.array([2.0, 3.0], np.float32))],
                           consts=("s",)), "shape")
    # caught at run time when the target is a graph input
    kiln_rejects_run("Reshape", [("x", x), ("s", i64(5, 1))], None, (), 1, "Reshape", "6", "5")


# ---------------------------------------------------------------- symbolic shape chains

SYM_ENVS = [{"batch": 2, "seq": 3}, {"batch": 5, "seq": 7}, {"batch": 1, "seq": 1}]


def sym_case(text, feeds_for, shapes_for, names):
    """Checks the static types of `names` against the shapes numpy gives at
    several bindings, then runs the model at one of them."""
    types = infer_types(text)
    for env in SYM_ENVS:
        want = shapes_for(env)
        for n in names:
            dt, dims = eval_dims(types[n], env)
            assert dims == list(want[n]), (n, types[n], env, want[n])
    env = SYM_ENVS[1]
    return eval_kir(text, feeds_for(env)), types


def test_shape_gather_concat_reshape_chain():
    # the exporter chain: Shape -> Gather -> Unsqueeze -> Concat -> Reshape
    text = """kir 1
graph "g" {
  sym batch, seq
  input %x : f32[batch, seq, 384]
  const %i0 : i64[] = [0]
  const %i1 : i64[] = [1]
  const %ax : i64[1] = [0]
  const %heads : i64[2] = [6, 64]
  %s = Shape(%x)
  %b = Gather(%s, %i0)
  %q = Gather(%s, %i1)
  %bu = Unsqueeze(%b, %ax)
  %qu = Unsqueeze(%q, %ax)
  %t = Concat(%bu, %qu, %heads) {axis = 0}
  %y = Reshape(%x, %t)
  %z = Transpose(%y) {perm = [0, 2, 1, 3]}
  output %z
}
"""

    def shapes(env):
        b, s = env["batch"], env["seq"]
        x = np.zeros((b, s, 384), np.float32)
        y = x.reshape(b, s, 6, 64)
        return {"s": (3,), "t": (4,), "y": y.shape, "z": y.transpose(0, 2, 1, 3).shape}

    def feeds(env):
        return {"x": rnd((env["batch"], env["seq"], 384))}

    res, types = sym_case(text, feeds, shapes, ["s", "t", "y", "z"])
    assert types["y"] == "f32[batch, seq, 6, 64]"
    assert types["z"] == "f32[batch, 6, seq, 64]"
    x = feeds(SYM_ENVS[1])
    res = eval_kir(text, x)
    b, s = SYM_ENVS[1]["batch"], SYM_ENVS[1]["seq"]
    same(res["z"], x["x"].reshape(b, s, 6, 64).transpose(0, 2, 1, 3))


def test_symbolic_reshape_minus_one_and_merge():
    text = """kir 1
graph "g" {
  sym batch, seq
  input %x : f32[batch, seq, 6, 64]
  const %i0 : i64[1] = [0]
  const %i1 : i64[1] = [1]
  const %m1 : i64[1] = [-1]
  const %t2 : i64[3] = [0, 0, -1]
  const %t3 : i64[2] = [-1, 64]
  %s = Shape(%x) {end = 2}
  %t = Concat(%s, %m1) {axis = 0}
  %a = Reshape(%x, %t)
  %c = Reshape(%x, %t2)
  %d = Reshape(%x, %t3)
  %bs = Slice(%s, %i1, %m1)
  %e = Flatten(%x) {axis = -2}
  %n = Size(%x)
  output %a, %c, %d, %e, %n
}
"""

    def shapes(env):
        b, s = env["batch"], env["seq"]
        x = np.zeros((b, s, 6, 64))
        return {"s": (2,), "t": (3,), "a": x.reshape(b, s, -1).shape,
                "c": x.reshape(b, s, -1).shape, "d": x.reshape(-1, 64).shape, "e": (b * s, 6 * 64), "n": ()}

    def feeds(env):
        return {"x": rnd((env["batch"], env["seq"], 6, 64))}

    res, types = sym_case(text, feeds, shapes, ["s", "t", "a", "c", "d", "e", "n"])
    assert types["a"] == "f32[batch, seq, 384]"
    x = feeds(SYM_ENVS[1])["x"]
    res = eval_kir(text, {"x": x})
    same(res["a"], x.reshape(5, 7, 384))
    same(res["d"], x.reshape(-1, 64))
    same(res["e"], x.reshape(35, 384))
    assert int(res["n"]) == x.size


def test_symbolic_slice_expand_tile_concat_types():
    text = """kir 1
graph "g" {
  sym batch, seq
  input %x : f32[batch, seq, 8]
  input %y : f32[batch, 1, 8]
  input %pos : f32[1, 32, 8]
  const %one : i64[1] = [1]
  const %zero : i64[1] = [0]
  const %m1 : i64[1] = [-1]
  const %big : i64[1] = [9223372036854775807]
  const %two : i64[1] = [2]
  const %rep : i64[3] = [2, 1, 3]
  %a = Slice(%x, %one, %big, %one)
  %b = Slice(%x, %m1, %big, %one)
  %c = Slice(%x, %zero, %m1, %one)
  %d = Slice(%x, %zero, %big, %one, %two)
  %s = Shape(%x)
  %sq = Slice(%s, %one, %two)
  %p = Slice(%pos, %zero, %sq, %one)
  %e = Expand(%y, %s)
  %t = Tile(%x, %rep)
  %cat = Concat(%x, %e, %y) {axis = 1}
  output %a, %b, %c, %d, %p, %e, %t, %cat
}
"""

    def shapes(env):
        b, s = env["batch"], env["seq"]
        x = np.zeros((b, s, 8))
        pos = np.zeros((1, 32, 8))
        return {"a": x[:, 1:].shape, "b": x[:, -1:].shape, "c": x[:, :-1].shape,
                "d": x[:, ::2].shape, "p": pos[:, :s].shape, "e": (b, s, 8),
                "t": (2 * b, s, 24), "cat": (b, 2 * s + 1, 8)}

    def feeds(env):
        b, s = env["batch"], env["seq"]
        return {"x": rnd((b, s, 8)), "y": rnd((b, 1, 8)), "pos": rnd((1, 32, 8))}

    res, types = sym_case(text, feeds, shapes, ["a", "b", "c", "d", "p", "e", "t", "cat"])
    assert types["b"] == "f32[batch, 1, 8]" and types["p"] == "f32[1, seq, 8]"
    f = feeds(SYM_ENVS[1])
    res = eval_kir(text, f)
    x, y, pos = f["x"], f["y"], f["pos"]
    same(res["a"], x[:, 1:])
    same(res["b"], x[:, -1:])
    same(res["c"], x[:, :-1])
    same(res["d"], x[:, ::2])
    same(res["p"], pos[:, :7])
    same(res["e"], np.broadcast_to(y, x.shape))
    same(res["t"], np.tile(x, (2, 1, 3)))
    same(res["cat"], np.concatenate([x, np.broadcast_to(y, x.shape), y], axis=1))


def test_symbolic_pad_range_constantofshape():
    text = """kir 1
graph "g" {
  sym batch, seq
  input %x : f32[batch, seq, 8]
  const %pads : i64[6] = [0, 2, 0, 0, 1, 0]
  const %i1 : i64[] = [1]
  const %z : i64[] = [0]
  const %o : i64[] = [1]
  %p = Pad(%x, %pads)
  %s = Shape(%x)
  %n = Gather(%s, %i1)
  %r = Range(%z, %n, %o)
  %c = ConstantOfShape(%s) {value = 2.5}
  const %z1 : i64[1] = [0]
  %u = Unsqueeze(%r, %z1)
  %sq = Squeeze(%u, %z1)
  output %p, %r, %c, %sq
}
"""

    def shapes(env):
        b, s = env["batch"], env["seq"]
        return {"p": (b, s + 3, 8), "r": (s,), "c": (b, s, 8), "sq": (s,)}

    def feeds(env):
        return {"x": rnd((env["batch"], env["seq"], 8))}

    res, types = sym_case(text, feeds, shapes, ["p", "r", "c", "sq"])
    f = feeds(SYM_ENVS[1])
    res = eval_kir(text, f)
    same(res["p"], np.pad(f["x"], ((0, 0), (2, 1), (0, 0))))
    same(res["r"], np.arange(7, dtype=np.int64))
    same(res["c"], np.full((5, 7, 8), 2.5, np.float32))


def test_unknown_values_give_unknown_dims():
    # targets that are graph inputs: dims unknown statically, right at run time
    text = kir_graph("Reshape", [("x", rnd((2, 3, 4))), ("s", i64(4, 6))])
    _, dims = dims_of(infer_types(text)["y"])
    assert dims == ["?", "?"]
    text = kir_graph("Squeeze", [("x", rnd((2, 1, 4)))], dims={"x": ["b", 1, 4]}, syms=["b"])
    assert infer_types(text)["y"] == "f32[*]"  # b might be 1: even the rank is unknown
    x = rnd((2, 1, 4))
    same(eval_kir(text, {"x": x})["y"], np.squeeze(x))
    text = kir_graph("Slice", [("x", rnd((5, 6))), ("st", i64(1)), ("en", i64(4))],
                     consts=("en",))
    _, dims = dims_of(infer_types(text)["y"])
    assert dims == ["?", "6"]


# ---------------------------------------------------------------- Transpose

@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))) + [None], ids=str)
def test_transpose_3d(perm):
    attrs = {"perm": list(perm)} if perm is not None else {}
    check("Transpose", [("x", rnd((2, 3, 4)))], attrs)


@pytest.mark.parametrize("dt", DTYPES)
def test_transpose_dtypes_and_ranks(dt):
    check("Transpose", [("x", rnd((2, 3, 1, 5), dt))], {"perm": [3, 0, 2, 1]})
    check("Transpose", [("x", rnd((0, 3), dt))])
    check("Transpose", [("x", rnd((), dt))])
    check("Transpose", [("x", rnd((2, 1, 3, 1, 2, 2), dt))], {"perm": [5, 3, 1, 0, 4, 2]})


def test_transpose_symbolic_and_errors():
    text = kir_graph("Transpose", [("x", rnd((2, 3, 4)))], {"perm": [2, 0, 1]},
                     dims={"x": ["b", "s", 4]}, syms=["b", "s"])
    assert infer_types(text)["y"] == "f32[4, b, s]"
    kiln_rejects(kir_graph("Transpose", [("x", rnd((2, 3)))], {"perm": [0, 0]}), "perm")
    kiln_rejects(kir_graph("Transpose", [("x", rnd((2, 3)))], {"perm": [0, 1, 2]}), "perm")
    kiln_rejects(kir_graph("Transpose", [("x", rnd((2, 3)))], {"perm": [0, -1]}), "perm")


# ---------------------------------------------------------------- Concat

CONCAT_CASES = [
    ([(3,), (4,)], 0), ([(3,), (4,)], -1), ([(2, 3), (1, 3), (4, 3)], 0),
    ([(2, 3), (2, 5)], 1), ([(2, 3), (2, 5)], -1), ([(2, 3), (2, 5)], -1),
    ([(2, 3, 4), (2, 1, 4)], -2), ([(2, 3, 4), (2, 3, 1), (2, 3, 0)], 2),
    ([(0, 3), (2, 3)], 0), ([(2, 3, 4)], 1), ([(0,), (0,)], 0),
    ([(1, 2)] * 9, 0),
]


@pytest.mark.parametrize("shapes,axis", CONCAT_CASES, ids=str)
def test_concat(shapes, axis):
    ins = [(f"x{i}", rnd(s)) for i, s in enumerate(shapes)]
    check("Concat", ins, {"axis": axis})


@pytest.mark.parametrize("dt", DTYPES)
def test_concat_dtypes(dt):
    check("Concat", [("a", rnd((2, 2), dt)), ("b", rnd((2, 3), dt))], {"axis": 1})


def test_concat_errors():
    kiln_rejects(kir_graph("Concat", [("a", rnd((2, 3))), ("b", rnd((3, 3)))], {"axis": 1}),
                 "Concat", "3", "2")
    kiln_rejects(kir_graph("Concat", [("a", rnd((2, 3))), ("b", rnd((2, 3, 1)))], {"axis": 0}),
                 "rank")
    kiln_rejects(kir_graph("Concat", [("a", rnd((2, 3))), ("b", rnd((2, 3), np.int64))],
                           {"axis": 0}), "i64")
    kiln_rejects(kir_graph("Concat", [("a", rnd((2, 3)))], {"axis": 2}), "axis 2")
    kiln_rejects(kir_graph("Concat", [("a", rnd(())), ("b", rnd(()))], {"axis": 0}), "scalar")


# ---------------------------------------------------------------- Split

SPLIT_CASES = [
    ((6,), None, {}, 3), ((6,), None, {"num_outputs": 3}, 3), ((7,), None, {"num_outputs": 3}, 3),
    ((5,), None, {"num_outputs": 4}, 4), ((4,), None, {"num_outputs": 3}, 3),
    ((2, 6), None, {"axis": 1}, 2), ((2, 6), [1, 5], {"axis": -1}, 2),
    ((6, 2), [2, 0, 4], {}, 3), ((3, 4), None, {"axis": -2, "num_outputs": 1}, 1),
    ((0, 4), [0, 0], {}, 2), ((2, 9), None, {"axis": 1, "num_outputs": 2}, 2),
]


@pytest.mark.parametrize("shape,split,attrs,nout", SPLIT_CASES, ids=str)
def test_split(shape, split, attrs, nout):
    x = rnd(shape)
    ins = [("x", x)] + ([("split", i64(*split))] if split is not None else [])
    check("Split", ins, attrs, consts=("split",), nout=nout)


def test_split_dtypes_and_symbolic():
    for dt in DTYPES:
        check("Split", [("x", rnd((4, 3), dt))], {"axis": 0}, nout=2)
    text = kir_graph("Split", [("x", rnd((2, 5, 12))), ("sp", i64(4, 8))], {"axis": 2},
                     consts=("sp",), dims={"x": ["b", "s", 12]}, syms=["b", "s"], nout=2)
    t = types_of(text)
    assert t["y0"] == "f32[b, s, 4]" and t["y1"] == "f32[b, s, 8]"


def test_split_errors():
    x = rnd((6,))
    kiln_rejects(kir_graph("Split", [("x", x), ("sp", i64(2, 3))], consts=("sp",), nout=2),
                 "sum", "6")
    kiln_rejects(kir_graph("Split", [("x", x), ("sp", i64(2, 4))], consts=("sp",), nout=3),
                 "entries")
    kiln_rejects(kir_graph("Split", [("x", x)], {"num_outputs": 2}, nout=3), "num_outputs")
    kiln_rejects(kir_graph("Split", [("x", x), ("sp", i64(-1, 7))], consts=("sp",), nout=2),
                 "negative")


# ---------------------------------------------------------------- Slice

SLICE_PARAMS = [
    ([0], [3], None, None), ([1, 0], [3, 2], [0, 1], None), ([-3], [-1], [1], None),
    ([I64_MIN], [I64_MAX], [0], None), ([5], [100], [2], None), ([-100], [2], [-1], None),
    ([10], [0], [0], [1]), ([3], [0], [0], [-1]), ([I64_MAX], [I64_MIN], [0], [-1]),
    ([-1], [I64_MIN], [2], [-2]), ([0, 1], [5, 4], [-3, 2], [2, 3]),
    ([1], [I64_MAX], [1], [I64_MAX]), ([4], [-6], [1], [-2]), ([2, 1, 0], [3, 3, 5], None, None),
    ([0], [0], [2], None), ([I64_MIN], [I64_MIN], [0], [-1]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICE_PARAMS, ids=str)
@pytest.mark.parametrize("const", [True, False])
def test_slice(starts, ends, axes, steps, const):
    x = rnd((5, 4, 6))
    ins = [("x", x), ("st", i64(*starts)), ("en", i64(*ends)),
           ("ax", i64(*axes) if axes is not None else None),
           ("sp", i64(*steps) if steps is not None else None)]
    got = kiln("Slice", ins, consts=("st", "en", "ax", "sp") if const else ())[0]
    # onnxruntime clamps as the spec says; numpy (and so the reference
    # evaluator) gives nothing when a backward start lies before the axis
    same(got, ort("Slice", ins)[0])
    sl = [slice(None)] * 3
    for i, a in enumerate(axes if axes is not None else range(len(starts))):
        sl[a] = slice(starts[i], ends[i], steps[i] if steps is not None else 1)
        backward_before = steps is not None and steps[i] < 0 and starts[i] < -x.shape[a]
    if not backward_before:
        same(got, x[tuple(sl)])
        same(got, ref("Slice", ins)[0])


def test_slice_dtypes_and_int32_params():
    for dt in DTYPES:
        check("Slice", [("x", rnd((4, 5), dt)), ("s", i64(1, -1)), ("e", i64(3, 0)),
                        ("a", i64(0, 1)), ("p", i64(1, -2))], consts=("s", "e", "a", "p"))
    check("Slice", [("x", rnd((4, 5))), ("s", np.array([1], np.int32)),
                    ("e", np.array([-1], np.int32))], consts=("s", "e"))
    check("Slice", [("x", rnd((0, 5))), ("s", i64(0)), ("e", i64(3))], consts=("s", "e"))


def test_slice_errors():
    x = rnd((4, 5))
    kiln_rejects(kir_graph("Slice", [("x", x), ("s", i64(0)), ("e", i64(2)), ("a", i64(0)),
                                     ("p", i64(0))], consts=("s", "e", "a", "p")), "step")
    kiln_rejects(kir_graph("Slice", [("x", x), ("s", i64(0, 0)), ("e", i64(2, 2)),
                                     ("a", i64(1, -1))], consts=("s", "e", "a")), "twice")
    kiln_rejects(kir_graph("Slice", [("x", x), ("s", i64(0)), ("e", i64(2)), ("a", i64(2))],
                           consts=("s", "e", "a")), "axis 2")
    kiln_rejects(kir_graph("Slice", [("x", x), ("s", i64(0, 1)), ("e", i64(2))],
                           consts=("s", "e")), "length")


# ---------------------------------------------------------------- Gather

GATHER_CASES = [
    ((5, 4), [[0, 3], [-1, 2]], 0), ((5, 4), [1, -4, 3], 1), ((5, 4), 2, 0), ((5, 4), -1, -1),
    ((2, 3, 4), [[1], [0]], 1), ((2, 3, 4), [], 2), ((3,), [2, 2, 0, -3], 0),
    ((0, 4), np.zeros((0,), np.int64), 0), ((2, 3, 4), [3, 0], -1),
]


@pytest.mark.parametrize("shape,idx,axis", GATHER_CASES, ids=str)
@pytest.mark.parametrize("idt", [np.int64, np.int32])
def test_gather(shape, idx, axis, idt):
    x = rnd(shape)
    ix = np.array(idx, idt).reshape(np.shape(idx))
    got = check("Gather", [("x", x), ("i", ix)], {"axis": axis})[0]
    same(got, np.take(x, ix.astype(np.int64), axis=axis))


@pytest.mark.parametrize("dt", DTYPES)
def test_gather_dtypes(dt):
    check("Gather", [("x", rnd((4, 3), dt)), ("i", i64(3, 0, 3))], {"axis": 0})


def test_gather_bf16_table():
    # bf16 data gathers to bf16 (the .npy output widens it to f32)
    w = rnd((6, 5)).astype(ml_dtypes.bfloat16)
    text = kir_graph("Gather", [("w", w), ("i", i64(5, 0, -1))], consts=("w",))
    assert infer_types(text)["y"] == "bf16[3, 5]"
    got = eval_kir(text, {"i": i64(5, 0, -1)})["y"]
    same(got, w[[5, 0, -1]].astype(np.float32))


@pytest.mark.parametrize("qname", list(QTYPES))
def test_gather_quantized_table(qname):
    n, k = 6, 256
    q, wf = make_quant(qname, n, k)
    ix = np.array([[5, 0], [-1, 2], [3, 3]], np.int64)
    text = ("kir 1\ngraph \"g\" {\n  sym s\n  input %i : i64[3, s]\n"
            f'  const %w : {qname}[{n}, {k}] = hex "{q.tobytes().hex()}"\n'
            "  %y = Gather(%w, %i)\n  output %y\n}\n")
    assert infer_types(text)["y"] == f"f32[3, s, {k}]"
    got = eval_kir(text, {"i": ix})["y"]
    assert got.dtype == np.float32 and got.shape == (3, 2, k)
    np.testing.assert_array_equal(got, wf[ix])


def test_gather_quantized_errors():
    q, _ = make_quant("q8_0", 4, 64)
    base = ("kir 1\ngraph \"g\" {\n  input %i : i64[2]\n"
            f'  const %w : q8_0[4, 64] = hex "{q.tobytes().hex()}"\n')
    kiln_rejects(base + "  %y = Gather(%w, %i) {axis = 1}\n  output %y\n}\n", "axis 0")
    kiln_rejects(base + "  %y = Transpose(%w)\n  output %y\n}\n", "Dequantize")


def test_gather_errors_and_contents():
    kiln_rejects(kir_graph("Gather", [("x", rnd((3, 4))), ("i", i64(3))], consts=("i",)),
                 "index 3", "size 3")
    kiln_rejects_run("Gather", [("x", rnd((3, 4))), ("i", i64(0, -4))], None, (), 1,
                     "index -4")
    kiln_rejects(kir_graph("Gather", [("x", rnd((3, 4))), ("i", np.array([0.0], np.float32))]),
                 "indices")
    kiln_rejects(kir_graph("Gather", [("x", rnd((3,))), ("i", i64(0))], {"axis": 1}), "axis 1")


# ---------------------------------------------------------------- GatherElements / GatherND

@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_gather_elements(axis):
    x = rnd((3, 4, 5))
    shape = list(x.shape)
    shape[axis] = 6
    dim = x.shape[axis]
    ix = RNG.integers(-dim, dim, size=shape).astype(np.int64)
    got = kiln("GatherElements", [("x", x), ("i", ix)], {"axis": axis})[0]
    # the reference mishandles negative axes; give it the normalized one
    same(got, ref("GatherElements", [("x", x), ("i", ix)], {"axis": axis % 3})[0])
    same(got, np.take_along_axis(x, np.where(ix < 0, ix + dim, ix), axis=axis))
    # indices smaller than the data in the other dims (the reference insists
    # on equal sizes; onnxruntime and the spec do not)
    small = [2, 3, 4]
    small[axis] = 6
    ix = RNG.integers(-dim, dim, size=small).astype(np.int64)
    got = kiln("GatherElements", [("x", x), ("i", ix)], {"axis": axis})[0]
    same(got, ort("GatherElements", [("x", x), ("i", ix)], {"axis": axis})[0])
    want = np.empty(ix.shape, np.float32)
    for pos in np.ndindex(*ix.shape):
        src = list(pos)
        src[axis] = ix[pos] % dim
        want[pos] = x[tuple(src)]
    same(got, want)


def test_gather_elements_dtypes_and_errors():
    for dt in DTYPES:
        ix = np.array([[2, 0], [1, -1]], np.int32)
        check("GatherElements", [("x", rnd((2, 3), dt)), ("i", ix)], {"axis": 1})
    check("GatherElements", [("x", rnd((3, 3))), ("i", np.zeros((0, 3), np.int64))])
    kiln_rejects(kir_graph("GatherElements", [("x", rnd((3, 3))), ("i", i64(1, 2))]), "rank")
    kiln_rejects_run("GatherElements", [("x", rnd((3, 3))), ("i", i64(0, 3, 1).reshape(1, 3))],
                     None, (), 1, "index 3")


GATHERND_CASES = [
    ((2, 2), [[0, 0], [1, 1]], 0), ((2, 2), [[1], [0]], 0), ((2, 2, 2), [[[0, 1]], [[1, 0]]], 0),
    ((2, 2, 2), [[1], [0]], 1), ((2, 3, 4), [[[1, -1], [0, 0]], [[2, 3], [-3, 1]]], 1),
    ((2, 2, 3, 2), [[[1], [0]], [[2], [-3]]], 2), ((3, 4), np.zeros((0, 2), np.int64), 0),
    ((3, 4, 5), [[2, 3, 4], [-1, -1, -1]], 0),
]


@pytest.mark.parametrize("shape,idx,b", GATHERND_CASES, ids=str)
def test_gathernd(shape, idx, b):
    x = rnd(shape)
    check("GatherND", [("x", x), ("i", np.array(idx, np.int64))], {"batch_dims": b})
    check("GatherND", [("x", rnd(shape, np.int64)), ("i", np.array(idx, np.int64))],
          {"batch_dims": b})


def test_gathernd_errors():
    kiln_rejects(kir_graph("GatherND", [("x", rnd((2, 2))), ("i", i64(0, 0, 0).reshape(1, 3))]),
                 "length 3")
    kiln_rejects(kir_graph("GatherND", [("x", rnd((2, 2))), ("i", i64(0, 0).reshape(1, 2))],
                           {"batch_dims": 2}), "batch_dims")
    kiln_rejects(kir_graph("GatherND", [("x", rnd((2, 3))), ("i", i64(0, 0, 1, 1).reshape(2, 2))],
                           {"batch_dims": 1}), "batch")


# ---------------------------------------------------------------- ScatterElements / ScatterND

@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dt", [np.float32, np.int64, np.int32, np.float16])
def test_scatter_elements(reduction, axis, dt):
    x = rnd((4, 5), dt)
    dim = x.shape[axis]
    shape = [3, 3]
    # unique indices per column/row for "none" (duplicates are order-defined only)
    if reduction == "none":
        ix = np.stack([RNG.permutation(dim)[:3] - (dim if k % 2 else 0) for k in range(3)],
                      axis=1 if axis == 0 else 0).astype(np.int64)
        ix = ix if axis == 0 else ix.reshape(3, 3)
    else:
        ix = RNG.integers(-dim, dim, size=shape).astype(np.int64)
    u = rnd(tuple(shape), dt)
    if reduction == "mul" and dt != np.float32:
        u = (np.abs(u) % 3 + 1).astype(dt)
    check("ScatterElements", [("x", x), ("i", ix), ("u", u)],
          {"axis": axis, "reduction": reduction})


def test_scatter_elements_duplicates_and_errors():
    x = np.zeros((1, 5), np.float32)
    ix = np.array([[1, 1, 3]], np.int64)
    u = np.array([[1.0, 2.0, 3.0]], np.float32)
    check("ScatterElements", [("x", x), ("i", ix), ("u", u)], {"axis": 1, "reduction": "add"})
    check("ScatterElements", [("x", x), ("i", ix), ("u", u)], {"axis": 1})  # last write wins
    kiln_rejects(kir_graph("ScatterElements", [("x", x), ("i", ix), ("u", u)],
                           {"axis": 1, "reduction": "sum"}), "reduction")
    kiln_rejects(kir_graph("ScatterElements", [("x", x), ("i", ix), ("u", u.astype(np.float16))],
                           {"axis": 1}), "updates")
    kiln_rejects_run("ScatterElements", [("x", x), ("i", i64(0, 5, 1).reshape(1, 3)), ("u", u)],
                     {"axis": 1}, (), 1, "index 5")


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("dt", [np.float32, np.int64])
def test_scatternd(reduction, dt):
    x = rnd((4, 4, 4), dt)
    ix = np.array([[0], [2], [-1]], np.int64) if reduction == "none" else \
        np.array([[0], [2], [0]], np.int64)
    u = rnd((3, 4, 4), dt)
    check("ScatterND", [("x", x), ("i", ix), ("u", u)], {"reduction": reduction})
    ix2 = np.array([[1, 2], [3, -1]], np.int64)
    check("ScatterND", [("x", x), ("i", ix2), ("u", rnd((2, 4), dt))], {"reduction": reduction})
    ix3 = np.array([[[1, 2, 3]], [[0, 0, 0]]], np.int64)
    check("ScatterND", [("x", x), ("i", ix3), ("u", rnd((2, 1), dt))], {"reduction": reduction})


def test_scatternd_errors():
    x = rnd((4, 4))
    kiln_rejects(kir_graph("ScatterND", [("x", x), ("i", i64(0, 1).reshape(2, 1)),
                                         ("u", rnd((2, 3)))]), "updates")
    kiln_rejects(kir_graph("ScatterND", [("x", x), ("i", i64(0, 1, 2).reshape(1, 3)),
                                         ("u", rnd((1,)))]), "length 3")


# ---------------------------------------------------------------- Expand

EXPAND_CASES = [((3, 1), [2, 1, 6]), ((3, 1), [3, 4]), ((1,), [2, 3]), ((2, 3), [1]),
                ((2, 3), [2, 1, 1]), ((4,), []), ((1, 3), [0, 3]), ((), [2, 2]),
                ((1, 1, 1), [1])]


@pytest.mark.parametrize("shape,target", EXPAND_CASES, ids=str)
@pytest.mark.parametrize("const", [True, False])
def test_expand(shape, target, const):
    x = rnd(shape)
    got = check("Expand", [("x", x), ("s", i64(*target))], consts=("s",) if const else ())[0]
    same(got, x * np.ones(target, np.float32))


def test_expand_dtypes_and_errors():
    for dt in DTYPES:
        check("Expand", [("x", rnd((2, 1), dt)), ("s", i64(2, 2, 3))], consts=("s",))
    kiln_rejects(kir_graph("Expand", [("x", rnd((2, 3))), ("s", i64(4, 3))], consts=("s",)),
                 "broadcast")
    kiln_rejects(kir_graph("Expand", [("x", rnd((2, 3))), ("s", i64(-1, 3))], consts=("s",)),
                 "negative")


# ---------------------------------------------------------------- Squeeze / Unsqueeze / Flatten

SQUEEZE_CASES = [((1, 3, 1, 5), [0]), ((1, 3, 1, 5), [-2]), ((1, 3, 1, 5), None),
                 ((1, 3, 1, 5), [0, 2]), ((1,), None), ((1,), [0]), ((3, 4), None),
                 ((0, 1), [1])]


@pytest.mark.parametrize("shape,axes", SQUEEZE_CASES, ids=str)
def test_squeeze(shape, axes):
    x = rnd(shape)
    ins = [("x", x)] + ([("a", i64(*axes))] if axes is not None else [])
    check("Squeeze", ins, consts=("a",))
    check("Squeeze", ins)


UNSQUEEZE_CASES = [((3, 4), [0]), ((3, 4), [2]), ((3, 4), [-1]), ((3, 4), [0, 3]),
                   ((3, 4), [3, 0, 1]), ((), [0]), ((3,), [-1, 0]), ((0, 2), [1])]


@pytest.mark.parametrize("shape,axes", UNSQUEEZE_CASES, ids=str)
def test_unsqueeze(shape, axes):
    x = rnd(shape)
    check("Unsqueeze", [("x", x), ("a", i64(*axes))], consts=("a",))
    check("Unsqueeze", [("x", x), ("a", i64(*axes))])


def test_squeeze_unsqueeze_dtypes_and_errors():
    for dt in DTYPES:
        check("Squeeze", [("x", rnd((1, 2, 1), dt)), ("a", i64(2))], consts=("a",))
        check("Unsqueeze", [("x", rnd((2,), dt)), ("a", i64(0, 2))], consts=("a",))
    kiln_rejects(kir_graph("Squeeze", [("x", rnd((2, 3))), ("a", i64(0))], consts=("a",)),
                 "size 2")
    kiln_rejects(kir_graph("Squeeze", [("x", rnd((1, 3))), ("a", i64(0, -2))], consts=("a",)),
                 "twice")
    kiln_rejects(kir_graph("Unsqueeze", [("x", rnd((2, 3))), ("a", i64(1, 1))], consts=("a",)),
                 "twice")
    kiln_rejects(kir_graph("Unsqueeze", [("x", rnd((2, 3))), ("a", i64(3))], consts=("a",)),
                 "axis 3")
    text = kir_graph("Unsqueeze", [("x", rnd((2, 3))), ("a", i64(1, -1))], consts=("a",),
                     dims={"x": ["b", 3]}, syms=["b"])
    assert infer_types(text)["y"] == "f32[b, 1, 3, 1]"


@pytest.mark.parametrize("axis", [-4, -3, -2, -1, 0, 1, 2, 3, 4])
def test_flatten(axis):
    check("Flatten", [("x", rnd((2, 3, 4, 5), np.int64))], {"axis": axis})
    x = rnd((2, 3, 0, 5))  # the reference cannot reshape empty tensors with -1
    a = axis % 4 if axis != 4 else 4
    got = kiln("Flatten", [("x", x)], {"axis": axis})[0]
    same(got, x.reshape(int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:]))))


def test_flatten_default_and_errors():
    check("Flatten", [("x", rnd((2, 3, 4)))])
    check("Flatten", [("x", rnd(()))], {"axis": 0})
    kiln_rejects(kir_graph("Flatten", [("x", rnd((2, 3)))], {"axis": 3}), "axis 3")
    kiln_rejects(kir_graph("Flatten", [("x", rnd((2, 3)))], {"axis": -3}), "axis -3")


# ---------------------------------------------------------------- Shape / Size

SHAPE_ATTRS = [{}, {"start": 1}, {"end": 2}, {"start": -1}, {"end": -1}, {"start": 1, "end": 2},
               {"start": -10}, {"end": 10}, {"start": 3, "end": 1}, {"start": 1, "end": -1},
               {"start": 4}]


@pytest.mark.parametrize("attrs", SHAPE_ATTRS, ids=str)
def test_shape(attrs):
    check("Shape", [("x", rnd((3, 4, 5, 0)))], attrs)


def test_shape_size_of_everything():
    for shape in [(), (0,), (3, 1, 2), (2,) * 8]:
        for dt in (np.float32, np.bool_, np.int8):
            check("Shape", [("x", rnd(shape, dt))])
            check("Size", [("x", rnd(shape, dt))])
    # Shape of a block-quantized weight needs no dequantizing
    q, _ = make_quant("q4_0", 3, 64)
    text = ("kir 1\ngraph \"g\" {\n"
            f'  const %w : q4_0[3, 64] = hex "{q.tobytes().hex()}"\n'
            "  %y = Shape(%w)\n  output %y\n}\n")
    same(eval_kir(text, {})["y"], i64(3, 64))


def test_shape_symbolic_contents():
    text = kir_graph("Shape", [("x", rnd((2, 3, 4)))], {"start": 1}, dims={"x": ["b", "s", 4]},
                     syms=["b", "s"])
    assert infer_types(text)["y"] == "i64[2]"
    text = kir_graph("Shape", [("x", rnd((2, 3, 4)))], {"start": 2, "end": 1})
    assert infer_types(text)["y"] == "i64[0]"


# ---------------------------------------------------------------- Tile

TILE_CASES = [((2, 3), [1, 1]), ((2, 3), [2, 3]), ((2, 3), [0, 2]), ((3,), [4]),
              ((2, 1, 3), [1, 5, 2]), ((0, 2), [3, 2])]


@pytest.mark.parametrize("shape,reps", TILE_CASES, ids=str)
@pytest.mark.parametrize("const", [True, False])
def test_tile(shape, reps, const):
    x = rnd(shape)
    got = check("Tile", [("x", x), ("r", i64(*reps))], consts=("r",) if const else ())[0]
    same(got, np.tile(x, reps))


def test_tile_dtypes_and_errors():
    for dt in DTYPES:
        check("Tile", [("x", rnd((2, 2), dt)), ("r", i64(2, 1))], consts=("r",))
    kiln_rejects(kir_graph("Tile", [("x", rnd((2, 2))), ("r", i64(2))], consts=("r",)),
                 "repeats")
    kiln_rejects(kir_graph("Tile", [("x", rnd((2, 2))), ("r", i64(2, -1))], consts=("r",)),
                 "negative")


# ---------------------------------------------------------------- Pad

PAD_CASES = [
    ((3, 4), [1, 2, 0, 3], None), ((3, 4), [0, 0, 0, 0], None), ((3, 4), [2, 5], [1]),
    ((3, 4), [2, 5], [-2]), ((2, 3, 4), [1, 0, 2, 3], [0, -1]), ((3, 4), [4, 5, 3, 7], None),
    ((1, 4), [2, 0, 3, 1], None), ((3, 4), [0, 1, 0, 2], [1, 0]),
]


@pytest.mark.parametrize("shape,pads,axes", PAD_CASES, ids=str)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad(shape, pads, axes, mode):
    x = rnd(shape)
    ins = [("x", x), ("p", i64(*pads)), ("c", None), ("a", i64(*axes) if axes else None)]
    check("Pad", ins, {"mode": mode}, consts=("p", "a"))


@pytest.mark.parametrize("dt", DTYPES)
def test_pad_constant_value_dtypes(dt):
    x = rnd((2, 3), dt)
    cv = np.array(rnd((1,), dt)[0], dt)
    check("Pad", [("x", x), ("p", i64(1, 0, 2, 1)), ("c", cv)], consts=("p",))
    check("Pad", [("x", x), ("p", i64(1, 0, 2, 1)), ("c", cv)], {"mode": "edge"}, consts=("p",))


def test_pad_negative_crops():
    x = rnd((4, 5))
    want = np.pad(x, ((0, 2), (1, 0)), constant_values=1.5)[1:, :-2]
    got = kiln("Pad", [("x", x), ("p", i64(-1, 1, 2, -2)), ("c", np.array(1.5, np.float32))],
               consts=("p",))[0]
    same(got, want)
    got = kiln("Pad", [("x", x), ("p", i64(-1, -2, -3, 0))], consts=("p",))[0]
    same(got, x[1:1, 2:])


def test_pad_errors():
    x = rnd((3, 4))
    kiln_rejects(kir_graph("Pad", [("x", x), ("p", i64(1, 2, 3))], consts=("p",)), "pads")
    kiln_rejects(kir_graph("Pad", [("x", x), ("p", i64(1, 1, 1, 1))], {"mode": "mirror"},
                           consts=("p",)), "mode")
    kiln_rejects(kir_graph("Pad", [("x", x), ("p", i64(-2, 0, -2, 0))], consts=("p",)),
                 "negative")
    kiln_rejects(kir_graph("Pad", [("x", rnd((0, 4))), ("p", i64(1, 0, 0, 0))], {"mode": "edge"},
                           consts=("p",)), "empty")
    kiln_rejects(kir_graph("Pad", [("x", x), ("p", i64(1, 1)), ("c", None), ("a", i64(1, 1))],
                           consts=("p", "a")), "twice")
    kiln_rejects(kir_graph("Pad", [("x", x), ("p", i64(1, 1, 1, 1)), ("c", np.array(1, np.int64))],
                           consts=("p",)), "constant_value")


# ---------------------------------------------------------------- ONNX conformance data

SHAPE_NODE_TESTS = [n for n in node_cases([
    "test_reshape_", "test_transpose_", "test_concat_", "test_split_", "test_slice",
    "test_gather_", "test_gather_elements", "test_gathernd_", "test_scatter_elements",
    "test_scatternd", "test_expand_", "test_squeeze", "test_unsqueeze", "test_flatten_",
    "test_shape", "test_size", "test_tile", "test_constant_pad", "test_edge_pad",
    "test_reflect_pad", "test_wrap_pad"]) if "split_to_sequence" not in n]

ATTR_INPUTS = {"Split": ["split"], "Squeeze": ["axes"], "Unsqueeze": ["axes"]}


def load_outputs(name):
    """The node test's model and all its stored outputs."""
    d = os.path.join(ROOT, ".cache", "onnx-testdata", "usr", "share", "libonnx-testdata", "data",
                     "node", name)
    model = onnx.load(os.path.join(d, "model.onnx"))
    outs = []
    for i in range(len(model.graph.output)):
        t = onnx.TensorProto()
        with open(os.path.join(d, "test_data_set_0", f"output_{i}.pb"), "rb") as f:
            t.ParseFromString(f.read())
        outs.append(onnx.numpy_helper.to_array(t))
    return model, outs


@pytest.mark.skipif(not SHAPE_NODE_TESTS, reason="ONNX node test data not extracted")
@pytest.mark.parametrize("name", SHAPE_NODE_TESTS)
def test_onnx_node_data(name):
    op, ins, attrs, _ = load_node_case(name)
    model, outs = load_outputs(name)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    # older opsets gave these as attributes; kiln has the opset-13+ input form
    for a in ATTR_INPUTS.get(op, []):
        if a in attrs:
            ins = ins + [(a, np.array(attrs.pop(a), np.int64))]
    if op == "Split" and opset < 18:
        attrs.pop("num_outputs", None)
    got = kiln(op, ins, attrs, nout=len(outs))
    for g, w in zip(got, outs):
        same(g, w)


# ---------------------------------------------------------------- symbolic input dims

def sym_twin(op, inputs, attrs=None, consts=(), nout=1, sym=("x",), exact=True):
    """Runs a case with the inputs in `sym` declared with symbolic dims
    (x0, x1, ...): the static types, evaluated at the real sizes, must match
    the reference's shapes (fully known when `exact`), and the outputs its
    values."""
    dims = {n: [f"{n}{i}" for i in range(a.ndim)] for n, a in inputs
            if n in sym and a is not None}
    syms = [s for d in dims.values() for s in d]
    env = {f"{n}{i}": a.shape[i] for n, a in inputs if n in dims for i in range(a.ndim)}
    text = kir_graph(op, inputs, attrs, consts, dims=dims, syms=syms, nout=nout)
    types = types_of(text)
    want = ref(op, inputs, attrs, nout)
    for o, w in zip(out_names(nout), want):
        _, ds = eval_dims(types[o], env) if not types[o].endswith("[*]") else (None, None)
        assert ds is not None or not exact, types[o]
        if ds is not None:
            assert len(ds) == w.ndim, (types[o], w.shape)
            assert all(d == s for d, s in zip(ds, w.shape) if d is not None), (types[o], w.shape)
            assert not exact or None not in ds, types[o]
    got = kiln(op, inputs, attrs, consts, nout, dims=dims, syms=syms)
    for g, w in zip(got, want):
        same(g, w)


SYM_TWINS = [
    ("Reshape", [("x", rnd((2, 3, 4))), ("s", i64(0, -1))], {}, ("s",), 1),
    ("Reshape", [("x", rnd((2, 3, 4))), ("s", i64(0, 0, 2, 2))], {}, ("s",), 1),
    ("Transpose", [("x", rnd((2, 3, 4)))], {"perm": [1, 2, 0]}, (), 1),
    ("Concat", [("x", rnd((2, 3))), ("w", rnd((2, 5)))], {"axis": -1}, (), 1),
    ("Split", [("x", rnd((4, 6))), ("s", i64(1, 5))], {"axis": 1}, ("s",), 2),
    ("Slice", [("x", rnd((5, 6))), ("s", i64(1, -4)), ("e", i64(I64_MAX, -1)), ("a", i64(0, 1))],
     {}, ("s", "e", "a"), 1),
    ("Gather", [("x", rnd((5, 6))), ("i", i64(4, 0, -2).reshape(3, 1))], {"axis": 0}, ("i",), 1),
    ("Gather", [("x", rnd((5, 6))), ("i", i64(4, 0, -2))], {"axis": 1}, (), 1),
    ("GatherElements", [("x", rnd((3, 4))), ("i", RNG.integers(0, 3, (5, 4)))], {}, (), 1),
    ("GatherND", [("x", rnd((3, 4, 2))), ("i", i64(0, 1, 2, 3).reshape(2, 2))], {}, (), 1),
    ("ScatterElements", [("x", rnd((3, 4))), ("i", i64(2, 0, 1, 1).reshape(1, 4)),
                         ("u", rnd((1, 4)))], {"reduction": "add"}, (), 1),
    ("ScatterND", [("x", rnd((3, 4))), ("i", i64(2, 0).reshape(2, 1)), ("u", rnd((2, 4)))], {},
     (), 1),
    ("Expand", [("x", rnd((3, 1))), ("s", i64(2, 1, 4))], {}, ("s",), 1),
    ("Unsqueeze", [("x", rnd((3, 4))), ("a", i64(-1, 0))], {}, ("a",), 1),
    ("Squeeze", [("x", rnd((3, 1, 4))), ("a", i64(1))], {}, ("a",), 1),
    ("Flatten", [("x", rnd((2, 3, 4)))], {"axis": 1}, (), 1),
    ("Shape", [("x", rnd((2, 3, 4)))], {"start": -2}, (), 1),
    ("Size", [("x", rnd((2, 3, 4)))], {}, (), 1),
    ("Tile", [("x", rnd((2, 3))), ("r", i64(3, 2))], {}, ("r",), 1),
    ("Pad", [("x", rnd((2, 3))), ("p", i64(1, 0, 2, 3))], {"mode": "edge"}, ("p",), 1),
]


@pytest.mark.parametrize("op,inputs,attrs,consts,nout", SYM_TWINS,
                         ids=[f"{c[0]}{i}" for i, c in enumerate(SYM_TWINS)])
def test_symbolic_inputs(op, inputs, attrs, consts, nout):
    sym_twin(op, inputs, attrs, consts, nout)
