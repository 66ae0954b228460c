//! The Redis side of the odds stream: state keys, the fenced MULTI/EXEC publish, heartbeats,
//! and loading the state back.
//!
//! Keys, named after the channel `C` (default `sports-odds`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `C:state:events` | hash | event id → EVENT JSON as last published (with its `version`) |
//! | `C:state:meta` | hash | `epoch`, `seq`, `publishedAt`, and `sport:<key>` → that sport's seq |
//! | `C:state:removed` | hash | id of an event that left the active set → `<version>:<seq>`, the version its removal carried and the global seq of that message (the most recent 100,000) |
//!
//! Every `odds` message is written as `WATCH meta; HMGET meta epoch seq` then
//! `MULTI; HSET/HDEL events; HSET meta; PUBLISH C; EXEC`. The check between the two makes the
//! write conditional on the state being exactly the one this publisher last wrote, so a second
//! publisher that wrongly believes it leads, or a reply lost after a successful EXEC, can never
//! produce a duplicated or skipped seq: the publisher reloads instead. Heartbeats go through the
//! same fence, so state keys that vanished (Redis restarted empty) are rewritten at the next
//! heartbeat even when nothing changes, and a state that went backwards is noticed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::odds::book::Removed;
use crate::odds::{Book, ChannelMessage, Delta, Event, Heartbeat, OddsMessageRef, net_removals};

/// Names of the state keys of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKeys {
    /// Hash of event id → EVENT JSON.
    pub events: String,
    /// Hash of epoch, seq, publishedAt and per-sport seqs.
    pub meta: String,
    /// Hash of removed event id → `<version>:<seq>`.
    pub removed: String,
}

impl StateKeys {
    pub fn for_channel(channel: &str) -> Self {
        Self {
            events: format!("{channel}:state:events"),
            meta: format!("{channel}:state:meta"),
            removed: format!("{channel}:state:removed"),
        }
    }
}

/// Prefix of the per-sport seq fields in the meta hash.
const SPORT_FIELD_PREFIX: &str = "sport:";

/// The state as stored in Redis: enough to continue the stream exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    pub epoch: String,
    pub seq: u64,
    pub sport_seqs: BTreeMap<String, u64>,
    pub events: Vec<Event>,
    /// Removed events: their removal's version and seq.
    pub removed: Vec<(String, Removed)>,
}

impl StoredState {
    pub fn into_book(self) -> Book {
        Book::restore(
            self.epoch,
            self.seq,
            self.sport_seqs,
            self.events,
            self.removed,
        )
    }
}

/// What goes on the channel with a fenced write.
#[derive(Debug, Clone, Copy)]
pub enum Outgoing<'a> {
    /// An `odds` message for this delta; the state keys are updated with it.
    Odds { delta: &'a Delta, tick_at: i64 },
    /// A heartbeat: the state keys are only checked (and rewritten when they are gone).
    Heartbeat,
}

/// The state the fenced write expects to find in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly the book's epoch and seq (the normal case).
    Book,
    /// This older state, which the book replaces under a new epoch (the stored state fell
    /// behind what was published: see `Scheduler`). The whole state is rewritten.
    Replace(Option<(String, u64)>),
}

/// The meta hash fields of per-sport seqs.
fn sport_fields<'a>(seqs: impl Iterator<Item = (&'a String, u64)>) -> Vec<(String, String)> {
    seqs.map(|(k, v)| (format!("{SPORT_FIELD_PREFIX}{k}"), v.to_string()))
        .collect()
}

fn removed_value(r: Removed) -> String {
    format!("{}:{}", r.version, r.seq)
}

