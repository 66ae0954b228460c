//! How a demo match is played, shown and read back: the state of play of each kind of
//! [`Game`], its `score` / `period` / `elapsed` columns, and one step of play at the rates of
//! the pricing model ([`Matchup`]).
//!
//! A step is a minute of a clock game, a game of tennis, a round of CS2 or Valorant, or a
//! minute of a LoL or Dota 2 map. Scores therefore come out the way the sport scores: goals a
//! few at a time, basketball a point or three per possession, American football in 3s and 7s,
//! tennis in games and sets, esports in rounds and maps.

use rand::Rng;

use super::inplay::Matchup;
use super::{Clock, Game, Scoring};

/// Where a match stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Play {
    /// A clock game (goals or points): minutes played and the score.
    Clock { minute: u32, home: u32, away: u32 },
    /// A best of three: sets (tennis) or maps (round-based esports) won, and the games or
    /// rounds of the one being played.
    Series {
        won: (u32, u32),
        current: (u32, u32),
    },
    /// A best of three maps on a clock: maps won and the minute of the current map.
    MapClock { won: (u32, u32), minute: u32 },
}

/// The event columns that show a state of play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scoreboard {
    /// Goals or points; sets; maps: `2-1`.
    pub score: String,
    /// `2nd half`, `Q3`, `P2`, `Set 2`, `Map 3`.
    pub period: String,
    /// `67'`, `5:00` left in the period, games `4-3` or rounds `7-5` of the current set or
    /// map, or the map's minute `23'`.
    pub elapsed: String,
}

/// A map on a clock (LoL, Dota 2) cannot end before this minute; after it, a base falls with a
/// chance of 12% a minute, so maps last 25-45 minutes.
const MAP_MINUTES_BEFORE_A_BASE_CAN_FALL: u32 = 25;

impl Play {
    /// Before the start.
    pub fn start(game: Game) -> Play {
        match game {
            Game::Goals { .. } | Game::Points { .. } => Play::Clock {
                minute: 0,
                home: 0,
                away: 0,
            },
            Game::Sets { .. } | Game::RoundMaps { .. } => Play::Series {
                won: (0, 0),
                current: (0, 0),
            },
            Game::ClockMaps => Play::MapClock {
                won: (0, 0),
                minute: 0,
            },
        }
    }

    /// Whether the match is over (full time, or two sets or maps won).
    pub fn is_over(&self, game: Game) -> bool {
        match (*self, game) {
            (
                Play::Clock { minute, .. },
                Game::Goals { minutes, .. } | Game::Points { minutes, .. },
            ) => minute >= minutes,
            (Play::Series { won, .. } | Play::MapClock { won, .. }, _) => won.0 >= 2 || won.1 >= 2,
            (Play::Clock { .. }, _) => true,
        }
    }

    /// The outcome (index in display order) that won a finished match; `None` for a points
    /// game tied at full time, which overtime would settle.
    pub fn winner(&self, game: Game) -> Option<usize> {
        let (home, away) = match *self {
            Play::Clock { home, away, .. } => (home, away),
            Play::Series { won, .. } | Play::MapClock { won, .. } => won,
        };
        match (game, home.cmp(&away)) {
            (_, std::cmp::Ordering::Greater) => Some(0),
            (Game::Goals { .. }, std::cmp::Ordering::Equal) => Some(1),
            (Game::Goals { .. }, std::cmp::Ordering::Less) => Some(2),
            (_, std::cmp::Ordering::Less) => Some(1),
            (_, std::cmp::Ordering::Equal) => None,
        }
    }

    /// How long the match has been going, roughly, for a start time.
    pub fn minutes_played(&self, game: Game) -> u32 {
        match (*self, game) {
            (Play::Clock { minute, .. }, _) => minute,
            // A game of tennis takes about four minutes, a round of CS2 about two.
            (Play::Series { won, current }, Game::Sets { .. }) => {
                (won.0 + won.1) * 40 + (current.0 + current.1) * 4
            }
            (Play::Series { won, current }, _) => {
                (won.0 + won.1) * 45 + (current.0 + current.1) * 2
            }
            (Play::MapClock { won, minute }, _) => (won.0 + won.1) * 40 + minute,
        }
    }

