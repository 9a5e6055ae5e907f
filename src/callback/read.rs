//! Reading a callback's fields straight from the body's text, without
//! building a [`Value`](serde_json::Value) of it.
//!
//! [`Narrow`] holds the fields [`Callback::build`](super::Callback) reads.
//! The callback path fills it in a pass of its own ([`Narrow::read`]),
//! skipping everything else; a reader that needs more of the same body
//! (the pre-send endpoint, which also reads the message) fills it in its
//! own pass, key by key ([`Narrow::read_value`]), so the body is read once.
//!
//! Every field decodes exactly as it would from a `Value`: a key given
//! twice counts by its last value, and a JSON `null` is a value, not an
//! absent field.

use std::borrow::Cow;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Number;

use super::{Fields, Scalar};

/// A field decoded straight from the body's text, as [`Scalar`] reads it:
/// a string without escapes stays a slice of the body, and nothing else
/// is kept (an array or an object is only [`Checked`]).
pub enum Decoded<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    Null,
    Other,
}

impl Decoded<'_> {
    fn scalar(&self) -> Scalar<'_> {
        match self {
            Decoded::Str(s) => Scalar::Str(s),
            Decoded::Num(n) => Scalar::Num(n),
            Decoded::Null => Scalar::Null,
            Decoded::Other => Scalar::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Decoded<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Decoded<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Decoded::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Decoded::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Decoded::Str(Cow::Owned(s)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Decoded::Num(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Decoded::Num(n.into()))
            }
            // As a `Value` does: a float that is no JSON number is null.
            fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Number::from_f64(n).map_or(Decoded::Null, Decoded::Num))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Decoded::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Decoded::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                CheckedVisitor.visit_seq(a).map(|_| Decoded::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                CheckedVisitor.visit_map(a).map(|_| Decoded::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The visitor methods of the values a level does not read: any scalar
/// (a string's escapes already decoded by the parser) is `$value`.
macro_rules! scalars {
    ($value:expr) => {
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        $crate::callback::scalars!(not strings: $value);
    };
    (not strings: $value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

pub(crate) use scalars;

/// Any JSON value, walked to its end and kept nowhere. Unlike
/// `IgnoredAny`, which skips strings without decoding their escapes, every
/// string is decoded, so an invalid one anywhere (a lone surrogate
/// included) is an error, as it is for a `Value`.
pub struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

/// The visitor of [`Checked`], for readers that have started on a value.
pub struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    scalars!(Checked);
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        while a.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        while a.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// The top-level keys of a body that a callback reads, told apart without
/// copying them; `Payload` and `Other` are read by the reader itself.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(field_identifier)]
pub enum Key {
    #[serde(rename = "callId")]
    CallId,
    #[serde(rename = "security")]
    Security,
    #[serde(rename = "timestamp")]
    Timestamp,
    #[serde(rename = "chat_type")]
    ChatType,
    #[serde(rename = "eventType")]
    EventType,
    #[serde(rename = "appkey")]
    Appkey,
    #[serde(rename = "host")]
    Host,
    #[serde(rename = "from")]
    From,
    #[serde(rename = "to")]
    To,
    #[serde(rename = "msg_id")]
    MsgId,
    #[serde(rename = "event")]
    Event,
    // The fields of status and group callbacks (see `other_family`).
    #[serde(rename = "type")]
    Type,
    #[serde(rename = "operation")]
    Operation,
    #[serde(rename = "operator")]
    Operator,
    #[serde(rename = "reason")]
    Reason,
    #[serde(rename = "status")]
    Status,
    #[serde(rename = "user")]
    User,
    #[serde(rename = "payload")]
    Payload,
    #[serde(other)]
    Other,
}

/// How many keys of [`Key`] hold a field (all but `Payload` and `Other`,
/// which come last).
const FIELDS: usize = 17;
const _: () = assert!(Key::Payload as usize == FIELDS && Key::Other as usize == FIELDS + 1);

impl Key {
    /// The key of a field named `name`, as [`Fields::get`] asks for it.
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "callId" => Key::CallId,
            "security" => Key::Security,
            "timestamp" => Key::Timestamp,
            "chat_type" => Key::ChatType,
            "eventType" => Key::EventType,
            "appkey" => Key::Appkey,
            "host" => Key::Host,
            "from" => Key::From,
            "to" => Key::To,
            "msg_id" => Key::MsgId,
            "event" => Key::Event,
            "type" => Key::Type,
            "operation" => Key::Operation,
            "operator" => Key::Operator,
            "reason" => Key::Reason,
            "status" => Key::Status,
            "user" => Key::User,
            _ => return None,
        })
    }

    /// Where the field of this key is kept, when it is a field.
    fn slot(self) -> Option<usize> {
        let i = self as usize;
        (i < FIELDS).then_some(i)
    }
}

/// The fields of a body that a callback reads.
#[derive(Default)]
pub struct Narrow<'a> {
    /// By [`Key::slot`].
    values: [Option<Decoded<'a>>; FIELDS],
    /// `payload.operation`, when `payload` is an object that has one.
    operation: Option<Decoded<'a>>,
}

impl<'de> Narrow<'de> {
    /// The fields of a body, or `None` when it is not valid JSON or not an
    /// object. Everything but the fields is skipped unread.
    pub(super) fn read(text: &'de str) -> Option<Self> {
        serde_json::from_str::<ReadNarrow>(text).ok().map(|r| r.0)
    }

    /// Read the value of `key` from `a`, whose next value it is: the field
    /// it names (the last value counts when a key is given twice), or
    /// nothing when it names none (`Payload`, `Other`: for the caller to
    /// read). Whether it was read.
    pub fn read_value<A: MapAccess<'de>>(&mut self, key: Key, a: &mut A) -> Result<bool, A::Error> {
        let Some(slot) = key.slot() else {
            return Ok(false);
        };
        self.values[slot] = Some(a.next_value()?);
        Ok(true)
    }

    /// Set `payload.operation`, as read by the caller from the body's
    /// (last) `payload`.
    pub fn set_operation(&mut self, operation: Option<Decoded<'de>>) {
        self.operation = operation;
    }
}

