//! The broadcast server under faults and abuse: Redis restarts, slow and silent clients,
//! connection caps, a stopped publisher, shutdown.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(15);

fn env_for(
    db: &TestDb,
    redis: &str,
    extra: &[(&'static str, &str)],
) -> (Vec<(&'static str, String)>, String) {
    let (mut env, channel) = publisher_env(db, redis);
    env.retain(|(k, _)| *k != "TICK_INTERVAL_MS");
    env.push(("TICK_INTERVAL_MS", "50".into()));
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v.to_string()));
    }
    (env, channel)
}

async fn subscribe(client: &mut WsClient, room: &str) -> RoomView {
    client
        .send(json!({"type": "subscribe", "room": room}))
        .await;
    let mut view = RoomView::default();
    view.apply(&client.expect_type("snapshot", WAIT).await);
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_clients_connected_converges_without_help() {
    let db = TestDb::new().await;
    seed_football(&db, 10).await;
    let mut redis = PrivateRedis::start().await;
    let (env, channel) = env_for(&db, &redis.url(), &[]);
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis.url(), &channel).await;
    let url = format!("ws://{}/ws", server.addr);
    let (mut all, _) = WsClient::connect_welcomed(&url).await;
    let (mut football, _) = WsClient::connect_welcomed(&url).await;
    let mut views = BTreeMap::from([
        (
            "sport:all".to_string(),
            subscribe(&mut all, "sport:all").await,
        ),
        (
            "sport:football".to_string(),
            subscribe(&mut football, "sport:football").await,
        ),
    ]);

    redis.stop();
    for i in 0..5 {
        db.exec(&format!(
            "INSERT INTO bets (event_id, outcome, amount) VALUES ('e{i}', 'DRAW', 5000)"
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart().await;
    db.exec("UPDATE outcomes SET external_price = 0.2 WHERE event_id = 'e9' AND name = 'HOME'")
        .await;

    // Both clients end with the publisher's state, with no action of theirs.
    let deadline = Instant::now() + WAIT;
    let converged = loop {
        for (client, room) in [(&mut all, "sport:all"), (&mut football, "sport:football")] {
            while let Some(msg) = client.next_json(Duration::from_millis(100)).await {
                if msg["room"] == room
                    && let Some(view) = views.get_mut(room)
                {
                    view.apply(&msg);
                }
            }
        }
        let (meta, stored) = stored_state(&redis.url(), &channel).await;
        if views
            .values()
            .all(|v| v.events == stored && Some(&v.epoch) == meta.get("epoch"))
        {
            break views.clone();
        }
        assert!(
            Instant::now() < deadline,
            "clients did not converge: {views:#?}"
        );
    };
    for (room, view) in &converged {
        assert!(view.gaps.is_empty(), "{room}: {:?}", view.gaps);
        assert_eq!(
            view.events["e0"]["outcomes"][1]["probability"]
                .as_f64()
                .map(|p| p > 0.3),
            Some(true)
        );
    }
    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["stream"]["subscribed"], true);
    db.drop_db().await;
}

/// A client whose kernel receive buffer is tiny and that never reads.
async fn stalled_client(addr: &str) -> WsStream {
    let stream = connect_small_window(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_1013_and_nobody_else_waits() {
    let db = TestDb::new().await;
    seed_football(&db, 150).await;
    let (env, channel) = env_for(
        &db,
        &redis_url(),
        &[("SEND_QUEUE_FRAMES", "24"), ("REPLAY_BUFFER_MESSAGES", "8")],
    );
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    server.wait_stream_seq(1).await;
    let pid = server.child.id().unwrap();
    let rss_before = rss_kib(pid);

    let mut stalled = stalled_client(&server.addr).await;
    stalled
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "subscribe", "room": "sport:all"}).to_string(),
        ))
        .await
        .unwrap();
    let (mut healthy, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    let mut view = subscribe(&mut healthy, "sport:all").await;

    // Every event changes every tick: ~100 KB per message.
    let churn = spawn_price_churn(db.pool.clone(), Duration::from_millis(40), None);

    let started = Instant::now();
    let mut worst = 0i64;
    let mut closed_at = None;
    while started.elapsed() < Duration::from_secs(40) {
        if let Some(msg) = healthy.next_json(Duration::from_millis(200)).await {
            if msg["type"] == "odds" {
                worst = worst.max(
                    chrono::Utc::now().timestamp_millis() - msg["publishedAt"].as_i64().unwrap(),
                );
            }
            view.apply(&msg);
        }
        if closed_at.is_none()
            && metric_value(
                &server.metrics().await,
                "oddsfeed_ws_slow_clients_closed_total",
            ) >= 1.0
        {
            closed_at = Some(started.elapsed());
        }
        if let Some(at) = closed_at
            && started.elapsed() > at + Duration::from_secs(1)
        {
            break;
        }
    }
    churn.abort();
    let closed_at = closed_at.expect("the stalled client was closed");
    let rss_after = rss_kib(pid);

    // The stalled client finds a 1013 close once it reads.
    let mut code = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stalled.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => {
                code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert_eq!(code, Some(1013), "close code for the stalled client");
    // Its full socket made the fan-out hand the rest to the session's own writer, which
    // finished the frame begun on the wire before the close frame (or the close would not
    // parse).
    assert!(
        metric_value(
            &server.metrics().await,
            "oddsfeed_ws_fanout_flushes_total{path=\"writer\"}"
        ) >= 1.0
    );
    assert!(
        view.gaps.is_empty(),
        "the healthy client saw every message: {:?}",
        view.gaps
    );
    assert!(
        view.diffs > 20,
        "the healthy client kept receiving ({} diffs)",
        view.diffs
    );
    assert!(
        worst < 2000,
        "the healthy client was never held up: worst latency {worst} ms"
    );
    assert!(
        rss_after < rss_before + 150 * 1024,
        "server memory stayed bounded: {rss_before} KiB before, {rss_after} KiB after"
    );
    println!(
        "stalled client closed after {closed_at:?}; healthy worst latency {worst} ms; RSS {rss_before} -> {rss_after} KiB"
    );
    healthy.assert_usable().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed() {
    let db = TestDb::new().await;
    let (env, _) = env_for(
        &db,
        &redis_url(),
        &[
            ("WS_PING_INTERVAL_MS", "200"),
            ("WS_PONG_TIMEOUT_MS", "700"),
        ],
    );
    let server = Server::start(&["serve"], &env).await;
    let url = format!("ws://{}/ws", server.addr);
    let (mut silent, welcome) = WsClient::connect_welcomed(&url).await;
    assert_eq!(welcome["heartbeatMs"], 200);
    let (mut lively, _) = WsClient::connect_welcomed(&url).await;
    // The lively client reads (and so answers pings) for 2 s; the silent one does not read.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        lively.next_json(Duration::from_millis(100)).await;
    }
    assert_eq!(silent.close_code(WAIT).await, Some(1000));
    lively.assert_usable().await;
    assert_eq!(
        metric_value(&server.metrics().await, "oddsfeed_ws_pong_timeouts_total"),
        1.0
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_origins_and_oversized_frames() {
    let db = TestDb::new().await;
    let (env, _) = env_for(
        &db,
        &redis_url(),
        &[
            ("MAX_CONNECTIONS_PER_IP", "2"),
            (
                "ALLOWED_ORIGINS",
                "https://good.example,https://also.example",
            ),
        ],
    );
    let server = Server::start(&["serve"], &env).await;
    let url = format!("ws://{}/ws", server.addr);

    let request = |origin: Option<&str>| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .unwrap();
        if let Some(origin) = origin {
            req.headers_mut().insert("origin", origin.parse().unwrap());
        }
        req
    };
    let refused = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Some(resp.status().as_u16()),
        _ => None,
    };
    assert_eq!(
        refused(
            tokio_tungstenite::connect_async(request(Some("https://evil.example")))
                .await
                .map(|_| ())
        ),
        Some(403)
    );
    let (a, _) = tokio_tungstenite::connect_async(request(Some("https://good.example")))
        .await
        .unwrap();
    let (b, _) = tokio_tungstenite::connect_async(request(None))
        .await
        .unwrap();
    assert_eq!(
        refused(
            tokio_tungstenite::connect_async(request(None))
                .await
                .map(|_| ())
        ),
        Some(429)
    );
    drop(a);
    // The place is released when a connection ends.
    eventually(WAIT, "a freed place", || {
        let req = request(None);
        async move { tokio_tungstenite::connect_async(req).await.ok().map(|_| ()) }
    })
    .await;
    drop(b);

    // Above the hard limit (16x 4 KiB) the connection is closed with 1009.
    let mut c = eventually(WAIT, "a connection", || {
        let url = url.clone();
        async move {
            tokio_tungstenite::connect_async(url.as_str())
                .await
                .ok()
                .map(|(s, _)| WsClient::from_stream(s))
        }
    })
    .await;
    c.next_json(WAIT).await.expect("welcome");
    c.send_text(format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(70_000)
    ))
    .await;
    assert_eq!(c.close_code(WAIT).await, Some(1009));
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "oddsfeed_ws_rejected_connections_total{reason=\"origin_not_allowed\"}"
        ),
        1.0
    );
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_ws_rejected_connections_total{reason=\"too_many_connections_from_address\"}"
        ) >= 1.0
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_publisher_is_reported_stale_then_live() {
    let db = TestDb::new().await;
    seed_football(&db, 2).await;
    let (env, channel) = env_for(&db, &redis_url(), &[("HEARTBEAT_INTERVAL_MS", "200")]);
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    let (mut client, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    subscribe(&mut client, "sport:football").await;

    let control = server.url("/api/sports/ws-publisher");
    let http = reqwest::Client::new();
    assert_eq!(http.delete(&control).send().await.unwrap().status(), 200);
    let stale = client.expect_type("status", WAIT).await;
    assert_eq!(
        (stale["room"].as_str(), stale["publisher"].as_str()),
        (Some("sport:football"), Some("stale"))
    );
    let (_, health) = server.get_json("/health").await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["stream"]["publisher"], "stale");
    // A newcomer learns it right after its snapshot.
    let (mut late, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    subscribe(&mut late, "sport:all").await;
    assert_eq!(late.expect_type("status", WAIT).await["publisher"], "stale");

    assert_eq!(http.post(&control).send().await.unwrap().status(), 200);
    let live = client.expect_type("status", WAIT).await;
    assert_eq!(live["publisher"], "live");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits() {
    let db = TestDb::new().await;
    seed_football(&db, 3).await;
    let (env, channel) = env_for(&db, &redis_url(), &[]);
    let mut server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    let url = format!("ws://{}/ws", server.addr);
    let mut clients = Vec::new();
    for room in ["sport:all", "sport:football", "event:e1"] {
        let (mut c, _) = WsClient::connect_welcomed(&url).await;
        subscribe(&mut c, room).await;
        clients.push(c);
    }
    let (idle, _) = WsClient::connect_welcomed(&url).await;
    clients.push(idle);
    let started = Instant::now();
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "shutdown took {:?}",
        started.elapsed()
    );
    for c in &mut clients {
        assert_eq!(c.close_code(WAIT).await, Some(1001));
    }
    // New connections are refused once it is gone.
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err()
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_neither_for_half_sent_requests_nor_for_held_polls() {
    let db = TestDb::new().await;
    seed_football(&db, 3).await;
    let (env, channel) = env_for(&db, &redis_url(), &[]);
    let mut server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    // A connection in the middle of sending its request, and a Socket.IO long-polling page
    // that keeps a poll held: neither makes the shutdown wait (before: 2 s for either,
    // the grace a connection got at shutdown).
    let mut half = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let http = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let open = reqwest::get(&http).await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = format!("{http}&sid={sid}");
    let sent = reqwest::Client::new()
        .post(&session)
        .body("40")
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success());
    let page = tokio::spawn(async move {
        // Polls as a page does, until the session or the server is gone.
        loop {
            let Ok(response) = reqwest::get(&session).await else {
                break;
            };
            if !response.status().is_success() || response.text().await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(half);
    let _ = tokio::time::timeout(WAIT, page).await;
    db.drop_db().await;
}
