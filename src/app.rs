//! Wiring: builds the pieces a subcommand needs, binds the listener, runs until SIGTERM or
//! Ctrl-C, then shuts down within `SHUTDOWN_TIMEOUT_MS`.

use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use crate::broadcaster::auth::Verifier;
use crate::broadcaster::fanout::Fanout;
use crate::broadcaster::inbox::InboxLimits;
use crate::broadcaster::outbox::OutboxLimits;
use crate::broadcaster::relay::Relay;
use crate::broadcaster::rooms::HubLimits;
use crate::broadcaster::{Admission, BroadcasterState, Hub, SessionContext, SessionLimits};
use crate::config::{Command, Config};
use crate::publisher::control::{self, ControlState};
use crate::publisher::scheduler::listen_for_changes;
use crate::publisher::{Leader, PublisherHandle, Scheduler, Source};
use crate::supervisor::{Faults, Supervisor};
use crate::{bus, db, http, net, sim, telemetry};

/// Which halves of the service this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub publisher: bool,
    pub broadcaster: bool,
    pub simulator: bool,
}

/// Runs one subcommand to completion.
pub async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { simulate } => {
            serve(
                config,
                Roles {
                    publisher: true,
                    broadcaster: true,
                    simulator: simulate,
                },
            )
            .await
        }
        Command::Publisher => {
            serve(
                config,
                Roles {
                    publisher: true,
                    broadcaster: false,
                    simulator: false,
                },
            )
            .await
        }
        Command::Broadcaster => {
            serve(
                config,
                Roles {
                    publisher: false,
                    broadcaster: true,
                    simulator: false,
                },
            )
            .await
        }
        Command::Migrate => {
            let pool = connect_now(&config).await?;
            db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Seed { reset } => {
            let pool = connect_now(&config).await?;
            let summary =
                sim::seed::seed(&pool, config.seed_events, config.seed_random, reset).await?;
            // Nothing seeded (events exist already) was said by `seed` itself.
            if summary.events > 0 {
                tracing::info!(
                    events = summary.events,
                    outcomes = summary.outcomes,
                    bets = summary.bets,
                    "demo data seeded"
                );
            }
            Ok(())
        }
        Command::Simulate => {
            let pool = connect_now(&config).await?;
            let cancel = shutdown_signal();
            sim::simulate::run(pool, sim_settings(&config), cancel).await;
            Ok(())
        }
    }
}

fn sim_settings(config: &Config) -> sim::simulate::Settings {
    sim::simulate::Settings {
        interval: config.sim_interval(),
        changes: config.sim_changes,
        random_seed: config.seed_random,
    }
}

/// A pool for one-shot commands, which should fail fast when the database is unreachable.
async fn connect_now(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let options = db::connect_options(&config.database_url).await?;
    let pool = db::lazy_pool(options, config.database_max_connections);
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .with_context(|| format!("Failed to connect to PostgreSQL at {}", config.database_url))?;
    Ok(pool)
}

/// Cancelled on SIGTERM or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}

/// The Socket.IO layer and the admission its handshake check consults.
type SocketIoParts = (socketioxide::layer::SocketIoLayer, Arc<Admission>);

