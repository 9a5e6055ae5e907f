//! Property tests: arbitrary input to parsing, verification, rule
//! compilation and rendering never panics. `PROPTEST_CASES=100000 cargo test
//! --test it props` runs a longer campaign.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use easehook::callback::{Callback, ParseError};
use easehook::config::Secrets;
use easehook::moderation::message::Message;
use easehook::rules::matcher::Matcher;
use easehook::template::{Data, Escape, Reads, Templates};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        "[0-9]{1,25}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("callId".to_string()),
                    Just("security".to_string()),
                    Just("timestamp".to_string()),
                    Just("payload".to_string()),
                    Just("operation".to_string()),
                    Just("chat_type".to_string()),
                    Just("from".to_string()),
                    Just("to".to_string()),
                    Just("appkey".to_string()),
                    Just("eventType".to_string()),
                    Just("msg_id".to_string()),
                    Just("host".to_string()),
                    Just("event".to_string()),
                    ".{0,8}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects that pass the required fields, with any of the optional ones
/// (and `payload` shaped as an object with an `operation`, or anything else)
/// taking any value, so that a parse goes as far as it can.
fn callback_like() -> impl Strategy<Value = Value> {
    let optional = prop::collection::hash_map(
        prop_oneof![
            Just("chat_type"),
            Just("eventType"),
            Just("appkey"),
            Just("host"),
            Just("from"),
            Just("to"),
            Just("msg_id"),
            Just("event"),
        ],
        json_value(),
        0..6,
    );
    let payload = prop_oneof![
        json_value().prop_map(|op| serde_json::json!({"operation": op, "x": 1})),
        prop::collection::vec(json_value(), 0..3).prop_map(Value::Array),
        json_value(),
    ];
    (optional, prop::option::of(payload)).prop_map(|(optional, payload)| {
        let mut m = serde_json::json!({"callId": "org#app_1", "security": "s", "timestamp": 1});
        for (k, v) in optional {
            m[k] = v;
        }
        if let Some(p) = payload {
            m["payload"] = p;
        }
        m
    })
}

/// Everything a parsed callback says, for comparing two of them.
fn view(cb: &Callback) -> String {
    format!(
        "{:?}",
        (
            (&cb.call_id, &cb.security, cb.timestamp, &cb.timestamp_text),
            (&cb.chat_type, &cb.operation, &cb.event_type, &cb.appkey),
            (&cb.host, &cb.from, &cb.to, &cb.msg_id),
            (&cb.from_user, &cb.to_user, &cb.event, cb.dedup_key()),
            cb.raw(),
        )
    )
}

