//! The accept loop and every connection's life until it upgrades to a WebSocket (or ends).
//!
//! What a connection may cost before it is a WebSocket is bounded here:
//! - **Header timeout** (`HTTP_HEADER_TIMEOUT_MS`): a request head must arrive complete within
//!   this time of the server starting to wait for it: after the connect (or TLS handshake) and
//!   after each response on a kept-alive connection. So it is also the keep-alive idle timeout,
//!   and a slowloris that trickles its headers is closed at it.
//! - **Idle timeout** (`HTTP_IDLE_TIMEOUT_MS`): a connection whose socket moves no byte in
//!   either direction for this long is closed, whatever it is doing (a request body that
//!   stalls, a response the client does not read).
//! - **Pending cap** (`MAX_PENDING_CONNECTIONS`): at most this many connections that have not
//!   upgraded. At the cap, accepting waits (the kernel's backlog holds the newcomers) until a
//!   pending connection upgrades or ends, or until the oldest has had [`EVICT_AFTER`] to send
//!   its request: then it is closed to make room. A reconnect storm of real clients, whose
//!   handshakes take milliseconds, is only slowed down; a flood of silent sockets cannot lock
//!   out `/health` or real clients for longer than that, because its sockets are the oldest.
//! - **Session connections**: a handler that finds a request belongs to a live long-lived
//!   session (a Socket.IO long-polling session, which holds a place under the WebSocket caps)
//!   takes its connection out of the pending cap with [`ConnectionPlace::serve_session`], so
//!   that more long-polling pages than `MAX_PENDING_CONNECTIONS` can wait on their polls
//!   without being evicted as silent. At most [`CONNECTIONS_PER_SESSION`] connections per
//!   session leave it; the timeouts still apply (`oddsfeed_http_session_connections`).
//! - **Accept errors**: running out of file descriptors (EMFILE/ENFILE) or memory backs off
//!   (10 ms doubling to 1 s) instead of spinning, evicts the oldest pending connection to free a
//!   descriptor, is counted and logged at most once a second, and the loop goes on.
//!
//! A connection is HTTP/1.1 (WebSocket upgrades are HTTP/1.1 only). The IO handed to hyper
//! is a [`Stream`] wrapped in [`Tracked`], so an upgraded connection can be taken back as the
//! raw socket with [`take_upgraded`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::client_addr::{ClientAddr, TrustedProxies};
use crate::telemetry as m;

/// Limits on connections that have not upgraded (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_pending: usize,
}

/// Binds `addr` with a listen backlog of `backlog` (the kernel caps it at
/// `net.core.somaxconn`). `SO_REUSEADDR` lets a restarted server bind while old connections
/// linger in TIME_WAIT.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The largest listen backlog the system allows (`net.core.somaxconn`), the default of
/// `LISTEN_BACKLOG`; 4096 (Linux's default since 5.4) when it cannot be read.
pub fn system_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4096)
}

/// An HTTP server on an already bound listener.
pub struct HttpServer {
    pub listener: TcpListener,
    /// `Some` serves https/wss.
    pub tls: Option<TlsAcceptor>,
    pub router: Router,
    pub limits: HttpLimits,
    pub trusted: Arc<TrustedProxies>,
}

/// In every request's extensions: the place of the connection that carried it. Weak, so that
/// a handler that keeps a request's parts (socketioxide does) keeps no place: the place goes
/// when the connection ends or upgrades.
#[derive(Clone)]
pub struct ConnectionPlace(Weak<Place>);

impl ConnectionPlace {
    /// The connection serves `session`, a long-lived session that holds a place under its own
    /// caps: it leaves the pending cap (see the module docs), unless the session has
    /// [`CONNECTIONS_PER_SESSION`] connections out of it already.
    pub fn serve_session(&self, session: &str) {
        if let Some(place) = self.0.upgrade() {
            place.join_session(session);
        }
    }

    /// The session named by the request turned out not to exist (or ended): the connection is
    /// pending again, as the newest.
    pub fn leave_session(&self) {
        if let Some(place) = self.0.upgrade() {
            place.leave_session();
        }
    }
}

/// How many connections of one session may leave the pending cap: a long-polling client has
/// at most one poll (GET) and one send (POST) in flight, and each may start on a new
/// connection while the one it replaces is still closing.
pub const CONNECTIONS_PER_SESSION: usize = 4;

