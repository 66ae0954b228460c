//! `oddsfeed-bench commit`: from a committed change in PostgreSQL to a WebSocket client that
//! sees it, against a running server.
//!
//! One client subscribes to `sport:all` (reusing the `ws` bench's connect and frame reader,
//! keeping whole payloads) and keeps every event's version and probabilities from the snapshot
//! and the `odds` frames. Each sample picks an active, priced event, commits
//! `UPDATE outcomes SET external_price = … WHERE event_id = $1 AND position = 0` with a price
//! far from the current one (so the published probabilities move), takes the time when
//! `COMMIT` has returned, and waits for the first `odds` frame upserting that event at a higher
//! version than the client held at the commit; the latency is from the commit to the moment
//! that frame was read off the socket. Samples are spaced by a random pause so they do not
//! line up with the publisher's ticks.
//!
//! With `--load N` a background generator commits N changes per second (half price moves, half
//! bets, each its own transaction) on the other active events, never on the ones the probe
//! uses, so the version rule above stays exact; with `--seconds` the run is reported per window:
//! latency, the change-log size (`event_changes`), the generator's achieved rate, and, with
//! `--metrics-url`, the server's tick overruns, reads and tick durations.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{quantile_ms, summary, ws, ws_worker};

#[derive(Debug, Clone, clap::Args)]
pub struct CommitArgs {
    /// WebSocket URL of the server (ws://host:port/path).
    #[arg(long, default_value = "ws://127.0.0.1:3001/ws")]
    url: String,
    /// The database the server publishes from.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Samples to take (ignored with --seconds).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Take samples for this many seconds instead of a fixed number.
    #[arg(long)]
    seconds: Option<u64>,
    /// Shortest pause between two samples (ms); each pause is uniform in [min, max].
    #[arg(long, default_value_t = 100)]
    pause_min_ms: u64,
    /// Longest pause between two samples (ms).
    #[arg(long, default_value_t = 200)]
    pause_max_ms: u64,
    /// Longest wait for a change to reach the client (ms); a sample that takes longer is
    /// counted as lost.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Background load: changes committed per second (half price moves, half bets).
    #[arg(long, default_value_t = 0)]
    load: u32,
    /// Connections the background load commits from.
    #[arg(long, default_value_t = 4)]
    load_connections: u32,
    /// With --load: commit the load's transactions with `synchronous_commit = off` (its own
    /// sessions only; the server and the probe stay synchronous), for a disk that cannot
    /// flush the WAL that many times a second.
    #[arg(long)]
    load_async_commit: bool,
    /// With --load: events reserved for the probe (the load never touches them).
    #[arg(long, default_value_t = 200)]
    probe_events: usize,
    /// With --seconds: length of a reporting window (s).
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// The server's /metrics URL (http://host:port/metrics): tick overruns, reads and the
    /// tick-duration histogram over the run (and per window with --seconds).
    #[arg(long)]
    metrics_url: Option<String>,
}

/// An event as the client holds it.
#[derive(Debug, Clone)]
struct Held {
    id: String,
    version: u64,
    probabilities: Vec<Option<f64>>,
    suspended: bool,
}

impl Held {
    fn from_json(event: &Value) -> Option<Self> {
        Some(Self {
            id: event["id"].as_str()?.to_string(),
            version: event["version"].as_u64()?,
            probabilities: event["outcomes"]
                .as_array()?
                .iter()
                .map(|o| o["probability"].as_f64())
                .collect(),
            suspended: event["suspended"].as_bool().unwrap_or(true),
        })
    }
}

/// What the client saw, with the time its frame was read off the socket.
enum Seen {
    Snapshot(Vec<Held>),
    Odds {
        at: Instant,
        upserts: Vec<Held>,
        removals: Vec<String>,
    },
}

