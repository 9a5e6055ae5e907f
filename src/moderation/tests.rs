use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::diag::Diagnostics;
use crate::snapshot::Snapshot;

/// The word lists and rules of SPEC §16's example.
const PRESEND: &str = r#"
presend:
  word_lists:
    contact: { words: ["加微信", "vx"] }
    abuse: { words: ["傻逼", "fuck"] }
    adult: { words: ["色情"], allow: ["白色情人节"] }
"#;

const RULES: &str = r#"
moderation:
  - name: staff-pass
    when: { from: "staff_*" }
    verdict: pass
  - name: no-contact-ads
    when: { chat_type: [chat, groupchat, group], message.type: txt }
    contains: contact
    verdict: reject
    code: "HX:10001"
  - name: mask-abuse
    contains: [abuse, adult]
    verdict: rewrite
    mask: "*"
  - name: tag-vip
    when: { message.ext.vip: "1" }
    verdict: rewrite
    ext: { reviewed: "1" }
  - name: phone
    when: { message.text: { regex: '.*1[3-9][0-9]{9}.*' } }
    verdict: reject
    code: PHONE
  - name: flood
    threshold: { count: 3, within: 10s, by: [from] }
    verdict: reject
    code: TOO_FAST
"#;

fn load(config: &str, rules: &str) -> Result<Arc<Snapshot>, Diagnostics> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("rules/moderation.yaml"), rules).unwrap();
    let path = dir.path().join("easehook.yaml");
    std::fs::write(&path, format!("secrets: {{\"*\": [\"${{S}}\"]}}\n{config}")).unwrap();
    let env: HashMap<String, String> = [("S".to_string(), "0123456789abcdef".to_string())].into();
    crate::snapshot::load(&path, &env)
}

fn example() -> Arc<Snapshot> {
    load(PRESEND, RULES).unwrap_or_else(|d| panic!("{d}"))
}

fn request(from: &str, payload: serde_json::Value) -> Callback {
    crate::callback::unsigned(
        json!({"callId": "org#app_1", "chat_type": "chat", "from": from,
        "to": "bob", "msg_id": "1", "payload": payload}),
    )
    .unwrap()
}

fn txt(from: &str, text: &str) -> Callback {
    request(from, json!({"msg": text, "type": "txt"}))
}

fn decide(s: &Snapshot, cb: &Callback) -> Decision {
    s.moderation.evaluate(cb, 1_000_000, Counting::DryRun)
}

#[test]
fn the_example_rules_decide_as_the_spec_says() {
    let s = example();
    let d = decide(&s, &txt("alice", "加 微 信 abc123"));
    assert_eq!(d.verdict, Verdict::Reject);
    assert_eq!(d.rule.as_deref(), Some("no-contact-ads"));
    assert_eq!(d.answer, r#"{"valid":false,"code":"HX:10001"}"#);
    assert_eq!(d.hits, ["加微信"]);
    assert_eq!(d.marks, [[0, 5]]);

    let d = decide(&s, &txt("staff_li", "加微信"));
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Pass, Some("staff-pass"))
    );
    assert_eq!(d.answer, PASS_ANSWER);

    let d = decide(&s, &txt("alice", "你个傻 逼, ＦＵＣＫ"));
    assert_eq!(d.verdict, Verdict::Rewrite);
    assert_eq!(d.rewritten.as_deref(), Some("你个***, ****"));
    assert_eq!(
        d.answer,
        json!({"valid": true, "payload": {"msg": "你个***, ****", "type": "txt"}}).to_string()
    );

    let d = decide(&s, &txt("alice", "call 13812345678 now"));
    assert_eq!(
        (d.verdict, d.code.as_deref()),
        (Verdict::Reject, Some("PHONE"))
    );

    let d = decide(&s, &txt("alice", "白色情人节快乐"));
    assert_eq!((d.verdict, d.rule), (Verdict::Pass, None));
}

#[test]
fn rewrites_accumulate_and_keep_the_shape() {
    let s = example();
    let cb = request(
        "alice",
        json!({"bodies": [{"type": "txt", "msg": "fuck"}], "ext": {"vip": "1"}, "from": "alice", "to": "bob"}),
    );
    let d = decide(&s, &cb);
    assert_eq!(d.verdict, Verdict::Rewrite);
    assert_eq!(d.rule.as_deref(), Some("mask-abuse,tag-vip"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&d.answer).unwrap(),
        json!({"valid": true, "payload": {"bodies": [{"type": "txt", "msg": "****"}],
            "ext": {"vip": "1", "reviewed": "1"}}})
    );
}

#[test]
fn cmd_is_never_rewritten_and_messages_without_text_never_hit() {
    let s = example();
    let cmd = request(
        "alice",
        json!({"type": "cmd", "action": "fuck", "ext": {"vip": "1"}}),
    );
    assert_eq!(decide(&s, &cmd).answer, PASS_ANSWER);
    let img = request(
        "alice",
        json!({"type": "img", "url": "u", "ext": {"vip": "1"}}),
    );
    let d = decide(&s, &img);
    assert_eq!(d.rule.as_deref(), Some("tag-vip"));
    for weird in [json!("fuck"), json!([1, 2]), json!({"bodies": []})] {
        assert_eq!(decide(&s, &request("alice", weird)).answer, PASS_ANSWER);
    }
}

