#!/usr/bin/env bash
# Runs every benchmark and load test once, one after the other, and copies each results table into
# load-tests/README.md. About 8 minutes on 2 cores (--quick: about 5, for checking the scripts).
#
# Usage: load-tests/run_all.sh [--quick]
# Needs: scripts/setup.sh apt ort models client peers
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=()
readme=(--readme)
if [[ "${1:-}" == --quick ]]; then
    quick=(--quick)
    readme=()   # a smoke run does not replace the README's tables
fi
python=.venv/client/bin/python
[[ -x $python ]] || { echo "run_all.sh: $python not found: run scripts/setup.sh client" >&2; exit 1; }

start=$(date +%s)
cargo build --release --quiet --bin modelgate
"$python" load-tests/bench_table.py "${quick[@]}" "${readme[@]}"
"$python" load-tests/batching_sweep.py --no-build "${quick[@]}" "${readme[@]}"
"$python" load-tests/batching_sweep.py --model mlp_wide --concurrency 1,4,16,64 --no-build "${quick[@]}" "${readme[@]}"
"$python" load-tests/compute_heavy.py --no-build "${quick[@]}" "${readme[@]}"
"$python" load-tests/peers.py --no-build "${quick[@]}" "${readme[@]}"
echo "run_all.sh: done in $(( $(date +%s) - start )) s; tables in load-tests/results/"