/// What every connection task shares.
struct Shared {
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    trusted: Arc<TrustedProxies>,
    pending: Arc<Pending>,
    /// Session → its connections that left the pending cap.
    sessions: Mutex<HashMap<Arc<str>, usize>>,
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl HttpServer {
    /// Accepts until `cancel`; then a connection whose request is being handled has up to 2 s
    /// to answer it, and any other closes after a 100 ms flush.
    /// Connection tasks are spawned on `tracker`, so shutdown can wait for them.
    pub async fn run(self, cancel: CancellationToken, tracker: TaskTracker) {
        let shared = Arc::new(Shared {
            tls: self.tls,
            router: self.router,
            limits: self.limits,
            trusted: self.trusted,
            pending: Arc::new(Pending::new(self.limits.max_pending)),
            sessions: Mutex::new(HashMap::new()),
        });
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut last_logged: Option<Instant> = None;
        loop {
            // A place first: at the cap, new connections wait in the backlog.
            let mut slot = tokio::select! {
                _ = cancel.cancelled() => break,
                slot = shared.pending.admit() => slot,
            };
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    // Its age counts from now: the place may have waited long for a connection.
                    shared.pending.arrived(&mut slot);
                    tracker.spawn(connection(tcp, peer, slot, shared.clone(), cancel.clone()));
                }
                // The peer gave up between SYN and accept: nothing to do (the place goes back).
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    let kind = accept_error_kind(&e);
                    counter!(m::HTTP_ACCEPT_ERRORS, "kind" => kind).increment(1);
                    if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_logged = Some(Instant::now());
                        tracing::error!(error = %e, kind, retry_in = ?backoff, "accept failed; backing off");
                    }
                    // Free a descriptor for the connections waiting in the backlog.
                    drop(slot);
                    if out_of_descriptors(&e) {
                        shared.pending.evict_oldest();
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Errors of one connection that `accept` reports; the listener is fine. Linux passes on the
/// new socket's pending network errors (accept(2)): EPROTO, ENOPROTOOPT, ENONET, ENETDOWN,
/// ENETUNREACH, EOPNOTSUPP, EHOSTDOWN, EHOSTUNREACH.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(71 | 92 | 64 | 100 | 101 | 95 | 112 | 113)
    )
}

/// Whether an accept error means this process is out of descriptors (closing one helps).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// The metric label of an accept error.
fn accept_error_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(24) => "emfile",
        Some(23) => "enfile",
        Some(12) | Some(105) => "out_of_memory",
        _ => "other",
    }
}

/// Why a connection that never upgraded was closed by the server.
fn closed(reason: &'static str) {
    counter!(m::HTTP_CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: PendingSlot,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let limits = shared.limits;
    let evicted = slot.evicted.clone();
    // Small frames go out at once; the write path batches them itself.
    let _ = tcp.set_nodelay(true);
    let stream = match &shared.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp));
            let result = tokio::select! {
                r = handshake => r,
                _ = evicted.cancelled() => return closed("evicted"),
                _ = cancel.cancelled() => return,
            };
            match result {
                Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return closed("tls_handshake_failed");
                }
                Err(_) => return closed("tls_handshake_timeout"),
            }
        }
    };
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let (router, trusted) = (shared.router.clone(), shared.trusted.clone());
    let place = Arc::new(Place {
        state: Mutex::new(PlaceState::Pending { _slot: slot }),
        evicted: evicted.clone(),
        shared: shared.clone(),
    });
    let service_place = ConnectionPlace(Arc::downgrade(&place));
    let in_flight = Arc::new(AtomicU64::new(0));
    let service_in_flight = in_flight.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let client = ClientAddr::resolve(peer, req.headers(), &trusted);
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(client);
        req.extensions_mut().insert(service_place.clone());
        let handling = InFlight::new(&service_in_flight);
        let response = router.clone().oneshot(req.map(Body::new));
        async move {
            let response = response.await;
            drop(handling);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                if e.is_timeout() {
                    closed("header_timeout");
                } else {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
            }
        }
        _ = evicted.cancelled() => closed("evicted"),
        _ = activity.idle_for(limits.idle_timeout) => closed("idle_timeout"),
        _ = cancel.cancelled() => {
            // A request being handled gets up to 2 s to be answered; a connection between
            // requests, or in the middle of sending one, only the moment to flush what it is
            // being sent (hyper would wait for the rest of a half-sent request).
            conn.as_mut().graceful_shutdown();
            let grace = if in_flight.load(Ordering::Relaxed) > 0 {
                Duration::from_secs(2)
            } else {
                SHUTDOWN_FLUSH
            };
            let _ = tokio::time::timeout(grace, conn).await;
        }
    }
}

