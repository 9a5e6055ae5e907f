//! Digests and thresholds (SPEC §11) in the shared store: their state
//! changes in the statement that stores the event, and the dispatcher's
//! claim closes the digests that are due; shared rate limits.

use crate::store::{NewEvent, OpenGroup, RateGrant, StoreError};
use deadpool_postgres::Client;

/// Each event's part in its digests and thresholds, in order (arrays of
/// one element per part; the actions as a JSON array each). Answers the
/// deliveries made, by part, and whether a threshold fired.
pub(super) const AGGREGATE_SQL: &str = "
SELECT x.n, r.delivery, r.fired
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
            $7::bigint[], $8::int[], $9::int[], $10::bigint[], $11::bigint[], $12::text[])
     WITH ORDINALITY AS x(kind, event, at, rule, grp, actions, win, max, cnt, within, cooldown, value, n),
     LATERAL easehook_aggregate(x.kind, x.event, x.at, x.rule, x.grp,
                                ARRAY(SELECT jsonb_array_elements_text(x.actions::jsonb)),
                                x.win, x.max, x.cnt, x.within, x.cooldown, x.value) AS r
ORDER BY x.n";

/// Take up to `$5` sends from the limit `$1` at `$2` (µs): GCRA with an
/// emission interval of `$3` and a tolerance of `$4` (a burst of
/// `$4 / $3 + 1`). The row is locked for the statement, so replicas taking
/// at once are served one after the other. Returns the new theoretical
/// arrival time and how many were granted.
pub(super) const TAKE_RATE_SQL: &str = "
WITH p AS (SELECT $1::text AS key, $2::bigint AS now, $3::bigint AS t, $4::bigint AS tau, $5::bigint AS n)
INSERT INTO rate_limits AS r (key, tat, granted)
SELECT key, now + least(n, tau / t + 1) * t, least(n, tau / t + 1) FROM p
ON CONFLICT (key) DO UPDATE SET
    tat = (SELECT greatest(r.tat, now) + t * (CASE WHEN greatest(r.tat, now) - now > tau THEN 0
                                              ELSE least(n, (tau - (greatest(r.tat, now) - now)) / t + 1) END)
           FROM p),
    granted = (SELECT CASE WHEN greatest(r.tat, now) - now > tau THEN 0
                           ELSE least(n, (tau - (greatest(r.tat, now) - now)) / t + 1) END
               FROM p)
RETURNING tat, granted";

/// Open digests, and threshold groups with hits in their window (`$1`
/// is now) or resting after firing.
pub(super) const LIST_GROUPS_SQL: &str = "
SELECT * FROM (
    SELECT 'digest' AS kind, rule, group_key, count, first_at, last_at, due_at,
           NULL::bigint AS cooldown_until
    FROM aggregates WHERE NOT closed
    UNION ALL
    SELECT 'threshold', g.rule, g.group_key, h.n, coalesce(h.first_at, 0), g.last_at, NULL,
           CASE WHEN g.cooldown_until > $1 THEN g.cooldown_until END
    FROM threshold_groups g,
         LATERAL (SELECT count(*) AS n, min(at) AS first_at FROM threshold_hits h
                  WHERE h.rule = g.rule AND h.group_key = g.group_key
                    AND h.at > $1 - g.within_ms) h
    WHERE h.n > 0 OR g.cooldown_until > $1
) x ORDER BY rule, group_key";

/// Apply the stored events' parts in digests and thresholds, in one
/// statement. The parts are sorted by rule and group (each group's events
/// keep their order), so every transaction takes the groups' row locks in
/// the same order and two replicas never deadlock. Returns the thresholds
/// each event made fire.
pub(super) async fn aggregate<'a>(
    client: &deadpool_postgres::Client,
    stored: impl Iterator<Item = &'a NewEvent>,
) -> Result<std::collections::HashMap<&'a str, Vec<String>>, StoreError> {
    let mut parts: Vec<(&NewEvent, &crate::store::NewAggregate)> = stored
        .flat_map(|e| e.aggregates.iter().map(move |g| (e, g)))
        .collect();
    let mut fired: std::collections::HashMap<&str, Vec<String>> = Default::default();
    if parts.is_empty() {
        return Ok(fired);
    }
    parts.sort_by(|(_, a), (_, b)| (a.rule.as_str(), &a.group).cmp(&(b.rule.as_str(), &b.group)));
    let mut cols = AggregateColumns::default();
    for (ev, g) in &parts {
        cols.push(ev, g);
    }
    let stmt = client.prepare_cached(AGGREGATE_SQL).await?;
    let rows = client
        .query(
            &stmt,
            &[
                &cols.kind,
                &cols.event,
                &cols.at,
                &cols.rule,
                &cols.group,
                &cols.actions,
                &cols.window,
                &cols.max,
                &cols.count,
                &cols.within,
                &cols.cooldown,
                &cols.value,
            ],
        )
        .await?;
    for row in rows {
        let n = row.get::<_, i64>(0) as usize - 1;
        let (ev, g) = parts[n];
        if row.get::<_, Option<bool>>(2) == Some(true) {
            let list = fired.entry(ev.id.as_str()).or_default();
            if !list.iter().any(|r| r == g.rule.as_str()) {
                list.push(g.rule.to_string());
            }
        }
    }
    Ok(fired)
}

/// The parts of [`aggregate`] as the arrays of [`AGGREGATE_SQL`].
#[derive(Default)]
pub(super) struct AggregateColumns {
    pub(super) kind: Vec<&'static str>,
    pub(super) event: Vec<String>,
    pub(super) at: Vec<i64>,
    pub(super) rule: Vec<String>,
    pub(super) group: Vec<String>,
    pub(super) actions: Vec<String>,
    pub(super) window: Vec<i64>,
    pub(super) max: Vec<i32>,
    pub(super) count: Vec<i32>,
    pub(super) within: Vec<i64>,
    pub(super) cooldown: Vec<i64>,
    pub(super) value: Vec<String>,
}

