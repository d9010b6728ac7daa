"""The `fuse` pass: decomposed forms, written here the way torch.onnx and HF
exporters write them, become single ops.

Each model is built with onnx.helper (random weights, symbolic batch/seq/past
dims), run through `kiln ir --passes canonicalize,fuse --verify-each` (which
itself compares the interpreter before and after every pass on random
inputs), checked for the ops left, and the fused IR is run
with `kiln eval` and compared with the unfused model under kiln and with
onnxruntime (or onnx's reference evaluator where onnxruntime lacks a
kernel)."""
import collections
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from kiln_util import run_kiln
from test_onnx_import import kiln_eval, make_model, ort_eval, rel_err, save

RNG = np.random.default_rng(20250117)
F32_MIN = float(np.finfo(np.float32).min)
INT64_MAX = np.iinfo(np.int64).max
PIPELINE = "canonicalize,fuse"
# ops that must not survive fusion in the full models
DECOMPOSED = {"Erf", "Tanh", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "ReduceSum", "ReduceMax",
              "Exp", "Sigmoid", "Neg", "Trilu", "Less", "Greater"}


def rnd(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


class G:
    """Collects nodes and initializers with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.k = [], [], 0

    def name(self, hint):
        self.k += 1
        return f"{hint}_{self.k}"

    def op(self, op, *inputs, n_out=1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, arr, hint="c"):
        nm = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def f32(self, v):
        return self.const(np.float32(v), "f")

    def i64(self, *v):
        return self.const(np.array(v, np.int64), "i")

    def dim(self, x, axis):
        """Shape(x)[axis] as a 1-element vector, as exporters build shapes."""
        g = self.op("Gather", self.op("Shape", x), self.const(np.int64(axis), "ax"), axis=0)
        return self.op("Unsqueeze", g, self.i64(0))

    def reduce_mean(self, x, axes, opset):
        if opset >= 18:
            return self.op("ReduceMean", x, self.i64(*axes), keepdims=1)
        return self.op("ReduceMean", x, axes=list(axes), keepdims=1)


# ---- exporter patterns --------------------------------------------------------------

def layernorm(g, x, d, opset, eps=1e-5, square="pow", div="div"):
    """torch.onnx's LayerNorm below opset 17: mean/sub/pow/mean/add/sqrt/div/mul/add."""
    mean = g.reduce_mean(x, [-1], opset)
    num = g.op("Sub", x, mean)
    sq = g.op("Pow", num, g.f32(2.0)) if square == "pow" else g.op("Mul", num, num)
    var = g.reduce_mean(sq, [-1], opset)
    den = g.op("Sqrt", g.op("Add", var, g.f32(eps)))
    if div == "div":
        y = g.op("Div", num, den)
    else:
        y = g.op("Mul", g.op("Reciprocal", den), num)
    y = g.op("Mul", y, g.const(1 + rnd(d, scale=0.2), "ln_w"))
    return g.op("Add", g.const(rnd(d, scale=0.1), "ln_b"), y)


def rmsnorm(g, x, d, opset, eps=1e-6, cast=False, rsqrt="reciprocal", gemma=False):
    """HF LlamaRMSNorm: h = x.to(f32); h * rsqrt(mean(h^2) + eps); w * h.to(dtype)."""
    dtype = TP.FLOAT16 if cast else TP.FLOAT
    h = g.op("Cast", x, to=TP.FLOAT)
    var = g.reduce_mean(g.op("Pow", h, g.f32(2.0)), [-1], opset)
    u = g.op("Add", var, g.f32(eps))
    if rsqrt == "reciprocal":
        y = g.op("Mul", h, g.op("Reciprocal", g.op("Sqrt", u)))
    elif rsqrt == "div1":
        y = g.op("Mul", h, g.op("Div", g.f32(1.0), g.op("Sqrt", u)))
    elif rsqrt == "pow":
        y = g.op("Mul", h, g.op("Pow", u, g.f32(-0.5)))
    else:
        y = g.op("Div", h, g.op("Sqrt", u))
    y = g.op("Cast", y, to=dtype)
    w = (1 + rnd(d, scale=0.2)).astype(np.float16 if cast else np.float32)
    if gemma:  # Gemma scales by (1 + w)
        wv = g.op("Add", g.const(w, "rms_w"), g.const(np.array(1, w.dtype), "one"))
    else:
        wv = g.const(w, "rms_w")
    return g.op("Mul", wv, y)


def gelu_tanh(g, x):
    """HF NewGELUActivation as torch traces it."""
    half_x = g.op("Mul", g.f32(0.5), x)
    cube = g.op("Mul", g.f32(0.044715), g.op("Pow", x, g.f32(3.0)))
    inner = g.op("Mul", g.f32(np.sqrt(2 / np.pi)), g.op("Add", x, cube))
    return g.op("Mul", half_x, g.op("Add", g.f32(1.0), g.op("Tanh", inner)))


def gelu_fast(g, x):
    """HF FastGELUActivation: 0.5x(1 + tanh(x*0.79788456*(1 + 0.044715*x*x)))."""
    inner = g.op("Mul", g.op("Mul", x, g.f32(0.7978845608)),
                 g.op("Add", g.f32(1.0), g.op("Mul", g.op("Mul", g.f32(0.044715), x), x)))
    return g.op("Mul", g.op("Mul", g.f32(0.5), x), g.op("Add", g.f32(1.0), g.op("Tanh", inner)))


def gelu_erf_torch(g, x):
    """torch.onnx's F.gelu below opset 20: x * (erf(x / sqrt2) + 1) * 0.5."""
    erf = g.op("Erf", g.op("Div", x, g.f32(1.4142135623730951)))
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.f32(1.0))), g.f32(0.5))


def gelu_erf_hf(g, x):
    """x * 0.5 * (1.0 + erf(x * 0.7071))."""
    erf = g.op("Erf", g.op("Mul", x, g.f32(0.7071067811865476)))
    return g.op("Mul", g.op("Mul", x, g.f32(0.5)), g.op("Add", g.f32(1.0), erf))


