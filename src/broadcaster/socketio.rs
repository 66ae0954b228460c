//! The Socket.IO v4 endpoint (`/socket.io/`, WebSocket and long-polling), for pages written
//! against the earlier Node relay. The protocol is socketioxide's; what it says is ours: the
//! earlier relay's event names and payloads, fed by the same hub as the native protocol
//! ([`super::socketio_feed`]), so there is one relay and one book.
//!
//! Events (docs/SOCKETIO.md):
//! - on connect, `sports:odds-update` with every event (`{timestamp, events, count,
//!   removals: [], snapshot: true}`), then one per odds message with its changes;
//! - `join-sport` (key or display name): that sport's events once, then its changes
//!   (`{sport, timestamp, events, count, removals}`); `leave-sport`;
//! - `join-user-room` with a JWT whose `sub` is the user (handshake `auth.token`, an
//!   `Authorization: Bearer` header or the `SOCKETIO_AUTH_COOKIE` cookie), else `error`;
//! - bridged channels: `event-updates` → `odds-update-<eventId>`, `chat-messages` →
//!   `chat-message-<eventId>`, `admin-events` → `admin:<type>` (admins only), `user-updates` →
//!   `user-update` in `user:<userId>`.
//!
//! A removed event is sent once more inside `events` with `removed: true`, `suspended: true`
//! and no prices (a page that merges by id shows it suspended), and its id in `removals`.
//!
//! Admission (caps, Origin) is the native endpoint's, checked on the handshake request before
//! any session exists ([`precheck`]) and again when the socket connects. A socket whose send
//! buffer is full leaves its odds rooms at once and gets fresh lists a second later, so it
//! never silently misses a change.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use metrics::{counter, gauge};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SocketIo, TransportType};
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::auth::Verifier;
use super::rooms::Hub;
use super::socketio_feed::{FeedItem, SocketId};
use crate::net::ClientAddr;
use crate::net::listener::ConnectionPlace;
use crate::odds::{Event, sport_key};
use crate::telemetry as m;

/// The Socket.IO room every connected socket is in once it has its first list.
const ALL: &str = "all";
/// The room of sockets whose handshake token has the admin role.
const ADMINS: &str = "admins";

/// What the endpoint shares with its handlers.
pub struct Context {
    pub hub: Hub,
    pub admission: Arc<Admission>,
    pub verifier: Verifier,
    /// The cookie that may carry the JWT (`SOCKETIO_AUTH_COOKIE`).
    pub auth_cookie: Option<String>,
    /// Sockets connected now (for /health).
    pub connected: Arc<AtomicUsize>,
    /// `CLIENT_MESSAGES_PER_MINUTE`, per socket as per native connection.
    pub messages_per_minute: u32,
    /// `MAX_ROOMS_PER_CONNECTION`.
    pub max_rooms: usize,
}

/// A socket's budget of client events: over it, the event is ignored and an `error`
/// `rate_limited` sent (at most one a second).
struct Budget {
    rate: super::session::RateLimit,
    last_error: Option<std::time::Instant>,
}

impl Budget {
    fn allow(budget: &std::sync::Mutex<Budget>, socket: &SocketRef) -> bool {
        let mut b = budget.lock().unwrap_or_else(|p| p.into_inner());
        if b.rate.allow() {
            return true;
        }
        if b.last_error
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            b.last_error = Some(std::time::Instant::now());
            error(socket, "rate_limited", "too many messages; slow down");
        } else {
            counter!(m::WS_CLIENT_ERRORS, "code" => "rate_limited").increment(1);
        }
        false
    }
}

/// Builds the layer for the router; spawn [`run_feed`] with the returned handle.
pub fn layer(ctx: Arc<Context>, max_payload: u64, max_buffer: usize) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .max_payload(max_payload)
        .max_buffer_size(max_buffer)
        .transports([TransportType::Polling, TransportType::Websocket])
        .build_layer();
    // The middleware runs before socketioxide tells the client it is connected, so the event
    // handlers it registers are there for the client's very first event; the handler runs
    // after, when the socket can be sent its list.
    let hub = ctx.hub.clone();
    let handler = move |socket: SocketRef| {
        let hub = hub.clone();
        async move {
            if !hub.socketio_join(socket.id, None) {
                join_later(hub, socket, vec![None]);
            }
        }
    };
    let middleware = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let ctx = ctx.clone();
        async move { on_connect(ctx, socket, auth.ok()) }
    };
    io.ns("/", handler.with(middleware));
    (layer, io)
}

