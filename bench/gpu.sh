#!/bin/bash
# bench/gpu.sh - GPU checks and benchmarks of kiln's CUDA target, for a
# machine with an NVIDIA GPU and no network, using a kiln built elsewhere.
#
#   bench/gpu.sh pack          on the build machine: put the Release kiln, the
#                              LLVM libraries it loads and the small test models
#                              into .kiln-gpu/ (what travels to the GPU machine)
#   bench/gpu.sh [SECTIONS]    on the GPU machine (default: all sections)
#
# Sections: ops stories gguf smol perf (KILN_BENCH_SHAPES picks the perf
# models). Results: $OUT (default
# /tmp/kiln-gpu-out): log.txt, results.json, ops.json, table.md; the table is
# printed last. The GPU machine needs python3 with torch + transformers (to
# make the random-weight models and time HF eager), cc (kiln links artifacts
# with it) and NVRTC (found in the CUDA toolkit or torch's pip wheels, or
# named by KILN_NVRTC). Measurements are documented in docs/bench/gpu.md.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PACK=${KILN_GPU_PACK:-$ROOT/.kiln-gpu}

if [ "${1:-}" = pack ]; then
    set -e
    BUILD=${BUILD:-build-k-rel}
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKILN_WERROR=ON >/dev/null
    cmake --build "$BUILD" -j2 --target kiln >/dev/null
    rm -rf "$PACK" && mkdir -p "$PACK/libs"
    cp "$BUILD/tools/kiln" "$PACK/kiln"
    # libLLVM and the libraries it needs that a stock Ubuntu image may lack
    for l in $(ldd "$PACK/kiln" | awk '/=>/ {print $3}' | grep -E 'LLVM|z3|icu|xml2|edit|ffi|tinfo|bsd|libmd'); do
        python3 -c "import lzma,sys,shutil; shutil.copyfileobj(open(sys.argv[1],'rb'), lzma.open(sys.argv[2],'wb', preset=6))" \
            "$l" "$PACK/libs/$(basename "$l").xz"
    done
    cp ../shared/data/stories260K.bin "$PACK/" 2>/dev/null || cp /work/shared/data/stories260K.bin "$PACK/"
    python3 -c "import sys; sys.path.insert(0, 'tests/python'); import test_gguf; test_gguf.write_tiny('$PACK/tiny.gguf', n_layer=8)"
    # the GEMV experiment (docs/bench/gpu_notes.md), when nvcc is here
    NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    [ -x "$NVCC" ] && "$NVCC" -O3 -arch=sm_90 -o "$PACK/gemv_lab" bench/gemv_lab.cu
    X=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$X")"; grep -qx "/.kiln-gpu/" "$X" 2>/dev/null || echo "/.kiln-gpu/" >> "$X"
    du -sh "$PACK"
    exit 0
fi

OUT=${OUT:-/tmp/kiln-gpu-out}
W=${KILN_GPU_WORK:-/tmp/kiln-gpu-work}
mkdir -p "$OUT" "$W"
LOG=$OUT/log.txt
: > "$LOG"
RES=$W/results.jsonl
: > "$RES"
log() { echo "$@" | tee -a "$LOG"; }
run() { echo "+ $*" >> "$LOG"; "$@" >> "$LOG" 2>&1; }
res() { echo "$1" >> "$RES"; }
SECTIONS=${*:-ops stories gguf smol perf}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

# ---- environment: unpack the libraries, find NVRTC ----
mkdir -p "$W/lib"
for f in "$PACK"/libs/*.xz; do
    [ -e "$f" ] || continue
    t=$W/lib/$(basename "$f" .xz)
    [ -e "$t" ] || python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$f" "$t"
done
export LD_LIBRARY_PATH=$W/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
KILN=${KILN_BIN:-$PACK/kiln}
export KILN_BIN=$KILN
if [ -z "${KILN_NVRTC:-}" ]; then
    for c in /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda/lib64/libnvrtc.so.12 \
             $(python3 -c "import site,glob; print(' '.join(sorted(glob.glob(site.getsitepackages()[0]+'/nvidia/**/libnvrtc.so*', recursive=True))))" 2>/dev/null); do
        if [ -e "$c" ] && [[ "$c" != *builtins* ]]; then export KILN_NVRTC=$c; break; fi
    done
