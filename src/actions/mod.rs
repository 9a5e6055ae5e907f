//! Actions: what a matching rule makes easehook do.
//!
//! This module owns what every action type shares — the common fields, the
//! compile step from YAML, rendering into a [`Message`] — and dispatches to
//! one file per type for the rest (`email`, `slack`, `http`, `log`, and the
//! team chats `wecom`, `dingtalk`, `feishu`, whose common part is `chat`,
//! and `easemob`, Easemob's own REST API).

pub mod chat;
pub mod dingtalk;
pub mod easemob;
pub mod email;
pub mod feishu;
pub mod http;
pub mod log;
pub mod slack;
pub mod wecom;

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::units::{HumanDuration, Num};
use crate::config::{Settings, strip_location};
use crate::diag::{Diagnostics, Redactor};
use crate::template::{Data, Escape, Reads, TemplateRef, Templates};

/// A compiled action.
#[derive(Debug)]
pub struct Action {
    /// Unique name across all rule files.
    pub name: String,
    /// The rule file it was defined in.
    pub file: String,
    /// A disabled action is skipped by every rule that names it.
    pub enabled: bool,
    /// At most this many deliveries per period; the others wait.
    pub rate_limit: Option<RateLimit>,
    /// Overrides `delivery.timeout` for this action.
    pub timeout: Option<Duration>,
    /// Overrides `delivery.max_attempts` for this action.
    pub max_attempts: Option<u32>,
    /// What its templates read of the render context: deliveries build no
    /// more than that.
    pub reads: Reads,
    pub kind: ActionKind,
    /// Its delivery counters and duration histogram.
    pub metrics: crate::metrics::ActionMetrics,
}

/// The type-specific part of an action.
#[derive(Debug)]
pub enum ActionKind {
    Email(email::EmailAction),
    Slack(slack::SlackAction),
    Http(http::HttpAction),
    Log(log::LogAction),
    WeCom(wecom::WeComAction),
    DingTalk(dingtalk::DingTalkAction),
    Feishu(feishu::FeishuAction),
    Easemob(easemob::EasemobAction),
}

impl ActionKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ActionKind::Email(_) => "email",
            ActionKind::Slack(_) => "slack",
            ActionKind::Http(_) => "http",
            ActionKind::Log(_) => "log",
            ActionKind::WeCom(_) => "wecom",
            ActionKind::DingTalk(_) => "dingtalk",
            ActionKind::Feishu(_) => "feishu",
            ActionKind::Easemob(_) => "easemob",
        }
    }

    /// The limit an action of this type keeps when its rule file sets none:
    /// the team chats' documented limits.
    fn default_rate_limit(&self) -> Option<RateLimit> {
        match self {
            ActionKind::WeCom(_) => Some(chat::Service::WeCom.default_rate_limit()),
            ActionKind::DingTalk(_) => Some(chat::Service::DingTalk.default_rate_limit()),
            ActionKind::Feishu(_) => Some(chat::Service::Feishu.default_rate_limit()),
            _ => None,
        }
    }
}

/// A fully rendered message, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Email(email::EmailMessage),
    Slack(slack::SlackMessage),
    Http(http::HttpRequest),
    Log(log::LogLine),
    Chat(chat::ChatMessage),
    Easemob(easemob::EasemobRequest),
}

impl Action {
    /// Whether a delivery of this action has nothing to do: a `log` action
    /// whose level the log drops. Such a delivery is done as soon as its
    /// event is stored.
    pub fn is_done_at_once(&self) -> bool {
        matches!(&self.kind, ActionKind::Log(log) if !log.is_written())
    }

    /// Render every template of this action against a render context.
    pub fn render(&self, t: &Templates, ctx: &Data) -> Result<Message, String> {
        match &self.kind {
            ActionKind::Email(a) => a.render(t, ctx).map(Message::Email),
            ActionKind::Slack(a) => a.render(t, ctx).map(Message::Slack),
            ActionKind::Http(a) => a.render(t, ctx).map(Message::Http),
            ActionKind::Log(a) => a.render(t, ctx).map(Message::Log),
            ActionKind::WeCom(a) => a.render(t, ctx).map(Message::Chat),
            ActionKind::DingTalk(a) => a.render(t, ctx).map(Message::Chat),
            ActionKind::Feishu(a) => a.render(t, ctx).map(Message::Chat),
            ActionKind::Easemob(a) => a.render(t, ctx).map(Message::Easemob),
        }
    }
}

