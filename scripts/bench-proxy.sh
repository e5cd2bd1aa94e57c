#!/usr/bin/env bash
# Side-by-side proxy benchmark, in one run on this machine: pgbench against direct
# PostgreSQL, PgBouncer (transaction mode) and pgopt (transaction mode), same pool size.
# Prints TPS, the ratios pgopt/direct and pgopt/PgBouncer, each proxy's CPU time per
# transaction (its process CPU over the run / transactions done), and each target's
# average and p99 latency in ms (the p99 from pgbench's log of every transaction).
#
# Then pgopt with query insight on (the default) against pgopt with it off (issue 4),
# in alternated rounds (median on/off ratios of TPS and of the CPU all processes spent),
# on -S simple and extended at 64 clients.
#
# usage: scripts/bench-proxy.sh [SECONDS_PER_RUN=10] [PGBENCH_SCALE=10] [POOL_SIZE=20]
#        BENCH_ONLY=insight scripts/bench-proxy.sh ...   (just the insight comparison)
#        INSIGHT_ROUNDS=N (default 6), INSIGHT_VERBOSE=1 (each round on stderr)
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
printf '%-28s %10s %10s %10s %9s %9s %11s %11s %13s %13s %13s\n' case direct pgbouncer pgopt "opt/dir" "opt/pgb" \
  "pgb µs/tx" "opt µs/tx" "dir avg/p99" "pgb avg/p99" "opt avg/p99"
case_run() {
  local name=$1; shift
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
# Thousands of clients on 20 server connections (issue 3); direct PostgreSQL can't.
case_run "-S simple, 5000 clients"  -S -M simple   -c 5000 -j 2
fi

# Query insight's cost: the same pgopt build with [insight] on and off. The host's load
# drifts by more than the cost being measured, so the comparison is made in rounds: each
# round runs on and off back to back (on first in odd rounds, off first in even ones, so
# a steady drift falls on both sides alike) and gives one on/off TPS ratio; the verdict
# is the median over INSIGHT_ROUNDS rounds (default 6), min and max show the spread.
# Each run also sums the CPU a transaction cost the whole machine (pgopt, PostgreSQL and
# pgbench: "all"). With the CPU as the bottleneck, the TPS insight costs is the CPU it
# adds to pgopt over that whole: "CPU cost" = (pgopt on − pgopt off) / all off, per
# round. It varies less than the TPS ratio, which carries all of the host's noise.
rounds=${INSIGHT_ROUNDS:-6}
printf '\n%s rounds of insight on and off, %s s per run; ratios are medians [min–max] of the rounds\n' "$rounds" "$secs"
printf '%-26s %8s %8s %19s %9s %9s %9s %9s %19s\n' "insight (pgopt)" "on TPS" "off TPS" "TPS on/off" \
  "on µs/tx" "off µs/tx" "on all" "off all" "CPU cost"
mean() { printf '%s\n' "$@" | awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n; else print "-" }'; }
# spread UNIT VALUES…: "median [min–max]", as ratios (UNIT "") or percentages ("%")
spread() { local unit=$1; shift; printf '%s\n' "$@" | sort -g | awk -v unit="$unit" '
  { v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    if (unit == "%") printf "%.1f%% [%.1f–%.1f]", 100 * m, 100 * v[1], 100 * v[NR]
    else printf "%.3f [%.2f–%.2f]", m, v[1], v[NR] }'; }
insight_run() {
  local name=$1; shift
  local r side tps cpu all on_tps=() off_tps=() on_cpu=() off_cpu=() on_all=() off_all=() tps_r=() cost_r=()
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then set -- on off "$@"; else set -- off on "$@"; fi
    for side in "$1" "$2"; do
      if [ "$side" = on ]; then
        read -r tps _ cpu all <<<"$(run_total "$pgopt_port" "$pgopt_pid" "$tmp/data" "${@:3}")"
        on_tps+=("$tps"); on_cpu+=("$cpu"); on_all+=("$all")
      else
        read -r tps _ cpu all <<<"$(run_total "$plain_port" "$plain_pid" "$tmp/data" "${@:3}")"
        off_tps+=("$tps"); off_cpu+=("$cpu"); off_all+=("$all")
      fi
    done
    shift 2
    # A failed run (pgbench's "failed") leaves its round out.
    if [[ "${on_tps[-1]}${off_tps[-1]}${on_cpu[-1]}${off_cpu[-1]}${off_all[-1]}" =~ [^0-9.] ]]; then
      echo "  round $r: a run failed, left out" >&2; continue
    fi
    tps_r+=("$(awk -v a="${on_tps[-1]}" -v b="${off_tps[-1]}" 'BEGIN {printf "%.4f", a / b}')")
    cost_r+=("$(awk -v a="${on_cpu[-1]}" -v b="${off_cpu[-1]}" -v all="${off_all[-1]}" 'BEGIN {printf "%.4f", (a - b) / all}')")
    [ -n "${INSIGHT_VERBOSE:-}" ] && printf '  round %s: TPS on %.0f off %.0f (%s); µs/tx pgopt on %s off %s, all on %s off %s (%s)\n' \
      "$r" "${on_tps[-1]}" "${off_tps[-1]}" "${tps_r[-1]}" "${on_cpu[-1]}" "${off_cpu[-1]}" \
      "${on_all[-1]}" "${off_all[-1]}" "${cost_r[-1]}" >&2
  done
  printf '%-26s %8.0f %8.0f %19s %9s %9s %9s %9s %19s\n' "$name" "$(mean "${on_tps[@]}")" "$(mean "${off_tps[@]}")" \
    "$(spread "" "${tps_r[@]}")" "$(mean "${on_cpu[@]}")" "$(mean "${off_cpu[@]}")" \
    "$(mean "${on_all[@]}")" "$(mean "${off_all[@]}")" "$(spread % "${cost_r[@]}")"
}
insight_run "-S simple, 64 clients"    -S -M simple   -c 64 -j 2
insight_run "-S extended, 64 clients"  -S -M extended -c 64 -j 2
