//! The message of a pre-send request (SPEC §16), in either of the two
//! shapes Easemob sends its `payload` in — **flat** (`{"msg": "…",
//! "type": "txt", "ext": {…}}`) or **bodies** (`{"bodies": [{"type":
//! "txt", "msg": "…"}], "ext": {…}}`) — and the rewritten payload, in the
//! shape it came in.

use serde_json::{Map, Value};

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
        let Some(payload) = request.get("payload").and_then(Value::as_object) else {
            return Self::unknown();
        };
        let ext = payload.get("ext").and_then(Value::as_object).cloned();
        let (shape, body) = match payload.get("bodies") {
            Some(Value::Array(bodies)) => match bodies.first().and_then(Value::as_object) {
                Some(first) => (Shape::Bodies, first),
                None => {
                    return Self {
                        ext,
                        ..Self::unknown()
                    };
                }
            },
            Some(_) => {
                return Self {
                    ext,
                    ..Self::unknown()
                };
            }
            None => (Shape::Flat, payload),
        };
        let kind = body
            .get("type")
            .or_else(|| payload.get("type").filter(|_| shape == Shape::Flat))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                // A combined message may come with no type, only its subType.
                let sub = |o: &Map<String, Value>| {
                    o.get("subType").and_then(Value::as_str) == Some("sub_combine")
                };
                (sub(body) || sub(payload)).then(|| "combine".to_string())
            });
        let text = (kind.as_deref() == Some("txt"))
            .then(|| body.get("msg").and_then(Value::as_str).map(str::to_string))
            .flatten();
        Self {
            shape,
            kind,
            text,
            ext,
        }
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
