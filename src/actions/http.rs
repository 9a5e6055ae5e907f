//! `type: http`: a generic HTTP request.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Compiler, JsonTemplate, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// An HTTP action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    #[schemars(with = "Option<serde_json::Value>")]
    json: Option<serde_yaml::Value>,
    /// A raw body template (with `content_type`), instead of `json`.
    #[serde(default)]
    body: Option<TemplateSource>,
    /// The `Content-Type` of `body`. Default `text/plain; charset=utf-8`.
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
    Template {
        template: TemplateRef,
        /// Where the template fills in only the path, query or fragment.
        origin: Option<Origin>,
    },
}

/// The scheme and authority of a URL template (`https://host:port`), when
/// they are plain text: parsed once, when the rules load. A rendered URL
/// that begins with them is parsed from its path on, against them, which
/// is the same URL without parsing (and IDNA-processing) the host again.
#[derive(Debug)]
struct Origin {
    text: String,
    parsed: reqwest::Url,
}

impl Origin {
    /// The origin of a URL template, if its text up to the first `{{`
    /// holds the whole authority.
    fn of(template: &str) -> Option<Self> {
        let literal = &template[..template.find("{{")?];
        let authority = literal.find("://")? + 3;
        // Where the authority of an http(s) URL ends.
        let end = authority + literal[authority..].find(['/', '?', '#', '\\'])?;
        let text = &literal[..end];
        Some(Origin {
            text: text.to_string(),
            parsed: reqwest::Url::parse(text).ok()?,
        })
    }
}

/// Parse a rendered URL; from its path on only when it begins with
/// `origin`. A path that begins with two slashes would be read as another
/// authority when parsed alone, so such a URL is parsed whole.
fn parse_rendered(url: &str, origin: Option<&Origin>) -> Result<reqwest::Url, String> {
    if let Some(o) = origin
        && let Some(rest) = url.strip_prefix(o.text.as_str())
    {
        let slash = |b: Option<u8>| matches!(b, Some(b'/' | b'\\'));
        // Parsing drops tabs and newlines wherever they are.
        let mut b = rest.bytes().filter(|b| !matches!(b, b'\t' | b'\n' | b'\r'));
        let (first, second) = (b.next(), b.next());
        let another_authority = slash(first) && slash(second);
        if matches!(rest.as_bytes().first(), Some(b'/' | b'?' | b'#' | b'\\')) && !another_authority
        {
            return reqwest::Url::options()
                .base_url(Some(&o.parsed))
                .parse(rest)
                .map_err(|e| e.to_string());
        }
    }
    reqwest::Url::parse(url).map_err(|e| e.to_string())
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
        let origin = Origin::of(&raw.url);
        c.template("url", &TemplateSource::Inline(raw.url), Escape::Url)
            .map(|template| Url::Template { template, origin })
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
            Url::Template { template, origin } => {
                let url = t.render(template, ctx)?;
                let target = parse_rendered(&url, origin.as_ref())
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
) -> super::Answer {
    let method = match reqwest::Method::from_bytes(m.method.as_bytes()) {
        Ok(method) => method,
        Err(_) => {
            return super::Outcome::Permanent(format!("{:?} is not an HTTP method", m.method))
                .into();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_origin_is_the_plain_text_before_the_path() {
        let origin = |t: &str| Origin::of(t).map(|o| (o.text, o.parsed.to_string()));
        assert_eq!(
            origin("http://127.0.0.1:8080/audit/{{event}}"),
            Some((
                "http://127.0.0.1:8080".into(),
                "http://127.0.0.1:8080/".into()
            ))
        );
        assert_eq!(
            origin("HTTPS://Hooks.Example.COM:443?u={{from_user}}"),
            Some((
                "HTTPS://Hooks.Example.COM:443".into(),
                "https://hooks.example.com/".into()
            ))
        );
        // The host or the port is filled in, or nothing is plain text.
        assert_eq!(origin("http://{{host}}/x"), None);
        assert_eq!(origin("http://h:{{port}}/x"), None);
        assert_eq!(origin("{{url}}"), None);
    }

    #[test]
    fn a_path_that_names_another_host_is_parsed_whole() {
        let o = Origin::of("http://host/{{p}}");
        for url in [
            "http://host//evil.example/x",
            "http://host/\\evil.example/x",
            "http://host/\t/evil.example/x",
        ] {
            let parsed = parse_rendered(url, o.as_ref()).unwrap();
            assert_eq!(parsed.host_str(), Some("host"), "{url}");
            assert_eq!(parsed, reqwest::Url::parse(url).unwrap());
        }
    }

    proptest! {
        /// Parsed from its path on, a rendered URL is the URL that parsing it
        /// whole gives, or fails as that does.
        #[test]
        fn a_url_parsed_from_its_path_on_is_the_url_parsed_whole(
            origin in prop::sample::select(vec![
                "http://127.0.0.1:8080",
                "https://hooks.example.com",
                "HTTP://User:pw@Example.COM:80",
                "https://[::1]:8443",
                "http://例子.测试",
                "http://host",
            ]),
            rest in r#"[/?#\\ a]{0,1}[/\\?#%.:@ \t\n\r\x00\x1f\[\]|^`{}"<>a-zA-Z0-9é用~_-]{0,24}"#,
        ) {
            let url = format!("{origin}{rest}");
            let o = Origin::of(&format!("{origin}/{{{{x}}}}"));
            prop_assert!(o.is_some());
            let fast = parse_rendered(&url, o.as_ref());
            let whole = reqwest::Url::parse(&url).map_err(|e| e.to_string());
            prop_assert_eq!(fast, whole);
        }
    }
}
