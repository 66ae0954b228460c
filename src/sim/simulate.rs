//! `oddsfeed simulate` (or `serve --simulate`): keeps the demo data moving.
//!
//! Each round: external prices drift, bets are placed and settled, live clocks advance (and
//! now and then a score changes), live events that reach full time finish, and an upcoming
//! event kicks off for each one that finished, so the data set stays the same size. A new
//! upcoming event replaces each one that started.

use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{DemoSport, SPORTS, period_label, random_prices};

/// How fast the simulator moves things.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Time between rounds.
    pub interval: Duration,
    /// Price moves and bets placed per round.
    pub changes: usize,
    /// Seed of the random choices.
    pub random_seed: u64,
}

/// Runs rounds until cancelled. A failed round is logged and the next one tries again.
pub async fn run(pool: PgPool, settings: Settings, cancel: CancellationToken) {
    let mut rng = StdRng::seed_from_u64(settings.random_seed ^ 0x5eed);
    let mut every = tokio::time::interval(settings.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(interval = ?settings.interval, changes = settings.changes, "simulator running");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        if let Err(error) = round(&pool, &mut rng, settings.changes).await {
            tracing::warn!(error = format!("{error:#}"), "simulator round failed");
        }
    }
    tracing::info!("simulator stopped");
}

fn demo_sport(sport: Option<&str>, is_esports: bool) -> &'static DemoSport {
    SPORTS
        .iter()
        .find(|s| s.sport == sport && s.is_esports == is_esports)
        .unwrap_or(&SPORTS[0])
}

/// One round of changes.
pub async fn round(pool: &PgPool, rng: &mut StdRng, changes: usize) -> anyhow::Result<()> {
    let changes = changes.max(1) as i64;
    // Prices drift by up to ±2 points.
    sqlx::query(
        "UPDATE outcomes o
            SET external_price = round(LEAST(0.99, GREATEST(0.01, o.external_price + (random() - 0.5) * 0.04))::numeric, 3),
                updated_at = now()
          WHERE (o.event_id, o.name) IN (
                SELECT o2.event_id, o2.name FROM outcomes o2 JOIN events e ON e.id = o2.event_id
                 WHERE e.status = 'ACTIVE' AND e.event_type IN ('live', 'upcoming')
                   AND o2.external_price IS NOT NULL
                 ORDER BY random() LIMIT $1)",
    )
    .bind(changes)
    .execute(pool)
    .await
    .context("Failed to move prices")?;

    sqlx::query(
        "INSERT INTO bets (event_id, outcome, user_id, amount)
         SELECT o.event_id, o.name, 'user-' || (1 + floor(random() * 200))::int,
                round((5 + random() * 495)::numeric, 2)
           FROM outcomes o JOIN events e ON e.id = o.event_id
          WHERE e.status = 'ACTIVE' AND e.event_type IN ('live', 'upcoming')
          ORDER BY random() LIMIT $1",
    )
    .bind(changes)
    .execute(pool)
    .await
    .context("Failed to place bets")?;

    sqlx::query(
        "UPDATE bets SET status = CASE WHEN random() < 0.45 THEN 'WON' ELSE 'LOST' END, settled_at = now()
          WHERE id IN (SELECT id FROM bets WHERE status = 'PENDING' ORDER BY id LIMIT $1)",
    )
    .bind((changes / 2).max(1))
    .execute(pool)
    .await
    .context("Failed to settle bets")?;

    advance_live_events(pool, rng, (changes / 2).max(1)).await
}

/// id, sport, is_esports, elapsed, score of a live event.
type LiveRow = (String, Option<String>, bool, Option<String>, Option<String>);

/// Advances the clocks of a few live events; finishes the ones at full time and starts
/// upcoming ones in their place.
async fn advance_live_events(pool: &PgPool, rng: &mut StdRng, count: i64) -> anyhow::Result<()> {
    let live: Vec<LiveRow> = sqlx::query_as(
        "SELECT id, sport, is_esports, elapsed, score FROM events
          WHERE status = 'ACTIVE' AND event_type = 'live' ORDER BY random() LIMIT $1",
    )
    .bind(count)
    .fetch_all(pool)
    .await
    .context("Failed to read live events")?;

    for (id, sport, is_esports, elapsed, score) in live {
        let demo = demo_sport(sport.as_deref(), is_esports);
        let minute = elapsed
            .as_deref()
            .and_then(|e| e.trim_end_matches('\'').parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        if minute >= demo.minutes {
            finish_and_replace(pool, rng, &id).await?;
            continue;
        }
        let mut goals = score
            .as_deref()
            .and_then(|s| s.split_once('-'))
            .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
            .unwrap_or((0, 0));
        if rng.random_bool(0.05) {
            if rng.random_bool(0.5) {
                goals.0 += 1;
            } else {
                goals.1 += 1;
            }
        }
        sqlx::query("UPDATE events SET elapsed = $2, period = $3, score = $4, updated_at = now() WHERE id = $1")
            .bind(&id)
            .bind(format!("{minute}'"))
            .bind(period_label(demo, minute))
            .bind(format!("{}-{}", goals.0, goals.1))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Finishes a live event, kicks off the next upcoming one, and schedules a new upcoming event.
async fn finish_and_replace(pool: &PgPool, rng: &mut StdRng, id: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE events SET game_status = 'finished', event_type = 'past', live = false, updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // Pending bets of a finished event are settled.
    sqlx::query(
        "UPDATE bets SET status = CASE WHEN random() < 0.45 THEN 'WON' ELSE 'LOST' END, settled_at = now()
          WHERE event_id = $1 AND status = 'PENDING'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE events SET event_type = 'live', live = true, game_status = 'in_progress', score = '0-0',
                elapsed = '0''', start_time = now(), updated_at = now()
          WHERE id = (SELECT id FROM events WHERE status = 'ACTIVE' AND event_type = 'upcoming'
                       ORDER BY start_time LIMIT 1)",
    )
    .execute(&mut *tx)
    .await?;

    let demo = SPORTS.choose(rng).unwrap_or(&SPORTS[0]);
    let next: i64 = sqlx::query_scalar("SELECT count(*) + 1 FROM events")
        .fetch_one(&mut *tx)
        .await?;
    let new_id = format!("evt-{next}-{:04x}", rng.random::<u16>());
    let mut pair = demo.teams.choose_multiple(rng, 2);
    let (a, b) = (
        pair.next().unwrap_or(&"Home"),
        pair.next().unwrap_or(&"Away"),
    );
    sqlx::query(
        "INSERT INTO events (id, title, sport, league, team_a, team_b, is_esports, event_type, start_time,
                             external_liquidity)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'upcoming', now() + make_interval(mins => $8), $9)",
    )
    .bind(&new_id)
    .bind(format!("{a} vs {b}"))
    .bind(demo.sport)
    .bind(demo.leagues.choose(rng).copied())
    .bind(*a)
    .bind(*b)
    .bind(demo.is_esports)
    .bind(rng.random_range(60..3 * 24 * 60))
    .bind(f64::from(rng.random_range(20u32..2_000) * 1_000))
    .execute(&mut *tx)
    .await?;
    for (position, (name, price)) in demo
        .outcomes
        .iter()
        .zip(random_prices(rng, demo.outcomes.len()))
        .enumerate()
    {
        sqlx::query("INSERT INTO outcomes (event_id, name, position, external_price) VALUES ($1, $2, $3, $4)")
            .bind(&new_id)
            .bind(*name)
            .bind(position as i16)
            .bind(price)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::debug!(finished = id, created = %new_id, "event finished and replaced");
    Ok(())
}
