//! The admin listener: health, readiness, reload and the admin API.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once rules are loaded and the store is writable, else 503 |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `POST /-/reload` | reload now; 400 with every problem when the new set is invalid |
//! | `GET /api/v1/status` | version, uptime, counts, queue depth, last reload |
//! | `GET /api/v1/deliveries?status=&limit=` | deliveries, newest first |
//! | `GET /api/v1/deliveries/{id}` | one delivery with every attempt made (`attempts_made`) |
//! | `POST /api/v1/deliveries/{id}/retry` | put a dead delivery back in the queue |
//! | `POST /api/v1/deliveries/retry-dead` | put every dead delivery back |
//! | `GET /api/v1/events?since=&until=&event=&limit=&before=` | stored events with their rules and deliveries, a page at a time (`next`) |
//! | `POST /api/v1/events/replay?since=&until=&event=&rule=&dry_run=` | give stored events the deliveries the rules in force make and they lack |
//! | `GET /api/v1/digests` | open digests and threshold groups counting (SPEC §11) |
//!
//! With `admin_token` set, every `/api/` and `/-/` call needs
//! `Authorization: Bearer <token>`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use warp::Filter;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;

use super::{error_reply, json_reply};
use crate::state::AppState;
use crate::store::Status;

/// Every route of the admin listener.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    super::request_parts(state)
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |state: Arc<AppState>,
             method: Method,
             path: warp::path::FullPath,
             headers: HeaderMap,
             query: HashMap<String, String>| async move {
                handle(state, method, path.as_str(), headers, query).await
            },
        )
        .recover(super::rejected)
        .unify()
}

/// `limit=`: default 50, at most 1000.
fn limit(query: &HashMap<String, String>) -> Result<usize, &'static str> {
    match query.get("limit") {
        None => Ok(50),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err("limit must be a number from 1 to 1000"),
        },
    }
}

/// `since=`: a duration before now (`1h`) or a time in ms; 0 when absent.
fn since(query: &HashMap<String, String>) -> Result<u64, &'static str> {
    match query.get("since").map(String::as_str) {
        None | Some("") => Ok(0),
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(s.parse().unwrap_or(0)),
        Some(s) => match crate::config::units::HumanDuration::parse(s) {
            Ok(d) => Ok(crate::verify::now_ms().saturating_sub(d.0.as_millis() as u64)),
            Err(_) => Err("since must be a duration like 1h or a time in ms"),
        },
    }
}

fn store_error(e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "admin API: store failed");
    error_reply(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
}

async fn deliveries(state: &AppState, query: &HashMap<String, String>) -> Response {
    let status = match query.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(s) => match Status::parse(s) {
            Some(st) => Some(st),
            None => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "status must be pending, sent or dead",
                );
            }
        },
    };
    let limit = match limit(query) {
        Ok(l) => l,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, e),
    };
    match state.store.list_deliveries(status, limit).await {
        Ok(list) => json_reply(StatusCode::OK, &serde_json::json!({"deliveries": list})),
        Err(e) => store_error(e),
    }
}

/// `POST /api/v1/events/replay?since=&until=&event=&rule=&dry_run=`: the
/// stored events of the period evaluated against the rules in force, and
/// given the deliveries they do not have (SPEC §14).
async fn replay(state: &AppState, query: &HashMap<String, String>) -> Response {
    let now = crate::verify::now_ms();
    let since = match query.get("since").filter(|s| !s.is_empty()) {
        None => return error_reply(StatusCode::BAD_REQUEST, "since is required"),
        Some(_) => match since(query) {
            Ok(s) => s,
            Err(e) => return error_reply(StatusCode::BAD_REQUEST, e),
        },
    };
    let until = match query.get("until").map(|u| u.parse::<u64>()) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(_)) => return error_reply(StatusCode::BAD_REQUEST, "until must be a time in ms"),
    };
    let dry_run = matches!(query.get("dry_run").map(String::as_str), Some("true" | "1"));
    let snapshot = state.snapshot.load_full();
    let rules = &snapshot.rules;
    let only = query.get("rule").filter(|r| !r.is_empty());
    if let Some(r) = only
        && !rules.rules.iter().any(|x| &x.name == r)
    {
        return error_reply(StatusCode::BAD_REQUEST, "unknown rule");
    }
    let mut q = crate::store::EventQuery {
        since_ms: since,
        until_ms: until,
        event: query.get("event").filter(|e| !e.is_empty()).cloned(),
        limit: 1000,
        before: None,
    };
    let mut evaluated = 0;
    let mut items = Vec::new();
    loop {
        let page = match state.store.query_events(q.clone()).await {
            Ok(p) => p,
            Err(e) => return store_error(e),
        };
        let full = page.len() == q.limit;
        q.before = page.last().map(|e| (e.received_at, e.id.clone()));
        for e in page {
            evaluated += 1;
            let Ok(cb) = crate::callback::Callback::from_value(e.callback) else {
                continue;
            };
            let evaluation = rules.evaluate(&cb);
            let wanted: Vec<crate::store::NewDelivery> = evaluation
                .deliveries
                .iter()
                .filter(|p| only.is_none_or(|r| rules.rules[p.rule].name == *r))
                .map(|p| crate::store::NewDelivery {
                    action: crate::Text::new(&rules.actions[p.action].name),
                    rule: crate::Text::new(&rules.rules[p.rule].name),
                    done: false,
                })
                .collect();
            if !wanted.is_empty() {
                items.push((e.id, wanted));
            }
        }
        if !full {
            break;
        }
    }
    match state.store.replay(items, now, dry_run).await {
        Ok(created) => {
            if !dry_run && !created.is_empty() {
                state.wake.notify_one();
            }
            json_reply(
                StatusCode::OK,
                &serde_json::json!({
                    "ok": true, "events": evaluated, "dry_run": dry_run, "created": created,
                }),
            )
        }
        Err(e) => store_error(e),
    }
}

