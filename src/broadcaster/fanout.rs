//! Fan-out threads: room frames go straight from the hub into the sockets of the sessions that
//! keep up, without waking each session's task.
//!
//! The hub queues a room frame in every member's outbox under its lock (that keeps each
//! session's frames in room order and a subscription exact) and hands the outboxes that got
//! something to [`Fanout::flush`]. A few threads (one per core by default, `FANOUT_THREADS`)
//! then write each outbox's queue with one vectored `write` on its socket. A session whose
//! socket takes everything costs one lock and one syscall per wake-up and no task switch; one
//! that cannot take everything (a full socket buffer, a partial write, a TLS connection, a
//! writer already busy) is handed to its own writer task, which waits for the socket with its
//! deadlines as before ([`super::writer`]).
//!
//! Why threads and not the session tasks: at 10,000 clients a tick is 10,000 wake-ups, each a
//! task switch and a poll of the whole session future, serialised behind one another; the
//! delivery of one tick was a queue that took ~170 ms of CPU to drain. Here a tick is a few
//! batches, split evenly across the threads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread;

use metrics::{counter, histogram};

use super::outbox::{Closing, Flushed, LatencyTally, Outbox};
use crate::telemetry as m;

/// Batches waiting for one thread at most; past it the caller writes the batch itself (a
/// burst is never dropped and never waits).
const QUEUED_BATCHES: usize = 1024;

/// The fan-out threads. Cheap to clone; the threads end when the last clone is dropped.
#[derive(Clone)]
pub struct Fanout {
    threads: Arc<Vec<SyncSender<Vec<Arc<Outbox>>>>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fanout({} threads)", self.threads.len())
    }
}

impl Fanout {
    /// Starts `threads` fan-out threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let mut senders = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = sync_channel(QUEUED_BATCHES);
            thread::Builder::new()
                .name(format!("fanout-{i}"))
                .spawn(move || run(rx))?;
            senders.push(tx);
        }
        Ok(Self {
            threads: Arc::new(senders),
        })
    }

    /// Writes what each outbox has queued, spread evenly over the threads; returns at once.
    pub fn flush(&self, mut outboxes: Vec<Arc<Outbox>>) {
        if outboxes.is_empty() {
            return;
        }
        let n = self.threads.len();
        let chunk = outboxes.len().div_ceil(n);
        let mut parts = Vec::with_capacity(n);
        while outboxes.len() > chunk {
            parts.push(outboxes.split_off(outboxes.len() - chunk));
        }
        parts.push(outboxes);
        for (thread, part) in self.threads.iter().zip(parts) {
            match thread.try_send(part) {
                Ok(()) => {}
                Err(TrySendError::Full(part) | TrySendError::Disconnected(part)) => {
                    counter!(m::FANOUT_FLUSHES, "path" => "inline").increment(part.len() as u64);
                    flush_all(&part);
                }
            }
        }
    }
}

fn run(batches: Receiver<Vec<Arc<Outbox>>>) {
    while let Ok(batch) = batches.recv() {
        flush_all(&batch);
    }
}

/// Flushes every outbox of a batch and counts, once per batch, how each went.
fn flush_all(batch: &[Arc<Outbox>]) {
    let started = std::time::Instant::now();
    let (mut direct, mut writer) = (0u64, 0u64);
    let mut latency = LatencyTally::default();
    for outbox in batch {
        // A flush that panicked would leave this session (and, uncaught, the rest of the
        // batch) queued with nobody to write it: the session ends instead, the batch goes on.
        match catch_unwind(AssertUnwindSafe(|| outbox.flush(&mut latency))) {
            Ok(Flushed::Written(_)) => direct += 1,
            Ok(Flushed::Handed(_)) => writer += 1,
            Err(_) => {
                tracing::error!("a fan-out flush panicked; closing that connection");
                outbox.close(Closing::Abort);
            }
        }
    }
    latency.record();
    histogram!(m::FANOUT_BATCH).record(started.elapsed().as_secs_f64());
    counter!(m::FANOUT_FLUSHES, "path" => "direct").increment(direct);
    counter!(m::FANOUT_FLUSHES, "path" => "writer").increment(writer);
}
