//! The EVENT object and the messages on the odds channel (docs/PROTOCOL.md), as serde types.
//!
//! Field names are fixed by the contract; `Option` fields serialise as `null`, never missing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::hybrid::{OddsParams, OddsSource, OutcomeInput, Unusable, price_event};

/// One outcome as a client sees it. Both numbers are `null` while the event is suspended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub probability: Option<f64>,
    pub odds: Option<f64>,
}

/// Everything a client displays about an event except its identity and version.
///
/// Two ticks that produce equal `EventView`s publish nothing for that event: equality here is
/// the contract's "any field a client would display differs after rounding".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// The sport key (see [`sport_key`]); also the sport block the event is published in.
    pub sport: String,
    pub league: Option<String>,
    pub title: String,
    pub team_a: Option<String>,
    pub team_b: Option<String>,
    pub is_esports: bool,
    pub live: bool,
    pub game_status: Option<String>,
    pub score: Option<String>,
    pub period: Option<String>,
    pub elapsed: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub outcomes: Vec<Outcome>,
    /// YES probability, present only when the outcomes are exactly YES and NO.
    pub yes_odds: Option<f64>,
    /// NO probability, present only when the outcomes are exactly YES and NO.
    pub no_odds: Option<f64>,
    /// `null` while suspended.
    pub odds_source: Option<OddsSource>,
    pub suspended: bool,
    /// Why the event is suspended (a stable label such as `missing_price`), for operators.
    pub suspended_reason: Option<String>,
}

/// A published event: identity, version and view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// Rises by exactly 1 each time the event is upserted (the `event:<id>` room's seq).
    pub version: u64,
    #[serde(flatten)]
    pub view: EventView,
}

/// The changes of one sport within one `odds` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SportDelta {
    /// The sport's own sequence number after this message.
    pub seq: u64,
    pub upserts: Vec<Event>,
    pub removals: Vec<String>,
    /// The version each removed event's removal carries (its last version + 1), assigned by
    /// the publisher so every broadcaster numbers the `event:<id>` room the same way. Only for
    /// events that left the active set, not for an event that moved to another sport (that is
    /// one upsert). Absent in messages of earlier versions: the broadcaster then counts.
    #[serde(default)]
    pub removal_versions: BTreeMap<String, u64>,
}

/// `{"type":"odds",...}` on the odds channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OddsMessage {
    pub epoch: String,
    pub seq: u64,
    /// Unix ms when the tick began reading PostgreSQL.
    pub tick_at: i64,
    /// Unix ms just before PUBLISH.
    pub published_at: i64,
    /// The same instant in Unix microseconds, for latency measured below a millisecond
    /// (0 from a publisher that does not send it).
    #[serde(default)]
    pub published_at_us: i64,
    pub sports: BTreeMap<String, SportDelta>,
}

/// An `odds` message serialised straight from borrowed parts, so the publisher's hot path does
/// not copy every upserted event just to write JSON. Same JSON as `ChannelMessage::Odds`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OddsMessageRef<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub epoch: &'a str,
    pub seq: u64,
    pub tick_at: i64,
    pub published_at: i64,
    pub published_at_us: i64,
    pub sports: &'a BTreeMap<String, SportDelta>,
}

impl<'a> OddsMessageRef<'a> {
    /// `published_at_us`: Unix microseconds just before PUBLISH; `publishedAt` is its
    /// milliseconds.
    pub fn new(
        epoch: &'a str,
        seq: u64,
        tick_at: i64,
        published_at_us: i64,
        sports: &'a BTreeMap<String, SportDelta>,
    ) -> Self {
        Self {
            kind: "odds",
            epoch,
            seq,
            tick_at,
            published_at: published_at_us.div_euclid(1000),
            published_at_us,
            sports,
        }
    }
}

/// `{"type":"heartbeat",...}`: sent when no `odds` message went out for a heartbeat interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub epoch: String,
    /// The last `odds` seq of the epoch.
    pub seq: u64,
    pub published_at: i64,
}

/// Everything the publisher sends on the channel, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChannelMessage {
    Odds(OddsMessage),
    Heartbeat(Heartbeat),
}

/// The sport key reserved for the global room `sport:all`.
pub const ALL_SPORTS_KEY: &str = "all";

/// What a sport whose key would be `all` is published as, so it cannot collide with the
/// global room.
pub const RENAMED_ALL_SPORT_KEY: &str = "all-sport";

/// Longest sport key, in characters; longer names are cut (room names stay bounded).
pub const MAX_SPORT_KEY_CHARS: usize = 64;

