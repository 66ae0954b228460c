//! The demo data as a bettor would read it, after `seed` and after many simulator rounds:
//! every event is between two sides of its own league (tennis tours never mixed), head-to-head
//! outcomes are named after the sides, scores are ones the sport produces, upcoming events
//! start on the quarter hour in the hours their league plays, no side plays twice at once,
//! and every price is the in-play model's for the score and clock shown next to it (within
//! the simulator's drift).

mod support;

use chrono::{DateTime, Timelike, Utc};
use oddsfeed::sim::inplay::{self, DEMO_MARGIN};
use oddsfeed::sim::play::{self, Play};
use oddsfeed::sim::{self, Game, League, SPORTS, Scoring};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sqlx::PgPool;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_and_simulated_events_would_not_fool_a_bettor() {
    let db = TestDb::new().await;
    let seeded = sim::seed::seed(&db.pool, 300, 42, false).await.unwrap();
    assert_eq!(seeded.events, 300);
    check_active_events(&db.pool, "seeded").await;

    // Matches play on, finish, and are replaced by newly drawn events.
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..150 {
        sim::simulate::round(&db.pool, &mut rng, 20).await.unwrap();
    }
    let finished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE game_status = 'finished'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(finished > 0, "some matches finished");
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE status = 'ACTIVE' AND event_type IN ('live', 'upcoming')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(active, 300, "each finished match is replaced");
    check_active_events(&db.pool, "simulated").await;
    db.drop_db().await;
}

/// When a match ends, the simulator kicks off the first upcoming event whose sides are free:
/// not one whose side is playing elsewhere right now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_that_is_playing_is_not_kicked_off_again() {
    let db = TestDb::new().await;
    // id, home, away, and in play: (quarter, clock left), or upcoming: hours from now.
    let events = [
        // Ends at the next step.
        ("ending", "Bears", "Lions", Ok(("Q4", "1:00"))),
        // Plays on.
        ("playing", "Jets", "Eagles", Ok(("Q1", "10:00"))),
        // The first upcoming event, but the Jets are playing.
        ("jets-next", "Jets", "Giants", Err(1)),
        ("free-next", "Bills", "Dolphins", Err(2)),
    ];
    for (id, home, away, state) in events {
        let (event_type, score, (period, elapsed), hours) = match state {
            Ok(clock) => ("live", Some("10-7"), (Some(clock.0), Some(clock.1)), -2),
            Err(hours) => ("upcoming", None, (None, None), hours),
        };
        sqlx::query(
            "INSERT INTO events (id, title, sport, league, team_a, team_b, event_type,
                                 game_status, live, score, period, elapsed, start_time)
             VALUES ($1, $2 || ' vs ' || $3, 'American Football', 'NFL', $2, $3, $4,
                     CASE WHEN $4 = 'live' THEN 'in_progress' ELSE 'scheduled' END, $4 = 'live',
                     $5, $6, $7, now() + make_interval(hours => $8))",
        )
        .bind(id)
        .bind(home)
        .bind(away)
        .bind(event_type)
        .bind(score)
        .bind(period)
        .bind(elapsed)
        .bind(hours)
        .execute(&db.pool)
        .await
        .unwrap();
        for (position, name) in [home, away].iter().enumerate() {
            sqlx::query(
                "INSERT INTO outcomes (event_id, name, position, external_price)
                 VALUES ($1, $2, $3, 0.5)",
            )
            .bind(id)
            .bind(name)
            .bind(position as i16)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }

    // Both live matches are played a step (two of the four changes play live matches on).
    let mut rng = StdRng::seed_from_u64(1);
    sim::simulate::round(&db.pool, &mut rng, 4).await.unwrap();

    let types: std::collections::HashMap<String, String> =
        sqlx::query_as("SELECT id, event_type FROM events")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(types["ending"], "past", "{types:?}");
    assert_eq!(types["playing"], "live", "{types:?}");
    assert_eq!(types["jets-next"], "upcoming", "{types:?}");
    assert_eq!(types["free-next"], "live", "{types:?}");
    db.drop_db().await;
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    sport: Option<String>,
    is_esports: bool,
    league: Option<String>,
    team_a: Option<String>,
    team_b: Option<String>,
    title: String,
    live: bool,
    score: Option<String>,
    period: Option<String>,
    elapsed: Option<String>,
    start_time: Option<DateTime<Utc>>,
    /// In display order.
    outcomes: Vec<String>,
    prices: Vec<f64>,
}

