#!/usr/bin/env bash
# Where pgopt's CPU goes under pgbench: one PostgreSQL, one pgopt (release build),
# pgbench -S through it, and `perf record -g` or `strace -c -f` attached to the proxy for
# 4 s in the middle of the run. Prints TPS and the proxy's CPU per transaction, then the
# report (perf: by shared object and top symbols; strace: syscall counts).
#
# usage: scripts/profile-proxy.sh [MODE=simple|extended|prepared|tpcb|hot|connect] [CLIENTS=16] [SECS=10] [TOOL=perf|strace|callgrind|none]
#        PROXY=pgbouncer (the same load through PgBouncer), PGOPT_CONFIG=FILE (pgopt's --config),
#        PGOPT_BIN=FILE (another pgopt build, for an A/B),
#        KEEP_PERF=FILE (keep perf.data), PERF_DUMP=FILE, PERF_TOP=N
#        callgrind: pgopt's instructions per transaction over CALLGRIND_TXNS (500) per client,
#        CALLGRIND_KEEP=FILE keeps the profile for callgrind_annotate, CALLGRIND_ARGS more
#        valgrind options ("--cache-sim=yes": simulated cache misses too)
# (tpcb: pgbench's default TPC-B-like script, simple protocol, instead of -S; hot: point
# reads of HOT_KEYS accounts, for the result cache's hit path with a [cache] config, in
# the simple protocol or HOT_PROTOCOL=extended)
set -euo pipefail
ulimit -n 20000 2>/dev/null || true
cd "$(dirname "$0")/.."
mode=${1:-simple}; clients=${2:-16}; secs=${3:-10}; tool=${4:-perf}
bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release -q -p pgopt-cli
tmp=$(mktemp -d /tmp/pgopt-profile-XXXXXX)
. scripts/bench-lib.sh   # free_port, pgbouncer_config
pg_port=$(free_port); pgopt_port=$(free_port)
ppid=
cleanup() {
  [ -n "$ppid" ] && kill "$ppid" 2>/dev/null && sleep 0.5
  stop_pg "$tmp"
  [ -n "${KEEP_PERF:-}" ] && cp "$tmp/perf.data" "$KEEP_PERF" 2>/dev/null; rm -rf "$tmp"
}
trap cleanup EXIT
start_pg "$tmp" "$pg_port" 10 -c synchronous_commit=off
# hot: point reads of HOT_KEYS (100) accounts, simple protocol: with a PGOPT_CONFIG whose
# [cache] holds pgbench_accounts, the result cache's hit path.
pgbench_script=(-S -M "$mode")
case $mode in
  tpcb) pgbench_script=(-M simple) ;;
  # connect: a new connection for every transaction (pgbench -C), as an application
  # without a pool of its own makes them: the proxy's login path.
  connect) pgbench_script=(-S -M simple -C) ;;
  hot)
    [ -n "${PGOPT_CONFIG:-}" ] || [ "${PROXY:-pgopt}" = pgbouncer ] ||
      echo "note: MODE hot without a PGOPT_CONFIG holding [cache]: no cache is measured" >&2
    printf '\\set aid random(1, %s)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' "${HOT_KEYS:-100}" > "$tmp/hot.sql"
    chmod a+r "$tmp/hot.sql"
    pgbench_script=(-M "${HOT_PROTOCOL:-simple}" -f "$tmp/hot.sql") ;;
esac
wrap=()
# callgrind: the proxy's own instructions per transaction, repeatable whatever the host does.
# CALLGRIND_ARGS: more valgrind options, e.g. "--cache-sim=yes" for simulated cache misses.
[ "$tool" = callgrind ] && wrap=(valgrind --tool=callgrind --callgrind-out-file="$tmp/callgrind.out" --dump-instr=no ${CALLGRIND_ARGS:-})
if [ "${PROXY:-pgopt}" = pgbouncer ]; then
  # The same load through PgBouncer (transaction mode, same pool size), for comparison.
  pgbouncer_config "$tmp" "$pg_port" "$pgopt_port" 20
  if [ "$tool" = callgrind ]; then
    # In the foreground under valgrind (its pid is the one the pidfile gets).
    "${as_pg[@]}" "${wrap[@]}" pgbouncer "$tmp/pgbouncer.ini" >/dev/null 2>&1 &
    for _ in $(seq 60); do [ -s "$tmp/pgbouncer.pid" ] && break; sleep 1; done
  else
    # runuser starts a fresh session with the default fd limit: raised inside (5,000
    # clients need more than 1,024).
    "${as_pg[@]}" bash -c 'ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec pgbouncer -d "$1"' \
      _ "$tmp/pgbouncer.ini" >/dev/null 2>&1
    sleep 1
  fi
  ppid=$(cat "$tmp/pgbouncer.pid")
