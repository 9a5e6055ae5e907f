//! The web console (SPEC §13) in a real headless Chromium, driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`), against the real
//! daemon and real HTTP sinks: what an operator sees and clicks. Under
//! `CI=true` a missing browser is a failure.
//!
//! The screenshots in `docs/` are taken here (set `EASEHOOK_SCREENSHOTS=1`
//! to write them again).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium behind its own chromedriver, ended on drop.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A browser whose language is `lang` (its `Accept-Language`), or `None`
/// where none is installed (a failure under `CI=true`).
async fn browser(lang: &str) -> Option<Browser> {
    let here =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !require(
        here,
        "Chromium and chromedriver (Debian chromium, chromium-driver)",
    ) {
        return None;
    }
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), "chromedriver ready", || async {
        http.get(format!("{url}/status")).send().await.is_ok()
    })
    .await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,860", format!("--lang={lang}")],
            "prefs": {"intl.accept_languages": lang},
        }),
    );
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a WebDriver session");
    Some(Browser { client, driver })
}

/// The text of the element `css`, once the page shows it (a click that
/// submits a form returns before the next page is loaded).
async fn text(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Click `css` and wait for the next page: until the page of the click is
/// gone (its root element stale).
async fn click_to(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the next page", || async {
        old.attr("lang").await.is_err()
    })
    .await;
}

async fn all_attr(c: &Client, css: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.attr(attr).await.unwrap().unwrap_or_default());
    }
    out
}

/// Write a screenshot to `docs/` when asked to (`EASEHOOK_SCREENSHOTS=1`).
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if std::env::var("EASEHOOK_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::write(path, png).unwrap();
    }
}

