-- Active events for an existing Prisma-style schema ("Event", "Bet"), one row per outcome.
-- Select it with ACTIVE_EVENTS_SQL=sql/prisma/active_events.sql. Same result columns as
-- sql/active_events.sql (documented in sql/README.md).
--
-- Mapping:
--   outcomes        YES and NO, with "yesOdds" / "noOdds" as the external prices
--   liquidity       "externalVolume" (NULL means 1,000,000)
--   pending_volume  sum of "Bet".amount with status 'PENDING', grouped by option; a negative
--                   amount marks the outcome's volume as -1 so the event is suspended
--   start_time      "startTime" as it is: Prisma's DateTime is timestamp(3) (read as UTC) or,
--                   with @db.Timestamptz, timestamptz; both are read correctly
--   types           ids of any type (text, uuid, Int) are read as text; Float or Decimal
--                   prices, volumes and amounts as numbers; enum columns are compared as text
--
-- Bets are summed only for active events, so the cost follows the active set; an index on
-- "Bet" ("eventId") keeps it so.
WITH active AS (
    SELECT e.*
      FROM "Event" e
     WHERE e.status::text = 'ACTIVE'
       AND ((e.sport IS NOT NULL AND btrim(e.sport::text) <> '') OR COALESCE(e."isEsports", false))
       AND e."eventType"::text IN ('live', 'upcoming')
       AND COALESCE(e."gameStatus"::text, '') NOT IN ('finished', 'cancelled')
       AND e."teamA" IS NOT NULL AND btrim(e."teamA"::text) NOT IN ('', 'Team A', 'Team B')
       AND e."teamB" IS NOT NULL AND btrim(e."teamB"::text) NOT IN ('', 'Team A', 'Team B')
), volume AS (
    SELECT b."eventId"                                   AS event_id,
           b.option::text                                AS outcome,
           CASE WHEN min(b.amount) < 0 THEN -1
                ELSE sum(b.amount) END::float8           AS amount
      FROM "Bet" b
      JOIN active a ON a.id = b."eventId"
     WHERE b.status::text = 'PENDING'
     GROUP BY b."eventId", b.option::text
)
SELECT a.id::text                          AS event_id,
       a.title::text                       AS title,
       a.sport::text                       AS sport,
       a.league::text                      AS league,
       a."teamA"::text                     AS team_a,
       a."teamB"::text                     AS team_b,
       COALESCE(a."isEsports", false)      AS is_esports,
       COALESCE(a.live, false)             AS live,
       a."gameStatus"::text                AS game_status,
       a.score::text                       AS score,
       a.period::text                      AS period,
       a.elapsed::text                     AS elapsed,
       a."startTime"                       AS start_time,
       a."externalVolume"::float8          AS liquidity,
       o.name                              AS outcome_name,
       o.price                             AS outcome_price,
       COALESCE(v.amount, 0)::float8       AS pending_volume
  FROM active a
 CROSS JOIN LATERAL (VALUES ('YES', a."yesOdds"::float8, 0),
                            ('NO',  a."noOdds"::float8,  1)) AS o (name, price, position)
  LEFT JOIN volume v ON v.event_id = a.id AND v.outcome = o.name
 ORDER BY COALESCE(a.live, false) DESC, a."startTime" ASC NULLS LAST, a.id, o.position
