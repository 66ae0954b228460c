//! Reads events from PostgreSQL through the active-events and changed-events SQL files.
//!
//! The queries are data, not code: the built-in `sql/active_events.sql` and
//! `sql/changed_events.sql` serve our schema, `sql/prisma/` an existing Prisma-style one, and
//! an operator may point `ACTIVE_EVENTS_SQL` and `CHANGED_EVENTS_SQL` at any queries returning
//! the documented columns (sql/README.md).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use metrics::counter;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Either, Executor, PgPool, SqlSafeStr, Statement, TypeInfo};

use super::decode::{self, DecodeError, Timestamp};
use crate::odds::hybrid::MAX_OUTCOMES;
use crate::odds::{EventInput, OutcomeInput, Unusable};
use crate::telemetry as m;

/// The query that ships with the schema in `migrations/`.
pub const BUILTIN_ACTIVE_EVENTS_SQL: &str = include_str!("../../sql/active_events.sql");

/// The changed-events query that ships with the schema in `migrations/` (it consumes the
/// `event_changes` log).
pub const BUILTIN_CHANGED_EVENTS_SQL: &str = include_str!("../../sql/changed_events.sql");

/// Change-log rows deleted per statement when the log is drained before a full read.
const DRAIN_BATCH: i64 = 50_000;

/// The queries and the pool they run on.
#[derive(Clone)]
pub struct Source {
    /// Shared PostgreSQL pool (the leader lock holds its own connection outside it).
    pool: PgPool,
    /// The query text, loaded once at start so a bad path fails at boot, not at the first tick.
    sql: Arc<str>,
    /// The changed-events query; `None` means every tick reads everything.
    changed_sql: Option<Arc<str>>,
    /// Optional cap on the number of events published (`MAX_EVENTS`).
    max_events: Option<usize>,
    /// What was already reported, so each problem is logged and counted once when it
    /// appears rather than on every tick.
    reported: Arc<Mutex<Reported>>,
}

/// What a changed-events read returned.
#[derive(Debug, Default)]
pub struct Changed {
    /// The changed events that are active, in publishing order.
    pub events: Vec<EventInput>,
    /// The changed events that are not active any more (or were deleted).
    pub gone: Vec<String>,
}

impl Changed {
    /// Every id the read named, active or gone.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.events
            .iter()
            .map(|e| e.id.as_str())
            .chain(self.gone.iter().map(String::as_str))
    }
}

/// Which events a read covers, for forgetting reported problems that are gone.
enum Scope {
    /// Every active event: problems of events not read are gone.
    All,
    /// Only the events read: problems of other events stay as they were.
    Read,
}

/// Row problems reported on the previous tick.
#[derive(Default)]
struct Reported {
    /// By event id: the signature of its problems.
    events: HashMap<String, String>,
    /// Rows with a NULL or unreadable `event_id` were seen.
    null_ids: bool,
}

impl Source {
    /// Loads the queries: `path` or the built-in active-events query, and `changed` or, with
    /// the built-in active query, the built-in changed query. With a custom active query and
    /// no changed query, or with `max_events` (the cap needs the whole order), every tick
    /// reads everything.
    pub fn new(
        pool: PgPool,
        path: Option<&Path>,
        changed: Option<&Path>,
        max_events: Option<usize>,
    ) -> anyhow::Result<Self> {
        let read = |path: &Path, name: &str| -> anyhow::Result<Arc<str>> {
            let sql = std::fs::read_to_string(path)
                .with_context(|| format!("Failed to read {name} {}", path.display()))?;
            anyhow::ensure!(!sql.trim().is_empty(), "{name} {} is empty", path.display());
            Ok(sql.into())
        };
        let sql = match path {
            Some(path) => read(path, "ACTIVE_EVENTS_SQL")?,
            None => BUILTIN_ACTIVE_EVENTS_SQL.into(),
        };
        let changed_sql = match (changed, path) {
            (Some(changed), _) => Some(read(changed, "CHANGED_EVENTS_SQL")?),
            (None, None) => Some(BUILTIN_CHANGED_EVENTS_SQL.into()),
            (None, Some(_)) => None,
        };
        let changed_sql = match (changed_sql, max_events) {
            (Some(_), Some(max)) => {
                tracing::info!(
                    max,
                    "MAX_EVENTS is set: every tick reads all active events (the cap needs the whole order)"
                );
                None
            }
            (changed_sql, _) => changed_sql,
        };
        Ok(Self {
            pool,
            sql,
            changed_sql,
            max_events,
            reported: Arc::default(),
        })
    }