def gelu_tanh_onnxscript(g, x):
    """GELU's ONNX function body (what onnxscript-based exporters inline):
    constants through CastLike(c, x) and Sqrt, sums as Sum."""
    c = {k: g.op("CastLike", g.f32(v), x) for k, v in
         dict(half=0.5, one=1.0, two_pi=2 / np.pi, c0=0.044715, three=3.0).items()}
    cube = g.op("Mul", c["c0"], g.op("Pow", x, c["three"]))
    inner = g.op("Mul", g.op("Sqrt", c["two_pi"]), g.op("Sum", x, cube))
    phi = g.op("Sum", c["one"], g.op("Tanh", inner))
    return g.op("Mul", g.op("Mul", c["half"], x), phi)


def silu(g, x):
    """torch.onnx's F.silu: x * sigmoid(x)."""
    return g.op("Mul", x, g.op("Sigmoid", x))


def quick_gelu(g, x):
    return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", g.f32(1.702), x)))


def softmax_decomposed(g, x, axis=-1, stable=True, opset=18):
    if stable:
        mx = (g.op("ReduceMax", x, g.i64(axis), keepdims=1) if opset >= 18
              else g.op("ReduceMax", x, axes=[axis], keepdims=1))
        x = g.op("Sub", x, mx)
    e = g.op("Exp", x)
    return g.op("Div", e, g.op("ReduceSum", e, g.i64(axis), keepdims=1))


def rotate_half(g, x, hd):
    """x[..., :hd//2], x[..., hd//2:] with the half computed from Shape as torch does."""
    half = g.op("Div", g.dim(x, 3), g.i64(2))
    x1 = g.op("Slice", x, g.i64(0), half, g.i64(3))
    x2 = g.op("Slice", x, half, g.i64(INT64_MAX), g.i64(3))
    return g.op("Concat", g.op("Neg", x2), x1, axis=-1)


def rotate_every_two(g, x):
    """GPT-J: stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)."""
    x1 = g.op("Slice", x, g.i64(0), g.i64(INT64_MAX), g.i64(3), g.i64(2))
    x2 = g.op("Slice", x, g.i64(1), g.i64(INT64_MAX), g.i64(3), g.i64(2))
    st = g.op("Concat", g.op("Unsqueeze", g.op("Neg", x2), g.i64(-1)), g.op("Unsqueeze", x1, g.i64(-1)),
              axis=-1)
    shape = g.op("Concat", g.dim(x, 0), g.dim(x, 1), g.dim(x, 2), g.i64(-1), axis=0)
    return g.op("Reshape", st, shape)


def apply_rope(g, x, cos, sin, hd, interleaved=False):
    rot = rotate_every_two(g, x) if interleaved else rotate_half(g, x, hd)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rot, sin))


def rope_tables(max_pos, hd, interleaved=False):
    inv = 1.0 / (10000 ** (np.arange(0, hd, 2) / hd))
    f = np.outer(np.arange(max_pos), inv)
    emb = np.repeat(f, 2, axis=1) if interleaved else np.concatenate([f, f], axis=1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def hf_rotary(g, pos, hd):
    """LlamaRotaryEmbedding.forward: cos/sin [B, S, hd] computed from position ids."""
    inv = (1.0 / (10000 ** (np.arange(0, hd, 2) / hd))).astype(np.float32)
    inv_e = g.op("Unsqueeze", g.const(inv, "inv_freq"), g.i64(0, 2))
    inv_e = g.op("Expand", inv_e, g.op("Concat", g.dim(pos, 0), g.i64(1), g.i64(1), axis=0))
    pos_e = g.op("Cast", g.op("Unsqueeze", pos, g.i64(1)), to=TP.FLOAT)
    freqs = g.op("Transpose", g.op("MatMul", inv_e, pos_e), perm=[0, 2, 1])
    emb = g.op("Concat", freqs, freqs, axis=-1)
    scaling = g.f32(1.0)
    cos = g.op("Cast", g.op("Mul", g.op("Cos", emb), scaling), to=TP.FLOAT)
    sin = g.op("Cast", g.op("Mul", g.op("Sin", emb), scaling), to=TP.FLOAT)
    return cos, sin


def split_heads(g, t, x, heads, hd):
    """view(*x.shape[:-1], heads, hd) with the shape from Shape/Gather/Concat."""
    shape = g.op("Concat", g.dim(x, 0), g.dim(x, 1), g.i64(heads), g.i64(hd), axis=0)
    return g.op("Transpose", g.op("Reshape", t, shape), perm=[0, 2, 1, 3])


def merge_heads(g, y, x, d=None):
    last = g.i64(d) if d else g.i64(-1)
    shape = g.op("Concat", g.dim(x, 0), g.dim(x, 1), last, axis=0)
    return g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), shape)


# ---- GPT-2 (torch.onnx, opset 17, decomposed LayerNorm, gelu_new, MHA) -------------------

GPT_D, GPT_H, GPT_V, GPT_POS = 32, 4, 50, 64


def gpt2_attention(g, x, opset):
    d, nh = GPT_D, GPT_H
    hd = d // nh
    qkv = g.op("Add", g.op("MatMul", x, g.const(rnd(d, 3 * d, scale=d ** -0.5), "c_attn_w")),
               g.const(rnd(3 * d, scale=0.1), "c_attn_b"))
    q, k, v = g.op("Split", qkv, g.i64(d, d, d), n_out=3, axis=2)
    q, k, v = (split_heads(g, t, x, nh, hd) for t in (q, k, v))
    scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    # value.size(-1) ** 0.5 traced from the shape
    hdv = g.op("Cast", g.op("Gather", g.op("Shape", v), g.const(np.int64(3), "ax"), axis=0), to=TP.FLOAT)
    scores = g.op("Div", scores, g.op("Pow", hdv, g.f32(0.5)))
    # causal_mask = self.bias[:, :, k_len - q_len:k_len, :k_len]
    q_len, k_len = g.dim(q, 2), g.dim(k, 2)
    bias = g.const(np.tril(np.ones((GPT_POS, GPT_POS), bool))[None, None], "attn_bias")
    m = g.op("Slice", bias, g.op("Sub", k_len, q_len), k_len, g.i64(2))
    m = g.op("Slice", m, g.i64(0), k_len, g.i64(3))
    scores = g.op("Where", m, scores, g.f32(F32_MIN))
    probs = softmax_decomposed(g, scores, opset=opset)
    y = merge_heads(g, g.op("MatMul", probs, v), x, d)
    return g.op("Add", g.op("MatMul", y, g.const(rnd(d, d, scale=d ** -0.5), "c_proj_w")),
                g.const(rnd(d, scale=0.1), "c_proj_b"))


