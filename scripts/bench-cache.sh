#!/usr/bin/env bash
# Result cache benchmark (issue 6), side by side in one run on this machine: the same
# pgbench workloads against direct PostgreSQL, pgopt without the cache and pgopt with
# the cache (`cache.tables = ["pgbench_accounts"]`). Prints TPS, average latency, the
# ratios, pgopt's CPU per transaction and the cache's hit ratio.
#
# Workloads (pgbench custom scripts, keys drawn from a Zipf distribution so a hot set
# exists, as in real traffic):
#   point    SELECT abalance FROM pgbench_accounts WHERE aid = :aid   (cheap for PostgreSQL)
#   report   SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE bid = :bid
#            AND aid BETWEEN :lo AND :lo + 999   (a range aggregate, a dashboard tile)
#   tpcb     pgbench's own TPC-B (writes to pgbench_accounts every transaction): what the
#            cache costs when it cannot help (every read's entry is invalidated)
#
# With REDIS=1 the cached pgopt also shares its cache through a redis-server started
# here ([cache.redis]: every miss reads the tables' versions in Redis, every fill is
# stored there, every commit is published and confirmed): what L2 and the bus cost.
#
# With WAL=1 PostgreSQL runs with wal_level = logical and the cached pgopt follows its
# commits on a replication stream (`wal_listener`), and one more case runs: point reads
# through the cached pgopt while a second pgbench UPDATEs the same hot rows directly on
# PostgreSQL, bypassing pgopt, at WAL_RATE transactions per second (default 200). It
# prints how late those commits were invalidated (commit time to invalidation, the
# window in which a bypassing write can be read stale: p50/p99 bucket bounds from
# pgopt's `pgopt_cache_wal_staleness_seconds` histogram over that case alone).
#
# With BENCH_SOCKETS=unix every hop runs over Unix-domain sockets: pgbench to PostgreSQL
# and to each pgopt, and each pgopt to PostgreSQL.
#
# usage: [REDIS=1] [WAL=1] [BENCH_SOCKETS=unix] scripts/bench-cache.sh [SECONDS_PER_RUN=15] [PGBENCH_SCALE=10] [POOL_SIZE=20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
scale=${2:-10}
pool=${3:-20}

bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for p in "$bindir/initdb" "$bindir/pgbench" psql; do
  command -v "$p" >/dev/null || { echo "missing $p (apt-get install postgresql-15)" >&2; exit 1; }
done
cargo build --release -q -p pgopt-cli
pgopt=target/release/pgopt
. scripts/bench-lib.sh

tmp=$(mktemp -d /tmp/pgopt-bench-cache-XXXXXX)
pg_port=$(free_port); plain_port=$(free_port); cache_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  stop_pg "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT

settings=()
[ "${WAL:-0}" = 1 ] && settings=(-c wal_level=logical)
start_pg "$tmp" "$pg_port" "$scale" "${settings[@]}"

# pgbench_history has no primary key, so pgopt would not create its publication FOR
# ALL TABLES (PostgreSQL then refuses UPDATE and DELETE on such a table); pgbench only
# inserts there, so the benchmark creates it, as a DBA would.
[ "${WAL:-0}" = 1 ] && psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE PUBLICATION pgopt_cache FOR ALL TABLES" postgres
accounts=$((scale * 100000))
cat >"$tmp/point.sql" <<SQL
\set aid random_zipfian(1, $accounts, 1.1)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL
cat >"$tmp/report.sql" <<SQL
\set bid random_zipfian(1, $scale, 1.1)
\set lo random_zipfian(0, 99, 1.1) * 1000 + (:bid - 1) * 100000 + 1
SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE bid = :bid AND aid BETWEEN :lo AND :lo + 999;
SQL
cat >"$tmp/cache.toml" <<TOML
[cache]
enabled = true
tables = ["pgbench_accounts"]
ttl = "10m"
TOML
[ "${WAL:-0}" = 1 ] && echo 'wal_listener = true' >>"$tmp/cache.toml"
if [ "${REDIS:-0}" = 1 ]; then
  command -v redis-server >/dev/null || { echo "missing redis-server (apt-get install redis-server)" >&2; exit 1; }
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$tmp" --logfile "$tmp/redis.log" &
  pids+=($!)
  printf '[cache.redis]\nurl = "redis://127.0.0.1:%s"\n' "$redis_port" >>"$tmp/cache.toml"
fi

bench_sockets "$tmp" "$pg_port"
proxy() {
  local port=$1; shift
  PGOPT_PROXY__UNIX_SOCKET_DIR=$socket_dir RUST_LOG=error "$pgopt" "$@" proxy --listen "127.0.0.1:$port" \
    --upstream "$upstream" --pool-mode transaction --pool-size "$pool" >/dev/null 2>&1 &
  pids+=($!)
}
proxy "$plain_port"
admin_port=$(free_port)
printf '[proxy]\nadmin_listen = "127.0.0.1:%s"\n' "$admin_port" >>"$tmp/cache.toml"
proxy "$cache_port" --config "$tmp/cache.toml"
plain_pid=${pids[-2]}; cache_pid=${pids[-1]}
sleep 1
if [ "${WAL:-0}" = 1 ]; then
  # Nothing is served until the replication stream runs.
  for _ in $(seq 100); do
    psql -h 127.0.0.1 -p "$cache_port" -U postgres -qAtc "SHOW CACHE" pgopt | grep -q '|streaming|' && break
    sleep 0.2
  done
fi

printf '%s, %s s per run, pgbench scale %s, pool size %s, %s cores, %s sockets%s\n' "$(date -u +%F)" "$secs" "$scale" \
  "$pool" "$(nproc)" "${BENCH_SOCKETS:-tcp}" "$([ "${REDIS:-0}" = 1 ] && echo ', +cache shares L2 and invalidations through Redis')"
