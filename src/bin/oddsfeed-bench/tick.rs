//! `oddsfeed-bench tick`: the cost of one publisher tick at a given number of active events.

use std::time::Instant;

use anyhow::Context;
use oddsfeed::bus::{OddsBus, PublishOutcome};
use oddsfeed::odds::{Book, EventView, OddsParams};
use oddsfeed::publisher::Source;
use rand::SeedableRng;
use sqlx::{Executor, postgres::PgPoolOptions};

use crate::summary;

pub async fn tick(
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
        let source = Source::new(pool.clone(), None, None, None)?;
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