def gpt2_block(g, x, opset):
    d = GPT_D
    h = g.op("Add", x, gpt2_attention(g, layernorm(g, x, d, opset), opset))
    ff = g.op("Add", g.op("MatMul", layernorm(g, h, d, opset, square="mul", div="recip"),
                          g.const(rnd(d, 4 * d, scale=d ** -0.5), "c_fc_w")),
              g.const(rnd(4 * d, scale=0.1), "c_fc_b"))
    ff = g.op("MatMul", gelu_tanh(g, ff), g.const(rnd(4 * d, d, scale=(4 * d) ** -0.5), "mlp_w"))
    return g.op("Add", h, ff)


def gpt2_model(n_layers=2, opset=17):
    g = G()
    pos = g.op("Unsqueeze", g.op("Range", g.const(np.int64(0), "start"),
                                 g.op("Squeeze", g.dim("input_ids", 1), g.i64(0)),
                                 g.const(np.int64(1), "delta")), g.i64(0))
    x = g.op("Add", g.op("Gather", g.const(rnd(GPT_V, GPT_D, scale=0.5), "wte"), "input_ids"),
             g.op("Gather", g.const(rnd(GPT_POS, GPT_D, scale=0.1), "wpe"), pos))
    for _ in range(n_layers):
        x = gpt2_block(g, x, opset)
    x = layernorm(g, x, GPT_D, opset)
    g.nodes.append(helper.make_node("MatMul", [x, g.const(rnd(GPT_D, GPT_V, scale=0.2), "lm_head")],
                                    ["logits"]))
    return make_model(g.nodes, [("input_ids", TP.INT64, ["batch", "seq"])],
                      [("logits", TP.FLOAT, ["batch", "seq", GPT_V])], g.inits, opset=opset,
                      name="gpt2")


# ---- Llama (HF exporter, opset 18: RMSNorm, SwiGLU, RoPE, GQA, KV cache) -------------------

LL_D, LL_H, LL_KVH, LL_V, LL_FF = 64, 4, 2, 40, 96
LL_HD = LL_D // LL_H


def llama_mask(g, q_src, past_k, attention_mask):
    """_prepare_4d_causal_attention_mask_with_cache_position: triu(full(min), 1) *
    (arange(T) > cache_position), expanded to [B, 1, S, T]; with an attention
    mask, padded keys are filled with min too."""
    seq, past = g.dim(q_src, 1), g.dim(past_k, 2)
    total = g.op("Add", past, seq)
    full = g.op("ConstantOfShape", g.op("Concat", seq, total, axis=0),
                value=helper.make_tensor("v", TP.FLOAT, [1], [F32_MIN]))
    causal = g.op("Trilu", full, g.const(np.int64(1), "k"), upper=1)
    cache_pos = g.op("Range", g.op("Squeeze", past, g.i64(0)), g.op("Squeeze", total, g.i64(0)),
                     g.const(np.int64(1), "delta"))
    later = g.op("Greater", g.op("Range", g.const(np.int64(0), "z"), g.op("Squeeze", total, g.i64(0)),
                                 g.const(np.int64(1), "delta")),
                 g.op("Reshape", cache_pos, g.i64(-1, 1)))
    causal = g.op("Mul", causal, g.op("Cast", later, to=TP.FLOAT))
    causal = g.op("Unsqueeze", causal, g.i64(0, 1))
    # expand(batch, 1, -1, -1): torch writes the -1 as 1 for ONNX's broadcasting Expand
    causal = g.op("Expand", causal, g.op("Concat", g.dim(q_src, 0), g.i64(1), g.i64(1), g.i64(1),
                                         axis=0))
    if attention_mask is not None:
        am = g.op("Cast", g.op("Unsqueeze", attention_mask, g.i64(1, 2)), to=TP.FLOAT)
        pad = g.op("Equal", g.op("Add", causal, am), g.f32(0.0))
        causal = g.op("Where", pad, g.f32(F32_MIN), causal)
    return causal


def llama_attention(g, h, cos, sin, mask, past_k, past_v, layer, opset):
    d, nh, kvh, hd = LL_D, LL_H, LL_KVH, LL_HD
    sc = d ** -0.5
    q = g.op("MatMul", h, g.const(rnd(d, nh * hd, scale=sc), "q_proj"))
    k = g.op("MatMul", h, g.const(rnd(d, kvh * hd, scale=sc), "k_proj"))
    v = g.op("MatMul", h, g.const(rnd(d, kvh * hd, scale=sc), "v_proj"))

    def view(t):  # view(*input_shape, -1, head_dim).transpose(1, 2)
        shape = g.op("Concat", g.dim(h, 0), g.dim(h, 1), g.i64(-1), g.i64(hd), axis=0)
        return g.op("Transpose", g.op("Reshape", t, shape), perm=[0, 2, 1, 3])

    q, k, v = view(q), view(k), view(v)
    cos_u, sin_u = g.op("Unsqueeze", cos, g.i64(1)), g.op("Unsqueeze", sin, g.i64(1))
    q = apply_rope(g, q, cos_u, sin_u, hd)
    k = apply_rope(g, k, cos_u, sin_u, hd)
    g.nodes.append(helper.make_node("Concat", [past_k, k], [f"present.{layer}.key"], axis=-2))
    g.nodes.append(helper.make_node("Concat", [past_v, v], [f"present.{layer}.value"], axis=-2))
    k, v = f"present.{layer}.key", f"present.{layer}.value"

    def repeat_kv(t):
        n_rep = nh // kvh
        e = g.op("Unsqueeze", t, g.i64(2))
        shape = g.op("Concat", g.dim(t, 0), g.i64(kvh), g.i64(n_rep), g.dim(t, 2), g.i64(hd), axis=0)
        e = g.op("Expand", e, shape)
        return g.op("Reshape", e, g.op("Concat", g.dim(t, 0), g.i64(nh), g.dim(t, 2), g.i64(hd), axis=0))

    k, v = repeat_kv(k), repeat_kv(v)
    w = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.f32(hd ** -0.5))
    # causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
    m = g.op("Slice", mask, g.i64(0), g.dim(k, 2), g.i64(3))
    w = g.op("Cast", g.op("Softmax", g.op("Add", w, m), axis=-1), to=TP.FLOAT)
    y = merge_heads(g, g.op("MatMul", w, v), h)
    return g.op("MatMul", y, g.const(rnd(nh * hd, d, scale=sc), "o_proj"))


