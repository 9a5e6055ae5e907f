//! `type: dingtalk`: a message to a DingTalk (钉钉) custom robot.
//!
//! `POST {webhook_url}` (`…/robot/send?access_token=…`) with
//! `{"msgtype": "text", "text": {"content": …}}` or `{"msgtype":
//! "markdown", "markdown": {"title": …, "text": …}}`, and `at` for
//! @-mentions. With `secret` (加签) each request carries `timestamp` and
//! `sign` in its query. DingTalk answers `{"errcode": 0, "errmsg": "ok"}`.

use serde::Deserialize;
use serde_json::{Map, json};

use super::chat::{self, ChatMessage, Content, Mentions, RawMentions, Service};
use super::{Compiler, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// A DingTalk action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDingTalk {
    /// The robot's webhook URL, with its `access_token` (a secret: supply it with `${…}`).
    webhook_url: String,
    /// The robot's signing secret (加签, `SEC…`); when set, every request is signed.
    #[serde(default)]
    secret: Option<String>,
    /// A plain-text message.
    #[serde(default)]
    text: Option<TemplateSource>,
    /// A markdown message (needs `title`).
    #[serde(default)]
    markdown: Option<TemplateSource>,
    /// The title of a markdown message (shown in the notification).
    #[serde(default)]
    title: Option<TemplateSource>,
    #[serde(flatten)]
    mentions: RawMentions,
}

#[derive(Debug)]
pub struct DingTalkAction {
    webhook_url: String,
    secret: Option<String>,
    content: Content,
    title: Option<TemplateRef>,
    mentions: Mentions,
}

pub(super) fn compile(raw: RawDingTalk, c: &mut Compiler) -> Option<DingTalkAction> {
    chat::check_webhook_url(&raw.webhook_url, c);
    let content = Content::compile(raw.text, raw.markdown, c);
    let title = match (&content, raw.title) {
        (Some(Content::Markdown(_)), None) => {
            c.error("title", "a markdown message needs a title");
            None
        }
        (_, Some(t)) => c.template("title", &t, Escape::Plain),
        (_, None) => None,
    };
    let mentions = Mentions::compile(raw.mentions, c);
    Some(DingTalkAction {
        webhook_url: raw.webhook_url,
        secret: raw.secret.filter(|s| !s.is_empty()),
        content: content?,
        title,
        mentions,
    })
}

impl DingTalkAction {
    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<ChatMessage, String> {
        let m = self.mentions.render(t, ctx)?;
        // DingTalk highlights a mention only when the text names it too.
        let with_mentions = |mut text: String| {
            for who in m.mobiles.iter().chain(&m.users) {
                let at = format!("@{who}");
                if !text.contains(&at) {
                    text.push(' ');
                    text.push_str(&at);
                }
            }
            text
        };
        let mut body = Map::new();
        match &self.content {
            Content::Text(r) => {
                body.insert("msgtype".into(), json!("text"));
                body.insert(
                    "text".into(),
                    json!({"content": with_mentions(t.render(r, ctx)?)}),
                );
            }
            Content::Markdown(r) => {
                let title = match &self.title {
                    Some(title) => t.render(title, ctx)?,
                    None => String::new(),
                };
                body.insert("msgtype".into(), json!("markdown"));
                body.insert(
                    "markdown".into(),
                    json!({"title": title, "text": with_mentions(t.render(r, ctx)?)}),
                );
            }
        }
        if !self.mentions.is_empty() {
            body.insert(
                "at".into(),
                json!({"atMobiles": m.mobiles, "atUserIds": m.users, "isAtAll": m.all}),
            );
        }
        Ok(ChatMessage {
            service: Service::DingTalk,
            webhook_url: self.webhook_url.clone(),
            secret: self.secret.clone(),
            body,
        })
    }
}
