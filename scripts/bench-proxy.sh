#!/usr/bin/env bash
# Side-by-side proxy benchmark, in one run on this machine: pgbench against direct
# PostgreSQL, PgBouncer (transaction mode) and pgopt (transaction mode), same pool size.
# Prints TPS, the ratios pgopt/direct and pgopt/PgBouncer, each proxy's CPU time per
# transaction (its process CPU over the run / transactions done), and each target's
# average and p99 latency in ms (the p99 from pgbench's log of every transaction).
#
# Then query insight's cost (issue 4): one pgbench run through pgopt while a RELOAD
# switches insight off and on every few seconds, on -S simple and extended at 64 clients
# (median of the on/off TPS ratios of neighbouring phases, and the CPU insight adds).
#
# usage: scripts/bench-proxy.sh [SECONDS_PER_RUN=10] [PGBENCH_SCALE=10] [POOL_SIZE=20]
#        BENCH_ONLY=insight scripts/bench-proxy.sh ...   (just the insight comparison)
#        BENCH_ONLY=proxy scripts/bench-proxy.sh ...     (just the proxy table)
#        BENCH_SOCKETS=unix scripts/bench-proxy.sh ...  (every hop over Unix-domain sockets:
#        pgbench to each target, and each proxy to PostgreSQL; else TCP on 127.0.0.1)
#        BENCH_CASE=TEXT scripts/bench-proxy.sh ...     (only the proxy cases whose name holds TEXT)
#        INSIGHT_ROUNDS=N pairs of phases (default 12), INSIGHT_PERIOD=S seconds per
#        phase (default 5), INSIGHT_VERBOSE=1 (each pair on stderr), INSIGHT_AA=1 (an
#        A/A line per case: the switching alone, insight on in both phases)
set -euo pipefail
# 5,000 clients need more file descriptors than the usual 1,024 (pgbench and proxies).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cd "$(dirname "$0")/.."
secs=${1:-10}
scale=${2:-10}
pool=${3:-20}

bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for p in "$bindir/initdb" "$bindir/pgbench" pgbouncer /usr/bin/time; do
  command -v "$p" >/dev/null || { echo "missing $p (apt-get install postgresql-15 pgbouncer time)" >&2; exit 1; }
done
cargo build --release -q -p pgopt-cli
pgopt=target/release/pgopt
. scripts/bench-lib.sh

tmp=$(mktemp -d /tmp/pgopt-bench-XXXXXX)
pg_port=$(free_port); bouncer_port=$(free_port); pgopt_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  stop_pg "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT

start_pg "$tmp" "$pg_port" "$scale" -c synchronous_commit=off

bench_sockets "$tmp" "$pg_port"
pgbouncer_config "$tmp" "$pg_port" "$bouncer_port" "$pool" "$server_host" "$socket_dir"
# runuser starts a fresh session with the default fd limit: raise it inside.
"${as_pg[@]}" bash -c 'ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec pgbouncer "$1"' \
  _ "$tmp/pgbouncer.ini" >/dev/null 2>&1 & pids+=($!)
# Its config file holds insight.enabled, switched by the insight comparison below.
printf '[insight]\nenabled = true\n' > "$tmp/pgopt.toml"
PGOPT_PROXY__MAX_CLIENT_CONN=10000 PGOPT_PROXY__UNIX_SOCKET_DIR=$socket_dir RUST_LOG=error \
  "$pgopt" --config "$tmp/pgopt.toml" proxy --listen "127.0.0.1:$pgopt_port" \
  --upstream "$upstream" --pool-mode transaction --pool-size "$pool" >/dev/null 2>&1 & pids+=($!)
sleep 1
bouncer_pid=$(cat "$tmp/pgbouncer.pid")
pgopt_pid=${pids[1]}

printf '%s, %s s per run, pgbench scale %s, pool size %s, %s cores, %s sockets\n' "$(date -u +%F)" "$secs" \
  "$scale" "$pool" "$(nproc)" "${BENCH_SOCKETS:-tcp}"
printf '%-28s %10s %10s %10s %9s %9s %11s %11s %13s %13s %13s\n' case direct pgbouncer pgopt "opt/dir" "opt/pgb" \
  "pgb µs/tx" "opt µs/tx" "dir avg/p99" "pgb avg/p99" "opt avg/p99"
