//! `oddsfeed-bench`: numbers, not timed tests.
//!
//! - `tick --events N` ([`tick`]): creates a scratch database, seeds N active events, and runs
//!   ticks exactly as the scheduler does (query → price → diff → fenced publish to Redis), with a
//!   simulator round between ticks so every tick has something to publish; each stage's
//!   p50/p90/p99/max.
//! - `ws --clients N` ([`ws`]): opens N WebSocket clients against a running server from worker
//!   processes ([`ws_worker`], at most `--per-process` sockets each) spread over source addresses
//!   127.0.0.x, subscribes them across rooms, and over a measurement window reports frames/s,
//!   bytes per client per second, publish → client latency with microsecond resolution (from
//!   `publishedAtUs`), seq gaps, and the server's CPU per delivered frame and memory per
//!   connection. Results and commands go to BENCHMARKS.md.

mod histogram;
mod tick;
mod ws;
mod ws_worker;

use std::time::Duration;

use clap::{Parser, Subcommand};

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
    Ws(ws::WsArgs),
    /// One worker process of `ws` (started by it; reads `start`/`stop` on stdin).
    #[command(hide = true)]
    WsWorker(ws_worker::WorkerArgs),
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
        } => tick::tick(events, ticks, changes, &pg_admin_url, &redis_url).await,
        Bench::Ws(args) => ws::run(args).await,
        Bench::WsWorker(args) => ws_worker::run(args).await,
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

/// Resident memory of a process in KiB (Linux).
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

/// User plus system CPU time of a process (Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports clock ticks of 1/100 s (USER_HZ).
    Some(Duration::from_millis(ticks * 10))
}
