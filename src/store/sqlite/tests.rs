//! The embedded store's own tests: layouts, checkpoints, the index by user
//! and pruning (the conformance suite both stores pass is tests/it/store.rs).

use crate::store::{Accepted, Claimed, NewEvent, Record, Status, Store, StoreError};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::*;
use super::{accept::*, claims::*, prune::*, schema::*, users::*};

use crate::store::NewDelivery;

fn ev(id: &str, key: &str, actions: &[&str], at: u64) -> NewEvent {
    NewEvent {
        id: id.into(),
        dedup_key: key.into(),
        event: "roster:ban".into(),
        received_at_ms: at,
        body: serde_json::json!({"callId": id, "security": "s", "timestamp": at})
            .to_string()
            .into(),
        from_user: "alice".into(),
        to_user: "bob".into(),
        rules: vec!["r".into()],
        deliveries: actions
            .iter()
            .map(|a| NewDelivery {
                action: (*a).into(),
                rule: "r".into(),
                done: false,
            })
            .collect(),
        lease_until: None,
        aggregates: Vec::new(),
    }
}

/// The actions of claimed deliveries, in order.
fn actions(claimed: &[Claimed]) -> Vec<&str> {
    claimed.iter().map(|c| c.action.as_str()).collect()
}

/// The ids of the stored events, newest first.
async fn event_ids(s: &SqliteStore) -> Vec<String> {
    s.list_events(0, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Accept, dedup, claim, record, retry, list and reopen a store in
/// `dir` (new, or made by an earlier version).
async fn lifecycle(dir: &Path) {
    {
        let s = SqliteStore::open(dir).unwrap();
        let Accepted::New { id, deliveries, .. } = s
            .accept(ev("e1", "k1", &["a", "b"], 1000), 60_000)
            .await
            .unwrap()
        else {
            panic!("not stored")
        };
        assert_eq!((id.as_str(), deliveries.len()), ("e1", 2));
        assert_eq!(
            s.accept(ev("e2", "k1", &["a"], 2000), 60_000)
                .await
                .unwrap(),
            Accepted::Duplicate
        );
        // After the window the same key is a new event.
        assert!(matches!(
            s.accept(ev("e3", "k1", &[], 70_000), 60_000).await.unwrap(),
            Accepted::New { id, .. } if id == "e3"
        ));
        let claimed = s.claim_due(1000, 10, 30_000).await.unwrap();
        assert_eq!(actions(&claimed), ["a", "b"]);
        // Claimed in id order, each with its parsed callback.
        assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), deliveries);
        assert_eq!(claimed[0].callback.as_ref().unwrap().call_id, "e1");
        // Leased: not claimed twice.
        assert!(s.claim_due(1001, 10, 30_000).await.unwrap().is_empty());
        s.record(vec![
            (claimed[0].lease(), Record::Sent),
            (
                claimed[1].lease(),
                Record::Dead {
                    error: "410 Gone".into(),
                },
            ),
        ])
        .await
        .unwrap();
        let counts = s.counts().await.unwrap();
        assert_eq!((counts.pending, counts.dead), (0, 1));
        let dead = s.list_deliveries(Some(Status::Dead), 10).await.unwrap();
        assert_eq!(dead[0].last_error.as_deref(), Some("410 Gone"));
        assert_eq!(s.retry(None, 5000).await.unwrap(), 1);
        let events = s.list_events(0, Some("roster".into()), 10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].deliveries.len(), 2);
        // A leased delivery is left behind by a "crash".
        assert_eq!(s.claim_due(5000, 10, 600_000).await.unwrap().len(), 1);
    }
    let s = SqliteStore::open(dir).unwrap();
    assert_eq!(
        s.accept(ev("e4", "k1", &[], 80_000), 60_000).await.unwrap(),
        Accepted::Duplicate
    );
    // Reopening voids the dead process's lease: the delivery is due again.
    let again = s.claim_due(6000, 10, 30_000).await.unwrap();
    assert_eq!(again.len(), 1);
    // Long after: the sent delivery goes; e1 keeps its pending one, and
    // e3, left without any, stays as the newest event (a rowid is
    // never taken twice).
    let later = crate::now_ms() + 86_400_000;
    assert_eq!(s.prune(later, 1000).await.unwrap(), 1);
    let events = s.list_events(0, None, 10).await.unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e3", "e1"]);
    let left: Vec<i64> = events[1].deliveries.iter().map(|d| d.id).collect();
    assert_eq!(left, [again[0].id]);
}

