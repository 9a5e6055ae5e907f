//! The dispatcher: claims due deliveries from the store, renders them with
//! the current snapshot, sends them with at most `delivery.concurrency`
//! attempts in flight, and records each outcome.
//!
//! Retry is a policy here, not a loop in a transport: actions only classify
//! an attempt ([`Outcome`]); this module decides when to try again
//! (exponential backoff with jitter, `Retry-After`), when to give up, and
//! how to pace rate-limited actions (deferred, never dropped).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::actions::{Outcome, RateLimit, Senders};
use crate::callback::Callback;
use crate::server::AppState;
use crate::shutdown::Shutdown;
use crate::store::{Claimed, Record};
use crate::template;
use crate::verify::now_ms;

/// The delay before retry number `failures` (1 after the first failure):
/// uniformly random between `initial` and `min(max, initial · 2^(failures-1))`.
/// The jitter spreads retries of a burst so a recovering destination is not
/// hit by all of them at once.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let cap = initial
        .saturating_mul(1u32 << exp)
        .min(max)
        .max(initial.min(max));
    let low = initial.min(cap);
    let span = cap.saturating_sub(low).as_millis() as u64;
    low + Duration::from_millis(if span == 0 {
        0
    } else {
        fastrand::u64(0..=span)
    })
}

/// What the dispatcher decides after an attempt.
pub fn decide(
    outcome: Outcome,
    attempts_before: u32,
    max_attempts: u32,
    now: u64,
    initial: Duration,
    max: Duration,
) -> Record {
    let attempt = attempts_before + 1;
    match outcome {
        Outcome::Sent => Record::Sent,
        Outcome::Permanent(error) => Record::Dead { error },
        Outcome::Retry { error, .. } if attempt >= max_attempts => Record::Dead {
            error: format!("{error} (gave up after {attempt} attempts)"),
        },
        Outcome::Retry { after, error } => {
            let delay = after.unwrap_or_else(|| backoff(attempt, initial, max));
            Record::Retry {
                at_ms: now + delay.as_millis() as u64,
                error,
                counted: true,
            }
        }
    }
}

/// Rate limiters per action, rebuilt when an action's limit changes.
#[derive(Default)]
struct Limiters {
    map: Mutex<HashMap<String, (RateLimit, Arc<DefaultDirectRateLimiter>)>>,
}

impl Limiters {
    /// `None` when the action may go now, else how long it must wait.
    fn check(&self, action: &str, limit: RateLimit) -> Option<Duration> {
        let limiter = {
            let mut map = self.map.lock().ok()?;
            match map.get(action) {
                Some((l, r)) if *l == limit => r.clone(),
                _ => {
                    let burst = NonZeroU32::new(limit.count).unwrap_or(NonZeroU32::MIN);
                    let quota = Quota::with_period(limit.per / limit.count)?.allow_burst(burst);
                    let r = Arc::new(RateLimiter::direct(quota));
                    map.insert(action.to_string(), (limit, r.clone()));
                    r
                }
            }
        };
        limiter.check().err().map(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }
}

/// The dispatcher task.
pub struct Dispatcher {
    state: Arc<AppState>,
    senders: Senders,
    limiters: Limiters,
}

impl Dispatcher {
    pub fn new(state: Arc<AppState>, senders: Senders) -> Self {
        Self {
            state,
            senders,
            limiters: Limiters::default(),
        }
    }

