//! The load benchmark's baseline and sink: a bare warp server that reads a
//! JSON body, parses it and answers 200 — the ceiling of easehook's stack on
//! a machine. It also serves as the destination of easehook's deliveries
//! (optionally slow), and counts what it received.
//!
//! `cargo run --release --example baseline -- PORT [DELAY_MS]`
//! `GET /stats` answers `{"count":N,"first_ms":…,"last_ms":…}` (POSTs only).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use warp::Filter;

#[derive(Default)]
struct Stats {
    count: AtomicU64,
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: baseline PORT [DELAY_MS]");
    let delay = Duration::from_millis(args.next().and_then(|d| d.parse().ok()).unwrap_or(0));
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    let post = warp::post()
        .and(warp::body::content_length_limit(1 << 20))
        .and(warp::body::bytes())
        .then(move |body: bytes::Bytes| {
            let s = s.clone();
            async move {
                let ok = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let now = now_ms();
                if s.count.fetch_add(1, Ordering::Relaxed) == 0 {
                    s.first_ms.store(now, Ordering::Relaxed);
                }
                s.last_ms.store(now, Ordering::Relaxed);
                let status = if ok {
                    warp::http::StatusCode::OK
                } else {
                    warp::http::StatusCode::BAD_REQUEST
                };
                warp::reply::with_status(warp::reply::json(&serde_json::json!({"ok": ok})), status)
            }
        });
    let s = stats.clone();
    let get = warp::get().and(warp::path("stats")).map(move || {
        warp::reply::json(&serde_json::json!({
            "count": s.count.load(Ordering::Relaxed),
            "first_ms": s.first_ms.load(Ordering::Relaxed),
            "last_ms": s.last_ms.load(Ordering::Relaxed),
        }))
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    warp::serve(get.or(post)).incoming(listener).run().await;
}
