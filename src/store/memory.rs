//! An in-memory store: deduplication within the window, events kept in a
//! bounded history. Nothing survives a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::{Accepted, NewEvent, Store, StoreError};

#[derive(Default)]
struct Inner {
    /// dedup key → expiry (ms since the epoch).
    seen: HashMap<String, u64>,
    /// Keys in insertion order, to expire them cheaply.
    order: VecDeque<(u64, String)>,
}

/// Deduplication in memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn accept(&self, event: NewEvent, dedup_window_ms: u64) -> BoxFuture<'_, Result<Accepted, StoreError>> {
        let now = event.received_at_ms;
        let result = (|| {
            let mut inner = self.inner.lock().map_err(|_| StoreError("lock poisoned".into()))?;
            while inner.order.front().is_some_and(|(exp, _)| *exp <= now) {
                let (exp, key) = inner.order.pop_front().expect("front exists");
                if inner.seen.get(&key) == Some(&exp) {
                    inner.seen.remove(&key);
                }
            }
            if inner.seen.get(&event.dedup_key).is_some_and(|&exp| exp > now) {
                return Ok(Accepted::Duplicate);
            }
            let exp = now.saturating_add(dedup_window_ms);
            inner.seen.insert(event.dedup_key.clone(), exp);
            inner.order.push_back((exp, event.dedup_key));
            Ok(Accepted::New(event.id))
        })();
        Box::pin(std::future::ready(result))
    }

    fn is_writable(&self) -> bool {
        true
    }
}
