"""Numpy reference forward passes for decoder LMs (tests only).

Written from the model families' published definitions (transformers'
modeling code, llama2.c's run.c, llama.cpp's GGUF conventions), independent
of kiln: weights are read with the `gguf` / `safetensors` packages or raw
numpy, and everything is computed in float64.

A model is a config dict in Hugging Face config.json style plus a dict of
weights under Hugging Face state-dict names ("model.layers.0.self_attn.q_proj.weight").
The GGUF and llama2.c loaders translate their files into that form; their
RoPE is the interleaved-pairs variant (`rope_interleaved`).
"""
import json
import math
import os
import struct

import numpy as np


# ---- loaders --------------------------------------------------------------

def load_hf(folder):
    """config dict and f64 weights from a Hugging Face folder (single or sharded)."""
    from safetensors.numpy import load_file
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    idx = os.path.join(folder, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    W = {}
    for fn in files:
        for k, v in load_file(os.path.join(folder, fn)).items():
            W[k] = v if v.dtype.kind in "iub" else v.astype(np.float64)  # bf16 has kind 'V'
    return cfg, W


def load_llama2c(path):
    """llama2.c checkpoint -> (config, weights), following run.c's memory layout."""
    raw = open(path, "rb").read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hs = dim // n_heads
    kv_dim = n_kv * hs
    f = np.frombuffer(raw, dtype=np.float32, offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = f[pos:pos + n].reshape(shape).astype(np.float64)
        pos += n
        return a

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    pos += seq_len * hs // 2 * 2  # legacy freq_cis tables
    wcls = emb if shared else take(vocab, dim)
    W = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final, "lm_head.weight": wcls}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        W[p + "input_layernorm.weight"] = rms_att[i]
        W[p + "self_attn.q_proj.weight"] = wq[i]
        W[p + "self_attn.k_proj.weight"] = wk[i]
        W[p + "self_attn.v_proj.weight"] = wv[i]
        W[p + "self_attn.o_proj.weight"] = wo[i]
        W[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        W[p + "mlp.gate_proj.weight"] = w1[i]
        W[p + "mlp.down_proj.weight"] = w2[i]
        W[p + "mlp.up_proj.weight"] = w3[i]
    cfg = dict(model_type="llama", hidden_size=dim, intermediate_size=hidden, num_hidden_layers=n_layers,
               num_attention_heads=n_heads, num_key_value_heads=n_kv, vocab_size=vocab,
               max_position_embeddings=seq_len, rms_norm_eps=1e-5, rope_theta=10000.0,
               rope_interleaved=True, tie_word_embeddings=False)
    return cfg, W


def load_gguf(path):
    """GGUF llama/qwen2 file -> (config, f64 weights), dequantized with gguf's own code."""
    import gguf
    r = gguf.GGUFReader(path)

    def meta(key, default=None):
        fld = r.fields.get(key)
        if fld is None:
            return default
        v = fld.contents()
        return v

    arch = meta("general.architecture")
    W = {}
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_layer = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
                 "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for t in r.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        shape = [int(x) for x in reversed(t.shape.tolist())]  # GGUF ne[] is reversed
        arr = arr.reshape(shape)
        n = t.name
        if n in names:
            W[names[n]] = arr
        elif n.startswith("blk.") and "_exps." in n:  # stacked experts [E, rows, cols]
            _, i, what, _ = n.split(".", 3)
            w = {"ffn_gate_exps": "w1", "ffn_up_exps": "w3", "ffn_down_exps": "w2"}[what]
            for e in range(arr.shape[0]):
                W[f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight"] = arr[e]
        elif n.startswith("blk.") and ".ffn_gate_inp." in n:
            W[f"model.layers.{n.split('.')[1]}.block_sparse_moe.gate.weight"] = arr
        elif n.startswith("blk."):
            _, i, what, suffix = n.split(".", 3)
            W[f"model.layers.{i}.{per_layer[what]}.{suffix}"] = arr
        else:
            W[n] = arr
    n_head = int(meta(f"{arch}.attention.head_count"))
    dim = int(meta(f"{arch}.embedding_length"))
    cfg = dict(model_type=arch, hidden_size=dim,
               intermediate_size=int(meta(f"{arch}.feed_forward_length")),
               num_hidden_layers=int(meta(f"{arch}.block_count")),
               num_attention_heads=n_head,
               num_key_value_heads=int(meta(f"{arch}.attention.head_count_kv", n_head)),
               vocab_size=W["model.embed_tokens.weight"].shape[0],
               rms_norm_eps=float(meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
               rope_theta=float(meta(f"{arch}.rope.freq_base", 10000.0)),
               rope_interleaved=(arch == "llama"),
               tie_word_embeddings="lm_head.weight" not in W)
    n_exp = meta(f"{arch}.expert_count")
    if n_exp:
        cfg.update(model_type="mixtral", num_local_experts=int(n_exp),
                   num_experts_per_tok=int(meta(f"{arch}.expert_used_count")))
    return cfg, W


# ---- building blocks --------------------------------------------------------

def rms_norm(x, w, eps, plus_one=False):
    x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * (1.0 + w if plus_one else w)


def layer_norm(x, w, b, eps):
    m = x.mean(axis=-1, keepdims=True)
    v = ((x - m) ** 2).mean(axis=-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def act_fn(name):
    if name in ("silu", "swish"):
        return lambda x: x / (1 + np.exp(-x))
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "gelu":
        from math import erf
        verf = np.vectorize(erf)
        return lambda x: 0.5 * x * (1 + verf(x / math.sqrt(2)))
    if name == "relu":
        return lambda x: np.maximum(x, 0)
    raise ValueError(name)


def inv_freq(cfg, rot):
    base = cfg.get("rope_theta", 10000.0)
    f = 1.0 / base ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            f = f / rs["factor"]
        elif kind == "llama3":
            factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            lo_wl, hi_wl = old / lo, old / hi
            out = []
            for fr in f:
                wl = 2 * math.pi / fr
                if wl < hi_wl:
                    out.append(fr)
                elif wl > lo_wl:
                    out.append(fr / factor)
                else:
                    s = (old / wl - lo) / (hi - lo)
                    out.append((1 - s) * fr / factor + s * fr)
            f = np.array(out)
        elif kind not in (None, "default"):
            raise ValueError(kind)
    return f


def apply_rope(x, pos, freqs, rot, interleaved):
    """x [S, H, D]; rotates the first `rot` dims of each head."""
    ang = pos[:, None].astype(np.float64) * freqs[None, :]  # [S, rot/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    if interleaved:
        a, b = x[..., 0:rot:2], x[..., 1:rot:2]
        out[..., 0:rot:2] = a * c - b * s
        out[..., 1:rot:2] = a * s + b * c
    else:
        h = rot // 2
        a, b = x[..., :h], x[..., h:rot]
        out[..., :h] = a * c - b * s
        out[..., h:rot] = a * s + b * c
    return out


def attend(q, k, v, pos_q, window=0, scale=None):
    """q [S, H, D], k/v [T, KVH, D] (all positions so far); causal (+ sliding window)."""
    S, H, D = q.shape
    T, KVH, _ = k.shape
    rep = H // KVH
    scale = scale or 1 / math.sqrt(D)
    out = np.zeros((S, H, v.shape[-1]))
    kpos = np.arange(T)
    for h in range(H):
        kh, vh = k[:, h // rep], v[:, h // rep]
        sc = q[:, h] @ kh.T * scale  # [S, T]
        mask = kpos[None, :] <= pos_q[:, None]
        if window:
            mask &= kpos[None, :] > pos_q[:, None] - window
        sc = np.where(mask, sc, -np.inf)
        sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
        out[:, h] = (sc / sc.sum(axis=-1, keepdims=True)) @ vh
    return out


# ---- llama-family decoder -----------------------------------------------------

class Decoder:
    """llama, mistral, qwen2, phi3, gemma, mixtral (and GGUF / llama2.c checkpoints)
    with a KV cache; forward(ids) returns logits for every new position."""

    def __init__(self, cfg, W):
        self.cfg, self.W = cfg, W
        mt = cfg.get("model_type", "llama")
        self.mt = mt
        self.D = cfg["hidden_size"]
        self.H = cfg["num_attention_heads"]
        self.KVH = cfg.get("num_key_value_heads") or self.H
        self.hd = cfg.get("head_dim") or (256 if mt == "gemma" else self.D // self.H)
        self.rot = int(self.hd * cfg.get("partial_rotary_factor", 1.0))
        self.freqs = inv_freq(cfg, self.rot)
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        if mt == "gemma":
            act = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
        else:
            act = cfg.get("hidden_act", "silu")
        self.act = act_fn(act)
        self.window = 0
        if mt in ("mistral", "phi3", "mixtral"):
            self.window = cfg.get("sliding_window") or 0
        tied = cfg.get("tie_word_embeddings", mt == "gemma")
        self.head = W["model.embed_tokens.weight"] if tied else W["lm_head.weight"]
        self.k_cache = [np.zeros((0, self.KVH, self.hd)) for _ in range(cfg["num_hidden_layers"])]
        self.v_cache = [np.zeros((0, self.KVH, self.hd)) for _ in range(cfg["num_hidden_layers"])]
        self.n_past = 0

    def lin(self, x, name):
        y = x @ self.W[name + ".weight"].T
        b = self.W.get(name + ".bias")
        return y + b if b is not None else y

    def norm(self, x, name):
        return rms_norm(x, self.W[name + ".weight"], self.eps, plus_one=self.mt == "gemma")

    def mlp(self, x, p):
        W, cfg = self.W, self.cfg
        if self.mt == "phi3":
            gu = x @ W[p + "mlp.gate_up_proj.weight"].T
            F = gu.shape[-1] // 2
            return (self.act(gu[:, :F]) * gu[:, F:]) @ W[p + "mlp.down_proj.weight"].T
        if self.mt == "mixtral":
            logits = x @ W[p + "block_sparse_moe.gate.weight"].T  # [S, E]
            pr = np.exp(logits - logits.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            k = cfg.get("num_experts_per_tok", 2)
            out = np.zeros_like(x)
            for t in range(x.shape[0]):
                top = np.argsort(-pr[t], kind="stable")[:k]
                w = pr[t, top] / pr[t, top].sum()
                for e, we in zip(top, w):
                    q = p + f"block_sparse_moe.experts.{e}."
                    h = self.act(x[t] @ W[q + "w1.weight"].T) * (x[t] @ W[q + "w3.weight"].T)
                    out[t] += we * (h @ W[q + "w2.weight"].T)
            return out
        g = self.act(self.lin(x, p + "mlp.gate_proj"))
        return self.lin(g * self.lin(x, p + "mlp.up_proj"), p + "mlp.down_proj")

    def qkv(self, x, p):
        if self.mt == "phi3":
            y = x @ self.W[p + "self_attn.qkv_proj.weight"].T
            Q, KV = self.H * self.hd, self.KVH * self.hd
            return y[:, :Q], y[:, Q:Q + KV], y[:, Q + KV:]
        return (self.lin(x, p + "self_attn.q_proj"), self.lin(x, p + "self_attn.k_proj"),
                self.lin(x, p + "self_attn.v_proj"))

    def forward(self, ids):
        W, cfg = self.W, self.cfg
        S = len(ids)
        pos = np.arange(self.n_past, self.n_past + S)
        x = W["model.embed_tokens.weight"][np.array(ids)]
        if self.mt == "gemma":
            x = x * math.sqrt(self.D)
        inter = cfg.get("rope_interleaved", False)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self.norm(x, p + "input_layernorm")
            q, k, v = self.qkv(h, p)
            q = apply_rope(q.reshape(S, self.H, self.hd), pos, self.freqs, self.rot, inter)
            k = apply_rope(k.reshape(S, self.KVH, self.hd), pos, self.freqs, self.rot, inter)
            v = v.reshape(S, self.KVH, self.hd)
            self.k_cache[i] = np.concatenate([self.k_cache[i], k])
            self.v_cache[i] = np.concatenate([self.v_cache[i], v])
            a = attend(q, self.k_cache[i], self.v_cache[i], pos, self.window)
            x = x + self.lin(a.reshape(S, -1), p + "self_attn.o_proj")
            h = self.norm(x, p + "post_attention_layernorm")
            x = x + self.mlp(h, p)
        x = self.norm(x, "model.norm")
        self.n_past += S
        return x @ self.head.T


# ---- GPT-2 -----------------------------------------------------------------------

class GPT2:
    """GPT-2 (Conv1D weights [in, out], learned positions, pre-LayerNorm)."""

    def __init__(self, cfg, W):
        self.cfg = cfg
        self.W = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in W.items()}
        self.H = cfg["n_head"]
        self.D = cfg["n_embd"]
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        self.act = act_fn(cfg.get("activation_function", "gelu_new"))
        self.k = [np.zeros((0, self.H, self.D // self.H)) for _ in range(cfg["n_layer"])]
        self.v = [np.zeros((0, self.H, self.D // self.H)) for _ in range(cfg["n_layer"])]
        self.n_past = 0

    def conv(self, x, name):
        return x @ self.W[name + ".weight"] + self.W[name + ".bias"]

    def ln(self, x, name):
        return layer_norm(x, self.W[name + ".weight"], self.W[name + ".bias"], self.eps)

    def forward(self, ids):
        W, S, D, H = self.W, len(ids), self.D, self.H
        pos = np.arange(self.n_past, self.n_past + S)
        x = W["wte.weight"][np.array(ids)] + W["wpe.weight"][pos]
        for i in range(self.cfg["n_layer"]):
            p = f"h.{i}."
            qkv = self.conv(self.ln(x, p + "ln_1"), p + "attn.c_attn")
            q, k, v = (qkv[:, j * D:(j + 1) * D].reshape(S, H, D // H) for j in range(3))
            self.k[i] = np.concatenate([self.k[i], k])
            self.v[i] = np.concatenate([self.v[i], v])
            a = attend(q, self.k[i], self.v[i], pos)
            x = x + self.conv(a.reshape(S, D), p + "attn.c_proj")
            h = self.act(self.conv(self.ln(x, p + "ln_2"), p + "mlp.c_fc"))
            x = x + self.conv(h, p + "mlp.c_proj")
        x = self.ln(x, "ln_f")
        self.n_past += S
        return x @ W["wte.weight"].T


def make_model(cfg, W):
    return GPT2(cfg, W) if cfg.get("model_type") == "gpt2" else Decoder(cfg, W)


def greedy(model, ids, n):
    """Prefill ids, then n-1 single-token steps: returns (tokens, logits [n, vocab])."""
    toks, rows = [], []
    lg = model.forward(ids)[-1]
    for s in range(n):
        rows.append(lg)
        t = int(np.argmax(lg))
        toks.append(t)
        if s + 1 < n:
            lg = model.forward([t])[-1]
    return toks, np.array(rows)
