//! Conditions: a field of the callback and a matcher for its value.
//!
//! Matchers: a string matches exactly, or as a glob when it contains `*`, `?`
//! or `[`; a list matches when any item matches; `{regex: …}` must match the
//! whole value; `{not: MATCHER}`; `{exists: true|false}`. A missing field
//! matches nothing except `{not: …}` and `{exists: false}`. For the `event`
//! field a plain name without `:` (`roster`) matches the whole family.

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use serde_yaml::Value;

use crate::callback::{Callback, lookup_path, value_text};

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Event,
    Operation,
    ChatType,
    EventType,
    Appkey,
    Host,
    CallId,
    MsgId,
    /// The normalized initiator.
    From,
    /// The normalized receiver.
    To,
    /// A dotted path into the callback JSON.
    Path(Vec<String>),
}

impl Field {
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "event" => Field::Event,
            "operation" => Field::Operation,
            "chat_type" => Field::ChatType,
            "eventType" => Field::EventType,
            "appkey" => Field::Appkey,
            "host" => Field::Host,
            "callId" => Field::CallId,
            "msg_id" => Field::MsgId,
            "from" => Field::From,
            "to" => Field::To,
            path => {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err(format!("{path:?} is not a field name or dotted path"));
                }
                Field::Path(path.split('.').map(str::to_string).collect())
            }
        })
    }

    /// The field's value in a callback, as rules compare it.
    #[inline]
    pub fn get<'a>(&self, cb: &'a Callback) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow::Borrowed;
        match self {
            Field::Event => Some(Borrowed(cb.event.as_str())),
            Field::Operation => cb.operation.as_deref().map(Borrowed),
            Field::ChatType => cb.chat_type.as_deref().map(Borrowed),
            Field::EventType => cb.event_type.as_deref().map(Borrowed),
            Field::Appkey => cb.appkey.as_deref().map(Borrowed),
            Field::Host => cb.host.as_deref().map(Borrowed),
            Field::CallId => Some(Borrowed(cb.call_id.as_str())),
            Field::MsgId => cb.msg_id.as_deref().map(Borrowed),
            // A status or group callback has no `from`; its user is the
            // `from_user` all the same (see `callback::other_family`).
            Field::From => (cb.from.is_some() || !cb.from_user.is_empty())
                .then(|| Borrowed(cb.from_user.as_str())),
            Field::To => cb.to.as_ref().map(|_| Borrowed(cb.to_user.as_str())),
            Field::Path(p) => lookup_path(cb.raw(), p.iter().map(String::as_str)).map(value_text),
        }
    }
}

/// A matcher as written, for the editor schema (`easehook schema rules`):
/// the shapes [`Matcher::compile`] reads.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RawMatcher {
    /// Equal, or a glob when it holds `*`, `?` or `[`; for `event`, a
    /// family (`roster`) or a name (`roster:ban`).
    Text(String),
    /// Equal to the number's text.
    Number(f64),
    /// Equal to `true` or `false`.
    Bool(bool),
    /// Any of these.
    AnyOf(Vec<RawMatcher>),
    /// The whole value matches the regular expression.
    Regex { regex: String },
    /// The matcher does not match (a missing field matches).
    Not { not: Box<RawMatcher> },
    /// The field is there (`true`) or missing (`false`).
    Exists { exists: bool },
}

/// A compiled matcher.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    /// An event family: matches `name` itself and every `name:…`.
    Family(String),
    Glob(GlobMatcher),
    Regex(Regex),
    Any(Vec<Matcher>),
    Not(Box<Matcher>),
    Exists(bool),
}

