//! The built binary as a process: signals, logs, crash recovery.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// The daemon as a child process, with its stderr collected line by line.
pub struct Daemon {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub callback_url: String,
    pub admin_url: String,
}

/// Pick free ports by binding port 0 and releasing them.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rewrite a test config to fixed ports (a child process cannot report the
/// ports it bound) and JSON logs.
pub fn fixed_ports(config: &std::path::Path) -> (u16, u16) {
    let (cb, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string(config).unwrap().replace(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0",
        &format!("listen: 127.0.0.1:{cb}\nadmin_listen: 127.0.0.1:{admin}\nlog_format: json"),
    );
    std::fs::write(config, text).unwrap();
    (cb, admin)
}

/// The callback and admin ports a test config (after [`fixed_ports`]) names.
pub fn config_ports(config: &std::path::Path) -> (u16, u16) {
    let text = std::fs::read_to_string(config).unwrap();
    let port = |key: &str| -> u16 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (port("listen: "), port("admin_listen: "))
}

impl Daemon {
    pub async fn start(config: &std::path::Path, extra_env: &[(&str, &str)]) -> Daemon {
        let (cb, admin) = config_ports(config);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_easehook"));
        cmd.arg("--config").arg(config);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Daemon::spawn(
            cmd,
            format!("http://127.0.0.1:{cb}/easemob/callback"),
            format!("http://127.0.0.1:{admin}"),
        )
        .await
    }

    /// Start `cmd` (the daemon, with the test's secret and logs), collect
    /// its stderr, and wait until `admin_url` says it is ready.
    pub async fn spawn(mut cmd: Command, callback_url: String, admin_url: String) -> Daemon {
        cmd.env("IT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let d = Daemon {
            child,
            lines,
            callback_url,
            admin_url,
        };
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", d.admin_url);
        eventually(Duration::from_secs(20), "the daemon to be ready", || {
            let c = client.clone();
            let u = url.clone();
            async move {
                c.get(&u)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        d
    }

    /// POST a callback to the daemon; the status of its answer.
    pub async fn post(&self, body: &serde_json::Value) -> u16 {
        reqwest::Client::new()
            .post(&self.callback_url)
            .json(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn log(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait for the process to exit; its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