/// Why a Socket.IO connection was refused (sent to the client as its `connect_error`).
#[derive(Debug)]
pub struct Refused {
    code: &'static str,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

fn refuse(code: &'static str, message: String) -> Result<(), Refused> {
    counter!(m::WS_REJECTED_CONNECTIONS, "reason" => code).increment(1);
    Err(Refused { code, message })
}

/// Every `/socket.io/` request passes here first.
/// - **A handshake** (no `sid`) is refused at the HTTP level when its Origin is not allowed or
///   the connection caps are full: a refusal inside the Socket.IO session would leave its
///   connection open. socket.io-client retries a refused handshake by itself.
/// - **A request of a session** (a poll, a send, the WebSocket upgrade) takes its connection
///   out of the pending-connection cap (`net::listener`), since the session holds a place
///   under the caps and a poll waits in silence (it would be evicted as a silent connection).
///   Back under it when socketioxide does not know the session, which it answers at once: a
///   made-up sid buys nothing.
pub async fn precheck(
    axum::extract::State(admission): axum::extract::State<Arc<Admission>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !req.uri().path().starts_with("/socket.io") {
        return next.run(req).await;
    }
    let sid = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("sid=")))
        .map(str::to_owned);
    let Some(sid) = sid else {
        return match refuse_handshake(&admission, &req) {
            Some(refusal) => refusal,
            None => next.run(req).await,
        };
    };
    let place = req
        .extensions()
        .get::<ConnectionPlace>()
        .filter(|_| sid.parse::<SocketId>().is_ok())
        .cloned();
    if let Some(place) = &place {
        place.serve_session(&sid);
    }
    let response = next.run(req).await;
    let status = response.status();
    if let Some(place) = place
        && !(status.is_success() || status == axum::http::StatusCode::SWITCHING_PROTOCOLS)
    {
        place.leave_session();
    }
    response
}

/// The HTTP answer refusing a handshake by Origin or caps, if it is refused.
fn refuse_handshake(
    admission: &Admission,
    req: &axum::extract::Request,
) -> Option<axum::response::Response> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let (status, code, message) = match origin {
        Some(origin)
            if !admission.allowed_origins.is_empty()
                && !admission.allowed_origins.iter().any(|a| a == origin) =>
        {
            (
                axum::http::StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("origin {origin} is not allowed"),
            )
        }
        _ => req
            .extensions()
            .get::<ClientAddr>()
            .and_then(|c| admission.has_room(c.ip).err())?,
    };
    counter!(m::WS_REJECTED_CONNECTIONS, "reason" => code).increment(1);
    Some(
        (
            status,
            axum::Json(json!({ "status": "error", "error": code, "message": message })),
        )
            .into_response(),
    )
}

/// Keeps a socket's admission place and the connected count for its lifetime.
struct Place {
    _guard: super::admission::ConnectionGuard,
    connected: Arc<AtomicUsize>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        gauge!(m::SOCKETIO_CONNECTIONS).decrement(1.0);
    }
}

