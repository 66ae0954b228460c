//! The broadcast server: Redis → rooms → WebSocket sessions (docs/PROTOCOL.md).
//!
//! - [`relay`]: subscribes to the odds and bridged channels, keeps the hub's book in step,
//!   heals gaps from the Redis state keys, detects a silent publisher.
//! - [`inbox`]: the relay's bounded inbound queue (overflow → reload, not unbounded memory).
//! - [`rooms`]: the hub: book, rooms, seqs, replay buffers, fan-out of shared frames.
//! - [`admission`]: connection caps (total, per client address) and the Origin allow-list.
//! - [`upgrade`]: the WebSocket handshake, handing the raw connection to the session.
//! - [`session`]: one connection's life: read side with limits and close codes, guards that
//!   release everything however it ends.
//! - [`outbox`]: a session's send queue, bounded in frames and bytes (over it: 1013), and the
//!   one place that decides who writes the socket.
//! - [`fanout`]: threads that write room frames straight into the sockets of sessions that
//!   keep up, without waking their tasks.
//! - [`writer`]: a session's write side: vectored writes of shared frames, pings, deadlines;
//!   it takes over whatever the fan-out could not write at once.
//! - [`frame`]: server frames encoded once, header included, shared by every member.
//! - [`changes`]: the `changes` format of odds messages (only the fields that changed).
//! - [`deflate`]: permessage-deflate: the negotiation, and room frames compressed once.
//! - [`inflate`]: compressed client messages inflated before tungstenite reads them.
//! - [`protocol`]: client and server messages.
//! - [`room_name`]: odds room names parsed into a type (`sport:all`, `sport:<key>`, `event:<id>`).
//! - [`auth`]: HS256 JWT verification.
//! - [`socketio`]: the Socket.IO v4 endpoint for pages of the earlier Node relay (socketioxide),
//!   with the earlier relay's event names and payloads.
//! - [`socketio_feed`]: what the hub tells the Socket.IO endpoint, queued in the hub's order.

pub mod admission;
pub mod auth;
pub mod changes;
pub mod deflate;
pub mod fanout;
pub mod frame;
pub mod inbox;
pub mod inflate;
pub mod outbox;
pub mod protocol;
pub mod relay;
pub mod room_name;
pub mod rooms;
pub mod session;
pub mod socketio;
pub mod socketio_feed;
pub mod upgrade;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics::counter;
use serde::Deserialize;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::net::ClientAddr;
use crate::telemetry as m;
pub use admission::Admission;
pub use rooms::Hub;
pub use session::{SessionContext, SessionLimits};

/// What the WebSocket routes share.
#[derive(Clone)]
pub struct BroadcasterState {
    pub sessions: Arc<SessionContext>,
    pub admission: Arc<Admission>,
    /// Tracks session tasks so shutdown can wait for their close frames.
    pub tracker: TaskTracker,
    /// Names this process in client ids, so ids are unique across broadcaster nodes.
    pub node: String,
    /// Source of client ids within this process.
    pub next_id: Arc<AtomicU64>,
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
    /// `full` (the default) or `changes`: how upserts of `odds` messages are sent.
    format: Option<String>,
}

/// The live odds board and the client it is built on, compiled into the binary.
const BOARD_HTML: &str = include_str!("../../web/board.html");
const CLIENT_JS: &str = include_str!("../../web/oddsfeed-client.js");

pub fn router(state: BroadcasterState) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/", get(upgrade))
        .route("/oddsfeed-client.js", get(client_js))
        .with_state(state)
}

async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    counter!(m::WS_REJECTED_CONNECTIONS, "reason" => code.to_string()).increment(1);
    (
        status,
        Json(json!({ "status": "error", "error": code, "message": message })),
    )
        .into_response()
}

async fn upgrade(
    State(state): State<BroadcasterState>,
    Extension(client): Extension<ClientAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: Result<upgrade::WsRequest, upgrade::NotWebSocket>,
) -> Response {
    let changes = match query.format.as_deref() {
        None | Some("full") => false,
        Some("changes") => true,
        Some(other) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("format must be full or changes, not {other:?}"),
            );
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        // A plain GET of / is a browser: the odds board.
        Err(_) if uri.path() == "/" && !headers.contains_key(header::UPGRADE) => {
            return (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                BOARD_HTML,
            )
                .into_response();
        }
        Err(rejection) => return rejection.into_response(),
    };
    if !state.admission.allowed_origins.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && !state.admission.allowed_origins.iter().any(|a| a == origin)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("origin {origin} is not allowed"),
        );
    }
    let guard = match state.admission.admit(client.ip) {
        Ok(guard) => guard,
        Err((status, code, message)) => return refuse(status, code, message),
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let client_id = format!("{}-{id}", state.node);
    let sessions = state.sessions.clone();
    let extensions = if sessions.deflate {
        deflate::negotiate(&headers)
    } else {
        None
    };
    let format = rooms::WireFormat {
        changes,
        deflate: extensions.is_some(),
    };
    let (response, upgraded) = ws.accept(sessions.limits.close_timeout, extensions);
    state.tracker.spawn(async move {
        // Held for the session's life: dropped (the place given back) however it ends.
        let _guard = guard;
        match upgraded.await {
            Ok((stream, leftover)) => {
                tracing::debug!(client = %client_id, ip = %client.ip, peer = %client.peer, "connected");
                session::run(stream, leftover, sessions, id, client_id, query.token, format)
                    .await;
            }
            Err(e) => tracing::debug!(client = %client_id, error = %e, "upgrade did not complete"),
        }
    });
    response
}