async fn check_active_events(pool: &PgPool, when: &str) {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.id, e.sport, e.is_esports, e.league, e.team_a, e.team_b, e.title, e.live,
                e.score, e.period, e.elapsed, e.start_time,
                array_agg(o.name ORDER BY o.position) AS outcomes,
                array_agg(o.external_price ORDER BY o.position) AS prices
           FROM events e JOIN outcomes o ON o.event_id = e.id
          WHERE e.status = 'ACTIVE' AND e.event_type IN ('live', 'upcoming')
          GROUP BY e.id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 300, "{when}: every active event has outcomes");
    let mut live = 0;
    for row in &rows {
        live += usize::from(row.live);
        check_event(row).unwrap_or_else(|problem| panic!("{when}: {}: {problem}: {row:?}", row.id));
    }
    assert!(live >= 20, "{when}: {live} events in play");
    check_no_side_plays_twice_at_once(&rows, when);
}

/// No team or player has two events that start less than `sim::fixtures::REST` apart (so never
/// two at once: the Jets were once in two live games on the demo board).
fn check_no_side_plays_twice_at_once(rows: &[Row], when: &str) {
    let mut starts: std::collections::HashMap<_, Vec<(DateTime<Utc>, &str)>> =
        std::collections::HashMap::new();
    for row in rows {
        let start = row.start_time.expect("a start time");
        for side in [&row.team_a, &row.team_b] {
            let side = side.as_deref().expect("a side");
            starts
                .entry((row.sport.as_deref(), row.is_esports, side))
                .or_default()
                .push((start, row.id.as_str()));
        }
    }
    let mut sides_with_several = 0;
    for (side, mut events) in starts {
        events.sort();
        sides_with_several += usize::from(events.len() > 1);
        for pair in events.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= sim::fixtures::REST,
                "{when}: {side:?} plays {} at {} and {} at {}",
                pair[0].1,
                pair[0].0,
                pair[1].1,
                pair[1].0
            );
        }
    }
    assert!(sides_with_several > 20, "{when}: sides play more than once");
}

fn check_event(row: &Row) -> Result<(), String> {
    let Row {
        sport,
        is_esports,
        league,
        team_a: home,
        team_b: away,
        title,
        live,
        score,
        period,
        elapsed,
        start_time: start,
        outcomes: names,
        prices,
        ..
    } = row;
    let league = sim::league(
        sport.as_deref(),
        *is_esports,
        league.as_deref().unwrap_or(""),
    )
    .ok_or("a league its sport does not have")?;
    let (home, away) = (home.as_deref().unwrap_or(""), away.as_deref().unwrap_or(""));
    if league.team(home).is_none() || league.team(away).is_none() || home == away {
        return Err(format!(
            "{home} and {away} do not both play in {}",
            league.name
        ));
    }
    if title != &format!("{home} vs {away}") {
        return Err("title".into());
    }
    if sport.as_deref() == Some("Tennis") {
        for player in [home, away] {
            let tour = &league.name[..3];
            let other_tour = sim::demo_sport(Some("Tennis"), false)
                .unwrap()
                .leagues
                .iter()
                .filter(|l| !l.name.starts_with(tour))
                .any(|l| l.team(player).is_some());
            if other_tour {
                return Err(format!("{player} plays on both tours"));
            }
        }
    }

    // Head-to-head markets are named after the sides; HOME/DRAW/AWAY only where a draw is a
    // result.
    if names.iter().any(|n| n == "YES" || n == "NO") {
        return Err("YES/NO in a head-to-head market".into());
    }
    match league.game {
        Game::Goals { .. } => {
            if names != &["HOME", "DRAW", "AWAY"] {
                return Err("outcomes of a three-way market".into());
            }
        }
        _ => {
            if names != &[home, away] {
                return Err("outcomes not named after the sides".into());
            }
        }
    }

    let play = if *live {
        let (score, period, elapsed) = (
            score.as_deref().ok_or("no score")?,
            period.as_deref().ok_or("no period")?,
            elapsed.as_deref().ok_or("no clock")?,
        );
        let play = Play::parse(league.game, score, period, elapsed).ok_or("unreadable score")?;
        plausible(league, &league.matchup(home, away), &play)?;
        play
    } else {
        if score.is_some() || period.is_some() || elapsed.is_some() {
            return Err("a score before the start".into());
        }
        let start = start.ok_or("no start time")?;
        if start <= Utc::now() || start.minute() % 15 != 0 || start.second() != 0 {
            return Err("an upcoming start not on a quarter hour ahead".into());
        }
        if !league.starts_in(start.hour()) {
            return Err(format!(
                "starts at {} UTC, outside the {} start hours {:?}",
                start.time(),
                league.name,
                league.start_hours
            ));
        }
        Play::start(league.game)
    };

    // The prices are the model's for the state shown, within the simulator's drift.
    let fair = inplay::fair_probabilities(&league.matchup(home, away), &play);
    let model = inplay::with_margin(&fair, DEMO_MARGIN);
    let overround = prices.iter().sum::<f64>() - 1.0;
    let expected = inplay::overround(&fair, DEMO_MARGIN);
    if (overround - expected).abs() > 0.008 {
        return Err(format!(
            "overround {overround} where the model says {expected:.4}"
        ));
    }
    for (price, model) in prices.iter().zip(&model) {
        let close = (price - model).abs() <= 0.003 || (price / model).ln().abs() <= 0.15;
        if !(0.001..=0.99).contains(price) || !close {
            return Err(format!("price {price} where the model says {model:.4}"));
        }
    }
    Ok(())
}

