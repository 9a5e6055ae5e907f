//! No secret ever leaves: a full run of the built daemon and the CLI, with
//! every log line, command output, error body and admin API answer searched
//! for every configured secret.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::helpers::{Daemon, fixed_ports};

#[tokio::test]
async fn no_output_of_a_full_run_contains_a_secret() {
    let admin_token = "admin-token-s3cr3t-777";
    let smtp_password = "smtp-pa55word-888";
    let hook_token = "hook-t0ken-999";
    let slack = HttpSink::start().await;
    slack.script([Answer::status(404)]);
    let rules = format!(
        "actions:\n\
         \x20 slack: {{type: slack, webhook_url: '{}', text: '{{{{from_user}}}}'}}\n\
         \x20 hook: {{type: http, url: 'http://127.0.0.1:9/${{HOOK_TOKEN}}', headers: {{Authorization: 'Bearer ${{HOOK_TOKEN}}'}}, max_attempts: 1}}\n\
         \x20 mail: {{type: email, to: [a@example.com], subject: s, text: t, max_attempts: 1}}\n\
         rules:\n  - {{name: all, actions: [slack, hook, mail]}}\n",
        slack.url(&format!("/services/{hook_token}"))
    );
    let opts = Options::rules(rules)
        .config("admin_token: ${ADMIN_TOKEN}\nsmtp:\n  default: {host: 127.0.0.1, port: 9, tls: none, username: u, password: '${SMTP_PASSWORD}'}");
    let (_dir, config) = write_config(&opts);
    fixed_ports(&config);
    let env = [
        ("ADMIN_TOKEN", admin_token),
        ("SMTP_PASSWORD", smtp_password),
        ("HOOK_TOKEN", hook_token),
    ];
    let secrets = [SECRET, admin_token, smtp_password, hook_token];
    let mut seen = String::new();

    let d = Daemon::start(&config, &env).await;
    let client = reqwest::Client::new();
    // Good, forged, malformed and oversized callbacks.
    let good = signed("roster:ban", "alice", "bob");
    let mut forged = good.clone();
    forged["security"] = json!("f".repeat(32));
    for body in [
        good.to_string(),
        good.to_string(),
        forged.to_string(),
        "{".into(),
        "x".repeat(100_000),
    ] {
        let r = client
            .post(&d.callback_url)
            .body(body)
            .send()
            .await
            .unwrap();
        seen += &r.text().await.unwrap();
    }
    // Deliveries fail in every way (404 from Slack, connection refused, SMTP down).
    eventually(Duration::from_secs(15), "three dead deliveries", || async {
        let r = client
            .get(format!("{}/api/v1/deliveries?status=dead", d.admin_url))
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()["deliveries"]
            .as_array()
            .unwrap()
            .len()
            == 3
    })
    .await;
    for path in [
        "/api/v1/status",
        "/api/v1/deliveries",
        "/api/v1/events",
        "/metrics",
        "/-/reload",
    ] {
        let req = if path == "/-/reload" {
            client.post(format!("{}{path}", d.admin_url))
        } else {
            client.get(format!("{}{path}", d.admin_url))
        };
        seen += &req
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen += &get_text(&client, &format!("{}{path}", d.admin_url)).await;
    }
    // The CLI: check (valid and broken), test, simulate --print is the one
    // place a signature is printed (its purpose), so it is not searched.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("IT_SECRET", SECRET)
            .envs(env)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    seen += &cli(&["check"]);
    let fixture = fixture("roster-ban.json");
    seen += &cli(&["test", "--event", fixture.to_str().unwrap()]);
    seen += &cli(&["deliveries", "list"]);
    seen += &cli(&["events", "list"]);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap()
            + "colour: \"${ADMIN_TOKEN}\"\nlisten: \"${SMTP_PASSWORD}\"\n",
    )
    .unwrap();
    seen += &cli(&["check"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen += &d.lines.lock().unwrap().join("\n");
    assert!(
        seen.len() > 5000,
        "enough output was searched: {}",
        seen.len()
    );
    for s in secrets {
        assert!(!seen.contains(s), "secret {s:?} leaked in:\n{seen}");
    }
}
