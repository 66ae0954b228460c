//! Ticks that read only what changed: random interleavings of writes against a publisher in
//! incremental mode end where a full recomputation does; changes survive a leader that dies
//! between reading and publishing them; a partitioned leader hands over within its lease.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use oddsfeed::odds::OddsParams;
use oddsfeed::publisher::Source;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::*;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(15);
const IDS: usize = 30;
const SPORTS: [&str; 3] = ["Football", "Tennis", "Basketball"];

/// `IDS` events, a third of them three-way, some inactive, some with bets.
async fn seed(db: &TestDb) {
    let mut sql = String::new();
    for i in 0..IDS {
        sql.push_str(&insert_event(i));
    }
    db.exec(&sql).await;
    db.exec(
        "UPDATE events SET status = 'INACTIVE' WHERE id IN ('e3', 'e7');
         INSERT INTO bets (event_id, outcome, amount) VALUES ('e1', 'YES', 100), ('e2', 'NO', 50);",
    )
    .await;
}

/// The statements that (re)create event `i` with its outcomes.
fn insert_event(i: usize) -> String {
    let sport = SPORTS[i % SPORTS.len()];
    let outcomes = if i.is_multiple_of(3) {
        format!("('e{i}', 'HOME', 0, 0.45), ('e{i}', 'DRAW', 1, 0.25), ('e{i}', 'AWAY', 2, 0.3)")
    } else {
        format!("('e{i}', 'YES', 0, 0.55), ('e{i}', 'NO', 1, 0.45)")
    };
    format!(
        "INSERT INTO events (id, title, sport, league, team_a, team_b, event_type, start_time, external_liquidity)
         VALUES ('e{i}', 'Home {i} vs Away {i}', '{sport}', 'League', 'Home {i}', 'Away {i}', 'upcoming',
                 now() + interval '{i} minutes', 1000)
         ON CONFLICT (id) DO NOTHING;
         INSERT INTO outcomes (event_id, name, position, external_price) VALUES {outcomes}
         ON CONFLICT DO NOTHING;"
    )
}

/// One random write (a few statements): prices, bets placed and settled, events activated,
/// deactivated, started, finished, moved, deleted and recreated, outcomes removed.
fn random_write(rng: &mut StdRng) -> String {
    let i = rng.random_range(0..IDS);
    let e = format!("e{i}");
    match rng.random_range(0..14) {
        0..=2 => format!(
            "UPDATE outcomes SET external_price = {:.4} WHERE event_id = '{e}' AND position = {}",
            rng.random_range(0.05..0.95),
            rng.random_range(0..3)
        ),
        3..=4 => format!(
            "INSERT INTO bets (event_id, outcome, amount)
             SELECT event_id, name, {} FROM outcomes WHERE event_id = '{e}' AND position = {}",
            rng.random_range(1..5000),
            rng.random_range(0..3)
        ),
        5 => format!(
            "UPDATE bets SET status = '{}' WHERE id = (SELECT id FROM bets WHERE event_id = '{e}' AND status = 'PENDING' LIMIT 1)",
            ["WON", "LOST", "VOID"][rng.random_range(0..3)]
        ),
        6 => format!(
            "UPDATE events SET status = CASE status WHEN 'ACTIVE' THEN 'INACTIVE' ELSE 'ACTIVE' END WHERE id = '{e}'"
        ),
        7 => format!(
            "UPDATE events SET event_type = 'live', live = true, game_status = 'in_progress', score = '0-0' WHERE id = '{e}'"
        ),
        8 => format!("UPDATE events SET game_status = 'finished', live = false WHERE id = '{e}'"),
        9 => format!(
            "UPDATE events SET game_status = 'scheduled', event_type = 'upcoming', live = false WHERE id = '{e}'"
        ),
        10 => format!(
            "UPDATE events SET score = '{}-{}', elapsed = '{}''', external_liquidity = {} WHERE id = '{e}'",
            rng.random_range(0..4),
            rng.random_range(0..4),
            rng.random_range(1..90),
            rng.random_range(0..5000)
        ),
        11 => format!(
            "UPDATE events SET sport = '{}' WHERE id = '{e}'",
            SPORTS[rng.random_range(0..SPORTS.len())]
        ),
        12 => format!("DELETE FROM events WHERE id = '{e}'"),
        _ => insert_event(i),
    }
}

