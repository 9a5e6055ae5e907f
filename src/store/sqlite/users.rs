//! The index by user: a database of its own beside the store
//! (`easehook-users.db`), filled a step at a time by a background thread at
//! the lowest priority, so that `user=` queries never slow the writer.

use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::schema::*;

/// The columns the console's filters need, added to a store made before
/// them: the users of an event (events stored earlier have none, and are
/// not found by user), and the dead deliveries in id order (the
/// dead-letter list, newest first, without sorting the queue).
pub(super) fn migrate_users(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('events') WHERE name = 'from_user')",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(
            "ALTER TABLE events ADD COLUMN from_user TEXT;
             ALTER TABLE events ADD COLUMN to_user TEXT;",
        )?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(id) WHERE status = 'dead';",
    )
}

/// The index of events by user: a database of its own beside the store
/// (`easehook-users.db`), attached as `users`, holding (user, received
/// at, the event's rowid) for the `from` and the `to` user of each event.
///
/// A thread of its own fills it once a second ([`index_users`], at most
/// [`USERS_STEP`] events a step), off the writer: an index by user in the store itself takes a page for
/// every user a commit names, written with every group commit, which cost
/// the request path 40% of its throughput; and steps on the writer's
/// thread, 13%. The thread runs at nice 19: under a load that takes every
/// core, it falls behind and catches up after. The events not yet indexed
/// are those after the mark (a rowid), and a query by user reads them
/// directly. The index is derived from the events: lost, behind or left
/// from a store that was removed, it is filled again from them, so it is
/// written without waiting for the disk (`synchronous=NORMAL`).
///
/// Stores of the earliest layout keep their events without a rowid: they
/// have no such index, and a query by user reads the users of each event.
pub(super) const USERS_DB: &str = "easehook-users.db";

/// Events indexed by user in one step at most.
pub(super) const USERS_STEP: i64 = 50_000;

/// How often the users of new events are indexed.
pub(super) const USERS_EVERY: Duration = Duration::from_secs(1);

/// How often the index rows of pruned events are removed.
pub(super) const USERS_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// A connection to the store at `path` with the index by user attached
/// (and made when it is not there).
pub(super) fn with_users(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open(path)?;
    let users = path.with_file_name(USERS_DB);
    conn.execute("ATTACH DATABASE ?1 AS users", [users.to_string_lossy()])?;
    let mode: String = conn.query_row("PRAGMA users.journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite did not switch the index by user to WAL");
    }
    conn.execute_batch(
        "PRAGMA users.synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS users.event_users (
             name      TEXT NOT NULL,
             at        INTEGER NOT NULL,
             event_row INTEGER NOT NULL,
             PRIMARY KEY (name, at, event_row)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS users.mark (last INTEGER NOT NULL);
         INSERT INTO users.mark(last) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM users.mark);",
    )?;
    Ok(conn)
}

/// The last events rowid whose users are indexed.
pub(super) fn users_indexed(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT last FROM users.mark", [], |r| r.get(0))
}

/// Index the users of the events stored since the last step (at most
/// [`USERS_STEP`] of them), in one transaction of the index's database
/// only, in key order. Returns how many events it took.
pub(super) fn index_users(conn: &Connection) -> rusqlite::Result<i64> {
    let from = users_indexed(conn)?;
    let newest: i64 =
        conn.query_row("SELECT coalesce(max(rowid), 0) FROM main.events", [], |r| {
            r.get(0)
        })?;
    // Deferred: the store itself is only read, and its writer never waits.
    let tx = conn.unchecked_transaction()?;
    // A mark past the newest event (the newest is never pruned) is of a
    // store that is no longer there (`easehook.db` removed or replaced and
    // the index left): the index starts over.
    let from = if from > newest {
        tx.execute_batch("DELETE FROM users.event_users")?;
        0
    } else {
        from
    };
    let to = newest.min(from + USERS_STEP);
    if to <= from {
        tx.commit()?;
        return Ok(0);
    }
    // One pass over the events, two rows each (one when an event names
    // the same user twice), inserted in key order: each user's last page
    // is written once a step.
    tx.prepare_cached(
        "INSERT OR IGNORE INTO users.event_users(name, at, event_row)
         SELECT CASE k WHEN 1 THEN from_user ELSE to_user END AS name, received_at, rowid
         FROM main.events, (SELECT 1 AS k UNION ALL SELECT 2)
         WHERE rowid > ?1 AND rowid <= ?2 AND name <> '' AND (k = 1 OR to_user IS NOT from_user)
         ORDER BY name, received_at, rowid",
    )?
    .execute([from, to])?;
    tx.prepare_cached("UPDATE users.mark SET last = ?1")?
        .execute([to])?;
    tx.commit()?;
    Ok(to - from)
}

/// Remove the index rows of events older than any the store still holds
/// (pruning takes the oldest first). Rows of an event pruned while an
/// older one waits for its deliveries stay until that one goes; a query
/// joins them to no event. A scan of the whole index, with no index of
/// time to keep up on every step: it runs every [`USERS_PRUNE_EVERY`], off
/// the writer.
pub(super) fn prune_users(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM users.event_users
         WHERE at < (SELECT coalesce(min(received_at), 0) FROM main.events)",
    )?
    .execute([])
}

/// Lower the calling thread to nice 19: for work that may wait for any
/// other (the embedded store's index by user). Lowering is always
/// allowed; a sandbox that refuses it leaves the thread where it was.
pub fn background_self() {
    // SAFETY: setpriority has no memory effects; on Linux, `who = 0` with
    // PRIO_PROCESS names the calling thread only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
}

/// The index's thread: a step every [`USERS_EVERY`] until the store is
/// dropped (`stop` disconnects).
pub(super) fn users_indexer(conn: Connection, stop: mpsc::Receiver<()>) {
    // The index may fall behind under load (queries read what it has not
    // taken yet): it yields to the writer and the request path.
    background_self();
    let mut pruned = std::time::Instant::now();
    loop {
        if let Err(e) = index_users(&conn) {
            tracing::warn!(error = %e, "store: cannot index the users of new events; will try again");
        }
        if pruned.elapsed() >= USERS_PRUNE_EVERY {
            pruned = std::time::Instant::now();
            if let Err(e) = prune_users(&conn) {
                tracing::warn!(error = %e, "store: cannot prune the index by user; will try again");
            }
        }
        // Once a second even when behind: a step that follows another at
        // once keeps taking what the writer would use (measured, (a) at
        // 0.86 of the build before the index against 0.94–0.97).
        match stop.recv_timeout(USERS_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    }
}
