"""Zoo member: a tiny BERT encoder as older exporters write it (opset 14,
so LayerNorm is decomposed into ReduceMean/Sub/Pow/Sqrt/Div), with
word + position + token-type embeddings (positions sliced from the
registered position_ids buffer), the extended attention mask
(1 - mask) * float32 min, erf GELU, post-LN layers, and sentence-transformers'
masked mean pooling as a second output. Usage: gen_bert.py OUT"""
import math

import numpy as np
from onnx import TensorProto as TP
from onnx import helper

import onnx_build as ob

CONFIG = dict(vocab=300, hidden=64, layers=2, heads=4, inter=128, max_pos=64, type_vocab=2, eps=1e-12)
OPSET = 14


def make():
    c = CONFIG
    b = ob.Builder(seed=19)
    D, H, L, F = c["hidden"], c["heads"], c["layers"], c["inter"]
    HD = D // H
    e = "embeddings."
    pos_buf = b.init(e + "position_ids", np.arange(c["max_pos"], dtype=np.int64)[None])
    seq = b.dim1("input_ids", 1)
    pos = b.op("Slice", [pos_buf, b.i64(0), seq, b.i64(1)])
    x = b.op("Gather", [b.weight(e + "word_embeddings.weight", (c["vocab"], D), 1.0), "input_ids"], axis=0)
    x = b.op("Add", [x, b.op("Gather", [b.weight(e + "token_type_embeddings.weight", (c["type_vocab"], D), 0.5),
                                       "token_type_ids"], axis=0)])
    x = b.op("Add", [x, b.op("Gather", [b.weight(e + "position_embeddings.weight", (c["max_pos"], D), 0.5), pos],
                             axis=0)])
    x = b.layer_norm_decomposed(x, e + "LayerNorm", D, c["eps"], OPSET)
    ext = b.op("Cast", [b.op("Unsqueeze", ["attention_mask", b.i64(1, 2)])], to=TP.FLOAT)
    ext = b.op("Mul", [b.op("Sub", [b.f32(1.0), ext]), b.f32(ob.F32_MIN)])
    for i in range(L):
        b.prefix = f"encoder/layer.{i}/"
        p = f"encoder.layer.{i}."
        bsz, sq = b.dim1(x, 0), b.dim1(x, 1)

        def heads(t, perm):
            return b.op("Transpose", [b.reshape(t, bsz, sq, H, HD)], perm=perm)

        a = p + "attention.self."
        q = heads(b.linear(x, a + "query", D, D, bias=True), [0, 2, 1, 3])
        k = heads(b.linear(x, a + "key", D, D, bias=True), [0, 2, 3, 1])
        v = heads(b.linear(x, a + "value", D, D, bias=True), [0, 2, 1, 3])
        s = b.op("Div", [b.op("MatMul", [q, k]), b.f32(math.sqrt(HD))])
        pr = b.op("Softmax", [b.op("Add", [s, ext])], axis=-1)
        y = b.reshape(b.op("Transpose", [b.op("MatMul", [pr, v])], perm=[0, 2, 1, 3]), bsz, sq, D)
        y = b.linear(y, p + "attention.output.dense", D, D, bias=True)
        x = b.layer_norm_decomposed(b.op("Add", [y, x]), p + "attention.output.LayerNorm", D, c["eps"], OPSET)
        h = b.gelu_erf(b.linear(x, p + "intermediate.dense", D, F, bias=True))
        h = b.linear(h, p + "output.dense", F, D, bias=True)
        x = b.layer_norm_decomposed(b.op("Add", [h, x]), p + "output.LayerNorm", D, c["eps"], OPSET)
    b.prefix = ""
    b.op("Identity", [x], out="last_hidden_state")
    # mean pooling: sum(x * mask) / clamp(sum(mask), 1e-9)
    m = b.op("Cast", [b.op("Unsqueeze", ["attention_mask", b.i64(-1)])], to=TP.FLOAT)
    m = b.op("Expand", [m, b.op("Shape", [x])])
    num = b.op("ReduceSum", [b.op("Mul", [x, m]), b.i64(1)], keepdims=0)
    den = b.op("Clip", [b.op("ReduceSum", [m, b.i64(1)], keepdims=0), b.f32(1e-9)])
    b.op("Div", [num, den], out="sentence_embedding")
    B, S = "batch_size", "sequence_length"
    ins = [helper.make_tensor_value_info(n, TP.INT64, [B, S])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TP.FLOAT, [B, S, D]),
            helper.make_tensor_value_info("sentence_embedding", TP.FLOAT, [B, D])]
    return ob.finish(b, ins, outs, OPSET, "bert_tiny")


if __name__ == "__main__":
    ob.main(make)
