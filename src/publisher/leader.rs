//! Leader election with a PostgreSQL advisory lock.
//!
//! The lock is held by a dedicated connection outside the pool: the session that holds it *is*
//! the leadership. When the process dies, PostgreSQL ends the session and frees the lock at
//! once, and a standby's next attempt (every tick) takes it. When the leader cannot reach its
//! own lock session within [`CHECK_TIMEOUT`], it considers leadership lost immediately and
//! stops publishing; the Redis fence (see `bus::redis`) covers the instant in between.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

/// Longest any statement on the lock session may take before leadership is given up.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// `Some` while this process holds the lock.
    session: Option<PgConnection>,
}

impl Leader {
    pub fn new(options: PgConnectOptions, key: i64, channel: impl Into<String>) -> Self {
        Self {
            options: options.application_name("oddsfeed-leader"),
            key,
            channel: channel.into(),
            session: None,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.session.is_some()
    }

    /// Tries to become leader. Returns whether this process now holds the lock.
    pub async fn try_acquire(&mut self) -> anyhow::Result<bool> {
        if self.session.is_some() {
            return Ok(true);
        }
        let key = self.key;
        let attempt = async {
            let mut conn = self
                .options
                .connect()
                .await
                .context("Failed to open the leader-lock session")?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .context("Failed to try the leader lock")?;
            anyhow::Ok(got.then_some(conn))
        };
        match tokio::time::timeout(CHECK_TIMEOUT * 2, attempt).await {
            Ok(Ok(Some(conn))) => {
                self.session = Some(conn);
                Ok(true)
            }
            // Not granted: the connection is dropped, and with it nothing is held.
            Ok(Ok(None)) => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => anyhow::bail!("timed out trying the leader lock"),
        }
    }

    /// Proves the lock session is alive and reads the desired run state through it.
    /// On any failure leadership is dropped before the error is returned.
    pub async fn check(&mut self, autostart: bool) -> anyhow::Result<Desired> {
        let Some(conn) = self.session.as_mut() else {
            anyhow::bail!("not the leader");
        };
        let query = sqlx::query_scalar::<_, String>(
            "SELECT desired FROM publisher_control WHERE channel = $1",
        )
        .bind(&self.channel)
        .fetch_optional(&mut *conn);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(desired)) => Ok(parse_desired(desired.as_deref(), autostart)),
            Ok(Err(e)) => {
                self.session = None;
                Err(anyhow::Error::new(e).context("Failed to read the desired state on the leader-lock session; leadership given up"))
            }
            Err(_) => {
                self.session = None;
                anyhow::bail!("the leader-lock session did not answer within {CHECK_TIMEOUT:?}")
            }
        }
    }

    /// Releases the lock (graceful shutdown), so a standby takes over without waiting.
    pub async fn release(&mut self) {
        if let Some(mut conn) = self.session.take() {
            let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut conn);
            let _ = tokio::time::timeout(CHECK_TIMEOUT, unlock).await;
            let _ = tokio::time::timeout(CHECK_TIMEOUT, conn.close()).await;
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
