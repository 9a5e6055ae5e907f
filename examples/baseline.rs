//! The load benchmark's baseline and sink: a bare warp server that reads a
//! JSON body, parses it and answers 200 — the ceiling of easehook's stack on
//! a machine. It also serves as the destination of easehook's deliveries
//! (optionally slow), and counts what it received.
//!
//! `cargo run --release --example baseline -- PORT [DELAY_MS [JOURNAL]]`
//! `GET /stats` answers `{"count":N,"first_ms":…,"last_ms":…}` (POSTs only).
//!
//! With `BASELINE_PRESEND_SECRET` set, it plays the bare pre-send server
//! (SPEC §16) instead: it checks each request's signature,
//! `md5(callId + secret + timestamp)`, as easehook does, and answers
//! `{"valid":true}` (401 for a bad signature): the ceiling of a pre-send
//! answer on this stack.
//!
//! With `JOURNAL` (a file path), each body is written to that file and on
//! disk (`fdatasync`) before the answer, group-committed by one thread as
//! easehook's store does: the floor of a durable acknowledgement on the
//! machine, with nothing else in the way. The file is written in full
//! before the server listens and then written over as a ring, as a WAL that
//! starts over is: extending a file on every write costs the file system
//! block allocation and a journal commit per sync, which would put the
//! floor lower than a durable answer needs to cost (measured: 0.59 of the
//! baseline appending, 0.67 writing over: BENCHMARKS.md). Nothing reads it
//! back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use md5::{Digest, Md5};
use warp::Filter;
use warp::Reply;

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

type Ack = tokio::sync::oneshot::Sender<()>;

/// Size of the journal's ring: far more than one group of bodies.
const RING: u64 = 64 << 20;

/// Create the journal file at its full size, written and on disk, so that
/// every later write overwrites.
fn ring_file(path: &str) -> std::fs::File {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("journal file");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..RING >> 20 {
        file.write_all(&zeros).expect("journal write");
    }
    file.sync_all().expect("journal sync");
    file
}

/// Write every waiting body to `file` (the next place in the ring), sync
/// once, answer them all.
fn journal(file: std::fs::File, rx: std::sync::mpsc::Receiver<(bytes::Bytes, Ack)>) {
    use std::os::unix::fs::FileExt;
    let mut at = 0;
    let mut group = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        group.clear();
        for (body, _) in &batch {
            group.extend_from_slice(body);
        }
        if at + group.len() as u64 > RING {
            at = 0;
        }
        file.write_all_at(&group, at).expect("journal write");
        at += group.len() as u64;
        file.sync_data().expect("journal sync");
        for (_, ack) in batch {
            let _ = ack.send(());
        }
    }
}

/// The bare pre-send answer: the signature checked, `{"valid":true}`.
fn presend_answer(body: &[u8], secret: &str) -> warp::reply::Response {
    let status = |code| warp::reply::with_status("{}", code).into_response();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return status(warp::http::StatusCode::BAD_REQUEST);
    };
    let text = |k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut h = Md5::new();
    h.update(text("callId").as_bytes());
    h.update(secret.as_bytes());
    h.update(text("timestamp").as_bytes());
    let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if want != text("security") {
        return status(warp::http::StatusCode::UNAUTHORIZED);
    }
    warp::http::Response::builder()
        .header("content-type", "application/json")
        .body(r#"{"valid":true}"#.into())
        .expect("a valid response")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: baseline PORT [DELAY_MS [JOURNAL]]");
    let delay = Duration::from_millis(args.next().and_then(|d| d.parse().ok()).unwrap_or(0));
    let journal_tx = args.next().map(|path| {
        let file = ring_file(&path);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || journal(file, rx));
        tx
    });
    let presend: Option<Arc<str>> = std::env::var("BASELINE_PRESEND_SECRET")
        .ok()
        .map(Into::into);
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    let post = warp::post()
        .and(warp::body::content_length_limit(1 << 20))
        .and(warp::body::bytes())
        .then(move |body: bytes::Bytes| {
            let s = s.clone();
            let journal_tx = journal_tx.clone();
            let presend = presend.clone();
            async move {
                if let Some(secret) = presend.as_deref() {
                    s.count.fetch_add(1, Ordering::Relaxed);
                    return presend_answer(&body, secret);
                }
                let ok = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
                if let Some(tx) = journal_tx {
                    let (ack, done) = tokio::sync::oneshot::channel();
                    tx.send((body, ack)).expect("journal thread");
                    done.await.expect("journal thread");
                }
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
                    .into_response()
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
