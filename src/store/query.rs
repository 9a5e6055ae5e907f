//! What the admin API, the console and the tools ask the store for, and
//! what it answers: filters of events and deliveries, the SQL conditions
//! they become in either backend's dialect, and the rows they read.

use serde::Serialize;

/// A delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Sent,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Status::Pending),
            "sent" => Some(Status::Sent),
            "dead" => Some(Status::Dead),
            _ => None,
        }
    }
}

/// A delivery as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub action: String,
    pub rule: String,
    pub status: Status,
    pub attempts: u32,
    /// Next attempt (pending only), ms since the epoch.
    pub next_attempt_at: Option<u64>,
    pub last_error: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// Which stored events to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Received at or after this time (ms).
    pub since_ms: u64,
    /// Received before this time (ms).
    pub until_ms: Option<u64>,
    /// An event name (`roster:ban`) or family (`roster`).
    pub event: Option<String>,
    pub limit: usize,
    /// The page after this event, given by its received time and id: where
    /// the page before ended.
    pub before: Option<(u64, String)>,
    /// The event's `from` or `to` user (normalized, as `from_user`).
    pub user: Option<String>,
    /// A rule the event matched.
    pub rule: Option<String>,
}

/// How a backend's SQL spells what [`EventQuery::conditions`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a statement [`EventQuery::conditions`] wrote.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

impl EventQuery {
    /// The query's conditions on `events`, as `AND …` terms whose values
    /// are bound from `first` on (`?N` or `$N`), and those values: one
    /// definition of the filters for both backends. Each filter is in the
    /// statement only when it is set, so that the plan can use the index
    /// it has.
    pub(crate) fn conditions(&self, d: Dialect, first: usize) -> (String, Vec<Param>) {
        self.conditions_on(d, first, "received_at")
    }

    /// [`EventQuery::conditions`] with the time conditions on `time`, a
    /// column that holds the event's received time (that of an index the
    /// statement walks).
    pub(crate) fn conditions_on(
        &self,
        d: Dialect,
        first: usize,
        time: &str,
    ) -> (String, Vec<Param>) {
        let mut sql = String::new();
        let mut params: Vec<Param> = Vec::new();
        let bind = |v: Param, params: &mut Vec<Param>| {
            params.push(v);
            match d {
                Dialect::Sqlite => format!("?{}", first + params.len() - 1),
                Dialect::Postgres => format!("${}", first + params.len() - 1),
            }
        };
        let cast = match d {
            Dialect::Sqlite => "",
            Dialect::Postgres => "::bigint",
        };
        let since = bind(Param::Int(self.since_ms as i64), &mut params);
        sql += &format!(" AND {time} >= {since}{cast}");
        if let Some(u) = self.until_ms {
            let u = bind(Param::Int(u as i64), &mut params);
            sql += &format!(" AND {time} < {u}{cast}");
        }
        if let Some((at, id)) = &self.before {
            let at = bind(Param::Int(*at as i64), &mut params);
            let id = bind(Param::Text(id.clone()), &mut params);
            sql += &format!(" AND ({time} < {at}{cast} OR ({time} = {at}{cast} AND id < {id}))");
        }
        if let Some(e) = &self.event {
            // A name (`roster:ban`) or a family (`roster`, `roster:*`).
            let name = e.strip_suffix(":*").unwrap_or(e);
            let exact = bind(Param::Text(name.to_string()), &mut params);
            let family = bind(Param::Text(format!("{name}:")), &mut params);
            let prefix = match d {
                Dialect::Sqlite => format!("substr(event, 1, length({family})) = {family}"),
                Dialect::Postgres => format!("left(event, length({family})) = {family}"),
            };
            sql += &format!(" AND (event = {exact} OR {prefix})");
        }
        if let Some(u) = &self.user {
            let u = bind(Param::Text(u.clone()), &mut params);
            sql += &format!(" AND (from_user = {u} OR to_user = {u})");
        }
        if let Some(r) = &self.rule {
            // `rules` holds the names as a JSON array: the quoted name is
            // found whole, never as a part of a longer one.
            let quoted = serde_json::to_string(r).unwrap_or_default();
            let q = bind(Param::Text(quoted), &mut params);
            sql += &match d {
                Dialect::Sqlite => format!(" AND instr(rules, {q}) > 0"),
                Dialect::Postgres => format!(" AND strpos(rules, {q}) > 0"),
            };
        }
        (sql, params)
    }
}

/// Which deliveries to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    pub status: Option<Status>,
    pub action: Option<String>,
    /// Deliveries with a smaller id than this: where the page before ended.
    pub before: Option<i64>,
    pub limit: usize,
}

impl DeliveryQuery {
    /// The status condition on `deliveries d`, as `AND …` (empty for any
    /// status). Written into the statement, not bound: a partial index
    /// (the dead ones, the queue) serves only a condition the planner can
    /// see.
    pub(crate) fn status_condition(&self) -> &'static str {
        match self.status {
            None => "",
            Some(Status::Pending) => "AND d.status = 'pending'",
            Some(Status::Sent) => "AND d.status = 'sent'",
            Some(Status::Dead) => "AND d.status = 'dead'",
        }
    }
}

/// An event as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventInfo {
    pub id: String,
    pub event: String,
    pub received_at: u64,
    pub rules: Vec<String>,
    pub deliveries: Vec<DeliveryBrief>,
    pub callback: serde_json::Value,
}

/// A delivery as listed under its event.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryBrief {
    pub id: i64,
    pub action: String,
    /// The rule that asked for it.
    pub rule: String,
    pub status: Status,
    pub attempts: u32,
}
