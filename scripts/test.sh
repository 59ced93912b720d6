#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests (real
# ONNX Runtime, real sockets; the registry's on SQLite and a throwaway PostgreSQL),
# the MLflow-client tests of the registry, the deployment checks (tests/deploy: Kubernetes
# manifests run against the binaries, Prometheus rules on promtool and a real Prometheus), and the
# Triton-client compatibility suite (tritonclient + perf_analyzer against the built server), and
# the operations page in a real browser (Playwright driving Debian's chromium against the built
# server).
# The fuzz corpus (fuzz/corpus/) is replayed on stable by tests/fuzz_corpus.rs, part of `cargo test`
# below; fuzzing itself (nightly, libFuzzer) is scripts/fuzz.sh, not run here.
# Run `scripts/setup.sh --torch` once first (README: `scripts/setup.sh --torch && scripts/test.sh`).
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

# The minimum Rust version is declared twice: Cargo.toml's rust-version (what users are told) and
# rust-toolchain.toml's channel (what CI and every checkout build with). Raising one without the
# other either tests with a compiler users may not have or promises one never tested.
step "rust-version (Cargo.toml) is the pinned toolchain (rust-toolchain.toml)"
declared=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
pinned=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
if [[ -z $declared || -z $pinned || $pinned != "$declared" && $pinned != "$declared".* ]]; then
    echo "scripts/test.sh: Cargo.toml rust-version \"$declared\" is not rust-toolchain.toml's channel \"$pinned\"" >&2
    exit 1
fi
echo "rust-version $declared, toolchain $pinned"

step "cargo clippy ${feature_args[*]:-}"
cargo clippy --workspace --all-targets "${feature_args[@]}" -- -D warnings

# The GPU code paths cannot run here (no GPU), but they must build and stay lint-clean on every
# change: ONNX Runtime's CUDA execution provider is loaded at run time, so this needs no CUDA.
# (`torch,cuda` needs a CUDA libtorch at build time: checked on the GPU machine, README "GPU".)
step "cargo clippy --features cuda (GPU code builds)"
cargo clippy --workspace --features cuda -- -D warnings

# loom models of the lock-free counters (crates/loom-models: the byte budget, the outcome windows'
# packed counters, the statistics), run through every interleaving loom tells apart. In their own
# target folder: `--cfg loom` applies to every crate built, and would otherwise rebuild the
# workspace's artefacts. Builds only loom and its few dependencies (4 min 46 s measured on a
# 2-core machine shared with three other builds, far less alone), then about 5 s of models.
step "loom models of the lock-free counters (crates/loom-models)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p modelgate-loom-models

# The registry's tests run on SQLite and on a throwaway PostgreSQL; requiring it means a
# machine without PostgreSQL fails here instead of skipping those tests.
export MODELGATE_REQUIRE_POSTGRES=1

# The control plane's blobs in object storage (crates/registry/tests/object_storage.rs) run
# against moto's S3 server, which the test starts (a few seconds); required when moto is
# installed (scripts/setup.sh moto), skipped with a note when it is not.
if [[ -x .venv/moto/bin/moto_server ]] || command -v moto_server >/dev/null; then
    export MODELGATE_REQUIRE_MOTO=1
else
    echo "note: object-storage tests skip: moto_server not installed (scripts/setup.sh moto)"
fi

step "cargo test ${feature_args[*]:-} (with a throwaway PostgreSQL; replays the fuzz corpus too)"
scripts/with-postgres.sh cargo test --workspace "${feature_args[@]}"

step "cargo build ${feature_args[*]:-} --bin modelgate (for the client suites)"
cargo build "${feature_args[@]}" --bin modelgate

# Idle connections (2,000 silent sockets, 300 HTTP/2 connections without a stream) beside a
# client sending every 50 ms: its p99 and errors, every listener accepting, RSS; about 30 s.
# The whole harness (stalled uploads, gzip bombs, unread responses, gRPC bombs) is
# load-tests/hostile/run.py without --fast.
step "hostile load, fast cases (load-tests/hostile/run.py --fast)"
"${COMPAT_PYTHON:-.venv/client/bin/python}" load-tests/hostile/run.py --fast --binary target/debug/modelgate

step "MLflow client against the registry (mlflow-skinny, SQLite and PostgreSQL)"
scripts/with-postgres.sh "${COMPAT_PYTHON:-.venv/client/bin/python}" -m pytest -q tests/registry

# kubectl kustomize + kubernetes-validate --strict on every overlay; each overlay's modelgate
# containers started from target/debug (modelgate, and modelgate-control-plane that `cargo test
# --workspace` built) on the throwaway PostgreSQL; promtool check/test of the rules; every metric
# of the rules and the Grafana board scraped from a running gateway; a real Prometheus evaluating
# them. About 40 s.
step "deploy/: Kubernetes manifests, Prometheus rules, Grafana board (tests/deploy)"
scripts/with-postgres.sh "${DEPLOY_PYTHON:-.venv/deploy-tools/bin/python}" -m pytest -q tests/deploy

step "Triton client compatibility (tritonclient, perf_analyzer)"
# Run through bash: a lost run bit must not skip the suite and still end in "all tests passed".
# The suite is told which build it tests, so a check that depends on it fails instead of skipping.
expect_torch=0
[[ ",$FEATURES," == *",torch,"* ]] && expect_torch=1
MODELGATE_EXPECT_TORCH=$expect_torch bash tests/compat/run.sh target/debug/modelgate

# The README promises what an ONNX-only build does with a TorchScript model (UNAVAILABLE, with
# the reason); CI builds with torch, so that build is made and checked here too (its own
# artefacts beside the torch build's; about 3 minutes on 2 cores).
if [ "$expect_torch" = 1 ]; then
    step "ONNX-only build: mlp_torch is UNAVAILABLE with the reason"
    cargo build --bin modelgate
    cp target/debug/modelgate target/debug/modelgate-onnx-only
    cargo build "${feature_args[@]}" --bin modelgate
    MODELGATE_EXPECT_TORCH=0 bash tests/compat/run.sh target/debug/modelgate-onnx-only -k "mlp_torch or index"
fi

step "Operations page in a real browser (Playwright, chromium; screenshots in load-tests/results/ui/)"
MODELGATE_BINARY=target/debug/modelgate PYTHONDONTWRITEBYTECODE=1 \
    timeout 300 "${UI_PYTHON:-.venv/ui/bin/python}" -m pytest -q -p no:cacheprovider tests/ui

step "all tests passed"
