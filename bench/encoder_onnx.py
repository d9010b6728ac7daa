"""Writes a BERT-style encoder as ONNX in the decomposed form exporters
produce (LayerNorm as ReduceMean/Sub/Pow/Sqrt/Div, GELU via Erf, attention as
MatMul/Softmax with head reshapes), random weights with a fixed seed.

    python3 bench/encoder_onnx.py out.onnx [--layers 6 --hidden 384 --heads 12 --ffn 1536]
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(layers=6, hidden=384, heads=12, ffn=1536, seed=0):
    rng = np.random.RandomState(seed)
    nodes, inits = [], []
    hd = hidden // heads

    def w(name, *shape, scale=0.05):
        inits.append(numpy_helper.from_array((rng.randn(*shape) * scale).astype(np.float32), name))
        return name

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    c("axes_last", np.array([-1], np.int64))
    c("two", np.array(2.0, np.float32))
    c("eps", np.array(1e-12, np.float32))
    c("sqrt2", np.array(np.sqrt(2.0), np.float32))
    c("one", np.array(1.0, np.float32))
    c("half", np.array(0.5, np.float32))
    c("scale", np.array(1.0 / np.sqrt(hd), np.float32))
    c("heads_shape", np.array([0, 0, heads, hd], np.int64))
    c("merge_shape", np.array([0, 0, hidden], np.int64))

    def layernorm(x, p):
        g, b = w(p + ".g", hidden, scale=1.0), w(p + ".b", hidden)
        m = node("ReduceMean", [x, "axes_last"], [p + ".mean"])
        d = node("Sub", [x, m], [p + ".d"])
        sq = node("Pow", [d, "two"], [p + ".sq"])
        v = node("ReduceMean", [sq, "axes_last"], [p + ".var"])
        ve = node("Add", [v, "eps"], [p + ".ve"])
        sd = node("Sqrt", [ve], [p + ".sd"])
        n = node("Div", [d, sd], [p + ".n"])
        y = node("Mul", [n, g], [p + ".y"])
        return node("Add", [y, b], [p + ".out"])

    def linear(x, p, i, o):
        y = node("MatMul", [x, w(p + ".w", i, o)], [p + ".mm"])
        return node("Add", [y, w(p + ".bias", o)], [p + ".out"])

    x = "x"
    for l in range(layers):
        p = f"l{l}"
        q = linear(x, p + ".q", hidden, hidden)
        k = linear(x, p + ".k", hidden, hidden)
        v = linear(x, p + ".v", hidden, hidden)
        qh = node("Transpose", [node("Reshape", [q, "heads_shape"], [p + ".qr"])], [p + ".qh"], perm=[0, 2, 1, 3])
        kh = node("Transpose", [node("Reshape", [k, "heads_shape"], [p + ".kr"])], [p + ".kh"], perm=[0, 2, 3, 1])
        vh = node("Transpose", [node("Reshape", [v, "heads_shape"], [p + ".vr"])], [p + ".vh"], perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [qh, kh], [p + ".qk"]), "scale"], [p + ".s"])
        a = node("Softmax", [s], [p + ".a"], axis=-1)
        ctx = node("MatMul", [a, vh], [p + ".ctx"])
        ctx = node("Reshape", [node("Transpose", [ctx], [p + ".ct"], perm=[0, 2, 1, 3]), "merge_shape"], [p + ".cm"])
        o = linear(ctx, p + ".o", hidden, hidden)
        h = layernorm(node("Add", [o, x], [p + ".res1"]), p + ".ln1")
        u = linear(h, p + ".up", hidden, ffn)
        e = node("Erf", [node("Div", [u, "sqrt2"], [p + ".ud"])], [p + ".erf"])
        g = node("Mul", [node("Mul", [u, node("Add", [e, "one"], [p + ".e1"])], [p + ".ue"]), "half"], [p + ".gelu"])
        dn = linear(g, p + ".down", ffn, hidden)
        x = layernorm(node("Add", [dn, h], [p + ".res2"]), p + ".ln2")
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=1536)
    a = ap.parse_args()
    onnx.save(build(a.layers, a.hidden, a.heads, a.ffn), a.out)
