//! `POST {callback_path}`: one Easemob callback, taken into the store.
//!
//! The request path does the minimum and never waits on a destination:
//! read the body (bounded), parse, verify, match, store, answer. Every answer
//! is a JSON body under 200 bytes that never echoes a secret.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc::{self, OwnedPermit};
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{error_reply, raw_json_reply};
use crate::actions::Action;
use crate::callback::{Callback, Text};
use crate::metrics::DeliveryOutcome;
use crate::rules::{Rule, RuleSet};
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::store::{Accepted, Claimed, NewDelivery, NewEvent, StoreError};
use crate::verify;

/// Time allowed to receive the whole body once headers are in.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How one callback ended, for the log line.
pub(super) struct Outcome {
    pub(super) status: StatusCode,
    pub(super) result: &'static str,
    event: Text,
    /// The matching rules.
    rules: Matched,
    /// The bounded `event` label for metrics.
    event_label: &'static str,
    response: Response,
}

impl Outcome {
    fn error(status: StatusCode, result: &'static str, message: &str) -> Self {
        Self {
            status,
            result,
            event: Text::default(),
            rules: Matched::default(),
            event_label: "other",
            response: error_reply(status, message),
        }
    }

    /// The store could not take the event (or the task committing it died).
    fn unavailable() -> Self {
        Self::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "store unavailable",
        )
    }
}

/// Answer one request to `callback_path`.
pub(super) async fn handle<S, B>(
    state: Arc<AppState>,
    snapshot: Arc<Snapshot>,
    method: Method,
    length: Option<u64>,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    if method != Method::POST {
        return super::use_post();
    }
    let started = Instant::now();
    let accepted = match accept(&state, snapshot, length, body).await {
        Ok(accepted) => accepted,
        Err(refused) => return record(&state, refused, started),
    };
    // The commit, the hand-off and the bookkeeping run to their end even
    // when the caller hangs up mid-commit: with this future would go the
    // hand-off of deliveries the store has already recorded as claimed,
    // and the log line and counters of an event that was stored.
    RunToEnd::new(async move {
        let out = accepted.finish(&state).await;
        record(&state, out, started)
    })
    .await
}

/// A future that runs to its end even when its caller stops waiting for
/// it: dropped before it is done, it is spawned to finish on its own.
///
/// A task per callback would do the same, at the cost of spawning,
/// scheduling and joining one for every callback; this spawns only for
/// the rare caller that hangs up.
struct RunToEnd<F: Future + Send + 'static>(Option<Pin<Box<F>>>)
where
    F::Output: Send + 'static;

impl<F: Future + Send + 'static> RunToEnd<F>
where
    F::Output: Send + 'static,
{
    fn new(f: F) -> Self {
        Self(Some(Box::pin(f)))
    }
}

impl<F: Future + Send + 'static> Future for RunToEnd<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(f) = this.0.as_mut() else {
            // As an `async` block would, and only ever by a mistake here.
            panic!("RunToEnd polled after it finished");
        };
        let out = std::task::ready!(f.as_mut().poll(cx));
        this.0 = None;
        Poll::Ready(out)
    }
}

impl<F: Future + Send + 'static> Drop for RunToEnd<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        // Outside a runtime (it is being shut down) nothing can run it; the
        // store voids the claims of deliveries not handed over at the next
        // start, so they are still sent.
        if let Some(f) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(runtime.spawn(f));
        }
    }
}

/// Count and log how a callback ended; its answer.
fn record(state: &AppState, out: Outcome, started: Instant) -> Response {
    let elapsed = started.elapsed().as_secs_f64();
    let latency_ms = (elapsed * 1e6).round() / 1e3;
    let m = &state.metrics;
    m.callbacks
        .get_or_create(&crate::metrics::CallbackLabels {
            result: out.result,
            event: out.event_label,
        })
        .inc();
    m.callback_duration.observe(elapsed);
    let status = out.status.as_u16();
    if out.status.is_success() {
        tracing::info!(event = %out.event, result = out.result, status, rules = %out.rules, latency_ms, "callback");
    } else {
        tracing::warn!(event = %out.event, result = out.result, status, latency_ms, "callback refused");
    }
    out.response
}

/// A callback read, verified and matched, ready to be committed.
pub(super) struct Ready {
    new: NewEvent,
    window: u64,
    handoff: Option<Vec<OwnedPermit<Claimed>>>,
    callback: Arc<Callback>,
    /// The matching rules, for their counters and the log line.
    matched: Matched,
    event_label: &'static str,
}

/// The rules a callback matched: their indexes in the snapshot that matched
/// it. Their names are written out only if the log line is.
#[derive(Default)]
struct Matched {
    snapshot: Option<Arc<Snapshot>>,
    rules: Vec<usize>,
}

impl Matched {
    fn rules(&self) -> impl Iterator<Item = &Rule> {
        let all = self.snapshot.as_ref().map_or(&[][..], |s| &s.rules.rules);
        self.rules.iter().filter_map(|&i| all.get(i))
    }
}

/// The names, comma-separated.
impl std::fmt::Display for Matched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, rule) in self.rules().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&rule.name)?;
        }
        Ok(())
    }
}