impl Fields for Narrow<'_> {
    fn get(&self, key: &str) -> Option<Scalar<'_>> {
        let slot = Key::of(key)?.slot()?;
        self.values[slot].as_ref().map(Decoded::scalar)
    }

    fn operation(&self) -> Option<Scalar<'_>> {
        self.operation.as_ref().map(Decoded::scalar)
    }
}

/// The callback path's own pass: the fields, `payload.operation`, and
/// nothing else decoded.
struct ReadNarrow<'a>(Narrow<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for ReadNarrow<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReadNarrow<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut fields = Narrow::default();
                while let Some(key) = a.next_key::<Key>()? {
                    if fields.read_value(key, &mut a)? {
                        continue;
                    }
                    match key {
                        Key::Payload => {
                            let Payload { operation } = a.next_value()?;
                            fields.set_operation(operation);
                        }
                        _ => drop(a.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(ReadNarrow(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// `payload.operation`, the one field read inside `payload`, decoded in the
/// same pass as the rest of the body. Only an object has an `operation`;
/// whatever else `payload` is, it has none.
#[derive(Default)]
struct Payload<'a> {
    operation: Option<Decoded<'a>>,
}

/// The keys of `payload`, told apart without copying them.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum PayloadKey {
    Operation,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Payload<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Payload<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut operation = None;
                while let Some(key) = a.next_key::<PayloadKey>()? {
                    match key {
                        // Given twice, the last one counts, as in a `Value`.
                        PayloadKey::Operation => operation = Some(a.next_value::<Decoded>()?),
                        PayloadKey::Other => drop(a.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(Payload { operation })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Payload::default())
            }
            scalars!(Payload::default());
        }
        d.deserialize_any(V)
    }
}
