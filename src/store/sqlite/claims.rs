//! Claims, outcomes and fencing: the due deliveries a dispatcher takes
//! under a lease, what its attempts recorded, retries of dead deliveries
//! and replays of stored events.

use crate::store::{Attempt, Callbacks, Claimed, Lease, Record, Replayed, StoredAggregate};
use rusqlite::{Connection, params};
use std::sync::Arc;

use super::schema::*;

/// A row of a claim, decoded into [`Claimed`] outside the writer.
pub(super) struct ClaimedRow {
    pub(super) id: i64,
    pub(super) lease_until: u64,
    pub(super) event_id: String,
    pub(super) action: String,
    pub(super) rule: String,
    pub(super) attempts: u32,
    pub(super) received_at: i64,
    pub(super) body: String,
    /// The digest or firing the delivery is of.
    pub(super) aggregate: Option<StoredAggregate>,
}

/// What [`Store::replay`] asks the writer.
pub(super) struct ReplayRequest {
    pub(super) events: Vec<(String, Vec<crate::store::NewDelivery>)>,
    pub(super) now: u64,
    pub(super) dry_run: bool,
}

/// Lease the `?3` deliveries due first at `?2` until `?1`.
pub(super) const CLAIM_SQL: &str = "UPDATE deliveries SET leased_until = ?1
     WHERE id IN (SELECT id FROM deliveries
                  WHERE status = 'pending' AND next_attempt_at <= ?2
                    AND (leased_until IS NULL OR leased_until <= ?2)
                  ORDER BY next_attempt_at, id LIMIT ?3)
     RETURNING id, event_id, action, rule, attempts, aggregate_id";

/// When the next delivery that is waiting in the store falls due.
pub(super) const NEXT_DUE_SQL: &str = "SELECT next_attempt_at FROM deliveries
     WHERE status = 'pending' AND leased_until IS NULL
     ORDER BY next_attempt_at LIMIT 1";

/// Pending and dead deliveries. Written with `OR` (not `IN`): that is the
/// form SQLite proves to be within the due index's `WHERE`.
pub(super) const COUNTS_SQL: &str = "SELECT status, COUNT(*) FROM deliveries
     WHERE status = 'pending' OR status = 'dead' GROUP BY status";

pub(super) fn claim(
    conn: &Connection,
    now: u64,
    limit: usize,
    lease: u64,
) -> rusqlite::Result<Vec<ClaimedRow>> {
    let lease_until = crate::store::lease_end(now, lease) as i64;
    let now = now as i64;
    let mut stmt = conn.prepare_cached(CLAIM_SQL)?;
    let rows = stmt
        .query_map(params![lease_until, now, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ev = conn.prepare_cached("SELECT received_at, body FROM events WHERE id = ?1")?;
    let mut out: Vec<ClaimedRow> = Vec::with_capacity(rows.len());
    for (id, event_id, action, rule, attempts, aggregate_id) in rows {
        // A digest or firing renders its last event with the events kept.
        let aggregate = match aggregate_id {
            Some(a) => super::aggregate::claim(conn, a)?,
            None => None,
        };
        // Deliveries of one event share its body: read it once. (A digest's
        // or firing's callback is its last event's, which it carries.)
        let known = out
            .iter()
            .find(|c| c.event_id == event_id && c.aggregate.is_none())
            .map(|c| (c.received_at, c.body.clone()));
        let (received_at, body) = match known {
            _ if aggregate.is_some() => (0, String::new()),
            Some(v) => v,
            None => ev.query_row([&event_id], |r| Ok((r.get(0)?, r.get(1)?)))?,
        };
        out.push(ClaimedRow {
            id,
            lease_until: lease_until as u64,
            event_id,
            action,
            rule,
            attempts,
            received_at,
            body,
            aggregate,
        });
    }
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// Decode claimed rows (off the writer thread): each event's callback is
/// parsed once, however many of its deliveries were claimed.
pub(super) fn decode(rows: Vec<ClaimedRow>) -> Vec<Claimed> {
    let mut callbacks = Callbacks::default();
    rows.into_iter()
        .map(|r| {
            let (callback, received_at_ms) = match &r.aggregate {
                Some(a) => a.last_callback(&mut callbacks),
                None => (callbacks.of(&r.event_id, &r.body), r.received_at as u64),
            };
            Claimed {
                callback,
                aggregate: r.aggregate.map(|a| Arc::new(a.decode(&mut callbacks))),
                id: r.id,
                lease_until: r.lease_until,
                event_id: r.event_id,
                action: r.action.into(),
                rule: r.rule.into(),
                attempts: r.attempts,
                received_at_ms,
            }
        })
        .collect()
}

/// Record each outcome under its claim, with the attempt made: a row whose
/// lease is no longer the one the attempt was made under is left alone,
/// and its id returned.
pub(super) fn record(
    conn: &Connection,
    outcomes: &[(Lease, Record, Attempt)],
) -> rusqlite::Result<Vec<i64>> {
    let now = crate::now_ms() as i64;
    let mut stale = Vec::new();
    for (lease, r, attempt) in outcomes {
        let (id, token) = (lease.id, lease.until as i64);
        let changed = match r {
            Record::Sent => conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, leased_until = NULL,
                     last_error = NULL, updated_at = ?2 WHERE id = ?1 AND leased_until = ?3",
                )?
                .execute(params![id, now, token])?,
            Record::Retry { at_ms, error, counted } => conn
                .prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + ?2, next_attempt_at = ?3, leased_until = NULL,
                     last_error = COALESCE(?4, last_error), updated_at = ?5 WHERE id = ?1 AND leased_until = ?6",
                )?
                .execute(params![
                    id,
                    i64::from(*counted),
                    *at_ms as i64,
                    if *counted { Some(error.as_str()) } else { None },
                    now,
                    token
                ])?,
            Record::Dead { error } => conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'dead', attempts = attempts + 1, leased_until = NULL,
                     last_error = ?2, updated_at = ?3 WHERE id = ?1 AND leased_until = ?4",
                )?
                .execute(params![id, error, now, token])?,
        };
        if changed == 0 {
            stale.push(id);
            continue;
        }
        if let Some((outcome, error)) = r.attempted() {
            // Numbered after the delivery's last one, found on the key.
            conn.prepare_cached(
                "INSERT INTO attempts(delivery_id, n, started_at, duration_ms, outcome, code, error)
                 SELECT ?1, coalesce(max(n), 0) + 1, ?2, ?3, ?4, ?5, ?6 FROM attempts WHERE delivery_id = ?1",
            )?
            .execute(params![
                id,
                attempt.started_at_ms as i64,
                attempt.duration_ms as i64,
                outcome,
                attempt.code,
                error.map(Attempt::bounded)
            ])?;
        }
    }
    Ok(stale)
}

