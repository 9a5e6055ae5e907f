//! Sample events that `check` renders every template against: one per roster
//! operation, shaped like Easemob's documented callbacks, and one of each
//! other common family. The same builder makes `easehook simulate`'s events.

use serde_json::{Value, json};

use crate::callback::{Callback, ROSTER_OPERATIONS};

/// A callback body for `event` (`roster:ban`, `chat`, …), unsigned.
pub fn body(
    event: &str,
    appkey: &str,
    from: &str,
    to: &str,
    msg_id: &str,
    timestamp: u64,
) -> Value {
    let (family, op) = match event.split_once(':') {
        Some((f, o)) => (f, Some(o)),
        None => (event, None),
    };
    let mut payload = json!({});
    if let Some(op) = op {
        payload["operation"] = json!(op);
        match op {
            "add" => payload["reason"] = json!("hello, let's be friends"),
            "remove" | "accept" | "remote_accept" | "decline" | "remote_decline" => {
                payload["roster_ver"] = json!("DD6E14FE5EE5A9ABC52CA86C5DE1601CF729BFD6")
            }
            "ban" | "allow" => payload["status"] = json!({"error_code": "ok"}),
            _ => {}
        }
    } else if matches!(family, "chat" | "groupchat") {
        payload = json!({"bodies": [{"type": "txt", "msg": "hello"}], "ext": {}});
    }
    json!({
        "chat_type": family,
        "callId": format!("{appkey}_{msg_id}"),
        "security": "unsigned",
        "payload": payload,
        "host": "msync@ebs-ali-beijing-msync43",
        "appkey": appkey,
        "from": format!("{appkey}_{from}@easemob.com"),
        "to": to,
        "eventType": "chat",
        "msg_id": msg_id,
        "timestamp": timestamp,
    })
}

/// Every sample event.
pub fn all() -> Vec<Callback> {
    let mut out: Vec<Callback> = ROSTER_OPERATIONS
        .iter()
        .map(|op| sample(&format!("roster:{op}")))
        .collect();
    out.push(sample("chat"));
    out.push(sample("groupchat"));
    let mut offline = body(
        "roster:ban",
        "easemob-demo#sample",
        "alice",
        "bob",
        "966725184268539961",
        1_642_648_046_912,
    );
    offline["eventType"] = json!("chat_offline");
    out.push(Callback::from_value(offline).expect("sample is valid"));
    let login = json!({"callId": "easemob-demo#sample_966725184268539962", "security": "unsigned", "reason": "login",
        "os": "android", "ip": "203.0.113.7", "host": "msync@ebs-ali-beijing-msync43", "appkey": "easemob-demo#sample",
        "user": "easemob-demo#sample_alice/android_device", "version": "4.0.0", "timestamp": 1_642_648_046_912u64,
        "status": "online"});
    out.push(Callback::from_value(login).expect("sample is valid"));
    out
}

fn sample(event: &str) -> Callback {
    Callback::from_value(body(
        event,
        "easemob-demo#sample",
        "alice",
        "bob",
        "966725184268539960",
        1_642_648_046_912,
    ))
    .expect("sample is valid")
}