def llama_model(n_layers=2, opset=18, attention_mask=False):
    g = G()
    d = LL_D
    x = g.op("Gather", g.const(rnd(LL_V, d, scale=0.5), "embed"), "input_ids")
    cos, sin = hf_rotary(g, "position_ids", LL_HD)
    mask = llama_mask(g, "input_ids", "past_key_values.0.key", "attention_mask" if attention_mask else None)
    for i in range(n_layers):
        h = rmsnorm(g, x, d, opset)
        x = g.op("Add", x, llama_attention(g, h, cos, sin, mask, f"past_key_values.{i}.key",
                                           f"past_key_values.{i}.value", i, opset))
        h = rmsnorm(g, x, d, opset, rsqrt=["div", "pow", "div1"][i % 3])
        gate = g.op("MatMul", h, g.const(rnd(d, LL_FF, scale=d ** -0.5), "gate_proj"))
        up = g.op("MatMul", h, g.const(rnd(d, LL_FF, scale=d ** -0.5), "up_proj"))
        act = g.op("Mul", silu(g, gate), up)
        x = g.op("Add", x, g.op("MatMul", act, g.const(rnd(LL_FF, d, scale=LL_FF ** -0.5), "down_proj")))
    x = rmsnorm(g, x, d, opset)
    g.nodes.append(helper.make_node("MatMul", [x, g.const(rnd(d, LL_V, scale=0.2), "lm_head")],
                                    ["logits"]))
    kv = ["batch", LL_KVH, "past", LL_HD]
    inputs = [("input_ids", TP.INT64, ["batch", "seq"])]
    if attention_mask:
        inputs.append(("attention_mask", TP.INT64, ["batch", "past+seq"]))
    inputs.append(("position_ids", TP.INT64, ["batch", "seq"]))
    outputs = [("logits", TP.FLOAT, ["batch", "seq", LL_V])]
    for i in range(n_layers):
        inputs += [(f"past_key_values.{i}.key", TP.FLOAT, kv), (f"past_key_values.{i}.value", TP.FLOAT, kv)]
        outputs += [(f"present.{i}.key", TP.FLOAT, ["batch", LL_KVH, "past+seq", LL_HD]),
                    (f"present.{i}.value", TP.FLOAT, ["batch", LL_KVH, "past+seq", LL_HD])]
    return make_model(g.nodes, inputs, outputs, g.inits, opset=opset, name="llama")


def llama_inputs(n_layers, batch, seq, past, attention_mask=False):
    ins = {"input_ids": RNG.integers(0, LL_V, (batch, seq)).astype(np.int64)}
    if attention_mask:
        am = np.ones((batch, past + seq), np.int64)
        am[0, :1] = 0  # left padding in the first row
        ins["attention_mask"] = am
    ins["position_ids"] = np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1))
    for i in range(n_layers):
        ins[f"past_key_values.{i}.key"] = rnd(batch, LL_KVH, past, LL_HD)
        ins[f"past_key_values.{i}.value"] = rnd(batch, LL_KVH, past, LL_HD)
    return ins


# ---- helpers ----------------------------------------------------------------------------

def op_counts(ir):
    c = collections.Counter()
    for line in ir.splitlines():
        m = re.match(r"\s+%.*? = ([A-Z]\w*)\(", line)
        if m:
            c[m.group(1)] += 1
    return c


def node_lines(ir, op):
    return [line for line in ir.splitlines() if re.match(rf"\s+%.*? = {op}\(", line)]


def fuse(path, passes=PIPELINE, verify=True, binds=()):
    """The IR after the pipeline, checked with --verify-each (random inputs;
    symbols are 3, batch 2, unless bound)."""
    args = ["--verify-each"] if verify else []
    for b in binds:
        args += ["--bind", b]
    return run_kiln("ir", path, "--passes", passes, *args).stdout


def eval_fused(path, inputs, tmp_path, verify=True, binds=()):
    """kiln eval of the fused IR (weights stay references into the .onnx file)."""
    kir = os.path.join(str(tmp_path), "fused.kir")
    with open(kir, "w") as f:
        f.write(fuse(path, verify=verify, binds=binds))
    d = tmp_path / "fused"
    d.mkdir(exist_ok=True)
    return kiln_eval(kir, inputs, d)


def check_model(model, inputs, tmp_path, tol=1e-4, reference=False, verify=True, binds=()):
    """Runs the model unfused and fused under kiln and with onnxruntime (or
    the onnx reference evaluator); returns the fused IR. verify=False skips
    --verify-each, whose fixed 1e-4 tolerance an fp16 graph cannot meet: the
    fused op rounds once where the decomposed form rounds at every step."""
    path = save(model, tmp_path / "m.onnx")
    if reference:
        want = dict(zip([o.name for o in model.graph.output],
                        ReferenceEvaluator(model).run(None, inputs)))
    else:
        want = ort_eval(path, inputs)
    before = kiln_eval(path, inputs, tmp_path)
    after = eval_fused(path, inputs, tmp_path, verify, binds)
    assert set(after) == set(want) == set(before)
    for k in want:
        assert after[k].shape == want[k].shape, k
        assert after[k].dtype == want[k].dtype, k
        assert rel_err(after[k], want[k]) < tol, (k, rel_err(after[k], want[k]))
        assert rel_err(after[k], before[k]) < tol, (k, rel_err(after[k], before[k]))
    return fuse(path, verify=verify, binds=binds)


