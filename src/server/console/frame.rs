//! The frame every console page is drawn in, and the pieces pages share:
//! the layout with its navigation, problem notices, the pages of a store
//! that is down, of a page not found and of a refused request, and the
//! chart of the last hour.

use maud::{DOCTYPE, Markup, html as page};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Ctx, html};
use crate::store::StoreError;

/// The page frame: title, navigation, language switch.
pub(super) fn layout(ctx: &Ctx, title: &str, body: Markup) -> Markup {
    let w = ctx.w;
    let here = |p: &str| {
        if (p == "/" && ctx.path == "/") || (p != "/" && ctx.path.starts_with(p)) {
            "here"
        } else {
            ""
        }
    };
    page! {
        (DOCTYPE)
        html lang=(ctx.lang.html()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (w.console) }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    nav {
                        span.brand { "easehook" }
                        a class=(here("/")) href="/" { (w.overview) }
                        a class=(here("/events")) href="/events" { (w.events) }
                        a class=(here("/deliveries")) href="/deliveries" { (w.deliveries) }
                        a class=(here("/rules")) href="/rules" { (w.rules) }
                        a class=(here("/moderation")) href="/moderation" { (w.moderation) }
                    }
                    div.tools {
                        span.langs title=(w.language) {
                            a #lang-en lang="en" href=(ctx.lang_link(super::Lang::En)) { "English" }
                            " · "
                            a #lang-zh lang="zh-CN" href=(ctx.lang_link(super::Lang::Zh)) { "中文" }
                        }
                        @if ctx.session {
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(ctx.csrf);
                                button #sign-out type="submit" { (w.sign_out) }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub(super) fn problem(text: &str, detail: &str) -> Markup {
    page! { p.problem role="alert" { strong { (text) } ": " (detail) } }
}

pub(super) fn store_down(ctx: &Ctx, e: StoreError) -> Response {
    tracing::error!(error = %e, "console: store failed");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        layout(
            ctx,
            ctx.w.store_unavailable,
            problem(ctx.w.store_unavailable, &e.to_string()),
        ),
    )
}

pub(crate) fn not_found(ctx: &Ctx) -> Response {
    html(
        StatusCode::NOT_FOUND,
        layout(ctx, ctx.w.not_found, page! { p { (ctx.w.not_found_text) } }),
    )
}

pub(crate) fn refused(ctx: &Ctx) -> Response {
    html(
        StatusCode::FORBIDDEN,
        layout(ctx, ctx.w.refused, page! { p { (ctx.w.refused_text) } }),
    )
}

/// A bar chart of the last hour, drawn as SVG: one bar a minute, each of
/// up to two stacked parts (`part` gives them), with the minute's counts in
/// its tooltip.
pub(super) fn chart<T>(
    ctx: &Ctx,
    title: &str,
    hour: &[T],
    id: &str,
    at_ms: impl Fn(&T) -> u64,
    part: impl Fn(&T) -> [u64; 2],
) -> Markup {
    const W: u64 = 600;
    const H: u64 = 100;
    let bar = W / hour.len().max(1) as u64;
    let peak = hour
        .iter()
        .map(|m| part(m).iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let scale = |n: u64| (n * H).checked_div(peak).unwrap_or(0);
    page! {
        figure.chart id=(id) {
            figcaption { (title) " — " (ctx.w.peak) " " (peak) }
            svg viewBox={"0 0 " (W) " " (H + 14)} role="img" aria-label=(title) {
                line.axis x1="0" y1=(H) x2=(W) y2=(H) {}
                @for (i, m) in hour.iter().enumerate() {
                    @let [a, b] = part(m);
                    @let (ha, hb) = (scale(a), scale(b));
                    @let x = i as u64 * bar;
                    g {
                        title {
                            (ctx.time(at_ms(m))) ": " (a)
                            @if b > 0 { " + " (b) }
                        }
                        @if ha > 0 { rect.a x=(x) y=(H - ha) width=(bar - 1) height=(ha) {} }
                        @if hb > 0 { rect.b x=(x) y=(H - ha - hb) width=(bar - 1) height=(hb) {} }
                        // An invisible full-height bar: the tooltip shows
                        // on an empty minute too.
                        rect.hit x=(x) y="0" width=(bar) height=(H) {}
                    }
                }
                text x="0" y=(H + 12) { (ctx.w.hour_ago) }
                text x=(W) y=(H + 12) text-anchor="end" { (ctx.w.now) }
            }
        }
    }
}