/// Admits a connecting socket (Origin, caps) and registers its event handlers.
fn on_connect(ctx: Arc<Context>, socket: SocketRef, auth: Option<Value>) -> Result<(), Refused> {
    let parts = socket.req_parts();
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !ctx.admission.allowed_origins.is_empty()
        && let Some(origin) = origin
        && !ctx.admission.allowed_origins.iter().any(|a| a == origin)
    {
        let message = format!("origin {origin} is not allowed");
        return refuse("origin_not_allowed", message);
    }
    let Some(client) = parts.extensions.get::<ClientAddr>().cloned() else {
        return refuse("internal", "no client address".into());
    };
    let guard = match ctx.admission.admit(client.ip) {
        Ok(guard) => guard,
        Err((_, code, message)) => return refuse(code, message),
    };
    ctx.connected.fetch_add(1, Ordering::Relaxed);
    gauge!(m::SOCKETIO_CONNECTIONS).increment(1.0);
    let place = Arc::new(Place {
        _guard: guard,
        connected: ctx.connected.clone(),
    });
    socket.on_disconnect(async move || drop(place));
    // A cookie rides along with any site's WebSocket: it counts only when ALLOWED_ORIGINS
    // has vouched for the page (checked above).
    let cookie = ctx
        .auth_cookie
        .as_deref()
        .filter(|_| !ctx.admission.allowed_origins.is_empty());
    let identity = token(&socket, auth.as_ref(), cookie).and_then(|t| ctx.verifier.verify(&t).ok());
    if let Some(identity) = &identity {
        if identity.is_admin() {
            socket.join(ADMINS);
        }
        // At `exp` the token stops granting anything: private rooms are left.
        let (socket, wait) = (
            socket.clone(),
            identity.expires_at.saturating_sub(now_secs()),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            for room in socket.rooms() {
                if room == ADMINS || room.starts_with("user:") {
                    socket.leave(room.to_string());
                }
            }
        });
    }

    // Every client event spends from one budget per socket, as native messages do.
    let budget = Arc::new(std::sync::Mutex::new(Budget {
        rate: super::session::RateLimit::new(ctx.messages_per_minute),
        last_error: None,
    }));
    let (hub, b, max_rooms) = (ctx.hub.clone(), budget.clone(), ctx.max_rooms);
    socket.on(
        "join-sport",
        move |socket: SocketRef, Data::<Value>(sport)| {
            let (hub, budget) = (hub.clone(), b.clone());
            async move {
                if !Budget::allow(&budget, &socket) {
                    return;
                }
                let Some(key) = sport.as_str().map(|s| sport_key(Some(s), false)) else {
                    return error(&socket, "bad_request", "join-sport takes a sport name");
                };
                let rooms = socket.rooms();
                if rooms.iter().any(|r| *r == room_of(Some(&key))) {
                    return;
                }
                if rooms.len() >= max_rooms {
                    return error(
                        &socket,
                        "too_many_rooms",
                        "too many rooms for one connection",
                    );
                }
                if !hub.socketio_join(socket.id, Some(key.clone())) {
                    join_later(hub, socket, vec![Some(key)]);
                }
            }
        },
    );
    let (hub, b) = (ctx.hub.clone(), budget.clone());
    socket.on(
        "leave-sport",
        move |socket: SocketRef, Data::<Value>(sport)| {
            let (hub, budget) = (hub.clone(), b.clone());
            async move {
                if Budget::allow(&budget, &socket)
                    && let Some(sport) = sport.as_str()
                {
                    // Through the hub, so it cannot overtake a join still queued.
                    hub.socketio_leave(socket.id, sport_key(Some(sport), false));
                }
            }
        },
    );
    let b = budget.clone();
    socket.on("join-user-room", move |socket: SocketRef, Data::<Value>(user)| {
        let (identity, budget) = (identity.clone(), b.clone());
        async move {
            if !Budget::allow(&budget, &socket) {
                return;
            }
            let identity = identity.filter(|i| i.expires_at > now_secs());
            match (&identity, user_id(&user)) {
                (Some(identity), Some(user)) if identity.sub == user => {
                    socket.join(format!("user:{user}"));
                }
                (None, _) => error(
                    &socket,
                    "unauthorized",
                    "join-user-room needs a valid token (handshake auth.token, Authorization header or cookie)",
                ),
                _ => error(&socket, "forbidden", "the token is not this user's"),
            }
        }
    });
    socket.on(
        "leave-user-room",
        move |socket: SocketRef, Data::<Value>(user)| {
            let budget = budget.clone();
            async move {
                if Budget::allow(&budget, &socket)
                    && let Some(user) = user_id(&user)
                {
                    socket.leave(format!("user:{user}"));
                }
            }
        },
    );
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A user id as pages send it: a string or a number.
fn user_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The JWT of the handshake: `auth.token`, then `Authorization: Bearer`, then the cookie.
fn token(socket: &SocketRef, auth: Option<&Value>, cookie: Option<&str>) -> Option<String> {
    if let Some(t) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(t.to_string());
    }
    let headers = &socket.req_parts().headers;
    if let Some((scheme, t)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(t.trim().to_string());
    }
    let name = cookie?;
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn error(socket: &SocketRef, code: &str, message: &str) {
    counter!(m::WS_CLIENT_ERRORS, "code" => code.to_string()).increment(1);
    let _ = socket.emit("error", &json!({ "error": code, "message": message }));
}