    /// The pool the queries run on.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Whether ticks can read only what changed.
    pub fn incremental(&self) -> bool {
        self.changed_sql.is_some()
    }

    /// Runs the active-events query on a connection of the pool (see [`Source::read_all`]).
    pub async fn active_events(&self) -> anyhow::Result<Vec<EventInput>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("Failed to connect to PostgreSQL")?;
        self.read_all(&mut conn).await
    }

    /// Runs the active-events query and groups its rows into events by id, in the order each
    /// id first appears (the publishing order). A row that cannot be read hurts only its event
    /// (which is suspended with the column in its reason); a column whose type cannot be read
    /// at all fails the tick with a message naming the column and the cast to add.
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn read_all(&self, conn: &mut PgConnection) -> anyhow::Result<Vec<EventInput>> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.clone())).fetch(conn);
        let read = self
            .collect(rows, Scope::All)
            .await
            .context("Failed to run the active-events query")?;
        Ok(read.events)
    }

    /// Runs the changed-events query (which may consume a change log: run it in the
    /// transaction that commits once the result is published). `since` is bound to `$1` when
    /// the query has it: `timestamptz`, or `timestamp` (then as UTC).
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn read_changed(
        &self,
        conn: &mut PgConnection,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Changed> {
        let Some(sql) = &self.changed_sql else {
            anyhow::bail!("no changed-events query is configured");
        };
        let statement = (&mut *conn)
            .prepare(AssertSqlSafe(sql.clone()).into_sql_str())
            .await
            .context("Failed to prepare the changed-events query")?;
        let types = match statement.parameters() {
            Some(Either::Left(types)) => types.to_vec(),
            _ => Vec::new(),
        };
        let query = match types.as_slice() {
            [] => statement.query(),
            [t] if t.name() == "TIMESTAMPTZ" => statement.query().bind(since),
            [t] if t.name() == "TIMESTAMP" => statement.query().bind(since.naive_utc()),
            [t] => anyhow::bail!(
                "the changed-events query's $1 is {}; it must be a time (write $1::timestamptz)",
                t.name()
            ),
            more => anyhow::bail!(
                "the changed-events query takes {} parameters; it may use only $1 (timestamptz)",
                more.len()
            ),
        };
        self.collect(query.fetch(conn), Scope::Read)
            .await
            .context("Failed to run the changed-events query")
    }

    /// Deletes the whole change log in bounded statements (before a full read, which covers
    /// every change committed so far). Returns the rows deleted.
    pub async fn drain_changes(&self) -> anyhow::Result<u64> {
        let mut drained = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM event_changes WHERE id = ANY (ARRAY(SELECT id FROM event_changes ORDER BY id LIMIT $1))",
            )
            .bind(DRAIN_BATCH)
            .execute(&self.pool)
            .await
            .context("Failed to clear the change log (event_changes; run `oddsfeed migrate`)")?
            .rows_affected();
            drained += done;
            if done < DRAIN_BATCH as u64 {
                return Ok(drained);
            }
        }
    }

    /// Vacuums the change log: every row is dead within a tick, and a server without
    /// autovacuum would otherwise leave the consuming index scan a growing tail of dead
    /// entries to step over. Cannot run in a transaction; a failure (another owner) is only
    /// logged.
    pub async fn vacuum_changes(&self) {
        if let Err(error) = sqlx::query("VACUUM (SKIP_LOCKED) event_changes")
            .execute(&self.pool)
            .await
        {
            tracing::debug!(%error, "could not vacuum the change log");
        }
    }

    /// Groups rows into events by id (see [`Source::read_all`]). In [`Scope::Read`] each row
    /// also has `active`; rows of inactive events only name the event as gone.
    async fn collect(
        &self,
        mut rows: impl Stream<Item = Result<PgRow, sqlx::Error>> + Unpin,
        scope: Scope,
    ) -> anyhow::Result<Changed> {
        let with_active = matches!(scope, Scope::Read);
        let mut gone: Vec<String> = Vec::new();
        let mut events: Vec<EventInput> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut reports: HashMap<String, Vec<Note>> = HashMap::new();
        let mut null_ids = 0usize;
        let mut checked_columns = false;
        while let Some(row) = rows.try_next().await? {
            if !checked_columns {
                check_columns(&row, with_active)?;
                checked_columns = true;
            }
            // A row without a readable id cannot be attributed to any event: it is skipped.
            let Ok(Some(event_id)) = value(decode::text(&row, "event_id"))? else {
                null_ids += 1;
                continue;
            };
            if with_active && !active(&row)? {
                if !gone.iter().any(|id| id == event_id.as_ref()) {
                    gone.push(event_id.into_owned());
                }
                continue;
            }
            let position = match index.get(event_id.as_ref()) {
                Some(&i) => i,
                None => {
                    if !with_active && self.max_events.is_some_and(|max| events.len() >= max) {
                        continue;
                    }
                    let mut event_notes = Vec::new();
                    let event = event_from_row(&row, event_id.as_ref(), &mut event_notes)?;
                    let i = events.len();
                    index.insert(event.id.clone(), i);
                    if !event_notes.is_empty() {
                        reports.insert(event.id.clone(), event_notes);
                    }
                    events.push(event);
                    i
                }
            };
            let event = &mut events[position];
            match outcome_from_row(&row)? {
                Ok(None) => {}
                Ok(Some(outcome)) => add_outcome(event, outcome),
                Err(reason) => reject(event, reason),
            }
        }
        for event in &events {
            if let Some(reason) = &event.rejected {
                reports
                    .entry(event.id.clone())
                    .or_default()
                    .push(Note::suspended(reason));
            }
        }
        let read = match scope {
            Scope::All => None,
            Scope::Read => Some(
                index
                    .keys()
                    .map(String::as_str)
                    .chain(gone.iter().map(String::as_str))
                    .collect::<std::collections::HashSet<&str>>(),
            ),
        };
        self.report(reports, null_ids, read.as_ref());
        Ok(Changed { events, gone })
    }

    /// Logs and counts each event's row problems once, when they appear (not every tick), and
    /// forgets events whose problems are gone so a recurrence is reported again. `read` limits
    /// the forgetting to the events a changed-events read covered.
    fn report(
        &self,
        current: HashMap<String, Vec<Note>>,
        null_ids: usize,
        read: Option<&std::collections::HashSet<&str>>,
    ) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.events.retain(|id, _| {
            current.contains_key(id) || read.is_some_and(|read| !read.contains(id.as_str()))
        });
        for (id, notes) in current {
            let signature: String = notes
                .iter()
                .map(|n| format!("{}:{};", n.column, n.problem))
                .collect();
            if reported.events.get(&id) == Some(&signature) {
                continue;
            }
            for note in &notes {
                counter!(m::SOURCE_VALUE_PROBLEMS, "column" => note.column, "problem" => note.problem)
                    .increment(1);
                tracing::warn!(event = %id, column = note.column, problem = note.problem, detail = %note.detail, "active-events row");
            }
            reported.events.insert(id, signature);
        }
        if null_ids > 0 && !reported.null_ids {
            counter!(m::SOURCE_VALUE_PROBLEMS, "column" => "event_id", "problem" => "null")
                .increment(null_ids as u64);
            tracing::warn!(
                rows = null_ids,
                "active-events query returned rows with a NULL or unreadable event_id; they are skipped"
            );
        }
        // A partial read says nothing about rows it did not read.
        if read.is_none() || null_ids > 0 {
            reported.null_ids = null_ids > 0;
        }
    }
}

