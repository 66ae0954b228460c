//! Native TLS: `TLS_CERT` + `TLS_KEY` make the server speak https and wss itself.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_a_self_signed_certificate() {
    let db = TestDb::new().await;
    seed_one_event(&db, "s1").await;
    let (dir, cert) = self_signed_cert();
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("TLS_CERT", dir.join("cert.pem").display().to_string()));
    env.push(("TLS_KEY", dir.join("key.pem").display().to_string()));
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;

    // https: /health over TLS.
    let mut tls = tls_connect(&server.addr, &cert)
        .await
        .expect("TLS handshake with the server's certificate");
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");

    // wss: snapshot, then a live diff.
    wss_snapshot_then_diff(
        tls_connect(&server.addr, &cert)
            .await
            .expect("TLS handshake with the server's certificate"),
        &db,
        "sport:tennis",
        "s1",
        "UPDATE outcomes SET external_price = 0.8 WHERE event_id = 's1' AND name = 'YES'",
    )
    .await;

    // Plain http to the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(WAIT, plain.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_file_stops_the_process_at_boot_with_a_clear_error() {
    let db = TestDb::new().await;
    let (dir, _) = self_signed_cert();
    let (mut env, _) = publisher_env(&db, &redis_url());
    env.push(("TLS_CERT", dir.join("cert.pem").display().to_string()));
    env.push(("TLS_KEY", "/nonexistent/key.pem".to_string()));
    let text = boot_failure(&["serve"], &env).await;
    assert!(text.contains("/nonexistent/key.pem"), "{text}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_that_pauses_catches_up_without_a_gap() {
    let db = TestDb::new().await;
    seed_football(&db, 150).await;
    let (dir, cert) = self_signed_cert();
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.retain(|(k, _)| *k != "TICK_INTERVAL_MS");
    env.push(("TICK_INTERVAL_MS", "50".into()));
    env.push(("TLS_CERT", dir.join("cert.pem").display().to_string()));
    env.push(("TLS_KEY", dir.join("key.pem").display().to_string()));
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;
    let tls = tls_connect_with(&server.addr, &cert, Some(4096))
        .await
        .expect("TLS handshake");
    let (ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("wss upgrade");
    let mut client = WsClient::from_stream(ws);
    client.expect_type("welcome", WAIT).await;
    client
        .send(serde_json::json!({"type": "subscribe", "room": "sport:all"}))
        .await;
    let mut view = RoomView::default();
    view.apply(&client.expect_type("snapshot", WAIT).await);
    // Big messages while the client does not read: the server's TLS writes block, and what
    // they buffered must still be flushed once the client reads again.
    let churn = spawn_price_churn(db.pool.clone(), Duration::from_millis(40), Some(80));
    churn.await.unwrap();
    // Nothing changes any more: the last messages must still arrive, with no later frame to
    // push them out. (The writer flushes after each write because rustls can hold what a
    // blocked write accepted; here the read side's polling happens to flush it too, so this
    // test guards the catching up, not that flush alone.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Catch up until the view equals the published state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(msg) = client.next_json(Duration::from_millis(300)).await {
            view.apply(&msg);
        }
        let (meta, stored) = stored_state(&redis_url(), &channel).await;
        if view.events == stored && meta.get("seq") == Some(&view.seq.to_string()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wss client did not catch up: at seq {} of {:?}",
            view.seq,
            meta.get("seq")
        );
    }
    assert!(view.gaps.is_empty(), "{:?}", view.gaps);
    assert!(view.diffs > 20, "{} diffs", view.diffs);
    db.drop_db().await;
}
