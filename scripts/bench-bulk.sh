#!/usr/bin/env bash
# Bulk writes through pgopt, side by side with direct PostgreSQL, in one run: a multi-MB
# INSERT … VALUES sent by psql (one statement of ROWS rows, in a transaction), and a
# psycopg 3 `executemany` of ROWS single-row INSERTs (one pipeline). Prints each
# target's wall time per round, and pgopt's CPU time (its process, from /proc) and peak
# resident memory (VmHWM) after the rounds. Each round starts a fresh pgopt process.
#
# usage: scripts/bench-bulk.sh [ROWS=200000] [ROUNDS=3]
#        PGOPT_BIN=FILE scripts/bench-bulk.sh ...   (another pgopt build; default: a
#        release build of this tree)
# psycopg comes from scripts/compat/install.sh (run here; it needs PyPI the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-200000}
rounds=${2:-3}
bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
secs=0
. scripts/bench-lib.sh   # start_pg, stop_pg, free_port, cpu_ticks, ticks, client_tools
client_tools

tmp=$(mktemp -d /tmp/pgopt-bulk-XXXXXX)
pg_port=$(free_port); pgopt_port=$(free_port)
pgopt_pid=
cleanup() {
  [ -n "$pgopt_pid" ] && kill "$pgopt_pid" 2>/dev/null
  stop_pg "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT
start_pg "$tmp" "$pg_port" 1
"$bindir/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres \
  -c "CREATE TABLE bulk (id int PRIMARY KEY, name text, score numeric)"
"$python" - "$rows" "$tmp/bulk.sql" <<'PY'
import sys
rows, path = int(sys.argv[1]), sys.argv[2]
values = ",".join(f"({i}, 'name {i}', {i}.5)" for i in range(rows))
open(path, "w").write(f"BEGIN; DELETE FROM bulk; INSERT INTO bulk VALUES {values}; COMMIT;\n")
PY
cat > "$tmp/many.py" <<'PY'
import sys, psycopg
port, rows = int(sys.argv[1]), int(sys.argv[2])
with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM bulk")
        cur.executemany("INSERT INTO bulk VALUES (%s, %s, %s)",
                        [(i, f"n{i}", i) for i in range(rows)])
PY
wall() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}'; }
insert() { wall "$bindir/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -f "$tmp/bulk.sql" postgres; }
many() { wall "$python" "$tmp/many.py" "$1" "$rows"; }

printf '%s, %s rows, %s, %s cores\n' "$(date -u +%F)" "$rows" "$PGOPT_BIN" "$(nproc)"
printf '%-6s %-24s %8s %8s %12s %12s\n' round case "direct s" "pgopt s" "pgopt CPU s" "pgopt MB"
for round in $(seq "$rounds"); do
  for case in insert many; do
    RUST_LOG=error "$PGOPT_BIN" proxy --listen "127.0.0.1:$pgopt_port" \
      --upstream "postgres://postgres@127.0.0.1:$pg_port/postgres" \
      --pool-mode transaction --pool-size 4 >/dev/null 2>&1 &
    pgopt_pid=$!
    for _ in $(seq 50); do "$bindir/pg_isready" -q -h 127.0.0.1 -p "$pgopt_port" && break; sleep 0.1; done
    direct=$($case "$pg_port")
    before=$(cpu_ticks "$pgopt_pid")
    through=$($case "$pgopt_port")
    cpu=$(awk -v t=$(($(cpu_ticks "$pgopt_pid") - before)) -v hz="$ticks" 'BEGIN {printf "%.2f", t / hz}')
    peak=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$pgopt_pid/status")
    kill "$pgopt_pid"; wait "$pgopt_pid" 2>/dev/null || true; pgopt_pid=
    label=$([ "$case" = insert ] && echo "INSERT of $rows rows" || echo "executemany, $rows rows")
    printf '%-6s %-24s %8s %8s %12s %12s\n' "$round" "$label" "$direct" "$through" "$cpu" "$peak"
  done
done