/// The sport key of docs/PROTOCOL.md: the sport in lower case with runs of white space as one `-`;
/// an esports event without a sport is `esports`, anything else without a sport is `other`.
/// Control characters separate words like white space, the key is cut at
/// [`MAX_SPORT_KEY_CHARS`], and a key that would be `all` becomes [`RENAMED_ALL_SPORT_KEY`].
pub fn sport_key(sport: Option<&str>, is_esports: bool) -> String {
    let cleaned: Option<String> = sport.map(|s| {
        s.split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("-")
            .to_lowercase()
            .chars()
            .take(MAX_SPORT_KEY_CHARS)
            .collect()
    });
    match cleaned.filter(|s| !s.is_empty()) {
        Some(key) if key == ALL_SPORTS_KEY => RENAMED_ALL_SPORT_KEY.to_string(),
        Some(key) => key,
        None if is_esports => "esports".to_string(),
        None => "other".to_string(),
    }
}

/// One active event as read from the source, before pricing.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    pub id: String,
    pub title: String,
    pub sport: Option<String>,
    pub league: Option<String>,
    pub team_a: Option<String>,
    pub team_b: Option<String>,
    pub is_esports: bool,
    pub live: bool,
    pub game_status: Option<String>,
    pub score: Option<String>,
    pub period: Option<String>,
    pub elapsed: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    /// External liquidity `L`; `None` means the contract's default of 1,000,000.
    pub liquidity: Option<f64>,
    pub outcomes: Vec<OutcomeInput>,
    /// Set when the source rows of this event could not be used as they are (an unreadable
    /// value, a duplicated outcome, too many outcomes): the event is published suspended with
    /// this reason instead of being priced.
    pub rejected: Option<Unusable>,
}

