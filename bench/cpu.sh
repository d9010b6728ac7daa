#!/bin/sh
# CPU benchmark (not a test): compiled kiln vs interpreter vs onnxruntime.
# Results go to docs/bench/cpu.md.
set -eu
cd "$(dirname "$0")/.."
exec python3 bench/cpu_bench.py --kiln "${KILN_BIN:-build/tools/kiln}" "$@"