/// Turns the hub's feed into Socket.IO events, in the hub's order, until cancelled.
pub async fn run_feed(
    io: SocketIo,
    hub: Hub,
    feed: &mut super::socketio_feed::FeedReceiver,
    cancel: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => {
                // Shutdown: every socket is told (a held long-polling request is answered
                // with the close), so no connection waits out its poll.
                let _ = tokio::time::timeout(Duration::from_secs(1), io.close()).await;
                return;
            }
            item = feed.recv() => match item {
                Some(item) => item,
                None => return,
            },
        };
        match item {
            FeedItem::Join {
                socket,
                sport,
                events,
            } => {
                let Some(s) = io.get_socket(socket) else {
                    continue;
                };
                let mine: Vec<&Event> = events
                    .iter()
                    .filter(|e| sport.as_ref().is_none_or(|key| e.view.sport == *key))
                    .collect();
                let room = room_of(sport.as_deref());
                // A list that cannot be sent is retried with the socket's other rooms.
                if send(&hub, &s, &list(sport.as_deref(), &mine, &[]), Some(sport)) {
                    s.join(room);
                }
            }
            FeedItem::Leave { socket, sport } => {
                if let Some(s) = io.get_socket(socket) {
                    s.leave(room_of(Some(&sport)));
                }
            }
            FeedItem::Reset { events, removed } => {
                let refs: Vec<&Event> = events.iter().collect();
                emit(&hub, &io, ALL, &list(None, &refs, &removed));
                for room in sport_rooms(&io) {
                    let key = room.trim_start_matches("sport:");
                    let mine: Vec<&Event> = refs
                        .iter()
                        .copied()
                        .filter(|e| e.view.sport == key)
                        .collect();
                    let gone: Vec<Event> = removed
                        .iter()
                        .filter(|e| e.view.sport == key)
                        .cloned()
                        .collect();
                    emit(&hub, &io, &room, &list(Some(key), &mine, &gone));
                }
            }
            FeedItem::Odds {
                published_at,
                sports,
                all_removed,
            } => {
                let timestamp = published_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let mut all: Vec<Value> = Vec::new();
                for change in &sports {
                    all.extend(
                        change
                            .upserts
                            .iter()
                            .filter_map(|e| serde_json::to_value(e).ok()),
                    );
                    let mut events: Vec<Value> = change
                        .upserts
                        .iter()
                        .filter_map(|e| serde_json::to_value(e).ok())
                        .collect();
                    events.extend(change.removed.iter().map(removed));
                    let removals: Vec<&str> =
                        change.removed.iter().map(|e| e.id.as_str()).collect();
                    emit(
                        &hub,
                        &io,
                        &format!("sport:{}", change.key),
                        &named(
                            "sports:odds-update",
                            &json!({
                                "sport": change.key,
                                "timestamp": timestamp,
                                "count": events.len(),
                                "events": events,
                                "removals": removals,
                            }),
                        ),
                    );
                }
                all.extend(all_removed.iter().map(removed));
                let removals: Vec<&str> = all_removed.iter().map(|e| e.id.as_str()).collect();
                emit(
                    &hub,
                    &io,
                    ALL,
                    &named(
                        "sports:odds-update",
                        &json!({
                            "timestamp": timestamp,
                            "count": all.len(),
                            "events": all,
                            "removals": removals,
                        }),
                    ),
                );
            }
            FeedItem::Bridged { channel, data } => bridged(&hub, &io, &channel, &data),
        }
    }
}

