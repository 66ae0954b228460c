//! Redis → rooms. Subscribes to the odds channel and the bridged channels, keeps the hub's
//! book in step with the publisher, and heals every gap from the state keys.
//!
//! Order of operations on (re)connect: SUBSCRIBE first, then load the state keys, then apply
//! the buffered messages. A message published between the two is either already in the loaded
//! state (its seq is not above the book's: ignored) or the next one (applied), so nothing is
//! lost or applied twice. A seq gap, a new epoch or a heartbeat that is ahead of the book
//! triggers a reload, after which every odds room whose position changed gets a snapshot.
//!
//! Messages arrive over a RESP3 connection (Redis 6 or later) into the bounded
//! [`Inbox`]: a relay that falls behind drops messages and reloads the state instead of
//! buffering without limit. When the odds channel is silent for 3 heartbeat intervals the
//! connection is PINGed, so a Redis that vanished without closing the socket is noticed.

use std::time::Duration;

use metrics::{counter, histogram};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inbox::{Inbox, InboxLimits, Received};
use super::rooms::{Applied, Hub};
use crate::bus::{StateKeys, load_state, now_ms};
use crate::odds::ChannelMessage;
use crate::telemetry as m;

/// Everything the relay needs. Cloned for each start by the supervisor.
#[derive(Clone)]
pub struct Relay {
    pub hub: Hub,
    pub redis_url: String,
    /// The odds channel (`sports-odds`).
    pub channel: String,
    /// Channels whose JSON messages are forwarded to rooms (docs/PROTOCOL.md).
    pub bridged: Vec<String>,
    /// The publisher's heartbeat interval; 3 of them without a message means stale.
    pub heartbeat: Duration,
    /// Shared with /health: whether the relay is subscribed right now.
    pub connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bounds of the inbound queue and of bridged payloads.
    pub inbox: InboxLimits,
}

impl Relay {
    /// Runs until cancelled, reconnecting with backoff (100 ms doubling to 5 s).
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut last_seen = Instant::now();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            match self.session(&cancel, &mut last_seen).await {
                Ok(()) => break,
                Err(error) => {
                    self.connected
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    counter!(m::ERRORS, "kind" => "relay").increment(1);
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "relay lost Redis");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // Silence during the outage counts towards staleness.
            self.check_stale(last_seen);
        }
        self.connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_stale(&self, last_seen: Instant) {
        if last_seen.elapsed() > self.heartbeat * 3 && self.hub.publisher_live() {
            tracing::warn!("no message from the publisher for 3 heartbeat intervals: stale");
            self.hub.set_publisher_live(false);
        }
    }

    /// One connection's life: subscribe, load, relay. Returns `Ok` only when cancelled.
    async fn session(
        &self,
        cancel: &CancellationToken,
        last_seen: &mut Instant,
    ) -> anyhow::Result<()> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3))?;
        let (mut inbox, sender) = Inbox::new(self.inbox, self.channel.clone());
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_push_sender(sender);
        let mut pubsub = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        pubsub.subscribe(&self.channel).await?;
        for channel in &self.bridged {
            pubsub.subscribe(channel).await?;
        }
        let mut state_conn = crate::bus::connection(&self.redis_url)?;
        let keys = StateKeys::for_channel(&self.channel);
        self.reload(&mut state_conn, &keys, "connect").await?;
        self.connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(channel = %self.channel, bridged = ?self.bridged, "relay subscribed");

        let mut stale_check = tokio::time::interval(Duration::from_millis(250));
        let mut last_ping = Instant::now();
        loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = stale_check.tick() => {
                    self.check_stale(*last_seen);
                    if last_seen.elapsed() > self.heartbeat * 3 && last_ping.elapsed() > self.heartbeat {
                        // Silence: make sure Redis is still there (the response timeout
                        // bounds the wait).
                        last_ping = Instant::now();
                        redis::cmd("PING").query_async::<String>(&mut pubsub).await?;
                    }
                    continue;
                }
                received = inbox.recv() => received,
            };
            let msg = match received {
                Received::Message(msg) => msg,
                Received::Overflowed => {
                    tracing::warn!(
                        "the relay fell behind and dropped messages; reloading the state"
                    );
                    self.reload(&mut state_conn, &keys, "overflow").await?;
                    continue;
                }
                Received::Disconnected => anyhow::bail!("the Redis subscription ended"),
            };
            let payload = match msg.payload {
                Ok(p) => p,
                Err(reason) => {
                    counter!(m::RELAY_DROPPED, "reason" => reason).increment(1);
                    tracing::warn!(channel = %msg.channel, "dropping a non-text message");
                    continue;
                }
            };
            if msg.channel == self.channel {
                *last_seen = Instant::now();
                self.hub.set_publisher_live(true);
                self.on_odds_channel(&payload, &mut state_conn, &keys)
                    .await?;
            } else {
                self.on_bridged(&msg.channel, &payload);
            }
        }
    }

    async fn reload(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        keys: &StateKeys,
        reason: &'static str,
    ) -> anyhow::Result<()> {
        let state = load_state(conn, keys).await?;
        counter!(m::RELAY_RESYNCS, "reason" => reason).increment(1);
        tracing::info!(
            reason,
            epoch = state.as_ref().map(|s| s.epoch.as_str()),
            seq = state.as_ref().map(|s| s.seq),
            "relay loaded the state"
        );
        self.hub.resync(state);
        Ok(())
    }

    async fn on_odds_channel(
        &self,
        payload: &str,
        conn: &mut redis::aio::ConnectionManager,
        keys: &StateKeys,
    ) -> anyhow::Result<()> {
        let message: ChannelMessage = match serde_json::from_str(payload) {
            Ok(m) => m,
            Err(e) => {
                counter!(m::RELAY_DROPPED, "reason" => "malformed").increment(1);
                tracing::warn!(error = %e, "dropping a malformed message on the odds channel");
                return Ok(());
            }
        };
        match message {
            ChannelMessage::Odds(odds) => {
                let latency_ms = (now_ms() - odds.published_at).max(0);
                histogram!(m::RELAY_LATENCY).record(latency_ms as f64 / 1e3);
                let epoch = odds.epoch.clone();
                match self.hub.apply(odds) {
                    Applied::Yes | Applied::Duplicate => {}
                    Applied::Gap { expected, got } => {
                        tracing::warn!(expected, got, %epoch, "gap in the odds stream");
                        self.reload(conn, keys, "gap").await?;
                    }
                    Applied::NewStream => {
                        tracing::info!(%epoch, "a new odds stream (epoch) began");
                        self.reload(conn, keys, "new_epoch").await?;
                    }
                }
            }
            ChannelMessage::Heartbeat(hb) => {
                let behind = match self.hub.position() {
                    Some((epoch, seq)) => epoch != hb.epoch || seq < hb.seq,
                    None => true,
                };
                if behind {
                    self.reload(conn, keys, "heartbeat").await?;
                }
            }
        }
        Ok(())
    }

    fn on_bridged(&self, channel: &str, payload: &str) {
        let data: Value = match serde_json::from_str(payload) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                counter!(m::RELAY_DROPPED, "reason" => "bridged_not_json_object").increment(1);
                tracing::debug!(
                    channel,
                    "dropping a bridged message that is not a JSON object"
                );
                return;
            }
        };
        let room = data
            .get("room")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .unwrap_or(channel)
            .to_string();
        self.hub.bridged(channel, &room, &data);
    }
}
