#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each,
# default 60) on its committed corpus (fuzz/corpus/<target>), with a
# memory cap: an input that needs more than FUZZ_RSS_MB counts as a crash.
#
#   scripts/fuzz.sh                 # all targets
#   scripts/fuzz.sh image_decode    # some
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`). Crashes land in fuzz/artifacts/<target>/; reproduce one with
# `cargo +nightly fuzz run <target> <file>`, then add a regression test
# to the normal suite.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-60}"
rss="${FUZZ_RSS_MB:-2048}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(image_decode requests torch_checkpoint onnx_model saved_state)
fi
failed=()
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    # A scratch copy: libFuzzer adds what it finds to the corpus dir.
    work="fuzz/corpus-run/$t"
    mkdir -p "$work"
    cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
    if ! nice cargo +nightly fuzz run "$t" "$work" -- \
        -max_total_time="$secs" -rss_limit_mb="$rss" -max_len=262144 -timeout=10; then
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "no crash in: ${targets[*]}"
