//! Digests and thresholds (SPEC §11) in the embedded store: their state
//! changes inside the writer's transaction, in the same commit as the
//! event that changed it.
//!
//! - A digest is a row of `aggregates` taking events (`closed = 0`, at most
//!   one per rule and group) with its deliveries already in the queue, due
//!   when it closes. Its first `max_events` events are listed in
//!   `aggregate_events`. The dispatcher's claim closes it; an event that
//!   finds it closed, or past its end, opens the next one.
//! - A threshold group is a row of `threshold_groups` (its cooldown) and at
//!   most `count` rows of `threshold_hits`, the latest of each counted value:
//!   that is all it takes to know whether `count` values fall within the
//!   window, so a group's state and each event's query stay bounded however
//!   many events the window sees. A firing is an `aggregates` row, closed
//!   at once, with the hits' events and deliveries due now.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{
    AggregateInfo, AggregateKind, AggregateSpec, NewAggregate, NewEvent, OpenGroup, StoredAggregate,
};

/// Tables of digests and thresholds, and the column that ties a delivery
/// to its digest or firing (added to stores of earlier versions).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS aggregates (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    rule        TEXT NOT NULL,
    group_key   TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    closed      INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    max_events  INTEGER NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    last_event  TEXT NOT NULL,
    within_ms   INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS aggregates_open ON aggregates(rule, group_key) WHERE closed = 0;
