#!/usr/bin/env bash
# Interleaved A/B of pgopt builds against PgBouncer: one PostgreSQL (pgbench scale 10),
# PgBouncer and each given pgopt build (transaction mode, pool size 20, query insight
# on), then ROUNDS rounds of one pgbench run per proxy in turn. Prints each run's TPS
# and the proxy's CPU per transaction (user/system µs, from /proc/PID/stat), and with
# PEAK=1 each proxy's peak memory (VmHWM) after the runs.
#
# usage: scripts/ab-proxy.sh SECS ROUNDS "PGBENCH_ARGS" PGOPT_BIN...
#   e.g. scripts/ab-proxy.sh 10 3 "-S -M simple -c 64 -j 2" /tmp/pgopt-old target/release/pgopt
set -euo pipefail
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cd "$(dirname "$0")/.."
secs=$1; rounds=$2; args=$3; shift 3
[ $# -ge 1 ] || { echo "usage: $0 SECS ROUNDS \"PGBENCH_ARGS\" PGOPT_BIN..." >&2; exit 2; }
bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
. scripts/bench-lib.sh   # free_port, pgbouncer_config

tmp=$(mktemp -d /tmp/pgopt-ab-XXXXXX)
pg_port=$(free_port); bouncer_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -s "$tmp/pgbouncer.pid" ] && kill "$(cat "$tmp/pgbouncer.pid")" 2>/dev/null
  stop_pg "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT

start_pg "$tmp" "$pg_port" 10

pgbouncer_config "$tmp" "$pg_port" "$bouncer_port" 20
"${as_pg[@]}" bash -c 'ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec pgbouncer -d "$1"' \
  _ "$tmp/pgbouncer.ini" >/dev/null 2>&1
names=(pgbouncer); ports=("$bouncer_port"); procs=()
printf '[insight]\nenabled = true\n' > "$tmp/pgopt.toml"
for bin in "$@"; do
  port=$(free_port)
  PGOPT_PROXY__MAX_CLIENT_CONN=10000 RUST_LOG=error "$bin" --config "$tmp/pgopt.toml" proxy \
    --listen "127.0.0.1:$port" --upstream "postgres://postgres@127.0.0.1:$pg_port/postgres" \
    --pool-mode transaction --pool-size 20 >/dev/null 2>&1 &
  pids+=($!); procs+=($!); names+=("$bin"); ports+=("$port")
done
sleep 1
procs=("$(cat "$tmp/pgbouncer.pid")" "${procs[@]}")

for round in $(seq "$rounds"); do
  for i in "${!ports[@]}"; do
    pid=${procs[$i]}
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    # shellcheck disable=SC2086
    out=$("$bindir/pgbench" -n -T "$secs" -h 127.0.0.1 -p "${ports[$i]}" -U postgres $args postgres 2>&1)
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    tps=$(awk '/^tps/ {printf "%.0f", $3}' <<<"$out")
    n=$(awk '/actually processed/ {print $6}' <<<"$out")
    cpu=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$ticks" \
      'BEGIN {printf "%.2f/%.2f", u * 1e6 / hz / n, s * 1e6 / hz / n}')
    echo "round $round ${names[$i]}: $tps TPS, CPU µs per transaction (user/system) $cpu"
  done
done
if [ "${PEAK:-0}" = 1 ]; then
  for i in "${!procs[@]}"; do
    echo "${names[$i]}: peak memory $(awk '/^VmHWM/ {print $2, $3}' "/proc/${procs[$i]}/status")"
  done
fi
