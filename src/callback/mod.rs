//! One Easemob callback: the typed fields that easehook uses, the raw JSON as
//! received, and the values derived from them once per event (`from_user`,
//! `to_user`, `event`, the dedup key).
//!
//! Parsing is lenient about what it does not need (unknown families, extra
//! fields, missing optional fields) and strict about what verification needs
//! (`callId`, `security`, `timestamp`).

use std::sync::{Arc, OnceLock};

use compact_str::ToCompactString;
use md5::{Digest, Md5};
use serde_json::{Map, Number, Value};

mod read;

pub(crate) use read::scalars;
pub use read::{Checked, CheckedVisitor, Decoded, Key, Narrow};

/// Why a body is not a usable callback. Every variant answers 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not valid JSON")]
    Malformed,
    #[error("body is not a JSON object")]
    NotObject,
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{0}` must be a string")]
    NotString(&'static str),
    #[error("timestamp must be a non-negative integer of milliseconds")]
    BadTimestamp,
}

pub use crate::Text;

/// A parsed callback.
#[derive(Debug, Clone)]
pub struct Callback {
    /// The whole callback as JSON, parsed from `body` when first asked for
    /// (see [`Callback::raw`]).
    raw: OnceLock<Value>,
    /// The body it was parsed from, when it came as bytes.
    body: Option<Arc<str>>,
    pub call_id: Text,
    pub security: Text,
    /// Milliseconds since the epoch.
    pub timestamp: u64,
    /// The timestamp as its decimal digits, exactly as signed.
    pub timestamp_text: Text,
    pub chat_type: Option<Text>,
    pub operation: Option<Text>,
    pub event_type: Option<Text>,
    pub appkey: Option<Text>,
    pub host: Option<Text>,
    pub from: Option<Text>,
    pub to: Option<Text>,
    pub msg_id: Option<Text>,
    /// `from` without the `{appkey}_` prefix and `@easemob.com` suffix.
    pub from_user: Text,
    /// `to`, normalized like `from_user`.
    pub to_user: Text,
    /// `roster:ban`, `chat`, … (see [`event_name`]).
    pub event: Text,
    /// Whether this is a recorded pre-send verdict (its body's `event` is
    /// `presend:…`).
    presend: bool,
    /// [`Callback::dedup_key`], made when first asked for: a pre-send
    /// answer never needs it.
    dedup: OnceLock<String>,
}

/// The family of recorded pre-send verdicts: `presend:reject`, … .
pub const PRESEND_PREFIX: &str = "presend:";

/// The eight roster operations, in the order samples are shown.
pub const ROSTER_OPERATIONS: [&str; 8] = [
    "add",
    "remove",
    "accept",
    "remote_accept",
    "decline",
    "remote_decline",
    "ban",
    "allow",
];

/// The users of a stored callback as rules see them (`from_user`,
/// `to_user`): the API shows no signature, so a placeholder stands in for it.
pub fn users(callback: &Value) -> (String, String) {
    match unsigned(callback.clone()) {
        Ok(cb) => (cb.from_user.to_string(), cb.to_user.to_string()),
        Err(_) => Default::default(),
    }
}

/// A callback written by hand (a dry run, a rule test), with what only
/// verification needs filled in where it is missing: a placeholder
/// `security`, `timestamp` now, and a `callId` from the appkey.
pub fn unsigned(mut raw: Value) -> Result<Callback, String> {
    let Some(obj) = raw.as_object_mut() else {
        return Err("a callback is a JSON object".into());
    };
    obj.entry("security")
        .or_insert_with(|| Value::String("unsigned".into()));
    obj.entry("timestamp")
        .or_insert_with(|| Value::from(crate::now_ms()));
    if !obj.contains_key("callId") {
        let appkey = obj
            .get("appkey")
            .and_then(Value::as_str)
            .unwrap_or("test#app")
            .to_string();
        obj.insert("callId".into(), Value::String(format!("{appkey}_0")));
    }
    Callback::from_value(raw).map_err(|e| e.to_string())
}

impl Callback {
    /// Parse a request body.
    ///
    /// Only the fields easehook reads are decoded here; the whole body is
    /// parsed into a [`Value`] when something first needs it (a rule on a
    /// dotted path, a template), which on the request path is rarely. The
    /// result is the same as [`Callback::from_value`] on the parsed body:
    /// any body the narrow parse does not take (not an object, a key given
    /// twice) goes the long way.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let text: Arc<str> = std::str::from_utf8(body)
            .map_err(|_| ParseError::Malformed)?
            .into();
        Self::parse_text(text, Signature::Required)
    }

    /// [`Callback::parse`] of a recorded pre-send verdict, which is stored
    /// without the request's signature (SPEC §16): a missing `security`
    /// reads as a placeholder, as in [`unsigned`].
    pub fn parse_unsigned(text: Arc<str>) -> Result<Self, ParseError> {
        Self::parse_text(text, Signature::Optional)
    }

    fn parse_text(text: Arc<str>, signature: Signature) -> Result<Self, ParseError> {
        // A struct also deserializes from a JSON array, field by field:
        // only an object may take the narrow path.
        let object = text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{');
        if object && let Some(fields) = Narrow::read(&text) {
            let mut cb = Self::build(&fields, signature)?;
            cb.body = Some(text);
            return Ok(cb);
        }
        let raw: Value = serde_json::from_str(&text).map_err(|_| ParseError::Malformed)?;
        let obj = raw.as_object().ok_or(ParseError::NotObject)?;
        let mut cb = Self::build(obj, signature)?;
        // The text is the body: `raw` is parsed again when asked for.
        cb.body = Some(text);
        Ok(cb)
    }

    /// A callback of the fields `fields`, read by the caller from `text`
    /// in a pass of its own (see [`Narrow::read_value`]): the same as
    /// [`Callback::parse`] of `text`.
    pub fn from_narrow(fields: &Narrow<'_>, text: &Arc<str>) -> Result<Self, ParseError> {
        let mut cb = Self::build(fields, Signature::Required)?;
        cb.body = Some(text.clone());
        Ok(cb)
    }

    /// Build from already-parsed JSON (dry runs, tests).
    pub fn from_value(raw: Value) -> Result<Self, ParseError> {
        let obj = raw.as_object().ok_or(ParseError::NotObject)?;
        let mut cb = Self::build(obj, Signature::Required)?;
        cb.raw = OnceLock::from(raw);
        Ok(cb)
    }

    /// The whole callback as received, taken: no copy when it was parsed
    /// already.
    pub fn into_raw(mut self) -> Value {
        match self.raw.take() {
            Some(raw) => raw,
            None => self.raw().clone(),
        }
    }

    /// The whole callback as received.
    pub fn raw(&self) -> &Value {
        self.raw.get_or_init(|| {
            self.body
                .as_deref()
                // It parsed once already; Null is for the impossible.
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or(Value::Null)
        })
    }

    /// The callback as JSON text: the body exactly as received when it
    /// came as bytes (shared, not copied), else [`Callback::raw`] written out.
    pub fn text(&self) -> Arc<str> {
        match &self.body {
            Some(b) => b.clone(),
            None => self.raw().to_string().into(),
        }
    }

    /// Everything but `raw` and `body`, from the callback's fields.
    fn build(obj: &impl Fields, signature: Signature) -> Result<Self, ParseError> {
        let call_id = required_str(obj, "callId")?;
        let security = match (required_str(obj, "security"), signature) {
            (Err(ParseError::Missing(_)), Signature::Optional) => Text::new("unsigned"),
            (security, _) => security?,
        };
        let (timestamp, timestamp_text) = match obj.get("timestamp") {
            None | Some(Scalar::Null) => return Err(ParseError::Missing("timestamp")),
            Some(Scalar::Num(n)) => {
                let t = n.as_u64().ok_or(ParseError::BadTimestamp)?;
                (t, t.to_compact_string())
            }
            Some(Scalar::Str(s)) => {
                if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::BadTimestamp);
                }
                (
                    s.parse().map_err(|_| ParseError::BadTimestamp)?,
                    Text::new(s),
                )
            }
            Some(Scalar::Other) => return Err(ParseError::BadTimestamp),
        };
        let chat_type = optional_str(obj, "chat_type");
        let mut operation = obj.operation().and_then(scalar_text);
        let event_type = optional_str(obj, "eventType");
        let appkey = optional_str(obj, "appkey");
        let from = optional_str(obj, "from");
        let to = optional_str(obj, "to");
        let mut from_user = from
            .as_deref()
            .map_or_else(Text::default, |f| normalize_user(f, appkey.as_deref()));
        let to_user = to
            .as_deref()
            .map_or_else(Text::default, |t| normalize_user(t, appkey.as_deref()));
        let body_event = optional_str(obj, "event");
        // A recorded pre-send verdict names its event (SPEC §16).
        let presend = body_event
            .as_deref()
            .filter(|e| e.starts_with(PRESEND_PREFIX))
            .map(Text::new);
        let event = match other_family(obj, chat_type.is_some(), body_event.as_deref()) {
            _ if presend.is_some() => presend.clone().expect("checked"),
            Some(f) => {
                if let Some(user) = f.user {
                    from_user = normalize_user(&user, appkey.as_deref());
                }
                if f.operation.is_some() {
                    operation = f.operation;
                }
                f.event
            }
            None => event_name(
                chat_type.as_deref(),
                operation.as_deref(),
                body_event.as_deref(),
                event_type.as_deref(),
            ),
        };
        Ok(Callback {
            call_id,
            security,
            timestamp,
            timestamp_text,
            chat_type,
            operation,
            event_type,
            appkey,
            host: optional_str(obj, "host"),
            from,
            to,
            msg_id: optional_str(obj, "msg_id"),
            from_user,
            to_user,
            event,
            presend: presend.is_some(),
            dedup: OnceLock::new(),
            raw: OnceLock::new(),
            body: None,
        })
    }

    /// Identifies a repeat of the same event (see [`dedup_key`]).
    pub fn dedup_key(&self) -> &str {
        self.dedup.get_or_init(|| {
            let mut key = dedup_key(
                &self.call_id,
                self.chat_type.as_deref(),
                self.event_type.as_deref(),
                self.from.as_deref(),
                self.to.as_deref(),
                self.operation.as_deref(),
            );
            if self.presend {
                // Apart from the post-send callback of the same message.
                key.insert_str(0, PRESEND_PREFIX);
            }
            key
        })
    }

    /// The appkey whose secrets verify this callback: `appkey`, else the part
    /// of `callId` before its last `_`, else empty (only `"*"` can match).
    pub fn signing_appkey(&self) -> &str {
        if let Some(a) = self.appkey.as_deref() {
            return a;
        }
        match self.call_id.rfind('_') {
            Some(i) if self.call_id[..i].contains('#') => &self.call_id[..i],
            _ => "",
        }
    }
}

/// Whether a callback must carry its `security`.
#[derive(Clone, Copy)]
enum Signature {
    Required,
    Optional,
}

/// A field as [`Callback::build`] reads it: the text of a string or a
/// number, or only what else it is.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Str(&'a str),
    Num(&'a Number),
    Null,
    /// `true`, `false`, an array or an object.
    Other,
}

impl<'a> From<&'a Value> for Scalar<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::String(s) => Scalar::Str(s),
            Value::Number(n) => Scalar::Num(n),
            Value::Null => Scalar::Null,
            _ => Scalar::Other,
        }
    }
}

/// Where [`Callback::build`] reads the fields of a callback from.
trait Fields {
    /// A top-level field.
    fn get(&self, key: &str) -> Option<Scalar<'_>>;
    /// `payload.operation`.
    fn operation(&self) -> Option<Scalar<'_>>;
}

impl Fields for Map<String, Value> {
    fn get(&self, key: &str) -> Option<Scalar<'_>> {
        Map::get(self, key).map(Scalar::from)
    }

    fn operation(&self) -> Option<Scalar<'_>> {
        Map::get(self, "payload")
            .and_then(|p| p.get("operation"))
            .map(Scalar::from)
    }
}

/// Follow a dotted path into JSON; list items are addressed by index.
pub fn lookup_path<'a, 'p>(
    root: &'a Value,
    path: impl IntoIterator<Item = &'p str>,
) -> Option<&'a Value> {
    let mut cur = root;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A JSON value as rules compare it: strings as themselves, everything else as
/// its JSON text.
pub fn value_text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

fn required_str(obj: &impl Fields, key: &'static str) -> Result<Text, ParseError> {
    match obj.get(key) {
        None | Some(Scalar::Null) => Err(ParseError::Missing(key)),
        Some(Scalar::Str("")) => Err(ParseError::Missing(key)),
        Some(Scalar::Str(s)) => Ok(Text::new(s)),
        Some(_) => Err(ParseError::NotString(key)),
    }
}

/// Strings as they are; numbers as their digits (some ids arrive as numbers);
/// anything else is treated as absent.
fn optional_str(obj: &impl Fields, key: &str) -> Option<Text> {
    obj.get(key).and_then(scalar_text)
}

fn scalar_text(v: Scalar<'_>) -> Option<Text> {
    match v {
        Scalar::Str(s) => Some(Text::new(s)),
        Scalar::Num(n) => Some(n.to_compact_string()),
        Scalar::Null | Scalar::Other => None,
    }
}

/// `{appkey}_{userid}@easemob.com` → `userid`; a plain id stays as it is.
pub fn normalize_user(raw: &str, appkey: Option<&str>) -> Text {
    let s = raw.strip_suffix("@easemob.com").unwrap_or(raw);
    if let Some(appkey) = appkey.filter(|a| !a.is_empty())
        && let Some(rest) = s.strip_prefix(appkey).and_then(|r| r.strip_prefix('_'))
    {
        return Text::new(rest);
    }
    // An appkey is `org#app` and neither part contains `_`, so the first `_`
    // after the `#` ends the prefix even when the body's appkey is missing.
    if let Some(hash) = s.find('#')
        && let Some(us) = s[hash..].find('_')
    {
        return Text::new(&s[hash + us + 1..]);
    }
    Text::new(s)
}

