"""Helpers for tests that drive the kiln CLI and compare with numpy."""
import os
import subprocess
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def kiln_bin():
    """Path of the kiln executable under test (KILN_BIN, else build/)."""
    return os.environ.get("KILN_BIN") or os.path.join(ROOT, "build", "tools", "kiln")


def run_kiln(*args, check=True, timeout=600, **kw):
    """Runs `kiln ARGS`; returns the CompletedProcess (text mode)."""
    p = subprocess.run([kiln_bin(), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"kiln {' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def eval_kir(text, inputs, tmpdir=None):
    """Writes `text` as a .kir file, runs `kiln eval` with the given numpy
    inputs (dict name -> array), returns dict output-name -> array."""
    d = tmpdir or tempfile.mkdtemp(prefix="kiln_")
    path = os.path.join(d, "model.kir")
    with open(path, "w") as f:
        f.write(text)
    args = ["eval", path, "--output-dir", os.path.join(d, "out")]
    for name, arr in inputs.items():
        fn = os.path.join(d, f"in_{len(args)}.npy")
        np.save(fn, arr)
        args += ["--input", f"{name}={fn}"]
    p = run_kiln(*args)
    outs = {}
    for line in p.stdout.splitlines():
        name, _, rest = line.partition(": ")
        if "-> " in rest:
            outs[name] = np.load(rest.split("-> ", 1)[1])
    return outs


def shared_data(name):
    """Path of a file in ../shared/data beside the checkout, or None."""
    p = os.path.join(ROOT, "..", "shared", "data", name)
    return p if os.path.exists(p) else None
