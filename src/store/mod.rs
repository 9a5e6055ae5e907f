//! Where accepted events and their deliveries live until handled: the only
//! hand-off between the request path and the dispatcher.
//!
//! The callback handler answers 200 only after [`Store::accept`] has
//! committed the event, its dedup key and its deliveries. The dispatcher
//! claims due deliveries with a lease ([`Store::claim_due`]) and records each
//! outcome ([`Store::record`]). A delivery whose lease runs out (the daemon
//! died mid-attempt) becomes due again: at least once, never lost.
//!
//! On the fast path the request handler stores the deliveries already
//! leased ([`NewEvent::lease_until`]) and hands them to the dispatcher in
//! memory, so a fresh delivery costs no claim. A restart voids the leases
//! of the process before it (on a shared store, those of the same
//! `state_dir`), so a hand-off lost with the process is sent by the next
//! one.
//!
//! Every claim is **fenced**: the lease's end ([`Claimed::lease_until`]) is
//! the claim's token, and an outcome is recorded only while the delivery
//! still carries it. A claim taken over after its lease ran out gets a
//! later end, so a late outcome of the first holder (a process paused past
//! its lease) never overwrites the new owner's.
//!
//! Two backends implement the interface, and one conformance suite
//! (`tests/it/store.rs`) runs every behaviour test against both:
//! - [`sqlite::SqliteStore`], the default: embedded, one daemon per
//!   `state_dir`;
//! - [`postgres::PgStore`]: one PostgreSQL database shared by any number of
//!   daemons (replicas).
//!
//! Nothing here names a backend's types: each maps its own errors into
//! [`StoreError`].

pub mod copy;

pub mod postgres;

mod query;
pub mod sqlite;

pub use query::*;

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::Text;
use crate::callback::Callback;

/// Take the lock that makes one daemon the only one on `state_dir`.
///
/// The embedded store voids every lease it finds when it opens, and a
/// shared store the leases of this daemon's earlier run (known by the
/// replica id kept in `state_dir`), which is only right when no other
/// process is sending those deliveries; a second daemon on the same
/// directory would void the first one's claims and send them again. The
/// lock (`flock`) belongs to the open file, so the kernel releases it
/// however the process ends, `kill -9` included: a stale lock file never
/// keeps a daemon from starting. The file holds the holder's pid, for the
/// message.
pub fn lock_state_dir(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    use std::io::{Read, Write};
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let path = state_dir.join("easehook.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown",
                p => p,
            };
            anyhow::bail!(
                "state_dir {} is in use by another easehook (pid {pid})",
                state_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

/// An event ready to be stored, with the deliveries its rules asked for.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// A fresh id (UUID v7: sortable by time).
    pub id: String,
    pub dedup_key: String,
    pub event: Text,
    /// Milliseconds since the epoch when the daemon received it.
    pub received_at_ms: u64,
    /// The callback's JSON text as received (shared with the parsed
    /// callback: the request path holds it once).
    pub body: Arc<str>,
    /// The callback's `from` and `to` users, normalized (SPEC §5
    /// `from_user`, `to_user`): the console and the events API find an
    /// event by either.
    pub from_user: Text,
    pub to_user: Text,
    /// Names of the matching rules, in order.
    pub rules: Vec<Text>,
    /// The deliveries its rules asked for, in order.
    pub deliveries: Vec<NewDelivery>,
    /// Store the deliveries already claimed until this time (ms since the
    /// epoch): the caller hands them to the dispatcher itself. `None` leaves
    /// them for [`Store::claim_due`].
    pub lease_until: Option<u64>,
    /// The digests and thresholds (SPEC §11) the event counts toward, in
    /// rule order. Their state changes in the same commit as the event.
    pub aggregates: Vec<NewAggregate>,
}

/// An event's part in a rule over many events: the digest it joins (or
/// opens), or the threshold window it is counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAggregate {
    pub rule: Text,
    /// The group: a JSON object of the rule's `by` fields and the event's
    /// values of them (`{}` without `by`). Events of one group share one
    /// digest or one window.
    pub group: String,
    /// The rule's enabled actions: one delivery each when the digest
    /// closes or the threshold fires.
    pub actions: Vec<Text>,
    pub spec: AggregateSpec,
}

