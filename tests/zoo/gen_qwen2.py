"""Zoo member: a tiny Qwen2 decoder (q/k/v projections with biases, GQA,
rope_theta 1e6), exported with past_key_values. Usage: gen_qwen2.py OUT"""
import onnx_build as ob

CONFIG = dict(vocab=352, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, inter=160,
              act="silu", eps=1e-6, rope_theta=1000000.0, qkv_bias=True)


def make():
    return ob.llama_like(CONFIG, seed=5, name="qwen2_tiny")


if __name__ == "__main__":
    ob.main(make)
