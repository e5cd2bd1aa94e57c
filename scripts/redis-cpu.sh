#!/usr/bin/env bash
# Redis' CPU per pgopt transaction with the result cache on Redis: for each pgopt build
# given (rounds alternate between them), a 10 s pgbench run through one cached pgopt
# (scripts/profile-proxy.sh), and the CPU time redis-server spent over it, read from
# /proc, divided by the transactions done. A redis-server on REDIS_PORT (16399) is
# started if none listens there.
#
# usage: [MODE=tpcb|simple|...] [ROUNDS=3] scripts/redis-cpu.sh BIN...
set -euo pipefail
cd "$(dirname "$0")/.."
port=${REDIS_PORT:-16399}
if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
  redis-server --port "$port" --save "" --appendonly no --daemonize yes >/dev/null
  sleep 0.5
fi
pid=$(pgrep -f "redis-server \*:$port" | head -1)
config=$(mktemp /tmp/pgopt-redis-cpu-XXXXXX.toml)
trap 'rm -f "$config"' EXIT
cat > "$config" <<TOML
[insight]
enabled = true
[cache]
enabled = true
tables = ["pgbench_accounts"]
ttl = "10m"
[cache.redis]
url = "redis://127.0.0.1:$port"
prefix = "b:"
TOML
ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
for round in $(seq "${ROUNDS:-3}"); do
  for bin in "$@"; do
    redis-cli -p "$port" flushall >/dev/null
    a=$(ticks)
    out=$(PGOPT_BIN=$bin PGOPT_CONFIG=$config scripts/profile-proxy.sh "${MODE:-tpcb}" 16 10 none 2>&1)
    b=$(ticks)
    tx=$(echo "$out" | grep -o '([0-9]* transactions)' | grep -o '[0-9]*')
    echo "round $round $(basename "$bin"): Redis $(( (b - a) * 1000000 / hz / tx )) µs CPU per transaction | $(echo "$out" | tail -1)"
  done
done
