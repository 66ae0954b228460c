//! `POST/DELETE/GET /api/sports/ws-publisher` (docs/PROTOCOL.md), with the same JSON as the earlier
//! Next.js route, and the desired run state stored in PostgreSQL.
//!
//! Auth: with `CONTROL_TOKEN` set, POST and DELETE need `Authorization: Bearer <token>` (401
//! otherwise; the scheme is case-insensitive). Without it they are accepted only from a local
//! client ([`ClientAddr::is_local`]): a loopback peer relaying for nobody (no `Forwarded`,
//! `X-Forwarded-For`, `X-Real-IP` or similar header), or a loopback client named by a proxy
//! in `TRUSTED_PROXIES`; 403 otherwise. A reverse proxy on the same host must not turn the
//! whole internet into "loopback". GET is open, like /health. Other methods get 405 from the
//! router.

use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::PublisherHandle;
use super::leader::{Desired, parse_desired};
use crate::http::ApiError;
use crate::net::ClientAddr;

/// The route, as the earlier system served it.
pub const PATH: &str = "/api/sports/ws-publisher";

/// What the control handlers need.
#[derive(Clone)]
pub struct ControlState {
    /// Where the desired state lives.
    pub pool: PgPool,
    /// The odds channel whose publisher this controls (the table's key).
    pub channel: String,
    /// `CONTROL_TOKEN`; `None` means loopback-only.
    pub token: Option<String>,
    /// The local scheduler's status and wake-up.
    pub handle: PublisherHandle,
    /// `PUBLISHER_AUTOSTART`, for a channel with no stored state.
    pub autostart: bool,
    /// The supervised tasks: while the scheduler task is down, GET says so.
    pub tasks: crate::supervisor::Tasks,
    /// What GET knows without asking PostgreSQL.
    pub known: KnownDesired,
}

/// The desired state as last read or written by this process's control API, and whether
/// PostgreSQL failed to answer lately: GET then answers from it at once instead of waiting
/// for a database that is down.
#[derive(Clone, Default)]
pub struct KnownDesired {
    inner: std::sync::Arc<std::sync::Mutex<KnownInner>>,
}

#[derive(Default)]
struct KnownInner {
    desired: Option<Desired>,
    /// Until when GET does not try PostgreSQL (after a failed or slow read).
    skip_until: Option<tokio::time::Instant>,
}

/// How long GET waits for PostgreSQL before answering from what it knows.
const STATUS_READ_TIMEOUT: Duration = Duration::from_millis(250);
/// How long GET answers from what it knows, without trying, after PostgreSQL failed.
const STATUS_RETRY_AFTER: Duration = Duration::from_secs(5);

impl KnownDesired {
    fn lock(&self) -> std::sync::MutexGuard<'_, KnownInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, desired: Desired) {
        let mut inner = self.lock();
        inner.desired = Some(desired);
        inner.skip_until = None;
    }

    fn unreachable(&self) {
        self.lock().skip_until = Some(tokio::time::Instant::now() + STATUS_RETRY_AFTER);
    }

    fn should_try(&self) -> bool {
        self.lock()
            .skip_until
            .is_none_or(|until| tokio::time::Instant::now() >= until)
    }

    fn desired(&self) -> Option<Desired> {
        self.lock().desired
    }
}

pub fn router(state: ControlState) -> Router {
    Router::new()
        .route(PATH, get(status).post(start).delete(stop))
        .with_state(state)
}

fn authorize(
    token: Option<&str>,
    client: &ClientAddr,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    match token {
        Some(token) => {
            // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` and `BEARER` count.
            let given = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map_or("", |(_, token)| token.trim());
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::Unauthorized(
                    "a valid Authorization: Bearer token is required".into(),
                ))
            }
        }
        None => {
            if client.is_local() {
                Ok(())
            } else {
                Err(ApiError::Forbidden(
                    "CONTROL_TOKEN is not set, so the publisher can only be controlled from loopback".into(),
                ))
            }
        }
    }
}

