//! The helpers templates may call beyond Handlebars' own: `datetime`,
//! `json`, `default`, `upper`/`lower`, `truncate`.

use chrono::{DateTime, TimeZone, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value;

pub(super) fn param<'a>(
    h: &'a Helper,
    idx: usize,
    helper: &'static str,
) -> Result<&'a Value, RenderError> {
    match h.param(idx) {
        Some(p) if !p.is_value_missing() => Ok(p.value()),
        Some(p) => Err(RenderErrorReason::MissingVariable(p.relative_path().cloned()).into()),
        None => Err(RenderErrorReason::ParamNotFoundForIndex(helper, idx).into()),
    }
}

pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `{{datetime ms [format="%Y-%m-%d %H:%M:%S"] [tz="Asia/Shanghai"]}}`: a time
/// given as milliseconds (number or digits) or an RFC 3339 string.
pub(super) struct DateTimeHelper {
    pub(super) tz: chrono_tz::Tz,
}

impl HelperDef for DateTimeHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = param(h, 0, "datetime")?;
        let when: DateTime<Utc> = match v {
            Value::Number(n) => n
                .as_i64()
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<i64>()
                .ok()
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            Value::String(s) => DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            _ => None,
        }
        .ok_or_else(|| {
            RenderErrorReason::Other(format!(
                "datetime: {v} is not a time in milliseconds or RFC 3339"
            ))
        })?;
        let format = match h.hash_get("format") {
            Some(f) => text_of(f.value()),
            None => "%Y-%m-%d %H:%M:%S".to_string(),
        };
        let tz = match h.hash_get("tz") {
            Some(t) => {
                let name = text_of(t.value());
                name.parse::<chrono_tz::Tz>().map_err(|_| {
                    RenderErrorReason::Other(format!("datetime: unknown time zone {name:?}"))
                })?
            }
            None => self.tz,
        };
        let items = chrono::format::StrftimeItems::new(&format)
            .parse()
            .map_err(|_| {
                RenderErrorReason::Other(format!("datetime: invalid format {format:?}"))
            })?;
        let mut out = String::new();
        use std::fmt::Write;
        write!(
            out,
            "{}",
            when.with_timezone(&tz).format_with_items(items.iter())
        )
        .map_err(|_| RenderErrorReason::Other(format!("datetime: invalid format {format:?}")))?;
        Ok(ScopedJson::Derived(Value::String(out)))
    }
}

/// `{{json VALUE}}`: the value as compact JSON text.
pub(super) struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = param(h, 0, "json")?;
        Ok(ScopedJson::Derived(Value::String(v.to_string())))
    }
}

/// `{{default VALUE FALLBACK}}`: FALLBACK when VALUE is missing, null or empty.
/// The one helper that accepts a missing value in strict mode.
pub(super) struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = h
            .param(0)
            .filter(|p| !p.is_value_missing())
            .map(|p| p.value());
        let fallback = param(h, 1, "default")?;
        let chosen = match value {
            None | Some(Value::Null) => fallback,
            Some(Value::String(s)) if s.is_empty() => fallback,
            Some(v) => v,
        };
        Ok(ScopedJson::Derived(chosen.clone()))
    }
}

/// `{{upper TEXT}}` and `{{lower TEXT}}`.
pub(super) struct CaseHelper {
    pub(super) upper: bool,
}

impl HelperDef for CaseHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let t = text_of(param(h, 0, if self.upper { "upper" } else { "lower" })?);
        Ok(ScopedJson::Derived(Value::String(if self.upper {
            t.to_uppercase()
        } else {
            t.to_lowercase()
        })))
    }
}

/// `{{truncate TEXT N}}`: at most N characters; a cut text ends with `…`,
/// which counts as one of the N.
pub(super) struct TruncateHelper;

impl HelperDef for TruncateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let t = text_of(param(h, 0, "truncate")?);
        let n = param(h, 1, "truncate")?
            .as_u64()
            .ok_or_else(|| RenderErrorReason::Other("truncate: N must be a whole number".into()))?
            as usize;
        let out = if t.chars().count() <= n {
            t
        } else if n == 0 {
            String::new()
        } else {
            let mut s: String = t.chars().take(n - 1).collect();
            s.push('…');
            s
        };
        Ok(ScopedJson::Derived(Value::String(out)))
    }
}