case_run() {
  local name=$1; shift
  [[ "$name" == *"${BENCH_CASE:-}"* ]] || return 0
  local d_lat=- d_p99=- b_lat=- b_p99=- o_lat o_p99
  if [ "$name" = "-S simple, 5000 clients" ]; then
    d_tps=n/a              # PostgreSQL itself takes max_connections = 100 clients
  else
    read -r d_tps d_lat _ d_p99 <<<"$(P99=1 run "$pg_port" "" "$@")"
  fi
  if [ "$name" = "-S prepared, 16 clients" ]; then
    b_tps=n/a; b_cpu="-"   # PgBouncer 1.18 cannot carry named prepared statements in transaction mode
  else
    read -r b_tps b_lat b_cpu b_p99 <<<"$(P99=1 run "$bouncer_port" "$bouncer_pid" "$@")"
  fi
  read -r o_tps o_lat o_cpu o_p99 <<<"$(P99=1 run "$pgopt_port" "$pgopt_pid" "$@")"
  d_tps=$(whole "$d_tps"); b_tps=$(whole "$b_tps"); o_tps=$(whole "$o_tps")
  lat() { case $1 in -|failed) echo "$1" ;; *) printf '%.2f/%s' "$1" "$2" ;; esac; }
  printf '%-28s %10s %10s %10s %9s %9s %11s %11s %13s %13s %13s\n' "$name" "$d_tps" "$b_tps" "$o_tps" \
    "$(ratio "$o_tps" "$d_tps")" "$(ratio "$o_tps" "$b_tps")" "$b_cpu" "$o_cpu" \
    "$(lat "$d_lat" "$d_p99")" "$(lat "$b_lat" "$b_p99")" "$(lat "$o_lat" "$o_p99")"
}
if [ "${BENCH_ONLY:-}" != insight ]; then
case_run "-S simple, 16 clients"    -S -M simple   -c 16 -j 2
case_run "-S simple, 64 clients"    -S -M simple   -c 64 -j 2
case_run "-S extended, 16 clients"  -S -M extended -c 16 -j 2
case_run "-S extended, 64 clients"  -S -M extended -c 64 -j 2
# One thread per client: pgbench's blocking PQprepare would stall a thread's other clients.
case_run "-S prepared, 16 clients"  -S -M prepared -c 16 -j 16
case_run "TPC-B, 16 clients"        -M simple      -c 16 -j 2
# A new connection for every transaction, as an application without a pool of its own
# makes them: the login path (direct PostgreSQL forks a backend for each).
case_run "-S simple, -C, 16 clients" -S -M simple   -C -c 16 -j 2
# Deep pipelines: each transaction is 1,000 point selects sent in one pipeline (libpq
# pipeline mode, as psycopg's executemany and JDBC batches use it) and one Sync.
{ echo '\set aid random(1, 100000 * :scale)'; echo '\startpipeline'
  for _ in $(seq 1000); do echo 'SELECT abalance FROM pgbench_accounts WHERE aid = :aid;'; done
  echo '\endpipeline'; } > "$tmp/pipeline.sql"
case_run "-S pipelines of 1000, 4 cl" -f "$tmp/pipeline.sql" -M extended -c 4 -j 2
# Thousands of clients on 20 server connections (issue 3); direct PostgreSQL can't.
case_run "-S simple, 5000 clients"  -S -M simple   -c 5000 -j 2
fi

# Query insight's cost (issue 4), side by side in one run: one pgbench run against the
# pgopt above while a RELOAD (SIGHUP) switches insight.enabled off and on every
# INSIGHT_PERIOD seconds (default 5; sessions follow between their requests, and "off"
# relays without a tracker, as with insight disabled at start). Phases come in pairs, on then
# off in even pairs, off then on in odd ones, INSIGHT_ROUNDS pairs (default 12). Each
# phase's TPS is the mean of pgbench's per-second progress (-P 1) over its seconds but
# the first (the switch happens in it); each pair gives one on/off ratio and the verdict
# is their median [min–max]. Back to back within seconds, the host's drift (minutes) falls
# on both sides alike. "CPU cost": per pair, the CPU insight adds to pgopt per
# transaction over all the CPU a transaction costs the machine (pgopt, PostgreSQL and
# pgbench), from /proc at each switch. INSIGHT_AA=1 adds an A/A line per case: the same
# switching with insight on in both phases, the method's own noise.
[ "${BENCH_ONLY:-}" = proxy ] && exit 0
period=${INSIGHT_PERIOD:-5}
rounds=${INSIGHT_ROUNDS:-12}
printf '\n%s pairs of %s s phases, insight on and off in one pgbench run; ratios are medians [min–max] of the pairs\n' "$rounds" "$period"
printf '%-30s %8s %8s %19s %9s %9s %9s %9s %19s\n' "insight (pgopt)" "on TPS" "off TPS" "TPS on/off" \
  "on µs/tx" "off µs/tx" "on all" "off all" "CPU cost"
