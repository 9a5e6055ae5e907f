//! `type: slack`: a message to a Slack incoming webhook.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Compiler, JsonTemplate, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// A Slack action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    /// The incoming webhook URL (a secret: supply it with `${…}`).
    webhook_url: String,
    /// The message text (also the notification fallback when `blocks` is set).
    text: TemplateSource,
    /// Block Kit blocks; every string inside is a template.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    blocks: Option<serde_yaml::Value>,
    /// Overrides the webhook's user name (where the workspace allows it).
    #[serde(default)]
    username: Option<String>,
    /// Overrides the webhook's icon, like `:rotating_light:`.
    #[serde(default)]
    icon_emoji: Option<String>,
    /// Overrides the webhook's channel (legacy webhooks).
    #[serde(default)]
    channel: Option<String>,
}

#[derive(Debug)]
pub struct SlackAction {
    webhook_url: String,
    text: TemplateRef,
    blocks: Option<JsonTemplate>,
    extra: Map<String, Value>,
}

/// A rendered Slack message.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackMessage {
    pub webhook_url: String,
    /// The JSON body, built by a serializer.
    pub body: Value,
}

pub(super) fn compile(raw: RawSlack, c: &mut Compiler) -> Option<SlackAction> {
    match reqwest::Url::parse(&raw.webhook_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => c.error("webhook_url", "is not an http(s) URL"),
    }
    let text = c.template("text", &raw.text, Escape::Slack);
    let blocks = match raw.blocks {
        Some(serde_yaml::Value::Sequence(s)) if s.is_empty() => None,
        Some(b @ serde_yaml::Value::Sequence(_)) => c.json_template("blocks", b, Escape::Slack),
        Some(_) => {
            c.error("blocks", "must be a list of Block Kit blocks");
            None
        }
        None => None,
    };
    let mut extra = Map::new();
    for (k, v) in [
        ("username", raw.username),
        ("icon_emoji", raw.icon_emoji),
        ("channel", raw.channel),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            extra.insert(k.into(), Value::String(v));
        }
    }
    Some(SlackAction {
        webhook_url: raw.webhook_url,
        text: text?,
        blocks,
        extra,
    })
}

impl SlackAction {
    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<SlackMessage, String> {
        let mut body = Map::new();
        body.insert("text".into(), Value::String(t.render(&self.text, ctx)?));
        if let Some(b) = &self.blocks {
            // Read back as a value, for `describe` to show it laid out; a
            // Slack webhook takes about one message a second, so the parse
            // costs nothing that matters.
            let blocks = serde_json::from_str(&b.render(t, ctx)?).map_err(|e| e.to_string())?;
            body.insert("blocks".into(), blocks);
        }
        body.extend(self.extra.clone());
        Ok(SlackMessage {
            webhook_url: self.webhook_url.clone(),
            body: Value::Object(body),
        })
    }
}

impl SlackMessage {
    pub(super) fn describe(&self) -> String {
        let body = serde_json::to_string_pretty(&self.body).unwrap_or_default();
        format!(
            "slack POST {}\n{}\n",
            mask_url(&self.webhook_url),
            super::email::indent(&body)
        )
    }
}

/// A webhook URL's path is its secret: show the host only.
pub(super) fn mask_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/***", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "***".into(),
    }
}

/// POST the message to the webhook. Slack answers 429 with `Retry-After`
/// when it throttles; that is retried after the time it asks.
pub(super) async fn send(
    client: &reqwest::Client,
    m: &SlackMessage,
    timeout: std::time::Duration,
) -> super::Answer {
    let result = client
        .post(&m.webhook_url)
        .json(&m.body)
        .timeout(timeout)
        .send()
        .await;
    super::classify_http(result).await
}
