//! The broadcast server end to end: real Redis and PostgreSQL, the real binary, real
//! WebSocket clients over TCP.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::SinkExt;
use rand::Rng;
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// Events across three sports; `f*` are football with three outcomes.
async fn seed(db: &TestDb, per_sport: usize) {
    let mut sql = String::new();
    for (sport, prefix, outcomes) in [
        ("Football", "f", &["HOME", "DRAW", "AWAY"][..]),
        ("Tennis", "t", &["YES", "NO"][..]),
        ("Ice Hockey", "h", &["YES", "NO"][..]),
    ] {
        for i in 0..per_sport {
            sql.push_str(&format!(
                "INSERT INTO events (id, title, sport, team_a, team_b, event_type, live, start_time)
                 VALUES ('{prefix}{i}', '{prefix}{i}', '{sport}', 'A{i}', 'B{i}', 'upcoming', {live}, now() + interval '{i} minutes');",
                live = i % 3 == 0
            ));
            for (pos, name) in outcomes.iter().enumerate() {
                sql.push_str(&format!(
                    "INSERT INTO outcomes (event_id, name, position, external_price) VALUES ('{prefix}{i}', '{name}', {pos}, 0.{});",
                    3 + pos
                ));
            }
        }
    }
    db.exec(&sql).await;
}

