//! Test helpers: the real daemon on port 0 with a temporary state directory,
//! signed callbacks, and real destinations on loopback (an HTTP sink and an
//! SMTP server with STARTTLS and AUTH).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use easehook::app::App;
use easehook::shutdown::Shutdown;
use serde_json::{Value, json};
use warp::Filter;

mod cli;
mod daemon;
pub mod pg;

pub use cli::*;
pub use daemon::*;

pub const SECRET: &str = "it-secret-0123456789";
pub const APPKEY: &str = "org#app";

/// Whether a real part a test needs (a server, a browser) is here. Where it
/// is missing the test skips with a notice, except under `CI=true`, where
/// a missing part is a failure.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}: required under CI=true");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// Poll `cond` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `url`: the status and the JSON body.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// GET `url`: the body as text (a page, `/metrics`).
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// POST `body` as JSON to `url` (a signed callback to a daemon's callback
/// listener, most often): the status and the JSON answer, or
/// `{"raw": text}` when the answer is not JSON.
pub async fn post_json(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &Value,
) -> (u16, Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

/// How to start a test daemon.
#[derive(Default, Clone)]
pub struct Options {
    /// Contents of `rules/10-test.yaml`.
    pub rules: String,
    /// Files of `templates/`.
    pub templates: Vec<(String, String)>,
    /// YAML appended to the generated config.
    pub extra_config: String,
    /// Variables the config and rules may reference.
    pub env: HashMap<String, String>,
}

impl Options {
    pub fn rules(rules: impl Into<String>) -> Self {
        Self {
            rules: rules.into(),
            ..Self::default()
        }
    }
    pub fn config(mut self, extra: impl Into<String>) -> Self {
        self.extra_config.push_str(&extra.into());
        self.extra_config.push('\n');
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    pub fn template(mut self, name: &str, body: &str) -> Self {
        self.templates.push((name.into(), body.into()));
        self
    }
}

/// A running daemon and a client for it.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub callback_url: String,
    pub admin_url: String,
    pub client: reqwest::Client,
    pub app: Option<App>,
    pub state_dir: PathBuf,
}

/// Write the config, rules and templates for `opts` into a fresh temp dir.
pub fn write_config(opts: &Options) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("rules/10-test.yaml"), &opts.rules).unwrap();
    for (name, body) in &opts.templates {
        std::fs::write(dir.path().join("templates").join(name), body).unwrap();
    }
    let config = dir.path().join("easehook.yaml");
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nsecrets:\n  \"{APPKEY}\": [\"${{IT_SECRET}}\"]\ntimezone: UTC\n\
         delivery:\n  initial_backoff: 50ms\n  max_backoff: 200ms\n  max_attempts: 5\n  timeout: 2s\n  shutdown_grace: 2s\n"
    );
    // Later keys may override `delivery:`; YAML forbids duplicate keys, so
    // an override replaces the whole default block.
    if opts.extra_config.contains("delivery:") {
        yaml = yaml.split("delivery:").next().unwrap().to_string();
    }
    yaml.push_str(&opts.extra_config);
    std::fs::write(&config, yaml).unwrap();
    (dir, config)
}

pub fn env_map(opts: &Options) -> HashMap<String, String> {
    let mut env = opts.env.clone();
    env.insert("IT_SECRET".into(), SECRET.into());
    env
}

/// Start the daemon in-process from a config written (and perhaps edited)
/// by the test itself.
pub async fn start_from(config: &std::path::Path, opts: &Options) -> App {
    App::start(config, Arc::new(env_map(opts)), Shutdown::new())
        .await
        .expect("daemon starts")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::rules("")).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    tracing_subscriber_init();
    let (dir, config) = write_config(&opts);
    let app = App::start(&config, Arc::new(env_map(&opts)), Shutdown::new())
        .await
        .expect("daemon starts");
    let state_dir = dir.path().join("data");
    TestApp {
        callback_url: format!("http://{}/easemob/callback", app.callback_addr),
        admin_url: format!("http://{}", app.admin_addr),
        client: reqwest::Client::new(),
        app: Some(app),
        dir,
        state_dir,
    }
}

fn tracing_subscriber_init() {
    easehook::telemetry::init(easehook::config::LogFormat::Text);
}

