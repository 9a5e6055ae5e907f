//! The web console (SPEC §13), served by the admin listener at `/`.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | overview: queue, dead deliveries, a chart of the last hour, the last reload, replicas |
//! | `GET /events?event=&user=&rule=&since=&until=&before=` | events, newest first, a page at a time |
//! | `GET /events/{id}` | one event: the callback as received, its rules and deliveries |
//! | `GET /deliveries?status=&action=&before=` | deliveries, newest first, a page at a time |
//! | `GET /deliveries/{id}` | one delivery with every attempt |
//! | `POST /deliveries/{id}/retry`, `POST /deliveries/retry-dead` | put dead deliveries back in the queue |
//! | `GET /rules` | the rules in force, their matches, open digests and thresholds |
//! | `GET /moderation` | pre-send verdicts per minute over the last hour, per rule; the latest rejects and rewrites |
//! | `GET /login`, `POST /login`, `POST /logout` | the session, when `admin_token` is set |
//! | `GET /console.css` | the one stylesheet |
//!
//! Pages are rendered on the server ([`pages`], maud templates compiled
//! into the binary) and need no script: the chart is an SVG drawn here, and
//! the Content-Security-Policy allows no script at all, so that nothing a
//! callback carries can run in the page even if it were not escaped.
//!
//! **Access.** Without `admin_token` the console is open, like the API, to
//! whoever reaches the admin listener (loopback by default). With it, the
//! console asks for the token once and keeps a session: a random id in an
//! HttpOnly, SameSite=Strict cookie, never the token itself. A wrong token
//! is answered after a second, and wrong tokens are answered one at a time,
//! so guessing is slow however many are sent at once.
//!
//! **Forms.** The buttons that change something are POSTs, which another
//! site cannot make: the session cookie is SameSite=Strict, a POST whose
//! `Origin` (or `Sec-Fetch-Site`) names another site is refused, and every
//! form carries a token (the session's, or this process's when the console
//! is open) that a page of another origin cannot read.

mod frame;
pub mod i18n;
mod moderation;
mod pages;

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use subtle::ConstantTimeEq;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;

use crate::state::AppState;
use i18n::{Lang, Words};

/// The request body, read only by the handlers that take a form.
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// The longest form the console reads.
const FORM_MAX: usize = 16 * 1024;
/// How long a wrong token waits for its answer.
const WRONG_TOKEN_DELAY: Duration = Duration::from_secs(1);
const SESSION_COOKIE: &str = "easehook_session";
const LANG_COOKIE: &str = "easehook_lang";

/// What a page needs to know of the request it answers.
pub(crate) struct Ctx<'a> {
    pub lang: Lang,
    pub w: &'static Words,
    /// The path, and the query without `lang` (for the language links).
    pub path: &'a str,
    pub query: &'a HashMap<String, String>,
    /// The token every form carries.
    pub csrf: String,
    /// Signed in with a session (the console shows "sign out").
    pub session: bool,
    pub tz: chrono_tz::Tz,
}

impl Ctx<'_> {
    /// A link to this page with `changes` made to its query (a value of
    /// `None` removes its parameter). The language stays in its cookie and
    /// a notice is shown once, so `lang` and `requeued` are not carried on.
    pub fn link(&self, changes: &[(&str, Option<&str>)]) -> String {
        let mut q: Vec<(&str, &str)> = self
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| {
                *k != "lang" && *k != "requeued" && !changes.iter().any(|(c, _)| c == k)
            })
            .collect();
        q.extend(changes.iter().filter_map(|(k, v)| Some((*k, (*v)?))));
        q.sort();
        format!(
            "{}?{}",
            self.path,
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    }

    /// This page in the other language.
    pub fn lang_link(&self, lang: Lang) -> String {
        self.link(&[("lang", Some(lang.code()))])
    }

    /// A time in the configured zone.
    pub fn time(&self, ms: u64) -> String {
        use chrono::TimeZone;
        match self.tz.timestamp_millis_opt(ms as i64).single() {
            Some(t) => t.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
            None => ms.to_string(),
        }
    }
}

