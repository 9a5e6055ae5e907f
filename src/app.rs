//! Wiring: load the snapshot, bind both listeners, start the tasks, and run
//! until shutdown.
//!
//! [`App::start`] takes the config path and a [`Shutdown`], and binds the
//! listeners itself, so tests start the real daemon in-process with
//! `listen: 127.0.0.1:0` and read the bound addresses back.
//!
//! Deliveries run on a runtime of their own whose threads have a lower
//! scheduling priority than the listeners and the store writer
//! ([`crate::priority`]). Idle, they take all the CPU they want; in a burst,
//! the CPU goes to acknowledging callbacks first, and the queue (durable)
//! absorbs the rest until the burst is over. Easemob suspends callbacks that
//! fail; a delivery that waits a little harms no one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::actions::Senders;
use crate::config::StoreSettings;
use crate::config::expand::Env;
use crate::dispatch::Dispatcher;
use crate::priority::DeliveryThreads;
use crate::server::{self, Limits};
use crate::shutdown::Shutdown;
use crate::snapshot;
use crate::sockets::Passed;
use crate::state::{AppState, ReloadStatus};
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;

/// A running daemon.
pub struct App {
    /// Where the callback listener is bound.
    pub callback_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    tasks: JoinSet<()>,
    shutdown: Shutdown,
    /// The deliveries' runtime (see the module docs).
    deliveries: Option<tokio::runtime::Runtime>,
}

/// The runtime deliveries run on: as many threads as cores, each joined to
/// `threads` (lowered, and yielding while they do) as it starts.
fn delivery_runtime(threads: &Arc<DeliveryThreads>) -> std::io::Result<tokio::runtime::Runtime> {
    let (entering, leaving) = (threads.clone(), threads.clone());
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("easehook-deliver")
        .enable_all()
        .max_blocking_threads(4)
        .on_thread_start(move || entering.enter())
        .on_thread_stop(move || leaving.leave())
        .build()
}

/// Ping systemd's watchdog at half its interval, but only while the
/// dispatcher loop runs and the store writer answers: a daemon that still
/// takes callbacks but can no longer deliver or store them gets restarted.
async fn watchdog(state: Arc<AppState>, interval: std::time::Duration, shutdown: Shutdown) {
    let period = interval / 2;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let beat = state.heartbeat.load(std::sync::atomic::Ordering::Relaxed);
        let dispatcher_alive = crate::now_ms().saturating_sub(beat) < interval.as_millis() as u64;
        let store_alive = matches!(
            tokio::time::timeout(period, state.store.ping()).await,
            Ok(Ok(()))
        );
        if dispatcher_alive && store_alive {
            crate::sockets::notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                dispatcher_alive,
                store_alive,
                "withholding the watchdog ping"
            );
        }
    }
}

/// The listener for `key`: the socket systemd passed, else `addr` bound.
async fn listener(
    passed: Option<std::net::TcpListener>,
    addr: SocketAddr,
    key: &str,
) -> anyhow::Result<TcpListener> {
    let Some(socket) = passed else {
        return TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({key})"));
    };
    let listener = TcpListener::from_std(socket)
        .with_context(|| format!("cannot serve the socket passed by systemd for {key}"))?;
    let bound = listener.local_addr()?;
    if bound == addr {
        tracing::info!(%bound, "serving the socket passed by systemd for {key}");
    } else {
        tracing::warn!(
            %bound,
            configured = %addr,
            "serving the socket passed by systemd for {key}, not the configured address \
             (the socket unit's ListenStream= decides)"
        );
    }
    Ok(listener)
}

/// Open the store the settings name. A shared store that cannot be used
/// is reported against `store.url`, its password masked.
pub async fn open_store(settings: &crate::config::Settings) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &settings.store {
        StoreSettings::Sqlite => {
            let store = SqliteStore::open(&settings.state_dir)?;
            tracing::info!(path = %store.path().display(), "store opened");
            Arc::new(store)
        }
        StoreSettings::Postgres(pg) => {
            let store = PgStore::connect(pg, &settings.state_dir)
                .await
                .map_err(|e| match e {
                    crate::store::postgres::OpenError::StateDir(e) => anyhow::anyhow!(e),
                    e => anyhow::anyhow!(pg.problem(settings, &e.to_string())),
                })?;
            tracing::info!(url = %pg.shown_url, replica = %store.replica().id, "store connected");
            Arc::new(store)
        }
    })
}

impl App {
    /// Load the configuration at `config`, bind, and start serving.
    pub async fn start(
        config: &Path,
        env: Arc<dyn Env + Send + Sync>,
        shutdown: Shutdown,
    ) -> anyhow::Result<App> {
        Self::start_with(config, env, shutdown, Passed::none()).await
    }

