#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL 15 cluster (Debian's postgresql-15) and
# MODELGATE_TEST_POSTGRES_URL pointing at it; the cluster is stopped and deleted on exit.
#
# Usage: scripts/with-postgres.sh CMD [ARG...]
#   e.g. scripts/with-postgres.sh cargo test -p modelgate-registry
#
# The cluster lives in a temp directory owned by the `postgres` user (initdb refuses root),
# listens on 127.0.0.1 at a free port, trusts local connections, and is only for tests.
# PG_BIN overrides the server's directory (default /usr/lib/postgresql/15/bin).
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
[[ $# -gt 0 ]] || { echo "usage: $0 CMD [ARG...]" >&2; exit 2; }
[[ -x $PG_BIN/initdb ]] || { echo "with-postgres.sh: $PG_BIN/initdb not found (apt-get install postgresql-15)" >&2; exit 1; }

as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

dir=$(mktemp -d /tmp/modelgate-pg.XXXXXX)
chmod 755 "$dir"
[[ $(id -u) -eq 0 ]] && chown postgres "$dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT INT TERM

as_postgres "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -w -l "$dir/log" \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$dir/log" >&2; exit 1; }

export MODELGATE_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
# Lets a test stop and restart this cluster (the "database goes away" test).
export MODELGATE_TEST_POSTGRES_CTL="$dir/ctl.sh"
cat >"$dir/ctl.sh" <<CTL
#!/usr/bin/env bash
# ctl.sh stop|start: stop or restart the throwaway cluster.
set -euo pipefail
if [[ \$(id -u) -eq 0 ]]; then run=(runuser -u postgres --); else run=(); fi
case "\$1" in
    stop) "\${run[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop ;;
    start) "\${run[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -w -l "$dir/log" -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start ;;
    *) echo "usage: ctl.sh stop|start" >&2; exit 2 ;;
esac
CTL
chmod 755 "$dir/ctl.sh"
echo "with-postgres.sh: PostgreSQL on 127.0.0.1:$port (data in $dir)" >&2
"$@"
