#!/usr/bin/env bash
# What reading a database's functions costs in transaction mode (function_settings.rs):
# a database with FUNCTIONS PL/pgSQL and SQL functions — most of them UPDATE … SET, none
# of those setting anything, calling each other in a ring; a chain of CHAIN callers
# ending in one that sets search_path — and the wall time of each client's first
# `SELECT 1` through a fresh pgopt (its first checkout waits for the read), then of the
# next ones, side by side with direct PostgreSQL. Also checks that the chain's top
# caller's search_path follows its caller and not the next client.
#
# usage: scripts/bench-function-catalog.sh [FUNCTIONS=6000] [CHAIN=300] [ROUNDS=3]
#        PGOPT_BIN=FILE scripts/bench-function-catalog.sh ...  (another pgopt build)
set -euo pipefail
cd "$(dirname "$0")/.."
functions=${1:-6000}
chain=${2:-300}
rounds=${3:-3}
bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
secs=0
. scripts/bench-lib.sh   # start_pg, stop_pg, free_port
if [ -z "${PGOPT_BIN:-}" ]; then
  cargo build --release -q -p pgopt-cli
  PGOPT_BIN=target/release/pgopt
fi

tmp=$(mktemp -d /tmp/pgopt-fncat-XXXXXX)
pg_port=$(free_port); pgopt_port=$(free_port)
pgopt_pid=
cleanup() {
  [ -n "$pgopt_pid" ] && kill "$pgopt_pid" 2>/dev/null
  stop_pg "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT
start_pg "$tmp" "$pg_port" 1
psql_at() { "$bindir/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres "${@:2}"; }

python3 - "$functions" "$chain" > "$tmp/functions.sql" <<'EOF'
import sys
n, chain = int(sys.argv[1]), int(sys.argv[2])
ring = n * 2 // 3
print("CREATE TABLE t (id int, v text);")
for i in range(ring):
    print(f"CREATE FUNCTION upd_{i}(x int) RETURNS void LANGUAGE plpgsql AS $$BEGIN "
          f"UPDATE t SET v = 'a{i}' WHERE id = x; IF x > 0 THEN PERFORM upd_{(i + 1) % ring}(x - 1); "
          f"END IF; END$$;")
for i in range(n - ring):
    print(f"CREATE FUNCTION plain_{i}(x int) RETURNS int LANGUAGE sql AS $$ SELECT x + {i} $$;")
print("CREATE FUNCTION setter(t text) RETURNS void LANGUAGE plpgsql AS "
      "$$BEGIN EXECUTE format('SET search_path = %I, public', t); END$$;")
for i in range(chain):
    callee = "setter('tenant')" if i == 0 else f"chain_{i - 1}()"
    print(f"CREATE FUNCTION chain_{i}() RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM {callee}; END$$;")
EOF
psql_at "$pg_port" -f "$tmp/functions.sql"

cat > "$tmp/pgopt.toml" <<EOF
[proxy]
listen = "127.0.0.1:$pgopt_port"
pool_mode = "transaction"
default_pool_size = 2
upstream = "postgres://postgres@127.0.0.1:$pg_port/postgres"
[insight]
enabled = false
EOF

# seconds PORT: wall time of one new client's `SELECT 1`.
seconds() {
  local start end
  start=$(date +%s.%N)
  psql_at "$1" -Atc "SELECT 1" >/dev/null
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

printf '%s functions (a chain of %s callers): first and next clients'"'"' SELECT 1, in s\n' \
  "$(psql_at "$pg_port" -Atc "SELECT count(*) FROM pg_proc WHERE oid >= 16384")" "$chain"
for round in $(seq "$rounds"); do
  "$PGOPT_BIN" --config "$tmp/pgopt.toml" proxy > "$tmp/pgopt.log" 2>&1 &
  pgopt_pid=$!
  # (Waits for the port only: the first SELECT is the first checkout.)
  python3 - "$pgopt_port" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()
        break
    except OSError:
        time.sleep(0.05)
PY
  first=$(seconds "$pgopt_port"); next=$(seconds "$pgopt_port"); direct=$(seconds "$pg_port")
  echo "round $round: pgopt first $first, next $next; direct $direct"
  kill "$pgopt_pid"; wait "$pgopt_pid" 2>/dev/null || true; pgopt_pid=
done

# The chain's top caller keeps its search_path; the next client does not get it.
"$PGOPT_BIN" --config "$tmp/pgopt.toml" proxy > "$tmp/pgopt.log" 2>&1 &
pgopt_pid=$!
sleep 1
caller=$(printf "SELECT chain_%s();\nSHOW search_path;\n" "$((chain - 1))" | psql_at "$pgopt_port" -At | tail -1)
next=$(psql_at "$pgopt_port" -Atc "SHOW search_path")
echo "the caller's search_path after chain_$((chain - 1))(): $caller; the next client's: $next"
