//! Rule tests (SPEC §14): `tests:` in a rule file run with `check`, at
//! start-up and on reload; a failing one is a problem like any other.

use crate::helpers::easehook;
use crate::helpers::*;

const RULES: &str = r#"
actions:
  mail: {type: email, to: [product@example.com], subject: "{{from_user}} blocked {{to_user}}", text: "at {{time}}"}
  hook: {type: http, url: "https://audit.example/{{event}}", json: {user: "{{from_user}}", n: 3}}
rules:
  - {name: ban-to-product, when: {event: roster:ban}, unless: {from: "test_*"}, actions: [mail, hook]}
  - {name: audit, when: {event: roster}, actions: [hook]}
tests:
  - name: a ban reaches the product team
    event: {file: ban.json}
    rules: [ban-to-product, audit]
    actions: [mail, hook]
    expect:
      mail.subject: {contains: "blocked bob"}
      hook.url: "https://audit.example/roster%3Aban"
      hook.json.user: alice
      hook.json.n: 3
  - name: a test user's ban is only audited
    event: {chat_type: roster, payload: {operation: ban}, from: "org#app_test_1", to: bob, appkey: "org#app"}
    rules: [audit]
    actions: [hook]
"#;

fn ban_json(from: &str) -> String {
    serde_json::json!({"chat_type": "roster", "payload": {"operation": "ban", "status": {"error_code": "ok"}},
        "appkey": APPKEY, "from": format!("{APPKEY}_{from}@easemob.com"), "to": "bob", "eventType": "chat"})
    .to_string()
}

#[test]
fn passing_tests_pass_check_and_wrong_expectations_fail_it_located() {
    let (dir, config) = write_config(&Options::rules(RULES));
    std::fs::write(dir.path().join("rules/ban.json"), ban_json("alice")).unwrap();
    let (code, out, err) = easehook(&config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");

    // The same file with wrong expectations: every difference, located.
    let wrong = RULES
        .replace(
            "rules: [ban-to-product, audit]",
            "rules: [ban-to-product, audit, more]",
        )
        .replace("contains: \"blocked bob\"", "contains: \"blocked carol\"")
        .replace("hook.json.n: 3", "hook.json.n: 4")
        .replace("rules: [audit]", "rules: [ban-to-product]");
    std::fs::write(dir.path().join("rules/10-test.yaml"), wrong).unwrap();
    let (code, out, _) = easehook(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    let file = dir.path().join("rules/10-test.yaml").display().to_string();
    for expected in [
        format!("{file}: tests[0] (a ban reaches the product team): expected rule more, got none"),
        format!(
            "{file}: tests[0] (a ban reaches the product team): mail.subject: expected it to contain \"blocked carol\", got \"alice blocked bob\""
        ),
        format!(
            "{file}: tests[0] (a ban reaches the product team): hook.json.n: expected \"4\", got \"3\""
        ),
        format!(
            "{file}: tests[1] (a test user's ban is only audited): expected rule ban-to-product, got audit"
        ),
    ] {
        assert!(out.contains(&expected), "{expected}\n{out}");
    }
    assert!(out.contains("4 problem(s) found"), "{out}");

    // A missing event file, and a test of an unknown shape.
    std::fs::write(
        dir.path().join("rules/10-test.yaml"),
        "rules: []\ntests:\n  - {event: {file: nope.json}}\n  - {event: {}, expects: [x]}\n  - {event: {}, code: X}\n",
    )
    .unwrap();
    let (code, out, _) = easehook(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{file}: tests[0]: event: cannot read ")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{file}: tests[1]: expects: unknown field `expects`"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{file}: tests[2]: `code` checks a moderation verdict: give `verdict:` too"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn a_failing_test_stops_start_up_and_rejects_a_reload() {
    let opts = Options::rules(RULES);
    let (dir, config) = write_config(&opts);
    std::fs::write(dir.path().join("rules/ban.json"), ban_json("alice")).unwrap();
    let app = start_from(&config, &opts).await;
    // A change that breaks a test: refused, the old set stays in force.
    std::fs::write(
        dir.path().join("rules/10-test.yaml"),
        RULES.replace("unless: {from: \"test_*\"}, ", ""),
    )
    .unwrap();
    let status = reqwest::Client::new()
        .post(format!("http://{}/-/reload", app.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 400);
    let body: serde_json::Value = status.json().await.unwrap();
    let problems = body["problems"].to_string();
    assert!(
        problems.contains(
            "tests[1] (a test user's ban is only audited): expected rule audit, got ban-to-product"
        ),
        "{problems}"
    );
    app.shutdown();
    // And a daemon does not start with it.
    let err = easehook::app::App::start(
        &config,
        std::sync::Arc::new(env_map(&opts)),
        easehook::shutdown::Shutdown::new(),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        format!("{err:#}").contains("expected rule audit, got ban-to-product"),
        "{err:#}"
    );
}
