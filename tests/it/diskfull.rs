//! Store faults for real: the state directory on a small tmpfs that fills
//! up. Callbacks get 503, `/readyz` turns unready, nothing acknowledged is
//! lost, and the daemon recovers by itself when space returns. Skips with a
//! notice where mounting is not permitted.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_loses_nothing_and_recovers_by_itself() {
    let outer = tempfile::tempdir().unwrap();
    let state = outer.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: disk-full test: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Mount(state.clone());
    let rules = "actions:\n  n: {type: log, level: debug, message: '{{msg_id}}'}\nrules:\n  - {name: all, actions: [n]}\n";
    let rules = format!("{rules}{}", crate::presend::MODERATION);
    let app = spawn_app_with(
        Options::rules(rules)
            .config(format!("state_dir: {}\nmax_body: 1MiB", state.display()))
            .config(crate::presend::PRESEND),
    )
    .await;
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let body = signed("roster:ban", "a", "b");
        assert_eq!(app.post(&body).await.0, 200);
        acknowledged.push(body["msg_id"].as_str().unwrap().to_string());
    }
    // Fill the disk.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Large events use up what the WAL had left; the first refusal is a 503.
    let mut refused = false;
    for _ in 0..200 {
        let mut body = signed("roster:add", "a", "b");
        body["payload"]["reason"] = json!("x".repeat(200 * 1024));
        sign(&mut body, SECRET);
        let (status, answer) = app.post(&body).await;
        match status {
            200 => acknowledged.push(body["msg_id"].as_str().unwrap().to_string()),
            503 => {
                assert_eq!(answer["error"], "store unavailable");
                refused = true;
                break;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert!(refused, "a full disk must be refused with 503");
    // Take the last bytes too, so that even the small probe write fails.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&filler)
            .unwrap();
        for size in [4096, 512, 64, 1] {
            let chunk = vec![0u8; size];
            while f.write_all(&chunk).is_ok() {}
        }
    }
    eventually(
        Duration::from_secs(5),
        "unready while the disk is full",
        || async { app.admin(reqwest::Method::GET, "/readyz").await.0 == 503 },
    )
    .await;
    let (status, _) = app.post(&signed("roster:ban", "a", "b")).await;
    assert_eq!(status, 503, "still full");
    // The pre-send endpoint never waits for the store: it keeps answering,
    // and the verdicts it cannot record are counted.
    for _ in 0..20 {
        let (status, answer) = app.presend(&presend_txt("alice", "加微信")).await;
        assert_eq!(
            (status, answer.as_str()),
            (200, r#"{"valid":false,"code":"HX:10001"}"#)
        );
    }
    eventually(
        Duration::from_secs(10),
        "records counted as dropped",
        || async {
            app.metrics().await.lines().any(|l| {
                l.starts_with("easehook_presend_records_dropped_total ") && !l.ends_with(" 0")
            })
        },
    )
    .await;
    // Space returns: the daemon notices by itself.
    std::fs::remove_file(&filler).unwrap();
    eventually(Duration::from_secs(15), "ready again", || async {
        app.admin(reqwest::Method::GET, "/readyz").await.0 == 200
    })
    .await;
    let body = signed("roster:ban", "a", "b");
    assert_eq!(app.post(&body).await.0, 200);
    acknowledged.push(body["msg_id"].as_str().unwrap().to_string());
    // Nothing acknowledged was lost, and every one is delivered.
    eventually(Duration::from_secs(15), "all delivered", || async {
        app.deliveries("pending").await.is_empty()
    })
    .await;
    let events = app.events().await;
    for id in &acknowledged {
        let e = events
            .iter()
            .find(|e| e["callback"]["msg_id"] == id.as_str())
            .unwrap_or_else(|| panic!("event {id} lost"));
        assert_eq!(e["deliveries"][0]["status"], "sent", "{e}");
    }
}
