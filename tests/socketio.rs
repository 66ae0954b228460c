//! The Socket.IO endpoint with the real `socket.io-client` package (web/test/socketio.test.mjs)
//! against a real `oddsfeed serve`: the earlier page's merge ends at the Redis state, sport
//! rooms, long-polling, bridged channels by name, user rooms behind a token.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn token(secret: &str, sub: &str, role: Option<&str>) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    oddsfeed::broadcaster::auth::sign_value(secret, &json!({"sub": sub, "role": role, "exp": exp}))
        .unwrap()
}

/// Every number as an f64 (JavaScript writes 5 where Rust wrote 5.0).
fn floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(floats).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), floats(v))).collect()),
        other => other.clone(),
    }
}

/// Prices and outcomes of each event, as a page displays them.
fn prices(events: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    events
        .into_iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap_or_default().to_string();
            let shown = json!({
                "outcomes": e["outcomes"],
                "yesOdds": e["yesOdds"],
                "noOdds": e["noOdds"],
                "suspended": e["suspended"],
            });
            (id, floats(&shown))
        })
        .collect()
}

/// Moves e0's HOME price every `every` until the task is aborted.
fn move_prices(db: &TestDb, every: Duration) -> tokio::task::JoinHandle<()> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        for i in 0u64.. {
            let _ = sqlx::query(
                "UPDATE outcomes SET external_price = $1 WHERE event_id = 'e0' AND name = 'HOME'",
            )
            .bind(0.2 + (i % 50) as f64 / 100.0)
            .execute(&pool)
            .await;
            tokio::time::sleep(every).await;
        }
    })
}

/// Runs the node test `file` (one test) while e0's HOME price moves every `every`; it must
/// finish within `limit`.
async fn node_test_while_prices_move(
    db: &TestDb,
    every: Duration,
    file: &str,
    env: &[(&str, String)],
    limit: Duration,
) {
    let churn = move_prices(db, every);
    let result = tokio::time::timeout(limit, run_node_tests(file, env, 1)).await;
    churn.abort();
    result.expect("the node test finishes");
}