/// Builds the broadcaster: hub, relay task, and the state of its routes.
fn broadcaster(
    config: &Config,
    max_connections: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
    supervisor: &Supervisor,
) -> anyhow::Result<(
    BroadcasterState,
    http::BroadcasterHealth,
    Option<SocketIoParts>,
)> {
    let fanout = Fanout::new(config.fanout_threads()).context("start the fan-out threads")?;
    let hub = Hub::new(
        HubLimits {
            replay_messages: config.replay_buffer_messages,
            replay_bytes: config.replay_buffer_bytes,
        },
        fanout,
    );
    let relay_connected = Arc::new(AtomicBool::new(false));
    let relay = Relay {
        hub: hub.clone(),
        redis_url: config.redis_url.clone(),
        channel: config.odds_channel.clone(),
        bridged: config
            .bridged_channels
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
        heartbeat: config.heartbeat_interval(),
        connected: relay_connected.clone(),
        inbox: InboxLimits {
            messages: 100_000,
            bytes: config.relay_queue_bytes,
            bridged_max_bytes: config.bridged_max_bytes,
        },
    };
    supervisor.spawn("relay", true, move |cancel| relay.clone().run(cancel));
    let sessions = Arc::new(SessionContext {
        deflate: config.ws_deflate,
        hub: hub.clone(),
        verifier: Verifier::new(config.jwt_secret.as_deref(), config.jwt_max_lifetime_secs),
        limits: SessionLimits {
            max_rooms: config.max_rooms_per_connection,
            messages_per_minute: config.client_messages_per_minute,
            max_message_bytes: config.max_client_message_bytes,
            send: OutboxLimits {
                frames: config.send_queue_frames,
                bytes: config.send_buffer_bytes,
            },
            ping_interval: Duration::from_millis(config.ws_ping_interval_ms),
            pong_timeout: Duration::from_millis(config.ws_pong_timeout_ms),
            write_timeout: Duration::from_millis(config.ws_write_timeout_ms),
            close_timeout: Duration::from_millis(config.ws_close_timeout_ms),
            hard_frame_limit: config.max_client_message_bytes.saturating_mul(16),
        },
        bridged_channels: config
            .bridged_channels
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
        bridged_prefixes: config
            .bridged_room_prefixes
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
        shutdown: cancel,
        faults: supervisor.faults(),
    });
    let admission = Arc::new(Admission::new(
        max_connections,
        config.max_connections_per_ip,
        config
            .allowed_origins
            .iter()
            .filter(|o| !o.is_empty())
            .cloned()
            .collect(),
    ));
    let socketio_connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let socketio = config.socketio.then(|| {
        let ctx = Arc::new(crate::broadcaster::socketio::Context {
            hub: hub.clone(),
            admission: admission.clone(),
            verifier: sessions.verifier.clone(),
            auth_cookie: config.socketio_auth_cookie.clone(),
            connected: socketio_connected.clone(),
            messages_per_minute: config.client_messages_per_minute,
            max_rooms: config.max_rooms_per_connection,
        });
        let (layer, io) = crate::broadcaster::socketio::layer(
            ctx,
            config.max_client_message_bytes as u64,
            config.send_queue_frames,
        );
        // The feed is attached once; a restarted task takes the same receiver back.
        let feed = Arc::new(tokio::sync::Mutex::new(hub.attach_socketio()));
        let feed_hub = hub.clone();
        supervisor.spawn("socketio", false, move |cancel| {
            let (io, feed, hub) = (io.clone(), feed.clone(), feed_hub.clone());
            async move {
                let mut feed = feed.lock().await;
                crate::broadcaster::socketio::run_feed(io, hub, &mut feed, cancel).await;
            }
        });
        (layer, admission.clone())
    });
    let node = format!("{:04x}", rand::random::<u16>());
    let state = BroadcasterState {
        sessions,
        admission,
        tracker,
        node,
        next_id: Arc::new(AtomicU64::new(1)),
    };
    Ok((
        state,
        http::BroadcasterHealth {
            hub,
            relay_connected,
            socketio_connected,
        },
        socketio,
    ))
}

