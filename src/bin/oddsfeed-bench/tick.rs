//! `oddsfeed-bench tick`: the cost of one publisher tick at a given number of active events, in
//! both of the scheduler's read modes, on the same seeded database.
//!
//! - **full**: what a tick does with `FULL_RESYNC_INTERVAL_MS=0` (and on a fresh book): clear
//!   the change log, then in one REPEATABLE READ transaction read every active event, price
//!   them all, diff against the book, publish the delta through the fenced write, commit.
//! - **incremental**: what a normal tick does: in one REPEATABLE READ transaction run the
//!   changed-events query (which consumes the `event_changes` log), price what it returned,
//!   `Book::diff_changed`, publish, commit.
//!
//! Both use the publisher's own building blocks (`Source`, `Book`, `OddsBus`) in the order of
//! `publisher::scheduler`; "total" runs from `BEGIN` (or the log clearing) to the end of
//! `COMMIT`, so the transaction, the query, pricing, the diff, the Redis write and the commit
//! are all in it. A simulator round (`sim::simulate::round`) makes the changes before each tick
//! and is not timed.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use oddsfeed::bus::{Expect, OddsBus, Outgoing, PublishOutcome};
use oddsfeed::odds::{Book, EventView, OddsParams};
use oddsfeed::publisher::Source;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

use crate::{quantile_ms, summary};

/// Which read modes to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Full,
    Incremental,
    Both,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TickArgs {
    /// Active events to seed.
    #[arg(long, default_value_t = 300)]
    events: usize,
    /// Ticks to measure per mode and per number of changes.
    #[arg(long, default_value_t = 200)]
    ticks: usize,
    /// Simulator changes between two ticks (events repriced and bets); several, comma-separated
    /// (e.g. 10,100), are measured one after the other on the same seeded database.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    changes: Vec<usize>,
    /// Read modes to measure.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Also print EXPLAIN (ANALYZE, BUFFERS) of the changed-events query after a simulator
    /// round of the largest --changes (in a transaction that is rolled back).
    #[arg(long)]
    explain: bool,
    /// `VACUUM (ANALYZE) event_changes` after the change log is drained, as autovacuum would
    /// after that large delete. Without it (and with autovacuum off) the dead index entries
    /// the drain leaves stay, and the changed-events query steps over them on every tick.
    #[arg(long)]
    vacuum: bool,
    /// Superuser URL without a database; a scratch database is created and dropped.
    #[arg(
        long,
        env = "PG_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pg_admin_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// The timings of one tick.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Log clearing (full), BEGIN, `SELECT now()` and the read.
    query: Duration,
    /// Pricing and the diff.
    compute: Duration,
    /// The fenced Redis write and `Book::apply` (zero when nothing changed).
    publish: Duration,
    /// `COMMIT` of the tick's transaction.
    commit: Duration,
    total: Duration,
    /// Events the read returned (active ones; for an incremental read, plus the gone ones).
    read: usize,
    /// Events the delta upserted or removed.
    changed: usize,
    /// Bytes of the message, 0 when nothing was published.
    bytes: usize,
}

/// What the ticks share: the publisher's building blocks and the incremental watermark.
struct Ticker {
    pool: PgPool,
    source: Source,
    bus: OddsBus,
    book: Book,
    params: OddsParams,
    /// The database clock when the last tick's transaction began (`$1` of the changed read).
    since: Option<DateTime<Utc>>,
}

