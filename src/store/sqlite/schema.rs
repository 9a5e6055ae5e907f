//! The embedded store's schema: the tables, the connection settings every
//! connection opens with, the layouts of earlier versions and the meta
//! values that remember what a store was made by.

use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// Page size of a new store, in bytes (see [`open`] for why).
pub(super) const PAGE_SIZE: u32 = 2048;

/// The schema.
///
/// - `events` is a rowid table: its rows carry the callback's body, and a
///   `WITHOUT ROWID` table keeps whole rows in its interior pages too and
///   spills rows over about 1,000 bytes into overflow pages (a full page
///   for the rest of each row). The key's own index stays small, and with
///   time-ordered ids (UUIDv7) both grow at their right edge.
/// - `dedup` has small rows and is `WITHOUT ROWID`: one B-tree, not a table
///   and its key's index. Its keys start with the callId, which grows with
///   time, so they too are added at the right edge: with a day's keys in
///   the table, a hashed key would dirty a random page per callback, to be
///   written to the WAL and copied again by the checkpoint.
/// - The due index holds only the deliveries a query looks for (pending and
///   dead), so a delivery that is sent leaves it instead of moving within
///   it, and it stays the size of the queue.
/// - An event's deliveries are found by their ids, which the event row
///   holds as a range (`first_delivery` to `last_delivery`): the writer
///   inserts them back to back in the event's commit, so no other event's
///   delivery falls between. An index of deliveries by event would cost an
///   insert per delivery (a tenth of the writer's work), and a foreign key
///   to the event would need that index for every event pruned.
///
/// `CREATE … IF NOT EXISTS`: a store created by an earlier version keeps
/// its layout (a `WITHOUT ROWID` events table, `AUTOINCREMENT` delivery ids,
/// a full due index, 4 KiB pages, deliveries found through an index and a
/// foreign key), and every query works on all of them ([`Layout`]).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    id             TEXT PRIMARY KEY NOT NULL,
    dedup_key      TEXT NOT NULL,
    event          TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    rules          TEXT NOT NULL,
    body           TEXT NOT NULL,
    first_delivery INTEGER,
    last_delivery  INTEGER
);
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE TABLE IF NOT EXISTS dedup (
    key          TEXT PRIMARY KEY,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup(expires_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,
    action          TEXT NOT NULL,
    rule            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    leased_until    INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at)
    WHERE status = 'pending' OR status = 'dead';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    code        INTEGER,
    error       TEXT,
    PRIMARY KEY (delivery_id, n)
) WITHOUT ROWID;
PRAGMA user_version = 1;
"#;

/// How a store finds an event's deliveries: by the range of ids its row
/// holds (stores created by this version), or through the index
/// `deliveries_event` (earlier versions, whose deliveries also carry a
/// foreign key to their event, so an event must be stored first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    Ranges,
    Indexed,
}

impl Layout {
    pub(super) fn of(conn: &Connection) -> rusqlite::Result<Self> {
        let ranges: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('events') WHERE name = 'first_delivery')",
            [],
            |r| r.get(0),
        )?;
        Ok(if ranges {
            Layout::Ranges
        } else {
            Layout::Indexed
        })
    }

    /// An event's deliveries: `?1` its id, `?2` and `?3` the range its row
    /// holds (unused by [`Layout::Indexed`]).
    pub(super) fn deliveries_of_event(self) -> &'static str {
        match self {
            Layout::Ranges => {
                "SELECT id, action, status, attempts, rule FROM deliveries
                 WHERE id BETWEEN ?2 AND ?3 AND event_id = ?1 ORDER BY id"
            }
            Layout::Indexed => {
                "SELECT id, action, status, attempts, rule FROM deliveries
                 WHERE event_id = ?1 AND ?2 IS ?2 AND ?3 IS ?3 ORDER BY id"
            }
        }
    }

    /// The range of an event's deliveries, as columns of `events`.
    pub(super) fn range_columns(self) -> &'static str {
        match self {
            Layout::Ranges => "first_delivery, last_delivery",
            Layout::Indexed => "NULL, NULL",
        }
    }

    /// Delete the events before `?1` that have no delivery left.
    pub(super) fn prune_events(self) -> &'static str {
        match self {
            // The newest event stays: a rowid is never taken twice, and
            // the index by user points at events by rowid. (Both layouts
            // keep it, so that both prune alike.)
            Layout::Ranges => {
                "DELETE FROM events WHERE received_at < ?1
                 AND rowid < (SELECT max(rowid) FROM events)
                 AND NOT EXISTS (SELECT 1 FROM deliveries d
                                 WHERE d.id BETWEEN events.first_delivery AND events.last_delivery)
                 AND NOT EXISTS (SELECT 1 FROM aggregate_events a WHERE a.event_id = events.id)"
            }
            Layout::Indexed => {
                "DELETE FROM events WHERE received_at < ?1
                 AND id < (SELECT max(id) FROM events)
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)
                 AND NOT EXISTS (SELECT 1 FROM aggregate_events a WHERE a.event_id = events.id)"
            }
        }
    }
}

pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Only this process writes; a lock held longer than this is an outside
    // tool, and the callback is better answered 503 than kept waiting.
    conn.busy_timeout(Duration::from_secs(1))?;
    // Set before the first write, so it applies to a new store only. Every
    // commit writes each page it touched whole, and most pages a commit
    // touches hold one new row or index entry: the right edge of each
    // table and index. Pages of 2 KiB
    // halve those bytes (a third less written per callback, measured) and
    // still hold a callback of up to ~2 KB in one row.
    conn.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE}"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite did not switch to WAL");
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    // Every statement the writer and the readers use stays compiled:
    // rusqlite keeps 16 by default, fewer than the writer's queue,
    // outcome, digest and threshold statements, and one evicted is parsed
    // and planned again on its next use.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Until when (ms since the epoch) the store may hold dedup keys in the
/// form of earlier versions: the bare hash, without the callId in front
/// that now keeps keys in time order. The first open by this version notes
/// when the last of them expires (no store: never), and until then a
/// callback whose hash is such a key is a repeat too.
pub(super) fn legacy_keys_until(conn: &Connection) -> rusqlite::Result<i64> {
    if let Some(until) = meta(conn, LEGACY_KEYS_UNTIL)?.and_then(|v| v.parse().ok()) {
        return Ok(until);
    }
    let until: i64 = conn.query_row("SELECT coalesce(max(expires_at), 0) FROM dedup", [], |r| {
        r.get(0)
    })?;
    set_meta(conn, LEGACY_KEYS_UNTIL, &until.to_string())?;
    Ok(until)
}

/// The `meta` entry of [`legacy_keys_until`].
pub(super) const LEGACY_KEYS_UNTIL: &str = "dedup_legacy_keys_until";

/// A value of the `meta` table.
pub(super) fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub(super) fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
        [key, value],
    )
    .map(drop)
}