fi
command -v cc >/dev/null || for c in gcc clang; do command -v $c >/dev/null && export CC=$c && break; done
log "== environment"
log "$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1)"
log "kiln: $KILN ($("$KILN" 2>&1 | head -1)); NVRTC: ${KILN_NVRTC:-loader path}; cc: $(command -v ${CC:-cc} || echo none)"
log "python: $(python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1)"

# ---- 1. every lowering against the interpreter ----
if want ops; then
    log "== ops: CUDA kernels vs kiln's interpreter"
    if run timeout 600 python3 bench/gpu_ops.py build "$W/ops"; then
        timeout 900 python3 bench/gpu_ops.py check "$W/ops" 2>&1 | tee -a "$LOG" | tail -1
    else
        log "ops: build failed (see log)"
    fi
    cp "$W/ops/ops_results.json" "$OUT/ops.json" 2>/dev/null
fi

# kiln build with the default pipeline; if that fails (a pass under
# development), once more with the canonicalize pipeline, saying so
kbuild() {
    if ! run "$KILN" build "$@"; then
        log "note: kiln build $1 failed with the default passes; retrying with --passes canonicalize"
        run "$KILN" build "$@" --passes canonicalize
    fi
}

# greedy tokens of an LM executable: ids on stdout
toks() { "$@" 2>>"$LOG" | tr -d ' \n'; }

# ---- 2. stories260K: 64 greedy tokens, GPU = CPU = interpreter ----
if want stories; then
    log "== stories260K (llama2.c, f32): 64 greedy tokens"
    S=$PACK/stories260K.bin
    kbuild "$S" -o "$W/st_cu" --target cuda --max-ctx 128
    kbuild "$S" -o "$W/st_cpu" --max-ctx 128
    g=$(toks "$W/st_cu" --ids 1 -n 64 --temp 0)
    c=$(toks "$W/st_cpu" --ids 1 -n 64 --temp 0)
    r=$("$KILN" run "$S" --ids 1 -n 64 2>>"$LOG" | tr -d ' \n')
    gl=$(toks "$W/st_cu" --ids 1 -n 64 --logits "$W/st_cu.npy")
    ok=false; [ -n "$g" ] && [ "$g" = "$c" ] && [ "$g" = "$r" ] && [ "$gl" = "$g" ] && ok=true
    log "stories: gpu=$g"; log "stories: cpu=$c"; log "stories: interpreter=$r"
    log "stories: tokens match: $ok"
    res "{\"check\": \"stories260K 64 tokens\", \"ok\": $ok}"
fi

# ---- 3. tiny GGUF with every tensor type: GPU vs interpreter logits ----
if want gguf; then
    log "== tiny GGUF (q4_0 q4_1 q8_0 q4_k q6_k f16 bf16 f32 weights)"
    G=$PACK/tiny.gguf
    kbuild "$G" -o "$W/tg_cu" --target cuda --max-ctx 64
    g=$(toks "$W/tg_cu" --ids 1,2,3 -n 16 --logits "$W/tg_cu.npy")
    r=$("$KILN" run "$G" --ids 1,2,3 -n 16 --logits "$W/tg_ref.npy" 2>>"$LOG" | tr -d ' \n')
    cmp=$(python3 bench/gpu_bench.py compare "$W/tg_cu.npy" "$W/tg_ref.npy" 2>>"$LOG")
    ok=false; [ -n "$g" ] && [ "$g" = "$r" ] && ok=true
    log "gguf: gpu=$g interpreter=$r"; log "gguf: $cmp"
    res "{\"check\": \"tiny GGUF all block formats 16 tokens\", \"ok\": $ok, \"logits\": $cmp}"
    # prefill through the GEMM paths (prompt longer than the GEMV rows)
    ids=$(python3 -c "print(','.join(str((7*i+3)%48) for i in range(40)))")
    g=$(toks "$W/tg_cu" --ids "$ids" -n 4 --logits "$W/tg_cu2.npy")
    r=$("$KILN" run "$G" --ids "$ids" -n 4 --logits "$W/tg_ref2.npy" 2>>"$LOG" | tr -d ' \n')
    cmp=$(python3 bench/gpu_bench.py compare "$W/tg_cu2.npy" "$W/tg_ref2.npy" 2>>"$LOG")
    log "gguf prefill 40: $cmp"
    res "{\"check\": \"tiny GGUF prefill 40 tokens\", \"ok\": $([ "$g" = "$r" ] && echo true || echo false), \"logits\": $cmp}"