impl Ticker {
    /// One tick, as `publisher::scheduler` runs it for `Read::Full` or `Read::Changed`.
    async fn tick(&mut self, incremental: bool) -> anyhow::Result<Sample> {
        let t0 = Instant::now();
        if !incremental {
            self.source.drain_changes().await?;
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let began: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let price = |inputs: &[oddsfeed::odds::EventInput]| -> Vec<(String, EventView)> {
            inputs
                .iter()
                .map(|e| (e.id.clone(), e.to_view(&self.params).0))
                .collect()
        };
        let (delta, read, t1) = if incremental {
            let since = self
                .since
                .context("an incremental tick needs a full one first")?;
            let changed = self.source.read_changed(&mut tx, since).await?;
            let t1 = Instant::now();
            let views = price(&changed.events);
            let delta = self.book.diff_changed(&views, &changed.gone);
            (delta, changed.events.len() + changed.gone.len(), t1)
        } else {
            let all = self.source.read_all(&mut tx).await?;
            let t1 = Instant::now();
            let views = price(&all);
            (self.book.diff(&views), all.len(), t1)
        };
        let t2 = Instant::now();
        let (mut changed, mut bytes) = (0, 0);
        if let Some(delta) = delta {
            let outgoing = Outgoing::Odds {
                delta: &delta,
                tick_at: oddsfeed::bus::now_ms(),
            };
            match self
                .bus
                .publish(&self.book, outgoing, &Expect::Book, &[])
                .await?
            {
                PublishOutcome::Published { bytes: b, .. } => bytes = b,
                PublishOutcome::Conflict { found } => {
                    anyhow::bail!("unexpected conflict {found:?}")
                }
            }
            changed = delta.upserts() + delta.removals();
            self.book.apply(delta);
        }
        let t3 = Instant::now();
        tx.commit().await?;
        let t4 = Instant::now();
        self.since = Some(began);
        Ok(Sample {
            query: t1 - t0,
            compute: t2 - t1,
            publish: t3 - t2,
            commit: t4 - t3,
            total: t4 - t0,
            read,
            changed,
            bytes,
        })
    }

    /// Whether the book (kept by the ticks so far) is what a full read would publish: the
    /// number of events a full diff would upsert or remove. Not timed; consumes nothing.
    async fn differences(&self) -> anyhow::Result<usize> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let all = self.source.read_all(&mut tx).await?;
        tx.rollback().await?;
        let views: Vec<(String, EventView)> = all
            .iter()
            .map(|e| (e.id.clone(), e.to_view(&self.params).0))
            .collect();
        Ok(self
            .book
            .diff(&views)
            .map_or(0, |d| d.upserts() + d.removals()))
    }
}

/// One measured run: a mode and a number of changes per round.
struct Run {
    mode: &'static str,
    changes: usize,
    samples: Vec<Sample>,
}

pub async fn tick(args: TickArgs) -> anyhow::Result<()> {
    let admin = args.pg_admin_url.as_str();
    let name = format!("oddsfeed_bench_{}", std::process::id());
    let admin_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{admin}/postgres"))
        .await
        .context("connect as PG_ADMIN_URL")?;
    admin_pool
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    let channel = format!("bench-{}", std::process::id());
    let result = async {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&format!("{admin}/{name}"))
            .await?;
        let result = measure(&args, &pool, &channel).await;
        pool.close().await;
        result
    }
    .await;
    let mut conn = oddsfeed::bus::connection(&args.redis_url)?;
    let _: () = redis::cmd("DEL")
        .arg(format!("{channel}:state:events"))
        .arg(format!("{channel}:state:meta"))
        .arg(format!("{channel}:state:removed"))
        .query_async(&mut conn)
        .await?;
    admin_pool
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await?;
    result
}