impl Message {
    /// A human-readable description for `easehook test`, secrets masked.
    pub fn describe(&self, redactor: &Redactor) -> String {
        let text = match self {
            Message::Email(m) => m.describe(),
            Message::Slack(m) => m.describe(),
            Message::Http(m) => m.describe(),
            Message::Log(m) => m.describe(),
            Message::Chat(m) => m.describe(),
            Message::Easemob(m) => m.describe(),
        };
        redactor.redact(&text)
    }
}

/// `rate_limit: 30/min`: at most `count` deliveries per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl RateLimit {
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("invalid rate limit {s:?}: write it like 30/min, 10/s or 500/h");
        let (n, unit) = s.split_once('/').ok_or_else(err)?;
        let count: u32 = n.trim().parse().map_err(|_| err())?;
        if count == 0 {
            return Err(format!(
                "invalid rate limit {s:?}: the count must be at least 1"
            ));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            other => HumanDuration::parse(other).map_err(|_| err())?.0,
        };
        if per.is_zero() {
            return Err(err());
        }
        Ok(Self { count, per })
    }
}

/// A template field: an inline string, or `{template: file.hbs}` naming a file
/// in `templates_dir`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum TemplateSource {
    Inline(String),
    File {
        /// A file name in `templates_dir`.
        template: String,
    },
}

/// One string or a list of strings.
#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(untagged)]
pub enum StringList {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl StringList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringList::None => Vec::new(),
            StringList::One(s) => vec![s],
            StringList::Many(v) => v,
        }
    }
}

/// Everything an action's compile step needs, and where its problems go.
pub struct Compiler<'a> {
    pub action: &'a str,
    pub file: &'a str,
    pub templates: &'a mut Templates,
    pub settings: &'a Settings,
    pub diags: &'a mut Diagnostics,
    /// Whether a template registered so far may read `payload` or
    /// `callback` ([`Templates::reads_callback`]).
    pub reads_callback: bool,
}

impl Compiler<'_> {
    fn location(&self) -> String {
        format!("action {}", self.action)
    }

    /// Record a problem of this action.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let loc = if field.is_empty() {
            self.location()
        } else {
            format!("{}: {field}", self.location())
        };
        self.diags.push(self.file, loc, message);
    }

    /// Register a template field with the escaping of its destination.
    pub fn template(
        &mut self,
        field: &str,
        src: &TemplateSource,
        escape: Escape,
    ) -> Option<TemplateRef> {
        let r = match src {
            TemplateSource::Inline(s) => {
                let name = format!("{}#{field}", self.action);
                match self.templates.register_inline(&name, escape, s) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.error(field, e);
                        None
                    }
                }
            }
            TemplateSource::File { template } => {
                if self.templates.has_file(template) {
                    Some(self.templates.reference(escape, template))
                } else {
                    let dir = self.settings.templates_dir.display().to_string();
                    self.error(
                        field,
                        format!("template file {template:?} not found in {dir}"),
                    );
                    None
                }
            }
        }?;
        self.reads_callback |= self.templates.reads_callback(&r);
        Some(r)
    }

    /// Register a list of plain-text templates (recipients, for example).
    pub fn template_list(
        &mut self,
        field: &str,
        list: Vec<String>,
        escape: Escape,
    ) -> Vec<TemplateRef> {
        list.into_iter()
            .enumerate()
            .filter_map(|(i, s)| {
                self.template(&format!("{field}[{i}]"), &TemplateSource::Inline(s), escape)
            })
            .collect()
    }

    /// Compile a JSON-shaped value whose strings are templates.
    pub fn json_template(
        &mut self,
        field: &str,
        value: serde_yaml::Value,
        escape: Escape,
    ) -> Option<JsonTemplate> {
        let json: Value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                self.error(field, format!("cannot be expressed as JSON: {e}"));
                return None;
            }
        };
        Some(self.json_node(field, json, escape))
    }

    fn json_node(&mut self, path: &str, v: Value, escape: Escape) -> JsonTemplate {
        match v {
            Value::String(s) if s.contains("{{") => {
                match self.template(path, &TemplateSource::Inline(s), escape) {
                    Some(r) => JsonTemplate::Template(r),
                    None => JsonTemplate::Literal(Value::Null),
                }
            }
            Value::Array(items) => JsonTemplate::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| self.json_node(&format!("{path}[{i}]"), v, escape))
                    .collect(),
            ),
            Value::Object(map) => JsonTemplate::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let node = self.json_node(&format!("{path}.{k}"), v, escape);
                        (Value::String(k).to_string(), node)
                    })
                    .collect(),
            ),
            other => JsonTemplate::Literal(other),
        }
    }
}

