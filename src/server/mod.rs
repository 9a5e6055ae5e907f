//! The two HTTP listeners: the callback listener that Easemob calls, and the
//! admin listener (health, readiness, reload, status).
//!
//! Both run on [`serve`], an accept loop that owns what warp's own server
//! does not: a cap on open connections (beyond it new connections are closed
//! at once), a timeout for reading request headers (a client that trickles
//! bytes cannot hold a slot forever), and graceful shutdown.

pub mod admin;
pub mod callback;
pub mod console;
pub mod listen;
pub mod presend;
mod query;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::Filter;
use warp::http::StatusCode;

use crate::shutdown::Shutdown;
use crate::state::AppState;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Time allowed to send the request headers.
    pub header_read_timeout: Duration,
    /// Time allowed, after shutdown starts, for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Idle connections are cheap, and a slow-loris flood must not
            // crowd out Easemob: the cap is high, the header timeout short.
            // The systemd unit raises the file limit to match.
            max_connections: 8192,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A JSON reply with a status code.
pub fn json_reply(status: StatusCode, body: &serde_json::Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A reply whose JSON body is already written out: the hot replies of the
/// callback listener, which would otherwise build a `Value` to serialize it.
pub fn raw_json_reply(status: StatusCode, body: impl warp::Reply) -> warp::reply::Response {
    let mut r = body.into_response();
    *r.status_mut() = status;
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    r
}

/// What both listeners' handlers start from: the shared state and the
/// request's method, path and headers.
pub fn request_parts(
    state: Arc<AppState>,
) -> impl Filter<
    Extract = (
        Arc<AppState>,
        warp::http::Method,
        warp::path::FullPath,
        warp::http::HeaderMap,
    ),
    Error = std::convert::Infallible,
> + Clone {
    warp::any()
        .map(move || state.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
}

/// The answer to a request that no route could take (a warp rejection).
pub async fn rejected(
    _: warp::Rejection,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    Ok(error_reply(StatusCode::BAD_REQUEST, "bad request"))
}

/// `{"ok":false,"error":…}` with a status code.
/// 405, with the `allow: POST` that says what would do.
pub fn use_post() -> warp::reply::Response {
    let mut r = error_reply(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    r.headers_mut()
        .insert("allow", warp::http::HeaderValue::from_static("POST"));
    r
}

pub fn error_reply(status: StatusCode, message: &str) -> warp::reply::Response {
    json_reply(status, &serde_json::json!({"ok": false, "error": message}))
}

/// Serve `filter` on `listener` until `shutdown`, then stop accepting, let
/// requests in flight finish (up to `limits.drain_timeout`) and return.
///
/// The listener may be a socket that systemd keeps open across restarts:
/// connections not yet accepted then wait in its backlog for the next
/// process, and every connection this process did accept gets its request
/// answered. That includes one accepted whose request has not arrived yet
/// (its client connected to send one): hyper's own graceful shutdown would
/// close it unread, so each connection is told to finish only once its
/// current request has begun. An idle keep-alive connection, between two
/// requests, is closed at once, as HTTP/1.1 allows.
pub async fn serve<F>(listener: TcpListener, filter: F, shutdown: Shutdown, limits: Limits)
where
    F: Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    use hyper::service::Service as _;
    let service = warp::service(filter);
    let connections = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Whether a request has begun on this connection (its head is read).
        let (began_tx, mut began) = tokio::sync::watch::channel(false);
        let inner = hyper_util::service::TowerToHyperService::new(service.clone());
        let svc = hyper::service::service_fn(move |req| {
            // Only the first request changes it (and wakes a shutdown waiting).
            began_tx.send_if_modified(|began| !std::mem::replace(began, true));
            inner.call(req)
        });
        // `half_close`: while a request is being answered, hyper does not
        // read ahead to find out whether the client has gone. Such a read
        // needs room in the connection's buffer, which the request still
        // shares, so it cost a new 8 KiB buffer per request; and a
        // callback's commit is carried through even when its caller has
        // gone (see `callback::RunToEnd`), so nothing is gained by noticing
        // before the answer is written.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .half_close(true)
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        let stop = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // Shutdown reaches a connection once a request has begun on it;
            // one that never sends a request is closed by the header timeout.
            let stopping = async {
                stop.wait().await;
                let _ = began.wait_for(|b| *b).await;
            };
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stopping => {
                    // The request in flight is answered (`Connection:
                    // close`), then the connection ends.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain timeout; closing them");
    }
}