    /// The columns that show this state.
    pub fn scoreboard(&self, game: Game) -> Scoreboard {
        match *self {
            Play::Clock { minute, home, away } => {
                let (minutes, periods, clock) = clock_layout(game);
                let length = (minutes / periods.len().max(1) as u32).max(1);
                let (index, elapsed) = match clock {
                    // The 45th minute is still the first half.
                    Clock::Up => (minute.saturating_sub(1) / length, format!("{minute}'")),
                    Clock::Down => {
                        let index = (minute / length).min(periods.len() as u32 - 1);
                        let left = (index + 1) * length;
                        (index, format!("{}:00", left.saturating_sub(minute)))
                    }
                };
                let index = (index as usize).min(periods.len() - 1);
                Scoreboard {
                    score: format!("{home}-{away}"),
                    period: periods[index].to_string(),
                    elapsed,
                }
            }
            Play::Series { won, current } => Scoreboard {
                score: format!("{}-{}", won.0, won.1),
                period: format!("{} {}", leg_name(game), won.0 + won.1 + 1),
                elapsed: format!("{}-{}", current.0, current.1),
            },
            Play::MapClock { won, minute } => Scoreboard {
                score: format!("{}-{}", won.0, won.1),
                period: format!("Map {}", won.0 + won.1 + 1),
                elapsed: format!("{minute}'"),
            },
        }
    }

    /// Reads the columns written by [`Play::scoreboard`] back; `None` when they do not show a
    /// state of `game` (an event not made by the demo, or not started), or show numbers no
    /// match reaches (so stepping on from them cannot overflow).
    pub fn parse(game: Game, score: &str, period: &str, elapsed: &str) -> Option<Play> {
        let play = Play::parse_any(game, score, period, elapsed)?;
        let numbers = match play {
            Play::Clock { minute, home, away } => [minute, home, away, 0],
            Play::Series { won, current } => [won.0, won.1, current.0, current.1],
            Play::MapClock { won, minute } => [won.0, won.1, minute, 0],
        };
        numbers.iter().all(|n| *n <= 10_000).then_some(play)
    }

    fn parse_any(game: Game, score: &str, period: &str, elapsed: &str) -> Option<Play> {
        let score = pair(score)?;
        match game {
            Game::Goals { .. } | Game::Points { .. } => {
                let (minutes, periods, clock) = clock_layout(game);
                let minute = match clock {
                    Clock::Up => elapsed.trim().trim_end_matches('\'').parse().ok()?,
                    Clock::Down => {
                        let length = minutes / periods.len().max(1) as u32;
                        let index = periods.iter().position(|p| *p == period.trim())? as u32;
                        let (left, seconds) = elapsed.trim().split_once(':')?;
                        let left: u32 = left.parse().ok()?;
                        let seconds: u32 = seconds.parse().ok()?;
                        ((index + 1) * length).saturating_sub(left + u32::from(seconds > 0))
                    }
                };
                Some(Play::Clock {
                    minute,
                    home: score.0,
                    away: score.1,
                })
            }
            Game::Sets { .. } | Game::RoundMaps { .. } => Some(Play::Series {
                won: score,
                current: pair(elapsed)?,
            }),
            Game::ClockMaps => Some(Play::MapClock {
                won: score,
                minute: elapsed.trim().trim_end_matches('\'').parse().ok()?,
            }),
        }
    }

