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

mod accept;
mod claims;
mod prune;
mod queries;
mod schema;
#[cfg(test)]
mod tests;
mod users;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};

use tokio::sync::oneshot;

use super::{
    Accepted, Attempt, AttemptInfo, Claimed, Counts, DeliveryDetail, DeliveryInfo, DeliveryQuery,
    Dialect, EventInfo, EventQuery, Lease, NewEvent, OpenGroup, Param, Record, Replayed, Status,
    Store, StoreError,
};
use {accept::*, claims::*, queries::*, schema::*, users::*};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
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