/// The result columns of the active-events query (sql/README.md).
pub const COLUMNS: [&str; 17] = [
    "event_id",
    "title",
    "sport",
    "league",
    "team_a",
    "team_b",
    "is_esports",
    "live",
    "game_status",
    "score",
    "period",
    "elapsed",
    "start_time",
    "liquidity",
    "outcome_name",
    "outcome_price",
    "pending_volume",
];

/// The extra column of the changed-events query: whether the event is active now.
pub const ACTIVE_COLUMN: &str = "active";

/// Names every missing column at once, so an operator fixes the query in one go.
fn check_columns(row: &PgRow, with_active: bool) -> anyhow::Result<()> {
    use sqlx::{Column, Row};
    let present: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    let missing: Vec<&str> = COLUMNS
        .into_iter()
        .chain(with_active.then_some(ACTIVE_COLUMN))
        .filter(|c| !present.contains(c))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "missing column(s) {} (the query returns {}; see sql/README.md)",
        missing.join(", "),
        present.join(", ")
    );
    Ok(())
}

/// The `active` column of a changed-events row; NULL counts as not active.
fn active(row: &PgRow) -> anyhow::Result<bool> {
    match decode::boolean(row, ACTIVE_COLUMN) {
        Ok(v) => Ok(v.unwrap_or(false)),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Something about an event's source rows that an operator should hear of once.
#[derive(Debug, Clone)]
struct Note {
    column: &'static str,
    /// `out_of_range` (value published as null), `truncated`, or `suspended`.
    problem: &'static str,
    detail: String,
}

impl Note {
    fn suspended(reason: &Unusable) -> Self {
        let column = match reason {
            Unusable::BadValue { column, .. } => column,
            _ => "outcome_name",
        };
        Note {
            column,
            problem: reason.label(),
            detail: reason.to_string(),
        }
    }
}

/// Longest text value published (bytes); longer values are cut at a character boundary. A
/// megabyte title would otherwise ride along with every change of its event to every client.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Splits a decode result: `Ok(Ok(v))`, `Ok(Err(reason))` for a bad value (the event is
/// suspended), `Err` for a type problem (the tick fails).
fn value<T>(result: Result<T, DecodeError>) -> anyhow::Result<Result<T, Unusable>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(DecodeError::Value { column, detail }) => {
            Ok(Err(Unusable::BadValue { column, detail }))
        }
        Err(e @ DecodeError::Type { .. }) => Err(anyhow::anyhow!("{e}")),
    }
}

