//! The demo's in-play pricing model, as pure functions: from the two sides' strengths, the
//! score and the clock to the fair probabilities of the market, then to a bookmaker's prices
//! (implied probabilities with an overround). The simulator writes these as the external
//! reference prices; the publisher blends them with pending bets (docs/PROTOCOL.md).
//!
//! - Goals (football, ice hockey; home/draw/away): the goals still to come are Poisson, with
//!   means proportional to the time left.
//! - Points (basketball, American football; two-way, a tie goes to overtime): the final
//!   margin is about normal around `lead + expected margin × time left`, with a spread that
//!   shrinks with the square root of the time left; a logistic stands in for the normal CDF.
//! - Series (tennis sets of games, esports maps of rounds or on a clock): exact recursions
//!   over the games, rounds or maps still needed.
//!
//! The simulator plays matches with the same rates ([`Matchup`]), so the prices are honest
//! about the data they are shown next to.

use super::Game;
use super::play::{Play, score_size};

/// Least fair probability an outcome is given: nothing is ever quite impossible to a
/// bookmaker, and a price of 0 would be an infinite odd.
pub const MIN_PROBABILITY: f64 = 0.001;

/// Highest implied probability (decimal odds 1.0101): a near-certainty still pays 1.01.
pub const MAX_PRICE: f64 = 0.99;

/// The bookmaker margin the simulator prices with (overround: implied probabilities sum to
/// 1.05).
pub const DEMO_MARGIN: f64 = 0.05;

/// Logistic scale that makes `1 / (1 + e^(-k·z))` follow the standard normal CDF within 0.01.
const LOGISTIC_NORMAL: f64 = 1.702;

/// Two sides of an event in one game, and the rates that follow from their strengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matchup {
    /// How the event is played and scored.
    pub game: Game,
    /// Home (first-named) rating minus away rating; about -2 ..= 2.
    pub rating_difference: f64,
    /// Whether the first-named side plays at home (not at neutral tennis or esports venues).
    pub home_venue: bool,
}

impl Matchup {
    /// Expected goals of each side over a whole match (Goals games).
    pub fn goal_rates(&self) -> (f64, f64) {
        let Game::Goals {
            goals_per_team,
            goals_per_rating,
            home_edge,
            ..
        } = self.game
        else {
            return (0.0, 0.0);
        };
        let edge = if self.home_venue { home_edge } else { 1.0 };
        let skill = (goals_per_rating * self.rating_difference / 2.0).exp();
        (goals_per_team * skill * edge, goals_per_team / skill / edge)
    }

    /// Expected final margin (home minus away) over a whole match (Points games).
    pub fn expected_margin(&self) -> f64 {
        let Game::Points {
            spread_per_rating,
            home_edge,
            ..
        } = self.game
        else {
            return 0.0;
        };
        spread_per_rating * self.rating_difference + if self.home_venue { home_edge } else { 0.0 }
    }

    /// Points each side expects a minute (Points games): the league's average moved by half
    /// the expected margin, never below 0.
    pub fn points_per_minute(&self) -> (f64, f64) {
        let Game::Points {
            minutes,
            points_per_team,
            ..
        } = self.game
        else {
            return (0.0, 0.0);
        };
        let half_margin = self.expected_margin() / 2.0;
        let per_minute = |points: f64| points.max(0.0) / f64::from(minutes.max(1));
        (
            per_minute(points_per_team + half_margin),
            per_minute(points_per_team - half_margin),
        )
    }

    /// Probability that each side holds its serve (tennis).
    pub fn hold_rates(&self) -> (f64, f64) {
        let Game::Sets { hold } = self.game else {
            return (0.5, 0.5);
        };
        let shift = 0.08 * self.rating_difference;
        (
            (hold + shift).clamp(0.3, 0.97),
            (hold - shift).clamp(0.3, 0.97),
        )
    }

    /// Probability that the home side wins a tiebreak (tennis).
    pub fn tiebreak_win(&self) -> f64 {
        let (home, away) = self.hold_rates();
        (0.5 + (home - away)).clamp(0.1, 0.9)
    }

    /// Probability that the home side wins a round (round-based esports).
    pub fn round_win(&self) -> f64 {
        (0.5 + 0.05 * self.rating_difference).clamp(0.2, 0.8)
    }

    /// Probability that the home side wins a map (esports on a clock).
    pub fn map_win(&self) -> f64 {
        (0.5 + 0.2 * self.rating_difference).clamp(0.1, 0.9)
    }
}