fn page_size(dir: &Path) -> u32 {
    let c = Connection::open(dir.join("easehook.db")).unwrap();
    c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn accept_dedup_claim_record_retry_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    lifecycle(dir.path()).await;
    assert_eq!(page_size(dir.path()), PAGE_SIZE);
}

#[tokio::test]
async fn deliveries_done_at_accept_are_stored_as_sent_and_never_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let mut e = ev("e1", "k1", &["quiet", "mail"], 1000);
    e.deliveries[0].done = true;
    let Accepted::New { deliveries, .. } = s.accept(e, 60_000).await.unwrap() else {
        panic!("not stored")
    };
    let sent = s.list_deliveries(Some(Status::Sent), 10).await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].id, sent[0].action.as_str(), sent[0].attempts),
        (deliveries[0], "quiet", 1)
    );
    assert_eq!(sent[0].next_attempt_at, None);
    assert_eq!(s.counts().await.unwrap().pending, 1);
    let claimed = s.claim_due(1000, 10, 30_000).await.unwrap();
    assert_eq!(actions(&claimed), ["mail"]);
}

/// The schema of the versions before deliveries were found by the range
/// of ids their event holds: an index of deliveries by event, and a
/// foreign key from each delivery to its event.
const SCHEMA_INDEXED: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    id           TEXT PRIMARY KEY NOT NULL,
    dedup_key    TEXT NOT NULL,
    event        TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    rules        TEXT NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE TABLE IF NOT EXISTS dedup (
    key          TEXT PRIMARY KEY,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup(expires_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events(id),
    action          TEXT NOT NULL,
    rule            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    leased_until    INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at)
    WHERE status = 'pending' OR status = 'dead';
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
PRAGMA user_version = 1;
"#;

/// Stores made by earlier versions keep their layout and work as they
/// are: rowid tables and a full due index (the first), then `WITHOUT
/// ROWID` events and a partial due index (the second), both with
/// `AUTOINCREMENT` delivery ids and 4 KiB pages; then the layout of
/// this version's but for finding deliveries through an index (the
/// third, 2 KiB pages).
#[tokio::test]
async fn stores_of_earlier_layouts_keep_working() {
    let partial = "\n    WHERE status = 'pending' OR status = 'dead';";
    let autoincrement = SCHEMA_INDEXED.replace(
        "id              INTEGER PRIMARY KEY,",
        "id              INTEGER PRIMARY KEY AUTOINCREMENT,",
    );
    let first = autoincrement
        .replace(") WITHOUT ROWID;", ");")
        .replace(partial, ";");
    let events_end = "    body         TEXT NOT NULL\n);";
    let second = autoincrement.replace(
        events_end,
        "    body         TEXT NOT NULL\n) WITHOUT ROWID;",
    );
    assert!(!first.contains("WITHOUT ROWID") && !first.contains("WHERE"));
    assert_eq!(second.matches("WITHOUT ROWID").count(), 2);
    assert!(first.contains("AUTOINCREMENT") && second.contains("AUTOINCREMENT"));
    let third = SCHEMA_INDEXED.to_string();
    for (schema, page) in [(first, 4096), (second, 4096), (third, 2048)] {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("easehook.db")).unwrap();
        c.execute_batch(&format!("PRAGMA page_size={page}; PRAGMA journal_mode=WAL"))
            .unwrap();
        c.execute_batch(&schema).unwrap();
        assert_eq!(Layout::of(&c).unwrap(), Layout::Indexed);
        drop(c);
        lifecycle(dir.path()).await;
        assert_eq!(page_size(dir.path()), page);
    }
}

fn legacy_keys_noted(db: &Path) -> String {
    let c = Connection::open(db).unwrap();
    meta(&c, LEGACY_KEYS_UNTIL).unwrap().unwrap()
}

