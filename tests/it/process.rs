//! The built binary as a process: signals, logs, crash recovery.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let (_dir, config) = write_config(&Options::rules(""));
    fixed_ports(&config);
    let mut d = Daemon::start(&config, &[]).await;
    let body = signed("roster:ban", "alice", "bob").to_string();
    // A request in flight: headers and half the body sent.
    let addr = d
        .callback_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(callback_request_head(body.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.signal(Signal::SIGTERM);
    // New connections are refused once it stops accepting…
    eventually(Duration::from_secs(5), "the listener to close", || {
        let a = addr.clone();
        async move { tokio::net::TcpStream::connect(a).await.is_err() }
    })
    .await;
    // …but the request in flight is answered.
    conn.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ok\":true"), "{answer}");
    assert_eq!(d.wait(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn one_json_log_line_per_callback_with_event_result_and_latency() {
    let (_dir, config) = write_config(&Options::rules(
        "actions:\n  n: {type: log, message: x}\nrules:\n  - {name: bans, when: {event: roster:ban}, actions: [n]}\n",
    ));
    fixed_ports(&config);
    let d = Daemon::start(&config, &[]).await;
    assert_eq!(d.post(&signed("roster:ban", "a", "b")).await, 200);
    let bad = reqwest::Client::new()
        .post(&d.callback_url)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    eventually(Duration::from_secs(5), "two callback lines", || async {
        d.log()
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("callback"))
            })
            .count()
            == 2
    })
    .await;
    let lines: Vec<serde_json::Value> = d
        .log()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("callback"))
        })
        .collect();
    assert_eq!(lines[0]["event"], "roster:ban");
    assert_eq!(lines[0]["result"], "accepted");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["rules"], "bans");
    assert!(lines[0]["latency_ms"].as_f64().is_some());
    assert_eq!(lines[1]["result"], "bad_request");
    assert_eq!(lines[1]["level"], "WARN");
    // A delivery's line names the delivery, its action, rule and event.
    eventually(Duration::from_secs(5), "a delivered line", || async {
        d.log().iter().any(|l| l["message"] == "delivered")
    })
    .await;
    let delivered = d
        .log()
        .into_iter()
        .find(|l| l["message"] == "delivered")
        .unwrap();
    assert_eq!(delivered["span"]["action"], "n", "{delivered}");
    assert_eq!(delivered["span"]["rule"], "bans", "{delivered}");
    assert_eq!(delivered["span"]["id"], 1, "{delivered}");
    assert_eq!(delivered["event"], "roster:ban", "{delivered}");
}

#[tokio::test]
async fn sighup_reloads_the_rules() {
    let (dir, config) = write_config(&Options::rules(""));
    fixed_ports(&config);
    let d = Daemon::start(&config, &[]).await;
    let client = reqwest::Client::new();
    let status = || async {
        client
            .get(format!("{}/api/v1/status", d.admin_url))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(status().await["rules"], 0);
    // The file watcher may see the change too; the log line below is only
    // written when the reload came from SIGHUP.
    std::fs::write(
        dir.path().join("rules/10-test.yaml"),
        "rules:\n  - {name: one, actions: []}\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "one rule after SIGHUP", || async {
        status().await["rules"] == 1
    })
    .await;
    eventually(Duration::from_secs(5), "a SIGHUP log line", || async {
        d.log()
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains("SIGHUP")))
    })
    .await;
}

#[tokio::test]
async fn log_actions_write_at_their_level_and_lines_the_log_drops_are_done_at_once() {
    // RUST_LOG=info (the Daemon helper): a warn line is written, a debug
    // line is not, and both deliveries are done.
    let (_dir, config) = write_config(&Options::rules(
        "actions:\n\
         \x20 shown: {type: log, level: warn, message: 'ban by {{from_user}}'}\n\
         \x20 hidden: {type: log, level: debug, message: 'quiet {{from_user}}'}\n\
         rules:\n  - {name: bans, when: {event: roster:ban}, actions: [shown, hidden]}\n",
    ));
    fixed_ports(&config);
    let d = Daemon::start(&config, &[]).await;
    assert_eq!(d.post(&signed("roster:ban", "alice", "bob")).await, 200);
    eventually(Duration::from_secs(5), "both deliveries done", || async {
        d.log()
            .iter()
            .filter(|l| l["message"] == "delivered")
            .count()
            == 2
    })
    .await;
    let log = d.log();
    let shown: Vec<_> = log
        .iter()
        .filter(|l| l["message"] == "ban by alice")
        .collect();
    assert_eq!(shown.len(), 1, "{log:?}");
    assert_eq!(shown[0]["level"], "WARN");
    assert_eq!(shown[0]["target"], "easehook::action");
    assert!(
        !log.iter().any(|l| l.to_string().contains("quiet alice")),
        "{log:?}"
    );
}

/// A stop asked for while the daemon is still starting (here, compiling a
/// large word list) is a clean stop, not a kill: systemd may stop a unit at
/// any moment, and a SIGTERM the daemon is not yet listening for would end
/// it by the signal's default action, or be lost the moment it gets ready.
#[tokio::test]
async fn sigterm_while_starting_stops_cleanly() {
    let opts = Options::rules("")
        .config("presend:\n  word_lists:\n    contact: { file: words/contact.txt }\n");
    let (dir, config) = write_config(&opts);
    std::fs::create_dir(dir.path().join("words")).unwrap();
    let words: String = (0..300_000u32)
        .map(|i| format!("{}{i}\n", char::from_u32(0x4E00 + i % 20_000).unwrap()))
        .collect();
    std::fs::write(dir.path().join("words/contact.txt"), words).unwrap();
    let (cb, admin) = fixed_ports(&config);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_easehook"));
    cmd.arg("--config").arg(&config);
    let mut d = Daemon::launch(
        cmd,
        format!("http://127.0.0.1:{cb}/easemob/callback"),
        format!("http://127.0.0.1:{admin}"),
    );
    // Written once the daemon listens for signals, before it loads rules.
    eventually(Duration::from_secs(20), "the first log line", || {
        let started = d.log().iter().any(|l| l["message"] == "easehook starting");
        async move { started }
    })
    .await;
    let ready = reqwest::get(format!("{}/readyz", d.admin_url)).await;
    assert!(ready.is_err(), "ready before the list was compiled");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)).await, Some(0));
    assert!(
        d.log()
            .iter()
            .any(|l| l["message"] == "SIGTERM received, shutting down"),
        "{:?}",
        d.log()
    );
}

/// Settings read only at start say so when a reload finds them changed,
/// naming what runs and what the file now says; and a SIGHUP sent as soon
/// as the daemon is ready (as `systemctl reload` may) is a reload, not the
/// signal's default action, which ends the process.
#[tokio::test]
async fn a_reload_warns_of_settings_that_take_effect_on_restart() {
    let (_dir, config) = write_config(&Options::rules("").config("presend:\n  queue: 100\n"));
    fixed_ports(&config);
    let d = Daemon::start(&config, &[]).await;
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("queue: 100", "queue: 200")).unwrap();
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the warning", || {
        let warned = d.log().iter().any(|l| {
            l["setting"] == "presend.queue" && l["running"] == "100" && l["configured"] == "200"
        });
        async move { warned }
    })
    .await;
    // A SIGHUP the moment the daemon is ready reloads it; it runs on.
    let ready = reqwest::get(format!("{}/readyz", d.admin_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Only what changed is named.
    assert!(
        !d.log()
            .iter()
            .any(|l| l["setting"] == "delivery.concurrency"),
        "{:?}",
        d.log()
    );
}
