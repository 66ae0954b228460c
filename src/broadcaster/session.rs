//! One WebSocket connection, from the upgrade to the closed socket.
//!
//! A session is one task running two halves side by side: the read side (this file: limits,
//! client messages, replies) over tungstenite, and the write side ([`super::writer`]) over the
//! raw socket. Room frames for a client that keeps up do not pass through this task at all:
//! the fan-out threads write them into the shared socket ([`super::fanout`]); the writer
//! sends replies, control frames, and whatever the fan-out could not write at once. What it holds is released by guards, so it is released however the session
//! ends, a panic included: the connection's place in the caps (the admission guard held by
//! the caller), its rooms (the hub's [`Membership`](super::rooms::Membership)), and the socket itself.
//!
//! The end of a connection is bounded in time: a close frame that the client does not answer
//! ends it after `WS_CLOSE_TIMEOUT_MS`, a write that does not move after `WS_WRITE_TIMEOUT_MS`,
//! and a client that answers no ping after `WS_PONG_TIMEOUT_MS`. After our close frame the
//! write side is shut down and the read side keeps reading (and discarding) until the client
//! closes too, so the client reads our close frame instead of a reset.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use metrics::{counter, histogram};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::ProtocolError};
use tokio_util::sync::CancellationToken;

use super::auth::{Identity, Verifier};
use super::frame::WireFrame;
use super::inflate::InflateRead;
use super::outbox::{Closing, Outbound, Outbox, OutboxLimits};
use super::protocol::{
    ErrorCode, LatencyReport, Rejection, Request, RequestKind, ServerMessage, ServerTime,
    parse_request,
};
use super::room_name::OddsRoom;
use super::rooms::{ClientId, Hub, SessionHandle, WireFormat};
use super::writer::{self, PongClock, WriterEnd, WriterTiming};
use crate::bus::{now_ms, now_us};
use crate::net::listener::Stream;
use crate::net::shared_tcp::SharedTcp;
use crate::supervisor::Faults;
use crate::telemetry as m;

/// The least time between two latency reports that are taken: at most one a second per
/// connection, as the protocol promises. web/oddsfeed-client.js reports every 1.1 s, so that
/// a timer or network jitter of a fraction of a millisecond does not get one refused.
const LATENCY_REPORT_GAP: Duration = Duration::from_secs(1);

/// Close codes this server sends (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A frame that breaks the protocol: unmasked, reserved bits or opcodes, a fragmented or
/// oversized control frame, a continuation out of place.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// A text message (or close reason) that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// A frame above the hard limit (16x `MAX_CLIENT_MESSAGE_BYTES`).
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Per-connection limits (docs/PROTOCOL.md defaults, configurable).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_rooms: usize,
    /// Client messages per minute (token bucket: this many at once, refilled evenly).
    pub messages_per_minute: u32,
    /// Largest client message answered with anything but `too_large`.
    pub max_message_bytes: usize,
    /// Frames and bytes one client may have queued or in writing before it is closed with
    /// 1013 (`SEND_QUEUE_FRAMES`, `SEND_BUFFER_BYTES`).
    pub send: OutboxLimits,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// A write that moves no byte for this long ends the connection.
    pub write_timeout: Duration,
    /// How long the client has to answer our close frame before the socket is closed.
    pub close_timeout: Duration,
    /// Largest frame accepted at all; above it the connection is closed with 1009. Messages
    /// between `max_message_bytes` and this get a `too_large` error and the connection stays.
    pub hard_frame_limit: usize,
}

impl SessionLimits {
    fn writer_timing(&self) -> WriterTiming {
        WriterTiming {
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            write_timeout: self.write_timeout,
        }
    }
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
    /// `WS_DEFLATE`: permessage-deflate is accepted when a client offers it.
    pub deflate: bool,
    /// `FAULT_INJECTION`: a session armed with `POST /debug/panic/session` panics on its next
    /// client message (to prove that nothing of it outlives a panic).
    pub faults: Faults,
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

/// Token bucket for client messages (also the Socket.IO endpoint's).
pub(crate) struct RateLimit {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    pub(crate) fn new(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            tokens: capacity,
            capacity,
            per_second: capacity / 60.0,
            last: Instant::now(),
        }
    }

