"""Transformer graphs as exporters write them, imported by kiln and compared
with onnxruntime: attention with Shape/Gather/Concat/Reshape chains over
symbolic batch/seq dims, a causal mask sliced by the runtime sequence
length, and a whole GPT-2 block (random weights, fixed seed)."""
import re

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

from test_onnx_import import (init, kiln_eval, kiln_ir, make_model, ort_eval, rel_err, rnd,
                              save)

D, H = 32, 4
HD = D // H
MAX_POS = 64


class Builder:
    """Collects nodes and initializers; names get a prefix per block."""

    def __init__(self, prefix=""):
        self.p = prefix
        self.nodes, self.inits = [], []
        self.k = 0

    def name(self, hint):
        self.k += 1
        return f"{self.p}{hint}_{self.k}"

    def op(self, op, inputs, out=None, **attrs):
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def ops(self, op, inputs, n, **attrs):
        outs = [self.name(op.lower()) for _ in range(n)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs

    def const(self, arr, hint="c"):
        nm = self.name(hint)
        self.inits.append(init(nm, arr))
        return nm

    def i64(self, *v):
        return self.const(np.array(v, np.int64), "i64")

    def dim(self, x, axis):
        """Shape(x)[axis] as a 1-element vector, the way exporters build shapes."""
        s = self.op("Shape", [x])
        g = self.op("Gather", [s, self.const(np.int64(axis), "idx")], axis=0)
        return self.op("Unsqueeze", [g, self.i64(0)])

    def linear(self, x, din, dout, hint):
        w = self.const(rnd(din, dout, scale=din ** -0.5), hint + "_w")
        b = self.const(rnd(dout, scale=0.1), hint + "_b")
        return self.op("Add", [self.op("MatMul", [x, w]), b])


def attention(b, x):
    """GPT-2 style causal self-attention, torch-exporter style."""
    qkv = b.linear(x, D, 3 * D, "c_attn")
    q, k, v = b.ops("Split", [qkv, b.i64(D, D, D)], 3, axis=2)
    bsz, seq = b.dim(x, 0), b.dim(x, 1)
    heads_shape = b.op("Concat", [bsz, seq, b.i64(H), b.i64(HD)], axis=0)

    def split_heads(t, perm):
        return b.op("Transpose", [b.op("Reshape", [t, heads_shape])], perm=perm)

    qh = split_heads(q, [0, 2, 1, 3])
    kt = split_heads(k, [0, 2, 3, 1])
    vh = split_heads(v, [0, 2, 1, 3])
    att = b.op("MatMul", [qh, kt])
    att = b.op("Div", [att, b.const(np.float32(np.sqrt(HD)), "scale")])
    # causal mask: the registered bias buffer sliced to [.., k_len-q_len:k_len, :k_len]
    q_len, k_len = b.dim(qh, 2), b.dim(kt, 3)
    start = b.op("Sub", [k_len, q_len])
    mask = b.const(np.tril(np.ones((MAX_POS, MAX_POS), bool))[None, None], "bias")
    m = b.op("Slice", [mask, start, k_len, b.i64(2)])
    m = b.op("Slice", [m, b.i64(0), k_len, b.i64(3)])
    att = b.op("Where", [m, att, b.const(np.float32(np.finfo(np.float32).min), "minval")])
    att = b.op("Softmax", [att], axis=-1)
    y = b.op("MatMul", [att, vh])
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
    merged = b.op("Concat", [bsz, seq, b.i64(D)], axis=0)
    y = b.op("Reshape", [y, merged])
    return b.linear(y, D, D, "c_proj")


def gelu_tanh(b, x):
    x3 = b.op("Pow", [x, b.const(np.float32(3), "three")])
    inner = b.op("Add", [x, b.op("Mul", [x3, b.const(np.float32(0.044715), "c")])])
    t = b.op("Tanh", [b.op("Mul", [inner, b.const(np.float32(np.sqrt(2 / np.pi)), "k")])])
    half_x = b.op("Mul", [x, b.const(np.float32(0.5), "half")])
    return b.op("Mul", [half_x, b.op("Add", [t, b.const(np.float32(1), "one")])])


def layernorm(b, x, hint):
    g = b.const(1 + rnd(D, scale=0.1), hint + "_g")
    beta = b.const(rnd(D, scale=0.1), hint + "_b")
    return b.op("LayerNormalization", [x, g, beta], axis=-1, epsilon=1e-5)


def gpt2_block(b, x):
    h = b.op("Add", [x, attention(b, layernorm(b, x, "ln_1"))])
    ff = b.linear(layernorm(b, h, "ln_2"), D, 4 * D, "c_fc")
    ff = b.linear(gelu_tanh(b, ff), 4 * D, D, "mlp_proj")
    return b.op("Add", [h, ff])


def build(body, name, n_blocks=1):
    b = Builder()
    y = "x"
    for i in range(n_blocks):
        b.p = f"h{i}."
        y = body(b, y)
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return make_model(b.nodes, [("x", TP.FLOAT, ["batch", "seq", D])],
                      [("y", TP.FLOAT, ["batch", "seq", D])], b.inits, opset=17, name=name)


@pytest.mark.parametrize("shape", [(2, 5), (1, 1), (3, 11)])
def test_torch_style_attention(tmp_path, shape):
    path = save(build(attention, "attn"), tmp_path / "attn.onnx")
    x = rnd(*shape, D)
    want = ort_eval(path, {"x": x})["y"]
    got = kiln_eval(path, {"x": x}, tmp_path)["y"]
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


def test_attention_shape_chain_stays_symbolic(tmp_path):
    path = save(build(attention, "attn"), tmp_path / "attn.onnx")
    ir = kiln_ir(path)
    assert "sym batch, seq" in ir
    # the reshapes built from Shape->Gather->Concat chains keep symbolic dims
    assert re.search(r"f32\[batch, seq, 4, 8\] = Reshape", ir), ir
    assert re.search(r"f32\[batch, seq, 32\] = Reshape", ir), ir
    assert re.search(r"%y : f32\[batch, seq, 32\]", ir), ir


@pytest.mark.parametrize("n_blocks,shape", [(1, (2, 7)), (2, (1, 16))])
def test_gpt2_block_vs_onnxruntime(tmp_path, n_blocks, shape):
    path = save(build(gpt2_block, "gpt2", n_blocks), tmp_path / "gpt2.onnx")
    x = rnd(*shape, D)
    want = ort_eval(path, {"x": x})["y"]
    got = kiln_eval(path, {"x": x}, tmp_path)["y"]
    assert got.shape == want.shape
    err = rel_err(got, want)
    assert err < 1e-4, err
