"""Zoo member: a tiny Mistral decoder with a sliding window of 4 positions
(shorter than the zoo's prompt + generation, so the window really masks),
GQA, exported with past_key_values. Usage: gen_mistral.py OUT"""
import onnx_build as ob

CONFIG = dict(vocab=320, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, inter=144,
              act="silu", eps=1e-5, rope_theta=10000.0, window=4)


def make():
    return ob.llama_like(CONFIG, seed=7, name="mistral_tiny")


if __name__ == "__main__":
    ob.main(make)