/// What the rule does with the events of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggregateSpec {
    /// The first event of a group opens a digest that closes `window_ms`
    /// later (an event received exactly then opens the next one); the
    /// first `max_events` events are kept for the templates, all are
    /// counted.
    Digest { window_ms: u64, max_events: u32 },
    /// Fires when `count` values fall within the last `within_ms` (an
    /// event exactly `within_ms` old has left the window), unless the
    /// group fired less than `cooldown_ms` ago. `value` is what is
    /// counted: the event's id, or its value of the rule's `distinct`
    /// field (a repeat refreshes the value's time and counts once).
    Threshold {
        count: u32,
        within_ms: u64,
        cooldown_ms: u64,
        value: String,
    },
}

/// Which kind of rule over many events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateKind {
    Digest,
    Threshold,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Digest => "digest",
            AggregateKind::Threshold => "threshold",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "digest" => Some(AggregateKind::Digest),
            "threshold" => Some(AggregateKind::Threshold),
            _ => None,
        }
    }
}

/// A delivery a replay created (or, dry, would create).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub event_id: String,
    pub action: String,
    pub rule: String,
    /// The new delivery's id; `None` in a dry run.
    pub delivery: Option<i64>,
}

/// A closed digest or a threshold's firing, as its deliveries render it
/// (the `digest` and `threshold` contexts of SPEC §11).
#[derive(Debug, Clone)]
pub struct AggregateInfo {
    pub kind: AggregateKind,
    pub rule: String,
    /// The group's JSON object, as [`NewAggregate::group`].
    pub group: String,
    /// Every event counted (a digest's, beyond those kept too).
    pub count: u64,
    /// When the first and the last event counted were received (ms).
    pub first_at: u64,
    pub last_at: u64,
    /// A threshold's window (ms); 0 for a digest.
    pub within_ms: u64,
    /// When a digest closes; when a threshold fired.
    pub due_at: u64,
    /// The events kept, oldest first.
    pub events: Vec<AggregatedEvent>,
}

/// One event kept with a digest or a firing.
#[derive(Debug, Clone)]
pub struct AggregatedEvent {
    pub id: String,
    pub received_at_ms: u64,
    pub callback: Result<Arc<Callback>, String>,
}

/// A digest or firing as a claim reads it from a store, its callbacks not
/// yet parsed.
pub(crate) struct StoredAggregate {
    /// All but the events, which [`StoredAggregate::decode`] adds.
    pub info: AggregateInfo,
    /// Id, received at, body: the events kept, oldest first.
    pub events: Vec<(String, i64, String)>,
    /// The last event (id, received at, body): the context of SPEC §5.
    pub last: Option<(String, i64, String)>,
}

impl StoredAggregate {
    /// The aggregate with its callbacks parsed (each event's once).
    pub(crate) fn decode(self, callbacks: &mut Callbacks) -> AggregateInfo {
        let events = self
            .events
            .into_iter()
            .map(|(id, at, body)| AggregatedEvent {
                callback: callbacks.of(&id, &body),
                id,
                received_at_ms: at as u64,
            })
            .collect();
        AggregateInfo {
            events,
            ..self.info
        }
    }

    /// The last event's callback, which a delivery of the aggregate
    /// renders with its received time.
    pub(crate) fn last_callback(
        &self,
        callbacks: &mut Callbacks,
    ) -> (Result<Arc<Callback>, String>, u64) {
        match &self.last {
            Some((id, at, body)) => (callbacks.of(id, body), *at as u64),
            None => (
                Err("the last event of the digest is no longer stored".into()),
                self.info.last_at,
            ),
        }
    }
}

