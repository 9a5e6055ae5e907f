//! The message of a pre-send request (SPEC §16), in either of the two
//! shapes Easemob sends its `payload` in — **flat** (`{"msg": "…",
//! "type": "txt", "ext": {…}}`) or **bodies** (`{"bodies": [{"type":
//! "txt", "msg": "…"}], "ext": {…}}`) — and the rewritten payload, in the
//! shape it came in.

use std::borrow::Cow;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::callback::{
    Callback, Checked, CheckedVisitor, Decoded, Key as TopKey, Narrow, ParseError, scalars,
};

/// How the payload was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Flat,
    Bodies,
    /// Not an object, or an empty `bodies`: nothing easehook can rewrite.
    Unknown,
}

/// What moderation rules look at in a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub shape: Shape,
    /// `txt`, `img`, `loc`, `audio`, `video`, `file`, `cmd`, `custom`,
    /// `combine`, or whatever else the request says.
    pub kind: Option<String>,
    /// The text of a txt message; `None` for any other.
    pub text: Option<String>,
    /// The message's `ext`, when it is an object.
    pub ext: Option<Map<String, Value>>,
}

impl Message {
    /// The message of the request `request` (its `payload`).
    pub fn of(request: &Value) -> Self {
        Parts::of(request).message()
    }

    /// The message of a request's body, read straight from its text; the
    /// same as [`Message::of`] on the parsed body, without building a
    /// [`Value`] of it. The whole body is checked to be valid JSON, every
    /// string decoded: an invalid escape anywhere in it, a lone surrogate
    /// included, is an error, as it is for a `Value`.
    pub fn read(body: &str) -> Result<Self, serde_json::Error> {
        let top: Top = serde_json::from_str(body)?;
        Ok(top.parts.message())
    }

    /// The message and the callback of a pre-send request's body, read in
    /// one pass: the same as [`Message::read`] and [`Callback::parse`] of
    /// `body`, and refused as the first of them refuses it.
    pub fn read_request(body: &Arc<str>) -> Result<(Self, Callback), ParseError> {
        let top: Top = serde_json::from_str(body).map_err(|_| ParseError::Malformed)?;
        if !top.object {
            return Err(ParseError::NotObject);
        }
        let callback = Callback::from_narrow(&top.fields, body)?;
        Ok((top.parts.message(), callback))
    }

    fn unknown() -> Self {
        Self {
            shape: Shape::Unknown,
            kind: None,
            text: None,
            ext: None,
        }
    }

    /// Whether rules may rewrite this message: not a cmd message, and a
    /// payload easehook understands.
    pub fn rewritable(&self) -> bool {
        self.shape != Shape::Unknown && self.kind.as_deref() != Some("cmd")
    }

    /// The answer's `payload` for this message as it now stands (text and
    /// ext possibly rewritten), built from the request's own payload in
    /// its own shape.
    pub fn payload(&self, request: &Value) -> Value {
        let original = request
            .get("payload")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match self.shape {
            Shape::Flat => {
                let mut out = original;
                if let Some(text) = &self.text {
                    out.insert("msg".into(), Value::String(text.clone()));
                }
                if let Some(ext) = &self.ext {
                    out.insert("ext".into(), Value::Object(ext.clone()));
                }
                Value::Object(out)
            }
            Shape::Bodies | Shape::Unknown => {
                let mut bodies = original.get("bodies").cloned().unwrap_or(Value::Null);
                if let (Some(text), Some(first)) =
                    (&self.text, bodies.get_mut(0).and_then(Value::as_object_mut))
                {
                    first.insert("msg".into(), Value::String(text.clone()));
                }
                let mut out = Map::new();
                out.insert("bodies".into(), bodies);
                if let Some(ext) = &self.ext {
                    out.insert("ext".into(), Value::Object(ext.clone()));
                }
                Value::Object(out)
            }
        }
    }
}

/// What a message is made of, read from a [`Value`] or from the body's
/// text: the fields of `payload`, and of the first of its `bodies`.
#[derive(Default)]
struct Parts<'a> {
    /// Whether `payload` is an object; nothing else counts when it is not.
    object: bool,
    /// `payload`'s own fields: the message of the flat shape.
    flat: BodyFields<'a>,
    /// `payload.ext`, when it is an object.
    ext: Option<Map<String, Value>>,
    bodies: Bodies<'a>,
    /// `operation`, which the callback reads from a payload.
    operation: Option<Decoded<'a>>,
}

