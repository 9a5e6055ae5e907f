//! The daemon's configuration file (`easehook.yaml`).
//!
//! Loading is two-phase: the YAML is parsed into a tree, every string in it is
//! `${…}`-expanded ([`expand`]), each top-level key is deserialized into the
//! raw serde shapes below (`deny_unknown_fields`), and a pure compile step turns
//! them into a validated [`Settings`]. Every problem of every phase is collected
//! and reported together as `file: location: message`.

pub mod expand;

mod presend;
mod store;
#[cfg(test)]
mod tests;
pub mod units;
mod yaml;

pub use presend::{DEFAULT_QUEUE as DEFAULT_PRESEND_QUEUE, OnError, PresendSettings, WordListSpec};
use presend::{RawPresend, compile_presend};
pub use store::{PostgresSettings, StoreKind, StoreSettings, mask_postgres_url};
use store::{RawStore, compile_store};
pub(crate) use yaml::{deserialize_keys, read_yaml, strip_location};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::diag::{Diagnostics, Redactor};
use expand::{Env, Expanded};
use units::{ByteSize, HumanDuration, Num};

/// A value that must never be shown: its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the few places that need it (signing, AUTH).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `secrets:` entries accept one string or a list of strings.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The configuration file as written. Every field is optional here; defaults
/// and validation are applied by [`compile`].
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    /// The callback listener, `IP:PORT`. Default `127.0.0.1:8080`.
    listen: Option<String>,
    /// The path Easemob POSTs to. Default `/easemob/callback`.
    callback_path: Option<String>,
    /// Health, metrics, reload and the admin API, `IP:PORT`. Default `127.0.0.1:9464`.
    admin_listen: Option<String>,
    /// When not empty, `/api/` and `/-/` calls need `Authorization: Bearer <token>`.
    admin_token: Option<String>,
    /// Appkey → callback secrets. `"*"` applies to every appkey not listed. Required.
    secrets: Option<BTreeMap<String, OneOrMany>>,
    /// Larger callback bodies are refused with 413. Default `64KiB`.
    max_body: Option<ByteSize>,
    /// Events older than this are refused with 401; `0s` means no limit. Default `0s`.
    max_event_age: Option<HumanDuration>,
    /// A repeated event within this window is acknowledged and ignored. Default `24h`.
    dedup_window: Option<HumanDuration>,
    /// Where the embedded store lives. Default `./data`.
    state_dir: Option<PathBuf>,
    /// How long sent deliveries and their events are kept. Default `7d`.
    retention: Option<HumanDuration>,
    /// Rule files (`*.yaml`, `*.yml`). Default `./rules`.
    rules_dir: Option<PathBuf>,
    /// Template files (`*.hbs`). Default `./templates`.
    templates_dir: Option<PathBuf>,
    /// Default zone of the `datetime` template helper. Default `Asia/Shanghai`.
    timezone: Option<String>,
    /// The callback URL Easemob reaches this daemon at (through any proxy or
    /// load balancer), like `https://hooks.example.com/easemob/callback`:
    /// where `easehook easemob recover` asks Easemob to re-send failed
    /// callbacks. Without it (and without `--target-url`), Easemob re-sends
    /// to the callback rule's own URL.
    public_callback_url: Option<String>,
    /// `text` or `json`. Default `text`.
    #[schemars(with = "Option<units::Expandable<LogFormat>>")]
    log_format: Option<LogFormat>,
    /// Retries, timeouts and concurrency of deliveries. (Read key by key,
    /// see [`deserialize_keys`], so that every problem inside is reported.)
    #[schemars(with = "Option<RawDelivery>")]
    delivery: Option<Value>,
    /// Named SMTP servers (`default` unless an email action names another),
    /// each read key by key.
    #[schemars(with = "Option<BTreeMap<String, RawSmtp>>")]
    smtp: Option<serde_yaml::Mapping>,
    /// Easemob REST API credentials per appkey (`org#app`), for `easemob`
    /// actions; each read key by key.
    #[schemars(with = "Option<BTreeMap<String, RawEasemob>>")]
    easemob: Option<serde_yaml::Mapping>,
    /// Where events and deliveries are kept: the embedded SQLite store
    /// (default) or a PostgreSQL database shared by replicas. Read key by
    /// key.
    #[schemars(with = "Option<RawStore>")]
    store: Option<Value>,
    /// The pre-send callback's moderation endpoint (SPEC §16); without
    /// this section there is none and its path answers 404. Read key by
    /// key.
    #[schemars(with = "Option<RawPresend>")]
    presend: Option<Value>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per record.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    /// Attempts before a delivery is dead. Default 10.
    max_attempts: Option<Num<u32>>,
    /// The first retry's delay bound; it doubles per attempt, with full
    /// jitter. Default `2s`.
    initial_backoff: Option<HumanDuration>,
    /// Upper bound of a retry's delay. Default `10m`.
    max_backoff: Option<HumanDuration>,
    /// Longest an attempt may take. Default `15s`.
    timeout: Option<HumanDuration>,
    /// Attempts in flight at once. Default 32.
    concurrency: Option<Num<usize>>,
    /// At shutdown, how long attempts in flight may finish. Default `10s`.
    shutdown_grace: Option<HumanDuration>,
    /// How long deliveries yield the CPU to acknowledging callbacks, at
    /// most. Default `30s`.
    yield_for: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    /// The server's host name or address. Required.
    host: Option<String>,
    /// Default 587 with `starttls`, 465 with `tls`, 25 with `none`.
    port: Option<Num<u16>>,
    /// `starttls` (default), `tls` or `none`.
    #[schemars(with = "Option<units::Expandable<SmtpTls>>")]
    tls: Option<SmtpTls>,
    /// AUTH user; no AUTH when empty.
    username: Option<String>,
    /// AUTH password (use `${file:…}` or `${credential:…}`).
    password: Option<String>,
    /// The sender, like `easehook <noreply@example.com>`.
    from: Option<String>,
    /// An extra trusted root certificate (PEM) for the server's TLS.
    ca_file: Option<String>,
}

