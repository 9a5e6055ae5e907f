//! The shared store: one PostgreSQL database behind any number of daemons
//! (replicas), so that no host is a single point of failure (SPEC §9).
//!
//! - **Accept** is group-committed as in the embedded store: writer tasks
//!   take every callback waiting in their queue and store them all in one
//!   statement ([`accept::ACCEPT_SQL`]: one round trip, one commit), with
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

mod accept;
mod aggregate;
mod claims;
mod prune;
mod queries;
mod replicas;
mod schema;

pub use replicas::HEARTBEAT;
pub use schema::{SCHEMA_VERSION, migrate};

use accept::{Accept, WRITERS, writer};
use replicas::{heartbeats, hostname, replica_id};
use schema::migrate_on;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    Accepted, Attempt, Claimed, Counts, DeliveryDetail, DeliveryInfo, DeliveryQuery, EventInfo,
    EventQuery, Lease, NewEvent, OpenGroup, RateGrant, Record, Replayed, Replica, Store,
    StoreError,
};
use crate::config::PostgresSettings;

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
        self.write(move |c| Box::pin(claims::claim(c, lease_until, now, limit, replica)))
    }

    fn record_attempts(
        &self,
        outcomes: Vec<(Lease, Record, Attempt)>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        self.write(move |c| Box::pin(claims::record(c, outcomes)))
    }

    fn replay(
        &self,
        events: Vec<(String, Vec<super::NewDelivery>)>,
        now: u64,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StoreError>> {
        self.write(move |c| Box::pin(claims::replay(c, events, now, dry_run)))
    }

    fn delivery(&self, id: i64) -> BoxFuture<'_, Result<Option<DeliveryDetail>, StoreError>> {
        self.with_client(move |c| Box::pin(queries::delivery(c, id)))
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        // As in the embedded store: leased deliveries are someone's work in
        // flight. Claims that run out are found by the dispatcher's polling
        // (at least once a second), not announced.
        self.with_client(move |c| Box::pin(claims::next_due(c)))
    }

    fn retry(&self, ids: Option<Vec<i64>>, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.write(move |c| Box::pin(claims::retry(c, ids, now)))
    }

    fn query_deliveries(
        &self,
        q: DeliveryQuery,
    ) -> BoxFuture<'_, Result<Vec<DeliveryInfo>, StoreError>> {
        self.with_client(move |c| Box::pin(queries::deliveries(c, q)))
    }

    fn query_events(&self, q: EventQuery) -> BoxFuture<'_, Result<Vec<EventInfo>, StoreError>> {
        self.with_client(move |c| Box::pin(queries::events(c, q)))
    }

    fn event(&self, id: String) -> BoxFuture<'_, Result<Option<EventInfo>, StoreError>> {
        self.with_client(move |c| Box::pin(queries::event(c, id)))
    }

    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
        self.with_client(move |c| Box::pin(queries::counts(c)))
    }

    fn list_groups(&self, now: u64) -> BoxFuture<'_, Result<Vec<OpenGroup>, StoreError>> {
        self.with_client(move |c| Box::pin(aggregate::list_groups(c, now)))
    }

    fn prune(&self, now: u64, retention: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.write(move |c| Box::pin(prune::prune(c, now, retention)))
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
        self.write(move |c| Box::pin(aggregate::take_rate(c, key, n, interval, tolerance, now_us)))
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn replicas(&self) -> BoxFuture<'_, Result<Option<Vec<Replica>>, StoreError>> {
        self.with_client(move |c| Box::pin(replicas::replicas(c)))
    }
}
