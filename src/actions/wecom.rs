//! `type: wecom`: a message to a WeCom (企业微信) group robot.
//!
//! `POST {webhook_url}` (`…/cgi-bin/webhook/send?key=…`) with
//! `{"msgtype": "text", "text": {"content": …, "mentioned_list": […],
//! "mentioned_mobile_list": […]}}` or `{"msgtype": "markdown", "markdown":
//! {"content": …}}`. WeCom answers `{"errcode": 0, "errmsg": "ok"}`.

use serde::Deserialize;
use serde_json::{Map, json};

use super::chat::{self, ChatMessage, Content, Mentions, RawMentions, Service};
use super::{Compiler, TemplateSource};
use crate::template::{Data, Templates};

/// A WeCom action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWeCom {
    /// The robot's webhook URL, with its `key` (a secret: supply it with `${…}`).
    webhook_url: String,
    /// A plain-text message.
    #[serde(default)]
    text: Option<TemplateSource>,
    /// A markdown message (WeCom's subset of markdown).
    #[serde(default)]
    markdown: Option<TemplateSource>,
    #[serde(flatten)]
    mentions: RawMentions,
}

#[derive(Debug)]
pub struct WeComAction {
    webhook_url: String,
    content: Content,
    mentions: Mentions,
}

pub(super) fn compile(raw: RawWeCom, c: &mut Compiler) -> Option<WeComAction> {
    chat::check_webhook_url(&raw.webhook_url, c);
    let content = Content::compile(raw.text, raw.markdown, c);
    if matches!(content, Some(Content::Markdown(_)))
        && (!raw.mentions.at_mobiles.is_empty() || raw.mentions.at_all)
    {
        // WeCom's markdown mentions user ids only (`<@userid>`).
        c.error(
            "at_mobiles",
            "a WeCom markdown message can mention at_users only; use text for at_mobiles and at_all",
        );
    }
    let mentions = Mentions::compile(raw.mentions, c);
    Some(WeComAction {
        webhook_url: raw.webhook_url,
        content: content?,
        mentions,
    })
}

impl WeComAction {
    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<ChatMessage, String> {
        let m = self.mentions.render(t, ctx)?;
        let mut body = Map::new();
        match &self.content {
            Content::Text(r) => {
                let mut text = json!({"content": t.render(r, ctx)?});
                let all = m.all.then(|| "@all".to_string());
                if !m.users.is_empty() || m.all {
                    text["mentioned_list"] = json!(
                        m.users
                            .iter()
                            .cloned()
                            .chain(all.clone())
                            .collect::<Vec<_>>()
                    );
                }
                if !m.mobiles.is_empty() {
                    text["mentioned_mobile_list"] = json!(m.mobiles);
                }
                body.insert("msgtype".into(), json!("text"));
                body.insert("text".into(), text);
            }
            Content::Markdown(r) => {
                let mut content = t.render(r, ctx)?;
                for user in &m.users {
                    content.push_str(&format!(" <@{user}>"));
                }
                body.insert("msgtype".into(), json!("markdown"));
                body.insert("markdown".into(), json!({"content": content}));
            }
        }
        Ok(ChatMessage {
            service: Service::WeCom,
            webhook_url: self.webhook_url.clone(),
            secret: None,
            body,
        })
    }
}
