//! `type: email`: a message through one of the configured SMTP servers.

use serde::Deserialize;

use super::{Compiler, StringList, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// An email action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    /// Name of the SMTP server in the config's `smtp:`. Default `default`.
    #[serde(default)]
    smtp: Option<String>,
    /// Recipients; each may be a template.
    to: StringList,
    /// Copy recipients; each may be a template.
    #[serde(default)]
    cc: StringList,
    /// Blind copy recipients; each may be a template.
    #[serde(default)]
    bcc: StringList,
    /// The `Reply-To` address (a template).
    #[serde(default)]
    reply_to: Option<String>,
    /// Overrides the SMTP server's `from`.
    #[serde(default)]
    from: Option<String>,
    /// The subject (a template; a newline becomes a space).
    subject: TemplateSource,
    /// The plain-text part.
    #[serde(default)]
    text: Option<TemplateSource>,
    /// The HTML part; inserted values are HTML-escaped.
    #[serde(default)]
    html: Option<TemplateSource>,
}

#[derive(Debug)]
pub struct EmailAction {
    pub smtp: String,
    from: String,
    to: Vec<TemplateRef>,
    cc: Vec<TemplateRef>,
    bcc: Vec<TemplateRef>,
    reply_to: Option<TemplateRef>,
    subject: TemplateRef,
    text: Option<TemplateRef>,
    html: Option<TemplateRef>,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailMessage {
    pub smtp: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

fn check_address(c: &mut Compiler, field: &str, addr: &str) {
    if !addr.contains("{{") && addr.parse::<lettre::message::Mailbox>().is_err() {
        c.error(field, format!("{addr:?} is not an email address"));
    }
}

pub(super) fn compile(raw: RawEmail, c: &mut Compiler) -> Option<EmailAction> {
    let smtp = raw.smtp.unwrap_or_else(|| "default".into());
    let server_from = match c.settings.smtp.get(&smtp) {
        Some(s) => s.from.clone(),
        None => {
            let known: Vec<_> = c.settings.smtp.keys().cloned().collect();
            c.error(
                "smtp",
                format!(
                    "no SMTP server {smtp:?} in the configuration (known: {})",
                    known.join(", ")
                ),
            );
            String::new()
        }
    };
    let from = raw.from.unwrap_or(server_from);
    if !from.is_empty() {
        check_address(c, "from", &from);
    }
    let to = raw.to.into_vec();
    if to.is_empty() {
        c.error("to", "needs at least one recipient");
    }
    let (cc, bcc) = (raw.cc.into_vec(), raw.bcc.into_vec());
    for (field, list) in [("to", &to), ("cc", &cc), ("bcc", &bcc)] {
        for (i, a) in list.iter().enumerate() {
            check_address(c, &format!("{field}[{i}]"), a);
        }
    }
    if let Some(r) = &raw.reply_to {
        check_address(c, "reply_to", r);
    }
    if raw.text.is_none() && raw.html.is_none() {
        c.error("", "needs `text`, `html` or both");
    }
    let to = c.template_list("to", to, Escape::Plain);
    let cc = c.template_list("cc", cc, Escape::Plain);
    let bcc = c.template_list("bcc", bcc, Escape::Plain);
    let reply_to = raw
        .reply_to
        .and_then(|r| c.template("reply_to", &TemplateSource::Inline(r), Escape::Plain));
    let subject = c.template("subject", &raw.subject, Escape::Plain);
    let text = raw
        .text
        .as_ref()
        .map(|t| c.template("text", t, Escape::Plain));
    let html = raw
        .html
        .as_ref()
        .map(|t| c.template("html", t, Escape::Html));
    Some(EmailAction {
        smtp,
        from,
        to,
        cc,
        bcc,
        reply_to,
        subject: subject?,
        text: text.map(|t| t.ok_or(())).transpose().ok()?,
        html: html.map(|t| t.ok_or(())).transpose().ok()?,
    })
}

impl EmailAction {
    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<EmailMessage, String> {
        let list = |refs: &[TemplateRef]| -> Result<Vec<String>, String> {
            refs.iter()
                .map(|r| {
                    let addr = t.render(r, ctx)?;
                    addr.parse::<lettre::message::Mailbox>()
                        .map_err(|_| format!("{addr:?} is not an email address"))?;
                    Ok(addr)
                })
                .collect()
        };
        let subject = t.render(&self.subject, ctx)?;
        Ok(EmailMessage {
            smtp: self.smtp.clone(),
            from: self.from.clone(),
            to: list(&self.to)?,
            cc: list(&self.cc)?,
            bcc: list(&self.bcc)?,
            reply_to: self
                .reply_to
                .as_ref()
                .map(|r| list(std::slice::from_ref(r)))
                .transpose()?
                .and_then(|v| v.into_iter().next()),
            // A subject is one line: a newline from user data must not start new headers.
            subject: subject.replace(['\r', '\n'], " "),
            text: self.text.as_ref().map(|r| t.render(r, ctx)).transpose()?,
            html: self.html.as_ref().map(|r| t.render(r, ctx)).transpose()?,
        })
    }
}

impl EmailMessage {
    pub(super) fn describe(&self) -> String {
        let mut s = format!("email via smtp {:?}\n", self.smtp);
        s += &format!("  From: {}\n  To: {}\n", self.from, self.to.join(", "));
        if !self.cc.is_empty() {
            s += &format!("  Cc: {}\n", self.cc.join(", "));
        }
        if !self.bcc.is_empty() {
            s += &format!("  Bcc: {}\n", self.bcc.join(", "));
        }
        if let Some(r) = &self.reply_to {
            s += &format!("  Reply-To: {r}\n");
        }
        s += &format!("  Subject: {}\n", self.subject);
        if let Some(t) = &self.text {
            s += &format!("  --- text/plain ---\n{}\n", indent(t));
        }
        if let Some(h) = &self.html {
            s += &format!("  --- text/html ---\n{}\n", indent(h));
        }
        s
    }
}

pub(super) fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{Settings, SmtpSettings, SmtpTls};

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// A transport and the settings and timeout it was built with.
type CachedTransport = (SmtpSettings, Duration, Transport);

/// One pooled SMTP transport per configured server, rebuilt when its
/// settings change on reload.
#[derive(Clone, Default)]
pub struct Mailers {
    cache: Arc<Mutex<HashMap<String, CachedTransport>>>,
}

fn build_transport(s: &SmtpSettings, timeout: Duration) -> Result<Transport, String> {
    let tls_params = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(s.host.clone());
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| format!("TLS setup: {e}"))
    };
    let tls = match s.tls {
        SmtpTls::Starttls => Tls::Required(tls_params()?),
        SmtpTls::Tls => Tls::Wrapper(tls_params()?),
        SmtpTls::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(timeout));
    if !s.username.is_empty() {
        let password = s
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        b = b.credentials(Credentials::new(s.username.clone(), password));
    }
    Ok(b.build())
}

