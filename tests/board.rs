//! The live odds board at `/` in headless Chromium: web/test/board.test.mjs drives a real
//! browser (Debian's chromium through playwright-core) against a real `oddsfeed serve`.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odds_board_in_headless_chromium() {
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
    assert!(
        std::path::Path::new(web)
            .join("node_modules/playwright-core")
            .exists(),
        "run `npm ci` in web/ first (scripts/test.sh does)"
    );
    let db = TestDb::new().await;
    oddsfeed::sim::seed::seed(&db.pool, 40, 5, false)
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let channel = format!("t-{}", random_suffix());
    let screenshot = std::env::var("BOARD_SCREENSHOT").ok();
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "test/board.test.mjs"])
        .current_dir(web)
        .env("ODDSFEED_BIN", env!("CARGO_BIN_EXE_oddsfeed"))
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("ODDS_CHANNEL", &channel)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    if let Some(path) = &screenshot {
        cmd.env("SCREENSHOT", path);
    }
    let out = cmd.output().await.expect("node is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "node --test failed:\n{text}");
    assert!(
        text.contains("# pass 3") && text.contains("# fail 0"),
        "{text}"
    );
    db.drop_db().await;
}