async fn measure(args: &TickArgs, pool: &PgPool, channel: &str) -> anyhow::Result<()> {
    oddsfeed::db::migrate(pool).await?;
    let started = Instant::now();
    let seeded = oddsfeed::sim::seed::seed(pool, args.events, 42, false).await?;
    let seeding = started.elapsed();
    sqlx::query("ANALYZE").execute(pool).await?;
    let source = Source::new(pool.clone(), None, None, None)?;
    anyhow::ensure!(
        source.incremental(),
        "the built-in queries should read incrementally"
    );
    // Seeding filled the change log; the first (full) tick covers all of it.
    let started = Instant::now();
    let drained = source.drain_changes().await?;
    let draining = started.elapsed();
    println!(
        "seeded {} events ({} outcomes, {} bets) in {:.1} s; drained {drained} change-log rows in {:.2} s",
        seeded.events,
        seeded.outcomes,
        seeded.bets,
        seeding.as_secs_f64(),
        draining.as_secs_f64()
    );
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(pool)
        .await?;
    if args.vacuum {
        let started = Instant::now();
        sqlx::query("VACUUM (ANALYZE) event_changes")
            .execute(pool)
            .await?;
        println!(
            "vacuumed the change log in {:.2} s (autovacuum is {autovacuum})",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("the change log is not vacuumed (autovacuum is {autovacuum})");
    }
    let mut ticker = Ticker {
        pool: pool.clone(),
        source,
        bus: OddsBus::new(
            oddsfeed::bus::connection(&args.redis_url)?,
            channel.to_string(),
        ),
        book: Book::new("bench"),
        params: OddsParams::default(),
        since: None,
    };
    let first = ticker.tick(false).await?;
    println!(
        "first tick (full, all {} events upserted, {} bytes): total {:.3} ms (query {:.3}, compute {:.3}, publish {:.3}, commit {:.3})",
        first.changed,
        first.bytes,
        ms(first.total),
        ms(first.query),
        ms(first.compute),
        ms(first.publish),
        ms(first.commit)
    );

    let mut rng = StdRng::seed_from_u64(7);
    let modes: &[(&'static str, bool)] = match args.mode {
        Mode::Full => &[("full", false)],
        Mode::Incremental => &[("incremental", true)],
        Mode::Both => &[("full", false), ("incremental", true)],
    };
    let mut runs = Vec::new();
    for &changes in &args.changes {
        for &(mode, incremental) in modes {
            let mut samples = Vec::with_capacity(args.ticks);
            for _ in 0..args.ticks {
                oddsfeed::sim::simulate::round(pool, &mut rng, changes).await?;
                samples.push(ticker.tick(incremental).await?);
            }
            let run = Run {
                mode,
                changes,
                samples,
            };
            report(&run, ticker.book.len());
            if incremental {
                let differences = ticker.differences().await?;
                println!(
                    "check: a full read now differs from the incrementally kept book in {differences} event(s)"
                );
                anyhow::ensure!(differences == 0, "the incremental ticks missed changes");
            }
            runs.push(run);
        }
    }

    println!();
    println!(
        "summary at {} active events (ms; total = BEGIN .. COMMIT):",
        ticker.book.len()
    );
    println!(
        "| mode | changes/round | events read (median) | query p50 | query p99 | total p50 | total p99 | total max |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        let pick = |f: fn(&Sample) -> Duration| -> Vec<Duration> {
            let mut v: Vec<Duration> = run.samples.iter().map(f).collect();
            v.sort();
            v
        };
        let (query, total) = (pick(|s| s.query), pick(|s| s.total));
        let mut read: Vec<usize> = run.samples.iter().map(|s| s.read).collect();
        read.sort_unstable();
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            run.mode,
            run.changes,
            read.get(read.len() / 2).copied().unwrap_or(0),
            quantile_ms(&query, 0.5),
            quantile_ms(&query, 0.99),
            quantile_ms(&total, 0.5),
            quantile_ms(&total, 0.99),
            quantile_ms(&total, 1.0)
        );
    }

    if args.explain {
        let changes = args.changes.iter().copied().max().unwrap_or(10);
        oddsfeed::sim::simulate::round(pool, &mut rng, changes).await?;
        let mut tx = pool.begin().await?;
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM event_changes")
            .fetch_one(&mut *tx)
            .await?;
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS) {}",
            oddsfeed::publisher::source::BUILTIN_CHANGED_EVENTS_SQL
        )))
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        println!();
        println!(
            "EXPLAIN (ANALYZE, BUFFERS) of sql/changed_events.sql with {logged} change-log rows (rolled back):"
        );
        for line in plan {
            println!("  {line}");
        }
    }
    Ok(())
}

fn report(run: &Run, active: usize) {
    let samples = &run.samples;
    let column = |f: fn(&Sample) -> Duration| -> Vec<Duration> { samples.iter().map(f).collect() };
    let median = |f: fn(&Sample) -> usize| {
        let mut v: Vec<usize> = samples.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let unchanged = samples.iter().filter(|s| s.bytes == 0).count();
    println!();
    println!(
        "{} ticks, {} active events, {} simulator changes before each: {} events read, {} upserted or removed, message {} bytes (medians); {unchanged} tick(s) published nothing",
        run.mode,
        active,
        run.changes,
        median(|s| s.read),
        median(|s| s.changed),
        median(|s| s.bytes)
    );
    println!("query    {}", summary(&mut column(|s| s.query)));
    println!("compute  {}", summary(&mut column(|s| s.compute)));
    println!("publish  {}", summary(&mut column(|s| s.publish)));
    println!("commit   {}", summary(&mut column(|s| s.commit)));
    println!("total    {}", summary(&mut column(|s| s.total)));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
