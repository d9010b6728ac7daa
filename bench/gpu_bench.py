"""Helpers of bench/gpu.sh (runs on the GPU machine; needs torch and
transformers there):

  gen SHAPE DIR            random-weight HF checkpoint (bf16) of a known shape
  torch_ref DIR IDS N OUT  greedy decoding in float32 on the same bf16 weights:
                           tokens and per-step logits (OUT.npy, OUT.json)
  hf_eager DIR P N         HF transformers eager bf16: batch-1 decode tok/s and
                           prefill of P tokens, as JSON
  copy_bw                  device-to-device copy bandwidth (bytes read + written)
  weight_bytes DIR         bytes of weights one decode step reads
  flops DIR P              model FLOPs of a P-token prefill (matmuls + attention)
  compare A.npy B.npy      per-step logits agreement (JSON)
"""
import json
import os
import sys
import time

import numpy as np

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                         rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
}


def gen(shape, d, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg)
    m = m.to(torch.bfloat16)
    m.save_pretrained(d, safe_serialization=True)
    n = sum(p.numel() for p in m.parameters())
    print(json.dumps({"shape": shape, "params": n}))


def load(d, dtype, attn="eager"):
    import torch
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation=attn).cuda().eval()
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


def torch_ref(d, ids, n, out):
    import torch
    m = load(d, torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.tensor([ids], device="cuda")
    logits, toks = [], []
    with torch.no_grad():
        past = None
        for _ in range(n):
            o = m(input_ids=x, past_key_values=past, use_cache=True)
            past = o.past_key_values
            lg = o.logits[0, -1].float().cpu().numpy()
            logits.append(lg)
            t = int(np.argmax(lg))
            toks.append(t)
            x = torch.tensor([[t]], device="cuda")
    np.save(out + ".npy", np.stack(logits))
    with open(out + ".json", "w") as f:
        json.dump(toks, f)
    print(",".join(map(str, toks)))


def hf_eager(d, P, N):
    import torch
    m = load(d, torch.bfloat16)
    V = m.config.vocab_size
    ids = torch.randint(0, V, (1, P), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    short = ids[:, :16]

    def timed(f, reps=3):
        ts = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            f()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    gen = lambda n: m.generate(short, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    with torch.no_grad():
        gen(8)  # warm-up
        t1 = timed(lambda: gen(1))
        tn = timed(lambda: gen(N + 1))
        m(ids)
        tp = timed(lambda: m(ids, use_cache=False, logits_to_keep=1))
    print(json.dumps({"decode_tok_s": N / (tn - t1), "prefill_s": tp, "prefill_tokens": P}))


def copy_bw():
    import torch
    n = 1 << 30  # 1 GiB each way
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    t = sorted(ts)[len(ts) // 2]
    print(json.dumps({"copy_GBps": 2 * n / t / 1e9, "gpu": torch.cuda.get_device_name()}))


def weight_bytes(d):
    """Every weight once (the tied embedding is read whole by the output
    projection; the embedding lookup itself reads one row)."""
    from safetensors import safe_open
    total = 0
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "np") as s:
                for k in s.keys():
                    sl = s.get_slice(k)
                    n = int(np.prod(sl.get_shape()))
                    total += n * {"BF16": 2, "F16": 2, "F32": 4}[sl.get_dtype()]
    print(json.dumps({"weight_bytes": total}))


def flops(d, P):
    cfg = json.load(open(os.path.join(d, "config.json")))
    H, L, F, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or H // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = H * (q + 2 * kv) + q * H + 3 * H * F
    lin = 2 * P * L * per_layer + 2 * H * V  # logits for the last token only
    attn = L * 2 * P * P * q  # QK^T and PV over the causal half
    print(json.dumps({"flops": lin + attn, "linear_flops": lin}))


def compare(a, b):
    A, B = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
    n = min(len(A), len(B))
    scale = float(np.abs(B[:n]).max()) or 1.0
    ta, tb = A[:n].argmax(-1), B[:n].argmax(-1)
    same = int(np.argmax(ta != tb)) if (ta != tb).any() else n
    first_err = float(np.abs(A[0] - B[0]).max() / scale) if n else 0.0
    err = float(np.abs(A[:same] - B[:same]).max() / scale) if same else 0.0
    srt = np.sort(B[:n], -1)
    gap = (srt[:, -1] - srt[:, -2]) / scale
    print(json.dumps({"steps": n, "same_tokens": same, "max_rel_err_while_same": err, "first_step_rel_err": first_err,
                      "ref_top2_gap_at_divergence": float(gap[same]) if same < n else None}))


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(a[0], a[1])
    elif cmd == "torch_ref":
        torch_ref(a[0], [int(t) for t in a[1].split(",")], int(a[2]), a[3])
    elif cmd == "hf_eager":
        hf_eager(a[0], int(a[1]), int(a[2]))
    elif cmd == "copy_bw":
        copy_bw()
    elif cmd == "weight_bytes":
        weight_bytes(a[0])
    elif cmd == "flops":
        flops(a[0], int(a[1]))
    elif cmd == "compare":
        compare(a[0], a[1])
    else:
        sys.exit(f"unknown command {cmd}")