/// Earlier versions keyed events by the hash alone. Upgrading within
/// the dedup window must not let a repeat of an event they stored
/// through, and the store stops looking once the last such key expires.
#[tokio::test]
async fn repeats_of_events_keyed_by_earlier_versions_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("easehook.db");
    drop(SqliteStore::open(dir.path()).unwrap());
    // A store as an earlier version leaves it: bare hashes, one of them
    // expired, and no note of this version's.
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "DELETE FROM meta;
         INSERT INTO dedup(key, expires_at) VALUES('h1', 100000), ('h2', 500);",
    )
    .unwrap();
    drop(c);
    let new = |a: Result<Accepted, StoreError>| matches!(a.unwrap(), Accepted::New { .. });
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        let at = |id: &str, key: &str, t: u64| s.accept(ev(id, key, &["a"], t), 60_000);
        assert!(!new(at("e1", "org#app_1/h1", 1000).await), "a repeat of h1");
        assert!(new(at("e2", "org#app_2/h2", 1000).await), "h2 has expired");
        assert!(new(at("e3", "org#app_3/h3", 1000).await));
        assert!(!new(at("e4", "org#app_3/h3", 2000).await));
    }
    // The note outlives a restart; past it, the old keys are not read.
    let s = SqliteStore::open(dir.path()).unwrap();
    let at = |id: &str, key: &str, t: u64| s.accept(ev(id, key, &["a"], t), 60_000);
    assert!(!new(at("e5", "org#app_5/h1", 99_999).await));
    assert!(new(at("e6", "org#app_6/h1", 100_000).await));
    assert_eq!(legacy_keys_noted(&db), "100000");
    // A new store has no such keys, and never looks.
    let fresh = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(fresh.path()).unwrap());
    assert_eq!(legacy_keys_noted(&fresh.path().join("easehook.db")), "0");
}

#[tokio::test]
async fn leased_deliveries_wait_for_their_lease_and_a_restart_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        let mut e = ev("e1", "k1", &["a"], 1000);
        e.lease_until = Some(50_000);
        let Accepted::New { deliveries, .. } = s.accept(e, 60_000).await.unwrap() else {
            panic!("not stored")
        };
        assert_eq!(deliveries.len(), 1);
        // Handed off: no claim takes it while the lease holds…
        assert!(s.claim_due(2000, 10, 30_000).await.unwrap().is_empty());
        assert_eq!(s.next_due().await.unwrap(), None);
        // …and one does once it has run out (the hand-off was lost).
        assert_eq!(s.claim_due(50_000, 10, 30_000).await.unwrap().len(), 1);
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.claim_due(2000, 10, 30_000).await.unwrap().len(), 1);
}

#[tokio::test]
async fn one_failing_command_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    s.accept(ev("e1", "k1", &["a"], 1000), 60_000)
        .await
        .unwrap();
    // Queued together, so they share a batch: the second reuses an
    // event id (a constraint error), the others are fine.
    let (a, b, c) = tokio::join!(
        s.accept(ev("e2", "k2", &["a"], 1000), 60_000),
        s.accept(ev("e1", "k3", &["a"], 1000), 60_000),
        s.accept(ev("e3", "k4", &["a"], 1000), 60_000),
    );
    assert!(matches!(a.unwrap(), Accepted::New { id, .. } if id == "e2"));
    assert!(b.is_err());
    assert!(matches!(c.unwrap(), Accepted::New { id, .. } if id == "e3"));
    let ids = event_ids(&s).await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    // Nothing of the failed command was kept: its dedup key is free.
    assert!(matches!(
        s.accept(ev("e4", "k3", &[], 1000), 60_000).await.unwrap(),
        Accepted::New { .. }
    ));
}

#[tokio::test]
async fn checkpoints_move_commits_into_the_database_file_off_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("easehook.db");
    let wal = dir.path().join("easehook.db-wal");
    let s = SqliteStore::open(dir.path()).unwrap();
    let before = std::fs::metadata(&db).unwrap().len();
    for i in 0..200 {
        let id = format!("e{i}");
        s.accept(ev(&id, &id, &["a"], 1000), 60_000).await.unwrap();
    }
    // The writer never checkpoints (wal_autocheckpoint=0); the
    // checkpointer copies the pages into the database file soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&db).unwrap().len() <= before {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Once the store is closed, the checkpointer empties the WAL.
    drop(s);
    while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0 {
        assert!(std::time::Instant::now() < deadline, "WAL not truncated");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.list_events(0, None, 500).await.unwrap().len(), 200);
}

