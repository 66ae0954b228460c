//! One WebSocket connection: a read loop (this task) and a write loop (its own task) joined
//! by a bounded queue. The read loop enforces the per-connection limits and answers every
//! client message; the write loop sends queued frames, pings, and the close frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use metrics::{counter, histogram};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{Identity, Verifier};
use super::protocol::{ErrorCode, Rejection, Request, RequestKind, ServerMessage, parse_request};
use super::room_name::OddsRoom;
use super::rooms::{ClientId, Hub, Outbound, SessionHandle};
use crate::bus::now_ms;
use crate::telemetry as m;

/// Close codes this server sends.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A frame above the hard limit (16x `MAX_CLIENT_MESSAGE_BYTES`).
pub const CLOSE_TOO_BIG: u16 = 1009;

/// How long the close frame (and, on shutdown, the queued frames) may take to go out.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection limits (docs/PROTOCOL.md defaults, configurable).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_rooms: usize,
    /// Client messages per minute (token bucket: this many at once, refilled evenly).
    pub messages_per_minute: u32,
    /// Largest client message answered with anything but `too_large`.
    pub max_message_bytes: usize,
    /// Frames queued for one client before it is closed with 1013.
    pub send_queue: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
}

/// What every session shares.
pub struct SessionContext {
    pub hub: Hub,
    pub verifier: Verifier,
    pub limits: SessionLimits,
    /// Bridged channel names (public rooms, except `admin-events`).
    pub bridged_channels: Vec<String>,
    /// Prefixes of other public bridged rooms (`chat` allows `chat:<anything>`).
    pub bridged_prefixes: Vec<String>,
    /// Cancelled on shutdown: every session closes with 1001.
    pub shutdown: CancellationToken,
}

impl SessionContext {
    /// Access rules of docs/PROTOCOL.md. Returns the parsed odds room when `room` is one: any
    /// well-formed odds room may be joined, whether or not it has anything in it yet.
    fn check_room(
        &self,
        room: &str,
        identity: Option<&Identity>,
        id: Option<&Value>,
    ) -> Result<Option<OddsRoom>, Rejection> {
        let deny = |needs: &str| {
            let (code, message) = match identity {
                None => (
                    ErrorCode::Unauthorized,
                    format!("{room} needs authentication ({needs})"),
                ),
                Some(_) => (ErrorCode::Forbidden, format!("{room} is only for {needs}")),
            };
            Err(Rejection::new(code, message, id.cloned()))
        };
        match OddsRoom::parse(room) {
            Ok(Some(odds)) => return Ok(Some(odds)),
            Ok(None) => {}
            Err(rule) => {
                return Err(Rejection::new(
                    ErrorCode::UnknownRoom,
                    format!("no such room: {room} ({rule})"),
                    id.cloned(),
                ));
            }
        }
        if let Some(user) = room.strip_prefix("user:") {
            return match identity {
                Some(who) if who.sub == user && !user.is_empty() => Ok(None),
                _ => deny("that user"),
            };
        }
        if room == "admin" || room == "admin-events" {
            return match identity {
                Some(who) if who.is_admin() => Ok(None),
                _ => deny("role admin"),
            };
        }
        let public = self.bridged_channels.iter().any(|c| c == room)
            || room.split_once(':').is_some_and(|(prefix, rest)| {
                !rest.is_empty() && self.bridged_prefixes.iter().any(|p| p == prefix)
            });
        if public {
            Ok(None)
        } else {
            Err(Rejection::new(
                ErrorCode::UnknownRoom,
                format!("no such room: {room}"),
                id.cloned(),
            ))
        }
    }
}

/// Token bucket for client messages.
struct RateLimit {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            tokens: capacity,
            capacity,
            per_second: capacity / 60.0,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + (now - self.last).as_secs_f64() * self.per_second).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The read side's state.
struct Session {
    ctx: Arc<SessionContext>,
    handle: SessionHandle,
    identity: Option<Identity>,
    rate: RateLimit,
    /// When the last `rate_limited` error went out (at most one a second).
    last_rate_error: Option<Instant>,
    /// When the last latency report was counted (at most one a second).
    last_latency: Option<Instant>,
}

