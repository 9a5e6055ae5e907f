//! The daemon on a shared PostgreSQL store (SPEC §9), in-process: callbacks
//! delivered through it, status and metrics, two daemons on one database,
//! the database restarted under load, and the errors a bad `store.url`
//! gets at start-up.

use std::time::Duration;

use crate::helpers::easehook;
use crate::helpers::*;

fn hook_rules(url: &str) -> String {
    format!(
        "actions:\n  hook:\n    type: http\n    url: '{url}/hook'\n    json: {{user: '{{{{from_user}}}}'}}\n\
         rules:\n  - {{name: all, when: {{event: roster:ban}}, actions: [hook]}}\n"
    )
}

#[tokio::test]
async fn a_daemon_on_postgres_delivers_and_shows_its_store() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    let app =
        spawn_app_with(Options::rules(hook_rules(&sink.url(""))).config(pg::store_config(&url, 8)))
            .await;
    let body = signed("roster:ban", "alice", "bob");
    let (status, answer) = app.post(&body).await;
    assert_eq!(status, 200, "{answer}");
    // The same callback again: a duplicate.
    let (status, answer) = app.post(&body).await;
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    let d = app.wait_for_delivery("sent", Duration::from_secs(15)).await;
    assert_eq!(d["action"], "hook");
    assert_eq!(sink.count(), 1);
    assert_eq!(app.events().await.len(), 1);
    let status = app.get("/api/v1/status").await;
    assert_eq!(status["store"], "postgres");
    assert_eq!(status["store_writable"], true);
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0]["version"], env!("CARGO_PKG_VERSION"));
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains(crate::helpers::pg::PASSWORD), "{text}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("easehook_store_up 1"), "{metrics}");
    assert!(metrics.contains("easehook_replicas 1"), "{metrics}");
    assert!(
        app.client
            .get(format!("{}/readyz", app.admin_url))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
}

#[tokio::test]
async fn two_daemons_share_one_queue() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    let opts = Options::rules(hook_rules(&sink.url(""))).config(pg::store_config(&url, 8));
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    // Each callback sent to both: stored once, delivered once.
    for i in 0..20 {
        let body = signed("roster:ban", &format!("u{i}"), "bob");
        let ((sa, ra), (sb, rb)) = tokio::join!(a.post(&body), b.post(&body));
        assert_eq!((sa, sb), (200, 200));
        let dups = [ra, rb]
            .iter()
            .filter(|r| r["duplicate"].as_bool() == Some(true))
            .count();
        assert_eq!(dups, 1, "callback {i}");
    }
    eventually(Duration::from_secs(20), "20 deliveries sent", || async {
        a.deliveries("sent").await.len() == 20
    })
    .await;
    assert_eq!(sink.count(), 20);
    // Both see the shared state and each other.
    assert_eq!(b.deliveries("sent").await.len(), 20);
    assert_eq!(
        b.get("/api/v1/status").await["replicas"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A delivery dead through one replica is retried through the other.
    sink.script([Answer::status(410)]);
    assert_eq!(a.post(&signed("roster:ban", "late", "bob")).await.0, 200);
    let dead = b.wait_for_delivery("dead", Duration::from_secs(15)).await;
    let (status, _) = b
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/deliveries/{}/retry", dead["id"]),
        )
        .await;
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(15),
        "the retried delivery sent",
        || async { a.deliveries("sent").await.len() == 21 },
    )
    .await;
    assert!(a.deliveries("dead").await.is_empty());
    assert_eq!(sink.count(), 22);
}

#[tokio::test]
async fn the_database_restarted_under_load_loses_no_acknowledged_callback() {
    let Some(server) = crate::helpers::pg::own_server() else {
        return;
    };
    let url = server.database().await;
    let app = spawn_app_with(Options::rules("").config(pg::store_config(&url, 8))).await;
    let ready = |app: &TestApp| {
        let r = app.client.get(format!("{}/readyz", app.admin_url)).send();
        async move { r.await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let body = signed("roster:ban", "a", "b");
        assert_eq!(app.post(&body).await.0, 200);
        acknowledged.push(body["callId"].as_str().unwrap().to_string());
    }
    server.stop();
    // While it is down: 503, never a 200, and not ready.
    for _ in 0..10 {
        let (status, answer) = app.post(&signed("roster:ban", "a", "b")).await;
        assert_eq!(status, 503, "{answer}");
        refused += 1;
    }
    assert_eq!(ready(&app).await, 503);
    server.start();
    // Back by itself: callbacks are taken again and readiness returns.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = signed("roster:ban", "a", "b");
        let (status, answer) = app.post(&body).await;
        if status == 200 {
            acknowledged.push(body["callId"].as_str().unwrap().to_string());
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(Duration::from_secs(10), "ready again", || async {
        ready(&app).await == 200
    })
    .await;
    for _ in 0..20 {
        let body = signed("roster:ban", "a", "b");
        assert_eq!(app.post(&body).await.0, 200);
        acknowledged.push(body["callId"].as_str().unwrap().to_string());
    }
    let (_, events) = app
        .admin(reqwest::Method::GET, "/api/v1/events?limit=1000")
        .await;
    let mut stored: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["callback"]["callId"].as_str().unwrap().to_string())
        .collect();
    stored.sort();
    acknowledged.sort();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged callback, and only those"
    );
    assert_eq!(refused, 10);
}

