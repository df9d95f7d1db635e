#!/usr/bin/env bash
# Prints the environment the `train` feature (tch / libtorch) builds with:
#   eval "$(scripts/train-setup.sh)" && cargo build --release --features train
# libtorch is the PyTorch 2.13.0 install scripts/parity-refs.sh keeps in a
# venv outside the clone (shared with the parity tests; installed here if
# missing, from PyPI). build.rs sets the trainer's rpath to its lib folder.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${LOOKALIKE_CACHE:-$HOME/.cache/lookalike}
VENV=${LOOKALIKE_TORCH_VENV:-$CACHE/torchvenv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "installing torch into $VENV (once)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-parity.txt >&2
fi
torch=$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
echo "export LIBTORCH=$torch"
