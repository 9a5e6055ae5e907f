//! Where accepted events live until they are handled.
//!
//! The callback handler answers 200 only after [`Store::accept`] returns, and
//! a repeated event (same dedup key within `dedup_window`) is recognised here.

pub mod memory;

use futures_util::future::BoxFuture;

/// An event ready to be stored, with the deliveries its rules asked for.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// A fresh id (UUID v7: sortable by time).
    pub id: String,
    pub dedup_key: String,
    pub event: String,
    /// Milliseconds since the epoch when the daemon received it.
    pub received_at_ms: u64,
    /// The callback as received.
    pub body: serde_json::Value,
    /// (action, rule) names, in order.
    pub deliveries: Vec<(String, String)>,
}

/// What became of an event offered to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored under this id.
    New(String),
    /// Seen within the dedup window: nothing stored.
    Duplicate,
}

/// The store could not take the event: the caller answers 503 so that
/// Easemob's retry has a chance.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// The store interface the server and dispatcher rely on.
pub trait Store: Send + Sync + 'static {
    /// Store an event and its deliveries unless it is a duplicate within
    /// `dedup_window_ms`. Returns once the event is as durable as this store
    /// makes anything.
    fn accept(&self, event: NewEvent, dedup_window_ms: u64) -> BoxFuture<'_, Result<Accepted, StoreError>>;

    /// Whether new events can be taken now (for `/readyz`).
    fn is_writable(&self) -> bool;
}
