//! Test harness: real PostgreSQL and Redis, the real `oddsfeed` binary, real clients.
//!
//! Every test gets its own database (`oddsfeed_t_<random>`) and its own odds channel
//! (`t-<random>`, which also names the state keys and the leader-lock key), so tests run in
//! parallel against the shared servers. Tests that restart Redis start a private
//! `redis-server` on a free port instead of touching the shared one.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn random_suffix() -> String {
    format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff)
}

/// A path in the temp dir, `oddsfeed-<name>-<random>`, removed with everything in it when this
/// is dropped: when the test ends, and when it fails (the panic unwinds through the guard).
pub struct TempPath(std::path::PathBuf);

impl TempPath {
    /// A new, empty directory.
    pub fn dir(name: &str) -> Self {
        let path = Self::file(name);
        std::fs::create_dir_all(&path.0).expect("create a temp dir");
        path
    }

    /// A path for a file (or a directory) that the test, or a program it runs, creates.
    pub fn file(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("oddsfeed-{name}-{}", random_suffix())))
    }
}

impl std::ops::Deref for TempPath {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempPath {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A freshly created and migrated database of its own.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A new database with the oddsfeed schema.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        oddsfeed::db::migrate(&db.pool)
            .await
            .expect("migrations apply");
        db
    }

    /// A new database with nothing in it.
    pub async fn empty() -> Self {
        let name = format!("oddsfeed_t_{}", random_suffix());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", admin_url()))
            .await
            .expect("connect to PostgreSQL (set TEST_DATABASE_URL)");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        admin.close().await;
        let url = format!("{}/{name}", admin_url());
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect to the test database");
        Self { name, url, pool }
    }

    /// Drops the database (servers using it must be stopped first).
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", admin_url()))
            .await
        {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await;
        }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"));
    }
}