/// Fair probabilities of the market's outcomes, in display order (home, draw, away for Goals
/// games; home, away otherwise): each at least [`MIN_PROBABILITY`], summing to 1.
///
/// A play that does not belong to the game (foreign data) is priced as not yet started.
pub fn fair_probabilities(matchup: &Matchup, play: &Play) -> Vec<f64> {
    let raw = match (matchup.game, *play) {
        (Game::Goals { minutes, .. }, Play::Clock { minute, home, away }) => {
            let left = time_left(minute, minutes);
            let (home_rate, away_rate) = matchup.goal_rates();
            goals_market(home, away, home_rate * left, away_rate * left)
        }
        (
            Game::Points {
                minutes,
                margin_sd,
                points_per_team,
                scoring,
                ..
            },
            Play::Clock { minute, home, away },
        ) => {
            let left = time_left(minute, minutes);
            let lead = f64::from(home) - f64::from(away);
            // The spread shrinks with the square root of the time left, but while another
            // score is likely, a lead smaller than one score is not safe (a touchdown is 7):
            // the spread keeps the size of a score, weighted by the chance that one comes.
            let (mean_score, score_rms) = score_size(scoring);
            let scores_left = 2.0 * points_per_team / mean_score * left;
            let spread = (margin_sd.powi(2) * left
                + score_rms.powi(2) * (1.0 - (-scores_left).exp()))
            .sqrt()
            .max(1e-9);
            let z = (lead + matchup.expected_margin() * left) / spread;
            let home_wins = 1.0 / (1.0 + (-LOGISTIC_NORMAL * z).exp());
            vec![home_wins, 1.0 - home_wins]
        }
        (Game::Sets { .. }, Play::Series { won, current }) => {
            let set_index = won.0.saturating_add(won.1);
            let now = set_win(matchup, current, set_index % 2 == 0);
            let fresh = (set_win(matchup, (0, 0), true) + set_win(matchup, (0, 0), false)) / 2.0;
            let home_wins = series_win(won, 2, now, fresh);
            vec![home_wins, 1.0 - home_wins]
        }
        (Game::RoundMaps { rounds }, Play::Series { won, current }) => {
            let round = matchup.round_win();
            let now = race_from(current, rounds, round);
            let fresh = race(rounds, rounds, round);
            let home_wins = series_win(won, 2, now, fresh);
            vec![home_wins, 1.0 - home_wins]
        }
        (Game::ClockMaps, Play::MapClock { won, .. }) => {
            let map = matchup.map_win();
            let home_wins = series_win(won, 2, map, map);
            vec![home_wins, 1.0 - home_wins]
        }
        (game, _) => return fair_probabilities(matchup, &Play::start(game)),
    };
    floor_and_normalise(&raw)
}

/// A bookmaker's prices from fair probabilities: implied probabilities that sum to
/// `1 +` [`overround`]`(fair, margin)`, each in [`MIN_PROBABILITY`], [`MAX_PRICE`].
///
/// The overround is spread by the power method (`price_i = fair_i^k`, one `k` ≤ 1 for the
/// market), so long shots carry more of it than favourites, as in real books, and no price
/// passes 1. A favourite that would pass [`MAX_PRICE`] is held there and the rest goes to the
/// others.
pub fn with_margin(fair: &[f64], margin: f64) -> Vec<f64> {
    let fair = floor_and_normalise(fair);
    let target = 1.0 + overround(&fair, margin);
    let total = |k: f64| -> f64 { fair.iter().map(|p| p.powf(k).min(MAX_PRICE)).sum() };
    // The total falls as k rises: n × MAX_PRICE (≥ 1.98) near k = 0, at most 1 at k = 1.
    let (mut low, mut high) = (1e-6, 1.0);
    for _ in 0..100 {
        let mid = (low + high) / 2.0;
        if total(mid) > target {
            low = mid;
        } else {
            high = mid;
        }
    }
    let k = (low + high) / 2.0;
    fair.iter().map(|p| p.powf(k).min(MAX_PRICE)).collect()
}

