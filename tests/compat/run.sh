#!/usr/bin/env bash
# The Triton-client compatibility suite: drives a real modelgate with Triton's own clients.
#
#   1. starts the server binary on free loopback ports with the repository's models/;
#   2. runs the pytest suite in tests/compat/ (tritonclient HTTP and gRPC, compared with
#      onnxruntime in Python);
#   3. runs perf_analyzer against the `mlp` model over HTTP and gRPC (bounded runs) and
#      fails on any error it reports;
#   4. always stops the server.
#
# Usage: tests/compat/run.sh [SERVER_BINARY] [-- PYTEST_ARGS...]
#   SERVER_BINARY    default target/debug/modelgate (this script builds nothing: `cargo build` first)
#   PYTEST_ARGS      passed to pytest, e.g. `-- -k datatypes -x`
# Environment:
#   COMPAT_PYTHON    interpreter with tritonclient, onnxruntime and pytest (default .venv/client/bin/python,
#                    made by `scripts/setup.sh client`)
#   PERF_ANALYZER    perf_analyzer command (default scripts/perf_analyzer); SKIP_PERF=1 skips step 3
#   PERF_REQUESTS    requests per perf_analyzer measurement (default 2000 at concurrency 1, 4x that at 8)
#   PERF_TIMEOUT     seconds one measurement may take before it counts as stuck (default 120); a
#                    stuck one prints the server's gauges and loadgen.py's hang report
#   KEEP_LOGS=DIR    copy the server log and perf_analyzer output there
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

server_binary=target/debug/modelgate
if [[ $# -gt 0 && $1 != -- ]]; then
    server_binary=$1
    shift
fi
[[ ${1:-} == -- ]] && shift
pytest_args=("$@")

python=${COMPAT_PYTHON:-.venv/client/bin/python}
perf_analyzer=${PERF_ANALYZER:-scripts/perf_analyzer}
perf_requests=${PERF_REQUESTS:-2000}
perf_timeout=${PERF_TIMEOUT:-120}

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'compat: error: %s\n' "$*" >&2; exit 1; }
# Prints a command, then runs it.
run() { printf '+ %s\n' "$*"; "$@"; }

[[ -x $server_binary ]] || die "no server binary at $server_binary (run \`cargo build\` first, or pass its path)"
[[ -x $python ]] || die "no Python at $python (run \`scripts/setup.sh client\`, or set COMPAT_PYTHON)"
"$python" -c 'import pytest, tritonclient.http, tritonclient.grpc, onnxruntime' 2>/dev/null \
    || die "$python lacks pytest, tritonclient or onnxruntime (run \`scripts/setup.sh client\`)"

work=$(mktemp -d "${TMPDIR:-/tmp}/modelgate-compat.XXXXXX")
server_pid=
cleanup() {
    local status=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # The server drains in-flight requests; give it a few seconds, then stop it hard.
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -n ${KEEP_LOGS:-} ]]; then
        mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    if (( status != 0 )) && [[ -f $work/server.log ]]; then
        echo "--- last lines of the server log ($work/server.log kept) ---" >&2
        tail -n 30 "$work/server.log" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three ports the OS says are free now, bound by nothing when we hand them over.
read -r http_port grpc_port metrics_port < <("$python" - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(3)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
for s in sockets:
    s.close()
EOF
)

# Above tonic's 4 MiB default (the suite sends 6 MB), below the 64 MiB default so that the
# over-the-limit case stays cheap.
max_input_size=$(( 16 << 20 ))

say "starting $server_binary (HTTP $http_port, gRPC $grpc_port, metrics $metrics_port)"
# mlp_torch loads only in builds with the `torch` feature: readiness must not wait for it.
server_cmd=("$server_binary" serve --model-repository models --http-address 127.0.0.1
    --http-port "$http_port" --grpc-port "$grpc_port" --metrics-port "$metrics_port"
    --strict-readiness false --model-control-mode explicit --max-input-size "$max_input_size")
printf '+ %s\n' "${server_cmd[*]}"
RUST_LOG=${RUST_LOG:-warn} "${server_cmd[@]}" > "$work/server.log" 2>&1 &
server_pid=$!

ready_url="http://127.0.0.1:$http_port/v2/health/ready"
"$python" - "$ready_url" "$server_pid" <<'EOF' || die "the server did not become ready within 60 s"
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
echo "ready: $ready_url"

say "pytest: tritonclient HTTP and gRPC against onnxruntime"
MODELGATE_HTTP_URL="127.0.0.1:$http_port" MODELGATE_GRPC_URL="127.0.0.1:$grpc_port" \
MODELGATE_MAX_INPUT_SIZE=$max_input_size \
PYTHONDONTWRITEBYTECODE=1 \
    run timeout 300 "$python" -m pytest tests/compat -p no:cacheprovider -q "${pytest_args[@]}"

if [[ ${SKIP_PERF:-0} == 1 ]]; then
    say "perf_analyzer: skipped (SKIP_PERF=1)"
    exit 0
fi

