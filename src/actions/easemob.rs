//! `type: easemob`: a call back to Easemob's REST API (SPEC §12) — tell a
//! user something, block on someone's behalf, deactivate an account.
//!
//! Every call goes to `{api}/{org}/{app}/…` with the app's token, which
//! comes from `POST {api}/{org}/{app}/token` (`client_credentials`). The
//! token is cached until shortly before it expires and shared by every
//! action of the appkey; one request fetches it however many deliveries
//! wait, since Easemob blocks apps that ask for tokens too often. A 401
//! renews it once and the call is repeated. Calls are paced at Easemob's
//! documented 100 per second per app, for all the app's actions together.
//! The token is never logged, shown or kept in an error.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Compiler, JsonTemplate, Outcome, StringList, TemplateSource};
use crate::config::{EasemobApp, Settings};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// What the action asks Easemob to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// Send a text message (`POST /messages/users`) from `from` to `to`.
    SendMessage,
    /// Add `user` to `owner`'s block list (`POST /users/{owner}/blocks/users`).
    Block,
    /// Remove `user` from `owner`'s block list (`DELETE /users/{owner}/blocks/users/{user}`).
    Unblock,
    /// Deactivate (ban) the account `user` (`POST /users/{user}/deactivate`).
    Deactivate,
    /// Activate the account `user` again (`POST /users/{user}/activate`).
    Activate,
    /// Any call: `method`, `path` (under `/{org}/{app}`) and `json`.
    Request,
}

/// An Easemob action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEasemob {
    /// `send_message`, `block`, `unblock`, `deactivate`, `activate` or `request`.
    call: Call,
    /// The app to call (a template); default: the event's appkey. Its
    /// credentials are under `easemob:` in easehook.yaml.
    #[serde(default)]
    appkey: Option<String>,
    /// send_message: the sender (default `admin`).
    #[serde(default)]
    from: Option<String>,
    /// send_message: the recipients (templates).
    #[serde(default)]
    to: StringList,
    /// send_message: the text.
    #[serde(default)]
    text: Option<TemplateSource>,
    /// block, unblock: whose block list.
    #[serde(default)]
    owner: Option<String>,
    /// block, unblock: the user blocked or unblocked; deactivate, activate: the account.
    #[serde(default)]
    user: Option<String>,
    /// request: the HTTP method (default POST).
    #[serde(default)]
    method: Option<String>,
    /// request: the path under `/{org}/{app}`, such as `/users/{{to_user}}`
    /// (inserted values are percent-encoded).
    #[serde(default)]
    path: Option<String>,
    /// request: the JSON body (any YAML; its strings are templates).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    json: Option<serde_yaml::Value>,
}

#[derive(Debug)]
pub struct EasemobAction {
    pub call: Call,
    /// `None`: the event's appkey.
    appkey: Option<TemplateRef>,
    /// The literal sender of `send_message`, for `check`'s loop warning.
    pub sender: Option<String>,
    from: Option<TemplateRef>,
    to: Vec<TemplateRef>,
    text: Option<TemplateRef>,
    owner: Option<TemplateRef>,
    user: Option<TemplateRef>,
    method: reqwest::Method,
    path: Option<TemplateRef>,
    json: Option<JsonTemplate>,
    /// The appkey when it is written out (not a template), for `check`.
    pub fixed_appkey: Option<String>,
}

/// A rendered call.
#[derive(Debug, Clone, PartialEq)]
pub struct EasemobRequest {
    pub appkey: String,
    pub call: Call,
    pub method: reqwest::Method,
    /// Under `/{org}/{app}`, its user ids percent-encoded.
    pub path: String,
    pub body: Option<Value>,
}