    /// Run until shutdown; then give attempts in flight `shutdown_grace` and
    /// leave everything else queued.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, shutdown: Shutdown) {
        let settings = &self.state.snapshot.load().settings;
        let concurrency = settings.delivery.concurrency;
        let grace = settings.delivery.shutdown_grace;
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let store = self.state.store.clone();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            self.state
                .heartbeat
                .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
            let free = slots.available_permits();
            let mut claimed_all = false;
            if free > 0 {
                let snapshot = self.state.snapshot.load_full();
                let lease = lease_ms(&snapshot);
                match store.claim_due(now_ms(), free, lease).await {
                    Ok(claimed) => {
                        if !claimed.is_empty() {
                            tracing::debug!(ids = ?claimed.iter().map(|c| c.id).collect::<Vec<_>>(), "claimed");
                        }
                        claimed_all = claimed.len() == free;
                        let mut deferred = Vec::new();
                        let mut per_action: HashMap<String, u32> = HashMap::new();
                        for c in claimed {
                            if let Some(wait) = self.throttle(&snapshot, &c, &mut per_action) {
                                deferred.push((
                                    c.id,
                                    Record::Retry {
                                        at_ms: now_ms() + wait.as_millis() as u64,
                                        error: String::new(),
                                        counted: false,
                                    },
                                ));
                                continue;
                            }
                            let permit = slots
                                .clone()
                                .try_acquire_owned()
                                .expect("claimed no more than the free slots");
                            let me = self.clone();
                            in_flight.spawn(async move {
                                me.attempt(c).await;
                                drop(permit);
                            });
                        }
                        if !deferred.is_empty()
                            && let Err(e) = store.record(deferred).await
                        {
                            tracing::error!(error = %e, "cannot defer rate-limited deliveries");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot claim deliveries");
                    }
                }
            }
            if claimed_all && slots.available_permits() > 0 {
                continue;
            }
            let sleep = match store.next_due().await {
                Ok(Some(t)) => {
                    Duration::from_millis(t.saturating_sub(now_ms())).min(Duration::from_secs(1))
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = wake.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        if !in_flight.is_empty() {
            tracing::info!(
                in_flight = in_flight.len(),
                grace_ms = grace.as_millis() as u64,
                "waiting for deliveries in flight"
            );
            let drained = tokio::time::timeout(grace, async {
                while in_flight.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    left = in_flight.len(),
                    "shutdown grace over; unfinished deliveries stay queued"
                );
                in_flight.abort_all();
            }
        }
    }

    /// For a rate-limited action over its limit: how long this delivery must
    /// wait. Several deliveries of one action deferred in one round are
    /// spaced at the action's rate, so they come back in order and paced.
    fn throttle(
        &self,
        snapshot: &crate::snapshot::Snapshot,
        c: &Claimed,
        per_action: &mut HashMap<String, u32>,
    ) -> Option<Duration> {
        let limit = snapshot.rules.action(&c.action)?.rate_limit?;
        let wait = self.limiters.check(&c.action, limit)?;
        let k = per_action.entry(c.action.clone()).or_insert(0);
        let spacing = limit.per / limit.count;
        let total = wait + spacing * *k;
        *k += 1;
        Some(total)
    }

    async fn attempt(&self, c: Claimed) {
        // The span goes with the future (`instrument`), never held entered
        // across an await: the task may resume on another thread.
        let span = tracing::info_span!("delivery", id = c.id, action = %c.action, rule = %c.rule, event_id = %c.event_id);
        self.attempt_in_span(c).instrument(span).await
    }

    async fn attempt_in_span(&self, c: Claimed) {
        let snapshot = self.state.snapshot.load_full();
        let settings = &snapshot.settings;
        let d = &settings.delivery;
        let started = std::time::Instant::now();
        let (record, event) = match self.render_and_send(&snapshot, &c).await {
            Err((record, event)) => (record, event),
            Ok((outcome, max_attempts, event)) => (
                decide(
                    outcome,
                    c.attempts,
                    max_attempts,
                    now_ms(),
                    d.initial_backoff,
                    d.max_backoff,
                ),
                event,
            ),
        };
        let record = redact(record, &snapshot.rules.redactor);
        let elapsed = started.elapsed();
        let ms = elapsed.as_millis() as u64;
        let m = &self.state.metrics;
        let outcome = match &record {
            Record::Sent => "sent",
            Record::Retry { .. } => "retried",
            Record::Dead { .. } => "dead",
        };
        m.deliveries
            .get_or_create(&crate::metrics::DeliveryLabels {
                action: c.action.clone(),
                outcome: outcome.into(),
            })
            .inc();
        m.delivery_duration
            .get_or_create(&crate::metrics::ActionLabels {
                action: c.action.clone(),
            })
            .observe(elapsed.as_secs_f64());
        match &record {
            Record::Sent => {
                tracing::info!(event = %event, attempt = c.attempts + 1, ms, "delivered")
            }
            Record::Retry { at_ms, error, .. } => {
                tracing::warn!(event = %event, attempt = c.attempts + 1, retry_in_ms = at_ms.saturating_sub(now_ms()), error = %error, "delivery failed; will retry")
            }
            Record::Dead { error } => {
                tracing::error!(event = %event, attempt = c.attempts + 1, error = %error, "delivery dead")
            }
        }
        self.record(c.id, record).await;
    }

    /// Record an outcome. While the store refuses (a full disk), keep trying
    /// for as long as the lease holds, so the outcome lands as soon as space
    /// returns; past that, the lease runs out and the delivery is tried again
    /// (at least once).
    async fn record(&self, id: i64, record: Record) {
        let deadline = std::time::Instant::now()
            + Duration::from_millis(lease_ms(&self.state.snapshot.load()) / 2);
        loop {
            match self.state.store.record(vec![(id, record.clone())]).await {
                Ok(()) => return,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot record a delivery outcome yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record a delivery outcome; it will be retried when its lease runs out");
                    return;
                }
            }
        }
    }

    /// Render with the current snapshot and send. `Err` carries an outcome
    /// decided before sending (missing action, render failure).
    async fn render_and_send(
        &self,
        snapshot: &crate::snapshot::Snapshot,
        c: &Claimed,
    ) -> Result<(Outcome, u32, String), (Record, String)> {
        let settings = &snapshot.settings;
        let dead = |error: String, event: &str| (Record::Dead { error }, event.to_string());
        let cb = Callback::from_value(c.body.clone())
            .map_err(|e| dead(format!("stored event is unreadable: {e}"), ""))?;
        let Some(action) = snapshot.rules.action(&c.action) else {
            return Err(dead(
                format!("action {:?} no longer exists", c.action),
                &cb.event,
            ));
        };
        if !action.enabled {
            return Err(dead(
                format!("action {:?} is disabled", c.action),
                &cb.event,
            ));
        }
        let received = chrono::DateTime::from_timestamp_millis(c.received_at_ms as i64)
            .unwrap_or_else(chrono::Utc::now);
        let ctx = template::with_names(
            &template::base_context(&cb, received),
            &c.rule,
            &action.name,
        );
        let msg = action
            .render(&snapshot.rules.templates, &ctx)
            .map_err(|e| dead(format!("template: {e}"), &cb.event))?;
        let timeout = action.timeout.unwrap_or(settings.delivery.timeout);
        let max_attempts = action
            .max_attempts
            .unwrap_or(settings.delivery.max_attempts);
        let outcome =
            match tokio::time::timeout(timeout, self.senders.send(&msg, settings, timeout)).await {
                Ok(o) => o,
                Err(_) => Outcome::Retry {
                    after: None,
                    error: format!("timed out after {}ms", timeout.as_millis()),
                },
            };
        Ok((outcome, max_attempts, cb.event))
    }
}

fn redact(r: Record, redactor: &crate::diag::Redactor) -> Record {
    match r {
        Record::Retry {
            at_ms,
            error,
            counted,
        } => Record::Retry {
            at_ms,
            error: redactor.redact(&error),
            counted,
        },
        Record::Dead { error } => Record::Dead {
            error: redactor.redact(&error),
        },
        Record::Sent => Record::Sent,
    }
}

/// How long a claim holds a delivery: longer than any attempt can take, so
/// that only a dead process's claims ever run out.
fn lease_ms(snapshot: &crate::snapshot::Snapshot) -> u64 {
    let longest = snapshot
        .rules
        .actions
        .iter()
        .filter_map(|a| a.timeout)
        .chain(std::iter::once(snapshot.settings.delivery.timeout))
        .max()
        .unwrap_or_default();
    (longest + Duration::from_secs(60)).as_millis() as u64
}

/// Housekeeping: prune past `retention` every minute, and while the store is
/// failing, probe it every second so that readiness returns by itself.
pub async fn maintain(state: Arc<AppState>, shutdown: Shutdown) {
    let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !state.store.is_writable() {
            match state.store.probe().await {
                Ok(()) => tracing::info!("the store is writable again"),
                Err(e) => tracing::debug!(error = %e, "store still not writable"),
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            last_prune = std::time::Instant::now();
            let retention = state.snapshot.load().settings.retention.as_millis() as u64;
            match state.store.prune(now_ms(), retention).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "pruned past retention"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds() {
        let (i, m) = (Duration::from_secs(2), Duration::from_secs(600));
        for _ in 0..200 {
            assert_eq!(backoff(1, i, m), i);
            let b2 = backoff(2, i, m);
            assert!(b2 >= i && b2 <= Duration::from_secs(4), "{b2:?}");
            let b5 = backoff(5, i, m);
            assert!(b5 >= i && b5 <= Duration::from_secs(32), "{b5:?}");
            let b30 = backoff(30, i, m);
            assert!(b30 >= i && b30 <= m, "{b30:?}");
            assert!(backoff(u32::MAX, i, m) <= m);
        }
        // Jitter: not every delay is the same.
        let set: std::collections::HashSet<_> = (0..50).map(|_| backoff(8, i, m)).collect();
        assert!(set.len() > 10);
    }

    #[test]
    fn decisions_follow_the_outcome_and_the_attempt_budget() {
        let (i, m) = (Duration::from_secs(2), Duration::from_secs(600));
        assert_eq!(decide(Outcome::Sent, 0, 3, 0, i, m), Record::Sent);
        assert_eq!(
            decide(Outcome::Permanent("404".into()), 0, 3, 0, i, m),
            Record::Dead {
                error: "404".into()
            }
        );
        let retry = Outcome::Retry {
            after: None,
            error: "503".into(),
        };
        assert_eq!(
            decide(retry.clone(), 0, 3, 1000, i, m),
            Record::Retry {
                at_ms: 3000,
                error: "503".into(),
                counted: true
            }
        );
        assert!(
            matches!(decide(retry.clone(), 2, 3, 0, i, m), Record::Dead { error } if error.contains("gave up after 3 attempts"))
        );
        let after = Outcome::Retry {
            after: Some(Duration::from_secs(7)),
            error: "429".into(),
        };
        assert_eq!(
            decide(after, 0, 3, 1000, i, m),
            Record::Retry {
                at_ms: 8000,
                error: "429".into(),
                counted: true
            }
        );
    }

    #[test]
    fn limiter_allows_the_burst_then_asks_to_wait() {
        let l = Limiters::default();
        let limit = RateLimit {
            count: 3,
            per: Duration::from_secs(60),
        };
        assert!(l.check("a", limit).is_none());
        assert!(l.check("a", limit).is_none());
        assert!(l.check("a", limit).is_none());
        let wait = l.check("a", limit).expect("over the limit");
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(l.check("b", limit).is_none());
    }

    #[test]
    fn retry_after_from_http_dates_and_seconds() {
        assert_eq!(
            crate::actions::parse_retry_after("7"),
            Some(Duration::from_secs(7))
        );
        let future = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = crate::actions::parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(crate::actions::parse_retry_after("soon"), None);
    }
}