/// `easemob.APPKEY` as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct RawEasemob {
    /// The app's REST API host, like `https://a1.easemob.com`.
    api: Option<String>,
    /// The app's Client ID.
    client_id: Option<String>,
    /// The app's Client Secret (use `${file:…}` or `${credential:…}`).
    client_secret: Option<String>,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for relays on loopback or a trusted network.
    None,
}

/// Retry and concurrency policy of the dispatcher (`delivery:`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// Attempts before a delivery is dead. Default 10.
    pub max_attempts: u32,
    /// First retry delay bound; doubles per attempt (full jitter). Default `2s`.
    pub initial_backoff: Duration,
    /// Upper bound of the retry delay. Default `10m`.
    pub max_backoff: Duration,
    /// Time allowed for one attempt. Default `15s`.
    pub timeout: Duration,
    /// Attempts in flight, all actions together. Default 32.
    pub concurrency: usize,
    /// On SIGTERM, time given to attempts in flight. Default `10s`.
    pub shutdown_grace: Duration,
    /// How long due deliveries may wait while their threads yield the CPU
    /// to acknowledging callbacks (`SCHED_IDLE`); once the oldest has waited
    /// this long, the threads take a guaranteed share (nice 10) until it is
    /// within half of it. `0s`: never yield. Default `30s`. See
    /// [`crate::priority`].
    pub yield_for: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(600),
            timeout: Duration::from_secs(15),
            concurrency: 32,
            shutdown_grace: Duration::from_secs(10),
            yield_for: Duration::from_secs(30),
        }
    }
}

/// One named SMTP server (`smtp.NAME`).
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpSettings {
    /// Host name or address. Default `127.0.0.1`.
    pub host: String,
    /// Default 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: u16,
    pub tls: SmtpTls,
    /// AUTH user; empty means no AUTH.
    pub username: String,
    pub password: Option<Secret>,
    /// The `From:` of messages, unless an action sets its own.
    pub from: String,
    /// An extra trusted root certificate (PEM), for private relays.
    pub ca_file: Option<PathBuf>,
}

