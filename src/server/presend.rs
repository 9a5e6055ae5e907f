//! `POST {presend.path}` on the callback listener: the answer to Easemob's
//! pre-send callback (SPEC §16), and the queue that records verdicts.
//!
//! The answer's path reads the body (bounded in size and in time),
//! verifies it, and evaluates the moderation rules of the snapshot it
//! started with; nothing on it waits for the store. Verdicts to record are
//! handed to a bounded queue; one task takes them into the store's
//! ordinary event path, so a slow or stopped store costs dropped records
//! (counted), never a late answer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::callback::{ReadError, read_limited, ready};
use super::{error_reply, raw_json_reply};
use crate::callback::{Callback, PRESEND_PREFIX, ParseError};
use crate::config::{OnError, PresendSettings};
use crate::moderation::message::Message;
use crate::moderation::{Counting, PASS_ANSWER, Record, Verdict, reject_answer, verdict_name};
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;
use crate::state::AppState;

/// Answer one pre-send request.
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
    let arrived = Instant::now();
    let presend = snapshot
        .settings
        .presend
        .as_ref()
        .expect("routed here only with presend");
    let m = &state.metrics.presend;
    if method != Method::POST {
        return super::use_post();
    }
    let (verdict, response) = answer(&state, &snapshot, presend, arrived, length, body).await;
    m.count(verdict);
    m.duration.observe(arrived.elapsed().as_secs_f64());
    response
}

/// The answer, and the `verdict` label it is counted under.
async fn answer<S, B>(
    state: &AppState,
    snapshot: &Arc<Snapshot>,
    presend: &PresendSettings,
    arrived: Instant,
    length: Option<u64>,
    body: S,
) -> (&'static str, Response)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let settings = &snapshot.settings;
    let m = &state.metrics.presend;
    let too_large = || {
        (
            "too_large",
            error_reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        )
    };
    if length.is_some_and(|l| l > settings.max_body) {
        return too_large();
    }
    // The whole budget is the most the body may take to arrive: an answer
    // after it is worth nothing to Easemob.
    let capacity = length.unwrap_or(0) as usize;
    let read = tokio::time::timeout(
        presend.budget,
        read_limited(body, settings.max_body, capacity),
    );
    let body = match read.await {
        Err(_) => {
            m.over_budget.inc();
            tracing::warn!("pre-send request body not received within the budget");
            return ("error", on_error(presend.on_error));
        }
        Ok(Err(ReadError::TooLarge)) => return too_large(),
        Ok(Err(ReadError::Io)) => {
            return (
                "bad_request",
                error_reply(StatusCode::BAD_REQUEST, "could not read body"),
            );
        }
        Ok(Ok(b)) => b,
    };
    // Checked whole: a body with an invalid escape anywhere in it is
    // refused, not evaluated without the part that would not parse. The
    // message and the callback's fields are read from the text in one
    // pass; nothing on the way to the answer builds the body's `Value`.
    let parsed = std::str::from_utf8(&body)
        .map_err(|_| ParseError::Malformed)
        .and_then(|text| Message::read_request(&Arc::from(text)));
    let (message, cb) = match parsed {
        Ok(read) => read,
        Err(e) => {
            return (
                "bad_request",
                error_reply(StatusCode::BAD_REQUEST, &e.to_string()),
            );
        }
    };
    let now = crate::now_ms();
    if let Err(e) = crate::verify::check(&cb, &settings.secrets, settings.max_event_age, now) {
        tracing::warn!(result = "unauthorized", "pre-send request refused");
        return (
            "unauthorized",
            error_reply(StatusCode::UNAUTHORIZED, &e.to_string()),
        );
    }
    // A panic in evaluation is a bug; the sender must still get an answer.
    let moderation = &snapshot.moderation;
    let evaluated = std::panic::catch_unwind(AssertUnwindSafe(|| {
        moderation.evaluate_message(&cb, message, now, Counting::Count)
    }));
    let decision = match evaluated {
        Ok(d) => d,
        Err(_) => {
            tracing::error!(call_id = %cb.call_id, "moderation failed on a request; answered on_error");
            return ("error", on_error(presend.on_error));
        }
    };
    if arrived.elapsed() > presend.budget {
        m.over_budget.inc();
        tracing::warn!(call_id = %cb.call_id, "moderation ran out of budget; answered on_error");
        return ("error", on_error(presend.on_error));
    }
    for &i in &decision.fired {
        let rule = &moderation.rules[i];
        m.count_hit(&rule.metrics, &rule.name);
    }
    if decision.too_long {
        tracing::warn!(
            rule = decision.rule.as_deref().unwrap_or(""),
            "rewrite too long for an answer; rejected"
        );
    }
    let verdict = verdict_name(decision.verdict);
    let index = match decision.verdict {
        Verdict::Pass => 0,
        Verdict::Reject => 1,
        Verdict::Rewrite => 2,
    };
    m.activity.add(
        index,
        decision
            .rule
            .as_deref()
            .into_iter()
            .flat_map(|r| r.split(',')),
        now,
    );
    let response = raw_json_reply(StatusCode::OK, decision.answer.clone());
    let record = match decision.verdict {
        Verdict::Pass => presend.record_pass,
        Verdict::Reject => presend.record_reject,
        Verdict::Rewrite => presend.record_rewrite,
    };
    if record {
        let r = Record {
            callback: cb,
            decision,
            received_at_ms: now,
        };
        if state.presend_records.try_send(r).is_err() {
            m.records_dropped.inc();
        }
    }
    (verdict, response)
}

