//! What the hub tells the Socket.IO endpoint, in the hub's own order.
//!
//! Socket.IO clients have no seq to detect a gap with, so "snapshot, then every change after
//! it" must hold by construction. The hub pushes everything a Socket.IO client can see into one
//! bounded queue *under its lock*: the changes of each odds message, a fresh list when the book
//! is reloaded, bridged messages, and each join with the room's events at that instant. One
//! task ([`super::socketio`]) takes them in that order, so a socket that joins gets its list
//! and then exactly the changes that came after it.
//!
//! The queue is bounded in items ([`FEED_CAPACITY`]) and in bytes ([`FEED_MAX_BYTES`], an
//! estimate of what its items hold that is not shared with the hub: changes, bridged
//! messages); when either is full the item is dropped and the hub remembers it, and its next
//! odds message is replaced by the whole book (counted), which is what the earlier relay sent
//! every 500 ms anyway.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::odds::Event;

/// How many items may wait for the Socket.IO task.
pub const FEED_CAPACITY: usize = 4096;

/// How many bytes (estimated, see [`FeedItem::bytes`]) the waiting items may hold.
pub const FEED_MAX_BYTES: usize = 64 << 20;

/// A Socket.IO connection, as socketioxide names it.
pub type SocketId = socketioxide::socket::Sid;

/// Something every Socket.IO client in a room may need to hear of.
#[derive(Debug)]
pub enum FeedItem {
    /// One odds message: per sport key, its upserts and the events it removed (their last
    /// published form). `all_removed` excludes events that only moved sport.
    Odds {
        published_at: DateTime<Utc>,
        sports: Vec<SportChange>,
        all_removed: Vec<Event>,
    },
    /// The book was replaced (loaded from Redis), or items were dropped: everything, as the
    /// new list, and the events that went away meanwhile (their last published form).
    Reset {
        events: Arc<Vec<Event>>,
        removed: Vec<Event>,
    },
    /// A socket joins the global list (`sport` `None`, on connect) or a sport's: its list
    /// (`events` is the whole book in publishing order, shared; the task picks the sport's),
    /// then it is in the room.
    Join {
        socket: SocketId,
        sport: Option<String>,
        events: Arc<Vec<Event>>,
    },
    /// A socket leaves a sport's room, in order with its joins.
    Leave { socket: SocketId, sport: String },
    /// A message on a bridged Redis channel.
    Bridged { channel: String, data: Value },
}

impl FeedItem {
    /// An estimate of the memory the item holds of its own (lists shared with the hub, as
    /// `Arc`s, are not counted): what the byte bound of the queue counts.
    pub fn bytes(&self) -> usize {
        let events = |list: &[Event]| list.iter().map(event_bytes).sum::<usize>();
        std::mem::size_of::<Self>()
            + match self {
                FeedItem::Odds {
                    sports,
                    all_removed,
                    ..
                } => {
                    sports
                        .iter()
                        .map(|s| s.key.len() + events(&s.upserts) + events(&s.removed))
                        .sum::<usize>()
                        + events(all_removed)
                }
                FeedItem::Reset { removed, .. } => events(removed),
                FeedItem::Join { sport, .. } => sport.as_ref().map_or(0, String::len),
                FeedItem::Leave { sport, .. } => sport.len(),
                FeedItem::Bridged { channel, data } => channel.len() + value_bytes(data),
            }
    }
}

/// An event's size, inline and in its strings (an estimate: allocator overhead is left out).
fn event_bytes(e: &Event) -> usize {
    let v = &e.view;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    std::mem::size_of::<Event>()
        + e.id.len()
        + v.sport.len()
        + v.title.len()
        + opt(&v.league)
        + opt(&v.team_a)
        + opt(&v.team_b)
        + opt(&v.game_status)
        + opt(&v.score)
        + opt(&v.period)
        + opt(&v.elapsed)
        + opt(&v.suspended_reason)
        + v.outcomes
            .iter()
            .map(|o| std::mem::size_of_val(o) + o.name.len())
            .sum::<usize>()
}

/// A JSON value's size, about as serialized (its in-memory form is of the same order).
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(|x| value_bytes(x) + 1).sum::<usize>(),
        Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, x)| k.len() + 4 + value_bytes(x))
                .sum::<usize>()
        }
        _ => 8,
    }
}

/// The changes of one sport in an odds message.
#[derive(Debug)]
pub struct SportChange {
    pub key: String,
    pub upserts: Vec<Event>,
    pub removed: Vec<Event>,
}

