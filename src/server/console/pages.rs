//! The console's pages: maud templates, compiled into the binary and
//! escaping everything they are given.

use std::collections::HashMap;

use maud::{Markup, html as page};
use warp::http::StatusCode;
use warp::reply::Response;

use super::frame::{chart, layout, not_found, problem, store_down};
use super::{Ctx, html, see_other};
use crate::metrics::Minute;
use crate::server::query::{delivery_query, event_query, next_page, unsigned};
use crate::state::AppState;
use crate::store::{DeliveryInfo, EventInfo, Status};

/// A delivery's status, as a badge.
fn status(ctx: &Ctx, s: Status) -> Markup {
    let w = ctx.w;
    let text = match s {
        Status::Pending => w.pending,
        Status::Sent => w.sent,
        Status::Dead => w.dead,
    };
    page! { span class={"status " (s.as_str())} data-status=(s.as_str()) { (text) } }
}

/// The sign-in page; `next` is where to go once signed in.
pub(crate) fn login(ctx: &Ctx, next: &str, error: Option<&str>, code: StatusCode) -> Response {
    let w = ctx.w;
    html(
        code,
        layout(
            ctx,
            w.sign_in,
            page! {
                p { (w.sign_in_hint) }
                @if let Some(e) = error { p.problem #sign-in-error role="alert" { (e) } }
                form.login method="post" action="/login" {
                    input type="hidden" name="csrf" value=(ctx.csrf);
                    input type="hidden" name="next" value=(next);
                    label { (w.admin_token) " "
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    }
                    button #sign-in type="submit" { (w.sign_in) }
                }
            },
        ),
    )
}

/// The GET pages.
pub(crate) async fn get(state: &AppState, ctx: &Ctx<'_>) -> Response {
    match ctx.path {
        "/" => overview(state, ctx).await,
        "/events" => events(state, ctx).await,
        "/deliveries" => deliveries(state, ctx).await,
        "/rules" => rules(state, ctx).await,
        "/moderation" => super::moderation::page(state, ctx).await,
        p => {
            if let Some(id) = p.strip_prefix("/events/") {
                return event(state, ctx, id).await;
            }
            if let Some(id) = p.strip_prefix("/deliveries/")
                && let Ok(id) = id.parse::<i64>()
            {
                return delivery(state, ctx, id).await;
            }
            not_found(ctx)
        }
    }
}

/// The POSTs: the retry buttons.
pub(crate) async fn post(state: &AppState, ctx: &Ctx<'_>) -> Response {
    let now = crate::now_ms();
    if ctx.path == "/deliveries/retry-dead" {
        return match state.store.retry(None, now).await {
            Ok(n) => {
                if n > 0 {
                    state.wake.notify_one();
                }
                see_other(&format!("/deliveries?status=dead&requeued={n}"))
            }
            Err(e) => store_down(ctx, e),
        };
    }
    if let Some(id) = ctx
        .path
        .strip_prefix("/deliveries/")
        .and_then(|p| p.strip_suffix("/retry"))
        .and_then(|id| id.parse::<i64>().ok())
    {
        return match state.store.retry(Some(vec![id]), now).await {
            Ok(n) => {
                if n > 0 {
                    state.wake.notify_one();
                }
                see_other(&format!("/deliveries/{id}?requeued={n}"))
            }
            Err(e) => store_down(ctx, e),
        };
    }
    not_found(ctx)
}

fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

async fn overview(state: &AppState, ctx: &Ctx<'_>) -> Response {
    let w = ctx.w;
    let counts = match state.store.counts().await {
        Ok(c) => c,
        Err(e) => return store_down(ctx, e),
    };
    let replicas = state.store.replicas().await.ok().flatten();
    let reload = state.reload_status.lock().map(|r| r.clone()).ok();
    let now = crate::now_ms();
    let hour = state.activity.last_hour(now);
    let body = page! {
        section.cards {
            div.card #queue-depth { span.label { (w.queue_depth) } span.value { (counts.pending) } }
            a.card.dead.some[counts.dead > 0] href="/deliveries?status=dead" #dead-count {
                span.label { (w.dead) } span.value { (counts.dead) }
            }
            div.card { span.label { (w.digests_open) } span.value { (counts.digests_open) } }
            div.card {
                span.label { (w.callbacks_since_start) }
                span.value { (state.accepted.load(std::sync::atomic::Ordering::Relaxed)) }
            }
        }
        section.charts {
            (chart(ctx, w.chart_callbacks, &hour, "callbacks", |m: &Minute| m.at_ms, |m| [m.callbacks, 0]))
            (chart(ctx, w.chart_deliveries, &hour, "deliveries", |m: &Minute| m.at_ms, |m| [m.sent, m.failed]))
            p.note {
                span.key.sent {} " " (w.sent) " · "
                span.key.failed {} " " (w.failed) " — " (w.chart_note)
            }
        }
        section {
            h2 { (w.last_reload) }
            @if let Some(r) = reload {
                p #last-reload {
                    (ctx.time(r.at * 1000)) ": "
                    @if r.ok { span.ok { (w.reload_ok) } } @else { span.bad { (w.reload_failed) } }
                }
                @if !r.errors.is_empty() {
                    ul.problems { @for e in &r.errors { li { code { (e) } } } }
                }
            }
        }
        section {
            h2 { (w.store) }
            p {
                (state.store.kind()) ", "
                @if state.store.is_writable() { span.ok { (w.writable) } } @else { span.bad { (w.not_writable) } }
                " · " (w.version) " " (env!("CARGO_PKG_VERSION"))
                " · " (w.uptime) " " (uptime(state.started.elapsed().as_secs()))
            }
        }
        @if let Some(replicas) = replicas {
            section {
                h2 { (w.replicas) " (" (replicas.len()) ")" }
                table #replicas {
                    thead { tr { th { (w.replica) } th { (w.host) } th { (w.version) } th { (w.started) } th { (w.last_seen) } } }
                    tbody {
                        @for r in &replicas {
                            tr { td { code { (r.id) } } td { (r.host) } td { (r.version) } td { (ctx.time(r.started_at)) } td { (ctx.time(r.last_seen)) } }
                        }
                    }
                }
            }
        }
    };
    html(StatusCode::OK, layout(ctx, w.overview, body))
}

