#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each,
# default 60) on its committed corpus (fuzz/corpus/<target>), with a
# memory cap: an input that needs more than FUZZ_RSS_MB counts as a crash.
# Not part of CI (the instrumented build alone takes long); run by hand.
#
#   scripts/fuzz.sh                 # all targets
#   scripts/fuzz.sh image_decode    # some
#
# A fresh machine needs only the stable toolchain: cargo-fuzz is installed
# from crates.io when missing, and the -Z flags it passes are accepted
# through RUSTC_BOOTSTRAP=1 (FUZZ_TOOLCHAIN=nightly uses a nightly instead).
# FUZZ_SANITIZER=none skips AddressSanitizer (faster; panics, timeouts and
# the memory cap still count). Dependencies are pinned to the main
# Cargo.lock. Each run's log and new inputs are in fuzz/corpus-run/; a
# crash lands in fuzz/artifacts/<target>/: reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`, fix it, and add a
# regression test to the normal suite.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-60}"
rss="${FUZZ_RSS_MB:-2048}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(image_decode requests torch_checkpoint onnx_model saved_state)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    nice -n 19 cargo install cargo-fuzz --version 0.13.2 --locked
fi
cargo=(cargo)
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    cargo=(cargo "+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi
# The same dependency versions as the server (fuzz/Cargo.lock is ignored).
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
flags=(--sanitizer "$sanitizer")
# One instrumented build of every target (release, debug assertions on).
nice -n 19 "${cargo[@]}" fuzz build "${flags[@]}"
failed=()
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    # A scratch copy: libFuzzer adds what it finds to the corpus dir.
    work="fuzz/corpus-run/$t"
    mkdir -p "$work"
    cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
    log="fuzz/corpus-run/$t.log"
    if ! nice -n 19 "${cargo[@]}" fuzz run "${flags[@]}" "$t" "$work" -- \
        -max_total_time="$secs" -rss_limit_mb="$rss" -max_len=262144 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        failed+=("$t")
        tail -n 40 "$log" >&2
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "   $t: $runs runs in ${secs}s; corpus $(find "$work" -type f | wc -l) files; log $log"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "no crash in: ${targets[*]}"
