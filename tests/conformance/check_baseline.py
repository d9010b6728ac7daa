#!/usr/bin/env python3
"""CI check: runs `kiln conformance` over ONNX's backend node tests and fails
when the transformer-set pass count drops below tests/conformance/baseline.json
or when any test crashes. `--record` rewrites the baseline from this run.

`--target interp` (default) checks the reference interpreter against the
top-level entry of baseline.json; `--target cpu` checks the compiled CPU path
(kiln build's pipeline, run as a shared library) against its "cpu" entry,
over the transformer set only (compiling every test costs time). Recording
one target keeps the other's entry.

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
    ap.add_argument("--target", choices=("interp", "cpu"), default="interp")
    ap.add_argument("--jobs", type=int, default=2, help="tests run side by side")
    args = ap.parse_args()

    tests = node_dir()
    if not tests:
        return 77
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "conformance.json")
        cmd = [args.kiln, "conformance", tests, "--json", out, "--target", args.target,
               "-j", str(args.jobs)]
        if args.target == "cpu":
            cmd.append("--transformer-set")
        p = subprocess.run(cmd, capture_output=True, text=True)
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
    try:
        with open(args.baseline) as f:
            stored = json.load(f)
    except FileNotFoundError:
        stored = {}
    if args.record:
        entry = {
            "transformer_set": {"total": ts["total"], "pass": ts["pass"]},
            "all": {"total": summ["total"], "pass": summ["pass"]},
            "transformer_set_passing": passing,
        }
        if args.target == "cpu":
            del entry["all"]  # only the transformer set ran
            stored["cpu"] = entry
        else:
            cpu = stored.get("cpu")
            stored = {"suite": "libonnx-testdata 1.20.0 (node tests)", **entry}
            if cpu is not None:
                stored["cpu"] = cpu
        with open(args.baseline, "w") as f:
            json.dump(stored, f, indent=1)
            f.write("\n")
        print(f"recorded {args.target} baseline: transformer set {ts['pass']}/{ts['total']}"
              + (f", all {summ['pass']}/{summ['total']}" if args.target == "interp" else ""))
        return 1 if crashed else 0

    base = stored.get("cpu") if args.target == "cpu" else stored
    if not base or "transformer_set" not in base:
        print(f"FAIL: {args.baseline} has no {args.target} baseline; record one with --record")
        return 1
    want = base["transformer_set"]["pass"]
    lost = sorted(set(base.get("transformer_set_passing", [])) - set(passing))
    gained = sorted(set(passing) - set(base.get("transformer_set_passing", [])))
    ran_all = "" if args.target == "cpu" else f"all tests: {summ['pass']}/{summ['total']}; "
    print(f"{args.target}: transformer set: {ts['pass']}/{ts['total']} pass (baseline {want}); "
          f"{ran_all}crashes: {summ['crashes']}")
    if gained:
        print(f"newly passing ({len(gained)}): {' '.join(gained[:40])}"
              f"{' ...' if len(gained) > 40 else ''}; re-record with --record"
              f"{' --target cpu' if args.target == 'cpu' else ''}")
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