fn reject(event: &mut EventInput, reason: Unusable) {
    if event.rejected.is_none() {
        event.rejected = Some(reason);
    }
}

fn add_outcome(event: &mut EventInput, outcome: OutcomeInput) {
    if event.outcomes.len() >= MAX_OUTCOMES {
        // Counts every outcome past the cap; it outranks an earlier reason.
        match &mut event.rejected {
            Some(Unusable::TooManyOutcomes(n)) => *n += 1,
            other => *other = Some(Unusable::TooManyOutcomes(MAX_OUTCOMES + 1)),
        }
        return;
    }
    if event.outcomes.iter().any(|o| o.name == outcome.name) {
        reject(event, Unusable::DuplicateOutcome(outcome.name.clone()));
        return;
    }
    event.outcomes.push(outcome);
}

/// The longest prefix of `text` within [`MAX_TEXT_BYTES`] that ends on a character boundary.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A text value cut to [`MAX_TEXT_BYTES`], noted when it was longer.
fn bounded(text: Cow<'_, str>, column: &'static str, notes: &mut Vec<Note>) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.into_owned();
    }
    let kept = cut(&text);
    notes.push(Note {
        column,
        problem: "truncated",
        detail: format!("{} bytes cut to {}", text.len(), kept.len()),
    });
    kept.to_string()
}