/// Reads frames until the server closes, answering pings; sends what it sees to `seen`.
async fn read_frames(
    mut tcp: tokio::net::TcpStream,
    mut reader: ws_worker::FrameReader,
    seen: mpsc::UnboundedSender<Seen>,
    stop: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            frame = reader.next(&mut tcp) => frame,
        };
        let Some(frame) = frame else {
            eprintln!("the server closed the WebSocket connection");
            return;
        };
        let at = Instant::now();
        match frame.opcode {
            0x1 => {
                let Ok(message) = serde_json::from_slice::<Value>(&frame.head) else {
                    continue;
                };
                let events = |key: &str| -> Vec<Held> {
                    message[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Held::from_json)
                        .collect()
                };
                let item = match message["type"].as_str() {
                    Some("snapshot") => Seen::Snapshot(events("events")),
                    Some("odds") => Seen::Odds {
                        at,
                        upserts: events("upserts"),
                        removals: message["removals"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r.as_str().map(str::to_string))
                            .collect(),
                    },
                    _ => continue,
                };
                if seen.send(item).is_err() {
                    return;
                }
            }
            0x9 => {
                let pong = ws_worker::client_frame(0xA, &frame.head);
                if tcp.write_all(&pong).await.is_err() {
                    return;
                }
            }
            0x8 => return,
            _ => {}
        }
    }
}

/// Every event the client holds, by id.
#[derive(Default)]
struct Board {
    events: HashMap<String, Held>,
}

impl Board {
    /// Applies one item; returns the time of its frame and the upserts it carried.
    fn apply(&mut self, item: Seen) -> Option<(Instant, Vec<Held>)> {
        match item {
            Seen::Snapshot(events) => {
                self.events = events.into_iter().map(|e| (e.id.clone(), e)).collect();
                None
            }
            Seen::Odds {
                at,
                upserts,
                removals,
            } => {
                for id in removals {
                    self.events.remove(&id);
                }
                for event in &upserts {
                    self.events.insert(event.id.clone(), event.clone());
                }
                Some((at, upserts))
            }
        }
    }
}

/// One sample: seconds since the start, and the latency.
struct Sample {
    at: f64,
    latency: Duration,
}