/// The REST credentials of one Easemob app (`easemob."org#app"`), for the
/// `easemob` action (SPEC §12).
#[derive(Debug, Clone, PartialEq)]
pub struct EasemobApp {
    /// The app's REST host (its data centre), such as `https://a1.easemob.com`.
    pub api: String,
    /// The appkey's two parts: requests go to `{api}/{org}/{app}/…`.
    pub org: String,
    pub app: String,
    /// The app's Client ID.
    pub client_id: String,
    /// The app's Client Secret.
    pub client_secret: Secret,
}

/// Callback secrets per appkey.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    by_appkey: BTreeMap<String, Vec<Secret>>,
    fallback: Vec<Secret>,
}

impl Secrets {
    /// The secrets that may have signed a callback of `appkey`; `None` when the
    /// appkey is neither listed nor covered by `"*"`.
    pub fn for_appkey(&self, appkey: &str) -> Option<&[Secret]> {
        match self.by_appkey.get(appkey) {
            Some(list) => Some(list),
            None if !self.fallback.is_empty() => Some(&self.fallback),
            None => None,
        }
    }

    /// Whether `"*"` gives secrets to appkeys not listed.
    pub fn has_fallback(&self) -> bool {
        !self.fallback.is_empty()
    }

    /// The listed appkeys (without `"*"`), in order.
    pub fn appkeys(&self) -> impl Iterator<Item = &str> {
        self.by_appkey.keys().map(String::as_str)
    }

    fn all(&self) -> impl Iterator<Item = &Secret> {
        self.by_appkey
            .values()
            .flatten()
            .chain(self.fallback.iter())
    }

    /// Build directly, for tests and tools.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut s = Secrets::default();
        for (k, v) in pairs {
            if k == "*" {
                s.fallback.push(Secret::new(v));
            } else {
                s.by_appkey
                    .entry(k.to_string())
                    .or_default()
                    .push(Secret::new(v));
            }
        }
        s
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub callback_path: String,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub secrets: Secrets,
    pub max_body: u64,
    /// `None` = no age limit.
    pub max_event_age: Option<Duration>,
    pub dedup_window: Duration,
    pub state_dir: PathBuf,
    pub retention: Duration,
    pub rules_dir: PathBuf,
    pub templates_dir: PathBuf,
    pub timezone: chrono_tz::Tz,
    /// Where Easemob reaches this daemon, for `easemob recover`.
    pub public_callback_url: Option<String>,
    pub log_format: LogFormat,
    pub delivery: DeliverySettings,
    pub smtp: BTreeMap<String, SmtpSettings>,
    /// Easemob REST credentials by appkey.
    pub easemob: BTreeMap<String, EasemobApp>,
    /// Where events and deliveries are kept.
    pub store: StoreSettings,
    /// `presend:`, when the pre-send endpoint is on.
    pub presend: Option<PresendSettings>,
    /// Masks every secret of this configuration in any text.
    pub redactor: Redactor,
    /// Things worth telling the operator that do not stop the daemon.
    pub warnings: Vec<String>,
}

/// Where the config file is, by the rules of the command line: `--config`,
/// else `$EASEHOOK_CONFIG`, else `./easehook.yaml` when it exists, else
/// `/etc/easehook/easehook.yaml`.
pub fn resolve_path(flag: Option<&Path>, env: &dyn Env) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = env.var("EASEHOOK_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("easehook.yaml");
    if local.exists() {
        return local;
    }
    PathBuf::from("/etc/easehook/easehook.yaml")
}