/// An open digest or a threshold group with events in its window, as
/// `GET /api/v1/digests` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OpenGroup {
    pub kind: AggregateKind,
    pub rule: String,
    pub group: serde_json::Value,
    /// A digest's events so far; a threshold's count in its window now.
    pub count: u64,
    /// When the first and the last event counted were received (ms).
    pub first_at: u64,
    pub last_at: u64,
    /// When a digest closes and is delivered (ms).
    pub due_at: Option<u64>,
    /// Until when a threshold that fired does not fire again (ms).
    pub cooldown_until: Option<u64>,
}

/// A delivery of a new event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub action: Text,
    /// The first matching rule that named the action.
    pub rule: Text,
    /// Nothing is left to do: a `log` action whose level the log drops.
    /// It is stored as sent (one attempt) and never handed to the
    /// dispatcher, which would only find the same.
    pub done: bool,
}

/// What became of an event offered to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored under `id`; `deliveries` are the ids of its deliveries, in the
    /// order of [`NewEvent::deliveries`]; `fired` names the threshold rules
    /// the event made fire (their deliveries wait in the store, due now).
    New {
        id: String,
        deliveries: Vec<i64>,
        fired: Vec<String>,
    },
    /// Seen within the dedup window: nothing stored.
    Duplicate,
}

/// The store could not do what was asked. On the request path the caller
/// answers 503 so that Easemob's retry has a chance.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// A delivery handed to the dispatcher.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub event_id: String,
    pub action: Text,
    pub rule: Text,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When the claim runs out (ms since the epoch); also the claim's
    /// token, which [`Store::record`] must be given back.
    pub lease_until: u64,
    pub received_at_ms: u64,
    /// The stored callback, parsed once per event; `Err` says why it could
    /// not be read back. For a digest, its last event's.
    pub callback: Result<Arc<Callback>, String>,
    /// The digest or threshold firing this delivery is of.
    pub aggregate: Option<Arc<AggregateInfo>>,
}

/// The claim an outcome is recorded under: the delivery and the end of
/// the lease it was claimed with ([`Claimed::lease_until`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub until: u64,
}

/// A threshold firing's events kept for its templates (SPEC §11).
pub const THRESHOLD_EVENTS: u32 = 50;

/// The end of a lease taken at `now_ms` for `lease_ms`, which is also the
/// claim's token. Never `now_ms` itself: a claim may be taken over only
/// once the old lease has ended (`leased_until <= now`), so the new token is
/// always later than the old one, and the two never compare equal.
pub fn lease_end(now_ms: u64, lease_ms: u64) -> u64 {
    now_ms.saturating_add(lease_ms.max(1))
}

/// Parses the stored callbacks of claimed deliveries: each event's once,
/// however many of its deliveries one claim took.
#[derive(Default)]
pub(crate) struct Callbacks(std::collections::HashMap<String, Result<Arc<Callback>, String>>);

impl Callbacks {
    /// The callback of `event_id`, parsed from `body` the first time;
    /// `Err` says why it could not be read back.
    pub(crate) fn of(&mut self, event_id: &str, body: &str) -> Result<Arc<Callback>, String> {
        if let Some(known) = self.0.get(event_id) {
            return known.clone();
        }
        // A recorded pre-send verdict is stored without the request's
        // signature (SPEC §16).
        let parsed = Callback::parse_unsigned(body.into())
            .map_err(|e| e.to_string())
            .map(Arc::new);
        self.0.insert(event_id.to_string(), parsed.clone());
        parsed
    }
}

impl Claimed {
    /// The claim to record this delivery's outcome under.
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            until: self.lease_until,
        }
    }
}

/// When an attempt was made, how long it took and what the destination
/// answered, kept with the delivery ([`Store::record_attempts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempt {
    /// Ms since the epoch.
    pub started_at_ms: u64,
    pub duration_ms: u64,
    /// The HTTP status or SMTP reply code, when the destination answered.
    pub code: Option<u16>,
}