# One bounded measurement per protocol and concurrency: --request-count measures a fixed
# number of requests (no stability search, which on a busy 2-core machine may never settle),
# and a watchdog bounds the whole run. perf_analyzer exits non-zero on errors it sees, and
# also prints some (e.g. a worker thread's failed request) with exit 0: both fail here.
#
# perf_analyzer's request-count mode can wait forever on its own count: its workers send
# exactly N requests, but it clears its request records after they have started, so a request
# that completes before that is never counted and the count stays short of N (seen twice in
# scripts/test.sh: the server had answered every request of the run, nothing was queued or
# pending, the client's workers had ended and its main thread slept in `Measure`). A stuck run
# is therefore retried once, and only when the server's own count shows every request of it
# answered; a request the server lost still fails the suite.
perf_run() {
    local protocol=$1 port=$2 concurrency=$3
    local requests=$perf_requests
    (( concurrency > 1 )) && requests=$(( perf_requests * 4 ))
    say "perf_analyzer: mlp over $protocol, concurrency $concurrency, $requests requests"
    local answered_before answered
    answered_before=$(mlp_count success)
    perf_attempt "$protocol" "$port" "$concurrency" "$requests"
    if (( attempt_status == 124 )); then
        answered=$(( $(mlp_count success) - answered_before ))
        if (( answered == requests )); then
            echo "the server answered all $answered requests of the stuck run: perf_analyzer lost its own count; once more"
            perf_attempt "$protocol" "$port" "$concurrency" "$requests"
        else
            echo "the server answered $answered of the stuck run's $requests requests"
        fi
    fi
    cat "$attempt_log"
    if (( attempt_status != 0 )); then
        die "perf_analyzer ($protocol, concurrency $concurrency) exited with $attempt_status"
    fi
    if grep -qiE 'error|failed|unable' "$attempt_log"; then
        die "perf_analyzer ($protocol, concurrency $concurrency) reported errors (see above)"
    fi
    grep -q 'Throughput:' "$attempt_log" || die "perf_analyzer ($protocol, concurrency $concurrency) measured nothing"
}

# One perf_analyzer measurement under a watchdog of $perf_timeout s. Sets attempt_log and
# attempt_status (124: still running at the deadline; its diagnostics are printed first).
attempt=0
perf_attempt() {
    local protocol=$1 port=$2 concurrency=$3 requests=$4
    attempt=$(( attempt + 1 ))
    attempt_log="$work/perf-$protocol-c$concurrency-$attempt.log"
    attempt_status=0
    local argv=("$perf_analyzer" -m mlp -i "$protocol" -u "127.0.0.1:$port"
        --concurrency-range "$concurrency" --request-count "$requests")
    printf '+ %s (at most %s s)\n' "${argv[*]}" "$perf_timeout"
    "${argv[@]}" > "$attempt_log" 2>&1 &
    local client=$! deadline=$(( SECONDS + perf_timeout ))
    while kill -0 "$client" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    if kill -0 "$client" 2>/dev/null; then
        # A run that should take seconds is stuck: record what both sides wait on before it goes.
        stuck_diagnostics "$client" "${argv[@]}" > "$work/stuck-$protocol-c$concurrency-$attempt.log" 2>&1 || true
        cat "$work/stuck-$protocol-c$concurrency-$attempt.log"
        kill -9 "$client" 2>/dev/null || true
        wait "$client" 2>/dev/null || true
        attempt_status=124
    else
        wait "$client" || attempt_status=$?
    fi
}

# What a stuck perf_analyzer run leaves to go on: the server's queue, in-flight and connection
# gauges, then load-tests/loadgen.py's hang report (the sockets of the server's port, the
# client's threads, the server's threads with their wait channels, gdb stacks of both).
stuck_diagnostics() {
    local client=$1
    shift
    echo "--- perf_analyzer still running after $perf_timeout s: diagnostics ---"
    echo "server gauges:"
    curl -s --max-time 5 "http://127.0.0.1:$metrics_port/metrics" \
        | grep -E '^(modelgate_queue_depth|modelgate_inflight|modelgate_open_connections|nv_inference_pending)' \
        || echo "(none)"
    timeout 300 "$python" load-tests/loadgen.py hang-report "$client" "$@"
}

# The server's own count of mlp requests that succeeded or failed (`mlp_count success|fail`;
# the pytest suite's error cases include some failed ones).
mlp_count() {
    "$python" - "127.0.0.1:$http_port" "$1" <<'EOF'
import sys, tritonclient.http as httpclient
stats = httpclient.InferenceServerClient(sys.argv[1]).get_inference_statistics("mlp")["model_stats"][0]
print(stats["inference_stats"][sys.argv[2]]["count"])
EOF
}
failed_before=$(mlp_count fail)

for protocol in http grpc; do
    port=$http_port
    [[ $protocol == grpc ]] && port=$grpc_port
    for concurrency in 1 8; do
        perf_run "$protocol" "$port" "$concurrency"
    done
done

failed_after=$(mlp_count fail)
echo "server statistics: $(( failed_after - failed_before )) mlp requests failed during perf_analyzer"
(( failed_after == failed_before )) || die "the server counted failed mlp requests during perf_analyzer"

say "compatibility suite passed"
