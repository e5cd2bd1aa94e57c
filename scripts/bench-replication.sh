#!/usr/bin/env bash
# A base backup through pgopt against the same backup made directly, side by side:
# pg_basebackup of a pgbench database (tar to stdout, counted and thrown away, so the
# disk plays no part), direct and through pgopt in turn, ROUNDS times each. Prints
# each run's seconds and MB/s, pgopt's CPU per GB passed, and the throughput ratio
# pgopt/direct. (PgBouncer 1.18, this machine's, refuses replication connections;
# 1.23 and later pass them.)
#
# usage: scripts/bench-replication.sh [SCALE=20] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-20}; rounds=${2:-3}
bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release -q -p pgopt-cli
tmp=$(mktemp -d /tmp/pgopt-bench-replication-XXXXXX)
. scripts/bench-lib.sh   # start_pg, stop_pg, free_port, cpu_ticks, ticks
pg_port=$(free_port); pgopt_port=$(free_port)
ppid=
cleanup() {
  [ -n "$ppid" ] && kill "$ppid" 2>/dev/null
  stop_pg "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT
start_pg "$tmp" "$pg_port" "$scale"
target/release/pgopt proxy --listen "127.0.0.1:$pgopt_port" \
  --upstream "postgres://postgres@127.0.0.1:$pg_port/postgres" \
  --pool-mode transaction --pool-size 4 > "$tmp/pgopt.log" 2>&1 &
ppid=$!
for _ in $(seq 50); do "$bindir/pg_isready" -q -h 127.0.0.1 -p "$pgopt_port" && break; sleep 0.1; done

# backup PORT → "seconds bytes"
backup() {
  local start end bytes
  start=$(date +%s.%N)
  bytes=$("$bindir/pg_basebackup" -d "host=127.0.0.1 port=$1 user=postgres" \
    -D - -Ft -X none --no-manifest -c fast 2>/dev/null | wc -c)
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc -l) $bytes"
}

printf '%-6s %-7s %9s %9s %8s %14s\n' round target seconds MB MB/s "pgopt ms/GB"
direct_total=0; pgopt_total=0; bytes_total=0
for r in $(seq "$rounds"); do
  read -r s b < <(backup "$pg_port")
  printf '%-6s %-7s %9.2f %9.1f %8.1f %14s\n' "$r" direct "$s" "$(echo "$b/1000000" | bc -l)" "$(echo "$b/1000000/$s" | bc -l)" -
  direct_total=$(echo "$direct_total + $s" | bc -l)
  before=$(cpu_ticks "$ppid")
  read -r s b < <(backup "$pgopt_port")
  after=$(cpu_ticks "$ppid")
  cpu_ms=$(echo "($after - $before) * 1000 / $ticks" | bc -l)
  printf '%-6s %-7s %9.2f %9.1f %8.1f %14.0f\n' "$r" pgopt "$s" "$(echo "$b/1000000" | bc -l)" "$(echo "$b/1000000/$s" | bc -l)" "$(echo "$cpu_ms * 1000000000 / $b" | bc -l)"
  pgopt_total=$(echo "$pgopt_total + $s" | bc -l)
  bytes_total=$(echo "$bytes_total + $b" | bc -l)
done
printf 'throughput pgopt/direct over %s rounds: %.2f\n' "$rounds" "$(echo "$direct_total / $pgopt_total" | bc -l)"
