//! Restarts that refuse nothing (SPEC §10) and one daemon per `state_dir`
//! (SPEC §9), with the built binary.
//!
//! The test plays systemd's part in socket activation: it binds the
//! listening sockets itself, keeps them for the whole test, and starts each
//! daemon with them as descriptors 3, 4, … (`LISTEN_FDS`, `LISTEN_PID` set
//! to the daemon's own pid, `LISTEN_FDNAMES`), so that a restart is what
//! `systemctl restart easehook` does: the old process drains and exits, the
//! new one takes the same sockets.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::*;
use crate::helpers::{Daemon, config_ports, fixed_ports};

/// A listening socket on a free loopback port with room for a burst in
/// its backlog, as the socket unit's `Backlog=` gives.
fn listening_socket() -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(1024).unwrap();
    s.into()
}

/// The daemon started as systemd starts it: `sockets` (name, socket) passed
/// as descriptors 3, 4, …; names in `LISTEN_FDNAMES` unless `None`.
async fn start_activated(
    config: &std::path::Path,
    sockets: &[(Option<&str>, &std::net::TcpListener)],
    callback_url: String,
    admin_url: String,
) -> Daemon {
    let fds: Vec<RawFd> = sockets.iter().map(|(_, s)| s.as_raw_fd()).collect();
    // `LISTEN_PID` must be the daemon's own pid, known only once it runs:
    // the shell sets it to its pid, then becomes the daemon.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_easehook"))
        .arg("--config")
        .arg(config)
        .env("LISTEN_FDS", fds.len().to_string());
    let names: Vec<&str> = sockets.iter().filter_map(|(n, _)| *n).collect();
    if !names.is_empty() {
        cmd.env("LISTEN_FDNAMES", names.join(":"));
    }
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Copies above the targets first, so that placing one socket
            // never overwrites another that is still to be placed.
            let mut high = Vec::with_capacity(fds.len());
            for fd in &fds {
                let copy = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(copy);
            }
            for (i, fd) in high.iter().enumerate() {
                // dup2 clears close-on-exec on the new descriptor.
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Daemon::spawn(cmd, callback_url, admin_url).await
}

/// What one callback got: its status and body, or the client's error.
type Outcome = Result<(u16, String), String>;

/// Callers that each send signed callbacks back to back, a new connection
/// per callback (the connection an old process drains is never reused),
/// until told to stop; every answer and every failure is kept.
struct Stream {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    results: Arc<Mutex<Vec<Outcome>>>,
    /// The longest time one callback waited for its answer.
    longest: Arc<Mutex<Duration>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stream {
    fn start(url: &str, callers: usize) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        let longest = Arc::new(Mutex::new(Duration::ZERO));
        let tasks = (0..callers)
            .map(|_| {
                let (stop, answered, results, longest) = (
                    stop.clone(),
                    answered.clone(),
                    results.clone(),
                    longest.clone(),
                );
                let url = url.to_string();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let body = signed("roster:ban", "alice", "bob");
                        let began = Instant::now();
                        let r = match client.post(&url).json(&body).send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                Ok((status, r.text().await.unwrap_or_default()))
                            }
                            Err(e) => Err(format!("{e:?}")),
                        };
                        let took = began.elapsed();
                        {
                            let mut l = longest.lock().unwrap();
                            *l = (*l).max(took);
                        }
                        results.lock().unwrap().push(r);
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Stream {
            stop,
            answered,
            results,
            longest,
            tasks,
        }
    }

    async fn until_answered(&self, n: usize, what: &str) {
        let answered = self.answered.clone();
        eventually(Duration::from_secs(30), what, || {
            let a = answered.clone();
            async move { a.load(Ordering::Relaxed) >= n }
        })
        .await;
    }

    async fn finish(self) -> (Vec<Outcome>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let longest = *self.longest.lock().unwrap();
        (
            Arc::try_unwrap(self.results).unwrap().into_inner().unwrap(),
            longest,
        )
    }
}

/// Every event the daemon at `admin_url` stores, by id: how many times each.
async fn stored_ids(admin_url: &str) -> HashMap<String, usize> {
    let events: serde_json::Value =
        reqwest::get(format!("{admin_url}/api/v1/events?since=1h&limit=1000"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let mut ids = HashMap::new();
    for e in events["events"].as_array().unwrap() {
        *ids.entry(e["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

/// Stream callbacks through a SIGTERM and a new daemon on the same sockets;
/// assert that every one got a 200 and is stored once.
async fn restart_under_load(name_sockets: bool) {
    let (_dir, config) = write_config(&Options::rules(
        "actions:\n  n: {type: log, message: x}\nrules:\n  - {name: bans, when: {event: roster:ban}, actions: [n]}\n",
    ));
    // The configured addresses are free ports nothing listens on: the
    // daemon must serve the passed sockets, not bind these.
    fixed_ports(&config);
    let callback = listening_socket();
    let admin = listening_socket();
    let callback_url = format!("http://{}/easemob/callback", callback.local_addr().unwrap());
    let (sockets, admin_url): (Vec<(Option<&str>, &std::net::TcpListener)>, String) =
        if name_sockets {
            // The admin socket first: names decide, not the order.
            (
                vec![(Some("admin"), &admin), (Some("callback"), &callback)],
                format!("http://{}", admin.local_addr().unwrap()),
            )
        } else {
            let (_, admin_port) = config_ports(&config);
            (
                vec![(None, &callback)],
                format!("http://127.0.0.1:{admin_port}"),
            )
        };
    let mut first =
        start_activated(&config, &sockets, callback_url.clone(), admin_url.clone()).await;
    let (configured, _) = config_ports(&config);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", configured)).is_err(),
        "the daemon bound `listen` although systemd passed its socket"
    );
    assert!(
        first.log().iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("passed by systemd"))),
        "{:?}",
        first.log()
    );

    let stream = Stream::start(&callback_url, 8);
    stream
        .until_answered(100, "100 callbacks answered by the first daemon")
        .await;
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait(Duration::from_secs(20)).await, Some(0));
    let answered_by_first = stream.answered.load(Ordering::Relaxed);
    let second = start_activated(&config, &sockets, callback_url, admin_url.clone()).await;
    stream
        .until_answered(
            answered_by_first + 100,
            "100 callbacks answered by the second daemon",
        )
        .await;
    let (results, longest) = stream.finish().await;

    let mut acknowledged = Vec::new();
    for r in &results {
        match r {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["ok"], true, "{body}");
                acknowledged.push(v["id"].as_str().unwrap().to_string());
            }
            other => panic!("a callback was not acknowledged across the restart: {other:?}"),
        }
    }
    assert!(acknowledged.len() >= answered_by_first + 100);
    let stored = stored_ids(&second.admin_url).await;
    for id in &acknowledged {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "event {id} acknowledged but not stored once"
        );
    }
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "events stored that were never acknowledged"
    );
    eprintln!(
        "{} callbacks, all acknowledged across the restart; the longest waited {longest:?}",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_passed_socket_refuses_no_callback() {
    restart_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_named_callback_and_admin_sockets_refuses_no_callback() {
    restart_under_load(true).await;
}

#[tokio::test]
async fn a_second_daemon_on_the_same_state_dir_exits_1_and_names_the_first() {
    let (dir, config) = write_config(&Options::rules(""));
    fixed_ports(&config);
    let mut first = Daemon::start(&config, &[]).await;
    // The same directory (and so the same state_dir), other ports.
    let other = dir.path().join("other.yaml");
    std::fs::copy(&config, &other).unwrap();
    fixed_ports_again(&other);
    let out = Command::new(env!("CARGO_BIN_EXE_easehook"))
        .arg("--config")
        .arg(&other)
        .env("IT_SECRET", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "state_dir {} is in use by another easehook (pid {})",
        dir.path().join("data").display(),
        first.child.id()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // The first daemon goes on undisturbed.
    assert_eq!(first.post(&signed("roster:ban", "a", "b")).await, 200);

    // Killed, it leaves nothing behind that stops the next one.
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10)).await;
    let began = Instant::now();
    let next = Daemon::start(&other, &[]).await;
    assert!(began.elapsed() < Duration::from_secs(10));
    assert_eq!(next.post(&signed("roster:ban", "a", "b")).await, 200);
}

/// Move a config already on fixed ports to two other free ones.
fn fixed_ports_again(config: &std::path::Path) {
    let (cb, admin) = config_ports(config);
    let text = std::fs::read_to_string(config).unwrap();
    let text = text
        .replace(
            &format!("listen: 127.0.0.1:{cb}\n"),
            &format!("listen: 127.0.0.1:{}\n", crate::helpers::free_port()),
        )
        .replace(
            &format!("admin_listen: 127.0.0.1:{admin}\n"),
            &format!("admin_listen: 127.0.0.1:{}\n", crate::helpers::free_port()),
        );
    std::fs::write(config, text).unwrap();
}
