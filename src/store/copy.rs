//! `easehook store copy`: the embedded store moved into an empty PostgreSQL
//! database, so that a user who outgrows one machine keeps the queue and
//! the history (SPEC §9).
//!
//! Everything is copied as it is — events, dedup keys, and deliveries
//! pending, sent and dead, with their ids, attempts and errors — in one
//! transaction: the target holds all of it or none. Leases are not copied:
//! the daemon is stopped (the embedded store's lock proves it), so no
//! attempt is in flight and every pending delivery is due on the target.

use std::path::Path;

use rusqlite::OpenFlags;
use serde::Serialize;

use super::StoreError;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;

/// Rows read and written per statement.
const BATCH: i64 = 1000;

/// What was copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Copied {
    pub events: u64,
    /// Attempts kept with the deliveries.
    pub attempts: u64,
    pub dedup_keys: u64,
    pub pending: u64,
    pub sent: u64,
    pub dead: u64,
}

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target already holds easehook's data.
    #[error(
        "the target database is not empty ({events} event(s), {deliveries} delivery(ies)): store copy only fills an empty database"
    )]
    NotEmpty { events: i64, deliveries: i64 },
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Target(String),
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        CopyError::Source(format!("cannot read the embedded store: {e}"))
    }
}

impl From<tokio_postgres::Error> for CopyError {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyError::Target(StoreError::from(e).0)
    }
}

