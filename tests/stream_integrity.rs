//! Seqs and versions are the publisher's alone and never reused; rooms may be joined before
//! anything is published in them; no task dies silently. Real PostgreSQL, Redis and clients.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(15);

fn ws_url(server: &Server) -> String {
    format!("ws://{}/ws", server.addr)
}

fn fast_env(db: &TestDb, redis: &str) -> (Vec<(&'static str, String)>, String) {
    let (mut env, channel) = publisher_env(db, redis);
    env.retain(|(k, _)| *k != "TICK_INTERVAL_MS");
    env.push(("TICK_INTERVAL_MS", "50".into()));
    (env, channel)
}

/// Subscribes `client` to `room` and returns the room's view after the snapshot.
async fn join(client: &mut WsClient, room: &str) -> RoomView {
    client
        .send(json!({"type": "subscribe", "room": room}))
        .await;
    let ack = client.expect_type("subscribed", WAIT).await;
    assert_eq!(ack["room"], room);
    let snapshot = client.expect_type("snapshot", WAIT).await;
    let mut view = RoomView::default();
    view.apply(&snapshot);
    view
}

/// Applies frames to the views until `done` holds (panics after `WAIT`).
async fn follow(
    client: &mut WsClient,
    views: &mut BTreeMap<String, RoomView>,
    what: &str,
    done: impl Fn(&BTreeMap<String, RoomView>) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(views) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = client
            .next_json(left)
            .await
            .unwrap_or_else(|| panic!("timed out waiting for {what}: {views:#?}"));
        if let Some(room) = msg["room"].as_str()
            && let Some(view) = views.get_mut(room)
        {
            view.apply(&msg);
        }
    }
}