/// Runs one connection until the client leaves, the server shuts down, or a limit closes it.
pub async fn run(
    socket: WebSocket,
    ctx: Arc<SessionContext>,
    id: ClientId,
    client_id: String,
    token: Option<String>,
) {
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(ctx.limits.send_queue.max(1));
    let handle = SessionHandle {
        id,
        tx,
        close: CancellationToken::new(),
        close_code: Arc::new(AtomicU16::new(0)),
    };
    let last_pong = Arc::new(PongClock::new());
    ctx.hub.connect(id);
    counter!(m::WS_CONNECTIONS_TOTAL).increment(1);

    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        handle.clone(),
        ctx.shutdown.clone(),
        ctx.limits,
        last_pong.clone(),
    ));

    handle.send(Outbound::reply(
        ServerMessage::Welcome {
            client_id: &client_id,
            server_time: now_ms(),
            heartbeat_ms: ctx.limits.ping_interval.as_millis() as u64,
        }
        .to_json(),
    ));
    let mut session = Session {
        rate: RateLimit::new(ctx.limits.messages_per_minute),
        ctx,
        handle,
        identity: None,
        last_rate_error: None,
        last_latency: None,
    };
    if let Some(token) = token {
        session.authenticate(&token, None);
    }
    session.read_loop(stream, &last_pong).await;

    session.ctx.hub.disconnect(id);
    if !session.ctx.shutdown.is_cancelled() {
        session.handle.close_with(CLOSE_NORMAL);
    }
    let _ = writer.await;
    tracing::debug!(client = %client_id, "connection closed");
}

