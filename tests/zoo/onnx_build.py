"""Shared pieces of the zoo's ONNX generators (gen_*.py).

The graphs are written the way torch.onnx.export writes Hugging Face models
(optimum's decoder-with-past form): shapes rebuilt at run time from
Shape -> Gather -> Unsqueeze -> Concat chains, RMSNorm/LayerNorm/GELU/SiLU
decomposed into elementwise ops, RoPE as cos/sin computed from position_ids
plus rotate_half (Slice/Neg/Concat), repeat_kv as Unsqueeze/Expand/Reshape,
the causal mask built from Range/compare/Where, and the KV cache as
past_key_values.N.key/value inputs concatenated into present.N.key/value
outputs. Dims are symbolic (batch_size, sequence_length,
past_sequence_length). Weights are random with a fixed seed; sizes are
tiny so the whole zoo runs in minutes.

Nothing here is kiln-specific: onnxruntime runs every generated model as-is
and is the reference the zoo compares kiln with.
"""
import math
import os

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

F32_MIN = float(np.finfo(np.float32).min)
I64_MAX = int(np.iinfo(np.int64).max)

# optimum's dim names
BATCH, SEQ, PAST = "batch_size", "sequence_length", "past_sequence_length"
TOTAL = "past_sequence_length + sequence_length"


