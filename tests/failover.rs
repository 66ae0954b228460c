//! Leader election, take-over and dependency failures: two real processes, a Redis that
//! restarts, PostgreSQL sessions that die.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(15);

async fn seed(db: &TestDb, n: usize) {
    let mut sql = String::new();
    for i in 0..n {
        sql.push_str(&format!(
            "INSERT INTO events (id, title, sport, team_a, team_b, event_type, start_time)
               VALUES ('f{i}', 'F{i}', 'Football', 'Home{i}', 'Away{i}', 'upcoming', now() + interval '{i} minutes');
             INSERT INTO outcomes (event_id, name, position, external_price)
               VALUES ('f{i}', 'HOME', 0, 0.4), ('f{i}', 'DRAW', 1, 0.3), ('f{i}', 'AWAY', 2, 0.3);"
        ));
    }
    db.exec(&sql).await;
}

/// Places a bet every `every` until dropped, so there is always something to publish.
fn keep_betting(db: &TestDb, every: Duration) -> tokio::task::JoinHandle<()> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        let mut i = 0u64;
        loop {
            let _ =
                sqlx::query("INSERT INTO bets (event_id, outcome, amount) VALUES ($1, 'DRAW', 10)")
                    .bind(format!("f{}", i % 3))
                    .execute(&pool)
                    .await;
            i += 1;
            tokio::time::sleep(every).await;
        }
    })
}

/// Checks that odds messages form one stream: same epoch, seq +1 each time.
fn assert_contiguous(messages: &[Value]) {
    let odds: Vec<&Value> = messages.iter().filter(|m| m["type"] == "odds").collect();
    for pair in odds.windows(2) {
        assert_eq!(pair[0]["epoch"], pair[1]["epoch"], "epoch changed");
        assert_eq!(
            pair[0]["seq"].as_u64().unwrap() + 1,
            pair[1]["seq"].as_u64().unwrap(),
            "seq not contiguous between {} and {}",
            pair[0]["seq"],
            pair[1]["seq"]
        );
    }
}

async fn status(server: &Server) -> Value {
    server.get_json("/api/sports/ws-publisher").await.1
}