/// A callback body for `event`, signed with the test secret.
pub fn signed(event: &str, from: &str, to: &str) -> Value {
    let id = unique_id();
    let mut body = easehook::rules::samples::body(event, APPKEY, from, to, &id, easehook::now_ms());
    sign(&mut body, SECRET);
    body
}

/// A pre-send request (SPEC §16) from `from` to `to` with `payload`,
/// signed with the test secret.
pub fn presend_request(from: &str, to: &str, payload: Value) -> Value {
    let mut body = json!({
        "callId": format!("{APPKEY}_{}", unique_id()),
        "timestamp": easehook::now_ms(),
        "chat_type": "chat",
        "from": from,
        "to": to,
        "msg_id": unique_id(),
        "securityVersion": "1.0.0",
        "payload": payload,
    });
    sign(&mut body, SECRET);
    body
}

/// A signed pre-send request of a txt message.
pub fn presend_txt(from: &str, text: &str) -> Value {
    presend_request(from, "bob", json!({"msg": text, "type": "txt"}))
}

/// (Re)sign a body in place.
pub fn sign(body: &mut Value, secret: &str) {
    let call_id = body["callId"].as_str().unwrap().to_string();
    let ts = match &body["timestamp"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    body["security"] = json!(easehook::verify::sign(&call_id, secret, &ts));
}

/// A documented Easemob callback example kept in the repository
/// (`tests/fixtures/easemob/NAME`), signed with an unknown secret.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/easemob")
        .join(name)
}

pub fn unique_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}{:06}",
        easehook::now_ms() % 1_000_000_000_000,
        n % 1_000_000
    )
}

/// The head of a raw `POST` of a JSON callback of `body_len` bytes.
pub fn callback_request_head(body_len: usize) -> String {
    format!(
        "POST /easemob/callback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n\r\n"
    )
}