/// At shutdown, how long a connection with no request being handled has to flush.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(100);

/// Counts a request while its handler runs (and on cancellation too).
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's place: pending until it upgrades or ends, unless it serves a session.
struct Place {
    state: Mutex<PlaceState>,
    /// Cancelled when a newer connection takes this one's pending place.
    evicted: CancellationToken,
    shared: Arc<Shared>,
}

enum PlaceState {
    /// Under the pending cap, in this place (given back when dropped).
    Pending { _slot: PendingSlot },
    /// Out of the pending cap, serving this session.
    Session(Arc<str>),
}

impl Place {
    /// Leaves the pending cap for `session`, unless the session has its share already (then
    /// the connection stays pending, and may be evicted as any other).
    fn join_session(&self, session: &str) {
        let mut state = lock(&self.state);
        if matches!(*state, PlaceState::Session(_)) {
            return;
        }
        let session: Arc<str> = Arc::from(session);
        {
            let mut sessions = lock(&self.shared.sessions);
            let count = sessions.entry(session.clone()).or_default();
            if *count >= CONNECTIONS_PER_SESSION {
                return;
            }
            *count += 1;
            gauge!(m::HTTP_SESSION_CONNECTIONS).increment(1.0);
        }
        // The pending place goes back (and the connection can no longer be evicted).
        *state = PlaceState::Session(session);
    }