/// The long-running modes: publisher and/or broadcaster, HTTP, optional simulator.
async fn serve(config: Config, roles: Roles) -> anyhow::Result<()> {
    let started = Instant::now();
    let metrics = telemetry::metrics_handle()?;
    let params = config.odds_params()?;
    let cancel = shutdown_signal();
    let tracker = TaskTracker::new();
    let supervisor = Supervisor::new(
        tracker.clone(),
        cancel.clone(),
        Faults::new(config.fault_injection),
        Duration::from_millis(config.task_restart_backoff_ms),
    );

    let health_redis = bus::connection(&config.redis_url)?;
    let mut router = axum::Router::new();
    let mut pool = None;
    let mut publisher_handle = None;

    if roles.publisher || roles.simulator {
        let options = db::connect_options(&config.database_url).await?;
        // A tick's transaction holds the change-log rows it consumes: if this process is cut
        // off mid-tick, PostgreSQL ends the transaction after the lease so the next leader can
        // consume them.
        let lease_ms = config.leader_lease_ms.to_string();
        let pooled = options
            .clone()
            .options([("idle_in_transaction_session_timeout", lease_ms.as_str())]);
        pool = Some((
            db::lazy_pool(pooled, config.database_max_connections),
            options,
        ));
    }

    if roles.publisher {
        let Some((pool, options)) = pool.clone() else {
            anyhow::bail!("the publisher needs a database pool");
        };
        let source = Source::new(
            pool.clone(),
            config.active_events_sql.as_deref(),
            config.changed_events_sql.as_deref(),
            config.max_events,
        )?;
        let handle = PublisherHandle::new(config.tick_interval());
        let changed = Arc::new(tokio::sync::Notify::new());
        let notify_min_gap =
            (config.notify_min_gap_ms > 0).then(|| Duration::from_millis(config.notify_min_gap_ms));
        if notify_min_gap.is_some() {
            let (pool, changed) = (pool.clone(), changed.clone());
            supervisor.spawn("listener", false, move |cancel| {
                listen_for_changes(pool.clone(), changed.clone(), cancel)
            });
        }
        let redis = bus::connection(&config.redis_url)?;
        let (handle_, config_) = (handle.clone(), config.clone());
        // Each (re)start gets a fresh scheduler: a new lock session and an empty book, which
        // it reloads from Redis.
        supervisor.spawn("scheduler", true, move |cancel| {
            Scheduler {
                source: source.clone(),
                bus: bus::OddsBus::new(redis.clone(), config_.odds_channel.clone()),
                leader: Leader::new(
                    options.clone(),
                    config_.leader_lock_key(),
                    config_.odds_channel.clone(),
                    config_.leader_lease(),
                ),
                params,
                handle: handle_.clone(),
                interval: config_.tick_interval(),
                heartbeat: config_.heartbeat_interval(),
                tick_timeout: config_.tick_timeout(),
                full_resync: config_.full_resync_interval(),
                autostart: config_.publisher_autostart,
                notify_min_gap,
                changed: changed.clone(),
            }
            .run(cancel)
        });
        router = router.merge(control::router(ControlState {
            pool,
            channel: config.odds_channel.clone(),
            token: config.control_token.clone(),
            handle: handle.clone(),
            autostart: config.publisher_autostart,
            tasks: supervisor.tasks(),
            known: Default::default(),
        }));
        publisher_handle = Some(handle);
    }

    let trusted = Arc::new(config.trusted_proxies()?);
    let http_limits = config.http_limits();
    let mut broadcaster_health = None;
    let mut socketio_layer = None;
    if roles.broadcaster {
        config.validate_broadcaster()?;
        let open_files = net::open_files::raise_limit();
        let max_connections = net::open_files::fit_connections(
            config.max_connections,
            http_limits.max_pending,
            open_files,
        );
        if max_connections < config.max_connections {
            tracing::warn!(
                open_files,
                max_connections = config.max_connections,
                max_pending_connections = http_limits.max_pending,
                serving_at_most = max_connections,
                "the open-files limit is too low for MAX_CONNECTIONS; raise it (ulimit -n, LimitNOFILE) or lower MAX_CONNECTIONS"
            );
        }
        let (state, health, layer) = broadcaster(
            &config,
            max_connections,
            cancel.clone(),
            tracker.clone(),
            &supervisor,
        )?;
        router = router.merge(crate::broadcaster::router(state));
        broadcaster_health = Some(health);
        socketio_layer = layer;
    }

    if roles.simulator
        && let Some((pool, _)) = pool.clone()
    {
        let settings = sim_settings(&config);
        supervisor.spawn("simulator", false, move |cancel| {
            sim::simulate::run(pool.clone(), settings, cancel)
        });
    }

    if roles.publisher {
        telemetry::register_publisher_metrics();
    }
    if roles.broadcaster {
        telemetry::register_broadcaster_metrics();
    }
    telemetry::register_http_metrics();
    let (probe_pool, probe_redis) = (pool.as_ref().map(|(p, _)| p.clone()), health_redis.clone());
    supervisor.spawn("probe", false, move |cancel| {
        http::probe_dependencies(
            probe_pool.clone(),
            probe_redis.clone(),
            Duration::from_secs(5),
            cancel,
        )
    });
    if supervisor.faults().enabled() {
        tracing::warn!(
            "FAULT_INJECTION is on: POST /debug/panic/<task> makes a task panic (testing only)"
        );
        router = router.merge(http::fault_router(supervisor.faults()));
    }
    router = router.merge(http::router(http::HealthState {
        tasks: supervisor.tasks(),
        started,
        metrics,
        pool: pool.map(|(p, _)| p),
        redis: health_redis,
        publisher: publisher_handle,
        broadcaster: broadcaster_health,
    }));

    // Last, so it sees every request: it answers /socket.io/ and passes the rest on.
    if let Some((layer, admission)) = socketio_layer {
        router = router
            .layer(layer)
            .layer(axum::middleware::from_fn_with_state(
                admission,
                crate::broadcaster::socketio::precheck,
            ));
    }
    let backlog = config
        .listen_backlog
        .unwrap_or_else(net::listener::system_backlog);
    let listener = net::listener::bind(config.listen_addr, backlog)
        .with_context(|| format!("Failed to listen on {}", config.listen_addr))?;
    let addr = listener.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(net::tls::acceptor(cert, key)?),
        _ => None,
    };
    let server = net::listener::HttpServer {
        listener,
        tls,
        router,
        limits: http_limits,
        trusted,
    };
    let server = tracker.spawn(server.run(cancel.clone(), tracker.clone()));
    tracing::info!(
        %addr,
        tls = config.tls_cert.is_some(),
        channel = %config.odds_channel,
        publisher = roles.publisher,
        broadcaster = roles.broadcaster,
        simulator = roles.simulator,
        backlog,
        "listening"
    );
    tracker.close();

    cancel.cancelled().await;
    let deadline = config.shutdown_timeout();
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "shutdown took too long; abandoning remaining tasks"
        );
        server.abort();
    }
    tracing::info!("bye");
    Ok(())
}