# ---- the acceptance models ------------------------------------------------------------

@pytest.mark.parametrize("opset", [17, 18])
def test_gpt2_fuses_completely(tmp_path, opset):
    n = 2
    model = gpt2_model(n, opset)
    ir = check_model(model, {"input_ids": RNG.integers(0, GPT_V, (2, 7)).astype(np.int64)}, tmp_path)
    c = op_counts(ir)
    assert not DECOMPOSED & set(c), c
    assert c["LayerNormalization"] == 2 * n + 1, c
    assert c["Gelu"] == n and all('approximate = "tanh"' in s for s in node_lines(ir, "Gelu")), c
    assert c["GQAttention"] == n and c["Softmax"] == 0 and c["Where"] == 0, c
    for s in node_lines(ir, "GQAttention"):
        assert "num_heads = 4, kv_num_heads = 4" in s and "causal = 1" in s, s
    # the mask and the head split/merge reshapes are gone: only the Split of c_attn remains
    assert c["Transpose"] == 0 and c["Reshape"] == 0 and c["Slice"] == 0, c
    assert "sym batch, seq" in ir


@pytest.mark.parametrize("shape", [(1, 1, 0), (2, 3, 4), (1, 5, 0), (3, 1, 6)])
def test_llama_fuses_completely(tmp_path, shape):
    n = 2
    batch, seq, past = shape
    ir = check_model(llama_model(n), llama_inputs(n, batch, seq, past), tmp_path)
    c = op_counts(ir)
    assert not DECOMPOSED & set(c), c
    assert c["RMSNormalization"] == 2 * n + 1, c
    assert c["Silu"] == n and c["Softmax"] == 0, c
    assert c["RotaryEmbedding"] == 2 * n, c
    assert c["GQAttention"] == n, c
    for s in node_lines(ir, "GQAttention"):
        assert f"num_heads = {LL_H}, kv_num_heads = {LL_KVH}" in s and "causal = 1" in s, s
        # q, k, v, past k, past v; no bias: the causal mask was recognized and dropped
        assert re.search(r"GQAttention\(%\S+, %\S+, %\S+, %past_key_values\.\d\.key, "
                         r"%past_key_values\.\d\.value\)", s), s
    # the present outputs are GQAttention's and keep their names
    for i in range(n):
        assert re.search(rf"%present\.{i}\.key : f32\[batch, 2, past\+seq, 16\], "
                         rf"%present\.{i}\.value : f32\[batch, 2, past\+seq, 16\] = GQAttention", ir), ir
    # RoPE is applied on the [batch, seq, heads*head] form the projections make
    for s in node_lines(ir, "RotaryEmbedding"):
        assert "num_heads" in s and "f32[batch, seq, " in s, s
    # q/k/v and gate/up each became one MatMul + Split (one more MatMul: the rotary frequencies)
    assert c["Split"] == 2 * n and c["MatMul"] == 4 * n + 2, c
    # one cos and one sin cache, shared by every layer
    assert c["Slice"] == 2 and c["Squeeze"] == 0, c
    # no head split/merge transposes left (the one left is the rotary frequencies' [0, 2, 1])
    assert not [s for s in node_lines(ir, "Transpose") if "perm = [0, 2, 1]" not in s], ir
    assert c["Trilu"] == 0 and c["Expand"] == 1, c


def test_llama_with_padding_mask_keeps_it_as_bias(tmp_path):
    """A mask that depends on the attention_mask input is not causal-only: it
    becomes GQAttention's additive bias (causal off)."""
    n = 2
    # the importer names the attention mask's length past_seq: bind it to past + seq
    ir = check_model(llama_model(n, attention_mask=True), llama_inputs(n, 2, 3, 4, attention_mask=True),
                     tmp_path, binds=["past_seq=6"])
    c = op_counts(ir)
    assert not (DECOMPOSED - {"Trilu", "Greater"}) & set(c), c
    assert c["GQAttention"] == n and c["RMSNormalization"] == 2 * n + 1, c
    for s in node_lines(ir, "GQAttention"):
        assert "causal = 0" in s and s.count("%past_key_values") == 2, s
        assert len(re.search(r"GQAttention\((.*?)\)", s).group(1).split(", ")) == 6, s
    # the mask's slice to key_states.shape[-2] selects it all and is looked
    # through, so nothing keeps the unfused key path alive
    assert c["RotaryEmbedding"] == 2 * n and "perm = [0, 2, 1, 3]" not in ir, ir


# ---- single patterns and their variants ------------------------------------------------

def single(body, in_shape=("batch", "seq", 24), dtype=TP.FLOAT, opset=18, extra_outputs=()):
    g = G()
    y = body(g, "x")
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    outs = [("y", dtype, None)] + [(o, dtype, None) for o in extra_outputs]
    return make_model(g.nodes, [("x", dtype, list(in_shape))], outs, g.inits, opset=opset)


def np_in(shape=(2, 5, 24), dtype=np.float32):
    return {"x": (RNG.standard_normal(shape) * 2 + 0.3).astype(dtype)}


@pytest.mark.parametrize("opset,square,div", [(17, "pow", "div"), (18, "mul", "recip"),
                                              (18, "pow", "recip")])
def test_layernorm_forms(tmp_path, opset, square, div):
    ir = check_model(single(lambda g, x: layernorm(g, x, 24, opset, square=square, div=div), opset=opset),
                     np_in(), tmp_path)
    c = op_counts(ir)
    assert c == {"LayerNormalization": 1, "Identity": 1}, c


def test_layernorm_without_affine_and_two_axes(tmp_path):
    def body(g, x):
        mean = g.op("ReduceMean", x, g.i64(-2, -1), keepdims=1)
        d = g.op("Sub", x, mean)
        var = g.op("ReduceMean", g.op("Mul", d, d), g.i64(1, 2), keepdims=1)
        return g.op("Div", d, g.op("Sqrt", g.op("Add", g.f32(1e-3), var)))

    ir = check_model(single(body), np_in(), tmp_path)
    (line,) = node_lines(ir, "LayerNormalization")
    assert "axis = 1" in line and "epsilon = 0.00100000" in line, line


