//! The `easemob` action against a loopback server that plays Easemob's REST
//! API as documented: `POST /{org}/{app}/token` issues expiring tokens for
//! the app's client id and secret; the message, block and user endpoints
//! check the bearer token, their paths and bodies, and answer as Easemob
//! does — a 401 for an expired token, a 429 with `Retry-After` at the
//! limit, a 404 with `error_description` for a user that does not exist.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;

use crate::helpers::*;

const CLIENT_ID: &str = "YXA6-client-id";
const CLIENT_SECRET: &str = "YXA6-client-secret-0123456789";

/// One call the fake took (the token endpoint's aside).
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Value,
}

/// A set of the failed-callback storage: its date key, the retries made,
/// the callbacks it holds.
type StoredSet = (String, u64, Vec<Value>);

#[derive(Clone, Default)]
struct FakeEasemob {
    url: String,
    token_requests: Arc<AtomicUsize>,
    /// Tokens issued and still good.
    valid: Arc<Mutex<HashSet<String>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    /// Answers to give before serving calls: 429s.
    throttle: Arc<Mutex<VecDeque<()>>>,
    /// How long the token endpoint takes.
    token_delay: Arc<Mutex<Duration>>,
    /// Every token issued, to prove none leaks.
    issued: Arc<Mutex<Vec<String>>>,
    /// The failed-callback storage (回调异常缓存): date key, retries so
    /// far, the callbacks it holds.
    storage: Arc<Mutex<Vec<StoredSet>>>,
    /// Keys whose next retry request answers 429.
    storage_throttled: Arc<Mutex<HashSet<String>>>,
    /// The app has no storage service: 403.
    storage_off: Arc<std::sync::atomic::AtomicBool>,
    /// Every retry request's body.
    retries: Arc<Mutex<Vec<Value>>>,
}

