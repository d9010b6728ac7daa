"""GGUF import: the reader (metadata, tensor table, quantized types), llama /
qwen2 graphs vs the numpy reference, SmolLM2-135M end to end, and clean
errors on truncated or corrupted files."""
import os
import struct

import numpy as np
import pytest

import ref_llama
from kiln_util import ROOT, run_kiln

gguf = pytest.importorskip("gguf")

SMOL = os.path.join(ROOT, ".cache", "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
SMOL_PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]

Q = gguf.GGMLQuantizationType


def kiln_greedy(path, ids, n, tmp_path):
    lg = os.path.join(tmp_path, "logits.npy")
    p = run_kiln("run", path, "--ids", ",".join(map(str, ids)), "-n", n, "--logits", lg)
    return [int(t) for t in p.stdout.strip().split(",")], np.load(lg)


def one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], p.stderr)
    assert p.stderr.count("\n") == 1, p.stderr


# ---- tiny synthetic files ------------------------------------------------------

def random_blocks(rng, qtype, *shape):
    """Random but well-formed K-quant blocks (gguf-py cannot quantize them)."""
    rows, nb = int(np.prod(shape[:-1])), shape[-1] // 256
    if qtype == Q.Q4_K:
        b = rng.integers(0, 256, size=(rows, nb, 144), dtype=np.uint8)
        b[..., 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        b[..., 2:4] = np.frombuffer(np.float16(0.004).tobytes(), np.uint8)
    else:  # Q6_K
        b = rng.integers(0, 256, size=(rows, nb, 210), dtype=np.uint8)
        b[..., 192:208] = rng.integers(-20, 20, size=(rows, nb, 16)).astype(np.int8).view(np.uint8)
        b[..., 208:210] = np.frombuffer(np.float16(0.0008).tobytes(), np.uint8)
    return b.reshape(*shape[:-1], nb * b.shape[-1])


def add(w, rng, name, shape, qtype, scale=0.05):
    if qtype in (Q.Q4_K, Q.Q6_K):
        w.add_tensor(name, random_blocks(rng, qtype, *shape), raw_dtype=qtype)
        return
    a = (rng.standard_normal(shape) * scale).astype(np.float32)
    if qtype == Q.F32:
        w.add_tensor(name, a)
    elif qtype == Q.F16:
        w.add_tensor(name, a.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)


def write_tiny(path, arch="llama", tied=False, n_layer=2, seed=0, extra=None, experts=0):
    """A tiny model using every supported tensor type somewhere (or, with
    experts, a Mixtral-style model with stacked expert tensors)."""
    rng = np.random.default_rng(seed)
    D, F, H, KVH, V = 256, 512, 4, 2, 48
    hd = D // H
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(n_layer)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KVH)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_context_length(128)
    w.add_string("general.name", "tiny")
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(2)
    add(w, rng, "token_embd.weight", (V, D), Q.Q8_0, 1.0)
    types = [Q.Q4_0, Q.Q8_0, Q.Q4_1, Q.Q4_K, Q.Q6_K, Q.F16, Q.BF16, Q.F32]
    for i in range(n_layer):
        t = types[i:] + types[:i]
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(D)).astype(np.float32))
        add(w, rng, f"blk.{i}.attn_q.weight", (H * hd, D), t[0])
        add(w, rng, f"blk.{i}.attn_k.weight", (KVH * hd, D), t[1])
        add(w, rng, f"blk.{i}.attn_v.weight", (KVH * hd, D), t[2])
        if arch == "qwen2":
            for n, r in (("q", H * hd), ("k", KVH * hd), ("v", KVH * hd)):
                w.add_tensor(f"blk.{i}.attn_{n}.bias", (0.1 * rng.standard_normal(r)).astype(np.float32))
        add(w, rng, f"blk.{i}.attn_output.weight", (D, H * hd), t[3])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(D)).astype(np.float32))
        if experts:
            add(w, rng, f"blk.{i}.ffn_gate_inp.weight", (experts, D), Q.F32, 0.5)
            add(w, rng, f"blk.{i}.ffn_gate_exps.weight", (experts, F, D), t[0])
            add(w, rng, f"blk.{i}.ffn_up_exps.weight", (experts, F, D), t[1])
            add(w, rng, f"blk.{i}.ffn_down_exps.weight", (experts, D, F), t[2])
            continue
        add(w, rng, f"blk.{i}.ffn_gate.weight", (F, D), t[4])
        add(w, rng, f"blk.{i}.ffn_up.weight", (F, D), t[5])
        add(w, rng, f"blk.{i}.ffn_down.weight", (D, F), t[6])
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(D)).astype(np.float32))
    if not tied:
        add(w, rng, "output.weight", (V, D), Q.Q6_K)
    if extra:
        extra(w, rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("qwen2", True)])