impl TestApp {
    /// A new connection to the callback listener that has sent the whole
    /// of a `POST` of `body`, for tests of what the caller does next.
    pub async fn post_raw(&self, body: &Value) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let body = body.to_string();
        let mut conn = tokio::net::TcpStream::connect(self.callback_addr())
            .await
            .unwrap();
        let request = callback_request_head(body.len()) + &body;
        conn.write_all(request.as_bytes()).await.unwrap();
        conn
    }

    /// `host:port` of the callback listener, for raw TCP tests.
    pub fn callback_addr(&self) -> String {
        self.callback_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    pub async fn post(&self, body: &Value) -> (u16, Value) {
        self.post_bytes(body.to_string()).await
    }

    pub async fn post_bytes(&self, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let (status, text) = self.post_text(&self.callback_url, body).await;
        assert!(text.len() < 200, "every body is under 200 bytes: {text}");
        (
            status,
            serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
        )
    }

    /// `POST /easemob/presend`: the status and the exact answer body.
    pub async fn presend(&self, body: &Value) -> (u16, String) {
        self.presend_bytes(body.to_string()).await
    }

    pub async fn presend_bytes(&self, body: impl Into<reqwest::Body>) -> (u16, String) {
        let url = self
            .callback_url
            .replace("/easemob/callback", "/easemob/presend");
        let (status, text) = self.post_text(&url, body).await;
        assert!(
            text.len() <= 1000,
            "every answer is at most 1,000 bytes: {text}"
        );
        (status, text)
    }

    /// POST a JSON body to `url`: the status and the answer's text.
    async fn post_text(&self, url: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.admin_url))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.admin(reqwest::Method::GET, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    pub async fn deliveries(&self, status: &str) -> Vec<Value> {
        let body = self
            .get(&format!("/api/v1/deliveries?status={status}&limit=1000"))
            .await;
        body["deliveries"].as_array().unwrap().clone()
    }

    /// The newest delivery with this status, once there is one.
    pub async fn wait_for_delivery(&self, status: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(d) = self.deliveries(status).await.into_iter().next() {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for a {status} delivery"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn events(&self) -> Vec<Value> {
        self.get("/api/v1/events?limit=1000").await["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn write_rules(&self, yaml: &str) {
        // Write then rename, as editors and `git checkout` do.
        let tmp = self.dir.path().join("rules/.10-test.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("rules/10-test.yaml")).unwrap();
    }

    pub async fn rule_count(&self) -> u64 {
        self.get("/api/v1/status").await["rules"].as_u64().unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(app) = &self.app {
            app.shutdown();
        }
    }
}

/// One request received by the sink.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: std::time::Instant,
}

/// How the sink answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A real HTTP server on loopback that records requests and answers from a
/// script (then 200).
#[derive(Clone)]
pub struct HttpSink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpSink {
    pub async fn start() -> Self {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(listener: tokio::net::TcpListener) -> Self {
        use std::sync::atomic::Ordering;
        let addr = listener.local_addr().unwrap();
        let sink = HttpSink {
            addr,
            received: Arc::default(),
            script: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let s = sink.clone();
        let route = warp::any()
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      query: String,
                      headers: warp::http::HeaderMap,
                      body: bytes::Bytes| {
                    let s = s.clone();
                    async move {
                        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
                        s.received.lock().unwrap().push(Received {
                            method: method.to_string(),
                            path: if query.is_empty() {
                                path.as_str().to_string()
                            } else {
                                format!("{}?{query}", path.as_str())
                            },
                            headers: headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect(),
                            body: String::from_utf8_lossy(&body).to_string(),
                            at: std::time::Instant::now(),
                        });
                        let answer = s
                            .script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or(Answer::status(200));
                        tokio::time::sleep(answer.delay).await;
                        s.in_flight.fetch_sub(1, Ordering::SeqCst);
                        let mut resp = warp::http::Response::builder().status(answer.status);
                        for (k, v) in &answer.headers {
                            resp = resp.header(k, v);
                        }
                        resp.body(warp::hyper::body::Bytes::from_static(b"{}"))
                            .unwrap()
                    }
                },
            );
        tokio::spawn(warp::serve(route).incoming(listener).run());
        sink
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer the next requests like this, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// One message received by the SMTP server.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
    pub auth: Option<(String, String)>,
}

#[derive(Clone)]
struct MailHandler {
    mails: Arc<Mutex<Vec<Mail>>>,
    current: Mail,
    user: String,
    password: String,
    authed: Option<(String, String)>,
}

impl mailin_embedded::Handler for MailHandler {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.current = Mail {
            from: from.to_string(),
            to: to.to_vec(),
            data: Vec::new(),
            auth: self.authed.clone(),
        };
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        self.mails
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        mailin_embedded::response::OK
    }
    fn auth_plain(
        &mut self,
        _authz: &str,
        user: &str,
        password: &str,
    ) -> mailin_embedded::Response {
        if user == self.user && password == self.password {
            self.authed = Some((user.to_string(), password.to_string()));
            mailin_embedded::response::AUTH_OK
        } else {
            mailin_embedded::response::INVALID_CREDENTIALS
        }
    }
    fn auth_login(&mut self, user: &str, password: &str) -> mailin_embedded::Response {
        self.auth_plain("", user, password)
    }
}

/// A real SMTP server on loopback with STARTTLS (a certificate signed by a
/// test CA, written to `ca_file`) and AUTH PLAIN/LOGIN.
pub struct SmtpServer {
    pub port: u16,
    pub ca_file: PathBuf,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    _dir: tempfile::TempDir,
}

pub const SMTP_USER: &str = "easehook";
pub const SMTP_PASSWORD: &str = "smtp-pass-9876543210";

impl SmtpServer {
    pub fn start() -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, cert_pem, key_pem) = test_certificates();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let handler = MailHandler {
            mails: mails.clone(),
            current: Mail::default(),
            user: SMTP_USER.into(),
            password: SMTP_PASSWORD.into(),
            authed: None,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = mailin_embedded::Server::new(handler);
        server
            .with_name("smtp.test")
            .with_ssl(mailin_embedded::SslConfig::Trusted {
                cert_path: dir.path().join("cert.pem").display().to_string(),
                key_path: dir.path().join("key.pem").display().to_string(),
                chain_path: dir.path().join("ca.pem").display().to_string(),
            })
            .unwrap()
            .with_auth(mailin_embedded::AuthMechanism::Plain)
            .with_auth(mailin_embedded::AuthMechanism::Login)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpServer {
            port,
            ca_file,
            mails,
            _dir: dir,
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM.
pub fn test_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "easehook test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