fn reply(status: StatusCode, body: Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn easemob_error(status: StatusCode, error: &str, description: &str) -> warp::reply::Response {
    reply(
        status,
        json!({"error": error, "exception": "EasemobException", "timestamp": easehook::now_ms(),
               "duration": 0, "error_description": description}),
    )
}

impl FakeEasemob {
    async fn start() -> FakeEasemob {
        let mut fake = FakeEasemob::default();
        let f = fake.clone();
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .then(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      auth: Option<String>,
                      body: bytes::Bytes| {
                    let f = f.clone();
                    async move { f.answer(method.as_str(), path.as_str(), auth, &body).await }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        fake.url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(warp::serve(route).incoming(listener).run());
        fake
    }

    async fn answer(
        &self,
        method: &str,
        path: &str,
        auth: Option<String>,
        body: &[u8],
    ) -> warp::reply::Response {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let Some(rest) = path.strip_prefix("/org/app") else {
            return easemob_error(
                StatusCode::NOT_FOUND,
                "organization_application_not_found",
                "Could not find application for org/app from URI",
            );
        };
        if rest == "/token" && method == "POST" {
            self.token_requests.fetch_add(1, Ordering::SeqCst);
            let delay = *self.token_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if body["grant_type"] != "client_credentials"
                || body["client_id"] != CLIENT_ID
                || body["client_secret"] != CLIENT_SECRET
            {
                return easemob_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "client_id does not exist or client_secret is wrong",
                );
            }
            let token = format!("YWMt-{}", unique_id());
            self.valid.lock().unwrap().insert(token.clone());
            self.issued.lock().unwrap().push(token.clone());
            return reply(
                StatusCode::OK,
                json!({"access_token": token, "expires_in": 5184000, "application": "app-uuid"}),
            );
        }
        let token = auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_string));
        if !token.is_some_and(|t| self.valid.lock().unwrap().contains(&t)) {
            return easemob_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unable to authenticate due to expired access token",
            );
        }
        if self.throttle.lock().unwrap().pop_front().is_some() {
            use warp::Reply;
            let mut r = easemob_error(
                StatusCode::TOO_MANY_REQUESTS,
                "reach_limit",
                "This request has reached api limit",
            );
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            return r.into_response();
        }
        if rest.starts_with("/callbacks/storage/") {
            return self.storage(method, rest, body);
        }
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let ok = match (method, parts.as_slice()) {
            ("POST", ["messages", "users"]) => {
                body["from"].is_string()
                    && body["to"].as_array().is_some_and(|t| !t.is_empty())
                    && body["type"] == "txt"
                    && body["body"]["msg"].is_string()
            }
            ("POST", ["users", _, "blocks", "users"]) => {
                body["usernames"].as_array().is_some_and(|u| !u.is_empty())
            }
            ("DELETE", ["users", _, "blocks", "users", _]) => true,
            ("PUT", ["users", _]) => body.is_object(),
            ("POST", ["users", user, "deactivate" | "activate"]) => {
                if *user == "ghost" {
                    return easemob_error(
                        StatusCode::NOT_FOUND,
                        "service_resource_not_found",
                        "Service resource not found",
                    );
                }
                true
            }
            _ => {
                return easemob_error(
                    StatusCode::NOT_FOUND,
                    "service_resource_not_found",
                    "Service resource not found",
                );
            }
        };
        if !ok {
            return easemob_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument",
                "request body is invalid",
            );
        }
        self.calls.lock().unwrap().push(Call {
            method: method.into(),
            path: rest.into(),
            body,
        });
        reply(
            StatusCode::OK,
            json!({"action": method.to_lowercase(), "application": "app-uuid", "path": rest,
                   "uri": format!("https://a1.easemob.com/org/app{rest}"), "data": {},
                   "timestamp": easehook::now_ms(), "duration": 0,
                   "organization": "org", "applicationName": "app"}),
        )
    }

    /// The storage API as Easemob documents it: `GET …/storage/info` lists
    /// the sets, `POST …/storage/retry` with `date`, `retry` and
    /// `targetUrl` re-sends one (here: posts its callbacks to the target).
    fn storage(&self, method: &str, rest: &str, body: Value) -> warp::reply::Response {
        use warp::Reply;
        if self.storage_off.load(Ordering::SeqCst) {
            return easemob_error(
                StatusCode::FORBIDDEN,
                "forbidden_op",
                "callback storage service is not open for this application",
            );
        }
        let envelope = |action: &str, data: Value| {
            json!({"path": "/callbacks", "uri": "https://a1.easemob.com/org/app/callbacks",
                   "timestamp": easehook::now_ms(), "organization": "org",
                   "application": "8dfb1641-0000-0000-bbe9-d8d45a3be39f", "action": action,
                   "data": data, "duration": 3, "applicationName": "app"})
        };
        match (method, rest) {
            ("GET", "/callbacks/storage/info") => {
                let data: Vec<Value> = self
                    .storage
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(date, retry, bodies)| json!({"date": date, "size": bodies.len(), "retry": retry}))
                    .collect();
                reply(StatusCode::OK, envelope("get", json!(data)))
            }
            ("POST", "/callbacks/storage/retry") => {
                self.retries.lock().unwrap().push(body.clone());
                let Some(date) = body["date"].as_str() else {
                    return easemob_error(
                        StatusCode::BAD_REQUEST,
                        "illegal_argument",
                        "date is required",
                    );
                };
                if self.storage_throttled.lock().unwrap().remove(date) {
                    let mut r = easemob_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "reach_limit",
                        "This request has reached api limit",
                    );
                    r.headers_mut().insert("retry-after", "1".parse().unwrap());
                    return r.into_response();
                }
                let mut storage = self.storage.lock().unwrap();
                let Some(set) = storage.iter_mut().find(|s| s.0 == date) else {
                    return easemob_error(
                        StatusCode::BAD_REQUEST,
                        "illegal_argument",
                        "date key not found",
                    );
                };
                set.1 += 1;
                if let Some(target) = body["targetUrl"].as_str() {
                    let (target, bodies) = (target.to_string(), set.2.clone());
                    tokio::spawn(async move {
                        let client = reqwest::Client::new();
                        for b in bodies {
                            let _ = client.post(&target).json(&b).send().await;
                        }
                    });
                }
                reply(StatusCode::OK, envelope("post", json!("success")))
            }
            _ => easemob_error(
                StatusCode::NOT_FOUND,
                "service_resource_not_found",
                "Service resource not found",
            ),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Expire every token issued so far, as time would.
    fn expire_tokens(&self) {
        self.valid.lock().unwrap().clear();
    }
}

