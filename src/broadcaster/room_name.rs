//! Odds room names, parsed once into a type.
//!
//! `sport:all` is the global room; `sport:<key>` one sport; `event:<id>` one event. A sport key
//! is what the publisher makes of a sport name (lower case, no white space or control
//! characters, at most 64 characters; never `all`, see `odds::event::sport_key`), so a
//! well-formed `sport:<key>` can be subscribed before that sport has any event: the room fills
//! when its events are published. Pure: no I/O.

use crate::odds::event::{ALL_SPORTS_KEY, MAX_SPORT_KEY_CHARS};

/// Longest event id a room can name, in bytes (the publisher cuts longer ids the same way).
pub const MAX_EVENT_ID_BYTES: usize = 1024;

/// An odds room.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OddsRoom {
    /// `sport:all`: every change; its seq is the global seq.
    All,
    /// `sport:<key>`: one sport; its seq is the sport's seq.
    Sport(String),
    /// `event:<id>`: one event; its seq is the event's version.
    Event(String),
}

impl OddsRoom {
    /// Parses a room name: `Ok(None)` when the name is not an odds room at all (a bridged or
    /// private room), `Err` with a reason when it looks like one but is malformed.
    pub fn parse(name: &str) -> Result<Option<Self>, String> {
        if let Some(key) = name.strip_prefix("sport:") {
            if key == ALL_SPORTS_KEY {
                return Ok(Some(OddsRoom::All));
            }
            return valid_sport_key(key).map(|()| Some(OddsRoom::Sport(key.to_string())));
        }
        if let Some(id) = name.strip_prefix("event:") {
            if id.is_empty() || id.len() > MAX_EVENT_ID_BYTES || id.chars().any(char::is_control) {
                return Err(format!(
                    "an event room is event:<id>, with an id of 1 to {MAX_EVENT_ID_BYTES} bytes and no control characters"
                ));
            }
            return Ok(Some(OddsRoom::Event(id.to_string())));
        }
        Ok(None)
    }

    /// The sport room of a sport key as published; `None` for the reserved key (a publisher
    /// never sends it; an older or foreign one might).
    pub fn for_sport(key: &str) -> Option<Self> {
        (key != ALL_SPORTS_KEY).then(|| OddsRoom::Sport(key.to_string()))
    }

    /// The room's name on the wire.
    pub fn name(&self) -> String {
        match self {
            OddsRoom::All => format!("sport:{ALL_SPORTS_KEY}"),
            OddsRoom::Sport(key) => format!("sport:{key}"),
            OddsRoom::Event(id) => format!("event:{id}"),
        }
    }
}

fn valid_sport_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.chars().count() <= MAX_SPORT_KEY_CHARS
        && key.to_lowercase() == key
        && !key.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a sport room is sport:<key>, with the key as the publisher writes it: lower case, '-' for spaces, 1 to {MAX_SPORT_KEY_CHARS} characters (e.g. sport:ice-hockey)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odds::sport_key;
    use proptest::prelude::*;

    #[test]
    fn parses_the_three_kinds() {
        assert_eq!(OddsRoom::parse("sport:all"), Ok(Some(OddsRoom::All)));
        assert_eq!(
            OddsRoom::parse("sport:ice-hockey"),
            Ok(Some(OddsRoom::Sport("ice-hockey".into())))
        );
        assert_eq!(
            OddsRoom::parse("event:evt:1"),
            Ok(Some(OddsRoom::Event("evt:1".into())))
        );
        assert_eq!(OddsRoom::parse("chat:evt-1"), Ok(None));
        assert_eq!(OddsRoom::parse("user:7"), Ok(None));
        for bad in [
            "sport:",
            "sport:Football",
            "sport:ice hockey",
            "sport:a\u{7}b",
            "event:",
            "event:a\nb",
        ] {
            assert!(OddsRoom::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(OddsRoom::for_sport("all"), None);
        assert_eq!(OddsRoom::All.name(), "sport:all");
    }

    proptest! {
        /// Every sport key the publisher can produce names a sport room, never the global one.
        #[test]
        fn every_sport_key_is_a_sport_room(name in ".{0,80}", esports: bool) {
            let key = sport_key(Some(&name), esports);
            let room = OddsRoom::for_sport(&key).expect("never the reserved key");
            prop_assert_eq!(OddsRoom::parse(&room.name()), Ok(Some(room.clone())));
            prop_assert_ne!(room, OddsRoom::All);
        }
    }
}
