"""Language models compiled for the CPU: kiln build of the real SmolLM2 GGUF
and the stories260K llama2.c checkpoint, generation, sampling, slots, the
C API example."""
import os
import subprocess
import tempfile

import pytest

from kiln_util import ROOT, run_kiln, shared_data

SMOL = os.path.join(ROOT, ".cache", "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
STORIES = shared_data("stories260K.bin")
BUILD = tempfile.mkdtemp(prefix="kiln_lm_")


def built(model, name, *extra):
    exe = os.path.join(BUILD, name)
    if not os.path.exists(exe):
        run_kiln("build", model, "-o", exe, *extra, timeout=900)
    return exe


def run(exe, *args, timeout=300):
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not STORIES, reason="../shared/data/stories260K.bin not present")
def test_stories_compiled_matches_interpreter():
    exe = built(STORIES, "stories", "--max-ctx", "128")
    p = run(exe, "--ids", "1", "-n", 64, "--temp", 0)
    assert p.returncode == 0, p.stderr
    got = p.stdout.strip()
    want = run_kiln("run", STORIES, "--ids", "1", "-n", 64).stdout.strip()
    assert got == want and len(got.split(",")) == 64
    assert "tok/s" in p.stderr


@pytest.mark.skipif(not STORIES, reason="../shared/data/stories260K.bin not present")
def test_context_overflow_ends_cleanly():
    exe = built(STORIES, "stories_small", "--max-ctx", "16")
    p = run(exe, "--ids", "1,2,3", "-n", 64, "--temp", 0)
    assert p.returncode == 0, p.stderr
    assert "context full" in p.stderr
    # 13 tokens fill positions 3..15; a 14th comes from the last logits
    assert len(p.stdout.strip().split(",")) == 14
    p = run(exe, "--ids", ",".join(["1"] * 20), "-n", 4)
    assert p.returncode == 2 and "context length 16 exceeded" in p.stderr


@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 not fetched (scripts/fetch_models.sh)")
def test_smollm2_answers_and_sampling():
    exe = built(SMOL, "smollm2")
    p = run(exe, "-p", "What is the capital of France?", "-n", 32, "--temp", 0)
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout, p.stdout
    assert "tok/s" in p.stderr
    outs = [run(exe, "-p", "Write a short poem about the sea.", "-n", 24, "--temp", 1, "--seed", s).stdout
            for s in (7, 7, 8)]
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    assert all(o.strip() for o in outs)


@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 not fetched (scripts/fetch_models.sh)")
def test_smollm2_batch_file_slots():
    exe = built(SMOL, "smollm2")
    prompts = ["What is the capital of France?", "Name a primary color."]
    bf = os.path.join(BUILD, "prompts.txt")
    with open(bf, "w") as f:
        f.write("\n".join(prompts) + "\n")
    p = run(exe, "--batch-file", bf, "-n", 16, "--temp", 0)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.splitlines() if l.startswith("[")]
    assert len(lines) == 2
    # each slot's answer equals running the prompt alone
    for i, pr in enumerate(prompts):
        alone = run(exe, "-p", pr, "-n", 16, "--temp", 0).stdout.strip()
        assert lines[i][len(f"[{i}] "):].strip() == alone.splitlines()[0].strip()


@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 not fetched (scripts/fetch_models.sh)")
def test_c_api_example():
    so = os.path.join(BUILD, "libsmollm2.so")
    run_kiln("build", SMOL, "-o", so, "--shared", timeout=900)
    exe = os.path.join(BUILD, "generate")
    subprocess.run(["cc", "-o", exe, os.path.join(ROOT, "examples", "generate.c"), "-I", BUILD,
                    "-include", os.path.join(BUILD, "libsmollm2.h"), so, "-Wl,-rpath," + BUILD], check=True)
    p = run(exe, "What is the capital of France?")
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout
    assert "next token after" in p.stdout


@pytest.mark.skipif(not STORIES, reason="../shared/data/stories260K.bin not present")
def test_kv_layouts_agree():
    """The in-place cache and the functional (packed past/present) form give
    the same tokens; so does a multi-token prompt split across prefill chunks."""
    inplace = built(STORIES, "stories")
    functional = built(STORIES, "stories_fn", "--max-ctx", "128", "--kv-layout", "functional")
    prompt = "1,70,80,90,100,110"
    a = run(inplace, "--ids", prompt, "-n", 40, "--temp", 0).stdout
    b = run(functional, "--ids", prompt, "-n", 40, "--temp", 0).stdout
    assert a == b and a.strip()
    want = run_kiln("run", STORIES, "--ids", prompt, "-n", 40).stdout.strip()
    assert a.strip() == want


@pytest.mark.skipif(not os.path.exists(SMOL), reason="SmolLM2 not fetched (scripts/fetch_models.sh)")
def test_smollm2_interactive_chat_reuses_cache():
    """-i keeps a conversation: the second turn re-renders the history and
    only the new tokens are computed (the cached prefix is reused)."""
    exe = built(SMOL, "smollm2")
    p = subprocess.run([exe, "-i", "-n", "12", "--temp", "0"], input="Hi! What is 2+2?\nAnd 3+3?\n",
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    reports = [l for l in p.stderr.splitlines() if "reused" in l]
    assert len(reports) == 2
    reused = int(reports[1].split("(")[1].split()[0])
    assert reused > 20  # the first turn's tokens were not recomputed
    assert p.stdout.strip()
