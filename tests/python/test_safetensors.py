"""safetensors reader: zero-copy weight references (single file, sharded,
f32/f16/bf16) and clean one-line errors on truncated or corrupted files."""
import json
import os
import re
import struct

import numpy as np
import pytest

import hf_tiny
from kiln_util import run_kiln


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def weight_lines(text):
    """name -> (dtype, dims, file, offset) from `kiln ir` text."""
    out = {}
    pat = re.compile(r'weight %(?:"([^"]+)"|(\S+)) : (\w+)\[([^\]]*)\] @ "([^"]+)" offset (\d+)')
    for line in text.splitlines():
        m = pat.search(line)
        if m:
            out[m.group(1) or m.group(2)] = (m.group(3), m.group(4), m.group(5), int(m.group(6)))
    return out


@pytest.mark.parametrize("dtype,shards", [(None, 1), ("f16", 1), ("bf16", 1), (None, 2), ("bf16", 3)])
def test_weights_reference_file_offsets(tmp_path, dtype, shards):
    cfg = hf_tiny.config("llama", tie_word_embeddings=False)
    folder = os.path.join(tmp_path, "m")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg), dtype=dtype, shards=shards)
    ws = weight_lines(run_kiln("ir", folder).stdout)
    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    assert len(files) == shards
    seen = 0
    names = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
    for fn in files:
        n, h = header(os.path.join(folder, fn))
        for k, v in h.items():
            if k == "__metadata__":
                continue
            dt, dims, path, off = ws[k]
            assert os.path.samefile(path, os.path.join(folder, fn))
            assert off == 8 + n + v["data_offsets"][0]
            assert dt == names[v["dtype"]]
            assert dims == ", ".join(map(str, v["shape"]))
            seen += 1
    assert seen == len(ws)


def test_phi3_fused_projections_are_row_slices(tmp_path):
    cfg = hf_tiny.config("phi3")
    folder = os.path.join(tmp_path, "m")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg))
    ws = weight_lines(run_kiln("ir", folder).stdout)
    n, h = header(os.path.join(folder, "model.safetensors"))
    base = 8 + n + h["model.layers.0.self_attn.qkv_proj.weight"]["data_offsets"][0]
    q = ws["model.layers.0.self_attn.qkv_proj.weight.rows_0_64"]
    k = ws["model.layers.0.self_attn.qkv_proj.weight.rows_64_96"]
    v = ws["model.layers.0.self_attn.qkv_proj.weight.rows_96_128"]
    assert (q[1], k[1], v[1]) == ("64, 64", "32, 64", "32, 64")
    assert (q[3], k[3], v[3]) == (base, base + 64 * 64 * 4, base + 96 * 64 * 4)


def one_line_error(p, *words):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


def make(tmp_path, **kw):
    cfg = hf_tiny.config("llama")
    folder = os.path.join(tmp_path, "m")
    hf_tiny.save(folder, cfg, hf_tiny.weights(cfg), **kw)
    return folder


def test_truncated_file(tmp_path):
    folder = make(tmp_path)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    n, _ = header(path)
    for cut in (0, 5, 8, 20, 8 + n - 1, 8 + n + 10, len(data) - 1):
        open(path, "wb").write(data[:cut])
        one_line_error(run_kiln("ir", folder, check=False), "model.safetensors")
    open(path, "wb").write(data[:len(data) - 1])
    one_line_error(run_kiln("ir", folder, check=False), "truncated")


def test_corrupted_headers(tmp_path):
    folder = make(tmp_path)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    n, h = header(path)
    body = data[8 + n:]

    def write(hdr, payload=body):
        raw = json.dumps(hdr).encode() if not isinstance(hdr, bytes) else hdr
        open(path, "wb").write(struct.pack("<Q", len(raw)) + raw + payload)
        return run_kiln("ir", folder, check=False)

    one_line_error(write(b"{not json"), "corrupt")
    one_line_error(write(b"[1,2,3]"), "corrupt")
    k = "model.norm.weight"
    for field, val, word in [("dtype", "F7", "F7"), ("shape", [-1], "shape"), ("shape", "x", k),
                             ("data_offsets", [8, 4], "data_offsets"), ("data_offsets", [0, 3], k),
                             ("data_offsets", [0, 2 ** 40], k)]:
        hh = json.loads(json.dumps(h))
        hh[k][field] = val
        one_line_error(write(hh), word)
    hh = json.loads(json.dumps(h))
    hh["model.norm.weight\nsecond line"] = hh[k]
    one_line_error(write(hh))
    # header length beyond the file / absurd
    open(path, "wb").write(struct.pack("<Q", 2 ** 62) + b"{}")
    one_line_error(run_kiln("ir", folder, check=False), "corrupt")


def test_sharded_index_errors(tmp_path):
    folder = make(tmp_path, shards=2)
    idx_path = os.path.join(folder, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    good = json.dumps(idx)
    name = sorted(idx["weight_map"])[0]
    idx["weight_map"][name] = "model-00009-of-00009.safetensors"
    json.dump(idx, open(idx_path, "w"))
    one_line_error(run_kiln("ir", folder, check=False), "model-00009-of-00009.safetensors")
    idx = json.loads(good)
    other = [f for f in set(idx["weight_map"].values()) if f != idx["weight_map"][name]][0]
    idx["weight_map"][name] = other
    json.dump(idx, open(idx_path, "w"))
    one_line_error(run_kiln("ir", folder, check=False), name)
    idx = json.loads(good)
    idx["weight_map"][name] = "../escape.safetensors"
    json.dump(idx, open(idx_path, "w"))
    one_line_error(run_kiln("ir", folder, check=False), "shard")
    open(idx_path, "w").write('{"weight_map": 3}')
    one_line_error(run_kiln("ir", folder, check=False), "weight_map")


def test_random_corruption_never_crashes(tmp_path):
    folder = make(tmp_path)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    n, _ = header(path)
    rng = np.random.default_rng(3)
    for _ in range(60):
        d = bytearray(data)
        for _ in range(2):
            d[int(rng.integers(0, 8 + n))] = int(rng.choice([ord('"'), ord("1"), ord(","), ord("]"),
                                                             int(rng.integers(0, 256))]))
        open(path, "wb").write(bytes(d))
        p = run_kiln("ir", folder, check=False)
        assert p.returncode in (0, 2), (p.returncode, p.stderr)
        if p.returncode:
            assert p.stderr.count("\n") == 1, p.stderr