#[test]
fn a_rewrite_too_long_for_an_answer_is_a_reject() {
    let s = load(
        PRESEND,
        "moderation:\n  - {name: m, contains: abuse, verdict: rewrite, code: LONG}\n",
    )
    .unwrap();
    let text = format!("fuck {}", "x".repeat(990));
    let d = decide(&s, &txt("alice", &text));
    assert!(d.too_long);
    assert_eq!(d.answer, r#"{"valid":false,"code":"LONG"}"#);
}

#[test]
fn a_threshold_fires_after_count_and_dry_runs_count_nothing() {
    let s = example();
    let m = &s.moderation;
    for i in 0..3 {
        let d = m.evaluate(&txt("spammer", "hi"), 1000 + i, Counting::Count);
        assert_eq!(d.verdict, Verdict::Pass, "message {i}");
    }
    let d = m.evaluate(&txt("spammer", "hi"), 1004, Counting::Count);
    assert_eq!(
        (d.verdict, d.code.as_deref()),
        (Verdict::Reject, Some("TOO_FAST"))
    );
    assert_eq!(
        m.evaluate(&txt("other", "hi"), 1004, Counting::Count)
            .verdict,
        Verdict::Pass
    );
    // A reload keeps the counts of the rule.
    let dir_rules = RULES;
    let again = load(PRESEND, dir_rules).unwrap();
    let mut diags = Diagnostics::new();
    let reloaded = Moderation::load(&again.settings, &again.rules, Some(m), &mut diags);
    assert!(diags.is_empty());
    let d = reloaded.evaluate(&txt("spammer", "hi"), 1005, Counting::Count);
    assert_eq!(d.verdict, Verdict::Reject);
    assert_eq!(decide(&s, &txt("spammer", "hi")).verdict, Verdict::Pass);
}

#[test]
fn bad_rules_and_lists_say_where() {
    for (config, rules, needle) in [
        (
            PRESEND,
            "moderation:\n  - {name: a, contains: nope, verdict: reject}\n",
            "unknown word list \"nope\"",
        ),
        (
            PRESEND,
            "moderation:\n  - {name: a, when: {message.type: img}, contains: abuse, verdict: reject}\n",
            "can never hit",
        ),
        (
            PRESEND,
            "moderation:\n  - {name: a, when: {message.text: {regex: '('}}, verdict: reject}\n",
            "invalid regex",
        ),
        (
            PRESEND,
            "moderation:\n  - {name: a, when: {message.nope: x}, verdict: reject}\n",
            "not a message field",
        ),
        (
            PRESEND,
            "moderation:\n  - {name: a, verdict: rewrite}\n",
            "a rewrite changes something",
        ),
        (
            PRESEND,
            "moderation:\n  - {name: a, verdict: reject, mask: x}\n",
            "only a rewrite",
        ),
        (
            PRESEND,
            "moderation:\n  - {name: a, verdict: block}\n",
            "unknown variant",
        ),
        (
            PRESEND,
            "moderation:\n  - {name: a, verdict: pass}\n  - {name: a, verdict: pass}\n",
            "already defined",
        ),
        (
            "presend:\n  word_lists:\n    e: { words: [' ', '--'] }\n",
            "",
            "has no words",
        ),
        (
            "presend:\n  word_lists:\n    f: { file: missing.txt }\n",
            "",
            "presend.word_lists.f.file",
        ),
        (
            "",
            "moderation:\n  - {name: a, verdict: pass}\n",
            "need a `presend:` section",
        ),
        ("presend:\n  budget: 0s\n", "", "presend.budget"),
    ] {
        let err = load(config, rules).expect_err(needle).to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn moderation_tests_in_rule_files_run_at_load() {
    let tests = r#"
tests:
  - name: contact ads are blocked
    event: { from: alice, chat_type: chat, payload: { msg: "加微信", type: txt } }
    verdict: reject
    rule: no-contact-ads
    code: "HX:10001"
  - name: abuse is masked
    event: { from: alice, chat_type: chat, payload: { msg: "fuck", type: txt } }
    verdict: rewrite
    text: "****"
"#;
    load(PRESEND, &format!("{RULES}{tests}")).unwrap_or_else(|d| panic!("{d}"));
    let failing = tests.replace("text: \"****\"", "text: \"fuck\"");
    let err = load(PRESEND, &format!("{RULES}{failing}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tests[1] (abuse is masked): expected text \"fuck\", got \"****\""),
        "{err}"
    );
}

#[test]
fn a_panic_free_evaluation_of_hostile_text() {
    let s = example();
    let long = format!("{}加微信", "好".repeat(100_000));
    assert_eq!(decide(&s, &txt("alice", &long)).verdict, Verdict::Reject);
    for t in ["(a|b)*c", "\u{fffd}\u{0}", "", "a.*b"] {
        decide(&s, &txt("alice", t));
    }
}
