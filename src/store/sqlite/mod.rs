//! The embedded store: SQLite in `state_dir/easehook.db`, WAL journal,
//! `synchronous=FULL` (a commit is on disk before it returns).
//!
//! One writer thread owns the write connection and **group-commits**: it
//! takes every command waiting in its queue, runs each in a savepoint of one
//! transaction, commits once (one fsync for the lot), and only then answers
//! each caller. Under load many callbacks share one fsync; alone, a callback
//! pays for exactly one. Reads for the admin API use a second connection,
//! which WAL lets run beside the writer.
//!
//! The writer thread is the one serial step of the request path, so it does
//! nothing that another thread can do: JSON is encoded before a command is
//! queued and decoded after its answer, its statements are prepared once
//! and cached, and checkpoints (copying the WAL into the database file) run
//! on a thread of their own ([`checkpointer`]). The one exception keeps the
//! WAL from growing under constant load: once it is past its limit, the
//! writer copies the last few milliseconds' worth itself between two
//! batches, so that its next transaction starts the WAL over.

mod aggregate;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, Statement, params};

use tokio::sync::oneshot;

use super::{
    Accepted, Attempt, AttemptInfo, Callbacks, Claimed, Counts, DeliveryBrief, DeliveryDetail,
    DeliveryInfo, DeliveryQuery, Dialect, EventInfo, EventQuery, Lease, NewEvent, OpenGroup, Param,
    Record, Replayed, Status, Store, StoreError, StoredAggregate,
};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Commands handled in one transaction at most.
const MAX_BATCH: usize = 512;

/// When the checkpointer copies the WAL into the database file, and when
/// the WAL starts over from its beginning.
#[derive(Clone, Copy, Debug)]
struct WalLimits {
    /// Copy once this many new pages are in the WAL…
    checkpoint_pages: i64,
    /// …or this long after a commit, whichever comes first. Letting
    /// commits gather means a page written by many of them (the right edge
    /// of an index) is copied once, and under a light load the database
    /// file is flushed about once a second instead of beside every commit.
    checkpoint_after: Duration,
    /// Once the WAL holds this many pages, the next commit is followed by a
    /// last copy on the writer's own connection, so that the WAL starts
    /// over (see [`finish_checkpoint`]).
    restart_pages: i64,
}

/// The limits of the daemon's store: SQLite's own default of 1,000 pages
/// for a checkpoint, and a WAL that starts over past 8192 pages (16 MiB of
/// 2 KiB pages).
const WAL_LIMITS: WalLimits = WalLimits {
    checkpoint_pages: 1000,
    checkpoint_after: Duration::from_secs(1),
    restart_pages: 8192,
};

/// How often the checkpointer looks at the WAL's growth while it waits.
const CHECKPOINT_POLL: Duration = Duration::from_millis(10);

/// Page size of a new store, in bytes (see [`open`] for why).
const PAGE_SIZE: u32 = 2048;

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
const SCHEMA: &str = r#"
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

