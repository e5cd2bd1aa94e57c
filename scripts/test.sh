#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with -D warnings, and the whole
# workspace's tests with cargo nextest against real PostgreSQL and Redis servers.
#
# On a fresh machine, run as root, it first installs what is missing with apt-get.
# Not root and something missing: it prints the exact apt-get line and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/deps.sh   # ensure_packages, demo_packages
# What the demo needs, and: redis-server for the L2 cache tests, pgbouncer for the
# side-by-side benchmarks, openssl for the TLS tests' certificates.
ensure_packages "${demo_packages[@]}" redis-server pgbouncer openssl

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
