//! The store conformance suite: every behaviour of the `Store` interface,
//! run against both backends — the embedded SQLite store and a real
//! PostgreSQL server ([`crate::pg`]) — so that the daemon behaves the same
//! on either. Then what only a shared store does: two replicas on one
//! database, migrations, and the errors a bad `store.url` gets.

use std::future::Future;
use std::sync::Arc;

use easehook::store::postgres::PgStore;
use easehook::store::sqlite::SqliteStore;
use easehook::store::{
    Accepted, AggregateKind, AggregateSpec, Attempt, Claimed, NewAggregate, NewDelivery, NewEvent,
    Record, Status, Store,
};

/// A store under test and what keeps it alive.
pub struct Opened {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

pub async fn open_sqlite() -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    Opened {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

/// The settings of a PostgreSQL store at `url`.
pub fn pg_settings(url: &str) -> easehook::config::PostgresSettings {
    easehook::config::PostgresSettings::new(url, 8, None)
}

/// A replica on the database at `url`, with its own state_dir.
pub async fn connect_pg(url: &str) -> (PgStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = PgStore::connect(&pg_settings(url), dir.path())
        .await
        .unwrap();
    (store, dir)
}

/// A PostgreSQL store on a new database; `None` where no server is
/// installed (a failure under `CI=true`).
pub async fn open_postgres() -> Option<Opened> {
    let url = crate::helpers::pg::database().await?;
    let (store, dir) = connect_pg(&url).await;
    Some(Opened {
        store: Arc::new(store),
        _dir: Some(dir),
    })
}

/// An event of `key` received at `at`, with a delivery per action.
pub fn ev(id: &str, key: &str, actions: &[&str], at: u64) -> NewEvent {
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

/// An event of `key` at `at` that counts toward `aggregates`, and has no
/// delivery of its own.
pub fn agg_ev(id: &str, at: u64, aggregates: Vec<NewAggregate>) -> NewEvent {
    NewEvent {
        aggregates,
        ..ev(id, id, &[], at)
    }
}

/// A part in the digest of rule `d` (window 10 s, 2 events kept), group `g`.
pub fn digest(group: &str) -> NewAggregate {
    NewAggregate {
        rule: "d".into(),
        group: format!(r#"{{"to":"{group}"}}"#),
        actions: vec!["mail".into(), "chat".into()],
        spec: AggregateSpec::Digest {
            window_ms: 10_000,
            max_events: 2,
        },
    }
}

/// A part in the threshold of rule `t` (3 distinct values within 10 s,
/// cooldown 20 s), group `g`, counting `value`.
pub fn threshold(group: &str, value: &str) -> NewAggregate {
    NewAggregate {
        rule: "t".into(),
        group: format!(r#"{{"to":"{group}"}}"#),
        actions: vec!["slack".into()],
        spec: AggregateSpec::Threshold {
            count: 3,
            within_ms: 10_000,
            cooldown_ms: 20_000,
            value: value.into(),
        },
    }
}

fn stored(a: Accepted) -> (String, Vec<i64>) {
    match a {
        Accepted::New { id, deliveries, .. } => (id, deliveries),
        Accepted::Duplicate => panic!("stored as a duplicate"),
    }
}

fn ids(claimed: &[Claimed]) -> Vec<i64> {
    claimed.iter().map(|c| c.id).collect()
}

/// Each behaviour, run against both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let s = super::open_sqlite().await;
                    super::behaviour::$name(s.store.as_ref()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(s) = super::open_postgres().await else { return };
                    super::behaviour::$name(s.store.as_ref()).await;
                }
            )*
        }
    };
}

conformance!(
    accept_stores_once_within_the_dedup_window,
    concurrent_repeats_are_stored_once,
    claims_come_in_order_and_hold_until_the_lease_ends,
    a_late_outcome_never_overwrites_the_new_claim,
    outcomes_sent_retry_deferred_and_dead,
    retry_requeues_dead_deliveries,
    handed_off_deliveries_are_leased_at_accept,
    deliveries_done_at_accept_are_sent_and_never_claimed,
    events_are_listed_newest_first_by_family_or_name,
    events_are_found_by_user_rule_time_and_id_a_page_at_a_time,
    deliveries_are_listed_by_status_and_action_a_page_at_a_time,
    next_due_is_the_earliest_waiting_delivery,
    prune_removes_what_is_past_retention_only,
    writable_probe_and_ping,
    a_digest_gathers_its_group_until_its_window_ends,
    a_claimed_digest_takes_no_more_events,
    a_threshold_fires_once_when_its_window_holds_enough,
    a_wave_of_concurrent_events_makes_one_digest_and_one_firing,
    prune_keeps_what_open_digests_need,
    every_attempt_is_kept_with_its_delivery,
    a_replay_gives_each_event_and_action_one_delivery,
);

pub mod behaviour {
    use super::*;

    pub async fn accept_stores_once_within_the_dedup_window(s: &dyn Store) {
        let (id, d) = stored(
            s.accept(ev("e1", "k1", &["a", "b"], 1000), 60_000)
                .await
                .unwrap(),
        );
        assert_eq!(id, "e1");
        assert_eq!(d.len(), 2);
        assert!(d[0] < d[1], "delivery ids follow the actions' order: {d:?}");
        assert_eq!(
            s.accept(ev("e2", "k1", &["a"], 2000), 60_000)
                .await
                .unwrap(),
            Accepted::Duplicate
        );
        // After the window the same key is a new event.
        let (id, _) = stored(s.accept(ev("e3", "k1", &[], 70_000), 60_000).await.unwrap());
        assert_eq!(id, "e3");
        let events = s.list_events(0, None, 10).await.unwrap();
        let mut got: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        got.sort();
        assert_eq!(got, ["e1", "e3"]);
        assert_eq!(s.counts().await.unwrap().pending, 2);
    }

    pub async fn concurrent_repeats_are_stored_once(s: &dyn Store) {
        // 20 keys, each sent 5 times at once: 20 events, 80 duplicates.
        let calls = (0..100).map(|i| {
            let key = format!("k{}", i % 20);
            s.accept(ev(&format!("e{i}"), &key, &["a"], 1000), 60_000)
        });
        let results = futures_util::future::join_all(calls).await;
        let new = results
            .iter()
            .filter(|r| matches!(r, Ok(Accepted::New { .. })))
            .count();
        let dup = results
            .iter()
            .filter(|r| matches!(r, Ok(Accepted::Duplicate)))
            .count();
        assert_eq!((new, dup), (20, 80));
        assert_eq!(s.list_events(0, None, 1000).await.unwrap().len(), 20);
        assert_eq!(s.counts().await.unwrap().pending, 20);
    }

