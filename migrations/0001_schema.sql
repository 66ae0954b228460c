-- oddsfeed schema: events, their outcomes with the external price, bets, the pending-volume
-- aggregate kept by triggers, and the publisher's desired run state.

CREATE TABLE events (
    id                 text PRIMARY KEY CHECK (id <> ''),
    title              text NOT NULL,
    sport              text,
    league             text,
    team_a             text,
    team_b             text,
    is_esports         boolean NOT NULL DEFAULT false,
    -- ACTIVE events may be published; INACTIVE are hidden; RESOLVED are settled.
    status             text NOT NULL DEFAULT 'ACTIVE'
                       CHECK (status IN ('ACTIVE', 'INACTIVE', 'RESOLVED')),
    event_type         text NOT NULL DEFAULT 'upcoming'
                       CHECK (event_type IN ('live', 'upcoming', 'past')),
    game_status        text NOT NULL DEFAULT 'scheduled'
                       CHECK (game_status IN ('scheduled', 'in_progress', 'halftime', 'paused',
                                              'finished', 'cancelled', 'postponed')),
    live               boolean NOT NULL DEFAULT false,
    score              text,
    period             text,
    elapsed            text,
    start_time         timestamptz,
    -- External liquidity L of the hybrid formula; NULL means 1,000,000.
    -- PostgreSQL orders NaN above every number, so NaN and Infinity are excluded explicitly.
    external_liquidity double precision
                       CHECK (external_liquidity >= 0 AND external_liquidity < 'Infinity'),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- The active set is small next to the history; this keeps the tick's scan proportional to it.
CREATE INDEX events_active_idx ON events (live DESC, start_time, id)
    WHERE status = 'ACTIVE' AND event_type IN ('live', 'upcoming');

CREATE TABLE outcomes (
    event_id       text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    name           text NOT NULL CHECK (name <> ''),
    -- Display order within the event (HOME, DRAW, AWAY).
    position       smallint NOT NULL DEFAULT 0,
    -- External reference probability (e.g. a Polymarket price); NULL = no price (suspended).
    -- NaN fails this check because NaN > 1 in PostgreSQL.
    external_price double precision CHECK (external_price >= 0 AND external_price <= 1),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, name)
);

CREATE TABLE bets (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   text NOT NULL,
    outcome    text NOT NULL,
    user_id    text,
    amount     numeric(20, 2) NOT NULL CHECK (amount > 0),
    status     text NOT NULL DEFAULT 'PENDING'
               CHECK (status IN ('PENDING', 'WON', 'LOST', 'VOID', 'CASHED_OUT')),
    placed_at  timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    FOREIGN KEY (event_id, outcome) REFERENCES outcomes (event_id, name) ON DELETE CASCADE
);

CREATE INDEX bets_pending_idx ON bets (event_id, outcome) WHERE status = 'PENDING';

-- Pending volume per outcome, so a tick reads one row per outcome instead of summing all bets.
CREATE TABLE outcome_pending_volume (
    event_id text NOT NULL,
    outcome  text NOT NULL,
    amount   numeric(24, 2) NOT NULL DEFAULT 0 CHECK (amount >= 0),
    bets     integer NOT NULL DEFAULT 0 CHECK (bets >= 0),
    PRIMARY KEY (event_id, outcome),
    FOREIGN KEY (event_id, outcome) REFERENCES outcomes (event_id, name) ON DELETE CASCADE
);

CREATE FUNCTION bets_maintain_pending_volume() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'PENDING' THEN
        UPDATE outcome_pending_volume
           SET amount = amount - OLD.amount, bets = bets - 1
         WHERE event_id = OLD.event_id AND outcome = OLD.outcome;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'PENDING' THEN
        INSERT INTO outcome_pending_volume AS v (event_id, outcome, amount, bets)
        VALUES (NEW.event_id, NEW.outcome, NEW.amount, 1)
        ON CONFLICT (event_id, outcome)
        DO UPDATE SET amount = v.amount + EXCLUDED.amount, bets = v.bets + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER bets_pending_volume
AFTER INSERT OR DELETE OR UPDATE OF status, amount, event_id, outcome ON bets
FOR EACH ROW EXECUTE FUNCTION bets_maintain_pending_volume();

-- TRUNCATE bets bypasses row triggers: rebuild the aggregate afterwards with this function.
CREATE FUNCTION rebuild_outcome_pending_volume() RETURNS void
LANGUAGE sql AS $$
    DELETE FROM outcome_pending_volume;
    INSERT INTO outcome_pending_volume (event_id, outcome, amount, bets)
    SELECT event_id, outcome, sum(amount), count(*)
      FROM bets WHERE status = 'PENDING'
     GROUP BY event_id, outcome;
$$;

-- Wakes the publisher early when something it reads changes (the 500 ms tick stays the
-- backstop). Statement-level, and PostgreSQL folds identical notifications per transaction.
CREATE FUNCTION notify_odds_inputs_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('oddsfeed_changes', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER events_changed AFTER INSERT OR UPDATE OR DELETE ON events
FOR EACH STATEMENT EXECUTE FUNCTION notify_odds_inputs_changed();
CREATE TRIGGER outcomes_changed AFTER INSERT OR UPDATE OR DELETE ON outcomes
FOR EACH STATEMENT EXECUTE FUNCTION notify_odds_inputs_changed();
CREATE TRIGGER pending_volume_changed AFTER INSERT OR UPDATE OR DELETE ON outcome_pending_volume
FOR EACH STATEMENT EXECUTE FUNCTION notify_odds_inputs_changed();

-- What operators asked the publisher to do (POST/DELETE /api/sports/ws-publisher), per odds
-- channel. Kept here, not in a process, so it survives restarts and fail-over.
CREATE TABLE publisher_control (
    channel    text PRIMARY KEY,
    desired    text NOT NULL CHECK (desired IN ('running', 'stopped')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text
);
