#!/bin/sh
# Extracts ONNX's backend node tests (Debian package libonnx-testdata) into
# .cache/onnx-testdata and prints the folder of node tests. Uses the .deb in
# ../shared/data beside the checkout when present, else `apt-get download`.
# Idempotent; --force extracts again.
set -eu
cd "$(dirname "$0")/.."
DEST=.cache/onnx-testdata
NODE="$DEST/usr/share/libonnx-testdata/data/node"
if [ "${1:-}" = "--force" ]; then
    rm -rf "$DEST"
fi
if [ -f "$NODE/test_add/model.onnx" ]; then
    echo "$NODE"
    exit 0
fi
deb=$(ls ../shared/data/libonnx-testdata_*_all.deb 2>/dev/null | tail -n 1 || true)
tmp=""
if [ -z "$deb" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "fetch_onnx_tests: ../shared/data has no libonnx-testdata; apt-get download" >&2
    (cd "$tmp" && apt-get download libonnx-testdata >&2)
    deb=$(ls "$tmp"/libonnx-testdata_*.deb | tail -n 1)
fi
mkdir -p "$DEST"
dpkg -x "$deb" "$DEST"
if [ ! -f "$NODE/test_add/model.onnx" ]; then
    echo "fetch_onnx_tests: $deb did not contain $NODE" >&2
    exit 1
fi
echo "$NODE"
