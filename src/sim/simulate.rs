//! `oddsfeed simulate` (or `serve --simulate`): keeps the demo data moving.
//!
//! Each round: some events are priced again by the in-play model with a little random drift
//! (events the demo did not make drift at random), bets are placed (on outcomes about as
//! often as their prices say) and settled, and some live matches are played a step further
//! (a minute, a game of tennis, a round) and priced at once, so a goal moves the price in the
//! same transaction that shows it. A match that ends is finished and its bets settled by the
//! result; the next upcoming event whose sides have nothing else within [`fixtures::REST`] kicks off in
//! its place, and a new upcoming event is drawn in its league's hours between two sides free
//! then, so the data set stays the same size and no side ever plays two matches at once.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::{PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;

use super::fixtures::{self, Fixtures, kick_off};
use super::inplay::Matchup;
use super::play::Play;
use super::seed::{NewEvent, insert_event};
use super::{Game, League, SPORTS, demo_sport, external_prices, league};

/// How fast the simulator moves things.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Time between rounds.
    pub interval: Duration,
    /// Events priced again and bets placed per round.
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

/// Columns of [`EventRow`], for events `e` left-joined to their outcomes `o`, grouped by event.
macro_rules! event_row_columns {
    () => {
        "e.id, e.sport, e.is_esports, e.league, e.team_a, e.team_b, e.score, e.period, e.elapsed,
         COALESCE(array_agg(o.name ORDER BY o.position, o.name) FILTER (WHERE o.name IS NOT NULL),
                  '{}') AS outcomes,
         COALESCE(array_agg(o.external_price ORDER BY o.position, o.name)
                      FILTER (WHERE o.name IS NOT NULL), '{}') AS prices"
    };
}

/// An event as the simulator reads it.
#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    id: String,
    sport: Option<String>,
    is_esports: bool,
    league: Option<String>,
    team_a: Option<String>,
    team_b: Option<String>,
    score: Option<String>,
    period: Option<String>,
    elapsed: Option<String>,
    /// Outcome names in display order.
    outcomes: Vec<String>,
    /// Their external prices, in the same order.
    prices: Vec<Option<f64>>,
}

impl EventRow {
    /// The league and sides, if the demo made this event: its league is in the tables and
    /// its outcomes are the ones the league names. Anything else is left to random drift.
    fn demo(&self) -> Option<(&'static League, Matchup)> {
        let league = league(
            self.sport.as_deref(),
            self.is_esports,
            self.league.as_deref()?,
        )?;
        let (home, away) = (self.team_a.as_deref()?, self.team_b.as_deref()?);
        (league.outcome_names(home, away) == self.outcomes)
            .then(|| (league, league.matchup(home, away)))
    }

    /// How the event is played: its league's game, or for an event the demo did not make,
    /// the first league of its sport (football if the sport is unknown too).
    fn game(&self) -> Game {
        match self.demo() {
            Some((league, _)) => league.game,
            None => {
                demo_sport(self.sport.as_deref(), self.is_esports)
                    .unwrap_or(&SPORTS[0])
                    .leagues[0]
                    .game
            }
        }
    }

    /// Where the match stands, as its columns show; not started if they show nothing.
    fn play(&self, game: Game) -> Play {
        let column = |c: &Option<String>| c.clone().unwrap_or_default();
        Play::parse(
            game,
            &column(&self.score),
            &column(&self.period),
            &column(&self.elapsed),
        )
        .unwrap_or(Play::start(game))
    }
}

/// External prices to write, one entry per outcome.
#[derive(Default)]
struct PriceUpdate {
    event_ids: Vec<String>,
    names: Vec<String>,
    prices: Vec<f64>,
}