/// Load and validate the configuration file at `path`.
pub fn load(path: &Path, env: &dyn Env) -> Result<Settings, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut expanded = Expanded::default();
    let file = path.display().to_string();
    let Some(value) = read_yaml(path, env, &mut expanded, &mut diags) else {
        return Err(diags);
    };
    let raw: RawConfig = match value {
        Value::Mapping(map) => deserialize_keys(map, &file, "", &mut diags),
        Value::Null => RawConfig::default(),
        _ => {
            diags.push(
                &file,
                "",
                "the configuration must be a mapping of keys to values",
            );
            return Err(diags);
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let settings = compile(raw, path, &base, expanded, &mut diags);
    let redactor = settings.redactor.clone();
    diags.redact(&redactor);
    diags.into_result().map(|()| settings)
}

fn parse_addr(
    v: Option<String>,
    default: &str,
    key: &str,
    file: &str,
    diags: &mut Diagnostics,
) -> SocketAddr {
    let s = v.unwrap_or_else(|| default.to_string());
    s.parse().unwrap_or_else(|_| {
        diags.push(
            file,
            key,
            format!("{s:?} is not an address: write IP:PORT, like {default}"),
        );
        default.parse().expect("default address is valid")
    })
}

fn resolve(base: &Path, p: Option<PathBuf>, default: &str) -> PathBuf {
    let p = p.unwrap_or_else(|| PathBuf::from(default));
    if p.is_absolute() { p } else { base.join(p) }
}

/// A nested section (`delivery`, `smtp.NAME`), read key by key.
fn section<T: DeserializeOwned + Default>(
    value: Option<Value>,
    file: &str,
    prefix: &str,
    diags: &mut Diagnostics,
) -> T {
    match value {
        None | Some(Value::Null) => T::default(),
        Some(Value::Mapping(map)) => deserialize_keys(map, file, prefix, diags),
        Some(_) => {
            diags.push(file, prefix, "must be a mapping of keys to values");
            T::default()
        }
    }
}

fn compile(
    raw: RawConfig,
    path: &Path,
    base: &Path,
    expanded: Expanded,
    diags: &mut Diagnostics,
) -> Settings {
    let file = path.display().to_string();
    let file = file.as_str();
    let mut warnings = Vec::new();
    let mut secret_values = expanded.secrets.clone();

    let listen = parse_addr(raw.listen, "127.0.0.1:8080", "listen", file, diags);
    let admin_listen = parse_addr(
        raw.admin_listen,
        "127.0.0.1:9464",
        "admin_listen",
        file,
        diags,
    );
    let callback_path = raw
        .callback_path
        .unwrap_or_else(|| "/easemob/callback".into());
    if !callback_path.starts_with('/') || callback_path.contains(['?', '#', ' ']) {
        diags.push(
            file,
            "callback_path",
            format!("{callback_path:?} must be a URL path starting with `/`"),
        );
    }
    let admin_token = raw.admin_token.filter(|t| !t.is_empty()).map(|t| {
        secret_values.push(t.clone());
        Secret::new(t)
    });

    let mut secrets = Secrets::default();
    match raw.secrets {
        None => diags.push(
            file,
            "secrets",
            "required: map each appkey (or \"*\") to its callback secrets",
        ),
        Some(map) => {
            for (appkey, list) in map {
                let list = match list {
                    OneOrMany::One(s) => vec![s],
                    OneOrMany::Many(v) => v,
                };
                let mut out = Vec::new();
                for (i, s) in list.into_iter().enumerate() {
                    if s.is_empty() {
                        diags.push(
                            file,
                            format!("secrets.{appkey}[{i}]"),
                            "a secret cannot be empty",
                        );
                        continue;
                    }
                    if !expanded.external.contains(&s) {
                        warnings.push(format!(
                            "the secret of appkey {appkey:?} is written in {file}; for production supply it with ${{VAR}}, ${{file:…}} or ${{credential:…}}"
                        ));
                    }
                    secret_values.push(s.clone());
                    out.push(Secret::new(s));
                }
                if appkey == "*" {
                    secrets.fallback = out;
                } else if appkey.is_empty() {
                    diags.push(file, "secrets", "an appkey cannot be empty");
                } else if out.is_empty() {
                    diags.push(
                        file,
                        format!("secrets.{appkey}"),
                        "lists no secret; callbacks of this appkey could never be verified",
                    );
                } else {
                    secrets.by_appkey.insert(appkey, out);
                }
            }
            if secrets.by_appkey.is_empty() && secrets.fallback.is_empty() {
                diags.push(
                    file,
                    "secrets",
                    "no secret is configured: every callback would be refused",
                );
            }
        }
    }

    if let Some(u) = raw.public_callback_url.as_deref().filter(|u| !u.is_empty())
        && !reqwest::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        diags.push(
            file,
            "public_callback_url",
            format!("{u:?} is not an http(s) URL"),
        );
    }
    let timezone = raw.timezone.unwrap_or_else(|| "Asia/Shanghai".into());
    let timezone = timezone.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
        diags.push(
            file,
            "timezone",
            format!("unknown time zone {timezone:?}: use an IANA name like Asia/Shanghai or UTC"),
        );
        chrono_tz::Tz::Asia__Shanghai
    });

    let max_body = raw.max_body.map_or(64 * 1024, |b| b.0);
    if max_body == 0 {
        diags.push(file, "max_body", "must be more than 0");
    }

    let d: RawDelivery = section(raw.delivery, file, "delivery", diags);
    let def = DeliverySettings::default();
    let delivery = DeliverySettings {
        max_attempts: d.max_attempts.map_or(def.max_attempts, |n| n.0),
        initial_backoff: d.initial_backoff.map_or(def.initial_backoff, |d| d.0),
        max_backoff: d.max_backoff.map_or(def.max_backoff, |d| d.0),
        timeout: d.timeout.map_or(def.timeout, |d| d.0),
        concurrency: d.concurrency.map_or(def.concurrency, |n| n.0),
        shutdown_grace: d.shutdown_grace.map_or(def.shutdown_grace, |d| d.0),
        yield_for: d.yield_for.map_or(def.yield_for, |d| d.0),
    };
    if delivery.max_attempts == 0 {
        diags.push(file, "delivery.max_attempts", "must be at least 1");
    }
    if delivery.concurrency == 0 {
        diags.push(file, "delivery.concurrency", "must be at least 1");
    }
    if delivery.timeout.is_zero() {
        diags.push(file, "delivery.timeout", "must be more than 0s");
    }
    if delivery.initial_backoff > delivery.max_backoff {
        diags.push(
            file,
            "delivery.initial_backoff",
            "is longer than delivery.max_backoff",
        );
    }

    let mut smtp = BTreeMap::new();
    let raw_smtp: Vec<(String, RawSmtp)> = match raw.smtp {
        None => vec![("default".to_string(), RawSmtp::default())],
        Some(map) => map
            .into_iter()
            .filter_map(|(k, v)| {
                let Some(name) = k.as_str().map(str::to_string) else {
                    diags.push(file, "smtp", "server names are strings");
                    return None;
                };
                let server = section(Some(v), file, &format!("smtp.{name}"), diags);
                Some((name, server))
            })
            .collect(),
    };
    for (name, s) in raw_smtp {
        let tls = s.tls.unwrap_or_default();
        let port = s.port.map(|p| p.0).unwrap_or(match tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        });
        let password = s.password.filter(|p| !p.is_empty()).map(|p| {
            secret_values.push(p.clone());
            Secret::new(p)
        });
        let from = s
            .from
            .unwrap_or_else(|| "easehook <easehook@localhost>".into());
        if from.parse::<lettre::message::Mailbox>().is_err() {
            diags.push(
                file,
                format!("smtp.{name}.from"),
                format!("{from:?} is not an email address"),
            );
        }
        let host = s
            .host
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        let ca_file = s
            .ca_file
            .filter(|c| !c.is_empty())
            .map(|c| resolve(base, Some(c.into()), ""));
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            diags.push(
                file,
                format!("smtp.{name}.ca_file"),
                format!("{} is not a readable file", ca.display()),
            );
        }
        smtp.insert(
            name,
            SmtpSettings {
                host,
                port,
                tls,
                username: s.username.unwrap_or_default(),
                password,
                from,
                ca_file,
            },
        );
    }

    let mut easemob = BTreeMap::new();
    for (k, v) in raw.easemob.unwrap_or_default() {
        let Some(appkey) = k.as_str().map(str::to_string) else {
            diags.push(file, "easemob", "appkeys are strings (\"org#app\")");
            continue;
        };
        let prefix = format!("easemob.{appkey}");
        let e: RawEasemob = section(Some(v), file, &prefix, diags);
        let Some((org, app)) = appkey
            .split_once('#')
            .filter(|(o, a)| !o.is_empty() && !a.is_empty() && !a.contains('#'))
            .map(|(o, a)| (o.to_string(), a.to_string()))
        else {
            diags.push(file, &prefix, "an appkey is written org#app");
            continue;
        };
        let api = e.api.unwrap_or_default();
        match reqwest::Url::parse(&api) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => diags.push(
                file,
                format!("{prefix}.api"),
                format!("{api:?} is not the app's REST host (such as https://a1.easemob.com)"),
            ),
        }
        let client_id = e.client_id.unwrap_or_default();
        if client_id.is_empty() {
            diags.push(file, format!("{prefix}.client_id"), "is required");
        }
        let client_secret = e.client_secret.unwrap_or_default();
        if client_secret.is_empty() {
            diags.push(file, format!("{prefix}.client_secret"), "is required");
        } else {
            secret_values.push(client_secret.clone());
        }
        easemob.insert(
            appkey,
            EasemobApp {
                api: api.trim_end_matches('/').to_string(),
                org,
                app,
                client_id,
                client_secret: Secret::new(client_secret),
            },
        );
    }

    let store = compile_store(
        section(raw.store, file, "store", diags),
        base,
        file,
        &mut secret_values,
        &mut warnings,
        diags,
    );

    // `presend:` written alone turns the endpoint on with its defaults.
    let presend = raw.presend.map(|v| {
        let p: RawPresend = section(Some(v), file, "presend", diags);
        compile_presend(p, base, &callback_path, file, diags)
    });

    Settings {
        path: path.to_path_buf(),
        listen,
        callback_path,
        admin_listen,
        admin_token,
        secrets,
        max_body,
        max_event_age: raw.max_event_age.map(|d| d.0).filter(|d| !d.is_zero()),
        dedup_window: raw.dedup_window.map_or(Duration::from_secs(86400), |d| d.0),
        state_dir: resolve(base, raw.state_dir, "data"),
        retention: raw
            .retention
            .map_or(Duration::from_secs(7 * 86400), |d| d.0),
        rules_dir: resolve(base, raw.rules_dir, "rules"),
        templates_dir: resolve(base, raw.templates_dir, "templates"),
        timezone,
        public_callback_url: raw.public_callback_url.filter(|u| !u.is_empty()),
        log_format: raw.log_format.unwrap_or_default(),
        delivery,
        smtp,
        easemob,
        store,
        presend,
        redactor: Redactor::new(secret_values),
        warnings,
    }
}

