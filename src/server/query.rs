//! The filters the admin API and the console share: the query parameters
//! of events and deliveries, their pages, and what is wrong with them.

use std::collections::HashMap;

use super::console::i18n::Words;
use crate::store::{DeliveryQuery, EventInfo, EventQuery, Status};

/// What is wrong with a filter of the API or the console, said in the
/// caller's language ([`Bad::say`]); the API speaks English.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    Limit,
    Since,
    Until,
    Before,
    Status,
    DeliveryBefore,
}

impl Bad {
    pub(crate) fn say(self, w: &Words) -> &'static str {
        match self {
            Bad::Limit => w.bad_limit,
            Bad::Since => w.bad_since,
            Bad::Until => w.bad_until,
            Bad::Before => w.bad_before,
            Bad::Status => w.bad_status,
            Bad::DeliveryBefore => w.bad_delivery_before,
        }
    }
}

/// `limit=`: default 50, at most 1000.
pub(crate) fn limit(query: &HashMap<String, String>) -> Result<usize, Bad> {
    match given(query, "limit") {
        None => Ok(50),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(Bad::Limit),
        },
    }
}

/// `since=`: a duration before now (`1h`), an RFC 3339 time or a time in
/// ms; 0 when absent.
pub(crate) fn since(query: &HashMap<String, String>) -> Result<u64, Bad> {
    match given(query, "since") {
        None => Ok(0),
        Some(s) => crate::config::units::instant(s, crate::now_ms()).ok_or(Bad::Since),
    }
}

/// `until=`, written as `since=`; `None` when absent.
pub(crate) fn until(query: &HashMap<String, String>) -> Result<Option<u64>, Bad> {
    match given(query, "until") {
        None => Ok(None),
        Some(s) => crate::config::units::instant(s, crate::now_ms())
            .map(Some)
            .ok_or(Bad::Until),
    }
}

/// A parameter given and not empty, trimmed.
pub(crate) fn given<'q>(query: &'q HashMap<String, String>, name: &str) -> Option<&'q str> {
    query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// The events filter of the API and the console: `since`, `until`,
/// `event`, `user`, `rule`, `limit` and `before` (the `next` of the page
/// before: `RECEIVED_AT:ID`).
pub(crate) fn event_query(query: &HashMap<String, String>) -> Result<EventQuery, Bad> {
    let before = match given(query, "before") {
        None => None,
        Some(s) => Some(
            s.split_once(':')
                .and_then(|(at, id)| Some((at.parse().ok()?, id.to_string())))
                .ok_or(Bad::Before)?,
        ),
    };
    Ok(EventQuery {
        since_ms: since(query)?,
        until_ms: until(query)?,
        event: given(query, "event").map(str::to_string),
        limit: limit(query)?,
        before,
        user: given(query, "user").map(str::to_string),
        rule: given(query, "rule").map(str::to_string),
    })
}

/// The deliveries filter of the API and the console: `status`, `action`,
/// `limit` and `before` (a delivery id: the page after it).
pub(crate) fn delivery_query(query: &HashMap<String, String>) -> Result<DeliveryQuery, Bad> {
    let status = match given(query, "status") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or(Bad::Status)?),
    };
    let before = match given(query, "before") {
        None => None,
        Some(b) => Some(b.parse::<i64>().map_err(|_| Bad::DeliveryBefore)?),
    };
    Ok(DeliveryQuery {
        status,
        action: given(query, "action").map(str::to_string),
        before,
        limit: limit(query)?,
    })
}

/// The `before` of the page after `page` (its last item's `cursor`), when
/// the page is full: a full page may have more after it.
pub(crate) fn next_page<T, C>(page: &[T], limit: usize, cursor: impl Fn(&T) -> C) -> Option<C> {
    (page.len() == limit)
        .then(|| page.last().map(cursor))
        .flatten()
}

/// The stored callback carries its signature; neither the API nor the
/// console ever shows it.
pub(crate) fn unsigned(mut e: EventInfo) -> EventInfo {
    if let Some(o) = e.callback.as_object_mut() {
        // `shift_remove`: the other fields keep the order they came in.
        o.shift_remove("security");
    }
    e
}