/// A JSON value whose strings are templates; rendering builds the JSON with a
/// serializer, so rendered text can never change its structure.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    Literal(Value),
    Template(TemplateRef),
    Array(Vec<JsonTemplate>),
    /// Each key as JSON text (quoted and escaped), written when the rules
    /// load rather than for every delivery.
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    /// The JSON text, compact, as `serde_json` writes the same value: each
    /// rendered string goes through its string serializer, so no rendered
    /// text can change the structure. Written straight out, without
    /// building a `Value` (a hashed map per object) only to print it.
    pub fn render(&self, t: &Templates, ctx: &Data) -> Result<String, String> {
        let mut out = Vec::new();
        // Each template renders into this one buffer, in turn.
        let mut scratch = String::new();
        self.write(t, ctx, &mut out, &mut scratch)?;
        // Only the serializer and ASCII punctuation wrote to it.
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn write(
        &self,
        t: &Templates,
        ctx: &Data,
        out: &mut Vec<u8>,
        scratch: &mut String,
    ) -> Result<(), String> {
        fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), String> {
            serde_json::to_writer(out, v).map_err(|e| e.to_string())
        }
        match self {
            JsonTemplate::Literal(v) => json(out, v)?,
            JsonTemplate::Template(r) => {
                scratch.clear();
                t.render_into(r, ctx, scratch)?;
                json(out, scratch.as_str())?
            }
            JsonTemplate::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(t, ctx, out, scratch)?;
                }
                out.push(b']');
            }
            JsonTemplate::Object(fields) => {
                out.push(b'{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(k.as_bytes());
                    out.push(b':');
                    v.write(t, ctx, out, scratch)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }
}

/// Fields that every action type accepts.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    /// Default `true`; a string such as `${SLACK_WEBHOOK_URL:+true}` must
    /// expand to `true`, `false` or nothing (false). A disabled action is
    /// skipped by every rule.
    #[serde(default)]
    enabled: Option<EnabledFlag>,
    /// Like `30/min`, `10/s`, `500/h`, `5/10s`: deliveries beyond it wait,
    /// none is dropped.
    #[serde(default)]
    rate_limit: Option<String>,
    /// Overrides `delivery.timeout`.
    #[serde(default)]
    timeout: Option<HumanDuration>,
    /// Overrides `delivery.max_attempts`.
    #[serde(default)]
    max_attempts: Option<Num<u32>>,
}

/// An action as a rule file holds it: its `type` and that type's fields,
/// with those every type accepts. The editor schema's view of the structs
/// the loader reads an action into, part by part ([`compile`]).
#[derive(schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ActionSchema {
    /// A message through an SMTP server of the config's `smtp:`.
    Email(Typed<email::RawEmail>),
    /// A Slack incoming webhook.
    Slack(Typed<slack::RawSlack>),
    /// An HTTP request; any 2xx is success.
    Http(Typed<http::RawHttp>),
    /// A line in the daemon's log.
    Log(Typed<log::RawLog>),
    /// A WeCom (企业微信) group robot.
    Wecom(Typed<wecom::RawWeCom>),
    /// A DingTalk (钉钉) custom robot.
    Dingtalk(Typed<dingtalk::RawDingTalk>),
    /// A Feishu (飞书) custom bot.
    Feishu(Typed<feishu::RawFeishu>),
    /// A call to Easemob's REST API, with the app's `easemob:` credentials.
    Easemob(Typed<easemob::RawEasemob>),
}

/// A type's fields with those every action accepts.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub struct Typed<T> {
    #[serde(flatten)]
    common: RawCommon,
    #[serde(flatten)]
    fields: T,
}