CREATE TABLE IF NOT EXISTS aggregate_events (
    aggregate_id INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    PRIMARY KEY (aggregate_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aggregate_events_event ON aggregate_events(event_id);
CREATE TABLE IF NOT EXISTS threshold_groups (
    rule           TEXT NOT NULL,
    group_key      TEXT NOT NULL,
    within_ms      INTEGER NOT NULL,
    cooldown_until INTEGER NOT NULL,
    last_at        INTEGER NOT NULL,
    PRIMARY KEY (rule, group_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS threshold_hits (
    rule      TEXT NOT NULL,
    group_key TEXT NOT NULL,
    value     TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (rule, group_key, value)
) WITHOUT ROWID;
"#;

/// Give `deliveries` its `aggregate_id` column and index, once.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('deliveries') WHERE name = 'aggregate_id')",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE deliveries ADD COLUMN aggregate_id INTEGER")?;
    }
    // Only the deliveries of digests and firings are in it.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS deliveries_aggregate ON deliveries(aggregate_id)
         WHERE aggregate_id IS NOT NULL",
    )
}

/// Apply the event's part in each of its digests and thresholds. Returns
/// the ids of the deliveries this made (a digest opened, a threshold
/// fired) and the names of the thresholds that fired.
pub(super) fn apply(conn: &Connection, ev: &NewEvent) -> rusqlite::Result<(Vec<i64>, Vec<String>)> {
    let mut ids = Vec::new();
    let mut fired = Vec::new();
    let now = ev.received_at_ms as i64;
    for a in &ev.aggregates {
        match &a.spec {
            AggregateSpec::Digest {
                window_ms,
                max_events,
            } => digest(conn, ev, a, now, *window_ms as i64, *max_events, &mut ids)?,
            AggregateSpec::Threshold {
                count,
                within_ms,
                cooldown_ms,
                value,
            } => {
                let t = Threshold {
                    count: *count,
                    within: *within_ms as i64,
                    cooldown: *cooldown_ms as i64,
                    value,
                };
                if threshold(conn, ev, a, now, &t, &mut ids)? {
                    fired.push(a.rule.to_string());
                }
            }
        }
    }
    Ok((ids, fired))
}

fn digest(
    conn: &Connection,
    ev: &NewEvent,
    a: &NewAggregate,
    now: i64,
    window: i64,
    max_events: u32,
    ids: &mut Vec<i64>,
) -> rusqlite::Result<()> {
    let open: Option<(i64, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT id, due_at, count, max_events FROM aggregates
             WHERE rule = ?1 AND group_key = ?2 AND closed = 0",
        )?
        .query_row(params![a.rule.as_str(), a.group], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    if let Some((id, due_at, count, kept)) = open {
        if due_at > now {
            conn.prepare_cached(
                "UPDATE aggregates SET count = count + 1, last_at = ?2, last_event = ?3 WHERE id = ?1",
            )?
            .execute(params![id, now, ev.id])?;
            if count < kept {
                insert_event(conn, id, count + 1, &ev.id)?;
            }
            return Ok(());
        }
        // Past its end, not yet claimed (the daemon was down): it takes no
        // more, and this event opens the next one.
        conn.prepare_cached("UPDATE aggregates SET closed = 1 WHERE id = ?1")?
            .execute([id])?;
    }
    let due_at = now.saturating_add(window);
    let id = insert_aggregate(
        conn,
        &Opened {
            kind: AggregateKind::Digest,
            a,
            due_at,
            closed: false,
            count: 1,
            max_events,
            first_at: now,
            last_at: now,
            last_event: &ev.id,
            within: 0,
        },
    )?;
    insert_event(conn, id, 1, &ev.id)?;
    insert_deliveries(conn, ev, a, id, due_at, now, ids)
}

/// A threshold's settings, as the event brought them.
struct Threshold<'a> {
    count: u32,
    within: i64,
    cooldown: i64,
    value: &'a str,
}

/// Count the event; fire when the window holds `count` values and the
/// group is not resting. Returns whether it fired.
fn threshold(
    conn: &Connection,
    ev: &NewEvent,
    a: &NewAggregate,
    now: i64,
    t: &Threshold,
    ids: &mut Vec<i64>,
) -> rusqlite::Result<bool> {
    let (rule, group) = (a.rule.as_str(), a.group.as_str());
    let cooldown_until: i64 = conn
        .prepare_cached(
            "INSERT INTO threshold_groups(rule, group_key, within_ms, cooldown_until, last_at)
             VALUES(?1, ?2, ?3, 0, ?4)
             ON CONFLICT(rule, group_key) DO UPDATE SET within_ms = excluded.within_ms, last_at = excluded.last_at
             RETURNING cooldown_until",
        )?
        .query_row(params![rule, group, t.within, now], |r| r.get(0))?;
    conn.prepare_cached(
        "INSERT INTO threshold_hits(rule, group_key, value, event_id, at) VALUES(?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(rule, group_key, value) DO UPDATE SET event_id = excluded.event_id, at = excluded.at",
    )?
    .execute(params![rule, group, t.value, ev.id, now])?;
    // Keep what can still count: values seen within the window, the latest
    // `count` of them. (Most events find nothing to remove: the group is
    // read first, and trimmed only when it holds more.)
    let cut = now.saturating_sub(t.within);
    let count = |conn: &Connection| -> rusqlite::Result<(i64, i64)> {
        conn.prepare_cached(
            "SELECT count(*), coalesce(min(at), 0) FROM threshold_hits WHERE rule = ?1 AND group_key = ?2",
        )?
        .query_row(params![rule, group], |r| Ok((r.get(0)?, r.get(1)?)))
    };
    let (mut n, mut first_at) = count(conn)?;
    if n > i64::from(t.count) || (n > 0 && first_at <= cut) {
        conn.prepare_cached(
            "DELETE FROM threshold_hits WHERE rule = ?1 AND group_key = ?2
             AND (at <= ?3 OR value NOT IN (SELECT value FROM threshold_hits
                                            WHERE rule = ?1 AND group_key = ?2
                                            ORDER BY at DESC, value DESC LIMIT ?4))",
        )?
        .execute(params![rule, group, cut, i64::from(t.count)])?;
        (n, first_at) = count(conn)?;
    }
    if n < i64::from(t.count) || cooldown_until > now {
        return Ok(false);
    }
    let keep = crate::store::THRESHOLD_EVENTS;
    let id = insert_aggregate(
        conn,
        &Opened {
            kind: AggregateKind::Threshold,
            a,
            due_at: now,
            closed: true,
            count: n,
            max_events: keep,
            first_at,
            last_at: now,
            last_event: &ev.id,
            within: t.within,
        },
    )?;
    conn.prepare_cached(
        "INSERT INTO aggregate_events(aggregate_id, seq, event_id)
         SELECT ?1, row_number() OVER (ORDER BY at, value), event_id FROM threshold_hits
         WHERE rule = ?2 AND group_key = ?3 ORDER BY at, value LIMIT ?4",
    )?
    .execute(params![id, rule, group, i64::from(keep)])?;
    conn.prepare_cached(
        "UPDATE threshold_groups SET cooldown_until = ?3 WHERE rule = ?1 AND group_key = ?2",
    )?
    .execute(params![rule, group, now.saturating_add(t.cooldown)])?;
    insert_deliveries(conn, ev, a, id, now, now, ids)?;
    Ok(true)
}

/// A row of `aggregates` about to be inserted.
struct Opened<'a> {
    kind: AggregateKind,
    a: &'a NewAggregate,
    due_at: i64,
    closed: bool,
    count: i64,
    max_events: u32,
    first_at: i64,
    last_at: i64,
    last_event: &'a str,
    within: i64,
}

fn insert_aggregate(conn: &Connection, o: &Opened) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO aggregates(kind, rule, group_key, due_at, closed, count, max_events,
                                first_at, last_at, last_event, within_ms)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        o.kind.as_str(),
        o.a.rule.as_str(),
        o.a.group,
        o.due_at,
        o.closed,
        o.count,
        o.max_events,
        o.first_at,
        o.last_at,
        o.last_event,
        o.within
    ])?;
    Ok(conn.last_insert_rowid())
}

fn insert_event(conn: &Connection, id: i64, seq: i64, event_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO aggregate_events(aggregate_id, seq, event_id) VALUES(?1, ?2, ?3)",
    )?
    .execute(params![id, seq, event_id])
    .map(drop)
}