async fn events(state: &AppState, query: &HashMap<String, String>) -> Response {
    let limit = match limit(query) {
        Ok(l) => l,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, e),
    };
    let since = match since(query) {
        Ok(s) => s,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, e),
    };
    let event = query.get("event").filter(|e| !e.is_empty()).cloned();
    let until = match query.get("until").map(String::as_str) {
        None | Some("") => None,
        Some(s) => match s.parse::<u64>() {
            Ok(t) => Some(t),
            Err(_) => {
                return error_reply(StatusCode::BAD_REQUEST, "until must be a time in ms");
            }
        },
    };
    // `before` is the `next` of the page before: `RECEIVED_AT:ID`.
    let before = match query.get("before").map(String::as_str) {
        None | Some("") => None,
        Some(s) => match s
            .split_once(':')
            .and_then(|(at, id)| Some((at.parse().ok()?, id)))
        {
            Some((at, id)) => Some((at, id.to_string())),
            None => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "before must be the next of the page before",
                );
            }
        },
    };
    let q = crate::store::EventQuery {
        since_ms: since,
        until_ms: until,
        event,
        limit,
        before,
    };
    match state.store.query_events(q).await {
        Ok(list) => {
            // A full page may have more after it.
            let next = (list.len() == limit)
                .then(|| list.last().map(|e| format!("{}:{}", e.received_at, e.id)))
                .flatten();
            // The stored callback carries its signature; the API never shows it.
            let list: Vec<_> = list
                .into_iter()
                .map(|mut e| {
                    if let Some(o) = e.callback.as_object_mut() {
                        o.remove("security");
                    }
                    e
                })
                .collect();
            json_reply(
                StatusCode::OK,
                &serde_json::json!({"events": list, "next": next}),
            )
        }
        Err(e) => store_error(e),
    }
}

async fn metrics(state: &AppState) -> Response {
    let m = &state.metrics;
    // Gauges that live in the store are read at scrape time.
    if let Ok(c) = state.store.counts().await {
        m.queue_depth.set(c.pending as i64);
        m.dead_deliveries.set(c.dead as i64);
        m.digests_open.set(c.digests_open as i64);
    }
    m.store_writable.set(i64::from(state.store.is_writable()));
    m.store_up.set(i64::from(state.store.is_writable()));
    if let Ok(Some(replicas)) = state.store.replicas().await {
        m.replicas.set(replicas.len() as i64);
    }
    let mut r = warp::reply::Response::new(m.encode().into());
    r.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

async fn retry(state: &AppState, ids: Option<Vec<i64>>) -> Response {
    let single = ids.as_ref().map(|v| v[0]);
    match state.store.retry(ids, crate::verify::now_ms()).await {
        Ok(0) if single.is_some() => {
            error_reply(StatusCode::NOT_FOUND, "no dead delivery with that id")
        }
        Ok(n) => {
            state.wake.notify_one();
            json_reply(
                StatusCode::OK,
                &serde_json::json!({"ok": true, "requeued": n}),
            )
        }
        Err(e) => store_error(e),
    }
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let snapshot = state.snapshot.load();
    let Some(token) = &snapshot.settings.admin_token else {
        return true;
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))
}

