#!/usr/bin/env python3
"""CI check: runs `kiln conformance` over ONNX's backend node tests and fails
when the transformer-set pass count drops below tests/conformance/baseline.json
or when any test crashes. `--record` rewrites the baseline from this run.

Exit status: 0 ok, 1 regression or crash, 77 test data unavailable (ctest
reports the test as skipped)."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASELINE = os.path.join(ROOT, "tests", "conformance", "baseline.json")


def node_dir():
    try:
        out = subprocess.run([os.path.join(ROOT, "scripts", "fetch_onnx_tests.sh")], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"ONNX test data unavailable ({e}); skipping", file=sys.stderr)
        return None
    return os.path.join(ROOT, out.splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.environ.get("KILN_BIN") or
                    os.path.join(ROOT, "build", "tools", "kiln"))
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--record", action="store_true", help="write the baseline from this run")
    args = ap.parse_args()

    tests = node_dir()
    if not tests:
        return 77
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "conformance.json")
        p = subprocess.run([args.kiln, "conformance", tests, "--json", out],
                           capture_output=True, text=True)
        print(p.stdout[-3000:])
        if p.returncode not in (0, 1) or not os.path.exists(out):
            print(f"kiln conformance failed ({p.returncode}): {p.stderr}", file=sys.stderr)
            return 1
        with open(out) as f:
            run = json.load(f)

    summ = run["summary"]
    ts = summ["transformer_set"]
    passing = sorted(t["test"] for t in run["tests"]
                     if t["transformer_set"] and t["status"] == "pass")
    crashed = [t["test"] for t in run["tests"] if t.get("crash")]
    if args.record:
        base = {
            "suite": "libonnx-testdata 1.20.0 (node tests)",
            "transformer_set": {"total": ts["total"], "pass": ts["pass"]},
            "all": {"total": summ["total"], "pass": summ["pass"]},
            "transformer_set_passing": passing,
        }
        with open(args.baseline, "w") as f:
            json.dump(base, f, indent=1)
            f.write("\n")
        print(f"recorded baseline: transformer set {ts['pass']}/{ts['total']}, "
              f"all {summ['pass']}/{summ['total']}")
        return 1 if crashed else 0

    with open(args.baseline) as f:
        base = json.load(f)
    want = base["transformer_set"]["pass"]
    lost = sorted(set(base.get("transformer_set_passing", [])) - set(passing))
    gained = sorted(set(passing) - set(base.get("transformer_set_passing", [])))
    print(f"transformer set: {ts['pass']}/{ts['total']} pass (baseline {want}); "
          f"all tests: {summ['pass']}/{summ['total']}; crashes: {summ['crashes']}")
    if gained:
        print(f"newly passing ({len(gained)}): {' '.join(gained[:40])}"
              f"{' ...' if len(gained) > 40 else ''}; re-record with --record")
    if lost:
        print(f"no longer passing ({len(lost)}): {' '.join(lost)}")
        for t in run["tests"]:
            if t["test"] in lost:
                print(f"  {t['test']}: {t['status']}: {t['detail']}")
    rc = 0
    if crashed:
        print(f"FAIL: {len(crashed)} crashed: {' '.join(crashed)}")
        rc = 1
    if ts["pass"] < want:
        print(f"FAIL: transformer-set pass count {ts['pass']} is below the baseline {want}")
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