fn field(query: &HashMap<String, String>, name: &str) -> String {
    query.get(name).cloned().unwrap_or_default()
}

async fn events(state: &AppState, ctx: &Ctx<'_>) -> Response {
    let w = ctx.w;
    let q = ctx.query;
    let (list, bad, code) = match event_query(q) {
        Ok(eq) => {
            let limit = eq.limit;
            match state.store.query_events(eq).await {
                Ok(l) => {
                    let next = next_page(&l, limit, |e| format!("{}:{}", e.received_at, e.id));
                    ((l, next), None, StatusCode::OK)
                }
                Err(e) => return store_down(ctx, e),
            }
        }
        Err(bad) => (
            (Vec::new(), None),
            Some(bad.say(w)),
            StatusCode::BAD_REQUEST,
        ),
    };
    let (list, next) = list;
    let body = page! {
        form.filters method="get" action="/events" {
            label { (w.event) " " input name="event" value=(field(q, "event")) placeholder=(w.event_hint); }
            label { (w.user) " " input name="user" value=(field(q, "user")); }
            label { (w.rule) " " input name="rule" value=(field(q, "rule")) list="rule-names"; }
            label { (w.since) " " input name="since" value=(field(q, "since")) placeholder=(w.time_hint); }
            label { (w.until) " " input name="until" value=(field(q, "until")) placeholder=(w.time_hint); }
            datalist #rule-names {
                @for r in &state.snapshot.load().rules.rules { option value=(r.name) {} }
            }
            button #apply type="submit" { (w.filter) }
            " " a href="/events" { (w.clear) }
        }
        @if let Some(b) = bad { (problem(w.bad_filter, b)) }
        @if list.is_empty() {
            @if bad.is_none() { p.empty { (w.no_events) } }
        } @else {
            table #events {
                thead { tr { th { (w.received) } th { (w.event) } th { (w.from_to) } th { (w.matched_rules) } th { (w.deliveries) } } }
                tbody {
                    @for e in &list {
                        @let (from, to) = crate::callback::users(&e.callback);
                        tr.event data-event=(e.event) {
                            td { a href={"/events/" (e.id)} { (ctx.time(e.received_at)) } }
                            td { code { (e.event) } }
                            td { (from) " → " (to) }
                            td { (e.rules.join(", ")) }
                            td { @for d in &e.deliveries {
                                a href={"/deliveries/" (d.id)} title=(d.action) { (status(ctx, d.status)) } " "
                            } }
                        }
                    }
                }
            }
        }
        nav.pages {
            @if q.get("before").is_some_and(|b| !b.is_empty()) { a #newest href=(ctx.link(&[("before", None)])) { (w.newest) } " " }
            @if let Some(n) = &next { a #older href=(ctx.link(&[("before", Some(n))])) { (w.older) } }
        }
    };
    html(code, layout(ctx, w.events, body))
}

