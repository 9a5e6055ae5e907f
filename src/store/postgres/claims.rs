//! Claims, outcomes and fencing: the due deliveries a replica takes under
//! a lease (`FOR UPDATE SKIP LOCKED`), what its attempts recorded under
//! that lease, retries of dead deliveries and replays of stored events.

use super::aggregate::*;
use crate::store::{Attempt, Callbacks, Claimed, Lease, NewDelivery, Record, Replayed, StoreError};
use deadpool_postgres::Client;
use std::sync::Arc;
use tokio_postgres::Row;

/// Lease the `$3` deliveries due first at `$2` until `$1`, skipping rows
/// another replica is claiming, and read their events.
pub(super) const CLAIM_SQL: &str = "
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

/// Record outcomes, each only under the claim it was made with, and keep
/// each attempt made (`inc` 1) numbered after its delivery's last. `d.id =
/// ANY($2)` makes the rows be found through the primary key: joined with
/// the arrays alone, the planner may hash-join against a scan of the whole
/// table.
pub(super) const RECORD_SQL: &str = "
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

/// The statements of [`Store::replay`], in its transaction: each event's
/// new deliveries under a transaction-scoped advisory lock on the event, so
/// that replicas replaying it at once take turns, and the second finds
/// what the first created.
pub(super) async fn replay_in(
    c: &deadpool_postgres::Client,
    events: &[(String, Vec<crate::store::NewDelivery>)],
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
pub(super) fn decode(
    rows: Vec<Row>,
    lease_until: u64,
    aggregates: std::collections::HashMap<i64, crate::store::StoredAggregate>,
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

/// Claim up to `limit` due deliveries for `replica` until `lease_until`.
pub(super) async fn claim(
    c: &Client,
    lease_until: u64,
    now: u64,
    limit: usize,
    replica: String,
) -> Result<Vec<Claimed>, StoreError> {
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
}

/// Record the outcomes of attempts, each under its lease; returns the ids
/// whose lease was no longer theirs (fenced off).
pub(super) async fn record(
    c: &Client,
    outcomes: Vec<(Lease, Record, Attempt)>,
) -> Result<Vec<i64>, StoreError> {
    let n = outcomes.len();
    let started: Vec<i64> = outcomes.iter().map(|o| o.2.started_at_ms as i64).collect();
    let took: Vec<i64> = outcomes.iter().map(|o| o.2.duration_ms as i64).collect();
    let codes: Vec<Option<i32>> = outcomes.iter().map(|o| o.2.code.map(i32::from)).collect();
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
                &now, &ids, &leases, &statuses, &incs, &ats, &errors, &started, &took, &codes,
            ],
        )
        .await?;
    let recorded: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(ids
        .into_iter()
        .filter(|id| !recorded.contains(id))
        .collect())
}

/// Queue stored events' deliveries again, in one transaction.
pub(super) async fn replay(
    c: &Client,
    events: Vec<(String, Vec<NewDelivery>)>,
    now: u64,
    dry_run: bool,
) -> Result<Vec<Replayed>, StoreError> {
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
}

/// When the next unleased delivery falls due.
pub(super) async fn next_due(c: &Client) -> Result<Option<u64>, StoreError> {
    let row = c
        .query_opt(
            "SELECT next_attempt_at FROM deliveries
             WHERE status = 'pending' AND leased_until IS NULL
             ORDER BY next_attempt_at LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// Make dead deliveries (all, or those of `ids`) due again at `now`.
pub(super) async fn retry(c: &Client, ids: Option<Vec<i64>>, now: u64) -> Result<u64, StoreError> {
    let n = c
        .execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
                    leased_until = NULL, updated_at = $2
             WHERE status = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1))",
            &[&ids, &(now as i64)],
        )
        .await?;
    Ok(n)
}