def test_norms_and_softmax_with_keepdims_0(tmp_path):
    """Reductions with keepdims=0 and an Unsqueeze putting the axis back."""
    def mean(g, x):
        return g.op("Unsqueeze", g.op("ReduceMean", x, g.i64(-1), keepdims=0), g.i64(-1))

    def body(g, x):
        d = g.op("Sub", x, mean(g, x))
        ln = g.op("Div", d, g.op("Sqrt", g.op("Add", mean(g, g.op("Mul", d, d)), g.f32(1e-5))))
        rms = g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean(g, g.op("Mul", x, x)),
                                                                  g.f32(1e-6)))))
        e = g.op("Exp", g.op("Sub", ln, g.op("Unsqueeze", g.op("ReduceMax", ln, g.i64(2), keepdims=0),
                                             g.i64(2))))
        sm = g.op("Div", e, g.op("Unsqueeze", g.op("ReduceSum", e, g.i64(-1), keepdims=0), g.i64(-1)))
        return g.op("Add", sm, rms)

    ir = check_model(single(body), np_in(), tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert c == {"LayerNormalization": 1, "RMSNormalization": 1, "Softmax": 1, "Add": 1, "Identity": 1}, c


def test_layernorm_in_f32_with_casts(tmp_path):
    """fp16 activations normalized in f32 and cast back (HF-style upcast)."""
    def body(g, x):
        h = g.op("Cast", x, to=TP.FLOAT)
        mean = g.op("ReduceMean", h, g.i64(-1), keepdims=1)
        d = g.op("Sub", h, mean)
        var = g.op("ReduceMean", g.op("Pow", d, g.f32(2.0)), g.i64(-1), keepdims=1)
        y = g.op("Cast", g.op("Div", d, g.op("Sqrt", g.op("Add", var, g.f32(1e-5)))), to=TP.FLOAT16)
        y = g.op("Mul", y, g.const((1 + rnd(24, scale=0.2)).astype(np.float16), "w"))
        return g.op("Add", y, g.const(rnd(24, scale=0.1).astype(np.float16), "b"))

    ir = check_model(single(body, dtype=TP.FLOAT16), np_in(dtype=np.float16), tmp_path, tol=3e-3,
                     reference=True, verify=False)
    assert op_counts(ir) == {"LayerNormalization": 1, "Identity": 1}, ir


@pytest.mark.parametrize("rsqrt", ["reciprocal", "div1", "pow", "div"])
def test_rmsnorm_forms(tmp_path, rsqrt):
    ir = check_model(single(lambda g, x: rmsnorm(g, x, 24, 18, rsqrt=rsqrt)), np_in(), tmp_path)
    (line,) = node_lines(ir, "RMSNormalization")
    assert "epsilon = 9.99999997" in line and "axis = 2" in line, line
    assert op_counts(ir) == {"RMSNormalization": 1, "Identity": 1}, ir


@pytest.mark.parametrize("gemma", [False, True])
def test_rmsnorm_f16_with_casts(tmp_path, gemma):
    model = single(lambda g, x: rmsnorm(g, x, 24, 18, cast=True, gemma=gemma), dtype=TP.FLOAT16)
    ir = check_model(model, np_in(dtype=np.float16), tmp_path, tol=3e-3, reference=True, verify=False)
    c = op_counts(ir)
    assert c["RMSNormalization"] == 1 and "Cast" not in c and "Pow" not in c, c
    # the fused op reads the fp16 input directly
    assert re.search(r"f16\[batch, seq, 24\] = RMSNormalization\(%x,", ir), ir


@pytest.mark.parametrize("form,op,approx", [(gelu_tanh, "Gelu", "tanh"), (gelu_fast, "Gelu", "tanh"),
                                            (gelu_erf_torch, "Gelu", "none"),
                                            (gelu_erf_hf, "Gelu", "none"),
                                            (gelu_tanh_onnxscript, "Gelu", "tanh"), (silu, "Silu", None),
                                            (quick_gelu, "QuickGelu", None)])
def test_activation_forms(tmp_path, form, op, approx):
    ir = check_model(single(form, opset=17), np_in(), tmp_path, tol=1e-5)
    assert op_counts(ir) == {op: 1, "Identity": 1}, ir
    if approx:
        assert f'approximate = "{approx}"' in node_lines(ir, op)[0]


def test_swiglu(tmp_path):
    def body(g, x):
        gate = g.op("MatMul", x, g.const(rnd(24, 32), "wg"))
        up = g.op("MatMul", x, g.const(rnd(24, 32), "wu"))
        return g.op("Mul", silu(g, gate), up)

    ir = check_model(single(body), np_in(), tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert c["Silu"] == 1 and c["Mul"] == 1 and "Sigmoid" not in c, c
    # gate and up share their input: one MatMul over the concatenated weights
    assert c["MatMul"] == 1 and c["Split"] == 1, c


@pytest.mark.parametrize("axis,stable", [(-1, True), (1, True), (2, False)])
def test_softmax_forms(tmp_path, axis, stable):
    ir = check_model(single(lambda g, x: softmax_decomposed(g, x, axis, stable)), np_in(), tmp_path, tol=1e-5)
    (line,) = node_lines(ir, "Softmax")
    assert f"axis = {axis % 3}" in line, line
    assert op_counts(ir) == {"Softmax": 1, "Identity": 1}, ir


def rope_model(form, hd=16, heads=3, max_pos=32):
    """q [batch, heads, seq, hd] rotated with position ids."""
    g = G()
    inter = form == "interleaved"
    if form == "runtime":
        cos, sin = hf_rotary(g, "pos", hd)
    else:
        ct, st = rope_tables(max_pos, hd, inter)
        cos = g.op("Gather", g.const(ct, "cos_cached"), "pos", axis=0)
        sin = g.op("Gather", g.const(st, "sin_cached"), "pos", axis=0)
    cos, sin = g.op("Unsqueeze", cos, g.i64(1)), g.op("Unsqueeze", sin, g.i64(1))
    if form == "partial":  # rotate the first half of the head only (GPT-NeoX)
        rd = hd // 2
        ct, st = rope_tables(max_pos, rd)
        cos = g.op("Unsqueeze", g.op("Gather", g.const(ct, "cos_p"), "pos", axis=0), g.i64(1))
        sin = g.op("Unsqueeze", g.op("Gather", g.const(st, "sin_p"), "pos", axis=0), g.i64(1))
        q_rot = g.op("Slice", "q", g.i64(0), g.i64(rd), g.i64(-1))
        q_pass = g.op("Slice", "q", g.i64(rd), g.i64(INT64_MAX), g.i64(-1))
        y = g.op("Concat", apply_rope(g, q_rot, cos, sin, rd), q_pass, axis=-1)
    else:
        y = apply_rope(g, "q", cos, sin, hd, inter)
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return make_model(g.nodes, [("q", TP.FLOAT, ["batch", heads, "seq", hd]),
                                ("pos", TP.INT64, ["batch", "seq"])],
                      [("y", TP.FLOAT, None)], g.inits, opset=18)


@pytest.mark.parametrize("form", ["table", "interleaved", "runtime", "partial"])
def test_rope_forms(tmp_path, form):
    q = rnd(2, 3, 5, 16)
    pos = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]], np.int64)
    ir = check_model(rope_model(form), {"q": q, "pos": pos}, tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert c["RotaryEmbedding"] == 1 and "Neg" not in c, c
    # the rotation's slices and concat are gone (a runtime cos/sin keeps its own concat and shape)
    assert c["Concat"] == (2 if form == "runtime" else 0), c
    (line,) = node_lines(ir, "RotaryEmbedding")
    assert ("interleaved = 1" in line) == (form == "interleaved"), line
    if form == "partial":
        assert "rotary_embedding_dim = 8" in line, line
    if form in ("table", "interleaved", "partial"):
        # a const table gathered by position ids: the op's table + position_ids form
        assert re.search(r"RotaryEmbedding\(%q, %\S+, %\S+, %pos\)", line), line
        assert "Gather" not in c, c


def sdpa_model(causal=True, bias=False):
    """torch.onnx's scaled_dot_product_attention (opset 14+): q and k^T each
    scaled by sqrt(scale), the causal mask from Trilu over ones, on 4-D
    inputs whose output stays 4-D."""
    g = G()
    scale = g.op("Div", g.f32(1.0), g.op("Sqrt", g.op("Cast", g.op("Slice", g.op("Shape", "q"), g.i64(-1),
                                                                   g.i64(INT64_MAX)), to=TP.FLOAT)))
    kt = g.op("Transpose", "k", perm=[0, 1, 3, 2])
    qs = g.op("Mul", "q", g.op("Sqrt", scale))
    ks = g.op("Mul", kt, g.op("Sqrt", scale))
    s = g.op("MatMul", qs, ks)
    if causal:
        size = g.op("Concat", g.op("Slice", g.op("Shape", "q"), g.i64(-2), g.i64(-1)),
                    g.op("Slice", g.op("Shape", "k"), g.i64(-2), g.i64(-1)), axis=0)
        ones = g.op("Expand", g.const(np.ones(1, np.float32), "one"), size)
        tri = g.op("Trilu", ones, upper=0)
        m = g.op("Where", g.op("Equal", tri, g.const(np.zeros(1, np.float32), "zero")),
                 g.const(np.array([-np.inf], np.float32), "ninf"), g.const(np.zeros(1, np.float32), "zero2"))
        s = g.op("Add", s, m)
    if bias:
        s = g.op("Add", s, "bias")
    y = g.op("MatMul", g.op("Softmax", s, axis=-1), "v")
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    shp = ["batch", 4, "seq", 8]
    ins = [("q", TP.FLOAT, shp), ("k", TP.FLOAT, shp), ("v", TP.FLOAT, shp)]
    if bias:
        ins.append(("bias", TP.FLOAT, ["batch", 1, "seq", "seq"]))
    return make_model(g.nodes, ins, [("y", TP.FLOAT, None)], g.inits, opset=18)


@pytest.mark.parametrize("causal,bias", [(True, False), (False, True), (True, True)])
def test_sdpa_to_onnx_attention(tmp_path, causal, bias):
    ins = {n: rnd(2, 4, 6, 8) for n in "qkv"}
    if bias:
        ins["bias"] = rnd(2, 1, 6, 6)
    ir = check_model(sdpa_model(causal, bias), ins, tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert c["Attention"] == 1 and "Softmax" not in c and "Trilu" not in c, c
    (line,) = node_lines(ir, "Attention")
    assert f"is_causal = {int(causal)}" in line, line
    assert abs(float(re.search(r"scale = ([0-9.e-]+)", line).group(1)) - 8 ** -0.5) < 1e-7, line
    assert ("%bias" in line) == bias, line


def test_range_less_mask_with_cache_to_onnx_attention(tmp_path):
    """Heads kept 4-D, a KV cache, and a boolean mask j < past + i + 1 from
    Range/Less: ONNX Attention with past/present and is_causal."""
    g = G()
    k_all = g.op("Concat", "past_k", "k", axis=2)
    v_all = g.op("Concat", "past_v", "v", axis=2)
    seq, past = g.dim("q", 2), g.dim("past_k", 2)
    total = g.op("Squeeze", g.op("Add", seq, past), g.i64(0))
    one = g.const(np.int64(1), "one")
    keys = g.op("Unsqueeze", g.op("Range", g.const(np.int64(0), "zero"), total, one), g.i64(0))
    start = g.op("Add", g.op("Squeeze", past, g.i64(0)), one)
    limit = g.op("Squeeze", g.op("Add", g.op("Add", seq, past), g.i64(1)), g.i64(0))
    queries = g.op("Unsqueeze", g.op("Range", start, limit, one), g.i64(1))
    mask = g.op("Less", keys, queries)
    s = g.op("Div", g.op("MatMul", "q", g.op("Transpose", k_all, perm=[0, 1, 3, 2])), g.f32(np.sqrt(8)))
    s = g.op("Where", mask, s, g.f32(F32_MIN))
    g.nodes.append(helper.make_node("MatMul", [g.op("Softmax", s, axis=-1), v_all], ["y"]))
    g.nodes.append(helper.make_node("Identity", [k_all], ["present_k"]))
    g.nodes.append(helper.make_node("Identity", [v_all], ["present_v"]))
    cur, cache = ["batch", 2, "seq", 8], ["batch", 2, "past", 8]
    model = make_model(g.nodes, [("q", TP.FLOAT, cur), ("k", TP.FLOAT, cur), ("v", TP.FLOAT, cur),
                                 ("past_k", TP.FLOAT, cache), ("past_v", TP.FLOAT, cache)],
                       [("y", TP.FLOAT, None), ("present_k", TP.FLOAT, None), ("present_v", TP.FLOAT, None)],
                       g.inits, opset=18)
    ins = {"q": rnd(2, 2, 3, 8), "k": rnd(2, 2, 3, 8), "v": rnd(2, 2, 3, 8),
           "past_k": rnd(2, 2, 4, 8), "past_v": rnd(2, 2, 4, 8)}
    ir = check_model(model, ins, tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert c["Attention"] == 1 and not {"Range", "Less", "Where", "Softmax", "Concat"} & set(c), c
    (line,) = node_lines(ir, "Attention")
    assert "is_causal = 1" in line and "%past_k, %past_v" in line, line


# ---- what must not fuse ------------------------------------------------------------------

def test_extra_reader_blocks_fusion(tmp_path):
    """An intermediate with a reader outside the pattern (here the variance
    is also a graph output; the tanh is read twice) keeps the pattern as is."""
    def ln(g, x):
        mean = g.op("ReduceMean", x, g.i64(-1), keepdims=1)
        d = g.op("Sub", x, mean)
        g.nodes.append(helper.make_node("ReduceMean", [g.op("Mul", d, d), g.i64(-1)], ["var"], keepdims=1))
        return g.op("Div", d, g.op("Sqrt", g.op("Add", "var", g.f32(1e-5))))

    ir = check_model(single(ln, extra_outputs=["var"]), np_in(), tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert "LayerNormalization" not in c and c["ReduceMean"] == 2 and c["Sqrt"] == 1, c

    def gelu_shared(g, x):
        y = gelu_tanh(g, x)
        tanh = [n.output[0] for n in g.nodes if n.op_type == "Tanh"][0]
        return g.op("Add", y, tanh)

    ir = check_model(single(gelu_shared), np_in(), tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert "Gelu" not in c and c["Tanh"] == 1 and c["Pow"] == 1, c


def test_look_alikes_do_not_fuse(tmp_path):
    """Near misses: the wrong GELU constant, sigmoid of another value, a
    variance over other axes than the mean, a non-causal triangular mask."""
    def body(g, x):
        a = g.op("Mul", g.op("Mul", x, g.f32(0.5)),
                 g.op("Add", g.f32(1.0), g.op("Erf", g.op("Mul", x, g.f32(0.75)))))
        b = g.op("Mul", x, g.op("Sigmoid", g.op("Add", x, g.f32(1.0))))
        mean = g.op("ReduceMean", x, g.i64(-1), keepdims=1)
        d = g.op("Sub", x, mean)
        var = g.op("ReduceMean", g.op("Mul", d, d), g.i64(1), keepdims=1)
        c = g.op("Div", d, g.op("Sqrt", g.op("Add", var, g.f32(1e-5))))
        return g.op("Add", g.op("Add", a, b), c)

    ir = check_model(single(body), np_in(), tmp_path, tol=1e-5)
    c = op_counts(ir)
    assert not {"Gelu", "Silu", "QuickGelu", "LayerNormalization", "RMSNormalization"} & set(c), c


def test_upper_triangular_mask_is_not_causal(tmp_path):
    """Trilu(upper=1) lets queries see later keys: kept as a bias."""
    def model():
        g = G()
        s = g.op("Mul", g.op("MatMul", "q", g.op("Transpose", "k", perm=[0, 1, 3, 2])), g.f32(0.3))
        size = g.op("Concat", g.dim("q", 2), g.dim("k", 2), axis=0)
        tri = g.op("Trilu", g.op("Expand", g.const(np.ones(1, np.float32), "one"), size), upper=1)
        m = g.op("Where", g.op("Equal", tri, g.f32(0.0)), g.f32(F32_MIN), g.f32(0.0))
        y = g.op("MatMul", g.op("Softmax", g.op("Add", s, m), axis=-1), "v")
        g.nodes.append(helper.make_node("Identity", [y], ["y"]))
        shp = ["batch", 2, "seq", 8]
        return make_model(g.nodes, [(n, TP.FLOAT, shp) for n in "qkv"], [("y", TP.FLOAT, None)],
                          g.inits, opset=18)

    ir = check_model(model(), {n: rnd(1, 2, 5, 8) for n in "qkv"}, tmp_path, tol=1e-5)
    (line,) = node_lines(ir, "Attention")
    assert "is_causal = 0" in line and line.count("%") >= 5, line


def test_pass_listed_and_in_default_pipeline(tmp_path):
    out = run_kiln("ir", "--list-passes").stdout
    assert "default pipeline: canonicalize,fuse,canonicalize" in out
    assert re.search(r"^\s+fuse\s", out, re.M), out
    # the default pipeline (what kiln build runs) fuses the same way
    path = save(llama_model(1), tmp_path / "m.onnx")
    default = run_kiln("ir", path, "--after", "canonicalize", "--verify-each").stdout
    fused = op_counts(run_kiln("ir", path, "--passes", "canonicalize,fuse,canonicalize", "--verify-each").stdout)
    assert op_counts(fuse(path)) == fused, (op_counts(fuse(path)), fused)
    assert "GQAttention" in fused and "GQAttention" not in op_counts(default)
