//! `type: feishu`: a message to a Feishu / Lark (飞书) custom bot.
//!
//! `POST {webhook_url}` (`…/open-apis/bot/v2/hook/…`) with `{"msg_type":
//! "text", "content": {"text": …}}` or `{"msg_type": "interactive", "card":
//! …}`. With `secret` (签名校验) the body also carries `timestamp` and
//! `sign`. Feishu answers `{"code": 0, "msg": "success"}`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::chat::{self, ChatMessage, Mentions, RawMentions, Service};
use super::{Compiler, JsonTemplate, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// A Feishu action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFeishu {
    /// The bot's webhook URL (a secret: supply it with `${…}`).
    webhook_url: String,
    /// The bot's signing secret (签名校验); when set, every request is signed.
    #[serde(default)]
    secret: Option<String>,
    /// A plain-text message.
    #[serde(default)]
    text: Option<TemplateSource>,
    /// An interactive card: any YAML, its strings templates, sent as the `card`.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    card: Option<serde_yaml::Value>,
    #[serde(flatten)]
    mentions: RawMentions,
}

#[derive(Debug)]
pub struct FeishuAction {
    webhook_url: String,
    secret: Option<String>,
    content: FeishuContent,
    mentions: Mentions,
}

#[derive(Debug)]
enum FeishuContent {
    Text(TemplateRef),
    Card(JsonTemplate),
}

pub(super) fn compile(raw: RawFeishu, c: &mut Compiler) -> Option<FeishuAction> {
    chat::check_webhook_url(&raw.webhook_url, c);
    let content = match (raw.text, raw.card) {
        (Some(t), None) => c
            .template("text", &t, Escape::Plain)
            .map(FeishuContent::Text),
        (None, Some(card @ serde_yaml::Value::Mapping(_))) => c
            .json_template("card", card, Escape::Plain)
            .map(FeishuContent::Card),
        (None, Some(_)) => {
            c.error(
                "card",
                "must be a mapping (the card's JSON, written as YAML)",
            );
            None
        }
        (None, None) => {
            c.error("", "needs `text` or `card`");
            None
        }
        (Some(_), Some(_)) => {
            c.error("", "has both `text` and `card`; give one");
            None
        }
    };
    if !raw.mentions.at_mobiles.is_empty() {
        c.error("at_mobiles", "Feishu mentions by open id: use at_users");
    }
    if matches!(content, Some(FeishuContent::Card(_)))
        && (!raw.mentions.at_users.is_empty() || raw.mentions.at_all)
    {
        c.error(
            "at_users",
            "a card mentions nobody; write the <at> in the card itself",
        );
    }
    let mentions = Mentions::compile(raw.mentions, c);
    Some(FeishuAction {
        webhook_url: raw.webhook_url,
        secret: raw.secret.filter(|s| !s.is_empty()),
        content: content?,
        mentions,
    })
}

impl FeishuAction {
    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<ChatMessage, String> {
        let mut body = Map::new();
        match &self.content {
            FeishuContent::Text(r) => {
                let m = self.mentions.render(t, ctx)?;
                let mut text = t.render(r, ctx)?;
                for user in &m.users {
                    text.push_str(&format!(" <at user_id=\"{}\"></at>", escape_attr(user)));
                }
                if m.all {
                    text.push_str(" <at user_id=\"all\">所有人</at>");
                }
                body.insert("msg_type".into(), json!("text"));
                body.insert("content".into(), json!({"text": text}));
            }
            FeishuContent::Card(card) => {
                let card: Value =
                    serde_json::from_str(&card.render(t, ctx)?).map_err(|e| e.to_string())?;
                body.insert("msg_type".into(), json!("interactive"));
                body.insert("card".into(), card);
            }
        }
        Ok(ChatMessage {
            service: Service::Feishu,
            webhook_url: self.webhook_url.clone(),
            secret: self.secret.clone(),
            body,
        })
    }
}

/// A user id inside `<at user_id="…">`: quotes and angle brackets escaped,
/// so that a rendered id cannot close the tag.
fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
