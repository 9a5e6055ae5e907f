//! Pruning past `retention`: events and their finished deliveries go,
//! the newest event stays so that ids never repeat.

use rusqlite::{Connection, OptionalExtension};

use super::schema::*;

/// Delete what is past `retention` (sent and dead deliveries, events left
/// with none) and dedup keys past their window. The newest delivery is
/// always kept: delivery ids are rowids, which SQLite hands out as the
/// largest plus one, so an emptied table would start again at 1 and an id
/// in an operator's notes could name another delivery. (`AUTOINCREMENT`
/// would keep them unique too, at the price of a write to
/// `sqlite_sequence` on every insert.)
pub(super) fn prune(
    conn: &Connection,
    layout: Layout,
    now: u64,
    retention: u64,
) -> rusqlite::Result<u64> {
    let cutoff = now.saturating_sub(retention) as i64;
    let mut n = 0;
    // Only deliveries created before the cutoff can have been done before
    // it: they are the ids up to `bound`, and the rest of the table (all of
    // it, in a store younger than its retention) is not read.
    if let Some(bound) = created_before(conn, cutoff)? {
        let gone = "SELECT id FROM deliveries WHERE id <= ?2
                    AND status IN ('sent', 'dead') AND updated_at < ?1
                    AND id < (SELECT max(id) FROM deliveries)";
        // Attempts go with their delivery.
        conn.execute(
            &format!("DELETE FROM attempts WHERE delivery_id IN ({gone})"),
            [cutoff, bound],
        )?;
        n += conn.execute(
            &format!("DELETE FROM deliveries WHERE id IN ({gone})"),
            [cutoff, bound],
        )? as u64;
    }
    n += super::aggregate::prune(conn, now as i64, cutoff)?;
    n += conn.execute(layout.prune_events(), [cutoff])? as u64;
    conn.execute("DELETE FROM dedup WHERE expires_at <= ?1", [now as i64])?;
    Ok(n)
}

/// The largest delivery id created before `cutoff`; `None` when there is
/// none. Ids are given in the order deliveries are created, so they grow
/// with `created_at`: the ids are bisected, each step one lookup of the
/// primary key (about 21 for two million deliveries), where a condition on
/// `created_at` would read the whole table, under the writer, every
/// pruning.
pub(super) fn created_before(conn: &Connection, cutoff: i64) -> rusqlite::Result<Option<i64>> {
    let mut at = conn.prepare_cached(
        "SELECT id, created_at FROM deliveries WHERE id >= ?1 ORDER BY id LIMIT 1",
    )?;
    let mut first_from = |id: i64| -> rusqlite::Result<Option<(i64, i64)>> {
        at.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    };
    let Some((mut lo, created)) = first_from(i64::MIN)? else {
        return Ok(None);
    };
    if created >= cutoff {
        return Ok(None);
    }
    let mut hi: i64 = conn.query_row("SELECT max(id) FROM deliveries", [], |r| r.get(0))?;
    // `lo` was created before the cutoff; no id above `hi` was.
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        match first_from(mid)? {
            Some((id, created)) if created < cutoff => lo = id.min(hi),
            _ => hi = mid - 1,
        }
    }
    Ok(Some(lo))
}
