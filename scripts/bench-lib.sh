# Shared by the benchmark scripts (sourced, not run): a free port, a process's CPU
# time, one pgbench run with the proxy's CPU per transaction, ratios.
# a throwaway PostgreSQL.
# Needs: $bindir (PostgreSQL binaries), $secs (seconds per run).
# pgbench connects to $bench_host: 127.0.0.1, or a directory of Unix-domain sockets.
bench_host=${bench_host:-127.0.0.1}

# client_tools: $python, the compat venv's (psycopg and the other drivers, installed by
# scripts/compat/install.sh: PyPI the first time), and $PGOPT_BIN, the pgopt measured —
# as given, else a release build of this tree.
client_tools() {
  scripts/compat/install.sh >/dev/null
  python=target/compat-venv/bin/python
  if [ -z "${PGOPT_BIN:-}" ]; then
    cargo build --release -q -p pgopt-cli
    PGOPT_BIN=target/release/pgopt
  fi
}

# Run as root, PostgreSQL runs as postgres.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); fi

# start_pg DIR PORT SCALE [SETTING…]: a throwaway cluster in DIR/data (log DIR/pg.log) on
# 127.0.0.1:PORT with fsync off, and pgbench's tables at SCALE; each SETTING is more
# `-c name=value` for the server. stop_pg DIR stops it.
start_pg() {
  local dir=$1 port=$2 scale=$3; shift 3
  [ ${#as_pg[@]} -gt 0 ] && chown postgres "$dir"
  "${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w start -o \
    "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=300 -c fsync=off -c shared_buffers=256MB $*" >/dev/null
  "$bindir/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
}
stop_pg() { "${as_pg[@]}" "$bindir/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true; }

# bench_sockets DIR PG_PORT: how pgbench and the proxies connect. With BENCH_SOCKETS=unix
# every hop is a Unix-domain socket in DIR (PostgreSQL's is there, see start_pg; the
# proxies put theirs next to it); else TCP on 127.0.0.1. Sets bench_host, socket_dir
# (empty for TCP), server_host (how a proxy names PostgreSQL) and upstream (pgopt's URL).
bench_sockets() {
  socket_dir=; server_host=127.0.0.1
  upstream="postgres://postgres@127.0.0.1:$2/postgres"
  if [ "${BENCH_SOCKETS:-tcp}" = unix ]; then
    socket_dir=$1; server_host=$1; bench_host=$1
    upstream="postgres://postgres@/postgres?host=$1&port=$2"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ticks=$(getconf CLK_TCK)

# pgbouncer_config DIR PG_PORT LISTEN_PORT POOL_SIZE [SERVER_HOST [SOCKET_DIR]]:
# DIR/pgbouncer.ini (transaction mode, trust, database postgres on SERVER_HOST, by default
# 127.0.0.1, port PG_PORT; a Unix-domain socket in SOCKET_DIR too when given) and its
# users.txt, readable by PgBouncer's user.
pgbouncer_config() {
  cat > "$1/pgbouncer.ini" <<INI
[databases]
postgres = host=${5:-127.0.0.1} port=$2 dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $3
unix_socket_dir = ${6:-}
auth_type = trust
auth_file = $1/users.txt
pool_mode = transaction
default_pool_size = $4
max_client_conn = 10000
logfile = $1/pgbouncer.log
pidfile = $1/pgbouncer.pid
INI
  echo '"postgres" ""' > "$1/users.txt"
  chmod a+r "$1"/pgbouncer.ini "$1"/users.txt
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run TARGET_PORT PID_OR_EMPTY PGBENCH_ARGS... → "tps latency_ms cpu_us_per_txn"
# With P99=1: "tps latency_ms cpu_us_per_txn p99_latency_ms", the p99 from pgbench's
# per-transaction log of a 10% sample (logging every transaction would cost pgbench
# CPU that the targets then lack).
run() {
  local port=$1 pid=$2; shift 2
  local before=0 after=0 out logs=() p99=
  if [ "${P99:-0}" = 1 ]; then
    logs=(-l --sampling-rate 0.1 --log-prefix "$(mktemp -d /tmp/pgopt-bench-log-XXXXXX)/tx")
  fi
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$("$bindir/pgbench" -n -T "$secs" -h "$bench_host" -p "$port" -U postgres "${logs[@]}" "$@" postgres 2>&1) || true
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  if [ ${#logs[@]} -gt 0 ]; then
    local dir; dir=$(dirname "${logs[4]}")
    # Field 3 of each line: the transaction's latency in µs.
    p99=$(cat "$dir"/tx* 2>/dev/null | awk '{print $3}' | sort -n |
      awk '{v[NR] = $1} END {
        i = int(0.99 * NR); if (i < 0.99 * NR) i++   # nearest rank
        if (NR) printf "%.2f", v[i] / 1000; else print "-" }')
    rm -rf "$dir"
  fi
  local tps lat txns
  tps=$(awk -F'= ' '/^tps/ {split($2,a," "); print a[1]}' <<<"$out")
  lat=$(awk -F'= ' '/^latency average/ {split($2,a," "); print a[1]}' <<<"$out")
  txns=$(awk -F': ' '/actually processed/ {split($2,a,"/"); print a[1]}' <<<"$out")
  if [ -z "$tps" ] || [ -z "$txns" ] || [ "$txns" = 0 ]; then echo "failed failed - ${p99:+-}"; return; fi
  local cpu=-
  if [ -n "$pid" ]; then
    cpu=$(awk -v t=$((after - before)) -v hz="$ticks" -v n="$txns" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  fi
  echo "$tps $lat $cpu${p99:+ $p99}"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "-" }'; }
whole() { case "$1" in n/a|failed) echo "$1" ;; *) printf '%.0f' "$1" ;; esac; }

# CPU ticks of a PostgreSQL cluster (DATADIR): the postmaster with its waited-for
# children (fields 16-17), plus its live children (backends, walwriter…).
pg_ticks() {
  local pm
  pm=$(head -1 "$1/postmaster.pid")
  { awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
    for p in $(pgrep -P "$pm"); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done
  } | awk '{s += $1} END {print s + 0}'
}

# run_total TARGET_PORT PROXY_PID DATADIR PGBENCH_ARGS...
#   → "tps latency_ms proxy_cpu_us_per_txn total_cpu_us_per_txn"
# total: the proxy, PostgreSQL and pgbench itself, all the CPU a transaction costs
# this machine. When the CPU is the bottleneck, TPS follows its inverse.
run_total() {
  local port=$1 pid=$2 data=$3; shift 3
  local p0 g0 p1 g1 out tps lat txns
  p0=$(cpu_ticks "$pid"); g0=$(pg_ticks "$data")
  out=$(/usr/bin/time -f 'pgbench-cpu %U %S' "$bindir/pgbench" -n -T "$secs" -h "$bench_host" -p "$port" -U postgres "$@" postgres 2>&1) || true
  p1=$(cpu_ticks "$pid"); g1=$(pg_ticks "$data")
  tps=$(awk -F'= ' '/^tps/ {split($2,a," "); print a[1]}' <<<"$out")
  lat=$(awk -F'= ' '/^latency average/ {split($2,a," "); print a[1]}' <<<"$out")
  txns=$(awk -F': ' '/actually processed/ {split($2,a,"/"); print a[1]}' <<<"$out")
  if [ -z "$tps" ] || [ -z "$txns" ] || [ "$txns" = 0 ]; then echo "failed failed - -"; return; fi
  awk -v tps="$tps" -v lat="$lat" -v p=$((p1 - p0)) -v g=$((g1 - g0)) -v hz="$ticks" -v n="$txns" \
    -v b="$(awk '/^pgbench-cpu/ {print $2 + $3}' <<<"$out")" \
    'BEGIN {printf "%s %s %.1f %.1f\n", tps, lat, p / hz * 1e6 / n, ((p + g) / hz + b) * 1e6 / n}'
}
