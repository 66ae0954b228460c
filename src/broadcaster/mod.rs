//! The broadcast server: Redis → rooms → WebSocket sessions (docs/PROTOCOL.md).
//!
//! - [`relay`]: subscribes to the odds and bridged channels, keeps the hub's book in step,
//!   heals gaps from the Redis state keys, detects a silent publisher.
//! - [`rooms`]: the hub: book, rooms, seqs, replay buffers, fan-out of shared frames.
//! - [`session`]: one socket: read loop with limits, write loop with pings and close codes.
//! - [`protocol`]: client and server messages.
//! - [`room_name`]: odds room names parsed into a type (`sport:all`, `sport:<key>`, `event:<id>`).
//! - [`auth`]: HS256 JWT verification.

pub mod auth;
pub mod protocol;
pub mod relay;
pub mod room_name;
pub mod rooms;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics::{counter, gauge};
use serde::Deserialize;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::telemetry as m;
pub use rooms::Hub;
pub use session::{SessionContext, SessionLimits};

/// Connection admission: total and per-IP caps, and the Origin allow-list.
pub struct Admission {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Exact origins allowed (`https://app.example.com`); empty allows any.
    pub allowed_origins: Vec<String>,
    /// Largest frame accepted at all; above it the connection is closed with 1009. Messages
    /// between `max_message_bytes` and this get a `too_large` error and the connection stays.
    pub hard_frame_limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

impl Admission {
    pub fn new(
        max_connections: usize,
        max_connections_per_ip: usize,
        allowed_origins: Vec<String>,
        hard_frame_limit: usize,
    ) -> Self {
        Self {
            max_connections,
            max_connections_per_ip,
            allowed_origins,
            hard_frame_limit,
            open: Mutex::new(HashMap::new()),
            total: Default::default(),
        }
    }

    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<ConnectionGuard, (StatusCode, &'static str, String)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::SeqCst) >= self.max_connections {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "the server holds its maximum of {} connections",
                    self.max_connections
                ),
            ));
        }
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max_connections_per_ip {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_from_address",
                format!(
                    "at most {} connections per address",
                    self.max_connections_per_ip
                ),
            ));
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        gauge!(m::WS_CONNECTIONS).increment(1.0);
        Ok(ConnectionGuard {
            admission: self.clone(),
            ip,
        })
    }
}

/// Releases a connection's place when the session ends, however it ends.
pub struct ConnectionGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::SeqCst);
        gauge!(m::WS_CONNECTIONS).decrement(1.0);
    }
}

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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        // A plain GET of / is a browser: the odds board.
        Err(_) if uri.path() == "/" => {
            return (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                BOARD_HTML,
            )
                .into_response();
        }
        Err(rejection) => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!(
                    "oddsfeed WebSocket endpoint: connect with a WebSocket client to ws://<host>/ws ({rejection})\n"
                ),
            )
                .into_response();
        }
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
    let guard = match state.admission.admit(peer.ip().to_canonical()) {
        Ok(guard) => guard,
        Err((status, code, message)) => return refuse(status, code, message),
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let client_id = format!("{}-{id}", state.node);
    let sessions = state.sessions.clone();
    let tracker = state.tracker.clone();
    let hard_limit = state.admission.hard_frame_limit;
    // Client messages are small: an 8 KiB read buffer instead of tungstenite's 128 KiB default
    // is most of the difference between ~180 KiB and ~60 KiB per connection (BENCHMARKS.md).
    ws.read_buffer_size(8 * 1024)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                tracing::debug!(client = %client_id, %peer, "connected");
                session::run(socket, sessions, id, client_id, query.token).await;
                drop(guard);
            })
        })
}
