//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! Each daemon instance owns its registry (tests run many daemons in one
//! process, and each must count only its own). Label values are bounded: the
//! `event` label is a known roster event, else a known family, else `other`;
//! `rule` and `action` are names from the configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::callback::{Callback, ROSTER_OPERATIONS};

pub mod presend;
pub use presend::PresendMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabels {
    pub result: &'static str,
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub action: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// Callback families Easemob sends; anything else is counted as `other`.
const FAMILIES: [&str; 10] = [
    "chat",
    "group",
    "groupchat",
    "roster",
    "muc",
    "recall",
    "read_ack",
    "delivery_ack",
    "chatroom",
    "user",
];

/// The bounded `event` label of a callback.
pub fn event_label(cb: Option<&Callback>) -> &'static str {
    let Some(cb) = cb else { return "other" };
    if let (Some("roster"), Some(op)) = (cb.chat_type.as_deref(), cb.operation.as_deref())
        && let Some(i) = ROSTER_OPERATIONS.iter().position(|o| *o == op)
    {
        return ROSTER_EVENTS[i];
    }
    // The family: `chat_type`, else the part of the event name before its
    // colon (`user:login`, `group:join`, `chatroom:leave`).
    let family = match cb.chat_type.as_deref() {
        Some(f) => f,
        None => match cb.event.split_once(':') {
            Some((f, _)) => f,
            None => return "other",
        },
    };
    FAMILIES
        .iter()
        .find(|&&k| k == family)
        .copied()
        .unwrap_or("other")
}

/// `roster:{operation}` for each of [`ROSTER_OPERATIONS`], in its order: the
/// event names of roster callbacks, as labels that cost no allocation.
const ROSTER_EVENTS: [&str; ROSTER_OPERATIONS.len()] = [
    "roster:add",
    "roster:remove",
    "roster:accept",
    "roster:remote_accept",
    "roster:decline",
    "roster:remote_decline",
    "roster:ban",
    "roster:allow",
];