/// The value of the request's cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// The language: `?lang=` (kept in a cookie), the cookie, then the
/// browser's `Accept-Language`.
fn language(headers: &HeaderMap, query: &HashMap<String, String>) -> (Lang, bool) {
    if let Some(l) = query.get("lang").and_then(|l| Lang::parse(l)) {
        return (l, true);
    }
    if let Some(l) = cookie(headers, LANG_COOKIE).and_then(|l| Lang::parse(&l)) {
        return (l, false);
    }
    let accept = headers
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (Lang::from_accept(accept), false)
}

/// Whether a POST comes from a page of this console: its `Origin` names
/// this host, or (a browser that sends none) its `Sec-Fetch-Site` says
/// same-origin. A client that is no browser sends neither.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    match header("origin") {
        Some(origin) => {
            let host = header("host").unwrap_or("");
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            !host.is_empty() && authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
        }
        None => matches!(
            header("sec-fetch-site"),
            None | Some("same-origin" | "none")
        ),
    }
}

async fn read_form(mut body: Body) -> Option<HashMap<String, String>> {
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        if buf.len() + chunk.len() > FORM_MAX {
            return None;
        }
        buf.extend_from_slice(&chunk);
    }
    serde_urlencoded::from_bytes(&buf).ok()
}

/// An HTML page with the console's headers.
pub(crate) fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut r = Response::new(markup.into_string().into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // No script, no frame, nothing from another host: what a callback
    // carries cannot run here.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

/// A `303 See Other` to `to`.
fn see_other(to: &str) -> Response {
    let mut r = Response::new(Default::default());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert("location", v);
    }
    r
}

fn set_cookie(r: &mut Response, c: cookie::Cookie) {
    if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
        r.headers_mut().append("set-cookie", v);
    }
}

/// Where to go after signing in: a path of this console, never another
/// host (`//host`, `/\host`).
fn local_path(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n.clone(),
        _ => "/".into(),
    }
}

/// Answer a request for the console; `path` is no API path.
pub async fn handle(
    state: &AppState,
    method: Method,
    path: &str,
    headers: HeaderMap,
    query: HashMap<String, String>,
    body: Body,
) -> Response {
    if path == "/console.css" && matches!(method, Method::GET | Method::HEAD) {
        let mut r = Response::new(include_str!("console.css").into());
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("text/css"));
        r.headers_mut()
            .insert("cache-control", HeaderValue::from_static("max-age=3600"));
        return r;
    }
    let (lang, chosen) = language(&headers, &query);
    let snapshot = state.snapshot.load_full();
    let token = snapshot.settings.admin_token.as_ref().map(|t| t.expose());
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https");
    let session_id = cookie(&headers, SESSION_COOKIE);
    let csrf = match token {
        None => Some(state.sessions.open_token.clone()),
        Some(t) => session_id
            .as_deref()
            .and_then(|id| state.sessions.check(id, t)),
    };
    let mut ctx = Ctx {
        lang,
        w: lang.words(),
        path,
        query: &query,
        csrf: csrf.clone().unwrap_or_default(),
        session: token.is_some() && csrf.is_some(),
        tz: snapshot.settings.timezone,
    };
    let mut response = match (path, &method) {
        ("/login", &Method::GET) => match token {
            None => see_other("/"),
            Some(_) => {
                ctx.csrf = state.sessions.open_token.clone();
                let next = local_path(query.get("next"));
                pages::login(&ctx, &next, None, StatusCode::OK)
            }
        },
        ("/login", &Method::POST) => {
            ctx.csrf = state.sessions.open_token.clone();
            login(state, &ctx, token, &headers, body, secure).await
        }
        ("/logout", &Method::POST) => {
            if !post_allowed(&ctx, &headers, body).await {
                return frame::refused(&ctx);
            }
            if let Some(id) = &session_id {
                state.sessions.close(id);
            }
            let mut r = see_other(if token.is_some() { "/login" } else { "/" });
            set_cookie(
                &mut r,
                cookie::Cookie::build((SESSION_COOKIE, ""))
                    .path("/")
                    .http_only(true)
                    .same_site(cookie::SameSite::Strict)
                    .max_age(cookie::time::Duration::ZERO)
                    .build(),
            );
            r
        }
        // Signed out (or never in): to the sign-in page, and back after.
        _ if csrf.is_none() => match method {
            Method::GET | Method::HEAD => {
                let here = match serde_urlencoded::to_string(&query) {
                    Ok(q) if !q.is_empty() => format!("{path}?{q}"),
                    _ => path.to_string(),
                };
                let next = serde_urlencoded::to_string([("next", here)]).unwrap_or_default();
                see_other(&format!("/login?{next}"))
            }
            _ => frame::refused(&ctx),
        },
        (_, &Method::POST) => {
            if !post_allowed(&ctx, &headers, body).await {
                return frame::refused(&ctx);
            }
            pages::post(state, &ctx).await
        }
        (_, &Method::GET | &Method::HEAD) => pages::get(state, &ctx).await,
        _ => frame::not_found(&ctx),
    };
    if chosen {
        set_cookie(
            &mut response,
            cookie::Cookie::build((LANG_COOKIE, lang.code()))
                .path("/")
                .same_site(cookie::SameSite::Strict)
                .max_age(cookie::time::Duration::days(365))
                .build(),
        );
    }
    response
}

