//! The JavaScript client (web/) under Node's test runner, against a real `oddsfeed serve`
//! while prices change in PostgreSQL; and its latency estimate alone, against a fake server.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_client_against_a_real_server() {
    let db = TestDb::new().await;
    oddsfeed::sim::seed::seed(&db.pool, 30, 3, false)
        .await
        .unwrap();
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("TICK_INTERVAL_MS", "50".into()));
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;

    let pool = db.pool.clone();
    let changes = tokio::spawn(async move {
        loop {
            let _ = sqlx::query(
                "UPDATE outcomes SET external_price = round((random() * 0.8 + 0.1)::numeric, 3)
                  WHERE (event_id, name) IN (SELECT event_id, name FROM outcomes ORDER BY random() LIMIT 3)",
            )
            .execute(&pool)
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    run_node_tests(
        "test/client.test.mjs",
        &[("ODDSFEED_WS_URL", format!("ws://{}/ws", server.addr))],
        6,
    )
    .await;
    changes.abort();

    // The client's latency reports reached the server's histogram.
    let metrics = server.metrics().await;
    assert!(
        metric_value(&metrics, "oddsfeed_browser_latency_seconds_count") >= 1.0,
        "{metrics}"
    );
    db.drop_db().await;
}

/// The client's clock offset, latency estimate and formatting against a fake server and clock
/// (web/test/latency.test.mjs): clocks stepped either way, replays, millisecond-only servers.
#[tokio::test]
async fn javascript_latency_estimate_and_formatting() {
    run_node_tests("test/latency.test.mjs", &[], 13).await;
}
