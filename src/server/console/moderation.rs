//! `GET /moderation` (审核): what the pre-send endpoint decided. Verdicts
//! per minute over the last hour, in all and per rule, as this daemon
//! counted them; and the latest recorded rejects and rewrites, read from
//! the store, with the hits marked in the original text and the rewritten
//! text beside it.

use maud::{Markup, html as page};
use serde_json::Value;
use warp::http::StatusCode;
use warp::reply::Response;

use super::frame::{chart, layout, store_down};
use super::{Ctx, html};
use crate::metrics::presend::VerdictMinute;
use crate::state::AppState;
use crate::store::EventQuery;

/// Recorded verdicts listed.
const LATEST: usize = 50;

pub(super) async fn page(state: &AppState, ctx: &Ctx<'_>) -> Response {
    let w = ctx.w;
    let snapshot = state.snapshot.load_full();
    let now = crate::now_ms();
    let hour = state.metrics.presend.activity.last_hour(now);
    let query = EventQuery {
        since_ms: 0,
        until_ms: None,
        event: Some("presend".into()),
        limit: LATEST * 2,
        before: None,
        user: None,
        rule: None,
    };
    let recorded = match state.store.query_events(query).await {
        Ok(l) => l,
        Err(e) => return store_down(ctx, e),
    };
    let latest: Vec<_> = recorded
        .iter()
        .filter(|e| e.event != "presend:pass")
        .take(LATEST)
        .collect();
    let mut rules: Vec<&String> = hour.iter().flat_map(|m| m.by_rule.keys()).collect();
    rules.sort();
    rules.dedup();
    let total: [u64; 3] = hour.iter().fold([0; 3], |mut t, m| {
        for (a, b) in t.iter_mut().zip(m.all) {
            *a += b;
        }
        t
    });
    let body = page! {
        @if snapshot.settings.presend.is_none() {
            p.empty #presend-off { (w.moderation_off) }
        }
        section.cards {
            div.card #presend-requests {
                span.label { (w.requests_last_hour) }
                span.value { (total.iter().sum::<u64>()) }
            }
            div.card #presend-rejected { span.label { (w.rejected) } span.value { (total[1]) } }
            div.card #presend-rewritten { span.label { (w.rewritten) } span.value { (total[2]) } }
        }
        section.charts {
            (chart(ctx, w.chart_verdicts, &hour, "verdicts-chart", |m: &VerdictMinute| m.at_ms, |m| [m.all[1], m.all[2]]))
            p.note {
                span.key.a {} " " (w.rejected) " · "
                span.key.b {} " " (w.rewritten) " — " (w.verdicts_note)
            }
        }
        @if !rules.is_empty() {
            section.charts #by-rule {
                h2 { (w.by_rule) }
                @for (i, rule) in rules.iter().enumerate() {
                    @let of = |m: &VerdictMinute| m.by_rule.get(*rule).copied().unwrap_or_default();
                    // A pass rule's passes in the first part, beside rejects.
                    (chart(ctx, rule, &hour, &format!("rule-{i}"), |m: &VerdictMinute| m.at_ms, |m| {
                        let c = of(m);
                        [c[0] + c[1], c[2]]
                    }))
                }
            }
        }
        section {
            h2 { (w.latest_verdicts) }
            @if latest.is_empty() {
                p.empty #no-verdicts { (w.no_verdicts) }
            } @else {
                table #verdicts {
                    thead { tr {
                        th { (w.received) } th { (w.verdict) } th { (w.from_to) } th { (w.rule) }
                        th { (w.answer_code) } th { (w.original_text) } th { (w.rewritten_text) }
                    } }
                    tbody {
                        @for e in &latest {
                            @let p = &e.callback["presend"];
                            @let (from, to) = crate::callback::users(&e.callback);
                            tr.verdict data-verdict=(p["verdict"].as_str().unwrap_or("")) {
                                td { a href={"/events/" (e.id)} { (ctx.time(e.received_at)) } }
                                td { (verdict_word(ctx, p["verdict"].as_str().unwrap_or(""))) }
                                td { (from) " → " (to) }
                                td { (p["rule"].as_str().unwrap_or("")) }
                                td { @if let Some(c) = p["code"].as_str() { code { (c) } } }
                                td.text { (marked(p["text"].as_str().unwrap_or(""), &p["marks"])) }
                                td.text.rewritten { (p["rewritten"].as_str().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    };
    html(StatusCode::OK, layout(ctx, w.moderation, body))
}

fn verdict_word(ctx: &Ctx, v: &str) -> &'static str {
    match v {
        "reject" => ctx.w.rejected,
        "rewrite" => ctx.w.rewritten,
        _ => ctx.w.passed,
    }
}

/// `text` with the character spans of `marks` (`[[start, end], …]`) in
/// `<mark>`: the hits, where they are in the original.
fn marked(text: &str, marks: &Value) -> Markup {
    let spans: Vec<(usize, usize)> = marks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m.get(0)?.as_u64()? as usize, m.get(1)?.as_u64()? as usize)))
        .collect();
    let chars: Vec<char> = text.chars().collect();
    let mut parts: Vec<(bool, String)> = Vec::new();
    let mut at = 0;
    for (s, e) in spans {
        let (s, e) = (s.clamp(at, chars.len()), e.min(chars.len()));
        if s >= e {
            continue;
        }
        parts.push((false, chars[at..s].iter().collect()));
        parts.push((true, chars[s..e].iter().collect()));
        at = e;
    }
    parts.push((false, chars[at..].iter().collect()));
    page! {
        @for (hit, part) in &parts {
            @if *hit { mark { (part) } } @else { (part) }
        }
    }
}