/// Read, parse, verify and match a callback: what is left is to commit it,
/// or how it was refused.
async fn accept<S, B>(
    state: &AppState,
    snapshot: Arc<Snapshot>,
    length: Option<u64>,
    body: S,
) -> Result<Ready, Outcome>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let settings = &snapshot.settings;
    let limit = settings.max_body;
    // Refuse by the announced length before reading a single body byte.
    if let Some(len) = length
        && len > limit
    {
        return Err(Outcome::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body too large",
        ));
    }
    // Sized from the announced length (already known to be within the
    // limit), so the buffer is allocated once.
    let capacity = length.unwrap_or(0) as usize;
    // A body that came with its headers is read without arming a timer.
    let mut read = std::pin::pin!(read_limited(body, limit, capacity));
    let read = match futures_util::poll!(read.as_mut()) {
        Poll::Ready(read) => Ok(read),
        Poll::Pending => tokio::time::timeout(BODY_READ_TIMEOUT, read).await,
    };
    let body = match read {
        Err(_) => {
            return Err(Outcome::error(
                StatusCode::REQUEST_TIMEOUT,
                "bad_request",
                "body not received in time",
            ));
        }
        Ok(Err(ReadError::TooLarge)) => {
            return Err(Outcome::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body too large",
            ));
        }
        Ok(Err(ReadError::Io)) => {
            return Err(Outcome::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "could not read body",
            ));
        }
        Ok(Ok(b)) => b,
    };
    let cb = match Callback::parse(&body) {
        Ok(cb) => cb,
        Err(e) => {
            return Err(Outcome::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &e.to_string(),
            ));
        }
    };
    let now = crate::now_ms();
    if let Err(e) = verify::check(&cb, &settings.secrets, settings.max_event_age, now) {
        let mut o = Outcome::error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
        o.event_label = crate::metrics::event_label(Some(&cb));
        o.event = cb.event;
        return Err(o);
    }
    let body = cb.text();
    Ok(ready(state, snapshot, cb, body, now))
}

/// A verified callback (or a recorded pre-send verdict), matched against
/// the rules: what is left is to commit it. `body` is what is stored.
pub(super) fn ready(
    state: &AppState,
    snapshot: Arc<Snapshot>,
    cb: Callback,
    body: std::sync::Arc<str>,
    now: u64,
) -> Ready {
    let settings = &snapshot.settings;
    let rules = &snapshot.rules;
    let evaluation = rules.evaluate(&cb);
    // Shared with the deliveries handed to the dispatcher.
    let cb = Arc::new(cb);
    let deliveries: Vec<NewDelivery> = evaluation
        .deliveries
        .iter()
        .map(|p| {
            let action = &rules.actions[p.action];
            NewDelivery {
                action: Text::new(&action.name),
                rule: Text::new(&rules.rules[p.rule].name),
                done: action.is_done_at_once(),
            }
        })
        .collect();
    let rule_names: Vec<Text> = evaluation
        .rules
        .iter()
        .map(|&i| Text::new(&rules.rules[i].name))
        .collect();
    let event_label = crate::metrics::event_label(Some(&cb));
    // Room in the dispatcher's hand-off for every delivery of this event:
    // then they are stored already claimed and handed over in memory.
    // Without room they wait in the store for the dispatcher to claim them.
    let handoff = reserve(
        &state.handoff,
        deliveries.iter().filter(|d| !d.done).count(),
    );
    let id = uuid::Uuid::now_v7().to_string();
    let aggregates = if evaluation.aggregates.is_empty() {
        Vec::new()
    } else {
        rules.aggregates(&evaluation, &cb, &id)
    };
    let new = NewEvent {
        id,
        dedup_key: cb.dedup_key().to_string(),
        event: cb.event.clone(),
        received_at_ms: now,
        body,
        from_user: cb.from_user.clone(),
        to_user: cb.to_user.clone(),
        rules: rule_names,
        deliveries,
        lease_until: handoff.as_ref().map(|_| now + snapshot.lease_ms),
        aggregates,
    };
    let window = settings.dedup_window.as_millis() as u64;
    Ready {
        new,
        window,
        handoff,
        callback: cb,
        matched: Matched {
            rules: evaluation.rules,
            snapshot: Some(snapshot),
        },
        event_label,
    }
}

