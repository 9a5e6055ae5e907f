//! The admin listener: `/healthz`, `/readyz`, `POST /-/reload` and
//! `GET /api/v1/status`. With `admin_token` set, every `/api/` and `/-/`
//! call needs `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use warp::Filter;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;

use super::{AppState, error_reply, json_reply};

/// Every route of the admin listener.
pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    warp::any()
        .map(move || state.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .then(|state: Arc<AppState>, method: Method, path: warp::path::FullPath, headers: HeaderMap| async move {
            handle(state, method, path.as_str(), headers).await
        })
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

async fn handle(state: Arc<AppState>, method: Method, path: &str, headers: HeaderMap) -> Response {
    let ok = serde_json::json!({"ok": true});
    let protected = path.starts_with("/api/") || path.starts_with("/-/");
    if protected && !authorized(&state, &headers) {
        let mut r = error_reply(StatusCode::UNAUTHORIZED, "admin token required");
        r.headers_mut().insert("www-authenticate", warp::http::HeaderValue::from_static("Bearer"));
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
        ("/api/v1/status", &Method::GET) => {
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
                    "last_reload": reload.map(|r| serde_json::json!({
                        "successful": r.ok, "at": r.at, "errors": r.errors,
                    })),
                }),
            )
        }
        ("/healthz" | "/readyz" | "/-/reload" | "/api/v1/status", _) => {
            error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error_reply(StatusCode::NOT_FOUND, "not found"),
    }
}
