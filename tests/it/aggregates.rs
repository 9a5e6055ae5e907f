//! Digests and thresholds (SPEC §11) against the real daemon: a wave of
//! bans becomes one digest email per group through a real SMTP server,
//! five distinct blockers fire one threshold delivery to a real HTTP sink,
//! a digest open across `kill -9` is delivered once with every event
//! counted, and two replicas on one PostgreSQL database share a wave.

use std::time::Duration;

use mail_parser::MessageParser;
use serde_json::Value;

use crate::email::smtp_config;
use crate::helpers::*;

/// A digest of the bans of each blocked user, `window` long, by email.
fn digest_rules(window: &str) -> String {
    format!(
        r#"
actions:
  digest-mail:
    type: email
    to: [product@example.com]
    subject: "{{{{digest.count}}}} bans of {{{{to_user}}}}"
    text: "{{{{#each digest.events}}}}{{{{from_user}}}}\n{{{{/each}}}}truncated {{{{digest.truncated}}}}, group {{{{digest.group.to}}}}"
rules:
  - name: wave
    when: {{event: roster:ban}}
    digest: {{window: {window}, by: [to], max_events: 50}}
    actions: [digest-mail]
"#
    )
}

/// A "likely spammer" threshold (five distinct blockers within an hour,
/// resting an hour after firing) calling `url`.
fn threshold_rules(url: &str) -> String {
    format!(
        r#"
actions:
  spammer-hook:
    type: http
    url: '{url}'
    json:
      user: "{{{{to_user}}}}"
      count: "{{{{threshold.count}}}}"
      within: "{{{{threshold.within}}}}"
      blockers: "{{{{#each threshold.events}}}}{{{{from_user}}}} {{{{/each}}}}"
rules:
  - name: likely-spammer
    when: {{event: roster:ban}}
    threshold: {{count: 5, within: 1h, by: [to], distinct: from, cooldown: 1h}}
    actions: [spammer-hook]
"#
    )
}

/// The subject and text of each mail received.
fn mails(smtp: &SmtpServer) -> Vec<(String, String)> {
    smtp.mails()
        .iter()
        .map(|m| {
            let msg = MessageParser::default().parse(&m.data).unwrap();
            (
                msg.subject().unwrap_or_default().to_string(),
                msg.body_text(0).unwrap_or_default().replace("\r\n", "\n"),
            )
        })
        .collect()
}