impl Session {
    async fn read_loop(
        &mut self,
        mut stream: futures_util::stream::SplitStream<WebSocket>,
        last_pong: &PongClock,
    ) {
        loop {
            // An identity lasts as long as its token: at `exp` its rooms are left.
            // Saturating: a token that expires in the far future has no deadline at all.
            let expiry = self.identity.as_ref().and_then(|i| {
                let left = i
                    .expires_at
                    .saturating_sub(u64::try_from(now_ms() / 1000).unwrap_or(0));
                Instant::now().checked_add(Duration::from_secs(left))
            });
            let message = tokio::select! {
                _ = self.handle.close.cancelled() => return,
                _ = self.ctx.shutdown.cancelled() => return,
                _ = sleep_until_some(expiry) => {
                    self.expire_identity();
                    continue;
                }
                m = stream.next() => m,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    let too_big = e
                        .into_inner()
                        .downcast_ref::<tokio_tungstenite::tungstenite::Error>()
                        .is_some_and(|e| {
                            matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_))
                        });
                    if too_big {
                        counter!(m::WS_CLIENT_ERRORS, "code" => "frame_too_big").increment(1);
                        self.handle.close_with(CLOSE_TOO_BIG);
                    }
                    return;
                }
                None => return,
            };
            match message {
                Message::Text(text) => self.on_text(text.as_str()),
                // Binary frames count against the rate limit like any other message.
                Message::Binary(_) => {
                    if self.admit() {
                        self.reject(Rejection::new(
                            ErrorCode::BadRequest,
                            "binary frames are not supported; send JSON text",
                            None,
                        ));
                    }
                }
                Message::Pong(_) => last_pong.record(),
                // Pings are answered by the WebSocket layer itself.
                Message::Ping(_) => {}
                Message::Close(_) => return,
            }
        }
    }

    fn reply(&self, message: ServerMessage<'_>) {
        self.handle.send(Outbound::reply(message.to_json()));
    }

    fn reject(&mut self, rejection: Rejection) {
        counter!(m::WS_CLIENT_ERRORS, "code" => rejection.code.as_str()).increment(1);
        self.reply(ServerMessage::Error {
            code: rejection.code,
            message: &rejection.message,
            id: rejection.id.as_ref(),
        });
    }

    /// Takes a token from the rate limiter; when none is left, says so at most once a second
    /// and returns false (the message is ignored).
    fn admit(&mut self) -> bool {
        if !self.rate.allow() {
            counter!(m::WS_CLIENT_ERRORS, "code" => "rate_limited").increment(1);
            let due = self
                .last_rate_error
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                self.last_rate_error = Some(Instant::now());
                self.reply(ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message: &format!(
                        "more than {} messages per minute; this message was ignored",
                        self.ctx.limits.messages_per_minute
                    ),
                    id: None,
                });
            }
            return false;
        }
        true
    }

    fn on_text(&mut self, text: &str) {
        if !self.admit() {
            return;
        }
        if text.len() > self.ctx.limits.max_message_bytes {
            return self.reject(Rejection::new(
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes; the limit is {}",
                    text.len(),
                    self.ctx.limits.max_message_bytes
                ),
                None,
            ));
        }
        match parse_request(text) {
            Ok(request) => self.on_request(request),
            Err(rejection) => self.reject(rejection),
        }
    }

    fn on_request(&mut self, Request { id, kind }: Request) {
        let id = id.as_ref();
        match kind {
            RequestKind::Subscribe { room, resume } => {
                let result = self
                    .ctx
                    .check_room(&room, self.identity.as_ref(), id)
                    .and_then(|odds| {
                        self.ctx.hub.subscribe(
                            &self.handle,
                            &room,
                            odds.as_ref(),
                            resume,
                            id,
                            self.ctx.limits.max_rooms,
                        )
                    });
                if let Err(rejection) = result {
                    self.reject(rejection);
                }
            }
            RequestKind::Unsubscribe { room } => {
                if self.ctx.hub.unsubscribe(self.handle.id, &room) {
                    self.reply(ServerMessage::Unsubscribed { room: &room, id });
                } else {
                    self.reject(Rejection::new(
                        ErrorCode::BadRequest,
                        format!("not subscribed to {room}"),
                        id.cloned(),
                    ));
                }
            }
            RequestKind::Auth { token } => self.authenticate(&token, id),
            RequestKind::Rooms => {
                let rooms = self.ctx.hub.rooms_of(self.handle.id);
                self.reply(ServerMessage::Rooms {
                    rooms: rooms.iter().map(String::as_str).collect(),
                    id,
                });
            }
            RequestKind::Ping => self.reply(ServerMessage::Pong {
                server_time: now_ms(),
                id,
            }),
            RequestKind::Latency { ms } => {
                let due = self
                    .last_latency
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if due {
                    self.last_latency = Some(Instant::now());
                    histogram!(m::BROWSER_LATENCY).record(ms / 1e3);
                }
                self.reply(ServerMessage::Latency { recorded: due, id });
            }
        }
    }

    /// Leaves the rooms only the identity could enter and says so.
    fn expire_identity(&mut self) {
        let Some(identity) = self.identity.take() else {
            return;
        };
        for room in [
            format!("user:{}", identity.sub),
            "admin".into(),
            "admin-events".into(),
        ] {
            if self.ctx.hub.unsubscribe(self.handle.id, &room) {
                self.reply(ServerMessage::Unsubscribed {
                    room: &room,
                    id: None,
                });
            }
        }
        self.reject(Rejection::new(
            ErrorCode::Unauthorized,
            "token expired; send a new auth message to keep private rooms",
            None,
        ));
    }

    /// Verifies a token; on success joins `user:<sub>`. A bad token never grants anything
    /// and leaves an earlier identity in place.
    fn authenticate(&mut self, token: &str, id: Option<&Value>) {
        match self.ctx.verifier.verify(token) {
            Ok(identity) => {
                // A different user on the same connection first leaves the previous user's rooms.
                if let Some(previous) = self.identity.take()
                    && previous.sub != identity.sub
                {
                    self.ctx
                        .hub
                        .unsubscribe(self.handle.id, &format!("user:{}", previous.sub));
                    for room in ["admin", "admin-events"] {
                        self.ctx.hub.unsubscribe(self.handle.id, room);
                    }
                }
                self.reply(ServerMessage::Authenticated {
                    sub: &identity.sub,
                    role: identity.role.as_deref(),
                    id,
                });
                let room = format!("user:{}", identity.sub);
                let max_rooms = self.ctx.limits.max_rooms;
                if let Err(rejection) =
                    self.ctx
                        .hub
                        .subscribe(&self.handle, &room, None, None, None, max_rooms)
                {
                    self.reject(rejection);
                }
                self.identity = Some(identity);
            }
            Err(reason) => {
                self.reject(Rejection::new(ErrorCode::Unauthorized, reason, id.cloned()))
            }
        }
    }
}

/// When the client last answered a ping, on the monotonic clock: a wall-clock step must
/// neither close every connection at once nor disable the timeout.
struct PongClock {
    /// The session's start; `last` counts from here.
    origin: Instant,
    /// Milliseconds from `origin` to the last pong (or to the start).
    last: AtomicU64,
}