def test_tiny_model_all_tensor_types_vs_reference(tmp_path, arch, tied):
    path = os.path.join(tmp_path, "tiny.gguf")
    write_tiny(path, arch=arch, tied=tied, seed=7)
    cfg, W = ref_llama.load_gguf(path)
    prompt = [3, 17, 40, 8, 22]
    want, ref_logits = ref_llama.greedy(ref_llama.make_model(cfg, W), prompt, 5)
    got, logits = kiln_greedy(path, prompt, 5, tmp_path)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4 * np.ptp(ref_logits), rtol=0)
    assert got == want


def test_mixture_of_experts_stacked_tensors(tmp_path):
    path = os.path.join(tmp_path, "moe.gguf")
    write_tiny(path, experts=4, seed=11)
    cfg, W = ref_llama.load_gguf(path)
    assert cfg["model_type"] == "mixtral"
    prompt = [5, 6, 7, 30]
    want, ref_logits = ref_llama.greedy(ref_llama.make_model(cfg, W), prompt, 4)
    got, logits = kiln_greedy(path, prompt, 4, tmp_path)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4 * np.ptp(ref_logits), rtol=0)
    assert got == want
    assert "SparseMoE(" in run_kiln("ir", path).stdout


def test_weights_stay_quantized_and_referenced(tmp_path):
    path = os.path.join(tmp_path, "tiny.gguf")
    write_tiny(path)
    text = run_kiln("ir", path).stdout
    r = gguf.GGUFReader(path)
    names = {Q.Q4_0: "q4_0", Q.Q4_1: "q4_1", Q.Q8_0: "q8_0", Q.Q4_K: "q4_k", Q.Q6_K: "q6_k",
             Q.F16: "f16", Q.BF16: "bf16", Q.F32: "f32"}
    weights = {l.split()[1][1:]: l for l in text.splitlines() if l.strip().startswith("weight ")}
    for t in r.tensors:
        line = weights[t.name]
        dims = ", ".join(str(int(d)) for d in reversed(t.shape.tolist()))
        assert f": {names[t.tensor_type]}[{dims}]" in line, line
        assert f"offset {int(t.data_offset)}" in line, line


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    path = os.path.join(tmp_path, "q5.gguf")
    write_tiny(path, extra=lambda w, rng: w.add_tensor(
        "extra.weight", gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), Q.Q5_0),
        raw_dtype=Q.Q5_0))
    p = run_kiln("ir", path, check=False)
    one_line_error(p)
    assert "extra.weight" in p.stderr and "Q5_0" in p.stderr


def test_unsupported_architecture(tmp_path):
    path = os.path.join(tmp_path, "x.gguf")
    w = gguf.GGUFWriter(path, "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = run_kiln("ir", path, check=False)
    one_line_error(p)
    assert "mamba" in p.stderr


def test_missing_tensor_is_named(tmp_path):
    path = os.path.join(tmp_path, "m.gguf")
    write_tiny(path, n_layer=1, tied=True)
    # declare two layers while only layer 0 exists
    data = bytearray(open(path, "rb").read())
    key = b"llama.block_count"
    i = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, i)[0] == 4  # uint32 type
    struct.pack_into("<I", data, i + 4, 2)
    open(path, "wb").write(bytes(data))
    p = run_kiln("ir", path, check=False)
    one_line_error(p)
    assert "missing tensor 'blk.1.attn_norm.weight'" in p.stderr


def test_truncated_files_are_clean_errors(tmp_path):
    path = os.path.join(tmp_path, "tiny.gguf")
    write_tiny(path)
    data = open(path, "rb").read()
    r = gguf.GGUFReader(path)
    data_start = min(int(t.data_offset) for t in r.tensors)
    cuts = [0, 3, 4, 8, 16, 24, 40, 100, 300, data_start - 100, data_start - 1, data_start + 10,
            len(data) - 1]
    bad = os.path.join(tmp_path, "cut.gguf")
    for cut in cuts:
        open(bad, "wb").write(data[:cut])
        p = run_kiln("ir", bad, check=False)
        one_line_error(p)
        assert "cut.gguf" in p.stderr


