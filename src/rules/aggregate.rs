//! Rules over many events (SPEC §11): a `digest` gathers a rule's matching
//! events per group and makes one delivery per action when its window
//! closes; a `threshold` fires once a group's sliding window holds `count`
//! events (or distinct values of a field), then rests for `cooldown`.
//!
//! This module owns the rule keys, their validation, what the request path
//! derives from one event (its group, and the value a threshold counts) and
//! the template context of the deliveries. The state itself (open digests,
//! windows, cooldowns) lives in the store and changes in the same commit as
//! the event, so it survives a restart and is shared by replicas.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Text;
use crate::callback::Callback;
use crate::config::units::HumanDuration;
use crate::diag::Diagnostics;
use crate::store::{AggregateInfo, AggregateKind, AggregateSpec, NewAggregate};

use super::matcher::Field;

/// Events kept for a digest's templates unless `max_events` says otherwise.
pub const DEFAULT_MAX_EVENTS: u32 = 50;
/// Upper bounds that keep a group's stored state small.
const MAX_KEPT: u32 = 1000;
const MAX_COUNT: u32 = 10_000;

/// `digest:` as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDigest {
    /// How long a digest stays open after its first event.
    window: HumanDuration,
    /// Fields (as in conditions) whose values split the events into
    /// separate digests; none: one digest at a time per rule.
    #[serde(default)]
    by: Vec<String>,
    /// Events kept for the templates (default 50); the count covers all.
    #[serde(default)]
    max_events: Option<u32>,
}

/// `threshold:` as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    /// Fires when this many events (or distinct values) fall within the
    /// window.
    count: u32,
    /// The sliding window's length.
    within: HumanDuration,
    /// Fields whose values split the counting into groups.
    #[serde(default)]
    by: Vec<String>,
    /// Count distinct values of this field rather than events.
    #[serde(default)]
    distinct: Option<String>,
    /// After firing, the group does not fire again this long (default:
    /// `within`).
    #[serde(default)]
    cooldown: Option<HumanDuration>,
}

/// A field named in `by` or `distinct`, with its name as written.
#[derive(Debug, Clone)]
pub struct Named {
    pub name: String,
    pub field: Field,
}

/// A compiled `digest:` or `threshold:`.
#[derive(Debug, Clone)]
pub enum Aggregation {
    Digest {
        window: Duration,
        by: Vec<Named>,
        max_events: u32,
    },
    Threshold {
        count: u32,
        within: Duration,
        by: Vec<Named>,
        distinct: Option<Named>,
        cooldown: Duration,
    },
}

impl Aggregation {
    /// Compile a rule's `digest` and `threshold` keys: `None` when it has
    /// neither, or has problems (then in `diags`).
    pub fn compile(
        digest: Option<serde_yaml::Value>,
        threshold: Option<serde_yaml::Value>,
        file: &str,
        label: &str,
        diags: &mut Diagnostics,
    ) -> Option<Aggregation> {
        let before = diags.len();
        let out = match (digest, threshold) {
            (None, None) => return None,
            (Some(_), Some(_)) => {
                diags.push(
                    file,
                    label,
                    "has both `digest` and `threshold`; a rule has at most one",
                );
                return None;
            }
            (Some(d), None) => {
                let loc = format!("{label}: digest");
                let raw: RawDigest = deserialize(d, file, &loc, diags)?;
                let by = fields(&raw.by, file, &format!("{loc}.by"), diags);
                if raw.window.0.is_zero() {
                    diags.push(file, format!("{loc}.window"), "must be longer than 0");
                }
                let max_events = raw.max_events.unwrap_or(DEFAULT_MAX_EVENTS);
                if !(1..=MAX_KEPT).contains(&max_events) {
                    diags.push(
                        file,
                        format!("{loc}.max_events"),
                        format!("must be between 1 and {MAX_KEPT}, not {max_events}"),
                    );
                }
                Aggregation::Digest {
                    window: raw.window.0,
                    by,
                    max_events,
                }
            }
            (None, Some(t)) => {
                let loc = format!("{label}: threshold");
                let raw: RawThreshold = deserialize(t, file, &loc, diags)?;
                let by = fields(&raw.by, file, &format!("{loc}.by"), diags);
                let distinct = raw.distinct.as_ref().and_then(|name| {
                    fields(
                        std::slice::from_ref(name),
                        file,
                        &format!("{loc}.distinct"),
                        diags,
                    )
                    .pop()
                });
                if !(1..=MAX_COUNT).contains(&raw.count) {
                    diags.push(
                        file,
                        format!("{loc}.count"),
                        format!("must be between 1 and {MAX_COUNT}, not {}", raw.count),
                    );
                }
                if raw.within.0.is_zero() {
                    diags.push(file, format!("{loc}.within"), "must be longer than 0");
                }
                Aggregation::Threshold {
                    count: raw.count,
                    within: raw.within.0,
                    by,
                    distinct,
                    cooldown: raw.cooldown.map_or(raw.within.0, |c| c.0),
                }
            }
        };
        (diags.len() == before).then_some(out)
    }

