//! The shared store: one PostgreSQL database behind any number of daemons
//! (replicas), so that no host is a single point of failure (SPEC §9).
//!
//! - **Accept** is group-committed as in the embedded store: writer tasks
//!   take every callback waiting in their queue and store them all in one
//!   statement ([`ACCEPT_SQL`]: one round trip, one commit), with
//!   `synchronous_commit = on`, before any of them is answered. The
//!   statement claims each dedup key (`ON CONFLICT`), then stores the
//!   events whose keys it claimed and their deliveries; a key another
//!   replica holds makes its callback a duplicate. A batch is sorted by
//!   key, so two replicas' batches lock keys in the same order and never
//!   deadlock.
//! - **Claims** take due deliveries with `FOR UPDATE SKIP LOCKED`, so
//!   replicas never wait on each other's rows, and set a lease whose end is
//!   the claim's fencing token ([`super::Lease`]): an outcome is recorded
//!   only under the token it was claimed with. Expired leases are due
//!   again; nothing voids another replica's leases.
//! - **Pruning** runs on one replica at a time (an advisory lock), in
//!   batches, so it never holds long locks on the queue.
//! - Each daemon writes a heartbeat row every [`HEARTBEAT`]; status lists
//!   those seen in the last minute.
//! - The schema is versioned ([`migrate`]) and migrated under an advisory
//!   lock, so that several replicas may start at once; a daemon refuses a
//!   schema newer than the one it knows.
//!
//! The pool waits for a free connection rather than failing (pool
//! exhaustion queues); a database that cannot be reached fails fast, so the
//! caller answers 503 and `/readyz` turns unready until a write succeeds
//! again — without a restart: broken connections are replaced.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Row;

use super::{
    Accepted, Attempt, AttemptInfo, Callbacks, Claimed, Counts, DeliveryBrief, DeliveryDetail,
    DeliveryInfo, DeliveryQuery, Dialect, EventInfo, EventQuery, Lease, NewEvent, OpenGroup, Param,
    RateGrant, Record, Replayed, Replica, Status, Store, StoreError,
};
use crate::config::PostgresSettings;

/// The schema versions, in order: each is applied once, in a transaction.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_aggregates.sql")),
    (3, include_str!("migrations/0003_attempts.sql")),
    (4, include_str!("migrations/0004_users.sql")),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Advisory lock keys (`pg_advisory_lock`): migrating, pruning.
const LOCK_MIGRATE: i64 = 0x6561_7365_686f_6f01;
const LOCK_PRUNE: i64 = 0x6561_7365_686f_6f02;

/// Callbacks stored in one transaction at most.
const MAX_BATCH: usize = 256;

/// Transactions of callbacks in flight at once per daemon: while one
/// commits (waits for the database's fsync), the next is gathered and sent.
const WRITERS: usize = 2;

/// Rows removed per statement while pruning.
const PRUNE_BATCH: i64 = 5_000;

/// How often a daemon writes its heartbeat row.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A daemon counts as a replica this long after its last heartbeat.
const REPLICA_SEEN: u64 = 60_000;

/// How long a new connection may take before the attempt fails (the
/// database is down or unreachable: the caller answers 503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store could not be opened: the caller reports it against
/// `store.url`.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Tls(String),
    /// The daemon's `state_dir` cannot be used (another daemon holds it).
    #[error("{0}")]
    StateDir(String),
}

/// One callback's accept, queued for a writer.
struct Accept {
    event: NewEvent,
    rules_json: String,
    window: u64,
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

struct Inner {
    pool: Pool,
    writable: AtomicBool,
    replica: Replica,
    /// `state_dir/easehook.lock`, held for as long as the store is open.
    _lock: Option<std::fs::File>,
}

/// The PostgreSQL store.
pub struct PgStore {
    inner: Arc<Inner>,
    accepts: mpsc::UnboundedSender<Accept>,
    /// The runtime the store was opened on (see [`PgStore::run`]).
    runtime: tokio::runtime::Handle,
}

/// The message of a driver error: the server's own for database errors
/// (`password authentication failed for user …`), else the driver's with
/// its cause. Neither carries the connection string.
fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError(pg_message(&e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError as P;
        StoreError(match e {
            P::Backend(e) => pg_message(&e),
            P::Timeout(_) => "the database did not answer in time".into(),
            other => other.to_string(),
        })
    }
}

/// TLS to the database: rustls (the stack of every other connection of
/// the daemon), the system's roots plus `ca_file`. Used when the URL's
/// `sslmode` asks for it (`prefer`, the default, or `require`).
fn tls(settings: &PostgresSettings) -> Result<tokio_postgres_rustls::MakeRustlsConnect, OpenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &settings.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| OpenError::Tls(format!("store.ca_file {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(OpenError::Tls(format!(
                "store.ca_file {}: holds no PEM certificate",
                ca.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| OpenError::Tls(format!("store.ca_file {}: {e}", ca.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OpenError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A pool of connections to the database of `settings`, each with
/// `synchronous_commit` on whatever the server's default.
fn pool(settings: &PostgresSettings) -> Result<Pool, OpenError> {
    let mut config = settings.driver_config().map_err(OpenError::Connect)?;
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c synchronous_commit=on"),
        _ => "-c synchronous_commit=on".to_string(),
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("easehook");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let manager = Manager::from_config(
        config,
        tls(settings)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pool.max(2))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(1)))
        // A busy pool queues callers; only a database that cannot be
        // reached at all fails them, through the create timeout.
        .wait_timeout(None)
        .build()
        .map_err(|e| OpenError::Connect(e.to_string()))
}

/// Bring the schema up to [`SCHEMA_VERSION`] under an advisory lock, so
/// that replicas starting together migrate once. Returns the versions
/// applied. A schema newer than this build knows is refused.
pub async fn migrate(settings: &PostgresSettings) -> Result<Vec<i32>, OpenError> {
    let pool = pool(settings)?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| OpenError::Connect(StoreError::from(e).0))?;
    migrate_on(&mut client).await
}

async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, OpenError> {
    let schema = |e: tokio_postgres::Error| OpenError::Schema(pg_message(&e));
    // A database that is not PostgreSQL (or too old) fails here.
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| OpenError::Connect(pg_message(&e)))?
        .get(0);
    if version < 110_000 {
        return Err(OpenError::Schema(format!(
            "PostgreSQL {version} is too old: easehook needs 11 or later"
        )));
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_MIGRATE])
        .await
        .map_err(schema)?;
    let result = apply_migrations(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_MIGRATE])
        .await;
    let applied = result?;
    unlock.map_err(schema)?;
    Ok(applied)
}

