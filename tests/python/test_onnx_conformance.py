"""`kiln conformance`: per-test status against stored outputs, the JSON
report, the per-op summary, and isolation of crashes and hangs (each test
runs in a forked child)."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from kiln_util import ROOT, run_kiln
from test_onnx_import import kiln_eval, make_model

NODE = os.path.join(ROOT, ".cache", "onnx-testdata", "usr", "share", "libonnx-testdata", "data",
                    "node")


def write_test(root, name, model, inputs, outputs):
    d = root / name
    (d / "test_data_set_0").mkdir(parents=True)
    onnx.save(model, str(d / "model.onnx"))
    for prefix, arrs in (("input", inputs), ("output", outputs)):
        for i, (nm, a) in enumerate(arrs.items()):
            t = numpy_helper.from_array(a, nm)
            (d / "test_data_set_0" / f"{prefix}_{i}.pb").write_bytes(t.SerializeToString())


def add_model():
    n = helper.make_node("Add", ["x", "y"], ["z"])
    return make_model([n], [("x", TP.FLOAT, [2, 3]), ("y", TP.FLOAT, [2, 3])],
                      [("z", TP.FLOAT, [2, 3])])


@pytest.fixture
def suite(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    root = tmp_path / "suite"
    write_test(root, "test_add_good", add_model(), {"x": x, "y": y}, {"z": x + y})
    wrong = x + y
    wrong[1, 2] += 0.01  # outside rtol 1e-3
    write_test(root, "test_add_wrong", add_model(), {"x": x, "y": y}, {"z": wrong})
    close = (x + y) * (1 + 5e-4)  # inside rtol 1e-3
    write_test(root, "test_add_close", add_model(), {"x": x, "y": y}, {"z": close})
    xn = x.copy()
    xn[0, 0] = np.nan
    write_test(root, "test_add_nan", add_model(), {"x": xn, "y": y}, {"z": xn + y})
    n = helper.make_node("Frobnicate", ["x"], ["z"], domain="com.example")
    m = make_model([n], [("x", TP.FLOAT, [2, 3])], [("z", TP.FLOAT, [2, 3])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    write_test(root, "test_frob", m, {"x": x}, {"z": x})
    # exhausts memory in the interpreter: the child dies, the run goes on
    n = helper.make_node("ConstantOfShape", ["s"], ["z"],
                         value=helper.make_tensor("v", TP.FLOAT, [1], [1.0]))
    big = numpy_helper.from_array(np.array([1 << 20, 1 << 20, 1 << 10], np.int64), "s")
    m = make_model([n], [], [("z", TP.FLOAT, None)], [big])
    write_test(root, "test_huge", m, {}, {"z": np.zeros(1, np.float32)})
    return root


def test_statuses_and_json(suite, tmp_path):
    out = tmp_path / "r.json"
    p = run_kiln("conformance", suite, "--json", out, "--mem-limit-mb", "2048", check=False)
    rep = json.loads(out.read_text())
    st = {t["test"]: t for t in rep["tests"]}
    assert st["test_add_good"]["status"] == "pass"
    assert st["test_add_close"]["status"] == "pass"
    assert st["test_add_nan"]["status"] == "pass"
    assert st["test_add_wrong"]["status"] == "fail"
    assert "'z'" in st["test_add_wrong"]["detail"] and "[1,2]" in st["test_add_wrong"]["detail"]
    assert st["test_frob"]["status"] == "unsupported"
    assert "Frobnicate" in st["test_frob"]["detail"]
    assert st["test_huge"]["status"] == "fail" and st["test_huge"]["crash"]
    assert st["test_huge"]["detail"].startswith("crash:")
    assert st["test_add_good"]["ops"] == ["Add"]
    assert st["test_huge"]["ops"] == ["ConstantOfShape"]  # known even though it crashed
    assert st["test_frob"]["ops"] == ["com.example.Frobnicate"]
    assert st["test_add_good"]["transformer_set"] and not st["test_frob"]["transformer_set"]
    s = rep["summary"]
    assert (s["total"], s["pass"], s["fail"], s["unsupported"], s["crashes"]) == (6, 3, 2, 1, 1)
    assert rep["ops"]["Add"] == {"pass": 3, "fail": 1, "unsupported": 0, "crashes": 0}
    assert p.returncode == 1  # a crash makes the run fail
    assert "crashes: 1" in p.stdout
    assert "transformer set: 5: 3 pass, 2 fail, 0 unsupported" in p.stdout


def test_filter_and_timeout(suite, tmp_path):
    out = tmp_path / "r.json"
    run_kiln("conformance", suite, "--filter", "add_good", "--json", out)
    assert [t["test"] for t in json.loads(out.read_text())["tests"]] == ["test_add_good"]
    # a test over the time limit is killed and reported; the run continues
    p = run_kiln("conformance", suite, "--filter", "test_add", "--timeout", "0.000001", "--json",
                 out, check=False)
    rep = json.loads(out.read_text())
    assert all(t["status"] == "fail" and t["detail"].startswith("timeout") for t in rep["tests"])
    assert rep["summary"]["crashes"] == 0 and p.returncode == 0


def test_single_test_folder_and_usage(suite):
    p = run_kiln("conformance", suite / "test_add_good", "-v")
    assert "PASS" in p.stdout and "test_add_good" in p.stdout
    assert run_kiln("conformance", check=False).returncode == 2
    assert run_kiln("conformance", suite / "nowhere", check=False).returncode == 2


@pytest.mark.skipif(not os.path.isdir(NODE), reason="ONNX test data not extracted "
                    "(scripts/fetch_onnx_tests.sh)")
def test_real_node_tests_subset(tmp_path):
    out = tmp_path / "r.json"
    run_kiln("conformance", NODE, "--filter", "test_softmax", "--json", out)
    rep = json.loads(out.read_text())
    assert rep["summary"]["total"] >= 10 and rep["summary"]["crashes"] == 0
    # each reported pass is re-checked independently: kiln eval on the same
    # inputs against onnx's reference evaluator
    from onnx.reference import ReferenceEvaluator
    checked = 0
    for t in rep["tests"]:
        if t["status"] != "pass":
            continue
        d = os.path.join(NODE, t["test"])
        ref = ReferenceEvaluator(os.path.join(d, "model.onnx"))
        ins = {nm: numpy_helper.to_array(onnx.load_tensor(
            os.path.join(d, "test_data_set_0", f"input_{i}.pb")))
            for i, nm in enumerate(ref.input_names)}
        want = ref.run(None, ins)
        got = kiln_eval(os.path.join(d, "model.onnx"), ins, tmp_path)
        for nm, w in zip(ref.output_names, want):
            np.testing.assert_allclose(got[nm], w, rtol=1e-4, atol=1e-6, err_msg=t["test"])
        checked += 1
    assert checked >= 10
