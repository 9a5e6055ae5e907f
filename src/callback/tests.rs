use super::*;
use serde_json::json;

/// A field as rules read it.
fn field(cb: &Callback, name: &str) -> Option<String> {
    crate::rules::matcher::Field::parse(name)
        .unwrap()
        .get(cb)
        .map(|v| v.into_owned())
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/easemob/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_documented_fixture_parses() {
    let cases = [
        ("roster-add.json", "roster:add"),
        ("roster-remove.json", "roster:remove"),
        ("roster-accept.json", "roster:accept"),
        ("roster-remote_decline.json", "roster:remote_decline"),
        ("roster-ban.json", "roster:ban"),
        ("roster-allow.json", "roster:allow"),
    ];
    for (file, event) in cases {
        let cb = Callback::parse(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(cb.event, event, "{file}");
        assert_eq!(cb.chat_type.as_deref(), Some("roster"));
        assert_eq!(cb.from_user, "XXXX", "{file}");
        assert!(cb.to_user.starts_with("tst"), "{file}");
        assert_eq!(cb.event_type.as_deref(), Some("chat"));
        assert_eq!(cb.appkey.as_deref(), Some("XXXX#XXXX"));
        assert!(cb.timestamp > 1_642_648_000_000);
        assert_eq!(cb.timestamp_text, cb.timestamp.to_string());
    }
    let ban = Callback::parse(&fixture("roster-ban.json")).unwrap();
    assert_eq!(
        field(&ban, "payload.status.error_code").as_deref(),
        Some("ok")
    );
    let accept = Callback::parse(&fixture("roster-accept.json")).unwrap();
    assert_eq!(
        field(&accept, "payload.roster_ver").as_deref(),
        Some("DD6E14FE5EE5A9ABC52CA86C5DE1601CF729BFD6")
    );
    let add = Callback::parse(&fixture("roster-add.json")).unwrap();
    assert_eq!(field(&add, "payload.reason").as_deref(), Some(""));
}

#[test]
fn user_ids_in_both_forms() {
    assert_eq!(
        normalize_user("org#app_alice@easemob.com", Some("org#app")),
        "alice"
    );
    assert_eq!(normalize_user("org#app_alice@easemob.com", None), "alice");
    assert_eq!(normalize_user("org#app_al_ice@easemob.com", None), "al_ice");
    assert_eq!(normalize_user("alice", Some("org#app")), "alice");
    assert_eq!(normalize_user("bob_smith", Some("org#app")), "bob_smith");
    assert_eq!(normalize_user("用户1", None), "用户1");
}

#[test]
fn event_names() {
    assert_eq!(
        event_name(Some("roster"), Some("ban"), None, None),
        "roster:ban"
    );
    assert_eq!(event_name(Some("chat"), None, None, Some("chat")), "chat");
    assert_eq!(event_name(None, None, Some("login"), Some("x")), "login");
    assert_eq!(
        event_name(None, None, None, Some("chat_offline")),
        "chat_offline"
    );
    assert_eq!(event_name(None, Some("ban"), None, None), "unknown");
}

fn base() -> Value {
    json!({"callId": "org#app_1", "security": "x", "timestamp": 1, "chat_type": "roster",
               "payload": {"operation": "accept"}, "from": "a", "to": "b", "eventType": "chat"})
}

#[test]
fn dedup_key_separates_what_call_id_does_not() {
    let a = Callback::from_value(base()).unwrap();
    let mut v = base();
    v["payload"]["operation"] = json!("remote_accept");
    let b = Callback::from_value(v).unwrap();
    let mut v = base();
    v["to"] = json!("c");
    let c = Callback::from_value(v).unwrap();
    let mut v = base();
    v["security"] = json!("other");
    let same = Callback::from_value(v).unwrap();
    assert_ne!(a.dedup_key(), b.dedup_key());
    assert_ne!(a.dedup_key(), c.dedup_key());
    assert_eq!(a.dedup_key(), same.dedup_key());
}

#[test]
fn dedup_keys_sort_in_the_order_of_call_ids() {
    let key = |call_id: &str, to: &str| {
        let mut v = base();
        v["callId"] = json!(call_id);
        v["to"] = json!(to);
        Callback::from_value(v).unwrap().dedup_key().to_string()
    };
    // Easemob's message ids grow with time; whatever the users, a later
    // callback's key sorts after an earlier one's.
    let mut keys: Vec<String> = (0..50)
        .map(|i| {
            key(
                &format!("org#app_9667258997790{i:05}"),
                &format!("u{}", 50 - i),
            )
        })
        .collect();
    let in_arrival_order = keys.clone();
    keys.sort();
    assert_eq!(keys, in_arrival_order);
    // After the `/` is the whole key of earlier versions, which the
    // store still looks up: the same hash of the same six fields.
    let cb = Callback::from_value(base()).unwrap();
    assert_eq!(cb.dedup_key(), "org#app_1/96c56aa4cd0712010d15370175b88c5e");
    assert_eq!(
        dedup_hash(cb.dedup_key()),
        "96c56aa4cd0712010d15370175b88c5e"
    );
    // A long callId is cut at a character boundary; the hash still
    // covers all of it.
    let long = "é".repeat(40);
    let a = key(&long, "b");
    let b = key(&format!("{long}x"), "b");
    assert!(a.starts_with(&"é".repeat(32)) && a.len() <= 64 + 33);
    assert_ne!(a, b);
}

#[test]
fn a_body_parses_as_its_json_does_where_the_narrow_parse_cannot_go() {
    let parse = |b: &str| Callback::parse(b.as_bytes());
    let ok = r#"{"callId":"c","security":"s","timestamp":1"#;
    // A key given twice: the last one counts, as in a `Value`.
    let twice =
        format!(r#"{ok},"to":"x","to":"y","payload":{{"operation":"add","operation":"ban"}}}}"#);
    let cb = parse(&twice).unwrap();
    assert_eq!(
        (cb.to.as_deref(), cb.operation.as_deref()),
        (Some("y"), Some("ban"))
    );
    // What is stored is the body as received, whichever way it parsed.
    assert_eq!(&*cb.text(), twice);
    let once = format!(r#"{ok} , "to" : "y"}}"#);
    assert_eq!(&*parse(&once).unwrap().text(), once);
    // An array has no fields, even in the order a struct would read them.
    assert_eq!(parse(r#"["c","s",1]"#).unwrap_err(), ParseError::NotObject);
    // Neither has an array payload an operation, nor a string one.
    let cb = parse(&format!(r#"{ok},"payload":["ban"]}}"#)).unwrap();
    assert_eq!(cb.operation, None);
    let cb = parse(&format!(r#"{ok},"payload":"ban"}}"#)).unwrap();
    assert_eq!(cb.operation, None);
    // Inside the payload too, the last `operation` counts, and only
    // the payload's own.
    let cb = parse(&format!(
            r#"{ok},"payload":{{"operation":"add","x":{{"operation":"no"}},"operation":"ban","y":[{{"operation":"no"}}]}}}}"#
        ))
        .unwrap();
    assert_eq!(cb.operation.as_deref(), Some("ban"));
    assert_eq!(
        cb.operation.as_deref(),
        cb.raw()["payload"]["operation"].as_str()
    );
    // null is a value: a null callId is missing, a null `to` is absent.
    assert_eq!(
        parse(r#"{"callId":null}"#).unwrap_err(),
        ParseError::Missing("callId")
    );
    let cb = parse(&format!(r#" {ok},"to":null,"x":[1,{{"y":2}}]}}"#)).unwrap();
    assert_eq!(cb.to, None);
    // The whole body is there when asked for.
    assert_eq!(cb.raw()["x"][1]["y"], json!(2));
    assert_eq!(parse("{").unwrap_err(), ParseError::Malformed);
    assert_eq!(Callback::parse(b"\xff").unwrap_err(), ParseError::Malformed);
}

#[test]
fn timestamp_forms() {
    let mut v = base();
    v["timestamp"] = json!("1642648046912");
    let cb = Callback::from_value(v).unwrap();
    assert_eq!(cb.timestamp, 1642648046912);
    for bad in [
        json!(-1),
        json!(1.5),
        json!("12a"),
        json!(""),
        json!(true),
        json!({}),
    ] {
        let mut v = base();
        v["timestamp"] = bad.clone();
        assert_eq!(
            Callback::from_value(v).unwrap_err(),
            ParseError::BadTimestamp,
            "{bad}"
        );
    }
}

#[test]
fn what_verification_needs_is_required() {
    for key in ["callId", "security", "timestamp"] {
        let mut v = base();
        v.as_object_mut().unwrap().remove(key);
        assert!(
            matches!(Callback::from_value(v).unwrap_err(), ParseError::Missing(_)),
            "{key}"
        );
    }
    assert_eq!(Callback::parse(b"{").unwrap_err(), ParseError::Malformed);
    assert_eq!(Callback::parse(b"[1]").unwrap_err(), ParseError::NotObject);
    let mut v = base();
    v["callId"] = json!(5);
    assert_eq!(
        Callback::from_value(v).unwrap_err(),
        ParseError::NotString("callId")
    );
}

#[test]
fn other_families_parse_as_generic_events() {
    let msg = json!({"callId": "org#app_y", "security": "s", "timestamp": 5, "chat_type": "groupchat",
                         "payload": {"bodies": [{"type": "txt", "msg": "hi"}]}, "eventType": "chat"});
    let cb = Callback::from_value(msg).unwrap();
    assert_eq!(cb.event, "groupchat");
    assert_eq!(field(&cb, "payload.bodies.0.msg").as_deref(), Some("hi"));
    assert_eq!(
        field(&cb, "payload.bodies.0").as_deref(),
        Some(r#"{"type":"txt","msg":"hi"}"#)
    );
}

/// Both parses, the narrow one of the request path and the one from a
/// `Value`, of one body.
fn both(body: Value) -> [Callback; 2] {
    [
        Callback::parse(body.to_string().as_bytes()).unwrap(),
        Callback::from_value(body).unwrap(),
    ]
}

#[test]
fn status_callbacks_are_user_events_about_their_user() {
    // Easemob's documented login callback (a status callback: no
    // chat_type, a status and a reason).
    for (reason, status) in [
        ("login", "online"),
        ("logout", "offline"),
        ("replaced", "offline"),
    ] {
        let body = json!({"callId": "org#app_1542880087223", "reason": reason, "security": "s",
                              "os": "ios", "ip": "123.120.154.188:1234", "host": "msync@ebs-ali-beijing-msync40",
                              "appkey": "org#app", "user": "org#app_alice/ios_a2b6e4a1-85ef", "version": "3.4.3",
                              "timestamp": 1542880087223u64, "status": status});
        for cb in both(body) {
            assert_eq!(cb.event, format!("user:{reason}"));
            assert_eq!(cb.from_user, "alice");
            assert_eq!(field(&cb, "from").as_deref(), Some("alice"));
            assert_eq!(field(&cb, "status").as_deref(), Some(status));
        }
    }
    // A user written with the domain, and without a resource.
    let body = json!({"callId": "org#app_1", "security": "s", "timestamp": 1, "reason": "logout",
                          "status": "offline", "user": "org#app_bob@easemob.com", "appkey": "org#app"});
    for cb in both(body) {
        assert_eq!(
            (cb.event.as_str(), cb.from_user.as_str()),
            ("user:logout", "bob")
        );
    }
}

#[test]
fn group_op_events_are_named_by_type_and_operation() {
    // Easemob's documented group event of the newer form.
    let body = json!({"callId": "org#app_0679c3e3-8900-0cca0f24198e", "security": "4249dff0f1",
                          "payload": {"type": "INFO", "info": {"title": "测试01"}}, "appkey": "org#app",
                          "id": "262246968131585", "type": "GROUP", "event": "group_op_event",
                          "operation": "UPDATE", "operator": "org#app_tst", "timestamp": 1729497138792u64});
    for cb in both(body) {
        assert_eq!(cb.event, "group:update");
        assert_eq!(cb.operation.as_deref(), Some("update"));
        assert_eq!(cb.from_user, "tst");
        assert_eq!(field(&cb, "payload.info.title").as_deref(), Some("测试01"));
    }
    let leave = json!({"callId": "org#app_2", "security": "s", "timestamp": 1, "type": "CHATROOM",
                           "event": "group_op_event", "operation": "LEAVE", "operator": "carol"});
    for cb in both(leave) {
        assert_eq!(
            (cb.event.as_str(), cb.from_user.as_str()),
            ("chatroom:leave", "carol")
        );
    }
    // Without its type or operation it is what its `event` says.
    let bare =
        json!({"callId": "org#app_3", "security": "s", "timestamp": 1, "event": "group_op_event"});
    for cb in both(bare) {
        assert_eq!(cb.event, "group_op_event");
    }
}

#[test]
fn signing_appkey_falls_back_to_call_id() {
    let mut v = base();
    v.as_object_mut().unwrap().remove("appkey");
    assert_eq!(Callback::from_value(v).unwrap().signing_appkey(), "org#app");
}