/// Copy the embedded store in `state_dir` into the database of `target`
/// (already migrated by [`PgStore::connect`]), digests and thresholds
/// (open digests, windows, cooldowns) with the rest. The embedded store is
/// opened first, which fails while a daemon holds it.
pub async fn copy(state_dir: &Path, target: &PgStore) -> Result<Copied, CopyError> {
    let source = SqliteStore::open(state_dir).map_err(|e| CopyError::Source(format!("{e:#}")))?;
    let conn = rusqlite::Connection::open_with_flags(
        source.path(),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut client = target
        .pool()
        .get()
        .await
        .map_err(|e| CopyError::Target(StoreError::from(e).0))?;
    let tx = client.transaction().await?;
    // Nothing else writes while the copy runs, and it sees what is there.
    tx.batch_execute(
        "LOCK TABLE events, dedup, deliveries, attempts, aggregates, aggregate_events, threshold_groups,
         threshold_hits IN EXCLUSIVE MODE",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries),
                    (SELECT count(*) FROM dedup)",
            &[],
        )
        .await?;
    let (events, deliveries, keys): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if events > 0 || deliveries > 0 || keys > 0 {
        return Err(CopyError::NotEmpty { events, deliveries });
    }
    let mut copied = Copied::default();

    let mut after = String::new();
    loop {
        let mut stmt = conn.prepare_cached(
            "SELECT id, dedup_key, event, received_at, rules, body, from_user, to_user FROM events
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        type Users = (Option<String>, Option<String>);
        type Event = (String, String, String, i64, String, String, Users);
        let rows: Vec<Event> = stmt
            .query_map(rusqlite::params![after, BATCH], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    (r.get(6)?, r.get(7)?),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let from: Vec<Option<&str>> = rows.iter().map(|r| r.6.0.as_deref()).collect();
        let to: Vec<Option<&str>> = rows.iter().map(|r| r.6.1.as_deref()).collect();
        let col = |f: fn(&Event) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let at: Vec<i64> = rows.iter().map(|r| r.3).collect();
        tx.execute(
            "INSERT INTO events(id, dedup_key, event, received_at, rules, body, from_user, to_user)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                  $7::text[], $8::text[])",
            &[
                &col(|r| &r.0),
                &col(|r| &r.1),
                &col(|r| &r.2),
                &at,
                &col(|r| &r.4),
                &col(|r| &r.5),
                &from,
                &to,
            ],
        )
        .await?;
        copied.events += rows.len() as u64;
    }

    let mut after = String::new();
    loop {
        let mut stmt = conn.prepare_cached(
            "SELECT key, expires_at FROM dedup WHERE key > ?1 ORDER BY key LIMIT ?2",
        )?;
        let rows: Vec<(String, i64)> = stmt
            .query_map(rusqlite::params![after, BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let expires: Vec<i64> = rows.iter().map(|r| r.1).collect();
        tx.execute(
            "INSERT INTO dedup(key, expires_at) SELECT * FROM unnest($1::text[], $2::bigint[])",
            &[&keys, &expires],
        )
        .await?;
        copied.dedup_keys += rows.len() as u64;
    }

    let mut after = 0i64;
    loop {
        let mut stmt = conn.prepare_cached(
            "SELECT id, event_id, action, rule, status, attempts, next_attempt_at, last_error,
                    created_at, updated_at, aggregate_id
             FROM deliveries WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        type Delivery = (
            i64,
            String,
            String,
            String,
            String,
            i32,
            i64,
            Option<String>,
            i64,
            i64,
            Option<i64>,
        );
        let rows: Vec<Delivery> = stmt
            .query_map(rusqlite::params![after, BATCH], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        for r in &rows {
            match r.4.as_str() {
                "pending" => copied.pending += 1,
                "sent" => copied.sent += 1,
                _ => copied.dead += 1,
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let text = |f: fn(&Delivery) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let attempts: Vec<i32> = rows.iter().map(|r| r.5).collect();
        let next: Vec<i64> = rows.iter().map(|r| r.6).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|r| r.7.as_deref()).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.8).collect();
        let updated: Vec<i64> = rows.iter().map(|r| r.9).collect();
        let aggregates: Vec<Option<i64>> = rows.iter().map(|r| r.10).collect();
        tx.execute(
            "INSERT INTO deliveries(id, event_id, action, rule, status, attempts, next_attempt_at,
                                    last_error, created_at, updated_at, aggregate_id)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::int[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[],
                                  $11::bigint[])",
            &[
                &ids,
                &text(|r| &r.1),
                &text(|r| &r.2),
                &text(|r| &r.3),
                &text(|r| &r.4),
                &attempts,
                &next,
                &errors,
                &created,
                &updated,
                &aggregates,
            ],
        )
        .await?;
    }
    // Every attempt, in batches by key, each batch one JSON array whose
    // keys are the column names.
    let cols = columns(&conn, "attempts")?;
    let mut after = (0i64, 0i64);
    loop {
        let (rows, n, last): (String, i64, Option<(i64, i64)>) = conn.query_row(
            &format!(
                "WITH b AS (SELECT * FROM attempts WHERE (delivery_id, n) > (?1, ?2)
                            ORDER BY delivery_id, n LIMIT ?3)
                 SELECT coalesce(json_group_array(json_object({cols})), '[]'), count(*),
                        (SELECT delivery_id FROM b ORDER BY delivery_id DESC, n DESC LIMIT 1),
                        (SELECT n FROM b ORDER BY delivery_id DESC, n DESC LIMIT 1)
                 FROM b"
            ),
            rusqlite::params![after.0, after.1, BATCH],
            |r| {
                let last = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?) {
                    (Some(d), Some(n)) => Some((d, n)),
                    _ => None,
                };
                Ok((r.get(0)?, r.get(1)?, last))
            },
        )?;
        let Some(last) = last else { break };
        tx.execute(
            "INSERT INTO attempts SELECT * FROM jsonb_populate_recordset(NULL::attempts, $1::text::jsonb)",
            &[&rows],
        )
        .await?;
        copied.attempts += n as u64;
        after = last;
    }
    // Digests and thresholds: their state is small (bounded by the groups
    // of the retention period), so each table goes over as one JSON array
    // whose keys are the column names.
    for table in AGGREGATE_TABLES {
        let rows: String = conn.query_row(
            &format!(
                "SELECT coalesce(json_group_array(json_object({})), '[]') FROM {table}",
                columns(&conn, table)?
            ),
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            &format!("INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb)"),
            &[&rows],
        )
        .await?;
    }
    // New deliveries continue after the copied ids, so an id never names
    // two deliveries.
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('deliveries', 'id'), max(id)) FROM deliveries
         HAVING max(id) IS NOT NULL;
         SELECT setval(pg_get_serial_sequence('aggregates', 'id'), max(id)) FROM aggregates
         HAVING max(id) IS NOT NULL",
    )
    .await?;
    tx.commit().await?;
    drop(source);
    Ok(copied)
}

/// The tables of digests and thresholds, which both stores lay out alike.
const AGGREGATE_TABLES: [&str; 4] = [
    "aggregates",
    "aggregate_events",
    "threshold_groups",
    "threshold_hits",
];

/// `'col', col, …` of an embedded table, for `json_object`.
fn columns(conn: &rusqlite::Connection, table: &str) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names
        .iter()
        .map(|n| format!("'{n}', {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}