/// The longest error text an attempt keeps, in characters (the delivery's
/// `last_error` keeps it whole).
pub const ATTEMPT_ERROR_MAX: usize = 1000;

impl Attempt {
    /// `error` cut to its first [`ATTEMPT_ERROR_MAX`] characters.
    pub fn bounded(error: &str) -> &str {
        match error.char_indices().nth(ATTEMPT_ERROR_MAX) {
            Some((end, _)) => &error[..end],
            None => error,
        }
    }
}

/// One attempt as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttemptInfo {
    /// 1 for the first attempt; the numbers go on across retries of a dead
    /// delivery.
    pub n: u32,
    pub started_at: u64,
    pub duration_ms: u64,
    /// `sent`, `retry` or `dead`.
    pub outcome: String,
    pub code: Option<u16>,
    pub error: Option<String>,
}

/// A delivery with every attempt made, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryInfo,
    pub attempts_made: Vec<AttemptInfo>,
}

/// What happened to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Sent,
    /// Try again at this time (ms since the epoch); `counted` is false when
    /// no attempt was made (a rate limit deferred it).
    Retry {
        at_ms: u64,
        error: String,
        counted: bool,
    },
    Dead {
        error: String,
    },
}

impl Record {
    /// What an attempt's row keeps: its outcome (`sent`, `retry`, `dead`)
    /// and error; `None` for a deferral, which made no attempt.
    pub fn attempted(&self) -> Option<(&'static str, Option<&str>)> {
        match self {
            Record::Sent => Some(("sent", None)),
            Record::Retry { counted: false, .. } => None,
            Record::Retry { error, .. } => Some(("retry", Some(error))),
            Record::Dead { error } => Some(("dead", Some(error))),
        }
    }

    /// No attempt made: the delivery goes back to the queue, due at
    /// `at_ms` (a rate limit deferred it, or the daemon is stopping).
    pub fn later(at_ms: u64) -> Self {
        Record::Retry {
            at_ms,
            error: String::new(),
            counted: false,
        }
    }
}

/// What a shared rate limit granted ([`Store::take_rate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateGrant {
    /// How many of those asked for may go now.
    pub allowed: u32,
    /// When the next one may go (µs since the epoch).
    pub next_at_us: u64,
}

/// A daemon seen using a shared store (PostgreSQL), for `/api/v1/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Replica {
    /// Kept in the daemon's `state_dir` (`replica-id`), so the same
    /// across its restarts on one host.
    pub id: String,
    pub host: String,
    pub version: String,
    /// Ms since the epoch.
    pub started_at: u64,
    /// The last heartbeat, ms since the epoch.
    pub last_seen: u64,
}

/// Counts for status and metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub pending: u64,
    pub dead: u64,
    /// Digests taking events.
    pub digests_open: u64,
}

