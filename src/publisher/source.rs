//! Reads the active events from PostgreSQL through the active-events SQL file.
//!
//! The query is data, not code: the built-in `sql/active_events.sql` serves our schema,
//! `sql/prisma/active_events.sql` an existing Prisma-style one, and an operator may point
//! `ACTIVE_EVENTS_SQL` at any query returning the documented columns (sql/README.md).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, PgPool, Row, postgres::PgRow};

use crate::odds::{EventInput, OutcomeInput};

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
        })
    }

    /// The pool the query runs on.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Runs the query and groups its rows into events, in publishing order.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn active_events(&self) -> anyhow::Result<Vec<EventInput>> {
        let mut rows = sqlx::query(AssertSqlSafe(self.sql.clone())).fetch(&self.pool);
        let mut events: Vec<EventInput> = Vec::new();
        // Rows of one event are adjacent, so grouping needs only the last event.
        while let Some(row) = rows
            .try_next()
            .await
            .context("Failed to run the active-events query")?
        {
            let event_id: String = column(&row, "event_id")?;
            let outcome = outcome_from_row(&row)?;
            match events.last_mut() {
                Some(last) if last.id == event_id => last.outcomes.extend(outcome),
                _ => {
                    if self.max_events.is_some_and(|max| events.len() >= max) {
                        break;
                    }
                    let mut event = event_from_row(&row, event_id)?;
                    event.outcomes.extend(outcome);
                    events.push(event);
                }
            }
        }
        Ok(events)
    }
}

fn column<'r, T>(row: &'r PgRow, name: &str) -> anyhow::Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name)
        .with_context(|| format!("active-events query: column {name:?} is missing or of the wrong type (see sql/README.md)"))
}

fn event_from_row(row: &PgRow, id: String) -> anyhow::Result<EventInput> {
    let start_time: Option<DateTime<Utc>> = column(row, "start_time")?;
    Ok(EventInput {
        id,
        title: column::<Option<String>>(row, "title")?.unwrap_or_default(),
        sport: column(row, "sport")?,
        league: column(row, "league")?,
        team_a: column(row, "team_a")?,
        team_b: column(row, "team_b")?,
        is_esports: column::<Option<bool>>(row, "is_esports")?.unwrap_or(false),
        live: column::<Option<bool>>(row, "live")?.unwrap_or(false),
        game_status: column(row, "game_status")?,
        score: column(row, "score")?,
        period: column(row, "period")?,
        elapsed: column(row, "elapsed")?,
        start_time,
        liquidity: column(row, "liquidity")?,
        outcomes: Vec::new(),
    })
}

/// The outcome on this row; `None` for an event without outcomes (a LEFT JOIN miss).
fn outcome_from_row(row: &PgRow) -> anyhow::Result<Option<OutcomeInput>> {
    let Some(name) = column::<Option<String>>(row, "outcome_name")? else {
        return Ok(None);
    };
    Ok(Some(OutcomeInput {
        name,
        external_price: column(row, "outcome_price")?,
        // NULL volume means no pending bets.
        pending_volume: column::<Option<f64>>(row, "pending_volume")?.unwrap_or(0.0),
    }))
}