/// The overround a book carries on these fair probabilities: all of `margin` (clamped to
/// 0 ..= 0.5) while no outcome is above 75%, then less and less as the favourite nears
/// certainty, to none at all. A favourite at 1.01 cannot carry any of it, and loading it all
/// onto the long shots would offer 35 on a draw at 0-5 in the 81st minute; real books thin
/// their margin on decided markets instead.
pub fn overround(fair: &[f64], margin: f64) -> f64 {
    let favourite = fair.iter().copied().fold(0.0, f64::max);
    margin.clamp(0.0, 0.5) * ((1.0 - favourite) / 0.25).clamp(0.0, 1.0)
}

/// Fair probabilities moved by `noise` (one value per outcome, a change of log-probability,
/// e.g. uniform in ±0.04): the simulator's drift around the model price.
pub fn jitter(fair: &[f64], noise: &[f64]) -> Vec<f64> {
    let moved: Vec<f64> = fair
        .iter()
        .zip(noise.iter().chain(std::iter::repeat(&0.0)))
        .map(|(p, n)| p * n.clamp(-1.0, 1.0).exp())
        .collect();
    floor_and_normalise(&moved)
}

/// Decimal odds of an implied probability.
pub fn decimal_odds(price: f64) -> f64 {
    1.0 / price
}

/// Share of a `minutes`-long match still to play after `minute`: 1 before kick-off, 0 at or
/// past full time.
fn time_left(minute: u32, minutes: u32) -> f64 {
    let minutes = minutes.max(1);
    f64::from(minutes.saturating_sub(minute)) / f64::from(minutes)
}

/// Probabilities scaled to sum to 1, with none below [`MIN_PROBABILITY`]: the ones below are
/// set to it and the rest scaled down to make room (repeatedly, as that can push another
/// below). Applying it twice changes nothing. Anything not a number counts as 0.
fn floor_and_normalise(raw: &[f64]) -> Vec<f64> {
    let finite: Vec<f64> = raw
        .iter()
        .map(|p| if p.is_finite() { p.max(0.0) } else { 0.0 })
        .collect();
    let sum: f64 = finite.iter().sum();
    if finite.is_empty() || sum <= 0.0 {
        return vec![1.0 / raw.len() as f64; raw.len()];
    }
    let mut floored = vec![false; finite.len()];
    loop {
        let room = 1.0 - MIN_PROBABILITY * floored.iter().filter(|f| **f).count() as f64;
        let free: f64 = finite
            .iter()
            .zip(&floored)
            .filter(|(_, f)| !**f)
            .map(|(p, _)| p)
            .sum();
        let scale = if free > 0.0 { room / free } else { 0.0 };
        let mut changed = false;
        for (p, f) in finite.iter().zip(floored.iter_mut()) {
            if !*f && p * scale < MIN_PROBABILITY {
                *f = true;
                changed = true;
            }
        }
        if !changed {
            return finite
                .iter()
                .zip(&floored)
                .map(|(p, f)| if *f { MIN_PROBABILITY } else { p * scale })
                .collect();
        }
    }
}

/// Home, draw and away probabilities at `home`-`away` with Poisson(`home_mean`) and
/// Poisson(`away_mean`) goals still to come.
fn goals_market(home: u32, away: u32, home_mean: f64, away_mean: f64) -> Vec<f64> {
    let home_more = poisson(home_mean);
    let away_more = poisson(away_mean);
    let lead = i64::from(home) - i64::from(away);
    let mut market = [0.0; 3];
    for (i, p) in home_more.iter().enumerate() {
        for (j, q) in away_more.iter().enumerate() {
            let outcome = match (lead + i as i64 - j as i64).signum() {
                1 => 0,
                0 => 1,
                _ => 2,
            };
            market[outcome] += p * q;
        }
    }
    market.to_vec()
}

/// Poisson probabilities of 0, 1, ... goals, far enough into the tail for any match.
fn poisson(mean: f64) -> Vec<f64> {
    let mean = if mean.is_finite() { mean.max(0.0) } else { 0.0 };
    let terms = 20 + (mean * 4.0).ceil().min(200.0) as usize;
    let mut out = Vec::with_capacity(terms);
    let mut p = (-mean).exp();
    for k in 0..terms {
        out.push(p);
        p *= mean / (k + 1) as f64;
    }
    out
}

/// Probability that the home side wins a best-of-(2·need − 1) series from `won` (sets or
/// maps), winning the one being played with `now` and each later one with `fresh`.
fn series_win(won: (u32, u32), need: u32, now: f64, fresh: f64) -> f64 {
    let (home, away) = won;
    if home >= need && home > away {
        return 1.0;
    }
    if away >= need && away > home {
        return 0.0;
    }
    // A tied impossible score (2-2 in a best of three) is settled by the one being played.
    let home_needs = need.saturating_sub(home).max(1);
    let away_needs = need.saturating_sub(away).max(1);
    now * race(home_needs - 1, away_needs, fresh)
        + (1.0 - now) * race(home_needs, away_needs - 1, fresh)
}

