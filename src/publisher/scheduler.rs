//! The tick loop.
//!
//! Each cycle: make sure of leadership (try the lock as standby, prove the lock session as
//! leader), read the desired run state, load the book from Redis when not synced, then tick:
//! read PostgreSQL, price what was read, diff against the book, and publish the delta through
//! the fenced MULTI/EXEC. Cycles never overlap because they run in this one task. A cycle that
//! overruns the interval is counted and the next starts at once; a failed cycle is counted,
//! logged, and retried with exponential backoff (capped at [`MAX_BACKOFF`]).
//!
//! What a tick reads (see [`Read`]): normally only the events that changed since the last
//! tick (the changed-events query, which consumes the change log); everything when the book
//! was just loaded from Redis; and everything every `FULL_RESYNC_INTERVAL_MS`, checked against
//! the incremental book. Each read runs in one REPEATABLE READ transaction that is committed
//! only after its message is in Redis, so changes consumed by a tick that never published are
//! still there for the next tick or the next leader.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PublisherHandle;
use super::leader::{Desired, Leader};
use super::source::{Changed, Source};
use crate::bus::{Expect, OddsBus, Outgoing, PublishOutcome, now_ms};
use crate::odds::{Book, EventInput, EventView, OddsParams};
use crate::telemetry as m;

/// The longest wait between two attempts while a dependency is failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything the tick loop owns.
pub struct Scheduler {
    /// The active-events query.
    pub source: Source,
    /// Redis writes for the odds channel.
    pub bus: OddsBus,
    /// The advisory lock.
    pub leader: Leader,
    /// Formula constants.
    pub params: OddsParams,
    /// Status shared with HTTP handlers, and the wake-up signal.
    pub handle: PublisherHandle,
    /// Time between ticks.
    pub interval: Duration,
    /// Idle time after which a heartbeat is sent.
    pub heartbeat: Duration,
    /// Longest a tick's query may run.
    pub tick_timeout: Duration,
    /// Time between full reads that check the incremental book; zero: every tick is full.
    pub full_resync: Duration,
    /// Desired state when none is stored.
    pub autostart: bool,
    /// Tick early when PostgreSQL notifies `oddsfeed_changes`, at most once per this gap;
    /// `None` disables the fast path (ticks only on the interval).
    pub notify_min_gap: Option<Duration>,
    /// Woken by [`listen_for_changes`] (a task of its own) when PostgreSQL notifies.
    pub changed: std::sync::Arc<tokio::sync::Notify>,
}

/// PostgreSQL channel the schema's triggers notify when odds inputs change.
pub const CHANGES_CHANNEL: &str = "oddsfeed_changes";

/// Listens on [`CHANGES_CHANNEL`] and wakes the tick loop; reconnects by itself.
pub async fn listen_for_changes(
    pool: sqlx::PgPool,
    wake: std::sync::Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            error = relay_notifications(&pool, &wake) => {
                tracing::debug!(%error, "change listener lost PostgreSQL; retrying in 1 s");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Wakes `wake` for every notification until the listener fails; returns the failure.
async fn relay_notifications(pool: &sqlx::PgPool, wake: &tokio::sync::Notify) -> sqlx::Error {
    let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(e) => return e,
    };
    if let Err(e) = listener.listen(CHANGES_CHANNEL).await {
        return e;
    }
    loop {
        match listener.recv().await {
            Ok(_) => wake.notify_one(),
            Err(e) => return e,
        }
    }
}

/// What one cycle did, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    Standby,
    Stopped,
    Unchanged,
    Published,
}

/// Why a cycle failed; the label goes into `oddsfeed_errors_total{kind}`.
#[derive(Debug, thiserror::Error)]
enum CycleError {
    #[error("database: {0:#}")]
    Database(anyhow::Error),
    #[error("redis: {0:#}")]
    Redis(anyhow::Error),
    #[error(
        "the Redis state is not the one this publisher continues from (found {0:?}); reloading"
    )]
    Conflict(Option<(String, u64)>),
}

impl CycleError {
    fn kind(&self) -> &'static str {
        match self {
            CycleError::Database(_) => "database",
            CycleError::Redis(_) => "redis",
            CycleError::Conflict(_) => "conflict",
        }
    }
}