class Builder:
    """Collects nodes and initializers; every node gets a unique name."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.k = 0
        self.prefix = ""

    def fresh(self, hint):
        self.k += 1
        return f"/{self.prefix}{hint}_{self.k}"

    def op(self, op, inputs, n_out=1, out=None, **attrs):
        """Adds a node; returns its output name (a list when n_out > 1)."""
        base = self.fresh(op)
        outs = [out] if out else [f"{base}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=base, **attrs))
        return outs[0] if n_out == 1 else outs

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def const(self, arr, hint="Constant"):
        """Small constants are Constant nodes (as torch.onnx.export writes
        shape pieces and scalars), larger ones initializers."""
        arr = np.asarray(arr)
        if arr.size > 16:
            return self.init(self.fresh(hint), arr)
        return self.op("Constant", [], value=numpy_helper.from_array(arr))

    def f32(self, v):
        return self.const(np.array(v, np.float32), "f32")

    def i64(self, *v):
        """1-D int64 constant (shape pieces, axes)."""
        return self.const(np.array(v, np.int64), "i64")

    def i64s(self, v):
        """0-D int64 constant (Gather indices, Range bounds)."""
        return self.const(np.array(v, np.int64), "i64")

    def random(self, shape, scale):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def weight(self, name, shape, scale):
        return self.init(name, self.random(shape, scale))

    # ---- shape chains, as exporters write them ----

    def dim(self, x, axis):
        """Shape(x)[axis] as a 0-D int64."""
        return self.op("Gather", [self.op("Shape", [x]), self.i64s(axis)], axis=0)

    def dim1(self, x, axis):
        """Shape(x)[axis] as a 1-element vector."""
        return self.op("Unsqueeze", [self.dim(x, axis), self.i64(0)])

    def shape_of(self, *parts):
        """Concat of 1-element vectors / python ints into a shape vector."""
        vs = [self.i64(p) if isinstance(p, int) else p for p in parts]
        return self.op("Concat", vs, axis=0)

    def reshape(self, x, *parts):
        return self.op("Reshape", [x, self.shape_of(*parts)])

    def slice_last(self, x, start, end):
        return self.op("Slice", [x, self.i64(start), self.i64(end), self.i64(-1), self.i64(1)])

    def reduce_mean_last(self, x, opset):
        if opset >= 18:
            return self.op("ReduceMean", [x, self.i64(-1)], keepdims=1)
        return self.op("ReduceMean", [x], axes=[-1], keepdims=1)

    def reduce_sum_last(self, x, opset):
        if opset >= 13:
            return self.op("ReduceSum", [x, self.i64(-1)], keepdims=1)
        return self.op("ReduceSum", [x], axes=[-1], keepdims=1)

    # ---- layers ----

    def linear(self, x, name, din, dout, bias=False, bias_scale=0.1):
        """nn.Linear: MatMul with the transposed weight (+ Add bias)."""
        w = self.weight(name + ".weight", (din, dout), din ** -0.5)
        y = self.op("MatMul", [x, w])
        if bias:
            y = self.op("Add", [y, self.weight(name + ".bias", (dout,), bias_scale)])
        return y

    def rms_norm(self, x, name, dim, eps, opset, plus_one=False):
        """x * rsqrt(mean(x^2) + eps) * w   (Gemma: * (1 + w))."""
        var = self.reduce_mean_last(self.op("Pow", [x, self.f32(2.0)]), opset)
        inv = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [var, self.f32(eps)])])])
        y = self.op("Mul", [x, inv])
        base = 0.0 if plus_one else 1.0  # gemma stores w around 0, the others around 1
        w = self.init(name + ".weight", (base + self.rng.standard_normal(dim) * 0.1).astype(np.float32))
        if plus_one:
            w = self.op("Add", [self.f32(1.0), w])
        return self.op("Mul", [w, y])

    def layer_norm_decomposed(self, x, name, dim, eps, opset):
        """(x - mean) / sqrt(var + eps) * g + b, the pre-opset-17 export."""
        mean = self.reduce_mean_last(x, opset)
        d = self.op("Sub", [x, mean])
        var = self.reduce_mean_last(self.op("Pow", [d, self.f32(2.0)]), opset)
        y = self.op("Div", [d, self.op("Sqrt", [self.op("Add", [var, self.f32(eps)])])])
        g = self.init(name + ".weight", (1 + self.rng.standard_normal(dim) * 0.1).astype(np.float32))
        b = self.init(name + ".bias", (self.rng.standard_normal(dim) * 0.1).astype(np.float32))
        return self.op("Add", [self.op("Mul", [y, g]), b])

    def layer_norm(self, x, name, dim, eps):
        """LayerNormalization node (opset >= 17 exports)."""
        g = self.init(name + ".weight", (1 + self.rng.standard_normal(dim) * 0.1).astype(np.float32))
        b = self.init(name + ".bias", (self.rng.standard_normal(dim) * 0.1).astype(np.float32))
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    def silu(self, x):
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def gelu_tanh(self, x):
        """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        x3 = self.op("Pow", [x, self.f32(3.0)])
        inner = self.op("Add", [x, self.op("Mul", [self.f32(0.044715), x3])])
        t = self.op("Tanh", [self.op("Mul", [self.f32(math.sqrt(2 / math.pi)), inner])])
        return self.op("Mul", [self.op("Mul", [self.f32(0.5), x]), self.op("Add", [self.f32(1.0), t])])

    def gelu_erf(self, x):
        """x * 0.5 * (1 + erf(x / sqrt(2)))."""
        e = self.op("Erf", [self.op("Div", [x, self.f32(math.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.f32(1.0)])]), self.f32(0.5)])

    def act(self, x, kind):
        return {"silu": self.silu, "gelu_tanh": self.gelu_tanh, "gelu": self.gelu_erf}[kind](x)


def llama3_inv_freq(inv, factor, low, high, old_ctx):
    """Llama 3.1 frequency scaling, computed at export time (a buffer)."""
    lo_wl, hi_wl = old_ctx / low, old_ctx / high
    out = []
    for f in inv:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(f)
        elif wl > lo_wl:
            out.append(f / factor)
        else:
            s = (old_ctx / wl - low) / (high - low)
            out.append((1 - s) * f / factor + s * f)
    return np.array(out)


def inv_freq(cfg, rot):
    f = 1.0 / cfg.get("rope_theta", 10000.0) ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    rs = cfg.get("rope_scaling")
    if rs and rs["rope_type"] == "llama3":
        f = llama3_inv_freq(f, rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"],
                            rs["original_max_position_embeddings"])
    elif rs and rs["rope_type"] == "linear":
        f = f / rs["factor"]
    return f.astype(np.float32)


