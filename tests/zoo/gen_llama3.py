"""Zoo member: a tiny Llama-3 decoder (GQA, llama3 RoPE frequency scaling,
untied head), exported with past_key_values. Usage: gen_llama3.py OUT"""
import onnx_build as ob

CONFIG = dict(vocab=384, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, inter=176,
              act="silu", eps=1e-5, rope_theta=500000.0,
              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                original_max_position_embeddings=32))


def make():
    return ob.llama_like(CONFIG, seed=3, name="llama3_tiny")


if __name__ == "__main__":
    ob.main(make)