fn parse_removed(value: &str) -> Option<Removed> {
    let (version, seq) = value.split_once(':')?;
    Some(Removed {
        version: version.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// What a fenced publish found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Written and published: the message's size, how many subscribers received it, and
    /// whether the whole state had to be written again.
    Published {
        bytes: usize,
        receivers: i64,
        rewrote_state: bool,
    },
    /// The state in Redis is not the one the book continues from (another writer, or a write
    /// whose reply was lost). Nothing was written; reload the state.
    Conflict { found: Option<(String, u64)> },
}

/// Opens a self-reconnecting Redis connection. It connects lazily, so a Redis that is down at
/// boot delays the first command, not the process.
pub fn connection(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).with_context(|| format!("Invalid REDIS_URL {url:?}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(2);
    ConnectionManager::new_lazy_with_config(client, config)
        .context("Failed to create the Redis connection manager")
}

/// Publisher-side access to one odds channel and its state keys.
pub struct OddsBus {
    /// Dedicated to the publisher so that WATCH/MULTI/EXEC are never interleaved with another
    /// task's commands.
    conn: ConnectionManager,
    channel: String,
    keys: StateKeys,
}

impl OddsBus {
    pub fn new(conn: ConnectionManager, channel: impl Into<String>) -> Self {
        let channel = channel.into();
        Self {
            conn,
            keys: StateKeys::for_channel(&channel),
            channel,
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Loads the stored state, or `None` when the stream has never started (no meta).
    pub async fn load_state(&mut self) -> anyhow::Result<Option<StoredState>> {
        load_state(&mut self.conn, &self.keys).await
    }

    /// Publishes `outgoing` (writing a delta to the state keys in the same MULTI/EXEC),
    /// provided the stored state is the one `expect` names (see the module docs). `forgotten`
    /// are removals the book no longer remembers; their entries are dropped from the state.
    ///
    /// When Redis has no state at all (it restarted empty), or `expect` says the book replaces
    /// what is there, the whole book is written again with the message, so late joiners find a
    /// state that matches the last seq.
    pub async fn publish(
        &mut self,
        book: &Book,
        outgoing: Outgoing<'_>,
        expect: &Expect,
        forgotten: &[String],
    ) -> anyhow::Result<PublishOutcome> {
        let ((epoch, seq),): ((Option<String>, Option<u64>),) = redis::pipe()
            .cmd("WATCH")
            .arg(&self.keys.meta)
            .ignore()
            .cmd("HMGET")
            .arg(&self.keys.meta)
            .arg("epoch")
            .arg("seq")
            .query_async(&mut self.conn)
            .await
            .context("Failed to read the stream meta from Redis")?;

        let found = epoch.zip(seq);
        let rewrite_all = match (&found, expect) {
            (None, _) => true,
            (found, Expect::Replace(old)) if found == old => true,
            (Some((e, s)), Expect::Book) if e == book.epoch() && *s == book.seq() => false,
            _ => {
                redis::cmd("UNWATCH").exec_async(&mut self.conn).await.ok();
                return Ok(PublishOutcome::Conflict { found });
            }
        };

        let published_at_us = now_us();
        let published_at = published_at_us.div_euclid(1000);
        let (payload, seq) = match outgoing {
            Outgoing::Odds { delta, tick_at } => (
                serde_json::to_string(&OddsMessageRef::new(
                    book.epoch(),
                    delta.seq,
                    tick_at,
                    published_at_us,
                    &delta.sports,
                ))
                .context("Failed to serialise the odds message")?,
                delta.seq,
            ),
            Outgoing::Heartbeat => (
                serde_json::to_string(&ChannelMessage::Heartbeat(Heartbeat {
                    epoch: book.epoch().to_string(),
                    seq: book.seq(),
                    published_at,
                }))?,
                book.seq(),
            ),
        };

        let mut pipe = redis::pipe();
        pipe.atomic();
        if rewrite_all {
            // Lost, never-written or replaced state: the book first, this message on top.
            self.write_whole(&mut pipe, book)?;
        }
        if let Outgoing::Odds { delta, .. } = outgoing {
            self.write_delta(&mut pipe, book, delta, forgotten)?;
        }
        if rewrite_all || matches!(outgoing, Outgoing::Odds { .. }) {
            let mut meta = vec![
                ("epoch", book.epoch().to_string()),
                ("seq", seq.to_string()),
            ];
            if matches!(outgoing, Outgoing::Odds { .. }) {
                meta.push(("publishedAt", published_at.to_string()));
            }
            pipe.hset_multiple(&self.keys.meta, &meta).ignore();
        }
        pipe.publish(&self.channel, &payload);

        let result: Option<(i64,)> = pipe
            .query_async(&mut self.conn)
            .await
            .context("Failed to write the odds state and PUBLISH")?;
        Ok(match result {
            Some((receivers,)) => PublishOutcome::Published {
                bytes: payload.len(),
                receivers,
                rewrote_state: rewrite_all,
            },
            // EXEC returned nil: meta changed between the check and the write.
            None => PublishOutcome::Conflict { found: None },
        })
    }

    /// Replaces every state key by `book`.
    fn write_whole(&self, pipe: &mut redis::Pipeline, book: &Book) -> anyhow::Result<()> {
        pipe.del(&self.keys.events).ignore();
        pipe.del(&self.keys.meta).ignore();
        pipe.del(&self.keys.removed).ignore();
        let all = book
            .events()
            .map(|e| Ok((e.id.clone(), serde_json::to_string(e)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        for chunk in all.chunks(500) {
            pipe.hset_multiple(&self.keys.events, chunk).ignore();
        }
        let removed: Vec<(&str, String)> = book
            .removals()
            .map(|(id, r)| (id, removed_value(r)))
            .collect();
        for chunk in removed.chunks(500) {
            pipe.hset_multiple(&self.keys.removed, chunk).ignore();
        }
        let sports = sport_fields(book.sport_seqs().iter().map(|(k, v)| (k, *v)));
        if !sports.is_empty() {
            pipe.hset_multiple(&self.keys.meta, &sports).ignore();
        }
        Ok(())
    }

    /// Adds one delta to the state keys.
    fn write_delta(
        &self,
        pipe: &mut redis::Pipeline,
        book: &Book,
        delta: &Delta,
        forgotten: &[String],
    ) -> anyhow::Result<()> {
        let mut upserts = Vec::with_capacity(delta.upserts());
        let mut returned = Vec::new();
        for event in delta.sports.values().flat_map(|b| &b.upserts) {
            upserts.push((event.id.as_str(), serde_json::to_string(event)?));
            if book.removed(&event.id).is_some() {
                returned.push(event.id.as_str());
            }
        }
        let removals = net_removals(&delta.sports);
        if !removals.is_empty() {
            pipe.hdel(&self.keys.events, &removals).ignore();
            let versions: Vec<(&str, String)> = delta
                .sports
                .values()
                .flat_map(|b| &b.removal_versions)
                .map(|(id, version)| {
                    (
                        id.as_str(),
                        removed_value(Removed {
                            version: *version,
                            seq: delta.seq,
                        }),
                    )
                })
                .collect();
            if !versions.is_empty() {
                pipe.hset_multiple(&self.keys.removed, &versions).ignore();
            }
        }
        if !returned.is_empty() {
            pipe.hdel(&self.keys.removed, &returned).ignore();
        }
        if !forgotten.is_empty() {
            pipe.hdel(&self.keys.removed, forgotten).ignore();
        }
        if !upserts.is_empty() {
            pipe.hset_multiple(&self.keys.events, &upserts).ignore();
        }
        let sports = sport_fields(delta.sports.iter().map(|(k, b)| (k, b.seq)));
        pipe.hset_multiple(&self.keys.meta, &sports).ignore();
        Ok(())
    }
}

/// Reads meta and events in one MULTI/EXEC so they describe the same seq.
pub async fn load_state(
    conn: &mut ConnectionManager,
    keys: &StateKeys,
) -> anyhow::Result<Option<StoredState>> {
    type Fields = Vec<(String, String)>;
    let (meta, events, removed): (BTreeMap<String, String>, Fields, Fields) = redis::pipe()
        .atomic()
        .hgetall(&keys.meta)
        .hgetall(&keys.events)
        .hgetall(&keys.removed)
        .query_async(conn)
        .await
        .context("Failed to load the odds state from Redis")?;
    let Some(epoch) = meta.get("epoch").cloned() else {
        return Ok(None);
    };
    let seq = meta
        .get("seq")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{} has an epoch but no valid seq", keys.meta))?;
    let mut sport_seqs = BTreeMap::new();
    for (field, value) in &meta {
        if let Some(sport) = field.strip_prefix(SPORT_FIELD_PREFIX) {
            let seq = value
                .parse()
                .with_context(|| format!("{}: bad seq {value:?} for {field}", keys.meta))?;
            sport_seqs.insert(sport.to_string(), seq);
        }
    }
    let events = events
        .into_iter()
        .map(|(id, json)| {
            serde_json::from_str::<Event>(&json)
                .with_context(|| format!("{}: event {id} is not a valid EVENT", keys.events))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A malformed removal entry costs only that event's version history: it is skipped.
    let removed = removed
        .into_iter()
        .filter_map(|(id, value)| parse_removed(&value).map(|r| (id, r)))
        .collect();
    Ok(Some(StoredState {
        epoch,
        seq,
        sport_seqs,
        events,
        removed,
    }))
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix time in microseconds.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