pub(super) fn compile(raw: RawEasemob, c: &mut Compiler) -> Option<EasemobAction> {
    let need = |c: &mut Compiler, field: &str, v: &Option<String>| -> Option<TemplateRef> {
        match v {
            Some(s) => c.template(field, &TemplateSource::Inline(s.clone()), Escape::Plain),
            None => {
                c.error(
                    field,
                    format!("is required for call: {}", call_name(raw.call)),
                );
                None
            }
        }
    };
    let to = raw.to.into_vec();
    let (mut from, mut text, mut owner, mut user, mut path, mut json) =
        (None, None, None, None, None, None);
    let mut method = reqwest::Method::POST;
    match raw.call {
        Call::SendMessage => {
            from = c.template(
                "from",
                &TemplateSource::Inline(raw.from.clone().unwrap_or_else(|| "admin".into())),
                Escape::Plain,
            );
            if to.is_empty() {
                c.error("to", "send_message needs at least one recipient");
            }
            text = match &raw.text {
                Some(t) => c.template("text", t, Escape::Plain),
                None => {
                    c.error("text", "is required for call: send_message");
                    None
                }
            };
        }
        Call::Block | Call::Unblock => {
            owner = need(c, "owner", &raw.owner);
            user = need(c, "user", &raw.user);
        }
        Call::Deactivate | Call::Activate => user = need(c, "user", &raw.user),
        Call::Request => {
            match &raw.path {
                Some(p) if p.starts_with('/') => {
                    path = c.template("path", &TemplateSource::Inline(p.clone()), Escape::Url)
                }
                Some(_) => c.error("path", "starts with / (it is under /{org}/{app})"),
                None => c.error("path", "is required for call: request"),
            }
            if let Some(m) = &raw.method {
                match reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => method = m,
                    Err(_) => c.error("method", format!("{m:?} is not an HTTP method")),
                }
            }
            json = raw
                .json
                .clone()
                .and_then(|j| c.json_template("json", j, Escape::Plain));
        }
    }
    // A field the call does not read is a mistake worth saying.
    let given = [
        ("from", raw.from.is_some()),
        ("to", !to.is_empty()),
        ("text", raw.text.is_some()),
        ("owner", raw.owner.is_some()),
        ("user", raw.user.is_some()),
        ("method", raw.method.is_some()),
        ("path", raw.path.is_some()),
        ("json", raw.json.is_some()),
    ];
    let reads: &[&str] = match raw.call {
        Call::SendMessage => &["from", "to", "text"],
        Call::Block | Call::Unblock => &["owner", "user"],
        Call::Deactivate | Call::Activate => &["user"],
        Call::Request => &["method", "path", "json"],
    };
    for (field, set) in given {
        if set && !reads.contains(&field) {
            c.error(
                field,
                format!("is not read by call: {}", call_name(raw.call)),
            );
        }
    }
    let to = c.template_list("to", to, Escape::Plain);
    let appkey = raw
        .appkey
        .as_ref()
        .and_then(|a| c.template("appkey", &TemplateSource::Inline(a.clone()), Escape::Plain));
    Some(EasemobAction {
        call: raw.call,
        fixed_appkey: raw.appkey.filter(|a| !a.contains("{{")),
        sender: (raw.call == Call::SendMessage)
            .then(|| raw.from.unwrap_or_else(|| "admin".into()))
            .filter(|f| !f.contains("{{")),
        appkey,
        from,
        to,
        text,
        owner,
        user,
        method,
        path,
        json,
    })
}

fn call_name(call: Call) -> &'static str {
    match call {
        Call::SendMessage => "send_message",
        Call::Block => "block",
        Call::Unblock => "unblock",
        Call::Deactivate => "deactivate",
        Call::Activate => "activate",
        Call::Request => "request",
    }
}

