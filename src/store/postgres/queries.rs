//! The reads of the admin API and the console: events by filter a page at
//! a time (by user through both sides' indexes), deliveries as rows, one
//! delivery with its attempts, and the queue's counts.

use crate::store::{
    AttemptInfo, Counts, DeliveryBrief, DeliveryDetail, DeliveryInfo, DeliveryQuery, Dialect,
    EventInfo, EventQuery, Param, Status, StoreError,
};
use deadpool_postgres::Client;
use tokio_postgres::Row;

/// The events `from_where` selects (a `FROM … WHERE …` clause, with
/// `params` bound from `$1`), each with its deliveries.
pub(super) async fn events_where(
    c: &deadpool_postgres::Client,
    from_where: &str,
    params: Vec<Param>,
) -> Result<Vec<EventInfo>, StoreError> {
    let values: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = params
        .into_iter()
        .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match p {
                Param::Int(i) => Box::new(i),
                Param::Text(t) => Box::new(t),
            }
        })
        .collect();
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
        .iter()
        .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = c
        .query(
            &format!("SELECT id, event, received_at, rules, body {from_where}"),
            &refs,
        )
        .await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
    let ds = c
        .query(
            "SELECT event_id, id, action, status, attempts, rule FROM deliveries
                         WHERE event_id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
    let mut by_event: std::collections::HashMap<&str, Vec<DeliveryBrief>> =
        std::collections::HashMap::new();
    for d in &ds {
        by_event.entry(d.get(0)).or_default().push(DeliveryBrief {
            id: d.get(1),
            action: d.get(2),
            status: Status::parse(d.get(3)).unwrap_or(Status::Pending),
            attempts: d.get::<_, i32>(4) as u32,
            rule: d.get(5),
        });
    }
    Ok(rows
        .iter()
        .map(|r| {
            let id: &str = r.get(0);
            EventInfo {
                id: id.to_string(),
                event: r.get(1),
                received_at: r.get::<_, i64>(2) as u64,
                rules: serde_json::from_str(r.get(3)).unwrap_or_default(),
                deliveries: by_event.remove(id).unwrap_or_default(),
                callback: serde_json::from_str(r.get(4)).unwrap_or(serde_json::Value::Null),
            }
        })
        .collect())
}

pub(super) const DELIVERY_COLUMNS: &str =
    "d.id, d.event_id, e.event, d.action, d.rule, d.status, d.attempts,
     d.next_attempt_at, d.last_error, d.created_at, d.updated_at";

pub(super) fn delivery_row(r: &Row) -> DeliveryInfo {
    let status = Status::parse(r.get(5)).unwrap_or(Status::Pending);
    DeliveryInfo {
        id: r.get(0),
        event_id: r.get(1),
        event: r.get(2),
        action: r.get(3),
        rule: r.get(4),
        status,
        attempts: r.get::<_, i32>(6) as u32,
        next_attempt_at: (status == Status::Pending).then(|| r.get::<_, i64>(7) as u64),
        last_error: r.get(8),
        created_at: r.get::<_, i64>(9) as u64,
        updated_at: r.get::<_, i64>(10) as u64,
    }
}

/// One delivery with its attempts.
pub(super) async fn delivery(c: &Client, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.id = $1"
    );
    let Some(row) = c.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    let attempts = c
        .query(
            "SELECT n, started_at, duration_ms, outcome, code, error FROM attempts
             WHERE delivery_id = $1 ORDER BY n",
            &[&id],
        )
        .await?;
    Ok(Some(DeliveryDetail {
        delivery: delivery_row(&row),
        attempts_made: attempts
            .iter()
            .map(|r| AttemptInfo {
                n: r.get::<_, i32>(0) as u32,
                started_at: r.get::<_, i64>(1) as u64,
                duration_ms: r.get::<_, i64>(2) as u64,
                outcome: r.get(3),
                code: r.get::<_, Option<i32>>(4).map(|c| c as u16),
                error: r.get(5),
            })
            .collect(),
    }))
}

/// A page of deliveries, newest first.
pub(super) async fn deliveries(
    c: &Client,
    q: DeliveryQuery,
) -> Result<Vec<DeliveryInfo>, StoreError> {
    let status = q.status_condition();
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
         WHERE ($2::text IS NULL OR d.action = $2) AND ($3::bigint IS NULL OR d.id < $3)
         {status} ORDER BY d.id DESC LIMIT $1"
    );
    let rows = c
        .query(&sql, &[&(q.limit as i64), &q.action, &q.before])
        .await?;
    Ok(rows.iter().map(delivery_row).collect())
}

/// A page of events, newest first.
pub(super) async fn events(c: &Client, q: EventQuery) -> Result<Vec<EventInfo>, StoreError> {
    let limit = Param::Int(q.limit as i64);
    let Some(user) = q.user.clone() else {
        let (conditions, mut params) = q.conditions(Dialect::Postgres, 2);
        params.insert(0, limit);
        let sql = format!(
            "FROM events WHERE TRUE {conditions}
             ORDER BY received_at DESC, id DESC LIMIT $1::bigint"
        );
        return events_where(c, &sql, params).await;
    };
    // By user: the newest of each side, each walking its own
    // index (`events_from`, `events_to`) and stopping at a
    // page, then merged; a user with many events costs no more
    // than one with a page of them.
    let others = EventQuery {
        user: None,
        ..q.clone()
    };
    let (conditions, mut params) = others.conditions(Dialect::Postgres, 3);
    params.splice(0..0, [limit, Param::Text(user)]);
    let side = |column: &str| {
        format!(
            "(SELECT * FROM events WHERE {column} = $2::text {conditions}
              ORDER BY received_at DESC, id DESC LIMIT $1::bigint)"
        )
    };
    let sql = format!(
        "FROM ({} UNION {}) AS e ORDER BY received_at DESC, id DESC LIMIT $1::bigint",
        side("from_user"),
        side("to_user")
    );
    events_where(c, &sql, params).await
}

/// One event by id.
pub(super) async fn event(c: &Client, id: String) -> Result<Option<EventInfo>, StoreError> {
    Ok(
        events_where(c, "FROM events WHERE id = $1::text", vec![Param::Text(id)])
            .await?
            .pop(),
    )
}

/// Pending and dead deliveries and open digests.
pub(super) async fn counts(c: &Client) -> Result<Counts, StoreError> {
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending'),
                    (SELECT count(*) FROM deliveries WHERE status = 'dead'),
                    (SELECT count(*) FROM aggregates WHERE NOT closed)",
            &[],
        )
        .await?;
    Ok(Counts {
        pending: row.get::<_, i64>(0) as u64,
        dead: row.get::<_, i64>(1) as u64,
        digests_open: row.get::<_, i64>(2) as u64,
    })
}
