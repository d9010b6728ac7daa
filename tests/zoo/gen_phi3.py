"""Zoo member: a tiny Phi-3 decoder: fused qkv_proj sliced into q, k, v;
fused gate_up_proj split in two; partial rotary embedding (the first 12
of 16 head dims rotate); sliding window; exported with past_key_values.
Usage: gen_phi3.py OUT"""
import onnx_build as ob

CONFIG = dict(vocab=336, hidden=64, layers=2, heads=4, kv_heads=4, head_dim=16, inter=128,
              act="silu", eps=1e-5, rope_theta=10000.0, rotary_dim=12, window=2047,
              fused_qkv=True, fused_gate_up=True)


def make():
    return ob.llama_like(CONFIG, seed=11, name="phi3_tiny")


if __name__ == "__main__":
    ob.main(make)