/// A user id as one path segment.
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl EasemobAction {
    /// Whether the appkey is a template (not written out, not the event's).
    pub fn appkey_is_templated(&self) -> bool {
        self.appkey.is_some() && self.fixed_appkey.is_none()
    }

    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<EasemobRequest, String> {
        let appkey = match &self.appkey {
            Some(a) => t.render(a, ctx)?,
            None => ctx.appkey().to_string(),
        };
        if appkey.is_empty() {
            return Err("the event has no appkey; set the action's appkey".into());
        }
        let one = |r: &Option<TemplateRef>, field: &str| -> Result<String, String> {
            let v = match r {
                Some(r) => t.render(r, ctx)?,
                None => String::new(),
            };
            if v.trim().is_empty() {
                return Err(format!("{field} renders empty"));
            }
            Ok(v.trim().to_string())
        };
        let (method, path, body) = match self.call {
            Call::SendMessage => {
                let mut to = Vec::new();
                for r in &self.to {
                    let v = t.render(r, ctx)?;
                    if !v.trim().is_empty() {
                        to.push(v.trim().to_string());
                    }
                }
                if to.is_empty() {
                    return Err("to renders no recipient".into());
                }
                let body = json!({"from": one(&self.from, "from")?, "to": to, "type": "txt",
                                  "body": {"msg": one(&self.text, "text")?}});
                (
                    reqwest::Method::POST,
                    "/messages/users".to_string(),
                    Some(body),
                )
            }
            Call::Block => {
                let owner = segment(&one(&self.owner, "owner")?);
                let body = json!({"usernames": [one(&self.user, "user")?]});
                (
                    reqwest::Method::POST,
                    format!("/users/{owner}/blocks/users"),
                    Some(body),
                )
            }
            Call::Unblock => {
                let owner = segment(&one(&self.owner, "owner")?);
                let user = segment(&one(&self.user, "user")?);
                (
                    reqwest::Method::DELETE,
                    format!("/users/{owner}/blocks/users/{user}"),
                    None,
                )
            }
            Call::Deactivate | Call::Activate => {
                let user = segment(&one(&self.user, "user")?);
                let verb = if self.call == Call::Deactivate {
                    "deactivate"
                } else {
                    "activate"
                };
                (reqwest::Method::POST, format!("/users/{user}/{verb}"), None)
            }
            Call::Request => {
                let path = one(&self.path, "path")?;
                let body = match &self.json {
                    Some(j) => {
                        Some(serde_json::from_str(&j.render(t, ctx)?).map_err(|e| e.to_string())?)
                    }
                    None => None,
                };
                (self.method.clone(), path, body)
            }
        };
        Ok(EasemobRequest {
            appkey,
            call: self.call,
            method,
            path,
            body,
        })
    }
}

impl EasemobRequest {
    pub(super) fn describe(&self) -> String {
        let body = self
            .body
            .as_ref()
            .map(|b| super::email::indent(&serde_json::to_string_pretty(b).unwrap_or_default()))
            .unwrap_or_default();
        format!(
            "easemob {} {} /{{org}}/{{app}}{} (appkey {:?}, the app's token)\n{body}\n",
            call_name(self.call),
            self.method,
            self.path,
            self.appkey
        )
    }
}

/// The app token, while it is good.
#[derive(Clone)]
struct Token {
    value: String,
    until: Instant,
}

/// What one app's calls share: its token and its pace.
struct AppClient {
    /// Held across a token request, so that one request fetches it for all
    /// the deliveries waiting.
    token: tokio::sync::Mutex<Option<Token>>,
    pace: governor::DefaultDirectRateLimiter,
}

/// An app as its client is known: appkey, REST host, client id.
type AppId = (String, String, String);

/// The Easemob apps' clients, by appkey and credentials (a reload that
/// changes an app's credentials starts a client of its own).
#[derive(Clone, Default)]
pub struct Clients {
    apps: Arc<Mutex<HashMap<AppId, Arc<AppClient>>>>,
}

/// Easemob's documented limit: 100 calls a second per app.
const CALLS_PER_SECOND: u32 = 100;

impl Clients {
    fn app(&self, appkey: &str, creds: &EasemobApp) -> Arc<AppClient> {
        let key = (
            appkey.to_string(),
            creds.api.clone(),
            creds.client_id.clone(),
        );
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.entry(key)
            .or_insert_with(|| {
                let per_second = NonZeroU32::new(CALLS_PER_SECOND).expect("not zero");
                Arc::new(AppClient {
                    token: tokio::sync::Mutex::new(None),
                    pace: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
                })
            })
            .clone()
    }

