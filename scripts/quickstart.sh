#!/usr/bin/env bash
# From a fresh machine to moving odds: installs and starts PostgreSQL and Redis if needed,
# builds oddsfeed, migrates, seeds demo data, and runs `oddsfeed serve --simulate`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

DB_NAME=${DB_NAME:-oddsfeed}
export DATABASE_URL=${DATABASE_URL:-$PG_ADMIN_URL/$DB_NAME}
if [ "$DATABASE_URL" = "$PG_ADMIN_URL/$DB_NAME" ] &&
   [ -z "$(psql "$PG_ADMIN_URL/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]; then
  log "creating database $DB_NAME"
  psql "$PG_ADMIN_URL/postgres" -qc "CREATE DATABASE $DB_NAME"
fi

log "building (release)"
cargo build --release --locked
bin="$CARGO_TARGET_DIR/release/oddsfeed"
"$bin" migrate
"$bin" seed

port=${LISTEN_ADDR:-0.0.0.0:3001}; port=${port##*:}
api=localhost:$port/api/sports/ws-publisher
# A command and what it does, the comments in one column whatever the port and channel.
line() { printf '    %-58s # %s\n' "$1" "$2" >&2; }
printf '\n  oddsfeed is starting on port %s with the demo simulator.\n\n' "$port" >&2
printf '  Open http://localhost:%s/ for the live odds board. In another terminal:\n\n' "$port" >&2
line "redis-cli SUBSCRIBE ${ODDS_CHANNEL:-sports-odds}" "the odds stream"
line "curl -s $api" "publisher status"
line "curl -s -X DELETE $api" "stop publishing"
line "curl -s -X POST $api" "start again"
line "curl -s localhost:$port/health" "health"
line "curl -s localhost:$port/metrics | grep oddsfeed_" "Prometheus metrics"
line "websocat ws://localhost:$port/ws" "a WebSocket client, then type:"
cat >&2 <<MSG
      {"type":"subscribe","room":"sport:football"}
    (websocat is not in Debian: any WebSocket client does, e.g. npx wscat -c ws://localhost:$port/ws)

  Ctrl-C stops it.

MSG
exec "$bin" serve --simulate