/// The hub's end of the queue.
#[derive(Debug)]
pub struct Feed {
    tx: mpsc::Sender<(FeedItem, usize)>,
    /// Bytes of the items waiting (shared with [`FeedReceiver`]).
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// An item was dropped: the next odds message goes out as the whole book.
    pub lost: bool,
    /// Events removed by odds items that were dropped (by id), announced with the next reset.
    pub removed: HashMap<String, Event>,
}

/// The Socket.IO task's end of the queue.
#[derive(Debug)]
pub struct FeedReceiver {
    rx: mpsc::Receiver<(FeedItem, usize)>,
    bytes: Arc<AtomicUsize>,
}

impl FeedReceiver {
    /// The next item, in the hub's order; `None` once the hub is gone.
    pub async fn recv(&mut self) -> Option<FeedItem> {
        let (item, bytes) = self.rx.recv().await?;
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        Some(item)
    }
}

impl Feed {
    /// A feed bounded by [`FEED_CAPACITY`] items and [`FEED_MAX_BYTES`], and the receiver the
    /// Socket.IO task reads.
    pub fn new() -> (Self, FeedReceiver) {
        Self::with_limits(FEED_CAPACITY, FEED_MAX_BYTES)
    }

    /// A feed with other bounds (tests).
    pub fn with_limits(items: usize, max_bytes: usize) -> (Self, FeedReceiver) {
        let (tx, rx) = mpsc::channel(items.max(1));
        let bytes = Arc::new(AtomicUsize::new(0));
        (
            Self {
                tx,
                bytes: bytes.clone(),
                max_bytes,
                lost: false,
                removed: HashMap::new(),
            },
            FeedReceiver { rx, bytes },
        )
    }

    /// Queues `item` without waiting (the hub holds its lock); remembers a drop (and what a
    /// dropped odds item removed). Returns whether it was queued.
    pub fn push(&mut self, item: FeedItem) -> bool {
        let bytes = item.bytes();
        // Counted before it is sent, so the receiver never subtracts what is not added yet;
        // only the hub adds, under its lock, so the check and the add cannot interleave.
        let item = if self.bytes.load(Ordering::Relaxed) + bytes > self.max_bytes {
            item
        } else {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            match self.tx.try_send((item, bytes)) {
                Ok(()) => return true,
                Err(e) => {
                    self.bytes.fetch_sub(bytes, Ordering::Relaxed);
                    e.into_inner().0
                }
            }
        };
        if let FeedItem::Odds { all_removed, .. } = item {
            // Once each: a feed full for long must not grow this without bound.
            self.removed
                .extend(all_removed.into_iter().map(|e| (e.id.clone(), e)));
        }
        {
            if !self.lost {
                tracing::warn!(
                    "the Socket.IO feed is full (items or bytes); its clients get the whole book with the next change"
                );
            }
            metrics::counter!(crate::telemetry::SOCKETIO_FEED_DROPPED).increment(1);
            self.lost = true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridged(bytes: usize) -> FeedItem {
        FeedItem::Bridged {
            channel: "chat-messages".into(),
            data: Value::String("x".repeat(bytes)),
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_as_well_as_items() {
        let (mut feed, mut rx) = Feed::with_limits(100, 10_000);
        // Four items of ~3 KB: the fourth does not fit in 10 KB although items are left.
        assert!(feed.push(bridged(3000)));
        assert!(feed.push(bridged(3000)));
        assert!(feed.push(bridged(3000)));
        assert!(!feed.push(bridged(3000)));
        assert!(feed.lost);
        // Taking one gives its bytes back.
        assert!(matches!(rx.recv().await, Some(FeedItem::Bridged { .. })));
        assert!(feed.push(bridged(3000)));
        // One item bigger than the bound never fits.
        let (mut feed, _rx) = Feed::with_limits(100, 10_000);
        assert!(!feed.push(bridged(20_000)));
    }

    #[tokio::test]
    async fn a_full_queue_remembers_each_removed_event_once() {
        let (mut feed, _rx) = Feed::with_limits(1, 1 << 20);
        assert!(feed.push(bridged(1)));
        let event: Event = serde_json::from_value(serde_json::json!({
            "id": "e1", "version": 3, "sport": "football", "league": null, "title": "A v B",
            "teamA": null, "teamB": null, "isEsports": false, "live": false, "gameStatus": null,
            "score": null, "period": null, "elapsed": null, "startTime": null, "outcomes": [],
            "yesOdds": null, "noOdds": null, "oddsSource": null, "suspended": false,
            "suspendedReason": null
        }))
        .unwrap();
        for _ in 0..1000 {
            let dropped = FeedItem::Odds {
                published_at: Utc::now(),
                sports: Vec::new(),
                all_removed: vec![event.clone()],
            };
            assert!(!feed.push(dropped));
        }
        assert_eq!(feed.removed.len(), 1);
    }
}
