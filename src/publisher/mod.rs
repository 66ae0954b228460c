//! The publisher: PostgreSQL → hybrid odds → diffs on the odds channel.
//!
//! - [`source`]: runs the active-events SQL file and groups its rows into events by id.
//! - [`decode`]: reads each column by its actual PostgreSQL type, tolerating what operators'
//!   schemas hold (timestamptz or timestamp, numeric, enums, integer ids, infinity).
//! - [`scheduler`]: the tick loop (leadership, desired state, read, price, diff, publish).
//! - [`leader`]: the advisory lock that makes exactly one process publish.
//! - [`control`]: `POST/DELETE/GET /api/sports/ws-publisher` and the stored desired state.

pub mod control;
pub mod decode;
pub mod leader;
pub mod scheduler;
pub mod source;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

pub use leader::{Desired, Leader};
pub use scheduler::Scheduler;
pub use source::Source;

/// What the scheduler last knew, for the control API and /health. Written by the scheduler
/// only; readers take a copy.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublisherStatus {
    /// This process holds the leader lock.
    pub leader: bool,
    /// The desired run state last read from PostgreSQL (`None` before the first read).
    #[serde(skip)]
    pub desired: Option<Desired>,
    /// Leader, desired running, and synced with Redis: this process is the one publishing.
    pub is_publishing: bool,
    pub epoch: Option<String>,
    pub seq: Option<u64>,
    pub active_events: usize,
    pub suspended_events: usize,
    /// Unix ms when the last successful tick began.
    pub last_tick_at: Option<i64>,
    /// Duration of the last successful tick in milliseconds.
    pub last_tick_ms: Option<f64>,
    /// Unix ms of the last odds message this process published.
    pub last_published_at: Option<i64>,
    /// Ticks run by this process (as leader and running).
    pub ticks: u64,
    /// Failed cycles (database, Redis, conflicts).
    pub errors: u64,
    /// Ticks that took longer than the interval.
    pub overruns: u64,
    /// The most recent failure, cleared by the next success.
    pub last_error: Option<String>,
}

/// Shared between the scheduler (writer) and the HTTP handlers (readers).
#[derive(Clone)]
pub struct PublisherHandle {
    /// The latest status.
    status: Arc<Mutex<PublisherStatus>>,
    /// Wakes the scheduler at once (after POST/DELETE), instead of at the next tick.
    wake: Arc<Notify>,
    /// Tick interval, shown as `"500ms"` by the control API.
    pub interval: Duration,
}

impl PublisherHandle {
    pub fn new(interval: Duration) -> Self {
        Self {
            status: Arc::default(),
            wake: Arc::new(Notify::new()),
            interval,
        }
    }

    /// A copy of the current status.
    pub fn status(&self) -> PublisherStatus {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, PublisherStatus> {
        // A panic while holding this lock cannot leave the plain data inconsistent in a way
        // that matters more than losing the status, so poisoning is ignored.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut PublisherStatus)) {
        f(&mut self.lock());
    }

    /// Asks the scheduler to run a cycle now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The interval as the earlier Next.js route showed it.
    pub fn interval_label(&self) -> String {
        format!("{}ms", self.interval.as_millis())
    }
}