    /// As [`App::start`], serving the sockets in `passed` (from systemd)
    /// instead of binding the listeners they stand for.
    pub async fn start_with(
        config: &Path,
        env: Arc<dyn Env + Send + Sync>,
        shutdown: Shutdown,
        passed: Passed,
    ) -> anyhow::Result<App> {
        let hup = crate::reload::listen_hup();
        let snap = snapshot::load(config, env.as_ref()).map_err(|d| anyhow::anyhow!("{d}"))?;
        let settings = &snap.settings;
        // The store first: it takes the lock that keeps a second daemon off
        // `state_dir` (or connects to the shared database and migrates it),
        // and says so before anything else can go wrong.
        let store = open_store(settings).await?;
        let callback_listener = listener(passed.callback, settings.listen, "listen").await?;
        let admin_listener = listener(passed.admin, settings.admin_listen, "admin_listen").await?;
        let callback_addr = callback_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        for w in &settings.warnings {
            tracing::warn!("{w}");
        }
        for w in &snap.rules.warnings {
            tracing::warn!("{w}");
        }
        let drain = settings.delivery.shutdown_grace;
        let (reload_tx, reload_rx) = mpsc::channel(8);
        // As many hand-offs as attempts can run at once, which bounds how
        // long a hand-off waits for a slot (see `snapshot::lease_ms`).
        let (handoff_tx, handoff_rx) = mpsc::channel(settings.delivery.concurrency);
        let delivery_threads = DeliveryThreads::new();
        // Sized at start; a reload that changes `presend.queue` takes
        // effect on restart.
        let (presend_tx, presend_rx) = mpsc::channel(settings.presend_queue());
        let state = Arc::new(AppState {
            snapshot: ArcSwap::new(snap.clone()),
            store,
            started: Instant::now(),
            reload_status: std::sync::Mutex::new(ReloadStatus {
                ok: true,
                at: crate::now_ms() / 1000,
                errors: Vec::new(),
            }),
            reload_tx,
            env,
            accepted: AtomicU64::new(0),
            wake: Arc::new(tokio::sync::Notify::new()),
            handoff: handoff_tx,
            heartbeat: AtomicU64::new(crate::now_ms()),
            delivery_threads: delivery_threads.clone(),
            metrics: crate::metrics::Metrics::new(),
            activity: crate::metrics::Activity::default(),
            sessions: crate::sessions::Sessions::new(),
            presend_records: presend_tx,
        });
        state
            .metrics
            .presend
            .set_words(snap.moderation.lists.counts());
        state.metrics.reloaded(true);
        let deliveries =
            delivery_runtime(&delivery_threads).context("cannot start the delivery threads")?;
        let dispatcher = Arc::new(Dispatcher::new(state.clone(), Senders::new()?));
        let mut tasks = JoinSet::new();
        let limits = Limits {
            drain_timeout: drain,
            ..Limits::default()
        };
        tasks.spawn(server::serve(
            callback_listener,
            server::listen::routes(state.clone()),
            shutdown.clone(),
            limits,
        ));
        tasks.spawn(server::serve(
            admin_listener,
            server::admin::routes(state.clone()),
            shutdown.clone(),
            limits,
        ));
        tasks.spawn(crate::reload::run(
            state.clone(),
            reload_rx,
            hup,
            shutdown.clone(),
        ));
        let dispatching =
            deliveries.spawn(dispatcher.run(handoff_rx, state.wake.clone(), shutdown.clone()));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = dispatching.await {
                tracing::error!(error = %e, "the dispatcher failed");
                stop.trigger();
            }
        });
        tasks.spawn(crate::dispatch::maintain(state.clone(), shutdown.clone()));
        tasks.spawn(server::presend::record(
            state.clone(),
            presend_rx,
            shutdown.clone(),
            drain,
        ));
        let settings = state.clone();
        tasks.spawn(crate::priority::steer(
            state.store.clone(),
            move || settings.snapshot.load().settings.delivery.yield_for,
            delivery_threads,
            shutdown.clone(),
        ));
        if let Some(interval) = sd_notify::watchdog_enabled() {
            tasks.spawn(watchdog(state.clone(), interval, shutdown.clone()));
        }
        tracing::info!(
            listen = %callback_addr,
            callback_path = %snap.settings.callback_path,
            admin = %admin_addr,
            rules = snap.rules.rules.len(),
            actions = snap.rules.actions.len(),
            "easehook ready"
        );
        crate::sockets::notify_systemd(&[sd_notify::NotifyState::Ready]);
        Ok(App {
            callback_addr,
            admin_addr,
            state,
            tasks,
            shutdown,
            deliveries: Some(deliveries),
        })
    }

    /// Ask the daemon to stop (as SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Wait until every task has stopped (after [`App::shutdown`] or a signal).
    pub async fn wait(mut self) {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "task failed");
                // One dead task means a broken daemon: stop the others.
                self.shutdown.trigger();
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // A runtime may not be dropped (which blocks) inside another one;
        // the dispatcher has finished by now, or the app is being abandoned.
        if let Some(rt) = self.deliveries.take() {
            rt.shutdown_background();
        }
    }
}