/// Writes at random for `time` in transactions of one to three writes, a tenth rolled back.
async fn writer(pool: PgPool, seed: u64, time: Duration) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + time;
    let mut committed = 0;
    let mut conn = pool.acquire().await.unwrap();
    while Instant::now() < deadline {
        let writes: Vec<String> = (0..rng.random_range(1..4))
            .map(|_| random_write(&mut rng))
            .collect();
        let rollback = rng.random_bool(0.1);
        let sql = format!(
            "BEGIN; {}; {}",
            writes.join("; "),
            if rollback { "ROLLBACK" } else { "COMMIT" }
        );
        // Concurrent writers deadlock now and then: PostgreSQL aborts one, which is fine.
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
        {
            Ok(_) if !rollback => committed += 1,
            Ok(_) => {}
            Err(_) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
    }
    committed
}

/// What a full recomputation from the database publishes: event views by id, as JSON.
async fn recomputed(db: &TestDb) -> BTreeMap<String, Value> {
    let source = Source::new(db.pool.clone(), None, None, None).unwrap();
    let params = OddsParams::default();
    source
        .active_events()
        .await
        .unwrap()
        .iter()
        .map(|input| {
            let view = serde_json::to_value(input.to_view(&params).0).unwrap();
            (input.id.clone(), view)
        })
        .collect()
}

/// Stored or received events without their identity and version, for comparing views.
fn views(events: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    events
        .iter()
        .map(|(id, e)| {
            let mut e = e.clone();
            if let Some(o) = e.as_object_mut() {
                o.remove("id");
                o.remove("version");
            }
            (id.clone(), e)
        })
        .collect()
}