    pub async fn claims_come_in_order_and_hold_until_the_lease_ends(s: &dyn Store) {
        let (_, d1) = stored(
            s.accept(ev("e1", "k1", &["a", "b"], 1000), 60_000)
                .await
                .unwrap(),
        );
        let (_, d2) = stored(
            s.accept(ev("e2", "k2", &["c"], 1001), 60_000)
                .await
                .unwrap(),
        );
        let first = s.claim_due(2000, 2, 30_000).await.unwrap();
        assert_eq!(ids(&first), d1);
        assert_eq!(first[0].action, "a");
        assert_eq!(first[0].rule, "r");
        assert_eq!(first[0].attempts, 0);
        assert_eq!(first[0].received_at_ms, 1000);
        assert_eq!(first[0].lease_until, 32_000);
        assert_eq!(first[0].callback.as_ref().unwrap().call_id, "e1");
        let rest = s.claim_due(2000, 10, 30_000).await.unwrap();
        assert_eq!(ids(&rest), d2);
        // Leased: nothing more to claim until the leases end…
        assert!(s.claim_due(31_999, 10, 30_000).await.unwrap().is_empty());
        // …then every delivery is due again, with a later lease.
        let again = s.claim_due(32_001, 10, 30_000).await.unwrap();
        assert_eq!(ids(&again), [d1.clone(), d2].concat());
        assert!(again.iter().all(|c| c.lease_until == 62_001));
    }

