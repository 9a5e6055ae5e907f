//! Handlebars templates: registration, escaping by destination, helpers and
//! the render context.
//!
//! Templates run in strict mode: a missing variable is an error, never an
//! empty string that would silently produce a broken message. Each
//! destination has its own registry, differing only in how a value inserted
//! with `{{…}}` is escaped:
//!
//! | escaping | used for |
//! |---|---|
//! | [`Escape::Plain`] | email `text`, `subject`, recipients, HTTP `body` and headers, `log` |
//! | [`Escape::Html`] | email `html` |
//! | [`Escape::Url`] | HTTP `url`: inserted values are percent-encoded |
//! | [`Escape::Slack`] | Slack `text` and `blocks`: `&`, `<`, `>` as Slack requires, so user text cannot mention `@channel` or forge links |
//!
//! A template made only of text and plain names (`{{from_user}} blocked
//! {{to_user}}`) has a [`Plan`] and is rendered by appending its pieces,
//! reading the values from the callback; the rest are rendered by
//! Handlebars from a context built once per delivery, when the first of
//! them needs it ([`Data`]). Both give the same text.
//!
//! JSON bodies (`json`, Slack messages) are built by a serializer from the
//! rendered strings, so user text can never break the JSON. Text that users
//! put in their data (a friend request's `payload.reason` containing `{{`,
//! quotes or Chinese) is data, never evaluated as a template.

mod helpers;

use helpers::*;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{Handlebars, Path as JsonPath, PathSeg, RenderError, RenderErrorReason};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

use crate::callback::Callback;
use crate::diag::Diagnostics;

/// How values inserted with `{{…}}` are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Escape {
    Plain,
    Html,
    Url,
    Slack,
}

impl Escape {
    const ALL: [Escape; 4] = [Escape::Plain, Escape::Html, Escape::Url, Escape::Slack];

    fn index(self) -> usize {
        self as usize
    }

    /// The function that escapes an inserted value; the registry of this
    /// mode and the plain renderer ([`Plan`]) use the same one.
    fn function(self) -> fn(&str) -> String {
        match self {
            Escape::Plain => handlebars::no_escape,
            Escape::Html => handlebars::html_escape,
            Escape::Url => escape_url,
            Escape::Slack => escape_slack,
        }
    }
}

/// Characters left as they are when percent-encoding a URL value: the
/// unreserved set of RFC 3986.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn escape_url(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URL_VALUE).to_string()
}

fn escape_slack(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// A registered template: which registry, under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub escape: Escape,
    pub name: String,
    /// How to render it without Handlebars, when it is that simple.
    plan: Option<Arc<Plan>>,
}

/// The names of the context (SPEC §5) that always hold a string or a
/// number and that no helper is named like.
const PLAIN_NAMES: [&str; 17] = [
    "event",
    "operation",
    "chat_type",
    "eventType",
    "appkey",
    "host",
    "callId",
    "msg_id",
    "from",
    "to",
    "from_user",
    "to_user",
    "timestamp",
    "time",
    "received_at",
    "rule",
    "action",
];

/// A template made only of text and plain names (`{{from_user}} blocked
/// {{to_user}}`, `{{{event}}}`), as most message fields are, rendered by
/// appending its pieces. Handlebars would set up a render context, resolve
/// each name as a path and copy each value twice for the same text: most
/// of a delivery's rendering.
#[derive(Debug, PartialEq, Eq)]
struct Plan(Vec<Piece>);

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A value of the context, escaped (`{{…}}`) or not (`{{{…}}}`).
    Value {
        name: &'static str,
        escaped: bool,
    },
}

