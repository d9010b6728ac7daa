"""Zoo member: a tiny Mixtral-style mixture of experts: 4 experts per layer,
softmax router, top-2 routing with the chosen weights renormalized, written
in the dense export form (TopK, ScatterElements into [tokens, experts],
every expert weighted by its column); GQA; opset 18 (axes as inputs).
Usage: gen_mixtral.py OUT"""
import onnx_build as ob

CONFIG = dict(vocab=320, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, inter=96,
              act="silu", eps=1e-5, rope_theta=1000000.0, experts=4, top_k=2, opset=18)


def make():
    return ob.llama_like(CONFIG, seed=17, name="mixtral_tiny")


if __name__ == "__main__":
    ob.main(make)
