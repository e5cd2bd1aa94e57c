#!/usr/bin/env bash
# One large message at a time through pgopt and PgBouncer, side by side with direct
# PostgreSQL, in one run: a client (psycopg 3) reads an MB-sized bytea value back in
# one row, copies it out (COPY TO: one CopyData) and in (COPY FROM: psycopg sends
# 128 kB pieces), then sends it in a Bind and again inlined in a simple query's text
# (client-side binding: hex, twice the size).
# Each proxy is a fresh process per round; with the client still connected, its peak
# memory (VmHWM) after the rows and after the Bind, and its resident memory (VmRSS)
# and peak after everything, are read from /proc. Prints wall seconds per target and
# each proxy's memory in MB.
#
# usage: scripts/bench-large-messages.sh [MB=64] [ROUNDS=3]
#        PGOPT_BIN=FILE scripts/bench-large-messages.sh ...   (another pgopt build;
#        default: a release build of this tree)
# psycopg comes from scripts/compat/install.sh (run here; it needs PyPI the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-64}
rounds=${2:-3}
bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
command -v pgbouncer >/dev/null || { echo "missing pgbouncer (apt-get install pgbouncer)" >&2; exit 1; }
secs=0
. scripts/bench-lib.sh   # start_pg, stop_pg, free_port, pgbouncer_config, client_tools
client_tools

tmp=$(mktemp -d /tmp/pgopt-large-XXXXXX)
pg_port=$(free_port); proxy_port=$(free_port)
proxy_pid=
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  pkill -f "pgbouncer $tmp/pgbouncer.ini" 2>/dev/null || true
  stop_pg "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT
start_pg "$tmp" "$pg_port" 1
"$bindir/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres \
  -c "CREATE TABLE blobs (id serial PRIMARY KEY, b bytea)"
pgbouncer_config "$tmp" "$pg_port" "$proxy_port" 4

# The client: rows first (one read back, a COPY TO and a COPY FROM of it), then the
# two INSERTs; with the client still connected, the proxy's memory after the rows and
# after everything. The value is put in place directly, not through the proxy.
cat > "$tmp/client.py" <<'PY'
import os, sys, time, psycopg
port, direct, mb, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def memory():
    if pid == "-":
        return "-", "-"
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
    return tuple(str(int(status[k].split()[0]) // 1024) for k in ("VmRSS", "VmHWM"))
def dsn(p):
    return f"host=127.0.0.1 port={p} user=postgres dbname=postgres"
value = os.urandom(mb << 20)
with psycopg.connect(dsn(direct), autocommit=True) as conn:
    conn.execute("TRUNCATE blobs")
    conn.execute("INSERT INTO blobs (b) VALUES (%b)", (value,))
t0 = time.time()
with psycopg.connect(dsn(port), autocommit=True) as conn:
    row = conn.execute("SELECT b FROM blobs LIMIT 1", binary=True).fetchone()
    assert row[0] == value
    with conn.cursor().copy("COPY (SELECT b FROM blobs LIMIT 1) TO STDOUT") as copy:
        copied = b"".join(bytes(chunk) for chunk in copy)
    assert len(copied) > 2 * len(value)
    del copied
    with conn.cursor().copy("COPY blobs (b) FROM STDIN") as copy:
        copy.write_row((value,))
    time.sleep(0.2)
    _, rows_peak = memory()
    conn.execute("INSERT INTO blobs (b) VALUES (%b)", (value,))
    time.sleep(0.2)
    _, bind_peak = memory()
    with psycopg.ClientCursor(conn) as cur:
        cur.execute("INSERT INTO blobs (b) VALUES (%s)", (value,))
    n = conn.execute("SELECT count(*) FROM blobs WHERE b = %b", (value,)).fetchone()[0]
    assert n == 4, n
    wall = time.time() - t0
    time.sleep(0.2)
    rss, peak = memory()
print(f"{wall:.2f} {rss} {rows_peak} {bind_peak} {peak}")
PY

printf '%s, %s MB values, %s, %s cores\n' "$(date -u +%F)" "$mb" "$PGOPT_BIN" "$(nproc)"
printf '%-6s %9s | %12s %5s %10s %10s %6s | %8s %5s %10s %10s %6s\n' round "direct s" \
  "PgBouncer s" RSS "rows peak" "Bind peak" peak "pgopt s" RSS "rows peak" "Bind peak" peak
for round in $(seq "$rounds"); do
  read -r direct _ _ _ _ < <("$python" "$tmp/client.py" "$pg_port" "$pg_port" "$mb" -)
  "${as_pg[@]}" pgbouncer "$tmp/pgbouncer.ini" >/dev/null 2>&1 &
  for _ in $(seq 50); do [ -s "$tmp/pgbouncer.pid" ] && "$bindir/pg_isready" -q -h 127.0.0.1 -p "$proxy_port" && break; sleep 0.1; done
  proxy_pid=$(cat "$tmp/pgbouncer.pid")
  read -r bouncer bouncer_rss bouncer_rows bouncer_bind bouncer_peak < <("$python" "$tmp/client.py" "$proxy_port" "$pg_port" "$mb" "$proxy_pid")
  kill "$proxy_pid"; while kill -0 "$proxy_pid" 2>/dev/null; do sleep 0.1; done; proxy_pid=
  rm -f "$tmp/pgbouncer.pid"
  RUST_LOG=error "$PGOPT_BIN" proxy --listen "127.0.0.1:$proxy_port" \
    --upstream "postgres://postgres@127.0.0.1:$pg_port/postgres" \
    --pool-mode transaction --pool-size 4 >/dev/null 2>&1 &
  proxy_pid=$!
  for _ in $(seq 50); do "$bindir/pg_isready" -q -h 127.0.0.1 -p "$proxy_port" && break; sleep 0.1; done
  read -r pgopt pgopt_rss pgopt_rows pgopt_bind pgopt_peak < <("$python" "$tmp/client.py" "$proxy_port" "$pg_port" "$mb" "$proxy_pid")
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=
  printf '%-6s %9s | %12s %5s %10s %10s %6s | %8s %5s %10s %10s %6s\n' "$round" "$direct" \
    "$bouncer" "$bouncer_rss" "$bouncer_rows" "$bouncer_bind" "$bouncer_peak" \
    "$pgopt" "$pgopt_rss" "$pgopt_rows" "$pgopt_bind" "$pgopt_peak"
done
