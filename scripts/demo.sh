#!/usr/bin/env bash
# Runs `pgopt demo` (an embedded throwaway PostgreSQL, sample data and a workload
# through the proxy) from a fresh machine: as root it first installs what the build and
# the demo need with apt-get; not root and something missing, it prints the apt-get line
# and fails. Arguments go to `pgopt demo` (e.g. --scale 0.5; --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh   # ensure_packages, demo_packages
ensure_packages "${demo_packages[@]}"
exec cargo run --release -- demo "$@"
