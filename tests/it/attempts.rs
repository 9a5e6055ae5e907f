//! Every attempt of every delivery is kept with it (SPEC §13): through the
//! admin API (`GET /api/v1/deliveries/{id}`), `easehook deliveries show`,
//! and `easehook_delivery_attempts_total`, with the destination's own code
//! (an HTTP status from a real HTTP sink, an SMTP reply code from a real
//! SMTP server).

use std::time::Duration;

use serde_json::Value;

use crate::email::smtp_config;
use crate::helpers::*;

#[tokio::test]
async fn a_delivery_shows_each_attempt_with_its_code_in_the_api_cli_and_metrics() {
    let sink = HttpSink::start().await;
    sink.script([Answer::status(500), Answer::status(200)]);
    let smtp = SmtpServer::start();
    let rules = format!(
        "actions:\n  hook: {{type: http, url: '{}', json: {{user: '{{{{from_user}}}}'}}}}\n  \
         mail: {{type: email, to: [ops@example.com], subject: 'ban', text: 'x'}}\n\
         rules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [hook, mail]}}\n",
        sink.url("/hook")
    );
    let opts = Options::rules(rules)
        .config(smtp_config(&smtp))
        .env("SMTP_PASSWORD", SMTP_PASSWORD);
    let OnFixedPorts {
        dir: _dir,
        config,
        app: _app,
        cb,
        admin,
    } = start_on_fixed_ports(&opts).await;
    let client = reqwest::Client::new();
    let status = client
        .post(format!("http://127.0.0.1:{cb}/easemob/callback"))
        .json(&signed("roster:ban", "alice", "bob"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let get = |path: String| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://127.0.0.1:{admin}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    eventually(Duration::from_secs(20), "both deliveries sent", || async {
        get("/api/v1/deliveries?status=sent".into()).await.1["deliveries"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let list = get("/api/v1/deliveries".into()).await.1;
    let id_of = |action: &str| {
        list["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["action"] == action)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (status, hook) = get(format!("/api/v1/deliveries/{}", id_of("hook"))).await;
    assert_eq!(status, 200, "{hook}");
    assert_eq!(hook["status"], "sent");
    assert_eq!(hook["action"], "hook");
    let attempts = hook["attempts_made"].as_array().unwrap();
    let seen: Vec<(u64, &str, u64)> = attempts
        .iter()
        .map(|a| {
            (
                a["n"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(1, "retry", 500), (2, "sent", 200)], "{hook}");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 500")
    );
    assert!(attempts[1]["error"].is_null());
    assert!(attempts[1]["started_at"].as_u64() >= attempts[0]["started_at"].as_u64());
    let (_, mail) = get(format!("/api/v1/deliveries/{}", id_of("mail"))).await;
    assert_eq!(mail["attempts_made"][0]["code"], 250, "{mail}");
    assert_eq!(mail["attempts_made"][0]["outcome"], "sent");
    // Unknown or malformed ids: 404.
    assert_eq!(get("/api/v1/deliveries/999999".into()).await.0, 404);
    assert_eq!(get("/api/v1/deliveries/abc".into()).await.0, 404);

    let id = id_of("hook").to_string();
    let (code, out, _) = crate::helpers::easehook_with(
        &config,
        &["deliveries", "show", &id],
        &[("SMTP_PASSWORD", SMTP_PASSWORD)],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("action hook, rule bans"), "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("Z ")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].contains("retry") && rows[0].contains("500") && rows[0].contains("HTTP 500"));
    assert!(rows[1].contains("sent") && rows[1].contains("200"));
    assert!(out.ends_with("2 attempt(s)\n"), "{out}");

    let metrics = get_text(&client, &format!("http://127.0.0.1:{admin}/metrics")).await;
    for line in [
        "easehook_delivery_attempts_total{action=\"hook\",outcome=\"retry\"} 1",
        "easehook_delivery_attempts_total{action=\"hook\",outcome=\"sent\"} 1",
        "easehook_delivery_attempts_total{action=\"mail\",outcome=\"sent\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}