/// Compares without an early exit, so response time does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Stores the desired state and returns the one stored before (`None`: never set).
async fn set_desired(
    state: &ControlState,
    desired: &str,
    by: &str,
) -> Result<Option<String>, ApiError> {
    let previous: Option<String> = sqlx::query_scalar(
        "WITH previous AS (SELECT desired FROM publisher_control WHERE channel = $1)
         INSERT INTO publisher_control (channel, desired, updated_by) VALUES ($1, $2, $3)
         ON CONFLICT (channel) DO UPDATE
            SET desired = EXCLUDED.desired, updated_at = now(), updated_by = EXCLUDED.updated_by
         RETURNING (SELECT desired FROM previous)",
    )
    .bind(&state.channel)
    .bind(desired)
    .bind(by)
    .fetch_one(&state.pool)
    .await
    .map_err(|e| {
        ApiError::Unavailable(
            anyhow::Error::new(e).context("Failed to store the publisher's desired state"),
        )
    })?;
    Ok(previous)
}

async fn stored_desired(state: &ControlState) -> Result<Desired, ApiError> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT desired FROM publisher_control WHERE channel = $1")
            .bind(&state.channel)
            .fetch_optional(&state.pool)
            .await
            .map_err(|e| {
                ApiError::Unavailable(
                    anyhow::Error::new(e).context("Failed to read the publisher's desired state"),
                )
            })?;
    Ok(parse_desired(stored.as_deref(), state.autostart))
}

/// The status object shared by all three answers.
fn status_body(state: &ControlState, desired: Desired) -> Value {
    let s = state.handle.status();
    let running = desired == Desired::Running;
    // A scheduler task waiting to be restarted publishes nothing, whatever it last reported.
    let down = state.tasks.is_down(SCHEDULER_TASK);
    json!({
        "status": if running { "running" } else { "stopped" },
        "interval": running.then(|| state.handle.interval_label()),
        "isPublishing": s.is_publishing && !down,
        "leader": s.leader && !down,
        "channel": state.channel,
        "epoch": s.epoch,
        "seq": s.seq,
        "activeEvents": s.active_events,
        "suspendedEvents": s.suspended_events,
        "lastTickAt": s.last_tick_at,
        "lastTickMs": s.last_tick_ms,
        "lastPublishedAt": s.last_published_at,
        "ticks": s.ticks,
        "errors": s.errors,
        "overruns": s.overruns,
        "lastError": s.last_error,
    })
}

fn with(mut body: Value, status: &str, message: &str) -> Json<Value> {
    body["status"] = json!(status);
    body["message"] = json!(message);
    Json(body)
}

/// The supervisor's name of the tick loop's task.
const SCHEDULER_TASK: &str = "scheduler";