/// The loop's memory between cycles.
struct LoopState {
    /// The published state, `Some` only while leader, running and synced with Redis.
    book: Option<Book>,
    /// What the next fenced write expects to find in Redis.
    expect: Expect,
    /// Epoch and seq of the last message this process published. If Redis later holds an
    /// older seq of the same epoch, it lost writes that clients may have seen: the stream
    /// continues under a new epoch rather than reuse those seqs with other content.
    published: Option<(String, u64)>,
    /// Removals the book forgot (beyond its bound) whose state entries are still to delete.
    forgotten: Vec<String>,
    /// When this process last put a message on the channel (odds or heartbeat).
    last_sent: Instant,
    /// The book is not known to match PostgreSQL (just loaded, or a full read did not
    /// publish): the next tick reads everything.
    needs_full: bool,
    /// The stopped state was said in the log (once per stop, so an empty board explains itself).
    said_stopped: bool,
    /// When the last full read published.
    last_full: Instant,
    /// The database's clock when the last published read began: `$1` of the next
    /// changed-events read.
    since: Option<DateTime<Utc>>,
}

/// What a tick reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Only the changed events.
    Changed,
    /// Everything, after clearing the change log (a book that may not match PostgreSQL).
    Full,
    /// The changed events and everything, in one snapshot: the changes explain some
    /// differences, any other difference is a change the capture missed.
    Resync,
}

impl Read {
    fn label(self) -> &'static str {
        match self {
            Read::Changed => "changed",
            Read::Full => "full",
            Read::Resync => "resync",
        }
    }
}

/// What a tick read, and the transaction to commit once it is published.
struct Reading {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The database's clock when the transaction began.
    began: DateTime<Utc>,
    changed: Option<Changed>,
    all: Option<Vec<EventInput>>,
    /// Change-log rows older than this read's snapshot were left for a later tick.
    backlog: bool,
}

