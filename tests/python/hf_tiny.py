"""Tiny random-weight Hugging Face checkpoints (config.json + safetensors)
for the model-family tests. State-dict names follow transformers."""
import json
import os

import numpy as np


def _w(rng, *shape, scale=0.2):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _norm(rng, n):
    return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)


BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=101, max_position_embeddings=128, rms_norm_eps=1e-5,
            rope_theta=10000.0)


def config(model_type, **over):
    if model_type == "gpt2":
        cfg = dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=101,
                   layer_norm_epsilon=1e-5, activation_function="gelu_new")
    elif model_type == "bert":
        cfg = dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=96, vocab_size=101, max_position_embeddings=64, type_vocab_size=2,
                   layer_norm_eps=1e-12, hidden_act="gelu")
    else:
        cfg = dict(BASE, model_type=model_type)
        if model_type == "gemma":
            cfg.update(head_dim=32, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
        if model_type == "mixtral":
            cfg.update(num_local_experts=4, num_experts_per_tok=2)
    cfg.update(over)
    return cfg


def weights(cfg, seed=0):
    """Random state dict for cfg under transformers' names."""
    rng = np.random.default_rng(seed)
    mt = cfg["model_type"]
    W = {}
    if mt == "gpt2":
        D, V, L, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"], cfg["n_positions"]
        F = cfg.get("n_inner") or 4 * D
        W["transformer.wte.weight"] = _w(rng, V, D, scale=0.5)
        W["transformer.wpe.weight"] = _w(rng, P, D, scale=0.1)
        for i in range(L):
            p = f"transformer.h.{i}."
            W[p + "ln_1.weight"], W[p + "ln_1.bias"] = _norm(rng, D), _w(rng, D, scale=0.05)
            W[p + "attn.c_attn.weight"], W[p + "attn.c_attn.bias"] = _w(rng, D, 3 * D), _w(rng, 3 * D, scale=0.05)
            W[p + "attn.c_proj.weight"], W[p + "attn.c_proj.bias"] = _w(rng, D, D), _w(rng, D, scale=0.05)
            W[p + "ln_2.weight"], W[p + "ln_2.bias"] = _norm(rng, D), _w(rng, D, scale=0.05)
            W[p + "mlp.c_fc.weight"], W[p + "mlp.c_fc.bias"] = _w(rng, D, F), _w(rng, F, scale=0.05)
            W[p + "mlp.c_proj.weight"], W[p + "mlp.c_proj.bias"] = _w(rng, F, D), _w(rng, D, scale=0.05)
        W["transformer.ln_f.weight"], W["transformer.ln_f.bias"] = _norm(rng, D), _w(rng, D, scale=0.05)
        return W
    if mt == "bert":
        D, V, L, F = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
        e = "embeddings."
        W[e + "word_embeddings.weight"] = _w(rng, V, D, scale=0.5)
        W[e + "position_embeddings.weight"] = _w(rng, cfg["max_position_embeddings"], D, scale=0.1)
        W[e + "token_type_embeddings.weight"] = _w(rng, cfg["type_vocab_size"], D, scale=0.1)
        W[e + "LayerNorm.weight"], W[e + "LayerNorm.bias"] = _norm(rng, D), _w(rng, D, scale=0.05)
        W[e + "position_ids"] = np.arange(cfg["max_position_embeddings"], dtype=np.int64)[None]
        for i in range(L):
            p = f"encoder.layer.{i}."
            for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense"):
                W[p + n + ".weight"], W[p + n + ".bias"] = _w(rng, D, D), _w(rng, D, scale=0.05)
            W[p + "attention.output.LayerNorm.weight"] = _norm(rng, D)
            W[p + "attention.output.LayerNorm.bias"] = _w(rng, D, scale=0.05)
            W[p + "intermediate.dense.weight"], W[p + "intermediate.dense.bias"] = _w(rng, F, D), _w(rng, F, scale=0.05)
            W[p + "output.dense.weight"], W[p + "output.dense.bias"] = _w(rng, D, F), _w(rng, D, scale=0.05)
            W[p + "output.LayerNorm.weight"] = _norm(rng, D)
            W[p + "output.LayerNorm.bias"] = _w(rng, D, scale=0.05)
        return W
    D, V, L, F = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    H, KVH = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or D // H
    W["model.embed_tokens.weight"] = _w(rng, V, D, scale=0.5)
    for i in range(L):
        p = f"model.layers.{i}."
        W[p + "input_layernorm.weight"] = _norm(rng, D) - (1 if mt == "gemma" else 0)
        W[p + "post_attention_layernorm.weight"] = _norm(rng, D) - (1 if mt == "gemma" else 0)
        if mt == "phi3":
            W[p + "self_attn.qkv_proj.weight"] = _w(rng, (H + 2 * KVH) * hd, D)
            W[p + "mlp.gate_up_proj.weight"] = _w(rng, 2 * F, D)
        else:
            W[p + "self_attn.q_proj.weight"] = _w(rng, H * hd, D)
            W[p + "self_attn.k_proj.weight"] = _w(rng, KVH * hd, D)
            W[p + "self_attn.v_proj.weight"] = _w(rng, KVH * hd, D)
        if mt == "qwen2" or cfg.get("attention_bias"):
            W[p + "self_attn.q_proj.bias"] = _w(rng, H * hd, scale=0.1)
            W[p + "self_attn.k_proj.bias"] = _w(rng, KVH * hd, scale=0.1)
            W[p + "self_attn.v_proj.bias"] = _w(rng, KVH * hd, scale=0.1)
        if cfg.get("attention_bias"):
            W[p + "self_attn.o_proj.bias"] = _w(rng, D, scale=0.1)
        W[p + "self_attn.o_proj.weight"] = _w(rng, D, H * hd)
        if mt == "mixtral":
            E = cfg["num_local_experts"]
            W[p + "block_sparse_moe.gate.weight"] = _w(rng, E, D, scale=0.5)
            for e in range(E):
                q = p + f"block_sparse_moe.experts.{e}."
                W[q + "w1.weight"], W[q + "w3.weight"] = _w(rng, F, D), _w(rng, F, D)
                W[q + "w2.weight"] = _w(rng, D, F)
        elif mt != "phi3":
            W[p + "mlp.gate_proj.weight"] = _w(rng, F, D)
            W[p + "mlp.up_proj.weight"] = _w(rng, F, D)
        if mt != "mixtral":
            W[p + "mlp.down_proj.weight"] = _w(rng, D, F)
        if cfg.get("mlp_bias"):
            for n, r in (("gate_proj", F), ("up_proj", F), ("down_proj", D)):
                W[p + f"mlp.{n}.bias"] = _w(rng, r, scale=0.1)
    W["model.norm.weight"] = _norm(rng, D) - (1 if mt == "gemma" else 0)
    if not cfg.get("tie_word_embeddings", mt == "gemma"):
        W["lm_head.weight"] = _w(rng, V, D)
    return W


def save(folder, cfg, W, dtype=None, shards=1):
    """Writes config.json and the weights (cast to dtype: 'f16', 'bf16'),
    sharded into `shards` files with an index when shards > 1."""
    import ml_dtypes
    from safetensors.numpy import save_file
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    cast = {"f16": np.float16, "bf16": ml_dtypes.bfloat16}.get(dtype)
    W = {k: (v.astype(cast) if cast is not None and v.dtype == np.float32 else v) for k, v in W.items()}
    if shards == 1:
        save_file(W, os.path.join(folder, "model.safetensors"))
        return W
    names = sorted(W)
    wm = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: W[k] for k in names[s::shards]}
        save_file(part, os.path.join(folder, fn))
        wm.update({k: fn for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)
    return W
