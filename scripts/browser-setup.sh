#!/usr/bin/env bash
# Installs what the browser test needs: Debian's chromium (apt) and
# playwright-core from npm at the version pinned by
# tests/browser/package-lock.json. Idempotent; times each step on stderr.
# (`npx playwright install` downloads browsers from a CDN: not used.)
set -euo pipefail
cd "$(dirname "$0")/.."
step() { local t=$SECONDS; "$@"; echo "browser-setup: $* took $((SECONDS - t)) s" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v chromium >/dev/null; then
  step as_root apt-get update -q
  step as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  step npm ci --prefix tests/browser --no-audit --no-fund
fi
