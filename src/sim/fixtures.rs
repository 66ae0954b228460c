//! The demo calendar, for the seed and the simulator alike: a match starts on the quarter
//! hour in its league's hours (`kick_off`), and no side (a team, a player) has two events
//! less than [`REST`] apart (`Fixtures`, `draw`). The simulator loads the calendar once per
//! finished match and draws in memory, with the same rule as the seed.

use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, Timelike, Utc};
use rand::Rng;
use rand::seq::IndexedRandom;
use sqlx::PgConnection;

use super::play::Play;
use super::{DemoSport, League};

/// The least time between the starts of two events of one side (a team, a player): far longer
/// than any demo match lasts, so that no side plays two matches at once (a bettor who sees
/// the Jets in two live games stops believing the rest), nor twice in an evening.
pub const REST: Duration = Duration::hours(12);

/// Draws for an event before two free sides are found; an event that finds none takes the
/// last draw anyway. Every [`DRAWS_PER_HORIZON`] draws, the horizon grows by three days: a
/// large data set spreads over more days rather than crowding them.
const DRAWS: usize = 100;
const DRAWS_PER_HORIZON: usize = 25;

/// The days ahead in which the `draw`th draw (from 0) may place an event.
fn horizon_days(draw: usize) -> i64 {
    3 * (1 + (draw / DRAWS_PER_HORIZON) as i64)
}

/// The longest horizon a draw reaches, in days.
pub const MAX_HORIZON_DAYS: i64 = 3 * (1 + ((DRAWS - 1) / DRAWS_PER_HORIZON) as i64);

/// A side as stored: `sport`, `is_esports`, the name (a player of two tours, or an
/// organisation in two esports titles, is one side).
type Side = (Option<String>, bool, String);

/// When each side plays.
#[derive(Default)]
pub(crate) struct Fixtures(HashMap<Side, Vec<DateTime<Utc>>>);

/// An active (live or upcoming) event, as the calendar sees it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Booked {
    pub id: String,
    pub sport: Option<String>,
    pub is_esports: bool,
    pub team_a: Option<String>,
    pub team_b: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub upcoming: bool,
}

impl Booked {
    /// Both sides, when the event names them.
    pub fn sides(&self) -> Option<[&str; 2]> {
        Some([self.team_a.as_deref()?, self.team_b.as_deref()?])
    }
}

impl Fixtures {
    /// The active events of the database, and their calendar.
    pub(crate) async fn load(conn: &mut PgConnection) -> anyhow::Result<(Self, Vec<Booked>)> {
        let active: Vec<Booked> = sqlx::query_as(
            "SELECT id, sport, is_esports, team_a, team_b, start_time,
                    event_type = 'upcoming' AS upcoming
               FROM events
              WHERE status = 'ACTIVE' AND event_type IN ('live', 'upcoming')",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut fixtures = Self::default();
        for event in &active {
            if let (Some(sides), Some(start)) = (event.sides(), event.start_time) {
                fixtures.book(event.sport.as_deref(), event.is_esports, sides, start);
            }
        }
        Ok((fixtures, active))
    }

    /// Whether neither side has an event less than [`REST`] from `at`, leaving out one that
    /// starts at `moved` (the event itself, when it is being moved to `at`).
    pub(crate) fn free(
        &self,
        sport: Option<&str>,
        is_esports: bool,
        sides: [&str; 2],
        at: DateTime<Utc>,
        moved: Option<DateTime<Utc>>,
    ) -> bool {
        sides.iter().all(|side| {
            self.0
                .get(&(sport.map(str::to_owned), is_esports, (*side).to_owned()))
                .is_none_or(|starts| {
                    starts
                        .iter()
                        .filter(|start| Some(**start) != moved)
                        .all(|start| (*start - at).abs() >= REST)
                })
        })
    }

    pub(crate) fn book(
        &mut self,
        sport: Option<&str>,
        is_esports: bool,
        sides: [&str; 2],
        at: DateTime<Utc>,
    ) {
        for side in sides {
            self.0
                .entry((sport.map(str::to_owned), is_esports, side.to_owned()))
                .or_default()
                .push(at);
        }
    }
}

/// A match drawn for the calendar.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drawn {
    pub league: &'static League,
    /// Named first, and at home where the league has home venues.
    pub home: &'static str,
    pub away: &'static str,
    /// Where the match stands if it is in play; `None` for an upcoming event.
    pub play: Option<Play>,
    pub start_time: DateTime<Utc>,
}