/// Under a load that never lets the writer idle, the WAL must still
/// start over once it is past its limit, instead of growing for as long
/// as the load lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_constant_load() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("easehook.db-wal");
    let limits = WalLimits {
        checkpoint_pages: 32,
        checkpoint_after: Duration::from_millis(50),
        restart_pages: 128,
    };
    let s = Arc::new(SqliteStore::open_with(dir.path(), limits).unwrap());
    // Enough callers that a batch is always waiting when a commit ends.
    let callers = 32;
    let per_caller = 500;
    let largest = Arc::new(AtomicI64::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (s, wal, largest) = (s.clone(), wal.clone(), largest.clone());
            tokio::spawn(async move {
                for i in 0..per_caller {
                    let id = format!("{i:06}-{c:03}");
                    s.accept(ev(&id, &id, &["a", "b"], 1000), 60_000)
                        .await
                        .unwrap();
                    let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                    largest.fetch_max(len as i64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c = Connection::open(dir.path().join("easehook.db")).unwrap();
    let stored: usize = c
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, callers * per_caller);
    // The limit and what commits add before the checkpointer's next
    // pass sees it, a few times over at this rate: a few megabytes.
    // Without starting over, these events take tens of them.
    let largest = largest.load(Ordering::Relaxed);
    assert!(largest < 4 << 20, "the WAL grew to {largest} bytes");
}

#[test]
fn queue_queries_are_answered_from_the_due_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let c = Connection::open(dir.path().join("easehook.db")).unwrap();
    for sql in [CLAIM_SQL, NEXT_DUE_SQL, COUNTS_SQL] {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let zeros = rusqlite::params_from_iter(std::iter::repeat_n(0, stmt.parameter_count()));
        let plan: Vec<String> = stmt
            .query_map(zeros, |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("INDEX deliveries_due"), "{sql}: {plan}");
        assert!(!plan.contains("SCAN deliveries"), "{sql}: {plan}");
    }
    drop(s);
}

/// A new store finds an event's deliveries by the range of ids its row
/// holds, through the deliveries' own key: no index of deliveries by
/// event, which would cost the writer an insert per delivery.
#[test]
fn deliveries_of_an_event_are_found_by_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.layout, Layout::Ranges);
    let c = Connection::open(dir.path().join("easehook.db")).unwrap();
    let indexes: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // `deliveries_aggregate` holds only deliveries of digests and
    // firings, `deliveries_dead` only dead ones (they are partial): a
    // plain delivery costs them nothing.
    assert_eq!(
        indexes,
        ["deliveries_due", "deliveries_aggregate", "deliveries_dead"]
    );
    for sql in [
        Layout::Ranges.deliveries_of_event(),
        Layout::Ranges.prune_events(),
    ] {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let zeros = rusqlite::params_from_iter(std::iter::repeat_n(0, stmt.parameter_count()));
        let plan: Vec<String> = stmt
            .query_map(zeros, |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(
            plan.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
            "{sql}: {plan}"
        );
        assert!(!plan.contains("SCAN d"), "{sql}: {plan}");
    }
    drop(s);
}

/// Message callbacks run to a kilobyte or more. Their events must take
/// about their own size on disk: in a `WITHOUT ROWID` table a row over
/// ~1,000 bytes spills into an overflow page of its own, four times the
/// bodies' size (and as many more pages written per commit).
#[tokio::test]
async fn kilobyte_bodies_are_stored_compactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let filler = "消息".repeat(200); // 1,200 bytes of UTF-8
    let n = 300;
    for i in 0..n {
        let mut e = ev(&format!("{i:08}"), &format!("k{i}"), &[], 1000 + i);
        e.body = serde_json::json!({"callId": e.id, "payload": {"text": filler}})
            .to_string()
            .into();
        s.accept(e, 60_000).await.unwrap();
    }
    let c = Connection::open(dir.path().join("easehook.db")).unwrap();
    let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let size = u64::from(page_size(dir.path()));
    let bodies: u64 = c
        .query_row(
            "SELECT sum(length(CAST(body AS BLOB))) FROM events",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        pages * size < 2 * bodies,
        "{n} events of {} body bytes take {pages} pages of {size} bytes",
        bodies / n
    );
    drop(s);
}