/// Probability that the home side wins `home_needs` points before the away side wins
/// `away_needs`, winning each with `p`.
fn race(home_needs: u32, away_needs: u32, p: f64) -> f64 {
    if home_needs == 0 {
        return 1.0;
    }
    if away_needs == 0 {
        return 0.0;
    }
    // Home wins the race in the game where it takes its last point, having lost k < away_needs.
    let (n, q) = (f64::from(home_needs), 1.0 - p);
    let mut term = p.powf(n); // k = 0: C(n-1, 0) pⁿ
    let mut total = term;
    for k in 1..away_needs {
        let k = f64::from(k);
        term *= (n - 1.0 + k) / k * q;
        total += term;
    }
    total.clamp(0.0, 1.0)
}

/// A race to `target` rounds from the current score (a map of round-based esports).
fn race_from(score: (u32, u32), target: u32, p: f64) -> f64 {
    let (home, away) = score;
    if home >= target && home > away {
        return 1.0;
    }
    if away >= target && away > home {
        return 0.0;
    }
    race(
        target.saturating_sub(home).max(1),
        target.saturating_sub(away).max(1),
        p,
    )
}

/// Probability that the home player wins a tennis set from `games`, serving the next game if
/// `home_serves_first` says the set's first game was theirs.
fn set_win(matchup: &Matchup, games: (u32, u32), home_serves_first: bool) -> f64 {
    let (hold_home, hold_away) = matchup.hold_rates();
    let tiebreak = matchup.tiebreak_win();
    let mut memo = [[None; 8]; 8];
    set_from(
        games,
        home_serves_first,
        (hold_home, hold_away, tiebreak),
        &mut memo,
    )
}

