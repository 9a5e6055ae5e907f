//! The callback listener: every answer Easemob can get.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const LOG_RULES: &str = "actions:\n  note: {type: log, message: '{{event}}'}\nrules:\n  - {name: everything, actions: [note]}\n";

#[tokio::test]
async fn a_signed_roster_callback_is_accepted_and_stored_with_its_rules() {
    let app = spawn_app_with(Options::rules(LOG_RULES)).await;
    let body = signed("roster:ban", "alice", "bob");
    let (status, answer) = app.post(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], true);
    let id = answer["id"].as_str().unwrap().to_string();
    let events = app.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["event"], "roster:ban");
    assert_eq!(events[0]["rules"], json!(["everything"]));
    assert_eq!(events[0]["callback"]["to"], "bob");
    assert!(
        events[0]["callback"].get("security").is_none(),
        "the API never shows signatures"
    );
}

#[tokio::test]
async fn every_documented_fixture_is_accepted_once_re_signed() {
    let app = spawn_app().await;
    let dir = fixture("");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        body["appkey"] = json!(APPKEY);
        sign(&mut body, SECRET);
        let (status, answer) = app.post(&body).await;
        assert_eq!(status, 200, "{}: {answer}", path.display());
        assert!(answer["id"].is_string(), "{}: {answer}", path.display());
        n += 1;
    }
    assert_eq!(n, 6);
}

#[tokio::test]
async fn a_repeat_is_acknowledged_as_a_duplicate_and_not_stored_again() {
    let app = spawn_app_with(Options::rules(LOG_RULES)).await;
    let body = signed("roster:ban", "alice", "bob");
    assert_eq!(app.post(&body).await.0, 200);
    let (status, answer) = app.post(&body).await;
    assert_eq!(
        (status, answer),
        (200, json!({"ok": true, "duplicate": true}))
    );
    assert_eq!(app.events().await.len(), 1);
    assert_eq!(app.deliveries("").await.len(), 1);
}

#[tokio::test]
async fn accept_and_remote_accept_share_a_call_id_but_are_two_events() {
    let app = spawn_app().await;
    let accept = signed("roster:accept", "alice", "bob");
    let mut remote = accept.clone();
    remote["payload"]["operation"] = json!("remote_accept");
    let a = app.post(&accept).await;
    let b = app.post(&remote).await;
    assert!(
        a.1["id"].is_string() && b.1["id"].is_string(),
        "{a:?} {b:?}"
    );
    assert_eq!(app.events().await.len(), 2);
}

#[tokio::test]
async fn unknown_families_are_accepted_verified_and_stored() {
    let app = spawn_app().await;
    let mut login = json!({"callId": format!("{APPKEY}_{}", unique_id()), "reason": "login", "status": "online",
        "user": "org#app_alice/android", "appkey": APPKEY, "timestamp": easehook::now_ms(), "security": ""});
    sign(&mut login, SECRET);
    let (status, answer) = app.post(&login).await;
    assert_eq!(status, 200, "{answer}");
    let mut msg = signed("groupchat", "alice", "group1");
    msg["payload"] = json!({"bodies": [{"type": "txt", "msg": "你好"}]});
    sign(&mut msg, SECRET);
    assert_eq!(app.post(&msg).await.0, 200);
    // A family nothing names.
    let mut odd = json!({"callId": format!("{APPKEY}_{}", unique_id()), "appkey": APPKEY,
        "novel": {"x": 1}, "timestamp": easehook::now_ms(), "security": ""});
    sign(&mut odd, SECRET);
    assert_eq!(app.post(&odd).await.0, 200);
    let events = app.events().await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["unknown", "groupchat", "user:login"]);
    // Unsigned, an unknown family is refused like any other.
    login["security"] = json!("0".repeat(32));
    assert_eq!(app.post(&login).await.0, 401);
}

#[tokio::test]
async fn malformed_or_incomplete_bodies_get_400() {
    let app = spawn_app().await;
    let (status, answer) = app.post_bytes("{not json").await;
    assert_eq!((status, answer["ok"].clone()), (400, json!(false)));
    assert_eq!(answer["error"], "body is not valid JSON");
    assert_eq!(app.post_bytes("[1,2]").await.0, 400);
    for field in ["callId", "security", "timestamp"] {
        let mut body = signed("roster:ban", "a", "b");
        body.as_object_mut().unwrap().remove(field);
        let (status, answer) = app.post(&body).await;
        assert_eq!(status, 400, "{field}");
        assert_eq!(answer["error"], format!("missing field `{field}`"));
    }
    let mut body = signed("roster:ban", "a", "b");
    body["timestamp"] = json!(-5);
    assert_eq!(app.post(&body).await.0, 400);
}

