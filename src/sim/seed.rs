//! `oddsfeed seed`: events of every sport and league in [`super::SPORTS`] (each between two
//! sides of its league), one in five already in play with a score the sport would produce,
//! the rest starting over the next three days as [`super::fixtures`] has them (in the league's
//! hours, no side in two events less than [`REST`] apart); prices from the in-play model;
//! pending and settled bets. Deterministic for a given `SEED_RANDOM`.

use anyhow::Context;
use chrono::{Duration, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::{PgConnection, PgPool};

use super::fixtures::{self, Fixtures, MAX_HORIZON_DAYS, REST, kick_off};
use super::play::Play;
use super::{DemoSport, SPORTS, external_prices};

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
    let mut fixtures = Fixtures::default();
    let mut crowded = 0usize;
    for n in 0..count {
        let sport = &SPORTS[n % SPORTS.len()];
        let drawn = fixtures::draw(
            &fixtures,
            sport,
            &mut rng,
            |league, home, away, days, rng| {
                let play = rng
                    .random_bool(0.2)
                    .then(|| Play::in_progress(&league.matchup(home, away), rng));
                let start_time = match play {
                    Some(play) => {
                        now - Duration::minutes(i64::from(play.minutes_played(league.game)))
                    }
                    None => kick_off(now, league, 10, days, rng),
                };
                (play, start_time)
            },
        );
        let Some((drawn, free)) = drawn else {
            continue;
        };
        crowded += usize::from(!free);
        let sides = [drawn.home, drawn.away];
        fixtures.book(sport.sport, sport.is_esports, sides, drawn.start_time);
        let event = NewEvent {
            id: format!("evt-{}", n + 1),
            sport,
            drawn,
        };
        let outcomes = insert_event(&mut tx, &event, &mut rng).await?;
        summary.outcomes += outcomes.len();

        let bets = rng.random_range(0..20);
        for _ in 0..bets {
            // Bettors back an outcome about as often as the market rates it.
            let outcome = outcomes
                .choose_weighted(&mut rng, |(_, price)| *price)
                .map_or("", |(name, _)| name.as_str());
            let status = if rng.random_bool(0.8) {
                "PENDING"
            } else {
                "LOST"
            };
            sqlx::query(
                "INSERT INTO bets (event_id, outcome, user_id, amount, status)
                 VALUES ($1, $2, $3, round($4::numeric, 2), $5)",
            )
            .bind(&event.id)
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
    if crowded > 0 {
        tracing::warn!(
            crowded,
            rest_hours = REST.num_hours(),
            days = MAX_HORIZON_DAYS,
            "more events than the leagues' calendars hold: some sides have two events less than \
             rest_hours apart (a side plays at most once in rest_hours, in its league's hours, \
             within days)"
        );
    }
    Ok(summary)
}

/// A demo event to insert.
pub(crate) struct NewEvent {
    pub id: String,
    pub sport: &'static DemoSport,
    pub drawn: fixtures::Drawn,
}

/// Inserts `event` with its outcomes priced by the model; returns the outcomes and prices.
pub(crate) async fn insert_event(
    conn: &mut PgConnection,
    event: &NewEvent,
    rng: &mut impl Rng,
) -> anyhow::Result<Vec<(String, f64)>> {
    let fixtures::Drawn {
        league,
        home,
        away,
        play,
        start_time,
    } = event.drawn;
    let game = league.game;
    let board = play.map(|play| play.scoreboard(game));
    // Deep external markets: the platform's own pending bets move a price a little, not
    // decide it. One in five has none recorded (NULL: the default of 1,000,000).
    let liquidity: Option<f64> =
        (!rng.random_bool(0.2)).then(|| f64::from(rng.random_range(300u32..5_000) * 1_000));
    sqlx::query(
        "INSERT INTO events (id, title, sport, league, team_a, team_b, is_esports, status,
                             event_type, game_status, live, score, period, elapsed, start_time,
                             external_liquidity)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'ACTIVE', $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&event.id)
    .bind(format!("{} vs {}", home, away))
    .bind(event.sport.sport)
    .bind(league.name)
    .bind(home)
    .bind(away)
    .bind(event.sport.is_esports)
    .bind(if play.is_some() { "live" } else { "upcoming" })
    .bind(if play.is_some() {
        "in_progress"
    } else {
        "scheduled"
    })
    .bind(play.is_some())
    .bind(board.as_ref().map(|b| b.score.clone()))
    .bind(board.as_ref().map(|b| b.period.clone()))
    .bind(board.as_ref().map(|b| b.elapsed.clone()))
    .bind(start_time)
    .bind(liquidity)
    .execute(&mut *conn)
    .await
    .with_context(|| format!("Failed to insert event {}", event.id))?;

    let matchup = league.matchup(home, away);
    let play = play.unwrap_or(Play::start(game));
    let outcomes: Vec<(String, f64)> = league
        .outcome_names(home, away)
        .into_iter()
        .zip(external_prices(&matchup, &play, rng))
        .collect();
    for (position, (name, price)) in outcomes.iter().enumerate() {
        sqlx::query(
            "INSERT INTO outcomes (event_id, name, position, external_price) VALUES ($1, $2, $3, $4)",
        )
        .bind(&event.id)
        .bind(name)
        .bind(position as i16)
        .bind(*price)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("Failed to insert outcome {name} of event {}", event.id))?;
    }
    Ok(outcomes)
}
