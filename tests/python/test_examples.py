"""Every example under examples/ round-trips through `kiln ir` (print ->
parse -> print is identical) and `kiln eval` matches numpy."""
import glob
import math
import os
import tempfile

import numpy as np
import pytest

from kiln_util import ROOT, run_kiln, eval_kir

EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.kir")))


def test_examples_exist():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_roundtrip(path):
    first = run_kiln("ir", path).stdout
    d = tempfile.mkdtemp(prefix="kiln_ex_")
    p1 = os.path.join(d, "a.kir")
    with open(p1, "w") as f:
        f.write(first)
    second = run_kiln("ir", p1).stdout
    assert first == second


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_mlp(x):
    w1 = np.array([0.5, -1, 0.25, 0, 1, 0.5, -0.5, 2, -1, 0, 1, 0.75], np.float64).reshape(3, 4)
    b1 = np.array([0.1, -0.2, 0.3])
    w2 = np.array([1, -1, 0.5, 0.25, 2, -0.5], np.float64).reshape(2, 3)
    return {"p": softmax(gelu_tanh(x @ w1.T + b1) @ w2.T)}


def ref_layernorm(x):
    g = np.array([1, 1, 2, 2, 0.5, 0.5, 1, 1], np.float64)
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    y = (x - m) / np.sqrt(v + 1e-5) * g
    return {"y": y, "diff": np.zeros_like(y)}


def ref_heads(x):
    b, s, _ = x.shape
    return {"t": x.reshape(b, s, 3, 4).transpose(0, 2, 1, 3)}


def ref_attention(q, k, v, past_k, past_v):
    H, KVH, D = 4, 2, 4
    S, P = q.shape[1], past_k.shape[2]
    kk = np.concatenate([past_k, k.reshape(1, S, KVH, D).transpose(0, 2, 1, 3)], axis=2)
    vv = np.concatenate([past_v, v.reshape(1, S, KVH, D).transpose(0, 2, 1, 3)], axis=2)
    qh = q.reshape(1, S, H, D).transpose(0, 2, 1, 3)
    y = np.zeros((1, H, S, D))
    for h in range(H):
        g = h // (H // KVH)
        sc = qh[0, h] @ kk[0, g].T / math.sqrt(D)
        mask = np.arange(P + S)[None, :] > (P + np.arange(S))[:, None]
        sc[mask] = -np.inf
        y[0, h] = softmax(sc) @ vv[0, g]
    return {"y": y.transpose(0, 2, 1, 3).reshape(1, S, H * D), "pk": kk, "pv": vv}


CASES = {
    "mlp.kir": (lambda r: {"x": r.randn(5, 4)}, ref_mlp),
    "layernorm_decomposed.kir": (lambda r: {"x": r.randn(3, 8)}, ref_layernorm),
    "symbolic_reshape.kir": (lambda r: {"x": r.randn(2, 5, 12)}, ref_heads),
    "attention_kv.kir": (lambda r: {"q": r.randn(1, 3, 16), "k": r.randn(1, 3, 8), "v": r.randn(1, 3, 8),
                                    "past_k": r.randn(1, 2, 2, 4), "past_v": r.randn(1, 2, 2, 4)}, ref_attention),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_eval_matches_numpy(name):
    make, ref = CASES[name]
    r = np.random.RandomState(7)
    inputs = {k: v.astype(np.float32) for k, v in make(r).items()}
    with open(os.path.join(ROOT, "examples", name)) as f:
        text = f.read()
    got = eval_kir(text, inputs)
    want = ref(**{k: v.astype(np.float64) for k, v in inputs.items()})
    for k, w in want.items():
        assert got[k].shape == w.shape, k
        np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-5)


def test_malformed_kir_one_line_exit_2():
    d = tempfile.mkdtemp(prefix="kiln_ex_")
    p = os.path.join(d, "bad.kir")
    with open(p, "w") as f:
        f.write("kir 1\ngraph g {\n  input %x : f32[2]\n  %y = Add(%x, %nope)\n  output %y\n}\n")
    r = run_kiln("ir", p, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(p + ":4:16: error: ")