    /// Back under the pending cap (its session turned out not to exist, or ended).
    fn leave_session(&self) {
        let mut state = lock(&self.state);
        if let PlaceState::Session(session) = &*state {
            self.shared.release(session);
            *state = PlaceState::Pending {
                _slot: self.shared.pending.register(self.evicted.clone()),
            };
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let PlaceState::Session(session) = &*lock(&self.state) {
            self.shared.release(session);
        }
    }
}

impl Shared {
    /// Gives a connection's share of `session` back.
    fn release(&self, session: &Arc<str>) {
        let mut sessions = lock(&self.sessions);
        if let Some(count) = sessions.get_mut(session) {
            *count -= 1;
            if *count == 0 {
                sessions.remove(session);
            }
        }
        gauge!(m::HTTP_SESSION_CONNECTIONS).decrement(1.0);
    }
}

/// Nothing in these critical sections can panic halfway.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The pending-connection cap.

/// How long a pending connection has, once the cap is reached, before a newcomer may take
/// its place. A real client's request arrives within milliseconds of its connect; a socket
/// that sent nothing in this time is most likely part of a flood.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// Connections that have not upgraded yet, oldest first.
struct Pending {
    max: usize,
    inner: Mutex<PendingInner>,
    /// Woken when a place is given back.
    freed: Notify,
}

struct PendingInner {
    next: u64,
    /// Arrival number → when it came and the token that closes the connection.
    open: BTreeMap<u64, (Instant, CancellationToken)>,
}

impl PendingInner {
    /// Enters a connection as the newest, arriving now; returns its number.
    fn enlist(&mut self, evicted: &CancellationToken) -> u64 {
        let id = self.next;
        self.next += 1;
        self.open.insert(id, (Instant::now(), evicted.clone()));
        id
    }
}

impl Pending {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            inner: Mutex::new(PendingInner {
                next: 0,
                open: BTreeMap::new(),
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        lock(&self.inner)
    }

    /// A place for the next connection: at once below the cap; at the cap, once a place is
    /// given back or the oldest connection has had [`EVICT_AFTER`] (it is then closed).
    async fn admit(self: &Arc<Self>) -> PendingSlot {
        loop {
            let freed = self.freed.notified();
            let wait_until = {
                let mut inner = self.lock();
                let oldest = inner
                    .open
                    .first_key_value()
                    .map(|(id, (since, _))| (*id, *since));
                match oldest {
                    Some((id, since)) if inner.open.len() >= self.max => {
                        if since.elapsed() >= EVICT_AFTER {
                            if let Some((_, token)) = inner.open.remove(&id) {
                                token.cancel();
                            }
                            None
                        } else {
                            Some(since + EVICT_AFTER)
                        }
                    }
                    _ => None,
                }
            };
            match wait_until {
                None => return self.register(CancellationToken::new()),
                Some(deadline) => {
                    tokio::select! {
                        _ = freed => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
            }
        }
    }

    /// A place for a connection whose eviction cancels `evicted` (at once, without waiting:
    /// the connection is there already).
    fn register(self: &Arc<Self>, evicted: CancellationToken) -> PendingSlot {
        let mut inner = self.lock();
        let id = inner.enlist(&evicted);
        gauge!(m::HTTP_PENDING_CONNECTIONS).set(inner.open.len() as f64);
        PendingSlot {
            pending: self.clone(),
            id,
            evicted,
        }
    }

    /// The connection holding `slot` arrived now: it becomes the newest (a place taken before
    /// an idle spell must not make the connection that finally comes look old and evictable).
    fn arrived(&self, slot: &mut PendingSlot) {
        let mut inner = self.lock();
        inner.open.remove(&slot.id);
        slot.id = inner.enlist(&slot.evicted);
    }

    fn evict_oldest(&self) {
        if let Some((_, (_, oldest))) = self.lock().open.pop_first() {
            oldest.cancel();
        }
        self.freed.notify_one();
    }
}

/// A pending connection's place; released when the connection upgrades or ends, however.
struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
    /// Cancelled when a newer connection takes this one's place.
    evicted: CancellationToken,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut inner = self.pending.lock();
        inner.open.remove(&self.id);
        gauge!(m::HTTP_PENDING_CONNECTIONS).set(inner.open.len() as f64);
        drop(inner);
        self.pending.freed.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// The connection's IO.

/// A client connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The stream as hyper sees it: every byte moved counts as activity for the idle timeout.
pub struct Tracked {
    inner: Stream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// When a connection last moved a byte, on the monotonic clock.
#[derive(Clone)]
struct Activity {
    origin: Instant,
    /// Milliseconds from `origin` to the last byte moved.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Takes an upgraded connection back as the client's stream and the bytes hyper had already
/// read past the request (a client may send its first frame right behind the handshake).
pub fn take_upgraded(upgraded: hyper::upgrade::Upgraded) -> Result<(Stream, Bytes), io::Error> {
    match upgraded.downcast::<TokioIo<Tracked>>() {
        Ok(parts) => Ok((parts.io.into_inner().inner, parts.read_buf)),
        Err(_) => Err(io::Error::other(
            "the upgraded connection is not one of this server's streams",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newcomer asking for a place, checked to be still waiting.
    async fn waiting_newcomer(pending: &Arc<Pending>) -> tokio::task::JoinHandle<PendingSlot> {
        let waiting = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.admit().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        waiting
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_arrives_after_an_idle_spell_is_young() {
        let pending = Arc::new(Pending::new(2));
        let old = pending.admit().await;
        // The accept loop holds the next place while no connection comes for 5 s.
        let mut idle = pending.admit().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        pending.arrived(&mut idle);
        // A newcomer at the cap evicts the connection that is really old...
        let _first = pending.admit().await;
        assert!(old.evicted.is_cancelled());
        assert!(!idle.evicted.is_cancelled());
        // ...and the next one waits for the one that just arrived to have had EVICT_AFTER.
        let started = Instant::now();
        let waiting = waiting_newcomer(&pending).await;
        assert!(!idle.evicted.is_cancelled());
        let _second = waiting.await.unwrap();
        assert_eq!(started.elapsed(), EVICT_AFTER);
        assert!(idle.evicted.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_newcomers_wait_and_only_old_sockets_are_evicted() {
        let pending = Arc::new(Pending::new(2));
        let a = pending.admit().await;
        tokio::time::advance(Duration::from_millis(500)).await;
        let b = pending.admit().await;
        // At the cap with young connections: the newcomer waits.
        let started = Instant::now();
        let waiting = waiting_newcomer(&pending).await;
        // A place given back lets it in at once.
        drop(b);
        let c = waiting.await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!a.evicted.is_cancelled() && !c.evicted.is_cancelled());
        // Nobody leaves: the oldest is evicted once it has had EVICT_AFTER.
        let d = pending.admit().await;
        assert!(a.evicted.is_cancelled(), "the oldest made room");
        assert_eq!(started.elapsed(), EVICT_AFTER - Duration::from_millis(500));
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        pending.evict_oldest();
        assert!(c.evicted.is_cancelled());
        drop(a);
        assert_eq!(pending.lock().open.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_last_byte() {
        let activity = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.touch();
        let started = Instant::now();
        activity.idle_for(Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn accept_errors_are_classified() {
        assert_eq!(
            accept_error_kind(&io::Error::from_raw_os_error(24)),
            "emfile"
        );
        assert!(is_per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(!is_per_connection(&io::Error::from_raw_os_error(24)));
        assert!(
            is_per_connection(&io::Error::from_raw_os_error(71)),
            "EPROTO"
        );
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(12)));
    }
}
