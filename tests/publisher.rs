//! The publisher end to end: real PostgreSQL, real Redis, the real binary.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// Three active events and four that must not be published.
const FIXTURE: &str = r#"
INSERT INTO events (id, title, sport, league, team_a, team_b, is_esports, status, event_type,
                    game_status, live, score, period, elapsed, start_time, external_liquidity) VALUES
 ('m1', 'Arsenal vs Chelsea', 'Football', 'Premier League', 'Arsenal', 'Chelsea', false, 'ACTIVE',
  'live', 'in_progress', true, '1-0', '2H', '63''', now() - interval '63 minutes', 1000),
 ('m2', 'NaVi vs FaZe', NULL, 'CS2 Major', 'NaVi', 'FaZe', true, 'ACTIVE',
  'upcoming', 'scheduled', false, NULL, NULL, NULL, now() + interval '1 hour', 1000),
 ('m3', 'Lakers vs Celtics', 'Basketball', 'NBA', 'Lakers', 'Celtics', false, 'ACTIVE',
  'upcoming', 'scheduled', false, NULL, NULL, NULL, now() + interval '2 hours', NULL),
 ('x1', 'Finished', 'Football', NULL, 'Leeds', 'Fulham', false, 'ACTIVE',
  'past', 'finished', false, NULL, NULL, NULL, now() - interval '1 day', NULL),
 ('x2', 'Placeholder', 'Football', NULL, 'Team A', 'Team B', false, 'ACTIVE',
  'upcoming', 'scheduled', false, NULL, NULL, NULL, now(), NULL),
 ('x3', 'Inactive', 'Tennis', NULL, 'Sinner', 'Alcaraz', false, 'INACTIVE',
  'upcoming', 'scheduled', false, NULL, NULL, NULL, now(), NULL),
 ('x4', 'No sport', NULL, NULL, 'Foo', 'Bar', false, 'ACTIVE',
  'upcoming', 'scheduled', false, NULL, NULL, NULL, now(), NULL);
INSERT INTO outcomes (event_id, name, position, external_price) VALUES
 ('m1', 'HOME', 0, 0.5), ('m1', 'DRAW', 1, 0.25), ('m1', 'AWAY', 2, 0.25),
 ('m2', 'YES', 0, 0.4), ('m2', 'NO', 1, 0.6),
 ('m3', 'YES', 0, 0.6), ('m3', 'NO', 1, 0.5),
 ('x1', 'YES', 0, 0.5), ('x1', 'NO', 1, 0.5),
 ('x2', 'YES', 0, 0.5), ('x2', 'NO', 1, 0.5),
 ('x3', 'YES', 0, 0.5), ('x3', 'NO', 1, 0.5),
 ('x4', 'YES', 0, 0.5), ('x4', 'NO', 1, 0.5);
INSERT INTO bets (event_id, outcome, amount) VALUES ('m2', 'YES', 500), ('m2', 'YES', 250), ('m2', 'NO', 250);
INSERT INTO bets (event_id, outcome, amount, status) VALUES ('m2', 'NO', 9999, 'LOST');
"#;

fn odds(event: &Value) -> BTreeMap<String, Option<f64>> {
    outcome_numbers(event, "odds")
}

fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, Option<f64>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Some(*v)))
        .collect()
}