impl PongClock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self) {
        self.last.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// How long since the last pong.
    fn silence(&self) -> Duration {
        Duration::from_millis(
            self.elapsed_ms()
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    handle: SessionHandle,
    shutdown: CancellationToken,
    limits: SessionLimits,
    last_pong: Arc<PongClock>,
) {
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    let (code, reason) = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                // Flush what is queued, within the bound, then say goodbye.
                let flush = async {
                    while let Ok(frame) = rx.try_recv() {
                        if sink.send(Message::Text(frame.text)).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
                break (CLOSE_GOING_AWAY, "server shutting down");
            }
            _ = handle.close.cancelled() => {
                let code = handle.close_code.load(Ordering::SeqCst);
                let reason = if code == super::rooms::CLOSE_SLOW_CLIENT { "send queue full" } else { "" };
                break (if code == 0 { CLOSE_NORMAL } else { code }, reason);
            }
            _ = ping.tick() => {
                if last_pong.silence() > limits.pong_timeout {
                    counter!(m::WS_PONG_TIMEOUTS).increment(1);
                    break (CLOSE_NORMAL, "no pong");
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { return };
                let sent = tokio::select! {
                    r = sink.send(Message::Text(frame.text)) => r.is_ok(),
                    _ = handle.close.cancelled() => continue,
                    _ = shutdown.cancelled() => continue,
                };
                if !sent {
                    return;
                }
                if let Some(published_at) = frame.published_at {
                    let ms = (now_ms() - published_at).max(0);
                    histogram!(m::DELIVERY_LATENCY, "room" => frame.kind.label()).record(ms as f64 / 1e3);
                }
            }
        }
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
        let _ = sink.send(close).await;
        let _ = sink.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcaster::rooms::HubLimits;

    fn ctx() -> SessionContext {
        SessionContext {
            hub: Hub::new(HubLimits {
                replay_messages: 8,
                replay_bytes: 1 << 20,
            }),
            verifier: Verifier::new(Some("k")),
            limits: SessionLimits {
                max_rooms: 3,
                messages_per_minute: 100,
                max_message_bytes: 4096,
                send_queue: 8,
                ping_interval: Duration::from_secs(25),
                pong_timeout: Duration::from_secs(60),
            },
            bridged_channels: vec![
                "event-updates".into(),
                "chat-messages".into(),
                "admin-events".into(),
            ],
            bridged_prefixes: vec!["chat".into()],
            shutdown: CancellationToken::new(),
        }
    }

    fn who(sub: &str, role: Option<&str>) -> Identity {
        Identity {
            sub: sub.into(),
            role: role.map(str::to_string),
            expires_at: u64::MAX,
        }
    }

    #[test]
    fn room_access_rules() {
        let c = ctx();
        let code = |r: Result<Option<OddsRoom>, Rejection>| r.err().map(|e| e.code);
        assert_eq!(code(c.check_room("sport:all", None, None)), None);
        assert_eq!(code(c.check_room("chat-messages", None, None)), None);
        assert_eq!(code(c.check_room("chat:evt-1", None, None)), None);
        assert_eq!(
            code(c.check_room("user:u1", None, None)),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(c.check_room("user:u1", Some(&who("u2", None)), None)),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(c.check_room("user:u1", Some(&who("u1", None)), None)),
            None
        );
        assert_eq!(
            code(c.check_room("admin", Some(&who("u1", None)), None)),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(c.check_room("admin-events", None, None)),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(c.check_room("admin", Some(&who("u1", Some("admin"))), None)),
            None
        );
        assert_eq!(
            code(c.check_room("nonsense", None, None)),
            Some(ErrorCode::UnknownRoom)
        );
        assert_eq!(
            code(c.check_room("chat:", None, None)),
            Some(ErrorCode::UnknownRoom)
        );
        assert_eq!(
            code(c.check_room("foo:bar", None, None)),
            Some(ErrorCode::UnknownRoom)
        );
        // Odds rooms need not exist yet, but must be well formed.
        assert_eq!(
            c.check_room("sport:curling", None, None),
            Ok(Some(OddsRoom::Sport("curling".into())))
        );
        assert_eq!(
            code(c.check_room("sport:Curling", None, None)),
            Some(ErrorCode::UnknownRoom)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pong_silence_follows_the_monotonic_clock() {
        let clock = PongClock::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.silence(), Duration::from_secs(30));
        clock.record();
        assert_eq!(clock.silence(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(clock.silence(), Duration::from_secs(61));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refills_evenly() {
        let mut rate = RateLimit::new(60);
        for _ in 0..60 {
            assert!(rate.allow());
        }
        assert!(!rate.allow());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(rate.allow());
        assert!(!rate.allow());
    }
}
