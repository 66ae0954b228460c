//! What the hub tells the Socket.IO endpoint, in the hub's own order.
//!
//! Socket.IO clients have no seq to detect a gap with, so "snapshot, then every change after
//! it" must hold by construction. The hub pushes everything a Socket.IO client can see into one
//! bounded queue *under its lock*: the changes of each odds message, a fresh list when the book
//! is reloaded, bridged messages, and each join with the room's events at that instant. One
//! task ([`super::socketio`]) takes them in that order, so a socket that joins gets its list
//! and then exactly the changes that came after it.
//!
//! The queue is bounded in items; when it is full the item is dropped and the hub remembers
//! it, and its next odds message is replaced by the whole book (counted), which is what the
//! earlier relay sent every 500 ms anyway.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::odds::Event;

/// How many items may wait for the Socket.IO task.
pub const FEED_CAPACITY: usize = 4096;

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
    /// The book was replaced (loaded from Redis): everything, as the new list.
    Reset { events: Vec<Event> },
    /// A socket joins `room` (`None`: the global list, on connect; `Some(key)`: a sport):
    /// its list first, then it is in the room.
    Join {
        socket: SocketId,
        sport: Option<String>,
        events: Vec<Event>,
    },
    /// A message on a bridged Redis channel.
    Bridged { channel: String, data: Value },
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
    tx: mpsc::Sender<FeedItem>,
    /// An item was dropped: the next odds message goes out as the whole book.
    pub lost: bool,
}

impl Feed {
    /// A feed and the receiver the Socket.IO task reads.
    pub fn new() -> (Self, mpsc::Receiver<FeedItem>) {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        (Self { tx, lost: false }, rx)
    }

    /// Queues `item` without waiting (the hub holds its lock); remembers a drop.
    pub fn push(&mut self, item: FeedItem) {
        if self.tx.try_send(item).is_err() {
            if !self.lost {
                tracing::warn!(
                    "the Socket.IO feed is full; its clients get the whole book with the next change"
                );
            }
            metrics::counter!(crate::telemetry::SOCKETIO_FEED_DROPPED).increment(1);
            self.lost = true;
        }
    }
}
