//! The pre-send endpoint (SPEC §16) on the real daemon: answers to every
//! payload shape, chat type and message type; hostile requests; the
//! budget; recorded verdicts as events that fire rules; a stopped store;
//! metrics; reload.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// SPEC §16's example configuration.
pub const PRESEND: &str = "presend:
  path: /easemob/presend
  budget: 150ms
  word_lists:
    contact: { words: [\"加微信\", \"vx\"] }
    abuse: { words: [\"傻逼\", \"fuck\"] }
    adult: { words: [\"色情\"], allow: [\"白色情人节\"] }
";

/// SPEC §16's example rules.
pub const MODERATION: &str = "moderation:
  - name: staff-pass
    when: { from: \"staff_*\" }
    verdict: pass
  - name: no-contact-ads
    when: { chat_type: [chat, groupchat, group], message.type: txt }
    contains: contact
    verdict: reject
    code: \"HX:10001\"
  - name: mask-abuse
    contains: [abuse, adult]
    verdict: rewrite
  - name: flood
    threshold: { count: 20, within: 10s, by: [from] }
    verdict: reject
    code: TOO_FAST
";

async fn example(extra_rules: &str, extra_config: &str) -> TestApp {
    spawn_app_with(
        Options::rules(format!("{MODERATION}{extra_rules}"))
            .config(format!("{PRESEND}{extra_config}")),
    )
    .await
}

fn json_of(answer: &str) -> Value {
    serde_json::from_str(answer).unwrap_or_else(|_| panic!("not JSON: {answer}"))
}

#[tokio::test]
async fn without_a_presend_section_the_path_is_404() {
    let app = spawn_app().await;
    let (status, answer) = app.presend(&presend_txt("alice", "hi")).await;
    assert_eq!(status, 404, "{answer}");
}

#[tokio::test]
async fn the_example_rules_answer_as_the_spec_says() {
    let app = example("", "").await;
    let cases = [
        (
            "alice",
            "加 微 信 abc123",
            r#"{"valid":false,"code":"HX:10001"}"#,
        ),
        ("staff_li", "加微信", r#"{"valid":true}"#),
        ("alice", "白色情人节快乐", r#"{"valid":true}"#),
        ("alice", "hello", r#"{"valid":true}"#),
    ];
    for (from, text, want) in cases {
        let (status, answer) = app.presend(&presend_txt(from, text)).await;
        assert_eq!((status, answer.as_str()), (200, want), "{from}: {text}");
    }
    // A rewrite answers in the shape it came in.
    let (_, flat) = app
        .presend(&presend_txt("alice", "你个傻 逼, ＦＵＣＫ"))
        .await;
    assert_eq!(
        json_of(&flat),
        json!({"valid": true, "payload": {"msg": "你个***, ****", "type": "txt"}})
    );
    let bodies = presend_request(
        "alice",
        "bob",
        json!({"bodies": [{"type": "txt", "msg": "fuck you"}], "ext": {"k": "v"}, "from": "alice", "to": "bob", "type": "chat"}),
    );
    let (_, answer) = app.presend(&bodies).await;
    assert_eq!(
        json_of(&answer),
        json!({"valid": true, "payload": {"bodies": [{"type": "txt", "msg": "**** you"}], "ext": {"k": "v"}}})
    );
    // Every chat type spelling; a chatroom is not in the contact rule.
    for (chat_type, want) in [
        ("chat", false),
        ("groupchat", false),
        ("group", false),
        ("chatroom", true),
    ] {
        let mut body = presend_txt("alice", "vx 123");
        body["chat_type"] = json!(chat_type);
        body["group_id"] = json!("g1");
        sign(&mut body, SECRET);
        let (status, answer) = app.presend(&body).await;
        assert_eq!(status, 200);
        assert_eq!(json_of(&answer)["valid"], want, "{chat_type}: {answer}");
    }
    // Every message type is answered; only txt has text to hit.
    for payload in [
        json!({"type": "img", "url": "https://x/fuck.png", "filename": "加微信.png"}),
        json!({"type": "loc", "lat": 39.9, "lng": 116.3, "addr": "加微信"}),
        json!({"type": "audio", "url": "u", "length": 3}),
        json!({"type": "video", "url": "u", "length": 3}),
        json!({"type": "file", "url": "u", "filename": "fuck.txt"}),
        json!({"type": "cmd", "action": "fuck"}),
        json!({"type": "custom", "customEvent": "gift", "customExts": {"msg": "fuck"}}),
        json!({"subType": "sub_combine", "title": "加微信", "summary": "fuck"}),
    ] {
        let (status, answer) = app
            .presend(&presend_request("alice", "bob", payload.clone()))
            .await;
        assert_eq!(
            (status, answer.as_str()),
            (200, r#"{"valid":true}"#),
            "{payload}"
        );
    }
}

#[tokio::test]
async fn hostile_requests_get_a_clear_status_and_no_crash() {
    let app = example("", "max_body: 1MiB\nmax_event_age: 5m").await;
    let good = presend_txt("alice", "hi");
    // Unsigned, wrongly signed, an unknown appkey, a stale timestamp.
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("security");
    let mut wrong = good.clone();
    sign(&mut wrong, "not-the-secret");
    let mut other_app = good.clone();
    other_app["callId"] = json!("other#app_1");
    sign(&mut other_app, SECRET);
    let mut stale = good.clone();
    stale["timestamp"] = json!(easehook::now_ms() - 3_600_000);
    sign(&mut stale, SECRET);
    for (body, want) in [
        (unsigned, 400),
        (wrong, 401),
        (other_app, 401),
        (stale, 401),
    ] {
        let (status, answer) = app.presend(&body).await;
        assert_eq!(status, want, "{answer}");
        assert!(answer.len() < 200 && !answer.contains(SECRET), "{answer}");
        assert!(json_of(&answer)["error"].is_string(), "{answer}");
    }
    // Malformed and truncated JSON.
    let text = good.to_string();
    for bytes in ["{not json", &text[..text.len() / 2], "", "[]", "\"x\""] {
        let (status, answer) = app.presend_bytes(bytes.to_string()).await;
        assert_eq!(status, 400, "{bytes}: {answer}");
        assert!(answer.len() < 200, "{answer}");
    }
    // Invalid UTF-16 surrogates in `\u` escapes.
    let lone = text.replace("\"hi\"", "\"\\ud800\\udfff\\ud800\"");
    let (status, _) = app.presend_bytes(lone).await;
    assert_eq!(status, 400);
    // 10 MB.
    let (status, answer) = app.presend_bytes("x".repeat(10 << 20)).await;
    assert_eq!(status, 413, "{answer}");
    // Payloads that are a string, an array, empty or huge `bodies`: answered.
    for payload in [
        json!("加微信"),
        json!(["加微信"]),
        json!({"bodies": []}),
        json!({"bodies": vec![json!({"type": "txt", "msg": "加微信"}); 1000]}),
    ] {
        let (status, answer) = app.presend(&presend_request("alice", "bob", payload)).await;
        assert_eq!(status, 200, "{answer}");
        assert!(json_of(&answer)["valid"].is_boolean());
    }
    // Text of 100,000 characters, and text that looks like a pattern.
    let long = format!("{}加微信", "好".repeat(100_000));
    let (status, answer) = app.presend(&presend_txt("alice", &long)).await;
    assert_eq!(status, 200);
    // Found, or (a debug build on a loaded host) out of budget and answered
    // on_error: never late, never an error status.
    if answer != r#"{"valid":false,"code":"HX:10001"}"# {
        assert_eq!(answer, r#"{"valid":true}"#);
        assert!(
            app.metrics()
                .await
                .contains("easehook_presend_over_budget_total 1")
        );
    }
    for text in ["(a|b)*c.*[", "\\d{3}", "%s%n", "<script>fuck</script>"] {
        let (status, _) = app.presend(&presend_txt("alice", text)).await;
        assert_eq!(status, 200, "{text}");
    }
    // GET is not the pre-send callback.
    let url = app.callback_url.replace("callback", "presend");
    let r = app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // After all of it, the daemon still answers.
    let (status, _) = app.presend(&presend_txt("alice", "hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn ten_thousand_requests_from_one_sender_meet_the_threshold() {
    let app = example("", "").await;
    let mut rejected = 0;
    let mut passed = 0;
    for _ in 0..10_000 {
        let (status, answer) = app.presend(&presend_txt("spammer", "hi")).await;
        assert_eq!(status, 200);
        match answer.as_str() {
            r#"{"valid":true}"# => passed += 1,
            r#"{"valid":false,"code":"TOO_FAST"}"# => rejected += 1,
            other => panic!("{other}"),
        }
    }
    // 20 within any 10 s pass; the run takes well under 10 s per 20
    // messages, so all the others are held.
    assert!(
        passed >= 20 && rejected > 9_000,
        "{passed} passed, {rejected} rejected"
    );
    let (_, answer) = app.presend(&presend_txt("someone_else", "hi")).await;
    assert_eq!(answer, r#"{"valid":true}"#, "other senders are not held");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_within_the_budget() {
    let app = example("", "").await;
    let started = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(app.callback_addr())
        .await
        .unwrap();
    conn.write_all(b"POST /easemob/presend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"callId\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"{\"valid\":true}") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer, not a wait for the body")
            .unwrap();
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The body-read limit of callbacks is 10 s: this answer came from
    // the budget (150 ms), with room for a loaded test host.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        app.metrics()
            .await
            .contains("easehook_presend_over_budget_total 1")
    );
}

#[tokio::test]
async fn recorded_rejects_are_events_that_fire_rules() {
    let sink = HttpSink::start().await;
    let rules = format!(
        "actions:\n  tns:\n    type: http\n    url: '{}'\n    json: {{user: '{{{{from_user}}}}', rule: '{{{{callback.presend.rule}}}}', hits: '{{{{callback.presend.hits.0}}}}'}}\n\
         rules:\n  - {{name: rejects, when: {{event: 'presend:reject'}}, actions: [tns]}}\n",
        sink.url("/tns")
    );
    let app = example(&rules, "").await;
    let (_, answer) = app.presend(&presend_txt("alice", "加微信 abc")).await;
    assert_eq!(answer, r#"{"valid":false,"code":"HX:10001"}"#);
    // A pass is not recorded by default.
    app.presend(&presend_txt("alice", "hello")).await;
    eventually(Duration::from_secs(10), "the reject delivered", || async {
        sink.count() == 1
    })
    .await;
    let got: Value = serde_json::from_str(&sink.requests()[0].body).unwrap();
    assert_eq!(
        got,
        json!({"user": "alice", "rule": "no-contact-ads", "hits": "加微信"})
    );
    let events = app.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "presend:reject");
    let id = events[0]["id"].as_str().unwrap();
    let event = app.get(&format!("/api/v1/events/{id}")).await;
    let body = &event["callback"];
    assert!(body.get("security").is_none(), "{body}");
    assert_eq!(body["presend"]["verdict"], "reject");
    assert_eq!(body["presend"]["code"], "HX:10001");
    assert_eq!(body["presend"]["text"], "加微信 abc");
    assert_eq!(body["presend"]["hits"], json!(["加微信"]));
}

#[tokio::test]
async fn with_the_store_stopped_the_endpoint_keeps_answering() {
    let Some(server) = crate::helpers::pg::own_server() else {
        return;
    };
    let url = server.database().await;
    let app = example("", &crate::helpers::pg::store_config(&url, 2)).await;
    server.stop();
    for _ in 0..50 {
        let (status, answer) = app.presend(&presend_txt("alice", "加微信")).await;
        assert_eq!(
            (status, answer.as_str()),
            (200, r#"{"valid":false,"code":"HX:10001"}"#)
        );
    }
    // The records the store could not take are counted as dropped.
    eventually(
        Duration::from_secs(30),
        "records counted as dropped",
        || async {
            app.metrics().await.lines().any(|l| {
                l.starts_with("easehook_presend_records_dropped_total ") && !l.ends_with(" 0")
            })
        },
    )
    .await;
    server.start();
}

#[tokio::test]
async fn metrics_count_verdicts_hits_and_words() {
    let app = example("", "").await;
    app.presend(&presend_txt("alice", "vx")).await;
    app.presend(&presend_txt("alice", "fuck")).await;
    app.presend(&presend_txt("alice", "hi")).await;
    app.presend_bytes("{").await;
    let mut bad = presend_txt("alice", "hi");
    sign(&mut bad, "wrong");
    app.presend(&bad).await;
    let m = app.metrics().await;
    for line in [
        "easehook_presend_requests_total{verdict=\"reject\"} 1",
        "easehook_presend_requests_total{verdict=\"rewrite\"} 1",
        "easehook_presend_requests_total{verdict=\"pass\"} 1",
        "easehook_presend_requests_total{verdict=\"bad_request\"} 1",
        "easehook_presend_requests_total{verdict=\"unauthorized\"} 1",
        "easehook_presend_rule_hits_total{rule=\"no-contact-ads\"} 1",
        "easehook_presend_rule_hits_total{rule=\"mask-abuse\"} 1",
        "easehook_word_list_words{list=\"contact\"} 2",
        "easehook_presend_duration_seconds_count 5",
        "easehook_presend_over_budget_total 0",
        "easehook_presend_records_dropped_total 0",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
}

#[tokio::test]
async fn reload_swaps_the_moderation_set_and_keeps_it_when_the_new_one_fails() {
    let app = example("", "").await;
    let (_, answer) = app.presend(&presend_txt("alice", "hello")).await;
    assert_eq!(answer, r#"{"valid":true}"#);
    app.write_rules(&format!(
        "{MODERATION}  - {{name: no-hello, when: {{message.text: hello}}, verdict: reject, code: HELLO}}\n"
    ));
    let (status, body) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    let (_, answer) = app.presend(&presend_txt("alice", "hello")).await;
    assert_eq!(answer, r#"{"valid":false,"code":"HELLO"}"#);
    // A broken set is refused with its reason; the one in force stays.
    app.write_rules(&format!(
        "{MODERATION}  - {{name: broken, contains: no-such-list, verdict: reject}}\n"
    ));
    let (status, body) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_ne!(status, 200);
    assert!(body.to_string().contains("unknown word list"), "{body}");
    let (_, answer) = app.presend(&presend_txt("alice", "hello")).await;
    assert_eq!(answer, r#"{"valid":false,"code":"HELLO"}"#);
}

#[tokio::test]
async fn test_presend_shows_verdict_rule_hits_and_the_exact_answer() {
    let opts = Options::rules(MODERATION).config(PRESEND);
    let (dir, config) = write_config(&opts);
    let ad = dir.path().join("ad.json");
    std::fs::write(&ad, presend_txt("alice", "加 微 信 abc").to_string()).unwrap();
    let abuse = dir.path().join("abuse.json");
    std::fs::write(
        &abuse,
        json!({"from": "alice", "to": "bob", "chat_type": "chat",
        "payload": {"msg": "fuck", "type": "txt"}})
        .to_string(),
    )
    .unwrap();
    let (code, out, err) = easehook(
        &config,
        &[
            "test",
            "--presend",
            "--event",
            ad.to_str().unwrap(),
            "--event",
            abuse.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "verdict reject by rule no-contact-ads",
        "code HX:10001",
        "hits 加微信",
        r#"answer {"valid":false,"code":"HX:10001"}"#,
        "verdict rewrite by rule mask-abuse",
        r#"answer {"valid":true,"payload":{"msg":"****","type":"txt"}}"#,
    ] {
        assert!(out.contains(line), "{line} in\n{out}");
    }
    let (code, out, _) = easehook(
        &config,
        &[
            "test",
            "--presend",
            "--json",
            "--event",
            ad.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["presend"]["rule"], "no-contact-ads");
    assert_eq!(v[0]["answer"], r#"{"valid":false,"code":"HX:10001"}"#);
}

#[tokio::test]
async fn test_presend_since_shows_what_a_list_would_do_to_stored_messages() {
    let opts = Options::rules("").config(PRESEND);
    let OnFixedPorts {
        dir,
        config,
        app,
        cb,
        ..
    } = start_on_fixed_ports(&opts).await;
    let url = format!("http://127.0.0.1:{cb}/easemob/callback");
    let client = reqwest::Client::new();
    // Post-send message callbacks, as Easemob sends them after delivery.
    for (i, (family, from, text)) in [
        ("chat", "u1", "hello"),
        ("chat", "u2", "加微信 123"),
        ("groupchat", "u3", "vx: abc"),
        ("chat", "u4", "fuck off"),
        ("chat", "u5", "白色情人节快乐"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = easehook::rules::samples::body(
            family,
            APPKEY,
            from,
            "bob",
            &unique_id(),
            easehook::now_ms() - 1000 * i as u64,
        );
        body["payload"]["bodies"][0]["msg"] = json!(text);
        sign(&mut body, SECRET);
        assert_eq!(post_json(&client, &url, &body).await.0, 200);
    }
    // A roster event is no message.
    let mut ban = easehook::rules::samples::body(
        "roster:ban",
        APPKEY,
        "u6",
        "bob",
        &unique_id(),
        easehook::now_ms(),
    );
    sign(&mut ban, SECRET);
    assert_eq!(post_json(&client, &url, &ban).await.0, 200);
    // The candidate moderation rules, not yet live.
    std::fs::create_dir(dir.path().join("candidate")).unwrap();
    std::fs::write(dir.path().join("candidate/m.yaml"), MODERATION).unwrap();
    let candidate = dir.path().join("candidate").display().to_string();
    let (code, out, err) = easehook_with(
        &config,
        &[
            "test",
            "--presend",
            "--since",
            "1h",
            "--rules",
            &candidate,
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["messages"], 5, "{report}");
    assert_eq!(
        (report["rejected"].as_u64(), report["rewritten"].as_u64()),
        (Some(2), Some(1))
    );
    let rule = |name: &str| {
        report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(rule("no-contact-ads")["rejected"], 2);
    assert_eq!(rule("mask-abuse")["rewritten"], 1);
    assert_eq!(rule("mask-abuse")["examples"][0]["rewritten"], "**** off");
    assert_eq!(rule("staff-pass")["rejected"], 0);
    // The table says the same; nothing was stored.
    let (code, out, _) = easehook_with(
        &config,
        &["test", "--presend", "--since", "1h", "--rules", &candidate],
        &[],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("5 stored message(s)") && out.contains("2 would be rejected, 1 rewritten"),
        "{out}"
    );
    let (status, events) = get_json(
        &client,
        format!("http://127.0.0.1:{}/api/v1/events", app.admin_addr.port()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events["events"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn an_edited_word_list_file_is_picked_up_without_restart() {
    let opts = Options::rules(MODERATION).config(
        "presend:\n  word_lists:\n    contact: { file: words/contact.txt }\n    abuse: { words: [fuck] }\n    adult: { words: [色情] }\n",
    );
    let (dir, config) = write_config(&opts);
    std::fs::create_dir(dir.path().join("words")).unwrap();
    let list = dir.path().join("words/contact.txt");
    std::fs::write(&list, "加微信\n").unwrap();
    let app = start_from(&config, &opts).await;
    let url = format!("http://{}/easemob/presend", app.callback_addr);
    let client = reqwest::Client::new();
    let ask = |text: &str| {
        let r = client.post(&url).json(&presend_txt("alice", text)).send();
        async move { r.await.unwrap().text().await.unwrap() }
    };
    assert_eq!(ask("加我qq").await, r#"{"valid":true}"#);
    std::fs::write(&list, "加微信\n加我qq\n").unwrap();
    eventually(Duration::from_secs(10), "the new word in force", || async {
        ask("加我qq").await == r#"{"valid":false,"code":"HX:10001"}"#
    })
    .await;
}

#[tokio::test]
async fn verdicts_answered_just_before_sigterm_are_recorded() {
    use nix::sys::signal::Signal;
    let (_dir, config) = write_config(&Options::rules(MODERATION).config(PRESEND));
    fixed_ports(&config);
    let mut d = Daemon::start(&config, &[]).await;
    let url = d
        .callback_url
        .replace("/easemob/callback", "/easemob/presend");
    let client = reqwest::Client::new();
    // Rejects answered in a burst are gathered into one batch for the
    // store; a stop while it gathers still stores them.
    for i in 0..30 {
        let body = presend_txt(&format!("spammer{i}"), "加微信");
        assert_eq!(
            post_json(&client, &url, &body).await,
            (200, json!({"valid": false, "code": "HX:10001"}))
        );
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)).await, Some(0));
    let d = Daemon::start(&config, &[]).await;
    let (_, events) = get_json(&client, format!("{}/api/v1/events?limit=1000", d.admin_url)).await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 30, "{events:?}");
    assert!(events.iter().all(|e| e["event"] == "presend:reject"));
}

/// `body` with its `security` moved to just after `callId`, where
/// Easemob's own requests carry it among the other fields.
fn security_second(body: &Value) -> Value {
    let o = body.as_object().unwrap();
    let mut out = serde_json::Map::new();
    for (k, v) in o {
        if k != "security" {
            out.insert(k.clone(), v.clone());
        }
        if k == "callId" {
            out.insert("security".into(), o["security"].clone());
        }
    }
    Value::Object(out)
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn stored_requests_and_callbacks_keep_their_fields_in_the_order_sent() {
    let app = example("", "").await;
    // A recorded verdict: the request without its signature, then what
    // easehook adds.
    let sent = security_second(&presend_txt("alice", "加微信"));
    let (_, answer) = app.presend(&sent).await;
    assert_eq!(answer, r#"{"valid":false,"code":"HX:10001"}"#);
    // An ordinary callback, whose signature the API leaves out.
    let callback = security_second(&signed("roster:ban", "alice", "bob"));
    assert_eq!(app.post(&callback).await.0, 200);
    eventually(Duration::from_secs(10), "both stored", || async {
        app.events().await.len() == 2
    })
    .await;
    let events = app.events().await;
    for (event, sent) in [("presend:reject", &sent), ("roster:ban", &callback)] {
        let id = events.iter().find(|e| e["event"] == event).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let stored = &app.get(&format!("/api/v1/events/{id}")).await["callback"];
        let want: Vec<String> = keys(sent).into_iter().filter(|k| k != "security").collect();
        assert_eq!(keys(stored)[..want.len()], want[..], "{event}: {stored}");
    }
}