impl PriceUpdate {
    /// Prices `event` at `play` (by default where its columns say it stands): the model with
    /// a little drift for demo events, a random step of up to ±0.02 for any other.
    fn add(&mut self, event: &EventRow, play: Option<Play>, rng: &mut impl Rng) {
        let prices: Vec<Option<f64>> = match event.demo() {
            Some((league, matchup)) => {
                let play = play.unwrap_or_else(|| event.play(league.game));
                external_prices(&matchup, &play, rng)
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            None => event
                .prices
                .iter()
                .map(|price| {
                    price.map(|p| {
                        let moved = p + rng.random_range(-0.02..0.02);
                        (moved.clamp(0.01, 0.99) * 1000.0).round() / 1000.0
                    })
                })
                .collect(),
        };
        for (name, price) in event.outcomes.iter().zip(prices) {
            if let Some(price) = price {
                self.event_ids.push(event.id.clone());
                self.names.push(name.clone());
                self.prices.push(price);
            }
        }
    }

    async fn write(self, executor: impl PgExecutor<'_>) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE outcomes o SET external_price = u.price, updated_at = now()
               FROM unnest($1::text[], $2::text[], $3::float8[]) AS u (event_id, name, price)
              WHERE o.event_id = u.event_id AND o.name = u.name",
        )
        .bind(self.event_ids)
        .bind(self.names)
        .bind(self.prices)
        .execute(executor)
        .await
        .context("Failed to write prices")?;
        Ok(())
    }
}

