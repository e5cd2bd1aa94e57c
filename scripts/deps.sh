# Sourced by test.sh and demo.sh: `ensure_packages PKG…` installs the Debian packages
# that are missing with apt-get when run as root; otherwise it prints the exact
# apt-get line and exits 1. `ensure_packages` with no arguments checks nothing.
pg_major=15

ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
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
}

# What building pgopt and running its demo need: initdb/postgres for the embedded
# servers, the extensions the advisor uses when present, and a C compiler and libclang
# for pg_query's build (cc, bindgen).
demo_packages=(
  "postgresql-$pg_major"
  "postgresql-$pg_major-hypopg"
  "postgresql-$pg_major-pg-qualstats"
  gcc
  libclang-dev
)