impl Settings {
    /// How many recorded pre-send verdicts may wait for the store:
    /// `presend.queue`, or its default without a `presend:` section.
    pub fn presend_queue(&self) -> usize {
        self.presend
            .as_ref()
            .map_or(DEFAULT_PRESEND_QUEUE, |p| p.queue)
    }

    /// Every secret value of this configuration (for tests that prove none leaks).
    pub fn secret_values(&self) -> Vec<String> {
        let mut v: Vec<String> = self.secrets.all().map(|s| s.expose().to_string()).collect();
        v.extend(self.admin_token.iter().map(|s| s.expose().to_string()));
        v.extend(
            self.smtp
                .values()
                .filter_map(|s| s.password.as_ref())
                .map(|s| s.expose().to_string()),
        );
        v.extend(
            self.easemob
                .values()
                .map(|e| e.client_secret.expose().to_string()),
        );
        if let StoreSettings::Postgres(p) = &self.store {
            v.extend(p.password());
        }
        v
    }
}

/// The JSON Schema (draft 2020-12) of `easehook.yaml`, generated from the
/// types the loader reads it into, with their documentation.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(RawConfig).to_value();
    if let Some(o) = schema.as_object_mut() {
        o.insert("title".into(), "easehook.yaml".into());
        o.insert(
            "description".into(),
            "easehook's configuration; see docs/configuration.md".into(),
        );
    }
    schema
}
