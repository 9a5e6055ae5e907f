//! Three replicas (the built binary) on one PostgreSQL database behind a
//! real nginx configured as `deploy/nginx.conf`, under a stream of signed
//! callbacks while one replica is killed (SIGKILL) and restarted and
//! another is stopped (SIGTERM); and a replica paused past its lease
//! (SIGSTOP) that must not record over the replica that took its claims.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::*;
use crate::helpers::{Daemon, fixed_ports, free_port};

/// A real nginx (Debian's) serving `deploy/nginx.conf` on a free loopback
/// port, its upstreams the given callback ports.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl Nginx {
    fn start(upstreams: &[u16]) -> Option<Nginx> {
        let bin = nginx_binary();
        if !require(
            bin.is_some(),
            "nginx is not installed (apt-get install nginx)",
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
        )
        .unwrap();
        // The example as README shows it, with this test's addresses.
        let mut conf = String::new();
        let mut servers_done = false;
        for line in example.lines() {
            let t = line.trim_start();
            if t.starts_with("server 10.0.0.") {
                if !servers_done {
                    for p in upstreams {
                        conf.push_str(&format!(
                            "    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"
                        ));
                    }
                    servers_done = true;
                }
                continue;
            }
            if t == "listen 80;" {
                conf.push_str(&format!("    listen 127.0.0.1:{port};\n"));
                continue;
            }
            conf.push_str(line);
            conf.push('\n');
        }
        assert!(servers_done, "deploy/nginx.conf lists no upstream server");
        let d = dir.path().display();
        let root = unsafe { libc::geteuid() } == 0;
        let main = format!(
            "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/easehook.conf;\n}}\n",
            user = if root { "user root;\n" } else { "" },
        );
        std::fs::write(dir.path().join("easehook.conf"), conf).unwrap();
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(bin.unwrap())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Nginx {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/easemob/callback", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master stops its workers on the way out, where
        // a killed master leaves them running, orphaned.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A generous attempt timeout: on a loaded host a slow answer from the sink
/// would time out and be sent again (at least once, rightly), which the
/// kill test would take for a duplicate of the kill's making.
const GENEROUS: &str = "delivery:\n  initial_backoff: 50ms\n  max_backoff: 200ms\n  max_attempts: 50\n  timeout: 20s\n  shutdown_grace: 5s\n";

/// A replica's config: its own directory and ports, the shared database,
/// an HTTP action to `sink` that names the callback, and `delivery` (YAML,
/// or empty for the tests' defaults).
fn replica_config(
    url: &str,
    sink: &str,
    extra: &str,
    delivery: &str,
) -> (tempfile::TempDir, PathBuf) {
    let rules = format!(
        "actions:\n  hook:\n    type: http\n    url: '{sink}/hook'\n    json: {{id: '{{{{callId}}}}'}}\n{extra}\
         rules:\n  - {{name: all, actions: [hook]}}\n"
    );
    let (dir, config) = write_config(&Options::rules(rules).config(format!(
        "store:\n  type: postgres\n  url: '{url}'\n{delivery}"
    )));
    fixed_ports(&config);
    (dir, config)
}

/// A GET of the admin API of a replica, as JSON.
async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The callIds the sink received, with the time of each request.
fn received(sink: &HttpSink) -> HashMap<String, Vec<Instant>> {
    let mut by_id: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in sink.requests() {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        by_id
            .entry(body["id"].as_str().unwrap().to_string())
            .or_default()
            .push(r.at);
    }
    by_id
}

#[tokio::test]
async fn three_replicas_behind_nginx_lose_nothing_when_one_is_killed_and_one_stopped() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    let configs: Vec<_> = (0..3)
        .map(|_| replica_config(&url, &sink.url(""), "", GENEROUS))
        .collect();
    let mut replicas = Vec::new();
    for (_, config) in &configs {
        replicas.push(Daemon::start(config, &[]).await);
    }
    let ports: Vec<u16> = configs
        .iter()
        .map(|(_, c)| crate::helpers::config_ports(c).0)
        .collect();
    let Some(nginx) = Nginx::start(&ports) else {
        return;
    };
    let client = reqwest::Client::new();
    // The one replica never stopped: repeats go to it directly, and the
    // shared state is read through it.
    let steady = replicas[2].callback_url.clone();
    let steady_admin = replicas[2].admin_url.clone();

    const TOTAL: usize = 600;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let mut senders = Vec::new();
    for _ in 0..6 {
        let (client, nginx_url, steady) = (client.clone(), nginx.url(), steady.clone());
        let (sent, acknowledged, refused) = (sent.clone(), acknowledged.clone(), refused.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= TOTAL {
                    return;
                }
                let body = signed("roster:ban", &format!("u{i}"), "bob");
                let id = body["callId"].as_str().unwrap().to_string();
                let through_nginx = client.post(&nginx_url).json(&body).send();
                let status = if i % 10 == 0 {
                    // Sent twice at once: through nginx and to a replica
                    // directly; stored once.
                    let direct = client.post(&steady).json(&body).send();
                    let (a, b) = tokio::join!(through_nginx, direct);
                    assert_eq!(b.unwrap().status(), 200, "the direct repeat of {id}");
                    a.map(|r| r.status().as_u16()).unwrap_or(0)
                } else {
                    through_nginx
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                };
                if status == 200 {
                    acknowledged.lock().unwrap().push(id);
                } else {
                    refused.lock().unwrap().push(status);
                }
            }
        }));
    }
    let progress = |n: usize| {
        let sent = sent.clone();
        async move {
            while sent.load(std::sync::atomic::Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    progress(150).await;
    replicas[0].signal(Signal::SIGKILL);
    replicas[0].wait(Duration::from_secs(10)).await;
    // Once it is gone (a request it had written may still reach the sink
    // just after the signal).
    let killed_at = Instant::now();
    progress(250).await;
    let restarted_at = Instant::now();
    replicas[0] = Daemon::start(&configs[0].1, &[]).await;
    progress(400).await;
    replicas[1].signal(Signal::SIGTERM);
    assert_eq!(replicas[1].wait(Duration::from_secs(20)).await, Some(0));
    for s in senders {
        s.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.is_empty(),
        "nginx answered {} callbacks with other than 200: {refused:?}",
        refused.len()
    );
    assert_eq!(acknowledged.len(), TOTAL);

    // Every acknowledged callback is delivered at least once.
    eventually(
        Duration::from_secs(60),
        "every acknowledged callback delivered",
        || async {
            let got = received(&sink);
            acknowledged.iter().all(|id| got.contains_key(id))
        },
    )
    .await;
    // Stored once each, repeats included, and nothing else stored.
    let events = get_json(&format!("{steady_admin}/api/v1/events?limit=1000")).await;
    let mut stored: HashMap<String, usize> = HashMap::new();
    for e in events["events"].as_array().unwrap() {
        *stored
            .entry(e["callback"]["callId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(stored.len(), TOTAL);
    assert!(stored.values().all(|&n| n == 1), "an event stored twice");
    assert!(acknowledged.iter().all(|id| stored.contains_key(id)));
    // Sent twice only across the kill: first before it, again after the
    // restart released the dead process's claims.
    let got = received(&sink);
    let twice: Vec<_> = got.iter().filter(|(_, at)| at.len() > 1).collect();
    for (id, at) in &twice {
        assert_eq!(at.len(), 2, "{id} sent {} times", at.len());
        assert!(
            at[0] < killed_at && at[1] >= restarted_at,
            "{id} sent twice, not across the kill: {:?} and {:?} after the kill, restarted {:?} after it",
            at[0].checked_duration_since(killed_at),
            at[1].checked_duration_since(killed_at),
            restarted_at - killed_at
        );
    }
    eprintln!(
        "{} callbacks acknowledged through nginx ({} sent twice to two replicas), \
         all delivered; the SIGKILL caused {} duplicate deliveries",
        acknowledged.len(),
        TOTAL / 10,
        twice.len()
    );
    drop(nginx);
}

/// A replica paused (SIGSTOP) in the middle of an attempt, past its lease:
/// another replica takes the delivery over and records it sent; the paused
/// one, continued (SIGCONT), finds its claim gone and records nothing.
/// The lease is `delivery.timeout` + 60 s (SPEC §9), so this takes over a
/// minute: `cargo test` skips it; `.ci/run` runs it (`-- --ignored`).
#[tokio::test]
#[ignore = "waits out a 61 s lease; .ci/run runs it"]
async fn a_replica_paused_past_its_lease_does_not_record_over_the_new_owner() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    // The paused replica's attempt gets a 410 (dead) once it reads it; the
    // new owner's gets a 200.
    sink.script([
        Answer::status(410).delay(Duration::from_millis(500)),
        Answer::status(200),
    ]);
    let extra = "    timeout: 1s\n";
    let (_da, ca) = replica_config(&url, &sink.url(""), extra, "");
    let (_db, cb) = replica_config(&url, &sink.url(""), extra, "");
    let a = Daemon::start(&ca, &[]).await;
    let b = Daemon::start(&cb, &[]).await;
    let body = signed("roster:ban", "alice", "bob");
    assert_eq!(a.post(&body).await, 200);
    // A's attempt has reached the sink: pause A before it hears back.
    eventually(Duration::from_secs(10), "A's attempt", || async {
        sink.count() == 1
    })
    .await;
    a.signal(Signal::SIGSTOP);
    let deliveries = |admin: String| async move {
        get_json(&format!("{admin}/api/v1/deliveries")).await["deliveries"]
            .as_array()
            .unwrap()
            .clone()
    };
    // B takes the delivery over once A's lease has run out, and sends it.
    eventually(Duration::from_secs(120), "B sends the delivery", || async {
        deliveries(b.admin_url.clone())
            .await
            .first()
            .is_some_and(|d| d["status"] == "sent")
    })
    .await;
    assert_eq!(sink.count(), 2);
    a.signal(Signal::SIGCONT);
    eventually(
        Duration::from_secs(20),
        "A notices its claim is gone",
        || async {
            a.log().iter().any(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("claim was taken over"))
            })
        },
    )
    .await;
    let d = deliveries(b.admin_url.clone()).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["status"], "sent", "{:?}", d[0]);
    assert_eq!(d[0]["attempts"], 1);
}
