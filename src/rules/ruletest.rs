//! Rule tests (SPEC §14): a rule file may hold `tests:`, each an event and
//! what must follow from it — the rules that match, in order; the actions
//! delivered; fields of the rendered messages. They run wherever a rule
//! set is compiled (`check`, start-up, reload), and a failing test is a
//! problem like any other: a reload that breaks one is refused.
//!
//! ```yaml
//! tests:
//!   - name: a ban reaches the product team
//!     event: { file: ban.json }               # relative to the rule file, or inline YAML
//!     rules: [ban-to-product]
//!     actions: [product-email, product-slack]
//!     expect:
//!       product-email.subject: { contains: "blocked" }
//!       audit.json.user: alice                # a plain value must be equal
//! ```

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::Mapping;

use super::RuleSet;
use crate::actions::Message;
use crate::callback::{Callback, lookup_path, value_text};
use crate::diag::Diagnostics;

/// A test as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    /// Shown with a failure.
    #[serde(default)]
    pub name: Option<String>,
    /// The callback: `{file: PATH}` (relative to the rule file's folder),
    /// or the callback's JSON written as YAML. `security`, `timestamp` and
    /// `callId` may be left out.
    #[schemars(with = "serde_json::Value")]
    pub event: serde_yaml::Value,
    /// The rules that must match, in order (all of them).
    #[serde(default)]
    rules: Option<Vec<String>>,
    /// The actions that must be delivered for the event, in order (all of
    /// them; a digest's or threshold's actions are not delivered per event).
    #[serde(default)]
    actions: Option<Vec<String>>,
    /// `ACTION.FIELD` → what the rendered message's field must hold: a
    /// plain value (equal) or `{contains: TEXT}` / `{equals: VALUE}`.
    /// Fields: email `subject`, `text`, `html`, `to`, `cc`; Slack and the
    /// team chats their JSON body (`text`, `blocks.0.text.text`, …); HTTP
    /// `url`, `method`, `body`, and `json.PATH` into a JSON body; log
    /// `message`; Easemob `path` and `body.PATH`.
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    expect: Mapping,
    /// A moderation test: the event is a pre-send request, sent through
    /// the `moderation:` rules, and this is the verdict it must get
    /// (`pass`, `reject` or `rewrite`).
    #[serde(default)]
    pub verdict: Option<String>,
    /// A moderation test: the rule that must decide.
    #[serde(default)]
    pub rule: Option<String>,
    /// A moderation test: the `code` the answer must carry.
    #[serde(default)]
    pub code: Option<String>,
    /// A moderation test: the rewritten text the answer must carry.
    #[serde(default)]
    pub text: Option<String>,
}

/// A test, its file and its place in the file.
#[derive(Debug)]
pub struct Pending {
    pub file: String,
    pub index: usize,
    pub raw: serde_yaml::Value,
}

/// Run each test with `run`, which says what is wrong with its outcome;
/// each problem, and each test not of a test's shape, goes into `diags`.
pub fn run_each(
    tests: &[Pending],
    diags: &mut Diagnostics,
    mut run: impl FnMut(&str, &RawTest) -> Vec<String>,
) {
    for t in tests {
        let raw: RawTest = match serde_path_to_error::deserialize(t.raw.clone()) {
            Ok(r) => r,
            Err(e) => {
                let path = e.path().to_string();
                let loc = if path == "." {
                    format!("tests[{}]", t.index)
                } else {
                    format!("tests[{}]: {path}", t.index)
                };
                diags.push(
                    &t.file,
                    loc,
                    crate::config::strip_location(&e.into_inner().to_string()),
                );
                continue;
            }
        };
        let label = match &raw.name {
            Some(n) => format!("tests[{}] ({n})", t.index),
            None => format!("tests[{}]", t.index),
        };
        for problem in run(&t.file, &raw) {
            diags.push(&t.file, &label, problem);
        }
    }
}

impl RuleSet {
    /// Run every test against this (otherwise valid) set; each failure is a
    /// problem in `diags`.
    pub(super) fn run_tests(&self, tests: &[Pending], diags: &mut Diagnostics) {
        run_each(tests, diags, |file, raw| self.run_test(file, raw));
    }