fn incremental_env(db: &TestDb) -> (Vec<(&'static str, String)>, String) {
    let (mut env, channel) = publisher_env(db, &redis_url());
    // Only the first tick reads everything; every later one reads the change log.
    env.push(("FULL_RESYNC_INTERVAL_MS", "3600000".into()));
    (env, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_end_equal_to_a_full_recomputation() {
    let db = TestDb::new().await;
    seed(&db).await;
    let (env, channel) = incremental_env(&db);
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    let (mut client, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    client
        .send(json!({"type": "subscribe", "room": "sport:all"}))
        .await;
    let mut view = RoomView::default();

    let seed: u64 = rand::rng().random();
    eprintln!("writer seeds {seed}, {}, {}", seed + 1, seed + 2);
    let writers: Vec<_> = (0..3)
        .map(|k| tokio::spawn(writer(db.pool.clone(), seed + k, Duration::from_secs(5))))
        .collect();
    let mut committed = 0;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        if let Some(msg) = client.next_json(Duration::from_millis(100)).await
            && msg["room"] == "sport:all"
        {
            view.apply(&msg);
        }
    }
    for w in writers {
        committed += w.await.unwrap();
    }
    assert!(committed > 100, "only {committed} transactions committed");

    // Once the writes stop, the stored state, the client and a full recomputation agree.
    let expected = recomputed(&db).await;
    let deadline = Instant::now() + WAIT;
    loop {
        while let Some(msg) = client.next_json(Duration::from_millis(300)).await {
            if msg["room"] == "sport:all" {
                view.apply(&msg);
            }
        }
        let (meta, stored) = stored_state(&redis_url(), &channel).await;
        let seq: u64 = meta["seq"].parse().unwrap();
        if views(&stored) == expected && view.seq == seq {
            assert_eq!(views(&view.events), expected, "the client's book");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stored state never matched a full recomputation:\nstored {:#?}\nexpected {expected:#?}",
            views(&stored)
        );
    }
    assert!(view.gaps.is_empty(), "gaps: {:?}", view.gaps);

    // It got there by reading changes, not everything, and missed nothing on the way.
    let metrics = server.metrics().await;
    let reads = |kind: &str| {
        metric_value(
            &metrics,
            &format!("oddsfeed_publisher_reads_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(reads("full"), 1.0, "{metrics}");
    assert_eq!(reads("resync"), 0.0);
    assert!(reads("changed") > 10.0, "{metrics}");
    // Everything it consumed is gone from the log.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM event_changes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    drop(client);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_resync_counts_a_change_the_capture_missed() {
    let db = TestDb::new().await;
    seed(&db).await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("FULL_RESYNC_INTERVAL_MS", "1000".into()));
    let server = Server::start(&["publisher"], &env).await;
    wait_published(&redis_url(), &channel).await;
    let mut sub = Subscriber::new(&redis_url(), &channel).await;

    // A write the capture does not see (its trigger is off for this one statement).
    db.exec(
        "BEGIN;
         ALTER TABLE outcomes DISABLE TRIGGER outcomes_record_update;
         UPDATE outcomes SET external_price = 0.9 WHERE event_id = 'e1' AND name = 'YES';
         ALTER TABLE outcomes ENABLE TRIGGER outcomes_record_update;
         COMMIT;",
    )
    .await;
    // A captured change in the same interval is no difference.
    db.exec("UPDATE outcomes SET external_price = 0.2 WHERE event_id = 'e2' AND name = 'YES'")
        .await;
    let started = Instant::now();
    let mut seen_e1 = false;
    while !seen_e1 {
        let msg = sub
            .next_odds(Duration::from_secs(5))
            .await
            .expect("the resync publishes the missed change");
        seen_e1 = upserts(&msg).contains_key("e1");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    server
        .wait_metric(
            "oddsfeed_publisher_resync_differences_total",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_publisher_resync_differences_total"),
        1.0,
        "only e1 was missed"
    );
    assert!(server.log_text().contains("changes were missed"));
    // Each resync vacuums the change log (this server may run without autovacuum).
    eventually(WAIT, "the change log vacuumed", || async {
        let vacuums: i64 = sqlx::query_scalar(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'event_changes'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (vacuums > 0).then_some(())
    })
    .await;
    drop(server);
    db.drop_db().await;
}

/// Whether the change log has rows, and whether another session holds them (a tick's
/// uncommitted consumption).
async fn log_rows(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM event_changes),
                (SELECT count(*) FROM (SELECT 1 FROM event_changes FOR UPDATE SKIP LOCKED) free)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_between_reading_changes_and_publishing_them_leaves_them_to_the_standby() {
    let db = TestDb::new().await;
    seed(&db).await;
    let (env, channel) = incremental_env(&db);
    // The leader reaches Redis through a proxy that can stall it after it has read.
    let redis_proxy = FreezableProxy::start(url_addr(&redis_url())).await;
    let mut leader_env = env.clone();
    leader_env.retain(|(k, _)| *k != "REDIS_URL");
    leader_env.push(("REDIS_URL", redis_proxy.url_for(&redis_url())));
    let mut leader = Server::start(&["publisher"], &leader_env).await;
    wait_published(&redis_url(), &channel).await;
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let standby = Server::start(&["publisher"], &env).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, leader_status) = leader.get_json("/api/sports/ws-publisher").await;
    assert_eq!(leader_status["isPublishing"], true, "{leader_status}");
    let (meta, _) = stored_state(&redis_url(), &channel).await;
    let seq: u64 = meta["seq"].parse().unwrap();

    redis_proxy.freeze();
    db.exec("UPDATE outcomes SET external_price = 0.81 WHERE event_id = 'e1' AND name = 'YES'")
        .await;
    // The leader has consumed the change (its transaction holds the row) and is stuck
    // publishing it.
    eventually(WAIT, "the leader consuming the change", || async {
        (log_rows(&db.pool).await == (1, 0)).then_some(())
    })
    .await;
    leader.kill().await;
    // Its transaction rolled back: the change is in the log again, free for the next leader.
    eventually(WAIT, "the change back in the log", || async {
        let (rows, free) = log_rows(&db.pool).await;
        (free == rows && rows >= 1).then_some(())
    })
    .await;

    let msg = sub.next_odds(WAIT).await.expect("the standby publishes");
    assert_eq!(msg["seq"].as_u64(), Some(seq + 1), "the stream continues");
    let e1 = &upserts(&msg)["e1"];
    assert_eq!(e1["outcomes"][0]["name"], "YES");
    let (meta, stored) = stored_state(&redis_url(), &channel).await;
    assert_eq!(meta["seq"].parse::<u64>().unwrap(), seq + 1);
    assert_eq!(views(&stored), recomputed(&db).await);
    drop(standby);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_hands_over_within_its_lease_with_contiguous_seqs() {
    let db = TestDb::new().await;
    seed(&db).await;
    let (mut env, channel) = incremental_env(&db);
    env.push(("LEADER_LEASE_MS", "2000".into()));
    // The leader reaches PostgreSQL through a proxy that can go silent, as a partition does.
    let pg_proxy = FreezableProxy::start(url_addr(&admin_url())).await;
    let mut leader_env = env.clone();
    leader_env.retain(|(k, _)| *k != "DATABASE_URL");
    leader_env.push(("DATABASE_URL", pg_proxy.url_for(&db.url)));
    let leader = Server::start(&["publisher"], &leader_env).await;
    wait_published(&redis_url(), &channel).await;
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let standby = Server::start(&["publisher"], &env).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, status) = standby.get_json("/api/sports/ws-publisher").await;
    assert_eq!(status["isPublishing"], false, "{status}");
    let (meta, _) = stored_state(&redis_url(), &channel).await;
    let mut seq: u64 = meta["seq"].parse().unwrap();

    pg_proxy.freeze();
    let frozen_at = Instant::now();
    db.exec("UPDATE outcomes SET external_price = 0.77 WHERE event_id = 'e2' AND name = 'YES'")
        .await;
    let msg = sub
        .next_odds(Duration::from_secs(10))
        .await
        .expect("the standby publishes after the lease");
    let took = frozen_at.elapsed();
    assert!(upserts(&msg).contains_key("e2"), "{msg}");
    assert_eq!(msg["seq"].as_u64(), Some(seq + 1), "the stream continues");
    seq += 1;
    // Within the lease (2 s) plus a tick and a full read.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let (_, status) = standby.get_json("/api/sports/ws-publisher").await;
    assert_eq!(status["isPublishing"], true, "{status}");
    assert!(leader.log_text().contains("lost leadership"));

    // The old leader comes back: it stays standby, and the stream stays contiguous.
    pg_proxy.thaw();
    for price in [0.61, 0.62, 0.63] {
        db.exec(&format!(
            "UPDATE outcomes SET external_price = {price} WHERE event_id = 'e4' AND name = 'YES'"
        ))
        .await;
        let msg = sub.next_odds(WAIT).await.expect("the stream goes on");
        assert_eq!(msg["seq"].as_u64(), Some(seq + 1));
        seq += 1;
    }
    let (_, status) = leader.get_json("/api/sports/ws-publisher").await;
    assert_eq!(status["isPublishing"], false, "{status}");
    drop(leader);
    drop(standby);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_odds_channels_on_one_database_both_stay_complete() {
    let db = TestDb::new().await;
    seed(&db).await;
    let (env_a, channel_a) = incremental_env(&db);
    let (env_b, channel_b) = incremental_env(&db);
    let a = Server::start(&["publisher"], &env_a).await;
    wait_published(&redis_url(), &channel_a).await;
    let b = Server::start(&["publisher"], &env_b).await;
    wait_published(&redis_url(), &channel_b).await;

    let seed: u64 = rand::rng().random();
    eprintln!("writer seed {seed}");
    assert!(writer(db.pool.clone(), seed, Duration::from_secs(2)).await > 20);
    // The change log has one reader: the other channel reads everything, and neither stream
    // loses a change to the other.
    let expected = recomputed(&db).await;
    for channel in [&channel_a, &channel_b] {
        eventually(
            WAIT,
            "the channel to match a full recomputation",
            || async {
                (views(&stored_state(&redis_url(), channel).await.1) == expected).then_some(())
            },
        )
        .await;
    }
    let changed =
        |metrics: &str| metric_value(metrics, "oddsfeed_publisher_reads_total{kind=\"changed\"}");
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert!(changed(&ma) > 0.0, "the first leader reads changes");
    assert_eq!(changed(&mb), 0.0, "the second reads everything");
    assert!(b.log_text().contains("reads the change log"));
    drop(a);
    drop(b);
    db.drop_db().await;
}
