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
cat >&2 <<MSG

  oddsfeed is starting on port $port with the demo simulator.

  Open http://localhost:$port/ for the live odds board. In another terminal:

    redis-cli SUBSCRIBE ${ODDS_CHANNEL:-sports-odds}                  # the odds stream
    curl -s localhost:$port/api/sports/ws-publisher                  # publisher status
    curl -s -X DELETE localhost:$port/api/sports/ws-publisher        # stop publishing
    curl -s -X POST localhost:$port/api/sports/ws-publisher          # start again
    curl -s localhost:$port/health                                   # health
    curl -s localhost:$port/metrics | grep oddsfeed_                 # Prometheus metrics
    websocat ws://localhost:$port/ws                                 # a WebSocket client, then type:
      {"type":"subscribe","room":"sport:football"}
    (websocat is not in Debian: any WebSocket client does, e.g. npx wscat -c ws://localhost:$port/ws)

  Ctrl-C stops it.

MSG
exec "$bin" serve --simulate
