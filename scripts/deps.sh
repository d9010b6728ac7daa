#!/bin/sh
# Installs everything kiln needs on a fresh Debian 12 machine: build tools,
# LLVM 16, protobuf-c, ONNX's proto file, cJSON (built from Debian's source
# package so it links statically), and the Python packages tests use.
# Idempotent; a stamp file skips the work when nothing changed.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE="$ROOT/.cache"
STAMP="$CACHE/deps.stamp"
VERSION="deps-v1 $(cat scripts/deps.sh | cksum)"
mkdir -p "$CACHE"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PKGS="build-essential cmake pkg-config llvm-16-dev libprotobuf-c-dev protobuf-c-compiler \
libonnx-dev zlib1g-dev libzstd-dev libxml2-dev libz3-dev libtinfo-dev dpkg-dev \
chromium"
missing=""
for p in $APT_PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "deps: apt-get install$missing"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

# cJSON source (Debian ships only a shared library; we link it statically).
if [ ! -f "$CACHE/cjson/cJSON.c" ]; then
    if ! apt-get source --print-uris cjson >/dev/null 2>&1; then
        echo "deps: enabling Debian source packages for cjson"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | $SUDO tee /etc/apt/sources.list.d/kiln-deb-src.sources >/dev/null
        $SUDO apt-get update -qq
    fi
    rm -rf "$CACHE/cjson-src" && mkdir -p "$CACHE/cjson-src"
    (cd "$CACHE/cjson-src" && apt-get source --download-only cjson >/dev/null 2>&1 && \
        tar xzf cjson_*.orig.tar.gz && tar xJf cjson_*.debian.tar.xz)
    src=$(ls -d "$CACHE"/cjson-src/cJSON-*/)
    if [ -f "$CACHE/cjson-src/debian/patches/series" ]; then
        for p in $(grep -v '^#' "$CACHE/cjson-src/debian/patches/series"); do
            patch -d "$src" -p1 -s < "$CACHE/cjson-src/debian/patches/$p"
        done
    fi
    mkdir -p "$CACHE/cjson"
    cp "$src/cJSON.c" "$src/cJSON.h" "$src/LICENSE" "$CACHE/cjson/"
fi

# Python packages for tests (references only; the product is C).
python3 -m pip install -q --disable-pip-version-check numpy onnx onnxruntime pytest tokenizers \
    safetensors gguf ml_dtypes 2>&1 | grep -v "^\[notice\]" || true
python3 -c "import numpy, onnx, onnxruntime, pytest" 

echo "$VERSION" > "$STAMP"
echo "deps: ok"