fn set_from(
    (home, away): (u32, u32),
    home_serves_first: bool,
    rates @ (hold_home, hold_away, tiebreak): (f64, f64, f64),
    memo: &mut [[Option<f64>; 8]; 8],
) -> f64 {
    if home >= 6 && home >= away + 2 || home >= 7 && home > away {
        return 1.0;
    }
    if away >= 6 && away >= home + 2 || away >= 7 && away > home {
        return 0.0;
    }
    if home >= 6 && away >= 6 {
        return tiebreak;
    }
    // Here both are at most 6 (a 6-5 or 5-6 at the most), so the memo is indexable.
    let (i, j) = (home as usize, away as usize);
    if let Some(p) = memo[i][j] {
        return p;
    }
    let home_serves = home_serves_first == (home + away).is_multiple_of(2);
    let game = if home_serves {
        hold_home
    } else {
        1.0 - hold_away
    };
    let p = game * set_from((home + 1, away), home_serves_first, rates, memo)
        + (1.0 - game) * set_from((home, away + 1), home_serves_first, rates, memo);
    memo[i][j] = Some(p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SPORTS, league};
    use proptest::prelude::*;

    fn football(rating_difference: f64) -> Matchup {
        Matchup {
            game: league(Some("Football"), false, "Premier League")
                .unwrap()
                .game,
            rating_difference,
            home_venue: true,
        }
    }

    fn book_odds(matchup: &Matchup, play: &Play) -> Vec<f64> {
        with_margin(&fair_probabilities(matchup, play), DEMO_MARGIN)
            .into_iter()
            .map(decimal_odds)
            .collect()
    }

    fn clock(minute: u32, home: u32, away: u32) -> Play {
        Play::Clock { minute, home, away }
    }

    #[test]
    fn a_football_lead_is_worth_more_as_time_runs_out() {
        let matchup = football(0.0);
        let odds: Vec<Vec<f64>> = [10, 45, 80, 89]
            .iter()
            .map(|&minute| book_odds(&matchup, &clock(minute, 1, 0)))
            .collect();
        for (i, pair) in odds.windows(2).enumerate() {
            let (earlier, later) = (&pair[0], &pair[1]);
            assert!(later[0] < earlier[0], "home shortens: {odds:?}");
            assert!(later[2] > earlier[2], "away lengthens: {odds:?}");
            // Early on the draw may even shorten a little, as in real markets: the trailing
            // side's chance of winning outright falls faster than its chance of levelling.
            if i > 0 {
                assert!(later[1] > earlier[1], "draw lengthens: {odds:?}");
            }
        }
        assert!(
            odds[3][1] > 3.0 * odds[0][1],
            "draw at 89' against 10': {odds:?}"
        );
        assert!(
            odds[0][0] > 1.3,
            "10': a one-goal lead is far from won: {odds:?}"
        );
        assert!(odds[3][0] < 1.05, "89': home is nearly certain: {odds:?}");
    }

    #[test]
    fn the_issues_absurd_prices_are_gone() {
        let matchup = football(0.0);
        let goalless = book_odds(&matchup, &clock(89, 0, 0));
        assert!(goalless[1] < 1.5, "0-0 at 89': draw {goalless:?}");
        let rout = book_odds(&matchup, &clock(76, 0, 3));
        assert!(rout[0] > 20.0, "0-3 down at 76': home {rout:?}");
        assert!(rout[2] < 1.05, "3-0 up at 76': away {rout:?}");
        // A decided market: the favourite at the floor, the long shots long, not loaded with
        // the margin the favourite cannot carry.
        let decided = book_odds(&matchup, &clock(81, 0, 5));
        assert!(decided[2] < 1.0102, "{decided:?}");
        assert!(decided[0] > 100.0 && decided[1] > 100.0, "{decided:?}");
        // Even the strongest side against the weakest.
        let rout = book_odds(&football(2.0), &clock(76, 0, 3));
        assert!(rout[0] > 20.0, "0-3 down at 76': home {rout:?}");
    }

    #[test]
    fn pre_match_prices_follow_strength_and_home_advantage() {
        let even = book_odds(&football(0.0), &Play::start(football(0.0).game));
        assert!(even[0] < even[2], "home advantage: {even:?}");
        assert!((2.0..3.2).contains(&even[0]), "{even:?}");
        assert!((3.0..4.2).contains(&even[1]), "{even:?}");
        let mismatch = book_odds(&football(1.6), &Play::start(football(0.0).game));
        assert!(mismatch[0] < 1.4 && mismatch[2] > 7.0, "{mismatch:?}");
    }

    #[test]
    fn two_way_games_price_the_lead_against_the_time_left() {
        let nba = Matchup {
            game: league(Some("Basketball"), false, "NBA").unwrap().game,
            rating_difference: 0.0,
            home_venue: false,
        };
        let early = fair_probabilities(&nba, &clock(6, 14, 8));
        let late = fair_probabilities(&nba, &clock(46, 102, 96));
        assert!(early[0] > 0.5 && late[0] > early[0], "{early:?} {late:?}");
        assert!(late[0] > 0.9, "{late:?}");
        // Tied at the end: overtime, even.
        let tied = fair_probabilities(&nba, &clock(48, 100, 100));
        assert!((tied[0] - 0.5).abs() < 1e-9, "{tied:?}");

        // A touchdown wins it: not a lock with two minutes left.
        let nfl = Matchup {
            game: league(Some("American Football"), false, "NFL")
                .unwrap()
                .game,
            rating_difference: 0.0,
            home_venue: false,
        };
        let one_score = fair_probabilities(&nfl, &clock(58, 16, 10));
        assert!((0.85..0.95).contains(&one_score[0]), "{one_score:?}");
        let two_scores = fair_probabilities(&nfl, &clock(58, 24, 10));
        assert!(two_scores[0] > 0.99, "{two_scores:?}");

        let atp = Matchup {
            game: league(Some("Tennis"), false, "ATP Finals").unwrap().game,
            rating_difference: 0.0,
            home_venue: false,
        };
        let start = fair_probabilities(&atp, &Play::start(atp.game));
        assert!((start[0] - 0.5).abs() < 0.02, "{start:?}");
        let set_up = fair_probabilities(&atp, &series((1, 0), (0, 0)));
        let set_and_break_up = fair_probabilities(&atp, &series((1, 0), (3, 1)));
        let serving_for_it = fair_probabilities(&atp, &series((1, 0), (5, 3)));
        assert!(
            set_up[0] > 0.65 && set_and_break_up[0] > set_up[0] && serving_for_it[0] > 0.9,
            "{set_up:?} {set_and_break_up:?} {serving_for_it:?}"
        );

        let cs2 = Matchup {
            game: league(None, true, "CS2 Major").unwrap().game,
            rating_difference: 0.0,
            home_venue: false,
        };
        let map_point = fair_probabilities(&cs2, &series((1, 0), (12, 4)));
        assert!(map_point[0] > 0.99, "{map_point:?}");
        let behind = fair_probabilities(&cs2, &series((0, 1), (2, 11)));
        assert!(behind[0] < 0.03, "{behind:?}");
    }

    #[test]
    fn the_floor_is_exact_and_applying_it_again_changes_nothing() {
        let once = floor_and_normalise(&[1e-10, 1e-8, 0.99999, f64::NAN]);
        assert_eq!(once[..2], [MIN_PROBABILITY, MIN_PROBABILITY]);
        assert_eq!(once[3], MIN_PROBABILITY);
        assert!((once.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let twice = floor_and_normalise(&once);
        for (a, b) in once.iter().zip(&twice) {
            assert!((a - b).abs() < 1e-15, "{once:?} {twice:?}");
        }
        assert_eq!(floor_and_normalise(&[0.0, 0.0]), [0.5, 0.5]);
    }

    #[test]
    fn race_and_series_agree_with_counting() {
        // Best of three at even chances, one map up: 3/4.
        assert!((series_win((1, 0), 2, 0.5, 0.5) - 0.75).abs() < 1e-12);
        // First to two at p: p² + 2p²q.
        let p: f64 = 0.6;
        assert!((race(2, 2, p) - (p * p + 2.0 * p * p * (1.0 - p))).abs() < 1e-12);
        assert_eq!(race(0, 3, 0.1), 1.0);
        assert_eq!(race(3, 0, 0.9), 0.0);
    }

    fn series(won: (u32, u32), current: (u32, u32)) -> Play {
        Play::Series { won, current }
    }

    fn every_game() -> Vec<Game> {
        SPORTS
            .iter()
            .flat_map(|sport| sport.leagues.iter().map(|league| league.game))
            .collect()
    }

    fn any_play() -> impl Strategy<Value = Play> {
        prop_oneof![
            (0u32..400, 0u32..250, 0u32..250).prop_map(|(minute, home, away)| Play::Clock {
                minute,
                home,
                away
            }),
            (0u32..5, 0u32..5, 0u32..30, 0u32..30).prop_map(|(a, b, c, d)| Play::Series {
                won: (a, b),
                current: (c, d)
            }),
            (0u32..5, 0u32..5, 0u32..90).prop_map(|(a, b, minute)| Play::MapClock {
                won: (a, b),
                minute
            }),
            Just(clock(0, 0, 0)),
            Just(clock(u32::MAX, u32::MAX, 0)),
        ]
    }

    proptest! {
        #[test]
        fn prices_are_always_valid(
            game in proptest::sample::select(every_game()),
            rating_difference in -3.0f64..3.0,
            home_venue in any::<bool>(),
            play in any_play(),
            margin in 0.0f64..0.1,
            noise in proptest::collection::vec(-0.05f64..0.05, 3),
        ) {
            let matchup = Matchup { game, rating_difference, home_venue };
            let fair = fair_probabilities(&matchup, &play);
            let expected = if matches!(game, Game::Goals { .. }) { 3 } else { 2 };
            prop_assert_eq!(fair.len(), expected);
            for fair in [fair.clone(), jitter(&fair, &noise)] {
                prop_assert!((fair.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{:?}", fair);
                prop_assert!(fair.iter().all(|p| *p > 0.0 && *p < 1.0), "{:?}", fair);
                let prices = with_margin(&fair, margin);
                let expected = overround(&fair, margin);
                prop_assert!((0.0..=margin).contains(&expected));
                if fair.iter().all(|p| *p <= 0.75) {
                    prop_assert_eq!(expected, margin);
                }
                let actual = prices.iter().sum::<f64>() - 1.0;
                prop_assert!((actual - expected).abs() < 1e-6, "{:?} overround {}", prices, expected);
                for price in &prices {
                    prop_assert!(*price > 0.0 && *price < 1.0, "{:?}", prices);
                    let odds = decimal_odds(*price);
                    prop_assert!(odds.is_finite() && odds >= 1.01, "{:?}", prices);
                }
                // The margin never turns the order of the outcomes around.
                for (i, j) in [(0, 1), (1, fair.len() - 1)] {
                    prop_assert!(fair[i] >= fair[j] || prices[i] <= prices[j], "{:?} {:?}", fair, prices);
                }
            }
        }
    }
}
