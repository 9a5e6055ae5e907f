//! Hostile HTTP input: every case gets a clear 4xx or a closed connection,
//! never a panic, and valid callbacks keep being answered meanwhile.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn raw(app: &TestApp, request: &[u8]) -> String {
    let addr = app.callback_addr();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

async fn still_serving(app: &TestApp) {
    let (status, answer) = app.post(&signed("roster:ban", "alice", "bob")).await;
    assert_eq!(status, 200, "valid callbacks still answered: {answer}");
}

#[tokio::test]
async fn malformed_bodies_of_every_kind_get_400() {
    let app = spawn_app().await;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!("{}{{}}{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("deeply nested array", deep.into_bytes()),
        ("deeply nested object", deep_obj.into_bytes()),
        (
            "invalid UTF-8",
            b"{\"callId\": \"\xff\xfe\", \"security\": \"x\", \"timestamp\": 1}".to_vec(),
        ),
        (
            "huge number",
            format!(
                "{{\"callId\":\"a\",\"security\":\"b\",\"timestamp\":1{}}}",
                "0".repeat(400)
            )
            .into_bytes(),
        ),
        (
            "float timestamp",
            b"{\"callId\":\"a\",\"security\":\"b\",\"timestamp\":1e30}".to_vec(),
        ),
        (
            "trailing garbage",
            b"{\"callId\":\"a\",\"security\":\"b\",\"timestamp\":1} x".to_vec(),
        ),
        ("NUL bytes", b"\0\0\0".to_vec()),
    ];
    for (name, body) in cases {
        let (status, answer) = app.post_bytes(body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["ok"], false, "{name}");
    }
    still_serving(&app).await;
}

#[tokio::test]
async fn wrong_types_for_every_field_are_refused_or_ignored_never_fatal() {
    let app = spawn_app().await;
    for field in [
        "callId",
        "security",
        "timestamp",
        "chat_type",
        "payload",
        "from",
        "to",
        "appkey",
        "eventType",
        "msg_id",
        "host",
    ] {
        for bad in [
            json!(null),
            json!(true),
            json!(12),
            json!([1]),
            json!({"a": 1}),
            json!(""),
        ] {
            let mut body = signed("roster:ban", "alice", "bob");
            body[field] = bad.clone();
            let (status, answer) = app.post(&body).await;
            assert!(
                [200, 400, 401].contains(&status),
                "{field}={bad}: {status} {answer}"
            );
        }
    }
    // Duplicate keys: the last one wins, as in most JSON parsers; the
    // signature then decides.
    let body = signed("roster:ban", "alice", "bob").to_string();
    let dup = body.replacen('{', "{\"callId\":\"forged\",", 1);
    let (status, _) = app.post_bytes(dup).await;
    assert_eq!(status, 200);
    still_serving(&app).await;
}

#[tokio::test]
async fn lying_lengths_and_header_floods_are_refused() {
    let app = spawn_app().await;
    // A Content-Length larger than the body: the server waits for the rest,
    // gives up after its body timeout or when the client goes away; a
    // shorter one leaves trailing bytes that are not a request.
    let short = raw(
        &app,
        b"POST /easemob/callback HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n{\"a\":1}",
    )
    .await;
    assert!(short.starts_with("HTTP/1.1 400"), "{short}");
    let not_a_number = raw(
        &app,
        b"POST /easemob/callback HTTP/1.1\r\nhost: x\r\ncontent-length: lots\r\n\r\n{}",
    )
    .await;
    assert!(
        not_a_number.starts_with("HTTP/1.1 400") || not_a_number.is_empty(),
        "{not_a_number}"
    );
    let mut flood = b"POST /easemob/callback HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..500 {
        flood.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(100)).as_bytes());
    }
    flood.extend_from_slice(b"content-length: 2\r\n\r\n{}");
    let answer = raw(&app, &flood).await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.is_empty(),
        "header flood: {answer}"
    );
    let huge_header = format!(
        "POST /easemob/callback HTTP/1.1\r\nhost: x\r\nx-big: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "v".repeat(1 << 20)
    );
    let answer = raw(&app, huge_header.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.is_empty(),
        "huge header: {}",
        &answer[..answer.len().min(100)]
    );
    still_serving(&app).await;
}

#[tokio::test]
async fn many_idle_connections_do_not_stop_valid_callbacks() {
    let app = spawn_app().await;
    let addr = app.callback_addr();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Thousands of idle connections: valid callbacks are still answered.
    for _ in 0..5 {
        still_serving(&app).await;
    }
    drop(idle);
}

#[tokio::test]
async fn slow_clients_cannot_hold_a_connection_forever() {
    let app = spawn_app().await;
    let addr = app.callback_addr();
    // Headers trickled one byte a second: closed by the header read timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = async {
        for b in b"POST /easemob/callback HTTP/1.1\r\nhost: slow\r\nx-slow: "
            .iter()
            .cycle()
        {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), trickle)
        .await
        .expect("the server closed the trickling connection");
    let held = started.elapsed();
    assert!(
        held >= Duration::from_secs(9) && held < Duration::from_secs(15),
        "held {held:?}"
    );
    // A body that never completes: 408 after the body timeout.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(
            b"POST /easemob/callback HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"callId\"",
        )
        .await
        .unwrap();
    still_serving(&app).await;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
