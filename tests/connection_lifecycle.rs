//! Every connection is reaped and every slot given back, whatever the client does: silent
//! sockets, half requests, floods, stalled bodies, hostile tokens, broken frames, a session
//! that panics, a proxy in front, too few file descriptors. Real sockets against the real
//! binary.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(15);

/// A broadcaster alone on a fresh channel (no database needed), with `extra` settings.
async fn broadcaster(extra: &[(&'static str, &str)]) -> Server {
    let mut env = vec![
        ("REDIS_URL", redis_url()),
        ("ODDS_CHANNEL", format!("t-{}", random_suffix())),
        ("HEARTBEAT_INTERVAL_MS", "500".to_string()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v.to_string()));
    }
    Server::start(&["broadcaster"], &env).await
}

async fn health_connections(server: &Server) -> u64 {
    server.get_json("/health").await.1["connections"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits until `/health` counts `n` connections and the gauges agree.
async fn wait_connections(server: &Server, n: u64, within: Duration) {
    eventually(within, &format!("{n} connections"), || async {
        let metrics = server.metrics().await;
        (health_connections(server).await == n
            && metric_value(&metrics, "oddsfeed_ws_connections ") == n as f64)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_reaped_socket_and_slots_included() {
    let server = broadcaster(&[
        ("WS_PING_INTERVAL_MS", "200"),
        ("WS_PONG_TIMEOUT_MS", "600"),
        ("WS_CLOSE_TIMEOUT_MS", "300"),
        ("MAX_CONNECTIONS_PER_IP", "1"),
    ])
    .await;
    let url = format!("ws://{}/ws", server.addr);
    // Upgrade, then never read and never answer a ping: a client whose network vanished.
    let mut silent = raw_upgrade(&server.addr, "/ws", &[]).await;
    silent
        .write_all(&client_frame(
            0x81,
            json!({"type": "subscribe", "room": "sport:all"})
                .to_string()
                .as_bytes(),
            true,
        ))
        .await
        .unwrap();
    wait_connections(&server, 1, WAIT).await;
    let started = Instant::now();
    // The per-address cap is 1: the silent client holds the only place until reaped.
    wait_connections(&server, 0, Duration::from_secs(5)).await;
    let reaped_after = started.elapsed();
    let metrics = server.metrics().await;
    assert_eq!(metric_value(&metrics, "oddsfeed_ws_subscriptions "), 0.0);
    assert_eq!(
        metric_value(&metrics, "oddsfeed_ws_pong_timeouts_total"),
        1.0
    );
    // The TCP connection is closed too: what was sent ends with a close frame and EOF.
    let read = read_raw(&mut silent, WAIT).await;
    assert_eq!(read.close, Some(1000), "{read:?}");
    assert!(read.eof || read.reset, "the socket is closed: {read:?}");
    // The place is free again.
    let (mut next, _) = WsClient::connect_welcomed(&url).await;
    next.assert_usable().await;
    println!("silent client reaped after {reaped_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_requests_are_closed_at_the_header_timeout_while_others_connect() {
    let server = broadcaster(&[("HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let pid = server.child.id().unwrap();
    let fds_before = open_fds(pid);
    let mut half = Vec::new();
    for _ in 0..500 {
        let mut tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web")
            .await
            .unwrap();
        half.push(tcp);
    }
    // Meanwhile a real client connects and works.
    let (mut client, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    client.assert_usable().await;
    assert_eq!(server.get_json("/health").await.0, 200);
    // Every half request is closed by the server.
    let mut closed = 0;
    for tcp in &mut half {
        let read = read_raw(tcp, Duration::from_secs(10)).await;
        if read.eof || read.reset {
            closed += 1;
        }
    }
    assert_eq!(closed, 500);
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_http_connections_closed_total{reason=\"header_timeout\"}"
        ) >= 500.0
    );
    drop(half);
    eventually(WAIT, "descriptors given back", || async {
        (open_fds(pid) <= fds_before + 4).then_some(())
    })
    .await;
    client.assert_usable().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_evicts_the_oldest_and_health_answers() {
    let server = broadcaster(&[
        ("MAX_PENDING_CONNECTIONS", "50"),
        ("HTTP_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(tokio::net::TcpStream::connect(&server.addr).await.unwrap());
    }
    // Health and WebSocket clients still get in: the oldest sockets make room once they have
    // had their second.
    for _ in 0..5 {
        let (code, health) = server.get_json("/health").await;
        assert_eq!(code, 200, "{health}");
    }
    let (mut client, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    client.assert_usable().await;
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "oddsfeed_http_connections_closed_total{reason=\"evicted\"}"
        ) >= 150.0
    );
    assert!(metric_value(&metrics, "oddsfeed_http_pending_connections ") <= 50.0);
    // The oldest sockets were the ones closed.
    let first = read_raw(&mut flood[0], Duration::from_secs(5)).await;
    assert!(first.eof || first.reset, "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_queued_not_cut() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let server = broadcaster(&[
        ("MAX_PENDING_CONNECTIONS", "100"),
        ("MAX_CONNECTIONS_PER_IP", "5000"),
    ])
    .await;
    // 2,000 clients at once, each with its whole handshake in flight.
    let url = format!("ws://{}/ws", server.addr);
    let mut joins = Vec::new();
    for _ in 0..2000 {
        let url = url.clone();
        joins.push(tokio::spawn(async move {
            let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
                .await
                .ok()?
                .ok()?;
            let mut client = WsClient::from_stream(stream);
            let welcome = client.next_json(WAIT).await?;
            (welcome["type"] == "welcome").then_some(client)
        }));
    }
    let mut clients = Vec::new();
    for join in joins {
        if let Some(client) = join.await.unwrap() {
            clients.push(client);
        }
    }
    assert_eq!(clients.len(), 2000, "every client of the storm got in");
    assert_eq!(
        metric_value(
            &server.metrics().await,
            "oddsfeed_http_connections_closed_total{reason=\"evicted\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_responses_hits_the_idle_timeout() {
    let server = broadcaster(&[
        ("HTTP_IDLE_TIMEOUT_MS", "800"),
        ("HTTP_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await;
    // Pipelined requests whose responses are never read: the server's writes stop moving.
    let mut tcp = connect_small_window(&server.addr).await.unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let _ = tokio::time::timeout(WAIT, tcp.write_all(requests.as_bytes())).await;
    server
        .wait_metric(
            "oddsfeed_http_connections_closed_total{reason=\"idle_timeout\"}",
            1.0,
            WAIT,
        )
        .await;
    let read = read_raw(&mut tcp, WAIT).await;
    assert!(read.eof || read.reset, "the socket is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused_and_leave_no_ghost() {
    let secret = "lifecycle-secret";
    let server = broadcaster(&[("JWT_SECRET", secret), ("JWT_MAX_LIFETIME_SECS", "3600")]).await;
    let now = chrono::Utc::now().timestamp() as u64;
    let forever =
        oddsfeed::broadcaster::auth::sign_value(secret, &json!({"sub": "u1", "exp": u64::MAX}))
            .unwrap();
    let not_yet = oddsfeed::broadcaster::auth::sign_value(
        secret,
        &json!({"sub": "u1", "exp": now + 600, "nbf": now + 300}),
    )
    .unwrap();
    let mut clients = Vec::new();
    for (token, says) in [(&forever, "lives too long"), (&not_yet, "not valid yet")] {
        // In the URL and in an auth message.
        let (mut c, _) =
            WsClient::connect_welcomed(&format!("ws://{}/ws?token={token}", server.addr)).await;
        let error = c.expect_type("error", WAIT).await;
        assert_eq!(error["code"], "unauthorized");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
        c.send(json!({"type": "auth", "token": token, "id": 1}))
            .await;
        let error = c.expect_type("error", WAIT).await;
        assert_eq!(
            (error["code"].as_str(), error["id"].as_i64()),
            (Some("unauthorized"), Some(1))
        );
        c.send(json!({"type": "subscribe", "room": "user:u1"}))
            .await;
        assert_eq!(c.expect_type("error", WAIT).await["code"], "unauthorized");
        c.assert_usable().await;
        clients.push(c);
    }
    wait_connections(&server, 2, WAIT).await;
    // welcome, three errors and a pong each: replies are counted.
    assert!(
        metric_value(
            &server.metrics().await,
            "oddsfeed_ws_messages_sent_total{kind=\"reply\"}"
        ) >= 10.0
    );
    drop(clients);
    wait_connections(&server, 0, WAIT).await;
    assert_eq!(
        metric_value(&server.metrics().await, "oddsfeed_ws_subscriptions "),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_panics_leaves_nothing_behind() {
    let server = broadcaster(&[("FAULT_INJECTION", "true"), ("MAX_CONNECTIONS_PER_IP", "2")]).await;
    let url = format!("ws://{}/ws", server.addr);
    let (mut victim, _) = WsClient::connect_welcomed(&url).await;
    for room in ["sport:all", "sport:football", "event:x1"] {
        victim
            .send(json!({"type": "subscribe", "room": room}))
            .await;
        victim.expect_type("snapshot", WAIT).await;
    }
    let (mut bystander, _) = WsClient::connect_welcomed(&url).await;
    bystander
        .send(json!({"type": "subscribe", "room": "sport:all"}))
        .await;
    bystander.expect_type("snapshot", WAIT).await;
    assert_eq!(
        metric_value(&server.metrics().await, "oddsfeed_ws_subscriptions "),
        4.0
    );
    let armed = reqwest::Client::new()
        .post(server.url("/debug/panic/session"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(armed, 202);
    victim.send(json!({"type": "ping"})).await;
    // The panicking session's socket is closed, its rooms and places are released.
    assert_eq!(victim.next_json(WAIT).await, None, "the connection ended");
    wait_connections(&server, 1, WAIT).await;
    assert_eq!(
        metric_value(&server.metrics().await, "oddsfeed_ws_subscriptions "),
        1.0
    );
    assert!(server.log_text().contains("injected fault: session"));
    // Both places under the per-address cap are usable again, and the bystander is fine.
    let (mut again, _) = WsClient::connect_welcomed(&url).await;
    again.assert_usable().await;
    bystander.assert_usable().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_with_their_rfc_codes() {
    let server = broadcaster(&[("WS_CLOSE_TIMEOUT_MS", "500")]).await;
    let ping_with_fin_clear = client_frame(0x09, b"", true);
    let big_ping = client_frame(0x89, &[0u8; 126], true);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 text",
            client_frame(0x81, &[0xff, 0xfe, 0x41], true),
            1007,
        ),
        (
            "invalid UTF-8 split over fragments",
            [
                client_frame(0x01, &[0xe2, 0x82], true),
                client_frame(0x80, &[0x41], true),
            ]
            .concat(),
            1007,
        ),
        (
            "an unmasked client frame",
            client_frame(0x81, b"{\"type\":\"ping\"}", false),
            1002,
        ),
        (
            "RSV1 without an extension",
            client_frame(0xc1, b"{}", true),
            1002,
        ),
        ("RSV3 set", client_frame(0x91, b"{}", true), 1002),
        (
            "reserved data opcode 0x3",
            client_frame(0x83, b"x", true),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            client_frame(0x8b, b"", true),
            1002,
        ),
        ("a fragmented control frame", ping_with_fin_clear, 1002),
        ("a control frame over 125 bytes", big_ping, 1002),
        (
            "a continuation with nothing to continue",
            client_frame(0x80, b"x", true),
            1002,
        ),
        (
            "a new message inside a fragmented one",
            [
                client_frame(0x01, b"{", true),
                client_frame(0x81, b"{}", true),
            ]
            .concat(),
            1002,
        ),
        (
            "a frame over the hard limit",
            client_frame(0x82, &vec![0u8; 70_000], true),
            1009,
        ),
        (
            "a close frame with a reserved code",
            client_frame(0x88, &1005u16.to_be_bytes(), true),
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut tcp = raw_upgrade(&server.addr, "/ws", &[]).await;
        tcp.write_all(&bytes).await.unwrap();
        let read = read_raw(&mut tcp, WAIT).await;
        assert_eq!(read.close, Some(code), "{what}: {read:?}");
        assert!(
            read.eof,
            "{what}: the server closes the connection cleanly: {read:?}"
        );
    }
    // A clean close is echoed with the client's code.
    let mut tcp = raw_upgrade(&server.addr, "/ws", &[]).await;
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    tcp.write_all(&client_frame(0x88, &close, true))
        .await
        .unwrap();
    let read = read_raw(&mut tcp, WAIT).await;
    assert_eq!(read.close, Some(4000), "{read:?}");
    assert!(read.eof, "{read:?}");
    wait_connections(&server, 0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_give_each_client_its_own_cap() {
    let trusting = broadcaster(&[
        ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ("MAX_CONNECTIONS_PER_IP", "256"),
    ])
    .await;
    let blind = broadcaster(&[("MAX_CONNECTIONS_PER_IP", "256")]).await;
    let mut held = Vec::new();
    for i in 0..300 {
        let forwarded = format!("198.51.{}.{}", i / 200, i % 200 + 1);
        held.push(raw_upgrade(&trusting.addr, "/ws", &[("X-Forwarded-For", &forwarded)]).await);
    }
    wait_connections(&trusting, 300, WAIT).await;
    // The same through a proxy nobody listed: one address, capped at 256.
    let mut refused = 0;
    for i in 0..300 {
        let forwarded = format!("198.51.{}.{}", i / 200, i % 200 + 1);
        let mut tcp = tokio::net::TcpStream::connect(&blind.addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: {forwarded}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head)
            .await
            .unwrap();
        match &head {
            b"HTTP/1.1 101" => held.push(tcp),
            b"HTTP/1.1 429" => refused += 1,
            other => panic!("unexpected answer {:?}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!(refused, 44);
    wait_connections(&blind, 256, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_with_unread_input_still_reads_1013() {
    let server = broadcaster(&[
        ("WS_CLOSE_TIMEOUT_MS", "500"),
        ("WS_WRITE_TIMEOUT_MS", "30000"),
        ("SEND_QUEUE_FRAMES", "300"),
        ("REPLAY_BUFFER_MESSAGES", "8"),
        ("CLIENT_MESSAGES_PER_MINUTE", "1000000"),
    ])
    .await;
    // A small receive buffer that the client does not read while it keeps sending requests
    // with big replies: the replies fill the kernel's buffers, then its queue.
    let stream = connect_small_window(&server.addr).await.unwrap();
    let mut tcp = raw_handshake(stream, &server.addr, "/ws", &[]).await;
    let mut requests = Vec::new();
    for i in 0..100 {
        let room = format!("event:a-long-event-identifier-to-fatten-the-rooms-reply-{i:03}");
        requests.extend(client_frame(
            0x81,
            json!({"type": "subscribe", "room": room})
                .to_string()
                .as_bytes(),
            true,
        ));
    }
    let rooms = client_frame(0x81, br#"{"type":"rooms"}"#, true);
    for _ in 0..4000 {
        requests.extend_from_slice(&rooms);
    }
    let writer = tokio::spawn(async move {
        let _ = tcp.write_all(&requests).await;
        // More input, sent after the server gave up on us.
        let _ = tcp.write_all(&rooms).await;
        tcp
    });
    server
        .wait_metric("oddsfeed_ws_slow_clients_closed_total", 1.0, WAIT)
        .await;
    let mut tcp = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    // Read only after the server has let go of the socket (WS_CLOSE_TIMEOUT_MS): what it had
    // sent must still arrive, which it does not if unread input turned the close into a reset.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read = read_raw(&mut tcp, WAIT).await;
    assert_eq!(
        (read.close, read.eof),
        (Some(1013), true),
        "after {} replies",
        read.texts.len()
    );
    wait_connections(&server, 0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let env = vec![
        ("REDIS_URL", redis_url()),
        ("ODDS_CHANNEL", format!("t-{}", random_suffix())),
        ("MAX_PENDING_CONNECTIONS", "1000".to_string()),
        ("HTTP_HEADER_TIMEOUT_MS", "60000".to_string()),
    ];
    let server = Server::start_with_open_files(&["broadcaster"], &env, 96).await;
    let pid = server.child.id().unwrap();
    assert!(
        server.log_text().contains("open-files limit is too low"),
        "the clamp is announced"
    );
    // Far more silent sockets than the process has descriptors.
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(&server.addr).await {
            flood.push(tcp);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While it lasts, the accept loop backs off instead of spinning.
    let ticks_before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - ticks_before;
    assert!(used < 60, "{used} CPU ticks in 2 s: the accept loop spins");
    // /health still answers (its connection takes the place of an old silent one).
    let (code, _) = eventually(WAIT, "/health during the flood", || async {
        let response = reqwest::Client::new()
            .get(server.url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let code = response.status().as_u16();
        Some((code, response.text().await.ok()?))
    })
    .await;
    assert_eq!(code, 200);
    assert!(
        metric_value(
            &server.metrics().await,
            "oddsfeed_http_accept_errors_total{kind=\"emfile\"}"
        ) >= 1.0
    );
    drop(flood);
    let (mut client, _) = eventually(WAIT, "a WebSocket after the flood", || async {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)),
        )
        .await
        .ok()?
        .ok()
        .map(|(s, r)| (WsClient::from_stream(s), r))
    })
    .await;
    assert_eq!(client.next_json(WAIT).await.unwrap()["type"], "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_the_system_maximum_unless_set() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for (setting, expected) in [(None, somaxconn), (Some("77"), 77.min(somaxconn))] {
        let extra: Vec<(&'static str, &str)> =
            setting.map(|s| ("LISTEN_BACKLOG", s)).into_iter().collect();
        let server = broadcaster(&extra).await;
        let port = server.addr.rsplit(':').next().unwrap().to_string();
        // For a listening socket `ss` shows the backlog as Send-Q.
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        let send_q: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("ss output: {text}"));
        assert_eq!(send_q, expected, "LISTEN_BACKLOG={setting:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_trusted_proxy_stops_the_process_at_boot() {
    let env = vec![
        ("REDIS_URL", redis_url()),
        ("TRUSTED_PROXIES", "127.0.0.1/32,10.0.0.0/33".to_string()),
    ];
    let text = boot_failure(&["broadcaster"], &env).await;
    assert!(text.contains("10.0.0.0/33"), "{text}");
}
