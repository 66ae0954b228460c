//! Leader election with a PostgreSQL advisory lock, held under a lease.
//!
//! The lock is held by a dedicated connection outside the pool: the session that holds it *is*
//! the leadership. When the process dies, PostgreSQL ends the session and frees the lock at
//! once, and a standby's next attempt (every tick) takes it.
//!
//! A leader cut off by the network is not dead to PostgreSQL until the server gives up on its
//! session; with default settings that takes about two hours, and no standby could take over.
//! So the session is a lease of `LEADER_LEASE_MS` (L): it sets `idle_session_timeout` to L
//! (the server ends a session that sends nothing for L, whatever the network does) and TCP
//! keepalives and `tcp_user_timeout` so a dead peer is noticed within about L too. The leader
//! renews the lease by checking its session at least every L/3, and gives leadership up itself
//! when a check takes longer than L/2: before the server can grant the lock to anyone else.
//! The Redis fence (see `bus::redis`) covers any instant in between.
//!
//! A standby keeps one connection for its attempts instead of opening one per attempt.
//!
//! The change log (`event_changes`) is consumed, so exactly one publisher per database may read
//! it: a leader also takes a second advisory lock, [`CHANGE_LOG_LOCK`], on the same session.
//! The leader of another odds channel on the same database does not get it and reads every
//! event on every tick instead.

use std::time::Duration;

use anyhow::Context;
use metrics::histogram;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::time::Instant;

use crate::telemetry as m;

/// An advisory-lock key for `name`: FNV-1a, stable across builds and platforms, unlike std's
/// hasher.
pub fn lock_key(name: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// The name of the lock that makes a leader the one reader of the change log.
pub const CHANGE_LOG_LOCK: &[u8] = b"oddsfeed-change-log";

/// What the leader learns each time it checks its lock session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    Stopped,
}

/// The lock session, when this process holds the lock.
pub struct Leader {
    /// How to open the lock session.
    options: PgConnectOptions,
    /// The advisory-lock key (see `Config::leader_lock_key`).
    key: i64,
    /// Channel whose desired state the leader reads through its lock session.
    channel: String,
    /// `LEADER_LEASE_MS`.
    lease: Duration,
    /// The one connection, kept between attempts while standby and holding the lock while
    /// leader.
    conn: Option<PgConnection>,
    /// The lock is held on `conn`.
    held: bool,
    /// The change-log lock is held on `conn` too.
    reads_log: bool,
    /// When the last check (or the acquisition) succeeded.
    renewed: Instant,
}