/// The earlier relay's bridged events.
fn bridged(hub: &Hub, io: &SocketIo, channel: &str, data: &Value) {
    let field = |name: &str| {
        data.get(name).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    match channel {
        "event-updates" => {
            if let Some(id) = field("eventId") {
                emit(hub, io, ALL, &named(&format!("odds-update-{id}"), data));
            }
        }
        "chat-messages" => {
            if let Some(id) = field("eventId") {
                emit(hub, io, ALL, &named(&format!("chat-message-{id}"), data));
            }
        }
        "admin-events" => {
            if let Some(kind) = field("type") {
                let payload = data.get("payload").cloned().unwrap_or(Value::Null);
                emit(hub, io, ADMINS, &named(&format!("admin:{kind}"), &payload));
            }
        }
        "user-updates" => {
            if let Some(user) = field("userId") {
                emit(
                    hub,
                    io,
                    &format!("user:{user}"),
                    &named("user-update", data),
                );
            }
        }
        _ => {}
    }
}

/// An event name with its payload, for [`emit`].
struct Named {
    event: String,
    payload: Box<RawValue>,
}

fn named(event: &str, payload: &Value) -> Named {
    Named {
        event: event.to_string(),
        payload: serde_json::value::to_raw_value(payload)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON")),
    }
}

/// The Socket.IO room of the global list (`None`) or of a sport.
fn room_of(sport: Option<&str>) -> String {
    match sport {
        Some(key) => format!("sport:{key}"),
        None => ALL.to_string(),
    }
}

/// `sports:odds-update` with a list: the whole of `events` as the room's current state, and
/// `gone`, events that went away since the room's previous list (announced as removals).
fn list(sport: Option<&str>, events: &[&Event], gone: &[Event]) -> Named {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut entries: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    entries.extend(gone.iter().map(removed));
    let removals: Vec<&str> = gone.iter().map(|e| e.id.as_str()).collect();
    let mut payload = json!({
        "timestamp": timestamp,
        "count": entries.len(),
        "events": entries,
        "removals": removals,
        "snapshot": true,
    });
    if let Some(sport) = sport {
        payload["sport"] = json!(sport);
    }
    named("sports:odds-update", &payload)
}

/// The last published form of a removed event, marked so a page's merge shows it suspended.
fn removed(event: &Event) -> Value {
    let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
    if let Some(o) = value.as_object_mut() {
        o.insert("removed".into(), json!(true));
        o.insert("suspended".into(), json!(true));
        o.insert("live".into(), json!(false));
        o.insert("yesOdds".into(), Value::Null);
        o.insert("noOdds".into(), Value::Null);
        if let Some(Value::Array(outcomes)) = o.get_mut("outcomes") {
            for outcome in outcomes {
                outcome["probability"] = Value::Null;
                outcome["odds"] = Value::Null;
            }
        }
    }
    value
}

fn sport_rooms(io: &SocketIo) -> Vec<String> {
    let mut rooms: Vec<String> = io
        .sockets()
        .iter()
        .flat_map(|s| s.rooms())
        .map(|r| r.to_string())
        .filter(|r| r.starts_with("sport:"))
        .collect();
    rooms.sort();
    rooms.dedup();
    rooms
}

/// How long a socket whose buffer was full waits before it gets fresh lists.
const RECOVER_AFTER: Duration = Duration::from_secs(1);

/// Sends to one socket. A socket whose buffer is full cannot be told anything, not even to
/// disconnect: it leaves its odds rooms at once (so it never holds a list with a change
/// missing) and, after [`RECOVER_AFTER`], joins them again through the hub, which sends fresh
/// lists (counted in `oddsfeed_socketio_resyncs_total`). `joining` is the room whose list
/// this is (not joined yet), recovered with the others. Returns whether it was sent.
fn send(hub: &Hub, socket: &SocketRef, named: &Named, joining: Option<Option<String>>) -> bool {
    match socket.emit(named.event.as_str(), &*named.payload) {
        Ok(()) => {
            counter!(m::WS_MESSAGES_SENT, "kind" => "socketio").increment(1);
            counter!(m::WS_BYTES_SENT).increment(named.payload.get().len() as u64);
            true
        }
        Err(_) if !socket.connected() => false,
        Err(_) => {
            counter!(m::SOCKETIO_RESYNCS).increment(1);
            let mut odds: Vec<Option<String>> = socket
                .rooms()
                .iter()
                .filter_map(|r| match r.as_ref() {
                    ALL => Some(None),
                    r => r.strip_prefix("sport:").map(|k| Some(k.to_string())),
                })
                .collect();
            for sport in &odds {
                socket.leave(room_of(sport.as_deref()));
            }
            odds.extend(joining.filter(|room| !odds.contains(room)));
            join_later(hub.clone(), socket.clone(), odds);
            false
        }
    }
}

/// Joins `rooms` (`None`: the global list) through the hub after [`RECOVER_AFTER`], again
/// and again while the feed is full.
fn join_later(hub: Hub, socket: SocketRef, rooms: Vec<Option<String>>) {
    tokio::spawn(async move {
        let mut left = rooms;
        while !left.is_empty() && socket.connected() {
            tokio::time::sleep(RECOVER_AFTER).await;
            left.retain(|sport| !hub.socketio_join(socket.id, sport.clone()));
        }
    });
}

/// Sends `named` to every socket in `room`, serialised once.
fn emit(hub: &Hub, io: &SocketIo, room: &str, named: &Named) {
    for socket in io.to(room.to_string()).sockets() {
        send(hub, &socket, named, None);
    }
}