/// The store interface the server, the dispatcher and the admin API use.
pub trait Store: Send + Sync + 'static {
    /// Store an event and its deliveries unless it is a duplicate within
    /// `dedup_window_ms`. Returns once committed durably.
    fn accept(
        &self,
        event: NewEvent,
        dedup_window_ms: u64,
    ) -> BoxFuture<'_, Result<Accepted, StoreError>>;

    /// Claim up to `limit` due deliveries for `lease_ms`.
    fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>>;

    /// Record the outcomes of attempts, each under the claim it was made
    /// with, and keep each attempt made (a deferral, `counted: false`, is
    /// none) with its delivery. Returns the ids whose claim is no longer
    /// theirs (taken over after the lease ran out): their outcome is not
    /// recorded.
    fn record_attempts(
        &self,
        outcomes: Vec<(Lease, Record, Attempt)>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>>;

    /// [`Store::record_attempts`] of attempts made now, in no time.
    fn record(
        &self,
        outcomes: Vec<(Lease, Record)>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        let now = crate::now_ms();
        let attempt = Attempt {
            started_at_ms: now,
            ..Attempt::default()
        };
        self.record_attempts(outcomes.into_iter().map(|(l, r)| (l, r, attempt)).collect())
    }

    /// Give stored events the deliveries they do not have yet (SPEC §14,
    /// replay): for each event, each of `deliveries` whose action the event
    /// has no delivery of (a digest's or threshold's aside), due now. An
    /// (event, action) pair gets one delivery however often, and from
    /// however many daemons at once, this is asked. With `dry_run`, what
    /// would be created, and nothing is. Returns what was (or would be).
    fn replay(
        &self,
        events: Vec<(String, Vec<NewDelivery>)>,
        now_ms: u64,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StoreError>>;

    /// A delivery with its attempts; `None` when there is no such delivery.
    fn delivery(&self, id: i64) -> BoxFuture<'_, Result<Option<DeliveryDetail>, StoreError>>;

    /// When the earliest pending delivery that is not leased falls due.
    fn next_due(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;

    /// Put dead deliveries back in the queue: these ids, or every dead one
    /// when `ids` is `None`. Returns how many were requeued.
    fn retry(&self, ids: Option<Vec<i64>>, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deliveries, newest first.
    fn query_deliveries(
        &self,
        q: DeliveryQuery,
    ) -> BoxFuture<'_, Result<Vec<DeliveryInfo>, StoreError>>;

    /// [`Store::query_deliveries`] of one status (or any), at most `limit`.
    fn list_deliveries(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeliveryInfo>, StoreError>> {
        self.query_deliveries(DeliveryQuery {
            status,
            limit,
            ..DeliveryQuery::default()
        })
    }

    /// Stored events, newest first, with their deliveries.
    fn query_events(&self, q: EventQuery) -> BoxFuture<'_, Result<Vec<EventInfo>, StoreError>>;

    /// One stored event with its deliveries; `None` when there is none.
    fn event(&self, id: String) -> BoxFuture<'_, Result<Option<EventInfo>, StoreError>>;

    /// [`Store::query_events`] received since `since_ms`, of `event` (a
    /// name or a family), at most `limit`.
    fn list_events(
        &self,
        since_ms: u64,
        event: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<EventInfo>, StoreError>> {
        self.query_events(EventQuery {
            since_ms,
            event,
            limit,
            ..EventQuery::default()
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>>;

    /// The open digests and the threshold groups with events in their
    /// window (or resting after firing) at `now_ms`, by rule and group.
    fn list_groups(&self, now_ms: u64) -> BoxFuture<'_, Result<Vec<OpenGroup>, StoreError>>;

    /// Remove sent deliveries and finished events older than `retention_ms`,
    /// and expired dedup keys.
    fn prune(&self, now_ms: u64, retention_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Whether the last write succeeded (for `/readyz`).
    fn is_writable(&self) -> bool;

    /// Try a small write, to find out whether a broken store has recovered.
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Answered by the writer without touching the disk: is it alive and
    /// taking commands (for the systemd watchdog)?
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Take up to `n` sends from the rate limit `key` (one send per
    /// `interval_us`, bursts of up to `burst`), shared by every daemon on
    /// this store, at `now_us`. `None`: the store keeps no shared limits
    /// (one daemon, whose own limiter is exact).
    fn take_rate(
        &self,
        _key: &str,
        _n: u32,
        _interval_us: u64,
        _burst: u32,
        _now_us: u64,
    ) -> BoxFuture<'_, Result<Option<RateGrant>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    /// `sqlite` or `postgres`, as `/api/v1/status` shows it.
    fn kind(&self) -> &'static str;

    /// The daemons seen using this store in the last minute (a shared
    /// store only; `None` for an embedded one).
    fn replicas(&self) -> BoxFuture<'_, Result<Option<Vec<Replica>>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
}
