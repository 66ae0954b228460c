//! The hybrid-odds formula of docs/PROTOCOL.md, as a pure function.
//!
//! An external reference price (for example a Polymarket price) is blended with the platform's
//! own pending volume, weighted by the external liquidity `L`:
//!
//! ```text
//! V = Σ V_i
//! V = 0:  c_i = p_ext_i                                 oddsSource = "external"
//! V > 0:  w = L / (L + V);  c_i = w·p_ext_i + (1−w)·V_i/V   oddsSource = "hybrid"
//! probability_i = round4(c_i / Σc)
//! odds_i        = round2(clamp(1 / (probability_i · (1 + MARGIN)), MIN_ODDS, MAX_ODDS))
//! ```
//!
//! Inputs are validated here, at the edge of the domain: anything that could produce NaN or
//! infinity becomes an [`Unusable`] reason and the event is published as suspended.

use serde::{Deserialize, Serialize};

/// Liquidity assumed when the source has none (`NULL`), per docs/PROTOCOL.md.
pub const DEFAULT_LIQUIDITY: f64 = 1_000_000.0;

/// The operator-tunable constants of the formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OddsParams {
    /// Bookmaker margin applied to decimal odds; 0 means fair odds.
    pub margin: f64,
    /// Lower clamp for decimal odds (a certainty still pays something).
    pub min_odds: f64,
    /// Upper clamp for decimal odds (a probability of 0 would otherwise be infinite).
    pub max_odds: f64,
}

impl Default for OddsParams {
    fn default() -> Self {
        Self {
            margin: 0.0,
            min_odds: 1.01,
            max_odds: 1000.0,
        }
    }
}

/// One outcome as read from the source, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeInput {
    /// Outcome name shown to clients (`YES`, `HOME`, ...).
    pub name: String,
    /// External reference probability; `None` when the source has no price.
    pub external_price: Option<f64>,
    /// Sum of the amounts of this outcome's `PENDING` bets.
    pub pending_volume: f64,
}

/// Where the published numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OddsSource {
    /// No pending volume: the normalised external price.
    External,
    /// External price blended with pending volume.
    Hybrid,
}

/// Probability and decimal odds of one outcome, already rounded for display.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedOutcome {
    pub name: String,
    pub probability: f64,
    pub odds: f64,
}

/// The priced outcomes of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub outcomes: Vec<PricedOutcome>,
    pub source: OddsSource,
}

/// Why an event cannot be priced; it is then published with `"suspended": true`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unusable {
    #[error("event has {0} outcome(s); at least two are needed")]
    TooFewOutcomes(usize),
    #[error("outcome {0:?} has no external price")]
    MissingPrice(String),
    #[error("outcome {0:?} has an external price outside [0,1] or not finite: {1}")]
    PriceOutOfRange(String, f64),
    #[error("the external prices sum to zero")]
    ZeroPriceSum,
    #[error("outcome {0:?} has a negative or non-finite pending volume: {1}")]
    BadVolume(String, f64),
    #[error("external liquidity is negative or not finite: {0}")]
    BadLiquidity(f64),
    /// A value of the source row could not be read (the column is named in the reason).
    #[error("column {column:?} could not be read: {detail}")]
    BadValue {
        column: &'static str,
        detail: String,
    },
    /// The source returned the same outcome twice for one event (a join that multiplies rows,
    /// or two events sharing an id): pricing either copy would be a guess.
    #[error("outcome {0:?} appears more than once")]
    DuplicateOutcome(String),
    /// More outcomes than any market should have; the payload would be unbounded.
    #[error("event has {0} outcomes; at most {MAX_OUTCOMES} are published")]
    TooManyOutcomes(usize),
}

/// Most outcomes an event may have before it is suspended (`too_many_outcomes`).
pub const MAX_OUTCOMES: usize = 256;

impl Unusable {
    /// A short, stable label for metrics (`reason="missing_price"`).
    pub fn label(&self) -> &'static str {
        match self {
            Unusable::TooFewOutcomes(_) => "too_few_outcomes",
            Unusable::MissingPrice(_) => "missing_price",
            Unusable::PriceOutOfRange(..) => "price_out_of_range",
            Unusable::ZeroPriceSum => "zero_price_sum",
            Unusable::BadVolume(..) => "bad_volume",
            Unusable::BadLiquidity(_) => "bad_liquidity",
            Unusable::BadValue { .. } => "bad_value",
            Unusable::DuplicateOutcome(_) => "duplicate_outcome",
            Unusable::TooManyOutcomes(_) => "too_many_outcomes",
        }
    }

    /// Every label, for registering metric series at zero.
    pub const LABELS: [&'static str; 9] = [
        "missing_price",
        "price_out_of_range",
        "zero_price_sum",
        "too_few_outcomes",
        "bad_volume",
        "bad_liquidity",
        "bad_value",
        "duplicate_outcome",
        "too_many_outcomes",
    ];

    /// The `suspendedReason` clients see: the label, and for an unreadable value the column
    /// (`bad_value:start_time`), so an operator knows where to look.
    pub fn reason(&self) -> String {
        match self {
            Unusable::BadValue { column, .. } => format!("bad_value:{column}"),
            other => other.label().to_string(),
        }
    }
}

