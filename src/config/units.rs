//! Human-written durations (`500ms`, `10s`, `5m`, `24h`, `7d`) and sizes
//! (`65536`, `64KiB`, `1MiB`), as they appear in configuration and rule files.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration written like `500ms`, `10s`, `5m`, `24h` or `7d`; `0` alone is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(t)
            .map(Self)
            .map_err(|_| format!("invalid duration {s:?}: write it like 500ms, 10s, 5m, 24h or 7d"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 500ms, 10s, 5m, 24h or 7d")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: give a unit, like {v}s or {v}ms"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom("a duration cannot be negative")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A moment as a command line or query gives it, in ms since the epoch:
/// milliseconds, an RFC 3339 time, or a duration before `now_ms` (`24h`).
pub fn instant(s: &str, now_ms: u64) -> Option<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Some(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis().max(0) as u64);
    }
    HumanDuration::parse(s)
        .ok()
        .map(|d| now_ms.saturating_sub(d.0.as_millis() as u64))
}

/// A size in bytes: a plain number or one with a unit (`64KiB`, `1MiB`, `1MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Self(b.as_u64()))
            .map_err(|_| format!("invalid size {s:?}: write it like 65536, 64KiB or 1MiB"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like 65536, 64KiB or 1MiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            HumanDuration::parse("7d").unwrap().0,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(HumanDuration::parse("0s").unwrap().0, Duration::ZERO);
        assert_eq!(HumanDuration::parse("0").unwrap().0, Duration::ZERO);
        assert!(HumanDuration::parse("10").is_err());
        assert!(HumanDuration::parse("soon").is_err());
        let d: HumanDuration = serde_yaml::from_str("24h").unwrap();
        assert_eq!(d.0, Duration::from_secs(86400));
        assert!(serde_yaml::from_str::<HumanDuration>("15").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64KiB").unwrap().0, 65536);
        assert_eq!(ByteSize::parse("1MiB").unwrap().0, 1 << 20);
        assert_eq!(ByteSize::parse("65536").unwrap().0, 65536);
        assert!(ByteSize::parse("lots").is_err());
        let s: ByteSize = serde_yaml::from_str("65536").unwrap();
        assert_eq!(s.0, 65536);
    }
}

/// A number that may also be written as a string, as it is after `${…}`
/// expansion (`port: ${SMTP_PORT:-587}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Num<T>(pub T);

impl<'de, T> Deserialize<'de> for Num<T>
where
    T: std::str::FromStr + TryFrom<u64>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: std::str::FromStr + TryFrom<u64>> Visitor<'_> for V<T> {
            type Value = Num<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::try_from(v)
                    .map(Num)
                    .map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("{v} is out of range"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.trim()
                    .parse::<T>()
                    .map(Num)
                    .map_err(|_| E::custom(format!("{v:?} is not a whole number in range")))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// In the editor schema (`easehook schema`): a duration like `10s`, or `0`.
impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration like 500ms, 10s, 5m, 24h or 7d (0 alone is zero)",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*(0|[0-9]+\\s*[a-zA-Zµ]+.*|.*\\$\\{.*)$"},
                {"const": 0}
            ]
        })
    }
}

/// In the editor schema: a size like `64KiB`, or a number of bytes.
impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size in bytes: 65536, 64KiB, 1MiB or 1MB",
            "type": ["string", "integer"]
        })
    }
}

/// In the editor schema: a whole number, or a string (as `${…}` expands).
impl<T> schemars::JsonSchema for Num<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WholeNumber".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A whole number (a string such as ${PORT:-587} works too)",
            "type": ["integer", "string"]
        })
    }
}

/// In the editor schema: a value of `T`, or a `${…}` reference that
/// expands to one (`tls: ${SMTP_TLS:-starttls}`).
pub struct Expandable<T>(std::marker::PhantomData<T>);

impl<T: schemars::JsonSchema> schemars::JsonSchema for Expandable<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Expandable{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let inner = generator.subschema_for::<T>();
        schemars::json_schema!({
            "anyOf": [inner, {"type": "string", "pattern": "\\$\\{"}]
        })
    }
}
