"""`kiln build --target cuda` on a machine without a GPU: the generated CUDA
compiles through NVRTC for every kernel of the test models (cubins for
sm_80 and sm_90 plus PTX), decode steps use the fused launch sequence, and
errors are one line (NVRTC errors with the generated source line). Running
the kernels is bench/gpu.sh's job on a GPU machine."""
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from kiln_util import ROOT, run_kiln, shared_data

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_ops  # noqa: E402
import gpu_prog  # noqa: E402

SMOL = os.path.join(ROOT, ".cache", "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
STORIES = shared_data("stories260K.bin")


def have_nvrtc():
    names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    cands = [os.environ["KILN_NVRTC"]] if os.environ.get("KILN_NVRTC") else []
    cands += names + [os.path.join(d, n) for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/lib",
                                                    "/usr/local/cuda/targets/x86_64-linux/lib") for n in names]
    for c in cands:
        try:
            ctypes.CDLL(c)
            return True
        except OSError:
            pass
    return False


def have_gpu():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        n = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(n)) == 0 and n.value > 0
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not have_nvrtc(), reason="NVRTC (CUDA toolkit) not installed")
TMP = tempfile.mkdtemp(prefix="kiln_cuda_")


def build(model, name, *extra, env=None):
    exe = os.path.join(TMP, name)
    p = subprocess.run([os.environ.get("KILN_BIN") or os.path.join(ROOT, "build", "tools", "kiln"), "build", model,
                        "-o", exe, "--target", "cuda", *extra], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, **(env or {})))
    return exe, p


def check_images(exe, archs=(80, 90)):
    prog = gpu_prog.read(exe)
    got = {a: img for a, img in prog["images"]}
    for a in archs:
        assert a in got, f"no cubin for sm_{a}: {sorted(got)}"
        assert gpu_prog.cubin_arch(got[a]) == a, f"image for sm_{a} is not an sm_{a} cubin"
    assert 0 in got and b".target sm_80" in got[0] and b".entry" in got[0], "PTX missing"
    assert prog["kernels"] and len(prog["launches"]) >= len(prog["kernels"]) - 1
    # every kernel the launches name is an entry point of each image
    for L in prog["launches"]:
        if L["kind"] == 0:
            name = prog["kernels"][L["kernel"]].encode()
            assert all(name in img for img in got.values()), name
    return prog


@pytest.mark.skipif(not STORIES, reason="../shared/data/stories260K.bin not present")
def test_stories260k_builds_for_sm80_sm90_and_ptx():
    exe, p = build(STORIES, "stories", "--max-ctx", "128")
    assert p.returncode == 0, p.stderr
    prog = check_images(exe)
    assert prog["flags"] & 1, "LM modules carry the GPU argmax kernel"
    assert "kiln_argmax_f32" in prog["kernels"]


def test_tiny_hf_llama_bf16_decode_is_fused():
    import hf_tiny
    d = os.path.join(TMP, "hf_llama")
    cfg = hf_tiny.config("llama", num_hidden_layers=3)
    hf_tiny.save(d, cfg, hf_tiny.weights(cfg), dtype="bf16")
    for passes in ([], ["--passes", "canonicalize"]):  # merged projections (fuse pass) or not
        exe, p = build(d, "hf_llama_cu", *passes)
        assert p.returncode == 0, p.stderr
        prog = check_images(exe)
        # decode (batch 1, seq 1): per layer q/k/v GEMV, attention (with the KV append),
        # o-proj + residual, SwiGLU GEMV, down + residual; plus the position
        # ids, the embedding, the final norm and the logits
        syms = [1, 1, 5] + [1] * 13
        dec = gpu_prog.active(prog, syms)
        assert len(dec) <= 5 * 3 + 12, len(dec)
        pre = gpu_prog.active(prog, [1, 40, 5] + [1] * 13)
        assert len(pre) > len(dec)  # prefill runs the unfused forms (tensor-core GEMMs)


@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 not fetched (scripts/fetch_models.sh)")
def test_smollm2_gguf_builds():
    exe, p = build(SMOL, "smollm2", "--max-ctx", "512")
    assert p.returncode == 0, p.stderr
    check_images(exe)


def test_tiny_gguf_every_block_format_builds():
    pytest.importorskip("gguf")
    sys.path.insert(0, os.path.dirname(__file__))
    import test_gguf
    path = os.path.join(TMP, "tiny.gguf")
    test_gguf.write_tiny(path, n_layer=8)  # every tensor type in every position
    exe, p = build(path, "tiny_gguf", "--max-ctx", "64")
    assert p.returncode == 0, p.stderr
    check_images(exe)


