//! `oddsfeed seed`: several sports (football with HOME/DRAW/AWAY, esports, ...), live and
//! upcoming events, pending and settled bets. Deterministic for a given `SEED_RANDOM`.

use anyhow::Context;
use chrono::{Duration, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

use super::{SPORTS, period_label, random_prices};

/// What a seed inserted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: usize,
    pub outcomes: usize,
    pub bets: usize,
}

/// Inserts `count` events. Without `reset`, an already seeded database is left alone.
pub async fn seed(
    pool: &PgPool,
    count: usize,
    random_seed: u64,
    reset: bool,
) -> anyhow::Result<Summary> {
    let mut tx = pool.begin().await?;
    if reset {
        sqlx::query("TRUNCATE bets, outcome_pending_volume, outcomes, events")
            .execute(&mut *tx)
            .await
            .context("Failed to clear the demo data")?;
    } else {
        let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        if existing > 0 {
            tracing::info!(
                existing,
                "events exist already; not seeding (use `seed --reset` to start over)"
            );
            return Ok(Summary::default());
        }
    }

    let mut rng = StdRng::seed_from_u64(random_seed);
    let now = Utc::now();
    let mut summary = Summary::default();
    for n in 0..count {
        let sport = &SPORTS[n % SPORTS.len()];
        let id = format!("evt-{}", n + 1);
        let league = sport.leagues.choose(&mut rng).copied().unwrap_or("League");
        let mut pair = sport.teams.choose_multiple(&mut rng, 2);
        let (team_a, team_b) = (
            pair.next().unwrap_or(&"Home"),
            pair.next().unwrap_or(&"Away"),
        );
        // One in five is live, the rest start over the next three days.
        let live = rng.random_bool(0.2);
        let minute = rng.random_range(1..sport.minutes);
        let start_time = if live {
            now - Duration::minutes(i64::from(minute))
        } else {
            now + Duration::minutes(rng.random_range(10..3 * 24 * 60))
        };
        let liquidity: Option<f64> = if rng.random_bool(0.2) {
            None
        } else {
            Some(f64::from(rng.random_range(20u32..2_000) * 1_000))
        };
        sqlx::query(
            "INSERT INTO events (id, title, sport, league, team_a, team_b, is_esports, status,
                                 event_type, game_status, live, score, period, elapsed, start_time,
                                 external_liquidity)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'ACTIVE', $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&id)
        .bind(format!("{team_a} vs {team_b}"))
        .bind(sport.sport)
        .bind(league)
        .bind(team_a)
        .bind(team_b)
        .bind(sport.is_esports)
        .bind(if live { "live" } else { "upcoming" })
        .bind(if live { "in_progress" } else { "scheduled" })
        .bind(live)
        .bind(live.then(|| format!("{}-{}", rng.random_range(0..3), rng.random_range(0..3))))
        .bind(live.then(|| period_label(sport, minute)))
        .bind(live.then(|| format!("{minute}'")))
        .bind(start_time)
        .bind(liquidity)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("Failed to insert event {id}"))?;

        let prices = random_prices(&mut rng, sport.outcomes.len());
        for (position, (name, price)) in sport.outcomes.iter().zip(&prices).enumerate() {
            sqlx::query("INSERT INTO outcomes (event_id, name, position, external_price) VALUES ($1, $2, $3, $4)")
                .bind(&id)
                .bind(*name)
                .bind(position as i16)
                .bind(*price)
                .execute(&mut *tx)
                .await?;
            summary.outcomes += 1;
        }

        let bets = rng.random_range(0..20);
        for _ in 0..bets {
            let outcome = sport.outcomes.choose(&mut rng).copied().unwrap_or("YES");
            let status = if rng.random_bool(0.8) {
                "PENDING"
            } else {
                "LOST"
            };
            sqlx::query(
                "INSERT INTO bets (event_id, outcome, user_id, amount, status)
                 VALUES ($1, $2, $3, round($4::numeric, 2), $5)",
            )
            .bind(&id)
            .bind(outcome)
            .bind(format!("user-{}", rng.random_range(1..200)))
            .bind(rng.random_range(5.0f64..2_000.0))
            .bind(status)
            .execute(&mut *tx)
            .await?;
        }
        summary.bets += bets;
        summary.events += 1;
    }
    tx.commit().await?;
    Ok(summary)
}