async fn apply_migrations(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, OpenError> {
    let schema = |e: tokio_postgres::Error| OpenError::Schema(pg_message(&e));
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS easehook_schema (
                 version    integer PRIMARY KEY,
                 applied_at bigint NOT NULL
             )",
        )
        .await
        .map_err(schema)?;
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM easehook_schema", &[])
        .await
        .map_err(schema)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(OpenError::Schema(format!(
            "the database's schema is version {current}, newer than this easehook knows ({SCHEMA_VERSION}): upgrade easehook, or point store.url at another database"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = client.transaction().await.map_err(schema)?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| OpenError::Schema(format!("migration {version}: {}", pg_message(&e))))?;
        tx.execute(
            "INSERT INTO easehook_schema(version, applied_at) VALUES ($1, $2)",
            &[version, &(crate::now_ms() as i64)],
        )
        .await
        .map_err(schema)?;
        tx.commit().await.map_err(schema)?;
        applied.push(*version);
    }
    Ok(applied)
}

/// The events `from_where` selects (a `FROM … WHERE …` clause, with
/// `params` bound from `$1`), each with its deliveries.
async fn events_where(
    c: &deadpool_postgres::Client,
    from_where: &str,
    params: Vec<Param>,
) -> Result<Vec<EventInfo>, StoreError> {
    let values: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = params
        .into_iter()
        .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match p {
                Param::Int(i) => Box::new(i),
                Param::Text(t) => Box::new(t),
            }
        })
        .collect();
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
        .iter()
        .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = c
        .query(
            &format!("SELECT id, event, received_at, rules, body {from_where}"),
            &refs,
        )
        .await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
    let ds = c
        .query(
            "SELECT event_id, id, action, status, attempts, rule FROM deliveries
                         WHERE event_id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
    let mut by_event: std::collections::HashMap<&str, Vec<DeliveryBrief>> =
        std::collections::HashMap::new();
    for d in &ds {
        by_event.entry(d.get(0)).or_default().push(DeliveryBrief {
            id: d.get(1),
            action: d.get(2),
            status: Status::parse(d.get(3)).unwrap_or(Status::Pending),
            attempts: d.get::<_, i32>(4) as u32,
            rule: d.get(5),
        });
    }
    Ok(rows
        .iter()
        .map(|r| {
            let id: &str = r.get(0);
            EventInfo {
                id: id.to_string(),
                event: r.get(1),
                received_at: r.get::<_, i64>(2) as u64,
                rules: serde_json::from_str(r.get(3)).unwrap_or_default(),
                deliveries: by_event.remove(id).unwrap_or_default(),
                callback: serde_json::from_str(r.get(4)).unwrap_or(serde_json::Value::Null),
            }
        })
        .collect())
}

/// Store a batch of callbacks in one statement (so one round trip, and one
/// commit of its own): claim each dedup key (a key held and not expired
/// changes nothing, which makes its callback a duplicate), then the events
/// whose keys were claimed and their deliveries, all or nothing. The
/// events come as arrays (`$1`–`$6`, keys sorted, none twice, and their
/// users `$15`, `$16`), `$7` is the
/// dedup window; the deliveries come as arrays too (`$8`–`$13`: event id,
/// action, rule, done, time, the lease of a hand-off), `$14` is the replica
/// that holds the hand-offs. Answers the claimed keys, and each delivery's
/// id with its event.
const ACCEPT_SQL: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                         $15::text[], $16::text[])
        AS t(key, id, event, received_at, rules, body, from_user, to_user)
), k AS (
    INSERT INTO dedup(key, expires_at)
    SELECT key, received_at + $7::bigint FROM input
    ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
        WHERE dedup.expires_at <= excluded.expires_at - $7::bigint
    RETURNING key
), claimed AS (
    SELECT i.* FROM input i JOIN k ON k.key = i.key
), e AS (
    INSERT INTO events(id, dedup_key, event, received_at, rules, body, from_user, to_user)
    SELECT id, key, event, received_at, rules, body, from_user, to_user FROM claimed
), d AS (
    INSERT INTO deliveries(event_id, action, rule, status, attempts, next_attempt_at,
                           leased_until, leased_by, created_at, updated_at)
    SELECT x.event_id, x.action, x.rule,
           CASE WHEN x.done THEN 'sent' ELSE 'pending' END,
           CASE WHEN x.done THEN 1 ELSE 0 END,
           x.at, CASE WHEN x.done THEN NULL ELSE x.lease END,
           CASE WHEN x.done OR x.lease IS NULL THEN NULL ELSE $14::text END, x.at, x.at
    FROM unnest($8::text[], $9::text[], $10::text[], $11::bool[], $12::bigint[], $13::bigint[])
         WITH ORDINALITY AS x(event_id, action, rule, done, at, lease, n)
    WHERE x.event_id IN (SELECT id FROM claimed)
    ORDER BY x.n
    RETURNING id, event_id
)
SELECT key, NULL::bigint FROM k
UNION ALL
SELECT event_id, id FROM d";

/// Lease the `$3` deliveries due first at `$2` until `$1`, skipping rows
/// another replica is claiming, and read their events.
const CLAIM_SQL: &str = "
WITH c AS (
    UPDATE deliveries d SET leased_until = $1, leased_by = $4
    WHERE d.id IN (SELECT id FROM deliveries
                   WHERE status = 'pending' AND next_attempt_at <= $2
                     AND (leased_until IS NULL OR leased_until <= $2)
                   ORDER BY next_attempt_at, id LIMIT $3
                   FOR UPDATE SKIP LOCKED)
    RETURNING d.id, d.event_id, d.action, d.rule, d.attempts, d.aggregate_id
)
SELECT c.id, c.event_id, c.action, c.rule, c.attempts, e.received_at, e.body, c.aggregate_id
FROM c JOIN events e ON e.id = c.event_id ORDER BY c.id";

/// Each event's part in its digests and thresholds, in order (arrays of
/// one element per part; the actions as a JSON array each). Answers the
/// deliveries made, by part, and whether a threshold fired.
const AGGREGATE_SQL: &str = "
SELECT x.n, r.delivery, r.fired
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
            $7::bigint[], $8::int[], $9::int[], $10::bigint[], $11::bigint[], $12::text[])
     WITH ORDINALITY AS x(kind, event, at, rule, grp, actions, win, max, cnt, within, cooldown, value, n),
     LATERAL easehook_aggregate(x.kind, x.event, x.at, x.rule, x.grp,
                                ARRAY(SELECT jsonb_array_elements_text(x.actions::jsonb)),
                                x.win, x.max, x.cnt, x.within, x.cooldown, x.value) AS r
ORDER BY x.n";

