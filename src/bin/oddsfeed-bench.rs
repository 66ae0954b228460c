//! `oddsfeed-bench`: numbers, not timed tests.
//!
//! `oddsfeed-bench tick --events N` creates a scratch database, seeds N active events, and runs
//! ticks exactly as the scheduler does (query → price → diff → fenced publish to Redis), with a
//! simulator round between ticks so every tick has something to publish. It reports each
//! stage's p50/p90/p99/max.
//!
//! `oddsfeed-bench ws --clients N` opens N WebSocket clients against a running server (spread
//! over source addresses 127.0.0.x so one machine can hold many connections), subscribes them
//! across rooms, and measures receive time minus `publishedAt` of every `odds` message (one
//! clock on one machine), messages per second, connect rate, errors and, given the server's
//! pid, its resident memory per connection. Results and commands go to BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use oddsfeed::bus::{OddsBus, PublishOutcome};
use oddsfeed::odds::{Book, EventView, OddsParams};
use oddsfeed::publisher::Source;
use rand::SeedableRng;
use sqlx::{Executor, postgres::PgPoolOptions};

#[derive(Parser)]
#[command(name = "oddsfeed-bench", about = "Benchmarks for oddsfeed")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Cost of one publisher tick at a given number of active events.
    Tick {
        /// Active events to seed.
        #[arg(long, default_value_t = 300)]
        events: usize,
        /// Ticks to measure.
        #[arg(long, default_value_t = 200)]
        ticks: usize,
        /// Simulator changes between two ticks (price moves and bets).
        #[arg(long, default_value_t = 10)]
        changes: usize,
        /// Superuser URL without a database; a scratch database is created and dropped.
        #[arg(
            long,
            env = "PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432"
        )]
        pg_admin_url: String,
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
    },
    /// Publish-to-client latency with many WebSocket clients against a running server.
    Ws {
        /// WebSocket URL of the server.
        #[arg(long, default_value = "ws://127.0.0.1:3001/ws")]
        url: String,
        /// Clients to open.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Rooms to spread the clients over (round-robin).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "sport:all,sport:football,sport:basketball,sport:tennis,sport:esports"
        )]
        rooms: Vec<String>,
        /// Seconds to measure after every client has its snapshot.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Source addresses 127.0.0.1 ..= 127.0.0.N to spread connections over.
        #[arg(long, default_value_t = 8)]
        source_addresses: u8,
        /// The server's pid, to report its memory per connection.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Tick {
            events,
            ticks,
            changes,
            pg_admin_url,
            redis_url,
        } => tick(events, ticks, changes, &pg_admin_url, &redis_url).await,
        Bench::Ws {
            url,
            clients,
            rooms,
            seconds,
            source_addresses,
            server_pid,
        } => ws(&url, clients, &rooms, seconds, source_addresses, server_pid).await,
    }
}

/// p50, p90, p99 and max of durations, in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    format!(
        "p50 {:7.3} ms   p90 {:7.3} ms   p99 {:7.3} ms   max {:7.3} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

