//! Pruning past `retention`, on one replica at a time (an advisory lock)
//! and in batches, so that it never holds long locks on the queue.

use crate::store::StoreError;
use deadpool_postgres::Client;

pub(super) const LOCK_PRUNE: i64 = 0x6561_7365_686f_6f02;

/// Rows removed per statement while pruning.
pub(super) const PRUNE_BATCH: i64 = 5_000;

/// Delete what is past retention, [`PRUNE_BATCH`] rows per statement:
/// finished deliveries, events left with none, expired dedup keys.
pub(super) async fn prune_batches(
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

/// Prune past `retention`, on one replica at a time.
pub(super) async fn prune(c: &Client, now: u64, retention: u64) -> Result<u64, StoreError> {
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
}
