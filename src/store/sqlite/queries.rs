//! The reads of the admin API and the console: events by filter, a page at
//! a time, and deliveries as rows.

use crate::store::{DeliveryBrief, DeliveryInfo, EventInfo, Param, Status};
use rusqlite::{Connection, params};

use super::schema::*;

/// The columns [`delivery_row`] reads.
pub(super) const DELIVERY_COLUMNS: &str =
    "d.id, d.event_id, e.event, d.action, d.rule, d.status, d.attempts,
     d.next_attempt_at, d.last_error, d.created_at, d.updated_at";

/// The events `from_where` selects (a `FROM … WHERE …` clause naming
/// `events` as `e`, with `params` bound from `?1`), each with its
/// deliveries.
pub(super) fn events_where(
    c: &Connection,
    layout: Layout,
    from_where: &str,
    params: Vec<Param>,
) -> rusqlite::Result<Vec<EventInfo>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT e.id, e.event, e.received_at, e.rules, e.body, {} {from_where}",
        layout.range_columns()
    ))?;
    let values: Vec<rusqlite::types::Value> = params
        .into_iter()
        .map(|p| match p {
            Param::Int(i) => rusqlite::types::Value::Integer(i),
            Param::Text(t) => rusqlite::types::Value::Text(t),
        })
        .collect();
    type Row = (
        String,
        String,
        i64,
        String,
        String,
        Option<i64>,
        Option<i64>,
    );
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    let mut ds = c.prepare_cached(layout.deliveries_of_event())?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, event, received_at, rules, body, first, last) in rows {
        let deliveries = ds
            .query_map(params![id, first, last], |r| {
                let status: String = r.get(2)?;
                Ok(DeliveryBrief {
                    id: r.get(0)?,
                    action: r.get(1)?,
                    status: Status::parse(&status).unwrap_or(Status::Pending),
                    attempts: r.get(3)?,
                    rule: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        out.push(EventInfo {
            id,
            event,
            received_at: received_at as u64,
            rules: serde_json::from_str(&rules).unwrap_or_default(),
            deliveries,
            callback: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        });
    }
    Ok(out)
}

pub(super) fn delivery_row(r: &rusqlite::Row) -> rusqlite::Result<DeliveryInfo> {
    let status: String = r.get(5)?;
    let status = Status::parse(&status).unwrap_or(Status::Pending);
    Ok(DeliveryInfo {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event: r.get(2)?,
        action: r.get(3)?,
        rule: r.get(4)?,
        status,
        attempts: r.get(6)?,
        next_attempt_at: (status == Status::Pending)
            .then(|| r.get::<_, i64>(7).map(|v| v as u64))
            .transpose()?,
        last_error: r.get(8)?,
        created_at: r.get::<_, i64>(9)? as u64,
        updated_at: r.get::<_, i64>(10)? as u64,
    })
}
