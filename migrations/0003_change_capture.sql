-- Change capture: which events changed since the publisher last looked.
--
-- Every write that can change what an event publishes (the event's row, its outcomes, its
-- pending volume, which bets move) appends the event's id here, in the writer's own
-- transaction. The publisher consumes rows with DELETE ... RETURNING inside the transaction
-- that publishes them, and commits only after the message is in Redis: a publisher that dies
-- in between rolls back, and the rows are there for the next leader. Rows of a transaction
-- still running are invisible to the DELETE and stay for the next tick, so nothing is missed
-- whatever the commit order.
--
-- Append-only on purpose: no unique key, so a writer never waits for the publisher (or for
-- another writer) on this table. Ids repeat; the publisher reads each event once per tick.
CREATE TABLE event_changes (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text NOT NULL
);

-- Every row is deleted within a tick of being written: vacuum after a few thousand dead rows
-- rather than after a fifth of the table, so the consuming index scan does not step over a
-- growing tail of dead entries. (The publisher also vacuums it at each full resync, for
-- servers that run without autovacuum.)
ALTER TABLE event_changes SET (autovacuum_vacuum_scale_factor = 0,
                               autovacuum_vacuum_threshold = 5000,
                               autovacuum_analyze_scale_factor = 0,
                               autovacuum_analyze_threshold = 5000);

CREATE FUNCTION record_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO event_changes (event_id) VALUES (OLD.id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id) THEN
        INSERT INTO event_changes (event_id) VALUES (NEW.id);
    END IF;
    RETURN NULL;
END
$$;

-- The same for tables that name their event in an event_id column.
CREATE FUNCTION record_event_id_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO event_changes (event_id) VALUES (OLD.event_id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.event_id IS DISTINCT FROM OLD.event_id) THEN
        INSERT INTO event_changes (event_id) VALUES (NEW.event_id);
    END IF;
    RETURN NULL;
END
$$;

-- An UPDATE that changes nothing (a bulk "touch") records nothing.
CREATE TRIGGER events_record_change
AFTER INSERT OR DELETE ON events
FOR EACH ROW EXECUTE FUNCTION record_event_change();
CREATE TRIGGER events_record_update
AFTER UPDATE ON events
FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION record_event_change();

CREATE TRIGGER outcomes_record_change
AFTER INSERT OR DELETE ON outcomes
FOR EACH ROW EXECUTE FUNCTION record_event_id_change();
CREATE TRIGGER outcomes_record_update
AFTER UPDATE ON outcomes
FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION record_event_id_change();

-- Bets reach the odds through this aggregate (kept by the trigger on bets), so a bet placed,
-- settled or voided is recorded here, once per outcome it moves.
CREATE TRIGGER pending_volume_record_change
AFTER INSERT OR DELETE ON outcome_pending_volume
FOR EACH ROW EXECUTE FUNCTION record_event_id_change();
CREATE TRIGGER pending_volume_record_update
AFTER UPDATE ON outcome_pending_volume
FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION record_event_id_change();