/// A pre-send message body or payload: the keys moderation reads, with
/// the values that matter to it or anything else.
fn message_object(inner: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("msg"),
                Just("type"),
                Just("subType"),
                Just("ext"),
                Just("bodies"),
                Just("url")
            ],
            prop_oneof![
                Just(Value::from("txt")),
                Just(Value::from("cmd")),
                Just(Value::from("sub_combine")),
                Just(Value::from("加 微 信")),
                Just(serde_json::json!({"k": "v", "n": 1})),
                inner,
            ],
        ),
        0..6,
    )
    .prop_map(|pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// Pre-send requests in both shapes, and payloads that are neither.
fn presend_like() -> impl Strategy<Value = Value> {
    let body = message_object(json_value());
    let payload = prop_oneof![
        message_object(json_value()),
        (
            prop::collection::vec(body, 0..3),
            message_object(json_value())
        )
            .prop_map(|(bodies, mut p)| {
                p["bodies"] = Value::Array(bodies);
                p
            }),
        json_value(),
    ];
    (payload, json_value()).prop_map(|(payload, other)| {
        serde_json::json!({"callId": "org#app_1", "security": "s", "timestamp": 1, "payload": payload, "other": other})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reading_a_message_from_the_body_reads_it_as_from_its_json(v in prop_oneof![presend_like(), json_value()], pretty in any::<bool>()) {
        let body = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
        let read = Message::read(&body).map_err(|e| e.to_string());
        // The body's JSON, not `v`: a float may not come back bit for bit.
        let parsed: Value = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(read, Ok(Message::of(&parsed)));
    }

    #[test]
    fn reading_a_request_in_one_pass_reads_what_two_passes_do(v in prop_oneof![presend_like(), callback_like(), json_value()], pad in "[ \t\r\n]{0,2}", pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
        let body = format!("{pad}{}", text.unwrap());
        let one = Message::read_request(&Arc::from(body.as_str()));
        let two = Message::read(&body)
            .map_err(|_| ParseError::Malformed)
            .and_then(|m| Ok((m, Callback::parse(body.as_bytes())?)));
        match (one, two) {
            (Ok((m1, c1)), Ok((m2, c2))) => {
                prop_assert_eq!(m1, m2);
                prop_assert_eq!(view(&c1), view(&c2));
                prop_assert_eq!(c1.text(), c2.text());
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "one pass {:?} but two {:?}", a.map(|_| ()), b.map(|_| ())),
        }
    }

    #[test]
    fn a_message_body_is_refused_exactly_when_its_json_is(
        at in 0usize..5,
        escape in prop_oneof![
            Just(r"\ud800"), Just(r"\udc00"), Just(r"\ud83d\ude00"), Just(r"\ud83d"), Just(r"\u00e9"),
            Just(r"\n"), Just(r"\x"), Just(r"\uZZZZ"), Just("\u{1}"), Just(r"\"), Just(r#"\""#),
        ],
        cut in prop::option::of(0usize..60),
    ) {
        // The escape in the text, in a field moderation reads, in one
        // nothing reads, in a callback's field, or inside an object where a
        // callback's field is.
        let mut fields: [String; 5] = Default::default();
        fields[at] = escape.to_string();
        let mut body = format!(
            r#"{{"callId":"org#app_1","security":"s","timestamp":1,"payload":{{"type":"txt","msg":"a{}b","ext":{{"k":"{}"}}}},"other":["{}"],"from":"u{}","to":{{"x":"{}"}}}}"#,
            fields[0], fields[1], fields[2], fields[3], fields[4]
        );
        if let Some(c) = cut.filter(|&c| body.is_char_boundary(c)) {
            body.truncate(c);
        }
        let read = Message::read(&body);
        let json = serde_json::from_str::<Value>(&body);
        prop_assert_eq!(read.is_ok(), json.is_ok(), "{}", body);
        let request = Message::read_request(&Arc::from(body.as_str()));
        prop_assert_eq!(request.is_ok(), json.is_ok(), "{}", body);
        if let (Ok(m), Ok(v)) = (read, json) {
            prop_assert_eq!(m, Message::of(&v));
        }
    }

    #[test]
    fn parsing_and_verifying_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(cb) = Callback::parse(&body) {
            let _ = easehook::verify::check(&cb, &Secrets::from_pairs([("*", "s")]), Some(std::time::Duration::from_secs(1)), u64::MAX);
        }
    }

    #[test]
    fn parsing_a_body_reads_it_as_parsing_its_json_does(v in prop_oneof![json_value(), callback_like()], pad in "[ \t\r\n]{0,2}", pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
        let body = format!("{pad}{}", text.unwrap());
        let narrow = Callback::parse(body.as_bytes());
        let full = Callback::from_value(serde_json::from_str(&body).unwrap());
        match (narrow, full) {
            (Ok(a), Ok(b)) => prop_assert_eq!(view(&a), view(&b)),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "narrow {:?} but full {:?}", a.is_ok(), b.is_ok()),
        }
    }

    #[test]
    fn parsing_and_verifying_arbitrary_json_never_panics(v in json_value()) {
        if let Ok(cb) = Callback::from_value(v) {
            let _ = easehook::verify::check(&cb, &Secrets::from_pairs([("*", "s")]), Some(std::time::Duration::from_secs(1)), 0);
            let _ = easehook::metrics::event_label(Some(&cb));
            let ctx = easehook::template::context(&cb, chrono::Utc::now(), Reads::All);
            prop_assert!(ctx.is_object());
        }
    }

    #[test]
    fn compiling_arbitrary_matchers_never_panics(yaml in ".{0,60}", value in ".{0,20}") {
        if let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(&yaml) {
            for event in [false, true] {
                if let Ok(m) = Matcher::compile(&v, event) {
                    let _ = m.matches(Some(&value));
                    let _ = m.matches(None);
                }
            }
        }
    }

    #[test]
    fn rendering_arbitrary_templates_and_data_never_panics(src in ".{0,80}", data in json_value()) {
        let mut t = Templates::new(chrono_tz::Tz::UTC);
        let cb = Callback::from_value(data.clone()).ok();
        let data = Data::from_context(easehook::template::TemplateData::from(data));
        let delivery = cb.as_ref().map(|cb| Data::new(cb, chrono::Utc::now(), Reads::All, "r", "a"));
        for escape in [Escape::Plain, Escape::Html, Escape::Url, Escape::Slack] {
            if let Ok(r) = t.register_inline("p#x", escape, &src) {
                let _ = t.render(&r, &data);
                if let Some(d) = &delivery {
                    let _ = t.render(&r, d);
                }
            }
        }
    }

    #[test]
    fn rendering_helpers_with_arbitrary_arguments_never_panics(a in json_value(), fmt in ".{0,12}", tz in ".{0,12}", n in any::<i64>()) {
        let mut t = Templates::new(chrono_tz::Tz::UTC);
        let ctx = Data::from_context(easehook::template::TemplateData::from(serde_json::json!({"a": a, "fmt": fmt, "tz": tz, "n": n})));
        for src in [
            "{{datetime a}}", "{{datetime n format=fmt tz=tz}}", "{{json a}}", "{{default a n}}",
            "{{upper a}}", "{{lower a}}", "{{truncate a n}}", "{{truncate fmt 3}}",
        ] {
            let r = t.register_inline("h#x", Escape::Plain, src).unwrap();
            let _ = t.render(&r, &ctx);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whole rule files, from a grammar of plausible and broken pieces.
    #[test]
    fn compiling_arbitrary_rule_files_never_panics(
        pieces in prop::collection::vec(prop_oneof![
            Just("actions:\n".to_string()),
            Just("rules:\n".to_string()),
            Just("  a: {type: log, message: '{{event}}'}\n".to_string()),
            Just("  h: {type: http, url: 'http://x/{{from}}', json: [1, '{{to}}']}\n".to_string()),
            Just("  s: {type: slack, webhook_url: 'http://x', text: '{{#if a}}', blocks: 3}\n".to_string()),
            Just("  e: {type: email, to: '{{to}}', subject: s, html: {template: x.hbs}}\n".to_string()),
            Just("  - {name: r, when: {event: roster}, actions: [a]}\n".to_string()),
            Just("  - {name: q, when: {from: {regex: '('}}, unless: {x: {not: {exists: 1}}}, actions: [h, zz]}\n".to_string()),
            Just("  - name: p\n    when: {payload.a.b: [1, true, null]}\n    stop: yes\n".to_string()),
            ".{0,30}",
        ], 0..10)
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(dir.path().join("rules/r.yaml"), pieces.concat()).unwrap();
        let cfg = dir.path().join("easehook.yaml");
        std::fs::write(&cfg, "secrets: {\"*\": [s3cr3t-value]}\n").unwrap();
        let env: HashMap<String, String> = HashMap::new();
        let settings = easehook::config::load(&cfg, &env).unwrap();
        if let Ok(set) = easehook::rules::RuleSet::load(&settings, &env) {
            for cb in easehook::rules::samples::all() {
                let _ = set.evaluate(&cb);
            }
        }
    }
}
