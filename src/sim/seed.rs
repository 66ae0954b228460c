//! `oddsfeed seed`: events of every sport and league in [`super::SPORTS`] (each between two
//! sides of its league), one in five already in play with a score the sport would produce,
//! the rest starting on the quarter hour over the next three days, no side in two events less
//! than [`REST`] apart; prices from the in-play model; pending and settled bets. Deterministic
//! for a given `SEED_RANDOM`.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Duration, DurationRound, Timelike, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::{PgConnection, PgPool};

use super::play::Play;
use super::{DemoSport, League, SPORTS, external_prices};

/// What a seed inserted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: usize,
    pub outcomes: usize,
    pub bets: usize,
}

/// The least time between the starts of two events of one side (a team, a player): far longer
/// than any demo match lasts, so that no side plays two matches at once (a bettor who sees
/// the Jets in two live games stops believing the rest), nor twice in an evening.
pub const REST: Duration = Duration::hours(12);

/// Draws for an event before two free sides are found; an event that finds none takes the
/// last draw anyway.
/// Every [`DRAWS_PER_HORIZON`] draws, the horizon grows by three days: a large seed spreads
/// over more days rather than crowding them.
pub(crate) const DRAWS: usize = 100;
pub(crate) const DRAWS_PER_HORIZON: usize = 25;

/// The days ahead in which the `draw`th draw (from 0) may place an event.
pub(crate) fn horizon_days(draw: usize) -> i64 {
    3 * (1 + (draw / DRAWS_PER_HORIZON) as i64)
}

/// A side of a sport, as stored: `sport`, `is_esports`, the name (a player of two tours, or
/// an organisation in two esports titles, is one side).
type Side = (Option<&'static str>, bool, &'static str);

/// When each side plays.
#[derive(Default)]
struct Fixtures(HashMap<Side, Vec<DateTime<Utc>>>);

