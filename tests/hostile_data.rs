//! Schemas and rows we did not write: Prisma column styles, hostile rows from an operator's
//! query, NaN bet amounts. Real PostgreSQL, real Redis, the real binary.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn prisma_sql() -> String {
    format!(
        "{}/sql/prisma/active_events.sql",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A Prisma-style schema with the given column types, two events and bets.
fn prisma_schema(id_type: &str, start_type: &str, number_type: &str) -> String {
    format!(
        r#"
CREATE TYPE "EventStatus" AS ENUM ('ACTIVE', 'RESOLVED');
CREATE TYPE "BetOption" AS ENUM ('YES', 'NO');
CREATE TABLE "Event" (
  id {id_type} PRIMARY KEY, title varchar(191) NOT NULL, sport varchar(191), league text,
  "teamA" text, "teamB" text, "isEsports" boolean NOT NULL DEFAULT false,
  status "EventStatus" NOT NULL DEFAULT 'ACTIVE', "eventType" text NOT NULL DEFAULT 'upcoming',
  "gameStatus" text, live boolean NOT NULL DEFAULT false, score text, period text, elapsed text,
  "startTime" {start_type}, "yesOdds" {number_type}, "noOdds" {number_type},
  "externalVolume" {number_type});
CREATE TABLE "Bet" (
  id serial PRIMARY KEY, "eventId" {id_type} NOT NULL REFERENCES "Event" (id),
  option "BetOption" NOT NULL, status text NOT NULL DEFAULT 'PENDING', amount {number_type} NOT NULL);
"#
    )
}

/// Inserts the two events with the given id literals and start times 2026-11-21T20:00:00Z
/// (written in the session's time zone, which the test sets to UTC+5 to catch a conversion
/// that treats local time as UTC).
fn prisma_rows(a: &str, b: &str) -> String {
    format!(
        r#"
SET TIME ZONE '+05';
INSERT INTO "Event" (id, title, sport, "teamA", "teamB", "eventType", "gameStatus", live,
                     "startTime", "yesOdds", "noOdds", "externalVolume") VALUES
 ({a}, 'Chiefs vs Eagles', 'American Football', 'Chiefs', 'Eagles', 'live', 'in_progress', true,
  '2026-11-21T20:00:00Z', 0.4, 0.6, 1000),
 ({b}, 'T1 vs G2', 'LoL', 'T1', 'G2', 'upcoming', 'scheduled', false,
  '2026-11-21T20:00:00Z', 0.5, 0.5, NULL);
INSERT INTO "Bet" ("eventId", option, amount) VALUES ({a}, 'YES', 750), ({a}, 'NO', 250.5);
INSERT INTO "Bet" ("eventId", option, amount, status) VALUES ({a}, 'NO', 100000, 'WON');
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_column_styles_all_publish_the_right_odds() {
    for (id_type, (a, b), start_type, number_type) in [
        ("text", ("'p1'", "'p2'"), "timestamptz", "double precision"),
        ("text", ("'p1'", "'p2'"), "timestamp(3)", "double precision"),
        (
            "uuid",
            (
                "'00000000-0000-0000-0000-0000000000a1'",
                "'00000000-0000-0000-0000-0000000000b2'",
            ),
            "timestamptz(3)",
            "numeric(65,30)",
        ),
        ("integer", ("1", "2"), "timestamp(3)", "real"),
        ("bigint", ("1", "2"), "timestamptz", "numeric"),
    ] {
        let case = format!("{id_type}/{start_type}/{number_type}");
        let db = TestDb::new().await;
        db.exec(&prisma_schema(id_type, start_type, number_type))
            .await;
        db.exec(&prisma_rows(a, b)).await;
        let (mut env, channel) = publisher_env(&db, &redis_url());
        env.push(("ACTIVE_EVENTS_SQL", prisma_sql()));
        let mut sub = Subscriber::new(&redis_url(), &channel).await;
        let mut server = Server::start(&["publisher"], &env).await;

        let first = sub
            .next_odds(WAIT)
            .await
            .unwrap_or_else(|| panic!("{case}: no odds message:\n{}", server.log_text()));
        let events = upserts(&first);
        assert_eq!(events.len(), 2, "{case}: {first}");
        let id_a = a.trim_matches('\'');
        let live = &events[id_a];
        assert_eq!(live["sport"], "american-football", "{case}");
        // L = 1000, V = 1000.5: w = 1000/2000.5; YES = (400 + 750)/2000.5, NO the rest.
        let yes = ((1000.0 * 0.4 + 750.0) / 2000.5f64 * 1e4).round() / 1e4;
        let probabilities = probabilities(live);
        assert!(
            (probabilities["YES"].unwrap() - yes).abs() < 1e-9,
            "{case}: {probabilities:?}"
        );
        assert_eq!(live["oddsSource"], "hybrid", "{case}");
        assert_eq!(live["suspended"], false, "{case}: {live}");
        // The same instant whatever the column type and the session time zone.
        assert_eq!(live["startTime"], "2026-11-21T20:00:00Z", "{case}");
        let other = &events[b.trim_matches('\'')];
        assert_eq!(other["oddsSource"], "external", "{case}");
        assert_eq!(other["yesOdds"], 0.5, "{case}");

        // A bet (an enum option) moves the price and only that event is published.
        db.exec(&format!(
            r#"INSERT INTO "Bet" ("eventId", option, amount) VALUES ({b}, 'NO', 1000000)"#
        ))
        .await;
        let second = sub.next_odds(WAIT).await.expect("a message after the bet");
        assert_eq!(second["seq"], 2, "{case}");
        let changed = upserts(&second);
        assert_eq!(
            probabilities_of(&changed[b.trim_matches('\'')]),
            [("NO".to_string(), 0.75), ("YES".to_string(), 0.25)].into(),
            "{case}"
        );
        server.terminate().await;
        db.drop_db().await;
    }
}

fn probabilities_of(event: &Value) -> BTreeMap<String, f64> {
    probabilities(event)
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect()
}

/// The operator's "query" reads a table that holds its result rows as they are, so every
/// hostile row reaches the publisher exactly as written.
const FEED_TABLE: &str = r#"
CREATE TABLE feed_rows (
  ord serial PRIMARY KEY, event_id text, title text, sport text, league text, team_a text,
  team_b text, is_esports boolean, live boolean, game_status text, score text, period text,
  elapsed text, start_time timestamptz, liquidity float8, outcome_name text,
  outcome_price float8, pending_volume float8);
"#;

const FEED_QUERY: &str = "SELECT event_id, title, sport, league, team_a, team_b, is_esports, live, game_status, score, period, elapsed, start_time, liquidity, outcome_name, outcome_price, pending_volume FROM feed_rows ORDER BY ord";

/// One row: event id (NULL when `None`), sport, start time, outcome and price.
fn row(id: Option<&str>, sport: &str, start: &str, outcome: &str, price: f64) -> String {
    let id = id.map_or("NULL".to_string(), |i| format!("'{i}'"));
    format!(
        "INSERT INTO feed_rows (event_id, title, sport, team_a, team_b, start_time, outcome_name, outcome_price) \
         VALUES ({id}, 'Home vs Away', '{sport}', 'Home', 'Away', {start}, '{outcome}', {price});"
    )
}

fn write_query(sql: &str) -> TempPath {
    let path = TempPath::file("query");
    std::fs::write(&path, sql).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_hurt_only_their_event() {
    let db = TestDb::new().await;
    db.exec(FEED_TABLE).await;
    let now = "'2026-11-21T20:00:00Z'";
    let mut sql = String::new();
    // Two good events, interleaved with each other (a query ordered by start time alone).
    sql += &row(Some("g1"), "Football", now, "YES", 0.6);
    sql += &row(Some("g2"), "Tennis", now, "YES", 0.3);
    sql += &row(Some("g1"), "Football", now, "NO", 0.4);
    sql += &row(Some("g2"), "Tennis", now, "NO", 0.7);
    // Start times no RFC 3339 timestamp can hold: published as null.
    for (id, start) in [
        ("inf", "'infinity'"),
        ("ninf", "'-infinity'"),
        ("far", "'200000-01-01T00:00:00Z'"),
    ] {
        sql += &row(Some(id), "Tennis", start, "YES", 0.5);
        sql += &row(Some(id), "Tennis", start, "NO", 0.5);
    }
    // Rows without an id: skipped.
    sql += &row(None, "Tennis", now, "YES", 0.5);
    // Duplicated rows, adjacent (a join that multiplies) and far apart: suspended.
    for outcome in ["NO", "YES", "NO", "YES"] {
        sql += &row(Some("dup"), "Tennis", now, outcome, 0.5);
    }
    sql += &row(Some("dup2"), "Tennis", now, "YES", 0.5);
    sql += &row(Some("dup2"), "Tennis", now, "NO", 0.5);
    // 200 outcomes: fine.
    for i in 0..200 {
        sql += &row(Some("wide"), "Golf", now, &format!("P{i}"), 0.005);
    }
    sql += &row(Some("dup2"), "Tennis", now, "YES", 0.5);
    // A sport named "All" must not land in the global room.
    sql += &row(Some("allsport"), "All", now, "YES", 0.5);
    sql += &row(Some("allsport"), "All", now, "NO", 0.5);
    db.exec(&sql).await;
    // A 1 MB title, and control characters and emoji in names.
    db.exec(&format!(
        "INSERT INTO feed_rows (event_id, title, sport, team_a, team_b, outcome_name, outcome_price) VALUES
         ('huge', '{}', 'Tennis', 'A', 'B', 'YES', 0.5), ('huge', 'x', 'Tennis', 'A', 'B', 'NO', 0.5),
         ('odd', E'Caf\u{e9} \u{26bd}\u{1f600} \\x01\\t\\n\"quoted\"', 'Tennis', E'Team\\x07bell', 'B\u{1f3c6}', E'YES', 0.5),
         ('odd', 'x', 'Tennis', 'A', 'B', 'NO', 0.5)",
        "é".repeat(500_000)
    ))
    .await;

    let query = write_query(FEED_QUERY);
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("ACTIVE_EVENTS_SQL", query.display().to_string()));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let server = Server::start(&["serve"], &env).await;
    let ws = format!("ws://{}/ws", server.addr);
    let (mut client, _) = WsClient::connect_welcomed(&ws).await;
    client
        .send(json!({"type": "subscribe", "room": "sport:all"}))
        .await;

    let first = sub
        .next_odds(WAIT)
        .await
        .unwrap_or_else(|| panic!("no odds message:\n{}", server.log_text()));
    let events = upserts(&first);
    let ids: Vec<&str> = events.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "allsport", "dup", "dup2", "far", "g1", "g2", "huge", "inf", "ninf", "odd", "wide"
        ],
        "the NULL-id row is skipped, everything else is published"
    );
    // Grouped by id, not adjacency: each interleaved event has both outcomes.
    assert_eq!(
        probabilities_of(&events["g1"]),
        [("NO".into(), 0.4), ("YES".into(), 0.6)].into()
    );
    assert_eq!(events["g2"]["yesOdds"], 0.3);
    for id in ["inf", "ninf", "far"] {
        assert!(events[id]["startTime"].is_null(), "{id}: {}", events[id]);
        assert_eq!(events[id]["suspended"], false, "{id}");
    }
    for id in ["dup", "dup2"] {
        assert_eq!(events[id]["suspended"], true, "{id}");
        assert_eq!(events[id]["suspendedReason"], "duplicate_outcome", "{id}");
        assert!(events[id]["yesOdds"].is_null(), "{id}");
    }
    assert_eq!(events["wide"]["outcomes"].as_array().unwrap().len(), 200);
    assert_eq!(events["wide"]["suspended"], false);
    assert_eq!(events["allsport"]["sport"], "all-sport");
    assert!(first["sports"].get("all").is_none(), "{first}");
    let title = events["huge"]["title"].as_str().unwrap();
    assert!(
        title.len() <= 1024 && title.starts_with("éé"),
        "{}",
        title.len()
    );
    assert!(
        events["odd"]["title"]
            .as_str()
            .unwrap()
            .contains("\u{26bd}\u{1f600} \u{1}\t\n\"quoted\"")
    );
    assert_eq!(events["odd"]["teamB"], "B\u{1f3c6}");

    // The client in sport:all got the same events; sport:all-sport is its own room.
    let snapshot = client.expect_type("snapshot", WAIT).await;
    let mut all = RoomView::default();
    all.apply(&snapshot);
    // (once the broadcaster has the stream: before that, every room is empty with seq 0)
    server.wait_stream_seq(first["seq"].as_u64().unwrap()).await;
    let (mut client2, _) = WsClient::connect_welcomed(&ws).await;
    client2
        .send(json!({"type": "subscribe", "room": "sport:all-sport"}))
        .await;
    let own = client2.expect_type("snapshot", WAIT).await;
    assert_eq!(own["events"].as_array().unwrap().len(), 1, "{own}");

    // The others keep flowing with contiguous seqs while the bad rows stay.
    for (i, price) in [0.55, 0.5, 0.45].into_iter().enumerate() {
        db.exec(&format!(
            "UPDATE feed_rows SET outcome_price = {price} WHERE event_id = 'g1' AND outcome_name = 'YES';
             UPDATE feed_rows SET outcome_price = {} WHERE event_id = 'g1' AND outcome_name = 'NO'",
            1.0 - price
        ))
        .await;
        let msg = sub.next_odds(WAIT).await.expect("the change is published");
        assert_eq!(msg["seq"], first["seq"].as_u64().unwrap() + 1 + i as u64);
        assert_eq!(upserts(&msg).keys().collect::<Vec<_>>(), ["g1"]);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Some(msg) = client
        .next_json(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        all.apply(&msg);
        if all.seq == first["seq"].as_u64().unwrap() + 3 {
            break;
        }
    }
    assert!(all.gaps.is_empty(), "{:?}", all.gaps);
    assert_eq!(all.events, stored_state(&redis_url(), &channel).await.1);

    // Health and status tell the truth: running, publishing, 2 suspended, no error.
    let (code, health) = server.get_json("/health").await;
    assert_eq!(
        (code, health["status"].as_str()),
        (200, Some("ok")),
        "{health}"
    );
    let (_, status) = server.get_json("/api/sports/ws-publisher").await;
    assert_eq!(status["isPublishing"], true);
    assert_eq!(status["activeEvents"], 11);
    assert_eq!(status["suspendedEvents"], 2);
    assert!(status["lastError"].is_null(), "{status}");
    // Each problem is counted once, not once per tick.
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "oddsfeed_source_value_problems_total{column=\"start_time\",problem=\"out_of_range\"}"
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "oddsfeed_source_value_problems_total{column=\"event_id\",problem=\"null\"}"
        ),
        1.0
    );
    let logged = server
        .log_text()
        .lines()
        .filter(|l| l.contains("active-events row") && l.contains("\"event\":\"inf\""))
        .count();
    assert_eq!(logged, 1, "logged once per event");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_oddsfeed_cannot_read_fails_the_tick_with_the_cast_to_add() {
    let db = TestDb::new().await;
    db.exec(FEED_TABLE).await;
    db.exec(&row(Some("g1"), "Football", "now()", "YES", 0.6))
        .await;
    let query = write_query(&FEED_QUERY.replace("title,", "to_jsonb(title) AS title,"));
    let (mut env, _) = publisher_env(&db, &redis_url());
    env.push(("ACTIVE_EVENTS_SQL", query.display().to_string()));
    let server = Server::start(&["publisher"], &env).await;
    let status = eventually(WAIT, "the tick error", || async {
        let (_, status) = server.get_json("/api/sports/ws-publisher").await;
        status["lastError"].is_string().then_some(status)
    })
    .await;
    let error = status["lastError"].as_str().unwrap();
    assert!(
        error.contains("\"title\"") && error.contains("JSONB") && error.contains("title::text"),
        "{error}"
    );
    let (_, health) = server.get_json("/health").await;
    assert_eq!(health["status"], "degraded");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_bet_amount_is_refused_and_an_old_one_heals_when_settled() {
    let db = TestDb::new().await;
    seed_one_event(&db, "n1").await;
    let refused =
        sqlx::raw_sql("INSERT INTO bets (event_id, outcome, amount) VALUES ('n1', 'YES', 'NaN')")
            .execute(&db.pool)
            .await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("bets_amount_is_a_number")),
        "a NaN amount is refused"
    );
    // A NaN written before the constraint existed.
    db.exec(
        "ALTER TABLE bets DROP CONSTRAINT bets_amount_is_a_number;
         INSERT INTO bets (event_id, outcome, amount) VALUES ('n1', 'YES', 'NaN'), ('n1', 'YES', 100);",
    )
    .await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("TICK_INTERVAL_MS", "50".into()));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let server = Server::start(&["publisher"], &env).await;
    let first = sub.next_odds(WAIT).await.expect("published");
    assert_eq!(upserts(&first)["n1"]["suspendedReason"], "bad_volume");
    // The NaN bet is voided: the outcome is counted again and the event priced.
    db.exec("UPDATE bets SET status = 'VOID' WHERE amount = 'NaN'")
        .await;
    let healed = sub
        .next_odds(WAIT)
        .await
        .expect("the event is priced again");
    let n1 = &upserts(&healed)["n1"];
    assert_eq!(n1["suspended"], false, "{n1}");
    assert_eq!(n1["oddsSource"], "hybrid");
    let (amount, bets): (f64, i32) = sqlx::query_as(
        "SELECT amount::float8, bets FROM outcome_pending_volume WHERE event_id = 'n1' AND outcome = 'YES'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((amount, bets), (100.0, 1));
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_query_pair_reads_only_what_changed_by_updated_at() {
    let db = TestDb::new().await;
    db.exec(&prisma_schema("text", "timestamp(3)", "double precision"))
        .await;
    // Prisma's @updatedAt: a timestamp(3) in UTC, written by the client on every update.
    db.exec(
        r#"ALTER TABLE "Event" ADD COLUMN "updatedAt" timestamp(3) NOT NULL DEFAULT (now() AT TIME ZONE 'UTC');
           ALTER TABLE "Bet" ADD COLUMN "updatedAt" timestamp(3) NOT NULL DEFAULT (now() AT TIME ZONE 'UTC');
           CREATE INDEX ON "Event" ("updatedAt"); CREATE INDEX ON "Bet" ("updatedAt");"#,
    )
    .await;
    db.exec(&prisma_rows("'p1'", "'p2'")).await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("ACTIVE_EVENTS_SQL", prisma_sql()));
    env.push((
        "CHANGED_EVENTS_SQL",
        prisma_sql().replace("active_events.sql", "changed_events.sql"),
    ));
    env.push(("FULL_RESYNC_INTERVAL_MS", "3600000".into()));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let server = Server::start(&["publisher"], &env).await;
    let first = sub.next_odds(WAIT).await.expect("a first odds message");
    assert_eq!(upserts(&first).len(), 2, "{first}");

    let now = "now() AT TIME ZONE 'UTC'";
    // A price written the way Prisma writes it.
    db.exec(&format!(
        r#"UPDATE "Event" SET "yesOdds" = 0.3, "noOdds" = 0.7, "updatedAt" = {now} WHERE id = 'p2'"#
    ))
    .await;
    let msg = sub.next_odds(WAIT).await.expect("the price change");
    assert_eq!(probabilities_of(&upserts(&msg)["p2"])["YES"], 0.3);
    // A bet placed, then one settled: each moves p1's price, and only p1 is published.
    for write in [
        r#"INSERT INTO "Bet" ("eventId", option, amount) VALUES ('p1', 'NO', 5000)"#.to_string(),
        format!(
            r#"UPDATE "Bet" SET status = 'WON', "updatedAt" = {now} WHERE "eventId" = 'p1' AND amount = 750"#
        ),
    ] {
        let before = stored_state(&redis_url(), &channel).await.1["p1"].clone();
        db.exec(&write).await;
        let msg = sub.next_odds(WAIT).await.expect("the bet's effect");
        let changed = upserts(&msg);
        assert_eq!(changed.keys().collect::<Vec<_>>(), ["p1"], "{msg}");
        assert_ne!(probabilities_of(&changed["p1"]), probabilities_of(&before));
    }
    // An event resolved is removed.
    db.exec(&format!(
        r#"UPDATE "Event" SET status = 'RESOLVED', "updatedAt" = {now} WHERE id = 'p2'"#
    ))
    .await;
    let msg = sub.next_odds(WAIT).await.expect("the removal");
    assert_eq!(removals(&msg), ["p2"]);

    // The stored state is what the full query computes, and it was reached incrementally.
    let source = oddsfeed::publisher::Source::new(
        db.pool.clone(),
        Some(std::path::Path::new(&prisma_sql())),
        None,
        None,
    )
    .unwrap();
    let expected: Vec<String> = source
        .active_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let (_, stored) = stored_state(&redis_url(), &channel).await;
    assert_eq!(stored.keys().cloned().collect::<Vec<_>>(), expected);
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_publisher_reads_total{kind=\"full\"}"),
        1.0
    );
    assert!(metric_value(&metrics, "oddsfeed_publisher_reads_total{kind=\"changed\"}") > 3.0);
    drop(server);
    db.drop_db().await;
}