impl Plan {
    /// The plan of a compiled template, if every element is text, a
    /// comment, or a plain name with nothing else in its braces.
    fn of(elements: &[TemplateElement]) -> Option<Plan> {
        let mut pieces = Vec::with_capacity(elements.len());
        for e in elements {
            match e {
                TemplateElement::RawString(s) => pieces.push(Piece::Text(s.clone())),
                TemplateElement::Comment(_) => {}
                TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                    if h.block || !h.params.is_empty() || !h.hash.is_empty() {
                        return None;
                    }
                    let named = match &h.name {
                        Parameter::Name(n) => n.as_str(),
                        Parameter::Path(JsonPath::Relative((segs, _))) => match segs.as_slice() {
                            [PathSeg::Named(n)] => n.as_str(),
                            _ => return None,
                        },
                        _ => return None,
                    };
                    let name = PLAIN_NAMES.into_iter().find(|p| *p == named)?;
                    let escaped = matches!(e, TemplateElement::Expression(_));
                    pieces.push(Piece::Value { name, escaped });
                }
                _ => return None,
            }
        }
        Some(Plan(pieces))
    }

    /// Append the text, as Handlebars renders it from the context `data`
    /// would build; `None` if a name is not one `data` knows (left to
    /// Handlebars), and then `out` holds part of the text.
    fn render_into(&self, data: &Data, escape: Escape, out: &mut String) -> Option<()> {
        for piece in &self.0 {
            match piece {
                Piece::Text(s) => out.push_str(s),
                Piece::Value { name, escaped } => {
                    let number;
                    let text = match data.field(name)? {
                        Field::Text(s) => s,
                        Field::Number(n) => {
                            number = n.to_string();
                            Cow::Borrowed(number.as_str())
                        }
                    };
                    match (escaped, escape) {
                        (false, _) | (true, Escape::Plain) => out.push_str(&text),
                        (true, _) => out.push_str(&escape.function()(&text)),
                    }
                }
            }
        }
        Some(())
    }
}