/// Every metric of one daemon.
pub struct Metrics {
    registry: Registry,
    pub callbacks: Family<CallbackLabels, Counter>,
    pub callback_duration: Histogram,
    pub rule_matches: Family<RuleLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub delivery_duration: HistogramFamily<ActionLabels>,
    pub queue_depth: Gauge,
    pub dead_deliveries: Gauge,
    pub reload_successful: Gauge,
    pub reload_success_timestamp: Gauge<f64, AtomicU64>,
    pub store_writable: Gauge,
    /// `easehook_store_up`: 1 while the store takes writes (SPEC §15).
    pub store_up: Gauge,
    /// `easehook_replicas`: daemons seen on a shared store in the last minute.
    pub replicas: Gauge,
    /// `easehook_digests_open`: digests taking events (SPEC §11).
    pub digests_open: Gauge,
    /// `easehook_digest_deliveries_total{rule}`: deliveries of closed
    /// digests sent.
    pub digest_deliveries: Family<RuleLabels, Counter>,
    /// `easehook_threshold_fired_total{rule}`: times a threshold fired.
    pub threshold_fired: Family<RuleLabels, Counter>,
    /// `easehook_delivery_attempts_total{action,outcome}` (SPEC §15):
    /// attempts kept, by how they ended (`sent`, `retry`, `dead`).
    pub attempts: Family<DeliveryLabels, Counter>,
    /// The pre-send endpoint's series (SPEC §16).
    pub presend: PresendMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How one delivery attempt ended, as `easehook_deliveries_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    // Also where each is in `ActionMetrics::outcomes`.
    Sent = 0,
    Retried = 1,
    Dead = 2,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Sent => "sent",
            DeliveryOutcome::Retried => "retried",
            DeliveryOutcome::Dead => "dead",
        }
    }
}

/// The metric of `family` under the labels `labels` makes, looked up in the
/// family once and kept in `cell`: later uses neither build a label set
/// (copying a name into it) nor hash one.
fn kept<'c, S, M, C>(
    cell: &'c OnceLock<M>,
    family: &Family<S, M, C>,
    labels: impl FnOnce() -> S,
) -> &'c M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    cell.get_or_init(|| family.get_or_create(&labels()).clone())
}

/// One rule's counter of the accepted events that matched it, kept by the
/// rule for as long as its rule set is in force; the series lives in the
/// family, so a reload continues it. Like [`ActionMetrics`], it belongs to
/// the first [`Metrics`] it is used with.
#[derive(Debug, Default)]
pub struct RuleMetrics {
    matches: OnceLock<Counter>,
}

/// One action's delivery counters and duration histogram, kept by the
/// action for as long as its rule set is in force; the series live in the
/// families, so a reload continues them.
///
/// They belong to the first [`Metrics`] they are used with: a rule set is
/// loaded by, and used with, one daemon.
#[derive(Debug, Default)]
pub struct ActionMetrics {
    outcomes: [OnceLock<Counter>; 3],
    attempts: [OnceLock<Counter>; 3],
    duration: OnceLock<Histogram>,
}

impl Metrics {
    /// Count an accepted event that matched rule `name`.
    pub fn count_match(&self, kept_by: &RuleMetrics, name: &str) {
        kept(&kept_by.matches, &self.rule_matches, || RuleLabels {
            rule: name.to_string(),
        })
        .inc();
    }

    /// How many accepted events matched rule `name` since the daemon
    /// started (across reloads).
    pub fn match_count(&self, name: &str) -> u64 {
        self.rule_matches
            .get(&RuleLabels {
                rule: name.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// Count one attempt of action `name`, with the metrics its action
    /// keeps, or none when it is gone from the rule set.
    pub fn count_delivery(
        &self,
        kept_by: Option<&ActionMetrics>,
        name: &str,
        outcome: DeliveryOutcome,
    ) {
        let gone = ActionMetrics::default();
        let cell = &kept_by.unwrap_or(&gone).outcomes[outcome as usize];
        kept(cell, &self.deliveries, || DeliveryLabels {
            action: name.to_string(),
            outcome: outcome.as_str(),
        })
        .inc();
    }

    /// Record how long an attempt of action `name` took (see
    /// [`Metrics::count_delivery`]).
    pub fn observe_delivery(&self, kept_by: Option<&ActionMetrics>, name: &str, seconds: f64) {
        let gone = ActionMetrics::default();
        kept(
            &kept_by.unwrap_or(&gone).duration,
            &self.delivery_duration,
            || ActionLabels {
                action: name.to_string(),
            },
        )
        .observe(seconds);
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("easehook");
        let m = Metrics {
            callbacks: Family::default(),
            callback_duration: latency_histogram(),
            rule_matches: Family::default(),
            deliveries: Family::default(),
            delivery_duration: Family::new_with_constructor(latency_histogram),
            queue_depth: Gauge::default(),
            dead_deliveries: Gauge::default(),
            reload_successful: Gauge::default(),
            reload_success_timestamp: Gauge::default(),
            store_writable: Gauge::default(),
            store_up: Gauge::default(),
            replicas: Gauge::default(),
            digests_open: Gauge::default(),
            digest_deliveries: Family::default(),
            threshold_fired: Family::default(),
            attempts: Family::default(),
            presend: PresendMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "callbacks",
            "Callbacks received, by result and event",
            m.callbacks.clone(),
        );
        registry.register(
            "callback_duration_seconds",
            "Time from request to answer for callbacks",
            m.callback_duration.clone(),
        );
        registry.register(
            "rule_matches",
            "Accepted events matched, by rule",
            m.rule_matches.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts, by action and outcome (sent, retried, dead)",
            m.deliveries.clone(),
        );
        registry.register(
            "delivery_duration_seconds",
            "Time of one delivery attempt, by action",
            m.delivery_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Deliveries waiting to be sent",
            m.queue_depth.clone(),
        );
        registry.register(
            "dead_deliveries",
            "Deliveries that gave up",
            m.dead_deliveries.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "Whether the last configuration load succeeded",
            m.reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully",
            m.reload_success_timestamp.clone(),
        );
        registry.register(
            "store_writable",
            "Whether the store takes new events",
            m.store_writable.clone(),
        );
        registry.register(
            "store_up",
            "1 while the store takes writes",
            m.store_up.clone(),
        );
        registry.register(
            "replicas",
            "Daemons seen using the shared store in the last minute (postgres)",
            m.replicas.clone(),
        );
        registry.register(
            "digests_open",
            "Digests taking events",
            m.digests_open.clone(),
        );
        registry.register(
            "digest_deliveries",
            "Deliveries of closed digests sent, by rule",
            m.digest_deliveries.clone(),
        );
        registry.register(
            "threshold_fired",
            "Times a threshold fired, by rule",
            m.threshold_fired.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts kept with their deliveries, by action and outcome (sent, retry, dead)",
            m.attempts.clone(),
        );
        m.presend.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Count an attempt of action `name` that ended as `outcome`, kept
    /// with its delivery (see [`Metrics::count_delivery`]).
    pub fn count_attempt(
        &self,
        kept_by: Option<&ActionMetrics>,
        name: &str,
        outcome: DeliveryOutcome,
    ) {
        let gone = ActionMetrics::default();
        let cell = &kept_by.unwrap_or(&gone).attempts[outcome as usize];
        kept(cell, &self.attempts, || DeliveryLabels {
            action: name.to_string(),
            outcome: match outcome {
                DeliveryOutcome::Sent => "sent",
                DeliveryOutcome::Retried => "retry",
                DeliveryOutcome::Dead => "dead",
            },
        })
        .inc();
    }

    /// Count a firing of the threshold rule `rule`.
    pub fn count_threshold_fired(&self, rule: &str) {
        self.threshold_fired
            .get_or_create(&RuleLabels {
                rule: rule.to_string(),
            })
            .inc();
    }

    /// A successful (re)load, now.
    pub fn reloaded(&self, ok: bool) {
        self.reload_successful.set(i64::from(ok));
        if ok {
            self.reload_success_timestamp
                .set(crate::now_ms() as f64 / 1000.0);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_labels_are_bounded() {
        let cb = |v: serde_json::Value| {
            let mut base = json!({"callId": "c", "security": "s", "timestamp": 1});
            base.as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
            Callback::from_value(base).unwrap()
        };
        assert_eq!(
            event_label(Some(&cb(
                json!({"chat_type": "roster", "payload": {"operation": "ban"}})
            ))),
            "roster:ban"
        );
        assert_eq!(
            event_label(Some(&cb(
                json!({"chat_type": "roster", "payload": {"operation": "evil"}})
            ))),
            "roster"
        );
        assert_eq!(
            event_label(Some(&cb(json!({"chat_type": "groupchat"})))),
            "groupchat"
        );
        assert_eq!(
            event_label(Some(&cb(json!({"chat_type": "x1234"})))),
            "other"
        );
        assert_eq!(event_label(Some(&cb(json!({"status": "online"})))), "other");
        assert_eq!(
            event_label(Some(&cb(json!({"status": "online", "reason": "login"})))),
            "user"
        );
        assert_eq!(
            event_label(Some(&cb(
                json!({"event": "group_op_event", "type": "GROUP", "operation": "JOIN"})
            ))),
            "group"
        );
        assert_eq!(
            event_label(Some(&cb(
                json!({"event": "group_op_event", "type": "X9", "operation": "JOIN"})
            ))),
            "other"
        );
        assert_eq!(event_label(None), "other");
        // The label of every roster operation is the callback's event name.
        for op in ROSTER_OPERATIONS {
            let c = cb(json!({"chat_type": "roster", "payload": {"operation": op}}));
            assert_eq!(event_label(Some(&c)), c.event);
        }
    }

    #[test]
    fn exposition_names_every_series() {
        let m = Metrics::new();
        m.callbacks
            .get_or_create(&CallbackLabels {
                result: "accepted",
                event: "roster:ban",
            })
            .inc();
        m.reloaded(true);
        let text = m.encode();
        for name in [
            "easehook_callbacks_total{result=\"accepted\",event=\"roster:ban\"} 1",
            "easehook_callback_duration_seconds_count",
            "easehook_queue_depth",
            "easehook_dead_deliveries",
            "easehook_config_last_reload_successful 1",
            "easehook_config_last_reload_success_timestamp_seconds",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}

/// Callbacks accepted and delivery attempts made per minute over the last
/// hour, by this daemon since it started: the console's chart. Sixty slots,
/// one per minute of the hour; a slot still holding an older minute is
/// cleared when its minute comes round again. Lock-free: the request path
/// and the dispatcher each add with one atomic step (two when a minute
/// begins).
#[derive(Debug)]
pub struct Activity {
    slots: [ActivitySlot; 60],
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| ActivitySlot::default()),
        }
    }
}

#[derive(Debug, Default)]
struct ActivitySlot {
    /// Which minute (since the epoch) the counts are of.
    minute: AtomicU64,
    callbacks: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
}

/// One minute of [`Activity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Ms since the epoch when the minute began.
    pub at_ms: u64,
    pub callbacks: u64,
    /// Attempts that delivered.
    pub sent: u64,
    /// Attempts that failed (to be retried, or dead).
    pub failed: u64,
}