/// The fields of a message body that moderation reads.
#[derive(Default)]
struct BodyFields<'a> {
    /// `type`, when it is a string.
    kind: Option<Cow<'a, str>>,
    /// `msg`, when it is a string.
    msg: Option<Cow<'a, str>>,
    /// Whether `subType` is `sub_combine`.
    sub_combine: bool,
}

/// `payload.bodies`.
#[derive(Default)]
enum Bodies<'a> {
    #[default]
    Absent,
    /// Not an array, an empty one, or one whose first item is no object.
    Unusable,
    First(BodyFields<'a>),
}

impl<'a> Parts<'a> {
    fn of(request: &'a Value) -> Self {
        let Some(payload) = request.get("payload").and_then(Value::as_object) else {
            return Self::default();
        };
        let bodies = match payload.get("bodies") {
            None => Bodies::Absent,
            Some(Value::Array(b)) => match b.first().and_then(Value::as_object) {
                Some(first) => Bodies::First(BodyFields::of(first)),
                None => Bodies::Unusable,
            },
            Some(_) => Bodies::Unusable,
        };
        Self {
            object: true,
            flat: BodyFields::of(payload),
            ext: payload.get("ext").and_then(Value::as_object).cloned(),
            bodies,
            operation: None,
        }
    }

    fn message(self) -> Message {
        if !self.object {
            return Message::unknown();
        }
        let (shape, body) = match &self.bodies {
            Bodies::Absent => (Shape::Flat, &self.flat),
            Bodies::First(first) => (Shape::Bodies, first),
            Bodies::Unusable => {
                return Message {
                    ext: self.ext,
                    ..Message::unknown()
                };
            }
        };
        let kind = match &body.kind {
            Some(k) => Some(k.to_string()),
            // A combined message may come with no type, only its subType.
            None => (body.sub_combine || self.flat.sub_combine).then(|| "combine".to_string()),
        };
        let text = match (kind.as_deref(), &body.msg) {
            (Some("txt"), Some(msg)) => Some(msg.to_string()),
            _ => None,
        };
        Message {
            shape,
            kind,
            text,
            ext: self.ext,
        }
    }
}

impl<'a> BodyFields<'a> {
    fn of(o: &'a Map<String, Value>) -> Self {
        Self {
            kind: o.get("type").and_then(Value::as_str).map(Cow::Borrowed),
            msg: o.get("msg").and_then(Value::as_str).map(Cow::Borrowed),
            sub_combine: o.get("subType").and_then(Value::as_str) == Some("sub_combine"),
        }
    }
}

// Reading the parts from the body's text: a visitor for each level, the
// callback's fields read by `Narrow`, and `Checked` for everything else, so
// that a key given twice counts as in a `Value` (the last one) and all of
// the body is checked.

/// A string, borrowed from the body when it has no escapes; `None` for
/// any other value (checked all the same).
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(s))))
            }
            scalars!(not strings: MaybeStr(None));
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                CheckedVisitor.visit_seq(a).map(|_| MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                CheckedVisitor.visit_map(a).map(|_| MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys read in a payload or a message body, told apart without
/// copying.
#[derive(serde::Deserialize)]
#[serde(field_identifier)]
enum Key {
    /// The callback's `payload.operation`.
    #[serde(rename = "operation")]
    Operation,
    #[serde(rename = "type")]
    Type,
    #[serde(rename = "msg")]
    Msg,
    #[serde(rename = "subType")]
    SubType,
    #[serde(rename = "ext")]
    Ext,
    #[serde(rename = "bodies")]
    Bodies,
    #[serde(other)]
    Other,
}

/// The body: its `payload`, the callback's fields, and every other field
/// checked. `object` is whether the body is an object at all.
struct Top<'a> {
    parts: Parts<'a>,
    fields: Narrow<'a>,
    object: bool,
}

impl<'a> Top<'a> {
    fn not_object() -> Self {
        Top {
            parts: Parts::default(),
            fields: Narrow::default(),
            object: false,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut top = Top {
                    object: true,
                    ..Top::not_object()
                };
                while let Some(key) = a.next_key::<TopKey>()? {
                    if top.fields.read_value(key, &mut a)? {
                        continue;
                    }
                    if key == TopKey::Payload {
                        top.parts = a.next_value::<Object>()?.0;
                        top.fields.set_operation(top.parts.operation.take());
                    } else {
                        a.next_value::<Checked>()?;
                    }
                }
                Ok(top)
            }
            // Not an object: no message (and no callback either).
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                CheckedVisitor.visit_seq(a).map(|_| Top::not_object())
            }
            scalars!(Top::not_object());
        }
        d.deserialize_any(V)
    }
}