fn deliveries_table(ctx: &Ctx, list: &[DeliveryInfo]) -> Markup {
    let w = ctx.w;
    page! {
        table #deliveries {
            thead { tr { th { (w.id) } th { (w.created) } th { (w.event) } th { (w.action) } th { (w.rule) } th { (w.status) } th { (w.attempts) } th { (w.last_error) } } }
            tbody {
                @for d in list {
                    tr.delivery {
                        td { a href={"/deliveries/" (d.id)} { (d.id) } }
                        td { (ctx.time(d.created_at)) }
                        td { a href={"/events/" (d.event_id)} { code { (d.event) } } }
                        td { (d.action) }
                        td { (d.rule) }
                        td { (status(ctx, d.status)) }
                        td { (d.attempts) }
                        td.error { @if let Some(e) = &d.last_error { (shorten(e, 160)) } }
                    }
                }
            }
        }
    }
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

fn requeued_notice(ctx: &Ctx) -> Option<String> {
    let n = ctx.query.get("requeued")?.parse::<u64>().ok()?;
    Some(if n == 0 {
        ctx.w.not_dead.to_string()
    } else {
        ctx.w.requeued.replace("{n}", &n.to_string())
    })
}

async fn deliveries(state: &AppState, ctx: &Ctx<'_>) -> Response {
    let w = ctx.w;
    let q = ctx.query;
    let counts = match state.store.counts().await {
        Ok(c) => c,
        Err(e) => return store_down(ctx, e),
    };
    let (list, next, bad, code) = match delivery_query(q) {
        Ok(dq) => {
            let limit = dq.limit;
            match state.store.query_deliveries(dq).await {
                Ok(l) => {
                    let next = next_page(&l, limit, |d| d.id);
                    (l, next, None, StatusCode::OK)
                }
                Err(e) => return store_down(ctx, e),
            }
        }
        Err(bad) => (Vec::new(), None, Some(bad.say(w)), StatusCode::BAD_REQUEST),
    };
    let chosen = field(q, "status");
    let snapshot = state.snapshot.load();
    let body = page! {
        @if let Some(n) = requeued_notice(ctx) { p.notice #requeued role="status" { (n) } }
        form.filters method="get" action="/deliveries" {
            label { (w.status) " "
                select name="status" {
                    option value="" selected[chosen.is_empty()] { (w.any) }
                    option value="pending" selected[chosen == "pending"] { (w.pending) }
                    option value="sent" selected[chosen == "sent"] { (w.sent) }
                    option value="dead" selected[chosen == "dead"] { (w.dead) }
                }
            }
            label { (w.action) " " input name="action" value=(field(q, "action")) list="action-names"; }
            datalist #action-names {
                @for a in &snapshot.rules.actions { option value=(a.name) {} }
            }
            button #apply type="submit" { (w.filter) }
            " " a href="/deliveries" { (w.clear) }
        }
        @if counts.dead > 0 {
            form.inline method="post" action="/deliveries/retry-dead" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                button #retry-all-dead type="submit" { (w.retry_all_dead) " (" (counts.dead) ")" }
            }
        }
        @if let Some(b) = bad { (problem(w.bad_filter, b)) }
        @if list.is_empty() {
            @if bad.is_none() { p.empty { (w.no_deliveries) } }
        } @else {
            (deliveries_table(ctx, &list))
        }
        nav.pages {
            @if q.get("before").is_some_and(|b| !b.is_empty()) { a #newest href=(ctx.link(&[("before", None)])) { (w.newest) } " " }
            @if let Some(n) = next { a #older href=(ctx.link(&[("before", Some(&n.to_string()))])) { (w.older) } }
        }
    };
    html(code, layout(ctx, w.deliveries, body))
}

async fn event(state: &AppState, ctx: &Ctx<'_>, id: &str) -> Response {
    let w = ctx.w;
    let e: EventInfo = match state.store.event(id.to_string()).await {
        Ok(Some(e)) => unsigned(e),
        Ok(None) => return not_found(ctx),
        Err(e) => return store_down(ctx, e),
    };
    let (from, to) = crate::callback::users(&e.callback);
    let pretty = serde_json::to_string_pretty(&e.callback).unwrap_or_default();
    let body = page! {
        dl.facts {
            dt { (w.id) } dd { code #event-id { (e.id) } }
            dt { (w.event) } dd { code #event-name { (e.event) } }
            dt { (w.received) } dd { (ctx.time(e.received_at)) }
            dt { (w.from_to) } dd { (from) " → " (to) }
            dt { (w.matched_rules) } dd #event-rules {
                @if e.rules.is_empty() { (w.none) }
                @for r in &e.rules { a href={"/events?rule=" (r)} { (r) } " " }
            }
        }
        h2 { (w.deliveries) }
        @if e.deliveries.is_empty() { p.empty { (w.none) } } @else {
            table #event-deliveries {
                thead { tr { th { (w.id) } th { (w.action) } th { (w.rule) } th { (w.status) } th { (w.attempts) } } }
                tbody {
                    @for d in &e.deliveries {
                        tr.delivery {
                            td { a href={"/deliveries/" (d.id)} { (d.id) } }
                            td { (d.action) } td { (d.rule) } td { (status(ctx, d.status)) } td { (d.attempts) }
                        }
                    }
                }
            }
        }
        h2 { (w.callback_as_received) }
        pre #callback { code { (pretty) } }
    };
    html(
        StatusCode::OK,
        layout(ctx, &format!("{} {}", w.event, e.event), body),
    )
}

async fn delivery(state: &AppState, ctx: &Ctx<'_>, id: i64) -> Response {
    let w = ctx.w;
    let d = match state.store.delivery(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(ctx),
        Err(e) => return store_down(ctx, e),
    };
    let info = &d.delivery;
    let outcome = |o: &str| match o {
        "sent" => w.sent,
        "dead" => w.dead,
        _ => w.outcome_retry,
    };
    let body = page! {
        @if let Some(n) = requeued_notice(ctx) { p.notice #requeued role="status" { (n) } }
        dl.facts {
            dt { (w.status) } dd #delivery-status { (status(ctx, info.status)) }
            dt { (w.action) } dd { (info.action) }
            dt { (w.rule) } dd { (info.rule) }
            dt { (w.event) } dd { a href={"/events/" (info.event_id)} { code { (info.event) } } }
            dt { (w.created) } dd { (ctx.time(info.created_at)) }
            @if let Some(at) = info.next_attempt_at { dt { (w.next_attempt) } dd { (ctx.time(at)) } }
            @if let Some(e) = &info.last_error { dt { (w.last_error) } dd.error { (e) } }
        }
        @if info.status == Status::Dead {
            form.inline method="post" action={"/deliveries/" (info.id) "/retry"} {
                input type="hidden" name="csrf" value=(ctx.csrf);
                button #retry type="submit" { (w.retry) }
            }
        }
        h2 { (w.attempt_timeline) }
        @if d.attempts_made.is_empty() { p.empty { (w.no_attempts) } } @else {
            ol.timeline #attempts {
                @for a in &d.attempts_made {
                    li class={"attempt " (a.outcome)} data-outcome=(a.outcome) {
                        span.n { "#" (a.n) }
                        " " time { (ctx.time(a.started_at)) }
                        " · " span.duration { (a.duration_ms) " ms" }
                        " · " span.outcome { (outcome(&a.outcome)) }
                        @if let Some(c) = a.code { " · " span.code title=(w.code) { (c) } }
                        @if let Some(e) = &a.error { div.error { (e) } }
                    }
                }
            }
        }
    };
    html(
        StatusCode::OK,
        layout(ctx, &format!("{} {}", w.delivery, info.id), body),
    )
}

async fn rules(state: &AppState, ctx: &Ctx<'_>) -> Response {
    let w = ctx.w;
    let groups = match state.store.list_groups(crate::now_ms()).await {
        Ok(g) => g,
        Err(e) => return store_down(ctx, e),
    };
    let snapshot = state.snapshot.load_full();
    let set = &snapshot.rules;
    let body = page! {
        table #rules {
            thead { tr { th { (w.rule) } th { (w.kind) } th { (w.action) } th { (w.matches) } th { (w.file) } } }
            tbody {
                @for r in &set.rules {
                    tr.rule data-rule=(r.name) {
                        td {
                            a href={"/events?rule=" (r.name)} { strong { (r.name) } }
                            @if let Some(d) = &r.description { br; small { (d) } }
                            @if r.stop { br; small { (w.stops) } }
                        }
                        td { @match &r.aggregate {
                            None => (w.kind_each),
                            Some(crate::rules::aggregate::Aggregation::Digest { window, .. }) =>
                                { (w.kind_digest) " " (humantime::format_duration(*window)) },
                            Some(crate::rules::aggregate::Aggregation::Threshold { count, within, .. }) =>
                                { (w.kind_threshold) " " (count) " / " (humantime::format_duration(*within)) },
                        } }
                        td { @for a in &r.actions {
                            @let a = &set.actions[*a];
                            span.action { (a.name) " (" (a.kind.type_name()) ")" @if !a.enabled { " " em { (w.disabled) } } } br;
                        } }
                        td.count { (state.metrics.match_count(&r.name)) }
                        td { code { (r.file) } }
                    }
                }
            }
        }
        h2 { (w.open_groups) }
        @if groups.is_empty() { p.empty { (w.no_open_groups) } } @else {
            table #groups {
                thead { tr { th { (w.rule) } th { (w.kind) } th { (w.group) } th { (w.count) } th { (w.due) " / " (w.cooldown_until) } } }
                tbody {
                    @for g in &groups {
                        tr {
                            td { (g.rule) }
                            td { @match g.kind {
                                crate::store::AggregateKind::Digest => (w.kind_digest),
                                crate::store::AggregateKind::Threshold => (w.kind_threshold),
                            } }
                            td { code { (g.group) } }
                            td { (g.count) }
                            td {
                                @if let Some(at) = g.due_at { (ctx.time(at)) }
                                @if let Some(at) = g.cooldown_until { (ctx.time(at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    html(StatusCode::OK, layout(ctx, w.rules, body))
}