/// See [`Store::replay`]. The writer is the only one: checking and
/// inserting need no lock. A new delivery of an old event lies beyond the
/// range of ids its row holds, so the range is widened to take it in (the
/// queries that read a range also match the event's id).
pub(super) fn replay(
    conn: &Connection,
    layout: Layout,
    r: &ReplayRequest,
) -> rusqlite::Result<Vec<Replayed>> {
    let now = r.now as i64;
    let mut out = Vec::new();
    for (event_id, deliveries) in &r.events {
        let has: Vec<String> = match layout {
            Layout::Ranges => conn
                .prepare_cached(
                    "SELECT d.action FROM events e JOIN deliveries d
                       ON d.id BETWEEN e.first_delivery AND e.last_delivery AND d.event_id = e.id
                     WHERE e.id = ?1 AND d.aggregate_id IS NULL",
                )?
                .query_map([event_id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?,
            Layout::Indexed => conn
                .prepare_cached(
                    "SELECT action FROM deliveries WHERE event_id = ?1 AND aggregate_id IS NULL",
                )?
                .query_map([event_id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?,
        };
        let exists: bool = conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM events WHERE id = ?1)")?
            .query_row([event_id], |row| row.get(0))?;
        if !exists {
            continue;
        }
        for d in deliveries {
            if has.iter().any(|a| a == d.action.as_str()) {
                continue;
            }
            let delivery = if r.dry_run {
                None
            } else {
                conn.prepare_cached(
                    "INSERT INTO deliveries(event_id, action, rule, status, attempts, next_attempt_at, created_at, updated_at)
                     VALUES(?1, ?2, ?3, 'pending', 0, ?4, ?4, ?4)",
                )?
                .execute(params![event_id, d.action.as_str(), d.rule.as_str(), now])?;
                let id = conn.last_insert_rowid();
                if layout == Layout::Ranges {
                    conn.prepare_cached(
                        "UPDATE events SET first_delivery = coalesce(first_delivery, ?2),
                                           last_delivery = max(coalesce(last_delivery, ?2), ?2)
                         WHERE id = ?1",
                    )?
                    .execute(params![event_id, id])?;
                }
                Some(id)
            };
            out.push(Replayed {
                event_id: event_id.clone(),
                action: d.action.to_string(),
                rule: d.rule.to_string(),
                delivery,
            });
        }
    }
    Ok(out)
}

pub(super) fn retry(conn: &Connection, ids: Option<&[i64]>, now: u64) -> rusqlite::Result<u64> {
    let now = now as i64;
    let sql = "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2, leased_until = NULL,
               updated_at = ?2 WHERE status = 'dead' AND (?1 IS NULL OR id = ?1)";
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(match ids {
        None => stmt.execute(params![Option::<i64>::None, now])? as u64,
        Some(ids) => {
            let mut n = 0;
            for id in ids {
                n += stmt.execute(params![Some(*id), now])? as u64;
            }
            n
        }
    })
}
