-- A NaN bet amount must not poison an outcome for good.
--
-- PostgreSQL orders numeric NaN above every number, so CHECK (amount > 0) lets 'NaN' through.
-- New rows are refused outright (NOT VALID leaves rows written before this migration alone;
-- they are handled by the trigger below).
ALTER TABLE bets ADD CONSTRAINT bets_amount_is_a_number CHECK (amount <> 'NaN') NOT VALID;

-- NaN − NaN is NaN: when a NaN amount leaves the pending aggregate (the bet is settled, voided
-- or deleted), subtracting it would leave the outcome at NaN with no bets behind it, and its
-- event suspended until someone rebuilt the aggregate by hand. An aggregate that is NaN after
-- a bet leaves is therefore counted again from the outcome's pending bets.
CREATE OR REPLACE FUNCTION bets_maintain_pending_volume() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'PENDING' THEN
        UPDATE outcome_pending_volume
           SET amount = amount - OLD.amount, bets = bets - 1
         WHERE event_id = OLD.event_id AND outcome = OLD.outcome;
        -- NEW (still in bets after an UPDATE) is added back below, so it is left out here.
        UPDATE outcome_pending_volume v
           SET (amount, bets) = (SELECT COALESCE(sum(b.amount), 0), count(*)
                                   FROM bets b
                                  WHERE b.event_id = v.event_id AND b.outcome = v.outcome
                                    AND b.status = 'PENDING'
                                    AND (TG_OP = 'DELETE' OR b.id <> NEW.id))
         WHERE v.event_id = OLD.event_id AND v.outcome = OLD.outcome AND v.amount = 'NaN';
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

-- The rebuild skips nothing: a NaN amount still pending keeps its outcome suspended (bad_volume)
-- until it is settled, which is what the operator should see.