/// Two tennis events served by `oddsfeed serve`, published, with a client in `rooms`.
async fn serve_two_events(
    ids: [&str; 2],
    rooms: &[&str],
) -> (TestDb, Server, String, WsClient, BTreeMap<String, RoomView>) {
    let db = TestDb::new().await;
    for id in ids {
        seed_one_event(&db, id).await;
    }
    let (env, channel) = fast_env(&db, &redis_url());
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    server.wait_stream_seq(1).await;
    let (mut client, _) = WsClient::connect_welcomed(&ws_url(&server)).await;
    let mut views = BTreeMap::new();
    for room in rooms {
        views.insert(room.to_string(), join(&mut client, room).await);
    }
    (db, server, channel, client, views)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_event_continues_its_version_in_every_room() {
    let (db, server, channel, mut client, mut views) =
        serve_two_events(["e1", "e2"], &["event:e1", "sport:all", "sport:tennis"]).await;
    assert_eq!(views["event:e1"].seq, 1);

    // Deactivated, then active again, twice: 1 → removal 2 → 3 → removal 4 → 5.
    for _ in 0..2 {
        db.exec("UPDATE events SET status = 'INACTIVE' WHERE id = 'e1'")
            .await;
        let seq = views["event:e1"].seq;
        follow(&mut client, &mut views, "the removal", |v| {
            v["event:e1"].seq == seq + 1
        })
        .await;
        assert!(views["event:e1"].events.is_empty());
        db.exec("UPDATE events SET status = 'ACTIVE' WHERE id = 'e1'")
            .await;
        follow(&mut client, &mut views, "the return", |v| {
            v["event:e1"].seq == seq + 2
        })
        .await;
        assert_eq!(views["event:e1"].events["e1"]["version"], seq + 2);
    }
    assert_eq!(views["event:e1"].seq, 5);
    let (_, stored) = stored_state(&redis_url(), &channel).await;
    assert_eq!(stored["e1"]["version"], 5);
    for (room, view) in &views {
        assert!(view.gaps.is_empty(), "{room}: {:?}", view.gaps);
        assert_eq!(view.snapshots, 1, "{room}: resynced");
    }
    assert_eq!(views["sport:all"].events, stored);

    // A client that joins the event room while the event is away learns the removal's seq,
    // and the next message continues from it.
    db.exec("UPDATE events SET status = 'INACTIVE' WHERE id = 'e1'")
        .await;
    follow(&mut client, &mut views, "the third removal", |v| {
        v["event:e1"].seq == 6
    })
    .await;
    // While it is away, the state keys hold its removal: version 6, at the removing seq.
    let removed = removed_hash(&channel).await;
    assert_eq!(
        removed.get("e1").and_then(|v| v.split(':').next()),
        Some("6"),
        "{removed:?}"
    );
    let (mut late, _) = WsClient::connect_welcomed(&ws_url(&server)).await;
    let mut late_view = join(&mut late, "event:e1").await;
    assert_eq!((late_view.seq, late_view.events.len()), (6, 0));
    db.exec("UPDATE events SET status = 'ACTIVE' WHERE id = 'e1'")
        .await;
    let back = late.expect_type("odds", WAIT).await;
    late_view.apply(&back);
    assert!(late_view.gaps.is_empty(), "{:?}", late_view.gaps);
    assert_eq!(late_view.events["e1"]["version"], 7);
    assert!(removed_hash(&channel).await.is_empty(), "e1 is back");

    // The removal versions are in the Redis state, so a new publisher process continues
    // them: removed at 8 by this process, back at 9 under the next one.
    db.exec("UPDATE events SET status = 'INACTIVE' WHERE id = 'e1'")
        .await;
    eventually(WAIT, "the fourth removal in the state", || async {
        removed_hash(&channel)
            .await
            .contains_key("e1")
            .then_some(())
    })
    .await;
    let mut server = server;
    server.terminate().await;
    let (env, _) = fast_env(&db, &redis_url());
    let env: Vec<_> = env
        .into_iter()
        .map(|(k, v)| {
            if k == "ODDS_CHANNEL" {
                (k, channel.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    let _next = Server::start(&["publisher"], &env).await;
    db.exec("UPDATE events SET status = 'ACTIVE' WHERE id = 'e1'")
        .await;
    let stored = eventually(WAIT, "e1 back under the new process", || async {
        let (_, stored) = stored_state(&redis_url(), &channel).await;
        stored.get("e1").map(|e| e["version"].clone())
    })
    .await;
    assert_eq!(stored, 9);
    db.drop_db().await;
}

/// The `C:state:removed` hash of a channel.
async fn removed_hash(channel: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL")
        .arg(format!("{channel}:state:removed"))
        .query_async(&mut redis_conn().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_can_be_joined_before_the_first_publish() {
    let db = TestDb::new().await;
    seed_one_event(&db, "t1").await;
    let (env, _channel) = fast_env(&db, &redis_url());
    // Only a broadcaster: nothing has ever been published on this channel.
    let broadcaster = Server::start(&["broadcaster"], &env).await;
    let (mut client, _) = WsClient::connect_welcomed(&ws_url(&broadcaster)).await;
    let mut views = BTreeMap::new();
    for room in ["sport:tennis", "event:t1", "sport:curling"] {
        let view = join(&mut client, room).await;
        assert_eq!((view.seq, view.events.len()), (0, 0), "{room}");
        views.insert(room.to_string(), view);
    }
    // The publisher starts: the rooms fill.
    let _publisher = Server::start(&["publisher"], &env).await;
    follow(&mut client, &mut views, "the first events", |v| {
        v["sport:tennis"].events.contains_key("t1") && v["event:t1"].events.contains_key("t1")
    })
    .await;
    assert_eq!(views["event:t1"].seq, 1);
    assert_eq!(views["sport:tennis"].seq, 1);
    assert!(views["sport:curling"].events.is_empty());
    // A sport that appears later fills its room too.
    db.exec(
        "INSERT INTO events (id, title, sport, team_a, team_b) VALUES ('c1', 'c1', 'Curling', 'A', 'B');
         INSERT INTO outcomes (event_id, name, position, external_price) VALUES ('c1', 'YES', 0, 0.5), ('c1', 'NO', 1, 0.5);",
    )
    .await;
    follow(&mut client, &mut views, "the curling event", |v| {
        v["sport:curling"].events.contains_key("c1")
    })
    .await;
    assert!(views["sport:curling"].gaps.is_empty());
    // Empty rooms cost nothing: leaving a room no sport has removes it.
    client
        .send(json!({"type": "subscribe", "room": "sport:nothing-here"}))
        .await;
    client.expect_type("snapshot", WAIT).await;
    client
        .send(json!({"type": "unsubscribe", "room": "sport:nothing-here"}))
        .await;
    client.expect_type("unsubscribed", WAIT).await;
    let metrics = broadcaster.metrics().await;
    assert_eq!(metric_value(&metrics, "oddsfeed_ws_subscriptions "), 3.0);
    db.drop_db().await;
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restored_with_older_state_starts_a_new_epoch() {
    let (db, server, channel, mut client, mut views) =
        serve_two_events(["r1", "r2"], &["sport:all"]).await;

    // A backup of the state at this seq.
    let mut conn = redis_conn().await;
    let meta_key = format!("{channel}:state:meta");
    let events_key = format!("{channel}:state:events");
    let old_meta: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&meta_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let old_events: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&events_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let old_epoch = views["sport:all"].epoch.clone();
    let old_seq = views["sport:all"].seq;
    for price in [0.6, 0.7] {
        db.exec(&format!(
            "UPDATE outcomes SET external_price = {price} WHERE event_id = 'r1' AND name = 'YES'"
        ))
        .await;
        let target = views["sport:all"].seq + 1;
        follow(&mut client, &mut views, "a change", |v| {
            v["sport:all"].seq == target
        })
        .await;
    }

    // Redis "restored" from the backup: the stream went back two seqs.
    let mut restore = redis::pipe();
    restore.atomic().del(&meta_key).del(&events_key);
    restore.hset_multiple(&meta_key, &old_meta);
    restore.hset_multiple(&events_key, &old_events);
    let _: () = restore.query_async(&mut conn).await.unwrap();
    db.exec("UPDATE outcomes SET external_price = 0.35 WHERE event_id = 'r2' AND name = 'YES'")
        .await;

    follow(&mut client, &mut views, "a new epoch", |v| {
        v["sport:all"].epoch != old_epoch
            // 0.35 / (0.35 + 0.5)
            && v["sport:all"].events.get("r2").is_some_and(|e| e["yesOdds"] == 0.4118)
    })
    .await;
    let (meta, stored) = stored_state(&redis_url(), &channel).await;
    assert_ne!(meta["epoch"], old_epoch);
    assert_eq!(views["sport:all"].events, stored);
    // 0.7 / (0.7 + 0.5): the change made after the backup is not lost.
    assert_eq!(stored["r1"]["yesOdds"], 0.5833, "nothing lost");
    assert!(old_seq > 0);
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_state_reloads_total{reason=\"behind\"}"),
        1.0,
        "{metrics}"
    );

    // State keys deleted while nothing changes come back with the next heartbeat.
    let _: () = redis::pipe()
        .del(&meta_key)
        .del(&events_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (meta, stored) = eventually(WAIT, "the state keys rewritten", || async {
        let (meta, stored) = stored_state(&redis_url(), &channel).await;
        (meta.contains_key("seq") && stored.len() == 2).then_some((meta, stored))
    })
    .await;
    assert_eq!(meta["seq"].parse::<u64>().unwrap(), views["sport:all"].seq);
    assert_eq!(views["sport:all"].events, stored);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_panics_is_restarted_and_reported_while_down() {
    let db = TestDb::new().await;
    seed_one_event(&db, "s1").await;
    let (mut env, channel) = fast_env(&db, &redis_url());
    env.push(("FAULT_INJECTION", "true".into()));
    // Long enough to see each task down.
    env.push(("TASK_RESTART_BACKOFF_MS", "1500".into()));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let server = Server::start(&["serve", "--simulate"], &env).await;
    wait_published(&redis_url(), &channel).await;
    let http = reqwest::Client::new();
    for task in ["scheduler", "listener", "relay", "probe", "simulator"] {
        let resp = http
            .post(server.url(&format!("/debug/panic/{task}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{task}");
        let (code, health) = eventually(WAIT, "the task reported down", || async {
            let (code, health) = server.get_json("/health").await;
            (health["tasks"][task]["status"] == "restarting").then_some((code, health))
        })
        .await;
        assert_eq!(health["status"], "degraded", "{task}: {health}");
        let critical = matches!(task, "scheduler" | "relay");
        assert_eq!(code, if critical { 503 } else { 200 }, "{task}: {health}");
        assert!(
            health["tasks"][task]["lastFailure"]
                .as_str()
                .unwrap()
                .contains(&format!("fault injected into task {task}")),
            "{health}"
        );
        if task == "scheduler" {
            let (code, status) = server.get_json("/api/sports/ws-publisher").await;
            assert_eq!(
                (code, status["status"].as_str()),
                (503, Some("down")),
                "{status}"
            );
            assert_eq!(status["isPublishing"], false);
        }
        let health = eventually(WAIT, "the task running again", || async {
            let (code, health) = server.get_json("/health").await;
            (code == 200 && health["status"] == "ok").then_some(health)
        })
        .await;
        assert_eq!(health["tasks"][task]["restarts"], 1, "{health}");
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_task_restarts_total"),
        5.0,
        "{metrics}"
    );
    // The stream went on: the restarted scheduler continued the same epoch with contiguous seqs.
    db.exec("UPDATE outcomes SET external_price = 0.61 WHERE event_id = 's1' AND name = 'YES'")
        .await;
    let mut last: Option<Value> = None;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let Some(msg) = sub.next_odds(Duration::from_secs(2)).await else {
            break;
        };
        if let Some(prev) = &last {
            assert_eq!(msg["epoch"], prev["epoch"]);
            assert_eq!(msg["seq"], prev["seq"].as_u64().unwrap() + 1);
        }
        let done = upserts(&msg)
            .get("s1")
            .is_some_and(|e| e["yesOdds"].as_f64().is_some());
        last = Some(msg);
        if done {
            break;
        }
    }
    assert!(last.is_some(), "publishing resumed");
    drop(server);
    db.drop_db().await;
}