fi

# ---- 4. SmolLM2-135M shape, random bf16 weights: GPU vs CPU vs PyTorch ----
if want smol; then
    log "== SmolLM2-135M-shaped random model (bf16): 32 greedy tokens"
    M=$W/smollm2-135m
    [ -e "$M/config.json" ] || run timeout 600 python3 bench/gpu_bench.py gen smollm2-135m "$M"
    kbuild "$M" -o "$W/smol_cu" --target cuda --max-ctx 512
    kbuild "$M" -o "$W/smol_cpu" --max-ctx 512
    ids=11,22,33,44
    gl=$(toks "$W/smol_cu" --ids $ids -n 32 --logits "$W/smol_cu.npy")
    g=$(toks "$W/smol_cu" --ids $ids -n 32 --temp 0)
    c=$(toks "$W/smol_cpu" --ids $ids -n 32 --logits "$W/smol_cpu.npy")
    t=$(timeout 600 python3 bench/gpu_bench.py torch_ref "$M" $ids 32 "$W/smol_torch" 2>>"$LOG" | tail -1 | tr -d ' \n')
    cmp=$(python3 bench/gpu_bench.py compare "$W/smol_cu.npy" "$W/smol_cpu.npy" 2>>"$LOG")
    cmpt=$(python3 bench/gpu_bench.py compare "$W/smol_cu.npy" "$W/smol_torch.npy" 2>>"$LOG")
    ok=false; [ -n "$g" ] && [ "$g" = "$c" ] && [ "$gl" = "$g" ] && ok=true
    log "smol: gpu greedy=$g"; log "smol: gpu logits run=$gl"; log "smol: cpu=$c"; log "smol: torch fp32=$t"
    log "smol: gpu vs cpu $cmp"; log "smol: gpu vs torch $cmpt"
    res "{\"check\": \"SmolLM2-135M shape 32 tokens GPU=CPU\", \"ok\": $ok, \"vs_cpu\": $cmp, \"vs_torch\": $cmpt, \"torch_same\": $([ "$t" = "$g" ] && echo true || echo false)}"
    # a 64-token prompt: prefill through the tensor-core GEMMs (bf16 activations)
    ids=$(python3 -c "print(','.join(str((7919*i+17)%49152) for i in range(64)))")
    toks "$W/smol_cu" --ids "$ids" -n 8 --logits "$W/smol_cu64.npy" >/dev/null
    toks "$W/smol_cpu" --ids "$ids" -n 8 --logits "$W/smol_cpu64.npy" >/dev/null
    cmp=$(python3 bench/gpu_bench.py compare "$W/smol_cu64.npy" "$W/smol_cpu64.npy" 2>>"$LOG")
    log "smol prefill 64: $cmp"
    res "{\"check\": \"SmolLM2-135M shape prefill 64 (tensor cores)\", \"logits\": $cmp}"
fi