#[tokio::test]
async fn a_wrong_password_stops_start_up_with_the_password_masked() {
    let Some(server) = crate::helpers::pg::server() else {
        return;
    };
    let url = format!(
        "postgres://{}:wrong-password-4321@127.0.0.1:{}/postgres",
        crate::helpers::pg::USER,
        server.port
    );
    let opts = Options::rules("").config(pg::store_config(&url, 8));
    let (_dir, config) = write_config(&opts);
    let Err(e) = easehook::app::App::start(
        &config,
        std::sync::Arc::new(env_map(&opts)),
        easehook::shutdown::Shutdown::new(),
    )
    .await
    else {
        panic!("started with a wrong password")
    };
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with(&format!("{}: store.url: cannot connect:", config.display())),
        "{msg}"
    );
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(msg.contains(":***@127.0.0.1"), "{msg}");
    assert!(!msg.contains("wrong-password-4321"), "{msg}");
}

/// The embedded store of a stopped daemon in `state_dir`, holding one
/// delivery sent, one dead and one pending (its attempt in flight when the
/// daemon stopped). Returns the three callbacks.
async fn a_stopped_daemons_store(state_dir: &std::path::Path) -> Vec<serde_json::Value> {
    use easehook::store::{NewDelivery, NewEvent, Record, Store};
    let store = easehook::store::sqlite::SqliteStore::open(state_dir).unwrap();
    let mut bodies = Vec::new();
    let now = easehook::now_ms();
    for i in 0..3 {
        let body = signed("roster:ban", &format!("u{i}"), "bob");
        let cb = easehook::callback::Callback::parse(body.to_string().as_bytes()).unwrap();
        let new = NewEvent {
            id: format!("event-{i}"),
            dedup_key: cb.dedup_key().to_string(),
            event: cb.event.clone(),
            received_at_ms: now + i,
            body: body.to_string().into(),
            from_user: cb.from_user.clone(),
            to_user: cb.to_user.clone(),
            rules: vec!["all".into()],
            deliveries: vec![NewDelivery {
                action: "hook".into(),
                rule: "all".into(),
                done: false,
            }],
            lease_until: None,
            aggregates: Vec::new(),
        };
        store.accept(new, 86_400_000).await.unwrap();
        bodies.push(body);
    }
    let claimed = store.claim_due(now + 10, 10, 600_000).await.unwrap();
    assert_eq!(claimed.len(), 3);
    store
        .record(vec![
            (claimed[0].lease(), Record::Sent),
            (
                claimed[1].lease(),
                Record::Dead {
                    error: "HTTP 410".into(),
                },
            ),
        ])
        .await
        .unwrap();
    bodies
}

#[tokio::test]
async fn store_copy_moves_the_embedded_store_and_a_daemon_on_the_target_takes_over() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    let opts = Options::rules(hook_rules(&sink.url("")));
    let (dir, config) = write_config(&opts);
    let bodies = a_stopped_daemons_store(&dir.path().join("data")).await;

    let (code, out, err) = easehook(&config, &["store", "copy", "--to", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "copied 3 event(s), 3 dedup key(s), 3 delivery(ies) (1 pending, 1 sent, 1 dead) with 2 attempt(s)"
        ),
        "{out}"
    );
    assert!(!out.contains(crate::helpers::pg::PASSWORD), "{out}");
    // A second copy finds the target full and changes nothing.
    let (code, out, err) = easehook(&config, &["store", "copy", "--to", &url]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("the target database is not empty (3 event(s), 3 delivery(ies))"),
        "{err}"
    );
    assert!(!err.contains(crate::helpers::pg::PASSWORD), "{err}");

    // A daemon on the target sends the pending delivery and lists the rest.
    let app = spawn_app_with(opts.config(pg::store_config(&url, 8))).await;
    eventually(
        Duration::from_secs(15),
        "the pending delivery sent",
        || async { app.deliveries("sent").await.len() == 2 },
    )
    .await;
    assert_eq!(sink.count(), 1);
    let sent: serde_json::Value = serde_json::from_str(&sink.requests()[0].body).unwrap();
    assert_eq!(sent["user"], "u2");
    let dead = app.deliveries("dead").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["last_error"], "HTTP 410");
    // Its attempt came along.
    let detail = app
        .get(&format!("/api/v1/deliveries/{}", dead[0]["id"]))
        .await;
    assert_eq!(detail["attempts_made"][0]["outcome"], "dead", "{detail}");
    assert_eq!(detail["attempts_made"][0]["error"], "HTTP 410");
    assert_eq!(app.events().await.len(), 3);
    // The copied dedup keys hold: a repeat is a duplicate.
    let (status, answer) = app.post(&bodies[0]).await;
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    // New deliveries get ids after the copied ones.
    assert_eq!(app.post(&signed("roster:ban", "new", "bob")).await.0, 200);
    eventually(Duration::from_secs(15), "the new delivery sent", || async {
        app.deliveries("sent").await.len() == 3
    })
    .await;
    let ids: Vec<i64> = app
        .deliveries("sent")
        .await
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert!(ids[0] > 3, "{ids:?}");
}