async fn handle(
    state: Arc<AppState>,
    method: Method,
    path: &str,
    headers: HeaderMap,
    query: HashMap<String, String>,
) -> Response {
    let ok = serde_json::json!({"ok": true});
    let protected = path.starts_with("/api/") || path.starts_with("/-/");
    if protected && !authorized(&state, &headers) {
        let mut r = error_reply(StatusCode::UNAUTHORIZED, "admin token required");
        r.headers_mut().insert(
            "www-authenticate",
            warp::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    match (path, &method) {
        ("/healthz", &Method::GET | &Method::HEAD) => json_reply(StatusCode::OK, &ok),
        ("/readyz", &Method::GET | &Method::HEAD) => {
            if state.store.is_writable() {
                json_reply(StatusCode::OK, &ok)
            } else {
                error_reply(StatusCode::SERVICE_UNAVAILABLE, "store not writable")
            }
        }
        ("/-/reload", &Method::POST) => {
            let (tx, rx) = oneshot::channel();
            if state.reload_tx.send(tx).await.is_err() {
                return error_reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            }
            match rx.await {
                Ok(Ok(())) => json_reply(StatusCode::OK, &ok),
                Ok(Err(diags)) => json_reply(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({
                        "ok": false,
                        "error": "invalid configuration; the previous one stays in force",
                        "problems": diags.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    }),
                ),
                Err(_) => error_reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
            }
        }
        ("/metrics", &Method::GET) => metrics(&state).await,
        ("/api/v1/deliveries", &Method::GET) => deliveries(&state, &query).await,
        ("/api/v1/events", &Method::GET) => events(&state, &query).await,
        ("/api/v1/digests", &Method::GET) => {
            match state.store.list_groups(crate::verify::now_ms()).await {
                Ok(list) => json_reply(StatusCode::OK, &serde_json::json!({"groups": list})),
                Err(e) => store_error(e),
            }
        }
        ("/api/v1/deliveries/retry-dead", &Method::POST) => retry(&state, None).await,
        ("/api/v1/events/replay", &Method::POST) => replay(&state, &query).await,
        (p, &Method::GET) if p.starts_with("/api/v1/deliveries/") => {
            let id = &p["/api/v1/deliveries/".len()..];
            match id.parse::<i64>() {
                Ok(id) => match state.store.delivery(id).await {
                    Ok(Some(d)) => json_reply(StatusCode::OK, &serde_json::json!(d)),
                    Ok(None) => error_reply(StatusCode::NOT_FOUND, "no such delivery"),
                    Err(e) => store_error(e),
                },
                Err(_) => error_reply(StatusCode::NOT_FOUND, "no such delivery"),
            }
        }
        (p, &Method::POST) if p.starts_with("/api/v1/deliveries/") && p.ends_with("/retry") => {
            let id = &p["/api/v1/deliveries/".len()..p.len() - "/retry".len()];
            match id.parse::<i64>() {
                Ok(id) => retry(&state, Some(vec![id])).await,
                Err(_) => error_reply(StatusCode::NOT_FOUND, "not found"),
            }
        }
        ("/api/v1/status", &Method::GET) => {
            let counts = state.store.counts().await.ok();
            let replicas = state.store.replicas().await.ok().flatten();
            let snapshot = state.snapshot.load();
            let reload = state.reload_status.lock().map(|r| r.clone()).ok();
            json_reply(
                StatusCode::OK,
                &serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": state.started.elapsed().as_secs(),
                    "rules": snapshot.rules.rules.len(),
                    "actions": snapshot.rules.actions.len(),
                    "actions_disabled": snapshot.rules.actions.iter().filter(|a| !a.enabled).count(),
                    "callbacks_accepted": state.accepted.load(Ordering::Relaxed),
                    "queue_depth": counts.map(|c| c.pending),
                    "dead_deliveries": counts.map(|c| c.dead),
                    "store": state.store.kind(),
                    "store_writable": state.store.is_writable(),
                    "replicas": replicas,
                    "delivery_priority": state.delivery_threads.priority().as_str(),
                    "delivery_can_yield": state.delivery_threads.can_yield(),
                    "last_reload": reload.map(|r| serde_json::json!({
                        "successful": r.ok, "at": r.at, "errors": r.errors,
                    })),
                }),
            )
        }
        (
            "/healthz"
            | "/readyz"
            | "/-/reload"
            | "/api/v1/status"
            | "/api/v1/deliveries"
            | "/api/v1/events"
            | "/api/v1/digests"
            | "/api/v1/events/replay",
            _,
        ) => error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error_reply(StatusCode::NOT_FOUND, "not found"),
    }
}
