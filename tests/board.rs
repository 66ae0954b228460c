//! The live odds board at `/` in headless Chromium: web/test/board.test.mjs drives a real
//! browser (Debian's chromium through playwright-core) against a real `oddsfeed serve`.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odds_board_in_headless_chromium() {
    let db = TestDb::new().await;
    let screenshot = std::env::var("BOARD_SCREENSHOT").ok();
    // 40 events are enough to check; the README's screenshot shows what the quick start seeds.
    let events = if screenshot.is_some() { 300 } else { 40 };
    oddsfeed::sim::seed::seed(&db.pool, events, 5, false)
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let channel = format!("t-{}", random_suffix());
    // The Chromium profile and every temporary file of the run; node removes it however its
    // tests end, and this guard when node itself was killed (or the assertion below fails).
    let scratch = TempPath::dir("board");
    let mut env = vec![
        ("ODDSFEED_BIN", env!("CARGO_BIN_EXE_oddsfeed").to_string()),
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", redis_url()),
        ("ODDS_CHANNEL", channel),
        ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("BOARD_TMP", scratch.display().to_string()),
    ];
    if let Some(path) = screenshot {
        env.push(("SCREENSHOT", path));
    }
    run_node_tests("test/board.test.mjs", &env, 4).await;
    db.drop_db().await;
}
