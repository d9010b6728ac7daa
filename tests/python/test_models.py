"""Model families from Hugging Face folders (tiny random checkpoints made
here), all-MiniLM-L6-v2 sentence embeddings, and the SparseMoE op, each
compared with the numpy references."""
import os
import tempfile

import numpy as np
import pytest

import hf_tiny
import ref_bert
import ref_llama
from kiln_util import ROOT, eval_kir, run_kiln

MINILM = os.path.join(ROOT, ".cache", "models", "minilm")


def kiln_greedy(path, ids, n, tmp_path):
    lg = os.path.join(tmp_path, "logits.npy")
    p = run_kiln("run", path, "--ids", ",".join(map(str, ids)), "-n", n, "--logits", lg)
    return [int(t) for t in p.stdout.strip().split(",")], np.load(lg)


def check_family(tmp_path, cfg, dtype=None, shards=1, prompt=(3, 14, 15, 92, 65, 35, 89, 79), n=6,
                 seed=0, tol=1e-4):
    folder = os.path.join(tmp_path, "model")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg, seed), dtype=dtype, shards=shards)
    rcfg, W = ref_llama.load_hf(folder)
    want, ref_logits = ref_llama.greedy(ref_llama.make_model(rcfg, W), list(prompt), n)
    got, logits = kiln_greedy(folder, list(prompt), n, tmp_path)
    np.testing.assert_allclose(logits, ref_logits, atol=tol * np.ptp(ref_logits), rtol=0)
    assert got == want
    return folder


FAMILIES = {
    "llama": ("llama", dict()),
    "llama_bias_untied": ("llama", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=False)),
    "llama_tied": ("llama", dict(tie_word_embeddings=True)),
    "llama3_rope_scaling": ("llama", dict(rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "llama_linear_rope": ("llama", dict(rope_scaling=dict(type="linear", factor=4.0))),
    "llama_mqa": ("llama", dict(num_key_value_heads=1)),
    "mistral_window": ("mistral", dict(sliding_window=4)),
    "qwen2": ("qwen2", dict()),
    "phi3_partial_rotary": ("phi3", dict(partial_rotary_factor=0.5)),
    "phi3_window": ("phi3", dict(sliding_window=3)),
    "gemma": ("gemma", dict()),
    "mixtral": ("mixtral", dict()),
    "gpt2": ("gpt2", dict()),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_vs_reference(tmp_path, name):
    mt, over = FAMILIES[name]
    check_family(tmp_path, hf_tiny.config(mt, **over))


def test_sliding_window_matters(tmp_path):
    # the same weights without the window give different logits, so the
    # window test above is not vacuous
    cfg = hf_tiny.config("mistral", sliding_window=2)
    folder = check_family(tmp_path, cfg)
    _, with_w = kiln_greedy(folder, [3, 14, 15, 92, 65, 35], 1, tmp_path)
    cfg.pop("sliding_window")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg, 0))
    _, without = kiln_greedy(folder, [3, 14, 15, 92, 65, 35], 1, tmp_path)
    assert np.max(np.abs(with_w - without)) > 1e-3


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_weights(tmp_path, dtype):
    check_family(tmp_path, hf_tiny.config("llama", attention_bias=True), dtype=dtype)


def test_half_precision_gpt2(tmp_path):
    check_family(tmp_path, hf_tiny.config("gpt2"), dtype="f16")


def test_sharded_checkpoint(tmp_path):
    check_family(tmp_path, hf_tiny.config("qwen2"), shards=3)


def test_gqa_ratio_and_head_dim(tmp_path):
    check_family(tmp_path, hf_tiny.config("llama", num_attention_heads=8, num_key_value_heads=2,
                                          head_dim=16))


# ---- BERT / all-MiniLM-L6-v2 ----------------------------------------------------------

def run_kiln_eval(model, inputs, tmp_path):
    args = ["eval", model, "--output-dir", os.path.join(tmp_path, "out")]
    for k, v in inputs.items():
        fn = os.path.join(tmp_path, f"{k}.npy")
        np.save(fn, v)
        args += ["--input", f"{k}={fn}"]
    p = run_kiln(*args)
    outs = {}
    for line in p.stdout.splitlines():
        name, _, rest = line.partition(": ")
        if "-> " in rest:
            outs[name] = np.load(rest.split("-> ", 1)[1])
    return outs


