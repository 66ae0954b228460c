-- Changed events for an existing Prisma-style schema ("Event", "Bet") whose models have an
-- `updatedAt DateTime @updatedAt` field. Select it with
-- CHANGED_EVENTS_SQL=sql/prisma/changed_events.sql next to ACTIVE_EVENTS_SQL=sql/prisma/active_events.sql.
--
-- $1 is the database clock when the previous read began. An event counts as changed when its
-- row or one of its bets was updated since then, minus an overlap of 2 seconds for write
-- transactions still running at that instant and for the application's clock (Prisma sets
-- `updatedAt` itself): lengthen it if your writes take longer or your clocks drift more.
-- What falls outside it, and rows deleted outright (they leave no `updatedAt` behind), is
-- caught by the full read every FULL_RESYNC_INTERVAL_MS and counted there.
--
-- Columns: those of active_events.sql plus `active`, which must be true exactly when
-- active_events.sql would return the event (its WHERE clause, below). Indexes on
-- "Event" ("updatedAt") and "Bet" ("updatedAt") keep the cost at what changed.
WITH changed AS (
    SELECT e.id FROM "Event" e WHERE e."updatedAt" >= $1::timestamptz - interval '2 seconds'
    UNION
    SELECT b."eventId" FROM "Bet" b WHERE b."updatedAt" >= $1::timestamptz - interval '2 seconds'
), state AS (
    SELECT e.*,
           COALESCE(e.status::text = 'ACTIVE'
                AND ((e.sport IS NOT NULL AND btrim(e.sport::text) <> '') OR COALESCE(e."isEsports", false))
                AND e."eventType"::text IN ('live', 'upcoming')
                AND COALESCE(e."gameStatus"::text, '') NOT IN ('finished', 'cancelled')
                AND e."teamA" IS NOT NULL AND btrim(e."teamA"::text) NOT IN ('', 'Team A', 'Team B')
                AND e."teamB" IS NOT NULL AND btrim(e."teamB"::text) NOT IN ('', 'Team A', 'Team B'),
                false) AS active
      FROM changed c
      JOIN "Event" e ON e.id = c.id
), volume AS (
    SELECT b."eventId"                                   AS event_id,
           b.option::text                                AS outcome,
           CASE WHEN min(b.amount) < 0 THEN -1
                ELSE sum(b.amount) END::float8           AS amount
      FROM "Bet" b
      JOIN state s ON s.id = b."eventId" AND s.active
     WHERE b.status::text = 'PENDING'
     GROUP BY b."eventId", b.option::text
)
SELECT s.id::text                          AS event_id,
       s.title::text                       AS title,
       s.sport::text                       AS sport,
       s.league::text                      AS league,
       s."teamA"::text                     AS team_a,
       s."teamB"::text                     AS team_b,
       COALESCE(s."isEsports", false)      AS is_esports,
       COALESCE(s.live, false)             AS live,
       s."gameStatus"::text                AS game_status,
       s.score::text                       AS score,
       s.period::text                      AS period,
       s.elapsed::text                     AS elapsed,
       s."startTime"                       AS start_time,
       s."externalVolume"::float8          AS liquidity,
       o.name                              AS outcome_name,
       o.price                             AS outcome_price,
       COALESCE(v.amount, 0)::float8       AS pending_volume,
       s.active
  FROM state s
  LEFT JOIN LATERAL (VALUES ('YES', s."yesOdds"::float8, 0),
                            ('NO',  s."noOdds"::float8,  1)) AS o (name, price, position)
         ON s.active
  LEFT JOIN volume v ON v.event_id = s.id AND v.outcome = o.name
 ORDER BY COALESCE(s.live, false) DESC, s."startTime" ASC NULLS LAST, s.id, o.position