async fn tick(
    events: usize,
    ticks: usize,
    changes: usize,
    admin: &str,
    redis_url: &str,
) -> anyhow::Result<()> {
    let name = format!("oddsfeed_bench_{}", std::process::id());
    let admin_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{admin}/postgres"))
        .await
        .context("connect as PG_ADMIN_URL")?;
    admin_pool
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    let result = async {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&format!("{admin}/{name}"))
            .await?;
        oddsfeed::db::migrate(&pool).await?;
        let seeded = oddsfeed::sim::seed::seed(&pool, events, 42, false).await?;
        sqlx::query("ANALYZE").execute(&pool).await?;
        let source = Source::new(pool.clone(), None, None)?;
        let channel = format!("bench-{}", std::process::id());
        let mut bus = OddsBus::new(oddsfeed::bus::connection(redis_url)?, channel.clone());
        let params = OddsParams::default();
        let mut book = Book::new("bench");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut query, mut compute, mut publish, mut total) = (vec![], vec![], vec![], vec![]);
        let mut first = None;
        let mut bytes = Vec::new();
        for i in 0..=ticks {
            if i > 0 {
                oddsfeed::sim::simulate::round(&pool, &mut rng, changes).await?;
            }
            let t0 = Instant::now();
            let inputs = source.active_events().await?;
            let t1 = Instant::now();
            let views: Vec<(String, EventView)> =
                inputs.iter().map(|e| (e.id.clone(), e.to_view(&params).0)).collect();
            let delta = book.diff(&views);
            let t2 = Instant::now();
            let Some(delta) = delta else { continue };
            let outgoing = oddsfeed::bus::Outgoing::Odds {
                delta: &delta,
                tick_at: 0,
            };
            match bus
                .publish(&book, outgoing, &oddsfeed::bus::Expect::Book, &[])
                .await?
            {
                PublishOutcome::Published { bytes: b, .. } => bytes.push(b),
                PublishOutcome::Conflict { found } => anyhow::bail!("unexpected conflict {found:?}"),
            }
            book.apply(delta);
            let t3 = Instant::now();
            if i == 0 {
                first = Some((views.len(), t3 - t0, t1 - t0, t2 - t1, t3 - t2));
                bytes.clear();
                continue;
            }
            query.push(t1 - t0);
            compute.push(t2 - t1);
            publish.push(t3 - t2);
            total.push(t3 - t0);
        }
        let mut conn = oddsfeed::bus::connection(redis_url)?;
        let _: () = redis::cmd("DEL")
            .arg(format!("{channel}:state:events"))
            .arg(format!("{channel}:state:meta"))
            .query_async(&mut conn)
            .await?;
        println!(
            "seeded {} events ({} outcomes, {} bets); {} active; {} ticks with {} simulator changes before each",
            seeded.events, seeded.outcomes, seeded.bets, book.len(), total.len(), changes
        );
        if let Some((n, all, q, c, p)) = first {
            println!(
                "first tick (all {n} events upserted): total {:.3} ms (query {:.3}, compute {:.3}, publish {:.3})",
                all.as_secs_f64() * 1e3,
                q.as_secs_f64() * 1e3,
                c.as_secs_f64() * 1e3,
                p.as_secs_f64() * 1e3
            );
        }
        bytes.sort_unstable();
        println!("query    {}", summary(&mut query));
        println!("compute  {}", summary(&mut compute));
        println!("publish  {}", summary(&mut publish));
        println!("total    {}", summary(&mut total));
        println!(
            "message size: median {} bytes, max {} bytes",
            bytes.get(bytes.len() / 2).copied().unwrap_or(0),
            bytes.last().copied().unwrap_or(0)
        );
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    admin_pool
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await?;
    result
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Unix time in fractional milliseconds.
fn now_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// One client: connect from `source`, subscribe, wait for the snapshot, then record the
/// latency of every odds message until `stop`.
async fn ws_client(
    url: url_parts::Target,
    source: std::net::Ipv4Addr,
    room: String,
    ready: tokio::sync::mpsc::Sender<Result<Duration, String>>,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<f64>, u64) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let started = Instant::now();
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket.bind((source, 0).into()).map_err(|e| e.to_string())?;
        let stream = socket.connect(url.addr).await.map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(
            url.url.as_str(),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .map_err(|e| e.to_string())?;
        let subscribe = serde_json::json!({"type": "subscribe", "room": room}).to_string();
        ws.send(Message::text(subscribe))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg.map_err(|e| e.to_string())?
                && t.as_str().starts_with(r#"{"type":"snapshot""#)
            {
                return Ok(ws);
            }
        }
        Err("closed before the snapshot".to_string())
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Ok(Ok(ws)) => {
            let _ = ready.send(Ok(started.elapsed())).await;
            ws
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(e)).await;
            return (Vec::new(), 0);
        }
        Err(_) => {
            let _ = ready.send(Err("timed out connecting".into())).await;
            return (Vec::new(), 0);
        }
    };
    let mut latencies = Vec::new();
    let mut errors = 0;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let received = now_ms_f64();
                // The server writes publishedAt before the event arrays, so a scan of the head
                // finds it without parsing the whole message (which would load this client
                // machine more than the server).
                if t.as_str().starts_with(r#"{"type":"odds""#)
                    && let Some(published) = published_at(t.as_str())
                {
                    latencies.push(received - published);
                }
            }
            Some(Ok(_)) => {}
            _ => {
                errors += 1;
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    (latencies, errors)
}

/// `publishedAt` of an odds frame, read from its head.
fn published_at(frame: &str) -> Option<f64> {
    let head = &frame[..frame.len().min(300)];
    let start = head.find(r#""publishedAt":"#)? + r#""publishedAt":"#.len();
    let digits: String = head[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

mod url_parts {
    /// Where a ws:// URL connects.
    #[derive(Clone)]
    pub struct Target {
        pub url: String,
        pub addr: std::net::SocketAddr,
    }

    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported by the benchmark"))?;
        let host = rest.split('/').next().unwrap_or(rest);
        let host = if host.starts_with("localhost") {
            host.replacen("localhost", "127.0.0.1", 1)
        } else {
            host.to_string()
        };
        Ok(Target {
            url: url.to_string(),
            addr: host.parse()?,
        })
    }
}

async fn ws(
    url: &str,
    clients: usize,
    rooms: &[String],
    seconds: u64,
    source_addresses: u8,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !rooms.is_empty() && source_addresses > 0,
        "need rooms and source addresses"
    );
    let target = url_parts::parse(url)?;
    let rss_before = server_pid.and_then(rss_kib);
    let stop = tokio_util::sync::CancellationToken::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(clients.max(1));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let source =
            std::net::Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(source_addresses)) as u8);
        let room = rooms[i % rooms.len()].clone();
        tasks.push(tokio::spawn(ws_client(
            target.clone(),
            source,
            room,
            ready_tx.clone(),
            stop.clone(),
        )));
        // Pace the connects a little so the accept queue never overflows.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(ready_tx);
    let mut connect_times = Vec::new();
    let mut connect_errors = Vec::new();
    // Each client reports once (and keeps its sender until it ends).
    for _ in 0..clients {
        let Some(r) = ready_rx.recv().await else {
            break;
        };
        match r {
            Ok(d) => connect_times.push(d),
            Err(e) => connect_errors.push(e),
        }
    }
    let all_connected = started.elapsed();
    let rss_connected = server_pid.and_then(rss_kib);
    println!(
        "{} of {clients} clients subscribed in {:.2} s ({:.0} connects/s); {} failed{}",
        connect_times.len(),
        all_connected.as_secs_f64(),
        connect_times.len() as f64 / all_connected.as_secs_f64(),
        connect_errors.len(),
        connect_errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "connect + subscribe + snapshot: {}",
        summary(&mut connect_times)
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.cancel();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{} odds messages received in {seconds} s ({:.0}/s over all clients); {errors} clients lost their connection",
        latencies.len(),
        latencies.len() as f64 / seconds as f64
    );
    println!(
        "publish -> client latency: p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms  (publishedAt has 1 ms resolution)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        println!(
            "server RSS {before} KiB before, {after} KiB with the clients: {:.1} KiB per connection",
            (after.saturating_sub(before)) as f64 / connect_times.len().max(1) as f64
        );
    }
    Ok(())
}