/// One round of changes.
pub async fn round(pool: &PgPool, rng: &mut StdRng, changes: usize) -> anyhow::Result<()> {
    let changes = changes.max(1) as i64;
    let picked: Vec<EventRow> = sqlx::query_as(concat!(
        "SELECT ",
        event_row_columns!(),
        " FROM (SELECT id FROM events
                 WHERE status = 'ACTIVE' AND event_type IN ('live', 'upcoming')
                 ORDER BY random() LIMIT $1) picked
          JOIN events e ON e.id = picked.id
          LEFT JOIN outcomes o ON o.event_id = e.id
         GROUP BY e.id"
    ))
    .bind(changes)
    .fetch_all(pool)
    .await
    .context("Failed to read events to price")?;
    let mut update = PriceUpdate::default();
    for event in &picked {
        update.add(event, None, rng);
    }
    update.write(pool).await.context("Failed to move prices")?;

    // Bettors back outcomes about as often as the market rates them (a weighted sample:
    // exponential keys over the price), so pending volume leans the way the price does
    // instead of pulling every market toward even.
    sqlx::query(
        "INSERT INTO bets (event_id, outcome, user_id, amount)
         SELECT o.event_id, o.name, 'user-' || (1 + floor(random() * 200))::int,
                round((5 + random() * 495)::numeric, 2)
           FROM outcomes o JOIN events e ON e.id = o.event_id
          WHERE e.status = 'ACTIVE' AND e.event_type IN ('live', 'upcoming')
            AND o.external_price > 0
          ORDER BY -ln(1 - random()) / o.external_price LIMIT $1",
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

/// Plays a few live matches a step further and prices them at once; finishes the ones that
/// end and starts upcoming ones in their place.
async fn advance_live_events(pool: &PgPool, rng: &mut StdRng, count: i64) -> anyhow::Result<()> {
    let live: Vec<EventRow> = sqlx::query_as(concat!(
        "SELECT ",
        event_row_columns!(),
        " FROM (SELECT id FROM events
                 WHERE status = 'ACTIVE' AND event_type = 'live'
                 ORDER BY random() LIMIT $1) picked
          JOIN events e ON e.id = picked.id
          LEFT JOIN outcomes o ON o.event_id = e.id
         GROUP BY e.id"
    ))
    .bind(count)
    .fetch_all(pool)
    .await
    .context("Failed to read live events")?;

    for event in live {
        let game = event.game();
        let matchup = event.demo().map_or(
            Matchup {
                game,
                rating_difference: 0.0,
                home_venue: false,
            },
            |(_, matchup)| matchup,
        );
        let play = event.play(game).step(&matchup, rng);
        if play.is_over(game) {
            finish_and_replace(pool, rng, &event, play).await?;
            continue;
        }
        let board = play.scoreboard(game);
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE events SET score = $2, period = $3, elapsed = $4, updated_at = now() WHERE id = $1",
        )
        .bind(&event.id)
        .bind(&board.score)
        .bind(&board.period)
        .bind(&board.elapsed)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("Failed to advance event {}", event.id))?;
        if event.demo().is_some() {
            let mut update = PriceUpdate::default();
            update.add(&event, Some(play), rng);
            update.write(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Finishes a live event at `result` and settles its bets by it; kicks off the next upcoming
/// event whose sides are free and draws a new upcoming one.
async fn finish_and_replace(
    pool: &PgPool,
    rng: &mut StdRng,
    event: &EventRow,
    result: Play,
) -> anyhow::Result<()> {
    let game = event.game();
    let mut tx = pool.begin().await?;
    let board = result.scoreboard(game);
    sqlx::query(
        "UPDATE events SET game_status = 'finished', event_type = 'past', live = false,
                score = $2, period = $3, elapsed = $4, updated_at = now()
          WHERE id = $1",
    )
    .bind(&event.id)
    .bind(&board.score)
    .bind(&board.period)
    .bind(&board.elapsed)
    .execute(&mut *tx)
    .await?;
    // Pending bets are settled by the result (a points game tied at full time went to
    // overtime: either side); an event the demo did not make, at random.
    let winner = event.demo().and_then(|_| {
        result
            .winner(game)
            .and_then(|i| event.outcomes.get(i))
            .or_else(|| event.outcomes.choose(rng))
    });
    sqlx::query(
        "UPDATE bets SET status = CASE WHEN $2::text IS NULL AND random() < 0.45 THEN 'WON'
                                       WHEN outcome = $2 THEN 'WON' ELSE 'LOST' END,
                settled_at = now()
          WHERE event_id = $1 AND status = 'PENDING'",
    )
    .bind(&event.id)
    .bind(winner)
    .execute(&mut *tx)
    .await?;

    // The calendar after this match (it is past now); the next upcoming event kicks off
    // now, the first whose sides have nothing else within REST of now.
    let (mut fixtures, active) = Fixtures::load(&mut tx).await?;
    let now = Utc::now();
    let mut upcoming: Vec<&fixtures::Booked> = active.iter().filter(|e| e.upcoming).collect();
    upcoming.sort_by_key(|e| (e.start_time.is_none(), e.start_time));
    let next = upcoming.into_iter().find(|e| {
        e.sides().is_none_or(|sides| {
            fixtures.free(e.sport.as_deref(), e.is_esports, sides, now, e.start_time)
        })
    });
    let next: Option<EventRow> = match next {
        None => None,
        Some(next) => {
            if let Some(sides) = next.sides() {
                fixtures.book(next.sport.as_deref(), next.is_esports, sides, now);
            }
            sqlx::query_as(concat!(
                "SELECT ",
                event_row_columns!(),
                " FROM (SELECT id FROM events WHERE id = $1 FOR UPDATE) picked
                  JOIN events e ON e.id = picked.id
                  LEFT JOIN outcomes o ON o.event_id = e.id
                 GROUP BY e.id"
            ))
            .bind(&next.id)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    if let Some(next) = next {
        let game = next.game();
        let kick_off = Play::start(game);
        let board = kick_off.scoreboard(game);
        sqlx::query(
            "UPDATE events SET event_type = 'live', live = true, game_status = 'in_progress',
                    score = $2, period = $3, elapsed = $4, start_time = now(), updated_at = now()
              WHERE id = $1",
        )
        .bind(&next.id)
        .bind(&board.score)
        .bind(&board.period)
        .bind(&board.elapsed)
        .execute(&mut *tx)
        .await?;
        if next.demo().is_some() {
            let mut update = PriceUpdate::default();
            update.add(&next, Some(kick_off), rng);
            update.write(&mut *tx).await?;
        }
    }

    let count: i64 = sqlx::query_scalar("SELECT count(*) + 1 FROM events")
        .fetch_one(&mut *tx)
        .await?;
    let id = format!("evt-{count}-{:04x}", rng.random::<u16>());
    // A new upcoming event, between two sides free then.
    let sport = SPORTS.choose(rng).unwrap_or(&SPORTS[0]);
    let drawn = fixtures::draw(&fixtures, sport, rng, |league, _, _, days, rng| {
        (None, kick_off(now, league, 60, days, rng))
    });
    let Some((drawn, _)) = drawn else {
        return Ok(tx.commit().await?);
    };
    let new_event = NewEvent { id, sport, drawn };
    insert_event(&mut tx, &new_event, rng).await?;
    tx.commit().await?;
    tracing::debug!(finished = event.id, created = %new_event.id, "event finished and replaced");
    Ok(())
}