/// The event name rules match on: `chat_type:operation` when both exist,
/// else `chat_type`, else the body's `event` or `eventType`, else `unknown`.
pub fn event_name(
    chat_type: Option<&str>,
    operation: Option<&str>,
    event: Option<&str>,
    event_type: Option<&str>,
) -> Text {
    match (
        chat_type.filter(|s| !s.is_empty()),
        operation.filter(|s| !s.is_empty()),
    ) {
        (Some(c), Some(o)) => {
            let mut name = Text::with_capacity(c.len() + 1 + o.len());
            name.push_str(c);
            name.push(':');
            name.push_str(o);
            name
        }
        (Some(c), None) => Text::new(c),
        _ => event
            .or(event_type)
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .into(),
    }
}

/// The event of a family whose name is not `chat_type:operation` (SPEC §12).
struct OtherFamily {
    event: Text,
    /// The user it is about, as the callback writes it.
    user: Option<Text>,
    operation: Option<Text>,
}

/// A status callback (no `chat_type`, a `status` and a `reason`) is
/// `user:{reason}` about its `user`, without the resource after `/`; a group
/// event of the newer form (`"event": "group_op_event"`) is
/// `{type}:{operation}` in lower case, by its `operator`.
fn other_family(
    obj: &impl Fields,
    has_chat_type: bool,
    event: Option<&str>,
) -> Option<OtherFamily> {
    if has_chat_type {
        return None;
    }
    let field = |k| optional_str(obj, k).filter(|s| !s.is_empty());
    if event == Some("group_op_event") {
        let (kind, op) = (field("type")?, field("operation")?);
        let op = Text::from(op.to_lowercase());
        return Some(OtherFamily {
            event: format!("{}:{op}", kind.to_lowercase()).into(),
            user: field("operator"),
            operation: Some(op),
        });
    }
    let (reason, _status) = (field("reason")?, field("status")?);
    Some(OtherFamily {
        event: format!("user:{reason}").into(),
        user: field("user").map(|u| u.split('/').next().unwrap_or_default().into()),
        operation: None,
    })
}