/// Rounds half away from zero to `places` decimals.
fn round_to(x: f64, places: i32) -> f64 {
    let factor = 10f64.powi(places);
    (x * factor).round() / factor
}

/// Computes the hybrid odds of one event (docs/PROTOCOL.md).
///
/// `liquidity` is the event's external liquidity `L`; `None` means [`DEFAULT_LIQUIDITY`].
pub fn price_event(
    outcomes: &[OutcomeInput],
    liquidity: Option<f64>,
    params: &OddsParams,
) -> Result<Priced, Unusable> {
    if outcomes.len() < 2 {
        return Err(Unusable::TooFewOutcomes(outcomes.len()));
    }
    let liquidity = liquidity.unwrap_or(DEFAULT_LIQUIDITY);
    if !liquidity.is_finite() || liquidity < 0.0 {
        return Err(Unusable::BadLiquidity(liquidity));
    }

    let mut prices = Vec::with_capacity(outcomes.len());
    let mut price_sum = 0.0;
    let mut volume_sum = 0.0;
    for outcome in outcomes {
        let price = outcome
            .external_price
            .ok_or_else(|| Unusable::MissingPrice(outcome.name.clone()))?;
        if !price.is_finite() || !(0.0..=1.0).contains(&price) {
            return Err(Unusable::PriceOutOfRange(outcome.name.clone(), price));
        }
        let volume = outcome.pending_volume;
        if !volume.is_finite() || volume < 0.0 {
            return Err(Unusable::BadVolume(outcome.name.clone(), volume));
        }
        prices.push(price);
        price_sum += price;
        volume_sum += volume;
    }
    if price_sum <= 0.0 {
        return Err(Unusable::ZeroPriceSum);
    }
    // A sum of finite volumes can still overflow to infinity.
    if !volume_sum.is_finite() {
        return Err(Unusable::BadVolume("(total)".into(), volume_sum));
    }

    let (blended, source): (Vec<f64>, OddsSource) = if volume_sum == 0.0 {
        (prices, OddsSource::External)
    } else {
        // Written as (L·p + V_i) / (L + V), algebraically equal to w·p + (1−w)·V_i/V but with
        // one division, so tiny or huge L and V cannot lose the blend to cancellation.
        let denominator = liquidity + volume_sum;
        let blended = prices
            .iter()
            .zip(outcomes)
            .map(|(p, o)| (liquidity * p + o.pending_volume) / denominator)
            .collect();
        (blended, OddsSource::Hybrid)
    };
    let total: f64 = blended.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return Err(Unusable::ZeroPriceSum);
    }

    let priced = outcomes
        .iter()
        .zip(blended)
        .map(|(outcome, c)| {
            let probability = round_to(c / total, 4);
            PricedOutcome {
                name: outcome.name.clone(),
                probability,
                odds: decimal_odds(probability, params),
            }
        })
        .collect();
    Ok(Priced {
        outcomes: priced,
        source,
    })
}

