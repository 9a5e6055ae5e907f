//! Hot reload: by file change and by `POST /-/reload`; an invalid set is
//! rejected whole and the old rules keep working.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

fn rules(names: &[&str]) -> String {
    let mut s = String::from("actions:\n  note: {type: log, message: '{{event}}'}\nrules:\n");
    for n in names {
        s += &format!("  - {{name: {n}, when: {{event: roster:ban}}, actions: [note]}}\n");
    }
    s
}

async fn matched_rules(app: &TestApp) -> serde_json::Value {
    let body = signed("roster:ban", "alice", "bob");
    let (status, answer) = app.post(&body).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    let events = app.events().await;
    events.into_iter().find(|e| e["id"] == id.as_str()).unwrap()["rules"].clone()
}

#[tokio::test]
async fn a_changed_rule_file_is_picked_up_without_restart() {
    let app = spawn_app_with(Options::rules(rules(&["first"]))).await;
    assert_eq!(matched_rules(&app).await, json!(["first"]));
    app.write_rules(&rules(&["first", "second"]));
    eventually(Duration::from_secs(10), "the new rule set", || async {
        app.rule_count().await == 2
    })
    .await;
    assert_eq!(matched_rules(&app).await, json!(["first", "second"]));
    let status = app.get("/api/v1/status").await;
    assert_eq!(status["last_reload"]["successful"], true);
}

#[tokio::test]
async fn a_changed_template_is_picked_up() {
    let opts = Options::rules(
        "actions:\n  note: {type: log, message: {template: note.hbs}}\nrules:\n  - {name: r, actions: [note]}\n",
    )
    .template("note.hbs", "v1 {{event}}");
    let app = spawn_app_with(opts).await;
    let before = app.get("/api/v1/status").await["last_reload"]["at"].clone();
    std::fs::write(
        app.dir.path().join("templates/note.hbs"),
        "v2 {{event}} {{broken",
    )
    .unwrap();
    // The broken template is rejected, and says so.
    eventually(Duration::from_secs(10), "a failed reload", || async {
        app.get("/api/v1/status").await["last_reload"]["successful"] == false
    })
    .await;
    let status = app.get("/api/v1/status").await;
    assert!(
        status["last_reload"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("note.hbs"),
        "{status}"
    );
    let _ = before;
}

#[tokio::test]
async fn post_reload_reports_every_problem_and_keeps_the_old_rules() {
    let app = spawn_app_with(Options::rules(rules(&["kept"]))).await;
    // Written in place (no rename) and reloaded at once by the API; the file
    // watcher may also see it, which changes nothing.
    std::fs::write(
        app.dir.path().join("rules/10-test.yaml"),
        "actions:\n  bad: {type: log}\nrules:\n  - {name: x, when: {from: {regex: '('}}, actions: [ghost]}\n",
    )
    .unwrap();
    let (status, body) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 400, "{body}");
    let problems: Vec<String> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("action bad") && p.contains("message")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("rule x: when.from: invalid regex")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("rule x: unknown action `ghost`")),
        "{problems:?}"
    );
    // The old set keeps serving.
    assert_eq!(matched_rules(&app).await, json!(["kept"]));
    assert_eq!(
        app.get("/api/v1/status").await["last_reload"]["successful"],
        false
    );
    // Fixed, the reload succeeds.
    app.write_rules(&rules(&["fixed"]));
    let (status, body) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(matched_rules(&app).await, json!(["fixed"]));
}

#[tokio::test]
async fn reload_under_load_never_fails_a_callback_or_mixes_rule_sets() {
    let app = std::sync::Arc::new(spawn_app_with(Options::rules(rules(&["a1", "a2"]))).await);
    let poster = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..300 {
                let (status, answer) = app.post(&signed("roster:ban", "alice", "bob")).await;
                assert_eq!(status, 200, "{answer}");
                ids.push(answer["id"].as_str().unwrap().to_string());
            }
            ids
        })
    };
    for i in 0..100 {
        let set = if i % 2 == 0 {
            rules(&["b1", "b2"])
        } else {
            rules(&["a1", "a2"])
        };
        app.write_rules(&set);
        let (status, body) = app.admin(reqwest::Method::POST, "/-/reload").await;
        assert_eq!(status, 200, "{body}");
    }
    let ids = poster.await.unwrap();
    let events = app.events().await;
    assert_eq!(events.len(), ids.len());
    for e in events {
        // Each callback saw one whole set: never a1 with b2.
        let r = e["rules"].clone();
        assert!(r == json!(["a1", "a2"]) || r == json!(["b1", "b2"]), "{r}");
    }
}
