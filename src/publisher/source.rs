//! Reads the active events from PostgreSQL through the active-events SQL file.
//!
//! The query is data, not code: the built-in `sql/active_events.sql` serves our schema,
//! `sql/prisma/active_events.sql` an existing Prisma-style one, and an operator may point
//! `ACTIVE_EVENTS_SQL` at any query returning the documented columns (sql/README.md).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::TryStreamExt;
use metrics::counter;
use sqlx::{AssertSqlSafe, PgPool, postgres::PgRow};

use super::decode::{self, DecodeError, Timestamp};
use crate::odds::hybrid::MAX_OUTCOMES;
use crate::odds::{EventInput, OutcomeInput, Unusable};
use crate::telemetry as m;

/// The query that ships with the schema in `migrations/`.
pub const BUILTIN_ACTIVE_EVENTS_SQL: &str = include_str!("../../sql/active_events.sql");

/// The active-events query and the pool it runs on.
#[derive(Clone)]
pub struct Source {
    /// Shared PostgreSQL pool (the leader lock holds its own connection outside it).
    pool: PgPool,
    /// The query text, loaded once at start so a bad path fails at boot, not at the first tick.
    sql: Arc<str>,
    /// Optional cap on the number of events published (`MAX_EVENTS`).
    max_events: Option<usize>,
    /// What was already reported, so each problem is logged and counted once when it
    /// appears rather than on every tick.
    reported: Arc<Mutex<Reported>>,
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
    /// Loads the query from `path`, or uses the built-in one.
    pub fn new(
        pool: PgPool,
        path: Option<&Path>,
        max_events: Option<usize>,
    ) -> anyhow::Result<Self> {
        let sql: Arc<str> = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("Failed to read ACTIVE_EVENTS_SQL {}", path.display()))?
                .into(),
            None => BUILTIN_ACTIVE_EVENTS_SQL.into(),
        };
        anyhow::ensure!(!sql.trim().is_empty(), "the active-events query is empty");
        Ok(Self {
            pool,
            sql,
            max_events,
            reported: Arc::default(),
        })
    }

    /// The pool the query runs on.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Runs the query and groups its rows into events by id, in the order each id first
    /// appears (the publishing order). A row that cannot be read hurts only its event (which is
    /// suspended with the column in its reason); a column whose type cannot be read at all
    /// fails the tick with a message naming the column and the cast to add.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn active_events(&self) -> anyhow::Result<Vec<EventInput>> {
        let mut rows = sqlx::query(AssertSqlSafe(self.sql.clone())).fetch(&self.pool);
        let mut events: Vec<EventInput> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut reports: HashMap<String, Vec<Note>> = HashMap::new();
        let mut null_ids = 0usize;
        let mut checked_columns = false;
        while let Some(row) = rows
            .try_next()
            .await
            .context("Failed to run the active-events query")?
        {
            if !checked_columns {
                check_columns(&row)?;
                checked_columns = true;
            }
            // A row without a readable id cannot be attributed to any event: it is skipped.
            let Ok(Some(event_id)) = value(decode::text(&row, "event_id"))? else {
                null_ids += 1;
                continue;
            };
            let position = match index.get(event_id.as_ref()) {
                Some(&i) => i,
                None => {
                    if self.max_events.is_some_and(|max| events.len() >= max) {
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
        self.report(reports, null_ids);
        Ok(events)
    }

    /// Logs and counts each event's row problems once, when they appear (not every tick), and
    /// forgets events whose problems are gone so a recurrence is reported again.
    fn report(&self, current: HashMap<String, Vec<Note>>, null_ids: usize) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.events.retain(|id, _| current.contains_key(id));
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
        reported.null_ids = null_ids > 0;
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

/// Names every missing column at once, so an operator fixes the query in one go.
fn check_columns(row: &PgRow) -> anyhow::Result<()> {
    use sqlx::{Column, Row};
    let present: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    let missing: Vec<&str> = COLUMNS
        .into_iter()
        .filter(|c| !present.contains(c))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "active-events query: missing column(s) {} (it returns {}; see sql/README.md)",
        missing.join(", "),
        present.join(", ")
    );
    Ok(())
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