/// A POST of a page of this console: same origin, and its form carries
/// this session's token.
async fn post_allowed(ctx: &Ctx<'_>, headers: &HeaderMap, body: Body) -> bool {
    if !same_origin(headers) {
        return false;
    }
    let Some(form) = read_form(body).await else {
        return false;
    };
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    !ctx.csrf.is_empty() && bool::from(given.as_bytes().ct_eq(ctx.csrf.as_bytes()))
}

async fn login(
    state: &AppState,
    ctx: &Ctx<'_>,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    secure: bool,
) -> Response {
    let Some(token) = token else {
        return see_other("/");
    };
    if !same_origin(headers) {
        return frame::refused(ctx);
    }
    let Some(form) = read_form(body).await else {
        return frame::refused(ctx);
    };
    let csrf = form.get("csrf").map(String::as_str).unwrap_or("");
    if !bool::from(csrf.as_bytes().ct_eq(ctx.csrf.as_bytes())) {
        return frame::refused(ctx);
    }
    let given = form.get("token").map(String::as_str).unwrap_or("");
    let next = local_path(form.get("next"));
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        // One wrong guess at a time, each a second long.
        let _gate = state.sessions.gate.lock().await;
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
        tracing::warn!("console: sign-in with a wrong admin token");
        return pages::login(
            ctx,
            &next,
            Some(ctx.w.wrong_token),
            StatusCode::UNAUTHORIZED,
        );
    }
    let id = state.sessions.open(token);
    let mut r = see_other(&next);
    set_cookie(
        &mut r,
        cookie::Cookie::build((SESSION_COOKIE, id))
            .path("/")
            .http_only(true)
            .secure(secure)
            .same_site(cookie::SameSite::Strict)
            .max_age(cookie::time::Duration::seconds(
                crate::sessions::SESSION_TTL.as_secs() as i64,
            ))
            .build(),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn posts_from_another_origin_are_told_apart() {
        let host = ("host", "127.0.0.1:9090");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:9090")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        // curl and the like: the form token still has to match.
        assert!(same_origin(&headers(&[host])));
    }

    #[test]
    fn sign_in_goes_back_only_to_a_page_of_the_console() {
        assert_eq!(local_path(Some(&"/events?user=a".into())), "/events?user=a");
        assert_eq!(local_path(Some(&"//evil.example/".into())), "/");
        assert_eq!(local_path(Some(&"/\\evil.example".into())), "/");
        assert_eq!(local_path(Some(&"https://evil.example".into())), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cookies_are_read_by_name() {
        let h = headers(&[("cookie", "a=1; easehook_session=abc; easehook_lang=zh")]);
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, LANG_COOKIE).as_deref(), Some("zh"));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
