#!/usr/bin/env bash
# Runs each libFuzzer target (fuzz/fuzz_targets/) for a bounded time, one after another, on one
# core: scripts/fuzz.sh [SECONDS_PER_TARGET=120] [TARGET...]. Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). New inputs libFuzzer keeps go to fuzz/corpus/<target>/
# (commit the small ones: tests/fuzz_corpus.rs replays them on stable); a crash is written to
# fuzz/artifacts/<target>/ and ends the run with status 1.
# Built without a sanitizer (-s none): the decoders are safe Rust, and an uninstrumented build runs
# several times faster on this kind of machine; overflow checks stay on (debug assertions).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-120}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -s none -O
status=0
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    if ! cargo +nightly fuzz run -s none -O "$target" -- \
        -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1; then
        echo "!! $target found a crash: see fuzz/artifacts/$target/"
        status=1
    fi
done
exit $status