/// A state of play the sport would produce, and not yet over.
fn plausible(league: &League, matchup: &inplay::Matchup, play: &Play) -> Result<(), String> {
    if play.is_over(league.game) {
        return Err("in play after the end".into());
    }
    match (league.game, *play) {
        (Game::Goals { minutes, .. }, Play::Clock { minute, home, away }) => {
            if minute > minutes || home > 9 || away > 9 || home + away > 12 {
                return Err("goals".into());
            }
        }
        (Game::Points { scoring, .. }, Play::Clock { minute, home, away }) => {
            // Each side's points after `minute` minutes, as the simulator plays them (a score in
            // a minute with a chance that gives the side's expected points: the league's
            // average, moved by half the expected margin), within 5 standard deviations and
            // one score. A fixed band around the league average failed 1 run in 6: a strong
            // side 51 points up after 53 minutes is rare, not implausible, and 2 × 36 sides
            // are checked per run.
            let played = f64::from(minute);
            let (home_rate, away_rate) = matchup.points_per_minute();
            for (points, per_minute) in [(home, home_rate), (away, away_rate)] {
                let variance = play::minute_points_variance(scoring, per_minute);
                let (mean, sd) = (played * per_minute, (played * variance).sqrt());
                let points = f64::from(points);
                if (points - mean).abs() > 5.0 * sd + 7.0 {
                    return Err(format!(
                        "{points} points after {minute} minutes (expected {mean:.0} ± {sd:.0})"
                    ));
                }
            }
            if scoring == Scoring::Gridiron
                && ![home, away]
                    .iter()
                    .all(|&p| (0..=p / 7).any(|touchdowns| (p - touchdowns * 7).is_multiple_of(3)))
            {
                return Err("American football not in 3s and 7s".into());
            }
        }
        (Game::Sets { .. }, Play::Series { won, current }) => {
            if won.0 > 1 || won.1 > 1 || current.0 > 6 || current.1 > 6 {
                return Err("sets and games".into());
            }
            let finished_set = |a: u32, b: u32| a == 6 && b <= 4;
            if finished_set(current.0, current.1) || finished_set(current.1, current.0) {
                return Err("a finished set still in play".into());
            }
        }
        (Game::RoundMaps { rounds }, Play::Series { won, current }) => {
            if won.0 > 1 || won.1 > 1 || current.0 >= rounds || current.1 >= rounds {
                return Err("maps and rounds".into());
            }
        }
        (Game::ClockMaps, Play::MapClock { won, minute }) => {
            if won.0 > 1 || won.1 > 1 || minute > 120 {
                return Err("maps and map clock".into());
            }
        }
        _ => return Err("a state of another game".into()),
    }
    Ok(())
}

#[test]
fn every_sport_of_the_demo_is_still_there() {
    let sports: Vec<_> = SPORTS
        .iter()
        .map(|s| s.sport.unwrap_or("esports"))
        .collect();
    assert_eq!(
        sports,
        [
            "Football",
            "Basketball",
            "Tennis",
            "Ice Hockey",
            "American Football",
            "esports"
        ]
    );
}