else
  PGOPT_PROXY__MAX_CLIENT_CONN=10000 RUST_LOG=error "${wrap[@]}" "${PGOPT_BIN:-target/release/pgopt}" ${PGOPT_CONFIG:+--config "$PGOPT_CONFIG"} proxy --listen "127.0.0.1:$pgopt_port" \
    --upstream "postgres://postgres@127.0.0.1:$pg_port/postgres" --pool-mode transaction --pool-size 20 >/dev/null 2>&1 &
  ppid=$!
  sleep 1
fi
if [ "$tool" = callgrind ]; then
  # PgBouncer runs as postgres here: valgrind's control pipe is that user's.
  as_cg=(); [ "${PROXY:-pgopt}" = pgbouncer ] && as_cg=("${as_pg[@]}")
  # Valgrind starts slowly and runs pgopt ~50x slower: wait for the port, warm up (pools
  # filled, caches seen), then count only a fixed number of transactions.
  for _ in $(seq 60); do "$bindir/pg_isready" -q -h 127.0.0.1 -p "$pgopt_port" && break; sleep 1; done
  script=("${pgbench_script[@]}")
  jobs_=2; [ "$mode" = prepared ] && jobs_=$clients
  "$bindir/pgbench" -n "${script[@]}" -c "$clients" -j "$jobs_" -t 50 -h 127.0.0.1 -p "$pgopt_port" -U postgres postgres >/dev/null 2>&1
  "${as_cg[@]}" callgrind_control -z "$ppid" >/dev/null
  per_client=${CALLGRIND_TXNS:-500}
  "$bindir/pgbench" -n "${script[@]}" -c "$clients" -j "$jobs_" -t "$per_client" -h 127.0.0.1 -p "$pgopt_port" -U postgres postgres >/dev/null 2>&1
  "${as_cg[@]}" callgrind_control -d "$ppid" >/dev/null
  txns=$((clients * per_client))
  out=$(ls "$tmp"/callgrind.out.* | sort | tail -1)
  # (awk reads to the end: an early exit would kill callgrind_annotate with SIGPIPE,
  # and pipefail would end the script before it prints)
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
  echo "$mode, $clients clients: ${PROXY:-pgopt} $((total / txns)) instructions per transaction ($txns transactions)"
  [ -n "${CALLGRIND_KEEP:-}" ] && cp "$out" "$CALLGRIND_KEEP"
  callgrind_annotate --inclusive=yes "$out" 2>/dev/null | head -$((${PERF_TOP:-30} + 20)) | tail -n +18
  exit 0
fi
before=$(awk '{print $14 + $15}' "/proc/$ppid/stat")
jobs_=2; [ "$mode" = prepared ] && jobs_=$clients
case $tool in
  perf) (sleep 2; perf record -g -p "$ppid" -o "$tmp/perf.data" -- sleep 4 >/dev/null 2>&1) & tpid=$! ;;
  strace) (sleep 2; timeout -s INT 4 strace -c -f -p "$ppid" -o "$tmp/strace.out" 2>/dev/null) & tpid=$! ;;
  *) tpid= ;;
esac
script=("${pgbench_script[@]}")
out=$("$bindir/pgbench" -n "${script[@]}" -c "$clients" -j "$jobs_" -T "$secs" -h 127.0.0.1 -p "$pgopt_port" -U postgres postgres 2>&1)
after=$(awk '{print $14 + $15}' "/proc/$ppid/stat")
[ -n "$tpid" ] && wait "$tpid" || true
txns=$(awk -F': ' '/actually processed/ {split($2,a,"/"); print a[1]}' <<<"$out")
tps=$(awk -F'= ' '/^tps/ {split($2,a," "); print a[1]}' <<<"$out")
echo "$mode, $clients clients: $tps TPS, ${PROXY:-pgopt} $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$txns" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}') µs CPU per transaction ($txns transactions)"
# PERF_DUMP=FILE: every symbol of pgopt's own code, for sums the top list can't give.
if [ "$tool" = perf ] && [ -n "${PERF_DUMP:-}" ]; then
  perf report -i "$tmp/perf.data" --no-children --dsos pgopt --sort sym -g none > "$PERF_DUMP" 2>/dev/null || true
fi
case $tool in
  perf)
    perf report -i "$tmp/perf.data" --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -6
    perf report -i "$tmp/perf.data" --no-children --sort sym -g none 2>/dev/null | grep -v "^#" | grep -v "^$" | head -${PERF_TOP:-30} ;;
  strace) cat "$tmp/strace.out" ;;
esac