impl Mailers {
    fn transport(
        &self,
        name: &str,
        settings: &Settings,
        timeout: Duration,
    ) -> Result<Transport, String> {
        let s = settings
            .smtp
            .get(name)
            .ok_or_else(|| format!("no SMTP server {name:?} in the configuration"))?;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| "SMTP cache lock poisoned".to_string())?;
        if let Some((cached, t, transport)) = cache.get(name)
            && cached == s
            && *t == timeout
        {
            return Ok(transport.clone());
        }
        let transport = build_transport(s, timeout)?;
        cache.insert(name.to_string(), (s.clone(), timeout, transport.clone()));
        Ok(transport)
    }

    /// Send one email. SMTP 4xx answers are retried, 5xx are permanent.
    pub async fn send(
        &self,
        m: &EmailMessage,
        settings: &Settings,
        timeout: Duration,
    ) -> super::Answer {
        use super::{Answer, Outcome};
        let message = match build_message(m) {
            Ok(msg) => msg,
            Err(e) => return Outcome::Permanent(e).into(),
        };
        let transport = match self.transport(&m.smtp, settings, timeout) {
            Ok(t) => t,
            Err(e) => return Outcome::Permanent(e).into(),
        };
        // The server's reply code (`250`, `550`, …), as three digits.
        let code = |c: lettre::transport::smtp::response::Code| c.to_string().parse().ok();
        match transport.send(message).await {
            Ok(reply) => Answer {
                outcome: Outcome::Sent,
                code: code(reply.code()),
            },
            Err(e) => Answer {
                code: e.status().and_then(code),
                outcome: if e.is_permanent() {
                    Outcome::Permanent(format!("SMTP: {e}"))
                } else {
                    Outcome::Retry {
                        after: None,
                        error: format!("SMTP: {}", super::error_chain(&e)),
                    }
                },
            },
        }
    }
}

fn mailbox(field: &str, s: &str) -> Result<Mailbox, String> {
    s.parse().map_err(|e| format!("{field} {s:?}: {e}"))
}

/// Build the MIME message: text, HTML, or both as multipart/alternative.
/// lettre encodes non-ASCII subjects and names (RFC 2047) and bodies.
pub fn build_message(m: &EmailMessage) -> Result<lettre::Message, String> {
    let mut b = lettre::Message::builder()
        .from(mailbox("from", &m.from)?)
        .subject(m.subject.clone())
        .date_now()
        .message_id(None);
    for t in &m.to {
        b = b.to(mailbox("to", t)?);
    }
    for t in &m.cc {
        b = b.cc(mailbox("cc", t)?);
    }
    for t in &m.bcc {
        b = b.bcc(mailbox("bcc", t)?);
    }
    if let Some(r) = &m.reply_to {
        b = b.reply_to(mailbox("reply_to", r)?);
    }
    let built = match (&m.text, &m.html) {
        (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(t.clone(), h.clone())),
        (Some(t), None) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(t.clone()),
        ),
        (None, Some(h)) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(h.clone()),
        ),
        (None, None) => return Err("the email has neither text nor html".into()),
    };
    built.map_err(|e| format!("cannot build the email: {e}"))
}
