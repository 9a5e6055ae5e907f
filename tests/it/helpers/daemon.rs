//! The built daemon as a child process: on fixed free ports (a child
//! cannot report the ports it bound), with its stderr collected, waited for
//! until `/readyz` says it is ready.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{SECRET, eventually};

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
    pub async fn spawn(cmd: Command, callback_url: String, admin_url: String) -> Daemon {
        let d = Daemon::launch(cmd, callback_url, admin_url);
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

    /// [`Daemon::spawn`] without waiting for it to be ready.
    pub fn launch(mut cmd: Command, callback_url: String, admin_url: String) -> Daemon {
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
        Daemon {
            child,
            lines,
            callback_url,
            admin_url,
        }
    }

    /// POST a callback to the daemon; the status of its answer.
    pub async fn post(&self, body: &serde_json::Value) -> u16 {
        super::post_json(&reqwest::Client::new(), &self.callback_url, body)
            .await
            .0
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

/// The in-process daemon on fixed free ports, for a test that also runs the
/// command line against it: the CLI finds the daemon through the ports its
/// config names.
pub struct OnFixedPorts {
    /// Holds the config, the rules and the state directory.
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
    pub app: easehook::app::App,
    /// The callback and admin listeners' ports.
    pub cb: u16,
    pub admin: u16,
}

/// Write the config of `opts` on fixed free ports and start the daemon
/// in-process on it.
pub async fn start_on_fixed_ports(opts: &super::Options) -> OnFixedPorts {
    let (dir, config) = super::write_config(opts);
    let (cb, admin) = fixed_ports(&config);
    let app = super::start_from(&config, opts).await;
    OnFixedPorts {
        dir,
        config,
        app,
        cb,
        admin,
    }
}
