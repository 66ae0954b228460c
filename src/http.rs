//! The axum router: `/health`, `/metrics`, the publisher's control API, and (with the
//! broadcaster) `/ws`. One error type for the HTTP boundary.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use redis::aio::ConnectionManager;
use serde_json::json;
use sqlx::PgPool;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::broadcaster::Hub;
use crate::bus::now_ms;
use crate::publisher::PublisherHandle;
use crate::supervisor::TaskStatus;
use crate::telemetry as m;

/// Errors a handler can answer with. Unexpected causes are logged with their chain and shown
/// to the client only as a short message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Unavailable(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let body = json!({ "status": "error", "error": self.code(), "message": self.to_string() });
        (self.status_code(), Json(body)).into_response()
    }
}

/// What `/health` and `/metrics` look at.
#[derive(Clone)]
pub struct HealthState {
    /// Process start, for `uptime`.
    pub started: Instant,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Checked with `SELECT 1` when this process reads PostgreSQL (publisher modes).
    pub pool: Option<PgPool>,
    /// Checked with `PING`; a connection of its own, never the publisher's.
    pub redis: ConnectionManager,
    /// The local publisher, when this process runs one.
    pub publisher: Option<PublisherHandle>,
    /// The local broadcaster, when this process runs one.
    pub broadcaster: Option<BroadcasterHealth>,
    /// The supervised long-running tasks.
    pub tasks: crate::supervisor::Tasks,
}

/// What /health reads from the broadcaster.
#[derive(Clone)]
pub struct BroadcasterHealth {
    pub hub: Hub,
    /// True while the relay is subscribed to Redis.
    pub relay_connected: Arc<AtomicBool>,
    /// Socket.IO connections open now.
    pub socketio_connected: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long a dependency check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// `POST /debug/panic/{task}` (loopback only), routed only with `FAULT_INJECTION`: makes the
/// named supervised task panic, to prove it is restarted and reported.
pub fn fault_router(faults: crate::supervisor::Faults) -> Router {
    Router::new()
        .route(
            "/debug/panic/{task}",
            axum::routing::post(
                |State(faults): State<crate::supervisor::Faults>,
                 axum::extract::Extension(client): axum::extract::Extension<
                    crate::net::ClientAddr,
                >,
                 axum::extract::Path(task): axum::extract::Path<String>| async move {
                    if !client.is_local() {
                        return StatusCode::FORBIDDEN;
                    }
                    if faults.arm(&task) {
                        StatusCode::ACCEPTED
                    } else {
                        StatusCode::NOT_FOUND
                    }
                },
            ),
        )
        .with_state(faults)
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Checks PostgreSQL and Redis every `every`, so `oddsfeed_dependency_up` is current for
/// Prometheus even when nobody calls /health.
pub async fn probe_dependencies(
    pool: Option<PgPool>,
    mut redis: ConnectionManager,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(pool) = &pool {
            dependency("postgres", &check_postgres(pool).await);
        }
        dependency("redis", &check_redis(&mut redis).await);
    }
}

async fn check_postgres(pool: &PgPool) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// PINGs Redis. A connection broken by a Redis restart fails its first command and then
/// reconnects, so one failure is retried once before Redis counts as down.
async fn check_redis(conn: &mut ConnectionManager) -> Result<(), String> {
    let ping = redis::cmd("PING");
    let mut result = Err(String::new());
    for _ in 0..2 {
        result = match tokio::time::timeout(CHECK_TIMEOUT, ping.query_async::<String>(conn)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
    }
    result
}

fn dependency(name: &'static str, result: &Result<(), String>) -> serde_json::Value {
    metrics::gauge!(m::DEPENDENCY_UP, "dependency" => name).set(if result.is_ok() {
        1.0
    } else {
        0.0
    });
    match result {
        Ok(()) => json!({ "status": "up" }),
        Err(e) => json!({ "status": "down", "error": e }),
    }
}

/// `200 ok` when every dependency answers and the publisher's last cycle succeeded, `200
/// degraded` when a dependency answers but the publisher is failing, `503` when PostgreSQL or
/// Redis does not answer (not ready).
async fn health(State(mut state): State<HealthState>) -> impl IntoResponse {
    let postgres = match &state.pool {
        Some(pool) => Some(check_postgres(pool).await),
        None => None,
    };
    let redis = check_redis(&mut state.redis).await;
    let ready = redis.is_ok() && postgres.as_ref().is_none_or(Result::is_ok);
    let publisher = state.publisher.as_ref().map(PublisherHandle::status);
    let publisher_failing = publisher.as_ref().is_some_and(|p| p.last_error.is_some());
    let stream = state.broadcaster.as_ref().map(|b| {
        let position = b.hub.position();
        json!({
            "subscribed": b.relay_connected.load(Ordering::Relaxed),
            "publisher": if b.hub.publisher_live() { "live" } else { "stale" },
            "epoch": position.as_ref().map(|p| p.0.clone()),
            "seq": position.as_ref().map(|p| p.1),
        })
    });
    let stream_failing = state
        .broadcaster
        .as_ref()
        .is_some_and(|b| !b.relay_connected.load(Ordering::Relaxed) || !b.hub.publisher_live());
    let connections = state.broadcaster.as_ref().map_or(0, |b| {
        b.hub.connections() + b.socketio_connected.load(Ordering::Relaxed)
    });
    let tasks = state.tasks.snapshot();
    let task_down = tasks.values().any(TaskStatus::is_down);
    // Without its tick loop or its relay the process cannot do its job: not ready.
    let critical_down = tasks.values().any(|t| t.critical && t.is_down());
    let ready = ready && !critical_down;
    let mut body = json!({
        "status": if ready && !publisher_failing && !stream_failing && !task_down { "ok" } else { "degraded" },
        "tasks": tasks,
        "connections": connections,
        "uptime": state.started.elapsed().as_secs(),
        "timestamp": now_ms(),
        "redis": dependency("redis", &redis),
    });
    if let Some(postgres) = &postgres {
        body["postgres"] = dependency("postgres", postgres);
    }
    if let Some(status) = publisher {
        body["publisher"] = json!(status);
    }
    if let Some(stream) = stream {
        body["stream"] = stream;
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