impl Scheduler {
    /// Runs until `cancel` fires, then releases the lock so a standby takes over at once.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut state = LoopState {
            book: None,
            expect: Expect::Book,
            published: None,
            forgotten: Vec::new(),
            last_sent: Instant::now(),
            needs_full: true,
            last_full: Instant::now(),
            since: None,
            said_stopped: false,
        };
        // A restarted loop (after a panic) starts from nothing: it is not publishing yet.
        self.set_role(false, false);
        let mut failures: u32 = 0;
        let mut next = Instant::now();
        let changed = self.changed.clone();
        let mut last_finished = Instant::now();
        loop {
            // The leader renews its lease between ticks when the interval is longer than that.
            let renew = self.leader.renew_at().filter(|at| *at < next);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
                _ = tokio::time::sleep_until(renew.unwrap_or(next)), if renew.is_some() => {
                    if let Err(e) = self.leader.check(self.autostart).await {
                        self.lost_leadership(&mut state, &e);
                    }
                    continue;
                }
                _ = self.handle.wake.notified() => {}
                // A change in PostgreSQL: the leader ticks now, but never closer than the
                // minimum gap after the previous tick ended (so a tick longer than the gap
                // does not make ticks run back to back), and not while backing off.
                _ = changed.notified(), if failures == 0 && self.leader.is_leader() => {
                    let gap = self.notify_min_gap.unwrap_or_default();
                    next = next.min((last_finished + gap).max(Instant::now()));
                    continue;
                }
            }
            let started = Instant::now();
            let result = self.cycle(&mut state).await;
            last_finished = Instant::now();
            let elapsed = started.elapsed();
            match result {
                Ok(cycle) => {
                    failures = 0;
                    tracing::trace!(?cycle, ms = elapsed.as_secs_f64() * 1e3, "cycle");
                    self.handle.update(|s| s.last_error = None);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    counter!(m::ERRORS, "kind" => error.kind()).increment(1);
                    counter!(m::TICKS, "result" => "error").increment(1);
                    tracing::warn!(%error, failures, "publisher cycle failed");
                    self.handle.update(|s| {
                        s.errors += 1;
                        s.last_error = Some(error.to_string());
                    });
                }
            }
            next = if failures > 0 {
                Instant::now() + backoff(self.interval, failures)
            } else if elapsed > self.interval {
                counter!(m::TICK_OVERRUNS).increment(1);
                self.handle.update(|s| s.overruns += 1);
                Instant::now()
            } else {
                started + self.interval
            };
        }
        self.leader.release().await;
        self.set_role(false, false);
        tracing::info!("publisher stopped");
    }

    fn set_role(&self, leader: bool, publishing: bool) {
        gauge!(m::PUBLISHER_LEADER).set(f64::from(u8::from(leader)));
        gauge!(m::PUBLISHER_RUNNING).set(f64::from(u8::from(publishing)));
        self.handle.update(|s| {
            s.leader = leader;
            s.is_publishing = publishing;
        });
    }

    /// The lock session failed: stop publishing at once; the book is reloaded from Redis
    /// when leadership comes back.
    fn lost_leadership(&self, state: &mut LoopState, error: &anyhow::Error) {
        tracing::warn!(%error, "lost leadership");
        counter!(m::LEADER_CHANGES, "change" => "lost").increment(1);
        state.book = None;
        self.set_role(false, false);
    }

    async fn cycle(&mut self, state: &mut LoopState) -> Result<Cycle, CycleError> {
        if !self.leader.is_leader() {
            let acquired = self
                .leader
                .try_acquire()
                .await
                .map_err(CycleError::Database)?;
            if !acquired {
                self.set_role(false, false);
                return Ok(Cycle::Standby);
            }
            tracing::info!("became leader");
            counter!(m::LEADER_CHANGES, "change" => "acquired").increment(1);
            state.book = None;
        }
        let desired = match self.leader.check(self.autostart).await {
            Ok(desired) => desired,
            Err(e) => {
                self.lost_leadership(state, &e);
                return Err(CycleError::Database(e));
            }
        };
        self.handle.update(|s| s.desired = Some(desired));
        if desired == Desired::Stopped {
            if state.book.take().is_some() {
                tracing::info!("publisher stopped by request");
            } else if !state.said_stopped {
                tracing::warn!(
                    "the publisher is stopped (a DELETE /api/sports/ws-publisher is stored in PostgreSQL and survives restarts): nothing is published until POST /api/sports/ws-publisher"
                );
            }
            state.said_stopped = true;
            // The first tick after a start reads everything, so the log need not grow.
            if self.leader.reads_log()
                && let Err(error) = self.source.drain_changes().await
            {
                tracing::debug!(%error, "could not clear the change log while stopped");
            }
            self.set_role(true, false);
            return Ok(Cycle::Stopped);
        }

        state.said_stopped = false;
        let mut book = match state.book.take() {
            Some(book) => book,
            None => self.load_book(state).await?,
        };
        self.set_role(true, true);
        let result = self.tick(&mut book, state).await;
        // Keep the book unless the Redis state turned out not to be the one it continues.
        if let Err(CycleError::Conflict(_)) = result {
            counter!(m::STATE_RELOADS, "reason" => "conflict").increment(1);
        } else {
            state.book = Some(book);
        }
        result.map(|published| {
            if published {
                Cycle::Published
            } else {
                Cycle::Unchanged
            }
        })
    }

    /// Continues the stream stored in Redis, or starts a new epoch when there is none or when
    /// the stored one is behind what this process already published in it.
    async fn load_book(&mut self, state: &mut LoopState) -> Result<Book, CycleError> {
        let stored = self.bus.load_state().await.map_err(CycleError::Redis)?;
        // Removals the previous book forgot are not this book's to delete.
        state.forgotten.clear();
        // Whatever the stored state holds, PostgreSQL may have moved on since it was written.
        state.needs_full = true;
        state.expect = Expect::Book;
        let behind = match (&stored, &state.published) {
            (Some(stored), Some((epoch, seq))) => {
                (stored.epoch == *epoch && stored.seq < *seq).then_some(*seq)
            }
            _ => None,
        };
        let book = match stored {
            Some(stored) if let Some(published_seq) = behind => {
                let epoch = new_epoch();
                tracing::warn!(
                    stored_seq = stored.seq,
                    published_seq,
                    old_epoch = %stored.epoch,
                    new_epoch = %epoch,
                    "the Redis state is behind what this publisher published (Redis lost writes): starting a new epoch so no seq is reused"
                );
                counter!(m::STATE_RELOADS, "reason" => "behind").increment(1);
                state.expect = Expect::Replace(Some((stored.epoch, stored.seq)));
                Book::new(epoch)
            }
            Some(stored) => {
                tracing::info!(epoch = %stored.epoch, seq = stored.seq, events = stored.events.len(), "continuing the stream from the Redis state");
                stored.into_book()
            }
            None => {
                let epoch = new_epoch();
                tracing::info!(%epoch, "no stream in Redis: starting a new epoch");
                Book::new(epoch)
            }
        };
        counter!(m::STATE_RELOADS, "reason" => "sync").increment(1);
        self.handle.update(|s| {
            s.epoch = Some(book.epoch().to_string());
            s.seq = Some(book.seq());
        });
        Ok(book)
    }

    /// Puts `outgoing` on the channel through the fence (see `bus::redis`); a state that is
    /// not the one expected is a conflict (the book is reloaded). Returns the receivers, the
    /// bytes, and whether the whole state had to be written again.
    async fn fenced(
        &mut self,
        book: &Book,
        outgoing: Outgoing<'_>,
        state: &mut LoopState,
    ) -> Result<(i64, usize, bool), CycleError> {
        let forgotten = match outgoing {
            Outgoing::Odds { .. } => state.forgotten.as_slice(),
            Outgoing::Heartbeat => &[],
        };
        let outcome = self
            .bus
            .publish(book, outgoing, &state.expect, forgotten)
            .await
            .map_err(CycleError::Redis)?;
        match outcome {
            PublishOutcome::Published {
                receivers,
                bytes,
                rewrote_state,
            } => {
                state.expect = Expect::Book;
                state.last_sent = Instant::now();
                Ok((receivers, bytes, rewrote_state))
            }
            PublishOutcome::Conflict { found } => Err(CycleError::Conflict(found)),
        }
    }

    /// Sends a heartbeat through the fence: state keys that vanished are rewritten with it.
    async fn heartbeat(&mut self, book: &Book, state: &mut LoopState) -> Result<(), CycleError> {
        let (_, bytes, rewrote_state) = self.fenced(book, Outgoing::Heartbeat, state).await?;
        if rewrote_state {
            tracing::warn!(
                seq = book.seq(),
                "the Redis state keys were gone; rewrote them with the heartbeat"
            );
        }
        counter!(m::PUBLISHED_MESSAGES, "type" => "heartbeat").increment(1);
        counter!(m::PUBLISHED_BYTES).increment(bytes as u64);
        Ok(())
    }

    /// What the next tick reads.
    fn plan(&self, state: &LoopState) -> Read {
        let incremental = self.source.incremental() && self.leader.reads_log();
        if state.needs_full || !incremental || self.full_resync.is_zero() {
            Read::Full
        } else if state.last_full.elapsed() >= self.full_resync {
            Read::Resync
        } else {
            Read::Changed
        }
    }

    /// Runs the reads of `plan` in one REPEATABLE READ transaction.
    async fn read(&self, plan: Read, since: Option<DateTime<Utc>>) -> anyhow::Result<Reading> {
        if plan == Read::Full && self.leader.reads_log() {
            // Everything in the log is covered by the full read that follows.
            self.source.drain_changes().await?;
        }
        let mut tx = self
            .source
            .pool()
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .context("Failed to begin the tick's transaction")?;
        // The first statement takes the snapshot; now() is the transaction's start, so every
        // change committed before the snapshot is at or after `began`'s predecessors.
        let began: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await
            .context("Failed to read the database clock")?;
        let changed = match (plan, since) {
            (Read::Changed | Read::Resync, Some(since)) => {
                Some(self.source.read_changed(&mut tx, since).await?)
            }
            _ => None,
        };
        let all = match plan {
            Read::Full | Read::Resync => Some(self.source.read_all(&mut tx).await?),
            Read::Changed => None,
        };
        let backlog = plan == Read::Resync
            && sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM event_changes)")
                .fetch_one(&mut *tx)
                .await
                .context("Failed to look at the change log")?;
        Ok(Reading {
            tx,
            began,
            changed,
            all,
            backlog,
        })
    }

    /// One tick against `book`, which is advanced when a message went out (returns true).
    async fn tick(&mut self, book: &mut Book, state: &mut LoopState) -> Result<bool, CycleError> {
        let tick_at = now_ms();
        let started = Instant::now();
        let plan = match (self.plan(state), state.since) {
            // No watermark yet (cannot happen after a full read): read everything.
            (Read::Changed | Read::Resync, None) => Read::Full,
            (plan, _) => plan,
        };
        let reading = tokio::time::timeout(self.tick_timeout, self.read(plan, state.since))
            .await
            .map_err(|_| {
                CycleError::Database(anyhow::anyhow!(
                    "the tick's read took longer than {:?}",
                    self.tick_timeout
                ))
            })?
            .map_err(CycleError::Database)?;
        let queried = Instant::now();
        counter!(m::PUBLISHER_READS, "kind" => plan.label()).increment(1);
        let Reading {
            tx,
            began,
            changed,
            all,
            backlog,
        } = reading;

        // The metric label of each suspended event, counted below when it becomes suspended.
        let mut suspended: HashMap<String, &'static str> = HashMap::new();
        let mut price = |inputs: &[EventInput]| -> Vec<(String, EventView)> {
            inputs
                .iter()
                .map(|input| {
                    let (view, reason) = input.to_view(&self.params);
                    if let Some(reason) = reason {
                        tracing::debug!(event = %input.id, %reason, "event suspended");
                        suspended.insert(input.id.clone(), reason.label());
                    }
                    (input.id.clone(), view)
                })
                .collect()
        };
        let changed_views = changed.as_ref().map(|c| (price(&c.events), &c.gone));
        let all_views = all.as_deref().map(&mut price);
        let delta = match (&all_views, &changed_views) {
            (Some(all), changed) => {
                if let (Some((views, gone)), false) = (changed, backlog) {
                    count_missed(book, all, views, gone);
                }
                book.diff(all)
            }
            (None, Some((views, gone))) => book.diff_changed(views, gone),
            (None, None) => None,
        };
        let computed = Instant::now();
        histogram!(m::TICK_DURATION, "stage" => "query").record(queried - started);
        histogram!(m::TICK_DURATION, "stage" => "compute").record(computed - queried);

        let published = match delta {
            None => {
                counter!(m::TICKS, "result" => "unchanged").increment(1);
                if state.last_sent.elapsed() >= self.heartbeat {
                    self.heartbeat(book, state).await?;
                }
                false
            }
            Some(delta) => {
                let outgoing = Outgoing::Odds {
                    delta: &delta,
                    tick_at,
                };
                let (receivers, bytes, _) = self.fenced(book, outgoing, state).await?;
                histogram!(m::TICK_DURATION, "stage" => "publish").record(computed.elapsed());
                for event in delta.sports.values().flat_map(|b| &b.upserts) {
                    let was_suspended = book.get(&event.id).is_some_and(|e| e.view.suspended);
                    if let Some(label) = suspended.get(event.id.as_str())
                        && !was_suspended
                    {
                        counter!(m::EVENT_SUSPENSIONS, "reason" => *label).increment(1);
                    }
                }
                counter!(m::TICKS, "result" => "published").increment(1);
                counter!(m::PUBLISHED_MESSAGES, "type" => "odds").increment(1);
                counter!(m::PUBLISHED_BYTES).increment(bytes as u64);
                counter!(m::PUBLISHED_UPSERTS).increment(delta.upserts() as u64);
                counter!(m::PUBLISHED_REMOVALS).increment(delta.removals() as u64);
                gauge!(m::PUBLISHER_SEQ).set(delta.seq as f64);
                tracing::debug!(
                    seq = delta.seq,
                    upserts = delta.upserts(),
                    removals = delta.removals(),
                    receivers,
                    bytes,
                    "published"
                );
                state.published = Some((book.epoch().to_string(), delta.seq));
                state.forgotten = book.apply(delta);
                true
            }
        };
        // The book now holds what was read: the changes it consumed may go. A commit that
        // fails leaves them in the log, and the next tick reads them again (and finds them
        // published already).
        match tokio::time::timeout(self.tick_timeout, tx.commit()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not commit the tick's read; its changes will be read again")
            }
            Err(_) => tracing::warn!(
                "the tick's commit took longer than {:?}; its changes will be read again",
                self.tick_timeout
            ),
        }
        state.since = Some(began);
        if plan != Read::Changed {
            state.needs_full = false;
            state.last_full = started;
        }
        if plan == Read::Resync && self.leader.reads_log() {
            self.source.vacuum_changes().await;
        }
        let total = started.elapsed();
        histogram!(m::TICK_DURATION, "stage" => "total").record(total);
        let (active, suspended) = (book.len(), book.suspended());
        gauge!(m::EVENTS_ACTIVE).set(active as f64);
        gauge!(m::EVENTS_SUSPENDED).set(suspended as f64);
        let seq = book.seq();
        let published_at = published.then(now_ms);
        self.handle.update(|s| {
            s.ticks += 1;
            s.active_events = active;
            s.suspended_events = suspended;
            s.last_tick_at = Some(tick_at);
            s.last_tick_ms = Some(total.as_secs_f64() * 1e3);
            s.seq = Some(seq);
            if published_at.is_some() {
                s.last_published_at = published_at;
            }
        });
        Ok(published)
    }
}