def test_examples_and_onnx_build():
    for f in sorted(os.listdir(os.path.join(ROOT, "examples"))):
        if f.endswith(".kir"):
            exe, p = build(os.path.join(ROOT, "examples", f), "ex_" + f[:-4])
            assert p.returncode == 0, f + ": " + p.stderr
            check_images(exe)
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [w])
    path = os.path.join(TMP, "mlp.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), path)
    exe, p = build(path, "onnx_mlp", "--bound", "n=32")
    assert p.returncode == 0, p.stderr
    check_images(exe)


@pytest.mark.parametrize("c", gpu_ops.CASES, ids=lambda c: c["name"])
def test_gpu_check_cases_compile(c):
    """The graphs bench/gpu.sh runs on the GPU compile here."""
    d = os.path.join(TMP, "ops", c["name"])
    gpu_ops.write_case(c, d)
    cmd = gpu_ops.build_cmd(c, d)
    cmd[0] = os.environ.get("KILN_BIN") or os.path.join(ROOT, "build", "tools", "kiln")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    check_images(os.path.join(d, "model_cuda"))


def test_nvrtc_error_shows_generated_line():
    exe, p = build(os.path.join(ROOT, "examples", "mlp.kir"), "bad", env={"KILN_CUDA_INJECT_ERROR": "1"})
    assert p.returncode == 2
    msg = p.stderr.strip()
    assert len(msg.splitlines()) == 1, msg
    assert "NVRTC (sm_80) rejected the generated CUDA" in msg
    assert "kiln_model.cu(" in msg and "error" in msg
    assert "generated line" in msg and "int kiln_injected_error = ;" in msg
    assert "in kernel k0 (" in msg  # the node whose kernel holds the line
    assert not os.path.exists(exe)


def test_extra_arch_and_bad_arch():
    exe, p = build(os.path.join(ROOT, "examples", "mlp.kir"), "arch86", "--cuda-arch", "86")
    assert p.returncode == 0, p.stderr
    check_images(exe, (80, 86, 90))
    exe, p = build(os.path.join(ROOT, "examples", "mlp.kir"), "archbad", "--cuda-arch", "8x")
    assert p.returncode == 2 and "--cuda-arch" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_unsupported_op_is_one_line_naming_the_node():
    text = """kir 1
graph "g" {
  input %x : f32[4, 8]
  const %ax : i64[] = [1]
  %c = CumSum(%x, %ax)
  output %c
}"""
    path = os.path.join(TMP, "cumsum.kir")
    with open(path, "w") as f:
        f.write(text)
    exe, p = build(path, "cumsum")
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1
    assert "CumSum %c" in p.stderr and "CUDA" in p.stderr


@pytest.mark.skipif(have_gpu(), reason="this machine has a GPU (bench/gpu.sh runs the models)")
def test_cuda_artifact_without_gpu_fails_cleanly():
    exe, p = build(os.path.join(ROOT, "examples", "mlp.kir"), "nogpu")
    assert p.returncode == 0, p.stderr
    x = os.path.join(TMP, "x.npy")
    np.save(x, np.ones((2, 4), np.float32))
    r = subprocess.run([exe, "--input", f"x={x}", "--output-dir", os.path.join(TMP, "o")], capture_output=True,
                       text=True, env=dict(os.environ, KILN_LIBCUDA="libcuda-missing.so.1"))
    assert r.returncode == 2
    assert "NVIDIA GPU" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cpu_builds_still_work_without_cuda_paths():
    """The CUDA pieces are dlopen'ed: CPU artifacts neither need nor load them."""
    exe = os.path.join(TMP, "mlp_cpu")
    run_kiln("build", os.path.join(ROOT, "examples", "mlp.kir"), "-o", exe, env=dict(os.environ, KILN_NVRTC="/nonexistent"))
    out = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
    assert "cuda" not in out and "nvrtc" not in out


def test_damaged_program_is_a_clean_error():
    """The runtime checks the program blob before touching the driver."""
    exe, p = build(os.path.join(ROOT, "examples", "mlp.kir"), "damaged")
    assert p.returncode == 0, p.stderr
    blob = bytearray(open(exe, "rb").read())
    off = blob.find(gpu_prog.MAGIC)
    while off >= 0:  # the program, not the runtime's copy of the magic string
        try:
            gpu_prog.parse(bytes(blob), off)
            break
        except (ValueError, UnicodeDecodeError):
            off = blob.find(gpu_prog.MAGIC, off + 1)
    assert off >= 0
    x = os.path.join(TMP, "xd.npy")
    np.save(x, np.ones((2, 4), np.float32))
    for field, value, want in ((8, 7, "version 7"), (24, 1 << 21, "damaged")):
        bad = bytearray(blob)
        bad[off + field:off + field + 4] = value.to_bytes(4, "little")  # version / n_launches
        path = os.path.join(TMP, "damaged_" + str(field))
        with open(path, "wb") as f:
            f.write(bad)
        os.chmod(path, 0o755)
        r = subprocess.run([path, "--input", f"x={x}", "--output-dir", os.path.join(TMP, "od")], capture_output=True, text=True)
        assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