mean() { printf '%s\n' "$@" | awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n; else print "-" }'; }
# spread UNIT VALUES…: "median [min–max]", as ratios (UNIT "") or percentages ("%")
spread() { local unit=$1; shift; printf '%s\n' "$@" | sort -g | awk -v unit="$unit" '
  { v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    if (unit == "%") printf "%.1f%% [%.1f–%.1f]", 100 * m, 100 * v[1], 100 * v[NR]
    else printf "%.3f [%.2f–%.2f]", m, v[1], v[NR] }'; }
insight_set() {
  printf '[insight]\nenabled = %s\n' "$1" > "$tmp/pgopt.toml"
  kill -HUP "$pgopt_pid"
}
# now_s: wall-clock seconds, fractional
now_s() { date +%s.%N; }
# insight_run NAME A|AB PGBENCH_ARGS...
insight_run() {
  local name=$1 mode=$2; shift 2
  # The phases start at pgbench's second 2 (its clock is known from its first second).
  local phases=$((2 * rounds)) lead=2 progress=$tmp/progress.txt flips=$tmp/flips.txt k j side origin bench wait
  insight_set true
  sleep 1
  : > "$flips"
  "$bindir/pgbench" -n -T $((lead + phases * period + 1)) -P 1 -h "$bench_host" -p "$pgopt_port" -U postgres \
    "$@" postgres > "$tmp/pgbench.out" 2> "$progress" &
  bench=$!
  # pgbench's clock: its first progress line is printed at its second 1.
  until grep -Eq '^progress: 1\.[0-9]+ s' "$progress"; do
    kill -0 "$bench" 2>/dev/null || { echo "  $name: pgbench failed: $(tail -3 "$progress")" >&2; return; }
    sleep 0.02
  done
  origin=$(awk -v n="$(now_s)" 'BEGIN { printf "%.3f", n - 1 }')
  for k in $(seq 0 "$phases"); do
    j=$((k / 2))
    if [ $(((j + k) % 2)) -eq 0 ]; then side=on; else side=off; fi
    # Just after pgbench's second lead + k·period.
    wait=$(awk -v o="$origin" -v k="$k" -v p="$period" -v l="$lead" -v n="$(now_s)" \
      'BEGIN { d = o + l + k * p + 0.05 - n; printf "%.3f", (d > 0 ? d : 0) }')
    sleep "$wait"
    if [ "$k" -lt "$phases" ]; then
      if [ "$side" = on ] || [ "$mode" = A ]; then insight_set true; else insight_set false; fi
    fi
    echo "$k $side $(cpu_ticks "$pgopt_pid") $(pg_ticks "$tmp/data") $(cpu_ticks "$bench")" >> "$flips"
  done
  wait "$bench" || true
  insight_set true
  # Per pair: tps_ratio cpu_cost on_tps off_tps on_us off_us on_all off_all
  local pairs
  pairs=$(awk -v P="$period" -v hz="$ticks" -v phases="$phases" -v lead="$lead" '
    FNR == NR { side[$1] = $2; po[$1] = $3; pg[$1] = $4; pb[$1] = $5; next }
    /^progress:/ {
      n = int($2 + 0.5) - lead; if (n < 1 || n > phases * P) next
      k = int((n - 1) / P); tx[k] += $4
      if ((n - 1) % P != 0) { clean[k] += $4; c[k]++ } }
    END {
      for (k = 0; k < phases; k++) {
        if (!tx[k] || !c[k]) { bad = 1; continue }
        t[side[k], int(k / 2)] = clean[k] / c[k]
        us[side[k], int(k / 2)] = (po[k + 1] - po[k]) / hz * 1e6 / tx[k]
        all[side[k], int(k / 2)] = ((po[k + 1] - po[k]) + (pg[k + 1] - pg[k]) + (pb[k + 1] - pb[k])) / hz * 1e6 / tx[k]
      }
      if (bad) exit 1
      for (j = 0; j < phases / 2; j++)
        printf "%.4f %.4f %.1f %.1f %.1f %.1f %.1f %.1f\n", t["on", j] / t["off", j],
          (us["on", j] - us["off", j]) / all["off", j], t["on", j], t["off", j],
          us["on", j], us["off", j], all["on", j], all["off", j]
    }' "$flips" "$progress") || { echo "  $name: a phase had no transactions" >&2; return; }
  if [ -n "${INSIGHT_VERBOSE:-}" ]; then
    awk -v m="$mode" '{ printf "  %s pair %d: TPS on %.0f off %.0f (%s); µs/tx pgopt on %s off %s, all on %s off %s (%s)\n",
      m == "A" ? "A/A" : "", NR, $3, $4, $1, $5, $6, $7, $8, $2 }' <<<"$pairs" >&2
  fi
  col() { awk -v c="$1" '{ print $c }' <<<"$pairs"; }
  # shellcheck disable=SC2046
  printf '%-30s %8.0f %8.0f %19s %9s %9s %9s %9s %19s\n' "$name$([ "$mode" = A ] && echo ' (A/A)')" \
    "$(mean $(col 3))" "$(mean $(col 4))" "$(spread "" $(col 1))" "$(mean $(col 5))" "$(mean $(col 6))" \
    "$(mean $(col 7))" "$(mean $(col 8))" "$(spread % $(col 2))"
}
for args in "-S simple, 64 clients|-S -M simple -c 64 -j 2" "-S extended, 64 clients|-S -M extended -c 64 -j 2"; do
  # shellcheck disable=SC2086
  insight_run "${args%%|*}" AB ${args#*|}
  if [ -n "${INSIGHT_AA:-}" ]; then
    # shellcheck disable=SC2086
    insight_run "${args%%|*}" A ${args#*|}
  fi
done
