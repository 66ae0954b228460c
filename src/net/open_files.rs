//! File descriptors: every connection is one, and running out of them stops `accept` for
//! everyone. At start the soft limit is raised to the hard limit (what `ulimit -Hn` or
//! systemd's `LimitNOFILE` allows), and the connection caps are checked against it so that
//! the caps, not the kernel, are what refuses a connection.

/// Descriptors kept for everything that is not a client: PostgreSQL and Redis connections,
/// the listener, logs, the runtime.
pub const RESERVED: u64 = 64;

/// Raises the soft open-files limit to the hard limit; returns the limit now in force
/// (`None` where it cannot be read).
pub fn raise_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The WebSocket connection cap that fits in `limit` descriptors next to `pending` HTTP
/// connections and the reserve: `wanted` when it fits, otherwise what does.
pub fn fit_connections(wanted: usize, pending: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else { return wanted };
    let room = limit.saturating_sub(RESERVED + pending as u64);
    usize::try_from(room).map_or(wanted, |room| wanted.min(room.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_in_the_limit() {
        assert_eq!(fit_connections(10_000, 1024, Some(1 << 20)), 10_000);
        assert_eq!(fit_connections(10_000, 1024, Some(4096)), 4096 - 64 - 1024);
        assert_eq!(fit_connections(10_000, 1024, Some(100)), 1);
        assert_eq!(fit_connections(10_000, 1024, None), 10_000);
    }
}
