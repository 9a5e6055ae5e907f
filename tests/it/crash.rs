//! Crash loop: the daemon under steady load is killed with SIGKILL at random
//! moments, five times, and restarted; every acknowledged event is delivered
//! at least once. Reports the duplicates the crashes caused.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::helpers::*;
use crate::helpers::{Daemon, fixed_ports};

#[tokio::test]
async fn five_sigkills_under_load_lose_no_acknowledged_event() {
    let sink = HttpSink::start().await;
    let rules = format!(
        "actions:\n  hook: {{type: http, url: '{}', json: {{id: '{{{{msg_id}}}}'}}}}\nrules:\n  - {{name: all, actions: [hook]}}\n",
        sink.url("/crash")
    );
    let opts = Options::rules(rules).config("delivery:\n  initial_backoff: 100ms\n  max_backoff: 500ms\n  max_attempts: 1000\n  timeout: 2s");
    let (_dir, config) = write_config(&opts);
    fixed_ports(&config);
    let mut daemon = Daemon::start(&config, &[("RUST_LOG", "info,easehook::dispatch=debug")]).await;
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (acked, running, url) = (
            acknowledged.clone(),
            running.clone(),
            daemon.callback_url.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            while running.load(Ordering::Relaxed) {
                let body = signed("roster:ban", "alice", "bob");
                let id = body["msg_id"].as_str().unwrap().to_string();
                // Refused connections (the daemon is down) are not acknowledged.
                if let Ok(r) = client.post(&url).json(&body).send().await
                    && r.status().as_u16() == 200
                {
                    acked.lock().unwrap().push(id);
                }
            }
        })
    };
    let mut logs = Vec::new();
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(0..450))).await;
        daemon.signal(nix::sys::signal::Signal::SIGKILL);
        daemon.wait(Duration::from_secs(5)).await;
        eprintln!(
            "crash loop: SIGKILL {} after {} acknowledged",
            round + 1,
            acknowledged.lock().unwrap().len()
        );
        logs.push(daemon.lines.clone());
        daemon = Daemon::start(&config, &[("RUST_LOG", "info,easehook::dispatch=debug")]).await;
    }
    logs.push(daemon.lines.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    load.await.unwrap();
    let acked = acknowledged.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the load ran: {} acknowledged",
        acked.len()
    );
    let delivered = || -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in sink.requests() {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            *m.entry(v["id"].as_str().unwrap().to_string()).or_default() += 1;
        }
        m
    };
    // Longer than a lease (timeout + 60 s): an attempt orphaned by a crash is
    // retried once its lease runs out, and still counts as delivered.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let d = delivered();
        let missing: Vec<&String> = acked.iter().filter(|id| !d.contains_key(*id)).collect();
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let pending =
                reqwest::get(format!("{}/api/v1/deliveries?limit=1000", daemon.admin_url))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
            let events = reqwest::get(format!("{}/api/v1/events?limit=1000", daemon.admin_url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let stored: Vec<&String> = missing
                .iter()
                .copied()
                .filter(|id| events.contains(id.as_str()))
                .collect();
            let parsed: serde_json::Value = serde_json::from_str(&events).unwrap();
            for e in parsed["events"].as_array().unwrap() {
                if missing
                    .iter()
                    .any(|m| e["callback"]["msg_id"] == m.as_str())
                {
                    eprintln!(
                        "missing event: {} received {} deliveries {}",
                        e["id"], e["received_at"], e["deliveries"]
                    );
                    let eid = e["id"].as_str().unwrap();
                    let db =
                        rusqlite::Connection::open(_dir.path().join("data/easehook.db")).unwrap();
                    let row: String = db
                        .query_row(
                            "SELECT id || ' ' || status || ' next=' || next_attempt_at || ' lease=' || COALESCE(leased_until, 'null') FROM deliveries WHERE event_id = ?1",
                            [eid],
                            |r| r.get(0),
                        )
                        .unwrap();
                    eprintln!("missing delivery row: {row} (now {})", easehook::now_ms());
                    for (n, l) in logs.iter().enumerate() {
                        for line in l.lock().unwrap().iter() {
                            if line.contains(eid)
                                || line.contains("store")
                                || line.contains("ready")
                                || line.contains("error")
                                || line.contains("claimed")
                                || line.contains("panic")
                                || !line.starts_with('{')
                            {
                                eprintln!("daemon {n}: {}", &line[..line.len().min(400)]);
                            }
                        }
                    }
                }
            }
            panic!(
                "{} of {} acknowledged events not delivered: {:?}; {} of them stored; deliveries: {}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)],
                stored.len(),
                &pending[..pending.len().min(1500)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = delivered();
    let duplicates: usize = d.values().map(|n| n - 1).sum();
    eprintln!(
        "crash loop: {} acknowledged, all delivered; {duplicates} duplicate deliveries caused by 5 SIGKILLs",
        acked.len()
    );
    drop(daemon);
}
