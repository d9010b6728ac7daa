"""Zoo member: a tiny Gemma decoder: embeddings scaled by sqrt(hidden),
RMSNorm scaled by (1 + w), tanh-approximated GELU gating, multi-query
attention (one KV head), head_dim larger than hidden / heads, and the
transposed embedding as the head (a Transpose node on the tied weight).
Usage: gen_gemma.py OUT"""
import onnx_build as ob

CONFIG = dict(vocab=384, hidden=64, layers=2, heads=4, kv_heads=1, head_dim=32, inter=192,
              act="gelu_tanh", eps=1e-6, rope_theta=10000.0, embed_scale=True, norm_plus_one=True,
              tied=True, embed_std=0.05)


def make():
    return ob.llama_like(CONFIG, seed=13, name="gemma_tiny")


if __name__ == "__main__":
    ob.main(make)
