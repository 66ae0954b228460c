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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oddsfeed"));
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

/// Probabilities of an EVENT's outcomes by name.
pub fn probabilities(event: &Value) -> BTreeMap<String, Option<f64>> {
    event["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["name"].as_str().unwrap_or_default().to_string(),
                o["probability"].as_f64(),
            )
        })
        .collect()
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
