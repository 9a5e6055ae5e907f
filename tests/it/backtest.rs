//! `easehook test --since` (SPEC §14): stored events backtested against a
//! candidate rule set that adds a rule, removes one and changes a condition.
//! The counts and differences are exact, and nothing is sent or stored.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

fn rules(sink: &HttpSink, set: &str) -> String {
    let actions = format!(
        "actions:\n  a: {{type: http, url: '{0}/a'}}\n  b: {{type: http, url: '{0}/b'}}\n  c: {{type: http, url: '{0}/c'}}\n",
        sink.url("")
    );
    let rules = match set {
        "in force" => {
            "rules:\n  - {name: bans, when: {event: roster:ban}, actions: [a]}\n  \
             - {name: adds, when: {event: roster:add}, actions: [b]}\n  \
             - {name: vip, when: {event: roster:ban, to: vip}, actions: [c]}\n"
        }
        _ => {
            "rules:\n  - {name: bans, when: {event: roster:ban}, actions: [a]}\n  \
             - {name: vip, when: {event: roster:ban, to: [vip, vip2]}, actions: [c]}\n  \
             - {name: removes, when: {event: roster:remove}, actions: [a]}\n"
        }
    };
    format!("{actions}{rules}")
}

#[tokio::test]
async fn a_changed_rule_set_is_compared_with_what_the_rules_in_force_made() {
    let sink = HttpSink::start().await;
    let opts = Options::rules(rules(&sink, "in force"));
    let OnFixedPorts {
        dir,
        config,
        app,
        cb,
        ..
    } = start_on_fixed_ports(&opts).await;
    let url = format!("http://127.0.0.1:{cb}/easemob/callback");
    let client = reqwest::Client::new();
    // A day of events: each callback's timestamp chosen across it.
    let day = 86_400_000;
    let now = easehook::now_ms();
    let sent: Vec<(&str, &str, &str)> = vec![
        ("roster:ban", "u1", "x"),
        ("roster:ban", "u2", "vip"),
        ("roster:add", "u3", "x"),
        ("roster:ban", "u4", "vip2"),
        ("roster:remove", "u5", "x"),
        ("roster:ban", "u6", "vip"),
        ("roster:add", "u7", "x"),
        ("roster:ban", "u8", "x"),
        ("roster:remove", "u9", "x"),
        ("roster:add", "u10", "x"),
        ("roster:ban", "u11", "x"),
    ];
    let mut ids = std::collections::HashMap::new();
    for (i, (event, from, to)) in sent.iter().enumerate() {
        let mut body = easehook::rules::samples::body(
            event,
            APPKEY,
            from,
            to,
            &unique_id(),
            now - day + (i as u64) * day / 12,
        );
        sign(&mut body, SECRET);
        let r: Value = post_json(&client, &url, &body).await.1;
        ids.insert(*from, r["id"].as_str().unwrap().to_string());
    }
    eventually(
        Duration::from_secs(20),
        "the in-force deliveries sent",
        || async { sink.count() == 6 + 3 + 2 },
    )
    .await;
    std::fs::create_dir(dir.path().join("candidate")).unwrap();
    std::fs::write(
        dir.path().join("candidate/rules.yaml"),
        rules(&sink, "candidate"),
    )
    .unwrap();
    let candidate = dir.path().join("candidate").display().to_string();
    let (code, out, err) = easehook_with(
        &config,
        &["test", "--since", "2d", "--rules", &candidate, "--json"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["events"], 11);
    let rows: Vec<(String, String, u64, u64, i64)> = report["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["action"].as_str().unwrap().to_string(),
                r["in_force"].as_u64().unwrap(),
                r["candidate"].as_u64().unwrap(),
                r["difference"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64, u64, i64)> = [
        ("adds", "b", 3, 0, -3),
        ("bans", "a", 6, 6, 0),
        ("removes", "a", 0, 2, 2),
        ("vip", "c", 2, 3, 1),
    ]
    .iter()
    .map(|(r, a, x, y, d)| (r.to_string(), a.to_string(), *x, *y, *d))
    .collect();
    assert_eq!(rows, expected);
    let row = |rule: &str| {
        report["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap()
            .clone()
    };
    assert_eq!(
        row("vip")["added"],
        json!([{"id": ids["u4"], "event": "roster:ban", "from": "u4", "to": "vip2"}])
    );
    assert_eq!(row("adds")["removed"].as_array().unwrap().len(), 3);
    assert_eq!(row("removes")["added"][1]["from"], "u9");
    assert_eq!(row("bans")["added"], json!([]));
    // The text report says the same.
    let (code, out, _) = easehook_with(
        &config,
        &["test", "--since", "2d", "--rules", &candidate],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("11 stored event(s) received"), "{out}");
    assert!(
        out.contains(&format!(
            "    now also: {} roster:ban u4 -> vip2",
            ids["u4"]
        )),
        "{out}"
    );
    assert!(
        out.contains("3 of 4 rule and action pair(s) would change"),
        "{out}"
    );
    // Only bans: the other families are left out.
    let (_, out, _) = easehook_with(
        &config,
        &[
            "test",
            "--since",
            "2d",
            "--event",
            "roster:ban",
            "--rules",
            &candidate,
            "--json",
        ],
        &[],
    )
    .await;
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["events"], 6);
    // Nothing was sent or stored.
    assert_eq!(sink.count(), 11);
    let events: Value = get_json(
        &client,
        &format!("http://{}/api/v1/events?limit=100", app.admin_addr),
    )
    .await
    .1;
    assert_eq!(events["events"].as_array().unwrap().len(), 11);

    // Bad input: a period with nothing, a candidate set with a problem, a
    // usage error, an admin API that does not answer.
    // (The period is of the time events were received, here all today.)
    let (code, out, _) =
        easehook_with(&config, &["test", "--since", "2d", "--until", "1d"], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("no stored events between"), "{out}");
    std::fs::write(
        dir.path().join("candidate/rules.yaml"),
        "rules:\n  - {name: r, actions: [ghost]}\n",
    )
    .unwrap();
    let (code, out, _) = easehook_with(
        &config,
        &["test", "--since", "2d", "--rules", &candidate],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rule r: unknown action `ghost`"), "{out}");
    assert!(
        out.contains("problem(s) found in the candidate rules"),
        "{out}"
    );
    let (code, _, err) = easehook_with(&config, &["test", "--until", "1d"], &[]).await;
    assert_eq!(code, 2, "{err}");
    app.shutdown();
    let _ = app.wait().await;
    let (code, _, err) = easehook_with(&config, &["test", "--since", "2d"], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

/// Digests and thresholds are backtested by replaying the period in order:
/// a digest regrouped, and a threshold added.
#[tokio::test]
async fn digests_and_thresholds_are_replayed_in_order() {
    let sink = HttpSink::start().await;
    let actions = format!("actions:\n  a: {{type: http, url: '{}/a'}}\n", sink.url(""));
    let in_force = format!(
        "{actions}rules:\n  - {{name: wave, when: {{event: roster:ban}}, digest: {{window: 1h, by: [to]}}, actions: [a]}}\n"
    );
    let candidate = format!(
        "{actions}rules:\n  - {{name: wave, when: {{event: roster:ban}}, digest: {{window: 1h}}, actions: [a]}}\n  \
         - {{name: spam, when: {{event: roster:ban}}, threshold: {{count: 3, within: 1h, by: [to], distinct: from}}, actions: [a]}}\n"
    );
    let opts = Options::rules(in_force);
    let OnFixedPorts {
        dir,
        config,
        app,
        cb,
        ..
    } = start_on_fixed_ports(&opts).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for (from, to) in [
        ("u1", "m"),
        ("u2", "n"),
        ("u3", "m"),
        ("u4", "n"),
        ("u5", "m"),
    ] {
        let r: Value = post_json(
            &client,
            &format!("http://127.0.0.1:{cb}/easemob/callback"),
            &signed("roster:ban", from, to),
        )
        .await
        .1;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    std::fs::create_dir(dir.path().join("candidate")).unwrap();
    std::fs::write(dir.path().join("candidate/rules.yaml"), candidate).unwrap();
    let candidate = dir.path().join("candidate").display().to_string();
    let (code, out, err) = easehook_with(
        &config,
        &["test", "--since", "1h", "--rules", &candidate, "--json"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let rows: Vec<(String, u64, u64)> = report["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["in_force"].as_u64().unwrap(),
                r["candidate"].as_u64().unwrap(),
            )
        })
        .collect();
    // In force: a digest per blocked user (two, still open); the candidate:
    // one digest, and one firing at the third distinct blocker of m.
    assert_eq!(
        rows,
        [("spam".to_string(), 0, 1), ("wave".to_string(), 2, 1)]
    );
    let spam = &report["deliveries"][0];
    assert_eq!(spam["added"][0]["id"], ids[4].as_str(), "fired by u5's ban");
    assert_eq!(spam["added"][0]["from"], "u5");
    drop(app);
}