def rope_cos_sin(b, position_ids, cfg, rot):
    """HF RotaryEmbedding.forward: freqs = inv_freq[None,:,None] @ pos[:,None,:],
    emb = cat(freqs, freqs); returns cos, sin unsqueezed to [b, 1, seq, rot]."""
    inv = b.const(inv_freq(cfg, rot).reshape(1, -1, 1), "inv_freq")
    inv = b.op("Expand", [inv, b.shape_of(b.dim1(position_ids, 0), 1, 1)])
    pos = b.op("Unsqueeze", [b.op("Cast", [position_ids], to=TP.FLOAT), b.i64(1)])
    freqs = b.op("Transpose", [b.op("MatMul", [inv, pos])], perm=[0, 2, 1])
    emb = b.op("Concat", [freqs, freqs], axis=-1)
    cos = b.op("Unsqueeze", [b.op("Cos", [emb]), b.i64(1)])
    sin = b.op("Unsqueeze", [b.op("Sin", [emb]), b.i64(1)])
    return cos, sin


def apply_rope(b, x, cos, sin, rot, head_dim):
    """x * cos + rotate_half(x) * sin on the first `rot` dims of each head."""
    xr = x if rot == head_dim else b.slice_last(x, 0, rot)
    x1 = b.slice_last(xr, 0, rot // 2)
    x2 = b.slice_last(xr, rot // 2, I64_MAX)
    rotated = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
    y = b.op("Add", [b.op("Mul", [xr, cos]), b.op("Mul", [rotated, sin])])
    if rot != head_dim:
        y = b.op("Concat", [y, b.slice_last(x, rot, I64_MAX)], axis=-1)
    return y


def causal_mask(b, input_ids, attention_mask, past_key, window=0):
    """The additive mask [batch, 1, seq, past+seq]: 0 where a query may see a
    key, float32 min elsewhere (future keys, padding, beyond the window)."""
    seq = b.dim(input_ids, 1)
    past = b.dim(past_key, 2)
    total = b.dim(attention_mask, 1)
    one = b.i64s(1)
    cache_pos = b.op("Range", [past, b.op("Add", [past, seq]), one])  # positions of the queries
    kpos = b.op("Range", [b.i64s(0), total, one])
    qcol = b.op("Unsqueeze", [cache_pos, b.i64(1)])  # [seq, 1]
    masked = b.op("Greater", [kpos, qcol])  # future keys [seq, total]
    if window:
        too_old = b.op("LessOrEqual", [kpos, b.op("Sub", [qcol, b.i64s(window)])])
        masked = b.op("Or", [masked, too_old])
    pad = b.op("Equal", [attention_mask, b.const(np.array(0, np.int64))])
    pad = b.op("Unsqueeze", [pad, b.i64(1, 2)])  # [batch, 1, 1, total]
    masked = b.op("Or", [b.op("Unsqueeze", [masked, b.i64(0, 1)]), pad])
    return b.op("Where", [masked, b.f32(F32_MIN), b.f32(0.0)])


def decoder_io(cfg):
    """optimum's decoder-with-past inputs and outputs."""
    L, KVH, HD, V = cfg["layers"], cfg["kv_heads"], cfg["head_dim"], cfg["vocab"]
    ins = [helper.make_tensor_value_info("input_ids", TP.INT64, [BATCH, SEQ]),
           helper.make_tensor_value_info("attention_mask", TP.INT64, [BATCH, TOTAL])]
    if cfg.get("position_ids", True):
        ins.append(helper.make_tensor_value_info("position_ids", TP.INT64, [BATCH, SEQ]))
    outs = [helper.make_tensor_value_info("logits", TP.FLOAT, [BATCH, SEQ, V])]
    for i in range(L):
        for kv in ("key", "value"):
            ins.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TP.FLOAT,
                                                     [BATCH, KVH, PAST, HD]))
            outs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", TP.FLOAT, [BATCH, KVH, TOTAL, HD]))
    return ins, outs