impl AggregateColumns {
    fn push(&mut self, ev: &NewEvent, g: &crate::store::NewAggregate) {
        use crate::store::AggregateSpec;
        self.event.push(ev.id.clone());
        self.at.push(ev.received_at_ms as i64);
        self.rule.push(g.rule.to_string());
        self.group.push(g.group.clone());
        let actions: Vec<&str> = g.actions.iter().map(|a| a.as_str()).collect();
        self.actions
            .push(serde_json::to_string(&actions).unwrap_or_else(|_| "[]".into()));
        match &g.spec {
            AggregateSpec::Digest {
                window_ms,
                max_events,
            } => {
                self.kind.push("digest");
                self.window.push(*window_ms as i64);
                self.max.push(*max_events as i32);
                self.count.push(0);
                self.within.push(0);
                self.cooldown.push(0);
                self.value.push(String::new());
            }
            AggregateSpec::Threshold {
                count,
                within_ms,
                cooldown_ms,
                value,
            } => {
                self.kind.push("threshold");
                self.window.push(0);
                self.max.push(0);
                self.count.push(*count as i32);
                self.within.push(*within_ms as i64);
                self.cooldown.push(*cooldown_ms as i64);
                self.value.push(value.clone());
            }
        }
    }
}

/// Close the digests and firings `ids` (a digest takes no event once one
/// of its deliveries is claimed: the update waits for any transaction
/// adding an event to it, and what it renders is final) and read them.
pub(super) async fn claim_aggregates(
    c: &deadpool_postgres::Client,
    ids: Vec<i64>,
) -> Result<std::collections::HashMap<i64, crate::store::StoredAggregate>, StoreError> {
    use crate::store::{AggregateKind, StoredAggregate};
    c.execute(
        "UPDATE aggregates SET closed = true WHERE id = ANY($1) AND NOT closed",
        &[&ids],
    )
    .await?;
    let rows = c
        .query(
            "SELECT a.id, a.kind, a.rule, a.group_key, a.count, a.first_at, a.last_at, a.within_ms,
                    e.id, e.received_at, e.body, a.due_at
             FROM aggregates a LEFT JOIN events e ON e.id = a.last_event WHERE a.id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut out: std::collections::HashMap<i64, StoredAggregate> = rows
        .iter()
        .map(|r| {
            let last = r
                .get::<_, Option<String>>(8)
                .map(|id| (id, r.get::<_, i64>(9), r.get::<_, String>(10)));
            let agg = StoredAggregate {
                info: crate::store::AggregateInfo {
                    kind: AggregateKind::parse(r.get(1)).unwrap_or(AggregateKind::Digest),
                    rule: r.get(2),
                    group: r.get(3),
                    count: r.get::<_, i64>(4) as u64,
                    first_at: r.get::<_, i64>(5) as u64,
                    last_at: r.get::<_, i64>(6) as u64,
                    within_ms: r.get::<_, i64>(7) as u64,
                    due_at: r.get::<_, i64>(11) as u64,
                    events: Vec::new(),
                },
                events: Vec::new(),
                last,
            };
            (r.get::<_, i64>(0), agg)
        })
        .collect();
    let events = c
        .query(
            "SELECT a.aggregate_id, e.id, e.received_at, e.body
             FROM aggregate_events a JOIN events e ON e.id = a.event_id
             WHERE a.aggregate_id = ANY($1) ORDER BY a.aggregate_id, a.seq",
            &[&ids],
        )
        .await?;
    for r in events {
        if let Some(agg) = out.get_mut(&r.get::<_, i64>(0)) {
            agg.events.push((r.get(1), r.get(2), r.get(3)));
        }
    }
    Ok(out)
}

/// The open digests and threshold groups.
pub(super) async fn list_groups(c: &Client, now: u64) -> Result<Vec<OpenGroup>, StoreError> {
    let rows = c.query(LIST_GROUPS_SQL, &[&(now as i64)]).await?;
    Ok(rows
        .iter()
        .map(|r| OpenGroup {
            kind: crate::store::AggregateKind::parse(r.get(0))
                .unwrap_or(crate::store::AggregateKind::Digest),
            rule: r.get(1),
            group: serde_json::from_str(r.get(2)).unwrap_or(serde_json::Value::Null),
            count: r.get::<_, i64>(3) as u64,
            first_at: r.get::<_, i64>(4) as u64,
            last_at: r.get::<_, i64>(5) as u64,
            due_at: r.get::<_, Option<i64>>(6).map(|v| v as u64),
            cooldown_until: r.get::<_, Option<i64>>(7).map(|v| v as u64),
        })
        .collect())
}

/// Take up to `n` of a shared rate limit's tokens (a generic cell rate:
/// one token every `interval` µs, `tolerance` µs of burst).
pub(super) async fn take_rate(
    c: &Client,
    key: String,
    n: u32,
    interval: i64,
    tolerance: i64,
    now_us: u64,
) -> Result<Option<RateGrant>, StoreError> {
    let stmt = c.prepare_cached(TAKE_RATE_SQL).await?;
    let row = c
        .query_one(
            &stmt,
            &[&key, &(now_us as i64), &interval, &tolerance, &i64::from(n)],
        )
        .await?;
    let tat: i64 = row.get(0);
    let granted: i32 = row.get(1);
    Ok(Some(RateGrant {
        allowed: granted.max(0) as u32,
        next_at_us: (tat - tolerance).max(0) as u64,
    }))
}