def test_tiny_bert_vs_reference(tmp_path):
    cfg = hf_tiny.config("bert")
    folder = os.path.join(tmp_path, "bert")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg, 5))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 101, size=(3, 7))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    types = np.array([[0] * 3 + [1] * 4, [0] * 7, [1] * 7])
    out = run_kiln_eval(folder, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, tmp_path)
    rcfg, W = ref_bert.load(folder)
    hid, pooled = ref_bert.forward(rcfg, W, ids, mask, types)
    np.testing.assert_allclose(out["last_hidden_state"], hid, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["sentence_embedding"], pooled, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not os.path.exists(os.path.join(MINILM, "model.safetensors")), reason="MiniLM not fetched")
def test_minilm_sentence_embeddings(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    sentences = ["The quick brown fox jumps over the lazy dog.",
                 "kiln compiles transformer models ahead of time.",
                 "Ceci n'est pas une pipe — c'est une phrase un peu plus longue, avec des accents."]
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    assert mask.min() == 0  # the batch really is padded
    out = run_kiln_eval(MINILM, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, tmp_path)
    cfg, W = ref_bert.load(MINILM)
    hid, pooled = ref_bert.forward(cfg, W, ids, mask, types)
    got = out["sentence_embedding"]
    assert got.shape == (3, 384)
    for a, b in zip(got, pooled):
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos > 0.9999, cos
    np.testing.assert_allclose(got, pooled, atol=1e-4)
    # the sentences are distinguishable (not all the same vector)
    n = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert (n @ n.T)[0, 1] < 0.9


# ---- errors --------------------------------------------------------------------------------

def one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1, p.stderr


def test_unknown_architecture(tmp_path):
    cfg = hf_tiny.config("llama")
    folder = os.path.join(tmp_path, "m")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg))
    cfg["model_type"] = "falcon"
    hf_tiny.save(folder, cfg, {"x": np.zeros(2, np.float32)})
    p = run_kiln("ir", folder, check=False)
    one_line_error(p)
    assert "falcon" in p.stderr


def test_missing_tensor_is_named(tmp_path):
    cfg = hf_tiny.config("llama")
    W = hf_tiny.weights(cfg)
    del W["model.layers.1.mlp.up_proj.weight"]
    folder = os.path.join(tmp_path, "m")
    hf_tiny.save(folder, cfg, W)
    p = run_kiln("ir", folder, check=False)
    one_line_error(p)
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in p.stderr


def test_missing_lm_head_when_untied(tmp_path):
    cfg = hf_tiny.config("llama", tie_word_embeddings=False)
    W = hf_tiny.weights(cfg)
    del W["lm_head.weight"]
    folder = os.path.join(tmp_path, "m")
    hf_tiny.save(folder, cfg, W)
    p = run_kiln("ir", folder, check=False)
    one_line_error(p)
    assert "lm_head.weight" in p.stderr


def test_shape_mismatch_is_named(tmp_path):
    cfg = hf_tiny.config("llama")
    W = hf_tiny.weights(cfg)
    folder = os.path.join(tmp_path, "m")
    cfg["intermediate_size"] = 80
    hf_tiny.save(folder, cfg, W)
    p = run_kiln("ir", folder, check=False)
    one_line_error(p)
    assert "model.layers.0.mlp.up_proj.weight" in p.stderr and "[96, 64]" in p.stderr and "[80, 64]" in p.stderr


@pytest.mark.parametrize("bad", ['{"model_type": "llama"}', "[1, 2]", "{", '{"model_type": "llama", '
                                 '"hidden_size": -3, "num_hidden_layers": 1, "num_attention_heads": 1, '
                                 '"intermediate_size": 4, "vocab_size": 4}',
                                 '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, '
                                 '"num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 101, '
                                 '"rope_scaling": {"rope_type": "yarn", "factor": 2}}'])
def test_bad_config_json(tmp_path, bad):
    cfg = hf_tiny.config("llama")
    folder = os.path.join(tmp_path, "m")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg))
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(bad)
    p = run_kiln("ir", folder, check=False)
    one_line_error(p)
    assert "config.json" in p.stderr


def test_run_refuses_encoder_graph(tmp_path):
    cfg = hf_tiny.config("bert")
    folder = os.path.join(tmp_path, "bert")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg))
    p = run_kiln("run", folder, "--ids", "1,2", check=False)
    one_line_error(p)
    assert "kiln eval" in p.stderr


# ---- SparseMoE op ----------------------------------------------------------------------------