fn options(fake: &FakeEasemob, actions: &str, names: &str) -> Options {
    Options::rules(format!(
        "actions:\n{actions}\nrules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [{names}]}}\n"
    ))
    .config(format!(
        "easemob:\n  \"{APPKEY}\":\n    api: {}\n    client_id: {CLIENT_ID}\n    client_secret: ${{EM_SECRET}}\n",
        fake.url
    ))
    .env("EM_SECRET", CLIENT_SECRET)
}

const THREE_CALLS: &str = "  tell:\n    type: easemob\n    call: send_message\n    from: admin\n    to: ['{{to_user}}']\n    text: '你已被 {{from_user}} 拉黑'\n\
  \x20 block:\n    type: easemob\n    call: block\n    owner: '{{to_user}}'\n    user: '{{from_user}}'\n\
  \x20 ban:\n    type: easemob\n    call: deactivate\n    user: '{{to_user}}'\n";

/// One action, `ban`, that deactivates the blocked user.
const DEACTIVATE: &str =
    "  ban:\n    type: easemob\n    call: deactivate\n    user: '{{to_user}}'\n";

#[tokio::test]
async fn a_ban_sends_a_message_blocks_and_deactivates_with_one_token() {
    let fake = FakeEasemob::start().await;
    let app = spawn_app_with(options(&fake, THREE_CALLS, "tell, block, ban")).await;
    let (status, _) = app.post(&signed("roster:ban", "alice", "张三")).await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(10), "three calls sent", || async {
        app.deliveries("sent").await.len() == 3
    })
    .await;
    let calls = fake.calls();
    let find = |path: &str| {
        calls
            .iter()
            .find(|c| c.path == path)
            .unwrap_or_else(|| panic!("{path} in {calls:?}"))
    };
    let msg = find("/messages/users");
    assert_eq!(msg.body["from"], "admin");
    assert_eq!(msg.body["to"], json!(["张三"]));
    assert_eq!(msg.body["body"]["msg"], "你已被 alice 拉黑");
    let block = find("/users/%E5%BC%A0%E4%B8%89/blocks/users");
    assert_eq!(block.body["usernames"], json!(["alice"]));
    let ban = find("/users/%E5%BC%A0%E4%B8%89/deactivate");
    assert_eq!(ban.method, "POST");
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_allow_unblocks_and_activates_and_request_makes_any_call() {
    let fake = FakeEasemob::start().await;
    let mut opts = options(
        &fake,
        "  unblock: {type: easemob, call: unblock, owner: '{{from_user}}', user: '{{to_user}}'}\n\
         \x20 activate: {type: easemob, call: activate, user: '{{to_user}}'}\n\
         \x20 nickname: {type: easemob, call: request, method: put, path: '/users/{{to_user}}', json: {nickname: '{{to_user}} (已恢复)'}}\n",
        "unblock, activate, nickname",
    );
    opts.rules = opts.rules.replace("roster:ban", "roster:allow");
    let app = spawn_app_with(opts).await;
    let (status, _) = app.post(&signed("roster:allow", "alice", "b/ob")).await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(10), "three calls sent", || async {
        app.deliveries("sent").await.len() == 3
    })
    .await;
    let calls = fake.calls();
    let methods_paths: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect();
    for expected in [
        ("DELETE", "/users/alice/blocks/users/b%2Fob"),
        ("POST", "/users/b%2Fob/activate"),
        ("PUT", "/users/b%2Fob"),
    ] {
        assert!(
            methods_paths.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not in {methods_paths:?}"
        );
    }
    let put = calls.iter().find(|c| c.method == "PUT").unwrap();
    assert_eq!(put.body["nickname"], "b/ob (已恢复)");
}

