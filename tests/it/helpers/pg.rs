//! A real PostgreSQL server for the tests: Debian's `postgresql` package
//! (installed by `.ci/run`), `initdb` into a temporary directory and
//! `pg_ctl start` on a free loopback port, once per test binary, stopped
//! when the binary exits. Each test gets a database of its own
//! ([`database`]). PostgreSQL refuses to run as root, so as root the server
//! runs as the `postgres` user the package creates.
//!
//! Where no server is installed the tests that need one skip with a notice;
//! under `CI=true` they fail instead ([`crate::helpers::require`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The password of the server's superuser (scram-sha-256 over TCP).
pub const PASSWORD: &str = "pg-test-password-7431";
pub const USER: &str = "easehook";

/// A running test server.
pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    /// Stopped and removed when dropped (a server of one test's own); the
    /// shared server is stopped at exit instead.
    owned: bool,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.owned {
            self.stop_now();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The directory holding `initdb` and `pg_ctl`: Debian keeps them under
/// `/usr/lib/postgresql/VERSION/bin`, off the PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().or_else(|| {
        let out = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .ok()?;
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        p.parent().map(Path::to_path_buf)
    })
}

impl PgServer {
    fn command(&self, tool: &str) -> Command {
        command(&self.bin, self.run_as.as_deref(), tool)
    }

    /// A connection URL for `db` with the right password.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Run `pg_ctl` on this server's data directory (its log beside it).
    fn pg_ctl(&self, args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }

    /// Stop the server (fast shutdown), for tests of a database that goes away.
    pub fn stop(&self) {
        let _ = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Stop at once (as a crash would), for the end of a test binary.
    fn stop_now(&self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// Start it again after [`PgServer::stop`].
    pub fn start(&self) {
        let status = self.pg_ctl(&["-w", "start"]).expect("run pg_ctl");
        assert!(
            status.success(),
            "pg_ctl start failed; see {}/log",
            self.dir.display()
        );
    }
}

fn command(bin: &Path, run_as: Option<&str>, tool: &str) -> Command {
    match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(bin.join(tool));
            c
        }
        None => Command::new(bin.join(tool)),
    }
}

extern "C" fn stop_at_exit() {
    if let Some(Ok(server)) = SERVER.get() {
        server.stop_now();
        let _ = std::fs::remove_dir_all(&server.dir);
    }
}

fn start_shared() -> Result<PgServer, String> {
    let server = launch(false, None)?;
    unsafe { libc::atexit(stop_at_exit) };
    Ok(server)
}

/// A server of the calling test's own (which it may stop and start),
/// stopped when dropped; `None` where PostgreSQL is not installed.
pub fn own_server() -> Option<PgServer> {
    own_server_with(None)
}

/// As [`own_server`], with TLS on: this certificate and key (PEM).
pub fn own_server_with_tls(cert: &str, key: &str) -> Option<PgServer> {
    own_server_with(Some((cert, key)))
}

fn own_server_with(tls: Option<(&str, &str)>) -> Option<PgServer> {
    match launch(true, tls) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::helpers::require(false, &format!("PostgreSQL: {e}"));
            None
        }
    }
}

fn launch(owned: bool, tls: Option<(&str, &str)>) -> Result<PgServer, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let bin = bin_dir().ok_or("no PostgreSQL server installed (apt-get install postgresql)")?;
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = root.then(|| "postgres".to_string());
    let dir = std::env::temp_dir().join(format!(
        "easehook-pg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if root {
        let status = Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("cannot give the server's directory to the postgres user".into());
        }
    }
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, PASSWORD).map_err(|e| e.to_string())?;
    if root {
        let _ = Command::new("chown")
            .args(["postgres:", pwfile.to_str().unwrap()])
            .status();
    }
    let out = command(&bin, run_as.as_deref(), "initdb")
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["--no-sync", "-E", "UTF8", "--locale=C"])
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = super::free_port();
    // Settings of a small test server; fsync stays on (commits are durable,
    // as the tests of acknowledged callbacks assume).
    let conf = format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         max_connections = 300\nshared_buffers = 32MB\nlog_min_messages = warning\n",
        dir.display()
    );
    let mut conf = conf;
    if let Some((cert, key)) = tls {
        use std::os::unix::fs::PermissionsExt;
        let data = dir.join("data");
        std::fs::write(data.join("server.crt"), cert).map_err(|e| e.to_string())?;
        std::fs::write(data.join("server.key"), key).map_err(|e| e.to_string())?;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(|e| e.to_string())?;
        if root {
            for f in ["server.crt", "server.key"] {
                let _ = Command::new("chown")
                    .args(["postgres:", data.join(f).to_str().unwrap()])
                    .status();
            }
        }
        conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("data/postgresql.conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
        .map_err(|e| e.to_string())?;
    let server = PgServer {
        port,
        dir,
        bin,
        run_as,
        owned,
    };
    let status = server
        .pg_ctl(&["-w", "start"])
        .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
    if !status.success() {
        let log = std::fs::read_to_string(server.dir.join("log")).unwrap_or_default();
        return Err(format!("pg_ctl start failed: {log}"));
    }
    Ok(server)
}

/// The test server, started on first use; `None` (with a notice) where
/// PostgreSQL is not installed, a failure under `CI=true`.
pub fn server() -> Option<&'static PgServer> {
    match SERVER.get_or_init(start_shared) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::helpers::require(false, &format!("PostgreSQL: {e}"));
            None
        }
    }
}

/// A new, empty database on the shared test server, and its URL.
pub async fn database() -> Option<String> {
    Some(server()?.database().await)
}

impl PgServer {
    /// A new, empty database on this server, and its URL.
    pub async fn database(&self) -> String {
        let server = self;
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) =
            tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test server");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        drop(client);
        let _ = task.await;
        server.url(&name)
    }
}

/// Run SQL on the database at `url` (for tests that look behind the store).
pub async fn sql(url: &str, query: &str) -> Vec<tokio_postgres::Row> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    let task = tokio::spawn(conn);
    let rows = client.query(query, &[]).await.expect(query);
    drop(client);
    let _ = task.await;
    rows
}

/// The `store:` section of a daemon's config on the database at `url`,
/// with `pool` connections.
pub fn store_config(url: &str, pool: usize) -> String {
    format!("store:\n  type: postgres\n  url: '{url}'\n  pool: {pool}\n")
}