def attention(b, x, i, cfg, cos, sin, mask):
    """HF eager attention with a KV cache; returns the o_proj output."""
    D, H, KVH, HD = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    p = f"model.layers.{i}.self_attn."
    bsz, seq = b.dim1(x, 0), b.dim1(x, 1)
    if cfg.get("fused_qkv"):  # phi3: one qkv_proj, split by rows
        qkv = b.linear(x, p + "qkv_proj", D, (H + 2 * KVH) * HD)
        q = b.slice_last(qkv, 0, H * HD)
        k = b.slice_last(qkv, H * HD, (H + KVH) * HD)
        v = b.slice_last(qkv, (H + KVH) * HD, (H + 2 * KVH) * HD)
    else:
        bias = cfg.get("qkv_bias", False)
        q = b.linear(x, p + "q_proj", D, H * HD, bias)
        k = b.linear(x, p + "k_proj", D, KVH * HD, bias)
        v = b.linear(x, p + "v_proj", D, KVH * HD, bias)

    def heads(t):  # view(*input_shape, -1, head_dim).transpose(1, 2)
        return b.op("Transpose", [b.reshape(t, bsz, seq, -1, HD)], perm=[0, 2, 1, 3])

    q, k, v = heads(q), heads(k), heads(v)
    rot = cfg.get("rotary_dim", HD)
    q = apply_rope(b, q, cos, sin, rot, HD)
    k = apply_rope(b, k, cos, sin, rot, HD)
    k = b.op("Concat", [f"past_key_values.{i}.key", k], axis=2, out=f"present.{i}.key")
    v = b.op("Concat", [f"past_key_values.{i}.value", v], axis=2, out=f"present.{i}.value")
    if H != KVH:  # repeat_kv: [b, kvh, T, hd] -> [b, kvh, rep, T, hd] -> [b, h, T, hd]
        T = b.dim1(k, 2)

        def rep(t):
            t = b.op("Unsqueeze", [t, b.i64(2)])
            t = b.op("Expand", [t, b.shape_of(bsz, KVH, H // KVH, T, HD)])
            return b.reshape(t, bsz, H, T, HD)

        k, v = rep(k), rep(v)
    scale = cfg.get("attn_scale", HD ** -0.5)
    sc = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    sc = b.op("Add", [b.op("Mul", [sc, b.f32(scale)]), mask])
    pr = b.op("Softmax", [sc], axis=-1)
    y = b.op("Transpose", [b.op("MatMul", [pr, v])], perm=[0, 2, 1, 3])
    y = b.reshape(y, bsz, seq, -1)
    return b.linear(y, p + "o_proj", H * HD, D)


def mlp(b, x, i, cfg):
    D, F = cfg["hidden"], cfg["inter"]
    p = f"model.layers.{i}.mlp."
    if cfg.get("fused_gate_up"):  # phi3: gate_up_proj then chunk(2)
        gu = b.linear(x, p + "gate_up_proj", D, 2 * F)
        g, u = b.op("Split", [gu, b.i64(F, F)], n_out=2, axis=-1)
    else:
        g, u = b.linear(x, p + "gate_proj", D, F), b.linear(x, p + "up_proj", D, F)
    return b.linear(b.op("Mul", [b.act(g, cfg["act"]), u]), p + "down_proj", F, D)


def moe(b, x, i, cfg, opset):
    """Mixtral sparse MoE in the dense export form: softmax router, top-k,
    renormalized weights scattered into [tokens, experts], every expert's
    MLP weighted by its column (zero for experts a token did not pick)."""
    D, F, E, K = cfg["hidden"], cfg["inter"], cfg["experts"], cfg["top_k"]
    p = f"model.layers.{i}.block_sparse_moe."
    bsz, seq = b.dim1(x, 0), b.dim1(x, 1)
    flat = b.reshape(x, -1, D)
    router = b.op("MatMul", [flat, b.weight(p + "gate.weight", (D, E), D ** -0.5 * 2)])
    probs = b.op("Softmax", [router], axis=1)
    topw, topi = b.op("TopK", [probs, b.i64(K)], n_out=2, axis=-1)
    topw = b.op("Div", [topw, b.reduce_sum_last(topw, opset)])
    dense = b.op("ConstantOfShape", [b.op("Shape", [probs])],
                 value=helper.make_tensor("v", TP.FLOAT, [1], [0.0]))
    dense = b.op("ScatterElements", [dense, topi, topw], axis=1)
    out = None
    for e in range(E):
        q = p + f"experts.{e}."
        h = b.op("Mul", [b.act(b.linear(flat, q + "w1", D, F), cfg["act"]), b.linear(flat, q + "w3", D, F)])
        y = b.op("Mul", [b.linear(h, q + "w2", F, D), b.slice_last(dense, e, e + 1)])
        out = y if out is None else b.op("Add", [out, y])
    return b.reshape(out, bsz, seq, D)


def llama_like(cfg, seed, name):
    """Llama / Mistral / Qwen2 / Phi-3 / Gemma / Mixtral decoder with past."""
    opset = cfg.get("opset", 17)
    b = Builder(seed)
    D, V = cfg["hidden"], cfg["vocab"]
    emb = b.weight("model.embed_tokens.weight", (V, D), cfg.get("embed_std", 1.0))
    x = b.op("Gather", [emb, "input_ids"], axis=0)
    if cfg.get("embed_scale"):  # gemma: * sqrt(hidden), a constant of the activations' type
        x = b.op("Mul", [x, b.f32(math.sqrt(D))])
    mask = causal_mask(b, "input_ids", "attention_mask", "past_key_values.0.key", cfg.get("window", 0))
    cos, sin = rope_cos_sin(b, "position_ids", cfg, cfg.get("rotary_dim", cfg["head_dim"]))
    eps, plus = cfg.get("eps", 1e-6), cfg.get("norm_plus_one", False)
    for i in range(cfg["layers"]):
        b.prefix = f"model/layers.{i}/"
        h = b.rms_norm(x, f"model.layers.{i}.input_layernorm", D, eps, opset, plus)
        x = b.op("Add", [x, attention(b, h, i, cfg, cos, sin, mask)])
        h = b.rms_norm(x, f"model.layers.{i}.post_attention_layernorm", D, eps, opset, plus)
        x = b.op("Add", [x, moe(b, h, i, cfg, opset) if cfg.get("experts") else mlp(b, h, i, cfg)])
    b.prefix = ""
    x = b.rms_norm(x, "model.norm", D, eps, opset, plus)
    if cfg.get("tied"):  # the embedding matrix, transposed, is the head
        head = b.op("Transpose", [emb], perm=[1, 0])
    else:
        head = b.weight("lm_head.weight", (D, V), D ** -0.5 * 4)
    b.op("MatMul", [x, head], out="logits")
    ins, outs = decoder_io(cfg)
    return finish(b, ins, outs, opset, name)


def finish(b, ins, outs, opset, name):
    graph = helper.make_graph(b.nodes, name, ins, outs, b.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="kiln-zoo-generator")
    m.ir_version = 8 if opset <= 17 else 10
    onnx.checker.check_model(m)
    return m


def save(model, out):
    """Writes model.onnx into folder `out` (or to the file `out`)."""
    path = out if out.endswith(".onnx") else os.path.join(out, "model.onnx")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save_model(model, path)
    return path


def main(make):
    """Command line of every generator: gen_X.py OUT (folder or .onnx file)."""
    import sys
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR_OR_FILE.onnx")
    print(save(make(), sys.argv[1]))
