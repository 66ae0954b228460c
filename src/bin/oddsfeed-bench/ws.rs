//! `oddsfeed-bench ws`: the parent. Starts worker processes (one process holds at most about
//! 19,000 sockets on a machine that allows 20,000 open files), waits until every client has its
//! snapshot, then measures a window: the workers record, and the server's CPU time and memory
//! are read before and after.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::histogram::Histogram;
use crate::{cpu_time, rss_kib};

#[derive(Debug, Clone, clap::Args)]
pub struct WsArgs {
    /// WebSocket URL of the server (ws://host:port/path); several, comma-separated, spread
    /// the clients over several broadcaster processes (same path).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:3001/ws")]
    url: Vec<String>,
    /// Clients to open.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Rooms each client joins (client i joins rooms i, i+1, … of the list).
    #[arg(long, default_value_t = 1)]
    rooms_per_client: usize,
    /// Offer permessage-deflate; bytes per client are then counted as they go on the wire.
    #[arg(long)]
    deflate: bool,
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
    /// Source addresses 127.0.0.1 ..= 127.0.0.N to spread connections over (a server's
    /// per-address cap applies to each).
    #[arg(long, default_value_t = 64)]
    source_addresses: u8,
    /// Most clients per worker process.
    #[arg(long, default_value_t = 15_000)]
    per_process: usize,
    /// The server's pid, for its CPU time and memory (several, comma-separated, for several
    /// broadcaster processes: they are summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

/// One worker process and its stdio.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    /// The next JSON line the worker prints.
    async fn next(&mut self) -> anyhow::Result<Value> {
        let line = self
            .lines
            .next_line()
            .await?
            .context("a worker ended early")?;
        serde_json::from_str(&line).with_context(|| format!("a worker said {line:?}"))
    }
}

fn sum_over<F: Fn(u32) -> Option<u64>>(pids: &[u32], f: F) -> Option<u64> {
    pids.iter().map(|p| f(*p)).sum()
}

/// The address and path of a `ws://` URL.
pub(crate) fn parse_url(url: &str) -> anyhow::Result<(std::net::SocketAddr, String)> {
    let rest = url
        .strip_prefix("ws://")
        .context("only ws:// URLs are supported by the benchmark")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = host
        .replacen("localhost", "127.0.0.1", 1)
        .parse()
        .context("the URL's host must be an address:port")?;
    Ok((addr, format!("/{path}")))
}

pub async fn run(args: WsArgs) -> anyhow::Result<()> {
    let mut addrs = Vec::new();
    let mut path = String::new();
    for url in &args.url {
        let (addr, p) = parse_url(url)?;
        anyhow::ensure!(
            path.is_empty() || path == p,
            "every URL must have the same path"
        );
        addrs.push(addr.to_string());
        path = p;
    }
    let processes = args.clients.div_ceil(args.per_process.max(1)).max(1);
    let exe = std::env::current_exe()?;
    let rss_before = sum_over(&args.server_pid, rss_kib);
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut first = 0;
    for p in 0..processes {
        let clients = args.clients / processes + usize::from(p < args.clients % processes);
        let mut child = Command::new(&exe)
            .args([
                "ws-worker",
                "--addr",
                &addrs.join(","),
                "--path",
                &path,
                "--clients",
                &clients.to_string(),
                "--first",
                &first.to_string(),
                "--rooms",
                &args.rooms.join(","),
                "--rooms-per-client",
                &args.rooms_per_client.to_string(),
                "--source-addresses",
                &args.source_addresses.to_string(),
            ])
            .args(args.deflate.then_some("--deflate"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start a worker process")?;
        first += clients;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }

    let mut connect_ms: Vec<f64> = Vec::new();
    let (mut connected, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    for w in &mut workers {
        let ready = w.next().await?;
        connected += ready["connected"].as_u64().unwrap_or(0);
        failed += ready["failed"].as_u64().unwrap_or(0);
        if first_error.is_none() && !ready["firstError"].is_null() {
            first_error = Some(ready["firstError"].to_string());
        }
        connect_ms.extend(
            ready["connectMs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64),
        );
    }
    let all_connected = started.elapsed();
    connect_ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{connected} of {} clients subscribed in {:.2} s from {processes} process(es); {failed} failed{}",
        args.clients,
        all_connected.as_secs_f64(),
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "connect + subscribe + snapshot: p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        pct(&connect_ms, 0.5),
        pct(&connect_ms, 0.99),
        pct(&connect_ms, 1.0)
    );

    // The window.
    let pids = &args.server_pid;
    let rss_window = sum_over(pids, rss_kib);
    let cpu_before = sum_over(pids, |p| cpu_time(p).map(|d| d.as_millis() as u64));
    for w in &mut workers {
        w.stdin.write_all(b"start\n").await?;
    }
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    for w in &mut workers {
        w.stdin.write_all(b"stop\n").await?;
    }
    let elapsed = window.elapsed().as_secs_f64();
    let cpu_after = sum_over(pids, |p| cpu_time(p).map(|d| d.as_millis() as u64));

    let latency = Histogram::new();
    let (mut frames, mut bytes, mut gaps, mut lost, mut bench_cpu_ms) = (0, 0, 0, 0, 0);
    for w in &mut workers {
        let result = w.next().await?;
        frames += result["frames"].as_u64().unwrap_or(0);
        bytes += result["bytes"].as_u64().unwrap_or(0);
        gaps += result["gaps"].as_u64().unwrap_or(0);
        lost += result["lost"].as_u64().unwrap_or(0);
        bench_cpu_ms += result["cpuMs"].as_u64().unwrap_or(0);
        let buckets: Vec<(usize, u64)> =
            serde_json::from_value(result["latency"].clone()).unwrap_or_default();
        latency.add(&buckets);
        let _ = w.child.wait().await;
    }
    println!(
        "window {elapsed:.1} s: {frames} odds frames ({:.0}/s), {:.0} bytes per client per second, {gaps} seq gaps, {lost} clients lost",
        frames as f64 / elapsed,
        bytes as f64 / elapsed / connected.max(1) as f64
    );
    println!(
        "publish -> client: p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
        latency.quantile_ms(0.5),
        latency.quantile_ms(0.9),
        latency.quantile_ms(0.99),
        latency.quantile_ms(0.999),
        latency.quantile_ms(1.0)
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu_ms = after.saturating_sub(before);
        println!(
            "server CPU {:.2} s in the window ({:.2} cores): {:.2} us per delivered frame",
            cpu_ms as f64 / 1e3,
            cpu_ms as f64 / 1e3 / elapsed,
            cpu_ms as f64 * 1e3 / frames.max(1) as f64
        );
    }
    if let (Some(before), Some(with)) = (rss_before, rss_window) {
        println!(
            "server RSS {before} KiB before, {with} KiB with the clients: {:.1} KiB per connection",
            with.saturating_sub(before) as f64 / connected.max(1) as f64
        );
    }
    println!(
        "bench CPU {:.2} s in the window: {:.2} us per received frame",
        bench_cpu_ms as f64 / 1e3,
        bench_cpu_ms as f64 * 1e3 / frames.max(1) as f64
    );
    Ok(())
}