/// GET answers even when PostgreSQL does not, and at once: it waits at most
/// `STATUS_READ_TIMEOUT` for the stored desired state, and for `STATUS_RETRY_AFTER` after a
/// failure does not wait at all; it then shows the desired state last known (read by the
/// scheduler or by this API), and `lastError` says why. While the scheduler task is down (it
/// panicked and waits to be restarted) the answer is 503 with `"status": "down"` and the failure.
async fn status(State(state): State<ControlState>) -> Response {
    let stored = if state.known.should_try() {
        match tokio::time::timeout(STATUS_READ_TIMEOUT, stored_desired(&state)).await {
            Ok(Ok(desired)) => {
                state.known.remember(desired);
                Some(desired)
            }
            _ => {
                state.known.unreachable();
                None
            }
        }
    } else {
        None
    };
    let desired = stored
        .or_else(|| state.handle.status().desired)
        .or_else(|| state.known.desired())
        .unwrap_or(parse_desired(None, state.autostart));
    let mut body = status_body(&state, desired);
    if let Some(task) = state.tasks.get(SCHEDULER_TASK)
        && task.is_down()
    {
        body["status"] = json!("down");
        body["message"] = json!("the publisher's tick loop failed and is being restarted");
        body["taskError"] = json!(task.last_failure);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(body).into_response()
}

async fn start(
    State(state): State<ControlState>,
    Extension(client): Extension<ClientAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(state.token.as_deref(), &client, &headers)?;
    let peer = client.ip;
    let previous = set_desired(&state, "running", &peer.to_string()).await?;
    state.known.remember(Desired::Running);
    state.handle.wake();
    let body = status_body(&state, Desired::Running);
    Ok(
        if parse_desired(previous.as_deref(), state.autostart) == Desired::Running {
            with(
                body,
                "already_running",
                "WebSocket publisher is already running",
            )
        } else {
            tracing::info!(%peer, "publisher started by request");
            with(body, "started", "WebSocket publisher started")
        },
    )
}

async fn stop(
    State(state): State<ControlState>,
    Extension(client): Extension<ClientAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(state.token.as_deref(), &client, &headers)?;
    let peer = client.ip;
    let previous = set_desired(&state, "stopped", &peer.to_string()).await?;
    state.known.remember(Desired::Stopped);
    state.handle.wake();
    let confirmed = stopped_publishing(&state).await;
    let mut body = status_body(&state, Desired::Stopped);
    body["interval"] = Value::Null;
    Ok(
        if parse_desired(previous.as_deref(), state.autostart) == Desired::Stopped {
            with(body, "not_running", "WebSocket publisher is not running")
        } else if confirmed {
            tracing::info!(%peer, "publisher stopped by request");
            with(body, "stopped", "WebSocket publisher stopped")
        } else {
            tracing::warn!(%peer, wait = ?STOP_CONFIRM_TIMEOUT, "publisher stop requested; its tick loop has not confirmed yet");
            with(
                body,
                "stopped",
                "WebSocket publisher stop stored; this process's tick loop is still finishing a tick (isPublishing turns false when it has)",
            )
        },
    )
}

/// How long DELETE waits for this process's tick loop to confirm that it stopped publishing.
const STOP_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits (at most [`STOP_CONFIRM_TIMEOUT`]) until this process's tick loop no longer
/// publishes, so that the answer's `isPublishing` is already false: the loop takes the stop at
/// its next wake, after the tick in progress. Another process that leads learns the stop from
/// PostgreSQL at its next tick.
async fn stopped_publishing(state: &ControlState) -> bool {
    let deadline = tokio::time::Instant::now() + STOP_CONFIRM_TIMEOUT;
    loop {
        if !state.handle.status().is_publishing || state.tasks.is_down(SCHEDULER_TASK) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_rules() {
        use crate::net::TrustedProxies;
        use std::net::SocketAddr;
        let none = HeaderMap::new();
        let client = |peer: &str, headers: &HeaderMap, trusted: &[&str]| {
            let peer: SocketAddr = peer.parse().unwrap();
            ClientAddr::resolve(peer, headers, &TrustedProxies::parse(trusted).unwrap())
        };
        let loopback = client("127.0.0.1:5000", &none, &[]);
        let mapped = client("[::ffff:127.0.0.1]:5000", &none, &[]);
        let remote = client("192.0.2.7:5000", &none, &[]);
        let mut proxied = HeaderMap::new();
        proxied.insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", "Bearer t0k".parse().unwrap());

        assert!(authorize(None, &loopback, &none).is_ok());
        assert!(authorize(None, &mapped, &none).is_ok());
        let forbidden = |r: Result<(), ApiError>| matches!(r, Err(ApiError::Forbidden(_)));
        assert!(forbidden(authorize(None, &remote, &none)));
        let relayed = client("127.0.0.1:5000", &proxied, &[]);
        assert!(forbidden(authorize(None, &relayed, &proxied)));
        let mut real_ip = HeaderMap::new();
        real_ip.insert("x-real-ip", "8.8.8.8".parse().unwrap());
        let relayed = client("127.0.0.1:5000", &real_ip, &[]);
        assert!(forbidden(authorize(None, &relayed, &real_ip)));
        // A trusted proxy relaying for a remote client: still not local.
        let relayed = client("127.0.0.1:5000", &real_ip, &["127.0.0.1"]);
        assert!(forbidden(authorize(None, &relayed, &real_ip)));
        // A trusted proxy relaying for a local client: local.
        let mut local_xff = HeaderMap::new();
        local_xff.insert("x-forwarded-for", "127.0.0.1".parse().unwrap());
        let relayed = client("127.0.0.1:5000", &local_xff, &["127.0.0.1"]);
        assert!(authorize(None, &relayed, &local_xff).is_ok());
        // With a token, the address does not matter but the token does.
        assert!(authorize(Some("t0k"), &remote, &bearer).is_ok());
        for scheme in ["bearer", "BEARER", "Bearer"] {
            let mut h = HeaderMap::new();
            h.insert("authorization", format!("{scheme} t0k").parse().unwrap());
            assert!(authorize(Some("t0k"), &remote, &h).is_ok(), "{scheme}");
        }
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic t0k".parse().unwrap());
        assert!(matches!(
            authorize(Some("t0k"), &remote, &basic),
            Err(ApiError::Unauthorized(_))
        ));
        let unauthorized = |r: Result<(), ApiError>| matches!(r, Err(ApiError::Unauthorized(_)));
        assert!(unauthorized(authorize(Some("t0k"), &loopback, &none)));
        assert!(unauthorized(authorize(Some("other"), &loopback, &bearer)));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
