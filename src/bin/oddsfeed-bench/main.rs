//! `oddsfeed-bench`: numbers, not timed tests.
//!
//! - `tick --events N` ([`tick`]): creates a scratch database, seeds N active events, and runs
//!   ticks exactly as the scheduler does, in both read modes (full: every active event;
//!   incremental: the changed-events query consuming the change log), each in its REPEATABLE
//!   READ transaction (query → price → diff → fenced publish to Redis → commit), with a
//!   simulator round between ticks so every tick has something to publish; each stage's
//!   p50/p90/p99/max per mode.
//! - `commit --url ws://… --database-url …` ([`commit`]): commit → WebSocket client latency
//!   against a running server: commits a price change and waits for the `odds` frame that
//!   carries it; optionally under a background load of N changes/s, reported per window with
//!   the change-log size and the server's tick metrics.
//! - `ws --clients N` ([`ws`]): opens N WebSocket clients against a running server from worker
//!   processes ([`ws_worker`], at most `--per-process` sockets each) spread over source addresses
//!   127.0.0.x, subscribes them across rooms, and over a measurement window reports frames/s,
//!   bytes per client per second, publish → client latency with microsecond resolution (from
//!   `publishedAtUs`), seq gaps, and the server's CPU per delivered frame and memory per
//!   connection. Results and commands go to BENCHMARKS.md.

mod commit;
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
    /// Cost of one publisher tick at a given number of active events, full and incremental.
    Tick(tick::TickArgs),
    /// Commit-to-client latency against a running server (optionally under a background load).
    Commit(commit::CommitArgs),
    /// Publish-to-client latency with many WebSocket clients against a running server.
    Ws(ws::WsArgs),
    /// One worker process of `ws` (started by it; reads `start`/`stop` on stdin).
    #[command(hide = true)]
    WsWorker(ws_worker::WorkerArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Tick(args) => tick::tick(args).await,
        Bench::Commit(args) => commit::run(args).await,
        Bench::Ws(args) => ws::run(args).await,
        Bench::WsWorker(args) => ws_worker::run(args).await,
    }
}

/// The quantile `q` of sorted durations, in milliseconds (0 when there are none).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// p50, p90, p99 and max of durations, in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| quantile_ms(samples, q);
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
