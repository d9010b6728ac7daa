"""Numpy reference for BERT encoders and sentence-transformers mean pooling
(tests only; float64, independent of kiln). Follows transformers' BertModel:
embeddings (word + absolute position + token type) -> LayerNorm, then
post-LayerNorm encoder layers with GELU (erf) feed-forward."""
import json
import math
import os

import numpy as np

from ref_llama import act_fn, layer_norm


def load(folder):
    from safetensors.numpy import load_file
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    W = {}
    for k, v in load_file(os.path.join(folder, "model.safetensors")).items():
        k = k[len("bert."):] if k.startswith("bert.") else k
        W[k] = v if v.dtype.kind in "iub" else v.astype(np.float64)
    return cfg, W


def forward(cfg, W, input_ids, attention_mask, token_type_ids=None):
    """Returns (last_hidden_state [B, S, D], mean-pooled embedding [B, D])."""
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(np.float64)
    B, S = ids.shape
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = D // H
    eps = cfg.get("layer_norm_eps", 1e-12)
    act = act_fn(cfg.get("hidden_act", "gelu"))
    tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    e = "embeddings."
    x = W[e + "word_embeddings.weight"][ids] + W[e + "position_embeddings.weight"][np.arange(S)][None]
    x = x + W[e + "token_type_embeddings.weight"][tt]
    x = layer_norm(x, W[e + "LayerNorm.weight"], W[e + "LayerNorm.bias"], eps)
    neg = (1.0 - mask)[:, None, None, :] * np.finfo(np.float32).min  # [B, 1, 1, S]

    def lin(v, name):
        return v @ W[name + ".weight"].T + W[name + ".bias"]

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = lin(x, p + "attention.self.query").reshape(B, S, H, hd).transpose(0, 2, 1, 3)
        k = lin(x, p + "attention.self.key").reshape(B, S, H, hd).transpose(0, 2, 1, 3)
        v = lin(x, p + "attention.self.value").reshape(B, S, H, hd).transpose(0, 2, 1, 3)
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + neg
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        a = (sc / sc.sum(-1, keepdims=True)) @ v  # [B, H, S, hd]
        a = a.transpose(0, 2, 1, 3).reshape(B, S, D)
        x = layer_norm(x + lin(a, p + "attention.output.dense"), W[p + "attention.output.LayerNorm.weight"],
                       W[p + "attention.output.LayerNorm.bias"], eps)
        h = act(lin(x, p + "intermediate.dense"))
        x = layer_norm(x + lin(h, p + "output.dense"), W[p + "output.LayerNorm.weight"],
                       W[p + "output.LayerNorm.bias"], eps)
    m = mask[:, :, None]
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return x, pooled