impl EventInput {
    /// Prices the event and builds what clients see. An unusable event is returned suspended,
    /// with its outcome names and no numbers, together with the reason.
    pub fn to_view(&self, params: &OddsParams) -> (EventView, Option<Unusable>) {
        let priced = match &self.rejected {
            Some(reason) => Err(reason.clone()),
            None => price_event(&self.outcomes, self.liquidity, params),
        };
        let (outcomes, odds_source, reason) = match priced {
            Ok(priced) => (
                priced
                    .outcomes
                    .into_iter()
                    .map(|o| Outcome {
                        name: o.name,
                        probability: Some(o.probability),
                        odds: Some(o.odds),
                    })
                    .collect::<Vec<_>>(),
                Some(priced.source),
                None,
            ),
            Err(reason) => (
                self.outcomes
                    .iter()
                    .map(|o| Outcome {
                        name: o.name.clone(),
                        probability: None,
                        odds: None,
                    })
                    .collect(),
                None,
                Some(reason),
            ),
        };
        let (yes_odds, no_odds) = match outcomes.as_slice() {
            [yes, no] if yes.name == "YES" && no.name == "NO" => (yes.probability, no.probability),
            [no, yes] if yes.name == "YES" && no.name == "NO" => (yes.probability, no.probability),
            _ => (None, None),
        };
        let view = EventView {
            sport: sport_key(self.sport.as_deref(), self.is_esports),
            league: self.league.clone(),
            title: self.title.clone(),
            team_a: self.team_a.clone(),
            team_b: self.team_b.clone(),
            is_esports: self.is_esports,
            live: self.live,
            game_status: self.game_status.clone(),
            score: self.score.clone(),
            period: self.period.clone(),
            elapsed: self.elapsed.clone(),
            start_time: self.start_time,
            outcomes,
            yes_odds,
            no_odds,
            odds_source,
            suspended: reason.is_some(),
            suspended_reason: reason.as_ref().map(Unusable::reason),
        };
        (view, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sport_keys() {
        assert_eq!(sport_key(Some("Football"), false), "football");
        assert_eq!(sport_key(Some("Ice  Hockey "), false), "ice-hockey");
        assert_eq!(sport_key(None, true), "esports");
        assert_eq!(sport_key(Some("  "), true), "esports");
        assert_eq!(sport_key(None, false), "other");
        assert_eq!(
            sport_key(Some("Counter Strike 2"), true),
            "counter-strike-2"
        );
        assert_eq!(sport_key(Some("All"), false), "all-sport");
        assert_eq!(sport_key(Some(" ALL "), false), "all-sport");
        assert_eq!(sport_key(Some("All Stars"), false), "all-stars");
        assert_eq!(sport_key(Some("Foot\u{0}ball\n"), false), "foot-ball");
        assert_eq!(sport_key(Some(&"x".repeat(500)), false).len(), 64);
    }

    #[test]
    fn event_serialises_with_nulls_and_contract_names() {
        let event = Event {
            id: "evt-1".into(),
            version: 7,
            view: EventView {
                sport: "football".into(),
                league: None,
                title: "A vs B".into(),
                team_a: Some("A".into()),
                team_b: Some("B".into()),
                is_esports: false,
                live: true,
                game_status: Some("in_progress".into()),
                score: None,
                period: None,
                elapsed: None,
                start_time: Some("2026-11-21T20:00:00Z".parse().unwrap()),
                outcomes: vec![Outcome {
                    name: "YES".into(),
                    probability: Some(0.5423),
                    odds: Some(1.84),
                }],
                yes_odds: None,
                no_odds: None,
                odds_source: Some(OddsSource::Hybrid),
                suspended: false,
                suspended_reason: None,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["id"], "evt-1");
        assert_eq!(json["version"], 7);
        assert_eq!(json["teamA"], "A");
        assert_eq!(json["isEsports"], false);
        assert_eq!(json["gameStatus"], "in_progress");
        assert_eq!(json["startTime"], "2026-11-21T20:00:00Z");
        assert_eq!(json["oddsSource"], "hybrid");
        assert!(json["league"].is_null() && json.get("league").is_some());
        assert!(json["yesOdds"].is_null() && json.get("noOdds").is_some());
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    fn input(outcomes: Vec<OutcomeInput>) -> EventInput {
        EventInput {
            id: "evt-1".into(),
            title: "A vs B".into(),
            sport: Some("Football".into()),
            league: None,
            team_a: Some("A".into()),
            team_b: Some("B".into()),
            is_esports: false,
            live: false,
            game_status: None,
            score: None,
            period: None,
            elapsed: None,
            start_time: None,
            liquidity: None,
            outcomes,
            rejected: None,
        }
    }

    fn oi(name: &str, price: Option<f64>) -> OutcomeInput {
        OutcomeInput {
            name: name.into(),
            external_price: price,
            pending_volume: 0.0,
        }
    }

    #[test]
    fn yes_no_fields_only_for_binary_markets() {
        let (view, reason) =
            input(vec![oi("YES", Some(0.6)), oi("NO", Some(0.4))]).to_view(&OddsParams::default());
        assert!(reason.is_none());
        assert_eq!(view.sport, "football");
        assert_eq!((view.yes_odds, view.no_odds), (Some(0.6), Some(0.4)));
        let (view, _) = input(vec![
            oi("HOME", Some(0.5)),
            oi("DRAW", Some(0.2)),
            oi("AWAY", Some(0.3)),
        ])
        .to_view(&OddsParams::default());
        assert_eq!((view.yes_odds, view.no_odds), (None, None));
    }

    #[test]
    fn unusable_event_is_suspended_without_numbers() {
        let (view, reason) =
            input(vec![oi("YES", None), oi("NO", Some(0.4))]).to_view(&OddsParams::default());
        assert_eq!(reason.unwrap().label(), "missing_price");
        assert!(view.suspended);
        assert_eq!(view.suspended_reason.as_deref(), Some("missing_price"));
        assert!(view.odds_source.is_none() && view.yes_odds.is_none());
        assert!(
            view.outcomes
                .iter()
                .all(|o| o.probability.is_none() && o.odds.is_none())
        );
        let json = serde_json::to_string(&view).unwrap();
        assert!(!json.contains("NaN") && !json.contains("inf"));
    }

    #[test]
    fn borrowed_odds_message_serialises_like_the_owned_one() {
        let sports = BTreeMap::from([(
            "tennis".to_string(),
            SportDelta {
                seq: 4,
                upserts: vec![],
                removals: vec!["x".into()],
                removal_versions: BTreeMap::from([("x".to_string(), 3)]),
            },
        )]);
        let owned = ChannelMessage::Odds(OddsMessage {
            epoch: "e".into(),
            seq: 9,
            tick_at: 1,
            published_at: 2,
            published_at_us: 2_345,
            sports: sports.clone(),
        });
        let borrowed = OddsMessageRef::new("e", 9, 1, 2_345, &sports);
        assert_eq!(
            serde_json::to_string(&borrowed).unwrap(),
            serde_json::to_string(&owned).unwrap()
        );
    }

    #[test]
    fn an_odds_message_without_microseconds_still_parses() {
        let msg: ChannelMessage = serde_json::from_str(
            r#"{"type":"odds","epoch":"e","seq":1,"tickAt":1,"publishedAt":2,"sports":{}}"#,
        )
        .unwrap();
        let ChannelMessage::Odds(odds) = msg else {
            panic!("odds expected")
        };
        assert_eq!((odds.published_at, odds.published_at_us), (2, 0));
    }

    #[test]
    fn channel_messages_are_tagged() {
        let hb = ChannelMessage::Heartbeat(Heartbeat {
            epoch: "e".into(),
            seq: 3,
            published_at: 10,
        });
        let json = serde_json::to_string(&hb).unwrap();
        assert_eq!(
            json,
            r#"{"type":"heartbeat","epoch":"e","seq":3,"publishedAt":10}"#
        );
    }
}