/// `callId` alone is not unique (`accept` and `remote_accept` share it, and
/// `chat_offline` sends one callback per recipient), so the key also covers
/// the family, the delivery kind, both users and the operation: the key is
/// `{callId}/{md5 of all six}`.
fn dedup_key(
    call_id: &str,
    chat_type: Option<&str>,
    event_type: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    operation: Option<&str>,
) -> String {
    let parts = [Some(call_id), chat_type, event_type, from, to, operation];
    // Hashed in one piece: MD5 takes small pieces one by one at a cost.
    let mut input = Vec::with_capacity(parts.iter().map(|p| p.map_or(0, str::len) + 2).sum());
    for part in parts {
        // A separator that cannot occur in JSON strings' decoded text of ids
        // keeps ("a","bc") and ("ab","c") apart; absence differs from empty.
        match part {
            Some(p) => {
                input.push(1u8);
                input.extend_from_slice(p.as_bytes());
            }
            None => input.push(0u8),
        }
        input.push(0x1f);
    }
    let h = Md5::new_with_prefix(&input);
    // The key starts with the callId, so that keys are stored in time
    // order: Easemob's callIds are `{appkey}_{msg_id}` and its message ids
    // grow with time, so a new key lands at the right edge of the store's
    // index (a page every commit touches anyway) instead of on a random
    // page. The hash after the `/` is what tells events apart.
    let mut prefix = call_id.len().min(DEDUP_PREFIX_MAX);
    while !call_id.is_char_boundary(prefix) {
        prefix -= 1;
    }
    let mut hash = [0u8; 32];
    // 16 bytes always fit 32 hex digits, which are ASCII.
    let _ = hex::encode_to_slice(h.finalize(), &mut hash);
    let mut key = String::with_capacity(prefix + 33);
    key.push_str(&call_id[..prefix]);
    key.push('/');
    key.push_str(std::str::from_utf8(&hash).unwrap_or_default());
    key
}

/// The hash at the end of a dedup key: the whole key as versions before the
/// `callId` prefix wrote it.
pub fn dedup_hash(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, hash)| hash)
}

/// At most this many bytes of `callId` begin a dedup key (Easemob's are
/// about 40); the hash covers all of it.
const DEDUP_PREFIX_MAX: usize = 64;

#[cfg(test)]
mod tests;
