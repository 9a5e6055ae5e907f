//! The callback listener's routes: `POST {callback_path}` (see
//! [`callback`](super::callback)), `POST {presend.path}` (see
//! [`presend`](super::presend)) and `GET /healthz`.
//!
//! The path is compared with the snapshot each request starts with, so a
//! reload that changes `presend:` takes effect on the next request.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Buf;
use futures_util::Stream;
use warp::Filter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{callback, error_reply, json_reply, presend};
use crate::state::AppState;

/// Every route of the callback listener.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Only the announced length is read from the headers: cloning the whole
    // header map for every callback would be work for nothing.
    warp::any()
        .map(move || state.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            |state: Arc<AppState>,
             method: Method,
             path: warp::path::FullPath,
             length: Option<u64>,
             body| async move { route(state, method, path.as_str(), length, body).await },
        )
        .recover(super::rejected)
        .unify()
}

/// The handler of `path`, or the answer of a path that has none.
async fn route<S, B>(
    state: Arc<AppState>,
    method: Method,
    path: &str,
    length: Option<u64>,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let snapshot = state.snapshot.load_full();
    let settings = &snapshot.settings;
    if let Some(presend) = &settings.presend
        && path == presend.path
    {
        return presend::handle(state.clone(), snapshot.clone(), method, length, body).await;
    }
    if path == settings.callback_path {
        return callback::handle(state, snapshot, method, length, body).await;
    }
    if path == "/healthz" && (method == Method::GET || method == Method::HEAD) {
        return json_reply(StatusCode::OK, &serde_json::json!({"ok": true}));
    }
    error_reply(StatusCode::NOT_FOUND, "not found")
}
