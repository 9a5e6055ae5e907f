//! The repository's own rules and templates — the product team's ban
//! notifications — end to end: a real SMTP server gets the HTML + text
//! email, a real HTTP server gets the Slack message with blocks.

use std::time::Duration;

use mail_parser::MessageParser;

use crate::helpers::*;

#[tokio::test]
async fn the_shipped_ban_notifications_reach_email_and_slack() {
    let smtp = SmtpServer::start();
    let slack = HttpSink::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut opts = Options::rules("").config(format!(
        "timezone: Asia/Shanghai\nsmtp:\n  default:\n    host: ${{SMTP_HOST}}\n    port: {}\n    tls: starttls\n    username: {SMTP_USER}\n    password: ${{SMTP_PASSWORD}}\n    from: \"easehook <noreply@example.com>\"\n    ca_file: {}\n",
        smtp.port,
        smtp.ca_file.display()
    ));
    for t in [
        "ban.txt.hbs",
        "ban.html.hbs",
        "ban-digest.txt.hbs",
        "ban-digest.html.hbs",
        "footer.txt.hbs",
    ] {
        opts = opts.template(
            t,
            &std::fs::read_to_string(root.join("templates").join(t)).unwrap(),
        );
    }
    let opts = opts
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PASSWORD", SMTP_PASSWORD)
        .env("PRODUCT_EMAIL", "product@example.com")
        .env("SLACK_WEBHOOK_URL", &slack.url("/services/T000/B000/XXXX"));
    let (dir, config) = write_config(&opts);
    // The shipped rule files replace the generated one (all of them: their
    // tests name the rules of the whole set).
    std::fs::remove_file(dir.path().join("rules/10-test.yaml")).unwrap();
    for r in [
        "10-ban.yaml",
        "12-ban-waves.yaml",
        "15-ban-chat.yaml",
        "20-audit.yaml",
    ] {
        std::fs::copy(root.join("rules").join(r), dir.path().join("rules").join(r)).unwrap();
    }
    // Replace the generated timezone line (UTC) with the one above.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("timezone: UTC\n", "", 1);
    std::fs::write(&config, text).unwrap();
    let app = start_from(&config, &opts).await;
    let url = format!("http://{}/easemob/callback", app.callback_addr);
    let client = reqwest::Client::new();
    let mut ban = easehook::rules::samples::body(
        "roster:ban",
        APPKEY,
        "alice",
        "bob",
        &unique_id(),
        1_642_648_046_912,
    );
    sign(&mut ban, SECRET);
    assert_eq!(post_json(&client, &url, &ban).await.0, 200);
    eventually(
        Duration::from_secs(20),
        "the email and the Slack message",
        || async { smtp.mails().len() == 1 && slack.count() == 1 },
    )
    .await;

    let mail = smtp.mails().remove(0);
    assert_eq!(mail.to, ["product@example.com"]);
    let msg = MessageParser::default().parse(&mail.data).unwrap();
    assert_eq!(msg.subject(), Some("[easehook] alice blocked bob"));
    let text = msg.body_text(0).unwrap().replace("\r\n", "\n");
    assert!(text.starts_with("alice blocked bob.\n"), "{text}");
    assert!(
        text.contains("When:    2022-01-20 11:07:26 (CST)"),
        "{text}"
    );
    assert!(text.contains("App:     org#app"), "{text}");
    assert!(text.contains("Result:  ok"), "{text}");
    assert!(
        text.contains("rule ban-to-product, action product-email"),
        "{text}"
    );
    let html = msg.body_html(0).unwrap();
    assert!(html.contains("<b>alice</b> blocked <b>bob</b>"), "{html}");
    assert!(html.contains("2022-01-20 11:07:26 (CST)"), "{html}");

    let req = slack.requests().remove(0);
    assert_eq!(req.path, "/services/T000/B000/XXXX");
    let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(
        body["text"],
        ":no_entry: *alice* blocked *bob* at 2022-01-20 11:07:26"
    );
    assert_eq!(body["blocks"][0]["text"]["text"], "User blocked");
    assert_eq!(
        body["blocks"][1]["fields"][0]["text"],
        "*Blocked by*\nalice"
    );
    assert_eq!(
        body["blocks"][1]["fields"][1]["text"],
        "*Blocked user*\nbob"
    );
    assert_eq!(body["blocks"][1]["fields"][3]["text"], "*App*\norg#app");
    assert!(
        body["blocks"][2]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("result `ok`"),
        "{body}"
    );

    // A test user's ban is logged (roster-audit) but not sent to the product team.
    let mut test_ban = easehook::rules::samples::body(
        "roster:ban",
        APPKEY,
        "test_bot",
        "bob",
        &unique_id(),
        1_642_648_046_912,
    );
    sign(&mut test_ban, SECRET);
    assert_eq!(post_json(&client, &url, &test_ban).await.0, 200);
    let admin = format!("http://{}/api/v1/deliveries?status=sent", app.admin_addr);
    eventually(
        Duration::from_secs(10),
        "the test user's ban logged",
        || async {
            let v: serde_json::Value = get_json(&client, &admin).await.1;
            v["deliveries"].as_array().unwrap().len() == 4
        },
    )
    .await;
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(slack.count(), 1);
    app.shutdown();
    drop(dir);
}

/// The shipped moderation: the commented `presend:` section of the
/// development config, uncommented, with the example rule file and the
/// word lists of `words/`. Its rule tests run at start-up; a contact ad
/// spelled apart is blocked, abuse masked, staff passed.
#[tokio::test]
async fn the_shipped_moderation_example_answers_as_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("easehook.yaml")).unwrap();
    let section: String = shipped
        .lines()
        .skip_while(|l| !l.starts_with("# presend:"))
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or("")))
        .collect();
    assert!(section.contains("word_lists:"), "{section}");
    let opts = Options::rules("").config(section);
    let (dir, config) = write_config(&opts);
    std::fs::remove_file(dir.path().join("rules/10-test.yaml")).unwrap();
    std::fs::copy(
        root.join("rules/30-moderation.yaml.example"),
        dir.path().join("rules/30-moderation.yaml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("words")).unwrap();
    for list in ["contact.txt", "abuse.txt"] {
        std::fs::copy(
            root.join("words").join(list),
            dir.path().join("words").join(list),
        )
        .unwrap();
    }
    let (code, out, err) = easehook(&config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("word list contact:"), "{out}");
    let app = start_from(&config, &opts).await;
    let url = format!("http://{}/easemob/presend", app.callback_addr);
    let client = reqwest::Client::new();
    for (from, text, want) in [
        (
            "alice",
            "加 我 微 信: abc",
            r#"{"valid":false,"code":"HX:10001"}"#,
        ),
        (
            "alice",
            "打 13812345678 找我",
            r#"{"valid":false,"code":"HX:10002"}"#,
        ),
        (
            "alice",
            "你个傻逼",
            r#"{"valid":true,"payload":{"msg":"你个**","type":"txt"}}"#,
        ),
        ("staff_li", "加微信", r#"{"valid":true}"#),
        ("alice", "明天见", r#"{"valid":true}"#),
    ] {
        let r = client
            .post(&url)
            .json(&presend_txt(from, text))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), want, "{from}: {text}");
    }
}