#[tokio::test]
async fn a_string_timestamp_is_accepted() {
    let app = spawn_app().await;
    let mut body = signed("roster:ban", "a", "b");
    body["timestamp"] = json!(body["timestamp"].to_string());
    sign(&mut body, SECRET);
    assert_eq!(app.post(&body).await.0, 200);
}

#[tokio::test]
async fn bad_signatures_unknown_appkeys_and_old_events_get_401_without_echoing_secrets() {
    let app = spawn_app_with(Options::rules("").config("max_event_age: 5m")).await;
    let mut body = signed("roster:ban", "a", "b");
    sign(&mut body, "wrong-secret");
    let (status, answer) = app.post(&body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("bad signature"))
    );

    let mut body = signed("roster:ban", "a", "b");
    body["appkey"] = json!("other#app");
    let (status, answer) = app.post(&body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("unknown appkey"))
    );

    let mut body = signed("roster:ban", "a", "b");
    body["timestamp"] = json!(easehook::now_ms() - 10 * 60 * 1000);
    sign(&mut body, SECRET);
    let (status, answer) = app.post(&body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("event too old"))
    );
    assert!(!answer.to_string().contains(SECRET));

    // Uppercase hex is the same signature.
    let mut body = signed("roster:ban", "a", "b");
    body["security"] = json!(body["security"].as_str().unwrap().to_uppercase());
    assert_eq!(app.post(&body).await.0, 200);
}

#[tokio::test]
async fn rotated_secrets_and_the_star_fallback_verify() {
    let opts = Options::rules("")
        .config("secrets:\n  \"org#app\": [\"old-secret-aaaa\", \"${IT_SECRET}\"]\n  \"*\": [\"fallback-bbbb\"]")
        .env("X", "1");
    let (dir, config) = write_config(&opts);
    // The generated secrets block is replaced by the one above.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        &format!("secrets:\n  \"{APPKEY}\": [\"${{IT_SECRET}}\"]\n"),
        "",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let app = start_from(&config, &opts).await;
    let url = format!("http://{}/easemob/callback", app.callback_addr);
    let client = reqwest::Client::new();
    for (appkey, secret) in [
        (APPKEY, "old-secret-aaaa"),
        (APPKEY, SECRET),
        ("any#other", "fallback-bbbb"),
    ] {
        let mut body = signed("roster:ban", "a", "b");
        body["appkey"] = json!(appkey);
        sign(&mut body, secret);
        let status = post_json(&client, &url, &body).await.0;
        assert_eq!(status, 200, "{appkey} {secret}");
    }
    app.shutdown();
    drop(dir);
}

#[tokio::test]
async fn oversized_bodies_get_413_by_length_and_while_streaming() {
    let app = spawn_app_with(Options::rules("").config("max_body: 1KiB")).await;
    let mut body = signed("roster:add", "a", "b");
    body["payload"]["reason"] = json!("x".repeat(2000));
    sign(&mut body, SECRET);
    let (status, answer) = app.post(&body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("body too large"))
    );

    // Chunked, with no length to check up front.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..20)
        .map(|_| Ok(bytes::Bytes::from(vec![b' '; 100])))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let (status, _) = app.post_bytes(reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(status, 413);

    // Just under the limit is fine.
    let mut body = signed("roster:add", "a", "b");
    let room = 1024 - body.to_string().len();
    body["payload"]["reason"] = json!("y".repeat(room - 40));
    sign(&mut body, SECRET);
    assert!(body.to_string().len() <= 1024);
    assert_eq!(app.post(&body).await.0, 200);
}

