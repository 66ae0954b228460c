//! Memory follows the budget, not the largest frame, and comes back when clients leave.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

/// A client with a 4 KiB receive buffer that subscribes to `sport:all` and never reads.
async fn stalled_subscriber(addr: &str) -> Option<tokio::net::TcpStream> {
    let stream = connect_small_window(addr).await.ok()?;
    let mut tcp = raw_handshake(stream, addr, "/ws", &[]).await;
    let subscribe = json!({"type": "subscribe", "room": "sport:all"}).to_string();
    tcp.write_all(&client_frame(0x81, subscribe.as_bytes(), true))
        .await
        .ok()?;
    Some(tcp)
}

fn slow_closed(metrics: &str) -> f64 {
    metric_value(
        metrics,
        "oddsfeed_ws_slow_clients_closed_total{limit=\"bytes\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_clients_meet_their_byte_budget_and_memory_comes_back() {
    // The test itself holds a thousand sockets.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let db = TestDb::new().await;
    seed_football(&db, 150).await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    for (k, v) in [
        ("TICK_INTERVAL_MS", "50"),
        ("SEND_BUFFER_BYTES", "262144"),
        ("REPLAY_BUFFER_BYTES", "131072"),
        ("REPLAY_BUFFER_MESSAGES", "8"),
        ("SEND_QUEUE_FRAMES", "100000"),
        ("WS_WRITE_TIMEOUT_MS", "20000"),
        ("MAX_CONNECTIONS_PER_IP", "2000"),
    ] {
        env.retain(|(key, _)| *key != k);
        env.push((k, v.to_string()));
    }
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    server.wait_stream_seq(1).await;
    let pid = server.child.id().unwrap();

    // Every event changes every tick: ~100 KB per message, a ~100 KB snapshot.
    let churn = spawn_price_churn(db.pool.clone(), Duration::from_millis(40), None);

    // One client that never reads: closed with 1013 once it holds its budget.
    let mut first = stalled_subscriber(&server.addr).await.unwrap();
    server
        .wait_metric(
            "oddsfeed_ws_slow_clients_closed_total{limit=\"bytes\"}",
            1.0,
            WAIT,
        )
        .await;
    let read = read_raw(&mut first, WAIT).await;
    assert_eq!(
        read.close,
        Some(1013),
        "{} frames, then no 1013",
        read.texts.len()
    );
    drop(first);

    // The baseline, once the server has served one such client and settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = rss_kib(pid);

    // A thousand more connect, fill their budgets, and leave.
    let mut clients = Vec::new();
    for _ in 0..1000 {
        if let Some(tcp) = stalled_subscriber(&server.addr).await {
            clients.push(tcp);
        }
    }
    assert_eq!(clients.len(), 1000, "every client connected");
    let deadline = Instant::now() + Duration::from_secs(60);
    let closed = loop {
        let closed = slow_closed(&server.metrics().await);
        if closed >= 1001.0 || Instant::now() > deadline {
            break closed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let peak = rss_kib(pid);
    assert!(closed >= 1001.0, "only {closed} clients met their budget");
    drop(clients);
    churn.abort();
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let now = rss_kib(pid);
        let connections = health_connections(&server).await;
        if connections == 0 && now * 10 <= baseline * 11 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "RSS {baseline} KiB before, {peak} KiB at the peak, still {now} KiB with {connections} connections"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "RSS: {baseline} KiB before, {peak} KiB with 1,000 stalled clients, {settled} KiB after"
    );
    db.drop_db().await;
}

async fn health_connections(server: &Server) -> u64 {
    server.get_json("/health").await.1["connections"]
        .as_u64()
        .unwrap_or(u64::MAX)
}