impl Leader {
    pub fn new(
        options: PgConnectOptions,
        key: i64,
        channel: impl Into<String>,
        lease: Duration,
    ) -> Self {
        Self {
            options: options.application_name("oddsfeed-leader"),
            key,
            channel: channel.into(),
            lease,
            conn: None,
            held: false,
            reads_log: false,
            renewed: Instant::now(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.held
    }

    /// Whether this leader is the one that may consume the change log.
    pub fn reads_log(&self) -> bool {
        self.held && self.reads_log
    }

    /// Longest a statement on the lock session may take: half the lease.
    pub fn check_timeout(&self) -> Duration {
        self.lease / 2
    }

    /// When the leader must check its session next to keep the lease (`None` while standby).
    pub fn renew_at(&self) -> Option<Instant> {
        self.held.then(|| self.renewed + self.lease / 3)
    }

    /// Opens the session and sets its lease. A setting the server does not know (older
    /// PostgreSQL) is logged and skipped: the others still bound the lease.
    async fn connect(&self) -> anyhow::Result<PgConnection> {
        let mut conn = self
            .options
            .connect()
            .await
            .context("Failed to open the leader-lock session")?;
        let lease_ms = self.lease.as_millis().to_string();
        let idle_s = (self.lease.as_secs() / 3).max(1).to_string();
        let settings = [
            ("idle_session_timeout", lease_ms.as_str()),
            ("tcp_user_timeout", lease_ms.as_str()),
            ("tcp_keepalives_idle", idle_s.as_str()),
            ("tcp_keepalives_interval", "1"),
            ("tcp_keepalives_count", "2"),
        ];
        for (name, value) in settings {
            let set = sqlx::query("SELECT set_config($1, $2, false)")
                .bind(name)
                .bind(value)
                .execute(&mut conn)
                .await;
            if let Err(error) = set {
                tracing::warn!(setting = name, %error, "the leader-lock session could not set its lease; continuing without it");
            }
        }
        Ok(conn)
    }

    /// Tries to become leader. Returns whether this process now holds the lock.
    pub async fn try_acquire(&mut self) -> anyhow::Result<bool> {
        if self.held {
            return Ok(true);
        }
        let timeout = self.check_timeout();
        let result = tokio::time::timeout(timeout * 2, self.attempt()).await;
        match result {
            Ok(Ok(got)) => {
                if got {
                    self.held = true;
                    self.renewed = Instant::now();
                    self.reads_log = self.try_log_lock().await?;
                }
                Ok(got)
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                anyhow::bail!("timed out trying the leader lock")
            }
        }
    }

    /// One attempt on the kept connection; a kept connection that fails (the server ended it
    /// while idle) is replaced once.
    async fn attempt(&mut self) -> anyhow::Result<bool> {
        let kept = self.conn.is_some();
        match self.try_lock().await {
            Err(_) if kept => {
                self.conn = None;
                self.try_lock().await
            }
            result => result,
        }
    }

    async fn try_lock(&mut self) -> anyhow::Result<bool> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.connect().await?),
        };
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(conn)
            .await
            .context("Failed to try the leader lock")
    }

    /// Takes the change-log lock on the lock session; false when another publisher on this
    /// database holds it (logged).
    async fn try_log_lock(&mut self) -> anyhow::Result<bool> {
        let timeout = self.check_timeout();
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        let query = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(CHANGE_LOG_LOCK))
            .fetch_one(conn);
        let got: bool = match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.context("Failed to try the change-log lock"),
            Err(_) => Err(anyhow::anyhow!("timed out trying the change-log lock")),
        }
        .inspect_err(|_| self.give_up())?;
        if !got {
            tracing::warn!(
                "another publisher on this database (another ODDS_CHANNEL) reads the change log: this one reads every event on every tick"
            );
        }
        Ok(got)
    }

    /// Proves the lock session is alive (renewing the lease) and reads the desired run state
    /// through it. On any failure leadership is dropped before the error is returned.
    pub async fn check(&mut self, autostart: bool) -> anyhow::Result<Desired> {
        let timeout = self.check_timeout();
        let (true, Some(conn)) = (self.held, self.conn.as_mut()) else {
            anyhow::bail!("not the leader");
        };
        let started = Instant::now();
        let query = sqlx::query_scalar::<_, String>(
            "SELECT desired FROM publisher_control WHERE channel = $1",
        )
        .bind(&self.channel)
        .fetch_optional(conn);
        let result = tokio::time::timeout(timeout, query).await;
        histogram!(m::LEADER_CHECK).record(started.elapsed());
        match result {
            Ok(Ok(desired)) => {
                self.renewed = Instant::now();
                Ok(parse_desired(desired.as_deref(), autostart))
            }
            Ok(Err(e)) => {
                self.give_up();
                Err(anyhow::Error::new(e).context("Failed to read the desired state on the leader-lock session; leadership given up"))
            }
            Err(_) => {
                self.give_up();
                anyhow::bail!(
                    "the leader-lock session did not answer within {timeout:?}; leadership given up"
                )
            }
        }
    }

    /// Drops the lock session without a word: whatever it held, PostgreSQL frees when it sees
    /// the connection go (or at the lease's end if it cannot see it).
    fn give_up(&mut self) {
        self.held = false;
        self.reads_log = false;
        self.conn = None;
    }

    /// Releases the lock (graceful shutdown), so a standby takes over without waiting.
    pub async fn release(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.reads_log = false;
        if let Some(mut conn) = self.conn.take() {
            let timeout = self.check_timeout();
            if held {
                let unlock = sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut conn);
                let _ = tokio::time::timeout(timeout, unlock).await;
            }
            let _ = tokio::time::timeout(timeout, conn.close()).await;
        }
    }
}

/// A missing row means nobody ever said: follow `PUBLISHER_AUTOSTART`.
pub fn parse_desired(stored: Option<&str>, autostart: bool) -> Desired {
    match stored {
        Some("running") => Desired::Running,
        Some(_) => Desired::Stopped,
        None if autostart => Desired::Running,
        None => Desired::Stopped,
    }
}
