//! The `changes` format of `odds` messages (`/ws?format=changes`): each upsert carries the
//! event's `id`, its `version` and only the fields whose value changed since the version
//! before, so a price move costs its prices, not the whole event. An event new to the stream,
//! or new to its sport (it moved), is sent whole: a client that merges upserts by id into what
//! it has (`{...old, ...upsert}`) ends with exactly the whole event either way, because every
//! field of an event is always present (`null`, never missing).

use serde_json::Value;

use crate::odds::Event;

/// The upsert of `new` in the `changes` format, given the version before it (if the book had
/// one).
pub fn upsert(old: Option<&Event>, new: &Event) -> Value {
    let whole = || serde_json::to_value(new).unwrap_or(Value::Null);
    let Some(old) = old.filter(|o| o.view.sport == new.view.sport) else {
        return whole();
    };
    match (serde_json::to_value(old), serde_json::to_value(new)) {
        (Ok(Value::Object(before)), Ok(Value::Object(mut after))) => {
            after.retain(|key, value| {
                key == "id" || key == "version" || before.get(key) != Some(value)
            });
            Value::Object(after)
        }
        _ => whole(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(sport: &str, yes: f64, score: Option<&str>) -> Event {
        serde_json::from_value(json!({
            "id": "e1", "version": 3, "sport": sport, "league": "L", "title": "A vs B",
            "teamA": "A", "teamB": "B", "isEsports": false, "live": true,
            "gameStatus": "live", "score": score, "period": "2H", "elapsed": "60'",
            "startTime": null,
            "outcomes": [{"name": "YES", "probability": yes, "odds": 1.0 / yes},
                         {"name": "NO", "probability": 1.0 - yes, "odds": 1.0 / (1.0 - yes)}],
            "yesOdds": yes, "noOdds": 1.0 - yes, "oddsSource": "hybrid",
            "suspended": false, "suspendedReason": null
        }))
        .unwrap()
    }

    fn merged(old: &Event, patch: &Value) -> Value {
        let mut out = serde_json::to_value(old).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            out[k] = v.clone();
        }
        out
    }

    #[test]
    fn a_price_move_carries_only_the_prices_and_merges_into_the_whole_event() {
        let old = event("football", 0.5, Some("0-0"));
        let mut new = event("football", 0.6, Some("0-0"));
        new.version = 4;
        let patch = upsert(Some(&old), &new);
        let mut keys: Vec<&str> = patch
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["id", "noOdds", "outcomes", "version", "yesOdds"]);
        assert_eq!(merged(&old, &patch), serde_json::to_value(&new).unwrap());
    }

    #[test]
    fn a_field_that_becomes_null_is_sent_as_null() {
        let old = event("football", 0.5, Some("1-0"));
        let new = event("football", 0.5, None);
        let patch = upsert(Some(&old), &new);
        assert_eq!(patch["score"], Value::Null);
        assert!(patch.as_object().unwrap().contains_key("score"));
        assert_eq!(merged(&old, &patch), serde_json::to_value(&new).unwrap());
    }

    #[test]
    fn a_new_event_or_one_that_moved_sport_is_sent_whole() {
        let new = event("football", 0.5, None);
        assert_eq!(upsert(None, &new), serde_json::to_value(&new).unwrap());
        let moved_from = event("basketball", 0.5, None);
        assert_eq!(
            upsert(Some(&moved_from), &new),
            serde_json::to_value(&new).unwrap()
        );
    }
}