/// All templates of one rule set: the files of `templates_dir` and every
/// inline template of every action, in one registry per escaping mode.
pub struct Templates {
    registries: [Handlebars<'static>; 4],
    /// File templates by name, for listing.
    files: Vec<String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Templates {
    /// Empty registries with the helpers, `tz` being the `datetime` default.
    pub fn new(tz: chrono_tz::Tz) -> Self {
        let make = |escape: Escape| {
            let mut h = Handlebars::new();
            h.set_strict_mode(true);
            h.register_escape_fn(escape.function());
            h.register_helper("datetime", Box::new(DateTimeHelper { tz }));
            h.register_helper("json", Box::new(JsonHelper));
            h.register_helper("default", Box::new(DefaultHelper));
            h.register_helper("upper", Box::new(CaseHelper { upper: true }));
            h.register_helper("lower", Box::new(CaseHelper { upper: false }));
            h.register_helper("truncate", Box::new(TruncateHelper));
            h
        };
        Self {
            registries: Escape::ALL.map(make),
            files: Vec::new(),
        }
    }

    /// Register every `*.hbs` file of `dir` under its file name, in every
    /// registry, so that each can be used by any destination and as a partial.
    pub fn load_dir(&mut self, dir: &Path, diags: &mut Diagnostics) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                diags.push(
                    dir.display(),
                    "",
                    format!("cannot read the templates directory: {e}"),
                );
                return;
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "hbs") && p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let source = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) => {
                    diags.push(path.display(), "", format!("cannot read: {e}"));
                    continue;
                }
            };
            let mut ok = true;
            for reg in &mut self.registries {
                if let Err(e) = reg.register_template_string(&name, &source) {
                    diags.push(
                        path.display(),
                        template_error_location(&e),
                        template_error_message(&e),
                    );
                    ok = false;
                    break;
                }
            }
            if ok {
                self.files.push(name);
            }
        }
    }

    /// Whether a file template of that name was loaded.
    pub fn has_file(&self, name: &str) -> bool {
        self.files.iter().any(|f| f == name)
    }

    /// Names of the loaded file templates.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Register an inline template; the error text is ready for a diagnostic.
    pub fn register_inline(
        &mut self,
        name: &str,
        escape: Escape,
        source: &str,
    ) -> Result<TemplateRef, String> {
        self.registries[escape.index()]
            .register_template_string(name, source)
            .map_err(|e| {
                let loc = template_error_location(&e);
                if loc.is_empty() {
                    template_error_message(&e)
                } else {
                    format!("{loc}: {}", template_error_message(&e))
                }
            })?;
        Ok(self.reference(escape, name))
    }

    /// The reference to a registered template (inline, or a file).
    pub fn reference(&self, escape: Escape, name: &str) -> TemplateRef {
        let plan = self.registries[escape.index()]
            .get_template(name)
            .and_then(|t| Plan::of(&t.elements))
            .map(Arc::new);
        TemplateRef {
            escape,
            name: name.to_string(),
            plan,
        }
    }

    /// Whether a registered template may read `payload` or `callback`, the
    /// two entries of the context that cost a parse of the whole callback.
    /// Only a template that provably does not (every value it names is
    /// named outright, and none is either) answers false; a partial, a
    /// decorator, `this`, `..` or `@root` may reach anything.
    pub fn reads_callback(&self, t: &TemplateRef) -> bool {
        self.registries[t.escape.index()]
            .get_template(&t.name)
            .is_none_or(|tpl| may_read_callback(&tpl.elements))
    }

    /// Render a registered template: by its plan if it has one, otherwise
    /// with Handlebars, from the context `data` builds on first use.
    pub fn render(&self, t: &TemplateRef, data: &Data) -> Result<String, String> {
        let mut out = String::new();
        self.render_into(t, data, &mut out)?;
        Ok(out)
    }

    /// [`Templates::render`], appending to `out`: a caller rendering
    /// several templates in turn reuses one buffer.
    pub fn render_into(
        &self,
        t: &TemplateRef,
        data: &Data,
        out: &mut String,
    ) -> Result<(), String> {
        let start = out.len();
        if let Some(plan) = &t.plan {
            if plan.render_into(data, t.escape, out).is_some() {
                return Ok(());
            }
            out.truncate(start);
        }
        let text = self.by_handlebars(t, data.context())?;
        // Into an empty buffer, Handlebars' own text is taken as it is.
        if out.is_empty() {
            *out = text;
        } else {
            out.push_str(&text);
        }
        Ok(())
    }

    /// Render a registered template with Handlebars, whatever its plan.
    fn by_handlebars(&self, t: &TemplateRef, ctx: &TemplateData) -> Result<String, String> {
        self.registries[t.escape.index()]
            .render_with_context(&t.name, ctx)
            .map_err(|e| render_error_message(&e))
    }
}

/// See [`Templates::reads_callback`].
fn may_read_callback(elements: &[TemplateElement]) -> bool {
    elements.iter().any(|e| match e {
        TemplateElement::RawString(_) | TemplateElement::Comment(_) => false,
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => helper_may_read_callback(h),
        TemplateElement::DecoratorExpression(_)
        | TemplateElement::DecoratorBlock(_)
        | TemplateElement::PartialExpression(_)
        | TemplateElement::PartialBlock(_) => true,
        // Whatever a later version adds.
        _ => true,
    })
}

fn helper_may_read_callback(h: &HelperTemplate) -> bool {
    param_may_read_callback(&h.name)
        || h.params.iter().any(param_may_read_callback)
        || h.hash.values().any(param_may_read_callback)
        || [&h.template, &h.inverse]
            .into_iter()
            .flatten()
            .any(|t| may_read_callback(&t.elements))
}

fn param_may_read_callback(p: &Parameter) -> bool {
    let first = match p {
        Parameter::Literal(_) => return false,
        Parameter::Subexpression(s) => return may_read_callback(std::slice::from_ref(&s.element)),
        // Block-local values (`@index`, `@key`) come from what the block
        // was given, which is checked where it is named.
        Parameter::Path(JsonPath::Local(_)) => return false,
        Parameter::Path(JsonPath::Relative((segs, _))) => match segs.first() {
            Some(PathSeg::Named(n)) => n.as_str(),
            // `this`, `..`, `@root`.
            _ => return true,
        },
        // A helper's name, or a value named like one (`{{event}}`).
        Parameter::Name(n) => n.split(['.', '/']).next().unwrap_or_default(),
        _ => return true,
    };
    let plain = !first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    !plain || first == "payload" || first == "callback" || first == "this"
}