/// The columns the console's filters need, added to a store made before
/// them: the users of an event (events stored earlier have none, and are
/// not found by user), and the dead deliveries in id order (the
/// dead-letter list, newest first, without sorting the queue).
fn migrate_users(conn: &Connection) -> rusqlite::Result<()> {
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
const USERS_DB: &str = "easehook-users.db";

/// Events indexed by user in one step at most.
const USERS_STEP: i64 = 50_000;

/// How often the users of new events are indexed.
const USERS_EVERY: Duration = Duration::from_secs(1);

/// How often the index rows of pruned events are removed.
const USERS_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// A connection to the store at `path` with the index by user attached
/// (and made when it is not there).
fn with_users(path: &Path) -> rusqlite::Result<Connection> {
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
fn users_indexed(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT last FROM users.mark", [], |r| r.get(0))
}

/// Index the users of the events stored since the last step (at most
/// [`USERS_STEP`] of them), in one transaction of the index's database
/// only, in key order. Returns how many events it took.
fn index_users(conn: &Connection) -> rusqlite::Result<i64> {
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
fn prune_users(conn: &Connection) -> rusqlite::Result<usize> {
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
fn users_indexer(conn: Connection, stop: mpsc::Receiver<()>) {
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

/// How a store finds an event's deliveries: by the range of ids its row
/// holds (stores created by this version), or through the index
/// `deliveries_event` (earlier versions, whose deliveries also carry a
/// foreign key to their event, so an event must be stored first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Ranges,
    Indexed,
}

impl Layout {
    fn of(conn: &Connection) -> rusqlite::Result<Self> {
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
    fn deliveries_of_event(self) -> &'static str {
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
    fn range_columns(self) -> &'static str {
        match self {
            Layout::Ranges => "first_delivery, last_delivery",
            Layout::Indexed => "NULL, NULL",
        }
    }

    /// Delete the events before `?1` that have no delivery left.
    fn prune_events(self) -> &'static str {
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

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A row of a claim, decoded into [`Claimed`] outside the writer.
struct ClaimedRow {
    id: i64,
    lease_until: u64,
    event_id: String,
    action: String,
    rule: String,
    attempts: u32,
    received_at: i64,
    body: String,
    /// The digest or firing the delivery is of.
    aggregate: Option<StoredAggregate>,
}

/// An event with its JSON already encoded.
struct Prepared {
    event: NewEvent,
    rules_json: String,
    window: u64,
}

enum Command {
    Accept(Box<Prepared>, Reply<Accepted>),
    Claim {
        now: u64,
        limit: usize,
        lease: u64,
        reply: Reply<Vec<ClaimedRow>>,
    },
    Record(Vec<(Lease, Record, Attempt)>, Reply<Vec<i64>>),
    Retry(Option<Vec<i64>>, u64, Reply<u64>),
    Replay(ReplayRequest, Reply<Vec<Replayed>>),
    Prune(u64, u64, Reply<u64>),
    Probe(Reply<()>),
    Ping(Reply<()>),
}

/// What a command produced inside the transaction; its caller hears of it
/// only once the transaction has committed.
enum Done {
    Accept(Result<Accepted, StoreError>),
    Claim(Result<Vec<ClaimedRow>, StoreError>),
    Unit(Result<(), StoreError>),
    Count(Result<u64, StoreError>),
    Stale(Result<Vec<i64>, StoreError>),
    Replayed(Result<Vec<Replayed>, StoreError>),
}

/// What [`Store::replay`] asks the writer.
struct ReplayRequest {
    events: Vec<(String, Vec<crate::store::NewDelivery>)>,
    now: u64,
    dry_run: bool,
}

impl Done {
    /// The failure of `c`, with this message.
    fn failed(c: &Command, msg: &str) -> Self {
        let e = StoreError(msg.to_string());
        match c {
            Command::Accept(..) => Done::Accept(Err(e)),
            Command::Claim { .. } => Done::Claim(Err(e)),
            Command::Record(..) => Done::Stale(Err(e)),
            Command::Probe(_) | Command::Ping(_) => Done::Unit(Err(e)),
            Command::Retry(..) | Command::Prune(..) => Done::Count(Err(e)),
            Command::Replay(..) => Done::Replayed(Err(e)),
        }
    }

    fn error(&self) -> Option<&StoreError> {
        match self {
            Done::Accept(Err(e))
            | Done::Claim(Err(e))
            | Done::Unit(Err(e))
            | Done::Count(Err(e))
            | Done::Stale(Err(e))
            | Done::Replayed(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// A write that failed: the store is not writable.
    fn failed_write(&self) -> bool {
        matches!(
            self,
            Done::Accept(Err(_))
                | Done::Unit(Err(_))
                | Done::Stale(Err(_))
                | Done::Replayed(Err(_))
        )
    }

    /// A real write (an event stored, an outcome recorded, a probe): it
    /// proves the store writable, where a commit that changed nothing
    /// proves nothing.
    fn wrote(&self) -> bool {
        matches!(
            self,
            Done::Accept(Ok(Accepted::New { .. })) | Done::Unit(Ok(())) | Done::Stale(Ok(_))
        )
    }
}

/// Answer the caller of `c`.
fn reply(c: Command, d: Done) {
    match (c, d) {
        (Command::Accept(_, tx), Done::Accept(r)) => drop(tx.send(r)),
        (Command::Claim { reply, .. }, Done::Claim(r)) => drop(reply.send(r)),
        (Command::Record(_, tx), Done::Stale(r)) => drop(tx.send(r)),
        (Command::Probe(tx) | Command::Ping(tx), Done::Unit(r)) => drop(tx.send(r)),
        (Command::Retry(_, _, tx) | Command::Prune(_, _, tx), Done::Count(r)) => drop(tx.send(r)),
        (Command::Replay(_, tx), Done::Replayed(r)) => drop(tx.send(r)),
        (c, _) => {
            let d = Done::failed(&c, "internal error: a command got another's answer");
            reply(c, d)
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    /// The writer's queue. `Sender` is `Sync`, so every thread sends
    /// without a lock: a lock here would be shared by the listeners and the
    /// delivery threads, and a delivery thread at `SCHED_IDLE` preempted
    /// while holding it would hold up every callback behind it.
    tx: mpsc::Sender<Command>,
    reader: Arc<Mutex<Connection>>,
    writable: Arc<AtomicBool>,
    path: PathBuf,
    layout: Layout,
    /// Dropped with the store: stops the index by user's thread.
    _users: mpsc::Sender<()>,
    /// `state_dir/easehook.lock`, locked for as long as the store is open.
    _lock: std::fs::File,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
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
fn legacy_keys_until(conn: &Connection) -> rusqlite::Result<i64> {
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
const LEGACY_KEYS_UNTIL: &str = "dedup_legacy_keys_until";

/// A value of the `meta` table.
fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
        [key, value],
    )
    .map(drop)
}

impl SqliteStore {
    /// Open (creating when needed) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(state_dir, WAL_LIMITS)
    }

    fn open_with(state_dir: &Path, limits: WalLimits) -> anyhow::Result<Self> {
        use anyhow::Context;
        // Creates `state_dir` when needed.
        let lock = super::lock_state_dir(state_dir)?;
        let path = state_dir.join("easehook.db");
        let writer =
            open(&path).with_context(|| format!("cannot open the store {}", path.display()))?;
        writer
            .execute_batch(SCHEMA)
            .and_then(|()| writer.execute_batch(aggregate::SCHEMA))
            .and_then(|()| aggregate::migrate(&writer))
            .and_then(|()| migrate_users(&writer))
            .with_context(|| format!("cannot create the schema in {}", path.display()))?;
        // This daemon owns the store: leases held by a previous process (which
        // crashed mid-attempt) are void, so those deliveries are due now.
        writer
            .execute(
                "UPDATE deliveries SET leased_until = NULL WHERE leased_until IS NOT NULL",
                [],
            )
            .context("cannot release old leases")?;
        // Checkpoints are the checkpointer's job, never a commit's. (The
        // pragma sets a WAL hook of its own, so ours comes after it.)
        writer
            .execute_batch("PRAGMA wal_autocheckpoint=0")
            .context("cannot configure the store")?;
        writer.wal_hook(Some(note_wal_pages));
        let legacy_keys_until = legacy_keys_until(&writer).context("cannot read the store")?;
        let layout = Layout::of(&writer).context("cannot read the store")?;
        let users = path.with_file_name(USERS_DB);
        let indexer = with_users(&path)
            .with_context(|| format!("cannot open the index by user {}", users.display()))?;
        let reader = with_users(&path)
            .with_context(|| format!("cannot open the store {}", path.display()))?;
        let (stop_users, users_stop) = mpsc::channel();
        if layout == Layout::Ranges {
            std::thread::Builder::new()
                .name("easehook-users".into())
                .spawn(move || users_indexer(indexer, users_stop))
                .context("cannot start the store's indexer")?;
        }
        let checkpoints =
            open(&path).with_context(|| format!("cannot open the store {}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        // Capacity 1: the writer's "there is something to checkpoint" never
        // blocks it, and many commits make one wake-up.
        let (committed_tx, committed_rx) = mpsc::sync_channel(1);
        let wal_pages = Arc::new(AtomicI64::new(0));
        let writable = Arc::new(AtomicBool::new(true));
        let flag = writable.clone();
        let pages = wal_pages.clone();
        let restart = Arc::new(AtomicBool::new(false));
        let restart_due = restart.clone();
        std::thread::Builder::new()
            .name("easehook-ckpt".into())
            .spawn(move || checkpointer(checkpoints, committed_rx, pages, restart_due, limits))
            .context("cannot start the store checkpointer")?;
        let committed = Committed {
            notify: committed_tx,
            wal_pages,
            restart,
        };
        std::thread::Builder::new()
            .name("easehook-store".into())
            .spawn(move || writer_loop(writer, rx, flag, committed, legacy_keys_until, layout))
            .context("cannot start the store writer")?;
        Ok(Self {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            writable,
            path,
            layout,
            _users: stop_users,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(make(tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err(StoreError("the store writer has stopped".into()));
            }
            rx.await
                .map_err(|_| StoreError("the store writer has stopped".into()))?
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let reader = self.reader.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = reader
                    .lock()
                    .map_err(|_| StoreError("reader lock poisoned".into()))?;
                f(&conn).map_err(StoreError::from)
            })
            .await
            .map_err(|e| StoreError(e.to_string()))?
        })
    }
}

thread_local! {
    /// Pages in the WAL after this thread's last commit, as SQLite's WAL
    /// hook reports them (the hook is a plain function: it cannot capture).
    static WAL_PAGES: Cell<i64> = const { Cell::new(0) };
}

fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages.into()));
    Ok(())
}

/// How the writer and the checkpointer tell each other what is due.
struct Committed {
    /// "There was a commit": capacity 1, so it never blocks the writer and
    /// many commits make one wake-up.
    notify: mpsc::SyncSender<()>,
    /// Pages in the WAL after the last commit.
    wal_pages: Arc<AtomicI64>,
    /// Set by the checkpointer: the WAL is long enough to start over, and
    /// the writer should finish the copy after its next commit.
    restart: Arc<AtomicBool>,
}

/// Copy committed pages from the WAL into the database file (see
/// [`WalLimits`] for when), until the writer stops.
///
/// Passive checkpoints run beside the writer without holding it up. But
/// SQLite starts the WAL over only when a transaction begins with every
/// page of it copied, and under constant load the writer has always
/// committed more by the time a pass ends: the WAL would grow for as long
/// as the load lasts (tens of megabytes a second, each write extending
/// the file, which costs the file system far more than overwriting it).
/// A checkpoint that waits for the writer (`RESTART`) does not help: it
/// polls for the write lock, and a writer that commits back to back never
/// lets go of it long enough. So once the WAL is past
/// [`WalLimits::restart_pages`], the checkpointer asks the writer to copy
/// the rest itself between two batches ([`finish_checkpoint`]).
fn checkpointer(
    conn: Connection,
    committed: mpsc::Receiver<()>,
    wal_pages: Arc<AtomicI64>,
    restart: Arc<AtomicBool>,
    limits: WalLimits,
) {
    // WAL pages already copied (SQLite counts them from the WAL's start).
    let mut copied = 0;
    while committed.recv().is_ok() {
        let since = std::time::Instant::now();
        loop {
            let pages = wal_pages.load(Ordering::Relaxed);
            // Fewer pages than were copied: the WAL has started over.
            let new = if pages < copied {
                pages
            } else {
                pages - copied
            };
            if new >= limits.checkpoint_pages || since.elapsed() >= limits.checkpoint_after {
                break;
            }
            std::thread::sleep(CHECKPOINT_POLL);
        }
        match wal_checkpoint(&conn, "PASSIVE") {
            Ok(Checkpoint { log, done, .. }) => {
                copied = done;
                if log >= limits.restart_pages {
                    restart.store(true, Ordering::Relaxed);
                }
            }
            // A full disk and the like: the next commit brings the next try.
            Err(e) => tracing::debug!(error = %e, "checkpoint failed"),
        }
    }
    // The writer has stopped: copy what is left, so the WAL is small when
    // the daemon starts next.
    let _ = wal_checkpoint(&conn, "TRUNCATE");
}

/// What `PRAGMA wal_checkpoint` reports.
struct Checkpoint {
    /// It could not finish: another checkpoint ran, or (modes that wait)
    /// the busy timeout passed.
    busy: bool,
    /// Frames in the WAL.
    log: i64,
    /// Frames copied into the database file.
    done: i64,
}

/// Run a checkpoint of `mode` (`PASSIVE`, `TRUNCATE`, …) on `conn`.
fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Checkpoint> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(Checkpoint {
            busy: r.get(0)?,
            log: r.get(1)?,
            done: r.get(2)?,
        })
    })
}

/// Between two batches, copy into the database file the pages the
/// checkpointer has not (the commits since its last pass: a few
/// milliseconds' worth), so that the whole WAL is copied and the writer's
/// next transaction starts it over from its beginning, overwriting what is
/// already on disk. False when that could not be done now: a reader still
/// uses an older snapshot, or the checkpointer is in a pass; the
/// checkpointer asks again after its next one.
fn finish_checkpoint(conn: &Connection) -> bool {
    match wal_checkpoint(conn, "PASSIVE") {
        Ok(Checkpoint { busy, log, done }) => !busy && log == done,
        Err(e) => {
            tracing::debug!(error = %e, "checkpoint failed");
            false
        }
    }
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    writable: Arc<AtomicBool>,
    committed: Committed,
    legacy_keys_until: i64,
    layout: Layout,
) {
    let mut w = match Writer::new(&conn, legacy_keys_until, layout) {
        Ok(w) => w,
        Err(e) => {
            // Cannot happen with a schema this code created; if it does,
            // every command gets the error rather than hanging.
            tracing::error!(error = %e, "store cannot prepare its statements");
            let msg = format!("cannot prepare statements: {e}");
            while let Ok(c) = rx.recv() {
                let d = Done::failed(&c, &msg);
                reply(c, d);
            }
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // Pings need no transaction: answering them proves the loop runs.
        let (pings, batch): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|c| matches!(c, Command::Ping(_)));
        for p in pings {
            reply(p, Done::Unit(Ok(())));
        }
        if batch.is_empty() {
            continue;
        }
        let done = match w.run_batch(&batch) {
            Ok(done) => done,
            Err(e) => {
                // One transaction for the lot failed. Run each command in a
                // transaction of its own, so that one bad command (or a disk
                // that has just filled up) fails only what it must.
                tracing::warn!(error = %e, commands = batch.len(), "store batch failed; running its commands one by one");
                batch.iter().map(|c| w.run_alone(c)).collect()
            }
        };
        if done.iter().any(Done::failed_write) {
            writable.store(false, Ordering::Relaxed);
        } else if done.iter().any(Done::wrote) {
            writable.store(true, Ordering::Relaxed);
        }
        for (c, d) in batch.into_iter().zip(done) {
            reply(c, d);
        }
        committed
            .wal_pages
            .store(WAL_PAGES.with(Cell::get), Ordering::Relaxed);
        let _ = committed.notify.try_send(());
        if committed.restart.swap(false, Ordering::Relaxed) && !finish_checkpoint(&conn) {
            tracing::debug!("the WAL could not start over yet");
        }
    }
}

/// The writer's connection with the statements of every callback prepared
/// once: fetching them from rusqlite's statement cache would hash the SQL
/// text and rebuild the cache key on every use.
struct Writer<'c> {
    conn: &'c Connection,
    begin: Statement<'c>,
    commit: Statement<'c>,
    claim_key: Statement<'c>,
    insert_event: Statement<'c>,
    insert_delivery: Statement<'c>,
    insert_done: Statement<'c>,
    /// See [`legacy_keys_until`]: until then, a repeat may be known by its
    /// key without the callId.
    legacy_keys_until: i64,
    legacy_key_seen: Statement<'c>,
    layout: Layout,
}

impl<'c> Writer<'c> {
    fn new(conn: &'c Connection, legacy_keys_until: i64, layout: Layout) -> rusqlite::Result<Self> {
        Ok(Self {
            conn,
            legacy_keys_until,
            layout,
            legacy_key_seen: conn.prepare(
                "SELECT EXISTS(SELECT 1 FROM dedup WHERE key = ?1 AND expires_at > ?2)",
            )?,
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            // One statement both checks and claims the key: a key that
            // exists and has not expired is left alone (no row changes),
            // which makes the event a duplicate.
            claim_key: conn.prepare(
                "INSERT INTO dedup(key, expires_at) VALUES(?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET expires_at = excluded.expires_at
                 WHERE dedup.expires_at <= ?3",
            )?,
            insert_event: conn.prepare(match layout {
                Layout::Ranges => "INSERT INTO events(id, dedup_key, event, received_at, rules, body, from_user, to_user, first_delivery, last_delivery)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                Layout::Indexed => "INSERT INTO events(id, dedup_key, event, received_at, rules, body, from_user, to_user)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            })?,
            insert_delivery: conn.prepare(
                "INSERT INTO deliveries(event_id, action, rule, status, attempts, next_attempt_at, leased_until, created_at, updated_at)
                 VALUES(?1, ?2, ?3, 'pending', 0, ?4, ?5, ?4, ?4)",
            )?,
            // Sent rows stay out of the due index: nothing to claim.
            insert_done: conn.prepare(
                "INSERT INTO deliveries(event_id, action, rule, status, attempts, next_attempt_at, created_at, updated_at)
                 VALUES(?1, ?2, ?3, 'sent', 1, ?4, ?4, ?4)",
            )?,
        })
    }

    fn begin(&mut self) -> rusqlite::Result<()> {
        self.begin.execute([]).map(drop)
    }

    fn commit(&mut self) -> rusqlite::Result<()> {
        self.commit.execute([]).map(drop)
    }

    fn rollback(&self) {
        // A failed statement may have ended the transaction already.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Run a batch as one transaction (one fsync). No savepoints: they would
    /// make SQLite copy every page a command touches into a statement
    /// journal. Any failure undoes the whole batch, and the caller runs it
    /// again command by command.
    fn run_batch(&mut self, batch: &[Command]) -> Result<Vec<Done>, StoreError> {
        self.begin()?;
        let mut done = Vec::with_capacity(batch.len());
        for c in batch {
            let d = self.run_command(c);
            if let Some(e) = d.error() {
                let e = StoreError(e.0.clone());
                self.rollback();
                return Err(e);
            }
            done.push(d);
        }
        if let Err(e) = self.commit() {
            self.rollback();
            tracing::error!(error = %e, "store commit failed");
            return Err(StoreError(format!("commit failed: {e}")));
        }
        Ok(done)
    }

    /// Run one command in a transaction of its own: a failure is its
    /// answer.
    fn run_alone(&mut self, c: &Command) -> Done {
        match self.run_batch(std::slice::from_ref(c)) {
            Ok(mut done) => done.pop().unwrap_or_else(|| Done::failed(c, "no result")),
            Err(e) => Done::failed(c, &e.0),
        }
    }

    fn accept(&mut self, p: &Prepared) -> rusqlite::Result<Accepted> {
        let ev = &p.event;
        let now = ev.received_at_ms as i64;
        if now < self.legacy_keys_until {
            let legacy = crate::callback::dedup_hash(&ev.dedup_key);
            let seen: bool = self
                .legacy_key_seen
                .query_row(params![legacy, now], |r| r.get(0))?;
            if seen {
                return Ok(Accepted::Duplicate);
            }
        }
        let claimed_key = self.claim_key.execute(params![
            ev.dedup_key,
            now.saturating_add(p.window as i64),
            now
        ])?;
        if claimed_key == 0 {
            return Ok(Accepted::Duplicate);
        }
        // Earlier layouts hold a foreign key from each delivery to its
        // event: the event goes first. This one stores the event last, with
        // the range of ids its deliveries got.
        if self.layout == Layout::Indexed {
            self.store_event(p, &[])?;
        }
        let lease = ev.lease_until.map(|t| t as i64);
        let mut ids = Vec::with_capacity(ev.deliveries.len());
        for d in &ev.deliveries {
            if d.done {
                self.insert_done.execute(params![
                    ev.id,
                    d.action.as_str(),
                    d.rule.as_str(),
                    now
                ])?;
            } else {
                self.insert_delivery.execute(params![
                    ev.id,
                    d.action.as_str(),
                    d.rule.as_str(),
                    now,
                    lease
                ])?;
            }
            ids.push(self.conn.last_insert_rowid());
        }
        // Digests opened and thresholds fired add deliveries of this event
        // (in its range of ids), which wait in the store.
        let (made, fired) = if ev.aggregates.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            aggregate::apply(self.conn, ev)?
        };
        if self.layout == Layout::Ranges {
            match made.last() {
                Some(&last) => {
                    let range = [ids.first().copied().unwrap_or(made[0]), last];
                    self.store_event(p, &range)?
                }
                None => self.store_event(p, &ids)?,
            }
        }
        Ok(Accepted::New {
            id: ev.id.clone(),
            deliveries: ids,
            fired,
        })
    }

    /// Insert the event's row; in [`Layout::Ranges`] with the range of
    /// `deliveries`, the ids its deliveries got.
    fn store_event(&mut self, p: &Prepared, deliveries: &[i64]) -> rusqlite::Result<()> {
        let ev = &p.event;
        let (first, last) = (deliveries.first(), deliveries.last());
        let values: [&dyn rusqlite::ToSql; 10] = [
            &ev.id,
            &ev.dedup_key,
            &ev.event.as_str(),
            &(ev.received_at_ms as i64),
            &p.rules_json,
            &ev.body,
            &ev.from_user.as_str(),
            &ev.to_user.as_str(),
            &first,
            &last,
        ];
        // The statement of an earlier layout takes the first eight.
        let n = match self.layout {
            Layout::Ranges => 10,
            Layout::Indexed => 8,
        };
        self.insert_event.execute(&values[..n]).map(drop)
    }

    fn run_command(&mut self, c: &Command) -> Done {
        let conn = self.conn;
        match c {
            Command::Accept(ev, _) => Done::Accept(self.accept(ev).map_err(Into::into)),
            Command::Claim {
                now, limit, lease, ..
            } => Done::Claim(claim(conn, *now, *limit, *lease).map_err(Into::into)),
            Command::Record(outcomes, _) => Done::Stale(record(conn, outcomes).map_err(Into::into)),
            Command::Retry(ids, now, _) => {
                Done::Count(retry(conn, ids.as_deref(), *now).map_err(Into::into))
            }
            Command::Prune(now, retention, _) => {
                Done::Count(prune(conn, self.layout, *now, *retention).map_err(Into::into))
            }
            Command::Replay(r, _) => {
                Done::Replayed(replay(conn, self.layout, r).map_err(Into::into))
            }
            Command::Ping(_) => Done::Unit(Ok(())),
            Command::Probe(_) => Done::Unit(
                set_meta(conn, "probe", &crate::now_ms().to_string()).map_err(Into::into),
            ),
        }
    }
}

/// Lease the `?3` deliveries due first at `?2` until `?1`.
const CLAIM_SQL: &str = "UPDATE deliveries SET leased_until = ?1
     WHERE id IN (SELECT id FROM deliveries
                  WHERE status = 'pending' AND next_attempt_at <= ?2
                    AND (leased_until IS NULL OR leased_until <= ?2)
                  ORDER BY next_attempt_at, id LIMIT ?3)
     RETURNING id, event_id, action, rule, attempts, aggregate_id";

/// When the next delivery that is waiting in the store falls due.
const NEXT_DUE_SQL: &str = "SELECT next_attempt_at FROM deliveries
     WHERE status = 'pending' AND leased_until IS NULL
     ORDER BY next_attempt_at LIMIT 1";

/// Pending and dead deliveries. Written with `OR` (not `IN`): that is the
/// form SQLite proves to be within the due index's `WHERE`.
const COUNTS_SQL: &str = "SELECT status, COUNT(*) FROM deliveries
     WHERE status = 'pending' OR status = 'dead' GROUP BY status";

fn claim(
    conn: &Connection,
    now: u64,
    limit: usize,
    lease: u64,
) -> rusqlite::Result<Vec<ClaimedRow>> {
    let lease_until = super::lease_end(now, lease) as i64;
    let now = now as i64;
    let mut stmt = conn.prepare_cached(CLAIM_SQL)?;
    let rows = stmt
        .query_map(params![lease_until, now, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ev = conn.prepare_cached("SELECT received_at, body FROM events WHERE id = ?1")?;
    let mut out: Vec<ClaimedRow> = Vec::with_capacity(rows.len());
    for (id, event_id, action, rule, attempts, aggregate_id) in rows {
        // A digest or firing renders its last event with the events kept.
        let aggregate = match aggregate_id {
            Some(a) => aggregate::claim(conn, a)?,
            None => None,
        };
        // Deliveries of one event share its body: read it once. (A digest's
        // or firing's callback is its last event's, which it carries.)
        let known = out
            .iter()
            .find(|c| c.event_id == event_id && c.aggregate.is_none())
            .map(|c| (c.received_at, c.body.clone()));
        let (received_at, body) = match known {
            _ if aggregate.is_some() => (0, String::new()),
            Some(v) => v,
            None => ev.query_row([&event_id], |r| Ok((r.get(0)?, r.get(1)?)))?,
        };
        out.push(ClaimedRow {
            id,
            lease_until: lease_until as u64,
            event_id,
            action,
            rule,
            attempts,
            received_at,
            body,
            aggregate,
        });
    }
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// Decode claimed rows (off the writer thread): each event's callback is
/// parsed once, however many of its deliveries were claimed.
fn decode(rows: Vec<ClaimedRow>) -> Vec<Claimed> {
    let mut callbacks = Callbacks::default();
    rows.into_iter()
        .map(|r| {
            let (callback, received_at_ms) = match &r.aggregate {
                Some(a) => a.last_callback(&mut callbacks),
                None => (callbacks.of(&r.event_id, &r.body), r.received_at as u64),
            };
            Claimed {
                callback,
                aggregate: r.aggregate.map(|a| Arc::new(a.decode(&mut callbacks))),
                id: r.id,
                lease_until: r.lease_until,
                event_id: r.event_id,
                action: r.action.into(),
                rule: r.rule.into(),
                attempts: r.attempts,
                received_at_ms,
            }
        })
        .collect()
}

/// Record each outcome under its claim, with the attempt made: a row whose
/// lease is no longer the one the attempt was made under is left alone,
/// and its id returned.
fn record(conn: &Connection, outcomes: &[(Lease, Record, Attempt)]) -> rusqlite::Result<Vec<i64>> {
    let now = crate::now_ms() as i64;
    let mut stale = Vec::new();
    for (lease, r, attempt) in outcomes {
        let (id, token) = (lease.id, lease.until as i64);
        let changed = match r {
            Record::Sent => conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, leased_until = NULL,
                     last_error = NULL, updated_at = ?2 WHERE id = ?1 AND leased_until = ?3",
                )?
                .execute(params![id, now, token])?,
            Record::Retry { at_ms, error, counted } => conn
                .prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + ?2, next_attempt_at = ?3, leased_until = NULL,
                     last_error = COALESCE(?4, last_error), updated_at = ?5 WHERE id = ?1 AND leased_until = ?6",
                )?
                .execute(params![
                    id,
                    i64::from(*counted),
                    *at_ms as i64,
                    if *counted { Some(error.as_str()) } else { None },
                    now,
                    token
                ])?,
            Record::Dead { error } => conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'dead', attempts = attempts + 1, leased_until = NULL,
                     last_error = ?2, updated_at = ?3 WHERE id = ?1 AND leased_until = ?4",
                )?
                .execute(params![id, error, now, token])?,
        };
        if changed == 0 {
            stale.push(id);
            continue;
        }
        if let Some((outcome, error)) = r.attempted() {
            // Numbered after the delivery's last one, found on the key.
            conn.prepare_cached(
                "INSERT INTO attempts(delivery_id, n, started_at, duration_ms, outcome, code, error)
                 SELECT ?1, coalesce(max(n), 0) + 1, ?2, ?3, ?4, ?5, ?6 FROM attempts WHERE delivery_id = ?1",
            )?
            .execute(params![
                id,
                attempt.started_at_ms as i64,
                attempt.duration_ms as i64,
                outcome,
                attempt.code,
                error.map(Attempt::bounded)
            ])?;
        }
    }
    Ok(stale)
}

/// See [`Store::replay`]. The writer is the only one: checking and
/// inserting need no lock. A new delivery of an old event lies beyond the
/// range of ids its row holds, so the range is widened to take it in (the
/// queries that read a range also match the event's id).
fn replay(conn: &Connection, layout: Layout, r: &ReplayRequest) -> rusqlite::Result<Vec<Replayed>> {
    let now = r.now as i64;
    let mut out = Vec::new();
    for (event_id, deliveries) in &r.events {
        let has: Vec<String> = match layout {
            Layout::Ranges => conn
                .prepare_cached(
                    "SELECT d.action FROM events e JOIN deliveries d
                       ON d.id BETWEEN e.first_delivery AND e.last_delivery AND d.event_id = e.id
                     WHERE e.id = ?1 AND d.aggregate_id IS NULL",
                )?
                .query_map([event_id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?,
            Layout::Indexed => conn
                .prepare_cached(
                    "SELECT action FROM deliveries WHERE event_id = ?1 AND aggregate_id IS NULL",
                )?
                .query_map([event_id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?,
        };
        let exists: bool = conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM events WHERE id = ?1)")?
            .query_row([event_id], |row| row.get(0))?;
        if !exists {
            continue;
        }
        for d in deliveries {
            if has.iter().any(|a| a == d.action.as_str()) {
                continue;
            }
            let delivery = if r.dry_run {
                None
            } else {
                conn.prepare_cached(
                    "INSERT INTO deliveries(event_id, action, rule, status, attempts, next_attempt_at, created_at, updated_at)
                     VALUES(?1, ?2, ?3, 'pending', 0, ?4, ?4, ?4)",
                )?
                .execute(params![event_id, d.action.as_str(), d.rule.as_str(), now])?;
                let id = conn.last_insert_rowid();
                if layout == Layout::Ranges {
                    conn.prepare_cached(
                        "UPDATE events SET first_delivery = coalesce(first_delivery, ?2),
                                           last_delivery = max(coalesce(last_delivery, ?2), ?2)
                         WHERE id = ?1",
                    )?
                    .execute(params![event_id, id])?;
                }
                Some(id)
            };
            out.push(Replayed {
                event_id: event_id.clone(),
                action: d.action.to_string(),
                rule: d.rule.to_string(),
                delivery,
            });
        }
    }
    Ok(out)
}

fn retry(conn: &Connection, ids: Option<&[i64]>, now: u64) -> rusqlite::Result<u64> {
    let now = now as i64;
    let sql = "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2, leased_until = NULL,
               updated_at = ?2 WHERE status = 'dead' AND (?1 IS NULL OR id = ?1)";
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(match ids {
        None => stmt.execute(params![Option::<i64>::None, now])? as u64,
        Some(ids) => {
            let mut n = 0;
            for id in ids {
                n += stmt.execute(params![Some(*id), now])? as u64;
            }
            n
        }
    })
}

/// Delete what is past `retention` (sent and dead deliveries, events left
/// with none) and dedup keys past their window. The newest delivery is
/// always kept: delivery ids are rowids, which SQLite hands out as the
/// largest plus one, so an emptied table would start again at 1 and an id
/// in an operator's notes could name another delivery. (`AUTOINCREMENT`
/// would keep them unique too, at the price of a write to
/// `sqlite_sequence` on every insert.)
fn prune(conn: &Connection, layout: Layout, now: u64, retention: u64) -> rusqlite::Result<u64> {
    let cutoff = now.saturating_sub(retention) as i64;
    let mut n = 0;
    // Only deliveries created before the cutoff can have been done before
    // it: they are the ids up to `bound`, and the rest of the table (all of
    // it, in a store younger than its retention) is not read.
    if let Some(bound) = created_before(conn, cutoff)? {
        let gone = "SELECT id FROM deliveries WHERE id <= ?2
                    AND status IN ('sent', 'dead') AND updated_at < ?1
                    AND id < (SELECT max(id) FROM deliveries)";
        // Attempts go with their delivery.
        conn.execute(
            &format!("DELETE FROM attempts WHERE delivery_id IN ({gone})"),
            [cutoff, bound],
        )?;
        n += conn.execute(
            &format!("DELETE FROM deliveries WHERE id IN ({gone})"),
            [cutoff, bound],
        )? as u64;
    }
    n += aggregate::prune(conn, now as i64, cutoff)?;
    n += conn.execute(layout.prune_events(), [cutoff])? as u64;
    conn.execute("DELETE FROM dedup WHERE expires_at <= ?1", [now as i64])?;
    Ok(n)
}

/// The largest delivery id created before `cutoff`; `None` when there is
/// none. Ids are given in the order deliveries are created, so they grow
/// with `created_at`: the ids are bisected, each step one lookup of the
/// primary key (about 21 for two million deliveries), where a condition on
/// `created_at` would read the whole table, under the writer, every
/// pruning.
fn created_before(conn: &Connection, cutoff: i64) -> rusqlite::Result<Option<i64>> {
    let mut at = conn.prepare_cached(
        "SELECT id, created_at FROM deliveries WHERE id >= ?1 ORDER BY id LIMIT 1",
    )?;
    let mut first_from = |id: i64| -> rusqlite::Result<Option<(i64, i64)>> {
        at.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    };
    let Some((mut lo, created)) = first_from(i64::MIN)? else {
        return Ok(None);
    };
    if created >= cutoff {
        return Ok(None);
    }
    let mut hi: i64 = conn.query_row("SELECT max(id) FROM deliveries", [], |r| r.get(0))?;
    // `lo` was created before the cutoff; no id above `hi` was.
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        match first_from(mid)? {
            Some((id, created)) if created < cutoff => lo = id.min(hi),
            _ => hi = mid - 1,
        }
    }
    Ok(Some(lo))
}

/// The columns [`delivery_row`] reads.
const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.event, d.action, d.rule, d.status, d.attempts,
     d.next_attempt_at, d.last_error, d.created_at, d.updated_at";

/// The events `from_where` selects (a `FROM … WHERE …` clause naming
/// `events` as `e`, with `params` bound from `?1`), each with its
/// deliveries.
fn events_where(
    c: &Connection,
    layout: Layout,
    from_where: &str,
    params: Vec<Param>,
) -> rusqlite::Result<Vec<EventInfo>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT e.id, e.event, e.received_at, e.rules, e.body, {} {from_where}",
        layout.range_columns()
    ))?;
    let values: Vec<rusqlite::types::Value> = params
        .into_iter()
        .map(|p| match p {
            Param::Int(i) => rusqlite::types::Value::Integer(i),
            Param::Text(t) => rusqlite::types::Value::Text(t),
        })
        .collect();
    type Row = (
        String,
        String,
        i64,
        String,
        String,
        Option<i64>,
        Option<i64>,
    );
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    let mut ds = c.prepare_cached(layout.deliveries_of_event())?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, event, received_at, rules, body, first, last) in rows {
        let deliveries = ds
            .query_map(params![id, first, last], |r| {
                let status: String = r.get(2)?;
                Ok(DeliveryBrief {
                    id: r.get(0)?,
                    action: r.get(1)?,
                    status: Status::parse(&status).unwrap_or(Status::Pending),
                    attempts: r.get(3)?,
                    rule: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        out.push(EventInfo {
            id,
            event,
            received_at: received_at as u64,
            rules: serde_json::from_str(&rules).unwrap_or_default(),
            deliveries,
            callback: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        });
    }
    Ok(out)
}

fn delivery_row(r: &rusqlite::Row) -> rusqlite::Result<DeliveryInfo> {
    let status: String = r.get(5)?;
    let status = Status::parse(&status).unwrap_or(Status::Pending);
    Ok(DeliveryInfo {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event: r.get(2)?,
        action: r.get(3)?,
        rule: r.get(4)?,
        status,
        attempts: r.get(6)?,
        next_attempt_at: (status == Status::Pending)
            .then(|| r.get::<_, i64>(7).map(|v| v as u64))
            .transpose()?,
        last_error: r.get(8)?,
        created_at: r.get::<_, i64>(9)? as u64,
        updated_at: r.get::<_, i64>(10)? as u64,
    })
}

impl Store for SqliteStore {
    fn accept(&self, event: NewEvent, window: u64) -> BoxFuture<'_, Result<Accepted, StoreError>> {
        let rules_json = serde_json::to_string(&event.rules).unwrap_or_else(|_| "[]".into());
        self.send(|r| {
            Command::Accept(
                Box::new(Prepared {
                    event,
                    rules_json,
                    window,
                }),
                r,
            )
        })
    }

    fn claim_due(
        &self,
        now: u64,
        limit: usize,
        lease: u64,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        let rows = self.send(|reply| Command::Claim {
            now,
            limit,
            lease,
            reply,
        });
        Box::pin(async move { rows.await.map(decode) })
    }

    fn record_attempts(
        &self,
        outcomes: Vec<(Lease, Record, Attempt)>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        self.send(|r| Command::Record(outcomes, r))
    }

    fn replay(
        &self,
        events: Vec<(String, Vec<crate::store::NewDelivery>)>,
        now: u64,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StoreError>> {
        let r = ReplayRequest {
            events,
            now,
            dry_run,
        };
        self.send(|tx| Command::Replay(r, tx))
    }

    fn delivery(&self, id: i64) -> BoxFuture<'_, Result<Option<DeliveryDetail>, StoreError>> {
        self.read(move |c| {
            let Some(delivery) = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                     WHERE d.id = ?1"
                ))?
                .query_row([id], delivery_row)
                .optional()?
            else {
                return Ok(None);
            };
            let attempts_made = c
                .prepare_cached(
                    "SELECT n, started_at, duration_ms, outcome, code, error FROM attempts
                     WHERE delivery_id = ?1 ORDER BY n",
                )?
                .query_map([id], |r| {
                    Ok(AttemptInfo {
                        n: r.get(0)?,
                        started_at: r.get::<_, i64>(1)? as u64,
                        duration_ms: r.get::<_, i64>(2)? as u64,
                        outcome: r.get(3)?,
                        code: r.get(4)?,
                        error: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(DeliveryDetail {
                delivery,
                attempts_made,
            }))
        })
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.read(|c| {
            // Leased deliveries are in flight here (the dispatcher hears when
            // they finish); the others are found through the due index,
            // without scanning the queue.
            c.query_row(NEXT_DUE_SQL, [], |r| r.get::<_, i64>(0))
                .optional()
                .map(|v| v.map(|v| v as u64))
        })
    }

    fn retry(&self, ids: Option<Vec<i64>>, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.send(|r| Command::Retry(ids, now, r))
    }

    fn query_deliveries(
        &self,
        q: DeliveryQuery,
    ) -> BoxFuture<'_, Result<Vec<DeliveryInfo>, StoreError>> {
        self.read(move |c| {
            let status = q.status_condition();
            // The dead-letter list walks its own index newest first; left
            // to itself the planner would take the queue's index and sort
            // every dead delivery.
            let index = match q.status {
                Some(Status::Dead) => "INDEXED BY deliveries_dead",
                _ => "",
            };
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d {index} JOIN events e ON e.id = d.event_id
                 WHERE (?2 IS NULL OR d.action = ?2) AND (?3 IS NULL OR d.id < ?3) {status}
                 ORDER BY d.id DESC LIMIT ?1"
            ))?;
            stmt.query_map(params![q.limit as i64, q.action, q.before], delivery_row)?
                .collect()
        })
    }

    fn query_events(&self, q: EventQuery) -> BoxFuture<'_, Result<Vec<EventInfo>, StoreError>> {
        let layout = self.layout;
        self.read(move |c| {
            let limit = Param::Int(q.limit as i64);
            // Stores of the earliest layout keep their events without a
            // rowid, which the index by user points at: there the users'
            // columns are read event by event.
            let user = q.user.clone().filter(|_| layout == Layout::Ranges);
            let Some(user) = user else {
                let (conditions, mut params) = q.conditions(Dialect::Sqlite, 2);
                params.insert(0, limit);
                return events_where(
                    c,
                    layout,
                    &format!(
                        "FROM events e WHERE 1 {conditions} ORDER BY received_at DESC, id DESC LIMIT ?1"
                    ),
                    params,
                );
            };
            // By user: the events indexed so far, walking the user's index
            // newest first (each row checked against its event: the index
            // is derived, the event is the record), and those stored since
            // the last indexing step, read directly (by rowid, not through
            // an index of time that would walk every event to find none);
            // merged.
            let mark = users_indexed(c)?;
            let (conditions, mut params) = q.conditions_on(Dialect::Sqlite, 3, "u.at");
            params.splice(0..0, [limit.clone(), Param::Text(user)]);
            let mut found = events_where(
                c,
                layout,
                &format!(
                    "FROM users.event_users u JOIN events e ON e.rowid = u.event_row
                     WHERE u.name = ?2 AND (e.from_user = ?2 OR e.to_user = ?2) {conditions}
                     ORDER BY u.at DESC, id DESC LIMIT ?1"
                ),
                params,
            )?;
            let (conditions, mut params) = q.conditions(Dialect::Sqlite, 3);
            params.splice(0..0, [limit, Param::Int(mark)]);
            found.extend(events_where(
                c,
                layout,
                &format!(
                    "FROM events e NOT INDEXED WHERE rowid > ?2 {conditions}
                     ORDER BY received_at DESC, id DESC LIMIT ?1"
                ),
                params,
            )?);
            // A step between the two reads may have put an event in both.
            found.sort_by(|a, b| (b.received_at, &b.id).cmp(&(a.received_at, &a.id)));
            found.dedup_by(|a, b| a.id == b.id);
            found.truncate(q.limit);
            Ok(found)
        })
    }

    fn event(&self, id: String) -> BoxFuture<'_, Result<Option<EventInfo>, StoreError>> {
        let layout = self.layout;
        self.read(move |c| {
            Ok(events_where(
                c,
                layout,
                "FROM events e WHERE id = ?1",
                vec![Param::Text(id)],
            )?
            .pop())
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
        self.read(|c| {
            let mut counts = Counts::default();
            let mut stmt = c.prepare_cached(COUNTS_SQL)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (s, n) = row?;
                if s == "pending" {
                    counts.pending = n as u64;
                } else {
                    counts.dead = n as u64;
                }
            }
            counts.digests_open = aggregate::open_count(c)?;
            Ok(counts)
        })
    }

    fn list_groups(&self, now: u64) -> BoxFuture<'_, Result<Vec<OpenGroup>, StoreError>> {
        self.read(move |c| aggregate::list(c, now))
    }

    fn prune(&self, now: u64, retention: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.send(|r| Command::Prune(now, retention, r))
    }

    fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.send(Command::Probe)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.send(Command::Ping)
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewDelivery;

    fn ev(id: &str, key: &str, actions: &[&str], at: u64) -> NewEvent {
        NewEvent {
            id: id.into(),
            dedup_key: key.into(),
            event: "roster:ban".into(),
            received_at_ms: at,
            body: serde_json::json!({"callId": id, "security": "s", "timestamp": at})
                .to_string()
                .into(),
            from_user: "alice".into(),
            to_user: "bob".into(),
            rules: vec!["r".into()],
            deliveries: actions
                .iter()
                .map(|a| NewDelivery {
                    action: (*a).into(),
                    rule: "r".into(),
                    done: false,
                })
                .collect(),
            lease_until: None,
            aggregates: Vec::new(),
        }
    }

    /// The actions of claimed deliveries, in order.
    fn actions(claimed: &[Claimed]) -> Vec<&str> {
        claimed.iter().map(|c| c.action.as_str()).collect()
    }

    /// The ids of the stored events, newest first.
    async fn event_ids(s: &SqliteStore) -> Vec<String> {
        s.list_events(0, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// Accept, dedup, claim, record, retry, list and reopen a store in
    /// `dir` (new, or made by an earlier version).
    async fn lifecycle(dir: &Path) {
        {
            let s = SqliteStore::open(dir).unwrap();
            let Accepted::New { id, deliveries, .. } = s
                .accept(ev("e1", "k1", &["a", "b"], 1000), 60_000)
                .await
                .unwrap()
            else {
                panic!("not stored")
            };
            assert_eq!((id.as_str(), deliveries.len()), ("e1", 2));
            assert_eq!(
                s.accept(ev("e2", "k1", &["a"], 2000), 60_000)
                    .await
                    .unwrap(),
                Accepted::Duplicate
            );
            // After the window the same key is a new event.
            assert!(matches!(
                s.accept(ev("e3", "k1", &[], 70_000), 60_000).await.unwrap(),
                Accepted::New { id, .. } if id == "e3"
            ));
            let claimed = s.claim_due(1000, 10, 30_000).await.unwrap();
            assert_eq!(actions(&claimed), ["a", "b"]);
            // Claimed in id order, each with its parsed callback.
            assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), deliveries);
            assert_eq!(claimed[0].callback.as_ref().unwrap().call_id, "e1");
            // Leased: not claimed twice.
            assert!(s.claim_due(1001, 10, 30_000).await.unwrap().is_empty());
            s.record(vec![
                (claimed[0].lease(), Record::Sent),
                (
                    claimed[1].lease(),
                    Record::Dead {
                        error: "410 Gone".into(),
                    },
                ),
            ])
            .await
            .unwrap();
            let counts = s.counts().await.unwrap();
            assert_eq!((counts.pending, counts.dead), (0, 1));
            let dead = s.list_deliveries(Some(Status::Dead), 10).await.unwrap();
            assert_eq!(dead[0].last_error.as_deref(), Some("410 Gone"));
            assert_eq!(s.retry(None, 5000).await.unwrap(), 1);
            let events = s.list_events(0, Some("roster".into()), 10).await.unwrap();
            assert_eq!(events.len(), 2);
            assert_eq!(events[1].deliveries.len(), 2);
            // A leased delivery is left behind by a "crash".
            assert_eq!(s.claim_due(5000, 10, 600_000).await.unwrap().len(), 1);
        }
        let s = SqliteStore::open(dir).unwrap();
        assert_eq!(
            s.accept(ev("e4", "k1", &[], 80_000), 60_000).await.unwrap(),
            Accepted::Duplicate
        );
        // Reopening voids the dead process's lease: the delivery is due again.
        let again = s.claim_due(6000, 10, 30_000).await.unwrap();
        assert_eq!(again.len(), 1);
        // Long after: the sent delivery goes; e1 keeps its pending one, and
        // e3, left without any, stays as the newest event (a rowid is
        // never taken twice).
        let later = crate::now_ms() + 86_400_000;
        assert_eq!(s.prune(later, 1000).await.unwrap(), 1);
        let events = s.list_events(0, None, 10).await.unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e3", "e1"]);
        let left: Vec<i64> = events[1].deliveries.iter().map(|d| d.id).collect();
        assert_eq!(left, [again[0].id]);
    }

    fn page_size(dir: &Path) -> u32 {
        let c = Connection::open(dir.join("easehook.db")).unwrap();
        c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn accept_dedup_claim_record_retry_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        lifecycle(dir.path()).await;
        assert_eq!(page_size(dir.path()), PAGE_SIZE);
    }

    #[tokio::test]
    async fn deliveries_done_at_accept_are_stored_as_sent_and_never_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let mut e = ev("e1", "k1", &["quiet", "mail"], 1000);
        e.deliveries[0].done = true;
        let Accepted::New { deliveries, .. } = s.accept(e, 60_000).await.unwrap() else {
            panic!("not stored")
        };
        let sent = s.list_deliveries(Some(Status::Sent), 10).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].id, sent[0].action.as_str(), sent[0].attempts),
            (deliveries[0], "quiet", 1)
        );
        assert_eq!(sent[0].next_attempt_at, None);
        assert_eq!(s.counts().await.unwrap().pending, 1);
        let claimed = s.claim_due(1000, 10, 30_000).await.unwrap();
        assert_eq!(actions(&claimed), ["mail"]);
    }

    /// The schema of the versions before deliveries were found by the range
    /// of ids their event holds: an index of deliveries by event, and a
    /// foreign key from each delivery to its event.
    const SCHEMA_INDEXED: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    id           TEXT PRIMARY KEY NOT NULL,
    dedup_key    TEXT NOT NULL,
    event        TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    rules        TEXT NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE TABLE IF NOT EXISTS dedup (
    key          TEXT PRIMARY KEY,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup(expires_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events(id),
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
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
PRAGMA user_version = 1;
"#;

    /// Stores made by earlier versions keep their layout and work as they
    /// are: rowid tables and a full due index (the first), then `WITHOUT
    /// ROWID` events and a partial due index (the second), both with
    /// `AUTOINCREMENT` delivery ids and 4 KiB pages; then the layout of
    /// this version's but for finding deliveries through an index (the
    /// third, 2 KiB pages).
    #[tokio::test]
    async fn stores_of_earlier_layouts_keep_working() {
        let partial = "\n    WHERE status = 'pending' OR status = 'dead';";
        let autoincrement = SCHEMA_INDEXED.replace(
            "id              INTEGER PRIMARY KEY,",
            "id              INTEGER PRIMARY KEY AUTOINCREMENT,",
        );
        let first = autoincrement
            .replace(") WITHOUT ROWID;", ");")
            .replace(partial, ";");
        let events_end = "    body         TEXT NOT NULL\n);";
        let second = autoincrement.replace(
            events_end,
            "    body         TEXT NOT NULL\n) WITHOUT ROWID;",
        );
        assert!(!first.contains("WITHOUT ROWID") && !first.contains("WHERE"));
        assert_eq!(second.matches("WITHOUT ROWID").count(), 2);
        assert!(first.contains("AUTOINCREMENT") && second.contains("AUTOINCREMENT"));
        let third = SCHEMA_INDEXED.to_string();
        for (schema, page) in [(first, 4096), (second, 4096), (third, 2048)] {
            let dir = tempfile::tempdir().unwrap();
            let c = Connection::open(dir.path().join("easehook.db")).unwrap();
            c.execute_batch(&format!("PRAGMA page_size={page}; PRAGMA journal_mode=WAL"))
                .unwrap();
            c.execute_batch(&schema).unwrap();
            assert_eq!(Layout::of(&c).unwrap(), Layout::Indexed);
            drop(c);
            lifecycle(dir.path()).await;
            assert_eq!(page_size(dir.path()), page);
        }
    }

    fn legacy_keys_noted(db: &Path) -> String {
        let c = Connection::open(db).unwrap();
        meta(&c, LEGACY_KEYS_UNTIL).unwrap().unwrap()
    }

    /// Earlier versions keyed events by the hash alone. Upgrading within
    /// the dedup window must not let a repeat of an event they stored
    /// through, and the store stops looking once the last such key expires.
    #[tokio::test]
    async fn repeats_of_events_keyed_by_earlier_versions_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("easehook.db");
        drop(SqliteStore::open(dir.path()).unwrap());
        // A store as an earlier version leaves it: bare hashes, one of them
        // expired, and no note of this version's.
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "DELETE FROM meta;
             INSERT INTO dedup(key, expires_at) VALUES('h1', 100000), ('h2', 500);",
        )
        .unwrap();
        drop(c);
        let new = |a: Result<Accepted, StoreError>| matches!(a.unwrap(), Accepted::New { .. });
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            let at = |id: &str, key: &str, t: u64| s.accept(ev(id, key, &["a"], t), 60_000);
            assert!(!new(at("e1", "org#app_1/h1", 1000).await), "a repeat of h1");
            assert!(new(at("e2", "org#app_2/h2", 1000).await), "h2 has expired");
            assert!(new(at("e3", "org#app_3/h3", 1000).await));
            assert!(!new(at("e4", "org#app_3/h3", 2000).await));
        }
        // The note outlives a restart; past it, the old keys are not read.
        let s = SqliteStore::open(dir.path()).unwrap();
        let at = |id: &str, key: &str, t: u64| s.accept(ev(id, key, &["a"], t), 60_000);
        assert!(!new(at("e5", "org#app_5/h1", 99_999).await));
        assert!(new(at("e6", "org#app_6/h1", 100_000).await));
        assert_eq!(legacy_keys_noted(&db), "100000");
        // A new store has no such keys, and never looks.
        let fresh = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(fresh.path()).unwrap());
        assert_eq!(legacy_keys_noted(&fresh.path().join("easehook.db")), "0");
    }

    #[tokio::test]
    async fn leased_deliveries_wait_for_their_lease_and_a_restart_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            let mut e = ev("e1", "k1", &["a"], 1000);
            e.lease_until = Some(50_000);
            let Accepted::New { deliveries, .. } = s.accept(e, 60_000).await.unwrap() else {
                panic!("not stored")
            };
            assert_eq!(deliveries.len(), 1);
            // Handed off: no claim takes it while the lease holds…
            assert!(s.claim_due(2000, 10, 30_000).await.unwrap().is_empty());
            assert_eq!(s.next_due().await.unwrap(), None);
            // …and one does once it has run out (the hand-off was lost).
            assert_eq!(s.claim_due(50_000, 10, 30_000).await.unwrap().len(), 1);
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.claim_due(2000, 10, 30_000).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn one_failing_command_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.accept(ev("e1", "k1", &["a"], 1000), 60_000)
            .await
            .unwrap();
        // Queued together, so they share a batch: the second reuses an
        // event id (a constraint error), the others are fine.
        let (a, b, c) = tokio::join!(
            s.accept(ev("e2", "k2", &["a"], 1000), 60_000),
            s.accept(ev("e1", "k3", &["a"], 1000), 60_000),
            s.accept(ev("e3", "k4", &["a"], 1000), 60_000),
        );
        assert!(matches!(a.unwrap(), Accepted::New { id, .. } if id == "e2"));
        assert!(b.is_err());
        assert!(matches!(c.unwrap(), Accepted::New { id, .. } if id == "e3"));
        let ids = event_ids(&s).await;
        assert_eq!(ids.len(), 3, "{ids:?}");
        // Nothing of the failed command was kept: its dedup key is free.
        assert!(matches!(
            s.accept(ev("e4", "k3", &[], 1000), 60_000).await.unwrap(),
            Accepted::New { .. }
        ));
    }

    #[tokio::test]
    async fn checkpoints_move_commits_into_the_database_file_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("easehook.db");
        let wal = dir.path().join("easehook.db-wal");
        let s = SqliteStore::open(dir.path()).unwrap();
        let before = std::fs::metadata(&db).unwrap().len();
        for i in 0..200 {
            let id = format!("e{i}");
            s.accept(ev(&id, &id, &["a"], 1000), 60_000).await.unwrap();
        }
        // The writer never checkpoints (wal_autocheckpoint=0); the
        // checkpointer copies the pages into the database file soon after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&db).unwrap().len() <= before {
            assert!(std::time::Instant::now() < deadline, "no checkpoint");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Once the store is closed, the checkpointer empties the WAL.
        drop(s);
        while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0 {
            assert!(std::time::Instant::now() < deadline, "WAL not truncated");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.list_events(0, None, 500).await.unwrap().len(), 200);
    }

    /// Under a load that never lets the writer idle, the WAL must still
    /// start over once it is past its limit, instead of growing for as long
    /// as the load lasts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_constant_load() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("easehook.db-wal");
        let limits = WalLimits {
            checkpoint_pages: 32,
            checkpoint_after: Duration::from_millis(50),
            restart_pages: 128,
        };
        let s = Arc::new(SqliteStore::open_with(dir.path(), limits).unwrap());
        // Enough callers that a batch is always waiting when a commit ends.
        let callers = 32;
        let per_caller = 500;
        let largest = Arc::new(AtomicI64::new(0));
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let (s, wal, largest) = (s.clone(), wal.clone(), largest.clone());
                tokio::spawn(async move {
                    for i in 0..per_caller {
                        let id = format!("{i:06}-{c:03}");
                        s.accept(ev(&id, &id, &["a", "b"], 1000), 60_000)
                            .await
                            .unwrap();
                        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                        largest.fetch_max(len as i64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let c = Connection::open(dir.path().join("easehook.db")).unwrap();
        let stored: usize = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, callers * per_caller);
        // The limit and what commits add before the checkpointer's next
        // pass sees it, a few times over at this rate: a few megabytes.
        // Without starting over, these events take tens of them.
        let largest = largest.load(Ordering::Relaxed);
        assert!(largest < 4 << 20, "the WAL grew to {largest} bytes");
    }

    #[test]
    fn queue_queries_are_answered_from_the_due_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let c = Connection::open(dir.path().join("easehook.db")).unwrap();
        for sql in [CLAIM_SQL, NEXT_DUE_SQL, COUNTS_SQL] {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let zeros = rusqlite::params_from_iter(std::iter::repeat_n(0, stmt.parameter_count()));
            let plan: Vec<String> = stmt
                .query_map(zeros, |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains("INDEX deliveries_due"), "{sql}: {plan}");
            assert!(!plan.contains("SCAN deliveries"), "{sql}: {plan}");
        }
        drop(s);
    }

    /// A new store finds an event's deliveries by the range of ids its row
    /// holds, through the deliveries' own key: no index of deliveries by
    /// event, which would cost the writer an insert per delivery.
    #[test]
    fn deliveries_of_an_event_are_found_by_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.layout, Layout::Ranges);
        let c = Connection::open(dir.path().join("easehook.db")).unwrap();
        let indexes: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // `deliveries_aggregate` holds only deliveries of digests and
        // firings, `deliveries_dead` only dead ones (they are partial): a
        // plain delivery costs them nothing.
        assert_eq!(
            indexes,
            ["deliveries_due", "deliveries_aggregate", "deliveries_dead"]
        );
        for sql in [
            Layout::Ranges.deliveries_of_event(),
            Layout::Ranges.prune_events(),
        ] {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let zeros = rusqlite::params_from_iter(std::iter::repeat_n(0, stmt.parameter_count()));
            let plan: Vec<String> = stmt
                .query_map(zeros, |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(
                plan.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
                "{sql}: {plan}"
            );
            assert!(!plan.contains("SCAN d"), "{sql}: {plan}");
        }
        drop(s);
    }

    /// Message callbacks run to a kilobyte or more. Their events must take
    /// about their own size on disk: in a `WITHOUT ROWID` table a row over
    /// ~1,000 bytes spills into an overflow page of its own, four times the
    /// bodies' size (and as many more pages written per commit).
    #[tokio::test]
    async fn kilobyte_bodies_are_stored_compactly() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let filler = "消息".repeat(200); // 1,200 bytes of UTF-8
        let n = 300;
        for i in 0..n {
            let mut e = ev(&format!("{i:08}"), &format!("k{i}"), &[], 1000 + i);
            e.body = serde_json::json!({"callId": e.id, "payload": {"text": filler}})
                .to_string()
                .into();
            s.accept(e, 60_000).await.unwrap();
        }
        let c = Connection::open(dir.path().join("easehook.db")).unwrap();
        let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let size = u64::from(page_size(dir.path()));
        let bodies: u64 = c
            .query_row(
                "SELECT sum(length(CAST(body AS BLOB))) FROM events",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            pages * size < 2 * bodies,
            "{n} events of {} body bytes take {pages} pages of {size} bytes",
            bodies / n
        );
        drop(s);
    }

    #[tokio::test]
    async fn delivery_ids_never_repeat_after_everything_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let Accepted::New {
            deliveries: first, ..
        } = s
            .accept(ev("e1", "k1", &["a", "b"], 1000), 1000)
            .await
            .unwrap()
        else {
            panic!("not stored")
        };
        let claimed = s.claim_due(1000, 10, 30_000).await.unwrap();
        assert_eq!(claimed.len(), first.len());
        let done = claimed.iter().map(|c| (c.lease(), Record::Sent)).collect();
        assert_eq!(s.record(done).await.unwrap(), Vec::<i64>::new());
        // Everything is past retention: the older delivery goes, the newest
        // stays, and so does its event.
        let now = crate::now_ms() + 60_000;
        assert_eq!(s.prune(now, 10_000).await.unwrap(), 1);
        assert_eq!(event_ids(&s).await, ["e1"]);
        let Accepted::New {
            deliveries: next, ..
        } = s.accept(ev("e2", "k2", &["a"], now), 1000).await.unwrap()
        else {
            panic!("not stored")
        };
        assert!(next[0] > first[1], "{next:?} after {first:?}");
    }

    #[tokio::test]
    async fn events_are_found_by_user_before_and_after_their_users_are_indexed() {
        use crate::store::EventQuery;
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let made = |id: &str, from: &str, to: &str, at: u64| NewEvent {
            from_user: from.into(),
            to_user: to.into(),
            ..ev(id, id, &["a"], at)
        };
        for e in [
            made("e1", "alice", "bob", 1000),
            made("e2", "carol", "alice", 2000),
            made("e3", "alice", "alice", 3000),
        ] {
            s.accept(e, 60_000).await.unwrap();
        }
        let of = |user: &str| EventQuery {
            user: Some(user.into()),
            limit: 10,
            ..EventQuery::default()
        };
        let ids = |q: EventQuery| {
            let s = &s;
            async move {
                let found = s.query_events(q).await.unwrap();
                found.into_iter().map(|e| e.id).collect::<Vec<_>>()
            }
        };
        // Not indexed yet: found all the same, from the events themselves.
        assert_eq!(ids(of("alice")).await, ["e3", "e2", "e1"]);
        let conn = with_users(s.path()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        // (The writer's own step may come first: the mark says what is in.)
        index_users(&conn).unwrap();
        assert_eq!(users_indexed(&conn).unwrap(), 3);
        assert_eq!(index_users(&conn).unwrap(), 0, "nothing new");
        // e3 names alice twice and is one row of hers.
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM event_users WHERE name = 'alice'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 3);
        s.accept(made("e4", "dave", "alice", 4000), 60_000)
            .await
            .unwrap();
        // Indexed and not: merged, newest first, each once; pages go on.
        assert_eq!(ids(of("alice")).await, ["e4", "e3", "e2", "e1"]);
        let page = EventQuery {
            limit: 2,
            ..of("alice")
        };
        assert_eq!(ids(page.clone()).await, ["e4", "e3"]);
        let after = EventQuery {
            before: Some((3000, "e3".into())),
            ..page
        };
        assert_eq!(ids(after).await, ["e2", "e1"]);
        let since = EventQuery {
            since_ms: 2000,
            until_ms: Some(4000),
            ..of("alice")
        };
        assert_eq!(ids(since).await, ["e3", "e2"]);
        assert_eq!(ids(of("bob")).await, ["e1"]);
        assert!(ids(of("nobody")).await.is_empty());
        // Pruning takes the index rows of the events it removes.
        index_users(&conn).unwrap();
        let now = crate::now_ms() + 10_000;
        let claimed = s.claim_due(now, 100, 1000).await.unwrap();
        s.record(claimed.iter().map(|c| (c.lease(), Record::Sent)).collect())
            .await
            .unwrap();
        s.prune(now, 1000).await.unwrap();
        prune_users(&conn).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        // e4 is the newest and stays; the others and their rows are gone.
        assert_eq!(
            count("SELECT count(*) FROM users.event_users WHERE name = 'bob'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM users.event_users"), 2);
        assert_eq!(ids(of("alice")).await, ["e4"]);
    }

    #[tokio::test]
    async fn an_index_left_from_a_removed_store_starts_over() {
        use crate::store::EventQuery;
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let conn = with_users(s.path()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let made = |id: &str, from: &str, at: u64| NewEvent {
            from_user: from.into(),
            to_user: "bob".into(),
            ..ev(id, id, &[], at)
        };
        for (id, from, at) in [("e1", "alice", 1000), ("e2", "carol", 2000)] {
            s.accept(made(id, from, at), 1000).await.unwrap();
        }
        index_users(&conn).unwrap();
        // As if easehook.db had been removed beside an index that marks
        // (and points at) events of the store before.
        conn.execute_batch(
            "UPDATE users.mark SET last = 1000;
             INSERT INTO users.event_users VALUES ('carol', 1000, 1);",
        )
        .unwrap();
        let carol = EventQuery {
            user: Some("carol".into()),
            limit: 10,
            ..EventQuery::default()
        };
        let ids = |q: EventQuery| {
            let s = &s;
            async move {
                let found = s.query_events(q).await.unwrap();
                found.into_iter().map(|e| e.id).collect::<Vec<_>>()
            }
        };
        // A row that names another user than its event's is not taken.
        assert_eq!(ids(carol.clone()).await, ["e2"]);
        index_users(&conn).unwrap();
        assert_eq!(users_indexed(&conn).unwrap(), 2);
        let alice = EventQuery {
            user: Some("alice".into()),
            ..carol.clone()
        };
        assert_eq!(ids(alice).await, ["e1"]);
        assert_eq!(ids(carol).await, ["e2"]);
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_event_so_that_rowids_never_repeat() {
        use crate::store::EventQuery;
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let conn = with_users(s.path()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let made = |id: &str, at: u64| NewEvent {
            from_user: "alice".into(),
            to_user: "bob".into(),
            ..ev(id, id, &[], at)
        };
        for (id, at) in [("e1", 1000), ("e2", 2000)] {
            s.accept(made(id, at), 1000).await.unwrap();
        }
        index_users(&conn).unwrap();
        assert_eq!(users_indexed(&conn).unwrap(), 2);
        // Both are past retention; the newest stays, so the next event
        // takes a rowid after every one the index has seen.
        let now = crate::now_ms();
        s.prune(now, 1000).await.unwrap();
        assert_eq!(event_ids(&s).await, ["e2"]);
        assert_eq!(prune_users(&conn).unwrap(), 2, "e1's two users");
        s.accept(made("e3", now), 1000).await.unwrap();
        index_users(&conn).unwrap();
        assert_eq!(users_indexed(&conn).unwrap(), 3);
        let found = s
            .query_events(EventQuery {
                user: Some("alice".into()),
                limit: 10,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let ids: Vec<_> = found.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e3", "e2"]);
    }

    #[test]
    fn the_last_delivery_created_before_a_time_is_found_by_bisecting_ids() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, created_at INTEGER)")
            .unwrap();
        assert_eq!(created_before(&conn, 100).unwrap(), None);
        // Ids with gaps, created in their order.
        for (id, at) in [
            (3, 10),
            (4, 20),
            (9, 30),
            (10, 40),
            (25, 50),
            (26, 60),
            (40, 70),
        ] {
            conn.execute("INSERT INTO deliveries VALUES (?1, ?2)", [id, at])
                .unwrap();
        }
        for (cutoff, bound) in [
            (5, None),
            (10, None),
            (11, Some(3)),
            (31, Some(9)),
            (50, Some(10)),
            (51, Some(25)),
            (70, Some(26)),
            (1000, Some(40)),
        ] {
            assert_eq!(
                created_before(&conn, cutoff).unwrap(),
                bound,
                "cutoff {cutoff}"
            );
        }
    }

    #[tokio::test]
    async fn prune_keeps_pending_and_recent() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.accept(ev("old", "k1", &[], 1000), 1000).await.unwrap();
        s.accept(ev("pending", "k2", &["a"], 1000), 1000)
            .await
            .unwrap();
        let now = crate::now_ms();
        s.accept(ev("new", "k3", &[], now), 1000).await.unwrap();
        s.prune(now, 10_000).await.unwrap();
        let ids = event_ids(&s).await;
        assert_eq!(ids, ["new", "pending"]);
    }
}
