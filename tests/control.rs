//! The control API (CONTRACT §5) over real HTTP against the real binary.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const PATH: &str = "/api/sports/ws-publisher";

async fn call(server: &Server, method: reqwest::Method, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, server.url(PATH));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// Asserts nothing at all (not even a heartbeat) arrives for `quiet`.
async fn assert_silent(sub: &mut Subscriber, quiet: Duration) {
    if let Some(msg) = sub.next(quiet).await {
        panic!("a stopped publisher sent {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_status_auth_and_persistence() {
    let db = TestDb::new().await;
    seed_one_event(&db, "c1").await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("CONTROL_TOKEN", "s3cret".into()));
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let mut server = Server::start(&["publisher"], &env).await;
    let auth = [("authorization", "Bearer s3cret")];

    // Autostart: running, and publishing.
    let first = sub
        .next_odds(WAIT)
        .await
        .expect("autostarted publisher publishes");
    assert_eq!(first["seq"], 1);
    let (code, body) = call(&server, reqwest::Method::GET, &[]).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "running");
    assert_eq!(body["interval"], "100ms");
    for key in [
        "epoch",
        "seq",
        "leader",
        "activeEvents",
        "lastTickAt",
        "lastTickMs",
        "ticks",
        "errors",
        "isPublishing",
    ] {
        assert!(body.get(key).is_some(), "GET has {key}: {body}");
    }

    // Auth: no token, a wrong token, a wrong scheme.
    for headers in [
        vec![],
        vec![("authorization", "Bearer nope")],
        vec![("authorization", "Basic s3cret")],
    ] {
        for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
            let (code, body) = call(&server, method.clone(), &headers).await;
            assert_eq!(code, 401, "{method} {headers:?}");
            assert_eq!(body["error"], "unauthorized");
        }
    }
    // Other methods.
    for method in [reqwest::Method::PUT, reqwest::Method::PATCH] {
        let (code, _) = call(&server, method, &auth).await;
        assert_eq!(code, 405);
    }

    let (code, body) = call(&server, reqwest::Method::POST, &auth).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("already_running"))
    );
    assert_eq!(body["interval"], "100ms");

    let (code, body) = call(&server, reqwest::Method::DELETE, &auth).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("stopped")));
    assert!(body["message"].is_string());
    // The answer is only sent once this process no longer publishes.
    assert_eq!(body["isPublishing"], false, "{body}");
    let (_, body) = call(&server, reqwest::Method::DELETE, &auth).await;
    assert_eq!(body["status"], "not_running");

    let (_, body) = call(&server, reqwest::Method::GET, &[]).await;
    assert_eq!(body["status"], "stopped");
    assert!(body["interval"].is_null());
    eventually(WAIT, "isPublishing false", || {
        let server = &server;
        async move {
            let (_, body) = call(server, reqwest::Method::GET, &[]).await;
            (body["isPublishing"] == false).then_some(())
        }
    })
    .await;

    // Stopped means silent: changes are not published, and no heartbeats.
    while sub.next(Duration::from_millis(200)).await.is_some() {}
    db.exec("UPDATE outcomes SET external_price = 0.9 WHERE name = 'YES'")
        .await;
    assert_silent(&mut sub, Duration::from_millis(1200)).await;

    // The stop survives a restart of the process.
    assert!(server.terminate().await.success());
    let server = Server::start(&["publisher"], &env).await;
    let (_, body) = call(&server, reqwest::Method::GET, &[]).await;
    assert_eq!(body["status"], "stopped");
    assert_silent(&mut sub, Duration::from_millis(1200)).await;

    // Started again: the stream continues where it was, with what changed meanwhile.
    let (code, body) = call(&server, reqwest::Method::POST, &auth).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("started")));
    let next = sub.next_odds(WAIT).await.expect("publishing resumes");
    assert_eq!(next["epoch"], first["epoch"]);
    assert_eq!(next["seq"], 2);
    assert_eq!(probabilities(&upserts(&next)["c1"])["YES"], Some(0.6429));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_direct_loopback_may_control() {
    let db = TestDb::new().await;
    let (mut env, _) = publisher_env(&db, &redis_url());
    env.push(("PUBLISHER_AUTOSTART", "false".into()));
    let server = Server::start(&["publisher"], &env).await;

    let (_, body) = call(&server, reqwest::Method::GET, &[]).await;
    assert_eq!(
        body["status"], "stopped",
        "autostart off and nothing stored"
    );

    // Relayed by a proxy: the real client is elsewhere.
    for header in ["x-forwarded-for", "forwarded"] {
        let (code, body) = call(&server, reqwest::Method::POST, &[(header, "203.0.113.9")]).await;
        assert_eq!(code, 403, "{header}");
        assert_eq!(body["error"], "forbidden");
    }
    let (code, body) = call(&server, reqwest::Method::POST, &[]).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("started")));
    let (_, body) = call(&server, reqwest::Method::GET, &[]).await;
    assert_eq!(body["status"], "running");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_answers_503_when_postgres_is_unreachable() {
    let db = TestDb::new().await;
    let (mut env, _) = publisher_env(&db, &redis_url());
    // A database that does not exist: the process stays up and says what is wrong.
    env.retain(|(k, _)| *k != "DATABASE_URL");
    env.push((
        "DATABASE_URL",
        format!("{}/oddsfeed_missing_{}", admin_url(), random_suffix()),
    ));
    let server = Server::start(&["publisher"], &env).await;
    let (code, body) = call(&server, reqwest::Method::POST, &[]).await;
    assert_eq!(code, 503);
    assert_eq!(body["error"], "unavailable");
    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, 503);
    assert_eq!(health["postgres"]["status"], "down");
    assert_eq!(health["redis"]["status"], "up");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_at_once_while_postgres_does_not_answer() {
    // A "PostgreSQL" that accepts connections and never says a word, like a server behind a
    // partition: every query waits until its timeout.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            sockets.push(socket);
        }
    });
    let db = TestDb::new().await;
    let (mut env, _) = publisher_env(&db, &redis_url());
    env.retain(|(k, _)| *k != "DATABASE_URL");
    env.push((
        "DATABASE_URL",
        format!("postgres://postgres@127.0.0.1:{port}/nothing"),
    ));
    let server = Server::start(&["publisher"], &env).await;
    for attempt in 0..3 {
        let started = std::time::Instant::now();
        let (code, body) = call(&server, reqwest::Method::GET, &[]).await;
        let took = started.elapsed();
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body["status"], "running",
            "autostart is the last known state"
        );
        assert_eq!(body["isPublishing"], false);
        // Before: 3 s (the pool's acquire timeout) on every call.
        assert!(
            took < Duration::from_millis(1500),
            "GET #{attempt} took {took:?}"
        );
    }
    held.abort();
    db.drop_db().await;
}
