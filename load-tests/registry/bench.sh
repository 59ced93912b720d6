#!/usr/bin/env bash
# Registry measurements of issue #9 (run, not a test; prints a table):
#   1. upload + verify throughput of a 200 MiB artifact (PUT /cp/v1/blobs, hashed while received)
#      against `sha256sum` of the same file, in the same run;
#   2. API latency at 16 concurrent clients (wrk -c16) for an alias read and a version list,
#      on SQLite and on PostgreSQL side by side.
#
# Usage: scripts/with-postgres.sh load-tests/registry/bench.sh [BINARY]
#   BINARY  default target/release/modelgate-control-plane (cargo build --release -p modelgate-registry)
# Environment: SIZE_MIB (200), DURATION (10s per wrk run), DATA (temp dir for the artifact).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

binary=${1:-target/release/modelgate-control-plane}
size_mib=${SIZE_MIB:-200}
duration=${DURATION:-10s}
work=$(mktemp -d "${DATA:-/tmp}/mg-registry-bench.XXXXXX")
export MODELGATE_ADMIN_TOKEN=bench-token-0123456789abcdef
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

start() { # start NAME DB_URL -> sets $addr
    local name=$1 db=$2 log=$work/$1.log
    "$binary" --port 0 --data-dir "$work/$name" ${db:+--db "$db"} --max-blob-size $((1 << 34)) >"$log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    addr=$(sed -n 's/.*listening on //p' "$log")
    [[ -n $addr ]] || { cat "$log"; exit 1; }
}
api() { curl -sf -H "Authorization: Bearer $MODELGATE_ADMIN_TOKEN" "$@"; }

head -c $((size_mib << 20)) /dev/urandom >"$work/artifact.bin"
digest=$(sha256sum "$work/artifact.bin" | cut -d' ' -f1)

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'; }

start sqlite ""
cat "$work/artifact.bin" >/dev/null  # page cache warm for both readers
t_sum=$(seconds sha256sum "$work/artifact.bin")
t_up=$(seconds api -X PUT -H "Content-Type: application/octet-stream" --data-binary "@$work/artifact.bin" \
    "http://$addr/cp/v1/blobs/sha256:$digest")
echo
echo "## upload + verify, ${size_mib} MiB"
awk -v s="$t_sum" -v u="$t_up" -v m="$size_mib" 'BEGIN {
    printf "| sha256sum | %.2f s | %.0f MiB/s |\n| PUT /cp/v1/blobs (receive, hash, fsync, rename) | %.2f s | %.0f MiB/s |\n| ratio | | %.0f %% |\n", s, m / s, u, m / u, 100 * s / u }'

lua=$work/auth.lua
cat >"$lua" <<LUA
wrk.headers["Authorization"] = "Bearer $MODELGATE_ADMIN_TOKEN"
LUA

echo
echo "## latency at 16 concurrent clients (wrk -t2 -c16 -d$duration)"
echo "| database | endpoint | req/s | p50 | p99 |"
bench_db() {
    local name=$1
    # A model with 20 versions and a champion alias.
    api -X POST -d '{"name":"fraud"}' "http://$addr/cp/v1/models" >/dev/null
    for i in $(seq 20); do
        local blob="v$i" d
        d=$(printf '%s' "$blob" | sha256sum | cut -d' ' -f1)
        printf '%s' "$blob" | api -X PUT --data-binary @- "http://$addr/cp/v1/blobs/sha256:$d" >/dev/null
        api -X POST -d "{\"format\":\"onnx\",\"files\":[{\"path\":\"model.onnx\",\"size\":${#blob},\"sha256\":\"sha256:$d\"}]}" \
            "http://$addr/cp/v1/models/fraud/versions" >/dev/null
    done
    api -X PUT -d '{"version":1}' "http://$addr/cp/v1/models/fraud/aliases/champion" >/dev/null
    for path in /cp/v1/models/fraud/aliases/champion /cp/v1/models/fraud/versions; do
        wrk -t2 -c16 -d"$duration" --latency -s "$lua" "http://$addr$path" >"$work/wrk.txt"
        awk -v db="$name" -v p="$path" '
            /Requests\/sec/ { rps = $2 }
            $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
            /Non-2xx/ { bad = $NF }
            END { printf "| %s | GET %s | %s | %s | %s |%s\n", db, p, rps, p50, p99, (bad ? " non-2xx: " bad : "") }' "$work/wrk.txt"
    done
}
bench_db sqlite
if [[ -n ${MODELGATE_TEST_POSTGRES_URL:-} ]]; then
    db=bench_$$
    psql "$MODELGATE_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db"
    start postgres "${MODELGATE_TEST_POSTGRES_URL%/*}/$db"
    bench_db postgres
else
    echo "(PostgreSQL skipped: run under scripts/with-postgres.sh)"
fi
