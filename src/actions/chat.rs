//! What the team-chat robots share — WeCom (企业微信), DingTalk (钉钉) and
//! Feishu (飞书 / Lark), SPEC §12: bodies built by a JSON serializer,
//! outcomes read from the body's result code, and their signatures.
//!
//! These services answer most errors inside the body, often with HTTP 200
//! (a wrong signature, a missing keyword, a rate limit), so a delivery is
//! sent only when the body's code says success. Rate-limit codes are
//! retried; every other code is permanent, with the service's own message
//! kept as the error.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Compiler, Outcome, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// One of the team-chat services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    WeCom,
    DingTalk,
    Feishu,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::WeCom => "wecom",
            Service::DingTalk => "dingtalk",
            Service::Feishu => "feishu",
        }
    }

    /// The service's documented limit per robot: 20 messages a minute for
    /// DingTalk and WeCom, 100 for Feishu. A rule file may set a lower one.
    pub fn default_rate_limit(self) -> super::RateLimit {
        let count = match self {
            Service::WeCom | Service::DingTalk => 20,
            Service::Feishu => 100,
        };
        super::RateLimit {
            count,
            per: Duration::from_secs(60),
        }
    }

    /// Whether an error code (and its message) is the service's rate limit.
    fn rate_limited(self, code: i64, message: &str) -> bool {
        match self {
            // 130101: "send too fast, exceed 20 times per minute";
            // 410100: 发送速度太快而限流.
            Service::DingTalk => matches!(code, 130101 | 410100),
            // 45009: "api freq out of limit".
            Service::WeCom => code == 45009,
            // 11232: "frequency limited"; also answered as "too many request".
            Service::Feishu => {
                code == 11232 || message.to_ascii_lowercase().contains("too many request")
            }
        }
    }
}

/// The @-mention fields a rule may give (`at_mobiles`, `at_users`, `at_all`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMentions {
    /// Mobile numbers to @-mention (templates).
    #[serde(default)]
    pub at_mobiles: Vec<String>,
    /// User ids to @-mention (templates): DingTalk user ids, WeCom user
    /// ids, Feishu open ids.
    #[serde(default)]
    pub at_users: Vec<String>,
    /// @-mention everyone in the group.
    #[serde(default)]
    pub at_all: bool,
}

/// Mentions with their templates registered.
#[derive(Debug, Default)]
pub struct Mentions {
    pub mobiles: Vec<TemplateRef>,
    pub users: Vec<TemplateRef>,
    pub all: bool,
}

/// Mentions as rendered for one delivery.
#[derive(Debug, Default)]
pub struct RenderedMentions {
    pub mobiles: Vec<String>,
    pub users: Vec<String>,
    pub all: bool,
}

impl Mentions {
    pub fn compile(raw: RawMentions, c: &mut Compiler) -> Mentions {
        Mentions {
            mobiles: c.template_list("at_mobiles", raw.at_mobiles, Escape::Plain),
            users: c.template_list("at_users", raw.at_users, Escape::Plain),
            all: raw.at_all,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mobiles.is_empty() && self.users.is_empty() && !self.all
    }

    /// Render the lists; entries that render empty are left out.
    pub fn render(&self, t: &Templates, ctx: &Data) -> Result<RenderedMentions, String> {
        let list = |refs: &[TemplateRef]| -> Result<Vec<String>, String> {
            let mut out = Vec::new();
            for r in refs {
                let v = t.render(r, ctx)?;
                if !v.trim().is_empty() {
                    out.push(v.trim().to_string());
                }
            }
            Ok(out)
        };
        Ok(RenderedMentions {
            mobiles: list(&self.mobiles)?,
            users: list(&self.users)?,
            all: self.all,
        })
    }
}

/// The message text of a robot: exactly one of `text` and `markdown`.
#[derive(Debug)]
pub enum Content {
    Text(TemplateRef),
    Markdown(TemplateRef),
}

impl Content {
    /// Compile `text` or `markdown`; a problem when neither or both is set.
    pub fn compile(
        text: Option<TemplateSource>,
        markdown: Option<TemplateSource>,
        c: &mut Compiler,
    ) -> Option<Content> {
        match (text, markdown) {
            (Some(t), None) => c.template("text", &t, Escape::Plain).map(Content::Text),
            (None, Some(m)) => c
                .template("markdown", &m, Escape::Plain)
                .map(Content::Markdown),
            (None, None) => {
                c.error("", "needs `text` or `markdown`");
                None
            }
            (Some(_), Some(_)) => {
                c.error("", "has both `text` and `markdown`; give one");
                None
            }
        }
    }
}

/// Check that a webhook URL is an http(s) URL.
pub fn check_webhook_url(url: &str, c: &mut Compiler) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => c.error("webhook_url", "is not an http(s) URL"),
    }
}