/// Post `n` bans of `to` by distinct users to the daemons at `urls` in
/// turn, 16 at a time; every one must be acknowledged.
async fn wave(urls: &[String], to: &str, n: usize) {
    use futures_util::StreamExt;
    let client = reqwest::Client::new();
    let statuses: Vec<u16> = futures_util::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let url = urls[i % urls.len()].clone();
            let body = signed("roster:ban", &format!("u{i:03}"), to);
            async move { post_json(&client, &url, &body).await.0 }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// A counter's value summed over the daemons.
async fn counter(apps: &[&TestApp], series: &str) -> u64 {
    let metrics = futures_util::future::join_all(apps.iter().map(|a| a.metrics())).await;
    metrics
        .iter()
        .flat_map(|m| m.lines())
        .filter_map(|l| l.strip_prefix(series))
        .map(|v| v.trim().parse::<u64>().unwrap())
        .sum()
}

/// Two waves of 500 (two groups) within the window: one email per group,
/// 500 counted, 50 listed.
async fn one_digest_email_per_group(apps: &[&TestApp], smtp: &SmtpServer) {
    let urls: Vec<String> = apps.iter().map(|a| a.callback_url.clone()).collect();
    tokio::join!(wave(&urls, "spammer1", 500), wave(&urls, "spammer2", 500));
    // Both digests are open, every event counted.
    let open = apps[0].get("/api/v1/digests").await;
    let groups = open["groups"].as_array().unwrap();
    let seen: Vec<(&str, u64)> = groups
        .iter()
        .map(|g| {
            (
                g["group"]["to"].as_str().unwrap(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("spammer1", 500), ("spammer2", 500)], "{open}");
    assert!(
        groups
            .iter()
            .all(|g| g["due_at"].as_u64().is_some() && g["rule"] == "wave")
    );
    assert!(apps[0].metrics().await.contains("easehook_digests_open 2"));
    eventually(Duration::from_secs(60), "two digest emails", || async {
        smtp.mails().len() >= 2
    })
    .await;
    let mut got = mails(smtp);
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    for (i, (subject, text)) in got.iter().enumerate() {
        let user = format!("spammer{}", i + 1);
        assert_eq!(subject, &format!("500 bans of {user}"));
        let listed: Vec<&str> = text.lines().filter(|l| l.starts_with('u')).collect();
        assert_eq!(listed.len(), 50, "{text}");
        assert!(
            text.trim_end()
                .ends_with(&format!("truncated 450, group {user}")),
            "{text}"
        );
    }
    // Delivered: nothing open, one delivery per digest, each sent once.
    eventually(Duration::from_secs(10), "the digests recorded", || async {
        apps[0].deliveries("sent").await.len() == 2
    })
    .await;
    let open = apps[0].get("/api/v1/digests").await;
    assert_eq!(open["groups"], serde_json::json!([]));
    assert_eq!(
        counter(apps, "easehook_digest_deliveries_total{rule=\"wave\"}").await,
        2
    );
    assert_eq!(smtp.mails().len(), 2, "no more emails");
}

fn digest_options(smtp: &SmtpServer, window: &str) -> Options {
    Options::rules(digest_rules(window))
        .config(smtp_config(smtp))
        .env("SMTP_PASSWORD", SMTP_PASSWORD)
}

#[tokio::test]
async fn a_wave_of_bans_makes_one_digest_email_per_group() {
    let smtp = SmtpServer::start();
    let app = spawn_app_with(digest_options(&smtp, "8s")).await;
    one_digest_email_per_group(&[&app], &smtp).await;
}

/// Five distinct blockers: one delivery; a repeat and a sixth within the
/// cooldown: none.
async fn five_distinct_blockers_fire_once(apps: &[&TestApp], sink: &HttpSink) {
    let post = |i: usize, from: &str| {
        let body = signed("roster:ban", from, "mallory");
        let app = apps[i % apps.len()];
        async move { assert_eq!(app.post(&body).await.0, 200) }
    };
    // Four blockers, one of them twice: four distinct, nothing fires.
    for (i, from) in ["a", "b", "c", "a", "d"].iter().enumerate() {
        post(i, from).await;
    }
    // A firing's deliveries are stored with the event that made it fire:
    // the list is complete once the callback is answered.
    assert!(apps[0].deliveries("").await.is_empty());
    let counting = apps[0].get("/api/v1/digests").await;
    assert_eq!(counting["groups"][0]["count"], 4, "{counting}");
    assert_eq!(counting["groups"][0]["kind"], "threshold");
    post(5, "e").await;
    assert_eq!(apps[0].deliveries("").await.len(), 1);
    post(6, "f").await;
    post(7, "g").await;
    assert_eq!(apps[0].deliveries("").await.len(), 1, "resting: no more");
    let resting = apps[0].get("/api/v1/digests").await;
    assert!(resting["groups"][0]["cooldown_until"].as_u64().is_some());
    eventually(Duration::from_secs(20), "the firing delivered", || async {
        sink.count() == 1
    })
    .await;
    let body: Value = serde_json::from_str(&sink.requests()[0].body).unwrap();
    assert_eq!(body["user"], "mallory");
    assert_eq!(body["count"], "5");
    assert_eq!(body["within"], "1h");
    assert_eq!(
        body["blockers"], "b c a d e ",
        "latest of each, oldest first"
    );
    assert_eq!(
        counter(
            apps,
            "easehook_threshold_fired_total{rule=\"likely-spammer\"}"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn five_distinct_blockers_fire_one_delivery_and_a_sixth_rests() {
    let sink = HttpSink::start().await;
    let app = spawn_app_with(Options::rules(threshold_rules(&sink.url("/spam")))).await;
    five_distinct_blockers_fire_once(&[&app], &sink).await;
}

#[tokio::test]
async fn two_replicas_on_postgres_share_a_wave_one_digest_per_group() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let smtp = SmtpServer::start();
    let opts = digest_options(&smtp, "10s").config(crate::helpers::pg::store_config(&url, 8));
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    one_digest_email_per_group(&[&a, &b], &smtp).await;
}

#[tokio::test]
async fn two_replicas_on_postgres_fire_one_threshold() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    let opts = Options::rules(threshold_rules(&sink.url("/spam")))
        .config(crate::helpers::pg::store_config(&url, 8));
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    five_distinct_blockers_fire_once(&[&a, &b], &sink).await;
}

#[tokio::test]
async fn a_digest_open_across_kill_9_is_delivered_once_with_every_event() {
    use crate::helpers::Daemon;
    use nix::sys::signal::Signal;
    let smtp = SmtpServer::start();
    let opts = digest_options(&smtp, "6s");
    let (_dir, config) = write_config(&opts);
    crate::helpers::fixed_ports(&config);
    let env = [("SMTP_PASSWORD", SMTP_PASSWORD)];
    let mut first = Daemon::start(&config, &env).await;
    let url = [first.callback_url.clone()];
    wave(&url, "spammer1", 100).await;
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10)).await;
    let second = Daemon::start(&config, &env).await;
    // The digest is still open: these join it.
    wave(std::slice::from_ref(&second.callback_url), "spammer1", 50).await;
    eventually(Duration::from_secs(60), "the digest email", || async {
        !smtp.mails().is_empty()
    })
    .await;
    let got = mails(&smtp);
    assert_eq!(got[0].0, "150 bans of spammer1");
    assert!(
        got[0]
            .1
            .trim_end()
            .ends_with("truncated 100, group spammer1"),
        "{}",
        got[0].1
    );
    // Recorded as sent, and never sent again.
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(10), "the digest recorded", || async {
        let d: Value = get_json(
            &client,
            &format!("{}/api/v1/deliveries?status=sent", second.admin_url),
        )
        .await
        .1;
        d["deliveries"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(smtp.mails().len(), 1);

    // A digest that falls due while the daemon is down is delivered at
    // start.
    let mut second = second;
    wave(std::slice::from_ref(&second.callback_url), "spammer2", 10).await;
    second.signal(Signal::SIGKILL);
    second.wait(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(7)).await; // past the 6 s window, while down
    let _third = Daemon::start(&config, &env).await;
    eventually(Duration::from_secs(10), "the overdue digest", || async {
        smtp.mails().len() == 2
    })
    .await;
    let got = mails(&smtp);
    assert!(got.iter().any(|m| m.0 == "10 bans of spammer2"), "{got:?}");
}

#[tokio::test]
async fn check_test_and_digests_list_show_digests_and_thresholds() {
    use crate::helpers::easehook;
    let sink = HttpSink::start().await;
    let rules = format!(
        r#"
actions:
  spammer-hook: {{type: http, url: '{url}/spam', json: {{count: "{{{{threshold.count}}}}"}}}}
  digest-hook:
    type: http
    url: '{url}/digest'
    json: {{count: "{{{{digest.count}}}}", users: "{{{{#each digest.events}}}}{{{{from_user}}}} {{{{/each}}}}"}}
rules:
  - name: likely-spammer
    when: {{event: roster:ban}}
    threshold: {{count: 5, within: 1h, by: [to], distinct: from}}
    actions: [spammer-hook]
  - name: wave
    when: {{event: roster:ban}}
    digest: {{window: 1h, by: [to]}}
    actions: [digest-hook]
"#,
        url = sink.url("")
    );
    let opts = Options::rules(rules);
    let (dir, config) = write_config(&opts);
    crate::helpers::fixed_ports(&config);
    let (code, out, err) = easehook(&config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");

    // `test` over a sequence: the digest of both events, rendered.
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    std::fs::write(&a, signed("roster:ban", "alice", "mallory").to_string()).unwrap();
    std::fs::write(&b, signed("roster:ban", "bob", "mallory").to_string()).unwrap();
    let (code, out, err) = easehook(
        &config,
        &[
            "test",
            "--event",
            a.to_str().unwrap(),
            "--event",
            b.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("== digests and thresholds over the 2 event(s) =="),
        "{out}"
    );
    assert!(
        out.contains(r#"digest wave of group {"to":"mallory"}: 2 event(s)"#),
        "{out}"
    );
    assert!(out.contains("alice bob "), "{out}");
    assert!(!out.contains("threshold likely-spammer fires"), "{out}");
    assert!(sink.requests().is_empty(), "nothing sent");

    // The running daemon lists its open digest and counting group.
    let app = start_from(&config, &opts).await;
    let (cb, _) = crate::helpers::config_ports(&config);
    let client = reqwest::Client::new();
    for from in ["alice", "bob"] {
        let r = client
            .post(format!("http://127.0.0.1:{cb}/easemob/callback"))
            .json(&signed("roster:ban", from, "mallory"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (code, out, err) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || easehook(&config, &["digests", "list"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].starts_with("threshold  likely-spammer") && lines[1].contains(" 2  "),
        "{out}"
    );
    assert!(
        lines[2].starts_with("digest     wave") && lines[2].contains(r#"{"to":"mallory"}"#),
        "{out}"
    );
    assert_eq!(lines[3], "2 group(s)");
    drop(app);

    // Bad keys: every problem, located.
    std::fs::write(
        dir.path().join("rules/20-bad.yaml"),
        "rules:\n  - {name: both, digest: {window: 1m}, threshold: {count: 2, within: 1m}, actions: [digest-hook]}\n  - {name: zero, threshold: {count: 0, within: 1m, distinct: 'a..b'}, actions: [digest-hook]}\n",
    )
    .unwrap();
    let (code, out, _) = easehook(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    let file = dir.path().join("rules/20-bad.yaml").display().to_string();
    for expected in [
        format!("{file}: rule both: has both `digest` and `threshold`; a rule has at most one"),
        format!(
            "{file}: rule zero: threshold.distinct: \"a..b\" is not a field name or dotted path"
        ),
        format!("{file}: rule zero: threshold.count: must be between 1 and 10000, not 0"),
    ] {
        assert!(out.contains(&expected), "{expected}\n{out}");
    }
    // A digest template naming what a digest does not have.
    std::fs::write(
        dir.path().join("rules/20-bad.yaml"),
        "actions:\n  bad: {type: log, message: '{{digest.nope}}'}\nrules:\n  - {name: d2, digest: {window: 1m}, actions: [bad]}\n",
    )
    .unwrap();
    let (code, out, _) = easehook(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("action bad: fails to render for a sample digest of three events (rule d2): line 1 column 1: no value for `digest.nope`"),
        "{out}"
    );
}

/// A reload keeps an open digest and a threshold's count; a digest whose
/// rule was removed is still delivered through the action it had; one
/// whose action is gone too is dead.
#[tokio::test]
async fn a_reload_keeps_open_digests_and_counts_and_delivers_orphans() {
    let sink = HttpSink::start().await;
    let rules = |digest: bool, hook: bool, threshold: bool| {
        let mut s = String::from("actions:\n");
        if hook {
            s += &format!(
                "  hook: {{type: http, url: '{}', json: {{count: '{{{{digest.count}}}}', rule: '{{{{rule}}}}'}}}}\n",
                sink.url("/digest")
            );
        }
        s += &format!(
            "  alert: {{type: http, url: '{}', json: {{count: '{{{{threshold.count}}}}'}}}}\n",
            sink.url("/alert")
        );
        s += "rules:\n";
        if digest {
            s += "  - {name: wave, when: {event: roster:ban}, digest: {window: 3s}, actions: [hook]}\n";
        }
        if threshold {
            s += "  - {name: spam, when: {event: roster:ban}, threshold: {count: 3, within: 1h, by: [to], distinct: from}, actions: [alert]}\n";
        }
        s
    };
    let app = spawn_app_with(Options::rules(rules(true, true, true))).await;
    for from in ["a", "b"] {
        assert_eq!(app.post(&signed("roster:ban", from, "m")).await.0, 200);
    }
    // Reloaded with the same rules (a touched file): both kept.
    app.write_rules(&(rules(true, true, true) + "# edited\n"));
    let (status, _) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200);
    assert_eq!(app.post(&signed("roster:ban", "c", "m")).await.0, 200);
    // The third distinct blocker, counted across the reload, fires.
    eventually(Duration::from_secs(20), "the alert", || async {
        sink.requests().iter().any(|r| r.path == "/alert")
    })
    .await;
    // The digest rule is removed while its digest is open: delivered when
    // due through `hook`, with the three events.
    app.write_rules(&rules(false, true, true));
    let (status, _) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(20), "the orphan digest", || async {
        sink.requests().iter().any(|r| r.path == "/digest")
    })
    .await;
    let digest = sink
        .requests()
        .into_iter()
        .find(|r| r.path == "/digest")
        .unwrap();
    let body: Value = serde_json::from_str(&digest.body).unwrap();
    assert_eq!(
        (body["count"].as_str(), body["rule"].as_str()),
        (Some("3"), Some("wave"))
    );

    // Another digest opens; then its rule and its action both go: dead.
    app.write_rules(&rules(true, true, true));
    let (status, _) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200);
    assert_eq!(app.post(&signed("roster:ban", "d", "n")).await.0, 200);
    app.write_rules(&rules(false, false, true));
    let (status, _) = app.admin(reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200);
    let dead = app.wait_for_delivery("dead", Duration::from_secs(20)).await;
    assert_eq!(dead["action"], "hook");
    assert_eq!(dead["last_error"], "action \"hook\" no longer exists");
}