# ---- 5. decode speed and prefill throughput ----
if want perf; then
    log "== performance"
    bw=$(python3 bench/gpu_bench.py copy_bw 2>>"$LOG" | tail -1)
    log "copy bandwidth: $bw"
    res "{\"copy\": $bw}"
    for shape in ${KILN_BENCH_SHAPES:-smollm2-135m llama-3.2-1b}; do
        M=$W/$shape
        [ -e "$M/config.json" ] || run timeout 900 python3 bench/gpu_bench.py gen $shape "$M"
        D=$W/${shape}_so
        mkdir -p "$D"
        KILN_CUDA_DUMP=$OUT/$shape.cu kbuild "$M" -o "$D/model.so" --shared --weights external --target cuda --max-ctx 2048
        run ${CC:-cc} -O2 "-DKILN_HEADER=\"$D/model.h\"" bench/gpu_decode.c "$D/model.so" -Wl,-rpath,"$D" -o "$D/decode"
        dec=$(KILN_CUDA_STATS=1 timeout 600 "$D/decode" "$D/model.weights" 16 256 2>>"$LOG" | tail -1)
        dec1=$(KILN_CUDA_STATS=1 KILN_CUDA_PDL=0 timeout 600 "$D/decode" "$D/model.weights" 16 256 2>>"$LOG" | tail -1)
        pre=$(timeout 600 "$D/decode" "$D/model.weights" 1024 1 2>>"$LOG" | tail -1)
        log "$shape: per-kernel GPU time, decode (direct launches, 16 + 64 tokens) then prefill 1024:"
        KILN_CUDA_PROFILE=1 timeout 600 "$D/decode" "$D/model.weights" 16 64 2>&1 >/dev/null | grep profile | head -16 | tee -a "$LOG"
        KILN_CUDA_PROFILE=1 timeout 600 "$D/decode" "$D/model.weights" 1024 1 2>&1 >/dev/null | grep profile | head -12 | tee -a "$LOG"
        hf=$(timeout 900 python3 bench/gpu_bench.py hf_eager "$M" 1024 128 2>>"$LOG" | tail -1)
        wb=$(python3 bench/gpu_bench.py weight_bytes "$M" 2>>"$LOG" | tail -1)
        fl=$(python3 bench/gpu_bench.py flops "$M" 1024 2>>"$LOG" | tail -1)
        log "$shape kiln decode: $dec"; log "$shape kiln decode without PDL: $dec1"; log "$shape kiln prefill: $pre"
        log "$shape hf eager: $hf"; log "$shape $wb $fl"
        res "{\"perf\": \"$shape\", \"kiln_decode\": ${dec:-null}, \"kiln_decode_nopdl\": ${dec1:-null}, \"kiln_prefill\": ${pre:-null}, \"hf\": ${hf:-null}, \"weights\": ${wb:-null}, \"flops\": ${fl:-null}}"
    done
fi

python3 - "$RES" "$OUT" <<'EOF' | tee -a "$LOG"
import json, sys
rows = []
for l in open(sys.argv[1]):
    try:
        rows.append(json.loads(l))
    except ValueError:
        pass
json.dump(rows, open(sys.argv[2] + "/results.json", "w"), indent=1)
out = ["| check | result |", "|---|---|"]
bw = next((r["copy"]["copy_GBps"] for r in rows if "copy" in r), None)
for r in rows:
    if "check" in r:
        extra = ""
        for k in ("logits", "vs_cpu"):
            if isinstance(r.get(k), dict):
                extra += f" same tokens {r[k]['same_tokens']}/{r[k]['steps']}, max rel logit err {r[k]['max_rel_err_while_same']:.2e}"
        out.append(f"| {r['check']} | {'ok' if r.get('ok', True) else 'FAIL'}{extra} |")
out += ["", "| model | kiln decode tok/s | HBM roofline tok/s | % roofline | without PDL (KILN_CUDA_PDL=0) | HF eager tok/s | kiln prefill 1024 TFLOP/s | HF prefill TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
for r in rows:
    if "perf" in r and r.get("kiln_decode") and r.get("weights"):
        tok = 1 / r["kiln_decode"]["median_token_s"]
        roof = bw * 1e9 / r["weights"]["weight_bytes"] if bw else float("nan")
        fl = r["flops"]["flops"] if r.get("flops") else float("nan")
        kp = fl / r["kiln_prefill"]["prefill_s"] / 1e12 if r.get("kiln_prefill") else float("nan")
        hp = fl / r["hf"]["prefill_s"] / 1e12 if r.get("hf") else float("nan")
        hd = r["hf"]["decode_tok_s"] if r.get("hf") else float("nan")
        t0 = 1 / r["kiln_decode_nopdl"]["median_token_s"] if r.get("kiln_decode_nopdl") else float("nan")
        out.append(f"| {r['perf']} | {tok:.0f} | {roof:.0f} | {100 * tok / roof:.0f}% | {t0:.0f} ({100 * t0 / roof:.0f}%) | {hd:.0f} | {kp:.1f} | {hp:.1f} |")
open(sys.argv[2] + "/table.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
