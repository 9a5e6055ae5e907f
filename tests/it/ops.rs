//! Operations: metrics after a known sequence, and systemd notifications.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::helpers::*;
use crate::helpers::{Daemon, fixed_ports};

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_callbacks_and_deliveries() {
    let sink = HttpSink::start().await;
    sink.script([Answer::status(503)]);
    let rules = format!(
        "actions:\n  hook: {{type: http, url: '{}'}}\n  dead: {{type: http, url: '{}', max_attempts: 1}}\n\
         rules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [hook]}}\n  - {{name: adds, when: {{event: roster:add}}, actions: [dead]}}\n",
        sink.url("/ok"),
        sink.url("/gone")
    );
    let app = spawn_app_with(Options::rules(rules)).await;
    let ban = signed("roster:ban", "a", "b");
    assert_eq!(app.post(&ban).await.0, 200);
    assert_eq!(app.post(&ban).await.1["duplicate"], true);
    assert_eq!(app.post_bytes("{").await.0, 400);
    let mut forged = signed("roster:ban", "a", "b");
    forged["security"] = json!("0".repeat(32));
    assert_eq!(app.post(&forged).await.0, 401);
    // The 503 above answers the ban's first attempt; the add's 404 kills it.
    eventually(Duration::from_secs(10), "the ban delivered", || async {
        app.deliveries("sent").await.len() == 1
    })
    .await;
    sink.script([Answer::status(404)]);
    assert_eq!(app.post(&signed("roster:add", "a", "b")).await.0, 200);
    eventually(Duration::from_secs(10), "the add dead", || async {
        app.deliveries("dead").await.len() == 1
    })
    .await;

    let resp = app
        .client
        .get(format!("{}/metrics", app.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    for (series, value) in [
        (
            "easehook_callbacks_total{result=\"accepted\",event=\"roster:ban\"}",
            1.0,
        ),
        (
            "easehook_callbacks_total{result=\"duplicate\",event=\"roster:ban\"}",
            1.0,
        ),
        (
            "easehook_callbacks_total{result=\"bad_request\",event=\"other\"}",
            1.0,
        ),
        (
            "easehook_callbacks_total{result=\"unauthorized\",event=\"roster:ban\"}",
            1.0,
        ),
        (
            "easehook_callbacks_total{result=\"accepted\",event=\"roster:add\"}",
            1.0,
        ),
        ("easehook_callback_duration_seconds_count", 5.0),
        ("easehook_rule_matches_total{rule=\"bans\"}", 1.0),
        ("easehook_rule_matches_total{rule=\"adds\"}", 1.0),
        (
            "easehook_deliveries_total{action=\"hook\",outcome=\"retried\"}",
            1.0,
        ),
        (
            "easehook_deliveries_total{action=\"hook\",outcome=\"sent\"}",
            1.0,
        ),
        (
            "easehook_deliveries_total{action=\"dead\",outcome=\"dead\"}",
            1.0,
        ),
        (
            "easehook_delivery_duration_seconds_count{action=\"hook\"}",
            2.0,
        ),
        ("easehook_queue_depth", 0.0),
        ("easehook_dead_deliveries", 1.0),
        ("easehook_config_last_reload_successful", 1.0),
    ] {
        assert_eq!(metric(&text, series), value, "{series}");
    }
    assert!(
        metric(
            &text,
            "easehook_config_last_reload_success_timestamp_seconds"
        ) > 1.7e9
    );
    // A failed reload shows.
    app.write_rules("rules: [oops");
    assert_eq!(app.admin(reqwest::Method::POST, "/-/reload").await.0, 400);
    let text = app.metrics().await;
    assert_eq!(metric(&text, "easehook_config_last_reload_successful"), 0.0);
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_reloading_and_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let (_cfg_dir, config) = write_config(&Options::rules(""));
    fixed_ports(&config);
    let socket_str = socket_path.display().to_string();
    let mut d = Daemon::start(
        &config,
        &[("NOTIFY_SOCKET", &socket_str), ("WATCHDOG_USEC", "200000")],
    )
    .await;
    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut recv = async |seen: &mut Vec<String>, want: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {want} in {seen:?}"))
                .unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.push(msg.clone());
            if msg.lines().any(|l| l == want) {
                return msg;
            }
        }
    };
    recv(&mut seen, "READY=1").await;
    recv(&mut seen, "WATCHDOG=1").await;
    recv(&mut seen, "WATCHDOG=1").await;
    d.signal(Signal::SIGHUP);
    let reloading = recv(&mut seen, "RELOADING=1").await;
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "systemd ≥ 253 needs a timestamp: {reloading}"
    );
    recv(&mut seen, "READY=1").await;
    d.signal(Signal::SIGTERM);
    recv(&mut seen, "STOPPING=1").await;
    assert_eq!(d.wait(Duration::from_secs(10)).await, Some(0));
    let order: Vec<&str> = seen
        .iter()
        .map(|m| m.lines().next().unwrap())
        .filter(|l| *l != "WATCHDOG=1")
        .collect();
    assert_eq!(
        order,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{seen:?}"
    );
}

/// The `nice` value of each of this process's threads named `name`.
fn thread_nice(name: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        out.extend(nice_in_stat(&stat));
    }
    out
}

/// The `nice` field of a `/proc/…/stat` line.
fn nice_in_stat(stat: &str) -> Option<i64> {
    // Fields after the parenthesized name: state is field 3, nice is 19.
    let rest = stat.rsplit_once(')')?.1;
    let nice = rest.split_whitespace().nth(16)?;
    Some(nice.parse().expect("nice is a number"))
}

#[tokio::test]
async fn deliveries_run_below_the_request_path_priority() {
    let app = spawn_app_with(Options::rules(
        "actions:\n  note: {type: log, message: '{{event}}'}\nrules:\n  - {name: all, actions: [note]}\n",
    ))
    .await;
    let (status, _) = app.post(&signed("roster:ban", "alice", "bob")).await;
    assert_eq!(status, 200);
    app.wait_for_delivery("sent", Duration::from_secs(5)).await;
    // Thread names are cut to 15 bytes by the kernel.
    let nices = thread_nice("easehook-delive");
    assert!(!nices.is_empty(), "no delivery threads found");
    assert!(nices.iter().all(|&n| n == 10), "{nices:?}");
    // The test's own runtime (where the listeners run) is untouched.
    let own = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    assert_eq!(nice_in_stat(&own), Some(0));
}
