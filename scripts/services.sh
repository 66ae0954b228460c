#!/usr/bin/env bash
# Makes sure this machine has what oddsfeed needs, installing and starting it when missing:
# PostgreSQL and Redis on loopback, their command-line clients, and a Rust toolchain check;
# with ODDSFEED_TEST_TOOLS=1 (test.sh) also what the tests drive (Prometheus, nginx, Node.js,
# Chromium...). Safe to run again: it changes nothing that is already in place. Sourced by
# quickstart.sh and test.sh; it exports PG_ADMIN_URL (a superuser URL without a database
# name) and REDIS_URL.
set -euo pipefail

log() { printf '\033[1m[oddsfeed]\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_packages=()
command -v psql >/dev/null 2>&1 || need_packages+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_packages+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_packages+=(redis-tools)
command -v curl >/dev/null 2>&1 || need_packages+=(curl)
command -v cc >/dev/null 2>&1 || need_packages+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_packages+=(pkg-config)
# `make` builds jemalloc.
command -v make >/dev/null 2>&1 || need_packages+=(make)
if [ "${ODDSFEED_TEST_TOOLS:-0}" = 1 ]; then
  # For the tests: the dashboards are checked against a real Prometheus, wss through a real
  # nginx, the units with systemd-analyze, the board in Chromium, the clients under Node.js.
  command -v prometheus >/dev/null 2>&1 || need_packages+=(prometheus)
  command -v nginx >/dev/null 2>&1 || need_packages+=(nginx)
  command -v systemd-analyze >/dev/null 2>&1 || need_packages+=(systemd)
  command -v node >/dev/null 2>&1 || need_packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || need_packages+=(npm)
  command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
  # `ss` shows the listen backlog in the connection-lifecycle tests.
  command -v ss >/dev/null 2>&1 || need_packages+=(iproute2)
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    need_packages+=(docker-compose)
  fi
fi
if [ ${#need_packages[@]} -gt 0 ]; then
  apt_install "${need_packages[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { log "cargo is missing: install Rust 1.94 or newer (rustup) and run again"; exit 1; }

# PostgreSQL on 127.0.0.1:5432.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version main"; then
    log "creating PostgreSQL $version cluster"
    as_root pg_createcluster "$version" main >/dev/null
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main start
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; exit 1; }
fi

# A superuser that can log in over TCP: trust auth (as on the dev machines) needs nothing; a
# stock Debian install asks for a password, so give the postgres role a known local one.
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432}
if ! psql "$PG_ADMIN_URL/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1; then
  log "setting a local password for the postgres role"
  as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
  psql "$PG_ADMIN_URL/postgres" -Atqc 'SELECT 1' >/dev/null || { log "cannot log in to PostgreSQL as $PG_ADMIN_URL"; exit 1; }
fi
export PG_ADMIN_URL

# Redis on 127.0.0.1:6379.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/oddsfeed.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "Redis did not start"; exit 1; }
fi
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

# Builds go outside the checkout so that clean clones (CI) reuse them.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/oddsfeed-target}
