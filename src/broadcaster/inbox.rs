//! The relay's inbound queue: messages from Redis wait here, bounded in messages and bytes,
//! until the relay has handled them.
//!
//! Redis hands messages to a callback that must not block (redis-rs's push sender). When the
//! relay falls behind and the queue is full, messages are dropped and counted, and the relay
//! is told it overflowed: it then reloads the state from the Redis keys, so clients get a
//! snapshot instead of a hole, and memory stays bounded instead of growing with the backlog.
//! Bridged messages larger than `BRIDGED_MAX_BYTES` are dropped here, before they cost memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use metrics::counter;
use redis::{PushInfo, PushKind};
use tokio::sync::{Notify, mpsc};

use crate::telemetry as m;

/// Limits of the inbound queue.
#[derive(Debug, Clone, Copy)]
pub struct InboxLimits {
    /// Messages waiting at most.
    pub messages: usize,
    /// Payload bytes waiting at most (`RELAY_QUEUE_BYTES`).
    pub bytes: usize,
    /// Largest bridged payload (`BRIDGED_MAX_BYTES`); the odds channel has no such cap.
    pub bridged_max_bytes: usize,
}

/// One message from Redis.
#[derive(Debug)]
pub struct Inbound {
    pub channel: String,
    pub payload: Result<String, &'static str>,
}

/// What the producer side and the relay share.
struct Shared {
    bytes: AtomicUsize,
    overflowed: AtomicBool,
    disconnected: AtomicBool,
    /// Wakes the relay for an overflow or a disconnection (which have no queue slot).
    alarm: Notify,
}

/// The relay's end of the queue.
pub struct Inbox {
    rx: mpsc::Receiver<(Inbound, usize)>,
    shared: Arc<Shared>,
}

/// What the relay gets next.
#[derive(Debug)]
pub enum Received {
    Message(Inbound),
    /// Messages were dropped since the last call: the state must be reloaded.
    Overflowed,
    /// The connection to Redis is gone.
    Disconnected,
}

impl Inbox {
    /// A queue, and the push sender to give redis-rs for the subscribing connection.
    /// `odds_channel` is exempt from the bridged size cap.
    pub fn new(
        limits: InboxLimits,
        odds_channel: String,
    ) -> (
        Self,
        impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    ) {
        let (tx, rx) = mpsc::channel(limits.messages.max(1));
        let shared = Arc::new(Shared {
            bytes: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            disconnected: AtomicBool::new(false),
            alarm: Notify::new(),
        });
        let producer = shared.clone();
        let sender = move |push: PushInfo| -> Result<(), ()> {
            match push.kind {
                PushKind::Message => {}
                PushKind::Disconnection => {
                    producer.disconnected.store(true, Ordering::SeqCst);
                    producer.alarm.notify_one();
                    return Ok(());
                }
                // Subscription confirmations and the like.
                _ => return Ok(()),
            }
            let Some(msg) = redis::Msg::from_push_info(push) else {
                return Ok(());
            };
            let channel = msg.get_channel_name().to_string();
            let payload: Result<String, &'static str> = msg.get_payload().map_err(|_| "not_text");
            let size = payload.as_ref().map_or(0, String::len);
            if channel != odds_channel && size > limits.bridged_max_bytes {
                counter!(m::RELAY_DROPPED, "reason" => "bridged_too_large").increment(1);
                return Ok(());
            }
            let held = producer.bytes.fetch_add(size, Ordering::SeqCst);
            let fits = held == 0 || held + size <= limits.bytes;
            let queued = fits && tx.try_send((Inbound { channel, payload }, size)).is_ok();
            if !queued {
                producer.bytes.fetch_sub(size, Ordering::SeqCst);
                counter!(m::RELAY_DROPPED, "reason" => "relay_queue_full").increment(1);
                if !producer.overflowed.swap(true, Ordering::SeqCst) {
                    producer.alarm.notify_one();
                }
            }
            Ok(())
        };
        (Self { rx, shared }, sender)
    }

    /// The next thing to handle. A disconnection comes first, then an overflow (the
    /// messages still queued are older than the state about to be loaded, and are
    /// recognised as such), then messages in order.
    pub async fn recv(&mut self) -> Received {
        loop {
            if self.shared.disconnected.load(Ordering::SeqCst) {
                return Received::Disconnected;
            }
            if self.shared.overflowed.swap(false, Ordering::SeqCst) {
                return Received::Overflowed;
            }
            tokio::select! {
                biased;
                _ = self.shared.alarm.notified() => continue,
                message = self.rx.recv() => {
                    return match message {
                        Some((inbound, size)) => {
                            self.shared.bytes.fetch_sub(size, Ordering::SeqCst);
                            Received::Message(inbound)
                        }
                        None => Received::Disconnected,
                    };
                }
            }
        }
    }

    /// Payload bytes waiting, for tests.
    pub fn bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn push(channel: &str, payload: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::BulkString(payload.as_bytes().to_vec()),
            ],
        }
    }

    fn limits() -> InboxLimits {
        InboxLimits {
            messages: 3,
            bytes: 100,
            bridged_max_bytes: 10,
        }
    }

    #[tokio::test]
    async fn messages_flow_in_order() {
        let (mut inbox, send) = Inbox::new(limits(), "odds".into());
        send(push("odds", "a")).unwrap();
        send(push("chat", "b")).unwrap();
        for (channel, payload) in [("odds", "a"), ("chat", "b")] {
            match inbox.recv().await {
                Received::Message(m) => {
                    assert_eq!(
                        (m.channel.as_str(), m.payload.unwrap()),
                        (channel, payload.to_string())
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(inbox.bytes(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_asks_for_a_reload() {
        let (mut inbox, send) = Inbox::new(limits(), "odds".into());
        for _ in 0..5 {
            send(push("odds", "x")).unwrap();
        }
        assert!(matches!(inbox.recv().await, Received::Overflowed));
        for _ in 0..3 {
            assert!(matches!(inbox.recv().await, Received::Message(_)));
        }
        // Bytes too: 60 + 60 > 100.
        send(push("odds", &"y".repeat(60))).unwrap();
        send(push("odds", &"y".repeat(60))).unwrap();
        assert!(matches!(inbox.recv().await, Received::Overflowed));
        assert!(matches!(inbox.recv().await, Received::Message(_)));
        assert_eq!(inbox.bytes(), 0);
    }

    #[tokio::test]
    async fn large_bridged_payloads_are_dropped_but_odds_are_not() {
        let (mut inbox, send) = Inbox::new(limits(), "odds".into());
        send(push("chat", &"z".repeat(11))).unwrap();
        send(push("odds", &"z".repeat(50))).unwrap();
        match inbox.recv().await {
            Received::Message(m) => assert_eq!(m.channel, "odds"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_disconnection_is_reported() {
        let (mut inbox, send) = Inbox::new(limits(), "odds".into());
        send(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        })
        .unwrap();
        assert!(matches!(inbox.recv().await, Received::Disconnected));
    }
}