    pub(crate) fn allow(&mut self) -> bool {
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
    /// When the last latency report was recorded or rejected (at most one per
    /// [`LATENCY_REPORT_GAP`], so one client cannot outweigh the others in the histogram or in
    /// the rejection counter).
    last_latency: Option<Instant>,
}

/// How the read side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The client sent a close frame (tungstenite queued the reply).
    PeerClosed,
    /// The stream ended or failed without a close frame.
    Gone,
    /// The client broke the protocol: close with this code.
    Violation { code: u16, reason: &'static str },
}

impl ReadEnd {
    fn closing(self) -> Closing {
        match self {
            ReadEnd::PeerClosed => Closing::Peer,
            ReadEnd::Gone => Closing::Abort,
            ReadEnd::Violation { code, reason } => Closing::Server { code, reason },
        }
    }
}

/// The read side of the socket as tungstenite sees it. What tungstenite writes (pong replies,
/// the reply to a close frame) goes to the outbox's control lane, so the writer alone owns
/// the socket's write side.
struct ProtocolIo<R> {
    read: R,
    outbox: Arc<Outbox>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ProtocolIo<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ProtocolIo<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tungstenite writes whole control frames (it has no other frames to write here).
        self.outbox.push_control(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits a client stream. A plain TCP stream is shared, without a lock, between the read
/// side, the writer and the fan-out threads (it is given to the outbox); a TLS stream is
/// split behind tokio's lock and only the writer writes it.
fn split(stream: Stream, outbox: &Outbox) -> (ReadHalf, WriteHalf) {
    match stream {
        Stream::Plain(tcp) => {
            let tcp = Arc::new(tcp);
            outbox.attach_socket(Some(tcp.clone()));
            (Box::new(SharedTcp(tcp.clone())), Box::new(SharedTcp(tcp)))
        }
        Stream::Tls(tls) => {
            let (read, write) = tokio::io::split(*tls);
            (Box::new(read), Box::new(write))
        }
    }
}

/// Takes the socket back from the outbox when dropped, so the socket closes with the session
/// even while a fan-out thread or the hub still holds the outbox.
struct Detach<'a>(&'a Outbox);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.0.attach_socket(None);
    }
}

/// Runs one connection until the client leaves, the server shuts down, a limit closes it,
/// or a deadline passes; then the socket is closed and the session is gone from the hub.
pub async fn run(
    stream: Stream,
    leftover: Bytes,
    ctx: Arc<SessionContext>,
    id: ClientId,
    client_id: String,
    token: Option<String>,
    format: WireFormat,
) {
    let limits = ctx.limits;
    let outbox = Arc::new(Outbox::new(limits.send));
    let handle = SessionHandle {
        id,
        outbox: outbox.clone(),
        format,
    };
    let pong = PongClock::new();
    // Leaves every room when dropped, whatever ends this function.
    let _membership = ctx.hub.connect(id);
    counter!(m::WS_CONNECTIONS_TOTAL).increment(1);

    let (read, write) = split(stream, &outbox);
    // The fan-out lets go of the socket when the session ends, whatever ends it.
    let _detach = Detach(&outbox);
    // With permessage-deflate, compressed client messages are inflated before tungstenite
    // sees them (the bytes behind the handshake included).
    let (read, leftover): (ReadHalf, Bytes) = if format.deflate {
        let inflating = InflateRead::new(
            read,
            &leftover,
            limits.hard_frame_limit,
            limits.max_message_bytes,
        );
        (Box::new(inflating), Bytes::new())
    } else {
        (read, leftover)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(limits.hard_frame_limit))
        .max_frame_size(Some(limits.hard_frame_limit));
    let mut ws = WebSocketStream::from_partially_read(
        ProtocolIo {
            read,
            outbox: outbox.clone(),
        },
        leftover.to_vec(),
        Role::Server,
        Some(config),
    )
    .await;

    let mut session = Session {
        rate: RateLimit::new(limits.messages_per_minute),
        ctx: ctx.clone(),
        handle,
        identity: None,
        last_rate_error: None,
        last_latency: None,
    };
    session.reply(ServerMessage::Welcome {
        client_id: &client_id,
        time: ServerTime::at_us(now_us()),
        heartbeat_ms: limits.ping_interval.as_millis() as u64,
    });
    if let Some(token) = token {
        session.authenticate(&token, None);
    }

    let writer = writer::run(write, &outbox, &pong, limits.writer_timing());
    let reader = session.read_side(&mut ws, &pong);
    tokio::pin!(writer, reader);
    let (mut writer_end, mut reader_end) = (None, None);
    // Set when only the client's close (or its disappearance) is still awaited.
    let mut close_deadline: Option<Instant> = None;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            end = &mut writer, if writer_end.is_none() => {
                writer_end = Some(end);
                match end {
                    WriterEnd::CloseSent | WriterEnd::Finished if reader_end.is_none() => {
                        close_deadline = Some(Instant::now() + limits.close_timeout);
                    }
                    _ => break,
                }
            }
            end = &mut reader, if reader_end.is_none() => {
                // The client is done (closed its side, or vanished); the writer finishes
                // within its own deadline.
                reader_end = Some(end);
                if writer_end.is_some() {
                    break;
                }
            }
            _ = ctx.shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                outbox.close(Closing::Server { code: CLOSE_GOING_AWAY, reason: "server shutting down" });
            }
            _ = sleep_until_some(close_deadline) => {
                counter!(m::WS_CLOSE_TIMEOUTS).increment(1);
                break;
            }
        }
    }
    tracing::debug!(client = %client_id, ?writer_end, ?reader_end, "connection closed");
}