/// Compares a full read with the incremental book plus the changes read in the same snapshot.
/// An event that differs although no change named it, or that the changed-events query saw
/// differently from the active-events query, is a change the capture missed: counted and
/// logged (the full read's delta then publishes the truth).
fn count_missed(
    book: &Book,
    all: &[(String, EventView)],
    changed: &[(String, EventView)],
    gone: &[String],
) {
    let full: HashMap<&str, &EventView> = all.iter().map(|(id, v)| (id.as_str(), v)).collect();
    let seen: HashMap<&str, &EventView> = changed.iter().map(|(id, v)| (id.as_str(), v)).collect();
    let named: HashSet<&str> = seen
        .keys()
        .copied()
        .chain(gone.iter().map(String::as_str))
        .collect();
    let mut missed: Vec<&str> = Vec::new();
    // Differences no change explains.
    for (id, view) in &full {
        if !named.contains(id) && book.get(id).is_none_or(|e| e.view != **view) {
            missed.push(id);
        }
    }
    for event in book.events() {
        let id = event.id.as_str();
        if !named.contains(id) && !full.contains_key(id) {
            missed.push(id);
        }
    }
    // Changes read differently by the two queries.
    for id in &named {
        if full.get(id) != seen.get(id) {
            missed.push(id);
        }
    }
    if missed.is_empty() {
        return;
    }
    missed.sort_unstable();
    missed.dedup();
    counter!(m::RESYNC_DIFFERENCES).increment(missed.len() as u64);
    tracing::warn!(
        events = missed.len(),
        first = ?&missed[..missed.len().min(10)],
        "the full read found events that differ from the incremental book: changes were missed (published now)"
    );
}

/// Wait before the next attempt after `failures` consecutive failures: the interval, then
/// doubling, capped at [`MAX_BACKOFF`].
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// A new, unique epoch: start time plus randomness, readable in logs.
pub fn new_epoch() -> String {
    let random: u32 = rand::rng().random();
    format!("{:x}-{random:08x}", now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_millis(500);
        assert_eq!(backoff(i, 1), Duration::from_millis(500));
        assert_eq!(backoff(i, 2), Duration::from_millis(1000));
        assert_eq!(backoff(i, 3), Duration::from_millis(2000));
        assert_eq!(backoff(i, 10), MAX_BACKOFF);
        assert_eq!(backoff(i, u32::MAX), MAX_BACKOFF);
        // An interval longer than the cap is never shortened.
        assert_eq!(backoff(Duration::from_secs(10), 3), Duration::from_secs(10));
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
    }
}