/// A payload, or a message body: [`Parts`] with `object` set when it is an
/// object (a body uses only its `flat` fields).
struct Object<'a>(Parts<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut p = Parts {
                    object: true,
                    ..Parts::default()
                };
                while let Some(key) = a.next_key::<Key>()? {
                    match key {
                        Key::Type => p.flat.kind = a.next_value::<MaybeStr>()?.0,
                        Key::Msg => p.flat.msg = a.next_value::<MaybeStr>()?.0,
                        Key::SubType => {
                            let sub = a.next_value::<MaybeStr>()?.0;
                            p.flat.sub_combine = sub.as_deref() == Some("sub_combine");
                        }
                        Key::Ext => {
                            p.ext = match a.next_value::<Value>()? {
                                Value::Object(o) => Some(o),
                                _ => None,
                            }
                        }
                        Key::Bodies => p.bodies = a.next_value::<BodiesField>()?.0,
                        Key::Operation => p.operation = Some(a.next_value()?),
                        Key::Other => {
                            a.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(Object(p))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                CheckedVisitor
                    .visit_seq(a)
                    .map(|_| Object(Parts::default()))
            }
            scalars!(Object(Parts::default()));
        }
        d.deserialize_any(V)
    }
}

/// `payload.bodies`: the first item's fields, the rest checked.
struct BodiesField<'a>(Bodies<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for BodiesField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BodiesField<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let first = match a.next_element::<Object>()? {
                    Some(Object(p)) if p.object => Bodies::First(p.flat),
                    _ => Bodies::Unusable,
                };
                while a.next_element::<Checked>()?.is_some() {}
                Ok(BodiesField(first))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                CheckedVisitor
                    .visit_map(a)
                    .map(|_| BodiesField(Bodies::Unusable))
            }
            scalars!(BodiesField(Bodies::Unusable));
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_shapes_give_the_same_message() {
        let flat =
            Message::of(&json!({"payload": {"msg": "hi", "type": "txt", "ext": {"a": "1"}}}));
        let bodies = Message::of(
            &json!({"payload": {"bodies": [{"type": "txt", "msg": "hi"}],
            "ext": {"a": "1"}, "from": "a", "to": "b", "type": "chat"}}),
        );
        assert_eq!(flat.kind.as_deref(), Some("txt"));
        assert_eq!(flat.text.as_deref(), Some("hi"));
        assert_eq!((bodies.kind, bodies.text), (flat.kind, flat.text));
        assert_eq!(bodies.ext, flat.ext);
        assert_eq!(bodies.shape, Shape::Bodies);
    }

    #[test]
    fn only_txt_has_text_and_combine_may_have_no_type() {
        let img = Message::of(&json!({"payload": {"type": "img", "url": "u", "msg": "x"}}));
        assert_eq!((img.kind.as_deref(), img.text), (Some("img"), None));
        let c = Message::of(&json!({"payload": {"subType": "sub_combine", "title": "t"}}));
        assert_eq!(c.kind.as_deref(), Some("combine"));
        let cmd = Message::of(&json!({"payload": {"type": "cmd", "action": "x"}}));
        assert!(!cmd.rewritable());
    }

    #[test]
    fn payloads_easehook_does_not_know_are_messages_without_fields() {
        for p in [
            json!({"payload": "text"}),
            json!({"payload": [1, 2]}),
            json!({"payload": {"bodies": []}}),
            json!({"payload": {"bodies": "x"}}),
            json!({}),
        ] {
            let m = Message::of(&p);
            assert_eq!(
                (m.kind, m.text, m.shape),
                (None, None, Shape::Unknown),
                "{p}"
            );
        }
    }

    #[test]
    fn the_rewritten_payload_keeps_its_shape() {
        let req = json!({"payload": {"msg": "bad", "type": "txt"}});
        let mut m = Message::of(&req);
        m.text = Some("***".into());
        assert_eq!(m.payload(&req), json!({"msg": "***", "type": "txt"}));
        let req =
            json!({"payload": {"bodies": [{"type": "txt", "msg": "bad"}], "from": "a", "to": "b"}});
        let mut m = Message::of(&req);
        m.text = Some("***".into());
        m.ext = Some(Map::from_iter([("reviewed".to_string(), json!("1"))]));
        assert_eq!(
            m.payload(&req),
            json!({"bodies": [{"type": "txt", "msg": "***"}], "ext": {"reviewed": "1"}})
        );
    }
}