#[tokio::test]
async fn delivery_ids_never_repeat_after_everything_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let Accepted::New {
        deliveries: first, ..
    } = s
        .accept(ev("e1", "k1", &["a", "b"], 1000), 1000)
        .await
        .unwrap()
    else {
        panic!("not stored")
    };
    let claimed = s.claim_due(1000, 10, 30_000).await.unwrap();
    assert_eq!(claimed.len(), first.len());
    let done = claimed.iter().map(|c| (c.lease(), Record::Sent)).collect();
    assert_eq!(s.record(done).await.unwrap(), Vec::<i64>::new());
    // Everything is past retention: the older delivery goes, the newest
    // stays, and so does its event.
    let now = crate::now_ms() + 60_000;
    assert_eq!(s.prune(now, 10_000).await.unwrap(), 1);
    assert_eq!(event_ids(&s).await, ["e1"]);
    let Accepted::New {
        deliveries: next, ..
    } = s.accept(ev("e2", "k2", &["a"], now), 1000).await.unwrap()
    else {
        panic!("not stored")
    };
    assert!(next[0] > first[1], "{next:?} after {first:?}");
}

#[tokio::test]
async fn events_are_found_by_user_before_and_after_their_users_are_indexed() {
    use crate::store::EventQuery;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let made = |id: &str, from: &str, to: &str, at: u64| NewEvent {
        from_user: from.into(),
        to_user: to.into(),
        ..ev(id, id, &["a"], at)
    };
    for e in [
        made("e1", "alice", "bob", 1000),
        made("e2", "carol", "alice", 2000),
        made("e3", "alice", "alice", 3000),
    ] {
        s.accept(e, 60_000).await.unwrap();
    }
    let of = |user: &str| EventQuery {
        user: Some(user.into()),
        limit: 10,
        ..EventQuery::default()
    };
    let ids = |q: EventQuery| {
        let s = &s;
        async move {
            let found = s.query_events(q).await.unwrap();
            found.into_iter().map(|e| e.id).collect::<Vec<_>>()
        }
    };
    // Not indexed yet: found all the same, from the events themselves.
    assert_eq!(ids(of("alice")).await, ["e3", "e2", "e1"]);
    let conn = with_users(s.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    // (The writer's own step may come first: the mark says what is in.)
    index_users(&conn).unwrap();
    assert_eq!(users_indexed(&conn).unwrap(), 3);
    assert_eq!(index_users(&conn).unwrap(), 0, "nothing new");
    // e3 names alice twice and is one row of hers.
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM event_users WHERE name = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 3);
    s.accept(made("e4", "dave", "alice", 4000), 60_000)
        .await
        .unwrap();
    // Indexed and not: merged, newest first, each once; pages go on.
    assert_eq!(ids(of("alice")).await, ["e4", "e3", "e2", "e1"]);
    let page = EventQuery {
        limit: 2,
        ..of("alice")
    };
    assert_eq!(ids(page.clone()).await, ["e4", "e3"]);
    let after = EventQuery {
        before: Some((3000, "e3".into())),
        ..page
    };
    assert_eq!(ids(after).await, ["e2", "e1"]);
    let since = EventQuery {
        since_ms: 2000,
        until_ms: Some(4000),
        ..of("alice")
    };
    assert_eq!(ids(since).await, ["e3", "e2"]);
    assert_eq!(ids(of("bob")).await, ["e1"]);
    assert!(ids(of("nobody")).await.is_empty());
    // Pruning takes the index rows of the events it removes.
    index_users(&conn).unwrap();
    let now = crate::now_ms() + 10_000;
    let claimed = s.claim_due(now, 100, 1000).await.unwrap();
    s.record(claimed.iter().map(|c| (c.lease(), Record::Sent)).collect())
        .await
        .unwrap();
    s.prune(now, 1000).await.unwrap();
    prune_users(&conn).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    // e4 is the newest and stays; the others and their rows are gone.
    assert_eq!(
        count("SELECT count(*) FROM users.event_users WHERE name = 'bob'"),
        0
    );
    assert_eq!(count("SELECT count(*) FROM users.event_users"), 2);
    assert_eq!(ids(of("alice")).await, ["e4"]);
}

