//! The writer thread and its group commit: commands queued by the request
//! path and the dispatcher, run in savepoints of one transaction, one fsync
//! for the lot; and the checkpointer that copies the WAL into the database
//! file off the writer.

use crate::store::{Accepted, Attempt, Lease, NewEvent, Record, Replayed, StoreError};
use rusqlite::{Connection, Statement, params};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;
use tokio::sync::oneshot;

use super::{claims::*, prune::*, schema::*};

thread_local! {
    /// Pages in the WAL after this thread's last commit, as SQLite's WAL
    /// hook reports them (the hook is a plain function: it cannot capture).
    static WAL_PAGES: Cell<i64> = const { Cell::new(0) };
}

/// Commands handled in one transaction at most.
pub(super) const MAX_BATCH: usize = 512;

/// When the checkpointer copies the WAL into the database file, and when
/// the WAL starts over from its beginning.
#[derive(Clone, Copy, Debug)]
pub(super) struct WalLimits {
    /// Copy once this many new pages are in the WAL…
    pub(super) checkpoint_pages: i64,
    /// …or this long after a commit, whichever comes first. Letting
    /// commits gather means a page written by many of them (the right edge
    /// of an index) is copied once, and under a light load the database
    /// file is flushed about once a second instead of beside every commit.
    pub(super) checkpoint_after: Duration,
    /// Once the WAL holds this many pages, the next commit is followed by a
    /// last copy on the writer's own connection, so that the WAL starts
    /// over (see [`finish_checkpoint`]).
    pub(super) restart_pages: i64,
}

/// The limits of the daemon's store: SQLite's own default of 1,000 pages
/// for a checkpoint, and a WAL that starts over past 8192 pages (16 MiB of
/// 2 KiB pages).
pub(super) const WAL_LIMITS: WalLimits = WalLimits {
    checkpoint_pages: 1000,
    checkpoint_after: Duration::from_secs(1),
    restart_pages: 8192,
};

/// How often the checkpointer looks at the WAL's growth while it waits.
pub(super) const CHECKPOINT_POLL: Duration = Duration::from_millis(10);

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// An event with its JSON already encoded.
pub(super) struct Prepared {
    pub(super) event: NewEvent,
    pub(super) rules_json: String,
    pub(super) window: u64,
}

pub(super) enum Command {
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
pub(super) enum Done {
    Accept(Result<Accepted, StoreError>),
    Claim(Result<Vec<ClaimedRow>, StoreError>),
    Unit(Result<(), StoreError>),
    Count(Result<u64, StoreError>),
    Stale(Result<Vec<i64>, StoreError>),
    Replayed(Result<Vec<Replayed>, StoreError>),
}

impl Done {
    /// The failure of `c`, with this message.
    pub(super) fn failed(c: &Command, msg: &str) -> Self {
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

    pub(super) fn error(&self) -> Option<&StoreError> {
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
    pub(super) fn failed_write(&self) -> bool {
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
    pub(super) fn wrote(&self) -> bool {
        matches!(
            self,
            Done::Accept(Ok(Accepted::New { .. })) | Done::Unit(Ok(())) | Done::Stale(Ok(_))
        )
    }
}

/// Answer the caller of `c`.
pub(super) fn reply(c: Command, d: Done) {
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

pub(super) fn note_wal_pages(
    _: &rusqlite::hooks::Wal,
    pages: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages.into()));
    Ok(())
}

/// How the writer and the checkpointer tell each other what is due.
pub(super) struct Committed {
    /// "There was a commit": capacity 1, so it never blocks the writer and
    /// many commits make one wake-up.
    pub(super) notify: mpsc::SyncSender<()>,
    /// Pages in the WAL after the last commit.
    pub(super) wal_pages: Arc<AtomicI64>,
    /// Set by the checkpointer: the WAL is long enough to start over, and
    /// the writer should finish the copy after its next commit.
    pub(super) restart: Arc<AtomicBool>,
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
pub(super) fn checkpointer(
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
pub(super) struct Checkpoint {
    /// It could not finish: another checkpoint ran, or (modes that wait)
    /// the busy timeout passed.
    pub(super) busy: bool,
    /// Frames in the WAL.
    pub(super) log: i64,
    /// Frames copied into the database file.
    pub(super) done: i64,
}

/// Run a checkpoint of `mode` (`PASSIVE`, `TRUNCATE`, …) on `conn`.
pub(super) fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Checkpoint> {
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
pub(super) fn finish_checkpoint(conn: &Connection) -> bool {
    match wal_checkpoint(conn, "PASSIVE") {
        Ok(Checkpoint { busy, log, done }) => !busy && log == done,
        Err(e) => {
            tracing::debug!(error = %e, "checkpoint failed");
            false
        }
    }
}

pub(super) fn writer_loop(
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
pub(super) struct Writer<'c> {
    pub(super) conn: &'c Connection,
    pub(super) begin: Statement<'c>,
    pub(super) commit: Statement<'c>,
    pub(super) claim_key: Statement<'c>,
    pub(super) insert_event: Statement<'c>,
    pub(super) insert_delivery: Statement<'c>,
    pub(super) insert_done: Statement<'c>,
    /// See [`legacy_keys_until`]: until then, a repeat may be known by its
    /// key without the callId.
    pub(super) legacy_keys_until: i64,
    pub(super) legacy_key_seen: Statement<'c>,
    pub(super) layout: Layout,
}

impl<'c> Writer<'c> {
    pub(super) fn new(
        conn: &'c Connection,
        legacy_keys_until: i64,
        layout: Layout,
    ) -> rusqlite::Result<Self> {
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

    pub(super) fn begin(&mut self) -> rusqlite::Result<()> {
        self.begin.execute([]).map(drop)
    }

    pub(super) fn commit(&mut self) -> rusqlite::Result<()> {
        self.commit.execute([]).map(drop)
    }

    pub(super) fn rollback(&self) {
        // A failed statement may have ended the transaction already.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Run a batch as one transaction (one fsync). No savepoints: they would
    /// make SQLite copy every page a command touches into a statement
    /// journal. Any failure undoes the whole batch, and the caller runs it
    /// again command by command.
    pub(super) fn run_batch(&mut self, batch: &[Command]) -> Result<Vec<Done>, StoreError> {
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
    pub(super) fn run_alone(&mut self, c: &Command) -> Done {
        match self.run_batch(std::slice::from_ref(c)) {
            Ok(mut done) => done.pop().unwrap_or_else(|| Done::failed(c, "no result")),
            Err(e) => Done::failed(c, &e.0),
        }
    }

    pub(super) fn accept(&mut self, p: &Prepared) -> rusqlite::Result<Accepted> {
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
            super::aggregate::apply(self.conn, ev)?
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
    pub(super) fn store_event(&mut self, p: &Prepared, deliveries: &[i64]) -> rusqlite::Result<()> {
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

    pub(super) fn run_command(&mut self, c: &Command) -> Done {
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