/// `enabled:` is a boolean, or a string that expands to `true`, `false` or
/// nothing (false), such as `${SLACK_WEBHOOK_URL:+true}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum EnabledFlag {
    Bool(bool),
    Text(String),
}

/// The action types, as `check` lists them.
const TYPES: &str = "email, slack, http, log, wecom, dingtalk, feishu or easemob";

const COMMON_FIELDS: [&str; 4] = ["enabled", "rate_limit", "timeout", "max_attempts"];

fn deserialize_part<T: DeserializeOwned>(map: serde_yaml::Mapping, c: &mut Compiler) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(serde_yaml::Value::Mapping(map)) {
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            c.error(&path, strip_location(&e.into_inner().to_string()));
            None
        }
    }
}

/// Compile one action definition.
pub fn compile(value: serde_yaml::Value, c: &mut Compiler) -> Option<Action> {
    let serde_yaml::Value::Mapping(mut map) = value else {
        c.error("", "an action is a mapping with a `type` field");
        return None;
    };
    let type_name = match map.remove("type") {
        Some(serde_yaml::Value::String(t)) => t,
        Some(_) => {
            c.error("type", format!("must be one of {TYPES}"));
            return None;
        }
        None => {
            c.error("", format!("missing field `type` ({TYPES})"));
            return None;
        }
    };
    let mut common_map = serde_yaml::Mapping::new();
    for key in COMMON_FIELDS {
        if let Some(v) = map.remove(key) {
            common_map.insert(key.into(), v);
        }
    }
    let common: Option<RawCommon> = deserialize_part(common_map, c);
    let kind = match type_name.as_str() {
        "email" => deserialize_part(map, c)
            .and_then(|raw| email::compile(raw, c))
            .map(ActionKind::Email),
        "slack" => deserialize_part(map, c)
            .and_then(|raw| slack::compile(raw, c))
            .map(ActionKind::Slack),
        "http" => deserialize_part(map, c)
            .and_then(|raw| http::compile(raw, c))
            .map(ActionKind::Http),
        "log" => deserialize_part(map, c)
            .and_then(|raw| log::compile(raw, c))
            .map(ActionKind::Log),
        "wecom" => deserialize_part(map, c)
            .and_then(|raw| wecom::compile(raw, c))
            .map(ActionKind::WeCom),
        "dingtalk" => deserialize_part(map, c)
            .and_then(|raw| dingtalk::compile(raw, c))
            .map(ActionKind::DingTalk),
        "feishu" => deserialize_part(map, c)
            .and_then(|raw| feishu::compile(raw, c))
            .map(ActionKind::Feishu),
        "easemob" => deserialize_part(map, c)
            .and_then(|raw| easemob::compile(raw, c))
            .map(ActionKind::Easemob),
        other => {
            c.error(
                "type",
                format!("unknown action type {other:?}: use {TYPES}"),
            );
            None
        }
    };
    let common = common?;
    let enabled = match common.enabled {
        None => true,
        Some(EnabledFlag::Bool(b)) => b,
        Some(EnabledFlag::Text(t)) => match t.trim() {
            "true" => true,
            "false" | "" => false,
            other => {
                c.error(
                    "enabled",
                    format!("expands to {other:?}; it must be true, false or nothing"),
                );
                false
            }
        },
    };
    let rate_limit = match common.rate_limit.as_deref().map(RateLimit::parse) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            c.error("rate_limit", e);
            None
        }
        None => kind.as_ref().and_then(ActionKind::default_rate_limit),
    };
    if common.max_attempts.is_some_and(|n| n.0 == 0) {
        c.error("max_attempts", "must be at least 1");
    }
    if common.timeout.is_some_and(|t| t.0.is_zero()) {
        c.error("timeout", "must be more than 0s");
    }
    Some(Action {
        name: c.action.to_string(),
        file: c.file.to_string(),
        enabled,
        rate_limit,
        timeout: common.timeout.map(|t| t.0),
        max_attempts: common.max_attempts.map(|n| n.0),
        reads: if c.reads_callback {
            Reads::All
        } else {
            Reads::NotCallback
        },
        kind: kind?,
        metrics: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits() {
        assert_eq!(
            RateLimit::parse("30/min").unwrap(),
            RateLimit {
                count: 30,
                per: Duration::from_secs(60)
            }
        );
        assert_eq!(
            RateLimit::parse("10/s").unwrap().per,
            Duration::from_secs(1)
        );
        assert_eq!(
            RateLimit::parse("5/10s").unwrap().per,
            Duration::from_secs(10)
        );
        assert!(RateLimit::parse("0/s").is_err());
        assert!(RateLimit::parse("many").is_err());
        assert!(RateLimit::parse("3/fortnight").is_err());
    }
}

/// How one attempt ended. Actions classify; the dispatcher owns the schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent,
    /// Worth trying again; `after` is the destination's own wish (`Retry-After`).
    Retry {
        after: Option<Duration>,
        error: String,
    },
    /// Will never work as it is: dead at once.
    Permanent(String),
}