#[tokio::test]
async fn store_migrate_applies_the_schema_once_and_refuses_a_newer_one() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let (_dir, config) = write_config(&Options::rules("").config(pg::store_config(&url, 8)));
    let (code, out, err) = easehook(&config, &["store", "migrate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied schema version 1"), "{out}");
    assert!(out.contains(":***@127.0.0.1"), "{out}");
    let (code, out, _) = easehook(&config, &["store", "migrate"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    crate::helpers::pg::sql(&url, "INSERT INTO easehook_schema VALUES (999, 0)").await;
    let (code, out, err) = easehook(&config, &["store", "migrate"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with(&format!(
            "{}: store.url: the database's schema is version 999",
            config.display()
        )),
        "{err}"
    );
    // The daemon refuses it too.
    let (code, _, err) = easehook(&config, &["run"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("store.url: the database's schema is version 999"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rate_limit_holds_for_two_daemons_together_and_drops_nothing() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let sink = HttpSink::start().await;
    let rules = format!(
        "actions:\n  hook:\n    type: http\n    url: '{}/hook'\n    rate_limit: 5/s\n\
         rules:\n  - {{name: all, actions: [hook]}}\n",
        sink.url("")
    );
    let opts = Options::rules(rules).config(pg::store_config(&url, 8));
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            app.post(&signed("roster:ban", &format!("u{i}"), "x"))
                .await
                .0,
            200
        );
    }
    eventually(Duration::from_secs(30), "20 deliveries sent", || async {
        a.deliveries("sent").await.len() == 20
    })
    .await;
    let reqs = sink.requests();
    assert_eq!(reqs.len(), 20, "every delivery, once");
    // A burst of 5, then one per 200 ms, whichever daemon sends: the last
    // at least 3 s after the first, and no run of sends faster than that
    // (one send of slack for the sink's clock).
    let span = reqs[19].at - reqs[0].at;
    assert!(
        span >= Duration::from_millis(2800),
        "20 at 5/s took only {span:?}"
    );
    for i in 0..reqs.len() {
        for j in i + 1..reqs.len() {
            let sends = (j - i + 1) as u128;
            let allowed = 5 + (reqs[j].at - reqs[i].at).as_millis() / 200 + 1;
            assert!(sends <= allowed, "sends {i}..={j} came faster than 5/s");
        }
    }
}

#[tokio::test]
async fn an_exhausted_pool_queues_callers_rather_than_failing_them() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let config = pg::store_config(&url, 2);
    let app = std::sync::Arc::new(spawn_app_with(Options::rules("").config(config)).await);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                app.admin(reqwest::Method::GET, "/api/v1/events?limit=10")
                    .await
                    .0
            } else {
                app.post(&signed("roster:ban", &format!("u{i}"), "b"))
                    .await
                    .0
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(app.events().await.len(), 45);
}

#[tokio::test]
async fn tls_to_the_database_is_verified_against_the_system_roots_and_ca_file() {
    let (ca, cert, key) = test_certificates();
    let Some(server) = crate::helpers::pg::own_server_with_tls(&cert, &key) else {
        return;
    };
    let url = format!("{}?sslmode=require", server.database().await);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    // Trusted through ca_file: connected, over TLS.
    let mut settings = crate::store::pg_settings(&url);
    settings.ca_file = Some(ca_file);
    let store = easehook::store::postgres::PgStore::connect(&settings, dir.path())
        .await
        .unwrap();
    let client = store.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the connection is not encrypted");
    drop(client);
    drop(store);
    // Without it the server's certificate is not trusted: no connection.
    let Err(e) =
        easehook::store::postgres::PgStore::connect_tool(&crate::store::pg_settings(&url)).await
    else {
        panic!("an untrusted certificate was accepted")
    };
    let msg = e.to_string();
    assert!(msg.contains("certificate"), "{msg}");
    assert!(!msg.contains(crate::helpers::pg::PASSWORD), "{msg}");
}

#[test]
fn check_validates_the_store_without_connecting_and_masks_the_password() {
    // Nothing listens there: check does not try.
    let port = crate::helpers::free_port();
    let url = format!("postgres://app:check-pw-4242@127.0.0.1:{port}/easehook");
    let (_dir, config) = write_config(&Options::rules("").config(pg::store_config(&url, 8)));
    let (code, out, err) = easehook(&config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "store: postgres at postgres://app:***@127.0.0.1:{port}/easehook (pool 8"
        )),
        "{out}"
    );
    assert!(!out.contains("check-pw-4242") && !err.contains("check-pw-4242"));
    // A URL that is not one: file: store.url: message, exit 1.
    let (_dir, config) = write_config(
        &Options::rules("").config(pg::store_config("mysql://root:check-pw-4242@db/x", 8)),
    );
    let (code, out, _) = easehook(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: store.url: not a PostgreSQL URL",
            config.display()
        )),
        "{out}"
    );
    assert!(!out.contains("check-pw-4242"), "{out}");
}
