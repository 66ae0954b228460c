//! Logging and metrics: the tracing subscriber, the Prometheus recorder, and every metric
//! name in one place so dashboards and code cannot drift apart.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

// Publisher.
pub const TICK_DURATION: &str = "oddsfeed_tick_duration_seconds";
pub const TICKS: &str = "oddsfeed_ticks_total";
pub const TICK_OVERRUNS: &str = "oddsfeed_tick_overruns_total";
pub const EVENTS_ACTIVE: &str = "oddsfeed_events_active";
pub const EVENTS_SUSPENDED: &str = "oddsfeed_events_suspended";
pub const EVENT_SUSPENSIONS: &str = "oddsfeed_event_suspensions_total";
pub const PUBLISHED_MESSAGES: &str = "oddsfeed_published_messages_total";
pub const PUBLISHED_BYTES: &str = "oddsfeed_published_bytes_total";
pub const PUBLISHED_UPSERTS: &str = "oddsfeed_published_upserts_total";
pub const PUBLISHED_REMOVALS: &str = "oddsfeed_published_removals_total";
pub const PUBLISHER_LEADER: &str = "oddsfeed_publisher_leader";
pub const PUBLISHER_RUNNING: &str = "oddsfeed_publisher_running";
pub const PUBLISHER_SEQ: &str = "oddsfeed_publisher_seq";
pub const LEADER_CHANGES: &str = "oddsfeed_leader_changes_total";
pub const STATE_RELOADS: &str = "oddsfeed_state_reloads_total";
pub const PUBLISHER_READS: &str = "oddsfeed_publisher_reads_total";
pub const RESYNC_DIFFERENCES: &str = "oddsfeed_publisher_resync_differences_total";
pub const LEADER_CHECK: &str = "oddsfeed_leader_check_seconds";
pub const SOURCE_VALUE_PROBLEMS: &str = "oddsfeed_source_value_problems_total";
// Broadcaster.
pub const WS_CONNECTIONS: &str = "oddsfeed_ws_connections";
pub const SOCKETIO_CONNECTIONS: &str = "oddsfeed_socketio_connections";
pub const SOCKETIO_FEED_DROPPED: &str = "oddsfeed_socketio_feed_dropped_total";
pub const SOCKETIO_FEED_RESETS: &str = "oddsfeed_socketio_feed_resets_total";
pub const SOCKETIO_RESYNCS: &str = "oddsfeed_socketio_resyncs_total";
pub const WS_CONNECTIONS_TOTAL: &str = "oddsfeed_ws_connections_total";
pub const WS_REJECTED_CONNECTIONS: &str = "oddsfeed_ws_rejected_connections_total";
pub const WS_ROOMS: &str = "oddsfeed_ws_rooms";
pub const WS_SUBSCRIPTIONS: &str = "oddsfeed_ws_subscriptions";
pub const WS_MESSAGES_SENT: &str = "oddsfeed_ws_messages_sent_total";
pub const WS_BYTES_SENT: &str = "oddsfeed_ws_sent_bytes_total";
pub const WS_SLOW_CLIENTS_CLOSED: &str = "oddsfeed_ws_slow_clients_closed_total";
pub const WS_CLIENT_ERRORS: &str = "oddsfeed_ws_client_errors_total";
pub const WS_PONG_TIMEOUTS: &str = "oddsfeed_ws_pong_timeouts_total";
pub const WS_WRITE_TIMEOUTS: &str = "oddsfeed_ws_write_timeouts_total";
pub const WS_CLOSE_TIMEOUTS: &str = "oddsfeed_ws_close_timeouts_total";
pub const WS_RESUMES: &str = "oddsfeed_ws_resumes_total";
pub const FANOUT_FLUSHES: &str = "oddsfeed_ws_fanout_flushes_total";
pub const FANOUT_BATCH: &str = "oddsfeed_ws_fanout_batch_seconds";
pub const RELAY_LATENCY: &str = "oddsfeed_relay_receive_latency_seconds";
pub const DELIVERY_LATENCY: &str = "oddsfeed_delivery_latency_seconds";
pub const BROWSER_LATENCY: &str = "oddsfeed_browser_latency_seconds";
pub const BROWSER_LATENCY_REJECTED: &str = "oddsfeed_browser_latency_rejected_total";
pub const RELAY_RESYNCS: &str = "oddsfeed_relay_resyncs_total";
pub const RELAY_DROPPED: &str = "oddsfeed_relay_dropped_messages_total";
// The HTTP edge (every mode).
pub const HTTP_ACCEPT_ERRORS: &str = "oddsfeed_http_accept_errors_total";
pub const HTTP_CONNECTIONS_CLOSED: &str = "oddsfeed_http_connections_closed_total";
pub const HTTP_PENDING_CONNECTIONS: &str = "oddsfeed_http_pending_connections";
pub const HTTP_SESSION_CONNECTIONS: &str = "oddsfeed_http_session_connections";
// Shared.
pub const ERRORS: &str = "oddsfeed_errors_total";
pub const DEPENDENCY_UP: &str = "oddsfeed_dependency_up";
pub const BUILD_INFO: &str = "oddsfeed_build_info";
pub const TASK_RESTARTS: &str = "oddsfeed_task_restarts_total";
pub const TASK_UP: &str = "oddsfeed_task_up";

