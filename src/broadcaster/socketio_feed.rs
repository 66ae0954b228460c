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

use std::sync::Arc;

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
    /// Events removed by odds items that were dropped, announced with the next reset.
    pub removed: Vec<Event>,
}

impl Feed {
    /// A feed and the receiver the Socket.IO task reads.
    pub fn new() -> (Self, mpsc::Receiver<FeedItem>) {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        (
            Self {
                tx,
                lost: false,
                removed: Vec::new(),
            },
            rx,
        )
    }

    /// Queues `item` without waiting (the hub holds its lock); remembers a drop (and what a
    /// dropped odds item removed). Returns whether it was queued.
    pub fn push(&mut self, item: FeedItem) -> bool {
        let item = match self.tx.try_send(item) {
            Ok(()) => return true,
            Err(e) => e.into_inner(),
        };
        if let FeedItem::Odds { all_removed, .. } = item {
            self.removed.extend(all_removed);
        }
        {
            if !self.lost {
                tracing::warn!(
                    "the Socket.IO feed is full; its clients get the whole book with the next change"
                );
            }
            metrics::counter!(crate::telemetry::SOCKETIO_FEED_DROPPED).increment(1);
            self.lost = true;
        }
        false
    }
}