    pub async fn a_late_outcome_never_overwrites_the_new_claim(s: &dyn Store) {
        s.accept(ev("e1", "k1", &["a"], 1000), 60_000)
            .await
            .unwrap();
        let old = s.claim_due(1000, 10, 10_000).await.unwrap();
        // The first holder is paused past its lease; another takes over.
        let new = s.claim_due(11_001, 10, 10_000).await.unwrap();
        assert_eq!(ids(&old), ids(&new));
        assert_ne!(old[0].lease(), new[0].lease());
        let stale = s
            .record(vec![(
                old[0].lease(),
                Record::Dead {
                    error: "late".into(),
                },
            )])
            .await
            .unwrap();
        assert_eq!(stale, ids(&old), "the late outcome is refused");
        assert_eq!(s.counts().await.unwrap().dead, 0);
        assert_eq!(
            s.record(vec![(new[0].lease(), Record::Sent)])
                .await
                .unwrap(),
            Vec::<i64>::new()
        );
        let sent = s.list_deliveries(Some(Status::Sent), 10).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].attempts, 1);
        // Recorded once: the old holder cannot record after the new one either.
        let again = s
            .record(vec![(old[0].lease(), Record::Sent)])
            .await
            .unwrap();
        assert_eq!(again, ids(&old));
        assert_eq!(
            s.list_deliveries(Some(Status::Sent), 10).await.unwrap()[0].attempts,
            1
        );
    }

    pub async fn outcomes_sent_retry_deferred_and_dead(s: &dyn Store) {
        let (_, d) = stored(
            s.accept(ev("e1", "k1", &["a", "b", "c", "d"], 1000), 60_000)
                .await
                .unwrap(),
        );
        let c = s.claim_due(1000, 10, 30_000).await.unwrap();
        assert_eq!(ids(&c), d);
        let stale = s
            .record(vec![
                (c[0].lease(), Record::Sent),
                (
                    c[1].lease(),
                    Record::Retry {
                        at_ms: 5000,
                        error: "503 busy".into(),
                        counted: true,
                    },
                ),
                (
                    c[2].lease(),
                    Record::Retry {
                        at_ms: 4000,
                        error: String::new(),
                        counted: false,
                    },
                ),
                (
                    c[3].lease(),
                    Record::Dead {
                        error: "410 Gone".into(),
                    },
                ),
            ])
            .await
            .unwrap();
        assert!(stale.is_empty());
        let counts = s.counts().await.unwrap();
        assert_eq!((counts.pending, counts.dead), (2, 1));
        let all = s.list_deliveries(None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|d| d.id).collect::<Vec<_>>(),
            d.iter().rev().copied().collect::<Vec<_>>(),
            "newest first"
        );
        let by_id = |id: i64| all.iter().find(|x| x.id == id).unwrap().clone();
        let sent = by_id(d[0]);
        assert_eq!(
            (sent.status, sent.attempts, sent.next_attempt_at),
            (Status::Sent, 1, None)
        );
        assert_eq!(sent.event, "roster:ban");
        assert_eq!(sent.event_id, "e1");
        let retried = by_id(d[1]);
        assert_eq!(
            (retried.status, retried.attempts, retried.next_attempt_at),
            (Status::Pending, 1, Some(5000))
        );
        assert_eq!(retried.last_error.as_deref(), Some("503 busy"));
        let deferred = by_id(d[2]);
        assert_eq!(
            (deferred.attempts, deferred.next_attempt_at),
            (0, Some(4000))
        );
        assert_eq!(deferred.last_error, None);
        let dead = by_id(d[3]);
        assert_eq!((dead.status, dead.attempts), (Status::Dead, 1));
        assert_eq!(dead.last_error.as_deref(), Some("410 Gone"));
        // Due again at their times, deferred first.
        assert!(s.claim_due(3999, 10, 30_000).await.unwrap().is_empty());
        let next = s.claim_due(5000, 10, 30_000).await.unwrap();
        assert_eq!(ids(&next), [d[1], d[2]]);
        assert_eq!(next[0].attempts, 1);
        let only_dead = s.list_deliveries(Some(Status::Dead), 10).await.unwrap();
        assert_eq!(only_dead.len(), 1);
        assert_eq!(only_dead[0].id, d[3]);
    }

    pub async fn retry_requeues_dead_deliveries(s: &dyn Store) {
        let (_, d) = stored(
            s.accept(ev("e1", "k1", &["a", "b", "c"], 1000), 60_000)
                .await
                .unwrap(),
        );
        let c = s.claim_due(1000, 10, 30_000).await.unwrap();
        let dead = |l| (l, Record::Dead { error: "x".into() });
        s.record(c.iter().map(|c| dead(c.lease())).collect())
            .await
            .unwrap();
        assert_eq!(s.counts().await.unwrap().dead, 3);
        assert_eq!(s.retry(Some(vec![d[0]]), 9000).await.unwrap(), 1);
        // Not dead (any more), or unknown: nothing to requeue.
        assert_eq!(s.retry(Some(vec![d[0]]), 9000).await.unwrap(), 0);
        assert_eq!(s.retry(Some(vec![d[2] + 1000]), 9000).await.unwrap(), 0);
        let one = s.claim_due(9000, 10, 30_000).await.unwrap();
        assert_eq!(ids(&one), [d[0]]);
        assert_eq!(
            one[0].attempts, 0,
            "a retried delivery starts its attempts over"
        );
        assert_eq!(s.retry(None, 9000).await.unwrap(), 2);
        let counts = s.counts().await.unwrap();
        assert_eq!((counts.pending, counts.dead), (3, 0));
        assert_eq!(
            ids(&s.claim_due(9000, 10, 30_000).await.unwrap()),
            [d[1], d[2]]
        );
    }

    pub async fn handed_off_deliveries_are_leased_at_accept(s: &dyn Store) {
        let mut e = ev("e1", "k1", &["a"], 1000);
        e.lease_until = Some(61_000);
        let (_, d) = stored(s.accept(e, 60_000).await.unwrap());
        assert!(s.claim_due(60_999, 10, 30_000).await.unwrap().is_empty());
        // The request path records under the lease it stored.
        let lease = easehook::store::Lease {
            id: d[0],
            until: 61_000,
        };
        assert!(
            s.record(vec![(lease, Record::Sent)])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.counts().await.unwrap().pending, 0);
        // A hand-off that was lost with its process is due once its lease ends.
        let mut e = ev("e2", "k2", &["a"], 1000);
        e.lease_until = Some(61_000);
        let (_, d) = stored(s.accept(e, 60_000).await.unwrap());
        assert_eq!(ids(&s.claim_due(61_001, 10, 30_000).await.unwrap()), d);
    }

    pub async fn deliveries_done_at_accept_are_sent_and_never_claimed(s: &dyn Store) {
        let mut e = ev("e1", "k1", &["log", "a"], 1000);
        e.deliveries[0].done = true;
        let (_, d) = stored(s.accept(e, 60_000).await.unwrap());
        let claimed = s.claim_due(1000, 10, 30_000).await.unwrap();
        assert_eq!(ids(&claimed), [d[1]]);
        let sent = s.list_deliveries(Some(Status::Sent), 10).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].id, sent[0].attempts), (d[0], 1));
    }

    pub async fn events_are_listed_newest_first_by_family_or_name(s: &dyn Store) {
        let named = |id: &str, event: &str, at: u64| {
            let mut e = ev(id, id, &["a"], at);
            e.event = event.into();
            e
        };
        for e in [
            named("e1", "roster:ban", 1000),
            named("e2", "roster:remote_decline", 2000),
            named("e3", "user:login", 3000),
            named("e4", "roster:ban", 4000),
        ] {
            s.accept(e, 60_000).await.unwrap();
        }
        let list = |since, event: Option<&str>| {
            let event = event.map(str::to_string);
            async move {
                s.list_events(since, event, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list(0, None).await, ["e4", "e3", "e2", "e1"]);
        assert_eq!(list(0, Some("roster")).await, ["e4", "e2", "e1"]);
        assert_eq!(list(0, Some("roster:ban")).await, ["e4", "e1"]);
        assert_eq!(list(0, Some("roster:remote_decline")).await, ["e2"]);
        // A prefix is a family, not part of a name; `_` is no wildcard.
        assert!(list(0, Some("roster:b")).await.is_empty());
        assert!(list(0, Some("roster:remote-decline")).await.is_empty());
        assert_eq!(list(3000, None).await, ["e4", "e3"]);
        let limited = s.list_events(0, None, 2).await.unwrap();
        assert_eq!(limited.len(), 2);
        let e4 = &limited[0];
        assert_eq!((e4.event.as_str(), e4.received_at), ("roster:ban", 4000));
        assert_eq!(e4.rules, ["r"]);
        assert_eq!(e4.callback["callId"], "e4");
        assert_eq!(e4.deliveries.len(), 1);
        assert_eq!(e4.deliveries[0].action, "a");
        assert_eq!(e4.deliveries[0].status, Status::Pending);
    }

    pub async fn events_are_found_by_user_rule_time_and_id_a_page_at_a_time(s: &dyn Store) {
        use easehook::store::EventQuery;
        let made = |id: &str, event: &str, from: &str, to: &str, rule: &str, at: u64| {
            let mut e = ev(id, id, &["a"], at);
            e.event = event.into();
            e.from_user = from.into();
            e.to_user = to.into();
            e.rules = vec![rule.into(), "common".into()];
            e
        };
        for e in [
            made("e1", "roster:ban", "alice", "bob", "ban-to-product", 1000),
            made("e2", "roster:ban", "carol", "alice", "ban-digest", 2000),
            made("e3", "roster:add", "alice", "dave", "audit", 3000),
            made("e4", "roster:ban", "bob", "carol", "ban", 4000),
            made("e5", "roster:ban", "alice%", "bob", "ban", 5000),
            made("e6", "roster:add", "zed", "zed", "audit", 6000),
        ] {
            s.accept(e, 60_000).await.unwrap();
        }
        let ids = |q: EventQuery| async move {
            s.query_events(q)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        let user = |u: &str| EventQuery {
            user: Some(u.into()),
            limit: 10,
            ..EventQuery::default()
        };
        // From or to, exactly: `alice%` is another user, not a pattern.
        assert_eq!(ids(user("alice")).await, ["e3", "e2", "e1"]);
        assert_eq!(ids(user("alice%")).await, ["e5"]);
        assert!(ids(user("ali")).await.is_empty());
        // An event that names its user twice is listed once.
        assert_eq!(ids(user("zed")).await, ["e6"]);
        // With an event filter, as the console's events page asks.
        let q = EventQuery {
            event: Some("roster:ban".into()),
            ..user("alice")
        };
        assert_eq!(ids(q).await, ["e2", "e1"]);
        // A rule by its whole name: `ban` is not part of `ban-digest`.
        let rule = |r: &str| EventQuery {
            rule: Some(r.into()),
            limit: 10,
            ..EventQuery::default()
        };
        assert_eq!(ids(rule("ban")).await, ["e5", "e4"]);
        assert_eq!(ids(rule("ban-digest")).await, ["e2"]);
        assert_eq!(ids(rule("common")).await.len(), 6);
        // A family written with `:*`, and a time range.
        let q = EventQuery {
            event: Some("roster:*".into()),
            since_ms: 2000,
            until_ms: Some(4000),
            limit: 10,
            ..EventQuery::default()
        };
        assert_eq!(ids(q).await, ["e3", "e2"]);
        // Pages of two, each after where the last ended.
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let page = s
                .query_events(EventQuery {
                    limit: 2,
                    before: before.clone(),
                    ..EventQuery::default()
                })
                .await
                .unwrap();
            before = page.last().map(|e| (e.received_at, e.id.clone()));
            pages.push(page.into_iter().map(|e| e.id).collect::<Vec<_>>());
            if before.is_none() {
                break;
            }
        }
        assert_eq!(
            pages,
            [vec!["e6", "e5"], vec!["e4", "e3"], vec!["e2", "e1"], vec![]]
        );
        // One event by its id, with its deliveries.
        let e3 = s.event("e3".into()).await.unwrap().unwrap();
        assert_eq!((e3.event.as_str(), e3.received_at), ("roster:add", 3000));
        assert_eq!(e3.deliveries.len(), 1);
        assert_eq!(e3.callback["callId"], "e3");
        assert!(s.event("nope".into()).await.unwrap().is_none());
    }

    pub async fn deliveries_are_listed_by_status_and_action_a_page_at_a_time(s: &dyn Store) {
        use easehook::store::DeliveryQuery;
        for i in 0..5u64 {
            s.accept(
                ev(
                    &format!("e{i}"),
                    &format!("k{i}"),
                    &["mail", "hook"],
                    1000 + i,
                ),
                60_000,
            )
            .await
            .unwrap();
        }
        // Two of the hooks die.
        let claimed = s.claim_due(10_000, 100, 30_000).await.unwrap();
        let dead: Vec<_> = claimed
            .iter()
            .filter(|c| c.action == "hook")
            .take(2)
            .map(|c| (c.lease(), Record::Dead { error: "x".into() }))
            .collect();
        s.record(dead).await.unwrap();
        let list = |q: DeliveryQuery| async move {
            s.query_deliveries(q)
                .await
                .unwrap()
                .into_iter()
                .map(|d| (d.action, d.status))
                .collect::<Vec<_>>()
        };
        let hooks = list(DeliveryQuery {
            action: Some("hook".into()),
            limit: 100,
            ..DeliveryQuery::default()
        })
        .await;
        assert_eq!(hooks.len(), 5);
        assert!(hooks.iter().all(|(a, _)| a == "hook"));
        let dead = list(DeliveryQuery {
            status: Some(Status::Dead),
            action: Some("hook".into()),
            limit: 100,
            ..DeliveryQuery::default()
        })
        .await;
        assert_eq!(dead.len(), 2);
        let none = list(DeliveryQuery {
            status: Some(Status::Dead),
            action: Some("mail".into()),
            limit: 100,
            ..DeliveryQuery::default()
        })
        .await;
        assert!(none.is_empty());
        // Newest first, a page at a time.
        let first = s
            .query_deliveries(DeliveryQuery {
                limit: 4,
                ..DeliveryQuery::default()
            })
            .await
            .unwrap();
        let rest = s
            .query_deliveries(DeliveryQuery {
                limit: 100,
                before: first.last().map(|d| d.id),
                ..DeliveryQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(first.len() + rest.len(), 10);
        assert!(first.windows(2).all(|w| w[0].id > w[1].id));
        assert!(first.last().unwrap().id > rest[0].id);
    }

    pub async fn next_due_is_the_earliest_waiting_delivery(s: &dyn Store) {
        assert_eq!(s.next_due().await.unwrap(), None);
        s.accept(ev("e1", "k1", &["a", "b"], 1000), 60_000)
            .await
            .unwrap();
        assert_eq!(s.next_due().await.unwrap(), Some(1000));
        let c = s.claim_due(1000, 10, 30_000).await.unwrap();
        // In flight: not waiting.
        assert_eq!(s.next_due().await.unwrap(), None);
        let retry = |l, at| {
            (
                l,
                Record::Retry {
                    at_ms: at,
                    error: "e".into(),
                    counted: true,
                },
            )
        };
        s.record(vec![retry(c[0].lease(), 9000), retry(c[1].lease(), 7000)])
            .await
            .unwrap();
        assert_eq!(s.next_due().await.unwrap(), Some(7000));
    }

    pub async fn prune_removes_what_is_past_retention_only(s: &dyn Store) {
        let now = easehook::now_ms();
        // e2: sent only; e3: no deliveries; e1: one sent, one pending (the
        // newest delivery, which the embedded store always keeps).
        s.accept(ev("e2", "k2", &["a"], now), 1000).await.unwrap();
        s.accept(ev("e3", "k3", &[], now), 1000).await.unwrap();
        s.accept(ev("e1", "k1", &["a", "b"], now), 1000)
            .await
            .unwrap();
        let c = s.claim_due(now, 10, 30_000).await.unwrap();
        assert_eq!(c.len(), 3);
        let sent = |c: &Claimed| (c.lease(), Record::Sent);
        s.record(vec![sent(&c[0]), sent(&c[1])]).await.unwrap();
        // Nothing is past a long retention.
        assert_eq!(s.prune(now, 86_400_000).await.unwrap(), 0);
        assert_eq!(s.list_events(0, None, 10).await.unwrap().len(), 3);
        // Later: the sent deliveries and the events left with none go; the
        // pending delivery and its event stay.
        let later = now + 86_400_000;
        let removed = s.prune(later, 1000).await.unwrap();
        assert!(removed >= 3, "removed {removed}");
        let events = s.list_events(0, None, 10).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["e1"]
        );
        assert_eq!(events[0].deliveries.len(), 1);
        assert_eq!(events[0].deliveries[0].id, c[2].id);
        assert_eq!(s.counts().await.unwrap().pending, 1);
        // Expired dedup keys went too: the key is free again.
        assert!(matches!(
            s.accept(ev("e4", "k2", &[], later), 1000).await.unwrap(),
            Accepted::New { .. }
        ));
    }

    pub async fn writable_probe_and_ping(s: &dyn Store) {
        assert!(s.is_writable());
        s.probe().await.unwrap();
        s.ping().await.unwrap();
        assert!(["sqlite", "postgres"].contains(&s.kind()));
    }

    fn fired(a: Accepted) -> Vec<String> {
        match a {
            Accepted::New { fired, .. } => fired,
            Accepted::Duplicate => panic!("stored as a duplicate"),
        }
    }

    fn events_of(c: &Claimed) -> Vec<String> {
        let a = c
            .aggregate
            .as_ref()
            .expect("a delivery of a digest or firing");
        a.events.iter().map(|e| e.id.clone()).collect()
    }

    pub async fn a_digest_gathers_its_group_until_its_window_ends(s: &dyn Store) {
        let at = |id, t, g| agg_ev(id, t, vec![digest(g)]);
        // Group x opens at 1 s; its events until 10.999 s join it, the one
        // at exactly 11 s opens the next digest.
        for (id, t, g) in [
            ("e1", 1000, "x"),
            ("e2", 2000, "y"),
            ("e3", 5000, "x"),
            ("e4", 10_999, "x"),
            ("e5", 11_000, "x"),
        ] {
            assert!(fired(s.accept(at(id, t, g), 60_000).await.unwrap()).is_empty());
        }
        assert_eq!(s.counts().await.unwrap().digests_open, 2);
        let groups = s.list_groups(11_500).await.unwrap();
        let seen: Vec<(String, u64, Option<u64>)> = groups
            .iter()
            .map(|g| {
                (
                    g.group["to"].as_str().unwrap().to_string(),
                    g.count,
                    g.due_at,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [("x".into(), 1, Some(21_000)), ("y".into(), 1, Some(12_000))],
            "the first digest of x is closed (past its end), the second open"
        );
        assert!(
            groups
                .iter()
                .all(|g| g.kind == AggregateKind::Digest && g.rule == "d")
        );
        // Nothing is due before the first digest's end.
        assert!(s.claim_due(10_999, 10, 30_000).await.unwrap().is_empty());
        let c = s.claim_due(11_000, 10, 30_000).await.unwrap();
        assert_eq!(c.len(), 2, "one delivery per action");
        assert_eq!(
            (c[0].action.as_str(), c[1].action.as_str()),
            ("mail", "chat")
        );
        for d in &c {
            let a = d.aggregate.as_ref().unwrap();
            assert_eq!(a.kind, AggregateKind::Digest);
            assert_eq!(a.rule, "d");
            assert_eq!(a.group, r#"{"to":"x"}"#);
            assert_eq!(a.count, 3, "every event is counted");
            assert_eq!(events_of(d), ["e1", "e3"], "the first max_events are kept");
            assert_eq!((a.first_at, a.last_at), (1000, 10_999));
            // The context of SPEC §5 is the last event's.
            assert_eq!(d.callback.as_ref().unwrap().call_id, "e4");
            assert_eq!(d.received_at_ms, 10_999);
            assert_eq!(d.event_id, "e1");
        }
        // A restart of the dispatcher (a lease run out) renders the same.
        let again = s.claim_due(50_000, 10, 30_000).await.unwrap();
        let x = again
            .iter()
            .find(|d| d.aggregate.as_ref().unwrap().group.contains('x'));
        assert_eq!(x.unwrap().aggregate.as_ref().unwrap().count, 3);
        let y: Vec<_> = again
            .iter()
            .filter(|d| d.aggregate.as_ref().unwrap().group.contains('y'))
            .collect();
        assert_eq!(y.len(), 2);
        assert_eq!(events_of(y[0]), ["e2"]);
        assert_eq!(y[0].aggregate.as_ref().unwrap().count, 1);
    }

    pub async fn a_claimed_digest_takes_no_more_events(s: &dyn Store) {
        s.accept(agg_ev("e1", 1000, vec![digest("x")]), 60_000)
            .await
            .unwrap();
        // The dispatcher runs a little late and claims it at its end…
        let c = s.claim_due(11_000, 10, 30_000).await.unwrap();
        assert_eq!(c.len(), 2);
        // …an event received just before (its commit after the claim) opens
        // the next digest rather than joining one already rendered.
        s.accept(agg_ev("e2", 10_500, vec![digest("x")]), 60_000)
            .await
            .unwrap();
        let groups = s.list_groups(10_600).await.unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].count, groups[0].due_at), (1, Some(20_500)));
        s.record(c.iter().map(|d| (d.lease(), Record::Sent)).collect())
            .await
            .unwrap();
        let next = s.claim_due(20_500, 10, 30_000).await.unwrap();
        assert_eq!(next.len(), 2);
        assert_eq!(events_of(&next[0]), ["e2"]);
        assert_eq!(s.counts().await.unwrap().digests_open, 0);
    }

    pub async fn a_threshold_fires_once_when_its_window_holds_enough(s: &dyn Store) {
        let mut n = 0;
        let mut hit = |t: u64, g: &str, v: &str| {
            n += 1;
            agg_ev(&format!("e{n}"), t, vec![threshold(g, v)])
        };
        // a, b, and a again: two distinct values.
        for (t, v) in [(1000, "a"), (2000, "b"), (3000, "a")] {
            assert!(fired(s.accept(hit(t, "x", v), 60_000).await.unwrap()).is_empty());
        }
        // At 12.5 s, b (2 s) has left the window: a and c are two.
        assert!(fired(s.accept(hit(12_500, "x", "c"), 60_000).await.unwrap()).is_empty());
        // Another group counts on its own.
        assert!(fired(s.accept(hit(12_600, "y", "a"), 60_000).await.unwrap()).is_empty());
        let groups = s.list_groups(12_700).await.unwrap();
        let counts: Vec<(u64, &str)> = groups
            .iter()
            .map(|g| (g.count, g.group["to"].as_str().unwrap()))
            .collect();
        assert_eq!(counts, [(2, "x"), (1, "y")]);
        assert!(
            groups
                .iter()
                .all(|g| g.kind == AggregateKind::Threshold && g.due_at.is_none())
        );
        // d makes three distinct values within 10 s: it fires.
        assert_eq!(
            fired(s.accept(hit(12_900, "x", "d"), 60_000).await.unwrap()),
            ["t"]
        );
        let c = s.claim_due(12_900, 10, 30_000).await.unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].action, "slack");
        let a = c[0].aggregate.as_ref().unwrap();
        assert_eq!(
            (a.kind, a.count, a.within_ms),
            (AggregateKind::Threshold, 3, 10_000)
        );
        // The latest event of each value, oldest first.
        assert_eq!(events_of(&c[0]), ["e3", "e4", "e6"]);
        assert_eq!((a.first_at, a.last_at), (3000, 12_900));
        assert_eq!(c[0].callback.as_ref().unwrap().call_id, "e6");
        // Resting until 32.9 s: a fourth and fifth value fire nothing.
        assert!(fired(s.accept(hit(13_000, "x", "e"), 60_000).await.unwrap()).is_empty());
        assert!(fired(s.accept(hit(32_000, "x", "f"), 60_000).await.unwrap()).is_empty());
        let x = &s.list_groups(32_100).await.unwrap()[0];
        assert_eq!(x.cooldown_until, Some(32_900));
        assert!(fired(s.accept(hit(32_800, "x", "g"), 60_000).await.unwrap()).is_empty());
        // After the cooldown, a window holding three values fires again.
        assert_eq!(
            fired(s.accept(hit(33_000, "x", "h"), 60_000).await.unwrap()),
            ["t"]
        );
        let c = s.claim_due(33_000, 10, 30_000).await.unwrap();
        assert_eq!(events_of(&c[0]), ["e8", "e9", "e10"]);
    }

    pub async fn a_wave_of_concurrent_events_makes_one_digest_and_one_firing(s: &dyn Store) {
        // 200 events at once (on PostgreSQL, several writers' batches),
        // each in one digest group and one threshold group, with 20
        // distinct values.
        let calls = (0..200).map(|i| {
            s.accept(
                agg_ev(
                    &format!("e{i:03}"),
                    1000 + i,
                    vec![digest("x"), threshold("x", &format!("v{}", i % 20))],
                ),
                60_000,
            )
        });
        let results = futures_util::future::join_all(calls).await;
        let fired: Vec<String> = results
            .into_iter()
            .flat_map(|r| fired(r.unwrap()))
            .collect();
        assert_eq!(fired, ["t"], "the threshold fires once");
        let c = s.claim_due(20_000, 100, 30_000).await.unwrap();
        let digests: Vec<_> = c
            .iter()
            .filter(|d| d.aggregate.as_ref().unwrap().kind == AggregateKind::Digest)
            .collect();
        assert_eq!(digests.len(), 2, "one digest, one delivery per action");
        assert_eq!(digests[0].aggregate.as_ref().unwrap().count, 200);
        assert_eq!(digests[0].aggregate.as_ref().unwrap().events.len(), 2);
        assert_eq!(c.len(), 3);
    }

    pub async fn prune_keeps_what_open_digests_need(s: &dyn Store) {
        let day = 86_400_000;
        let now = easehook::now_ms();
        let open = NewAggregate {
            spec: AggregateSpec::Digest {
                window_ms: 2 * day,
                max_events: 5,
            },
            ..digest("x")
        };
        s.accept(agg_ev("e1", now - 2 * day + 1, vec![open.clone()]), 1000)
            .await
            .unwrap();
        s.accept(agg_ev("e2", now - day - 1, vec![open]), 1000)
            .await
            .unwrap();
        s.accept(agg_ev("e3", now - day - 1, vec![]), 1000)
            .await
            .unwrap();
        // (A newer event: the embedded store always keeps the newest.)
        s.accept(agg_ev("e9", now, vec![]), 1000).await.unwrap();
        // A day's retention: e3 goes, the open digest's events stay.
        s.prune(now, day).await.unwrap();
        let left: Vec<String> = s
            .list_events(0, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, ["e9", "e2", "e1"]);
        let c = s.claim_due(now + day, 10, 30_000).await.unwrap();
        assert_eq!(events_of(&c[0]), ["e1", "e2"]);
        s.record(c.iter().map(|d| (d.lease(), Record::Sent)).collect())
            .await
            .unwrap();
        // Delivered and past retention: the digest and its events go. (A
        // newer delivery: the embedded store always keeps the newest.)
        s.accept(ev("e4", "k4", &["a"], now + 3 * day), 1000)
            .await
            .unwrap();
        s.prune(now + 3 * day, day).await.unwrap();
        let left: Vec<String> = s
            .list_events(0, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, ["e4"]);
    }

    pub async fn every_attempt_is_kept_with_its_delivery(s: &dyn Store) {
        let (_, d) = stored(
            s.accept(ev("e1", "k1", &["a"], 1000), 60_000)
                .await
                .unwrap(),
        );
        let id = d[0];
        let at = |t: u64, ms: u64, code: u16| Attempt {
            started_at_ms: t,
            duration_ms: ms,
            code: Some(code),
        };
        let c = s.claim_due(1000, 10, 30_000).await.unwrap();
        let retry = Record::Retry {
            at_ms: 2000,
            error: "HTTP 500: oops".into(),
            counted: true,
        };
        s.record_attempts(vec![(c[0].lease(), retry, at(1000, 12, 500))])
            .await
            .unwrap();
        // A deferral makes no attempt.
        let c = s.claim_due(2000, 10, 30_000).await.unwrap();
        s.record_attempts(vec![(
            c[0].lease(),
            Record::later(2500),
            Attempt::default(),
        )])
        .await
        .unwrap();
        let c = s.claim_due(2500, 10, 30_000).await.unwrap();
        let long = "错".repeat(3000);
        s.record_attempts(vec![(
            c[0].lease(),
            Record::Dead {
                error: long.clone(),
            },
            at(2500, 30, 404),
        )])
        .await
        .unwrap();
        // A stale outcome (its claim gone) leaves no attempt either.
        s.record_attempts(vec![(c[0].lease(), Record::Sent, at(2600, 1, 200))])
            .await
            .unwrap();
        // Retried from dead: the numbers go on.
        assert_eq!(s.retry(Some(vec![id]), 3000).await.unwrap(), 1);
        let c = s.claim_due(3000, 10, 30_000).await.unwrap();
        s.record_attempts(vec![(c[0].lease(), Record::Sent, at(3000, 7, 200))])
            .await
            .unwrap();
        let detail = s.delivery(id).await.unwrap().expect("the delivery");
        assert_eq!(detail.delivery.status, Status::Sent);
        assert_eq!(detail.delivery.action, "a");
        let got: Vec<(u32, u64, u64, &str, Option<u16>)> = detail
            .attempts_made
            .iter()
            .map(|a| (a.n, a.started_at, a.duration_ms, a.outcome.as_str(), a.code))
            .collect();
        assert_eq!(
            got,
            [
                (1, 1000, 12, "retry", Some(500)),
                (2, 2500, 30, "dead", Some(404)),
                (3, 3000, 7, "sent", Some(200)),
            ]
        );
        assert_eq!(
            detail.attempts_made[0].error.as_deref(),
            Some("HTTP 500: oops")
        );
        assert_eq!(
            detail.attempts_made[1]
                .error
                .as_ref()
                .unwrap()
                .chars()
                .count(),
            1000,
            "an attempt keeps at most 1,000 characters of its error"
        );
        assert_eq!(detail.attempts_made[2].error, None);
        assert!(s.delivery(id + 1000).await.unwrap().is_none());
        // Pruned with the delivery (a newer one stays: the embedded store
        // always keeps the newest).
        let now = easehook::now_ms();
        s.accept(ev("e2", "k2", &["a"], now), 60_000).await.unwrap();
        s.prune(now + 10_000, 1000).await.unwrap();
        assert!(s.delivery(id).await.unwrap().is_none());
    }

    pub async fn a_replay_gives_each_event_and_action_one_delivery(s: &dyn Store) {
        let (_, d1) = stored(
            s.accept(ev("e1", "k1", &["a"], 1000), 60_000)
                .await
                .unwrap(),
        );
        stored(s.accept(ev("e2", "k2", &[], 1001), 60_000).await.unwrap());
        // Another event's delivery after them: a replayed delivery's id
        // lies beyond e1's own.
        stored(
            s.accept(ev("e3", "k3", &["a"], 1002), 60_000)
                .await
                .unwrap(),
        );
        let nd = |a: &str| NewDelivery {
            action: a.into(),
            rule: "r2".into(),
            done: false,
        };
        let asked = || {
            vec![
                ("e1".to_string(), vec![nd("a"), nd("b")]),
                ("e2".to_string(), vec![nd("b")]),
                ("ghost".to_string(), vec![nd("b")]),
            ]
        };
        let dry = s.replay(asked(), 5000, true).await.unwrap();
        let seen: Vec<(&str, &str, Option<i64>)> = dry
            .iter()
            .map(|r| (r.event_id.as_str(), r.action.as_str(), r.delivery))
            .collect();
        assert_eq!(seen, [("e1", "b", None), ("e2", "b", None)]);
        assert_eq!(
            s.counts().await.unwrap().pending,
            2,
            "a dry run creates nothing"
        );
        // Five replays at once: each pair once.
        let runs =
            futures_util::future::join_all((0..5).map(|_| s.replay(asked(), 5000, false))).await;
        let made: Vec<_> = runs.into_iter().flat_map(|r| r.unwrap()).collect();
        assert_eq!(made.len(), 2, "{made:?}");
        assert!(made.iter().all(|r| r.rule == "r2" && r.delivery.is_some()));
        assert!(s.replay(asked(), 6000, false).await.unwrap().is_empty());
        assert_eq!(s.counts().await.unwrap().pending, 4);
        // Listed with their event, and claimed with its callback.
        let events = s.list_events(0, None, 10).await.unwrap();
        let e1 = events.iter().find(|e| e.id == "e1").unwrap();
        let actions: Vec<&str> = e1.deliveries.iter().map(|d| d.action.as_str()).collect();
        assert_eq!(actions, ["a", "b"]);
        let c = s.claim_due(5000, 10, 30_000).await.unwrap();
        let b1 = c
            .iter()
            .find(|c| c.event_id == "e1" && c.action == "b")
            .unwrap();
        assert_eq!(b1.callback.as_ref().unwrap().call_id, "e1");
        assert!(b1.id > d1[0]);
    }
}