def moe_ref(x, logits, wg, wu, wd, k, normalize):
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    lg = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    p = np.exp(lg - lg.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        top = np.argsort(-p[t], kind="stable")[:k]
        w = p[t, top] / (p[t, top].sum() if normalize else 1)
        for e, we in zip(top, w):
            g = x[t] @ wg[e].T
            out[t] += we * (((g / (1 + np.exp(-g))) * (x[t] @ wu[e].T)) @ wd[e].T)
    return out


def hexs(a):
    return np.ascontiguousarray(a).tobytes().hex()


@pytest.mark.parametrize("stacked,k,normalize", [(True, 2, 1), (False, 2, 1), (True, 1, 0), (False, 3, 0)])
def test_sparse_moe_op(stacked, k, normalize):
    rng = np.random.default_rng(4)
    E, D, F, T = 4, 8, 6, 5
    x = rng.standard_normal((1, T, D)).astype(np.float32)
    logits = rng.standard_normal((1, T, E)).astype(np.float32)
    wg, wu = rng.standard_normal((E, F, D)).astype(np.float32), rng.standard_normal((E, F, D)).astype(np.float32)
    wd = rng.standard_normal((E, D, F)).astype(np.float32)
    lines = ["kir 1", 'graph "moe" {', "  sym seq", f"  input %x : f32[1, seq, {D}]",
             f"  input %r : f32[1, seq, {E}]"]
    if stacked:
        lines += [f'  const %wg : f32[{E}, {F}, {D}] = hex "{hexs(wg)}"',
                  f'  const %wu : f32[{E}, {F}, {D}] = hex "{hexs(wu)}"',
                  f'  const %wd : f32[{E}, {D}, {F}] = hex "{hexs(wd)}"']
        args = "%wg, %wu, %wd"
    else:
        names = []
        for nm, w, shp in (("g", wg, (F, D)), ("u", wu, (F, D)), ("d", wd, (D, F))):
            for e in range(E):
                lines.append(f'  const %{nm}{e} : f32[{shp[0]}, {shp[1]}] = hex "{hexs(w[e])}"')
                names.append(f"%{nm}{e}")
        args = ", ".join(names)
    lines += [f"  %y = SparseMoE(%x, %r, {args}) {{top_k = {k}, normalize = {normalize}}}",
              "  output %y", "}"]
    out = eval_kir("\n".join(lines) + "\n", {"x": x, "r": logits})["y"]
    want = moe_ref(x, logits, wg, wu, wd, k, normalize).reshape(x.shape)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_sparse_moe_quantized_experts():
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(5)
    E, D, F, T = 3, 32, 64, 4
    x = rng.standard_normal((T, D)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    ws = [rng.standard_normal(s).astype(np.float32) for s in ((E, F, D), (E, F, D), (E, D, F))]
    q = [gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0) for w in ws]
    dq = [gguf.quants.dequantize(a, gguf.GGMLQuantizationType.Q8_0).reshape(w.shape) for a, w in zip(q, ws)]
    text = "\n".join([
        "kir 1", 'graph "moe" {', f"  input %x : f32[{T}, {D}]", f"  input %r : f32[{T}, {E}]",
        f'  const %wg : q8_0[{E}, {F}, {D}] = hex "{hexs(q[0])}"',
        f'  const %wu : q8_0[{E}, {F}, {D}] = hex "{hexs(q[1])}"',
        f'  const %wd : q8_0[{E}, {D}, {F}] = hex "{hexs(q[2])}"',
        "  %y = SparseMoE(%x, %r, %wg, %wu, %wd)", "  output %y", "}"]) + "\n"
    out = eval_kir(text, {"x": x, "r": logits})["y"]
    np.testing.assert_allclose(out, moe_ref(x, logits, *dq, 2, 1), rtol=1e-4, atol=1e-4)


def test_sparse_moe_bad_inputs():
    base = ["kir 1", 'graph "moe" {', "  input %x : f32[2, 8]", "  input %r : f32[2, 3]",
            "  input %w : f32[3, 6, 8]", "  input %w2 : f32[3, 8, 6]"]
    for node, msg in [("SparseMoE(%x, %r, %w, %w, %w)", "dimension"),
                      ("SparseMoE(%x, %r, %w, %w, %w2) {top_k = 4}", "top_k"),
                      ('SparseMoE(%x, %r, %w, %w, %w2) {activation = "tanh"}', "activation"),
                      ("SparseMoE(%x, %r, %w, %w, %w2, %w)", "expects 3")]:
        text = "\n".join(base + [f"  %y = {node}", "  output %y", "}"]) + "\n"
        d = tempfile.mkdtemp()
        path = os.path.join(d, "m.kir")
        open(path, "w").write(text)
        p = run_kiln("ir", path, check=False)
        one_line_error(p)
        assert msg in p.stderr, p.stderr