#[tokio::test]
async fn an_index_left_from_a_removed_store_starts_over() {
    use crate::store::EventQuery;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let conn = with_users(s.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let made = |id: &str, from: &str, at: u64| NewEvent {
        from_user: from.into(),
        to_user: "bob".into(),
        ..ev(id, id, &[], at)
    };
    for (id, from, at) in [("e1", "alice", 1000), ("e2", "carol", 2000)] {
        s.accept(made(id, from, at), 1000).await.unwrap();
    }
    index_users(&conn).unwrap();
    // As if easehook.db had been removed beside an index that marks
    // (and points at) events of the store before.
    conn.execute_batch(
        "UPDATE users.mark SET last = 1000;
         INSERT INTO users.event_users VALUES ('carol', 1000, 1);",
    )
    .unwrap();
    let carol = EventQuery {
        user: Some("carol".into()),
        limit: 10,
        ..EventQuery::default()
    };
    let ids = |q: EventQuery| {
        let s = &s;
        async move {
            let found = s.query_events(q).await.unwrap();
            found.into_iter().map(|e| e.id).collect::<Vec<_>>()
        }
    };
    // A row that names another user than its event's is not taken.
    assert_eq!(ids(carol.clone()).await, ["e2"]);
    index_users(&conn).unwrap();
    assert_eq!(users_indexed(&conn).unwrap(), 2);
    let alice = EventQuery {
        user: Some("alice".into()),
        ..carol.clone()
    };
    assert_eq!(ids(alice).await, ["e1"]);
    assert_eq!(ids(carol).await, ["e2"]);
}

#[tokio::test]
async fn pruning_keeps_the_newest_event_so_that_rowids_never_repeat() {
    use crate::store::EventQuery;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let conn = with_users(s.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let made = |id: &str, at: u64| NewEvent {
        from_user: "alice".into(),
        to_user: "bob".into(),
        ..ev(id, id, &[], at)
    };
    for (id, at) in [("e1", 1000), ("e2", 2000)] {
        s.accept(made(id, at), 1000).await.unwrap();
    }
    index_users(&conn).unwrap();
    assert_eq!(users_indexed(&conn).unwrap(), 2);
    // Both are past retention; the newest stays, so the next event
    // takes a rowid after every one the index has seen.
    let now = crate::now_ms();
    s.prune(now, 1000).await.unwrap();
    assert_eq!(event_ids(&s).await, ["e2"]);
    assert_eq!(prune_users(&conn).unwrap(), 2, "e1's two users");
    s.accept(made("e3", now), 1000).await.unwrap();
    index_users(&conn).unwrap();
    assert_eq!(users_indexed(&conn).unwrap(), 3);
    let found = s
        .query_events(EventQuery {
            user: Some("alice".into()),
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = found.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e3", "e2"]);
}

#[test]
fn the_last_delivery_created_before_a_time_is_found_by_bisecting_ids() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, created_at INTEGER)")
        .unwrap();
    assert_eq!(created_before(&conn, 100).unwrap(), None);
    // Ids with gaps, created in their order.
    for (id, at) in [
        (3, 10),
        (4, 20),
        (9, 30),
        (10, 40),
        (25, 50),
        (26, 60),
        (40, 70),
    ] {
        conn.execute("INSERT INTO deliveries VALUES (?1, ?2)", [id, at])
            .unwrap();
    }
    for (cutoff, bound) in [
        (5, None),
        (10, None),
        (11, Some(3)),
        (31, Some(9)),
        (50, Some(10)),
        (51, Some(25)),
        (70, Some(26)),
        (1000, Some(40)),
    ] {
        assert_eq!(
            created_before(&conn, cutoff).unwrap(),
            bound,
            "cutoff {cutoff}"
        );
    }
}

#[tokio::test]
async fn prune_keeps_pending_and_recent() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    s.accept(ev("old", "k1", &[], 1000), 1000).await.unwrap();
    s.accept(ev("pending", "k2", &["a"], 1000), 1000)
        .await
        .unwrap();
    let now = crate::now_ms();
    s.accept(ev("new", "k3", &[], now), 1000).await.unwrap();
    s.prune(now, 10_000).await.unwrap();
    let ids = event_ids(&s).await;
    assert_eq!(ids, ["new", "pending"]);
}
