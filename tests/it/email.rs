//! Email through a real SMTP server on loopback (STARTTLS with a private CA,
//! AUTH), checked header by header and part by part.

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};

use crate::helpers::*;

pub fn smtp_config(smtp: &SmtpServer) -> String {
    format!(
        "smtp:\n  default:\n    host: 127.0.0.1\n    port: {}\n    tls: starttls\n    username: {SMTP_USER}\n    password: ${{SMTP_PASSWORD}}\n    from: \"易信通知 <noreply@example.com>\"\n    ca_file: {}\n",
        smtp.port,
        smtp.ca_file.display()
    )
}

const MAIL_RULES: &str = r#"
actions:
  mail:
    type: email
    to: ['产品团队 <product@example.com>']
    cc: [ops@example.com]
    reply_to: support@example.com
    subject: '[easehook] {{from_user}} 屏蔽了 {{to_user}}'
    text: {template: ban.txt.hbs}
    html: '<p><b>{{from_user}}</b> 屏蔽了 <b>{{to_user}}</b> {{default payload.reason ""}}</p>'
rules:
  - {name: bans, actions: [mail]}
"#;

#[tokio::test]
async fn a_multipart_email_with_chinese_arrives_intact_over_starttls_with_auth() {
    let smtp = SmtpServer::start();
    let opts = Options::rules(MAIL_RULES)
        .template(
            "ban.txt.hbs",
            "{{from_user}} 屏蔽了 {{to_user}}\n时间 {{datetime timestamp tz=\"Asia/Shanghai\"}}\n",
        )
        .config(smtp_config(&smtp))
        .env("SMTP_PASSWORD", SMTP_PASSWORD);
    let app = spawn_app_with(opts).await;
    let mut body = signed("roster:ban", "王小明", "bob");
    body["payload"]["reason"] = serde_json::json!("<script>x</script>");
    sign(&mut body, SECRET);
    assert_eq!(app.post(&body).await.0, 200);
    eventually(Duration::from_secs(20), "one email", || async {
        smtp.mails().len() == 1
    })
    .await;
    let mail = smtp.mails().remove(0);
    assert_eq!(
        mail.auth,
        Some((SMTP_USER.to_string(), SMTP_PASSWORD.to_string())),
        "AUTH was used"
    );
    assert_eq!(mail.from, "noreply@example.com");
    let mut rcpt = mail.to.clone();
    rcpt.sort();
    assert_eq!(rcpt, ["ops@example.com", "product@example.com"]);
    let msg = MessageParser::default()
        .parse(&mail.data)
        .expect("a MIME message");
    assert_eq!(msg.subject(), Some("[easehook] 王小明 屏蔽了 bob"));
    let from = msg.from().unwrap().first().unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("易信通知"), Some("noreply@example.com"))
    );
    let to = msg.to().unwrap().first().unwrap();
    assert_eq!(
        (to.name(), to.address()),
        (Some("产品团队"), Some("product@example.com"))
    );
    assert_eq!(
        msg.cc().unwrap().first().unwrap().address(),
        Some("ops@example.com")
    );
    assert_eq!(
        msg.reply_to().unwrap().first().unwrap().address(),
        Some("support@example.com")
    );
    assert!(msg.date().is_some() && msg.message_id().is_some());
    let ct = msg.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("multipart", Some("alternative"))
    );
    let text = msg.body_text(0).unwrap().replace("\r\n", "\n");
    assert!(text.starts_with("王小明 屏蔽了 bob\n时间 "), "{text}");
    let html = msg.body_html(0).unwrap();
    assert!(
        html.contains("<b>王小明</b> 屏蔽了 <b>bob</b> &lt;script&gt;x&lt;/script&gt;"),
        "{html}"
    );
    // The outcome is recorded after the message is handed over, in the
    // dispatcher's next batch of outcomes: wait for it.
    eventually(
        Duration::from_secs(10),
        "the delivery recorded as sent",
        || async { app.deliveries("sent").await.len() == 1 },
    )
    .await;
}

#[tokio::test]
async fn wrong_smtp_credentials_are_a_permanent_failure() {
    let smtp = SmtpServer::start();
    let opts = Options::rules(MAIL_RULES)
        .template("ban.txt.hbs", "x")
        .config(smtp_config(&smtp))
        .env("SMTP_PASSWORD", "wrong-password-123");
    let app = spawn_app_with(opts).await;
    assert_eq!(app.post(&signed("roster:ban", "a", "b")).await.0, 200);
    let dead = app.wait_for_delivery("dead", Duration::from_secs(20)).await;
    let err = dead["last_error"].as_str().unwrap();
    assert!(err.contains("535"), "{err}");
    assert!(!err.contains("wrong-password-123"));
    assert_eq!(dead["attempts"], 1);
    assert!(smtp.mails().is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_retried() {
    let smtp = SmtpServer::start();
    // Without ca_file the private CA is not trusted: the connection fails,
    // which is worth retrying (the operator may fix the trust store).
    let config = smtp_config(&smtp)
        .lines()
        .filter(|l| !l.contains("ca_file"))
        .collect::<Vec<_>>()
        .join("\n");
    let opts = Options::rules(MAIL_RULES)
        .template("ban.txt.hbs", "x")
        .config(config)
        .env("SMTP_PASSWORD", SMTP_PASSWORD);
    let app = spawn_app_with(opts).await;
    assert_eq!(app.post(&signed("roster:ban", "a", "b")).await.0, 200);
    eventually(Duration::from_secs(20), "a failed attempt", || async {
        app.deliveries("pending")
            .await
            .first()
            .is_some_and(|d| d["attempts"].as_u64() >= Some(1))
    })
    .await;
    let d = app.deliveries("pending").await.remove(0);
    assert!(d["last_error"].as_str().unwrap().contains("SMTP"), "{d}");
    assert!(smtp.mails().is_empty());
}
