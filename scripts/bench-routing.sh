#!/usr/bin/env bash
# Replica routing benchmark (issue 7), side by side in one run on this machine:
# pgbench -S (read-only) through pgopt with 0, 1 and 2 streaming replicas, and through
# pgopt with routing on but no usable replica (its one "replica" is the primary itself,
# which the health check keeps out of the rotation: every statement is classified and
# routed, and all of them land on the primary) — the routing overhead against a single
# upstream. Direct PostgreSQL is the baseline. Prints TPS, ratios, pgopt's CPU per
# transaction, and where the 2-replica proxy sent its reads (SHOW REPLICAS).
#
# The primary, the replicas, pgbench and pgopt share this machine's cores: replicas add
# capacity only where the machine has cores to spare.
#
# usage: scripts/bench-routing.sh [SECONDS_PER_RUN=15] [PGBENCH_SCALE=10] [POOL_SIZE=20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
scale=${2:-10}
pool=${3:-20}

bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for p in "$bindir/initdb" "$bindir/pgbench" "$bindir/pg_basebackup" psql; do
  command -v "$p" >/dev/null || { echo "missing $p (apt-get install postgresql-15)" >&2; exit 1; }
done
cargo build --release -q -p pgopt-cli
pgopt=target/release/pgopt
. scripts/bench-lib.sh

tmp=$(mktemp -d /tmp/pgopt-bench-routing-XXXXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres "$tmp"; as_pg=(runuser -u postgres --); fi
pg_port=$(free_port); r1_port=$(free_port); r2_port=$(free_port)
p0_port=$(free_port); pself_port=$(free_port); p1_port=$(free_port); p2_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for d in data r1 r2; do
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/$d" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

settings="-c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp -c max_connections=300 -c fsync=off -c shared_buffers=256MB"
"${as_pg[@]}" "$bindir/initdb" -D "$tmp/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w start -o "-p $pg_port $settings" >/dev/null
"$bindir/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1
for r in 1 2; do
  port_var="r${r}_port"
  "${as_pg[@]}" "$bindir/pg_basebackup" -h 127.0.0.1 -p "$pg_port" -U postgres -D "$tmp/r$r" \
    -R -X stream -c fast --no-sync
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/r$r" -l "$tmp/r$r.log" -w start -o "-p ${!port_var} $settings" >/dev/null
done

upstream="postgres://postgres@127.0.0.1:$pg_port/postgres"
proxy() {
  local port=$1; shift
  PGOPT_ROUTING__CHECK_INTERVAL=500ms RUST_LOG=error "$pgopt" proxy --listen "127.0.0.1:$port" \
    --upstream "$upstream" --pool-mode transaction --pool-size "$pool" "$@" >/dev/null 2>&1 &
  pids+=($!)
}
proxy "$p0_port"
proxy "$pself_port" --replica "127.0.0.1:$pg_port"
proxy "$p1_port" --replica "127.0.0.1:$r1_port"
proxy "$p2_port" --replica "127.0.0.1:$r1_port" --replica "127.0.0.1:$r2_port"
p0_pid=${pids[0]}; pself_pid=${pids[1]}; p1_pid=${pids[2]}; p2_pid=${pids[3]}
sleep 1
# The health checks start with a first client: one query each, then let them run.
for port in "$pself_port" "$p1_port" "$p2_port"; do
  psql -h 127.0.0.1 -p "$port" -U postgres -qAtc "SELECT 1" postgres >/dev/null
done
sleep 2

printf '%s, %s s per run, pgbench scale %s, pool size %s, %s cores\n' "$(date -u +%F)" "$secs" "$scale" "$pool" "$(nproc)"
printf '%-26s %8s %8s %9s %8s %8s %9s %9s %9s %8s %8s %8s %8s\n' case direct "0 repl" "routing¹" "1 repl" "2 repl" \
  "rt¹/0" "1r/0" "2r/0" "0r µs" "rt¹ µs" "1r µs" "2r µs"
# Each pgopt configuration runs twice, in rotation (0, routing, 1, 2, 0, routing, 1, 2),
# so drift in the machine's load falls on all of them; TPS and CPU are averaged.
case_run() {
  local name=$1; shift
  local d tps cpu i
  local -a sum=(0 0 0 0) cpu_sum=(0 0 0 0)
  local -a ports=("$p0_port" "$pself_port" "$p1_port" "$p2_port")
  local -a procs=("$p0_pid" "$pself_pid" "$p1_pid" "$p2_pid")
  read -r d _ _ <<<"$(run "$pg_port" "" "$@")"
  for _ in 1 2; do
    for i in 0 1 2 3; do
      read -r tps _ cpu <<<"$(run "${ports[$i]}" "${procs[$i]}" "$@")"
      sum[$i]=$(awk -v a="${sum[$i]}" -v b="$tps" 'BEGIN {print a + b / 2}')
      cpu_sum[$i]=$(awk -v a="${cpu_sum[$i]}" -v b="$cpu" 'BEGIN {printf "%.1f", a + b / 2}')
    done
  done
  printf '%-26s %8s %8s %9s %8s %8s %9s %9s %9s %8s %8s %8s %8s\n' "$name" \
    "$(whole "$d")" "$(whole "${sum[0]}")" "$(whole "${sum[1]}")" "$(whole "${sum[2]}")" "$(whole "${sum[3]}")" \
    "$(ratio "${sum[1]}" "${sum[0]}")" "$(ratio "${sum[2]}" "${sum[0]}")" "$(ratio "${sum[3]}" "${sum[0]}")" \
    "${cpu_sum[0]}" "${cpu_sum[1]}" "${cpu_sum[2]}" "${cpu_sum[3]}"
}
case_run "-S simple, 16 clients"    -S -M simple   -c 16 -j 2
case_run "-S extended, 16 clients"  -S -M extended -c 16 -j 2
case_run "-S simple, 64 clients"    -S -M simple   -c 64 -j 2
echo "¹ routing on, no usable replica: the cost of classifying and routing every statement"
echo
echo "Where the 2-replica proxy sent its transactions (SHOW REPLICAS):"
psql -h 127.0.0.1 -p "$p2_port" -U postgres -P pager=off \
  -c "SHOW REPLICAS" pgopt | cut -c1-150