    /// One step of play: a minute, a game of tennis, a round. A state that does not belong to
    /// `game` starts it instead.
    pub fn step(&self, matchup: &Matchup, rng: &mut impl Rng) -> Play {
        let game = matchup.game;
        let play = if self.belongs_to(game) {
            *self
        } else {
            Play::start(game)
        };
        match (play, game) {
            (Play::Clock { minute, home, away }, Game::Goals { minutes, .. }) => {
                let (home_rate, away_rate) = matchup.goal_rates();
                let per_minute = |rate: f64| (rate / f64::from(minutes.max(1))).clamp(0.0, 1.0);
                Play::Clock {
                    minute: minute + 1,
                    home: home + u32::from(rng.random_bool(per_minute(home_rate))),
                    away: away + u32::from(rng.random_bool(per_minute(away_rate))),
                }
            }
            (Play::Clock { minute, home, away }, Game::Points { scoring, .. }) => {
                let (home_rate, away_rate) = matchup.points_per_minute();
                Play::Clock {
                    minute: minute + 1,
                    home: home + points_in_a_minute(scoring, home_rate, rng),
                    away: away + points_in_a_minute(scoring, away_rate, rng),
                }
            }
            (Play::Series { won, current }, Game::Sets { .. }) => {
                let (home, away) = current;
                let home_takes_it = if current == (6, 6) {
                    rng.random_bool(matchup.tiebreak_win())
                } else {
                    let (hold_home, hold_away) = matchup.hold_rates();
                    if (won.0 + won.1 + home + away).is_multiple_of(2) {
                        rng.random_bool(hold_home)
                    } else {
                        !rng.random_bool(hold_away)
                    }
                };
                let games = if home_takes_it {
                    (home + 1, away)
                } else {
                    (home, away + 1)
                };
                let set_over = |a: u32, b: u32| a >= 6 && a >= b + 2 || a >= 7 && a > b;
                series_step(
                    won,
                    games,
                    set_over(games.0, games.1),
                    set_over(games.1, games.0),
                )
            }
            (Play::Series { won, current }, Game::RoundMaps { rounds }) => {
                let (home, away) = if rng.random_bool(matchup.round_win()) {
                    (current.0 + 1, current.1)
                } else {
                    (current.0, current.1 + 1)
                };
                series_step(
                    won,
                    (home, away),
                    home >= rounds && home > away,
                    away >= rounds && away > home,
                )
            }
            (Play::MapClock { won, minute }, _) => {
                let minute = minute + 1;
                if minute >= MAP_MINUTES_BEFORE_A_BASE_CAN_FALL && rng.random_bool(0.12) {
                    let won = if rng.random_bool(matchup.map_win()) {
                        (won.0 + 1, won.1)
                    } else {
                        (won.0, won.1 + 1)
                    };
                    Play::MapClock { won, minute: 0 }
                } else {
                    Play::MapClock { won, minute }
                }
            }
            // `belongs_to` rules the rest out; a state that still got here stays as it is.
            (other, _) => other,
        }
    }

    /// A match some way into play, for seeding live events: played step by step from the
    /// start, so its score is one the sport produces, and stopped before it finishes.
    pub fn in_progress(matchup: &Matchup, rng: &mut impl Rng) -> Play {
        let game = matchup.game;
        let steps = match game {
            Game::Goals { minutes, .. } | Game::Points { minutes, .. } => {
                rng.random_range(1..minutes.max(2))
            }
            Game::Sets { .. } => rng.random_range(1..30),
            Game::RoundMaps { .. } => rng.random_range(1..50),
            Game::ClockMaps => rng.random_range(1..90),
        };
        let mut play = Play::start(game);
        for _ in 0..steps {
            let next = play.step(matchup, rng);
            if next.is_over(game) {
                break;
            }
            play = next;
        }
        play
    }

    fn belongs_to(&self, game: Game) -> bool {
        matches!(
            (self, game),
            (Play::Clock { .. }, Game::Goals { .. } | Game::Points { .. })
                | (
                    Play::Series { .. },
                    Game::Sets { .. } | Game::RoundMaps { .. }
                )
                | (Play::MapClock { .. }, Game::ClockMaps)
        )
    }
}

/// Length, period names and clock style of a clock game (a regulation football match for
/// any other game).
fn clock_layout(game: Game) -> (u32, &'static [&'static str], Clock) {
    match game {
        Game::Goals {
            minutes,
            periods,
            clock,
            ..
        } if !periods.is_empty() => (minutes, periods, clock),
        Game::Points {
            minutes, periods, ..
        } if !periods.is_empty() => (minutes, periods, Clock::Down),
        _ => (90, &["1st half", "2nd half"], Clock::Up),
    }
}

/// What a set or a map is called.
fn leg_name(game: Game) -> &'static str {
    match game {
        Game::Sets { .. } => "Set",
        _ => "Map",
    }
}

