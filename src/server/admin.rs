//! The admin listener: health, readiness, reload and the admin API.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once rules are loaded and the store is writable, else 503 |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `POST /-/reload` | reload now; 400 with every problem when the new set is invalid |
//! | `GET /api/v1/status` | version, uptime, counts, queue depth, last reload |
//! | `GET /api/v1/deliveries?status=&action=&limit=&before=` | deliveries, newest first, a page at a time (`next`) |
//! | `GET /api/v1/deliveries/{id}` | one delivery with every attempt made (`attempts_made`) |
//! | `POST /api/v1/deliveries/{id}/retry` | put a dead delivery back in the queue |
//! | `POST /api/v1/deliveries/retry-dead` | put every dead delivery back |
//! | `GET /api/v1/events?since=&until=&event=&user=&rule=&limit=&before=` | stored events with their rules and deliveries, a page at a time (`next`) |
//! | `GET /api/v1/events/{id}` | one stored event |
//! | `POST /api/v1/events/replay?since=&until=&event=&rule=&dry_run=` | give stored events the deliveries the rules in force make and they lack |
//! | `GET /api/v1/digests` | open digests and threshold groups counting (SPEC §11) |
//!
//! With `admin_token` set, every `/api/` and `/-/` call needs
//! `Authorization: Bearer <token>`.
//!
//! Every other path is the web console's ([`super::console`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use warp::Filter;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;

use super::console::i18n::EN;
use super::query::{Bad, delivery_query, event_query, given, next_page, since, unsigned, until};
use super::{error_reply, json_reply};
use crate::state::AppState;

/// Every route of the admin listener.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    super::request_parts(state)
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::body::stream().map(boxed_body))
        .then(
            |state: Arc<AppState>,
             method: Method,
             path: warp::path::FullPath,
             headers: HeaderMap,
             query: HashMap<String, String>,
             body: super::console::Body| async move {
                handle(state, method, path.as_str(), headers, query, body).await
            },
        )
        .recover(super::rejected)
        .unify()
}

/// The request body as the console reads it: only by its forms, and
/// only so far.
fn boxed_body<S, B>(body: S) -> super::console::Body
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: bytes::Buf,
{
    use futures_util::TryStreamExt;
    Box::pin(body.map_ok(|mut b| {
        let n = b.remaining();
        b.copy_to_bytes(n)
    }))
}

impl Bad {
    fn reply(self) -> Response {
        error_reply(StatusCode::BAD_REQUEST, self.say(&EN))
    }
}

fn store_error(e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "admin API: store failed");
    error_reply(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
}

async fn deliveries(state: &AppState, query: &HashMap<String, String>) -> Response {
    let q = match delivery_query(query) {
        Ok(q) => q,
        Err(e) => return e.reply(),
    };
    let limit = q.limit;
    match state.store.query_deliveries(q).await {
        Ok(list) => {
            let next = next_page(&list, limit, |d| d.id);
            json_reply(
                StatusCode::OK,
                &serde_json::json!({"deliveries": list, "next": next}),
            )
        }
        Err(e) => store_error(e),
    }
}

/// `POST /api/v1/events/replay?since=&until=&event=&rule=&dry_run=`: the
/// stored events of the period evaluated against the rules in force, and
/// given the deliveries they do not have (SPEC §14).
async fn replay(state: &AppState, query: &HashMap<String, String>) -> Response {
    let now = crate::now_ms();
    let since = match given(query, "since") {
        None => return error_reply(StatusCode::BAD_REQUEST, "since is required"),
        Some(_) => match since(query) {
            Ok(s) => s,
            Err(e) => return e.reply(),
        },
    };
    let until = match until(query) {
        Ok(u) => u,
        Err(e) => return e.reply(),
    };
    let dry_run = matches!(query.get("dry_run").map(String::as_str), Some("true" | "1"));
    let snapshot = state.snapshot.load_full();
    let rules = &snapshot.rules;
    let only = given(query, "rule");
    if let Some(r) = only
        && !rules.rules.iter().any(|x| x.name == r)
    {
        return error_reply(StatusCode::BAD_REQUEST, "unknown rule");
    }
    let mut q = crate::store::EventQuery {
        since_ms: since,
        until_ms: until,
        event: given(query, "event").map(str::to_string),
        limit: 1000,
        ..crate::store::EventQuery::default()
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
    let q = match event_query(query) {
        Ok(q) => q,
        Err(e) => return e.reply(),
    };
    let limit = q.limit;
    match state.store.query_events(q).await {
        Ok(list) => {
            let next = next_page(&list, limit, |e| format!("{}:{}", e.received_at, e.id));
            let list: Vec<_> = list.into_iter().map(unsigned).collect();
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
    match state.store.retry(ids, crate::now_ms()).await {
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
    body: super::console::Body,
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
        ("/api/v1/digests", &Method::GET) => match state.store.list_groups(crate::now_ms()).await {
            Ok(list) => json_reply(StatusCode::OK, &serde_json::json!({"groups": list})),
            Err(e) => store_error(e),
        },
        ("/api/v1/deliveries/retry-dead", &Method::POST) => retry(&state, None).await,
        ("/api/v1/events/replay", &Method::POST) => replay(&state, &query).await,
        (p, &Method::GET) if p.starts_with("/api/v1/events/") && p != "/api/v1/events/replay" => {
            let id = &p["/api/v1/events/".len()..];
            match state.store.event(id.to_string()).await {
                Ok(Some(e)) => json_reply(StatusCode::OK, &serde_json::json!(unsigned(e))),
                Ok(None) => error_reply(StatusCode::NOT_FOUND, "no such event"),
                Err(e) => store_error(e),
            }
        }
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
        _ if protected => error_reply(StatusCode::NOT_FOUND, "not found"),
        // Everything else is the console's.
        _ => super::console::handle(&state, method, path, headers, query, body).await,
    }
}