/// Run `f` with two PostgreSQL stores ("replicas") on one new database.
async fn two_replicas<F, Fut>(f: F)
where
    F: FnOnce(String, PgStore, PgStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let settings = pg_settings(&url);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = tokio::join!(
        PgStore::connect(&settings, da.path()),
        PgStore::connect(&settings, db.path())
    );
    f(url, a.unwrap(), b.unwrap()).await;
}

#[tokio::test]
async fn two_replicas_store_a_callback_sent_to_both_once() {
    two_replicas(|_, a, b| async move {
        for i in 0..50 {
            let key = format!("k{i}");
            let (ra, rb) = tokio::join!(
                a.accept(ev(&format!("a{i}"), &key, &["x"], 1000), 60_000),
                b.accept(ev(&format!("b{i}"), &key, &["x"], 1000), 60_000)
            );
            let new = [ra.unwrap(), rb.unwrap()]
                .iter()
                .filter(|r| matches!(r, Accepted::New { .. }))
                .count();
            assert_eq!(new, 1, "callback {i}");
        }
        assert_eq!(a.list_events(0, None, 1000).await.unwrap().len(), 50);
        assert_eq!(b.counts().await.unwrap().pending, 50);
    })
    .await;
}

#[tokio::test]
async fn two_replicas_never_claim_the_same_delivery() {
    two_replicas(|_, a, b| async move {
        for i in 0..40 {
            a.accept(
                ev(&format!("e{i}"), &format!("k{i}"), &["x", "y", "z"], 1000),
                60_000,
            )
            .await
            .unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        loop {
            let (ca, cb) = tokio::join!(a.claim_due(2000, 7, 60_000), b.claim_due(2000, 7, 60_000));
            let (ca, cb) = (ca.unwrap(), cb.unwrap());
            if ca.is_empty() && cb.is_empty() {
                break;
            }
            for c in ca.iter().chain(&cb) {
                assert!(seen.insert(c.id), "delivery {} claimed twice", c.id);
            }
        }
        assert_eq!(seen.len(), 120);
    })
    .await;
}

#[tokio::test]
async fn replicas_are_listed_and_migrations_run_once() {
    two_replicas(|url, a, b| async move {
        let replicas = a.replicas().await.unwrap().unwrap();
        let mut ids: Vec<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        let mut want = vec![a.replica().id.as_str(), b.replica().id.as_str()];
        want.sort();
        assert_eq!(ids, want);
        assert!(
            replicas
                .iter()
                .all(|r| r.version == env!("CARGO_PKG_VERSION"))
        );
        let versions = crate::helpers::pg::sql(&url, "SELECT version FROM easehook_schema").await;
        assert_eq!(
            versions.len(),
            easehook::store::postgres::SCHEMA_VERSION as usize
        );
        // Migrating again applies nothing.
        let applied = easehook::store::postgres::migrate(&pg_settings(&url))
            .await
            .unwrap();
        assert!(applied.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_schema_newer_than_the_daemon_is_refused() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    drop(connect_pg(&url).await);
    crate::helpers::pg::sql(&url, "INSERT INTO easehook_schema VALUES (999, 0)").await;
    let Err(e) = PgStore::connect_tool(&pg_settings(&url)).await else {
        panic!("a newer schema was accepted")
    };
    let msg = e.to_string();
    assert!(
        msg.contains("version 999, newer than this easehook knows"),
        "{msg}"
    );
}

#[tokio::test]
async fn prune_runs_on_one_replica_at_a_time() {
    two_replicas(|url, a, b| async move {
        a.accept(ev("e1", "k1", &[], 1000), 1000).await.unwrap();
        // Another session holds the prune lock: this replica leaves it.
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let key: i64 = 0x6561_7365_686f_6f02;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .unwrap();
        let later = easehook::now_ms() + 86_400_000;
        assert_eq!(b.prune(later, 1000).await.unwrap(), 0);
        assert_eq!(b.list_events(0, None, 10).await.unwrap().len(), 1);
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await
            .unwrap();
        assert_eq!(b.prune(later, 1000).await.unwrap(), 1);
        assert!(a.list_events(0, None, 10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn bad_urls_get_clear_errors_without_the_password() {
    let Some(server) = crate::helpers::pg::server() else {
        return;
    };
    let wrong = format!(
        "postgres://{}:not-the-password-99@127.0.0.1:{}/postgres",
        crate::helpers::pg::USER,
        server.port
    );
    let Err(e) = PgStore::connect_tool(&pg_settings(&wrong)).await else {
        panic!("a wrong password was accepted")
    };
    let msg = e.to_string();
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains("not-the-password-99"), "{msg}");
    // A server that is not PostgreSQL: an HTTP server on loopback.
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = http.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = http.accept().await {
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let not_pg = format!("postgres://u:secret-pw-1234@127.0.0.1:{port}/db");
    let Err(e) = PgStore::connect_tool(&pg_settings(&not_pg)).await else {
        panic!("an HTTP server was taken for PostgreSQL")
    };
    let msg = e.to_string();
    assert!(msg.starts_with("cannot connect"), "{msg}");
    assert!(!msg.contains("secret-pw-1234"), "{msg}");
    // Nothing listening.
    let closed = format!("postgres://u:pw-5678@127.0.0.1:{}/db", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let Err(e) = PgStore::connect_tool(&pg_settings(&closed)).await else {
        panic!("connected to nothing")
    };
    assert!(e.to_string().starts_with("cannot connect"), "{e}");
}

#[tokio::test]
async fn a_rate_limit_is_shared_by_the_replicas() {
    two_replicas(|_, a, b| async move {
        let t = 1_000_000_000u64; // µs
        let interval = 100_000; // 10/s
        async fn take(s: &PgStore, n: u32, at: u64) -> easehook::store::RateGrant {
            s.take_rate("hook", n, 100_000, 10, at)
                .await
                .unwrap()
                .unwrap()
        }
        // The burst goes to the first to ask…
        let g = take(&a, 12, t).await;
        assert_eq!((g.allowed, g.next_at_us), (10, t + interval));
        // …and the other replica gets nothing until the next slot.
        let g = take(&b, 5, t + 50_000).await;
        assert_eq!((g.allowed, g.next_at_us), (0, t + interval));
        let g = take(&b, 5, t + interval).await;
        assert_eq!((g.allowed, g.next_at_us), (1, t + 2 * interval));
        // After a quiet second the burst is back, for either.
        let g = take(&b, 20, t + 3_000_000).await;
        assert_eq!(g.allowed, 10);
        // Limits are per key.
        let other = b
            .take_rate("other", 3, interval, 10, t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other.allowed, 3);
    })
    .await;
}

#[tokio::test]
async fn a_replica_restarted_after_a_crash_takes_its_claims_back_at_once() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let settings = pg_settings(&url);
    let dir = tempfile::tempdir().unwrap();
    let (other, _other_dir) = connect_pg(&url).await;
    let a = PgStore::connect(&settings, dir.path()).await.unwrap();
    let id = a.replica().id.clone();
    // One daemon per state_dir, on this store too.
    let Err(e) = PgStore::connect(&settings, dir.path()).await else {
        panic!("two replicas on one state_dir")
    };
    assert!(
        e.to_string().contains("is in use by another easehook"),
        "{e}"
    );
    let now = easehook::now_ms();
    // A hand-off and a claim in flight when the replica dies; another
    // replica's claim too.
    let mut handed = ev("e1", "k1", &["a"], now);
    handed.lease_until = Some(now + 600_000);
    a.accept(handed, 60_000).await.unwrap();
    a.accept(ev("e2", "k2", &["a"], now), 60_000).await.unwrap();
    assert_eq!(a.claim_due(now, 1, 600_000).await.unwrap().len(), 1);
    other
        .accept(ev("e3", "k3", &["a"], now), 60_000)
        .await
        .unwrap();
    assert_eq!(other.claim_due(now, 10, 600_000).await.unwrap().len(), 1);
    drop(a);
    // Restarted on the same state_dir: the same replica, its claims free
    // at once, the other replica's left alone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let again = loop {
        match PgStore::connect(&settings, dir.path()).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(again.replica().id, id);
    // Listed once, as this run.
    let listed: Vec<_> = again
        .replicas()
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .filter(|r| r.id == id)
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].started_at, again.replica().started_at);
    let claimed = again.claim_due(now, 10, 60_000).await.unwrap();
    let mut events: Vec<&str> = claimed.iter().map(|c| c.event_id.as_str()).collect();
    events.sort();
    assert_eq!(events, ["e1", "e2"]);
}

/// `store copy` takes open digests and threshold windows along: the
/// target delivers the digest with the events counted before the copy,
/// and its window goes on counting.
#[tokio::test]
async fn store_copy_takes_digests_and_windows_along() {
    let Some(url) = crate::helpers::pg::database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        for (i, v) in ["a", "b"].iter().enumerate() {
            s.accept(
                agg_ev(
                    &format!("e{i}"),
                    1000 + i as u64,
                    vec![digest("x"), threshold("x", v)],
                ),
                60_000,
            )
            .await
            .unwrap();
        }
    }
    let (target, _state) = connect_pg(&url).await;
    easehook::store::copy::copy(dir.path(), &target)
        .await
        .unwrap();
    let groups = target.list_groups(2000).await.unwrap();
    let seen: Vec<(AggregateKind, u64)> = groups.iter().map(|g| (g.kind, g.count)).collect();
    assert_eq!(
        seen,
        [(AggregateKind::Digest, 2), (AggregateKind::Threshold, 2)]
    );
    // The third value fires on the target; the digest closes there.
    let fired = match target
        .accept(agg_ev("e2", 3000, vec![threshold("x", "c")]), 60_000)
        .await
        .unwrap()
    {
        Accepted::New { fired, .. } => fired,
        Accepted::Duplicate => panic!("a duplicate"),
    };
    assert_eq!(fired, ["t"]);
    let c = target.claim_due(20_000, 10, 30_000).await.unwrap();
    let digest = c
        .iter()
        .find(|d| d.aggregate.as_ref().unwrap().kind == AggregateKind::Digest)
        .unwrap();
    let a = digest.aggregate.as_ref().unwrap();
    assert_eq!(a.count, 2);
    assert_eq!(a.events.len(), 2);
    assert_eq!(c.len(), 3, "two digest deliveries and one firing");
}