fn template_error_location(e: &handlebars::TemplateError) -> String {
    e.pos()
        .map(|(l, c)| format!("line {l} column {c}"))
        .unwrap_or_default()
}

fn template_error_message(e: &handlebars::TemplateError) -> String {
    format!("invalid template: {}", e.reason())
}

fn render_error_message(e: &RenderError) -> String {
    let reason = match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => format!("no value for `{path}`"),
        RenderErrorReason::MissingVariable(None) => {
            "a helper was given a value that does not exist".to_string()
        }
        other => other.to_string(),
    };
    match (e.line_no, e.column_no, &e.template_name) {
        (Some(l), Some(c), Some(name)) if !name.contains('#') => {
            format!("{name} line {l} column {c}: {reason}")
        }
        (Some(l), Some(c), _) => format!("line {l} column {c}: {reason}"),
        _ => reason,
    }
}

/// Which context a render needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Every entry of SPEC §5.
    All,
    /// All but `payload` and `callback`: the templates read neither
    /// ([`Templates::reads_callback`]), so the callback is not parsed.
    NotCallback,
}

/// The Handlebars context of a render (SPEC §5), as much of it as `reads`
/// says, without `rule` and `action`, which [`with_names`] adds.
pub fn context(cb: &Callback, received_at: DateTime<Utc>, reads: Reads) -> Value {
    // Room for `payload`, `callback`, and the `rule` and `action` that
    // `with_names` adds.
    let mut m = Map::with_capacity(PLAIN_NAMES.len() + 2);
    for name in CALLBACK_NAMES {
        let value = match field(cb, received_at, name) {
            Some(Field::Text(s)) => Value::String(s.into_owned()),
            Some(Field::Number(n)) => Value::from(n),
            None => continue,
        };
        m.insert((*name).to_owned(), value);
    }
    if reads == Reads::All {
        let raw = cb.raw();
        let payload = raw.get("payload").cloned();
        m.insert(
            "payload".into(),
            payload.unwrap_or_else(|| Value::Object(Map::new())),
        );
        m.insert("callback".into(), raw.clone());
    }
    Value::Object(m)
}

/// The plain names that come from the callback: all but `rule` and
/// `action`, in the order of SPEC §5.
const CALLBACK_NAMES: &[&str] = PLAIN_NAMES.split_at(PLAIN_NAMES.len() - 2).0;

/// The value of a plain name.
enum Field<'a> {
    Text(Cow<'a, str>),
    Number(u64),
}

/// The value of one of [`CALLBACK_NAMES`]: the one definition of what
/// each holds, for the context and for plans alike.
fn field<'a>(cb: &'a Callback, received_at: DateTime<Utc>, name: &str) -> Option<Field<'a>> {
    let text = |s: &'a str| Field::Text(Cow::Borrowed(s));
    let opt = |v: &'a Option<crate::callback::Text>| text(v.as_deref().unwrap_or_default());
    let instant = |t: DateTime<Utc>| {
        Field::Text(Cow::Owned(
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ))
    };
    Some(match name {
        "event" => text(&cb.event),
        "operation" => opt(&cb.operation),
        "chat_type" => opt(&cb.chat_type),
        "eventType" => opt(&cb.event_type),
        "appkey" => opt(&cb.appkey),
        "host" => opt(&cb.host),
        "callId" => text(&cb.call_id),
        "msg_id" => opt(&cb.msg_id),
        "from" => opt(&cb.from),
        "to" => opt(&cb.to),
        "from_user" => text(&cb.from_user),
        "to_user" => text(&cb.to_user),
        "timestamp" => Field::Number(cb.timestamp),
        "time" => match Utc.timestamp_millis_opt(cb.timestamp as i64).single() {
            Some(t) => instant(t),
            None => text(""),
        },
        "received_at" => instant(received_at),
        _ => return None,
    })
}

