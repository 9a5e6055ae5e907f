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
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::actions::{Action, Answer, Outcome, RateLimit, Senders};
use crate::callback::Text;
use crate::metrics::DeliveryOutcome;
use crate::now_ms;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use crate::store::{Attempt, Claimed, Lease, Record};
use crate::template;

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

/// Outcomes on their way to the store, each with the attempt made.
type Outcomes = mpsc::UnboundedSender<(Lease, Record, Attempt)>;

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
    ///
    /// Work comes from two places: `handoff`, deliveries the request path
    /// stored already leased (no query needed), and the store, for
    /// everything else that is due (retries, and what did not fit the
    /// hand-off). While both have work, the store gets at least half the
    /// free slots, so that neither starves the other.
    pub async fn run(
        self: Arc<Self>,
        mut handoff: mpsc::Receiver<Claimed>,
        wake: Arc<Notify>,
        shutdown: Shutdown,
    ) {
        let settings = &self.state.snapshot.load().settings;
        let concurrency = settings.delivery.concurrency;
        let grace = settings.delivery.shutdown_grace;
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let store = self.state.store.clone();
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_outcomes(
            self.state.clone(),
            outcomes_rx,
            wake.clone(),
        ));
        // Whether the store may hold due deliveries not claimed yet, and
        // else when to look again.
        let mut look = true;
        let mut next_look = tokio::time::Instant::now();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            self.state
                .heartbeat
                .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
            let free = slots.available_permits();
            if look && free > 0 {
                let ask = if handoff.is_empty() {
                    free
                } else {
                    free.div_ceil(2)
                };
                let snapshot = self.state.snapshot.load_full();
                match store
                    .claim_due(now_ms(), ask, snapshot.claim_lease_ms)
                    .await
                {
                    Ok(claimed) => {
                        if !claimed.is_empty() {
                            tracing::debug!(ids = ?claimed.iter().map(|c| c.id).collect::<Vec<_>>(), "claimed");
                        }
                        look = claimed.len() == ask;
                        self.start_all(&snapshot, claimed, &slots, &mut in_flight, &outcomes)
                            .await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot claim deliveries");
                        look = false;
                    }
                }
                if !look {
                    let wait = match store.next_due().await {
                        Ok(Some(t)) => Duration::from_millis(t.saturating_sub(now_ms())),
                        _ => Duration::from_secs(1),
                    };
                    next_look = tokio::time::Instant::now() + wait.min(Duration::from_secs(1));
                }
            }
            let mut ready = Vec::new();
            while ready.len() < slots.available_permits() {
                match handoff.try_recv() {
                    Ok(c) => ready.push(c),
                    Err(_) => break,
                }
            }
            if !ready.is_empty() {
                let snapshot = self.state.snapshot.load_full();
                self.start_all(&snapshot, ready, &slots, &mut in_flight, &outcomes)
                    .await;
            }
            if look && slots.available_permits() > 0 {
                continue;
            }
            let has_room = slots.available_permits() > 0;
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = wake.notified() => look = true,
                Some(c) = handoff.recv(), if has_room => {
                    let snapshot = self.state.snapshot.load_full();
                    self.start_all(&snapshot, vec![c], &slots, &mut in_flight, &outcomes)
                        .await;
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep_until(next_look), if !look => look = true,
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
                while in_flight.join_next().await.is_some() {}
            }
        }
        // Hand-offs not started go back to the queue, due now, so that
        // another replica (or the next start) sends them without waiting
        // for their leases to end. Outcomes already known are written now.
        // A callback still being answered may hold a slot it reserved
        // before the close and hand its deliveries over once its commit is
        // done: `recv` after `close` ends only when no slot is held, so
        // those come back to the queue too.
        handoff.close();
        let mut released = 0;
        let until = tokio::time::Instant::now() + grace.max(Duration::from_secs(1));
        while let Ok(Some(c)) = tokio::time::timeout_at(until, handoff.recv()).await {
            let _ = outcomes.send((c.lease(), Record::later(now_ms()), Attempt::default()));
            released += 1;
        }
        if released > 0 {
            tracing::info!(released, "deliveries not started are back in the queue");
        }
        drop(outcomes);
        if tokio::time::timeout(grace.max(Duration::from_secs(1)), recorder)
            .await
            .is_err()
        {
            tracing::warn!("outcomes not recorded in time; those deliveries will be tried again");
        }
    }

    /// Start an attempt for each claimed delivery (a slot each), except
    /// those a rate limit defers: they go back to the store, due later.
    async fn start_all(
        self: &Arc<Self>,
        snapshot: &crate::snapshot::Snapshot,
        claimed: Vec<Claimed>,
        slots: &Arc<Semaphore>,
        in_flight: &mut JoinSet<()>,
        outcomes: &Outcomes,
    ) {
        // Only this task takes slots, so none goes while admission waits.
        for (c, wait) in self.admit(snapshot, claimed).await {
            if let Some(wait) = wait {
                let deferred = Record::later(now_ms() + wait.as_millis() as u64);
                let _ = outcomes.send((c.lease(), deferred, Attempt::default()));
                continue;
            }
            let permit = slots
                .clone()
                .try_acquire_owned()
                .expect("started no more than the free slots");
            let me = self.clone();
            let outcomes = outcomes.clone();
            in_flight.spawn(async move {
                let lease = c.lease();
                let (record, attempt) = me.attempt(c).await;
                drop(permit);
                let _ = outcomes.send((lease, record, attempt));
            });
        }
    }

    /// Each delivery, with how long a rate limit defers it (`None`: it may
    /// go now). On a shared store the limits are the store's, so that they
    /// hold for every replica together: one request per rate-limited action
    /// in the batch takes what may go now. Elsewhere, or when the store
    /// cannot answer, this daemon's own limiter decides.
    async fn admit(
        &self,
        snapshot: &crate::snapshot::Snapshot,
        claimed: Vec<Claimed>,
    ) -> Vec<(Claimed, Option<Duration>)> {
        let mut asked: HashMap<Text, (RateLimit, u32)> = HashMap::new();
        for c in &claimed {
            if let Some(limit) = snapshot.rules.action(&c.action).and_then(|a| a.rate_limit) {
                asked.entry(c.action.clone()).or_insert((limit, 0)).1 += 1;
            }
        }
        let mut shared: HashMap<Text, (RateLimit, crate::store::RateGrant, u32)> = HashMap::new();
        for (action, (limit, n)) in asked {
            let interval = (limit.per / limit.count).as_micros() as u64;
            let now_us = crate::now_ms() * 1000;
            match self
                .state
                .store
                .take_rate(&action, n, interval, limit.count, now_us)
                .await
            {
                Ok(Some(grant)) => {
                    shared.insert(action, (limit, grant, 0));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(action = %action, error = %e, "the shared rate limit cannot be read; this daemon's own limiter decides");
                }
            }
        }
        let mut per_action: HashMap<Text, u32> = HashMap::new();
        claimed
            .into_iter()
            .map(|c| {
                let wait = match shared.get_mut(&c.action) {
                    Some((limit, grant, seen)) => {
                        let k = *seen;
                        *seen += 1;
                        (k >= grant.allowed).then(|| {
                            let spacing = limit.per / limit.count;
                            let first = Duration::from_micros(
                                grant.next_at_us.saturating_sub(crate::now_ms() * 1000),
                            );
                            first + spacing * (k - grant.allowed)
                        })
                    }
                    None => self.throttle(snapshot, &c, &mut per_action),
                };
                (c, wait)
            })
            .collect()
    }

    /// For a rate-limited action over its limit: how long this delivery must
    /// wait. Several deliveries of one action deferred in one round are
    /// spaced at the action's rate, so they come back in order and paced.
    fn throttle(
        &self,
        snapshot: &crate::snapshot::Snapshot,
        c: &Claimed,
        per_action: &mut HashMap<Text, u32>,
    ) -> Option<Duration> {
        let limit = snapshot.rules.action(&c.action)?.rate_limit?;
        let wait = self.limiters.check(&c.action, limit)?;
        let k = per_action.entry(c.action.clone()).or_insert(0);
        let spacing = limit.per / limit.count;
        let total = wait + spacing * *k;
        *k += 1;
        Some(total)
    }

    /// Make one attempt and decide what to record.
    async fn attempt(&self, c: Claimed) -> (Record, Attempt) {
        // The span goes with the future (`instrument`), never held entered
        // across an await: the task may resume on another thread.
        let span = delivery_span(c.id, &c.action, &c.rule, &c.event_id);
        self.attempt_in_span(c).instrument(span).await
    }

    async fn attempt_in_span(&self, c: Claimed) -> (Record, Attempt) {
        let snapshot = self.state.snapshot.load_full();
        let settings = &snapshot.settings;
        let d = &settings.delivery;
        let started = std::time::Instant::now();
        let started_at_ms = now_ms();
        let mut code = None;
        // `None` when the action is gone from the rule set: the delivery is
        // dead, and counted all the same.
        let action = snapshot.rules.action(&c.action);
        let (record, event) = match self.render_and_send(&snapshot, action, &c).await {
            Err((record, event)) => (record, event),
            Ok((answer, max_attempts, event)) => (
                decide(
                    {
                        code = answer.code;
                        answer.outcome
                    },
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
            Record::Sent => DeliveryOutcome::Sent,
            Record::Retry { .. } => DeliveryOutcome::Retried,
            Record::Dead { .. } => DeliveryOutcome::Dead,
        };
        let kept_by = action.map(|a| &a.metrics);
        m.count_delivery(kept_by, &c.action, outcome);
        m.count_attempt(kept_by, &c.action, outcome);
        if let Some((what, _)) = record.attempted() {
            let happened = match what {
                "sent" => crate::metrics::Happened::Sent,
                _ => crate::metrics::Happened::Failed,
            };
            self.state.activity.add(happened, now_ms());
        }
        m.observe_delivery(kept_by, &c.action, elapsed.as_secs_f64());
        if outcome == DeliveryOutcome::Sent
            && let Some(a) = &c.aggregate
            && a.kind == crate::store::AggregateKind::Digest
        {
            m.digest_deliveries
                .get_or_create(&crate::metrics::RuleLabels {
                    rule: a.rule.clone(),
                })
                .inc();
        }
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
        let attempt = Attempt {
            started_at_ms,
            duration_ms: ms,
            code,
        };
        (record, attempt)
    }

    /// Render with the current snapshot and send. `Err` carries an outcome
    /// decided before sending (missing action, render failure).
    async fn render_and_send(
        &self,
        snapshot: &crate::snapshot::Snapshot,
        action: Option<&Action>,
        c: &Claimed,
    ) -> Result<(Answer, u32, Text), (Record, Text)> {
        let settings = &snapshot.settings;
        let dead = |error: String, event: &str| (Record::Dead { error }, Text::new(event));
        let cb = c
            .callback
            .as_deref()
            .map_err(|e| dead(format!("stored event is unreadable: {e}"), ""))?;
        let Some(action) = action else {
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
        let max_attempts = action
            .max_attempts
            .unwrap_or(settings.delivery.max_attempts);
        if action.is_done_at_once() {
            return Ok((Outcome::Sent.into(), max_attempts, cb.event.clone()));
        }
        let received = chrono::DateTime::from_timestamp_millis(c.received_at_ms as i64)
            .unwrap_or_else(chrono::Utc::now);
        let mut data = template::Data::new(cb, received, action.reads, &c.rule, &action.name);
        if let Some(a) = &c.aggregate {
            data = data.with(a.kind.as_str(), crate::rules::aggregate::context(a));
        }
        let msg = action
            .render(&snapshot.rules.templates, &data)
            .map_err(|e| dead(format!("template: {e}"), &cb.event))?;
        // The context it may have built is not kept through the send, which
        // can wait on the destination for as long as the timeout.
        drop(data);
        let timeout = action.timeout.unwrap_or(settings.delivery.timeout);
        let outcome =
            match tokio::time::timeout(timeout, self.senders.send(&msg, settings, timeout)).await {
                Ok(o) => o,
                Err(_) => Outcome::Retry {
                    after: None,
                    error: format!("timed out after {}ms", timeout.as_millis()),
                }
                .into(),
            };
        Ok((outcome, max_attempts, cb.event.clone()))
    }
}

/// The span of every line logged about one delivery, whether the
/// dispatcher sends it or the request path finds it done at once.
pub fn delivery_span(id: i64, action: &str, rule: &str, event_id: &str) -> tracing::Span {
    tracing::info_span!("delivery", id, action = %action, rule = %rule, event_id = %event_id)
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

/// Write outcomes to the store in batches: every outcome that arrived while
/// the last batch was being written goes in the next one, so a busy
/// dispatcher costs the writer one command per batch, not one per delivery.
///
/// While the store refuses (a full disk), a batch is tried again for as long
/// as the leases hold, so the outcomes land as soon as space returns; past
/// that, the leases run out and those deliveries are tried again (at least
/// once). A batch with retries wakes the dispatcher, whose idea of the next
/// due delivery they may change.
async fn record_outcomes(
    state: Arc<AppState>,
    mut rx: mpsc::UnboundedReceiver<(Lease, Record, Attempt)>,
    wake: Arc<Notify>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let outcomes = std::mem::take(&mut batch);
        let retries = outcomes
            .iter()
            .any(|(_, r, _)| matches!(r, Record::Retry { .. }));
        let deadline =
            std::time::Instant::now() + Duration::from_millis(state.snapshot.load().lease_ms / 2);
        loop {
            match state.store.record_attempts(outcomes.clone()).await {
                Ok(stale) => {
                    for id in stale {
                        // Another claim owns the delivery now (this one ran
                        // past its lease): its outcome is the one that counts.
                        tracing::warn!(
                            delivery = id,
                            "outcome not recorded: the delivery's claim was taken over after its lease ran out"
                        );
                    }
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot record delivery outcomes yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, count = outcomes.len(), "cannot record delivery outcomes; they will be retried when their leases run out");
                    break;
                }
            }
        }
        if retries {
            wake.notify_one();
        }
    }
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