#[tokio::test]
async fn an_announced_huge_body_is_refused_without_being_read() {
    let app = spawn_app().await;
    let addr = app.callback_addr();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Announce 100 MB, send a few bytes, and wait for the answer: it comes
    // at once, without the server waiting for (or reading) the rest.
    conn.write_all(b"POST /easemob/callback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("answered at once")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn a_caller_that_shuts_its_sending_side_down_still_gets_its_answer() {
    let app = spawn_app_with(Options::rules(LOG_RULES)).await;
    let mut conn = app.post_raw(&signed("roster:ban", "alice", "bob")).await;
    conn.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""ok":true,"id":""#), "{answer}");
    assert_eq!(app.events().await.len(), 1);
}

#[tokio::test]
async fn other_paths_and_methods_get_404_and_405() {
    let app = spawn_app().await;
    let base = app.callback_url.replace("/easemob/callback", "");
    let r = app.client.get(&app.callback_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = app
        .client
        .post(format!("{base}/elsewhere"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = app
        .client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn the_store_failing_gets_503_and_readyz_follows_it() {
    let app = spawn_app().await;
    assert_eq!(app.admin(reqwest::Method::GET, "/readyz").await.0, 200);
    // Make the database read-only underneath the daemon: a store that cannot
    // take the event.
    let db = app.state_dir.join("easehook.db");
    let conn = rusqlite_open(&db);
    conn.execute_batch("PRAGMA query_only = 0; BEGIN EXCLUSIVE;")
        .unwrap();
    let body = signed("roster:ban", "a", "b");
    let (status, answer) = app.post(&body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("store unavailable"))
    );
    assert_eq!(app.admin(reqwest::Method::GET, "/readyz").await.0, 503);
    // Space returns: the lock is released. The probe makes the daemon ready
    // again by itself, and Easemob's retry of the same event is accepted.
    conn.execute_batch("ROLLBACK").unwrap();
    eventually(Duration::from_secs(10), "ready again", || async {
        app.admin(reqwest::Method::GET, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(app.post(&body).await.0, 200);
}

fn rusqlite_open(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(
        app.admin(reqwest::Method::GET, "/healthz").await,
        (200, json!({"ok": true}))
    );
    assert_eq!(
        app.admin(reqwest::Method::GET, "/readyz").await,
        (200, json!({"ok": true}))
    );
    assert_eq!(app.admin(reqwest::Method::GET, "/nope").await.0, 404);
}

#[tokio::test]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let app = spawn_app_with(
        Options::rules("")
            .config("admin_token: ${TOKEN}")
            .env("TOKEN", "admin-token-123456"),
    )
    .await;
    assert_eq!(
        app.admin(reqwest::Method::GET, "/api/v1/status").await.0,
        401
    );
    assert_eq!(app.admin(reqwest::Method::POST, "/-/reload").await.0, 401);
    // Health stays open for probes.
    assert_eq!(app.admin(reqwest::Method::GET, "/healthz").await.0, 200);
    let r = app
        .client
        .get(format!("{}/api/v1/status", app.admin_url))
        .bearer_auth("admin-token-123456")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let wrong = app
        .client
        .get(format!("{}/api/v1/events", app.admin_url))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
}

#[tokio::test]
async fn login_and_group_callbacks_get_event_names_rules_can_match() {
    let app = spawn_app_with(Options::rules(
        "actions:\n  note: {type: log, message: '{{event}} {{from_user}}'}\n\
         rules:\n\
         \x20 - {name: alice-logins, when: {event: user:login, from: alice}, actions: [note]}\n\
         \x20 - {name: group-joins, when: {event: 'group:*'}, actions: [note]}\n\
         \x20 - {name: users, when: {event: user}, actions: []}\n",
    ))
    .await;
    for (event, from) in [
        ("user:login", "alice"),
        ("user:logout", "alice"),
        ("group:join", "carol"),
    ] {
        let mut body = easehook::rules::samples::body(
            event,
            APPKEY,
            from,
            "",
            &unique_id(),
            easehook::now_ms(),
        );
        sign(&mut body, SECRET);
        let (status, answer) = app.post(&body).await;
        assert_eq!(status, 200, "{event}: {answer}");
    }
    let events = app.events().await;
    let seen: Vec<(String, Vec<String>)> = events
        .iter()
        .map(|e| {
            let rules = e["rules"].as_array().unwrap();
            (
                e["event"].as_str().unwrap().to_string(),
                rules
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    for (event, rules) in [
        ("user:login", vec!["alice-logins", "users"]),
        ("user:logout", vec!["users"]),
        ("group:join", vec!["group-joins"]),
    ] {
        assert!(
            seen.contains(&(
                event.to_string(),
                rules.iter().map(|r| r.to_string()).collect()
            )),
            "{event} with {rules:?} not in {seen:?}"
        );
    }
    // The family filters of the events API.
    let users = app.get("/api/v1/events?event=user").await;
    assert_eq!(users["events"].as_array().unwrap().len(), 2, "{users}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("easehook_callbacks_total{result=\"accepted\",event=\"user\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("easehook_callbacks_total{result=\"accepted\",event=\"group\"} 1"),
        "{metrics}"
    );
}