impl Session {
    /// Reads client messages until the client closes, breaks the protocol or goes away;
    /// then tells the outbox how the session ends and keeps reading (and discarding) until
    /// the client closes its side, so that nothing unread is left when the socket is closed
    /// (which would reset the connection and could destroy our close frame in transit).
    async fn read_side<R>(
        &mut self,
        stream: &mut WebSocketStream<ProtocolIo<R>>,
        pong: &PongClock,
    ) -> ReadEnd
    where
        R: AsyncRead + Unpin,
    {
        let end = self.read_loop(stream, pong).await;
        self.handle.outbox.close(end.closing());
        if end != ReadEnd::Gone {
            drain(&mut stream.get_mut().read).await;
        }
        end
    }

    /// Reads client messages until the client closes, breaks the protocol or goes away.
    /// Once the session is closing, messages are read and discarded: the client's close
    /// frame (or its end of the stream) is what is awaited.
    async fn read_loop<S>(&mut self, stream: &mut WebSocketStream<S>, pong: &PongClock) -> ReadEnd
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
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
                _ = sleep_until_some(expiry) => {
                    self.expire_identity();
                    continue;
                }
                m = stream.next() => m,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => return read_error(e),
                None => return ReadEnd::Gone,
            };
            if self.handle.outbox.closing().is_some() {
                if let Message::Close(_) = message {
                    return ReadEnd::PeerClosed;
                }
                continue;
            }
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
                Message::Pong(_) => pong.record(),
                // Pings are answered by the protocol layer itself.
                Message::Ping(_) | Message::Frame(_) => {}
                Message::Close(_) => {
                    // One more poll hands tungstenite's reply to the outbox and ends the stream.
                    let _ = stream.next().await;
                    return ReadEnd::PeerClosed;
                }
            }
        }
    }

    fn reply(&self, message: ServerMessage<'_>) {
        if self.handle.send(Outbound::reply(WireFrame::json(&message))) {
            counter!(m::WS_MESSAGES_SENT, "kind" => "reply").increment(1);
        }
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
        if self.ctx.faults.enabled() && self.ctx.faults.take("session") {
            panic!("injected fault: session {} panics", self.handle.id);
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
                time: ServerTime::at_us(now_us()),
                id,
            }),
            RequestKind::Latency(report) => self.take_latency(report, id),
        }
    }

    /// Records a latency report, or counts it as implausible; at most one per
    /// [`LATENCY_REPORT_GAP`] either way. The reply carries the server's time, so that a report
    /// also serves the client as a ping.
    fn take_latency(&mut self, report: LatencyReport, id: Option<&Value>) {
        let due = self
            .last_latency
            .is_none_or(|t| t.elapsed() >= LATENCY_REPORT_GAP);
        let (recorded, reason) = if !due {
            (false, None)
        } else {
            self.last_latency = Some(Instant::now());
            match report {
                LatencyReport::Plausible { seconds } => {
                    histogram!(m::BROWSER_LATENCY).record(seconds);
                    (true, None)
                }
                LatencyReport::Implausible(why) => {
                    counter!(m::BROWSER_LATENCY_REJECTED, "reason" => why.label()).increment(1);
                    tracing::debug!(reason = why.label(), "latency report rejected");
                    (false, Some(why.label()))
                }
            }
        };
        self.reply(ServerMessage::Latency {
            recorded,
            reason,
            time: ServerTime::at_us(now_us()),
            id,
        });
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

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Most bytes read and discarded while waiting for the client to close; a client that keeps
/// sending past this is cut off.
const DRAIN_BYTES: usize = 1 << 20;

/// Reads and discards until the client closes its side, fails, or sends too much. The
/// session's close deadline bounds how long this may take.
async fn drain<R: AsyncRead + Unpin>(read: &mut R) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < DRAIN_BYTES {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// The read side's end for a stream error: the RFC 6455 close code for what the client did
/// wrong, or nothing to say when the connection just broke.
fn read_error(error: WsError) -> ReadEnd {
    match error {
        WsError::Capacity(_) => {
            counter!(m::WS_CLIENT_ERRORS, "code" => "frame_too_big").increment(1);
            ReadEnd::Violation {
                code: CLOSE_TOO_BIG,
                reason: "message too big",
            }
        }
        WsError::Utf8(_) => {
            counter!(m::WS_CLIENT_ERRORS, "code" => "invalid_utf8").increment(1);
            ReadEnd::Violation {
                code: CLOSE_INVALID_DATA,
                reason: "invalid UTF-8",
            }
        }
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadEnd::Gone,
        WsError::Protocol(e) => {
            counter!(m::WS_CLIENT_ERRORS, "code" => "protocol_error").increment(1);
            tracing::debug!(error = %e, "client broke the WebSocket protocol");
            ReadEnd::Violation {
                code: CLOSE_PROTOCOL_ERROR,
                reason: "protocol error",
            }
        }
        _ => ReadEnd::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcaster::fanout::Fanout;
    use crate::broadcaster::rooms::HubLimits;
    use proptest::prelude::*;

    fn ctx() -> SessionContext {
        SessionContext {
            hub: Hub::new(
                HubLimits {
                    replay_messages: 8,
                    replay_bytes: 1 << 20,
                },
                Fanout::new(1).unwrap(),
            ),
            verifier: Verifier::new(Some("k"), 3600),
            limits: SessionLimits {
                max_rooms: 3,
                messages_per_minute: 100,
                max_message_bytes: 4096,
                send: OutboxLimits {
                    frames: 8,
                    bytes: 1 << 20,
                },
                ping_interval: Duration::from_secs(25),
                pong_timeout: Duration::from_secs(60),
                write_timeout: Duration::from_secs(10),
                close_timeout: Duration::from_secs(5),
                hard_frame_limit: 65536,
            },
            bridged_channels: vec![
                "event-updates".into(),
                "chat-messages".into(),
                "admin-events".into(),
            ],
            bridged_prefixes: vec!["chat".into()],
            shutdown: CancellationToken::new(),
            faults: Faults::new(false),
            deflate: true,
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

    /// A client message a fuzzer would send: arbitrary bytes, or JSON objects built from the
    /// protocol's own keys with values of every type.
    fn client_message() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            prop_oneof![
                Just("subscribe"),
                Just("unsubscribe"),
                Just("auth"),
                Just("rooms"),
                Just("ping"),
                Just("latency"),
                Just("sport:all"),
                Just("sport:football"),
                Just("event:e1"),
                Just("user:u1"),
                Just("admin"),
                Just("chat:x"),
                Just("sport:"),
                Just("event:"),
                Just("")
            ]
            .prop_map(serde_json::Value::from),
            ".{0,300}".prop_map(serde_json::Value::from),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| serde_json::json!(v)),
        ];
        let key = prop_oneof![
            Just("type"),
            Just("room"),
            Just("epoch"),
            Just("seq"),
            Just("id"),
            Just("token"),
            Just("ms"),
            Just("extra")
        ];
        let object = proptest::collection::btree_map(key, value, 0..7)
            .prop_map(|m| serde_json::to_string(&m).unwrap_or_default());
        let bytes = proptest::collection::vec(any::<u8>(), 0..5000)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned());
        prop_oneof![3 => object, 1 => bytes]
    }

    /// Cases per run: `FUZZ_CASES` (the default of 400 takes a few seconds in a debug build;
    /// `FUZZ_CASES=100000 cargo test --release --lib any_client_message` for a long run).
    fn fuzz_cases() -> u32 {
        std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() })]

        /// The client-message fuzz target: whatever a client sends, the session answers with
        /// well-formed frames, never panics, never closes the connection for it, and never
        /// holds more rooms than allowed.
        #[test]
        fn any_client_message_gets_a_well_formed_answer(
            messages in proptest::collection::vec(client_message(), 1..25)
        ) {
            let mut c = ctx();
            c.limits.messages_per_minute = u32::MAX;
            let ctx = Arc::new(c);
            let outbox = Arc::new(Outbox::new(OutboxLimits { frames: 10_000, bytes: 1 << 24 }));
            let _membership = ctx.hub.connect(7);
            let mut session = Session {
                rate: RateLimit::new(ctx.limits.messages_per_minute),
                ctx: ctx.clone(),
                handle: SessionHandle { id: 7, outbox: outbox.clone(), format: WireFormat::default() },
                identity: None,
                last_rate_error: None,
                last_latency: None,
            };
            for message in &messages {
                session.on_text(message);
            }
            prop_assert_eq!(outbox.closing(), None);
            prop_assert!(ctx.hub.rooms_of(7).len() <= ctx.limits.max_rooms);
            let (mut control, mut data) = (Vec::new(), std::collections::VecDeque::new());
            outbox.take(&mut control, &mut data, usize::MAX, usize::MAX, false);
            prop_assert!(!data.is_empty(), "every message gets an answer");
            for frame in data {
                let v: serde_json::Value = serde_json::from_slice(frame.frame.payload())
                    .map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
                prop_assert!(v["type"].is_string(), "{}", v);
            }
        }
    }
}