/// A rendered team-chat message. The signature is added when it is sent,
/// since it covers the time of sending.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub service: Service,
    pub webhook_url: String,
    /// The signing secret (加签 / 签名校验), when set.
    pub secret: Option<String>,
    /// The JSON body, built by a serializer, without the signature.
    pub body: Map<String, Value>,
}

impl ChatMessage {
    pub(super) fn describe(&self) -> String {
        let body = serde_json::to_string_pretty(&self.body).unwrap_or_default();
        let signed = if self.secret.is_some() {
            " (signed)"
        } else {
            ""
        };
        format!(
            "{} POST {}{signed}\n{}\n",
            self.service.name(),
            super::slack::mask_url(&self.webhook_url),
            super::email::indent(&body)
        )
    }

    /// The URL and body to send at `now_ms`, signed as the service documents
    /// when a secret is set: DingTalk puts `timestamp` (milliseconds) and
    /// `sign` in the query, Feishu `timestamp` (seconds) and `sign` in the
    /// body. WeCom robots are not signed.
    pub fn signed(&self, now_ms: u64) -> Result<(reqwest::Url, Value), String> {
        let mut url = reqwest::Url::parse(&self.webhook_url)
            .map_err(|_| "the webhook URL is not a URL".to_string())?;
        let mut body = self.body.clone();
        if let Some(secret) = &self.secret {
            match self.service {
                Service::DingTalk => {
                    let ts = now_ms.to_string();
                    url.query_pairs_mut()
                        .append_pair("timestamp", &ts)
                        .append_pair("sign", &dingtalk_sign(secret, &ts));
                }
                Service::Feishu => {
                    let ts = (now_ms / 1000).to_string();
                    body.insert("sign".into(), Value::String(feishu_sign(secret, &ts)));
                    body.insert("timestamp".into(), Value::String(ts));
                }
                Service::WeCom => {}
            }
        }
        Ok((url, Value::Object(body)))
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// DingTalk's 加签: HMAC-SHA256 of `timestamp + "\n" + secret` keyed with
/// the secret, base64 (the query encoder then URL-encodes it).
pub fn dingtalk_sign(secret: &str, timestamp_ms: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Feishu's 签名校验: HMAC-SHA256 keyed with `timestamp + "\n" + secret`
/// over an empty message, base64.
pub fn feishu_sign(secret: &str, timestamp_s: &str) -> String {
    let key = format!("{timestamp_s}\n{secret}");
    let mac = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// POST the message, signed, and read the outcome from the answer's body.
pub(super) async fn send(
    client: &reqwest::Client,
    m: &ChatMessage,
    timeout: Duration,
) -> super::Answer {
    let (url, body) = match m.signed(crate::now_ms()) {
        Ok(v) => v,
        Err(e) => return Outcome::Permanent(e).into(),
    };
    let resp = match client.post(url).json(&body).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => return super::transport_error(e).into(),
    };
    let status = resp.status().as_u16();
    let retry_after = super::retry_after(&resp);
    let text = resp.text().await.unwrap_or_default();
    super::Answer {
        outcome: classify(m.service, status, retry_after, &text),
        code: Some(status),
    }
}

/// The outcome of an answer: HTTP 429 and 5xx are retried (after
/// `Retry-After`); otherwise the body decides. Its code (`errcode` for
/// DingTalk and WeCom, `code` — or the older `StatusCode` — for Feishu)
/// must be 0; a rate-limit code is retried; any other code, or an answer
/// without one, is permanent.
pub fn classify(
    service: Service,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
) -> Outcome {
    let name = service.name();
    if status == 429 || status >= 500 {
        return Outcome::Retry {
            after: retry_after,
            error: format!("{name}: HTTP {status}: {}", snippet(body)),
        };
    }
    let answer: Option<Map<String, Value>> = serde_json::from_str(body).ok();
    let field = |keys: &[&str]| -> Option<&Value> {
        let a = answer.as_ref()?;
        keys.iter().find_map(|k| a.get(*k))
    };
    let code = field(&["errcode", "code", "StatusCode"]).and_then(Value::as_i64);
    let message = field(&["errmsg", "msg", "StatusMessage"])
        .and_then(Value::as_str)
        .unwrap_or("");
    match code {
        Some(0) if (200..300).contains(&status) => Outcome::Sent,
        Some(code) if service.rate_limited(code, message) => Outcome::Retry {
            after: retry_after,
            error: format!("{name} error {code}: {message}"),
        },
        Some(code) => Outcome::Permanent(format!("{name} error {code}: {message}")),
        None => Outcome::Permanent(format!(
            "{name}: HTTP {status} without a result code: {}",
            snippet(body)
        )),
    }
}

fn snippet(body: &str) -> String {
    body.chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dingtalk_signs_as_documented() {
        // printf '1700000000000\nSECabc' | openssl dgst -sha256 -hmac 'SECabc' -binary | base64
        assert_eq!(
            dingtalk_sign("SECabc", "1700000000000"),
            "jcUpW0QmtKduN03n4JqQ0PBosVjqnM8gU7fIIvsDmCM="
        );
    }

    #[test]
    fn feishu_signs_as_documented() {
        // printf '' | openssl dgst -sha256 -hmac $'1700000000\nsecret' -binary | base64
        assert_eq!(
            feishu_sign("secret", "1700000000"),
            "fiWS2+gh28DOydAv7hzONH/mDn9+b1Y4Y5ivXWXy8vA="
        );
    }

    #[test]
    fn the_body_code_decides() {
        use Service::*;
        let sent = |s, b| classify(s, 200, None, b) == Outcome::Sent;
        assert!(sent(DingTalk, r#"{"errcode":0,"errmsg":"ok"}"#));
        assert!(sent(WeCom, r#"{"errcode":0,"errmsg":"ok"}"#));
        assert!(sent(Feishu, r#"{"code":0,"msg":"success","data":{}}"#));
        assert!(sent(
            Feishu,
            r#"{"Extra":null,"StatusCode":0,"StatusMessage":"success"}"#
        ));
        let retried = |s, b| matches!(classify(s, 200, None, b), Outcome::Retry { .. });
        assert!(retried(
            DingTalk,
            r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#
        ));
        assert!(retried(
            DingTalk,
            r#"{"errcode":410100,"errmsg":"发送速度太快而限流"}"#
        ));
        assert!(retried(
            WeCom,
            r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#
        ));
        assert!(retried(
            Feishu,
            r#"{"code":11232,"msg":"frequency limited"}"#
        ));
        assert!(retried(Feishu, r#"{"code":9499,"msg":"too many request"}"#));
        let dead = |s, b| match classify(s, 200, None, b) {
            Outcome::Permanent(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            dead(DingTalk, r#"{"errcode":310000,"errmsg":"sign not match"}"#),
            "dingtalk error 310000: sign not match"
        );
        assert_eq!(
            dead(WeCom, r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#),
            "wecom error 93000: invalid webhook url"
        );
        assert_eq!(
            dead(
                Feishu,
                r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#
            ),
            "feishu error 19021: sign match fail or timestamp is not within one hour from current time"
        );
        assert!(dead(DingTalk, "<html>oops</html>").contains("without a result code"));
        // A code 0 on an HTTP error is no success.
        assert!(matches!(
            classify(WeCom, 404, None, r#"{"errcode":0}"#),
            Outcome::Permanent(_)
        ));
        // HTTP 429 and 5xx are retried whatever the body, after Retry-After.
        assert_eq!(
            classify(Feishu, 429, Some(Duration::from_secs(3)), "{}"),
            Outcome::Retry {
                after: Some(Duration::from_secs(3)),
                error: "feishu: HTTP 429: {}".into()
            }
        );
        assert!(matches!(
            classify(DingTalk, 502, None, ""),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn signing_goes_where_each_service_documents() {
        let m = |service| ChatMessage {
            service,
            webhook_url: "https://oapi.example/robot/send?access_token=t".into(),
            secret: Some("SECabc".into()),
            body: Map::new(),
        };
        let (url, body) = m(Service::DingTalk).signed(1_700_000_000_000).unwrap();
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(q[0], ("access_token".into(), "t".into()));
        assert_eq!(q[1], ("timestamp".into(), "1700000000000".into()));
        assert_eq!(
            q[2],
            ("sign".into(), dingtalk_sign("SECabc", "1700000000000"))
        );
        // The sign is URL-encoded in the query (`+`, `/`, `=`).
        assert!(
            url.as_str()
                .ends_with("&sign=jcUpW0QmtKduN03n4JqQ0PBosVjqnM8gU7fIIvsDmCM%3D"),
            "{url}"
        );
        assert_eq!(body, serde_json::json!({}));
        let (url, body) = m(Service::Feishu).signed(1_700_000_000_999).unwrap();
        assert_eq!(url.query(), Some("access_token=t"));
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], feishu_sign("SECabc", "1700000000"));
        let (_, body) = m(Service::WeCom).signed(1).unwrap();
        assert_eq!(body, serde_json::json!({}));
    }
}