fn serve_env(db: &TestDb, redis: &str) -> (Vec<(&'static str, String)>, String) {
    let (mut env, channel) = publisher_env(db, redis);
    env.retain(|(k, _)| *k != "TICK_INTERVAL_MS");
    env.push(("TICK_INTERVAL_MS", "50".into()));
    env.push(("JWT_SECRET", "test-secret".into()));
    (env, channel)
}

/// `serve` on `per_sport` events of each sport, once its first message is published.
async fn serve_seeded(db: &TestDb, per_sport: usize) -> (Server, String) {
    seed(db, per_sport).await;
    let (env, channel) = serve_env(db, &redis_url());
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    (server, channel)
}

fn ws_url(server: &Server) -> String {
    format!("ws://{}/ws", server.addr)
}

/// Subscribes and returns the room's view after its snapshot.
async fn join(client: &mut WsClient, room: &str) -> RoomView {
    client
        .send(json!({"type": "subscribe", "room": room, "id": room}))
        .await;
    let ack = client.expect_type("subscribed", WAIT).await;
    assert_eq!(ack["room"], room);
    assert_eq!(ack["id"], room);
    let snapshot = client.expect_type("snapshot", WAIT).await;
    assert_eq!(snapshot["room"], room);
    let mut view = RoomView::default();
    view.apply(&snapshot);
    view
}

/// Reads frames for `quiet` after the last one, applying those for `rooms`.
async fn drain(client: &mut WsClient, views: &mut BTreeMap<String, RoomView>, quiet: Duration) {
    while let Some(msg) = client.next_json(quiet).await {
        if let Some(room) = msg["room"].as_str()
            && let Some(view) = views.get_mut(room)
        {
            view.apply(&msg);
        }
    }
}

/// [`random_changes`] in a task of its own, on the same pool.
fn spawn_random_changes(db: &TestDb, rounds: usize) -> tokio::task::JoinHandle<()> {
    let db = TestDb {
        name: String::new(),
        url: String::new(),
        pool: db.pool.clone(),
    };
    tokio::spawn(async move { random_changes(&db, rounds).await })
}

/// The stored state of one room.
fn expected(stored: &BTreeMap<String, Value>, room: &str) -> BTreeMap<String, Value> {
    stored
        .iter()
        .filter(|(id, e)| match room.split_once(':') {
            Some(("sport", "all")) => true,
            Some(("sport", key)) => e["sport"] == key,
            Some(("event", eid)) => id.as_str() == eid,
            _ => false,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

async fn random_changes(db: &TestDb, rounds: usize) {
    for _ in 0..rounds {
        let (kind, n) = {
            let mut rng = rand::rng();
            (rng.random_range(0..4), rng.random_range(0..6))
        };
        let sql = match kind {
            0 => format!(
                "UPDATE outcomes SET external_price = round((random() * 0.9 + 0.05)::numeric, 3) WHERE event_id = 'f{n}'"
            ),
            1 => format!(
                "INSERT INTO bets (event_id, outcome, amount) VALUES ('t{n}', 'YES', {})",
                10 + n * 7
            ),
            2 => format!("UPDATE events SET score = '{n}-0', live = true WHERE id = 'h{n}'"),
            _ => format!(
                "UPDATE events SET game_status = CASE game_status WHEN 'finished' THEN 'in_progress' ELSE 'finished' END WHERE id = 'f{}'",
                n + 6
            ),
        };
        db.exec(&sql).await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_converge_to_the_published_state_with_contiguous_seqs() {
    let db = TestDb::new().await;
    seed(&db, 12).await;
    let (env, channel) = serve_env(&db, &redis_url());
    let server = Server::start(&["serve"], &env).await;
    let url = ws_url(&server);
    // The first publish makes the event rooms exist.
    wait_published(&redis_url(), &channel).await;

    let rooms = [
        "sport:all",
        "sport:football",
        "sport:ice-hockey",
        "event:f1",
        "event:t2",
    ];
    let mut clients = Vec::new();
    for room in rooms {
        let (mut client, welcome) = WsClient::connect_welcomed(&url).await;
        assert!(welcome["clientId"].is_string() && welcome["serverTime"].is_i64());
        assert_eq!(welcome["heartbeatMs"], 25000);
        let view = join(&mut client, room).await;
        assert!(
            !view.events.is_empty() || room.starts_with("event:"),
            "{room} snapshot has events"
        );
        clients.push((client, BTreeMap::from([(room.to_string(), view)])));
    }
    // One client in several rooms at once.
    let (mut multi, _) = WsClient::connect_welcomed(&url).await;
    let mut multi_views = BTreeMap::new();
    for room in ["sport:tennis", "event:h0"] {
        multi_views.insert(room.to_string(), join(&mut multi, room).await);
    }
    clients.push((multi, multi_views));

    let changer = spawn_random_changes(&db, 120);
    // Read while changes happen, so no queue grows.
    let started = Instant::now();
    while !changer.is_finished() || started.elapsed() < Duration::from_millis(500) {
        for (client, views) in clients.iter_mut() {
            drain(client, views, Duration::from_millis(5)).await;
        }
    }
    changer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (client, views) in clients.iter_mut() {
        drain(client, views, Duration::from_millis(400)).await;
    }

    let (meta, stored) = stored_state(&redis_url(), &channel).await;
    let mut diffs = 0;
    for (_, views) in &clients {
        for (room, view) in views {
            assert!(view.gaps.is_empty(), "{room}: seq gaps {:?}", view.gaps);
            assert_eq!(view.snapshots, 1, "{room}: only the initial snapshot");
            assert_eq!(view.epoch, meta["epoch"], "{room}");
            assert_eq!(view.events, expected(&stored, room), "{room} converged");
            match room.as_str() {
                "sport:all" => assert_eq!(view.seq.to_string(), meta["seq"]),
                r if r.starts_with("sport:") => {
                    assert_eq!(view.seq.to_string(), meta[&format!("sport:{}", &r[6..])])
                }
                r => {
                    if let Some(e) = stored.get(&r[6..]) {
                        assert_eq!(
                            view.seq,
                            e["version"].as_u64().unwrap(),
                            "{room} seq is the version"
                        );
                    }
                }
            }
            diffs += view.diffs;
        }
    }
    assert!(diffs > 20, "changes were streamed ({diffs} diffs)");

    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_delivery_latency_seconds_count{room=\"all\"}"
        ) > 0.0
    );
    assert!(metric_value(&metrics, "oddsfeed_relay_receive_latency_seconds_count") > 0.0);
    // The room frames went through the fan-out threads, straight into the sockets.
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_ws_fanout_flushes_total{path=\"direct\"}"
        ) > 0.0
    );
    assert!(metric_value(&metrics, "oddsfeed_ws_fanout_batch_seconds_count") > 0.0);
    assert_eq!(metric_value(&metrics, "oddsfeed_ws_connections "), 6.0);
    let (_, health) = server.get_json("/health").await;
    assert_eq!(health["connections"], 6);
    assert_eq!(health["stream"]["publisher"], "live");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_buffered_messages_or_sends_a_snapshot() {
    let db = TestDb::new().await;
    seed(&db, 4).await;
    let (mut env, channel) = serve_env(&db, &redis_url());
    env.push(("REPLAY_BUFFER_MESSAGES", "5".into()));
    let server = Server::start(&["serve"], &env).await;
    let url = ws_url(&server);
    wait_published(&redis_url(), &channel).await;

    let (mut client, _) = WsClient::connect_welcomed(&url).await;
    let view = join(&mut client, "sport:football").await;
    drop(client);

    // Three football changes while away: still buffered.
    for p in ["0.31", "0.32", "0.33"] {
        db.exec(&format!(
            "UPDATE outcomes SET external_price = {p} WHERE event_id = 'f1' AND name = 'HOME'"
        ))
        .await;
        // One tick each, so each change is its own message.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut client, _) = WsClient::connect_welcomed(&url).await;
    client
        .send(json!({"type": "subscribe", "room": "sport:football", "epoch": view.epoch, "seq": view.seq}))
        .await;
    client.expect_type("subscribed", WAIT).await;
    let mut resumed = view.clone();
    let mut got = Vec::new();
    while let Some(msg) = client.next_json(Duration::from_millis(500)).await {
        assert_ne!(
            msg["type"], "snapshot",
            "buffered messages are replayed, not snapshotted"
        );
        resumed.apply(&msg);
        got.push(msg);
    }
    assert_eq!(got.len(), 3, "the three missed messages: {got:?}");
    assert!(resumed.gaps.is_empty(), "{:?}", resumed.gaps);
    let (meta, stored) = stored_state(&redis_url(), &channel).await;
    assert_eq!(resumed.seq.to_string(), meta["sport:football"]);
    assert_eq!(resumed.events, expected(&stored, "sport:football"));

    // Up to date: nothing but the ack.
    client
        .send(json!({"type": "subscribe", "room": "sport:football", "epoch": resumed.epoch, "seq": resumed.seq}))
        .await;
    client.expect_type("subscribed", WAIT).await;
    assert!(client.next_json(Duration::from_millis(300)).await.is_none());

    // Too far behind (more than 5 messages) or another epoch: a snapshot.
    for i in 0..7 {
        db.exec(&format!(
            "UPDATE outcomes SET external_price = 0.{} WHERE event_id = 'f2' AND name = 'DRAW'",
            40 + i
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (mut late, _) = WsClient::connect_welcomed(&url).await;
    late.send(json!({"type": "subscribe", "room": "sport:football", "epoch": view.epoch, "seq": view.seq})).await;
    late.expect_type("subscribed", WAIT).await;
    let snap = late.expect_type("snapshot", WAIT).await;
    let (meta, _) = stored_state(&redis_url(), &channel).await;
    assert_eq!(snap["seq"].to_string(), meta["sport:football"]);
    late.send(
        json!({"type": "subscribe", "room": "sport:all", "epoch": "not-this-epoch", "seq": 1}),
    )
    .await;
    late.expect_type("subscribed", WAIT).await;
    assert_eq!(
        late.expect_type("snapshot", WAIT).await["room"],
        "sport:all"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_ws_resumes_total{result=\"replayed\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "oddsfeed_ws_resumes_total{result=\"snapshot\"}"),
        2.0
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_the_connection_stays_usable() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let (mut env, channel) = serve_env(&db, &redis_url());
    env.push(("MAX_ROOMS_PER_CONNECTION", "3".into()));
    env.push(("CLIENT_MESSAGES_PER_MINUTE", "30".into()));
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    let (mut c, _) = WsClient::connect_welcomed(&ws_url(&server)).await;

    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad_request"),
        (
            json!({"type": "teleport", "id": 1}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "subscribe", "room": "nonsense", "id": 2}).to_string(),
            "unknown_room",
        ),
        (
            // Rooms that may fill later are fine; malformed odds room names are not rooms.
            json!({"type": "subscribe", "room": "sport:Curling"}).to_string(),
            "unknown_room",
        ),
        (
            json!({"type": "subscribe", "room": "event:"}).to_string(),
            "unknown_room",
        ),
        (
            json!({"type": "unsubscribe", "room": "sport:all"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "auth", "token": "not-a-jwt"}).to_string(),
            "unauthorized",
        ),
        (
            json!({"type": "latency", "ms": "NaN"}).to_string(),
            "bad_request",
        ),
        (
            format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000)),
            "too_large",
        ),
    ];
    for (text, code) in &cases {
        c.send_text(text.clone()).await;
        let err = c.expect_type("error", WAIT).await;
        assert_eq!(err["code"], *code, "{}: {err}", &text[..text.len().min(60)]);
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        c.assert_usable().await;
    }
    // The id is echoed on errors.
    c.send(json!({"type": "subscribe", "room": "nonsense", "id": "x-1"}))
        .await;
    assert_eq!(c.expect_type("error", WAIT).await["id"], "x-1");

    // Too many rooms.
    for room in ["sport:all", "sport:football", "sport:tennis"] {
        c.send(json!({"type": "subscribe", "room": room})).await;
        c.expect_type("snapshot", WAIT).await;
    }
    c.send(json!({"type": "subscribe", "room": "sport:ice-hockey"}))
        .await;
    assert_eq!(c.expect_type("error", WAIT).await["code"], "too_many_rooms");
    c.send(json!({"type": "rooms", "id": 9})).await;
    let rooms = c.expect_type("rooms", WAIT).await;
    assert_eq!(
        rooms["rooms"],
        json!(["sport:all", "sport:football", "sport:tennis"])
    );
    assert_eq!(rooms["id"], 9);
    c.send(json!({"type": "unsubscribe", "room": "sport:tennis", "id": 3}))
        .await;
    let unsub = c.expect_type("unsubscribed", WAIT).await;
    assert_eq!(
        (unsub["room"].as_str(), unsub["id"].as_i64()),
        (Some("sport:tennis"), Some(3))
    );

    // The rate limit: 30 a minute, most of which the cases above used.
    let mut limited = false;
    for _ in 0..40 {
        c.send(json!({"type": "rooms"})).await;
    }
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(msg) = c
        .next_json(until.saturating_duration_since(Instant::now()))
        .await
    {
        if msg["type"] == "error" && msg["code"] == "rate_limited" {
            limited = true;
        }
    }
    assert!(limited, "rate_limited after the burst");
    // Still connected: after a token refills (2 s at 30/min), a ping works.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.assert_usable().await;

    // Binary frames: refused, and counted by the rate limiter like text: a few tokens have
    // refilled by now, and a burst of binary frames runs out of them.
    let mut codes = Vec::new();
    for _ in 0..8 {
        c.stream
            .send(tokio_tungstenite::tungstenite::Message::binary(vec![
                1u8, 2, 3,
            ]))
            .await
            .unwrap();
        let code = c.expect_type("error", WAIT).await["code"].clone();
        codes.push(code.as_str().unwrap_or_default().to_string());
        if code == "rate_limited" {
            break;
        }
    }
    assert_eq!(codes[0], "bad_request", "{codes:?}");
    assert_eq!(
        codes.last().map(String::as_str),
        Some("rate_limited"),
        "{codes:?}"
    );

    // Another client was never disturbed.
    let (mut other, _) = WsClient::connect_welcomed(&ws_url(&server)).await;
    other.assert_usable().await;
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_ws_client_errors_total{code=\"unknown_room\"}"
        ) >= 3.0
    );
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_ws_client_errors_total{code=\"rate_limited\"}"
        ) >= 1.0
    );
    db.drop_db().await;
}

/// A client with a broken clock: its impossible latencies are answered `recorded: false` with
/// the reason and counted, and only the plausible one reaches the histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_latency_reports_are_counted_not_recorded() {
    let db = TestDb::new().await;
    let (server, _) = serve_seeded(&db, 2).await;
    let (mut c, welcome) = WsClient::connect_welcomed(&ws_url(&server)).await;
    c.send(json!({"type": "subscribe", "room": "sport:all"}))
        .await;
    c.expect_type("snapshot", WAIT).await;
    // Server time in microseconds too, for clock offsets below a millisecond.
    c.send(json!({"type": "ping", "id": "clock"})).await;
    let pong = c.expect_type("pong", WAIT).await;
    for message in [&welcome, &pong] {
        let us = message["serverTimeUs"].as_i64().expect("serverTimeUs");
        assert_eq!(us.div_euclid(1000), message["serverTime"], "{message}");
    }

    // Arrange: one report a second is considered, so each value gets its own second.
    let cases = [
        (json!(14700), false, json!("too_large")),
        (json!(-5), false, json!("negative")),
        // JSON.stringify(NaN) and JSON.stringify(Infinity) are null.
        (Value::Null, false, json!("not_finite")),
        (json!(12.3), true, Value::Null),
    ];
    // When the reply to the last report taken came: after the server took it.
    let mut taken = std::time::Instant::now();
    for (i, (ms, recorded, reason)) in cases.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        // Act
        c.send(json!({"type": "latency", "ms": ms, "id": i})).await;
        let reply = c.expect_type("latency", WAIT).await;
        taken = std::time::Instant::now();
        // Assert
        assert_eq!(reply["id"], i, "{reply}");
        assert_eq!(reply["recorded"], *recorded, "{ms}: {reply}");
        assert_eq!(reply["reason"], *reason, "{ms}: {reply}");
    }
    // Within the second: neither recorded nor counted as implausible.
    c.send(json!({"type": "latency", "ms": 20000})).await;
    let reply = c.expect_type("latency", WAIT).await;
    assert_eq!(reply["recorded"], false, "{reply}");
    assert!(reply.get("reason").is_none(), "{reply}");
    // Every reply has the server's time: a report is also a ping for the clock offset.
    let us = reply["serverTimeUs"].as_i64().expect("serverTimeUs");
    assert_eq!(us.div_euclid(1000), reply["serverTime"], "{reply}");
    // At most one a second: 0.95 s after the last one taken, a report is still refused; 1.1 s
    // after it (the JavaScript client's period), it is taken.
    for (after, recorded) in [(950, false), (1100, true)] {
        let due = taken + Duration::from_millis(after);
        tokio::time::sleep(due.saturating_duration_since(std::time::Instant::now())).await;
        c.send(json!({"type": "latency", "ms": 7.5})).await;
        let reply = c.expect_type("latency", WAIT).await;
        assert_eq!(reply["recorded"], recorded, "{after} ms: {reply}");
    }
    // Not a number at all: a malformed message, not a measurement.
    c.send(json!({"type": "latency", "ms": "NaN"})).await;
    assert_eq!(c.expect_type("error", WAIT).await["code"], "bad_request");

    server
        .wait_metric("oddsfeed_browser_latency_seconds_count", 2.0, WAIT)
        .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_browser_latency_seconds_count"),
        2.0,
        "{metrics}"
    );
    let sum = metric_value(&metrics, "oddsfeed_browser_latency_seconds_sum");
    assert!(
        (sum - 0.0198).abs() < 1e-9,
        "only 12.3 and 7.5 ms recorded: {sum}"
    );
    for reason in ["too_large", "negative", "not_finite"] {
        assert_eq!(
            metric_value(
                &metrics,
                &format!("oddsfeed_browser_latency_rejected_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{reason}: {metrics}"
        );
    }
    db.drop_db().await;
}

async fn subscribe_refused(client: &mut WsClient, room: &str, code: &str) {
    client
        .send(json!({"type": "subscribe", "room": room}))
        .await;
    let err = client.expect_type("error", WAIT).await;
    assert_eq!(err["code"], code, "{room}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_channels_route_by_room_and_channel_with_access_rules() {
    let db = TestDb::new().await;
    let (mut env, _) = serve_env(&db, &redis_url());
    let suffix = random_suffix();
    let (chat, users, admin_events) = (
        format!("chat-{suffix}"),
        format!("users-{suffix}"),
        "admin-events".to_string(),
    );
    env.push(("BRIDGED_CHANNELS", format!("{chat},{users},{admin_events}")));
    let server = Server::start(&["serve"], &env).await;
    let url = ws_url(&server);
    let token = |sub: &str, role: Option<&str>, exp_offset: i64| {
        let exp = (chrono::Utc::now().timestamp() + exp_offset) as u64;
        oddsfeed::broadcaster::auth::sign(
            "test-secret",
            &oddsfeed::broadcaster::auth::Claims {
                sub: sub.into(),
                role: role.map(str::to_string),
                exp,
                iat: None,
            },
        )
        .unwrap()
    };

    // Alice authenticates with ?token=, Bob with an auth message, Eve not at all.
    let (mut alice, _) =
        WsClient::connect_welcomed(&format!("{url}?token={}", token("alice", None, 600))).await;
    let auth = alice.expect_type("authenticated", WAIT).await;
    assert_eq!(auth["sub"], "alice");
    assert_eq!(
        alice.expect_type("subscribed", WAIT).await["room"],
        "user:alice"
    );
    let (mut bob, _) = WsClient::connect_welcomed(&url).await;
    bob.send(json!({"type": "auth", "token": token("bob", Some("admin"), 600), "id": "a"}))
        .await;
    let auth = bob.expect_type("authenticated", WAIT).await;
    assert_eq!(
        (auth["role"].as_str(), auth["id"].as_str()),
        (Some("admin"), Some("a"))
    );
    let (mut eve, _) = WsClient::connect_welcomed(&url).await;

    // user:<id> only for that user; admin rooms only for role admin; bad tokens refused.
    subscribe_refused(&mut eve, "user:alice", "unauthorized").await;
    subscribe_refused(&mut bob, "user:alice", "forbidden").await;
    subscribe_refused(&mut alice, "admin", "forbidden").await;
    subscribe_refused(&mut eve, "admin-events", "unauthorized").await;
    for bad in [token("eve", Some("admin"), -120), "x.y.z".into(), {
        let forged = oddsfeed::broadcaster::auth::sign(
            "wrong-secret",
            &oddsfeed::broadcaster::auth::Claims {
                sub: "eve".into(),
                role: Some("admin".into()),
                exp: u64::MAX / 2,
                iat: None,
            },
        );
        forged.unwrap()
    }] {
        eve.send(json!({"type": "auth", "token": bad})).await;
        assert_eq!(eve.expect_type("error", WAIT).await["code"], "unauthorized");
    }
    // A bad token grants nothing.
    subscribe_refused(&mut eve, "admin", "unauthorized").await;
    let (mut eve2, _) =
        WsClient::connect_welcomed(&format!("{url}?token={}", token("eve", None, -120))).await;
    assert_eq!(
        eve2.expect_type("error", WAIT).await["code"],
        "unauthorized"
    );

    for room in ["admin", "admin-events"] {
        bob.send(json!({"type": "subscribe", "room": room})).await;
        assert_eq!(bob.expect_type("subscribed", WAIT).await["room"], room);
    }
    for room in ["chat:match-1", chat.as_str()] {
        eve.send(json!({"type": "subscribe", "room": room})).await;
        assert_eq!(eve.expect_type("subscribed", WAIT).await["room"], room);
    }

    // Routing: by "room", else by channel name.
    redis_publish(
        &redis_url(),
        &users,
        &json!({"room": "user:alice", "balance": 10}).to_string(),
    )
    .await;
    let m = alice.expect_type("message", WAIT).await;
    assert_eq!(
        (m["room"].as_str(), m["channel"].as_str()),
        (Some("user:alice"), Some(users.as_str()))
    );
    assert_eq!(m["data"]["balance"], 10);
    redis_publish(
        &redis_url(),
        &chat,
        &json!({"room": "chat:match-1", "text": "goal"}).to_string(),
    )
    .await;
    assert_eq!(
        eve.expect_type("message", WAIT).await["data"]["text"],
        "goal"
    );
    redis_publish(
        &redis_url(),
        &chat,
        &json!({"text": "to the channel room"}).to_string(),
    )
    .await;
    let m = eve.expect_type("message", WAIT).await;
    assert_eq!(
        (m["room"].as_str(), m["data"]["text"].as_str()),
        (Some(chat.as_str()), Some("to the channel room"))
    );
    redis_publish(
        &redis_url(),
        "admin-events",
        &json!({"room": "admin", "alert": 1}).to_string(),
    )
    .await;
    assert_eq!(bob.expect_type("message", WAIT).await["data"]["alert"], 1);
    redis_publish(
        &redis_url(),
        "admin-events",
        &json!({"alert": 2}).to_string(),
    )
    .await;
    assert_eq!(
        bob.expect_type("message", WAIT).await["room"],
        "admin-events"
    );
    // Not JSON: dropped, nobody disturbed.
    redis_publish(&redis_url(), &chat, "plain text").await;

    // Nobody received what was not theirs.
    for client in [&mut alice, &mut eve] {
        while let Some(msg) = client.next_json(Duration::from_millis(300)).await {
            let room = msg["room"].as_str().unwrap_or_default();
            assert!(!room.starts_with("admin"), "leaked: {msg}");
        }
    }
    while let Some(msg) = bob.next_json(Duration::from_millis(300)).await {
        assert_ne!(msg["room"], "user:alice", "leaked to bob: {msg}");
    }
    eve.assert_usable().await;

    // An identity ends with its token: at `exp` the private rooms are left.
    let (mut brief, _) = WsClient::connect_welcomed(&url).await;
    brief
        .send(json!({"type": "auth", "token": token("brief", Some("admin"), 2)}))
        .await;
    brief.expect_type("authenticated", WAIT).await;
    brief
        .send(json!({"type": "subscribe", "room": "admin"}))
        .await;
    brief.expect_type("subscribed", WAIT).await;
    let err = brief.expect_type("error", WAIT).await;
    assert_eq!(err["code"], "unauthorized", "{err}");
    brief.send(json!({"type": "rooms"})).await;
    assert_eq!(brief.expect_type("rooms", WAIT).await["rooms"], json!([]));
    subscribe_refused(&mut brief, "admin", "unauthorized").await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_broadcasters_tell_the_same_story() {
    let db = TestDb::new().await;
    seed(&db, 6).await;
    let (env, channel) = serve_env(&db, &redis_url());
    let _publisher = Server::start(&["publisher"], &env).await;
    let b1 = Server::start(&["broadcaster"], &env).await;
    let b2 = Server::start(&["broadcaster"], &env).await;
    wait_published(&redis_url(), &channel).await;

    let (mut c1, _) = WsClient::connect_welcomed(&ws_url(&b1)).await;
    let (mut c2, _) = WsClient::connect_welcomed(&ws_url(&b2)).await;
    // Join in the same quiet moment so both start from the same snapshot.
    let s1 = join(&mut c1, "sport:all").await;
    let s2 = join(&mut c2, "sport:all").await;
    let start = s1.seq.max(s2.seq);
    random_changes(&db, 40).await;
    let mut m1 = Vec::new();
    let mut m2 = Vec::new();
    while let Some(m) = c1.next_json(Duration::from_millis(600)).await {
        if m["type"] == "odds" {
            m1.push(m);
        }
    }
    while let Some(m) = c2.next_json(Duration::from_millis(600)).await {
        if m["type"] == "odds" {
            m2.push(m);
        }
    }
    m1.retain(|m| m["seq"].as_u64().unwrap() > start);
    m2.retain(|m| m["seq"].as_u64().unwrap() > start);
    assert!(m1.len() > 5, "messages flowed: {}", m1.len());
    assert_eq!(
        m1, m2,
        "identical messages (seq and content) from both nodes"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_also_at_root_and_the_board_for_browsers() {
    let db = TestDb::new().await;
    let (server, _) = serve_seeded(&db, 2).await;

    // CONTRACT §6: the endpoint is also accepted at /.
    let (mut c, _) = WsClient::connect_welcomed(&format!("ws://{}/", server.addr)).await;
    assert_eq!(join(&mut c, "sport:football").await.events.len(), 2);

    // A plain GET of / is the odds board, with the client it imports; /ws wants an upgrade.
    let page = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("./oddsfeed-client.js"));
    let js = reqwest::get(server.url("/oddsfeed-client.js"))
        .await
        .unwrap();
    assert!(
        js.text()
            .await
            .unwrap()
            .contains("export class OddsFeedClient")
    );
    assert_eq!(reqwest::get(server.url("/ws")).await.unwrap().status(), 426);
    db.drop_db().await;
}

/// Reads frames for `quiet` after the last one into `view`; returns the bytes of the `odds`
/// messages read (as JSON text).
async fn read_odds(client: &mut WsClient, view: &mut RoomView, quiet: Duration) -> usize {
    let mut bytes = 0;
    while let Some(msg) = client.next_json(quiet).await {
        if msg["type"] == "odds" {
            bytes += msg.to_string().len();
        }
        view.apply(&msg);
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_format_carries_only_what_changed_and_converges() {
    let db = TestDb::new().await;
    let (server, channel) = serve_seeded(&db, 12).await;

    // An unknown format is refused before the upgrade, with the reason.
    let refused = reqwest::get(format!("http://{}/ws?format=compact", server.addr))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body = refused.text().await.unwrap();
    assert!(body.contains("format must be full or changes"), "{body}");

    let (mut full, _) = WsClient::connect_welcomed(&ws_url(&server)).await;
    let (mut changes, _) =
        WsClient::connect_welcomed(&format!("{}?format=changes", ws_url(&server))).await;
    // Both in sport:all, the changes client also in a sport room and an event room.
    let mut full_view = join(&mut full, "sport:all").await;
    let mut views = BTreeMap::new();
    for room in ["sport:all", "sport:football", "event:f1"] {
        views.insert(room.to_string(), join(&mut changes, room).await);
    }

    let changer = spawn_random_changes(&db, 80);
    let (mut full_bytes, mut changes_bytes) = (0, 0);
    let mut partial_upserts = 0;
    let started = Instant::now();
    while !changer.is_finished() || started.elapsed() < Duration::from_millis(500) {
        full_bytes += read_odds(&mut full, &mut full_view, Duration::from_millis(5)).await;
        while let Some(msg) = changes.next_json(Duration::from_millis(5)).await {
            if msg["type"] == "odds" {
                assert_eq!(msg["format"], "changes", "{msg}");
                if msg["room"] == "sport:all" {
                    changes_bytes += msg.to_string().len();
                }
                partial_upserts += msg["upserts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("title").is_none())
                    .count();
            }
            if let Some(view) = msg["room"].as_str().and_then(|r| views.get_mut(r)) {
                view.apply(&msg);
            }
        }
    }
    changer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    full_bytes += read_odds(&mut full, &mut full_view, Duration::from_millis(400)).await;
    drain(&mut changes, &mut views, Duration::from_millis(400)).await;

    let (meta, stored) = stored_state(&redis_url(), &channel).await;
    assert_eq!(full_view.events, expected(&stored, "sport:all"));
    assert_eq!(full_view.seq.to_string(), meta["seq"]);
    for (room, view) in &views {
        assert!(view.gaps.is_empty(), "{room}: {:?}", view.gaps);
        assert_eq!(
            view.events,
            expected(&stored, room),
            "{room}: merged changes equal the published state"
        );
    }
    assert!(view_diffs(&views) > 20, "changes were streamed");
    assert!(
        partial_upserts > 0,
        "price moves came without the unchanged fields"
    );
    assert!(
        changes_bytes * 10 < full_bytes * 8,
        "sport:all in the changes format: {changes_bytes} bytes against {full_bytes}"
    );
    db.drop_db().await;
}

fn view_diffs(views: &BTreeMap<String, RoomView>) -> usize {
    views.values().map(|v| v.diffs).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_compresses_room_frames_and_inflates_client_messages() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new().await;
    let (server, _) = serve_seeded(&db, 12).await;

    // A client that offers nothing gets no extension and plain frames.
    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (_, head) = raw_handshake_head(tcp, &server.addr, "/ws", &[]).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );

    let offer = [(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
    )];
    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (mut tcp, head) = raw_handshake_head(tcp, &server.addr, "/ws", &offer).await;
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    // A compressed subscribe (RSV1), then a plain one: both are understood.
    let subscribe = json!({"type": "subscribe", "room": "sport:all", "id": 1}).to_string();
    let compressed = oddsfeed::broadcaster::deflate::compress(subscribe.as_bytes());
    tcp.write_all(&client_frame(0x80 | 0x40 | 0x1, &compressed, true))
        .await
        .unwrap();
    let rooms = json!({"type": "rooms", "id": 2}).to_string();
    tcp.write_all(&client_frame(0x81, rooms.as_bytes(), true))
        .await
        .unwrap();
    random_changes(&db, 10).await;
    let read = read_raw(&mut tcp, Duration::from_secs(2)).await;
    let messages: Vec<Value> = read
        .texts
        .iter()
        .map(|t| serde_json::from_str(t).expect("every frame is JSON once inflated"))
        .collect();
    let of_type = |t: &str| messages.iter().filter(|m| m["type"] == t).count();
    assert_eq!(of_type("subscribed"), 1, "{messages:?}");
    assert_eq!(of_type("rooms"), 1);
    assert_eq!(of_type("snapshot"), 1);
    assert!(of_type("odds") >= 1, "live messages arrived");
    let snapshot = messages.iter().find(|m| m["type"] == "snapshot").unwrap();
    assert_eq!(snapshot["events"].as_array().unwrap().len(), 36);
    // The snapshot and every odds frame came compressed; replies came plain.
    assert_eq!(read.compressed, 1 + of_type("odds"), "{messages:?}");
    assert_eq!(read.close, None);
    db.drop_db().await;
}
