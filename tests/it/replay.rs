//! `easehook events replay` and `POST /api/v1/events/replay` (SPEC §14): a
//! rule added after its events were stored gives them their deliveries,
//! once however often it is replayed, on one daemon or two replicas at once.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

fn rules(sink: &HttpSink, with_new_rule: bool) -> String {
    let mut s = format!(
        "actions:\n  a: {{type: http, url: '{0}/a'}}\n  b: {{type: http, url: '{0}/b'}}\nrules:\n  \
         - {{name: bans, when: {{event: roster:ban}}, actions: [a]}}\n",
        sink.url("")
    );
    if with_new_rule {
        s += "  - {name: adds, when: {event: roster:add}, actions: [b]}\n";
    }
    s
}

fn to(sink: &HttpSink, path: &str) -> usize {
    sink.requests().iter().filter(|r| r.path == path).count()
}

#[tokio::test]
async fn a_new_rule_replayed_twice_delivers_each_event_once() {
    let sink = HttpSink::start().await;
    let opts = Options::rules(rules(&sink, false));
    let OnFixedPorts {
        dir,
        config,
        app,
        cb,
        admin,
    } = start_on_fixed_ports(&opts).await;
    let client = reqwest::Client::new();
    let mut adds = Vec::new();
    for (event, from) in [
        ("roster:ban", "u1"),
        ("roster:add", "u2"),
        ("roster:ban", "u3"),
        ("roster:add", "u4"),
    ] {
        let r: Value = post_json(
            &client,
            &format!("http://127.0.0.1:{cb}/easemob/callback"),
            &signed(event, from, "bob"),
        )
        .await
        .1;
        if event == "roster:add" {
            adds.push(r["id"].as_str().unwrap().to_string());
        }
    }
    eventually(Duration::from_secs(20), "the bans delivered", || async {
        to(&sink, "/a") == 2
    })
    .await;
    // The new rule, reloaded.
    std::fs::write(dir.path().join("rules/10-test.yaml"), rules(&sink, true)).unwrap();
    let reload = client
        .post(format!("http://127.0.0.1:{admin}/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);

    let (code, out) = run_cli(&config, &["events", "replay", "--since", "1h", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");
    for id in &adds {
        assert!(
            out.contains(&format!("would create: event {id} action b (rule adds)")),
            "{out}"
        );
    }
    assert!(
        out.contains("4 event(s) evaluated; 2 deliveries would be created (dry run"),
        "{out}"
    );
    let (code, out) = run_cli(&config, &["events", "replay", "--since", "1h"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("4 event(s) evaluated; 2 deliveries created"),
        "{out}"
    );
    let (code, out) = run_cli(&config, &["events", "replay", "--since", "1h"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("4 event(s) evaluated; 0 deliveries created"),
        "{out}"
    );
    eventually(
        Duration::from_secs(20),
        "the replayed deliveries",
        || async { to(&sink, "/b") == 2 },
    )
    .await;
    let deliveries: Value = get_json(
        &client,
        &format!("http://127.0.0.1:{admin}/api/v1/deliveries?limit=100"),
    )
    .await
    .1;
    let b = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "b")
        .count();
    assert_eq!(b, 2, "each add once");
    assert_eq!(to(&sink, "/a"), 2, "the bans, which had theirs, not again");

    // Bad input: an unknown rule, a period with no events.
    let (code, out) = run_cli(
        &config,
        &["events", "replay", "--since", "1h", "--rule", "nope"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 400: unknown rule"), "{out}");
    let (code, out) = run_cli(
        &config,
        &["events", "replay", "--since", "1h", "--until", "1000"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no stored events in that period"), "{out}");
    drop(app);
}

#[tokio::test]
async fn two_replicas_replaying_at_once_deliver_each_event_once() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    let store = crate::helpers::pg::store_config(&url, 8);
    let first = spawn_app_with(Options::rules(rules(&sink, false)).config(store.clone())).await;
    for i in 0..10 {
        assert_eq!(
            first
                .post(&signed("roster:add", &format!("u{i}"), "bob"))
                .await
                .0,
            200
        );
    }
    drop(first);
    let opts = Options::rules(rules(&sink, true)).config(store);
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    let replay = |app: &TestApp| {
        let url = format!("{}/api/v1/events/replay?since=1h", app.admin_url);
        let client = app.client.clone();
        async move {
            let r: Value = client.post(url).send().await.unwrap().json().await.unwrap();
            r["created"].as_array().unwrap().len()
        }
    };
    let (x, y) = tokio::join!(replay(&a), replay(&b));
    assert_eq!(x + y, 10, "each add once between the two ({x} + {y})");
    assert_eq!(replay(&a).await, 0);
    eventually(
        Duration::from_secs(20),
        "the replayed deliveries",
        || async { to(&sink, "/b") == 10 },
    )
    .await;
    let events = a.events().await;
    assert_eq!(events.len(), 10);
    assert!(
        events
            .iter()
            .all(|e| e["deliveries"].as_array().unwrap().len() == 1)
    );
}