/// Bucket bounds for every `_seconds` histogram: sub-millisecond through seconds.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the tracing subscriber: `pretty` or `json`, level from `RUST_LOG` (default info).
pub fn init_tracing(format: LogFormat) {
    // PostgreSQL's notices (`relation "_sqlx_migrations" already exists, skipping` at every
    // start) come through sqlx at INFO; they are not ours to report unless they warn.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .install_recorder()?;
    describe();
    let handle = PROMETHEUS.get_or_init(|| handle).clone();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Histograms keep samples until upkeep drains them into buckets.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Registers, at zero, every series the publisher's dashboard panels read, so Prometheus sees
/// them before the first event of their kind (an absent series leaves a panel or an alert
/// silently empty instead of showing 0).
pub fn register_publisher_metrics() {
    for result in ["published", "unchanged", "error"] {
        metrics::counter!(TICKS, "result" => result).increment(0);
    }
    for kind in ["database", "redis", "conflict"] {
        metrics::counter!(ERRORS, "kind" => kind).increment(0);
    }
    for reason in crate::odds::Unusable::LABELS {
        metrics::counter!(EVENT_SUSPENSIONS, "reason" => reason).increment(0);
    }
    for kind in ["odds", "heartbeat"] {
        metrics::counter!(PUBLISHED_MESSAGES, "type" => kind).increment(0);
    }
    for change in ["acquired", "lost"] {
        metrics::counter!(LEADER_CHANGES, "change" => change).increment(0);
    }
    for reason in ["sync", "conflict", "behind"] {
        metrics::counter!(STATE_RELOADS, "reason" => reason).increment(0);
    }
    for kind in ["changed", "full", "resync"] {
        metrics::counter!(PUBLISHER_READS, "kind" => kind).increment(0);
    }
    metrics::counter!(RESYNC_DIFFERENCES).increment(0);
    let _ = metrics::histogram!(LEADER_CHECK);
    for name in [
        TICK_OVERRUNS,
        PUBLISHED_BYTES,
        PUBLISHED_UPSERTS,
        PUBLISHED_REMOVALS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        EVENTS_ACTIVE,
        EVENTS_SUSPENDED,
        PUBLISHER_LEADER,
        PUBLISHER_RUNNING,
        PUBLISHER_SEQ,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for stage in ["query", "compute", "publish", "total"] {
        let _ = metrics::histogram!(TICK_DURATION, "stage" => stage);
    }
}

/// The HTTP edge's series, in every mode.
pub fn register_http_metrics() {
    for kind in ["emfile", "enfile", "out_of_memory", "other"] {
        metrics::counter!(HTTP_ACCEPT_ERRORS, "kind" => kind).increment(0);
    }
    for reason in HTTP_CLOSE_REASONS {
        metrics::counter!(HTTP_CONNECTIONS_CLOSED, "reason" => *reason).increment(0);
    }
    metrics::gauge!(HTTP_PENDING_CONNECTIONS).set(0.0);
    metrics::gauge!(HTTP_SESSION_CONNECTIONS).set(0.0);
}

/// Why the server closed a connection that had not upgraded.
pub const HTTP_CLOSE_REASONS: &[&str] = &[
    "header_timeout",
    "idle_timeout",
    "evicted",
    "tls_handshake_failed",
    "tls_handshake_timeout",
];

/// The broadcaster's counterpart of [`register_publisher_metrics`].
pub fn register_broadcaster_metrics() {
    metrics::counter!(ERRORS, "kind" => "relay").increment(0);
    for kind in ["all", "sport", "event", "bridged", "reply", "socketio"] {
        metrics::counter!(WS_MESSAGES_SENT, "kind" => kind).increment(0);
    }
    for code in [
        "bad_request",
        "unknown_room",
        "forbidden",
        "unauthorized",
        "rate_limited",
        "too_many_rooms",
        "too_large",
        "frame_too_big",
        "invalid_utf8",
        "protocol_error",
    ] {
        metrics::counter!(WS_CLIENT_ERRORS, "code" => code).increment(0);
    }
    for reason in [
        "too_many_connections",
        "too_many_connections_from_address",
        "origin_not_allowed",
    ] {
        metrics::counter!(WS_REJECTED_CONNECTIONS, "reason" => reason).increment(0);
    }
    for result in ["current", "replayed", "snapshot"] {
        metrics::counter!(WS_RESUMES, "result" => result).increment(0);
    }
    for reason in ["connect", "gap", "new_epoch", "heartbeat", "overflow"] {
        metrics::counter!(RELAY_RESYNCS, "reason" => reason).increment(0);
    }
    for reason in [
        "malformed",
        "not_text",
        "bridged_not_json_object",
        "bridged_too_large",
        "relay_queue_full",
    ] {
        metrics::counter!(RELAY_DROPPED, "reason" => reason).increment(0);
    }
    for limit in ["frames", "bytes"] {
        metrics::counter!(WS_SLOW_CLIENTS_CLOSED, "limit" => limit).increment(0);
    }
    for path in ["direct", "writer", "inline"] {
        metrics::counter!(FANOUT_FLUSHES, "path" => path).increment(0);
    }
    for name in [
        WS_CONNECTIONS_TOTAL,
        WS_BYTES_SENT,
        WS_PONG_TIMEOUTS,
        WS_WRITE_TIMEOUTS,
        WS_CLOSE_TIMEOUTS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        WS_CONNECTIONS,
        WS_ROOMS,
        WS_SUBSCRIPTIONS,
        SOCKETIO_CONNECTIONS,
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    for name in [
        SOCKETIO_FEED_DROPPED,
        SOCKETIO_FEED_RESETS,
        SOCKETIO_RESYNCS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for room in ["all", "sport", "event"] {
        let _ = metrics::histogram!(DELIVERY_LATENCY, "room" => room);
    }
    let _ = metrics::histogram!(RELAY_LATENCY);
    let _ = metrics::histogram!(FANOUT_BATCH);
    let _ = metrics::histogram!(BROWSER_LATENCY);
    for reason in crate::broadcaster::protocol::ImplausibleLatency::LABELS {
        metrics::counter!(BROWSER_LATENCY_REJECTED, "reason" => reason).increment(0);
    }
}

fn describe() {
    describe_histogram!(
        TICK_DURATION,
        Unit::Seconds,
        "Publisher tick duration by stage (query, compute, publish, total)."
    );
    describe_counter!(
        TICKS,
        Unit::Count,
        "Publisher ticks by result (published, unchanged, error)."
    );
    describe_counter!(
        TICK_OVERRUNS,
        Unit::Count,
        "Ticks that took longer than TICK_INTERVAL_MS."
    );
    describe_gauge!(
        EVENTS_ACTIVE,
        Unit::Count,
        "Active events in the last tick."
    );
    describe_gauge!(
        EVENTS_SUSPENDED,
        Unit::Count,
        "Active events published as suspended in the last tick."
    );
    describe_counter!(
        EVENT_SUSPENSIONS,
        Unit::Count,
        "Events that became suspended, by reason (missing_price, too_few_outcomes, ...)."
    );
    describe_counter!(
        PUBLISHED_MESSAGES,
        Unit::Count,
        "Messages published on the odds channel, by type."
    );
    describe_counter!(
        PUBLISHED_BYTES,
        Unit::Bytes,
        "Bytes published on the odds channel."
    );
    describe_counter!(PUBLISHED_UPSERTS, Unit::Count, "Event upserts published.");
    describe_counter!(PUBLISHED_REMOVALS, Unit::Count, "Event removals published.");
    describe_gauge!(
        PUBLISHER_LEADER,
        Unit::Count,
        "1 while this process holds the leader lock."
    );
    describe_gauge!(
        PUBLISHER_RUNNING,
        Unit::Count,
        "1 while this process is publishing."
    );
    describe_gauge!(
        PUBLISHER_SEQ,
        Unit::Count,
        "Global seq of the last odds message this process published."
    );
    describe_counter!(
        LEADER_CHANGES,
        Unit::Count,
        "Times this process became leader or lost leadership."
    );
    describe_counter!(
        PUBLISHER_READS,
        Unit::Count,
        "Ticks by what they read: changed (only changed events), full (everything), resync (everything, checked against the incremental book)."
    );
    describe_counter!(
        RESYNC_DIFFERENCES,
        Unit::Count,
        "Events a periodic full read found different from the incremental book: changes the change capture missed."
    );
    describe_histogram!(
        LEADER_CHECK,
        Unit::Seconds,
        "Time the leader's check of its lock session took (a check slower than half LEADER_LEASE_MS gives leadership up)."
    );
    describe_counter!(
        STATE_RELOADS,
        Unit::Count,
        "Times the publisher reloaded its book from the Redis state, by reason."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Errors by kind (database, redis, conflict, ...)."
    );
    describe_gauge!(
        DEPENDENCY_UP,
        Unit::Count,
        "1 when the dependency (postgres, redis) answered its last check."
    );
    describe_counter!(
        SOURCE_VALUE_PROBLEMS,
        Unit::Count,
        "Problems in the active-events rows, counted once per event when they appear, by column and problem (out_of_range, truncated, null, or the suspension reason)."
    );
    describe_counter!(
        TASK_RESTARTS,
        Unit::Count,
        "Long-running tasks restarted by the supervisor after a panic or an unexpected exit, by task."
    );
    describe_gauge!(
        TASK_UP,
        Unit::Count,
        "1 while the supervised task runs, 0 while it waits to be restarted, by task."
    );
    for (name, unit, help) in [
        (
            WS_CONNECTIONS_TOTAL,
            Unit::Count,
            "WebSocket connections accepted.",
        ),
        (
            WS_REJECTED_CONNECTIONS,
            Unit::Count,
            "WebSocket upgrades refused, by reason (caps, origin).",
        ),
        (
            WS_MESSAGES_SENT,
            Unit::Count,
            "Frames queued to clients, by kind (all, sport, event, bridged, reply).",
        ),
        (
            WS_BYTES_SENT,
            Unit::Bytes,
            "Bytes of room frames queued to clients.",
        ),
        (
            FANOUT_FLUSHES,
            Unit::Count,
            "Sessions the fan-out flushed, by path: direct (all written by a fan-out thread), writer (the rest handed to the session's writer), inline (of those, flushed by the relay itself because a fan-out thread's queue was full). TLS sessions are written by their own writer and not counted.",
        ),
        (
            WS_SLOW_CLIENTS_CLOSED,
            Unit::Count,
            "Clients closed with 1013 because their send queue (frames) or buffer (bytes) was full, by limit.",
        ),
        (
            WS_CLIENT_ERRORS,
            Unit::Count,
            "Client mistakes answered with an error or a close, by code.",
        ),
        (
            WS_PONG_TIMEOUTS,
            Unit::Count,
            "Connections closed because no pong came within WS_PONG_TIMEOUT_MS.",
        ),
        (
            WS_WRITE_TIMEOUTS,
            Unit::Count,
            "Connections dropped because a write moved no byte for WS_WRITE_TIMEOUT_MS.",
        ),
        (
            WS_CLOSE_TIMEOUTS,
            Unit::Count,
            "Connections dropped because the client did not finish the close handshake within WS_CLOSE_TIMEOUT_MS.",
        ),
        (
            WS_RESUMES,
            Unit::Count,
            "Resume requests, by result (current, replayed, snapshot).",
        ),
        (
            RELAY_RESYNCS,
            Unit::Count,
            "Times the relay reloaded the state from Redis, by reason.",
        ),
        (
            RELAY_DROPPED,
            Unit::Count,
            "Redis messages the relay dropped, by reason.",
        ),
        (
            HTTP_ACCEPT_ERRORS,
            Unit::Count,
            "accept() failures by kind (emfile, enfile, out_of_memory, other); the listener backs off.",
        ),
        (
            HTTP_CONNECTIONS_CLOSED,
            Unit::Count,
            "Connections that never upgraded, closed by the server, by reason (header_timeout, idle_timeout, evicted, tls_...).",
        ),
    ] {
        describe_counter!(name, unit, help);
    }
    describe_gauge!(
        WS_CONNECTIONS,
        Unit::Count,
        "Open client connections: native WebSocket and Socket.IO."
    );
    describe_gauge!(
        SOCKETIO_CONNECTIONS,
        Unit::Count,
        "Open Socket.IO connections (also counted in oddsfeed_ws_connections)."
    );
    describe_counter!(
        SOCKETIO_FEED_DROPPED,
        Unit::Count,
        "Items the hub could not queue for the Socket.IO endpoint (its clients then get the whole book)."
    );
    describe_counter!(
        SOCKETIO_RESYNCS,
        Unit::Count,
        "Socket.IO sockets whose send buffer was full: they left their odds rooms and got fresh lists a second later."
    );
    describe_counter!(
        SOCKETIO_FEED_RESETS,
        Unit::Count,
        "Whole-book lists sent to Socket.IO clients because the feed had dropped something."
    );
    describe_gauge!(WS_ROOMS, Unit::Count, "Rooms with at least one member.");
    describe_gauge!(
        WS_SUBSCRIPTIONS,
        Unit::Count,
        "Room memberships over all connections."
    );
    describe_gauge!(
        HTTP_PENDING_CONNECTIONS,
        Unit::Count,
        "Connections that have not upgraded to WebSocket (capped by MAX_PENDING_CONNECTIONS)."
    );
    describe_gauge!(
        HTTP_SESSION_CONNECTIONS,
        Unit::Count,
        "HTTP connections serving a Socket.IO long-polling session, outside MAX_PENDING_CONNECTIONS (at most 4 per session)."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "publishedAt to the frame written to the socket, by room kind."
    );
    describe_histogram!(
        FANOUT_BATCH,
        Unit::Seconds,
        "Time a fan-out thread spent writing one batch of sessions (a tick's share of one thread): near the tick interval means the fan-out is saturated."
    );
    describe_histogram!(
        RELAY_LATENCY,
        Unit::Seconds,
        "publishedAt to the broadcaster receiving the message from Redis."
    );
    describe_histogram!(
        BROWSER_LATENCY,
        Unit::Seconds,
        "Latency reported by browsers (latency messages), from 0 to 10 s."
    );
    describe_counter!(
        BROWSER_LATENCY_REJECTED,
        Unit::Count,
        "Latency reports not recorded because the value cannot be a latency, by reason (negative, too_large: above 10 s, not_finite: null)."
    );
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Always 1; the version label tells which build runs."
    );
}