#[tokio::test]
async fn a_hundred_deliveries_waiting_at_once_make_one_token_request() {
    let fake = FakeEasemob::start().await;
    *fake.token_delay.lock().unwrap() = Duration::from_millis(300);
    let app = spawn_app_with(options(
        &fake,
        "  tell:\n    type: easemob\n    call: send_message\n    to: ['{{to_user}}']\n    text: hi\n",
        "tell",
    ))
    .await;
    for i in 0..100 {
        let (status, _) = app
            .post(&signed("roster:ban", "alice", &format!("u{i}")))
            .await;
        assert_eq!(status, 200);
    }
    eventually(Duration::from_secs(20), "100 messages sent", || async {
        app.deliveries("sent").await.len() == 100
    })
    .await;
    assert_eq!(fake.calls().len(), 100);
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_call_repeated() {
    let fake = FakeEasemob::start().await;
    let app = spawn_app_with(options(&fake, DEACTIVATE, "ban")).await;
    app.post(&signed("roster:ban", "alice", "bob")).await;
    app.wait_for_delivery("sent", Duration::from_secs(10)).await;
    fake.expire_tokens();
    app.post(&signed("roster:ban", "alice", "carol")).await;
    eventually(Duration::from_secs(10), "both sent", || async {
        app.deliveries("sent").await.len() == 2
    })
    .await;
    // The second call met a 401, took a new token and went through in
    // the same attempt.
    let second = &app.deliveries("sent").await[0];
    assert_eq!(second["attempts"], 1, "{second}");
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 2);
    assert_eq!(fake.calls().len(), 2);
}

#[tokio::test]
async fn the_rate_limit_is_waited_out_and_a_missing_user_is_dead_with_easemobs_words() {
    let fake = FakeEasemob::start().await;
    fake.throttle.lock().unwrap().push_back(());
    let app = spawn_app_with(options(&fake, DEACTIVATE, "ban")).await;
    app.post(&signed("roster:ban", "alice", "bob")).await;
    let sent = app.wait_for_delivery("sent", Duration::from_secs(10)).await;
    assert_eq!(sent["attempts"], 2, "the 429 was retried: {sent}");
    app.post(&signed("roster:ban", "alice", "ghost")).await;
    let dead = app.wait_for_delivery("dead", Duration::from_secs(10)).await;
    assert_eq!(dead["attempts"], 1, "a 404 is not retried: {dead}");
    assert_eq!(
        dead["last_error"],
        "easemob: HTTP 404: Service resource not found"
    );
}

