#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with -D warnings, and the whole
# workspace's tests with cargo nextest against real PostgreSQL and Redis servers.
#
# On a fresh machine, run as root, it first installs what is missing with apt-get.
# Not root and something missing: it prints the exact apt-get line and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
need_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || packages+=("$1"); }

pg_major=15
need_pkg "postgresql-$pg_major"          # initdb/postgres for the embedded servers
need_pkg "postgresql-$pg_major-hypopg"   # hypothetical indexes (advisor)
need_pkg "postgresql-$pg_major-pg-qualstats"
need_pkg redis-server                    # L2 cache tests
need_pkg pgbouncer                       # side-by-side benchmarks
need_pkg libclang-dev                    # pg_query's build (bindgen)
need_pkg openssl                         # certificates for the TLS tests

missing=("${packages[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing packages; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> client drivers for the compatibility tests (psycopg, node-postgres)"
scripts/compat/install.sh
echo "==> cargo nextest run"
cargo nextest run --workspace --locked --no-fail-fast
echo "==> doc tests (nextest does not run them)"
cargo test --workspace --locked --doc