/// A database of its own with `events` football events, and an `oddsfeed serve` on it with
/// `settings` (each replacing a default) that has published its first message on the
/// returned channel.
async fn serve_football(
    events: usize,
    settings: &[(&'static str, &str)],
) -> (TestDb, Server, String) {
    let db = TestDb::new().await;
    seed_football(&db, events).await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    for (key, value) in settings {
        env.retain(|(k, _)| k != key);
        env.push((key, (*value).to_string()));
    }
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    (db, server, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_pages_work_unchanged() {
    let secret = "socketio-secret";
    let (db, server, channel) = serve_football(20, &[("JWT_SECRET", secret)]).await;

    let out = TempPath::file("sio");
    let pool = db.pool.clone();
    let redis = redis_url();
    let out_path = out.to_path_buf();
    let (merged_tx, merged_rx) = tokio::sync::oneshot::channel();
    // A native client in sport:all beside the Socket.IO pages.
    let (mut native, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    native
        .send(json!({"type": "subscribe", "room": "sport:all"}))
        .await;
    let driver = tokio::spawn(async move {
        let mut view = RoomView::default();
        // Random prices for 4 s, then quiet until the page has written what it merged.
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < until {
            while let Some(msg) = native.next_json(Duration::from_millis(1)).await {
                view.apply(&msg);
            }
            let _ = sqlx::query(
                "UPDATE outcomes SET external_price = round((random() * 0.8 + 0.1)::numeric, 3)
                  WHERE (event_id, name) IN (SELECT event_id, name FROM outcomes ORDER BY random() LIMIT 3)",
            )
            .execute(&pool)
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while !out_path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let merged: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
        let (_, stored) = stored_state(&redis, &channel).await;
        while let Some(msg) = native.next_json(Duration::from_millis(300)).await {
            view.apply(&msg);
        }
        let _ = merged_tx.send((merged, stored, view));
        // Then one price keeps moving and the bridged channels keep talking.
        let mut i = 0u64;
        loop {
            let _ = sqlx::query(
                "UPDATE outcomes SET external_price = $1 WHERE event_id = 'e0' AND name = 'HOME'",
            )
            .bind(0.2 + (i % 50) as f64 / 100.0)
            .execute(&pool)
            .await;
            for (bridged, payload) in [
                ("event-updates", json!({"eventId": "e1", "n": i})),
                ("chat-messages", json!({"eventId": "e1", "text": "hello"})),
                ("user-updates", json!({"userId": "u1", "balance": i})),
                (
                    "admin-events",
                    json!({"type": "alert", "payload": {"level": "info"}}),
                ),
            ] {
                redis_publish(&redis, bridged, &payload.to_string()).await;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let result = tokio::time::timeout(
        Duration::from_secs(60),
        run_node_tests(
            "test/socketio.test.mjs",
            &[
                ("ODDSFEED_HTTP_URL", format!("http://{}", server.addr)),
                ("USER_TOKEN", token(secret, "u1", None)),
                ("ADMIN_TOKEN", token(secret, "admin", Some("admin"))),
                ("SIO_OUT", out.display().to_string()),
            ],
            5,
        ),
    )
    .await;
    driver.abort();
    result.expect("the node tests finish");
    // What the page merged from the list and the updates is exactly the stored state.
    let (merged, stored, native) = merged_rx.await.expect("the page wrote what it merged");
    let stored = prices(stored.into_values());
    assert_eq!(prices(merged), stored);
    // The native client, served by the same hub, sees the same prices.
    assert!(native.gaps.is_empty(), "{:?}", native.gaps);
    assert_eq!(prices(native.events.into_values()), stored);

    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_ws_messages_sent_total{kind=\"socketio\"}"
        ) > 10.0
    );
    assert_eq!(
        metric_value(&metrics, "oddsfeed_socketio_connections"),
        0.0,
        "{metrics}"
    );
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reconnects_after_a_restart_and_floods_are_rate_limited() {
    let db = TestDb::new().await;
    seed_football(&db, 5).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("LISTEN_ADDR", format!("127.0.0.1:{port}")));
    env.push(("CLIENT_MESSAGES_PER_MINUTE", "20".into()));
    env.push(("ALLOWED_ORIGINS", "http://pages.example".into()));
    let mut server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;

    // A handshake from an origin not allowed is refused before any session exists.
    let status = |origin: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!(
            "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.unwrap();
        String::from_utf8_lossy(&head[9..12]).to_string()
    };
    assert_eq!(status("http://evil.example").await, "403");
    assert_eq!(status("http://pages.example").await, "200");

    let ready = TempPath::file("sio-ready");
    let node_env = vec![
        ("ODDSFEED_HTTP_URL", format!("http://127.0.0.1:{port}")),
        ("SIO_READY", ready.display().to_string()),
    ];
    let node = tokio::spawn(async move {
        run_node_tests("test/socketio-restart.test.mjs", &node_env, 2).await
    });
    eventually(Duration::from_secs(20), "the page ready", || async {
        ready.exists().then_some(())
    })
    .await;
    server.kill().await;
    let server = Server::start(&["serve"], &env).await;
    // Prices move after the restart until the page has seen it.
    let churn = move_prices(&db, Duration::from_millis(100));
    let result = tokio::time::timeout(Duration::from_secs(120), node).await;
    churn.abort();
    result.expect("the node tests finish").expect("node ran");
    // The page that reconnected is served by the new process.
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_ws_messages_sent_total{kind=\"socketio\"}"
        ) > 0.0
    );
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_send_buffer_filled_gets_fresh_lists() {
    let (db, server, _) = serve_football(
        5,
        &[
            ("REPLAY_BUFFER_MESSAGES", "4"),
            ("SEND_QUEUE_FRAMES", "16"),
            ("TICK_INTERVAL_MS", "50"),
        ],
    )
    .await;
    node_test_while_prices_move(
        &db,
        Duration::from_millis(50),
        "test/socketio-slow.test.mjs",
        &[("ODDSFEED_HTTP_URL", format!("http://{}", server.addr))],
        Duration::from_secs(60),
    )
    .await;
    let metrics = server.metrics().await;
    assert!(
        metric_value(&metrics, "oddsfeed_socketio_resyncs_total") >= 1.0,
        "{metrics}"
    );
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_pages_above_the_pending_cap_are_not_evicted() {
    let (db, server, _) = serve_football(5, &[("MAX_PENDING_CONNECTIONS", "4")]).await;
    // Polls wait longer than a pending connection may (1 s) while others queue.
    node_test_while_prices_move(
        &db,
        Duration::from_millis(1500),
        "test/socketio-polling.test.mjs",
        &[
            ("ODDSFEED_HTTP_URL", format!("http://{}", server.addr)),
            ("PAGES", "16".into()),
        ],
        Duration::from_secs(90),
    )
    .await;
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_session_ids_do_not_leave_the_pending_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (db, server, _) = serve_football(2, &[("MAX_PENDING_CONNECTIONS", "4")]).await;
    // Keep-alive connections whose request names a session that does not exist: answered at
    // once, they are pending again (and the oldest are evicted for the newcomers).
    let mut kept = Vec::new();
    for _ in 0..12 {
        let mut tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        tcp.write_all(
            b"GET /socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
            .await
            .expect("an answer")
            .unwrap();
        assert_ne!(&head, b"HTTP/1.1 200", "a made-up session is not served");
        kept.push(tcp);
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "oddsfeed_http_session_connections "),
        0.0,
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "oddsfeed_http_pending_connections ") <= 4.0,
        "{metrics}"
    );
    drop(kept);
    drop(server);
    db.drop_db().await;
}
