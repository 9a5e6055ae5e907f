//! `type: http`: a generic HTTP request.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Compiler, JsonTemplate, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// An HTTP action as written in a rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// The URL; values inserted with `{{…}}` are percent-encoded.
    url: String,
    /// Default `POST`.
    #[serde(default)]
    method: Option<String>,
    /// Header values are templates.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Any YAML value; its strings are templates; sent as JSON.
    #[serde(default)]
    json: Option<serde_yaml::Value>,
    /// A raw body template (with `content_type`), instead of `json`.
    #[serde(default)]
    body: Option<TemplateSource>,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Debug)]
pub struct HttpAction {
    method: reqwest::Method,
    url: Url,
    headers: Vec<(String, TemplateRef)>,
    body: Body,
}

#[derive(Debug)]
enum Url {
    /// A URL with nothing to fill in renders as itself: it is parsed once,
    /// when the rules load, as parsing is most of what rendering it costs.
    Fixed { text: String, parsed: reqwest::Url },
    /// A URL with `{{…}}`, parsed each time it is rendered.
    Template(TemplateRef),
}

#[derive(Debug)]
enum Body {
    None,
    Json(JsonTemplate),
    Text {
        template: TemplateRef,
        content_type: String,
    },
}

/// A rendered HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Option<String>,
    /// `url` parsed: the one parse it gets, when rendered.
    target: reqwest::Url,
}

pub(super) fn compile(raw: RawHttp, c: &mut Compiler) -> Option<HttpAction> {
    let method = raw.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
    let method = match reqwest::Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            c.error("method", format!("{method:?} is not an HTTP method"));
            reqwest::Method::POST
        }
    };
    let url = if !raw.url.contains("{{") {
        match reqwest::Url::parse(&raw.url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(Url::Fixed {
                text: raw.url,
                parsed,
            }),
            _ => {
                c.error("url", "is not an http(s) URL");
                None
            }
        }
    } else {
        if !(raw.url.starts_with("http://") || raw.url.starts_with("https://")) {
            c.error("url", "must start with http:// or https://");
        }
        c.template("url", &TemplateSource::Inline(raw.url), Escape::Url)
            .map(Url::Template)
    };
    let mut headers = Vec::new();
    for (name, value) in raw.headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.error(&format!("headers.{name}"), "is not a valid header name");
            continue;
        }
        if name.eq_ignore_ascii_case("content-type") && raw.json.is_some() {
            c.error(
                &format!("headers.{name}"),
                "is set by `json`; use `body` with `content_type` for another type",
            );
        }
        if let Some(t) = c.template(
            &format!("headers.{name}"),
            &TemplateSource::Inline(value),
            Escape::Plain,
        ) {
            headers.push((name, t));
        }
    }
    let body = match (raw.json, raw.body) {
        (Some(_), Some(_)) => {
            c.error("", "has both `json` and `body`; choose one");
            Body::None
        }
        (Some(j), None) => match c.json_template("json", j, Escape::Plain) {
            Some(j) => Body::Json(j),
            None => Body::None,
        },
        (None, Some(b)) => match c.template("body", &b, Escape::Plain) {
            Some(template) => Body::Text {
                template,
                content_type: raw
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
            },
            None => Body::None,
        },
        (None, None) => Body::None,
    };
    if raw.content_type.is_some() && !matches!(body, Body::Text { .. }) {
        c.error("content_type", "goes with `body`");
    }
    Some(HttpAction {
        method,
        url: url?,
        headers,
        body,
    })
}

impl HttpAction {
    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<HttpRequest, String> {
        let (url, target) = match &self.url {
            Url::Fixed { text, parsed } => (text.clone(), parsed.clone()),
            Url::Template(template) => {
                let url = t.render(template, ctx)?;
                let target = reqwest::Url::parse(&url)
                    .map_err(|e| format!("rendered url is invalid: {e}"))?;
                (url, target)
            }
        };
        let headers = self
            .headers
            .iter()
            .map(|(n, v)| {
                let value = t.render(v, ctx)?;
                reqwest::header::HeaderValue::from_str(&value)
                    .map_err(|_| format!("rendered header {n} is not a valid header value"))?;
                Ok((n.clone(), value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (content_type, body) = match &self.body {
            Body::None => (None, None),
            Body::Json(j) => (
                Some("application/json".to_string()),
                Some(j.render(t, ctx)?),
            ),
            Body::Text {
                template,
                content_type,
            } => (Some(content_type.clone()), Some(t.render(template, ctx)?)),
        };
        Ok(HttpRequest {
            method: self.method.to_string(),
            url,
            headers,
            content_type,
            body,
            target,
        })
    }
}

/// Headers whose values are credentials: `easehook test` masks them.
pub fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
        || n.contains("token")
        || n.contains("secret")
        || n.contains("key")
        || n.contains("signature")
}

impl HttpRequest {
    pub(super) fn describe(&self) -> String {
        let mut s = format!("http {} {}\n", self.method, self.url);
        for (n, v) in &self.headers {
            let v = if is_sensitive_header(n) {
                "***"
            } else {
                v.as_str()
            };
            s += &format!("  {n}: {v}\n");
        }
        if let Some(ct) = &self.content_type {
            s += &format!("  Content-Type: {ct}\n");
        }
        if let Some(b) = &self.body {
            let pretty = serde_json::from_str::<Value>(b)
                .ok()
                .filter(|_| self.content_type.as_deref() == Some("application/json"))
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| b.clone());
            s += &format!("{}\n", super::email::indent(&pretty));
        }
        s
    }
}

/// Send the request; any 2xx is success.
pub(super) async fn send(
    client: &reqwest::Client,
    m: &HttpRequest,
    timeout: std::time::Duration,
) -> super::Outcome {
    let method = match reqwest::Method::from_bytes(m.method.as_bytes()) {
        Ok(method) => method,
        Err(_) => {
            return super::Outcome::Permanent(format!("{:?} is not an HTTP method", m.method));
        }
    };
    let mut req = client.request(method, m.target.clone()).timeout(timeout);
    for (n, v) in &m.headers {
        req = req.header(n, v);
    }
    if let Some(ct) = &m.content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    if let Some(b) = &m.body {
        req = req.body(b.clone());
    }
    super::classify_http(req.send().await).await
}
