"""llama2.c checkpoints: import, `kiln run` greedy decoding vs the numpy
reference, and clean errors on bad files."""
import os
import struct

import numpy as np
import pytest

import ref_llama
from kiln_util import run_kiln, shared_data

STORIES = shared_data("stories260K.bin")


def kiln_greedy(path, ids, n, tmp_path):
    lg = os.path.join(tmp_path, "logits.npy")
    p = run_kiln("run", path, "--ids", ",".join(map(str, ids)), "-n", n, "--logits", lg)
    toks = [int(t) for t in p.stdout.strip().split(",")] if n else []
    return toks, np.load(lg)


@pytest.mark.skipif(STORIES is None, reason="stories260K.bin not available")
def test_stories260k_64_greedy_tokens_match_reference(tmp_path):
    cfg, W = ref_llama.load_llama2c(STORIES)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["vocab_size"]) == (64, 5, 8, 4, 512)
    want, ref_logits = ref_llama.greedy(ref_llama.make_model(cfg, W), [1], 64)
    got, logits = kiln_greedy(STORIES, [1], 64, tmp_path)
    assert got == want
    assert logits.shape == (64, 512)
    np.testing.assert_allclose(logits, ref_logits, atol=2e-4 * np.ptp(ref_logits), rtol=0)


@pytest.mark.skipif(STORIES is None, reason="stories260K.bin not available")
def test_stories260k_prompt_then_decode(tmp_path):
    # a multi-token prefill exercises the causal mask with past = 0, then
    # decode steps with a growing KV cache
    cfg, W = ref_llama.load_llama2c(STORIES)
    prompt = [1, 403, 407, 261, 378, 66]
    want, ref_logits = ref_llama.greedy(ref_llama.make_model(cfg, W), prompt, 10)
    got, logits = kiln_greedy(STORIES, prompt, 10, tmp_path)
    assert got == want
    np.testing.assert_allclose(logits, ref_logits, atol=2e-4 * np.ptp(ref_logits), rtol=0)


def write_llama2c(path, dim=16, hidden=40, layers=2, heads=4, kv_heads=2, vocab=37, seq_len=32,
                  shared=False, seed=0):
    rng = np.random.default_rng(seed)
    hs = dim // heads
    kv = kv_heads * hs
    parts = [(vocab, dim), (layers, dim), (layers, dim, dim), (layers, kv, dim), (layers, kv, dim),
             (layers, dim, dim), (layers, dim), (layers, hidden, dim), (layers, dim, hidden),
             (layers, hidden, dim), (dim,), (seq_len, hs // 2), (seq_len, hs // 2)]
    if not shared:
        parts.append((vocab, dim))
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq_len))
        for i, shp in enumerate(parts):
            a = rng.standard_normal(shp).astype(np.float32) * 0.3
            if len(shp) == 2 and i in (1, 6) or i == 10:  # norm weights around 1
                a = 1 + 0.1 * a
            f.write(a.tobytes())


@pytest.mark.parametrize("shared", [True, False])
def test_random_checkpoint_unshared_and_shared_classifier(tmp_path, shared):
    path = os.path.join(tmp_path, "m.bin")
    write_llama2c(path, shared=shared, seed=3 + shared)
    cfg, W = ref_llama.load_llama2c(path)
    want, ref_logits = ref_llama.greedy(ref_llama.make_model(cfg, W), [5, 9, 2], 6)
    got, logits = kiln_greedy(path, [5, 9, 2], 6, tmp_path)
    assert got == want
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4 * np.ptp(ref_logits), rtol=0)


def test_graph_follows_lm_convention(tmp_path):
    path = os.path.join(tmp_path, "m.bin")
    write_llama2c(path)
    text = run_kiln("ir", path).stdout
    assert "input %tokens : i64[batch, seq]" in text
    assert "input %past_key.0 : f32[batch, 2, past, 4]" in text
    assert "input %past_value.1 : f32[batch, 2, past, 4]" in text
    outs = [o.strip() for l in text.splitlines() if l.strip().startswith("output ")
            for o in l.strip()[len("output "):].split(",")]
    assert outs == ["%logits", "%present_key.0", "%present_value.0", "%present_key.1", "%present_value.1"]


def one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1, p.stderr


def test_truncated_checkpoint_is_a_clean_error(tmp_path):
    path = os.path.join(tmp_path, "m.bin")
    write_llama2c(path)
    data = open(path, "rb").read()
    for cut in (0, 10, 28, 500, len(data) - 4):
        bad = os.path.join(tmp_path, "cut.bin")
        open(bad, "wb").write(data[:cut])
        p = run_kiln("ir", bad, check=False)
        one_line_error(p)
        assert "cut.bin" in p.stderr and ("truncated" in p.stderr or "not a llama2.c" in p.stderr)


def test_bad_header_is_a_clean_error(tmp_path):
    bad = os.path.join(tmp_path, "bad.bin")
    for hdr in [(16, 40, 2, 5, 2, 37, 32), (0, 40, 2, 4, 2, 37, 32), (16, 40, 2, 4, 3, 37, 32),
                (2 ** 30, 2 ** 30, 1000, 1, 1, 2 ** 30, 1)]:
        open(bad, "wb").write(struct.pack("<7i", *hdr) + b"\0" * 4096)
        p = run_kiln("ir", bad, check=False)
        one_line_error(p)
        assert "bad.bin" in p.stderr


def test_run_rejects_bad_ids(tmp_path):
    path = os.path.join(tmp_path, "m.bin")
    write_llama2c(path)
    one_line_error(run_kiln("run", path, "--ids", "1,x", check=False))
    p = run_kiln("run", path, "--ids", "1,37", check=False)
    one_line_error(p)
    assert "37" in p.stderr