/// Waits for the publisher to report an error and returns it.
async fn last_error(server: &Server, what: &str) -> String {
    eventually(WAIT, what, || async {
        status(server).await["lastError"]
            .as_str()
            .map(str::to_string)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_publishes_and_a_standby_takes_over_within_two_seconds() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let (env, channel) = publisher_env(&db, &redis_url());
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let mut a = Server::start(&["publisher"], &env).await;
    let mut b = Server::start(&["publisher"], &env).await;
    let betting = keep_betting(&db, Duration::from_millis(50));

    // Let both run for a while: exactly one leads, and the stream has no duplicate seq.
    let mut messages = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while let Some(m) = sub
        .next(until.saturating_duration_since(Instant::now()))
        .await
    {
        messages.push(m);
    }
    assert!(
        messages.len() >= 5,
        "the leader publishes: {} messages",
        messages.len()
    );
    assert_contiguous(&messages);
    let (sa, sb) = (status(&a).await, status(&b).await);
    assert_ne!(
        sa["leader"], sb["leader"],
        "exactly one leader: {sa} / {sb}"
    );
    assert_eq!(
        sa["isPublishing"].as_bool().unwrap() as u8 + sb["isPublishing"].as_bool().unwrap() as u8,
        1
    );
    let (leader, standby) = if sa["leader"] == true {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(
        status(standby).await["status"],
        "running",
        "the standby reports the desired state"
    );

    // The leader dies without any cleanup.
    leader.kill().await;
    let killed_at = Instant::now();
    let killed_ms = chrono::Utc::now().timestamp_millis();
    let taken_over = loop {
        let m = sub
            .next_odds(WAIT)
            .await
            .expect("the standby continues the stream");
        let published = m["publishedAt"].as_i64().unwrap();
        messages.push(m);
        if published > killed_ms {
            break killed_at.elapsed();
        }
    };
    assert!(
        taken_over < Duration::from_secs(2),
        "take-over took {taken_over:?}"
    );
    // A few more messages from the new leader, then check the whole stream.
    for _ in 0..3 {
        messages.push(sub.next_odds(WAIT).await.expect("stream goes on"));
    }
    assert_contiguous(&messages);
    let s = status(standby).await;
    assert_eq!(s["leader"], true);
    assert_eq!(s["epoch"], messages[0]["epoch"]);
    println!("take-over after SIGKILL of the leader: {taken_over:?}");
    betting.abort();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_resumes_with_everything_that_changed() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let mut redis = PrivateRedis::start().await;
    let (env, channel) = publisher_env(&db, &redis.url());
    let mut sub = Subscriber::new(&redis.url(), &channel).await;
    let server = Server::start(&["publisher"], &env).await;
    let first = sub.next_odds(WAIT).await.expect("first message");
    assert_eq!(upserts(&first).len(), 3);

    // Redis dies; meanwhile two events change (in one transaction, so no tick sees half).
    redis.stop();
    let errors_after = |floor: u64| {
        let server = &server;
        async move { (status(server).await["errors"].as_u64()? > floor).then_some(()) }
    };
    eventually(WAIT, "the publisher to notice", || errors_after(0)).await;
    db.exec(
        "INSERT INTO bets (event_id, outcome, amount) VALUES ('f0', 'HOME', 1000000);
         UPDATE outcomes SET external_price = 0.1 WHERE event_id = 'f1' AND name = 'HOME';",
    )
    .await;
    // A tick after the change has failed too, so the unpublished delta holds both events.
    let seen = status(&server).await["errors"].as_u64().unwrap();
    eventually(WAIT, "another failed tick", || errors_after(seen)).await;

    // Redis comes back empty, with a password so the publisher cannot write until this
    // test's subscriber is listening; then the password goes.
    redis.restart().await;
    set_redis_password(&redis.url(), "pw").await;
    let authed = format!("redis://:pw@127.0.0.1:{}", redis.port);
    let mut sub = Subscriber::new(&authed, &channel).await;
    set_redis_password(&authed, "").await;

    let resumed = sub
        .next_odds(WAIT)
        .await
        .expect("the stream resumes after the restart");
    assert_eq!(
        resumed["epoch"], first["epoch"],
        "the publisher did not start from nothing"
    );
    assert_eq!(resumed["seq"], 2);
    let changed = upserts(&resumed);
    assert_eq!(
        changed.keys().collect::<Vec<_>>(),
        vec!["f0", "f1"],
        "everything that changed meanwhile"
    );
    assert_eq!(changed["f0"]["version"], 2);

    // The state written back matches what was published, so late joiners are consistent.
    let (meta, stored) = stored_state(&redis.url(), &channel).await;
    assert_eq!(meta["seq"], "2");
    assert_eq!(meta["epoch"], first["epoch"].as_str().unwrap());
    let mut expected = upserts(&first);
    expected.extend(changed);
    assert_eq!(stored, expected);

    let metrics = server.metrics().await;
    assert!(
        metric_value(&metrics, "oddsfeed_errors_total{kind=\"redis\"}") >= 1.0,
        "{metrics}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_killed_the_publisher_recovers_the_same_stream() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let (env, channel) = publisher_env(&db, &redis_url());
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let server = Server::start(&["publisher"], &env).await;
    let betting = keep_betting(&db, Duration::from_millis(100));
    let mut messages = vec![sub.next_odds(WAIT).await.expect("first message")];
    messages.push(sub.next_odds(WAIT).await.expect("second message"));

    // Every session of the publisher dies, the leader lock's included (as in a PostgreSQL
    // restart or a failover of the database).
    db.exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{}' AND application_name <> '' AND pid <> pg_backend_pid()
            AND application_name = 'oddsfeed-leader'",
        db.name
    ))
    .await;
    eventually(WAIT, "the lost lock to be noticed", || {
        let server = &server;
        async move { (status(server).await["errors"].as_u64()? > 0).then_some(()) }
    })
    .await;
    for _ in 0..5 {
        messages.push(sub.next_odds(WAIT).await.expect("the stream goes on"));
    }
    assert_contiguous(&messages);
    let s = status(&server).await;
    assert_eq!(s["leader"], true);
    assert_eq!(s["isPublishing"], true);
    let metrics = server.metrics().await;
    assert!(metric_value(&metrics, "oddsfeed_leader_changes_total{change=\"lost\"}") >= 1.0);
    betting.abort();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_appears_after_boot_is_picked_up() {
    let db = TestDb::empty().await;
    let (env, channel) = publisher_env(&db, &redis_url());
    let mut sub = Subscriber::new(&redis_url(), &channel).await;
    let server = Server::start(&["publisher"], &env).await;

    // No schema yet: ticks fail with a clear error, the process stays up.
    let err = last_error(&server, "an error about the missing schema").await;
    assert!(
        err.contains("publisher_control") || err.contains("does not exist"),
        "{err}"
    );
    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "degraded");

    oddsfeed::db::migrate(&db.pool).await.unwrap();
    seed(&db, 2).await;
    let first = sub
        .next_odds(WAIT)
        .await
        .expect("publishing starts once the schema exists");
    assert_eq!(first["seq"], 1);
    assert_eq!(upserts(&first).len(), 2);
    let (_, s) = server.get_json("/api/sports/ws-publisher").await;
    assert!(s["lastError"].is_null());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_query_with_wrong_columns_is_reported_not_fatal() {
    let db = TestDb::new().await;
    let dir = TempPath::dir("sql");
    let path = dir.join("bad.sql");
    std::fs::write(&path, "SELECT 1 AS event_id").unwrap();
    let (mut env, _) = publisher_env(&db, &redis_url());
    env.push(("ACTIVE_EVENTS_SQL", path.display().to_string()));
    let server = Server::start(&["publisher"], &env).await;
    let err = last_error(&server, "a column error").await;
    assert!(
        err.contains("missing column(s) title, sport,")
            && err.contains("pending_volume")
            && err.contains("sql/README.md"),
        "{err}"
    );

    // A path that does not exist fails at boot, with the path in the message.
    let mut env2 = env.clone();
    env2.retain(|(k, _)| *k != "ACTIVE_EVENTS_SQL");
    env2.push(("ACTIVE_EVENTS_SQL", "/nonexistent/active.sql".into()));
    let text = boot_failure(&["publisher"], &env2).await;
    assert!(text.contains("/nonexistent/active.sql"), "{text}");
    db.drop_db().await;
}