/// One delivery per action of the digest or firing `id`, due at `due_at`,
/// as deliveries of the event `ev` (so they fall in its range of ids).
fn insert_deliveries(
    conn: &Connection,
    ev: &NewEvent,
    a: &NewAggregate,
    id: i64,
    due_at: i64,
    now: i64,
    ids: &mut Vec<i64>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO deliveries(event_id, action, rule, status, attempts, next_attempt_at,
                                aggregate_id, created_at, updated_at)
         VALUES(?1, ?2, ?3, 'pending', 0, ?4, ?5, ?6, ?6)",
    )?;
    for action in &a.actions {
        stmt.execute(params![
            ev.id,
            action.as_str(),
            a.rule.as_str(),
            due_at,
            id,
            now
        ])?;
        ids.push(conn.last_insert_rowid());
    }
    Ok(())
}

/// Close the digest or firing `id` (a digest takes no event once one of its
/// deliveries has been claimed: what it renders is final) and read it.
pub(super) fn claim(conn: &Connection, id: i64) -> rusqlite::Result<Option<StoredAggregate>> {
    conn.prepare_cached("UPDATE aggregates SET closed = 1 WHERE id = ?1 AND closed = 0")?
        .execute([id])?;
    let Some((kind, rule, group, count, first_at, last_at, within, last_event, due_at)) = conn
        .prepare_cached(
            "SELECT kind, rule, group_key, count, first_at, last_at, within_ms, last_event, due_at
             FROM aggregates WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let events = conn
        .prepare_cached(
            "SELECT e.id, e.received_at, e.body FROM aggregate_events a JOIN events e ON e.id = a.event_id
             WHERE a.aggregate_id = ?1 ORDER BY a.seq",
        )?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<(String, i64, String)>>>()?;
    let last = match events.iter().find(|e| e.0 == last_event) {
        Some(e) => Some(e.clone()),
        None => conn
            .prepare_cached("SELECT id, received_at, body FROM events WHERE id = ?1")?
            .query_row([&last_event], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?,
    };
    Ok(Some(StoredAggregate {
        info: AggregateInfo {
            kind: AggregateKind::parse(&kind).unwrap_or(AggregateKind::Digest),
            rule,
            group,
            count: count as u64,
            first_at: first_at as u64,
            last_at: last_at as u64,
            within_ms: within as u64,
            due_at: due_at as u64,
            events: Vec::new(),
        },
        events,
        last,
    }))
}

/// Open digests and threshold groups with events in their window, or
/// resting after firing, at `now`.
pub(super) fn list(conn: &Connection, now: u64) -> rusqlite::Result<Vec<OpenGroup>> {
    let mut stmt = conn.prepare_cached(
        "SELECT 'digest', rule, group_key, count, first_at, last_at, due_at, NULL
         FROM aggregates WHERE closed = 0
         UNION ALL
         SELECT 'threshold', g.rule, g.group_key,
                (SELECT count(*) FROM threshold_hits h
                 WHERE h.rule = g.rule AND h.group_key = g.group_key AND h.at > ?1 - g.within_ms),
                (SELECT coalesce(min(at), 0) FROM threshold_hits h
                 WHERE h.rule = g.rule AND h.group_key = g.group_key AND h.at > ?1 - g.within_ms),
                g.last_at, NULL, CASE WHEN g.cooldown_until > ?1 THEN g.cooldown_until END
         FROM threshold_groups g
         ORDER BY 2, 3",
    )?;
    let rows = stmt.query_map([now as i64], |r| {
        let kind: String = r.get(0)?;
        let group: String = r.get(2)?;
        Ok(OpenGroup {
            kind: AggregateKind::parse(&kind).unwrap_or(AggregateKind::Digest),
            rule: r.get(1)?,
            group: serde_json::from_str(&group).unwrap_or(serde_json::Value::Null),
            count: r.get::<_, i64>(3)? as u64,
            first_at: r.get::<_, i64>(4)? as u64,
            last_at: r.get::<_, i64>(5)? as u64,
            due_at: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            cooldown_until: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        })
    })?;
    let mut out = Vec::new();
    for g in rows {
        let g = g?;
        if g.kind == AggregateKind::Digest || g.count > 0 || g.cooldown_until.is_some() {
            out.push(g);
        }
    }
    Ok(out)
}

/// Digests taking events.
pub(super) fn open_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT count(*) FROM aggregates WHERE closed = 0")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// Forget digests and firings older than `cutoff` whose deliveries are all
/// gone, and threshold groups whose window is empty and that are not
/// resting.
pub(super) fn prune(conn: &Connection, now: i64, cutoff: i64) -> rusqlite::Result<u64> {
    let gone = "SELECT id FROM aggregates a WHERE a.last_at < ?1
                AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.aggregate_id = a.id)";
    conn.execute(
        &format!("DELETE FROM aggregate_events WHERE aggregate_id IN ({gone})"),
        [cutoff],
    )?;
    let n = conn.execute(
        &format!("DELETE FROM aggregates WHERE id IN ({gone})"),
        [cutoff],
    )?;
    conn.execute(
        "DELETE FROM threshold_groups WHERE cooldown_until <= ?1 AND last_at + within_ms <= ?1",
        [now],
    )?;
    conn.execute(
        "DELETE FROM threshold_hits WHERE NOT EXISTS (SELECT 1 FROM threshold_groups g
             WHERE g.rule = threshold_hits.rule AND g.group_key = threshold_hits.group_key)",
        [],
    )?;
    Ok(n as u64)
}
