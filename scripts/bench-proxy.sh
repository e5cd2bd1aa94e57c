#!/usr/bin/env bash
# Side-by-side proxy benchmark, in one run on this machine: pgbench against direct
# PostgreSQL, PgBouncer (transaction mode) and pgopt (transaction mode), same pool size.
# Prints TPS, average latency, the ratios pgopt/direct and pgopt/PgBouncer, and each
# proxy's CPU time per transaction (its process CPU over the run / transactions done).
#
# Then pgopt with query insight on (the default) against pgopt with it off (issue 4),
# alternating runs, on -S simple and extended at 64 clients.
#
# usage: scripts/bench-proxy.sh [SECONDS_PER_RUN=10] [PGBENCH_SCALE=10] [POOL_SIZE=20]
#        BENCH_ONLY=insight scripts/bench-proxy.sh ...   (just the insight comparison)
set -euo pipefail
# 5,000 clients need more file descriptors than the usual 1,024 (pgbench and proxies).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cd "$(dirname "$0")/.."
secs=${1:-10}
scale=${2:-10}
pool=${3:-20}

bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for p in "$bindir/initdb" "$bindir/pgbench" pgbouncer; do
  command -v "$p" >/dev/null || { echo "missing $p (apt-get install postgresql-15 pgbouncer)" >&2; exit 1; }
done
cargo build --release -q -p pgopt-cli
pgopt=target/release/pgopt
. scripts/bench-lib.sh

tmp=$(mktemp -d /tmp/pgopt-bench-XXXXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres "$tmp"; as_pg=(runuser -u postgres --); fi
pg_port=$(free_port); bouncer_port=$(free_port); pgopt_port=$(free_port); plain_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

"${as_pg[@]}" "$bindir/initdb" -D "$tmp/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w start -o \
  "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp -c max_connections=300 -c fsync=off -c synchronous_commit=off -c shared_buffers=256MB" >/dev/null
"$bindir/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1

cat > "$tmp/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pg_port dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $tmp/users.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 10000
logfile = $tmp/pgbouncer.log
pidfile = $tmp/pgbouncer.pid
INI
echo '"postgres" ""' > "$tmp/users.txt"
chmod a+r "$tmp"/pgbouncer.ini "$tmp"/users.txt
# runuser starts a fresh session with the default fd limit: raise it inside.
"${as_pg[@]}" bash -c 'ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec pgbouncer "$1"' \
  _ "$tmp/pgbouncer.ini" >/dev/null 2>&1 & pids+=($!)
PGOPT_PROXY__MAX_CLIENT_CONN=10000 RUST_LOG=error "$pgopt" proxy --listen "127.0.0.1:$pgopt_port" \
  --upstream "postgres://postgres@127.0.0.1:$pg_port/postgres" --pool-mode transaction --pool-size "$pool" >/dev/null 2>&1 & pids+=($!)
PGOPT_INSIGHT__ENABLED=false PGOPT_PROXY__MAX_CLIENT_CONN=10000 RUST_LOG=error "$pgopt" proxy --listen "127.0.0.1:$plain_port" \
  --upstream "postgres://postgres@127.0.0.1:$pg_port/postgres" --pool-mode transaction --pool-size "$pool" >/dev/null 2>&1 & pids+=($!)
sleep 1
bouncer_pid=$(cat "$tmp/pgbouncer.pid")
pgopt_pid=${pids[1]}
plain_pid=${pids[2]}

printf '%s, %s s per run, pgbench scale %s, pool size %s, %s cores\n' "$(date -u +%F)" "$secs" "$scale" "$pool" "$(nproc)"
printf '%-28s %10s %10s %10s %9s %9s %11s %11s\n' case direct pgbouncer pgopt "opt/dir" "opt/pgb" "pgb µs/tx" "opt µs/tx"
case_run() {
  local name=$1; shift
  if [ "$name" = "-S simple, 5000 clients" ]; then
    d_tps=n/a              # PostgreSQL itself takes max_connections = 100 clients
  else
    read -r d_tps _ _ <<<"$(run "$pg_port" "" "$@")"
  fi
  if [ "$name" = "-S prepared, 16 clients" ]; then
    b_tps=n/a; b_cpu="-"   # PgBouncer 1.18 cannot carry named prepared statements in transaction mode
  else
    read -r b_tps _ b_cpu <<<"$(run "$bouncer_port" "$bouncer_pid" "$@")"
  fi
  read -r o_tps _ o_cpu <<<"$(run "$pgopt_port" "$pgopt_pid" "$@")"
  d_tps=$(whole "$d_tps"); b_tps=$(whole "$b_tps"); o_tps=$(whole "$o_tps")
  printf '%-28s %10s %10s %10s %9s %9s %11s %11s\n' "$name" "$d_tps" "$b_tps" "$o_tps" \
    "$(ratio "$o_tps" "$d_tps")" "$(ratio "$o_tps" "$b_tps")" "$b_cpu" "$o_cpu"
}
if [ "${BENCH_ONLY:-}" != insight ]; then
case_run "-S simple, 16 clients"    -S -M simple   -c 16 -j 2
case_run "-S simple, 64 clients"    -S -M simple   -c 64 -j 2
case_run "-S extended, 16 clients"  -S -M extended -c 16 -j 2
case_run "-S extended, 64 clients"  -S -M extended -c 64 -j 2
# One thread per client: pgbench's blocking PQprepare would stall a thread's other clients.
case_run "-S prepared, 16 clients"  -S -M prepared -c 16 -j 16
case_run "TPC-B, 16 clients"        -M simple      -c 16 -j 2
# Thousands of clients on 20 server connections (issue 3); direct PostgreSQL can't.
case_run "-S simple, 5000 clients"  -S -M simple   -c 5000 -j 2
fi

# Query insight's cost: the same pgopt build with [insight] on and off, runs alternated
# (on, off, on, off) so drift in the machine's load falls on both; TPS summed per side.
printf '\n%-28s %12s %12s %9s %13s %13s\n' "insight (pgopt)" "on TPS" "off TPS" "on/off" "on µs/tx" "off µs/tx"
insight_run() {
  local name=$1; shift
  local on=0 off=0 on_cpu=() off_cpu=() tps cpu
  for _ in 1 2; do
    read -r tps _ cpu <<<"$(run "$pgopt_port" "$pgopt_pid" "$@")"; on=$(awk -v a="$on" -v b="$tps" 'BEGIN {print a + b}'); on_cpu+=("$cpu")
    read -r tps _ cpu <<<"$(run "$plain_port" "$plain_pid" "$@")"; off=$(awk -v a="$off" -v b="$tps" 'BEGIN {print a + b}'); off_cpu+=("$cpu")
  done
  mean() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (a + b) / 2}'; }
  printf '%-28s %12.0f %12.0f %9s %13s %13s\n' "$name" "$(awk -v a="$on" 'BEGIN {print a / 2}')" \
    "$(awk -v a="$off" 'BEGIN {print a / 2}')" "$(ratio "$on" "$off")" \
    "$(mean "${on_cpu[@]}")" "$(mean "${off_cpu[@]}")"
}
insight_run "-S simple, 64 clients"    -S -M simple   -c 64 -j 2
insight_run "-S extended, 64 clients"  -S -M extended -c 64 -j 2