    pub fn kind(&self) -> AggregateKind {
        match self {
            Aggregation::Digest { .. } => AggregateKind::Digest,
            Aggregation::Threshold { .. } => AggregateKind::Threshold,
        }
    }

    fn by(&self) -> &[Named] {
        match self {
            Aggregation::Digest { by, .. } | Aggregation::Threshold { by, .. } => by,
        }
    }

    /// The event's group: a JSON object of the `by` fields and their values
    /// (a missing field is `""`), in the order written, so that the same
    /// values always make the same text.
    pub fn group(&self, cb: &Callback) -> String {
        let mut out = String::from("{");
        for (i, n) in self.by().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let value = n.field.get(cb).unwrap_or_default();
            // Strings always serialize.
            out.push_str(&serde_json::to_string(&n.name).unwrap_or_default());
            out.push(':');
            out.push_str(&serde_json::to_string(value.as_ref()).unwrap_or_default());
        }
        out.push('}');
        out
    }

    /// What the event `event_id` contributes, with the rule's enabled
    /// `actions`; `None` for a threshold counting distinct values of a
    /// field the event does not have (it has no value to count).
    pub fn new_aggregate(
        &self,
        rule: &str,
        actions: Vec<Text>,
        cb: &Callback,
        event_id: &str,
    ) -> Option<NewAggregate> {
        let spec = match self {
            Aggregation::Digest {
                window, max_events, ..
            } => AggregateSpec::Digest {
                window_ms: window.as_millis() as u64,
                max_events: *max_events,
            },
            Aggregation::Threshold {
                count,
                within,
                distinct,
                cooldown,
                ..
            } => AggregateSpec::Threshold {
                count: *count,
                within_ms: within.as_millis() as u64,
                cooldown_ms: cooldown.as_millis() as u64,
                value: match distinct {
                    Some(n) => n.field.get(cb)?.into_owned(),
                    None => event_id.to_string(),
                },
            },
        };
        Some(NewAggregate {
            rule: Text::new(rule),
            group: self.group(cb),
            actions,
            spec,
        })
    }

    /// A digest or firing of three `samples` (repeated as needed), for
    /// `check` to render templates against.
    pub fn sample(&self, rule: &str, samples: &[&Callback], now_ms: u64) -> AggregateInfo {
        let events: Vec<_> = (0..3u64)
            .map(|i| crate::store::AggregatedEvent {
                id: format!("sample-{i}"),
                received_at_ms: now_ms.saturating_sub((2 - i) * 60_000),
                callback: Ok(std::sync::Arc::new(
                    samples[i as usize % samples.len().max(1)].clone(),
                )),
            })
            .collect();
        let last = samples[2 % samples.len().max(1)];
        AggregateInfo {
            kind: self.kind(),
            rule: rule.to_string(),
            group: self.group(last),
            count: 3,
            first_at: events[0].received_at_ms,
            last_at: now_ms,
            within_ms: match self {
                Aggregation::Digest { .. } => 0,
                Aggregation::Threshold { within, .. } => within.as_millis() as u64,
            },
            due_at: now_ms,
            events,
        }
    }
}

fn deserialize<T: serde::de::DeserializeOwned>(
    v: serde_yaml::Value,
    file: &str,
    loc: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    serde_path_to_error::deserialize(v)
        .map_err(|e| {
            let path = e.path().to_string();
            let loc = if path == "." {
                loc.to_string()
            } else {
                format!("{loc}.{path}")
            };
            diags.push(
                file,
                loc,
                crate::config::strip_location(&e.into_inner().to_string()),
            );
        })
        .ok()
}

fn fields(names: &[String], file: &str, loc: &str, diags: &mut Diagnostics) -> Vec<Named> {
    names
        .iter()
        .filter_map(|name| match Field::parse(name) {
            Ok(field) => Some(Named {
                name: name.clone(),
                field,
            }),
            Err(e) => {
                diags.push(file, loc, e);
                None
            }
        })
        .collect()
}