/// An id or outcome name longer than [`MAX_TEXT_BYTES`] cannot be shortened without risking
/// a clash with another one: its event is suspended.
fn too_long(column: &'static str) -> Unusable {
    Unusable::BadValue {
        column,
        detail: format!("longer than {MAX_TEXT_BYTES} bytes"),
    }
}

fn event_from_row(row: &PgRow, id: &str, notes: &mut Vec<Note>) -> anyhow::Result<EventInput> {
    let mut rejected: Option<Unusable> = None;
    let mut first_bad = |r: Unusable| {
        if rejected.is_none() {
            rejected = Some(r);
        }
    };
    let mut text =
        |column: &'static str, notes: &mut Vec<Note>| -> anyhow::Result<Option<String>> {
            Ok(match value(decode::text(row, column))? {
                Ok(v) => v.map(|t| bounded(t, column, notes)),
                Err(reason) => {
                    first_bad(reason);
                    None
                }
            })
        };
    let title = text("title", notes)?.unwrap_or_default();
    let sport = text("sport", notes)?;
    let league = text("league", notes)?;
    let team_a = text("team_a", notes)?;
    let team_b = text("team_b", notes)?;
    let game_status = text("game_status", notes)?;
    let score = text("score", notes)?;
    let period = text("period", notes)?;
    let elapsed = text("elapsed", notes)?;
    let mut flag = |column: &'static str| -> anyhow::Result<bool> {
        Ok(match value(decode::boolean(row, column))? {
            Ok(v) => v.unwrap_or(false),
            Err(reason) => {
                first_bad(reason);
                false
            }
        })
    };
    let is_esports = flag("is_esports")?;
    let live = flag("live")?;
    let start_time = match value(decode::timestamp(row, "start_time"))? {
        Ok(Some(Timestamp::At(at))) => Some(at),
        Ok(Some(Timestamp::OutOfRange)) => {
            notes.push(Note {
                column: "start_time",
                problem: "out_of_range",
                detail: "outside years 0000-9999 (or infinity); published as null".into(),
            });
            None
        }
        Ok(None) => None,
        Err(reason) => {
            first_bad(reason);
            None
        }
    };
    let liquidity = match value(decode::number(row, "liquidity"))? {
        Ok(v) => v,
        Err(reason) => {
            first_bad(reason);
            None
        }
    };
    if id.len() > MAX_TEXT_BYTES {
        first_bad(too_long("event_id"));
    }
    Ok(EventInput {
        id: cut(id).to_string(),
        title,
        sport,
        league,
        team_a,
        team_b,
        is_esports,
        live,
        game_status,
        score,
        period,
        elapsed,
        start_time,
        liquidity,
        outcomes: Vec::new(),
        rejected,
    })
}

/// The outcome on this row; `Ok(None)` for an event without outcomes (a LEFT JOIN miss), and
/// the reason when one of its values cannot be read.
fn outcome_from_row(row: &PgRow) -> anyhow::Result<Result<Option<OutcomeInput>, Unusable>> {
    let name = match value(decode::text(row, "outcome_name"))? {
        Ok(Some(name)) if name.len() <= MAX_TEXT_BYTES => name.into_owned(),
        Ok(Some(_)) => return Ok(Err(too_long("outcome_name"))),
        Ok(None) => return Ok(Ok(None)),
        Err(reason) => return Ok(Err(reason)),
    };
    let external_price = match value(decode::number(row, "outcome_price"))? {
        Ok(v) => v,
        Err(reason) => return Ok(Err(reason)),
    };
    let pending_volume = match value(decode::number(row, "pending_volume"))? {
        // NULL volume means no pending bets.
        Ok(v) => v.unwrap_or(0.0),
        Err(reason) => return Ok(Err(reason)),
    };
    Ok(Ok(Some(OutcomeInput {
        name,
        external_price,
        pending_volume,
    })))
}