/// Draws a match of `sport` whose sides are free at its start, from up to [`DRAWS`] draws of
/// a league, two of its sides and (from `when`, given the days the draw may look ahead) the
/// play and start. With whether it is free: the last draw is taken when none was (more events
/// than the calendars hold, a benchmark's 10,000: the count matters more). `None` only for a
/// sport without leagues.
pub(crate) fn draw<R: Rng>(
    fixtures: &Fixtures,
    sport: &'static DemoSport,
    rng: &mut R,
    mut when: impl FnMut(
        &'static League,
        &'static str,
        &'static str,
        i64,
        &mut R,
    ) -> (Option<Play>, DateTime<Utc>),
) -> Option<(Drawn, bool)> {
    let mut last = None;
    for draw in 0..DRAWS {
        let league = sport.leagues.choose(rng)?;
        let (home, away) = league.draw_pair(rng);
        let (play, start_time) = when(league, home, away, horizon_days(draw), rng);
        let drawn = Drawn {
            league,
            home,
            away,
            play,
            start_time,
        };
        if fixtures.free(
            sport.sport,
            sport.is_esports,
            [home, away],
            start_time,
            None,
        ) {
            return Some((drawn, true));
        }
        last = Some(drawn);
    }
    last.map(|drawn| (drawn, false))
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
fn start_ahead(now: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
    let at = now + Duration::minutes(minutes + 15);
    at.duration_trunc(Duration::minutes(15)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::SPORTS;
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
        let (sport, other) = (Some("Football"), Some("Basketball"));
        let at = Utc::now();
        let mut fixtures = Fixtures::default();
        fixtures.book(sport, false, ["A", "B"], at);
        let free = |sides, when, moved| fixtures.free(sport, false, sides, when, moved);
        assert!(!free(["C", "A"], at + REST - Duration::minutes(15), None));
        assert!(!free(["B", "C"], at - REST + Duration::minutes(15), None));
        assert!(free(["A", "B"], at + REST, None));
        assert!(free(["C", "D"], at, None));
        // The event itself, moved to another start, is not in its own way.
        assert!(free(["A", "B"], at - Duration::hours(1), Some(at)));
        // The same names in another sport, or in esports, are other sides.
        assert!(fixtures.free(other, false, ["A", "B"], at, None));
        assert!(fixtures.free(sport, true, ["A", "B"], at, None));
    }

    #[test]
    fn a_draw_finds_free_sides_or_says_it_took_a_busy_one() {
        let mut rng = StdRng::seed_from_u64(1);
        let sport = &SPORTS[0];
        let at = Utc::now() + Duration::days(1);
        let mut fixtures = Fixtures::default();
        let (drawn, free) = draw(&fixtures, sport, &mut rng, |_, _, _, _, _| (None, at)).unwrap();
        assert!(free);
        // Every side of the sport busy at that time: the last draw, said to be busy.
        for league in sport.leagues {
            for team in league.teams {
                fixtures.book(sport.sport, sport.is_esports, [team.name, team.name], at);
            }
        }
        let (busy, free) = draw(&fixtures, sport, &mut rng, |_, _, _, _, _| (None, at)).unwrap();
        assert!(!free);
        assert_eq!((busy.start_time, drawn.start_time), (at, at));
        // The horizon given to `when` grows with the draws.
        let mut horizons = Vec::new();
        draw(&fixtures, sport, &mut rng, |_, _, _, days, _| {
            horizons.push(days);
            (None, at)
        });
        assert_eq!(horizons.len(), DRAWS);
        assert_eq!(horizons.first(), Some(&3));
        assert_eq!(horizons.last(), Some(&MAX_HORIZON_DAYS));
    }
}
