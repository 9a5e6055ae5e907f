//! The command line, run as a user would: the built binary.

use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

#[test]
fn check_accepts_the_repository_examples() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = easehook(&root.join("easehook.yaml"), &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid: 5 rule(s)"), "{out}");
    assert!(out.contains("action product-email: disabled"), "{out}");
    assert!(out.contains("action ban-digest-email: disabled"), "{out}");
}

#[test]
fn the_shipped_ban_digest_and_spammer_alert_render_over_a_sequence() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ban = fixture("roster-ban.json");
    let mut args = vec!["test".to_string()];
    for _ in 0..5 {
        args.extend(["--event".into(), ban.display().to_string()]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--config")
        .arg(root.join("easehook.yaml"))
        .args(&args)
        .current_dir(root)
        .env("BAN_DIGEST_EMAIL", "product@example.com")
        .env("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/slack")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // One email for the five blocks, the events as a table, the period in
    // the configured zone (Asia/Shanghai).
    assert!(
        text.contains("digest ban-digest of group {\"appkey\":"),
        "{text}"
    );
    assert!(text.contains("5 block(s) in"), "{text}");
    assert!(text.contains("<th>When</th><th>Blocked by</th>"), "{text}");
    assert_eq!(
        text.matches("<tr style=\"border-bottom:1px solid #f0f1f3\">")
            .count(),
        5,
        "{text}"
    );
    assert!(text.contains("CST"), "{text}");
    // One blocker five times is one distinct blocker: no spammer alert.
    assert!(!text.contains("threshold likely-spammer fires"), "{text}");
}

#[test]
fn check_reports_every_problem_in_one_run_and_exits_1() {
    let opts = Options::rules(
        "actions:\n\
         \x20 mail: {type: email, to: [ops@example.com], subject: hi, text: {template: nope.hbs}}\n\
         \x20 hook: {type: http, url: 'https://x.example/', headers: {Authorization: 'Bearer ${AUDIT_TOKEN}'}}\n\
         \x20 typo: {type: log, mesage: x}\n\
         rules:\n\
         \x20 - {name: r1, when: {from: {regex: '[z-a]'}}, actions: [hook]}\n\
         \x20 - {name: r2, actions: [ghost]}\n",
    )
    .config("max_body: lots");
    let (_dir, config) = write_config(&opts);
    let (code, out, _) = easehook(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    // The config file's problem stops loading before the rules are read.
    assert!(
        out.contains("easehook.yaml: max_body: invalid size"),
        "{out}"
    );
    // Fixed, the rule problems all come out together.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("max_body: lots", ""),
    )
    .unwrap();
    let (code, out, _) = easehook(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    for needle in [
        "10-test.yaml: action mail: text: template file \"nope.hbs\" not found",
        "10-test.yaml: actions.hook.headers.Authorization: environment variable AUDIT_TOKEN is not set",
        "10-test.yaml: action typo: mesage: unknown field `mesage`",
        "10-test.yaml: rule r1: when.from: invalid regex",
        "10-test.yaml: rule r2: unknown action `ghost`",
        "5 problem(s) found",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn check_never_prints_secrets() {
    let opts = Options::rules("actions:\n  s: {type: slack, webhook_url: 'https://hooks.example/${HOOK_SECRET}', text: '{{nope}}'}\nrules:\n  - {name: r, actions: [s]}\n")
        .config("callback_path: \"${IT_SECRET}\"");
    let (_dir, config) = write_config(&opts);
    let (code, out, err) = easehook(&config, &["check"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("callback_path: \"***\" must be a URL path"),
        "{out}"
    );
    assert!(!out.contains(SECRET) && !err.contains(SECRET), "{out}{err}");
}

#[test]
fn test_prints_matching_rules_and_fully_rendered_messages_with_secrets_masked() {
    let opts = Options::rules(
        "actions:\n\
         \x20 mail: {type: email, to: [product@example.com], subject: '{{from_user}} blocked {{to_user}}', text: 'at {{datetime timestamp}}', html: '<b>{{payload.status.error_code}}</b>'}\n\
         \x20 hook: {type: http, url: 'https://audit.example/{{event}}', headers: {Authorization: 'Bearer ${AUDIT_TOKEN}'}, json: {user: '{{from_user}}'}}\n\
         \x20 quiet: {type: log, message: never}\n\
         rules:\n\
         \x20 - {name: bans, description: Tell product, when: {event: roster:ban}, actions: [mail, hook]}\n\
         \x20 - {name: stopper, when: {event: roster}, actions: [hook], stop: true}\n\
         \x20 - {name: after-stop, actions: [quiet]}\n",
    );
    let (_dir, config) = write_config(&opts);
    let fixture = fixture("roster-ban.json");
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--config")
        .arg(&config)
        .args(["test", "--event"])
        .arg(&fixture)
        .env("IT_SECRET", SECRET)
        .env("AUDIT_TOKEN", "audit-token-xyz123")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for needle in [
        "event roster:ban from \"XXXX\" to \"tst\"",
        "rule bans (",
        "): Tell product",
        "action mail (email):",
        "To: product@example.com",
        "Subject: XXXX blocked tst",
        "at 2022-01-20 03:07:26",
        "<b>ok</b>",
        "http POST https://audit.example/roster%3Aban",
        "Authorization: ***",
        "\"user\": \"XXXX\"",
        "rule stopper (",
        "action hook (http): already triggered by an earlier rule",
        "(stop: later rules are not evaluated)",
        "2 rule(s) matched, 2 action(s) would be sent",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("after-stop"), "{text}");
    assert!(!text.contains("audit-token-xyz123"), "{text}");
}

#[test]
fn test_reads_standard_input_and_needs_no_signature() {
    let (_dir, config) = write_config(&Options::rules(
        "actions:\n  n: {type: log, message: 'hi {{to_user}}'}\nrules:\n  - {name: r, actions: [n]}\n",
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--config")
        .arg(&config)
        .args(["test", "--event", "-"])
        .env("IT_SECRET", SECRET)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"chat_type":"roster","payload":{"operation":"add","reason":"{{x}}"},"from":"a","to":"b"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("log info: hi b"), "{text}");
}

#[test]
fn simulate_print_signs_with_the_configured_secret() {
    let (_dir, config) = write_config(&Options::rules(""));
    let (code, out, err) = easehook(
        &config,
        &[
            "simulate",
            "--event",
            "roster:ban",
            "--from",
            "alice",
            "--to",
            "bob",
            "--print",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let body: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cb = easehook::callback::Callback::from_value(body).unwrap();
    assert_eq!(cb.event, "roster:ban");
    assert_eq!(
        (cb.from_user.as_str(), cb.to_user.as_str()),
        ("alice", "bob")
    );
    let secrets = easehook::config::Secrets::from_pairs([(APPKEY, SECRET)]);
    assert_eq!(easehook::verify::check(&cb, &secrets, None, 0), Ok(()));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("easehook "));
}

/// `simulate`, `events list` and `deliveries list|retry` against a running
/// daemon, configured by the same file.
#[tokio::test]
async fn simulate_and_the_admin_commands_work_against_a_running_daemon() {
    let sink = HttpSink::start().await;
    sink.script([Answer::status(410)]);
    let rules = format!(
        "actions:\n  hook: {{type: http, url: '{}'}}\nrules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [hook]}}\n",
        sink.url("/hook")
    );
    let opts = Options::rules(rules)
        .config("admin_token: ${ADMIN_TOKEN}")
        .env("ADMIN_TOKEN", "cli-admin-token-1");
    let (_dir, config) = write_config(&opts);
    crate::helpers::fixed_ports(&config);
    let app = start_from(&config, &opts).await;
    let run = |args: &'static [&'static str]| {
        let config = config.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_easehook"))
                .arg("--config")
                .arg(&config)
                .args(args)
                .env("IT_SECRET", SECRET)
                .env("ADMIN_TOKEN", "cli-admin-token-1")
                .output()
                .await
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).to_string(),
            )
        }
    };
    let (code, out) = run(&[
        "simulate",
        "--event",
        "roster:ban",
        "--from",
        "alice",
        "--to",
        "bob",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("HTTP 200 {\"ok\":true,\"id\":"), "{out}");
    let (code, out) = run(&[
        "simulate",
        "--event",
        "roster:add",
        "--secret",
        "wrong-secret",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 401"), "{out}");

    let (code, out) = run(&["events", "list", "--event", "roster"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("roster:ban") && out.contains("alice -> bob") && out.contains("rules [bans]"),
        "{out}"
    );
    assert!(out.contains("1 event(s)"), "{out}");

    // A login names its user like any other event.
    let (code, out) = run(&["simulate", "--event", "user:login", "--from", "carol"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["events", "list", "--event", "user"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("user:login") && out.contains("carol -> "),
        "{out}"
    );
    // By user, from or to, and by rule.
    let (code, out) = run(&["events", "list", "--user", "carol"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("user:login") && !out.contains("roster:ban"),
        "{out}"
    );
    let (code, out) = run(&["events", "list", "--user", "bob", "--rule", "bans"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("alice -> bob") && out.contains("1 event(s)"),
        "{out}"
    );

    eventually(Duration::from_secs(10), "a dead delivery", || async {
        run(&["deliveries", "list", "--status", "dead"])
            .await
            .1
            .contains("HTTP 410")
    })
    .await;
    // By action.
    let (code, out) = run(&["deliveries", "list", "--action", "hook"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("HTTP 410"), "{out}");
    let (code, out) = run(&["deliveries", "list", "--action", "no-such-action"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("HTTP 410"), "{out}");
    let (code, out) = run(&["deliveries", "retry", "--dead"]).await;
    assert_eq!((code, out.trim()), (0, "1 dead deliveries requeued"));
    eventually(
        Duration::from_secs(10),
        "delivered after the retry",
        || async {
            let out = run(&["deliveries", "list", "--json"]).await.1;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["deliveries"][0]["status"] == "sent"
        },
    )
    .await;
    let (code, out) = run(&["deliveries", "retry", "1"]).await;
    assert_eq!(code, 1, "not dead any more: {out}");
    app.shutdown();
}

/// `check` against the socket units the package ships, found where systemd
/// would look (`SYSTEMD_UNIT_PATH`).
fn check_with_shipped_units(config: &std::path::Path) -> (i32, String) {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .env("IT_SECRET", SECRET)
        .env("SYSTEMD_UNIT_PATH", &units)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn check_warns_when_a_socket_unit_listens_elsewhere_than_the_config() {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let (_dir, config) = write_config(&Options::rules(""));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0",
        "listen: 127.0.0.1:8081\nadmin_listen: 127.0.0.1:9464",
    );
    std::fs::write(&config, &text).unwrap();
    let (code, out) = check_with_shipped_units(&config);
    assert_eq!(code, 0, "{out}");
    let expected = format!(
        "warning: {}: ListenStream=0.0.0.0:8080 differs from listen: 127.0.0.1:8081 in {}",
        units.join("easehook.socket").display(),
        config.display()
    );
    assert!(out.contains(&expected), "{out}");
    // The admin socket agrees with admin_listen: nothing said of it.
    assert!(!out.contains("easehook-admin.socket"), "{out}");

    // Agreeing with both units, check says nothing of them.
    std::fs::write(&config, text.replace("127.0.0.1:8081", "0.0.0.0:8080")).unwrap();
    let (code, out) = check_with_shipped_units(&config);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("ListenStream"), "{out}");
}