async fn post(app: &TestApp, body: &Value) {
    let r = app
        .client
        .post(&app.callback_url)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn delivery_of(app: &TestApp, action: &str, status: &str) -> Option<i64> {
    let url = format!("{}/api/v1/deliveries?status={status}", app.admin_url);
    let (_, list) = get_json(&app.client, url).await;
    list["deliveries"]
        .as_array()?
        .iter()
        .find(|d| d["action"] == action)
        .and_then(|d| d["id"].as_i64())
}

fn rules(hook: &HttpSink, fragile: &HttpSink) -> String {
    format!(
        "actions:\n  hook: {{type: http, url: '{}', json: {{user: '{{{{from_user}}}}'}}}}\n  \
         fragile: {{type: http, url: '{}', max_attempts: 1, json: {{user: '{{{{from_user}}}}'}}}}\n\
         rules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [hook]}}\n  \
         - {{name: removals, when: {{event: roster:remove}}, actions: [fragile]}}\n",
        hook.url("/hook"),
        fragile.url("/fragile")
    )
}

#[tokio::test]
async fn the_console_shows_events_deliveries_and_attempts_and_retries_a_dead_one() {
    let Some(b) = browser("en-US").await else {
        return;
    };
    let c = &b.client;
    let hook = HttpSink::start().await;
    hook.script([Answer::status(500), Answer::status(200)]);
    let fragile = HttpSink::start().await;
    fragile.script([Answer::status(500)]);
    let app = spawn_app_with(Options::rules(rules(&hook, &fragile))).await;
    let admin = &app.admin_url;

    // A ban whose hook answers 500 then 200, an add no rule takes, a
    // removal whose delivery dies at its only attempt.
    post(&app, &signed("roster:ban", "alice", "bob")).await;
    post(&app, &signed("roster:add", "carol", "dave")).await;
    post(&app, &signed("roster:remove", "erin", "frank")).await;
    eventually(
        Duration::from_secs(20),
        "the hook sent and the removal dead",
        || async {
            delivery_of(&app, "hook", "sent").await.is_some()
                && delivery_of(&app, "fragile", "dead").await.is_some()
        },
    )
    .await;
    // A ban whose reason is markup and script.
    let mut hostile = signed("roster:ban", "mallory", "bob");
    hostile["payload"]["reason"] =
        json!("<script>window.__pwned = 1</script><b id=\"bold\">bold</b>");
    sign(&mut hostile, SECRET);
    post(&app, &hostile).await;

    // The events page lists them, newest first.
    c.goto(&format!("{admin}/events")).await.unwrap();
    assert_eq!(
        all_attr(c, "tr.event", "data-event").await,
        ["roster:ban", "roster:remove", "roster:add", "roster:ban"]
    );
    // Filtering by roster:ban narrows the list.
    c.find(Locator::Css("input[name=event]"))
        .await
        .unwrap()
        .send_keys("roster:ban")
        .await
        .unwrap();
    click_to(c, "#apply").await;
    eventually(Duration::from_secs(10), "the filtered list", || async {
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("event=roster%3Aban")
    })
    .await;
    assert_eq!(
        all_attr(c, "tr.event", "data-event").await,
        ["roster:ban", "roster:ban"]
    );
    let listed = text(c, "#events").await;
    assert!(
        listed.contains("alice → bob") && listed.contains("mallory → bob"),
        "{listed}"
    );
    assert!(!listed.contains("carol"), "{listed}");

    // Alice's event: the callback as received, its rule and delivery.
    click_to(c, "tr.event:nth-child(2) td a").await;
    let callback = text(c, "#callback").await;
    assert!(
        callback.contains("\"from\"") && callback.contains("alice"),
        "{callback}"
    );
    assert!(
        !callback.contains("security"),
        "the signature is not shown: {callback}"
    );
    assert_eq!(text(c, "#event-rules").await.trim(), "bans");
    assert_eq!(
        all_attr(c, "#event-deliveries .status", "data-status").await,
        ["sent"]
    );

    // Its delivery: both attempts, 500 then 200.
    click_to(c, "#event-deliveries td a").await;
    assert_eq!(
        all_attr(c, "#attempts li", "data-outcome").await,
        ["retry", "sent"]
    );
    let codes: Vec<String> = {
        let mut v = Vec::new();
        for e in c.find_all(Locator::Css("#attempts .code")).await.unwrap() {
            v.push(e.text().await.unwrap());
        }
        v
    };
    assert_eq!(codes, ["500", "200"]);
    screenshot(c, "console-delivery.png").await;

    // The dead removal, retried from its page, is delivered and shows sent.
    let dead = delivery_of(&app, "fragile", "dead").await.unwrap();
    c.goto(&format!("{admin}/deliveries?status=dead"))
        .await
        .unwrap();
    assert_eq!(
        all_attr(c, "#deliveries .status", "data-status").await,
        ["dead"]
    );
    c.goto(&format!("{admin}/deliveries/{dead}")).await.unwrap();
    assert_eq!(
        all_attr(c, "#delivery-status .status", "data-status").await,
        ["dead"]
    );
    click_to(c, "#retry").await;
    assert!(text(c, "#requeued").await.contains("1 put back"));
    eventually(
        Duration::from_secs(20),
        "the retried delivery sent",
        || async {
            c.refresh().await.unwrap();
            all_attr(c, "#delivery-status .status", "data-status").await == ["sent"]
        },
    )
    .await;
    assert_eq!(
        all_attr(c, "#attempts li", "data-outcome").await,
        ["dead", "sent"]
    );
    assert_eq!(fragile.count(), 2);

    // The markup in the hostile ban is shown as text and runs nothing.
    c.goto(&format!("{admin}/events?user=mallory"))
        .await
        .unwrap();
    click_to(c, "tr.event td a").await;
    let shown = text(c, "#callback").await;
    assert!(
        shown.contains("<script>window.__pwned = 1</script>"),
        "{shown}"
    );
    assert!(
        c.find_all(Locator::Css("#callback b, #bold, main script"))
            .await
            .unwrap()
            .is_empty()
    );
    let ran = c
        .execute("return typeof window.__pwned;", vec![])
        .await
        .unwrap();
    assert_eq!(ran, "undefined");

    // The rules page counts matches; the overview shows the hour.
    c.goto(&format!("{admin}/rules")).await.unwrap();
    assert_eq!(text(c, "tr[data-rule=bans] td.count").await, "2");
    c.goto(&format!("{admin}/")).await.unwrap();
    assert_eq!(text(c, "#queue-depth .value").await, "0");
    // Four callbacks in the chart's minutes (a minute may have turned).
    let charted = c
        .execute(
            "return [...document.querySelectorAll('#callbacks g title')]
                .map(t => +t.textContent.split(': ').pop()).reduce((a, b) => a + b, 0);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(charted, 4);
    screenshot(c, "console-overview.png").await;

    // The language switch: Chinese, kept for the next page.
    click_to(c, "#lang-zh").await;
    assert_eq!(text(c, "main h1").await, "概览");
    click_to(c, "nav a[href='/events']").await;
    assert_eq!(text(c, "main h1").await, "事件");
    assert!(text(c, "#events thead").await.contains("接收时间"));
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn a_chinese_browser_gets_chinese_and_the_token_is_asked_once() {
    let Some(b) = browser("zh-CN").await else {
        return;
    };
    let c = &b.client;
    let app = spawn_app_with(
        Options::rules("")
            .config("admin_token: ${IT_ADMIN_TOKEN}")
            .env("IT_ADMIN_TOKEN", "console-token-123"),
    )
    .await;
    let admin = &app.admin_url;
    post(&app, &signed("roster:ban", "alice", "bob")).await;

    // Asked for the token, in Chinese, and sent back where it was going.
    c.goto(&format!("{admin}/events?user=alice")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    assert_eq!(text(c, "main h1").await, "登录");
    let token = c.find(Locator::Id("token")).await.unwrap();
    token.send_keys("wrong").await.unwrap();
    let asked = std::time::Instant::now();
    click_to(c, "#sign-in").await;
    assert_eq!(text(c, "#sign-in-error").await, "令牌错误。");
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "a wrong token waits"
    );
    assert!(c.get_named_cookie("easehook_session").await.is_err());
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("console-token-123")
        .await
        .unwrap();
    click_to(c, "#sign-in").await;
    let url = c.current_url().await.unwrap();
    assert_eq!((url.path(), url.query()), ("/events", Some("user=alice")));
    assert_eq!(all_attr(c, "tr.event", "data-event").await, ["roster:ban"]);
    // The session is a random id in an HttpOnly, SameSite=Strict cookie.
    let session = c.get_named_cookie("easehook_session").await.unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        session.same_site(),
        Some(cookie::SameSite::Strict),
        "{session}"
    );
    assert_eq!(session.value().len(), 64);
    assert!(!session.value().contains("console-token-123"));
    // Once: the next page needs no token.
    c.goto(&format!("{admin}/deliveries")).await.unwrap();
    assert_eq!(text(c, "main h1").await, "投递");

    // Without the session, no page; the API still wants its bearer token.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("{admin}/deliveries"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2Fdeliveries");
    let r = plain
        .post(format!("{admin}/deliveries/retry-dead"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = plain
        .get(format!("{admin}/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Signing out ends the session.
    click_to(c, "#sign-out").await;
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    c.goto(&format!("{admin}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    b.client.clone().close().await.unwrap();
}

/// A page of another origin whose form posts to the console: what a
/// malicious site open in the operator's browser would do.
async fn other_origin(target: String) -> std::net::SocketAddr {
    use warp::Filter;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = warp::any().map(move || {
        warp::reply::html(format!(
            "<html><body><form method=post action='{target}/deliveries/retry-dead'>\
             <input type=hidden name=csrf value=guess>\
             <button id=attack type=submit>win a prize</button></form></body></html>"
        ))
    });
    tokio::spawn(warp::serve(page).incoming(listener).run());
    addr
}

#[tokio::test]
async fn a_page_of_another_origin_cannot_retry_dead_deliveries() {
    let Some(b) = browser("en-US").await else {
        return;
    };
    let c = &b.client;
    let fragile = HttpSink::start().await;
    fragile.script([Answer::status(500)]);
    let app = spawn_app_with(Options::rules(rules(&fragile, &fragile))).await;
    post(&app, &signed("roster:remove", "erin", "frank")).await;
    eventually(Duration::from_secs(20), "a dead delivery", || async {
        delivery_of(&app, "fragile", "dead").await.is_some()
    })
    .await;
    // The console is open (no admin_token): only the origin and the form
    // token stand between another site and the button.
    let evil = other_origin(app.admin_url.clone()).await;
    c.goto(&format!("http://{evil}/")).await.unwrap();
    click_to(c, "#attack").await;
    assert_eq!(text(c, "main h1").await, "Refused");
    assert!(
        delivery_of(&app, "fragile", "dead").await.is_some(),
        "still dead"
    );
    assert_eq!(fragile.count(), 1);
    // From the console's own page the same button works.
    c.goto(&format!("{}/deliveries?status=dead", app.admin_url))
        .await
        .unwrap();
    click_to(c, "#retry-all-dead").await;
    assert_eq!(text(c, "#requeued").await, "1 put back in the queue.");
    eventually(
        Duration::from_secs(20),
        "the retried delivery sent",
        || async { delivery_of(&app, "fragile", "sent").await.is_some() },
    )
    .await;
    b.client.clone().close().await.unwrap();
}

/// Bad input, as any HTTP client sees it: a 404 page, a malformed filter
/// shown on its page, markup escaped in the HTML itself.
#[tokio::test]
async fn bad_input_gets_a_page_that_says_so_and_never_a_500() {
    let app = spawn_app().await;
    let admin = &app.admin_url;
    let mut hostile = signed("roster:ban", "<img src=x onerror=alert(1)>", "bob");
    hostile["payload"]["reason"] = json!("<script>alert(1)</script>");
    sign(&mut hostile, SECRET);
    post(&app, &hostile).await;
    let get = |path: String| {
        let client = app.client.clone();
        async move {
            let r = client.get(path).send().await.unwrap();
            let status = r.status().as_u16();
            let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
            (status, ctype, r.text().await.unwrap())
        }
    };
    for path in [
        "/events/no-such-event",
        "/deliveries/424242",
        "/deliveries/abc",
        "/nowhere",
    ] {
        let (status, ctype, body) = get(format!("{admin}{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert!(ctype.starts_with("text/html"), "{path}: {ctype}");
        assert!(
            body.contains("There is no such page, event or delivery"),
            "{path}"
        );
    }
    // The API keeps answering JSON.
    let (status, ctype, _) = get(format!("{admin}/api/v1/nowhere")).await;
    assert_eq!((status, ctype.as_str()), (404, "application/json"));
    for (query, problem) in [
        ("since=yesterday-ish", "since must be a duration like 1h"),
        ("until=soon", "until must be a duration like 1h"),
        (
            "before=garbage",
            "before must be the next of the page before",
        ),
        ("limit=0", "limit must be a number from 1 to 1000"),
    ] {
        let (status, _, body) = get(format!("{admin}/events?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            body.contains("This filter is not valid") && body.contains(problem),
            "{query}"
        );
        // The form keeps what was typed, escaped.
        assert!(body.contains("<form class=\"filters\""), "{query}");
    }
    let (status, _, body) = get(format!("{admin}/deliveries?status=lost")).await;
    assert_eq!(status, 400);
    assert!(body.contains("status must be pending, sent or dead"));
    let (status, _, body) = get(format!(
        "{admin}/events?event=%3Cscript%3Ex%3C/script%3E&lang=zh"
    ))
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("value=\"&lt;script&gt;x&lt;/script&gt;\""));
    assert!(body.contains("没有符合条件的事件"));
    // The hostile event, escaped wherever it shows.
    let (_, _, list) = get(format!("{admin}/events")).await;
    assert!(
        list.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{list}"
    );
    assert!(!list.contains("<img src=x"));
    let (_, list) = get_json(&app.client, format!("{admin}/api/v1/events")).await;
    let id = list["events"][0]["id"].as_str().unwrap();
    let (status, _, page) = get(format!("{admin}/events/{id}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script>"));
    // The stylesheet is the one thing fetched, from the daemon itself.
    let (status, ctype, css) = get(format!("{admin}/console.css")).await;
    assert_eq!((status, ctype.as_str()), (200, "text/css"));
    assert!(!css.contains("http://") && !css.contains("https://") && !css.contains("@import"));
}

/// The API calls behind the console's pages: events by user and rule, one
/// event by id, deliveries by action a page at a time.
#[tokio::test]
async fn the_api_finds_events_by_user_and_rule_and_pages_deliveries() {
    let hook = HttpSink::start().await;
    let app = spawn_app_with(Options::rules(rules(&hook, &hook))).await;
    post(&app, &signed("roster:ban", "alice", "bob")).await;
    post(&app, &signed("roster:ban", "carol", "alice")).await;
    post(&app, &signed("roster:remove", "dave", "erin")).await;
    let get = |path: &str| get_json(&app.client, format!("{}{path}", app.admin_url));
    let users = |v: &Value| -> Vec<(String, String)> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let user = |k: &str| e["callback"][k].as_str().unwrap().to_string();
                (user("from"), user("to"))
            })
            .collect()
    };
    let (status, alice) = get("/api/v1/events?user=alice").await;
    assert_eq!(status, 200);
    assert_eq!(
        users(&alice),
        [
            (format!("{APPKEY}_carol@easemob.com"), "alice".to_string()),
            (format!("{APPKEY}_alice@easemob.com"), "bob".to_string())
        ]
    );
    let (_, removals) = get("/api/v1/events?rule=removals").await;
    assert_eq!(removals["events"].as_array().unwrap().len(), 1);
    assert_eq!(removals["events"][0]["event"], "roster:remove");
    let id = removals["events"][0]["id"].as_str().unwrap();
    let (status, one) = get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (one["id"].as_str(), one["event"].as_str()),
        (Some(id), Some("roster:remove"))
    );
    assert!(one["callback"].get("security").is_none());
    let (status, _) = get("/api/v1/events/no-such-event").await;
    assert_eq!(status, 404);
    // The replay is a POST, not an event called "replay".
    let (status, _) = get("/api/v1/events/replay").await;
    assert_eq!(status, 405);
    // Two hooks and one fragile delivery: by action, one a page.
    let (_, first) = get("/api/v1/deliveries?action=hook&limit=1").await;
    assert_eq!(first["deliveries"].as_array().unwrap().len(), 1);
    let next = first["next"].as_i64().unwrap();
    let (_, second) = get(&format!(
        "/api/v1/deliveries?action=hook&limit=1&before={next}"
    ))
    .await;
    assert_eq!(second["deliveries"][0]["action"], "hook");
    assert!(second["deliveries"][0]["id"].as_i64().unwrap() < next);
    let (_, last) = get(&format!(
        "/api/v1/deliveries?action=hook&limit=1&before={}",
        second["next"].as_i64().unwrap()
    ))
    .await;
    assert!(last["deliveries"].as_array().unwrap().is_empty());
    let (status, bad) = get("/api/v1/deliveries?before=x").await;
    assert_eq!(
        (status, bad["error"].as_str()),
        (400, Some("before must be a delivery id"))
    );
}

/// On PostgreSQL: the overview lists the replicas sharing the store, and
/// the pages find events by user and show a delivery's attempts, from the
/// shared database.
#[tokio::test]
async fn on_postgres_the_overview_lists_replicas_and_the_pages_read_the_shared_store() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let hook = HttpSink::start().await;
    hook.script([Answer::status(502), Answer::status(200)]);
    let store = crate::helpers::pg::store_config(&url, 4);
    let opts = Options::rules(rules(&hook, &hook)).config(store);
    let one = spawn_app_with(opts.clone()).await;
    let two = spawn_app_with(opts).await;
    post(&one, &signed("roster:ban", "alice", "bob")).await;
    post(&two, &signed("roster:ban", "carol", "dave")).await;
    eventually(Duration::from_secs(20), "both hooks sent", || async {
        let url = format!("{}/api/v1/deliveries?status=sent", one.admin_url);
        get_json(&one.client, url).await.1["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 2)
    })
    .await;
    let page = |app: &TestApp, path: &str| {
        let url = format!("{}{path}", app.admin_url);
        let client = app.client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, overview) = page(&one, "/").await;
    assert_eq!(status, 200);
    assert!(overview.contains("<table id=\"replicas\">"), "{overview}");
    assert!(overview.contains("Replicas (2)"), "{overview}");
    // Each replica's console reads the shared store: alice's event, taken
    // by the other one.
    let (status, events) = page(&two, "/events?user=alice").await;
    assert_eq!(status, 200);
    assert!(
        events.contains("alice → bob") && !events.contains("carol"),
        "{events}"
    );
    let (_, list) = get_json(&two.client, format!("{}/api/v1/deliveries", two.admin_url)).await;
    for d in list["deliveries"].as_array().unwrap() {
        let (status, delivery) = page(&one, &format!("/deliveries/{}", d["id"])).await;
        assert_eq!(status, 200);
        assert!(delivery.contains("data-outcome=\"sent\""), "{delivery}");
    }
    // The 502 and then the 200, on whichever delivery the sink failed.
    let (_, all) = page(&two, "/deliveries").await;
    assert_eq!(all.matches("data-status=\"sent\"").count(), 2, "{all}");
    let retried = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["attempts"] == 2)
        .expect("one delivery took two attempts");
    let (_, delivery) = page(&two, &format!("/deliveries/{}", retried["id"])).await;
    assert!(
        delivery.contains(">502<") && delivery.contains(">200<"),
        "{delivery}"
    );
}

#[tokio::test]
async fn the_moderation_page_shows_verdicts_per_minute_and_the_hits_marked() {
    let Some(b) = browser("en").await else {
        return;
    };
    let c = &b.client;
    let app =
        spawn_app_with(Options::rules(crate::presend::MODERATION).config(crate::presend::PRESEND))
            .await;
    let admin = &app.admin_url;
    for (from, text) in [
        ("alice", "请加 微 信 abc123"),
        ("carol", "你个傻 逼, ＦＵＣＫ"),
        ("dave", "明天见"),
    ] {
        assert_eq!(app.presend(&presend_txt(from, text)).await.0, 200);
    }
    eventually(Duration::from_secs(10), "two verdicts recorded", || async {
        app.events().await.len() == 2
    })
    .await;

    c.goto(&format!("{admin}/moderation")).await.unwrap();
    assert_eq!(text(c, "main h1").await, "Moderation");
    assert_eq!(text(c, "#presend-requests .value").await, "3");
    assert_eq!(text(c, "#presend-rejected .value").await, "1");
    assert_eq!(text(c, "#presend-rewritten .value").await, "1");
    // The chart of the hour, and one per rule that decided.
    assert_eq!(
        c.find_all(Locator::Css("figure#verdicts-chart rect.hit"))
            .await
            .unwrap()
            .len(),
        60
    );
    let captions: Vec<String> = {
        let mut v = Vec::new();
        for f in c
            .find_all(Locator::Css("#by-rule figcaption"))
            .await
            .unwrap()
        {
            v.push(f.text().await.unwrap());
        }
        v
    };
    assert!(
        captions.iter().any(|t| t.starts_with("no-contact-ads")),
        "{captions:?}"
    );
    assert!(
        captions.iter().any(|t| t.starts_with("mask-abuse")),
        "{captions:?}"
    );
    // The latest rejects and rewrites, newest first, hits marked.
    assert_eq!(
        all_attr(c, "#verdicts tbody tr", "data-verdict").await,
        ["rewrite", "reject"]
    );
    let marks: Vec<String> = {
        let mut v = Vec::new();
        for m in c
            .find_all(Locator::Css("#verdicts tbody mark"))
            .await
            .unwrap()
        {
            v.push(m.text().await.unwrap());
        }
        v
    };
    assert_eq!(marks, ["傻 逼", "ＦＵＣＫ", "加 微 信"]);
    assert_eq!(
        text(c, "#verdicts tbody tr:first-child td.rewritten").await,
        "你个***, ****"
    );
    assert_eq!(
        text(c, "#verdicts tbody tr:last-child code").await,
        "HX:10001"
    );
    screenshot(c, "console-moderation.png").await;
    // In Chinese.
    c.goto(&format!("{admin}/moderation?lang=zh"))
        .await
        .unwrap();
    assert_eq!(text(c, "main h1").await, "审核");
    assert_eq!(text(c, "#verdicts thead th:nth-child(2)").await, "结果");
}