/// Decimal odds for a (rounded) probability, clamped and rounded to 2 places.
fn decimal_odds(probability: f64, params: &OddsParams) -> f64 {
    let raw = 1.0 / (probability * (1.0 + params.margin));
    // A probability of 0 gives +inf, which the clamp turns into MAX_ODDS; NaN cannot occur
    // because the probability is finite and the margin is validated at start-up.
    let clamped = if raw.is_nan() {
        params.max_odds
    } else {
        raw.clamp(params.min_odds, params.max_odds)
    };
    round_to(clamped, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_reason_has_a_registered_label() {
        let all = [
            Unusable::MissingPrice("YES".into()),
            Unusable::PriceOutOfRange("YES".into(), 2.0),
            Unusable::ZeroPriceSum,
            Unusable::TooFewOutcomes(1),
            Unusable::BadVolume("YES".into(), -1.0),
            Unusable::BadLiquidity(-1.0),
            Unusable::BadValue {
                column: "start_time",
                detail: String::new(),
            },
            Unusable::DuplicateOutcome("YES".into()),
            Unusable::TooManyOutcomes(300),
        ];
        let labels: Vec<&str> = all.iter().map(Unusable::label).collect();
        assert_eq!(labels, Unusable::LABELS);
        assert_eq!(all[6].reason(), "bad_value:start_time");
        assert_eq!(all[7].reason(), "duplicate_outcome");
    }

    fn outcome(name: &str, price: Option<f64>, volume: f64) -> OutcomeInput {
        OutcomeInput {
            name: name.into(),
            external_price: price,
            pending_volume: volume,
        }
    }

    fn probs(p: &Priced) -> Vec<f64> {
        p.outcomes.iter().map(|o| o.probability).collect()
    }

    #[test]
    fn no_volume_is_the_normalised_external_price() {
        let priced = price_event(
            &[
                outcome("YES", Some(0.6), 0.0),
                outcome("NO", Some(0.5), 0.0),
            ],
            None,
            &OddsParams::default(),
        )
        .unwrap();
        assert_eq!(priced.source, OddsSource::External);
        // 0.6 / 1.1 = 0.545454..., 0.5 / 1.1 = 0.454545...
        assert_eq!(probs(&priced), vec![0.5455, 0.4545]);
        assert_eq!(priced.outcomes[0].odds, 1.83);
        assert_eq!(priced.outcomes[1].odds, 2.2);
    }

    #[test]
    fn worked_hybrid_example() {
        // L = 1000, V = 1000 (YES 750, NO 250): w = 0.5.
        // c_yes = 0.5·0.4 + 0.5·0.75 = 0.575, c_no = 0.5·0.6 + 0.5·0.25 = 0.425.
        let priced = price_event(
            &[
                outcome("YES", Some(0.4), 750.0),
                outcome("NO", Some(0.6), 250.0),
            ],
            Some(1000.0),
            &OddsParams::default(),
        )
        .unwrap();
        assert_eq!(priced.source, OddsSource::Hybrid);
        assert_eq!(probs(&priced), vec![0.575, 0.425]);
        // 1 / 0.575 = 1.7391 -> 1.74; 1 / 0.425 = 2.3529 -> 2.35.
        assert_eq!(priced.outcomes[0].odds, 1.74);
        assert_eq!(priced.outcomes[1].odds, 2.35);
    }

    #[test]
    fn three_way_market_with_default_liquidity() {
        // L = 1e6 (NULL), V = 100_000 all on DRAW: w = 1e6 / 1.1e6.
        let priced = price_event(
            &[
                outcome("HOME", Some(0.5), 0.0),
                outcome("DRAW", Some(0.25), 100_000.0),
                outcome("AWAY", Some(0.25), 0.0),
            ],
            None,
            &OddsParams::default(),
        )
        .unwrap();
        // c = (1e6·p + V_i) / 1.1e6: HOME 0.454545, DRAW 0.318182, AWAY 0.227273.
        assert_eq!(probs(&priced), vec![0.4545, 0.3182, 0.2273]);
    }

    #[test]
    fn margin_and_clamps() {
        let params = OddsParams {
            margin: 0.05,
            ..OddsParams::default()
        };
        let priced = price_event(
            &[
                outcome("YES", Some(1.0), 0.0),
                outcome("NO", Some(0.0), 0.0),
            ],
            None,
            &params,
        )
        .unwrap();
        assert_eq!(probs(&priced), vec![1.0, 0.0]);
        // 1 / (1 · 1.05) = 0.952 -> clamped up to 1.01; 1 / 0 -> clamped to 1000.
        assert_eq!(priced.outcomes[0].odds, 1.01);
        assert_eq!(priced.outcomes[1].odds, 1000.0);
    }

    #[test]
    fn unusable_inputs_are_reported() {
        let p = OddsParams::default();
        let cases: Vec<(Vec<OutcomeInput>, Option<f64>, &str)> = vec![
            (
                vec![outcome("YES", Some(0.5), 0.0)],
                None,
                "too_few_outcomes",
            ),
            (vec![], None, "too_few_outcomes"),
            (
                vec![outcome("YES", None, 0.0), outcome("NO", Some(0.5), 0.0)],
                None,
                "missing_price",
            ),
            (
                vec![
                    outcome("YES", Some(f64::NAN), 0.0),
                    outcome("NO", Some(0.5), 0.0),
                ],
                None,
                "price_out_of_range",
            ),
            (
                vec![
                    outcome("YES", Some(1.5), 0.0),
                    outcome("NO", Some(0.5), 0.0),
                ],
                None,
                "price_out_of_range",
            ),
            (
                vec![
                    outcome("YES", Some(-0.1), 0.0),
                    outcome("NO", Some(0.5), 0.0),
                ],
                None,
                "price_out_of_range",
            ),
            (
                vec![
                    outcome("YES", Some(0.0), 0.0),
                    outcome("NO", Some(0.0), 5.0),
                ],
                None,
                "zero_price_sum",
            ),
            (
                vec![
                    outcome("YES", Some(0.5), -1.0),
                    outcome("NO", Some(0.5), 0.0),
                ],
                None,
                "bad_volume",
            ),
            (
                vec![
                    outcome("YES", Some(0.5), f64::INFINITY),
                    outcome("NO", Some(0.5), 0.0),
                ],
                None,
                "bad_volume",
            ),
            (
                vec![
                    outcome("YES", Some(0.5), 1.0),
                    outcome("NO", Some(0.5), 0.0),
                ],
                Some(f64::NAN),
                "bad_liquidity",
            ),
        ];
        for (outcomes, liquidity, label) in cases {
            let err = price_event(&outcomes, liquidity, &p).unwrap_err();
            assert_eq!(err.label(), label, "{outcomes:?} {liquidity:?}");
        }
    }

    fn arb_outcomes() -> impl Strategy<Value = Vec<OutcomeInput>> {
        prop::collection::vec((0.0f64..=1.0, 0.0f64..1e9), 2..6).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (p, vol))| outcome(&format!("O{i}"), Some(p), vol))
                .collect()
        })
    }

    fn arb_liquidity() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![Just(None), (0.0f64..1e10).prop_map(Some)]
    }

    proptest! {
        #[test]
        fn probabilities_are_in_range_and_sum_to_one(outcomes in arb_outcomes(), l in arb_liquidity()) {
            if let Ok(priced) = price_event(&outcomes, l, &OddsParams::default()) {
                let sum: f64 = priced.outcomes.iter().map(|o| o.probability).sum();
                for o in &priced.outcomes {
                    prop_assert!((0.0..=1.0).contains(&o.probability));
                    prop_assert!(o.odds.is_finite() && (1.01..=1000.0).contains(&o.odds));
                }
                // Each rounding moves a probability by at most 0.00005.
                prop_assert!((sum - 1.0).abs() <= 0.00005 * outcomes.len() as f64 + 1e-12, "sum {sum}");
            }
        }

        #[test]
        fn only_a_zero_price_sum_is_unusable_for_valid_inputs(outcomes in arb_outcomes(), l in arb_liquidity()) {
            let price_sum: f64 = outcomes.iter().filter_map(|o| o.external_price).sum();
            match price_event(&outcomes, l, &OddsParams::default()) {
                Ok(_) => prop_assert!(price_sum > 0.0),
                Err(e) => prop_assert_eq!(e, Unusable::ZeroPriceSum),
            }
        }

        #[test]
        fn more_volume_never_lowers_probability(
            outcomes in arb_outcomes(),
            l in arb_liquidity(),
            pick in 0usize..6,
            extra in 0.0f64..1e9,
        ) {
            let i = pick % outcomes.len();
            let mut more = outcomes.clone();
            more[i].pending_volume += extra;
            let params = OddsParams::default();
            if let (Ok(before), Ok(after)) = (price_event(&outcomes, l, &params), price_event(&more, l, &params)) {
                prop_assert!(after.outcomes[i].probability >= before.outcomes[i].probability,
                    "{} < {}", after.outcomes[i].probability, before.outcomes[i].probability);
            }
        }

        #[test]
        fn no_volume_gives_the_normalised_external_price(prices in prop::collection::vec(0.01f64..=1.0, 2..6), l in arb_liquidity()) {
            let outcomes: Vec<_> = prices.iter().enumerate().map(|(i, p)| outcome(&format!("O{i}"), Some(*p), 0.0)).collect();
            let priced = price_event(&outcomes, l, &OddsParams::default()).unwrap();
            prop_assert_eq!(priced.source, OddsSource::External);
            let sum: f64 = prices.iter().sum();
            for (o, p) in priced.outcomes.iter().zip(&prices) {
                prop_assert!((o.probability - p / sum).abs() <= 0.00005 + 1e-12);
            }
        }

        #[test]
        fn never_nan_or_infinite_whatever_the_input(
            raw in prop::collection::vec((prop::option::of(prop::num::f64::ANY), prop::num::f64::ANY), 0..5),
            l in prop::option::of(prop::num::f64::ANY),
        ) {
            let outcomes: Vec<_> = raw.into_iter().enumerate().map(|(i, (p, v))| outcome(&format!("O{i}"), p, v)).collect();
            if let Ok(priced) = price_event(&outcomes, l, &OddsParams::default()) {
                for o in priced.outcomes {
                    prop_assert!(o.probability.is_finite() && o.odds.is_finite());
                    prop_assert!((0.0..=1.0).contains(&o.probability));
                }
            }
        }
    }
}
