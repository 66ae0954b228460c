-- Active events for the oddsfeed schema (migrations/), one row per outcome.
--
-- Result columns (see sql/README.md; an operator query must return the same names and types):
--   event_id text, title text, sport text, league text, team_a text, team_b text,
--   is_esports bool, live bool, game_status text, score text, period text, elapsed text,
--   start_time timestamptz, liquidity float8,
--   outcome_name text, outcome_price float8, pending_volume float8
-- Rows of one event must be adjacent; events in publishing order (live first, then start time).
SELECT e.id                         AS event_id,
       e.title,
       e.sport,
       e.league,
       e.team_a,
       e.team_b,
       e.is_esports,
       e.live,
       e.game_status,
       e.score,
       e.period,
       e.elapsed,
       e.start_time,
       e.external_liquidity         AS liquidity,
       o.name                       AS outcome_name,
       o.external_price             AS outcome_price,
       COALESCE(v.amount, 0)::float8 AS pending_volume
  FROM events e
  LEFT JOIN outcomes o
         ON o.event_id = e.id
  LEFT JOIN outcome_pending_volume v
         ON v.event_id = o.event_id AND v.outcome = o.name
 WHERE e.status = 'ACTIVE'
   AND ((e.sport IS NOT NULL AND btrim(e.sport) <> '') OR e.is_esports)
   AND e.event_type IN ('live', 'upcoming')
   AND e.game_status NOT IN ('finished', 'cancelled')
   AND e.team_a IS NOT NULL AND btrim(e.team_a) NOT IN ('', 'Team A', 'Team B')
   AND e.team_b IS NOT NULL AND btrim(e.team_b) NOT IN ('', 'Team A', 'Team B')
 ORDER BY e.live DESC, e.start_time ASC NULLS LAST, e.id, o.position, o.name
