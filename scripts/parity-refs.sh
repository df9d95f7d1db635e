#!/usr/bin/env bash
# Generates the timm reference files the architecture parity tests compare
# against (src/model/parity_tests.rs) and prints their folder. PyTorch and
# timm come from PyPI into a venv outside the clone (about 2.6 GB, cached
# under ~/.cache/lookalike); the references are cached by the hash of the
# script and its pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${LOOKALIKE_CACHE:-$HOME/.cache/lookalike}
VENV=${LOOKALIKE_TORCH_VENV:-$CACHE/torchvenv}
key=$(cat scripts/timm_reference.py scripts/requirements-parity.txt | sha256sum | cut -c1-16)
OUT="$CACHE/parity-$key"
if [ ! -f "$OUT/.done" ]; then
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, timm, safetensors" 2>/dev/null; then
        echo "installing torch and timm into $VENV (once)" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-parity.txt >&2
    fi
    echo "writing timm reference files to $OUT" >&2
    rm -rf "$OUT.part" && mkdir -p "$OUT.part"
    LOOKALIKE_PARITY_DIR="$OUT.part" "$VENV/bin/python" scripts/timm_reference.py >&2
    touch "$OUT.part/.done"
    rm -rf "$OUT" && mv "$OUT.part" "$OUT"
fi
echo "$OUT"
