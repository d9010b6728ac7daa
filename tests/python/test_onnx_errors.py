"""ONNX importer errors: unsupported ops, opsets and types give one line on
stderr naming op type, domain, opset and node, exit status 2, no output and
no files; truncated or corrupted .onnx files give a clean error, never a
crash."""
import os
import random

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper

from kiln_util import run_kiln
from test_onnx_import import init, make_model, rnd, save


def fails_cleanly(path, *extra):
    before = sorted(os.listdir(os.path.dirname(path)))
    p = run_kiln("ir", path, *extra, check=False, errors="replace")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert sorted(os.listdir(os.path.dirname(path))) == before  # nothing left behind
    return lines[0]


def test_unsupported_op_custom_domain(tmp_path):
    n = helper.make_node("Frobnicate", ["x"], ["y"], name="frob_1", domain="com.example")
    m = make_model([n], [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])])
    m.opset_import.append(helper.make_opsetid("com.example", 3))
    line = fails_cleanly(save(m, tmp_path / "m.onnx"))
    for s in ("m.onnx", "Frobnicate", "com.example", "opset 3", "frob_1", "not supported"):
        assert s in line, line


def test_unsupported_op_with_subgraphs(tmp_path):
    branch = lambda v: helper.make_graph(  # noqa: E731
        [helper.make_node("Constant", [], ["o"], value_float=v)], "b", [],
        [helper.make_tensor_value_info("o", TP.FLOAT, [])])
    n = helper.make_node("If", ["c"], ["y"], name="the_if", then_branch=branch(1.0),
                         else_branch=branch(0.0))
    m = make_model([n], [("c", TP.BOOL, [])], [("y", TP.FLOAT, [])], opset=16)
    line = fails_cleanly(save(m, tmp_path / "m.onnx"))
    for s in ("If", "ai.onnx", "opset 16", "the_if", "unsupported"):
        assert s in line, line


def test_unknown_default_domain_op(tmp_path):
    n = helper.make_node("NoSuchOp", ["x"], ["y"], name="n0")
    m = make_model([n], [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])], opset=13)
    line = fails_cleanly(save(m, tmp_path / "m.onnx"))
    for s in ("NoSuchOp", "ai.onnx", "opset 13", "n0"):
        assert s in line, line


def test_unsupported_opset(tmp_path):
    n = helper.make_node("Relu", ["x"], ["y"], name="r")
    m = make_model([n], [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])], opset=99)
    line = fails_cleanly(save(m, tmp_path / "m.onnx"))
    assert "opset 99" in line and "ai.onnx" in line and "Relu" in line, line


def test_unsupported_types(tmp_path):
    n = helper.make_node("Identity", ["x"], ["y"])
    m = make_model([n], [("x", TP.STRING, [2])], [("y", TP.STRING, [2])])
    assert "STRING" in fails_cleanly(save(m, tmp_path / "s.onnx"))
    seq = helper.make_tensor_sequence_value_info("x", TP.FLOAT, [2])
    g = helper.make_graph([n], "g", [seq], [helper.make_tensor_sequence_value_info("y", TP.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert "sequence" in fails_cleanly(save(m, tmp_path / "q.onnx"))
    n = helper.make_node("Constant", [], ["y"], value_strings=["a"])
    m = make_model([n], [], [("y", TP.STRING, [1])])
    assert "string" in fails_cleanly(save(m, tmp_path / "c.onnx"))


def test_bad_attribute_and_data(tmp_path):
    # an attribute kiln's op does not know
    n = helper.make_node("Relu", ["x"], ["y"], name="r", bogus=3)
    m = make_model([n], [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])])
    assert "bogus" in fails_cleanly(save(m, tmp_path / "a.onnx"))
    # raw_data shorter than the declared shape
    t = onnx.TensorProto(name="w", data_type=TP.FLOAT, dims=[4, 4],
                         raw_data=np.zeros(3, np.float32).tobytes())
    n = helper.make_node("Add", ["x", "w"], ["y"])
    m = make_model([n], [("x", TP.FLOAT, [4, 4])], [("y", TP.FLOAT, [4, 4])], [t])
    line = fails_cleanly(save(m, tmp_path / "r.onnx"))
    assert "'w'" in line and "raw_data" in line, line
    # a node reading a value nobody defines
    n = helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")
    m = make_model([n], [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])])
    line = fails_cleanly(save(m, tmp_path / "u.onnx"))
    assert "nowhere" in line and "adder" in line, line


def test_not_a_model(tmp_path):
    p = tmp_path / "text.onnx"
    p.write_text("this is not a protobuf\n")
    fails_cleanly(str(p))
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    fails_cleanly(str(p))
    line = fails_cleanly(str(tmp_path / "missing.onnx"))
    assert "missing.onnx" in line


def sample_model(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
        helper.make_node("Softmax", ["hb"], ["s"], axis=-1, name="sm"),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TP.INT64, [2], [2, 8])),
        helper.make_node("Reshape", ["s", "k"], ["y"], name="rs"),
    ]
    m = make_model(nodes, [("x", TP.FLOAT, ["n", 8])], [("y", TP.FLOAT, None)],
                   [init("w", rnd(8, 8)), init("b", rnd(8))], opset=17)
    return save(m, tmp_path / "good.onnx")


def test_truncated_files(tmp_path):
    good = open(sample_model(tmp_path), "rb").read()
    assert run_kiln("ir", tmp_path / "good.onnx").returncode == 0
    cuts = sorted(set(range(0, len(good), max(1, len(good) // 150))) | {1, 2, len(good) - 1})
    for cut in cuts:
        p = tmp_path / "cut" / f"t{cut}.onnx"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(good[:cut])
        fails_cleanly(str(p))
        p.unlink()


def test_corrupted_files_never_crash(tmp_path):
    good = open(sample_model(tmp_path), "rb").read()
    rng = random.Random(7)
    (tmp_path / "bad").mkdir()
    for i in range(150):
        b = bytearray(good)
        if i % 2:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        else:
            pos = rng.randrange(len(b))
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        p = tmp_path / "bad" / f"c{i}.onnx"
        p.write_bytes(bytes(b))
        r = run_kiln("ir", p, check=False, errors="replace")  # names may be mangled bytes
        # a flip may hit a payload byte and leave a valid model; never a crash
        assert r.returncode in (0, 2), (i, r.returncode, r.stderr)
        if r.returncode == 2:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert r.stdout == ""
        p.unlink()


def test_eval_reports_import_errors(tmp_path):
    n = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    m = make_model([n], [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    path = save(m, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros(2, np.float32))
    p = run_kiln("eval", path, "--input", f"x={tmp_path / 'x.npy'}", check=False)
    assert p.returncode == 2 and "Frobnicate" in p.stderr
    assert onnx.load(path)  # the model file itself is untouched