/// `2-1` as (2, 1).
fn pair(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Mean and root mean square of the points a score is worth, as [`points_in_a_minute`]
/// plays them.
pub fn score_size(scoring: Scoring) -> (f64, f64) {
    match scoring {
        // 3 × 30%, 2 × 62%, 1 × 8%.
        Scoring::Basketball => (2.22, 5.26f64.sqrt()),
        // 7 × 60%, 3 × 40%.
        Scoring::Gridiron => (5.4, 33.0f64.sqrt()),
    }
}

/// Points one side scores in a minute in which it expects `expected` points: each of its
/// chances ([`chances_a_minute`]) scores with [`scoring_chance`], worth what the sport's
/// scores are worth ([`score_size`]).
fn points_in_a_minute(scoring: Scoring, expected: f64, rng: &mut impl Rng) -> u32 {
    let chance = scoring_chance(scoring, expected);
    let mut points = 0;
    for _ in 0..chances_a_minute(scoring) {
        if rng.random_bool(chance) {
            points += match scoring {
                // 3 (30%), 2 (62%) or 1 (8%).
                Scoring::Basketball => match rng.random_range(0..100) {
                    0..30 => 3,
                    30..92 => 2,
                    _ => 1,
                },
                // A touchdown with the extra point (60%) or a field goal.
                Scoring::Gridiron => {
                    if rng.random_bool(0.6) {
                        7
                    } else {
                        3
                    }
                }
            };
        }
    }
    points
}

/// Scoring chances a side has in a minute: two possessions in basketball, one drive's end in
/// American football.
fn chances_a_minute(scoring: Scoring) -> u32 {
    match scoring {
        Scoring::Basketball => 2,
        Scoring::Gridiron => 1,
    }
}

/// The chance that one of them scores, in a minute in which the side expects `expected`.
fn scoring_chance(scoring: Scoring, expected: f64) -> f64 {
    (expected / f64::from(chances_a_minute(scoring)) / score_size(scoring).0).clamp(0.0, 1.0)
}

/// The variance of the points a side scores in a minute in which it expects `expected`, as
/// [`Play::step`] plays it (the mean is `expected`, while no chance is certain).
pub fn minute_points_variance(scoring: Scoring, expected: f64) -> f64 {
    let (size, rms) = score_size(scoring);
    let chance = scoring_chance(scoring, expected);
    f64::from(chances_a_minute(scoring)) * (chance * rms * rms - (chance * size).powi(2))
}

/// A series once its current unit (set, map) stands at `current`: a side that took the unit
/// wins one more and the next unit starts at 0-0.
fn series_step(won: (u32, u32), current: (u32, u32), home_took: bool, away_took: bool) -> Play {
    if home_took {
        Play::Series {
            won: (won.0 + 1, won.1),
            current: (0, 0),
        }
    } else if away_took {
        Play::Series {
            won: (won.0, won.1 + 1),
            current: (0, 0),
        }
    } else {
        Play::Series { won, current }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SPORTS, league};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn every_league() -> impl Iterator<Item = &'static crate::sim::League> {
        SPORTS.iter().flat_map(|sport| sport.leagues.iter())
    }

    #[test]
    fn the_scoreboard_reads_back() {
        let mut rng = StdRng::seed_from_u64(1);
        for league in every_league() {
            let (home, away) = league.draw_pair(&mut rng);
            let matchup = league.matchup(home, away);
            let mut play = Play::start(league.game);
            while !play.is_over(league.game) {
                let board = play.scoreboard(league.game);
                assert_eq!(
                    Play::parse(league.game, &board.score, &board.period, &board.elapsed),
                    Some(play),
                    "{}: {board:?}",
                    league.name
                );
                play = play.step(&matchup, &mut rng);
            }
        }
    }

    #[test]
    fn absurd_columns_are_not_read() {
        let nba = league(Some("Basketball"), false, "NBA").unwrap().game;
        assert_eq!(Play::parse(nba, "4294967295-1", "Q1", "12:00"), None);
        assert_eq!(Play::parse(nba, "1-1", "Q5", "12:00"), None);
        assert_eq!(Play::parse(nba, "YES", "Q1", "12:00"), None);
        let cs2 = league(None, true, "CS2 Major").unwrap().game;
        assert_eq!(Play::parse(cs2, "0-0", "Map 1", "99999-0"), None);
    }

    #[test]
    fn a_minutes_points_have_the_mean_and_variance_the_tests_bound_them_by() {
        let mut rng = StdRng::seed_from_u64(3);
        for (scoring, expected) in [
            (Scoring::Basketball, 114.0 / 48.0),
            (Scoring::Gridiron, 22.0 / 60.0),
            (Scoring::Gridiron, 30.0 / 60.0),
        ] {
            let samples: Vec<f64> = (0..200_000)
                .map(|_| f64::from(points_in_a_minute(scoring, expected, &mut rng)))
                .collect();
            let mean = samples.iter().sum::<f64>() / samples.len() as f64;
            let variance =
                samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / samples.len() as f64;
            let model = minute_points_variance(scoring, expected);
            assert!((mean - expected).abs() < 0.02, "{scoring:?}: mean {mean}");
            assert!(
                (variance / model - 1.0).abs() < 0.03,
                "{scoring:?}: variance {variance} against {model}"
            );
        }
    }

    #[test]
    fn clocks_show_as_the_sport_does() {
        let football = league(Some("Football"), false, "La Liga").unwrap().game;
        let board = |game, minute| {
            Play::Clock {
                minute,
                home: 2,
                away: 1,
            }
            .scoreboard(game)
        };
        assert_eq!(
            board(football, 45),
            Scoreboard {
                score: "2-1".into(),
                period: "1st half".into(),
                elapsed: "45'".into()
            }
        );
        assert_eq!(board(football, 67).period, "2nd half");
        let nba = league(Some("Basketball"), false, "NBA").unwrap().game;
        assert_eq!(
            (board(nba, 31).period, board(nba, 31).elapsed),
            ("Q3".into(), "5:00".into())
        );
        assert_eq!(
            (board(nba, 0).period, board(nba, 0).elapsed),
            ("Q1".into(), "12:00".into())
        );
        let nhl = league(Some("Ice Hockey"), false, "NHL").unwrap().game;
        assert_eq!(
            (board(nhl, 20).period, board(nhl, 20).elapsed),
            ("P2".into(), "20:00".into())
        );
        let atp = league(Some("Tennis"), false, "ATP Finals").unwrap().game;
        let set_two = Play::Series {
            won: (1, 0),
            current: (4, 3),
        };
        assert_eq!(
            (
                set_two.scoreboard(atp).period,
                set_two.scoreboard(atp).elapsed
            ),
            ("Set 2".into(), "4-3".into())
        );
    }

    #[test]
    fn whole_matches_end_with_the_scores_of_their_sport() {
        let mut rng = StdRng::seed_from_u64(7);
        for league in every_league() {
            let mut totals = Vec::new();
            for _ in 0..200 {
                let (home, away) = league.draw_pair(&mut rng);
                let matchup = league.matchup(home, away);
                let mut play = Play::start(league.game);
                let mut steps = 0;
                while !play.is_over(league.game) {
                    play = play.step(&matchup, &mut rng);
                    steps += 1;
                    assert!(steps < 1000, "{}: never ends", league.name);
                }
                match play {
                    Play::Clock { home, away, .. } => totals.push(f64::from(home + away) / 2.0),
                    Play::Series { won, .. } | Play::MapClock { won, .. } => {
                        assert!(won == (2, 0) || won == (2, 1) || won == (0, 2) || won == (1, 2))
                    }
                }
                if let Game::Points {
                    scoring: Scoring::Gridiron,
                    ..
                } = league.game
                    && let Play::Clock { home, away, .. } = play
                {
                    assert!(made_of_threes_and_sevens(home) && made_of_threes_and_sevens(away));
                }
            }
            if let Game::Goals { goals_per_team, .. }
            | Game::Points {
                points_per_team: goals_per_team,
                ..
            } = league.game
            {
                let mean = totals.iter().sum::<f64>() / totals.len() as f64;
                assert!(
                    (mean - goals_per_team).abs() < goals_per_team * 0.2,
                    "{}: {mean} a side",
                    league.name
                );
            }
        }
    }

    fn made_of_threes_and_sevens(points: u32) -> bool {
        (0..=points / 7).any(|touchdowns| (points - touchdowns * 7).is_multiple_of(3))
    }
}