/// A running `oddsfeed` process with its log captured.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `oddsfeed <args>` with `env` and waits until it listens.
    pub async fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        Self::launch(args, env, None).await
    }

    /// Like [`Server::start`], with the open-files limit (soft and hard) set to `limit`.
    pub async fn start_with_open_files(args: &[&str], env: &[(&str, String)], limit: u64) -> Self {
        Self::launch(args, env, Some(limit)).await
    }

    async fn launch(args: &[&str], env: &[(&str, String)], open_files: Option<u64>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oddsfeed"));
        if let Some(limit) = open_files {
            // SAFETY: setrlimit is async-signal-safe and touches only the child being set up.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn oddsfeed");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for reader in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("[oddsfeed] {line}");
                    }
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let addr = timeout(Duration::from_secs(20), async {
            while let Some(line) = rx.recv().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                {
                    return v["addr"].as_str().map(str::to_string);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "oddsfeed did not start:\n{}",
                logs.lock().unwrap().join("\n")
            )
        });
        Self { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// SIGKILL: the process dies without any cleanup, like a crash.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill oddsfeed");
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("oddsfeed exits after SIGTERM")
            .expect("wait for oddsfeed")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::get(self.url(path)).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Waits until this broadcaster's relay has the stream at `seq` or later (before that,
    /// every room it serves is empty with seq 0).
    pub async fn wait_stream_seq(&self, seq: u64) {
        eventually(
            Duration::from_secs(15),
            "the broadcaster's stream",
            || async {
                let (_, health) = self.get_json("/health").await;
                (health["stream"]["seq"].as_u64() >= Some(seq)).then_some(())
            },
        )
        .await;
    }

    /// Waits until the samples of the metric starting with `prefix` sum to `at_least`.
    pub async fn wait_metric(&self, prefix: &str, at_least: f64, wait: Duration) {
        eventually(wait, prefix, || async {
            (metric_value(&self.metrics().await, prefix) >= at_least).then_some(())
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

/// Sum of a metric's samples whose line starts with `prefix` (name plus optional labels).
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Redis subscriber on one channel.
pub struct Subscriber {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg> + Send>>,
}

impl Subscriber {
    pub async fn new(redis_url: &str, channel: &str) -> Self {
        let client = redis::Client::open(redis_url).expect("redis url");
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .expect("connect redis pubsub");
        pubsub.subscribe(channel).await.expect("subscribe");
        Self {
            stream: Box::pin(pubsub.into_on_message()),
        }
    }

    /// The next message of any type, or `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        let msg = timeout(wait, self.stream.next()).await.ok()??;
        let payload: String = msg.get_payload().expect("text payload");
        Some(serde_json::from_str(&payload).expect("channel message is JSON"))
    }

    /// The next `odds` message, skipping heartbeats.
    pub async fn next_odds(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.next(left).await?;
            if msg["type"] == "odds" {
                return Some(msg);
            }
        }
    }
}

/// All upserted events of an odds message, by id.
pub fn upserts(msg: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(sports) = msg["sports"].as_object() {
        for block in sports.values() {
            for e in block["upserts"].as_array().into_iter().flatten() {
                out.insert(e["id"].as_str().unwrap_or_default().to_string(), e.clone());
            }
        }
    }
    out
}

/// All removed ids of an odds message.
pub fn removals(msg: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(sports) = msg["sports"].as_object() {
        for block in sports.values() {
            for id in block["removals"].as_array().into_iter().flatten() {
                out.push(id.as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

/// One numeric field (`probability`, `odds`) of an EVENT's outcomes, by outcome name.
pub fn outcome_numbers(event: &Value, field: &str) -> BTreeMap<String, Option<f64>> {
    event["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["name"].as_str().unwrap_or_default().to_string(),
                o[field].as_f64(),
            )
        })
        .collect()
}

/// Probabilities of an EVENT's outcomes by name.
pub fn probabilities(event: &Value) -> BTreeMap<String, Option<f64>> {
    outcome_numbers(event, "probability")
}

/// Waits until the publisher on `channel` has written its state.
pub async fn wait_published(redis_url: &str, channel: &str) {
    eventually(Duration::from_secs(15), "a published state", || async {
        stored_state(redis_url, channel).await.0.get("seq").cloned()
    })
    .await;
}

/// A private `redis-server` on a free port, for tests that restart Redis.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut redis = Self { port, child: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server empty, as a restarted Redis without persistence would be.
    pub async fn restart(&mut self) {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis-server did not start on port {}", self.port);
    }

    /// SIGKILL, like a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `wait`.
pub async fn eventually<T, F, Fut>(wait: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {wait:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Environment for a publisher on `db` and a fresh channel; returns it with the channel name.
pub fn publisher_env(db: &TestDb, redis_url: &str) -> (Vec<(&'static str, String)>, String) {
    let channel = format!("t-{}", random_suffix());
    (
        vec![
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", redis_url.to_string()),
            ("ODDS_CHANNEL", channel.clone()),
            ("TICK_INTERVAL_MS", "100".to_string()),
            ("HEARTBEAT_INTERVAL_MS", "500".to_string()),
        ],
        channel,
    )
}

// ---------------------------------------------------------------------------------------------
// WebSocket clients.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A real WebSocket client over TCP (or TLS).
pub struct WsClient {
    pub stream: std::pin::Pin<Box<dyn WsTransport>>,
}

/// What `WsClient` needs of a WebSocket stream, whatever it runs over.
pub trait WsTransport:
    futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
    + futures_util::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error>
    + Send
{
}

impl<T> WsTransport for T where
    T: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error>
        + Send
{
}

impl WsClient {
    pub fn from_stream(stream: impl WsTransport + 'static) -> Self {
        Self {
            stream: Box::pin(stream),
        }
    }

    pub async fn connect(url: &str) -> Self {
        let (stream, _) = timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        Self::from_stream(stream)
    }

    /// Connects and consumes the `welcome`.
    pub async fn connect_welcomed(url: &str) -> (Self, Value) {
        let mut client = Self::connect(url).await;
        let welcome = client
            .next_json(Duration::from_secs(10))
            .await
            .expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (client, welcome)
    }

    pub async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream.send(WsMessage::text(text)).await.expect("send");
    }

    /// The next JSON text frame, or `None` after `wait` or when the connection ends.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.stream.next()).await.ok()?? {
                Ok(WsMessage::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"));
                }
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next frame of `type`, skipping others (panics after `wait`).
    pub async fn expect_type(&mut self, kind: &str, wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_json(left).await {
                Some(v) if v["type"] == kind => return v,
                Some(_) => continue,
                None => panic!("no {kind} message within {wait:?}"),
            }
        }
    }

    /// Reads until the close frame; returns its code (`None` if the stream ended without one).
    pub async fn close_code(&mut self, wait: Duration) -> Option<u16> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.stream.next()).await {
                Ok(Some(Ok(WsMessage::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Sends a ping message and waits for the `pong`, proving the connection still works.
    pub async fn assert_usable(&mut self) {
        self.send(serde_json::json!({"type": "ping", "id": "alive"}))
            .await;
        let pong = self.expect_type("pong", Duration::from_secs(5)).await;
        assert_eq!(pong["id"], "alive");
    }
}

/// What a client knows of one odds room: applies snapshots and diffs, and records every seq
/// discontinuity it sees.
#[derive(Debug, Default, Clone)]
pub struct RoomView {
    pub epoch: String,
    pub seq: u64,
    pub events: BTreeMap<String, Value>,
    pub gaps: Vec<(u64, u64)>,
    pub snapshots: usize,
    pub diffs: usize,
}

impl RoomView {
    /// Applies one server frame addressed to this room; ignores others.
    pub fn apply(&mut self, msg: &Value) {
        match msg["type"].as_str() {
            Some("snapshot") => {
                self.epoch = msg["epoch"].as_str().unwrap_or_default().to_string();
                self.seq = msg["seq"].as_u64().unwrap_or(0);
                self.events = msg["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| (e["id"].as_str().unwrap_or_default().to_string(), e.clone()))
                    .collect();
                self.snapshots += 1;
            }
            Some("odds") => {
                let seq = msg["seq"].as_u64().unwrap_or(0);
                if seq != self.seq + 1 || msg["epoch"].as_str() != Some(self.epoch.as_str()) {
                    self.gaps.push((self.seq, seq));
                }
                self.seq = seq;
                for id in msg["removals"].as_array().into_iter().flatten() {
                    self.events.remove(id.as_str().unwrap_or_default());
                }
                for e in msg["upserts"].as_array().into_iter().flatten() {
                    let id = e["id"].as_str().unwrap_or_default().to_string();
                    // The `changes` format: merged by field into what the view has.
                    match self.events.get_mut(&id) {
                        Some(Value::Object(have)) if msg["format"] == "changes" => {
                            for (k, v) in e.as_object().into_iter().flatten() {
                                have.insert(k.clone(), v.clone());
                            }
                        }
                        _ => {
                            self.events.insert(id, e.clone());
                        }
                    }
                }
                self.diffs += 1;
            }
            _ => {}
        }
    }
}

/// The odds state as stored in Redis: (meta, events by id).
pub async fn stored_state(
    redis_url: &str,
    channel: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, Value>) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (meta, events): (BTreeMap<String, String>, BTreeMap<String, String>) = redis::pipe()
        .atomic()
        .hgetall(format!("{channel}:state:meta"))
        .hgetall(format!("{channel}:state:events"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let events = events
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
        .collect();
    (meta, events)
}

/// Publishes a raw message on a Redis channel.
pub async fn redis_publish(redis_url: &str, channel: &str, payload: &str) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Resident memory of a process in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `node --test <file>` in web/ with `env`; fails with Node's output unless exactly
/// `passes` tests passed and none failed.
pub async fn run_node_tests(file: &str, env: &[(&str, String)], passes: usize) {
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
    assert!(
        std::path::Path::new(web).join("node_modules").exists(),
        "run `npm ci` in web/ first (scripts/test.sh does)"
    );
    let out = tokio::process::Command::new("node")
        .args(["--test", file])
        .current_dir(web)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        // A test that gives up on node (a timeout around this) must not leave it running.
        .kill_on_drop(true)
        .output()
        .await
        .expect("node is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "node --test {file} failed:\n{text}");
    assert!(
        text.contains(&format!("# pass {passes}")) && text.contains("# fail 0"),
        "{text}"
    );
}

/// Runs `oddsfeed <args>` with exactly `env`, expects it to exit with failure, and returns
/// what it printed (for checking the error message).
pub async fn boot_failure(args: &[&str], env: &[(&str, String)]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oddsfeed"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .await
        .expect("run oddsfeed");
    assert!(
        !out.status.success(),
        "oddsfeed {args:?} was expected to fail"
    );
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Over an established (TLS) stream: upgrades to wss, subscribes to `room`, expects a snapshot
/// whose first event is `event_id`, runs `change` in PostgreSQL, and expects the next diff.
pub async fn wss_snapshot_then_diff<S>(
    stream: S,
    db: &TestDb,
    room: &str,
    event_id: &str,
    change: &str,
) -> WsClient
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let wait = Duration::from_secs(10);
    let (ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .expect("wss upgrade");
    let mut client = WsClient::from_stream(ws);
    assert_eq!(
        client.next_json(wait).await.expect("welcome")["type"],
        "welcome"
    );
    client
        .send(serde_json::json!({"type": "subscribe", "room": room}))
        .await;
    let snapshot = client.expect_type("snapshot", wait).await;
    assert_eq!(snapshot["events"][0]["id"], event_id);
    db.exec(change).await;
    let diff = client.expect_type("odds", wait).await;
    assert_eq!(diff["seq"], snapshot["seq"].as_u64().unwrap() + 1);
    assert_eq!(diff["upserts"][0]["id"], event_id);
    client
}

// ---------------------------------------------------------------------------------------------
// TLS.

pub type Certificate = tokio_rustls::rustls::pki_types::CertificateDer<'static>;

/// A self-signed certificate for localhost, written as `cert.pem` and `key.pem` into a new
/// temp dir (removed when dropped); returns the dir and the certificate to trust.
pub fn self_signed_cert() -> (TempPath, Certificate) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate a certificate");
    let dir = TempPath::dir("tls");
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    (dir, certified.cert.der().clone())
}

/// A TLS connection to `addr` that trusts only `cert` (as `localhost`); `None` if the TCP
/// connect or the handshake fails.
pub async fn tls_connect(
    addr: &str,
    cert: &Certificate,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_connect_with(addr, cert, None).await
}

/// [`tls_connect`] with the socket's receive buffer set to `recv_buffer` bytes (a small one
/// makes the server's writes block as soon as the client stops reading).
pub async fn tls_connect_with(
    addr: &str,
    cert: &Certificate,
    recv_buffer: Option<u32>,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).ok()?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).ok()?;
    }
    let tcp = socket.connect(addr.parse().ok()?).await.ok()?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").ok()?,
            tcp,
        )
        .await
        .ok()
}

/// One upcoming tennis event with YES/NO at 0.5 each.
pub async fn seed_one_event(db: &TestDb, id: &str) {
    db.exec(&format!(
        "INSERT INTO events (id, title, sport, team_a, team_b, event_type) VALUES ('{id}', '{id}', 'Tennis', 'A1', 'B1', 'upcoming');
         INSERT INTO outcomes (event_id, name, position, external_price) VALUES ('{id}', 'YES', 0, 0.5), ('{id}', 'NO', 1, 0.5);"
    ))
    .await;
}

/// Sets (or, with "", clears) a Redis server's password.
pub async fn set_redis_password(url: &str, password: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(password)
        .query_async(&mut conn)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Raw sockets: a WebSocket handshake by hand, and frames read and written byte by byte, for
// clients that misbehave in ways a WebSocket library will not.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP connection to `addr` with a 4 KiB receive buffer: once the client stops reading, the
/// server's writes to it block almost at once.
pub async fn connect_small_window(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let addr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    socket.connect(addr).await
}

/// Opens a TCP connection and completes a WebSocket handshake with `extra` headers; returns
/// the socket right after the `101` response (nothing of the WebSocket read yet).
pub async fn raw_upgrade(addr: &str, path: &str, extra: &[(&str, &str)]) -> tokio::net::TcpStream {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw_handshake(tcp, addr, path, extra).await
}

/// The handshake of [`raw_upgrade`] on a socket the caller connected (with its own buffer
/// sizes, say).
pub async fn raw_handshake(
    tcp: tokio::net::TcpStream,
    addr: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> tokio::net::TcpStream {
    raw_handshake_head(tcp, addr, path, extra).await.0
}

/// [`raw_handshake`], also returning the server's response head.
pub async fn raw_handshake_head(
    mut tcp: tokio::net::TcpStream,
    addr: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (tokio::net::TcpStream, String) {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in extra {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .expect("send the handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .expect("handshake answer in time")
            .expect("read the handshake answer");
        assert_eq!(
            n,
            1,
            "connection closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
    (tcp, head)
}

/// A client frame: masked (unless `masked` is false), with the given first byte (FIN, RSV
/// bits, opcode) and payload.
pub fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// What a raw client read from the server.
#[derive(Debug, Default)]
pub struct RawRead {
    /// Text frames, as text (inflated when they came compressed).
    pub texts: Vec<String>,
    /// Frames that came compressed (permessage-deflate, RSV1).
    pub compressed: usize,
    pub pings: usize,
    /// The close frame's code, if one came.
    pub close: Option<u16>,
    /// The server closed the TCP connection (EOF after everything).
    pub eof: bool,
    /// The connection was reset.
    pub reset: bool,
}

/// Reads server frames until the connection ends or `wait` passes.
pub async fn read_raw(tcp: &mut tokio::net::TcpStream, wait: Duration) -> RawRead {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    let deadline = Instant::now() + wait;
    let mut buf: Vec<u8> = Vec::new();
    let mut out = RawRead::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Parse what is buffered.
        loop {
            let mut cursor = std::io::Cursor::new(&buf[..]);
            let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) else {
                break;
            };
            let start = cursor.position() as usize;
            let end = start + len as usize;
            if buf.len() < end {
                break;
            }
            let mut payload = buf[start..end].to_vec();
            buf.drain(..end);
            if header.rsv1 {
                // Compressed (permessage-deflate); bytes that are no WebSocket frame at all
                // (an HTTP answer read as frames) are left as they are.
                let mut input = payload.clone();
                input.extend_from_slice(&[0, 0, 0xff, 0xff]);
                let mut plain = Vec::with_capacity(payload.len() * 20 + 1024);
                if flate2::Decompress::new(false)
                    .decompress_vec(&input, &mut plain, flate2::FlushDecompress::Sync)
                    .is_ok()
                {
                    out.compressed += 1;
                    payload = plain;
                }
            }
            use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
            match header.opcode {
                OpCode::Data(Data::Text) => {
                    out.texts.push(String::from_utf8_lossy(&payload).into())
                }
                OpCode::Control(Control::Ping) => out.pings += 1,
                OpCode::Control(Control::Close) => {
                    out.close =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                }
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                out.eof = true;
                return out;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => {
                out.reset = true;
                return out;
            }
            Err(_) => return out,
        }
    }
}

/// Open file descriptors of a process (Linux).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// User plus system CPU time of a process, in clock ticks (Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// `n` upcoming football events `e0..e<n>` with HOME/DRAW/AWAY outcomes and long titles
/// (about 700 bytes each on the wire).
pub async fn seed_football(db: &TestDb, n: usize) {
    let mut sql = String::new();
    for i in 0..n {
        sql.push_str(&format!(
            "INSERT INTO events (id, title, sport, league, team_a, team_b, event_type, start_time)
             VALUES ('e{i}', 'A long enough title for event number {i}', 'Football', 'Premier League',
                     'Home team {i}', 'Away team {i}', 'upcoming', now() + interval '{i} minutes');
             INSERT INTO outcomes (event_id, name, position, external_price)
             VALUES ('e{i}', 'HOME', 0, 0.4), ('e{i}', 'DRAW', 1, 0.3), ('e{i}', 'AWAY', 2, 0.3);"
        ));
    }
    db.exec(&sql).await;
}

/// Moves every outcome's price at random every `every`, `rounds` times (or until aborted), so
/// every tick publishes every event.
pub fn spawn_price_churn(
    pool: PgPool,
    every: Duration,
    rounds: Option<usize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut done = 0;
        while rounds.is_none_or(|r| done < r) {
            let _ = sqlx::query(
                "UPDATE outcomes SET external_price = round((random() * 0.8 + 0.1)::numeric, 4)",
            )
            .execute(&pool)
            .await;
            done += 1;
            tokio::time::sleep(every).await;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can freeze: a network partition in userspace.

/// Forwards connections from its own port to `target`. While frozen it forwards nothing in
/// either direction and keeps every connection open, as a partitioned network would: peers see
/// silence, not a reset.
pub struct FreezableProxy {
    pub addr: std::net::SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pump(cr, sw, flag.clone()));
                tokio::spawn(Self::pump(sr, cw, flag.clone()));
            }
        });
        Self { addr, frozen, task }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Bytes read just as the freeze began are held until it ends.
            while frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (userinfo, _) = authority
            .rsplit_once('@')
            .map_or(("", authority), |(u, h)| (u, h));
        let at = if userinfo.is_empty() { "" } else { "@" };
        let slash = if path.is_empty() && !url.ends_with('/') {
            ""
        } else {
            "/"
        };
        format!("{scheme}://{userinfo}{at}{}{slash}{path}", self.addr)
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host:port of a URL such as `postgres://user@127.0.0.1:5432/db`.
pub fn url_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.parse()
        .unwrap_or_else(|_| panic!("{host} is not an address"))
}
