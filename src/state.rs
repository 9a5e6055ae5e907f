//! The state the daemon's parts share: the snapshot in force, the store,
//! the reload channel, the hand-off to the dispatcher, the metrics.
//!
//! It belongs to the wiring ([`crate::app`]) rather than to any listener,
//! so that the listeners, the dispatcher and the priority steering all
//! depend downwards on it and no two of them import each other.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::config::expand::Env;
use crate::diag::Diagnostics;
use crate::snapshot::Snapshot;
use crate::store::Store;

/// How the last reload went, for `/api/v1/status` and metrics.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub ok: bool,
    /// Seconds since the epoch.
    pub at: u64,
    pub errors: Vec<String>,
}

/// A request to reload, answered with the result.
pub type ReloadRequest = oneshot::Sender<Result<(), Diagnostics>>;

/// What the handlers share.
pub struct AppState {
    pub snapshot: ArcSwap<Snapshot>,
    pub store: Arc<dyn Store>,
    pub started: Instant,
    pub reload_status: std::sync::Mutex<ReloadStatus>,
    pub reload_tx: mpsc::Sender<ReloadRequest>,
    pub env: Arc<dyn Env + Send + Sync>,
    /// Callbacks accepted since start (for status).
    pub accepted: AtomicU64,
    /// Wakes the dispatcher when new deliveries are stored for it to claim.
    pub wake: Arc<tokio::sync::Notify>,
    /// Deliveries stored already claimed, handed to the dispatcher directly.
    pub handoff: mpsc::Sender<crate::store::Claimed>,
    /// When the dispatcher loop last ran (ms since the epoch), for the watchdog.
    pub heartbeat: AtomicU64,
    /// The delivery threads and their scheduling priority.
    pub delivery_threads: Arc<crate::priority::DeliveryThreads>,
    pub metrics: crate::metrics::Metrics,
    /// Callbacks and deliveries per minute, for the console's chart.
    pub activity: crate::metrics::Activity,
    /// The console's sign-in sessions.
    pub sessions: crate::sessions::Sessions,
    /// Pre-send verdicts waiting to be stored (bounded: a full queue
    /// drops, it never makes an answer wait).
    pub presend_records: mpsc::Sender<crate::moderation::Record>,
}
