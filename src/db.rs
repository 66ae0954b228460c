//! PostgreSQL: connect options, the pool, and migrations.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// The contract's default URL; only this one falls back to the local socket.
pub const DEFAULT_DATABASE_URL: &str = "postgres://localhost/oddsfeed";

/// Where Debian's PostgreSQL puts its socket.
const LOCAL_SOCKET_DIR: &str = "/var/run/postgresql";

/// Parses `DATABASE_URL`. With the default URL, when nothing answers on TCP but the local
/// socket exists, the socket is used instead (docs/PROTOCOL.md).
pub async fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options =
        PgConnectOptions::from_str(url).with_context(|| format!("Invalid DATABASE_URL {url:?}"))?;
    if url == DEFAULT_DATABASE_URL && std::path::Path::new(LOCAL_SOCKET_DIR).exists() {
        let tcp = tokio::time::timeout(Duration::from_secs(2), options.connect()).await;
        if !matches!(tcp, Ok(Ok(_))) {
            tracing::info!(
                "nothing answered on localhost:5432; using the socket in {LOCAL_SOCKET_DIR}"
            );
            return Ok(options.socket(LOCAL_SOCKET_DIR));
        }
    }
    Ok(options)
}

/// A pool that connects lazily: a database that is down at boot makes ticks fail and retry,
/// it does not stop the process.
pub fn lazy_pool(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options)
}

/// Applies `migrations/` (embedded at build time).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("Failed to apply migrations")?;
    Ok(())
}
