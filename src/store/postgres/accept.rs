//! The writers and their group commit: callbacks waiting in the queue
//! are stored in one statement (one round trip, one commit) before any of
//! them is answered.

use super::Inner;
use super::aggregate::*;
use crate::store::{Accepted, NewEvent, StoreError};
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{Mutex, mpsc, oneshot};

/// Callbacks stored in one transaction at most.
pub(super) const MAX_BATCH: usize = 256;

/// Transactions of callbacks in flight at once per daemon: while one
/// commits (waits for the database's fsync), the next is gathered and sent.
pub(super) const WRITERS: usize = 2;

/// One callback's accept, queued for a writer.
pub(super) struct Accept {
    pub(super) event: NewEvent,
    pub(super) rules_json: String,
    pub(super) window: u64,
    pub(super) reply: oneshot::Sender<Result<Accepted, StoreError>>,
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
pub(super) const ACCEPT_SQL: &str = "
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

/// A writer: take the callbacks waiting (up to [`MAX_BATCH`]), store them
/// in one statement, answer each. A failed batch is run again callback
/// by callback, so that one bad callback fails alone.
pub(super) async fn writer(inner: Arc<Inner>, rx: Arc<Mutex<mpsc::UnboundedReceiver<Accept>>>) {
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
pub(super) async fn accept_batch(
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
pub(super) async fn accept_statements(
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
    let fired = aggregate(
        client,
        batch
            .iter()
            .zip(&first)
            .filter(|p| stored(*p))
            .map(|(a, _)| &a.event),
    )
    .await?;
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
