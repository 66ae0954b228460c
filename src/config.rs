//! One configuration struct for every subcommand.
//!
//! Every option is a `--flag` and an environment variable of the same name (a `.env` file in
//! the working directory is honoured). The doc comment of each field is its `--help` text and
//! its line in the README's configuration table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use crate::odds::OddsParams;

/// oddsfeed: sports odds from PostgreSQL to browsers, through Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "oddsfeed", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Publisher and broadcast server in one process (the default deployment).
    Serve {
        /// Also run the demo simulator in this process.
        #[arg(long, env = "SIMULATE", action = ArgAction::Set, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
        simulate: bool,
    },
    /// Only the scheduler, its HTTP control API, /health and /metrics.
    Publisher,
    /// Only the WebSocket broadcast server, /health and /metrics.
    Broadcaster,
    /// Apply migrations/ to DATABASE_URL.
    Migrate,
    /// Insert the demo data set (several sports, live and upcoming events, bets).
    Seed {
        /// Delete existing events, outcomes and bets first.
        #[arg(long, action = ArgAction::SetTrue)]
        reset: bool,
    },
    /// Keep the demo data moving until interrupted.
    Simulate,
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL URL. The default falls back to the local Unix socket when TCP is refused.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://localhost/oddsfeed",
        global = true
    )]
    pub database_url: String,

    /// Largest number of pooled PostgreSQL connections (the leader lock uses one more).
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 5,
        global = true
    )]
    pub database_max_connections: u32,

    /// Redis URL for the odds channel, the state keys and the bridged channels.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,

    /// Address the HTTP/WebSocket server listens on (port 0 picks a free port).
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "0.0.0.0:3001",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// Redis channel the publisher sends odds on; the state keys are named after it.
    #[arg(
        long,
        env = "ODDS_CHANNEL",
        default_value = "sports-odds",
        global = true
    )]
    pub odds_channel: String,

    /// Milliseconds between two ticks of the publisher.
    #[arg(long, env = "TICK_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=3_600_000), global = true)]
    pub tick_interval_ms: u64,

    /// A heartbeat is sent when no odds message went out for this many milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000), global = true)]
    pub heartbeat_interval_ms: u64,

    /// Tick early when PostgreSQL notifies a change (the schema's triggers), at most once per
    /// this many milliseconds. 0 turns the fast path off (ticks only every TICK_INTERVAL_MS).
    #[arg(long, env = "NOTIFY_MIN_GAP_MS", default_value_t = 50, global = true)]
    pub notify_min_gap_ms: u64,

    /// Longest a tick's database read may take before the tick is abandoned and counted failed.
    #[arg(long, env = "TICK_TIMEOUT_MS", default_value_t = 5000, global = true)]
    pub tick_timeout_ms: u64,

    /// Path of the active-events query (see sql/README.md). Unset: the built-in sql/active_events.sql.
    #[arg(long, env = "ACTIVE_EVENTS_SQL", global = true)]
    pub active_events_sql: Option<PathBuf>,

    /// Path of the changed-events query (see sql/README.md, "Incremental ticks"). Unset: the
    /// built-in sql/changed_events.sql with the built-in active query, none with a custom one
    /// (then every tick reads all active events).
    #[arg(long, env = "CHANGED_EVENTS_SQL", global = true)]
    pub changed_events_sql: Option<PathBuf>,

    /// Milliseconds between two full reads that check the incremental book (any difference is
    /// counted in oddsfeed_publisher_resync_differences_total). 0: every tick reads everything.
    #[arg(long, env = "FULL_RESYNC_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000), global = true)]
    pub full_resync_interval_ms: u64,

    /// Milliseconds a leader cut off from PostgreSQL may keep its lock: PostgreSQL ends a lock
    /// session that stays silent this long, so a standby takes over within about this time.
    #[arg(long, env = "LEADER_LEASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1000..=600_000), global = true)]
    pub leader_lease_ms: u64,

    /// Publish at most this many active events (the first ones in publishing order). Unset: no cap.
    #[arg(long, env = "MAX_EVENTS", global = true)]
    pub max_events: Option<usize>,

    /// Bookmaker margin applied to decimal odds (0.05 = 5%).
    #[arg(long, env = "MARGIN", default_value_t = 0.0, global = true)]
    pub margin: f64,

    /// Lowest decimal odds published.
    #[arg(long, env = "MIN_ODDS", default_value_t = 1.01, global = true)]
    pub min_odds: f64,

    /// Highest decimal odds published.
    #[arg(long, env = "MAX_ODDS", default_value_t = 1000.0, global = true)]
    pub max_odds: f64,

    /// Start publishing on boot unless an operator stopped the publisher (the stop survives restarts).
    #[arg(long, env = "PUBLISHER_AUTOSTART", default_value_t = true, action = ArgAction::Set, global = true)]
    pub publisher_autostart: bool,

    /// PostgreSQL advisory-lock key that elects the leader. Unset: derived from ODDS_CHANNEL.
    #[arg(long, env = "LEADER_LOCK_KEY", global = true)]
    pub leader_lock_key: Option<i64>,

    /// Bearer token required by POST/DELETE /api/sports/ws-publisher. Unset: loopback only.
    #[arg(long, env = "CONTROL_TOKEN", hide_env_values = true, global = true)]
    pub control_token: Option<String>,

    /// HS256 secret for WebSocket client tokens.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// Redis channels whose JSON messages are forwarded to WebSocket rooms (comma-separated).
    #[arg(
        long,
        env = "BRIDGED_CHANNELS",
        value_delimiter = ',',
        default_value = "event-updates,chat-messages,admin-events,user-updates",
        global = true
    )]
    pub bridged_channels: Vec<String>,

    /// Prefixes of public bridged rooms besides the channel names (`chat` allows `chat:<id>`).
    #[arg(
        long,
        env = "BRIDGED_ROOM_PREFIXES",
        value_delimiter = ',',
        default_value = "chat",
        global = true
    )]
    pub bridged_room_prefixes: Vec<String>,

    /// Origins allowed to open WebSockets (comma-separated, exact). Empty: any origin.
    #[arg(
        long,
        env = "ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = "",
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Most WebSocket connections this process holds (lowered at start, with a warning, to
    /// what the open-files limit leaves room for).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, global = true)]
    pub max_connections: usize,

    /// Most WebSocket connections from one client address (the address a trusted proxy
    /// names, see TRUSTED_PROXIES).
    #[arg(
        long,
        env = "MAX_CONNECTIONS_PER_IP",
        default_value_t = 256,
        global = true
    )]
    pub max_connections_per_ip: usize,

    /// Most rooms one connection may be in.
    #[arg(
        long,
        env = "MAX_ROOMS_PER_CONNECTION",
        default_value_t = 100,
        global = true
    )]
    pub max_rooms_per_connection: usize,

    /// Client messages allowed per minute per connection (a token bucket).
    #[arg(
        long,
        env = "CLIENT_MESSAGES_PER_MINUTE",
        default_value_t = 100,
        global = true
    )]
    pub client_messages_per_minute: u32,

    /// Largest client message in bytes; larger ones get `too_large` (16x this closes with 1009).
    #[arg(
        long,
        env = "MAX_CLIENT_MESSAGE_BYTES",
        default_value_t = 4096,
        global = true
    )]
    pub max_client_message_bytes: usize,

    /// Frames queued per connection; a client that lets it fill is closed with 1013.
    #[arg(long, env = "SEND_QUEUE_FRAMES", default_value_t = 1024, global = true)]
    pub send_queue_frames: usize,

    /// Bytes queued or being written per connection; a client that lets it fill is closed
    /// with 1013. Must exceed REPLAY_BUFFER_BYTES; a snapshot bigger than this still goes to a
    /// client that has nothing else queued.
    #[arg(long, env = "SEND_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024, global = true)]
    pub send_buffer_bytes: usize,

    /// A WebSocket write that moves no byte for this many milliseconds ends the connection
    /// (a client that stopped reading).
    #[arg(long, env = "WS_WRITE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..), global = true)]
    pub ws_write_timeout_ms: u64,

    /// Milliseconds a client has to answer the server's close frame before the socket is
    /// closed anyway.
    #[arg(long, env = "WS_CLOSE_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..), global = true)]
    pub ws_close_timeout_ms: u64,

    /// Milliseconds a connection may take to send a complete HTTP request head, counted from
    /// the connect (or the previous response): also the idle timeout of kept-alive HTTP
    /// connections and the limit of a TLS handshake.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..), global = true)]
    pub http_header_timeout_ms: u64,

    /// A connection that has not upgraded to WebSocket and moves no byte for this many
    /// milliseconds is closed (a stalled request body, a response nobody reads).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..), global = true)]
    pub http_idle_timeout_ms: u64,

    /// Most connections that have not upgraded to WebSocket (HTTP requests, handshakes in
    /// progress, silent sockets). At the cap newcomers wait in the listen backlog, and a
    /// connection pending for over 1 s is closed to make room.
    #[arg(long, env = "MAX_PENDING_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_pending_connections: u64,

    /// Listen backlog (connections the kernel queues before they are accepted). Unset: the
    /// system's maximum, net.core.somaxconn.
    #[arg(long, env = "LISTEN_BACKLOG", global = true)]
    pub listen_backlog: Option<u32>,

    /// Reverse proxies whose X-Forwarded-For / Forwarded / X-Real-IP name the client
    /// (comma-separated addresses or CIDRs, e.g. `127.0.0.1/32,10.0.0.0/8`). Empty: no proxy
    /// is believed, and any forwarding header makes a request non-local for the control API.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "",
        global = true
    )]
    pub trusted_proxies: Vec<String>,

    /// The header TRUSTED_PROXIES write the client address into: x-forwarded-for, forwarded
    /// (RFC 7239) or x-real-ip. Only this one is read; the others pass through from clients.
    #[arg(long, env = "TRUSTED_PROXY_HEADER", value_enum, default_value_t = crate::net::client_addr::ProxyHeader::XForwardedFor, global = true)]
    pub trusted_proxy_header: crate::net::client_addr::ProxyHeader,

    /// Longest a client JWT may live: a token whose `exp` is further ahead than this, or
    /// further after its `iat`, is refused.
    #[arg(
        long,
        env = "JWT_MAX_LIFETIME_SECS",
        default_value_t = 86_400,
        global = true
    )]
    pub jwt_max_lifetime_secs: u64,

    /// Largest message on a bridged channel, in bytes; larger ones are dropped and counted.
    #[arg(long, env = "BRIDGED_MAX_BYTES", default_value_t = 64 * 1024, global = true)]
    pub bridged_max_bytes: usize,

    /// Bytes of Redis messages the relay may hold before it has handled them. Past it
    /// messages are dropped and the relay reloads the state instead (clients get a snapshot).
    #[arg(long, env = "RELAY_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024, global = true)]
    pub relay_queue_bytes: usize,

    /// Milliseconds between WebSocket pings.
    #[arg(
        long,
        env = "WS_PING_INTERVAL_MS",
        default_value_t = 25_000,
        global = true
    )]
    pub ws_ping_interval_ms: u64,

    /// A connection that answered no ping for this many milliseconds is closed.
    #[arg(
        long,
        env = "WS_PONG_TIMEOUT_MS",
        default_value_t = 60_000,
        global = true
    )]
    pub ws_pong_timeout_ms: u64,

    /// Odds messages kept per room for resume.
    #[arg(
        long,
        env = "REPLAY_BUFFER_MESSAGES",
        default_value_t = 256,
        global = true
    )]
    pub replay_buffer_messages: usize,

    /// Bytes of odds messages kept per room for resume.
    #[arg(long, env = "REPLAY_BUFFER_BYTES", default_value_t = 4 * 1024 * 1024, global = true)]
    pub replay_buffer_bytes: usize,

    /// Accept permessage-deflate when a client offers it (browsers do): room frames and
    /// snapshots are compressed once per room.
    #[arg(long, env = "WS_DEFLATE", action = ArgAction::Set, default_value_t = true, global = true)]
    pub ws_deflate: bool,

    /// Serve Socket.IO v4 at /socket.io/ (WebSocket and long-polling) with the earlier Node
    /// relay's events, for pages written against it (docs/SOCKETIO.md).
    #[arg(long, env = "SOCKETIO", action = ArgAction::Set, default_value_t = true, global = true)]
    pub socketio: bool,

    /// Name of a cookie that may carry the JWT of Socket.IO clients (besides the handshake's
    /// `auth.token` and an `Authorization: Bearer` header).
    #[arg(long, env = "SOCKETIO_AUTH_COOKIE", global = true)]
    pub socketio_auth_cookie: Option<String>,

    /// Threads that write room frames into the clients' sockets; 0 means one per core.
    #[arg(long, env = "FANOUT_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256), global = true)]
    pub fanout_threads: u16,

    /// PEM certificate chain: with TLS_KEY, the server speaks https/wss itself.
    #[arg(long, env = "TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS_CERT.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Log format: pretty or json. The level comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,

    /// Milliseconds a graceful shutdown may take before remaining work is abandoned.
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    pub shutdown_timeout_ms: u64,

    /// First wait before a supervised task that panicked or exited is started again; doubles
    /// per consecutive failure up to 5 s.
    #[arg(long, env = "TASK_RESTART_BACKOFF_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000), global = true)]
    pub task_restart_backoff_ms: u64,

    /// Testing only: routes `POST /debug/panic/<task>` (loopback) to make a supervised task
    /// panic, to prove it is restarted and reported. Never enable in production.
    #[arg(long, env = "FAULT_INJECTION", default_value_t = false, action = ArgAction::Set, global = true, hide = true)]
    pub fault_injection: bool,

    /// Demo data: number of events `seed` creates.
    #[arg(long, env = "SEED_EVENTS", default_value_t = 300, global = true)]
    pub seed_events: usize,

    /// Demo data: random seed, so a seeded data set can be reproduced.
    #[arg(long, env = "SEED_RANDOM", default_value_t = 42, global = true)]
    pub seed_random: u64,

    /// Simulator: milliseconds between two rounds of changes.
    #[arg(long, env = "SIM_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..), global = true)]
    pub sim_interval_ms: u64,

    /// Simulator: events priced again and bets placed per round (bets settle and live matches play on in proportion).
    #[arg(long, env = "SIM_CHANGES", default_value_t = 10, global = true)]
    pub sim_changes: usize,
}