impl Ready {
    /// Commit, hand off, count: how the callback ended.
    pub(super) async fn finish(self, state: &AppState) -> Outcome {
        let event = self.callback.event.clone();
        let rules = self.matched.snapshot.as_ref().map(|s| &s.rules);
        let committed = commit(
            state,
            rules,
            self.new,
            self.window,
            self.handoff,
            self.callback,
        )
        .await;
        match committed {
            Ok(Accepted::New { id, .. }) => {
                state.accepted.fetch_add(1, Ordering::Relaxed);
                state
                    .activity
                    .add(crate::metrics::Happened::Callback, crate::now_ms());
                for rule in self.matched.rules() {
                    state.metrics.count_match(&rule.metrics, &rule.name);
                }
                Outcome {
                    status: StatusCode::OK,
                    result: "accepted",
                    event,
                    rules: self.matched,
                    event_label: self.event_label,
                    // The id is a UUID: nothing in it needs escaping.
                    response: raw_json_reply(
                        StatusCode::OK,
                        format!(r#"{{"ok":true,"id":"{id}"}}"#),
                    ),
                }
            }
            Ok(Accepted::Duplicate) => Outcome {
                status: StatusCode::OK,
                result: "duplicate",
                event,
                rules: self.matched,
                event_label: self.event_label,
                response: raw_json_reply(StatusCode::OK, r#"{"ok":true,"duplicate":true}"#),
            },
            Err(e) => {
                tracing::error!(error = %e, "store refused an event");
                let mut o = Outcome::unavailable();
                o.event = event;
                o
            }
        }
    }
}

/// A slot in the dispatcher's hand-off for each of `n` deliveries, or none
/// at all.
fn reserve(handoff: &mpsc::Sender<Claimed>, n: usize) -> Option<Vec<OwnedPermit<Claimed>>> {
    if n == 0 {
        return None;
    }
    // Dropped on the way out when one is missing: the slots are released.
    (0..n)
        .map(|_| handoff.clone().try_reserve_owned().ok())
        .collect()
}

/// Commit the event, then hand its deliveries to the dispatcher (when
/// `handoff` holds a slot for each) or wake it to claim them from the store.
async fn commit(
    state: &AppState,
    rules: Option<&RuleSet>,
    new: NewEvent,
    window: u64,
    handoff: Option<Vec<OwnedPermit<Claimed>>>,
    callback: Arc<Callback>,
) -> Result<Accepted, StoreError> {
    // The store takes `new`; the names are kept only for what happens here:
    // deliveries done at once, and those handed over.
    let waiting = new.deliveries.iter().any(|d| !d.done);
    let planned = if handoff.is_some() || new.deliveries.iter().any(|d| d.done) {
        new.deliveries.clone()
    } else {
        Vec::new()
    };
    let received_at_ms = new.received_at_ms;
    let lease_until = new.lease_until.unwrap_or_default();
    let accepted = state.store.accept(new, window).await?;
    let Accepted::New {
        id,
        deliveries,
        fired,
    } = &accepted
    else {
        return Ok(accepted);
    };
    for rule in fired {
        state.metrics.count_threshold_fired(rule);
    }
    // A firing's deliveries wait in the store, due now. (A digest's fall
    // due a window later; the dispatcher looks at the store at least once
    // a second.)
    if !fired.is_empty() {
        state.wake.notify_one();
    }
    let (done, to_send): (Vec<_>, Vec<_>) =
        deliveries.iter().zip(planned).partition(|(_, d)| d.done);
    for (&delivery, d) in done {
        let action = rules.and_then(|r| r.action(&d.action));
        done_at_once(state, action, delivery, id, &callback.event, d);
    }
    match handoff {
        Some(permits) => {
            let callback = Ok(callback);
            for (permit, (&delivery, d)) in permits.into_iter().zip(to_send) {
                permit.send(Claimed {
                    id: delivery,
                    event_id: id.clone(),
                    action: d.action,
                    rule: d.rule,
                    attempts: 0,
                    lease_until,
                    received_at_ms,
                    callback: callback.clone(),
                    aggregate: None,
                });
            }
        }
        None if waiting => state.wake.notify_one(),
        None => {}
    }
    Ok(accepted)
}

/// Count and log a delivery the store took as already done, as the
/// dispatcher does for each one it sends.
fn done_at_once(
    state: &AppState,
    action: Option<&Action>,
    id: i64,
    event_id: &str,
    event: &str,
    d: NewDelivery,
) {
    crate::dispatch::delivery_span(id, &d.action, &d.rule, event_id)
        .in_scope(|| tracing::info!(event = %event, attempt = 1, ms = 0, "delivered"));
    state
        .metrics
        .count_delivery(action.map(|a| &a.metrics), &d.action, DeliveryOutcome::Sent);
}

pub(super) enum ReadError {
    TooLarge,
    Io,
}

/// Read a body, giving up as soon as it exceeds `limit` bytes (chunked
/// bodies have no length to check up front).
pub(super) async fn read_limited<S, B>(
    mut body: S,
    limit: u64,
    capacity: usize,
) -> Result<BytesMut, ReadError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut out = BytesMut::with_capacity(capacity);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| ReadError::Io)?;
        if out.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        out.put(chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_future_its_caller_stops_waiting_for_still_runs_to_its_end() {
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let (finished, ended) = tokio::sync::oneshot::channel();
        let mut f = Box::pin(RunToEnd::new(async move {
            let _ = gate.await;
            let _ = finished.send("ended");
        }));
        // Started, then dropped by its caller halfway.
        assert!(futures_util::poll!(f.as_mut()).is_pending());
        drop(f);
        open.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert_eq!(ended.expect("it ran on").expect("it ended"), "ended");
        // Awaited to its end, it gives its output.
        assert_eq!(RunToEnd::new(async { 7 }).await, 7);
    }
}