pub async fn run(args: CommitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.pause_min_ms <= args.pause_max_ms,
        "--pause-min-ms must not exceed --pause-max-ms"
    );
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await
        .context("connect to --database-url")?;
    let (addr, path) = ws::parse_url(&args.url)?;
    let (tcp, mut reader) = ws_worker::connect(
        addr,
        &path,
        false,
        Ipv4Addr::LOCALHOST,
        &["sport:all".to_string()],
    )
    .await
    .map_err(|e| anyhow::anyhow!("connect to {}: {e}", args.url))?;
    reader.keep_whole();
    let stop = CancellationToken::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let reading = tokio::spawn(read_frames(tcp, reader, seen_tx, stop.clone()));

    let mut board = Board::default();
    let snapshot = tokio::time::timeout(Duration::from_secs(60), seen.recv())
        .await
        .context("no snapshot within 60 s")?
        .context("the connection ended before the snapshot")?;
    let Seen::Snapshot(events) = snapshot else {
        anyhow::bail!("an odds frame came before the snapshot");
    };
    // Priced events with at least two outcomes, in publishing order.
    let priced: Vec<String> = events
        .iter()
        .filter(|e| !e.suspended && e.probabilities.len() >= 2)
        .map(|e| e.id.clone())
        .collect();
    board.apply(Seen::Snapshot(events));
    anyhow::ensure!(
        !priced.is_empty(),
        "the snapshot has no priced event to change"
    );
    let probe: Vec<String> = if args.load > 0 {
        priced.iter().take(args.probe_events).cloned().collect()
    } else {
        priced.clone()
    };
    println!(
        "snapshot of sport:all: {} events ({} priced); the probe changes {} of them",
        board.events.len(),
        priced.len(),
        probe.len()
    );

    let load_done = Arc::new(AtomicU64::new(0));
    let mut load_tasks = Vec::new();
    if args.load > 0 {
        let targets = load_targets(&pool, &probe).await?;
        anyhow::ensure!(!targets.is_empty(), "no events left for the load");
        println!(
            "background load: {} changes/s from {} connections on {} outcomes of the other events{}",
            args.load,
            args.load_connections,
            targets.len(),
            if args.load_async_commit {
                " (synchronous_commit off in its sessions)"
            } else {
                ""
            }
        );
        let mut options: PgConnectOptions = args.database_url.parse()?;
        if args.load_async_commit {
            options = options.options([("synchronous_commit", "off")]);
        }
        let load_pool = PgPoolOptions::new()
            .max_connections(args.load_connections.max(1))
            .connect_with(options)
            .await?;
        let targets = Arc::new(targets);
        let workers = args.load_connections.max(1);
        let period = Duration::from_secs_f64(f64::from(workers) / f64::from(args.load));
        for w in 0..workers {
            load_tasks.push(tokio::spawn(load(
                load_pool.clone(),
                targets.clone(),
                period,
                period.mul_f64(f64::from(w) / f64::from(workers)),
                u64::from(w),
                load_done.clone(),
                stop.clone(),
            )));
        }
    }

    let started = Instant::now();
    let monitor = args.seconds.map(|_| {
        tokio::spawn(monitor(
            pool.clone(),
            args.metrics_url.clone(),
            Duration::from_secs(args.window.max(1)),
            load_done.clone(),
            stop.clone(),
        ))
    });
    let metrics_before = match &args.metrics_url {
        Some(url) => Some(scrape(url).await?),
        None => None,
    };

    let mut rng = StdRng::from_os_rng();
    let mut samples: Vec<Sample> = Vec::new();
    let (mut lost, mut unchanged) = (0usize, 0usize);
    let timeout = Duration::from_millis(args.timeout_ms);
    for k in 0.. {
        let done = match args.seconds {
            Some(s) => started.elapsed() >= Duration::from_secs(s),
            None => k >= args.samples,
        };
        if done {
            break;
        }
        let pause = rng.random_range(args.pause_min_ms..=args.pause_max_ms);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        while let Ok(item) = seen.try_recv() {
            board.apply(item);
        }
        if reading.is_finished() {
            anyhow::bail!("the WebSocket client stopped");
        }
        let Some(id) = pick(&mut rng, &probe, &board) else {
            anyhow::bail!("none of the probe's events is active and priced any more");
        };
        let before = board.events[&id].clone();
        // A price at least 0.1 away from the current one, with a fourth decimal that neither
        // the seed nor the simulator writes (each commit really changes the row).
        let high = 0.6 + f64::from(rng.random_range(0u32..3000)) / 1e4 + 0.00005;
        let low = 0.1 + f64::from(rng.random_range(0u32..3000)) / 1e4 + 0.00005;
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE outcomes SET external_price = CASE WHEN external_price < 0.5 THEN $2 ELSE $3 END
              WHERE event_id = $1 AND position = 0",
        )
        .bind(&id)
        .bind(high)
        .bind(low)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let committed = Instant::now();
        let arrived = loop {
            let item =
                match tokio::time::timeout_at((committed + timeout).into(), seen.recv()).await {
                    Ok(Some(item)) => item,
                    Ok(None) => anyhow::bail!("the WebSocket client stopped"),
                    Err(_) => break None,
                };
            let Some((at, upserts)) = board.apply(item) else {
                // A snapshot (the server reloaded): the change may be in it already.
                if board
                    .events
                    .get(&id)
                    .is_some_and(|e| e.version > before.version)
                {
                    break Some((Instant::now(), board.events[&id].clone()));
                }
                continue;
            };
            if let Some(event) = upserts
                .into_iter()
                .find(|e| e.id == id && e.version > before.version)
            {
                break Some((at, event));
            }
        };
        match arrived {
            Some((at, event)) => {
                if event.probabilities == before.probabilities {
                    unchanged += 1;
                }
                samples.push(Sample {
                    at: committed.duration_since(started).as_secs_f64(),
                    latency: at.saturating_duration_since(committed),
                });
            }
            None => {
                lost += 1;
                eprintln!(
                    "sample {k}: {id} did not arrive within {} ms",
                    args.timeout_ms
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let metrics_after = match &args.metrics_url {
        Some(url) => Some(scrape(url).await?),
        None => None,
    };
    stop.cancel();
    for task in load_tasks {
        let _ = task.await;
    }
    let windows = match monitor {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let _ = reading.await;

    println!(
        "{} samples in {:.1} s ({lost} lost, {unchanged} arrived with unchanged probabilities){}",
        samples.len(),
        elapsed.as_secs_f64(),
        if args.load > 0 {
            format!(
                "; background load committed {} changes ({:.0}/s)",
                load_done.load(Ordering::Relaxed),
                load_done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    let mut all: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    println!("commit -> client: {}", summary(&mut all));

    if !windows.is_empty() {
        println!();
        println!(
            "| window (s) | samples | latency p50 (ms) | p99 (ms) | max (ms) | load changes/s | event_changes rows at end | overruns | reads changed/full/resync | ticks | tick total mean (ms) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
        let mut previous: Option<&Window> = None;
        for w in &windows {
            let from = previous.map_or(0.0, |p| p.at);
            let mut lat: Vec<Duration> = samples
                .iter()
                .filter(|s| s.at >= from && s.at < w.at)
                .map(|s| s.latency)
                .collect();
            lat.sort();
            let span = w.at - from;
            let delta = |key: &str| -> f64 {
                let now = w.metrics.get(key).copied().unwrap_or(0.0);
                let then = previous
                    .and_then(|p| p.metrics.get(key).copied())
                    .unwrap_or_else(|| {
                        metrics_before
                            .as_ref()
                            .and_then(|m| m.get(key).copied())
                            .unwrap_or(0.0)
                    });
                now - then
            };
            let load_rate = (w.load_done - previous.map_or(0, |p| p.load_done)) as f64 / span;
            let ticks = delta(TOTAL_COUNT);
            println!(
                "| {:.0}–{:.0} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {}/{}/{} | {} | {:.2} |",
                from,
                w.at,
                lat.len(),
                quantile_ms(&lat, 0.5),
                quantile_ms(&lat, 0.99),
                quantile_ms(&lat, 1.0),
                load_rate,
                w.log_rows,
                delta(OVERRUNS),
                delta(&reads("changed")),
                delta(&reads("full")),
                delta(&reads("resync")),
                ticks,
                if ticks > 0.0 {
                    delta(TOTAL_SUM) / ticks * 1e3
                } else {
                    0.0
                },
            );
            previous = Some(w);
        }
    }

    if let (Some(before), Some(after)) = (&metrics_before, &metrics_after) {
        println!();
        report_metrics(before, after);
    }
    Ok(())
}

/// A random probe event that is active and priced now.
fn pick(rng: &mut StdRng, probe: &[String], board: &Board) -> Option<String> {
    for _ in 0..100 {
        let id = &probe[rng.random_range(0..probe.len())];
        if board
            .events
            .get(id)
            .is_some_and(|e| !e.suspended && e.probabilities.len() >= 2)
        {
            return Some(id.clone());
        }
    }
    None
}

/// Outcomes of the active events the probe does not use: (event id, outcome name).
async fn load_targets(pool: &PgPool, probe: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT o.event_id, o.name FROM outcomes o JOIN events e ON e.id = o.event_id
          WHERE e.status = 'ACTIVE' AND e.event_type IN ('live', 'upcoming')
            AND o.external_price IS NOT NULL AND NOT (o.event_id = ANY ($1))",
    )
    .bind(probe)
    .fetch_all(pool)
    .await?)
}

/// One connection's share of the background load: a change every `period` (the first after
/// `offset`), each in its own transaction; a price move (3 decimals, 0.05 to 0.95) or a bet of
/// 5 to 500.
async fn load(
    pool: PgPool,
    targets: Arc<Vec<(String, String)>>,
    period: Duration,
    offset: Duration,
    seed: u64,
    done: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let (event, outcome) = &targets[rng.random_range(0..targets.len())];
        let result = if rng.random_bool(0.5) {
            sqlx::query("UPDATE outcomes SET external_price = $3 WHERE event_id = $1 AND name = $2")
                .bind(event)
                .bind(outcome)
                .bind(f64::from(rng.random_range(50u32..=950)) / 1e3)
                .execute(&pool)
                .await
        } else {
            sqlx::query(
                "INSERT INTO bets (event_id, outcome, user_id, amount) VALUES ($1, $2, $3, round($4::numeric, 2))",
            )
            .bind(event)
            .bind(outcome)
            .bind(format!("load-{}", rng.random_range(1..500)))
            .bind(rng.random_range(5.0f64..500.0))
            .execute(&pool)
            .await
        };
        match result {
            Ok(_) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => eprintln!("background load: {e}"),
        }
    }
}

/// What the monitor saw at the end of a window.
#[derive(Default)]
struct Window {
    /// Seconds since the start.
    at: f64,
    /// Rows in `event_changes`.
    log_rows: i64,
    /// Changes the background load had committed.
    load_done: u64,
    metrics: BTreeMap<String, f64>,
}

/// Samples the change log (and the server's metrics) every `window` until `stop`.
async fn monitor(
    pool: PgPool,
    metrics_url: Option<String>,
    window: Duration,
    load_done: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Vec<Window> {
    let started = Instant::now();
    let mut windows = Vec::new();
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return windows,
            _ = every.tick() => {}
        }
        let log_rows = sqlx::query_scalar("SELECT count(*) FROM event_changes")
            .fetch_one(&pool)
            .await
            .unwrap_or(-1);
        let metrics = match &metrics_url {
            Some(url) => scrape(url).await.unwrap_or_default(),
            None => BTreeMap::new(),
        };
        windows.push(Window {
            at: started.elapsed().as_secs_f64(),
            log_rows,
            load_done: load_done.load(Ordering::Relaxed),
            metrics,
        });
    }
}

const OVERRUNS: &str = "oddsfeed_tick_overruns_total";
const TOTAL_COUNT: &str = "oddsfeed_tick_duration_seconds_count{stage=\"total\"}";
const TOTAL_SUM: &str = "oddsfeed_tick_duration_seconds_sum{stage=\"total\"}";

fn reads(kind: &str) -> String {
    format!("oddsfeed_publisher_reads_total{{kind=\"{kind}\"}}")
}

/// The samples of a Prometheus text page: `name{labels}` → value.
async fn scrape(url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let rest = url
        .strip_prefix("http://")
        .context("--metrics-url must be http://host:port/path")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut tcp = tokio::net::TcpStream::connect(host).await?;
    tcp.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut page = String::new();
    tcp.read_to_string(&mut page).await?;
    let (head, body) = page
        .split_once("\r\n\r\n")
        .context("no HTTP answer from --metrics-url")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{url}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// Tick overruns, reads and the tick-duration histograms over the run.
fn report_metrics(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    let delta = |key: &str| {
        after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
    };
    println!(
        "server over the run: {} tick overrun(s); reads changed {}, full {}, resync {}",
        delta(OVERRUNS),
        delta(&reads("changed")),
        delta(&reads("full")),
        delta(&reads("resync"))
    );
    println!("oddsfeed_tick_duration_seconds over the run (quantiles are bucket upper bounds):");
    for stage in ["query", "compute", "publish", "total"] {
        let label = format!("stage=\"{stage}\"");
        let count = delta(&format!("oddsfeed_tick_duration_seconds_count{{{label}}}"));
        let sum = delta(&format!("oddsfeed_tick_duration_seconds_sum{{{label}}}"));
        let mut buckets: Vec<(f64, f64)> = after
            .keys()
            .filter(|k| {
                k.starts_with("oddsfeed_tick_duration_seconds_bucket{") && k.contains(&label)
            })
            .filter_map(|k| {
                let le = k.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, delta(k)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let quantile = |q: f64| {
            buckets
                .iter()
                .find(|(_, n)| count > 0.0 && *n >= count * q)
                .map_or("-".to_string(), |(le, _)| format_le(*le))
        };
        println!(
            "  {stage:8} {count} ticks, mean {:.2} ms, p50 <= {}, p99 <= {}, max <= {}",
            if count > 0.0 { sum / count * 1e3 } else { 0.0 },
            quantile(0.5),
            quantile(0.99),
            quantile(1.0)
        );
        if stage == "total" {
            let line: Vec<String> = buckets
                .iter()
                .map(|(le, n)| format!("<={}: {n}", format_le(*le)))
                .collect();
            println!("  total cumulative buckets: {}", line.join(", "));
        }
    }
}

fn format_le(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else if le < 1.0 {
        format!("{} ms", le * 1e3)
    } else {
        format!("{le} s")
    }
}