/// Applies odds messages to a map of id → EVENT, as a client would.
fn apply(state: &mut BTreeMap<String, Value>, msg: &Value) {
    for id in removals(msg) {
        state.remove(&id);
    }
    state.extend(upserts(msg));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_active_events_then_only_what_changed() {
    let db = TestDb::new().await;
    db.exec(FIXTURE).await;
    let (env, channel) = publisher_env(&db, &redis_url());
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let mut server = Server::start(&["publisher"], &env).await;

    // First message: exactly the active events, live first, with the contract's numbers.
    let first = sub.next_odds(WAIT).await.expect("a first odds message");
    assert_eq!(first["seq"], 1);
    let epoch = first["epoch"].as_str().unwrap().to_string();
    assert!(first["tickAt"].as_i64().unwrap() <= first["publishedAt"].as_i64().unwrap());
    let events = upserts(&first);
    assert_eq!(events.keys().collect::<Vec<_>>(), vec!["m1", "m2", "m3"]);
    assert_eq!(
        first["sports"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["basketball", "esports", "football"]
    );
    let m1 = &events["m1"];
    assert_eq!(m1["version"], 1);
    assert_eq!(m1["sport"], "football");
    assert_eq!(m1["live"], true);
    assert_eq!(m1["score"], "1-0");
    assert_eq!(m1["oddsSource"], "external");
    assert_eq!(
        probabilities(m1),
        map(&[("HOME", 0.5), ("DRAW", 0.25), ("AWAY", 0.25)])
    );
    assert_eq!(
        odds(m1),
        map(&[("HOME", 2.0), ("DRAW", 4.0), ("AWAY", 4.0)])
    );
    assert!(m1["yesOdds"].is_null() && m1["noOdds"].is_null());
    // L = 1000, V = 1000 (YES 750, NO 250; the LOST bet does not count): w = 0.5.
    let m2 = &events["m2"];
    assert_eq!(m2["sport"], "esports");
    assert_eq!(m2["oddsSource"], "hybrid");
    assert_eq!(probabilities(m2), map(&[("YES", 0.575), ("NO", 0.425)]));
    assert_eq!(odds(m2), map(&[("YES", 1.74), ("NO", 2.35)]));
    assert_eq!(
        (m2["yesOdds"].as_f64(), m2["noOdds"].as_f64()),
        (Some(0.575), Some(0.425))
    );
    // No volume: the normalised external price, 0.6/1.1 and 0.5/1.1.
    assert_eq!(
        probabilities(&events["m3"]),
        map(&[("YES", 0.5455), ("NO", 0.4545)])
    );
    assert_eq!(events["m3"]["suspended"], false);
    assert!(events["m3"]["league"].is_string() && events["m3"]["score"].is_null());

    // A bet on m1: a message with only m1, version, seq and sport seq one higher.
    db.exec("INSERT INTO bets (event_id, outcome, amount) VALUES ('m1', 'DRAW', 1000)")
        .await;
    let second = sub.next_odds(WAIT).await.expect("a message after the bet");
    assert_eq!(second["seq"], 2);
    assert_eq!(second["epoch"], epoch.as_str());
    assert_eq!(second["sports"].as_object().unwrap().len(), 1);
    let football = &second["sports"]["football"];
    assert_eq!(football["seq"], 2);
    assert_eq!(football["removals"], json!([]));
    let m1 = &upserts(&second)["m1"];
    assert_eq!(upserts(&second).len(), 1);
    assert_eq!(m1["version"], 2);
    assert_eq!(m1["oddsSource"], "hybrid");
    // w = 1000 / 2000: HOME 0.25, DRAW 0.125 + 0.5, AWAY 0.125.
    assert_eq!(
        probabilities(m1),
        map(&[("HOME", 0.25), ("DRAW", 0.625), ("AWAY", 0.125)])
    );

    // m3 finishes: a removal in its sport.
    db.exec("UPDATE events SET game_status = 'finished', event_type = 'past' WHERE id = 'm3'")
        .await;
    let third = sub.next_odds(WAIT).await.expect("a removal message");
    assert_eq!(third["seq"], 3);
    assert_eq!(third["sports"]["basketball"]["seq"], 2);
    assert_eq!(removals(&third), vec!["m3".to_string()]);
    assert!(upserts(&third).is_empty());

    // Nothing changes: only heartbeats, carrying the last seq.
    let mut heartbeats = 0;
    let quiet_until = Instant::now() + Duration::from_millis(1300);
    while let Some(msg) = sub
        .next(quiet_until.saturating_duration_since(Instant::now()))
        .await
    {
        assert_eq!(
            msg["type"], "heartbeat",
            "unexpected message while idle: {msg}"
        );
        assert_eq!(msg["seq"], 3);
        assert_eq!(msg["epoch"], epoch.as_str());
        heartbeats += 1;
    }
    assert!(heartbeats >= 1, "an idle stream sends heartbeats");

    // The state keys match what was published.
    let mut expected = BTreeMap::new();
    for msg in [&first, &second, &third] {
        apply(&mut expected, msg);
    }
    let (meta, stored) = stored_state(&redis_url(), &channel).await;
    assert_eq!(meta["epoch"], epoch);
    assert_eq!(meta["seq"], "3");
    assert_eq!(meta["sport:football"], "2");
    assert_eq!(meta["sport:basketball"], "2");
    assert_eq!(stored, expected);

    // The status shows it.
    let (code, status) = server.get_json("/api/sports/ws-publisher").await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "running");
    assert_eq!(status["interval"], "100ms");
    assert_eq!(status["isPublishing"], true);
    assert_eq!(status["leader"], true);
    assert_eq!(status["activeEvents"], 2);
    assert_eq!(status["seq"], 3);
    assert_eq!(status["epoch"], epoch.as_str());
    assert!(status["ticks"].as_u64().unwrap() >= 3);

    let metrics = server.metrics().await;
    for stage in ["query", "compute", "publish", "total"] {
        assert!(
            metrics.contains(&format!(
                "oddsfeed_tick_duration_seconds_bucket{{stage=\"{stage}\",le=\"0.001\"}}"
            )),
            "tick histogram for {stage} in\n{metrics}"
        );
    }
    assert_eq!(
        metric_value(&metrics, "oddsfeed_published_messages_total{type=\"odds\"}"),
        3.0
    );

    assert!(server.terminate().await.success(), "SIGTERM exits cleanly");
    db.drop_db().await;
}

const PRISMA_SCHEMA: &str = r#"
CREATE TABLE "Event" (
  id text PRIMARY KEY, title text NOT NULL, sport text, league text, "teamA" text, "teamB" text,
  "isEsports" boolean NOT NULL DEFAULT false, status text NOT NULL DEFAULT 'ACTIVE',
  "eventType" text NOT NULL DEFAULT 'upcoming', "gameStatus" text, live boolean NOT NULL DEFAULT false,
  score text, period text, elapsed text, "startTime" timestamp(3),
  "yesOdds" double precision, "noOdds" double precision, "externalVolume" double precision);
CREATE TABLE "Bet" (
  id text PRIMARY KEY DEFAULT gen_random_uuid()::text, "eventId" text NOT NULL REFERENCES "Event" (id),
  option text NOT NULL, status text NOT NULL DEFAULT 'PENDING', amount double precision NOT NULL);
CREATE INDEX ON "Bet" ("eventId");
INSERT INTO "Event" (id, title, sport, "teamA", "teamB", "isEsports", "eventType", "gameStatus", live,
                     "startTime", "yesOdds", "noOdds", "externalVolume") VALUES
 ('p1', 'Chiefs vs Eagles', 'American Football', 'Chiefs', 'Eagles', false, 'live', 'in_progress', true,
  now() - interval '1 hour', 0.4, 0.6, 1000),
 ('p2', 'T1 vs G2', NULL, 'T1', 'G2', true, 'upcoming', 'scheduled', false, now() + interval '1 hour', 0.5, 0.5, NULL),
 ('p3', 'NaN price', 'Tennis', 'Sinner', 'Zverev', false, 'upcoming', 'scheduled', false, now() + interval '2 hours', 'NaN', 0.5, NULL),
 ('p4', 'No NO price', 'Tennis', 'Swiatek', 'Gauff', false, 'upcoming', 'scheduled', false, now() + interval '3 hours', 0.5, NULL, NULL),
 ('p5', 'Negative bet', 'Tennis', 'Rune', 'Fritz', false, 'upcoming', 'scheduled', false, now() + interval '4 hours', 0.5, 0.5, NULL),
 ('p6', 'Finished', 'Tennis', 'Ruud', 'Paul', false, 'past', 'finished', false, now() - interval '1 day', 0.5, 0.5, NULL);
INSERT INTO "Bet" ("eventId", option, amount) VALUES ('p1', 'YES', 750), ('p1', 'NO', 250), ('p5', 'YES', -10), ('p5', 'YES', 50);
INSERT INTO "Bet" ("eventId", option, amount, status) VALUES ('p1', 'NO', 100000, 'WON');
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_schema_through_its_sql_file() {
    let db = TestDb::new().await; // the publisher_control table comes from `oddsfeed migrate`
    db.exec(PRISMA_SCHEMA).await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push((
        "ACTIVE_EVENTS_SQL",
        format!(
            "{}/sql/prisma/active_events.sql",
            env!("CARGO_MANIFEST_DIR")
        ),
    ));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let mut server = Server::start(&["publisher"], &env).await;

    let first = sub.next_odds(WAIT).await.expect("a first odds message");
    let events = upserts(&first);
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        vec!["p1", "p2", "p3", "p4", "p5"]
    );
    let p1 = &events["p1"];
    assert_eq!(p1["sport"], "american-football");
    assert_eq!(probabilities(p1), map(&[("YES", 0.575), ("NO", 0.425)]));
    assert_eq!(p1["yesOdds"], 0.575);
    assert_eq!(
        p1["startTime"].as_str().map(|s| s.ends_with('Z')),
        Some(true)
    );
    assert_eq!(events["p2"]["sport"], "esports");
    assert_eq!(events["p2"]["oddsSource"], "external");
    for (id, reason) in [
        ("p3", "price_out_of_range"),
        ("p4", "missing_price"),
        ("p5", "bad_volume"),
    ] {
        let e = &events[id];
        assert_eq!(e["suspended"], true, "{id}");
        assert_eq!(e["suspendedReason"], reason, "{id}");
        assert!(e["yesOdds"].is_null() && e["oddsSource"].is_null(), "{id}");
        assert!(
            e["outcomes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["probability"].is_null()),
            "{id}"
        );
    }

    // A bet on p2 changes only p2; resolving p1 removes it.
    db.exec(r#"INSERT INTO "Bet" ("eventId", option, amount) VALUES ('p2', 'NO', 1000000)"#)
        .await;
    let second = sub.next_odds(WAIT).await.expect("a message after the bet");
    assert_eq!(second["seq"], 2);
    assert_eq!(upserts(&second).keys().collect::<Vec<_>>(), vec!["p2"]);
    // w = 1e6 / 2e6: YES 0.25, NO 0.25 + 0.5.
    assert_eq!(
        probabilities(&upserts(&second)["p2"]),
        map(&[("YES", 0.25), ("NO", 0.75)])
    );
    db.exec(r#"UPDATE "Event" SET status = 'RESOLVED' WHERE id = 'p1'"#)
        .await;
    let third = sub.next_odds(WAIT).await.expect("a removal");
    assert_eq!(removals(&third), vec!["p1".to_string()]);
    assert_eq!(third["sports"]["american-football"]["seq"], 2);

    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_events_suspended "),
        3.0,
        "{metrics}"
    );
    server.terminate().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_is_suspended_counted_and_the_rest_keeps_flowing() {
    let db = TestDb::new().await;
    db.exec(
        r#"
        INSERT INTO events (id, title, sport, team_a, team_b, event_type, start_time) VALUES
          ('good', 'Good', 'Tennis', 'Sinner', 'Alcaraz', 'upcoming', now()),
          ('null-price', 'Null price', 'Tennis', 'Rune', 'Fritz', 'upcoming', now()),
          ('one-outcome', 'One outcome', 'Tennis', 'Ruud', 'Paul', 'upcoming', now()),
          ('no-outcomes', 'No outcomes', 'Tennis', 'Shelton', 'Draper', 'upcoming', now());
        INSERT INTO outcomes (event_id, name, position, external_price) VALUES
          ('good', 'YES', 0, 0.5), ('good', 'NO', 1, 0.5),
          ('null-price', 'YES', 0, NULL), ('null-price', 'NO', 1, 0.5),
          ('one-outcome', 'YES', 0, 0.7);
        "#,
    )
    .await;
    let (env, channel) = publisher_env(&db, &redis_url());
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let mut server = Server::start(&["publisher"], &env).await;

    let first = sub.next_odds(WAIT).await.expect("first message");
    let events = upserts(&first);
    assert_eq!(events.len(), 4);
    assert_eq!(events["good"]["suspended"], false);
    for (id, reason) in [
        ("null-price", "missing_price"),
        ("one-outcome", "too_few_outcomes"),
        ("no-outcomes", "too_few_outcomes"),
    ] {
        assert_eq!(events[id]["suspended"], true, "{id}");
        assert_eq!(events[id]["suspendedReason"], reason, "{id}");
    }
    assert!(!first.to_string().contains("NaN"));

    // The good event keeps moving; the suspended ones are not re-sent.
    db.exec("UPDATE outcomes SET external_price = 0.8 WHERE event_id = 'good' AND name = 'YES'")
        .await;
    let second = sub.next_odds(WAIT).await.expect("the good event moves");
    assert_eq!(upserts(&second).keys().collect::<Vec<_>>(), vec!["good"]);
    // A price arrives: the event is unsuspended.
    db.exec(
        "UPDATE outcomes SET external_price = 0.5 WHERE event_id = 'null-price' AND name = 'YES'",
    )
    .await;
    let third = sub.next_odds(WAIT).await.expect("the repaired event");
    assert_eq!(upserts(&third)["null-price"]["suspended"], false);
    assert_eq!(upserts(&third)["null-price"]["version"], 2);

    let metrics = eventually(WAIT, "suspended gauge", || {
        let url = server.url("/metrics");
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            (metric_value(&text, "oddsfeed_events_suspended ") == 2.0).then_some(text)
        }
    })
    .await;
    assert_eq!(
        metric_value(
            &metrics,
            "oddsfeed_event_suspensions_total{reason=\"missing_price\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "oddsfeed_event_suspensions_total{reason=\"too_few_outcomes\"}"
        ),
        2.0
    );
    let (_, status) = server.get_json("/api/sports/ws-publisher").await;
    assert_eq!(status["suspendedEvents"], 2);
    assert_eq!(status["errors"], 0);
    server.terminate().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_constraints_reject_impossible_data() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO events (id, title, sport, team_a, team_b) VALUES ('e', 'E', 'Tennis', 'A1', 'B1')").await;
    db.exec("INSERT INTO outcomes (event_id, name, external_price) VALUES ('e', 'YES', 0.5)")
        .await;
    for bad in [
        "INSERT INTO outcomes (event_id, name, external_price) VALUES ('e', 'NO', 1.5)",
        "INSERT INTO outcomes (event_id, name, external_price) VALUES ('e', 'NO', -0.1)",
        "INSERT INTO outcomes (event_id, name, external_price) VALUES ('e', 'NO', 'NaN')",
        "INSERT INTO bets (event_id, outcome, amount) VALUES ('e', 'YES', -5)",
        "INSERT INTO bets (event_id, outcome, amount) VALUES ('e', 'NOPE', 5)",
        "UPDATE events SET external_liquidity = 'NaN' WHERE id = 'e'",
        "UPDATE events SET external_liquidity = -1 WHERE id = 'e'",
        "UPDATE events SET external_liquidity = 'Infinity' WHERE id = 'e'",
        "UPDATE events SET event_type = 'someday' WHERE id = 'e'",
    ] {
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(bad))
            .execute(&db.pool)
            .await;
        assert!(result.is_err(), "accepted: {bad}");
    }
    // The aggregate follows inserts, settlements, amount changes and deletes.
    db.exec(
        "INSERT INTO bets (event_id, outcome, amount) VALUES ('e', 'YES', 10), ('e', 'YES', 20), ('e', 'YES', 30);
         UPDATE bets SET status = 'WON' WHERE amount = 10;
         UPDATE bets SET amount = 25 WHERE amount = 20;
         DELETE FROM bets WHERE amount = 30;",
    )
    .await;
    let (amount, count): (f64, i32) =
        sqlx::query_as("SELECT amount::float8, bets FROM outcome_pending_volume WHERE event_id = 'e' AND outcome = 'YES'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((amount, count), (25.0, 1));
    db.exec("SELECT rebuild_outcome_pending_volume()").await;
    let again: f64 = sqlx::query_scalar(
        "SELECT amount::float8 FROM outcome_pending_volume WHERE event_id = 'e'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(again, 25.0);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_published_at_once_through_notify() {
    let db = TestDb::new().await;
    db.exec(FIXTURE).await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    // Ticks 10 s apart: only the NOTIFY fast path can publish a change quickly.
    env.retain(|(k, _)| *k != "TICK_INTERVAL_MS");
    env.push(("TICK_INTERVAL_MS", "10000".into()));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let _server = Server::start(&["publisher"], &env).await;
    sub.next_odds(WAIT).await.expect("the first tick");
    // Give the listener a moment to be in place, then change a price.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let changed_at = Instant::now();
    db.exec("UPDATE outcomes SET external_price = 0.9 WHERE event_id = 'm3' AND name = 'YES'")
        .await;
    let msg = sub
        .next_odds(Duration::from_secs(3))
        .await
        .expect("published before the next tick");
    let took = changed_at.elapsed();
    assert_eq!(upserts(&msg).keys().collect::<Vec<_>>(), vec!["m3"]);
    assert!(
        took < Duration::from_secs(2),
        "published {took:?} after the change"
    );
    println!("change to publish through NOTIFY: {took:?}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_events_caps_what_is_published_in_publishing_order() {
    let db = TestDb::new().await;
    db.exec(FIXTURE).await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("MAX_EVENTS", "2".into()));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let _server = Server::start(&["publisher"], &env).await;
    let first = sub.next_odds(WAIT).await.expect("a first message");
    // m1 is live, m2 starts before m3: the cap keeps the first two.
    assert_eq!(upserts(&first).keys().collect::<Vec<_>>(), vec!["m1", "m2"]);
    db.drop_db().await;
}
