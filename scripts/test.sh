#!/usr/bin/env bash
# The test command: formatting, lints, then every test against real PostgreSQL and Redis.
#   scripts/test.sh            everything
#   scripts/test.sh failover   the tests of tests/failover.rs (a word naming a file in tests/)
#   scripts/test.sh leader     the tests whose name contains `leader` (any other word)
# Arguments go to scripts/cargo-test.sh, which says so when a filter runs no test.
set -euo pipefail
cd "$(dirname "$0")/.."
ODDSFEED_TEST_TOOLS=1
. scripts/services.sh

export TEST_DATABASE_URL=${TEST_DATABASE_URL:-$PG_ADMIN_URL}
export TEST_REDIS_URL=${TEST_REDIS_URL:-$REDIS_URL}

# Databases left by interrupted runs (tests drop their own when they finish).
for db in $(psql "$PG_ADMIN_URL/postgres" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'oddsfeed\_t\_%'"); do
  psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
done

log "npm ci (web/: the JavaScript client's test dependencies)"
(cd web && npm ci --no-audit --no-fund --loglevel=error)

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test"
bash scripts/cargo-test.sh "$@"