/// Record outcomes, each only under the claim it was made with, and keep
/// each attempt made (`inc` 1) numbered after its delivery's last. `d.id =
/// ANY($2)` makes the rows be found through the primary key: joined with
/// the arrays alone, the planner may hash-join against a scan of the whole
/// table.
const RECORD_SQL: &str = "
WITH o AS (
    SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::int[], $6::bigint[], $7::text[],
                         $8::bigint[], $9::bigint[], $10::int[])
        AS o(id, lease, status, inc, at, error, started, took, code)
), u AS (
    UPDATE deliveries d SET
        status = o.status,
        attempts = d.attempts + o.inc,
        next_attempt_at = coalesce(o.at, d.next_attempt_at),
        leased_until = NULL,
        leased_by = NULL,
        last_error = CASE WHEN o.status = 'sent' THEN NULL ELSE coalesce(o.error, d.last_error) END,
        updated_at = $1
    FROM o
    WHERE d.id = ANY($2) AND d.id = o.id AND d.leased_until = o.lease
    RETURNING d.id
), a AS (
    INSERT INTO attempts (delivery_id, n, started_at, duration_ms, outcome, code, error)
    SELECT o.id, coalesce((SELECT max(x.n) FROM attempts x WHERE x.delivery_id = o.id), 0) + 1,
           o.started, o.took,
           CASE o.status WHEN 'pending' THEN 'retry' ELSE o.status END,
           o.code, left(o.error, 1000)
    FROM o JOIN u ON u.id = o.id WHERE o.inc = 1
)
SELECT id FROM u";

/// Take up to `$5` sends from the limit `$1` at `$2` (µs): GCRA with an
/// emission interval of `$3` and a tolerance of `$4` (a burst of
/// `$4 / $3 + 1`). The row is locked for the statement, so replicas taking
/// at once are served one after the other. Returns the new theoretical
/// arrival time and how many were granted.
const TAKE_RATE_SQL: &str = "
WITH p AS (SELECT $1::text AS key, $2::bigint AS now, $3::bigint AS t, $4::bigint AS tau, $5::bigint AS n)
INSERT INTO rate_limits AS r (key, tat, granted)
SELECT key, now + least(n, tau / t + 1) * t, least(n, tau / t + 1) FROM p
ON CONFLICT (key) DO UPDATE SET
    tat = (SELECT greatest(r.tat, now) + t * (CASE WHEN greatest(r.tat, now) - now > tau THEN 0
                                              ELSE least(n, (tau - (greatest(r.tat, now) - now)) / t + 1) END)
           FROM p),
    granted = (SELECT CASE WHEN greatest(r.tat, now) - now > tau THEN 0
                           ELSE least(n, (tau - (greatest(r.tat, now) - now)) / t + 1) END
               FROM p)
RETURNING tat, granted";

/// Open digests, and threshold groups with hits in their window (`$1`
/// is now) or resting after firing.
const LIST_GROUPS_SQL: &str = "
SELECT * FROM (
    SELECT 'digest' AS kind, rule, group_key, count, first_at, last_at, due_at,
           NULL::bigint AS cooldown_until
    FROM aggregates WHERE NOT closed
    UNION ALL
    SELECT 'threshold', g.rule, g.group_key, h.n, coalesce(h.first_at, 0), g.last_at, NULL,
           CASE WHEN g.cooldown_until > $1 THEN g.cooldown_until END
    FROM threshold_groups g,
         LATERAL (SELECT count(*) AS n, min(at) AS first_at FROM threshold_hits h
                  WHERE h.rule = g.rule AND h.group_key = g.group_key
                    AND h.at > $1 - g.within_ms) h
    WHERE h.n > 0 OR g.cooldown_until > $1
) x ORDER BY rule, group_key";

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.event, d.action, d.rule, d.status, d.attempts,
     d.next_attempt_at, d.last_error, d.created_at, d.updated_at";