    /// What is wrong with one test's outcome (nothing: it passes).
    fn run_test(&self, file: &str, t: &RawTest) -> Vec<String> {
        for (key, given) in [
            ("rule", t.rule.is_some()),
            ("code", t.code.is_some()),
            ("text", t.text.is_some()),
        ] {
            if given {
                return vec![format!(
                    "`{key}` checks a moderation verdict: give `verdict:` too"
                )];
            }
        }
        let cb = match event(file, &t.event) {
            Ok(cb) => cb,
            Err(e) => return vec![e],
        };
        let evaluation = self.evaluate(&cb);
        let mut problems = Vec::new();
        if let Some(want) = &t.rules {
            let got: Vec<&str> = evaluation
                .rules
                .iter()
                .map(|&i| self.rules[i].name.as_str())
                .collect();
            compare("rule", want, &got, &mut problems);
        }
        if let Some(want) = &t.actions {
            let got: Vec<&str> = evaluation
                .deliveries
                .iter()
                .map(|p| self.actions[p.action].name.as_str())
                .collect();
            compare("action", want, &got, &mut problems);
        }
        let received = chrono::Utc::now();
        for (key, matcher) in &t.expect {
            let Some(key) = key.as_str() else {
                problems.push("expect: keys are ACTION.FIELD".into());
                continue;
            };
            let Some((action_name, field)) = key.split_once('.') else {
                problems.push(format!("expect: {key:?} is not ACTION.FIELD"));
                continue;
            };
            let Some(planned) = evaluation
                .deliveries
                .iter()
                .find(|p| self.actions[p.action].name == action_name)
            else {
                problems.push(format!(
                    "expect: {key}: action {action_name} is not delivered for this event"
                ));
                continue;
            };
            let action = &self.actions[planned.action];
            let rule = &self.rules[planned.rule];
            let data =
                crate::template::Data::new(&cb, received, action.reads, &rule.name, &action.name);
            let msg = match action.render(&self.templates, &data) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("expect: {key}: cannot render: {e}"));
                    continue;
                }
            };
            let fields = fields(&msg);
            let value = lookup_path(&fields, field.split('.')).map(value_text);
            if let Err(e) = check(value.as_deref(), matcher) {
                problems.push(format!("{key}: {e}"));
            }
        }
        problems
    }
}

/// The test's callback, from its file or written inline.
fn event(file: &str, v: &serde_yaml::Value) -> Result<Callback, String> {
    let raw = event_json(file, v)?;
    // A test needs no signature.
    crate::callback::unsigned(raw).map_err(|e| format!("event: {e}"))
}

/// A test's `event:` as JSON: `{file: PATH}` relative to the rule file,
/// or the value written inline.
pub fn event_json(file: &str, v: &serde_yaml::Value) -> Result<Value, String> {
    let raw: Value = match v.get("file") {
        Some(serde_yaml::Value::String(path)) if v.as_mapping().is_some_and(|m| m.len() == 1) => {
            let dir = Path::new(file).parent().unwrap_or(Path::new("."));
            let full = dir.join(path);
            let text = std::fs::read_to_string(&full)
                .map_err(|e| format!("event: cannot read {}: {e}", full.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("event: {} is not JSON: {e}", full.display()))?
        }
        _ => serde_json::to_value(v).map_err(|e| format!("event: {e}"))?,
    };
    Ok(raw)
}

/// Compare the names that must follow with those that did, in order.
fn compare(what: &str, want: &[String], got: &[&str], problems: &mut Vec<String>) {
    for (i, w) in want.iter().enumerate() {
        match got.get(i) {
            Some(g) if g == w => {}
            Some(g) => {
                problems.push(format!("expected {what} {w}, got {g}"));
                return;
            }
            None => {
                problems.push(format!("expected {what} {w}, got none"));
                return;
            }
        }
    }
    if let Some(extra) = got.get(want.len()) {
        problems.push(format!("expected no more {what}s, got {extra}"));
    }
}

/// Whether a field's value satisfies a matcher.
fn check(value: Option<&str>, matcher: &serde_yaml::Value) -> Result<(), String> {
    let shown = |v: Option<&str>| match v {
        Some(v) => format!("{v:?}"),
        None => "no such field".to_string(),
    };
    let scalar = |v: &serde_yaml::Value| -> Option<String> {
        match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            serde_yaml::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    if let Some(m) = matcher.as_mapping()
        && m.len() == 1
    {
        let (k, v) = m.iter().next().expect("one entry");
        let Some(text) = scalar(v) else {
            return Err("a matcher's value is a string, number or boolean".into());
        };
        return match k.as_str() {
            Some("contains") if value.is_some_and(|got| got.contains(&text)) => Ok(()),
            Some("contains") => Err(format!(
                "expected it to contain {text:?}, got {}",
                shown(value)
            )),
            Some("equals") if value == Some(text.as_str()) => Ok(()),
            Some("equals") => Err(format!("expected {text:?}, got {}", shown(value))),
            _ => Err("a matcher is a plain value, {contains: …} or {equals: …}".into()),
        };
    }
    match scalar(matcher) {
        Some(text) if value == Some(text.as_str()) => Ok(()),
        Some(text) => Err(format!("expected {text:?}, got {}", shown(value))),
        None => Err("a matcher is a plain value, {contains: …} or {equals: …}".into()),
    }
}

/// A rendered message's fields, as `expect` names them.
fn fields(msg: &Message) -> Value {
    match msg {
        Message::Email(m) => json!({
            "subject": m.subject, "text": m.text, "html": m.html, "to": m.to.join(", "),
            "cc": m.cc.join(", "), "from": m.from,
        }),
        Message::Slack(m) => m.body.clone(),
        Message::Chat(m) => Value::Object(m.body.clone()),
        Message::Http(m) => {
            let parsed = m
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok());
            json!({"url": m.url, "method": m.method, "body": m.body, "json": parsed})
        }
        Message::Log(m) => json!({"message": m.message}),
        Message::Easemob(m) => json!({"path": m.path, "body": m.body}),
    }
}