impl Matcher {
    /// Does the matcher accept this value (`None`: the field is missing)?
    #[inline]
    pub fn matches(&self, value: Option<&str>) -> bool {
        match self {
            Matcher::Exists(want) => value.is_some() == *want,
            Matcher::Not(m) => !m.matches(value),
            Matcher::Any(items) => items.iter().any(|m| m.matches(value)),
            _ => match value {
                None => false,
                Some(v) => match self {
                    Matcher::Exact(s) => v == s,
                    Matcher::Family(f) => v
                        .strip_prefix(f.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':')),
                    Matcher::Glob(g) => g.is_match(v),
                    Matcher::Regex(r) => r.is_match(v),
                    _ => unreachable!("handled above"),
                },
            },
        }
    }

    /// Compile a matcher from YAML. `event` says whether the field is `event`,
    /// where a name without `:` means a family.
    pub fn compile(value: &Value, event: bool) -> Result<Self, String> {
        match value {
            Value::String(s) => Ok(Self::pattern(s, event)?),
            Value::Bool(b) => Ok(Matcher::Exact(b.to_string())),
            Value::Number(n) => Ok(Matcher::Exact(n.to_string())),
            Value::Null => Err(
                "an empty matcher matches nothing; to test absence write {exists: false}".into(),
            ),
            Value::Sequence(items) => {
                if items.is_empty() {
                    return Err("an empty list matches nothing".into());
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(Self::compile(item, event).map_err(|e| format!("item {i}: {e}"))?);
                }
                Ok(Matcher::Any(out))
            }
            Value::Mapping(map) => {
                if map.len() != 1 {
                    return Err(
                        "a matcher mapping has exactly one of `regex`, `not`, `exists`".into(),
                    );
                }
                let (k, v) = map.iter().next().expect("one entry");
                match k.as_str() {
                    Some("regex") => {
                        let src = v.as_str().ok_or("`regex` takes a string")?;
                        // Anchored: the pattern must match the whole value.
                        Regex::new(&format!("^(?:{src})$"))
                            .map(Matcher::Regex)
                            .map_err(|e| {
                                format!("invalid regex {src:?}: {}", first_line(&e.to_string()))
                            })
                    }
                    Some("not") => Ok(Matcher::Not(Box::new(Self::compile(v, event)?))),
                    Some("exists") => match v {
                        Value::Bool(b) => Ok(Matcher::Exists(*b)),
                        _ => Err("`exists` takes true or false".into()),
                    },
                    _ => Err(format!(
                        "unknown matcher {}: use a string, a list, {{regex: …}}, {{not: …}} or {{exists: …}}",
                        serde_yaml::to_string(k).unwrap_or_default().trim()
                    )),
                }
            }
            Value::Tagged(_) => Err("tagged YAML values are not matchers".into()),
        }
    }

    fn pattern(s: &str, event: bool) -> Result<Self, String> {
        if s.contains(['*', '?', '[']) {
            GlobBuilder::new(s)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map(|g| Matcher::Glob(g.compile_matcher()))
                .map_err(|e| format!("invalid glob {s:?}: {}", e.kind()))
        } else if event && !s.contains(':') {
            Ok(Matcher::Family(s.to_string()))
        } else {
            Ok(Matcher::Exact(s.to_string()))
        }
    }

    /// The only values this matcher can accept, when it is made of plain
    /// values: the rule index files a rule under them.
    pub(super) fn plain_values(&self) -> Option<Vec<PlainValue>> {
        match self {
            Matcher::Exact(s) => Some(vec![PlainValue::Exact(s.clone())]),
            Matcher::Family(f) => Some(vec![PlainValue::Family(f.clone())]),
            Matcher::Any(items) => {
                let mut out = Vec::new();
                for i in items {
                    out.extend(i.plain_values()?);
                }
                Some(out)
            }
            _ => None,
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

/// A value a condition requires, for the rule index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PlainValue {
    Exact(String),
    /// An event family (`roster`): matches `roster` and `roster:…`.
    Family(String),
}

/// One `field: matcher` pair.
#[derive(Debug, Clone)]
pub struct Condition {
    pub field: Field,
    pub matcher: Matcher,
}

impl Condition {
    #[inline]
    pub fn holds(&self, cb: &Callback) -> bool {
        self.matcher.matches(self.field.get(cb).as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(yaml: &str) -> Matcher {
        Matcher::compile(&serde_yaml::from_str(yaml).unwrap(), false).unwrap()
    }

    fn ev(yaml: &str) -> Matcher {
        Matcher::compile(&serde_yaml::from_str(yaml).unwrap(), true).unwrap()
    }

    #[test]
    fn exact_and_glob() {
        assert!(m("ok").matches(Some("ok")));
        assert!(!m("ok").matches(Some("OK")));
        assert!(!m("ok").matches(None));
        assert!(m("test_*").matches(Some("test_alice")));
        assert!(m("test_*").matches(Some("test_a/b")));
        assert!(!m("test_*").matches(Some("xtest_a")));
        assert!(m("user?").matches(Some("user1")));
        assert!(!m("user?").matches(Some("user12")));
        assert!(m("'[ab]*'").matches(Some("bob")));
        assert!(!m("'[ab]*'").matches(Some("carol")));
        assert!(m("'[!ab]*'").matches(Some("carol")));
        assert!(m("200").matches(Some("200")));
        assert!(m("true").matches(Some("true")));
    }

    #[test]
    fn regex_is_anchored() {
        assert!(m("{regex: 'a.c'}").matches(Some("abc")));
        assert!(!m("{regex: 'a.c'}").matches(Some("xabcx")));
        assert!(m("{regex: '.*abc.*'}").matches(Some("xabcx")));
        assert!(m("{regex: 'a|b'}").matches(Some("b")));
        assert!(!m("{regex: 'a|b'}").matches(Some("ab")));
        assert!(!m("{regex: 'a'}").matches(None));
    }

    #[test]
    fn not_exists_and_missing_fields() {
        assert!(m("{not: ok}").matches(None));
        assert!(m("{not: ok}").matches(Some("fail")));
        assert!(!m("{not: ok}").matches(Some("ok")));
        assert!(m("{exists: false}").matches(None));
        assert!(!m("{exists: false}").matches(Some("")));
        assert!(m("{exists: true}").matches(Some("")));
        assert!(!m("{exists: true}").matches(None));
        assert!(!m("'*'").matches(None));
    }

    #[test]
    fn lists_of_mixed_matchers() {
        let l = m("[ok, 'err_*', {regex: '[0-9]+'}, {exists: false}]");
        assert!(l.matches(Some("ok")));
        assert!(l.matches(Some("err_x")));
        assert!(l.matches(Some("404")));
        assert!(l.matches(None));
        assert!(!l.matches(Some("nope")));
    }

    #[test]
    fn event_families_and_globs() {
        assert!(ev("roster").matches(Some("roster:ban")));
        assert!(ev("roster").matches(Some("roster")));
        assert!(!ev("roster").matches(Some("rosterx:ban")));
        assert!(ev("roster:ban").matches(Some("roster:ban")));
        assert!(!ev("roster:ban").matches(Some("roster:band")));
        assert!(ev("'roster:*accept'").matches(Some("roster:remote_accept")));
        assert!(ev("'roster:*accept'").matches(Some("roster:accept")));
        assert!(!ev("'roster:*accept'").matches(Some("roster:decline")));
    }

    #[test]
    fn bad_matchers_say_why() {
        for (yaml, needle) in [
            ("{regex: '('}", "invalid regex"),
            ("'[a'", "invalid glob"),
            ("{exists: yes please}", "exists"),
            ("{nope: 1}", "unknown matcher"),
            ("[]", "empty list"),
            ("~", "exists: false"),
            ("{regex: a, not: b}", "exactly one"),
        ] {
            let err = Matcher::compile(&serde_yaml::from_str(yaml).unwrap(), false).unwrap_err();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn fields_read_normalized_users_and_paths() {
        let cb = Callback::from_value(json!({"callId": "c", "security": "s", "timestamp": 1, "appkey": "o#a",
            "from": "o#a_alice@easemob.com", "to": "bob", "payload": {"status": {"error_code": 0}, "ok": true}}))
        .unwrap();
        assert_eq!(
            Field::parse("from").unwrap().get(&cb).as_deref(),
            Some("alice")
        );
        assert_eq!(Field::parse("to").unwrap().get(&cb).as_deref(), Some("bob"));
        assert_eq!(
            Field::parse("payload.status.error_code")
                .unwrap()
                .get(&cb)
                .as_deref(),
            Some("0")
        );
        assert_eq!(
            Field::parse("payload.ok").unwrap().get(&cb).as_deref(),
            Some("true")
        );
        assert_eq!(Field::parse("host").unwrap().get(&cb), None);
        assert!(Field::parse("payload..x").is_err());
    }
}
