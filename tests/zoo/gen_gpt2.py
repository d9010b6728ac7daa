"""Zoo member: a tiny GPT-2 with past_key_values, as transformers' GPT2 is
exported: learned positions gathered by position_ids, LayerNormalization
nodes (opset 17), Conv1D weights [in, out], the fused c_attn split in three,
the causal mask sliced from the registered `bias` buffer by the key and
query lengths and applied with Where, the attention_mask added as
(1 - mask) * float32 min, tanh GELU (gelu_new) decomposed, and a head that
is the transposed token embedding (folded into its own initializer, as the
exporter's constant folding leaves it). Usage: gen_gpt2.py OUT"""
import math

import numpy as np
from onnx import TensorProto as TP

import onnx_build as ob

CONFIG = dict(vocab=320, hidden=64, layers=2, heads=4, kv_heads=4, head_dim=16, n_positions=128,
              eps=1e-5, position_ids=True)
OPSET = 17


def make():
    c = CONFIG
    b = ob.Builder(seed=2)
    D, H, HD, V, L = c["hidden"], c["heads"], c["head_dim"], c["vocab"], c["layers"]
    wte_arr = b.random((V, D), 0.1)
    wte = b.init("transformer.wte.weight", wte_arr)
    wpe = b.weight("transformer.wpe.weight", (c["n_positions"], D), 0.5)
    x = b.op("Add", [b.op("Gather", [wte, "input_ids"], axis=0), b.op("Gather", [wpe, "position_ids"], axis=0)])
    # (1 - attention_mask) * min, broadcast over heads and queries
    am = b.op("Cast", [b.op("Unsqueeze", ["attention_mask", b.i64(1, 2)])], to=TP.FLOAT)
    am = b.op("Mul", [b.op("Sub", [b.f32(1.0), am]), b.f32(ob.F32_MIN)])
    n_pos = c["n_positions"]
    bias = b.init("transformer.h.attn.bias", np.tril(np.ones((n_pos, n_pos), bool))[None, None])
    for i in range(L):
        b.prefix = f"transformer/h.{i}/"
        p = f"transformer.h.{i}."
        h = b.layer_norm(x, p + "ln_1", D, c["eps"])
        bsz, seq = b.dim1(h, 0), b.dim1(h, 1)
        qkv = b.op("Add", [b.op("MatMul", [h, b.weight(p + "attn.c_attn.weight", (D, 3 * D), D ** -0.5)]),
                           b.weight(p + "attn.c_attn.bias", (3 * D,), 0.1)])
        q, k, v = b.op("Split", [qkv, b.i64(D, D, D)], n_out=3, axis=2)

        def heads(t):
            return b.op("Transpose", [b.reshape(t, bsz, seq, H, HD)], perm=[0, 2, 1, 3])

        q, k, v = heads(q), heads(k), heads(v)
        k = b.op("Concat", [f"past_key_values.{i}.key", k], axis=-2, out=f"present.{i}.key")
        v = b.op("Concat", [f"past_key_values.{i}.value", v], axis=-2, out=f"present.{i}.value")
        w = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
        w = b.op("Div", [w, b.f32(math.sqrt(HD))])
        q_len, k_len = b.dim1(q, 2), b.dim1(k, 2)
        causal = b.op("Slice", [bias, b.op("Sub", [k_len, q_len]), k_len, b.i64(2)])
        causal = b.op("Slice", [causal, b.i64(0), k_len, b.i64(3)])
        w = b.op("Where", [causal, w, b.f32(ob.F32_MIN)])
        w = b.op("Softmax", [b.op("Add", [w, am])], axis=-1)
        a = b.op("Transpose", [b.op("MatMul", [w, v])], perm=[0, 2, 1, 3])
        a = b.reshape(a, bsz, seq, D)
        a = b.op("Add", [b.op("MatMul", [a, b.weight(p + "attn.c_proj.weight", (D, D), D ** -0.5)]),
                         b.weight(p + "attn.c_proj.bias", (D,), 0.1)])
        x = b.op("Add", [a, x])
        h = b.layer_norm(x, p + "ln_2", D, c["eps"])
        h = b.op("Add", [b.op("MatMul", [h, b.weight(p + "mlp.c_fc.weight", (D, 4 * D), D ** -0.5)]),
                         b.weight(p + "mlp.c_fc.bias", (4 * D,), 0.1)])
        h = b.gelu_tanh(h)
        h = b.op("Add", [b.op("MatMul", [h, b.weight(p + "mlp.c_proj.weight", (4 * D, D), (4 * D) ** -0.5)]),
                         b.weight(p + "mlp.c_proj.bias", (D,), 0.1)])
        x = b.op("Add", [x, h])
    b.prefix = ""
    x = b.layer_norm(x, "transformer.ln_f", D, c["eps"])
    head = b.init("lm_head.weight", np.ascontiguousarray(wte_arr.T))
    b.op("MatMul", [x, head], out="logits")
    ins, outs = ob.decoder_io(c)
    return ob.finish(b, ins, outs, OPSET, "gpt2_tiny")


if __name__ == "__main__":
    ob.main(make)
