//! The Redis side of the odds stream: state keys, the fenced MULTI/EXEC publish, heartbeats,
//! and loading the state back.
//!
//! Keys, named after the channel `C` (default `sports-odds`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `C:state:events` | hash | event id → EVENT JSON as last published (with its `version`) |
//! | `C:state:meta` | hash | `epoch`, `seq`, `publishedAt`, and `sport:<key>` → that sport's seq |
//!
//! Every `odds` message is written as `WATCH meta; HMGET meta epoch seq` then
//! `MULTI; HSET/HDEL events; HSET meta; PUBLISH C; EXEC`. The check between the two makes the
//! write conditional on the state being exactly the one this publisher last wrote, so a second
//! publisher that wrongly believes it leads, or a reply lost after a successful EXEC, can never
//! produce a duplicated or skipped seq: the publisher reloads instead.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::odds::{Book, ChannelMessage, Delta, Event, Heartbeat, OddsMessageRef, net_removals};

/// Names of the state keys of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKeys {
    /// Hash of event id → EVENT JSON.
    pub events: String,
    /// Hash of epoch, seq, publishedAt and per-sport seqs.
    pub meta: String,
}

impl StateKeys {
    pub fn for_channel(channel: &str) -> Self {
        Self {
            events: format!("{channel}:state:events"),
            meta: format!("{channel}:state:meta"),
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
}

impl StoredState {
    pub fn into_book(self) -> Book {
        Book::restore(self.epoch, self.seq, self.sport_seqs, self.events)
    }
}

/// What a fenced publish found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Written and published: the message's size, and how many subscribers received it.
    Published { bytes: usize, receivers: i64 },
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

    /// Writes one delta with the state keys and publishes it, in one MULTI/EXEC, provided the
    /// stored state is the book's (see the module docs).
    ///
    /// When Redis has no state at all (it restarted empty) the whole book is written again
    /// with the delta, under the same epoch and seq, so late joiners still find a state that
    /// matches the last seq.
    pub async fn publish(
        &mut self,
        book: &Book,
        delta: &Delta,
        tick_at: i64,
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
        let rewrite_all = match &found {
            None => true,
            Some((e, s)) if e == book.epoch() && *s == book.seq() => false,
            Some(_) => {
                redis::cmd("UNWATCH").exec_async(&mut self.conn).await.ok();
                return Ok(PublishOutcome::Conflict { found });
            }
        };

        let published_at = now_ms();
        let message = OddsMessageRef::new(
            book.epoch(),
            delta.seq,
            tick_at,
            published_at,
            &delta.sports,
        );
        let payload =
            serde_json::to_string(&message).context("Failed to serialise the odds message")?;

        let mut pipe = redis::pipe();
        pipe.atomic();
        if rewrite_all {
            // Lost or never-written state: replace it by the book plus this delta.
            let mut next = book.clone();
            next.apply(delta.clone());
            pipe.del(&self.keys.events).ignore();
            pipe.del(&self.keys.meta).ignore();
            let all = next
                .events()
                .map(|e| Ok((e.id.clone(), serde_json::to_string(e)?)))
                .collect::<Result<Vec<_>, serde_json::Error>>()?;
            for chunk in all.chunks(500) {
                pipe.hset_multiple(&self.keys.events, chunk).ignore();
            }
            let sports: Vec<(String, String)> = next
                .sport_seqs()
                .iter()
                .map(|(k, v)| (format!("{SPORT_FIELD_PREFIX}{k}"), v.to_string()))
                .collect();
            if !sports.is_empty() {
                pipe.hset_multiple(&self.keys.meta, &sports).ignore();
            }
        } else {
            let mut upserts = Vec::with_capacity(delta.upserts());
            for event in delta.sports.values().flat_map(|b| &b.upserts) {
                upserts.push((event.id.as_str(), serde_json::to_string(event)?));
            }
            let removals = net_removals(&delta.sports);
            if !removals.is_empty() {
                pipe.hdel(&self.keys.events, &removals).ignore();
            }
            if !upserts.is_empty() {
                pipe.hset_multiple(&self.keys.events, &upserts).ignore();
            }
            let sports: Vec<(String, String)> = delta
                .sports
                .iter()
                .map(|(k, b)| (format!("{SPORT_FIELD_PREFIX}{k}"), b.seq.to_string()))
                .collect();
            pipe.hset_multiple(&self.keys.meta, &sports).ignore();
        }
        pipe.hset_multiple(
            &self.keys.meta,
            &[
                ("epoch", book.epoch().to_string()),
                ("seq", delta.seq.to_string()),
                ("publishedAt", published_at.to_string()),
            ],
        )
        .ignore();
        pipe.publish(&self.channel, &payload);

        let result: Option<(i64,)> = pipe
            .query_async(&mut self.conn)
            .await
            .context("Failed to write the odds state and PUBLISH")?;
        Ok(match result {
            Some((receivers,)) => PublishOutcome::Published {
                bytes: payload.len(),
                receivers,
            },
            // EXEC returned nil: meta changed between the check and the write.
            None => PublishOutcome::Conflict { found: None },
        })
    }

    /// Publishes a heartbeat (not part of the state). Returns the bytes sent.
    pub async fn heartbeat(&mut self, epoch: &str, seq: u64) -> anyhow::Result<usize> {
        let payload = serde_json::to_string(&ChannelMessage::Heartbeat(Heartbeat {
            epoch: epoch.to_string(),
            seq,
            published_at: now_ms(),
        }))?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(&payload)
            .query_async(&mut self.conn)
            .await
            .context("Failed to PUBLISH a heartbeat")?;
        Ok(payload.len())
    }
}

/// Reads meta and events in one MULTI/EXEC so they describe the same seq.
pub async fn load_state(
    conn: &mut ConnectionManager,
    keys: &StateKeys,
) -> anyhow::Result<Option<StoredState>> {
    let (meta, events): (BTreeMap<String, String>, Vec<(String, String)>) = redis::pipe()
        .atomic()
        .hgetall(&keys.meta)
        .hgetall(&keys.events)
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
    Ok(Some(StoredState {
        epoch,
        seq,
        sport_seqs,
        events,
    }))
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
