#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests (real
# ONNX Runtime, real sockets), and the Triton-client compatibility suite
# (tritonclient + perf_analyzer against the built server).
# Run `scripts/setup.sh` once first (README: `scripts/setup.sh && scripts/test.sh`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Both backends by default; MODELGATE_FEATURES="" tests an ONNX-only build.
FEATURES=${MODELGATE_FEATURES-torch}
if [[ ",$FEATURES," == *",torch,"* ]] && [ ! -e .native/libtorch/lib/libtorch_cpu.so ]; then
    echo "scripts/test.sh: libtorch is missing: run scripts/setup.sh --torch (or MODELGATE_FEATURES= for ONNX only)" >&2
    exit 1
fi
feature_args=()
[ -n "$FEATURES" ] && feature_args=(--features "$FEATURES")

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy ${feature_args[*]:-}"
cargo clippy --workspace --all-targets "${feature_args[@]}" -- -D warnings

step "cargo test ${feature_args[*]:-}"
cargo test --workspace "${feature_args[@]}"

step "Triton client compatibility (tritonclient, perf_analyzer)"
cargo build "${feature_args[@]}" --bin modelgate
# Run through bash: a lost run bit must not skip the suite and still end in "all tests passed".
bash tests/compat/run.sh target/debug/modelgate

step "all tests passed"