printf '%-28s %9s %9s %9s %8s %8s %8s %8s %8s %8s %7s\n' case direct pgopt "+cache" "c/dir" "c/pgopt" \
  "dir ms" "pg ms" "c ms" "c µs/tx" "hits"
hits() {
  psql -h 127.0.0.1 -p "$cache_port" -U postgres -qAtc "SHOW CACHE" pgopt | cut -d'|' -f4
}
# direct, pgopt, pgopt+cache, twice in rotation; TPS and latency averaged.
case_run() {
  local name=$1; shift
  local tps lat cpu i h0 h1
  local -a sum=(0 0 0) lat_sum=(0 0 0)
  local -a ports=("$pg_port" "$plain_port" "$cache_port") procs=("" "$plain_pid" "$cache_pid")
  local cpu_sum=0
  h0=$(hits)
  for _ in 1 2; do
    for i in 0 1 2; do
      read -r tps lat cpu <<<"$(run "${ports[$i]}" "${procs[$i]}" "$@")"
      sum[$i]=$(awk -v a="${sum[$i]}" -v b="$tps" 'BEGIN {print a + b / 2}')
      lat_sum[$i]=$(awk -v a="${lat_sum[$i]}" -v b="$lat" 'BEGIN {printf "%.3f", a + b / 2}')
      [ "$i" = 2 ] && cpu_sum=$(awk -v a="$cpu_sum" -v b="$cpu" 'BEGIN {printf "%.1f", a + b / 2}')
    done
  done
  h1=$(hits)
  printf '%-28s %9s %9s %9s %8s %8s %8s %8s %8s %8s %7s\n' "$name" \
    "$(whole "${sum[0]}")" "$(whole "${sum[1]}")" "$(whole "${sum[2]}")" \
    "$(ratio "${sum[2]}" "${sum[0]}")" "$(ratio "${sum[2]}" "${sum[1]}")" \
    "${lat_sum[0]}" "${lat_sum[1]}" "${lat_sum[2]}" "$cpu_sum" "$((h1 - h0))"
}
case_run "point, extended, 16 clients" -f "$tmp/point.sql" -M extended -c 16 -j 2
case_run "point, simple, 16 clients"   -f "$tmp/point.sql" -M simple   -c 16 -j 2
case_run "report, extended, 16 clients" -f "$tmp/report.sql" -M extended -c 16 -j 2
case_run "tpcb, extended, 16 clients"  -M extended -c 16 -j 2
if [ "${WAL:-0}" = 1 ]; then
  cat >"$tmp/write.sql" <<SQL
\set aid random_zipfian(1, $accounts, 1.1)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SQL
  # The staleness histogram's cumulative buckets: "le count" lines.
  staleness() {
    curl -s "http://127.0.0.1:$admin_port/metrics" |
      sed -n 's/^pgopt_cache_wal_staleness_seconds_bucket{le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p'
  }
  # The cases before wrote through pgopt; the stream may still be working through their
  # commits. Wait until it has seen them all (its commit count holds still for 2 s).
  wal_commits() { curl -s "http://127.0.0.1:$admin_port/metrics" | sed -n 's/^pgopt_cache_wal_staleness_seconds_count //p'; }
  backlog_start=$(date +%s); last=-1
  while [ "$(wal_commits)" != "$last" ]; do last=$(wal_commits); sleep 2; done
  drained=$(($(date +%s) - backlog_start))
  before=$(staleness)
  rate=${WAL_RATE:-200}
  "$bindir/pgbench" -n -T "$secs" -R "$rate" -h 127.0.0.1 -p "$pg_port" -U postgres \
    -f "$tmp/write.sql" -c 2 -j 1 postgres >"$tmp/writes.out" 2>&1 &
  writer=$!
  h0=$(hits)
  read -r tps lat cpu <<<"$(run "$cache_port" "$cache_pid" -f "$tmp/point.sql" -M extended -c 16 -j 2)"
  wait "$writer" || true
  h1=$(hits)
  after=$(staleness)
  written=$(awk -F': ' '/actually processed/ {split($2,a,"/"); print a[1]}' "$tmp/writes.out")
  # The case's own commits: bucket counts after minus before, then p50 and p99 bounds.
  quantiles=$(paste <(echo "$before") <(echo "$after") | awk '
    { le[NR] = $1; c[NR] = $4 - $2 } END {
      n = c[NR]; p50 = p99 = "-"
      for (i = 1; i <= NR && n > 0; i++) {
        if (p50 == "-" && c[i] >= n * 0.5) p50 = le[i]
        if (p99 == "-" && c[i] >= n * 0.99) p99 = le[i]
      }
      printf "%s %s %s", n, p50, p99 }')
  read -r seen p50 p99 <<<"$quantiles"
  echo
  printf 'point reads through pgopt + cache (extended, 16 clients) while %s UPDATE/s bypass pgopt:\n' "$rate"
  printf '  reads %.0f TPS, %s ms average, %s hits; %s direct writes, %s commits seen on the stream;\n' \
    "$tps" "$lat" "$((h1 - h0))" "${written:-?}" "$seen"
  printf '  commit to invalidation: p50 <= %s s, p99 <= %s s (bucket bounds)\n' "$p50" "$p99"
  printf '  (before this case the stream took %s s to catch up with the writes of the cases above)\n' "$drained"
fi
echo
echo "The cache after the runs (SHOW CACHE):"
psql -h 127.0.0.1 -p "$cache_port" -U postgres -P pager=off -c "SHOW CACHE" pgopt