#[tokio::test]
async fn wrong_credentials_are_dead_with_the_token_error() {
    let fake = FakeEasemob::start().await;
    let opts = options(&fake, DEACTIVATE, "ban").env("EM_SECRET", "not-the-secret");
    let app = spawn_app_with(opts).await;
    app.post(&signed("roster:ban", "alice", "bob")).await;
    let dead = app.wait_for_delivery("dead", Duration::from_secs(10)).await;
    assert_eq!(
        dead["last_error"],
        "app token: easemob: HTTP 401: client_id does not exist or client_secret is wrong"
    );
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn the_token_and_the_client_secret_appear_nowhere() {
    use crate::helpers::{Daemon, fixed_ports};
    let fake = FakeEasemob::start().await;
    let opts = options(&fake, THREE_CALLS, "tell, block, ban");
    let (_dir, config) = write_config(&opts);
    fixed_ports(&config);
    let d = Daemon::start(
        &config,
        &[("EM_SECRET", CLIENT_SECRET), ("RUST_LOG", "debug")],
    )
    .await;
    assert_eq!(d.post(&signed("roster:ban", "alice", "bob")).await, 200);
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let (c, url) = (client.clone(), format!("{}{path}", d.admin_url));
        async move { get_text(&c, &url).await }
    };
    eventually(Duration::from_secs(10), "three calls sent", || async {
        fake.calls().len() == 3
    })
    .await;
    let mut seen = String::new();
    for path in [
        "/api/v1/deliveries?limit=100",
        "/api/v1/events?limit=100",
        "/api/v1/status",
        "/metrics",
    ] {
        seen += &get(path).await;
    }
    for args in [
        vec!["check"],
        vec![
            "test",
            "--event",
            fixture("roster-ban.json").to_str().unwrap(),
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_easehook"))
            .arg("--config")
            .arg(&config)
            .args(&args)
            .env("IT_SECRET", SECRET)
            .env("EM_SECRET", CLIENT_SECRET)
            .output()
            .unwrap();
        seen += &String::from_utf8_lossy(&out.stdout);
        seen += &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {seen}");
    }
    assert!(
        seen.contains("easemob deactivate POST"),
        "test shows the call: {seen}"
    );
    seen += &d.lines.lock().unwrap().join("\n");
    let issued = fake.issued.lock().unwrap().clone();
    assert_eq!(issued.len(), 1);
    for secret in issued.iter().map(String::as_str).chain([CLIENT_SECRET]) {
        assert!(!seen.contains(secret), "{secret} leaked in:\n{seen}");
    }
}

/// The date key (China time, 10-minute slot) of a time `ago` before now.
fn date_key(ago: Duration) -> String {
    let at = chrono::Utc::now() - chrono::Duration::from_std(ago).unwrap();
    let local = at.with_timezone(&chrono_tz::Asia::Shanghai);
    let minute = local.format("%M").to_string().parse::<u32>().unwrap() / 10 * 10;
    format!("{}{minute:02}", local.format("%Y%m%d%H"))
}

#[tokio::test]
async fn recover_asks_easemob_to_resend_each_key_of_the_period_once() {
    let fake = FakeEasemob::start().await;
    let opts = options(&fake, "  noop: {type: log, message: x}", "noop");
    let OnFixedPorts {
        dir: _dir,
        config,
        app,
        cb,
        admin,
    } = start_on_fixed_ports(&opts).await;
    let target = format!("http://127.0.0.1:{cb}/easemob/callback");
    // One callback the daemon got before the outage, then failed ones.
    let seen = signed("roster:ban", "a", "b");
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .post(&target)
            .json(&seen)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (k30, k80, k180, k50) = (
        date_key(Duration::from_secs(30 * 60)),
        date_key(Duration::from_secs(80 * 60)),
        date_key(Duration::from_secs(180 * 60)),
        date_key(Duration::from_secs(50 * 60)),
    );
    *fake.storage.lock().unwrap() = vec![
        (
            k30.clone(),
            0,
            vec![seen.clone(), signed("roster:ban", "c", "d")],
        ),
        (k80.clone(), 1, vec![signed("roster:add", "e", "f")]),
        (k180.clone(), 0, vec![signed("roster:ban", "g", "h")]),
        (k50.clone(), 10, vec![signed("roster:ban", "i", "j")]),
    ];
    fake.storage_throttled.lock().unwrap().insert(k30.clone());
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, _) =
                crate::helpers::easehook_with(&config, &args, &[("EM_SECRET", CLIENT_SECRET)])
                    .await;
            (code, out)
        }
    };
    let base = |extra: &[&str]| {
        let mut a: Vec<String> = ["easemob", "recover", "--appkey", APPKEY, "--since", "2h"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // A dry run lists and asks nothing.
    let (code, out) = run(base(&["--dry-run"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{k30}       2 callback(s)  retried 0x  would be re-sent to the callback rule's own URL"
        )),
        "{out}"
    );
    assert!(!out.contains(&k180), "outside the period: {out}");
    assert!(fake.retries.lock().unwrap().is_empty());

    let (code, out) = run(base(&["--target-url", &target])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{k80}       1 callback(s)  retried 1x  re-sent to {target}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{k30}       2 callback(s)  retried 0x  re-sent to {target}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{k50}       1 callback(s)  retried 10x  skipped")),
        "{out}"
    );
    assert!(out.contains("2 set(s) re-sent, 0 failed"), "{out}");
    let asked: Vec<Value> = fake.retries.lock().unwrap().clone();
    // k30 was throttled once, then asked again; each key succeeded once.
    assert_eq!(asked.len(), 3, "{asked:?}");
    let dates: Vec<&str> = asked.iter().map(|b| b["date"].as_str().unwrap()).collect();
    assert_eq!(dates, [k80.as_str(), k30.as_str(), k30.as_str()]);
    assert_eq!(asked[0]["retry"], 1);
    assert!(asked.iter().all(|b| b["targetUrl"] == target.as_str()));
    // The re-sent callbacks are stored once: the one seen before is a repeat.
    let events = || async {
        let v: Value = reqwest::get(format!("http://127.0.0.1:{admin}/api/v1/events?limit=100"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["events"].as_array().unwrap().len()
    };
    eventually(Duration::from_secs(20), "the re-sent callbacks", || async {
        events().await == 3
    })
    .await;

    // Easemob's storage not enabled for the app: its error, exit 1.
    fake.storage_off.store(true, Ordering::SeqCst);
    let (code, out) = run(base(&[])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Easemob refused to list the failed-callback storage: easemob: HTTP 403: callback storage service is not open"),
        "{out}"
    );
    // An app without credentials: exit 1; a bad period: exit 2.
    let (code, out) = run(vec![
        "easemob".into(),
        "recover".into(),
        "--appkey".into(),
        "other#app".into(),
        "--since".into(),
        "2h".into(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("has no credentials under easemob:"), "{out}");
    let (code, _) = run(vec![
        "easemob".into(),
        "recover".into(),
        "--appkey".into(),
        APPKEY.into(),
        "--since".into(),
        "lately".into(),
    ])
    .await;
    assert_eq!(code, 2);
    drop(app);
}

#[tokio::test]
async fn a_threshold_over_presend_rejects_deactivates_the_repeat_spammer() {
    let fake = FakeEasemob::start().await;
    let rules = format!(
        "{}actions:\n  ban:\n    type: easemob\n    call: deactivate\n    user: '{{{{from_user}}}}'\n\
         rules:\n  - name: repeat-spammer\n    when: {{event: 'presend:reject'}}\n    threshold: {{count: 3, within: 1h, by: [from]}}\n    actions: [ban]\n",
        crate::presend::MODERATION
    );
    let opts = Options::rules(rules)
        .config(crate::presend::PRESEND)
        .config(format!(
            "easemob:\n  \"{APPKEY}\":\n    api: {}\n    client_id: {CLIENT_ID}\n    client_secret: ${{EM_SECRET}}\n",
            fake.url
        ))
        .env("EM_SECRET", CLIENT_SECRET);
    let app = spawn_app_with(opts).await;
    for _ in 0..3 {
        let (_, answer) = app.presend(&presend_txt("spambot", "加微信 123")).await;
        assert_eq!(answer, r#"{"valid":false,"code":"HX:10001"}"#);
    }
    // Another sender's rejects count apart.
    app.presend(&presend_txt("someone", "vx")).await;
    eventually(Duration::from_secs(10), "a deactivation", || async {
        !fake.calls().is_empty()
    })
    .await;
    assert_eq!(
        fake.calls()[0].path,
        "/users/spambot/deactivate",
        "{:?}",
        fake.calls()
    );
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| c.path == "/users/someone/deactivate"),
        "{:?}",
        fake.calls()
    );
}