/// What the templates of one delivery read: its callback, when it was
/// received, and the names of its rule and action.
///
/// A template with a plan reads the values it names straight from the
/// callback. The Handlebars context (a map of copies of them all, and
/// `payload` and `callback` if `reads` says a template can reach them) is
/// built only when a template needs Handlebars, once for all of them.
pub struct Data<'a> {
    /// `None` for data made [`from_context`](Data::from_context).
    names: Option<Names<'a>>,
    context: std::cell::OnceCell<TemplateData>,
}

struct Names<'a> {
    cb: &'a Callback,
    received_at: DateTime<Utc>,
    reads: Reads,
    rule: &'a str,
    action: &'a str,
    /// `digest` or `threshold` and its value (SPEC §11).
    extra: Option<(&'static str, Value)>,
}

impl<'a> Data<'a> {
    /// The data of a delivery of `cb` by rule `rule` and action `action`;
    /// `reads` is how much of the context its templates can reach.
    pub fn new(
        cb: &'a Callback,
        received_at: DateTime<Utc>,
        reads: Reads,
        rule: &'a str,
        action: &'a str,
    ) -> Self {
        Data {
            names: Some(Names {
                cb,
                received_at,
                reads,
                rule,
                action,
                extra: None,
            }),
            context: std::cell::OnceCell::new(),
        }
    }

    /// The data with one more name: `digest` or `threshold`, the context of
    /// a delivery made of many events (SPEC §11).
    pub fn with(mut self, name: &'static str, value: Value) -> Self {
        if let Some(n) = &mut self.names {
            n.extra = Some((name, value));
        }
        self
    }

    /// Data that is a context and nothing else: every template renders
    /// with Handlebars from it (for tests of arbitrary contexts).
    pub fn from_context(context: TemplateData) -> Data<'static> {
        Data {
            names: None,
            context: std::cell::OnceCell::from(context),
        }
    }

    fn field(&self, name: &str) -> Option<Field<'_>> {
        let n = self.names.as_ref()?;
        match name {
            "rule" => Some(Field::Text(Cow::Borrowed(n.rule))),
            "action" => Some(Field::Text(Cow::Borrowed(n.action))),
            _ => field(n.cb, n.received_at, name),
        }
    }

    /// The event's appkey (empty when it has none).
    pub fn appkey(&self) -> Cow<'_, str> {
        match &self.names {
            Some(n) => Cow::Borrowed(n.cb.appkey.as_deref().unwrap_or("")),
            None => Cow::Owned(
                self.context()
                    .data()
                    .get("appkey")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
        }
    }

    /// The Handlebars context, built on first use.
    pub fn context(&self) -> &TemplateData {
        self.context.get_or_init(|| match &self.names {
            Some(n) => {
                let mut base = context(n.cb, n.received_at, n.reads);
                if let (Some((name, value)), Value::Object(m)) = (&n.extra, &mut base) {
                    m.insert((*name).to_string(), value.clone());
                }
                with_names(base, n.rule, n.action)
            }
            // Set when made; never reached.
            None => TemplateData::from(Value::Object(Map::new())),
        })
    }
}

/// `base` with `rule` and `action` set.
fn with_names(mut base: Value, rule: &str, action: &str) -> TemplateData {
    if let Value::Object(m) = &mut base {
        m.insert("rule".into(), Value::String(rule.into()));
        m.insert("action".into(), Value::String(action.into()));
    }
    TemplateData::from(base)
}

/// The data of one render, shared by every template of an action.
///
/// Handlebars takes it as it is; handing it a `Value` instead would make it
/// copy the whole context again for each template rendered.
pub type TemplateData = handlebars::Context;

#[cfg(test)]
mod tests;