/// The answer when evaluation fails or is late.
fn on_error(on_error: OnError) -> Response {
    match on_error {
        OnError::Pass => raw_json_reply(StatusCode::OK, PASS_ANSWER),
        OnError::Reject => raw_json_reply(StatusCode::OK, reject_answer(None)),
    }
}

/// Records stored at once: a gathered batch goes to the store together, so
/// that the store's group commit takes it in one transaction.
const RECORDS_IN_FLIGHT: usize = 256;

/// How long the first record of a batch waits for others. Verdicts are
/// recorded for history and for ordinary rules, never acknowledged to
/// anyone, so a short wait costs nothing a user sees; under a flood of
/// rejects it turns one commit (and one fsync) per record or two into one
/// per hundred.
const GATHER: Duration = Duration::from_millis(50);

/// Take recorded verdicts into the store until shutdown, in batches
/// gathered for at most [`GATHER`], up to [`RECORDS_IN_FLIGHT`] at a time;
/// then what is already queued, for at most `grace`.
pub async fn record(
    state: Arc<AppState>,
    mut records: mpsc::Receiver<Record>,
    shutdown: Shutdown,
    grace: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(RECORDS_IN_FLIGHT));
    let mut batch = Vec::with_capacity(RECORDS_IN_FLIGHT);
    let mut stopping = false;
    while !stopping {
        let got = tokio::select! {
            n = records.recv_many(&mut batch, RECORDS_IN_FLIGHT) => n,
            () = shutdown.wait() => break,
        };
        if got == 0 {
            break;
        }
        let deadline = tokio::time::Instant::now() + GATHER;
        while batch.len() < RECORDS_IN_FLIGHT {
            let room = RECORDS_IN_FLIGHT - batch.len();
            tokio::select! {
                n = records.recv_many(&mut batch, room) => if n == 0 { break },
                () = tokio::time::sleep_until(deadline) => break,
                () = shutdown.wait() => {
                    stopping = true;
                    break;
                }
            }
        }
        for r in batch.drain(..) {
            hand_over(&state, &slots, r).await;
        }
    }
    let _ = tokio::time::timeout(grace, async {
        // Stored as concurrently as the rest, so that they share commits.
        while let Ok(r) = records.try_recv() {
            hand_over(&state, &slots, r).await;
        }
        // The records in flight finish too.
        let _ = slots.acquire_many(RECORDS_IN_FLIGHT as u32).await;
    })
    .await;
}

/// Store `r` in a task of its own once one of the `slots` is free.
async fn hand_over(state: &Arc<AppState>, slots: &Arc<tokio::sync::Semaphore>, r: Record) {
    // The semaphore is never closed: a slot always comes.
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        store(&state, r).await;
        drop(slot);
    });
}

/// Store one verdict as a `presend:*` event, through the ordinary rules.
async fn store(state: &AppState, r: Record) {
    let Record {
        callback: cb,
        decision,
        received_at_ms,
    } = r;
    let verdict = verdict_name(decision.verdict);
    let appkey = cb.signing_appkey().to_string();
    let mut body = cb.into_raw();
    if let Some(o) = body.as_object_mut() {
        // `shift_remove`: the other fields keep the order they came in.
        o.shift_remove("security");
        // Pre-send requests name their app only in `callId`; the record
        // names it, for the `easemob` actions its rules may fire.
        if !o.contains_key("appkey") && !appkey.is_empty() {
            o.insert("appkey".into(), Value::String(appkey));
        }
        o.insert(
            "event".into(),
            Value::String(format!("{PRESEND_PREFIX}{verdict}")),
        );
        o.insert("presend".into(), decision.record());
    }
    // Read back as the store will read it: the event is `presend:reject`,
    // … , apart from the post-send callback of the same message.
    let text: Arc<str> = body.to_string().into();
    drop(body);
    let cb = match Callback::parse_unsigned(text.clone()) {
        Ok(c) => c,
        Err(_) => {
            state.metrics.presend.records_dropped.inc();
            return;
        }
    };
    let snapshot = state.snapshot.load_full();
    let out = ready(state, snapshot, cb, text, received_at_ms)
        .finish(state)
        .await;
    if !out.status.is_success() {
        state.metrics.presend.records_dropped.inc();
    }
}