impl PgStore {
    /// Connect, migrate the schema, and start the writers and the
    /// heartbeat, as the daemon whose `state_dir` this is: its lock keeps a
    /// second daemon off the directory, the replica id kept there names
    /// this daemon across restarts, and the claims of its earlier run (a
    /// crash) are released at once rather than when their leases end.
    /// Fails when the database cannot be reached, refuses the credentials,
    /// is not PostgreSQL, or has a newer schema.
    pub async fn connect(settings: &PostgresSettings, state_dir: &Path) -> Result<Self, OpenError> {
        let lock =
            super::lock_state_dir(state_dir).map_err(|e| OpenError::StateDir(format!("{e:#}")))?;
        let id = replica_id(state_dir).map_err(OpenError::StateDir)?;
        let store = Self::open(settings, id, Some(lock)).await?;
        let released = store
            .inner
            .pool
            .get()
            .await
            .map_err(|e| OpenError::Connect(StoreError::from(e).0))?
            .execute(
                "UPDATE deliveries SET leased_until = NULL, leased_by = NULL
                 WHERE leased_by = $1 AND status = 'pending'",
                &[&store.inner.replica.id],
            )
            .await
            .map_err(|e| OpenError::Connect(pg_message(&e)))?;
        if released > 0 {
            tracing::info!(released, "claims of this replica's earlier run released");
        }
        store
            .inner
            .heartbeat()
            .await
            .map_err(|e| OpenError::Connect(e.0))?;
        tokio::spawn(heartbeats(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// Connect for a tool (`store copy`): migrated, but no replica: no
    /// heartbeat, no lock, no claims of its own.
    pub async fn connect_tool(settings: &PostgresSettings) -> Result<Self, OpenError> {
        Self::open(
            settings,
            format!("tool-{}", uuid::Uuid::now_v7().simple()),
            None,
        )
        .await
    }

    async fn open(
        settings: &PostgresSettings,
        id: String,
        lock: Option<std::fs::File>,
    ) -> Result<Self, OpenError> {
        let pool = pool(settings)?;
        {
            let mut client = pool
                .get()
                .await
                .map_err(|e| OpenError::Connect(StoreError::from(e).0))?;
            migrate_on(&mut client).await?;
        }
        let now = crate::now_ms();
        let replica = Replica {
            id,
            host: hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now,
            last_seen: now,
        };
        let inner = Arc::new(Inner {
            pool,
            writable: AtomicBool::new(true),
            replica,
            _lock: lock,
        });
        let (accepts, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(inner.clone(), rx.clone()));
        }
        Ok(Self {
            inner,
            accepts,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// This daemon as its heartbeat row shows it.
    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    /// The connection pool, for tools that work on the database directly
    /// (`store copy`).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Run `f` on a pooled connection, on the runtime the store was opened
    /// on: the connections' I/O is driven there, never by the delivery
    /// threads, which yield their CPU to the request path. A write notes
    /// whether the database took it (for `/readyz`).
    fn run<T: Send + 'static>(
        &self,
        write: bool,
        f: impl for<'c> FnOnce(&'c deadpool_postgres::Client) -> BoxFuture<'c, Result<T, StoreError>>
        + Send
        + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let inner = self.inner.clone();
        let task = self.runtime.spawn(async move {
            let r = match inner.pool.get().await {
                Ok(client) => f(&client).await,
                Err(e) => Err(e.into()),
            };
            if write {
                inner.writable.store(r.is_ok(), Ordering::Relaxed);
            }
            r
        });
        Box::pin(async move {
            task.await
                .map_err(|e| StoreError(format!("store task failed: {e}")))?
        })
    }

    fn with_client<T: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(&'c deadpool_postgres::Client) -> BoxFuture<'c, Result<T, StoreError>>
        + Send
        + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        self.run(false, f)
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(&'c deadpool_postgres::Client) -> BoxFuture<'c, Result<T, StoreError>>
        + Send
        + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        self.run(true, f)
    }
}

/// This daemon's replica id, kept in `state_dir/replica-id` so that it
/// outlives a restart. The file also names the host: a `state_dir` copied
/// to another host (a cloned image) gets a new id there, so two live
/// replicas never share one.
fn replica_id(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join("replica-id");
    let host = hostname();
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some((id, on)) = text.trim().split_once(' ')
        && on == host
        && !id.is_empty()
    {
        return Ok(id.to_string());
    }
    let id = uuid::Uuid::now_v7().simple().to_string()[16..].to_string();
    std::fs::write(&path, format!("{id} {host}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// This host's name, for the replicas list.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Inner {
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let r = &self.replica;
        let now = crate::now_ms() as i64;
        client
            .execute(
                "INSERT INTO replicas(id, host, version, started_at, last_seen) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET host = excluded.host, version = excluded.version,
                     started_at = excluded.started_at, last_seen = excluded.last_seen",
                &[&r.id, &r.host, &r.version, &(r.started_at as i64), &now],
            )
            .await?;
        // Rows of daemons long gone.
        client
            .execute(
                "DELETE FROM replicas WHERE last_seen < $1",
                &[&(now - 86_400_000)],
            )
            .await?;
        Ok(())
    }
}

/// Write this daemon's heartbeat every [`HEARTBEAT`] for as long as the
/// store is open.
async fn heartbeats(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.heartbeat().await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }
}

/// A writer: take the callbacks waiting (up to [`MAX_BATCH`]), store them
/// in one statement, answer each. A failed batch is run again callback
/// by callback, so that one bad callback fails alone.
async fn writer(inner: Arc<Inner>, rx: Arc<Mutex<mpsc::UnboundedReceiver<Accept>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        // The same lock order in every transaction of every replica.
        batch.sort_by(|a, b| a.event.dedup_key.cmp(&b.event.dedup_key));
        match accept_batch(&inner.pool, &inner.replica.id, &batch).await {
            Ok(results) => {
                inner.writable.store(true, Ordering::Relaxed);
                for (a, r) in batch.into_iter().zip(results) {
                    let _ = a.reply.send(Ok(r));
                }
            }
            Err(e) if batch.len() == 1 => {
                inner.writable.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot store a callback");
                for a in batch {
                    let _ = a.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, n = batch.len(), "a batch failed; storing its callbacks one by one");
                for a in batch {
                    let r = accept_batch(&inner.pool, &inner.replica.id, std::slice::from_ref(&a))
                        .await
                        .map(|mut r| r.remove(0));
                    inner.writable.store(r.is_ok(), Ordering::Relaxed);
                    let _ = a.reply.send(r);
                }
            }
        }
    }
}

/// One transaction for the batch, its statements pipelined.
async fn accept_batch(
    pool: &Pool,
    replica: &str,
    batch: &[Accept],
) -> Result<Vec<Accepted>, StoreError> {
    use std::collections::HashSet;
    // The same callback twice in one batch: the first is stored (or not),
    // the others are its repeats (one statement may not claim a key twice).
    let mut seen = HashSet::new();
    let first: Vec<bool> = batch
        .iter()
        .map(|a| seen.insert(a.event.dedup_key.as_str()))
        .collect();
    // A reload between two callbacks of a batch may change the window:
    // each window is its own statement.
    let mut windows: Vec<u64> = batch.iter().map(|a| a.window).collect();
    windows.sort_unstable();
    windows.dedup();
    let client = pool.get().await?;
    // Digests and thresholds change in the same transaction as the events.
    let aggregated = batch.iter().any(|a| !a.event.aggregates.is_empty());
    if !aggregated {
        return accept_statements(&client, replica, batch, first, windows).await;
    }
    client.batch_execute("BEGIN").await?;
    let result = accept_statements(&client, replica, batch, first, windows).await;
    let result = match result {
        Ok(r) => client
            .batch_execute("COMMIT")
            .await
            .map(|()| r)
            .map_err(Into::into),
        Err(e) => Err(e),
    };
    if result.is_err() && client.batch_execute("ROLLBACK").await.is_err() {
        // A connection that cannot roll back is not handed out again.
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

/// The statements of [`accept_batch`]: the events, their deliveries, and
/// their parts in digests and thresholds.
async fn accept_statements(
    client: &deadpool_postgres::Client,
    replica: &str,
    batch: &[Accept],
    first: Vec<bool>,
    windows: Vec<u64>,
) -> Result<Vec<Accepted>, StoreError> {
    use std::collections::{HashMap, HashSet};
    let stmt = client.prepare_cached(ACCEPT_SQL).await?;
    let mut claimed: HashSet<String> = HashSet::new();
    let mut ids: HashMap<String, Vec<i64>> = HashMap::new();
    for window in windows {
        let events: Vec<&Accept> = batch
            .iter()
            .zip(&first)
            .filter(|(a, first)| **first && a.window == window)
            .map(|(a, _)| a)
            .collect();
        let ev = |f: fn(&Accept) -> &str| events.iter().map(|a| f(a)).collect::<Vec<&str>>();
        let at: Vec<i64> = events
            .iter()
            .map(|a| a.event.received_at_ms as i64)
            .collect();
        let deliveries = || {
            events
                .iter()
                .flat_map(|a| a.event.deliveries.iter().map(move |d| (*a, d)))
        };
        let d_event: Vec<&str> = deliveries().map(|(a, _)| a.event.id.as_str()).collect();
        let d_action: Vec<&str> = deliveries().map(|(_, d)| d.action.as_str()).collect();
        let d_rule: Vec<&str> = deliveries().map(|(_, d)| d.rule.as_str()).collect();
        let d_done: Vec<bool> = deliveries().map(|(_, d)| d.done).collect();
        let d_at: Vec<i64> = deliveries()
            .map(|(a, _)| a.event.received_at_ms as i64)
            .collect();
        let d_lease: Vec<Option<i64>> = deliveries()
            .map(|(a, _)| a.event.lease_until.map(|t| t as i64))
            .collect();
        let rows = client
            .query(
                &stmt,
                &[
                    &ev(|a| &a.event.dedup_key),
                    &ev(|a| &a.event.id),
                    &ev(|a| a.event.event.as_str()),
                    &at,
                    &ev(|a| &a.rules_json),
                    &ev(|a| &a.event.body),
                    &(window as i64),
                    &d_event,
                    &d_action,
                    &d_rule,
                    &d_done,
                    &d_at,
                    &d_lease,
                    &replica,
                    &ev(|a| a.event.from_user.as_str()),
                    &ev(|a| a.event.to_user.as_str()),
                ],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            match row.get::<_, Option<i64>>(1) {
                None => {
                    claimed.insert(name);
                }
                Some(id) => ids.entry(name).or_default().push(id),
            }
        }
    }
    let stored = |(a, first): (&Accept, &bool)| *first && claimed.contains(&a.event.dedup_key);
    let fired = aggregate(client, batch.iter().zip(&first).filter(|p| stored(*p))).await?;
    Ok(batch
        .iter()
        .zip(&first)
        .map(|(a, &first)| {
            if first && claimed.contains(&a.event.dedup_key) {
                let mut deliveries = ids.remove(&a.event.id).unwrap_or_default();
                // Ids are handed out in the order the rows were inserted,
                // which is the order of the event's deliveries.
                deliveries.sort_unstable();
                Accepted::New {
                    id: a.event.id.clone(),
                    deliveries,
                    fired: fired.get(a.event.id.as_str()).cloned().unwrap_or_default(),
                }
            } else {
                Accepted::Duplicate
            }
        })
        .collect())
}

/// Apply the stored events' parts in digests and thresholds, in one
/// statement. The parts are sorted by rule and group (each group's events
/// keep their order), so every transaction takes the groups' row locks in
/// the same order and two replicas never deadlock. Returns the thresholds
/// each event made fire.
async fn aggregate<'a>(
    client: &deadpool_postgres::Client,
    stored: impl Iterator<Item = (&'a Accept, &'a bool)>,
) -> Result<std::collections::HashMap<&'a str, Vec<String>>, StoreError> {
    let mut parts: Vec<(&NewEvent, &super::NewAggregate)> = stored
        .flat_map(|(a, _)| a.event.aggregates.iter().map(move |g| (&a.event, g)))
        .collect();
    let mut fired: std::collections::HashMap<&str, Vec<String>> = Default::default();
    if parts.is_empty() {
        return Ok(fired);
    }
    parts.sort_by(|(_, a), (_, b)| (a.rule.as_str(), &a.group).cmp(&(b.rule.as_str(), &b.group)));
    let mut cols = AggregateColumns::default();
    for (ev, g) in &parts {
        cols.push(ev, g);
    }
    let stmt = client.prepare_cached(AGGREGATE_SQL).await?;
    let rows = client
        .query(
            &stmt,
            &[
                &cols.kind,
                &cols.event,
                &cols.at,
                &cols.rule,
                &cols.group,
                &cols.actions,
                &cols.window,
                &cols.max,
                &cols.count,
                &cols.within,
                &cols.cooldown,
                &cols.value,
            ],
        )
        .await?;
    for row in rows {
        let n = row.get::<_, i64>(0) as usize - 1;
        let (ev, g) = parts[n];
        if row.get::<_, Option<bool>>(2) == Some(true) {
            let list = fired.entry(ev.id.as_str()).or_default();
            if !list.iter().any(|r| r == g.rule.as_str()) {
                list.push(g.rule.to_string());
            }
        }
    }
    Ok(fired)
}

/// The parts of [`aggregate`] as the arrays of [`AGGREGATE_SQL`].
#[derive(Default)]
struct AggregateColumns {
    kind: Vec<&'static str>,
    event: Vec<String>,
    at: Vec<i64>,
    rule: Vec<String>,
    group: Vec<String>,
    actions: Vec<String>,
    window: Vec<i64>,
    max: Vec<i32>,
    count: Vec<i32>,
    within: Vec<i64>,
    cooldown: Vec<i64>,
    value: Vec<String>,
}

impl AggregateColumns {
    fn push(&mut self, ev: &NewEvent, g: &super::NewAggregate) {
        use super::AggregateSpec;
        self.event.push(ev.id.clone());
        self.at.push(ev.received_at_ms as i64);
        self.rule.push(g.rule.to_string());
        self.group.push(g.group.clone());
        let actions: Vec<&str> = g.actions.iter().map(|a| a.as_str()).collect();
        self.actions
            .push(serde_json::to_string(&actions).unwrap_or_else(|_| "[]".into()));
        match &g.spec {
            AggregateSpec::Digest {
                window_ms,
                max_events,
            } => {
                self.kind.push("digest");
                self.window.push(*window_ms as i64);
                self.max.push(*max_events as i32);
                self.count.push(0);
                self.within.push(0);
                self.cooldown.push(0);
                self.value.push(String::new());
            }
            AggregateSpec::Threshold {
                count,
                within_ms,
                cooldown_ms,
                value,
            } => {
                self.kind.push("threshold");
                self.window.push(0);
                self.max.push(0);
                self.count.push(*count as i32);
                self.within.push(*within_ms as i64);
                self.cooldown.push(*cooldown_ms as i64);
                self.value.push(value.clone());
            }
        }
    }
}

/// Close the digests and firings `ids` (a digest takes no event once one
/// of its deliveries is claimed: the update waits for any transaction
/// adding an event to it, and what it renders is final) and read them.
async fn claim_aggregates(
    c: &deadpool_postgres::Client,
    ids: Vec<i64>,
) -> Result<std::collections::HashMap<i64, super::StoredAggregate>, StoreError> {
    use super::{AggregateKind, StoredAggregate};
    c.execute(
        "UPDATE aggregates SET closed = true WHERE id = ANY($1) AND NOT closed",
        &[&ids],
    )
    .await?;
    let rows = c
        .query(
            "SELECT a.id, a.kind, a.rule, a.group_key, a.count, a.first_at, a.last_at, a.within_ms,
                    e.id, e.received_at, e.body, a.due_at
             FROM aggregates a LEFT JOIN events e ON e.id = a.last_event WHERE a.id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut out: std::collections::HashMap<i64, StoredAggregate> = rows
        .iter()
        .map(|r| {
            let last = r
                .get::<_, Option<String>>(8)
                .map(|id| (id, r.get::<_, i64>(9), r.get::<_, String>(10)));
            let agg = StoredAggregate {
                info: super::AggregateInfo {
                    kind: AggregateKind::parse(r.get(1)).unwrap_or(AggregateKind::Digest),
                    rule: r.get(2),
                    group: r.get(3),
                    count: r.get::<_, i64>(4) as u64,
                    first_at: r.get::<_, i64>(5) as u64,
                    last_at: r.get::<_, i64>(6) as u64,
                    within_ms: r.get::<_, i64>(7) as u64,
                    due_at: r.get::<_, i64>(11) as u64,
                    events: Vec::new(),
                },
                events: Vec::new(),
                last,
            };
            (r.get::<_, i64>(0), agg)
        })
        .collect();
    let events = c
        .query(
            "SELECT a.aggregate_id, e.id, e.received_at, e.body
             FROM aggregate_events a JOIN events e ON e.id = a.event_id
             WHERE a.aggregate_id = ANY($1) ORDER BY a.aggregate_id, a.seq",
            &[&ids],
        )
        .await?;
    for r in events {
        if let Some(agg) = out.get_mut(&r.get::<_, i64>(0)) {
            agg.events.push((r.get(1), r.get(2), r.get(3)));
        }
    }
    Ok(out)
}

/// The statements of [`Store::replay`], in its transaction: each event's
/// new deliveries under a transaction-scoped advisory lock on the event, so
/// that replicas replaying it at once take turns, and the second finds
/// what the first created.
async fn replay_in(
    c: &deadpool_postgres::Client,
    events: &[(String, Vec<super::NewDelivery>)],
    now: u64,
    dry_run: bool,
) -> Result<Vec<Replayed>, StoreError> {
    const MISSING: &str = "FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(action, rule, n)
        WHERE EXISTS (SELECT 1 FROM events WHERE id = $1)
          AND NOT EXISTS (SELECT 1 FROM deliveries d
                          WHERE d.event_id = $1 AND d.action = t.action AND d.aggregate_id IS NULL)";
    let lock = c
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
        .await?;
    let stmt = if dry_run {
        c.prepare_cached(&format!(
            "SELECT NULL::bigint, t.action, t.rule {MISSING} ORDER BY t.n"
        ))
        .await?
    } else {
        c.prepare_cached(&format!(
            "INSERT INTO deliveries(event_id, action, rule, status, attempts, next_attempt_at,
                                    created_at, updated_at)
             SELECT $1, t.action, t.rule, 'pending', 0, $4, $4, $4 {MISSING} ORDER BY t.n
             RETURNING id, action, rule"
        ))
        .await?
    };
    let mut out = Vec::new();
    for (event_id, deliveries) in events {
        c.execute(&lock, &[event_id]).await?;
        let actions: Vec<&str> = deliveries.iter().map(|d| d.action.as_str()).collect();
        let rules: Vec<&str> = deliveries.iter().map(|d| d.rule.as_str()).collect();
        let rows = if dry_run {
            c.query(&stmt, &[event_id, &actions, &rules]).await?
        } else {
            c.query(&stmt, &[event_id, &actions, &rules, &(now as i64)])
                .await?
        };
        let mut made: Vec<Replayed> = rows
            .iter()
            .map(|r| Replayed {
                event_id: event_id.clone(),
                delivery: r.get(0),
                action: r.get(1),
                rule: r.get(2),
            })
            .collect();
        made.sort_by_key(|r| r.delivery);
        out.extend(made);
    }
    Ok(out)
}

/// Decode claimed rows: each event's callback is parsed once.
fn decode(
    rows: Vec<Row>,
    lease_until: u64,
    aggregates: std::collections::HashMap<i64, super::StoredAggregate>,
) -> Vec<Claimed> {
    let mut callbacks = Callbacks::default();
    // Each digest or firing once, shared by its deliveries.
    let aggregates: std::collections::HashMap<i64, _> = aggregates
        .into_iter()
        .map(|(id, a)| {
            let last = a.last_callback(&mut callbacks);
            (id, (Arc::new(a.decode(&mut callbacks)), last))
        })
        .collect();
    rows.into_iter()
        .map(|r| {
            let event_id: String = r.get(1);
            let aggregate = r
                .get::<_, Option<i64>>(7)
                .and_then(|id| aggregates.get(&id));
            let (callback, received_at_ms) = match aggregate {
                Some((_, last)) => last.clone(),
                None => (callbacks.of(&event_id, r.get(6)), r.get::<_, i64>(5) as u64),
            };
            Claimed {
                id: r.get(0),
                callback,
                aggregate: aggregate.map(|(a, _)| a.clone()),
                event_id,
                action: r.get::<_, &str>(2).into(),
                rule: r.get::<_, &str>(3).into(),
                attempts: r.get::<_, i32>(4) as u32,
                lease_until,
                received_at_ms,
            }
        })
        .collect()
}

fn delivery_row(r: &Row) -> DeliveryInfo {
    let status = Status::parse(r.get(5)).unwrap_or(Status::Pending);
    DeliveryInfo {
        id: r.get(0),
        event_id: r.get(1),
        event: r.get(2),
        action: r.get(3),
        rule: r.get(4),
        status,
        attempts: r.get::<_, i32>(6) as u32,
        next_attempt_at: (status == Status::Pending).then(|| r.get::<_, i64>(7) as u64),
        last_error: r.get(8),
        created_at: r.get::<_, i64>(9) as u64,
        updated_at: r.get::<_, i64>(10) as u64,
    }
}

impl Store for PgStore {
    fn accept(&self, event: NewEvent, window: u64) -> BoxFuture<'_, Result<Accepted, StoreError>> {
        let rules_json = serde_json::to_string(&event.rules).unwrap_or_else(|_| "[]".into());
        let (reply, rx) = oneshot::channel();
        let sent = self.accepts.send(Accept {
            event,
            rules_json,
            window,
            reply,
        });
        Box::pin(async move {
            if sent.is_err() {
                return Err(StoreError("the store writers have stopped".into()));
            }
            rx.await
                .map_err(|_| StoreError("the store writers have stopped".into()))?
        })
    }

    fn claim_due(
        &self,
        now: u64,
        limit: usize,
        lease: u64,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        let lease_until = super::lease_end(now, lease);
        let replica = self.inner.replica.id.clone();
        self.write(move |c| {
            Box::pin(async move {
                let stmt = c.prepare_cached(CLAIM_SQL).await?;
                let rows = c
                    .query(
                        &stmt,
                        &[
                            &(lease_until as i64),
                            &(now as i64),
                            &(limit as i64),
                            &replica,
                        ],
                    )
                    .await?;
                let ids: Vec<i64> = rows
                    .iter()
                    .filter_map(|r| r.get::<_, Option<i64>>(7))
                    .collect();
                let aggregates = if ids.is_empty() {
                    Default::default()
                } else {
                    claim_aggregates(c, ids).await?
                };
                Ok(decode(rows, lease_until, aggregates))
            })
        })
    }

    fn record_attempts(
        &self,
        outcomes: Vec<(Lease, Record, Attempt)>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        self.write(move |c| {
            Box::pin(async move {
                let n = outcomes.len();
                let started: Vec<i64> = outcomes.iter().map(|o| o.2.started_at_ms as i64).collect();
                let took: Vec<i64> = outcomes.iter().map(|o| o.2.duration_ms as i64).collect();
                let codes: Vec<Option<i32>> =
                    outcomes.iter().map(|o| o.2.code.map(i32::from)).collect();
                let (mut ids, mut leases, mut statuses, mut incs, mut ats, mut errors) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for (lease, r, _) in &outcomes {
                    ids.push(lease.id);
                    leases.push(lease.until as i64);
                    let (status, inc, at, error): (&str, i32, Option<i64>, Option<&str>) = match r {
                        Record::Sent => ("sent", 1, None, None),
                        Record::Retry {
                            at_ms,
                            error,
                            counted,
                        } => (
                            "pending",
                            i32::from(*counted),
                            Some(*at_ms as i64),
                            counted.then_some(error.as_str()),
                        ),
                        Record::Dead { error } => ("dead", 1, None, Some(error.as_str())),
                    };
                    statuses.push(status);
                    incs.push(inc);
                    ats.push(at);
                    errors.push(error);
                }
                let stmt = c.prepare_cached(RECORD_SQL).await?;
                let now = crate::now_ms() as i64;
                let rows = c
                    .query(
                        &stmt,
                        &[
                            &now, &ids, &leases, &statuses, &incs, &ats, &errors, &started, &took,
                            &codes,
                        ],
                    )
                    .await?;
                let recorded: std::collections::HashSet<i64> =
                    rows.iter().map(|r| r.get(0)).collect();
                Ok(ids
                    .into_iter()
                    .filter(|id| !recorded.contains(id))
                    .collect())
            })
        })
    }

    fn replay(
        &self,
        events: Vec<(String, Vec<super::NewDelivery>)>,
        now: u64,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StoreError>> {
        self.write(move |c| {
            Box::pin(async move {
                let mut events = events;
                // One lock order for every replica: by event id.
                events.sort_by(|a, b| a.0.cmp(&b.0));
                c.batch_execute("BEGIN").await?;
                let result = replay_in(c, &events, now, dry_run).await;
                let result = match result {
                    Ok(r) => c
                        .batch_execute("COMMIT")
                        .await
                        .map(|()| r)
                        .map_err(Into::into),
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    let _ = c.batch_execute("ROLLBACK").await;
                }
                result
            })
        })
    }

    fn delivery(&self, id: i64) -> BoxFuture<'_, Result<Option<DeliveryDetail>, StoreError>> {
        self.with_client(move |c| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                     WHERE d.id = $1"
                );
                let Some(row) = c.query_opt(&sql, &[&id]).await? else {
                    return Ok(None);
                };
                let attempts = c
                    .query(
                        "SELECT n, started_at, duration_ms, outcome, code, error FROM attempts
                         WHERE delivery_id = $1 ORDER BY n",
                        &[&id],
                    )
                    .await?;
                Ok(Some(DeliveryDetail {
                    delivery: delivery_row(&row),
                    attempts_made: attempts
                        .iter()
                        .map(|r| AttemptInfo {
                            n: r.get::<_, i32>(0) as u32,
                            started_at: r.get::<_, i64>(1) as u64,
                            duration_ms: r.get::<_, i64>(2) as u64,
                            outcome: r.get(3),
                            code: r.get::<_, Option<i32>>(4).map(|c| c as u16),
                            error: r.get(5),
                        })
                        .collect(),
                }))
            })
        })
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        // As in the embedded store: leased deliveries are someone's work in
        // flight. Claims that run out are found by the dispatcher's polling
        // (at least once a second), not announced.
        self.with_client(|c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT next_attempt_at FROM deliveries
                         WHERE status = 'pending' AND leased_until IS NULL
                         ORDER BY next_attempt_at LIMIT 1",
                        &[],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, i64>(0) as u64))
            })
        })
    }

    fn retry(&self, ids: Option<Vec<i64>>, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.write(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
                                leased_until = NULL, updated_at = $2
                         WHERE status = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1))",
                        &[&ids, &(now as i64)],
                    )
                    .await?;
                Ok(n)
            })
        })
    }

    fn query_deliveries(
        &self,
        q: DeliveryQuery,
    ) -> BoxFuture<'_, Result<Vec<DeliveryInfo>, StoreError>> {
        self.with_client(move |c| {
            Box::pin(async move {
                let status = q.status_condition();
                let sql = format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                     WHERE ($2::text IS NULL OR d.action = $2) AND ($3::bigint IS NULL OR d.id < $3)
                     {status} ORDER BY d.id DESC LIMIT $1"
                );
                let rows = c
                    .query(&sql, &[&(q.limit as i64), &q.action, &q.before])
                    .await?;
                Ok(rows.iter().map(delivery_row).collect())
            })
        })
    }

    fn query_events(&self, q: EventQuery) -> BoxFuture<'_, Result<Vec<EventInfo>, StoreError>> {
        self.with_client(move |c| {
            Box::pin(async move {
                let limit = Param::Int(q.limit as i64);
                let Some(user) = q.user.clone() else {
                    let (conditions, mut params) = q.conditions(Dialect::Postgres, 2);
                    params.insert(0, limit);
                    let sql = format!(
                        "FROM events WHERE TRUE {conditions}
                         ORDER BY received_at DESC, id DESC LIMIT $1::bigint"
                    );
                    return events_where(c, &sql, params).await;
                };
                // By user: the newest of each side, each walking its own
                // index (`events_from`, `events_to`) and stopping at a
                // page, then merged; a user with many events costs no more
                // than one with a page of them.
                let others = EventQuery {
                    user: None,
                    ..q.clone()
                };
                let (conditions, mut params) = others.conditions(Dialect::Postgres, 3);
                params.splice(0..0, [limit, Param::Text(user)]);
                let side = |column: &str| {
                    format!(
                        "(SELECT * FROM events WHERE {column} = $2::text {conditions}
                          ORDER BY received_at DESC, id DESC LIMIT $1::bigint)"
                    )
                };
                let sql = format!(
                    "FROM ({} UNION {}) AS e ORDER BY received_at DESC, id DESC LIMIT $1::bigint",
                    side("from_user"),
                    side("to_user")
                );
                events_where(c, &sql, params).await
            })
        })
    }

    fn event(&self, id: String) -> BoxFuture<'_, Result<Option<EventInfo>, StoreError>> {
        self.with_client(move |c| {
            Box::pin(async move {
                Ok(
                    events_where(c, "FROM events WHERE id = $1::text", vec![Param::Text(id)])
                        .await?
                        .pop(),
                )
            })
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
        self.with_client(|c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending'),
                                (SELECT count(*) FROM deliveries WHERE status = 'dead'),
                                (SELECT count(*) FROM aggregates WHERE NOT closed)",
                        &[],
                    )
                    .await?;
                Ok(Counts {
                    pending: row.get::<_, i64>(0) as u64,
                    dead: row.get::<_, i64>(1) as u64,
                    digests_open: row.get::<_, i64>(2) as u64,
                })
            })
        })
    }

    fn list_groups(&self, now: u64) -> BoxFuture<'_, Result<Vec<OpenGroup>, StoreError>> {
        self.with_client(move |c| {
            Box::pin(async move {
                let rows = c.query(LIST_GROUPS_SQL, &[&(now as i64)]).await?;
                Ok(rows
                    .iter()
                    .map(|r| OpenGroup {
                        kind: super::AggregateKind::parse(r.get(0))
                            .unwrap_or(super::AggregateKind::Digest),
                        rule: r.get(1),
                        group: serde_json::from_str(r.get(2)).unwrap_or(serde_json::Value::Null),
                        count: r.get::<_, i64>(3) as u64,
                        first_at: r.get::<_, i64>(4) as u64,
                        last_at: r.get::<_, i64>(5) as u64,
                        due_at: r.get::<_, Option<i64>>(6).map(|v| v as u64),
                        cooldown_until: r.get::<_, Option<i64>>(7).map(|v| v as u64),
                    })
                    .collect())
            })
        })
    }

    fn prune(&self, now: u64, retention: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.write(move |c| {
            Box::pin(async move {
                // One replica prunes at a time; the others find the lock
                // taken and leave it to that one.
                let locked: bool = c
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_PRUNE])
                    .await?
                    .get(0);
                if !locked {
                    return Ok(0);
                }
                let result = prune_batches(c, now, retention).await;
                let unlocked = c
                    .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_PRUNE])
                    .await;
                let n = result?;
                unlocked?;
                Ok(n)
            })
        })
    }

    fn is_writable(&self) -> bool {
        self.inner.writable.load(Ordering::Relaxed)
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(|c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO meta(key, value) VALUES ('probe', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&crate::now_ms().to_string()],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // The watchdog asks whether this process works, not whether the
        // database is up: a daemon waiting for its database is healthy,
        // and restarting it would not bring the database back.
        let alive = !self.accepts.is_closed();
        Box::pin(async move {
            if alive {
                Ok(())
            } else {
                Err(StoreError("the store writers have stopped".into()))
            }
        })
    }

    fn take_rate(
        &self,
        key: &str,
        n: u32,
        interval_us: u64,
        burst: u32,
        now_us: u64,
    ) -> BoxFuture<'_, Result<Option<RateGrant>, StoreError>> {
        let key = key.to_string();
        let interval = interval_us.max(1) as i64;
        let tolerance = interval * i64::from(burst.max(1) - 1);
        self.write(move |c| {
            Box::pin(async move {
                let stmt = c.prepare_cached(TAKE_RATE_SQL).await?;
                let row = c
                    .query_one(
                        &stmt,
                        &[&key, &(now_us as i64), &interval, &tolerance, &i64::from(n)],
                    )
                    .await?;
                let tat: i64 = row.get(0);
                let granted: i32 = row.get(1);
                Ok(Some(RateGrant {
                    allowed: granted.max(0) as u32,
                    next_at_us: (tat - tolerance).max(0) as u64,
                }))
            })
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn replicas(&self) -> BoxFuture<'_, Result<Option<Vec<Replica>>, StoreError>> {
        self.with_client(|c| {
            Box::pin(async move {
                let since = crate::now_ms().saturating_sub(REPLICA_SEEN) as i64;
                let rows = c
                    .query(
                        "SELECT id, host, version, started_at, last_seen FROM replicas
                         WHERE last_seen >= $1 ORDER BY started_at, id",
                        &[&since],
                    )
                    .await?;
                Ok(Some(
                    rows.iter()
                        .map(|r| Replica {
                            id: r.get(0),
                            host: r.get(1),
                            version: r.get(2),
                            started_at: r.get::<_, i64>(3) as u64,
                            last_seen: r.get::<_, i64>(4) as u64,
                        })
                        .collect(),
                ))
            })
        })
    }
}

/// Delete what is past retention, [`PRUNE_BATCH`] rows per statement:
/// finished deliveries, events left with none, expired dedup keys.
async fn prune_batches(
    c: &deadpool_postgres::Client,
    now: u64,
    retention: u64,
) -> Result<u64, StoreError> {
    let cutoff = now.saturating_sub(retention) as i64;
    let mut total = 0;
    let steps: [(&str, i64); 8] = [
        // Attempts go with their delivery: first those of deliveries past
        // retention, then the deliveries.
        (
            "DELETE FROM attempts WHERE delivery_id IN (
                 SELECT id FROM deliveries WHERE status IN ('sent', 'dead') AND updated_at < $1
                 AND EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = deliveries.id) LIMIT $2)",
            cutoff,
        ),
        (
            "DELETE FROM deliveries WHERE id IN (
                 SELECT id FROM deliveries WHERE status IN ('sent', 'dead') AND updated_at < $1 LIMIT $2)",
            cutoff,
        ),
        // Digests and firings whose deliveries are all gone: their events
        // first, then themselves.
        (
            "DELETE FROM aggregate_events WHERE aggregate_id IN (
                 SELECT id FROM aggregates a WHERE a.last_at < $1
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.aggregate_id = a.id) LIMIT $2)",
            cutoff,
        ),
        (
            "DELETE FROM aggregates WHERE id IN (
                 SELECT id FROM aggregates a WHERE a.last_at < $1
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.aggregate_id = a.id)
                 AND NOT EXISTS (SELECT 1 FROM aggregate_events e WHERE e.aggregate_id = a.id) LIMIT $2)",
            cutoff,
        ),
        (
            "DELETE FROM events WHERE id IN (
                 SELECT id FROM events ev WHERE received_at < $1
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = ev.id)
                 AND NOT EXISTS (SELECT 1 FROM aggregate_events a WHERE a.event_id = ev.id) LIMIT $2)",
            cutoff,
        ),
        // Threshold groups whose window is empty and that are not resting.
        (
            "DELETE FROM threshold_hits h WHERE (h.rule, h.group_key) IN (
                 SELECT rule, group_key FROM threshold_groups
                 WHERE cooldown_until <= $1 AND last_at + within_ms <= $1 LIMIT $2)",
            now as i64,
        ),
        (
            "DELETE FROM threshold_groups WHERE (rule, group_key) IN (
                 SELECT g.rule, g.group_key FROM threshold_groups g
                 WHERE g.cooldown_until <= $1 AND g.last_at + g.within_ms <= $1
                 AND NOT EXISTS (SELECT 1 FROM threshold_hits h
                                 WHERE h.rule = g.rule AND h.group_key = g.group_key) LIMIT $2)",
            now as i64,
        ),
        (
            "DELETE FROM dedup WHERE key IN (
                 SELECT key FROM dedup WHERE expires_at <= $1 LIMIT $2)",
            now as i64,
        ),
    ];
    for (i, (sql, at)) in steps.into_iter().enumerate() {
        loop {
            let n = c.execute(sql, &[&at, &PRUNE_BATCH]).await?;
            // Counted as in the embedded store: deliveries, digests and
            // firings, and events.
            if matches!(i, 1 | 3 | 4) {
                total += n;
            }
            if (n as i64) < PRUNE_BATCH {
                break;
            }
        }
    }
    Ok(total)
}
