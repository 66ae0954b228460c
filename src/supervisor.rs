//! Supervision of the long-running tasks (scheduler, NOTIFY listener, relay, dependency probe,
//! simulator).
//!
//! A task that panics or returns while the process is not shutting down must never disappear
//! quietly while `/health` says `ok`: the supervisor logs the cause, counts it in
//! `oddsfeed_task_restarts_total{task}`, marks the task down (so `/health` and the control
//! API's GET say so), waits with backoff (100 ms doubling to 5 s, reset after a minute of good
//! running) and starts a fresh instance of the task.
//!
//! Each task instance runs as its own tokio task so a panic unwinds only that instance; its
//! resources (the leader's lock session, Redis subscriptions) are dropped with it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, gauge};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry as m;

/// First wait before a restart (the default of `TASK_RESTART_BACKOFF_MS`).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A task that ran this long before failing starts again from the first backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What `/health` shows of one task.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Running, or waiting to be started again.
    pub status: TaskState,
    /// Restarts since the process started.
    pub restarts: u64,
    /// The most recent failure (panic message or unexpected exit), kept after recovery.
    pub last_failure: Option<String>,
    /// Without this task the process cannot do its job (`/health` answers 503 while it is down).
    #[serde(skip)]
    pub critical: bool,
}

/// Whether a supervised task runs right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    /// It failed and waits for its backoff before it is started again.
    Restarting,
}

impl TaskStatus {
    pub fn is_down(&self) -> bool {
        self.status != TaskState::Running
    }
}

/// The shared table of supervised tasks. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tasks {
    table: Arc<Mutex<BTreeMap<&'static str, TaskStatus>>>,
}

impl Tasks {
    fn update(&self, name: &'static str, f: impl FnOnce(&mut TaskStatus)) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = table.get_mut(name) {
            f(task);
        }
    }

    /// A copy of every task's status.
    pub fn snapshot(&self) -> BTreeMap<&'static str, TaskStatus> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The named task's status, if it is supervised here.
    pub fn get(&self, name: &str) -> Option<TaskStatus> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Whether the named task is registered and not running right now.
    pub fn is_down(&self, name: &str) -> bool {
        self.get(name).is_some_and(|t| t.is_down())
    }
}

/// Test-only fault injection: arms a panic inside a task's next poll. Disabled (every call a
/// no-op) unless `FAULT_INJECTION` is set; the HTTP hook is only routed then.
#[derive(Clone, Default)]
pub struct Faults {
    enabled: bool,
    armed: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Faults {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            armed: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn trigger(&self, task: &str) -> Arc<Notify> {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(task.to_string())
            .or_default()
            .clone()
    }

    /// Consumes an armed fault for `name` without waiting: true once per `arm`. For code that
    /// is not a supervised task (a WebSocket session) and checks at a point of its choosing.
    pub fn take(&self, name: &str) -> bool {
        use futures_util::FutureExt;
        self.enabled && self.trigger(name).notified().now_or_never().is_some()
    }

    /// Makes the named task panic at its next poll. Returns false when injection is disabled.
    pub fn arm(&self, task: &str) -> bool {
        if !self.enabled {
            return false;
        }
        self.trigger(task).notify_one();
        true
    }
}

/// Starts and restarts the long-running tasks.
#[derive(Clone)]
pub struct Supervisor {
    /// First wait before a restart; doubles per consecutive failure up to [`MAX_BACKOFF`].
    first_backoff: Duration,
    tasks: Tasks,
    faults: Faults,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Supervisor {
    pub fn new(
        tracker: TaskTracker,
        cancel: CancellationToken,
        faults: Faults,
        first_backoff: Duration,
    ) -> Self {
        Self {
            first_backoff,
            tasks: Tasks::default(),
            faults,
            tracker,
            cancel,
        }
    }

    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Runs `make(cancel)` as task `name` until shutdown, restarting it whenever it panics or
    /// returns before shutdown. `make` builds a fresh instance each time.
    pub fn spawn<F, Fut>(&self, name: &'static str, critical: bool, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name,
                TaskStatus {
                    status: TaskState::Running,
                    restarts: 0,
                    last_failure: None,
                    critical,
                },
            );
        gauge!(m::TASK_UP, "task" => name).set(1.0);
        counter!(m::TASK_RESTARTS, "task" => name).increment(0);
        let tasks = self.tasks.clone();
        let cancel = self.cancel.clone();
        let fault = self.faults.enabled.then(|| self.faults.trigger(name));
        let first_backoff = self.first_backoff;
        self.tracker.spawn(async move {
            let mut backoff = first_backoff;
            loop {
                let started = Instant::now();
                let task = make(cancel.child_token());
                let fault = fault.clone();
                let result = tokio::spawn(async move {
                    match fault {
                        Some(fault) => tokio::select! {
                            () = task => {}
                            () = fault.notified() => panic!("fault injected into task {name}"),
                        },
                        None => task.await,
                    }
                })
                .await;
                if cancel.is_cancelled() {
                    break;
                }
                let cause = match result {
                    Ok(()) => "exited unexpectedly".to_string(),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                    Err(e) => format!("ended: {e}"),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = first_backoff;
                }
                tracing::error!(task = name, %cause, restart_in = ?backoff, "task failed; restarting it");
                counter!(m::TASK_RESTARTS, "task" => name).increment(1);
                gauge!(m::TASK_UP, "task" => name).set(0.0);
                tasks.update(name, |t| {
                    t.status = TaskState::Restarting;
                    t.restarts += 1;
                    t.last_failure = Some(cause);
                });
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF.max(first_backoff));
                tasks.update(name, |t| t.status = TaskState::Running);
                gauge!(m::TASK_UP, "task" => name).set(1.0);
                tracing::info!(task = name, "task restarted");
            }
        });
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic with a non-text payload".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_reported() {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let supervisor = Supervisor::new(
            tracker.clone(),
            cancel.clone(),
            Faults::new(true),
            FIRST_BACKOFF,
        );
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervisor.spawn("flaky", true, move |cancel| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    panic!("first run fails");
                }
                cancel.cancelled().await;
            }
        });
        let tasks = supervisor.tasks();
        tokio::time::timeout(Duration::from_secs(5), async {
            while runs.load(Ordering::SeqCst) < 2 || tasks.is_down("flaky") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("restarted");
        let status = &tasks.snapshot()["flaky"];
        assert_eq!(status.restarts, 1);
        assert!(
            status
                .last_failure
                .as_deref()
                .unwrap()
                .contains("first run fails"),
            "{status:?}"
        );
        // An injected fault panics the running instance; it comes back again.
        assert!(supervisor.faults().arm("flaky"));
        tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.snapshot()["flaky"].restarts < 2 || tasks.is_down("flaky") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("restarted after the injected fault");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        cancel.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("stops on shutdown, without a restart");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn disabled_faults_do_nothing() {
        assert!(!Faults::new(false).arm("scheduler"));
    }
}