/// The `digest` or `threshold` value of a delivery's render context: each
/// event kept has the names of SPEC §5 and its `event_id`.
pub fn context(info: &AggregateInfo) -> Value {
    let time = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let events: Vec<Value> = info
        .events
        .iter()
        .map(|e| match &e.callback {
            Ok(cb) => {
                let at = chrono::DateTime::from_timestamp_millis(e.received_at_ms as i64)
                    .unwrap_or_default();
                let mut v = crate::template::context(cb, at, crate::template::Reads::All);
                if let Value::Object(m) = &mut v {
                    m.insert("event_id".into(), json!(e.id));
                }
                v
            }
            // Unreadable (cannot happen for a callback this daemon stored):
            // the event is listed by id alone.
            Err(_) => json!({"event_id": e.id, "received_at": time(e.received_at_ms)}),
        })
        .collect();
    let group: Value =
        serde_json::from_str(&info.group).unwrap_or_else(|_| Value::Object(Map::new()));
    match info.kind {
        AggregateKind::Digest => json!({
            "count": info.count,
            "truncated": info.count.saturating_sub(events.len() as u64),
            "events": events,
            "first_at": time(info.first_at),
            "last_at": time(info.last_at),
            "group": group,
        }),
        AggregateKind::Threshold => json!({
            "count": info.count,
            "within": humantime::format_duration(Duration::from_millis(info.within_ms)).to_string(),
            "events": events,
            "first_at": time(info.first_at),
            "last_at": time(info.last_at),
            "group": group,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> (Option<Aggregation>, Vec<String>) {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let mut diags = Diagnostics::new();
        let r = Aggregation::compile(
            v.get("digest").cloned(),
            v.get("threshold").cloned(),
            "r.yaml",
            "rule x",
            &mut diags,
        );
        (r, diags.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn keys_are_validated_with_their_location() {
        let (r, d) = compile("{digest: {window: 10m}, threshold: {count: 1, within: 1h}}");
        assert!(r.is_none());
        assert_eq!(
            d,
            ["r.yaml: rule x: has both `digest` and `threshold`; a rule has at most one"]
        );
        let (_, d) = compile("{threshold: {count: 0, within: 0, by: ['a..b']}}");
        assert_eq!(
            d,
            [
                "r.yaml: rule x: threshold.by: \"a..b\" is not a field name or dotted path",
                "r.yaml: rule x: threshold.count: must be between 1 and 10000, not 0",
                "r.yaml: rule x: threshold.within: must be longer than 0",
            ]
        );
        let (_, d) = compile("{digest: {window: soon}}");
        assert_eq!(d.len(), 1);
        assert!(
            d[0].starts_with("r.yaml: rule x: digest.window: invalid duration"),
            "{d:?}"
        );
        let (_, d) = compile("{digest: {window: 1m, max: 3}}");
        assert_eq!(
            d,
            [
                "r.yaml: rule x: digest.max: unknown field `max`, expected one of `window`, `by`, `max_events`"
            ]
        );
        let (_, d) = compile("{digest: {window: 1m, max_events: 0}}");
        assert_eq!(
            d,
            ["r.yaml: rule x: digest.max_events: must be between 1 and 1000, not 0"]
        );
    }

    #[test]
    fn defaults_and_groups() {
        let (r, _) =
            compile("{threshold: {count: 5, within: 1h, by: [to, appkey], distinct: from}}");
        let a = r.unwrap();
        let Aggregation::Threshold { cooldown, .. } = &a else {
            panic!("a threshold")
        };
        assert_eq!(
            *cooldown,
            Duration::from_secs(3600),
            "cooldown defaults to within"
        );
        let cb = Callback::from_value(crate::rules::samples::body(
            "roster:ban",
            "org#app",
            "alice",
            "bob \"b\"",
            "1",
            0,
        ))
        .unwrap();
        assert_eq!(a.group(&cb), r#"{"to":"bob \"b\"","appkey":"org#app"}"#);
        let n = a.new_aggregate("x", vec![], &cb, "e1").unwrap();
        assert!(matches!(n.spec, AggregateSpec::Threshold { ref value, .. } if value == "alice"));
        let (r, _) = compile("{digest: {window: 10m}}");
        let a = r.unwrap();
        assert_eq!(a.group(&cb), "{}");
        assert!(matches!(
            a.new_aggregate("x", vec![], &cb, "e1").unwrap().spec,
            AggregateSpec::Digest {
                window_ms: 600_000,
                max_events: 50
            }
        ));
        // Counting distinct values of a field the event lacks: nothing.
        let (r, _) = compile("{threshold: {count: 2, within: 1h, distinct: payload.nope}}");
        assert!(r.unwrap().new_aggregate("x", vec![], &cb, "e1").is_none());
    }
}
