-- Changed events for the oddsfeed schema (migrations/): consumes the change log and returns,
-- for each event named in it, the columns of sql/active_events.sql plus `active`.
--
-- The publisher runs this inside the transaction that publishes the result and commits only
-- after the message is in Redis (sql/README.md, "Incremental ticks"). At most 5,000 log rows
-- are consumed per tick, oldest first; a longer log is read over the next ticks.
--
-- `active` must be true exactly when sql/active_events.sql would return the event: the
-- predicate below is that query's WHERE clause. Events that are inactive or deleted come back
-- as one row with active = false and the other columns NULL.
WITH consumed AS (
    DELETE FROM event_changes
     WHERE id = ANY (ARRAY(SELECT id FROM event_changes ORDER BY id LIMIT 5000))
 RETURNING event_id
), changed AS (
    SELECT DISTINCT event_id FROM consumed
), state AS (
    SELECT c.event_id,
           e.*,
           COALESCE(e.status = 'ACTIVE'
                AND ((e.sport IS NOT NULL AND btrim(e.sport) <> '') OR e.is_esports)
                AND e.event_type IN ('live', 'upcoming')
                AND e.game_status NOT IN ('finished', 'cancelled')
                AND e.team_a IS NOT NULL AND btrim(e.team_a) NOT IN ('', 'Team A', 'Team B')
                AND e.team_b IS NOT NULL AND btrim(e.team_b) NOT IN ('', 'Team A', 'Team B'),
                false) AS active
      FROM changed c
      LEFT JOIN events e ON e.id = c.event_id
)
SELECT s.event_id,
       s.title,
       s.sport,
       s.league,
       s.team_a,
       s.team_b,
       s.is_esports,
       s.live,
       s.game_status,
       s.score,
       s.period,
       s.elapsed,
       s.start_time,
       s.external_liquidity          AS liquidity,
       o.name                        AS outcome_name,
       o.external_price              AS outcome_price,
       COALESCE(v.amount, 0)::float8 AS pending_volume,
       s.active
  FROM state s
  LEFT JOIN outcomes o
         ON s.active AND o.event_id = s.event_id
  LEFT JOIN outcome_pending_volume v
         ON v.event_id = o.event_id AND v.outcome = o.name
 ORDER BY s.live DESC, s.start_time ASC NULLS LAST, s.event_id, o.position, o.name