impl Config {
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn full_resync_interval(&self) -> Duration {
        Duration::from_millis(self.full_resync_interval_ms)
    }

    pub fn leader_lease(&self) -> Duration {
        Duration::from_millis(self.leader_lease_ms)
    }

    pub fn tick_timeout(&self) -> Duration {
        Duration::from_millis(self.tick_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// The limits on connections that have not upgraded.
    pub fn http_limits(&self) -> crate::net::listener::HttpLimits {
        crate::net::listener::HttpLimits {
            header_timeout: Duration::from_millis(self.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(self.http_idle_timeout_ms),
            max_pending: usize::try_from(self.max_pending_connections).unwrap_or(usize::MAX),
        }
    }

    pub fn sim_interval(&self) -> Duration {
        Duration::from_millis(self.sim_interval_ms)
    }

    /// The formula's constants, validated so the odds maths never sees NaN.
    pub fn odds_params(&self) -> anyhow::Result<OddsParams> {
        let params = OddsParams {
            margin: self.margin,
            min_odds: self.min_odds,
            max_odds: self.max_odds,
        };
        anyhow::ensure!(
            params.margin.is_finite() && params.margin > -1.0,
            "MARGIN must be a finite number above -1, got {}",
            params.margin
        );
        anyhow::ensure!(
            params.min_odds.is_finite()
                && params.max_odds.is_finite()
                && params.min_odds >= 1.0
                && params.min_odds <= params.max_odds,
            "MIN_ODDS and MAX_ODDS must be finite with 1 <= MIN_ODDS <= MAX_ODDS, got {} and {}",
            params.min_odds,
            params.max_odds
        );
        Ok(params)
    }

    /// Checks the broadcaster's limits against each other.
    pub fn validate_broadcaster(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.send_queue_frames > self.replay_buffer_messages + 8,
            "SEND_QUEUE_FRAMES ({}) must exceed REPLAY_BUFFER_MESSAGES ({}) by more than 8, or a resume could overflow it",
            self.send_queue_frames,
            self.replay_buffer_messages
        );
        anyhow::ensure!(
            self.ws_ping_interval_ms >= 100,
            "WS_PING_INTERVAL_MS must be at least 100"
        );
        anyhow::ensure!(
            self.ws_pong_timeout_ms > self.ws_ping_interval_ms,
            "WS_PONG_TIMEOUT_MS must be longer than WS_PING_INTERVAL_MS"
        );
        anyhow::ensure!(
            self.max_client_message_bytes >= 64,
            "MAX_CLIENT_MESSAGE_BYTES must be at least 64"
        );
        anyhow::ensure!(
            self.send_buffer_bytes
                > self.replay_buffer_bytes + crate::broadcaster::outbox::IDLE_BYTES,
            "SEND_BUFFER_BYTES ({}) must exceed REPLAY_BUFFER_BYTES ({}) by more than 64 KiB, or a resume could overflow it",
            self.send_buffer_bytes,
            self.replay_buffer_bytes
        );
        Ok(())
    }

    /// Fan-out threads to start: `FANOUT_THREADS`, or one per core.
    pub fn fanout_threads(&self) -> usize {
        match self.fanout_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => usize::from(n),
        }
    }

    /// `TRUSTED_PROXIES` and `TRUSTED_PROXY_HEADER`, parsed (every mode serves HTTP).
    pub fn trusted_proxies(&self) -> anyhow::Result<crate::net::TrustedProxies> {
        crate::net::TrustedProxies::with_header(&self.trusted_proxies, self.trusted_proxy_header)
            .map_err(anyhow::Error::msg)
    }

    /// The advisory-lock key: explicit, or a stable hash of the channel name so that
    /// publishers of different channels on one database do not contend.
    pub fn leader_lock_key(&self) -> i64 {
        self.leader_lock_key.unwrap_or_else(|| {
            let name = format!("oddsfeed-leader:{}", self.odds_channel);
            crate::publisher::leader::lock_key(name.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["oddsfeed", "serve"]).unwrap();
        let c = cli.config;
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:3001");
        assert_eq!(c.odds_channel, "sports-odds");
        assert_eq!(c.tick_interval_ms, 500);
        assert_eq!(c.heartbeat_interval_ms, 5000);
        assert!(c.publisher_autostart);
        assert_eq!(c.odds_params().unwrap(), OddsParams::default());
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "oddsfeed",
            "--tick-interval-ms",
            "100",
            "publisher",
            "--publisher-autostart",
            "false",
        ])
        .unwrap();
        assert_eq!(cli.config.tick_interval_ms, 100);
        assert!(!cli.config.publisher_autostart);
    }

    #[test]
    fn bad_odds_params_are_refused() {
        let mut cli = Cli::try_parse_from(["oddsfeed", "serve"]).unwrap();
        cli.config.max_odds = 0.5;
        assert!(cli.config.odds_params().is_err());
        cli.config.max_odds = 1000.0;
        cli.config.margin = f64::NAN;
        assert!(cli.config.odds_params().is_err());
    }

    #[test]
    fn lock_key_depends_on_channel() {
        let a = Cli::try_parse_from(["oddsfeed", "--odds-channel", "a", "serve"]).unwrap();
        let b = Cli::try_parse_from(["oddsfeed", "--odds-channel", "b", "serve"]).unwrap();
        assert_ne!(a.config.leader_lock_key(), b.config.leader_lock_key());
        assert_eq!(a.config.leader_lock_key(), a.config.leader_lock_key());
    }
}