/// How one attempt ended, with the destination's own code when it answered:
/// the HTTP status, or the SMTP reply code.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub outcome: Outcome,
    pub code: Option<u16>,
}

impl From<Outcome> for Answer {
    /// An outcome decided without an answer (no connection, a timeout, a
    /// message that cannot be built).
    fn from(outcome: Outcome) -> Self {
        Answer {
            outcome,
            code: None,
        }
    }
}

/// What sending needs: one HTTP client for every Slack and HTTP action, and
/// one pooled SMTP transport per configured server.
#[derive(Clone)]
pub struct Senders {
    pub http: reqwest::Client,
    pub mail: email::Mailers,
    /// The Easemob apps' tokens and pace.
    pub easemob: easemob::Clients,
}

impl Senders {
    pub fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("easehook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            // A followed 301, 302 or 303 turns the POST into a GET without
            // its body, whose 2xx would count as delivered: the event would
            // be lost. A redirect is an answer like any other non-2xx.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            mail: email::Mailers::default(),
            easemob: easemob::Clients::default(),
        })
    }

    /// Send a rendered message. The caller bounds the time it may take.
    pub async fn send(&self, msg: &Message, settings: &Settings, timeout: Duration) -> Answer {
        match msg {
            Message::Email(m) => self.mail.send(m, settings, timeout).await,
            Message::Slack(m) => slack::send(&self.http, m, timeout).await,
            Message::Http(m) => http::send(&self.http, m, timeout).await,
            Message::Log(m) => log::send(m).into(),
            Message::Chat(m) => chat::send(&self.http, m, timeout).await,
            Message::Easemob(m) => {
                match tokio::time::timeout(timeout, self.easemob.send(&self.http, m, settings))
                    .await
                {
                    Ok(answer) => answer,
                    Err(_) => Outcome::Retry {
                        after: None,
                        error: format!("timed out after {}", humantime::format_duration(timeout)),
                    }
                    .into(),
                }
            }
        }
    }
}

/// Classify an HTTP answer (SPEC §7): 2xx sent; 408, 429 and 5xx retried,
/// honouring `Retry-After`; any other status is permanent, redirects
/// included (the client does not follow them).
pub(crate) async fn classify_http(result: Result<reqwest::Response, reqwest::Error>) -> Answer {
    let resp = match result {
        Ok(r) => r,
        Err(e) => return transport_error(e).into(),
    };
    let status = resp.status();
    let code = Some(status.as_u16());
    if status.is_success() {
        return Answer {
            outcome: Outcome::Sent,
            code,
        };
    }
    let after = retry_after(&resp);
    let body = resp.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(200).collect();
    let error = if status.is_redirection() {
        // The `Location` is not shown: like the URL itself, it may carry a
        // token.
        format!(
            "HTTP {}: a redirect, which deliveries do not follow (set the action's URL to where it points)",
            status.as_u16()
        )
    } else {
        format!("HTTP {}: {}", status.as_u16(), snippet.trim())
    };
    let outcome = if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry { after, error }
    } else {
        Outcome::Permanent(error)
    };
    Answer { outcome, code }
}

/// A request that got no answer (connection, TLS, timeout): retried.
pub(crate) fn transport_error(e: reqwest::Error) -> Outcome {
    // Error texts can carry the URL, and a webhook URL is a secret.
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    Outcome::Retry {
        after: None,
        error: format!("{kind}: {}", error_chain(&e)),
    }
}

/// The answer's `Retry-After`, when it has one that parses.
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let delta = when.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(delta.max(0) as u64))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
