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
    let call_id = format!("{appkey}_{msg_id}");
    match (family, op) {
        // A status callback, as Easemob documents it (SPEC §12).
        ("user", Some(reason)) => {
            let status = if reason == "login" {
                "online"
            } else {
                "offline"
            };
            return json!({"callId": call_id, "security": "unsigned", "reason": reason,
                "os": "android", "ip": "203.0.113.7", "host": "msync@ebs-ali-beijing-msync43",
                "appkey": appkey, "user": format!("{appkey}_{from}/android_device"),
                "version": "4.0.0", "timestamp": timestamp, "status": status});
        }
        // A group or chat room event of the newer form.
        ("group" | "chatroom", Some(op)) => {
            return json!({"callId": call_id, "security": "unsigned",
                "payload": {"type": op.to_uppercase(), "info": {}}, "appkey": appkey,
                "id": "262246968131585", "type": family.to_uppercase(), "event": "group_op_event",
                "operation": op.to_uppercase(), "operator": format!("{appkey}_{from}"),
                "timestamp": timestamp});
        }
        _ => {}
    }
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
        "callId": call_id,
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
    out.push(sample("user:login"));
    out.push(sample("group:join"));
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