    /// Make the call; the caller bounds the time it may take.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        m: &EasemobRequest,
        settings: &Settings,
    ) -> super::Answer {
        let resp = match self
            .request(
                http,
                &m.appkey,
                settings,
                m.method.clone(),
                &m.path,
                m.body.as_ref(),
            )
            .await
        {
            Ok(r) => r,
            Err(outcome) => return outcome.into(),
        };
        let code = Some(resp.status().as_u16());
        super::Answer {
            outcome: classify(resp).await,
            code,
        }
    }

    /// A call to the app's REST API at `path` (under `/{org}/{app}`), with
    /// its token (fetched once, renewed once when Easemob says it expired)
    /// and at its pace: the answer as it came, or why there is none.
    pub async fn request(
        &self,
        http: &reqwest::Client,
        appkey: &str,
        settings: &Settings,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, Outcome> {
        let Some(creds) = settings.easemob.get(appkey) else {
            return Err(Outcome::Permanent(format!(
                "no Easemob credentials for appkey {appkey:?}: add it under easemob: in {}",
                settings.path.display()
            )));
        };
        let app = self.app(appkey, creds);
        let base = format!(
            "{}/{}/{}",
            creds.api,
            segment(&creds.org),
            segment(&creds.app)
        );
        let mut renewed = false;
        loop {
            let token = app.token(http, &base, creds).await?;
            app.pace.until_ready().await;
            let mut req = http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&token);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(super::transport_error)?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                // Expired or revoked: one new token, one more try.
                app.forget(&token).await;
                renewed = true;
                continue;
            }
            return Ok(resp);
        }
    }
}

impl AppClient {
    /// The cached token, or a new one (one request at a time).
    async fn token(
        &self,
        http: &reqwest::Client,
        base: &str,
        creds: &EasemobApp,
    ) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.until) {
            return Ok(t.value.clone());
        }
        let body = json!({"grant_type": "client_credentials", "client_id": creds.client_id,
                          "client_secret": creds.client_secret.expose()});
        let resp = http
            .post(format!("{base}/token"))
            .json(&body)
            .send()
            .await
            .map_err(super::transport_error)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(match classify(resp).await {
                Outcome::Permanent(e) => Outcome::Permanent(format!("app token: {e}")),
                Outcome::Retry { after, error } => Outcome::Retry {
                    after,
                    error: format!("app token: {error}"),
                },
                Outcome::Sent => Outcome::Permanent("app token: no token".into()),
            });
        }
        #[derive(Deserialize)]
        struct Issued {
            access_token: String,
            #[serde(default)]
            expires_in: u64,
        }
        let issued: Issued = resp.json().await.map_err(|_| Outcome::Retry {
            after: None,
            error: "app token: the answer has no access_token".into(),
        })?;
        // Renewed a little before it runs out: a tenth of its life, at
        // least a minute, so that no call goes out with a token about to end.
        let life = Duration::from_secs(issued.expires_in);
        let margin = (life / 10).max(Duration::from_secs(60));
        *cached = Some(Token {
            value: issued.access_token.clone(),
            until: Instant::now() + life.saturating_sub(margin),
        });
        Ok(issued.access_token)
    }

    /// Drop the cached token if it is still `token` (another delivery may
    /// have renewed it already).
    async fn forget(&self, token: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == token) {
            *cached = None;
        }
    }
}

/// 2xx sent; 429 and 5xx retried (`Retry-After` honoured); any other status
/// permanent, with Easemob's `error_description` (else `error`) as the error.
async fn classify(resp: reqwest::Response) -> Outcome {
    let status = resp.status();
    if status.is_success() {
        return Outcome::Sent;
    }
    let after = super::retry_after(&resp);
    let text = resp.text().await.unwrap_or_default();
    let error = easemob_error(status.as_u16(), &text);
    if status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry { after, error }
    } else {
        Outcome::Permanent(error)
    }
}

/// `HTTP 404: …` with Easemob's own description of the error.
pub(crate) fn easemob_error(status: u16, body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let field = |k: &str| {
        v.as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let text = field("error_description")
        .or_else(|| field("error"))
        .unwrap_or_else(|| body.chars().take(200).collect());
    format!("easemob: HTTP {status}: {}", text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_easemobs_description() {
        assert_eq!(
            easemob_error(
                404,
                r#"{"error":"service_resource_not_found","exception":"UserNotFoundException","timestamp":1,"duration":0,"error_description":"Service resource not found"}"#
            ),
            "easemob: HTTP 404: Service resource not found"
        );
        assert_eq!(
            easemob_error(400, r#"{"error":"bad"}"#),
            "easemob: HTTP 400: bad"
        );
        assert_eq!(easemob_error(502, "<html>"), "easemob: HTTP 502: <html>");
    }

    #[test]
    fn user_ids_are_one_path_segment() {
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("张三"), "%E5%BC%A0%E4%B8%89");
    }
}