/// What [`Activity`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happened {
    Callback,
    Sent,
    Failed,
}

impl Activity {
    /// Count one of `what` at `now_ms`.
    pub fn add(&self, what: Happened, now_ms: u64) {
        let minute = now_ms / 60_000;
        let slot = &self.slots[(minute % 60) as usize];
        let seen = slot.minute.load(Ordering::Acquire);
        if seen != minute
            && slot
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This minute's first count: the slot held one an hour (or
            // more) older. A count racing the reset may be lost; the chart
            // is a picture, the metrics are the record.
            slot.callbacks.store(0, Ordering::Release);
            slot.sent.store(0, Ordering::Release);
            slot.failed.store(0, Ordering::Release);
        }
        let counter = match what {
            Happened::Callback => &slot.callbacks,
            Happened::Sent => &slot.sent,
            Happened::Failed => &slot.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The sixty minutes up to and including the one of `now_ms`, oldest
    /// first.
    pub fn last_hour(&self, now_ms: u64) -> Vec<Minute> {
        let now = now_ms / 60_000;
        (now.saturating_sub(59)..=now)
            .map(|minute| {
                let slot = &self.slots[(minute % 60) as usize];
                let mut m = Minute {
                    at_ms: minute * 60_000,
                    ..Minute::default()
                };
                if slot.minute.load(Ordering::Acquire) == minute {
                    m.callbacks = slot.callbacks.load(Ordering::Relaxed);
                    m.sent = slot.sent.load(Ordering::Relaxed);
                    m.failed = slot.failed.load(Ordering::Relaxed);
                }
                m
            })
            .collect()
    }
}

#[cfg(test)]
mod activity_tests {
    use super::*;

    #[test]
    fn counts_per_minute_and_forgets_an_hour_later() {
        let a = Activity::default();
        let t0 = 1_000 * 60_000;
        a.add(Happened::Callback, t0);
        a.add(Happened::Callback, t0 + 59_999);
        a.add(Happened::Sent, t0 + 60_000);
        a.add(Happened::Failed, t0 + 60_000);
        let hour = a.last_hour(t0 + 60_000);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour[58].callbacks, 2);
        assert_eq!((hour[59].sent, hour[59].failed), (1, 1));
        assert_eq!(hour[59].at_ms, t0 + 60_000);
        // An hour on, minute t0's slot is reused and starts from zero.
        a.add(Happened::Callback, t0 + 3_600_000);
        let later = a.last_hour(t0 + 3_600_000);
        assert_eq!(later[59].callbacks, 1);
        assert_eq!(later.iter().map(|m| m.callbacks).sum::<u64>(), 1);
        // Minute t0 + 1 is still within the hour: its first slot.
        assert_eq!(later[0].sent, 1);
    }
}
