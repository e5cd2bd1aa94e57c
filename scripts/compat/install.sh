#!/usr/bin/env bash
# Installs the client drivers of the compatibility check (check.py, check.js):
#   psycopg 3 and asyncpg (requirements.txt) into a virtualenv at target/compat-venv,
#   node-postgres (package-lock.json) into scripts/compat/node_modules.
# Idempotent and quick when both are up to date (stamp files hold the inputs they were
# installed from). Safe to run from parallel test processes: one runs at a time.
# As root on a fresh Debian/Ubuntu it apt-get installs python3-venv, nodejs and npm
# when they are missing; otherwise it prints the apt-get line and fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/compat-venv"

mkdir -p "$root/target"
exec 9>"$root/target/compat-install.lock"
flock 9

apt_install() {
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "$@" >&2
  else
    echo "missing packages; install them with:" >&2
    echo "  sudo apt-get install -y $*" >&2
    exit 1
  fi
}

# psycopg 3 and asyncpg in target/compat-venv.
stamp="$venv/.pgopt-requirements.txt"
if ! { [ -x "$venv/bin/python" ] && cmp -s "$here/requirements.txt" "$stamp" \
       && "$venv/bin/python" -c 'import psycopg, asyncpg' 2>/dev/null; }; then
  echo "==> installing psycopg and asyncpg into $venv" >&2
  make_venv() { rm -rf "$venv" && python3 -m venv "$venv" >/dev/null 2>&1; }
  # Debian's python3 makes virtualenvs only with python3-venv (ensurepip's wheels).
  if ! command -v python3 >/dev/null || ! make_venv; then
    apt_install python3-venv
    make_venv || { python3 -m venv "$venv"; exit 1; }
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$stamp"
fi

# node-postgres in scripts/compat/node_modules, exactly as package-lock.json says.
stamp="$here/node_modules/.pgopt-package-lock.json"
if ! { cmp -s "$here/package-lock.json" "$stamp" && [ -d "$here/node_modules/pg" ]; }; then
  echo "==> installing node-postgres into $here/node_modules" >&2
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$here/package-lock.json" "$stamp"
fi
