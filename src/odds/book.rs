//! The current published state and the diff that turns a tick's result into a delta.
//!
//! The book is the single owner of sequence numbers (docs/PROTOCOL.md): the global `seq`, each
//! sport's `seq`, and each event's `version`. [`Book::diff`] is pure: it proposes the next
//! delta without changing anything, and [`Book::apply`] commits it once the delta is safely in
//! Redis. A delta that failed to publish is simply never applied, so the next tick's diff
//! carries everything that changed in the meantime.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::event::{Event, EventView, SportDelta};

/// The published state of one stream (one epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Book {
    /// Names the continuous stream; changes only when the stream starts from nothing.
    epoch: String,
    /// Global seq of the last `odds` message.
    seq: u64,
    /// Each sport's seq of the last message that touched it. Kept after a sport's last event
    /// goes, so a sport that comes back continues its sequence.
    sport_seqs: BTreeMap<String, u64>,
    /// The events as last published, by id.
    events: HashMap<String, Event>,
    /// How many of `events` are suspended (kept with them, so a tick need not count).
    suspended: usize,
    /// Events that left the active set: the version their removal carried and the global seq
    /// of that message. An event that comes back continues from here (docs/PROTOCOL.md: removed at
    /// v+1, back at v+2), and an `event:<id>` room of a removed event knows its seq.
    removed: HashMap<String, Removed>,
    /// The same removals ordered by (global seq, id), oldest first, to forget the oldest
    /// beyond [`REMOVED_KEPT`].
    removed_order: BTreeSet<(u64, String)>,
}

/// How many removed events' versions a book remembers. An event removed longer ago than the
/// last this-many removals starts again at version 1 when it returns.
pub const REMOVED_KEPT: usize = 100_000;

/// What the book remembers of a removed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// The version the removal carried.
    pub version: u64,
    /// The global seq of the message that removed it.
    pub seq: u64,
}

/// One proposed `odds` message: what changed, with the sequence numbers it will carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// The global seq this message carries (the book's seq + 1).
    pub seq: u64,
    /// Per-sport changes, only for sports the message touches.
    pub sports: BTreeMap<String, SportDelta>,
}

impl Delta {
    /// Number of upserted events across sports.
    pub fn upserts(&self) -> usize {
        self.sports.values().map(|s| s.upserts.len()).sum()
    }

    /// Number of removed events across sports.
    pub fn removals(&self) -> usize {
        self.sports.values().map(|s| s.removals.len()).sum()
    }
}

/// The removals of a message that are not upserted elsewhere in it: an event that moved to
/// another sport is both removed from the old sport and upserted in the new one, and is still
/// there afterwards.
pub fn net_removals(sports: &BTreeMap<String, SportDelta>) -> Vec<&str> {
    let upserted: HashSet<&str> = sports
        .values()
        .flat_map(|b| &b.upserts)
        .map(|e| e.id.as_str())
        .collect();
    sports
        .values()
        .flat_map(|b| &b.removals)
        .map(String::as_str)
        .filter(|id| !upserted.contains(id))
        .collect()
}

impl Book {
    /// An empty stream with a new epoch.
    pub fn new(epoch: impl Into<String>) -> Self {
        Self {
            epoch: epoch.into(),
            seq: 0,
            sport_seqs: BTreeMap::new(),
            events: HashMap::new(),
            suspended: 0,
            removed: HashMap::new(),
            removed_order: BTreeSet::new(),
        }
    }

    /// A stream continued from a saved state (the Redis state keys).
    pub fn restore(
        epoch: impl Into<String>,
        seq: u64,
        sport_seqs: BTreeMap<String, u64>,
        events: impl IntoIterator<Item = Event>,
        removed: impl IntoIterator<Item = (String, Removed)>,
    ) -> Self {
        let mut book = Self {
            epoch: epoch.into(),
            seq,
            sport_seqs,
            events: events.into_iter().map(|e| (e.id.clone(), e)).collect(),
            suspended: 0,
            removed: HashMap::new(),
            removed_order: BTreeSet::new(),
        };
        book.suspended = book.events.values().filter(|e| e.view.suspended).count();
        for (id, r) in removed {
            if !book.events.contains_key(&id) {
                book.remember_removal(id, r);
            }
        }
        book.forget_oldest_removals();
        book
    }