def test_corrupted_files_are_clean_errors(tmp_path):
    path = os.path.join(tmp_path, "tiny.gguf")
    write_tiny(path)
    data = open(path, "rb").read()
    data_start = min(int(t.data_offset) for t in gguf.GGUFReader(path).tensors)
    bad = os.path.join(tmp_path, "bad.gguf")

    def check(mutated, expect=None):
        open(bad, "wb").write(bytes(mutated))
        p = run_kiln("ir", bad, check=False)
        one_line_error(p)
        if expect:
            assert expect in p.stderr, p.stderr

    d = bytearray(data); d[0:4] = b"GGUX"; check(d, "not a GGUF file")
    d = bytearray(data); struct.pack_into("<I", d, 4, 9); check(d, "version 9")
    d = bytearray(data); struct.pack_into("<Q", d, 8, 2 ** 40); check(d, "corrupt")  # tensor count
    d = bytearray(data); struct.pack_into("<Q", d, 16, 2 ** 62); check(d, "corrupt")  # kv count
    d = bytearray(data); struct.pack_into("<Q", d, 24, 2 ** 50); check(d)  # first key length
    # a metadata value type out of range
    i = data.index(b"general.architecture") + len(b"general.architecture")
    d = bytearray(data); struct.pack_into("<I", d, i, 77); check(d, "type 77")
    # a tensor whose offset points past the end of the file
    i = data.index(b"output_norm.weight") + len(b"output_norm.weight")
    nd = struct.unpack_from("<I", data, i)[0]
    off_at = i + 4 + 8 * nd + 4
    d = bytearray(data); struct.pack_into("<Q", d, off_at, 2 ** 40); check(d, "output_norm.weight")
    d = bytearray(data); struct.pack_into("<Q", d, off_at, 8); check(d, "aligned")
    # random byte flips in the header and metadata never crash
    rng = np.random.default_rng(0)
    for _ in range(60):
        d = bytearray(data)
        for _ in range(3):
            d[int(rng.integers(0, data_start))] = int(rng.integers(0, 256))
        open(bad, "wb").write(bytes(d))
        p = run_kiln("ir", bad, check=False)
        assert p.returncode in (0, 2), (p.returncode, p.stderr)
        if p.returncode:
            assert p.stderr.count("\n") == 1, p.stderr


# ---- SmolLM2-135M ------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 GGUF not fetched")
def test_smollm2_logits_and_32_greedy_tokens(tmp_path):
    cfg, W = ref_llama.load_gguf(SMOL)
    want, ref_logits = ref_llama.greedy(ref_llama.make_model(cfg, W), SMOL_PROMPT, 32)
    got, logits = kiln_greedy(SMOL, SMOL_PROMPT, 32, tmp_path)
    # last-position logits of the prompt
    rng_ = np.ptp(ref_logits[0])
    assert np.max(np.abs(logits[0] - ref_logits[0])) < 1e-3 * rng_
    assert got == want
    np.testing.assert_allclose(logits, ref_logits, atol=1e-3 * rng_, rtol=0)


@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 GGUF not fetched")
def test_smollm2_graph_shape():
    text = run_kiln("ir", SMOL).stdout
    assert "input %past_key.29 : f32[batch, 3, past, 64]" in text
    assert "q4_1[1536, 576]" in text and "q8_0[49152, 576]" in text
    # tied embeddings: the token table feeds both Gather and the logits Linear
    assert "Linear(%final_norm, %token_embd.weight)" in text


@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 GGUF not fetched")
def test_smollm2_truncated_is_a_clean_error(tmp_path):
    data = open(SMOL, "rb").read()
    bad = os.path.join(tmp_path, "smol.gguf")
    for cut in (5000, 1_000_000, len(data) - 12345):  # metadata, vocabulary, tensor data
        open(bad, "wb").write(data[:cut])
        p = run_kiln("run", bad, "--ids", "1,2", "-n", "1", check=False)
        one_line_error(p)
        assert "truncated" in p.stderr