impl Fixtures {
    /// Whether neither side has an event less than [`REST`] from `at`.
    fn free(&self, sport: &DemoSport, sides: [&'static str; 2], at: DateTime<Utc>) -> bool {
        sides.iter().all(|side| {
            self.0
                .get(&(sport.sport, sport.is_esports, *side))
                .is_none_or(|starts| starts.iter().all(|start| (*start - at).abs() >= REST))
        })
    }

    fn book(&mut self, sport: &DemoSport, sides: [&'static str; 2], at: DateTime<Utc>) {
        for side in sides {
            self.0
                .entry((sport.sport, sport.is_esports, side))
                .or_default()
                .push(at);
        }
    }
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
        let mut last = None;
        let drawn = (0..DRAWS).find_map(|draw| {
            let league = sport.leagues.choose(&mut rng)?;
            let (home, away) = league.draw_pair(&mut rng);
            let play = rng
                .random_bool(0.2)
                .then(|| Play::in_progress(&league.matchup(home, away), &mut rng));
            let start_time = match play {
                Some(play) => now - Duration::minutes(i64::from(play.minutes_played(league.game))),
                None => kick_off(now, league, 10, horizon_days(draw), &mut rng),
            };
            let candidate = (league, home, away, play, start_time);
            last = Some(candidate);
            fixtures
                .free(sport, [home, away], start_time)
                .then_some(candidate)
        });
        // More events than the leagues' calendars hold (a benchmark's 10,000): the count
        // matters more than the calendar, so the last draw is taken anyway.
        crowded += usize::from(drawn.is_none());
        let Some((league, home, away, play, start_time)) = drawn.or(last) else {
            continue;
        };
        fixtures.book(sport, [home, away], start_time);
        let event = NewEvent {
            id: format!("evt-{}", n + 1),
            sport,
            league,
            home,
            away,
            play,
            start_time,
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
            "more events than the leagues' calendars hold: some sides have two events less than \
             rest_hours apart (a side plays at most once in rest_hours, in its league's hours, \
             within 12 days)"
        );
    }
    Ok(summary)
}

/// A demo event to insert.
pub(crate) struct NewEvent {
    pub id: String,
    pub sport: &'static DemoSport,
    pub league: &'static League,
    /// Named first, and at home where the league has home venues.
    pub home: &'static str,
    pub away: &'static str,
    /// Where the match stands if it is in play; `None` for an upcoming event.
    pub play: Option<Play>,
    pub start_time: DateTime<Utc>,
}

/// A start for a match of `league`: on the quarter hour, in the league's start hours, at
/// least `lead_minutes` and about `days` at most from `now`.
pub(crate) fn kick_off(
    now: DateTime<Utc>,
    league: &League,
    lead_minutes: i64,
    days: i64,
    rng: &mut impl Rng,
) -> DateTime<Utc> {
    let first = start_ahead(now, lead_minutes);
    let slots = ((now + Duration::days(days)) - first).num_minutes().max(0) / 15 + 1;
    // One of the quarter hours in the league's hours, each as likely (every league has some
    // hours in any day).
    let open: Vec<DateTime<Utc>> = (0..slots)
        .map(|i| first + Duration::minutes(15 * i))
        .filter(|at| league.starts_in(at.hour()))
        .collect();
    open.choose(rng).copied().unwrap_or(first)
}

/// At least `minutes` from `now`, on the quarter hour, as real kick-offs are.
pub(crate) fn start_ahead(now: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
    let at = now + Duration::minutes(minutes + 15);
    at.duration_trunc(Duration::minutes(15)).unwrap_or(at)
}

/// Inserts `event` with its outcomes priced by the model; returns the outcomes and prices.
pub(crate) async fn insert_event(
    conn: &mut PgConnection,
    event: &NewEvent,
    rng: &mut impl Rng,
) -> anyhow::Result<Vec<(String, f64)>> {
    let game = event.league.game;
    let board = event.play.map(|play| play.scoreboard(game));
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
    .bind(format!("{} vs {}", event.home, event.away))
    .bind(event.sport.sport)
    .bind(event.league.name)
    .bind(event.home)
    .bind(event.away)
    .bind(event.sport.is_esports)
    .bind(if event.play.is_some() {
        "live"
    } else {
        "upcoming"
    })
    .bind(if event.play.is_some() {
        "in_progress"
    } else {
        "scheduled"
    })
    .bind(event.play.is_some())
    .bind(board.as_ref().map(|b| b.score.clone()))
    .bind(board.as_ref().map(|b| b.period.clone()))
    .bind(board.as_ref().map(|b| b.elapsed.clone()))
    .bind(event.start_time)
    .bind(liquidity)
    .execute(&mut *conn)
    .await
    .with_context(|| format!("Failed to insert event {}", event.id))?;

    let matchup = event.league.matchup(event.home, event.away);
    let play = event.play.unwrap_or(Play::start(game));
    let outcomes: Vec<(String, f64)> = event
        .league
        .outcome_names(event.home, event.away)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_offs_are_on_the_quarter_hour_in_the_leagues_hours() {
        let mut rng = StdRng::seed_from_u64(7);
        let now = Utc::now();
        for sport in SPORTS {
            for league in sport.leagues {
                for _ in 0..200 {
                    let at = kick_off(now, league, 10, 3, &mut rng);
                    assert!(league.starts_in(at.hour()), "{} at {at}", league.name);
                    assert_eq!((at.minute() % 15, at.second()), (0, 0), "{at}");
                    assert!(at >= now + Duration::minutes(10), "{at}");
                    assert!(at <= now + Duration::days(3), "{at}");
                }
                // Spread over the league's hours, not piled on the first of them.
                let first_hours = (0..200)
                    .filter(|_| {
                        kick_off(now, league, 10, 3, &mut rng).hour() == league.start_hours.0
                    })
                    .count();
                assert!(first_hours < 80, "{}: {first_hours} of 200", league.name);
            }
        }
    }

    #[test]
    fn start_hours_may_wrap_past_midnight() {
        let nfl = SPORTS
            .iter()
            .flat_map(|sport| sport.leagues)
            .find(|league| league.name == "NFL")
            .unwrap();
        assert_eq!(nfl.start_hours, (17, 2));
        let hours: Vec<u32> = (0..24).filter(|h| nfl.starts_in(*h)).collect();
        assert_eq!(hours, [0, 1, 17, 18, 19, 20, 21, 22, 23]);
    }

    #[test]
    fn a_side_is_not_free_within_rest_of_its_other_events() {
        let sport = &SPORTS[0];
        let at = Utc::now();
        let mut fixtures = Fixtures::default();
        fixtures.book(sport, ["A", "B"], at);
        assert!(!fixtures.free(sport, ["C", "A"], at + REST - Duration::minutes(15)));
        assert!(!fixtures.free(sport, ["B", "C"], at - REST + Duration::minutes(15)));
        assert!(fixtures.free(sport, ["A", "B"], at + REST));
        assert!(fixtures.free(sport, ["C", "D"], at));
        // The same names in another sport are other sides.
        assert!(fixtures.free(&SPORTS[1], ["A", "B"], at));
    }
}