    /// What the book remembers of a removed event.
    pub fn removed(&self, id: &str) -> Option<Removed> {
        self.removed.get(id).copied()
    }

    /// Every remembered removal, for writing the state.
    pub fn removals(&self) -> impl Iterator<Item = (&str, Removed)> {
        self.removed.iter().map(|(id, r)| (id.as_str(), *r))
    }

    /// The `event:<id>` room's seq: the event's version, the version of its removal, or 0.
    pub fn event_seq(&self, id: &str) -> u64 {
        self.events
            .get(id)
            .map(|e| e.version)
            .or_else(|| self.removed.get(id).map(|r| r.version))
            .unwrap_or(0)
    }

    fn remember_removal(&mut self, id: String, removed: Removed) {
        self.forget_removal(&id);
        self.removed_order.insert((removed.seq, id.clone()));
        self.removed.insert(id, removed);
    }

    /// Drops what the book remembers of a removed event (it came back).
    fn forget_removal(&mut self, id: &str) {
        if let Some(r) = self.removed.remove(id) {
            self.removed_order.remove(&(r.seq, id.to_string()));
        }
    }

    /// Forgets the oldest removals beyond [`REMOVED_KEPT`]; returns the ids forgotten.
    fn forget_oldest_removals(&mut self) -> Vec<String> {
        let mut forgotten = Vec::new();
        while self.removed.len() > REMOVED_KEPT {
            let Some((_, id)) = self.removed_order.pop_first() else {
                break;
            };
            self.removed.remove(&id);
            forgotten.push(id);
        }
        forgotten
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn sport_seqs(&self) -> &BTreeMap<String, u64> {
        &self.sport_seqs
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.values()
    }

    pub fn get(&self, id: &str) -> Option<&Event> {
        self.events.get(id)
    }

    /// Compares the active events of a tick with the published state.
    ///
    /// `current` is in publishing order (live first, then start time); upserts keep that
    /// order. Ids must be unique; a later duplicate is ignored. Returns `None` when nothing a
    /// client would see changed.
    pub fn diff(&self, current: &[(String, EventView)]) -> Option<Delta> {
        self.propose(current, |seen| {
            self.events
                .values()
                .filter(|e| !seen.contains(e.id.as_str()))
                .collect()
        })
    }

    /// Like [`Book::diff`], for a read of only the events that changed: `changed` are those
    /// still active, `gone` those that are not (an id in both counts as active). Events in
    /// neither are left as they are.
    pub fn diff_changed(&self, changed: &[(String, EventView)], gone: &[String]) -> Option<Delta> {
        self.propose(changed, |seen| {
            gone.iter()
                .filter(|id| !seen.contains(id.as_str()))
                .filter_map(|id| self.events.get(id))
                .collect()
        })
    }

    /// The delta that upserts what differs in `current` and removes the events `gone` picks
    /// (given the ids of `current`).
    fn propose<'a>(
        &'a self,
        current: &'a [(String, EventView)],
        gone: impl FnOnce(&HashSet<&'a str>) -> Vec<&'a Event>,
    ) -> Option<Delta> {
        let mut sports: BTreeMap<String, SportDelta> = BTreeMap::new();
        let mut seen: HashSet<&str> = HashSet::with_capacity(current.len());
        let entry = |sports: &mut BTreeMap<String, SportDelta>, sport: &str| {
            if !sports.contains_key(sport) {
                sports.insert(
                    sport.to_string(),
                    SportDelta {
                        seq: self.sport_seqs.get(sport).copied().unwrap_or(0) + 1,
                        upserts: Vec::new(),
                        removals: Vec::new(),
                        removal_versions: BTreeMap::new(),
                    },
                );
            }
        };

        for (id, view) in current {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let version = match self.events.get(id) {
                Some(published) if published.view == *view => continue,
                Some(published) => {
                    // An event that moved to another sport leaves the old sport's block.
                    if published.view.sport != view.sport {
                        entry(&mut sports, &published.view.sport);
                        if let Some(old) = sports.get_mut(&published.view.sport) {
                            old.removals.push(id.clone());
                        }
                    }
                    published.version + 1
                }
                // A returning event continues after its removal's version.
                None => self.removed.get(id).map_or(1, |r| r.version + 1),
            };
            entry(&mut sports, &view.sport);
            if let Some(block) = sports.get_mut(&view.sport) {
                block.upserts.push(Event {
                    id: id.clone(),
                    version,
                    view: view.clone(),
                });
            }
        }

        let mut gone = gone(&seen);
        gone.sort_by(|a, b| a.id.cmp(&b.id));
        gone.dedup_by(|a, b| a.id == b.id);
        for event in gone {
            entry(&mut sports, &event.view.sport);
            if let Some(block) = sports.get_mut(&event.view.sport) {
                block.removals.push(event.id.clone());
                block
                    .removal_versions
                    .insert(event.id.clone(), event.version + 1);
            }
        }

        if sports.is_empty() {
            return None;
        }
        Some(Delta {
            seq: self.seq + 1,
            sports,
        })
    }

    /// Number of published events that are suspended.
    pub fn suspended(&self) -> usize {
        self.suspended
    }

    /// Commits a delta produced by [`Book::diff`] on this book (its events move in). Returns
    /// the ids of removals the book forgot to stay within [`REMOVED_KEPT`].
    pub fn apply(&mut self, delta: Delta) -> Vec<String> {
        debug_assert_eq!(delta.seq, self.seq + 1, "delta from another book state");
        self.seq = delta.seq;
        for (sport, block) in &delta.sports {
            self.sport_seqs.insert(sport.clone(), block.seq);
            for id in &block.removals {
                // A move between sports appears as a removal in the old sport and an upsert in
                // the new one: the upserts below bring it back and forget the removal.
                if self.events.get(id).is_none_or(|e| e.view.sport != *sport) {
                    continue;
                }
                let Some(event) = self.events.remove(id) else {
                    continue;
                };
                self.suspended -= usize::from(event.view.suspended);
                let version = block
                    .removal_versions
                    .get(id)
                    .copied()
                    .unwrap_or(event.version + 1);
                let seq = delta.seq;
                self.remember_removal(id.clone(), Removed { version, seq });
            }
        }
        for block in delta.sports.into_values() {
            for event in block.upserts {
                self.forget_removal(&event.id);
                self.suspended += usize::from(event.view.suspended);
                if let Some(old) = self.events.insert(event.id.clone(), event) {
                    self.suspended -= usize::from(old.view.suspended);
                }
            }
        }
        self.forget_oldest_removals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odds::event::Outcome;
    use proptest::prelude::*;

    fn view(sport: &str, p: f64) -> EventView {
        EventView {
            sport: sport.into(),
            league: None,
            title: "A vs B".into(),
            team_a: Some("A".into()),
            team_b: Some("B".into()),
            is_esports: false,
            live: false,
            game_status: None,
            score: None,
            period: None,
            elapsed: None,
            start_time: None,
            outcomes: vec![
                Outcome {
                    name: "YES".into(),
                    probability: Some(p),
                    odds: None,
                },
                Outcome {
                    name: "NO".into(),
                    probability: Some(1.0 - p),
                    odds: None,
                },
            ],
            yes_odds: Some(p),
            no_odds: Some(1.0 - p),
            odds_source: None,
            suspended: false,
            suspended_reason: None,
        }
    }

    fn step(book: &mut Book, current: &[(String, EventView)]) -> Option<Delta> {
        let delta = book.diff(current)?;
        book.apply(delta.clone());
        Some(delta)
    }

    #[test]
    fn restore_keeps_removed_versions_and_order() {
        let mut book = Book::new("e1");
        step(&mut book, &[("a".to_string(), view("football", 0.5))]);
        step(&mut book, &[]);
        let removals: Vec<(String, Removed)> =
            book.removals().map(|(id, r)| (id.to_string(), r)).collect();
        let restored = Book::restore(
            "e1",
            book.seq(),
            book.sport_seqs().clone(),
            book.events().cloned(),
            removals,
        );
        assert_eq!(restored, book);
        assert_eq!(restored.removed("a"), Some(Removed { version: 2, seq: 2 }));
    }

    #[test]
    fn first_tick_upserts_everything_then_nothing() {
        let mut book = Book::new("e1");
        let current = vec![
            ("a".to_string(), view("football", 0.5)),
            ("b".to_string(), view("tennis", 0.3)),
        ];
        let delta = step(&mut book, &current).unwrap();
        assert_eq!(delta.seq, 1);
        assert_eq!(delta.sports["football"].seq, 1);
        assert_eq!(delta.sports["football"].upserts[0].version, 1);
        assert_eq!(delta.sports["tennis"].upserts[0].id, "b");
        assert!(
            book.diff(&current).is_none(),
            "unchanged tick publishes nothing"
        );
    }

    #[test]
    fn change_bumps_version_seq_and_only_that_sport() {
        let mut book = Book::new("e1");
        let mut current = vec![
            ("a".to_string(), view("football", 0.5)),
            ("b".to_string(), view("tennis", 0.3)),
        ];
        step(&mut book, &current);
        current[0].1 = view("football", 0.6);
        let delta = step(&mut book, &current).unwrap();
        assert_eq!(delta.seq, 2);
        assert_eq!(delta.sports.len(), 1);
        assert_eq!(delta.sports["football"].seq, 2);
        assert_eq!(delta.sports["football"].upserts[0].version, 2);
        assert_eq!(book.sport_seqs()["tennis"], 1);
    }

    #[test]
    fn removal_and_return() {
        let mut book = Book::new("e1");
        step(&mut book, &[("a".to_string(), view("football", 0.5))]);
        let delta = step(&mut book, &[]).unwrap();
        assert_eq!(delta.sports["football"].removals, vec!["a".to_string()]);
        assert_eq!(delta.sports["football"].seq, 2);
        assert!(book.is_empty());
        assert_eq!(delta.sports["football"].removal_versions["a"], 2);
        assert_eq!(
            book.event_seq("a"),
            2,
            "the event room's seq is the removal's version"
        );
        let delta = step(&mut book, &[("a".to_string(), view("football", 0.5))]).unwrap();
        assert_eq!(delta.sports["football"].seq, 3, "sport seq continues");
        assert_eq!(
            delta.sports["football"].upserts[0].version, 3,
            "removed at 2, back at 3"
        );
        assert!(book.removed("a").is_none());
    }

    #[test]
    fn moving_sport_removes_from_old_and_upserts_in_new() {
        let mut book = Book::new("e1");
        step(&mut book, &[("a".to_string(), view("football", 0.5))]);
        let delta = step(&mut book, &[("a".to_string(), view("futsal", 0.5))]).unwrap();
        assert_eq!(delta.sports["football"].removals, vec!["a".to_string()]);
        assert!(
            delta.sports["football"].removal_versions.is_empty(),
            "a move is one upsert, not a removal of the event"
        );
        assert_eq!(delta.sports["futsal"].upserts[0].version, 2);
        assert_eq!(book.get("a").unwrap().view.sport, "futsal");
        assert_eq!(book.len(), 1);
    }

    proptest! {
        /// Replaying any sequence of ticks: seq rises by one per message, each sport's seq by
        /// one per message touching it, each version by one per upsert, and the book always
        /// equals the last tick's input.
        #[test]
        fn sequence_numbers_are_contiguous(ticks in prop::collection::vec(
            prop::collection::vec((0u8..6, 0u8..3, 0u8..4), 0..6), 1..20)) {
            let sports = ["football", "tennis", "esports"];
            let mut book = Book::new("e");
            let mut sport_seq: BTreeMap<String, u64> = BTreeMap::new();
            let mut versions: HashMap<String, u64> = HashMap::new();
            for tick in ticks {
                let mut current: Vec<(String, EventView)> = Vec::new();
                for (id, sport, p) in tick {
                    let id = format!("e{id}");
                    if current.iter().any(|(i, _)| *i == id) { continue; }
                    current.push((id, view(sports[sport as usize], f64::from(p) / 4.0)));
                }
                let before = book.seq();
                match step(&mut book, &current) {
                    None => prop_assert_eq!(book.seq(), before),
                    Some(delta) => {
                        prop_assert_eq!(delta.seq, before + 1);
                        for (sport, block) in &delta.sports {
                            let expect = sport_seq.get(sport).copied().unwrap_or(0) + 1;
                            prop_assert_eq!(block.seq, expect);
                            sport_seq.insert(sport.clone(), expect);
                            prop_assert!(!block.upserts.is_empty() || !block.removals.is_empty());
                            for e in &block.upserts {
                                let v = versions.get(&e.id).copied().unwrap_or(0) + 1;
                                prop_assert_eq!(e.version, v);
                                versions.insert(e.id.clone(), v);
                            }
                        }
                        for block in delta.sports.values() {
                            for id in &block.removals {
                                if !current.iter().any(|(i, _)| i == id) {
                                    // A removal takes the next version; a return the one after.
                                    let v = versions.get(id).copied().unwrap_or(0) + 1;
                                    prop_assert_eq!(block.removal_versions.get(id), Some(&v));
                                    versions.insert(id.clone(), v);
                                    prop_assert_eq!(book.event_seq(id), v);
                                }
                            }
                        }
                    }
                }
                prop_assert_eq!(book.len(), current.len());
                for (id, v) in &current {
                    prop_assert_eq!(&book.get(id).unwrap().view, v);
                }
            }
        }

        /// A read of only what changed (plus some ids that did not) proposes exactly the
        /// delta a full read does, and the suspended count stays what a recount gives.
        #[test]
        fn a_changed_read_proposes_what_a_full_read_does(ticks in prop::collection::vec(
            (prop::collection::vec((0u8..6, 0u8..3, 0u8..5), 0..6), prop::collection::vec(0u8..6, 0..3)),
            1..20)) {
            let sports = ["football", "tennis", "esports"];
            let mut book = Book::new("e");
            for (tick, extra) in ticks {
                let mut current: Vec<(String, EventView)> = Vec::new();
                for (id, sport, p) in tick {
                    let id = format!("e{id}");
                    if current.iter().any(|(i, _)| *i == id) { continue; }
                    let mut v = view(sports[sport as usize], f64::from(p) / 4.0);
                    v.suspended = p == 4;
                    current.push((id, v));
                }
                let differs = |id: &str, v: Option<&EventView>| book.get(id).map(|e| &e.view) != v;
                let named = |id: &str| {
                    let v = current.iter().find(|(i, _)| i == id).map(|(_, v)| v);
                    differs(id, v) || extra.iter().any(|x| format!("e{x}") == id)
                };
                let changed: Vec<(String, EventView)> =
                    current.iter().filter(|(id, _)| named(id)).cloned().collect();
                let gone: Vec<String> = book
                    .events()
                    .map(|e| e.id.clone())
                    .chain(extra.iter().map(|x| format!("e{x}")))
                    .filter(|id| !current.iter().any(|(i, _)| i == id) && named(id))
                    .collect();
                let full = book.diff(&current);
                prop_assert_eq!(&book.diff_changed(&changed, &gone), &full);
                if let Some(delta) = full {
                    book.apply(delta);
                }
                let recount = book.events().filter(|e| e.view.suspended).count();
                prop_assert_eq!(book.suspended(), recount);
            }
        }
    }
}
