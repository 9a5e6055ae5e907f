//! The commands besides the daemon itself: `check`, `test` and `simulate`,
//! the admin API's clients (`deliveries`, `events`), `store` ([`store`]),
//! and `run`'s start-up around [`crate::app::App`].

mod backtest;
mod presend;
mod recover;
pub mod store;
mod test;

pub use recover::recover;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::app::App;
use crate::cli::SimulateArgs;
use crate::config::{self, expand::ProcessEnv};
use crate::rules::samples;
use crate::shutdown::{self, Shutdown};

/// `easehook run`: start the daemon and serve until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    // SAFETY: no other thread runs yet (the runtime starts below).
    let passed = unsafe { crate::sockets::Passed::from_systemd() }?;
    // The config decides the log format, so it is read before logging starts;
    // its problems go to stderr as they are.
    let settings = match config::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!(
                "easehook: {} problem(s) in the configuration; not starting",
                diags.len()
            );
            return Ok(ExitCode::from(1));
        }
    };
    crate::telemetry::init(settings.log_format);
    // A panic in a task must reach the log (journald, JSON) like any error.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default_hook(info);
    }));
    // Blocking work is the store's read queries; a few threads serve them.
    // Tokio's default (512) lets a burst grow a thread, stack and malloc
    // arena per query in flight.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        // Listening before anything starts: a stop asked for at any moment
        // from here on stops the daemon cleanly.
        let signals = shutdown::signals();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %config_path.display(),
            "easehook starting"
        );
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            signals.recv().await;
            crate::sockets::notify_systemd(&[sd_notify::NotifyState::Stopping]);
            trigger.trigger();
        });
        let app =
            App::start_with(config_path, Arc::new(ProcessEnv), shutdown.clone(), passed).await?;
        app.wait().await;
        tracing::info!("easehook stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// `easehook check`: every problem, one per line; exit 0 when valid.
pub fn check(config_path: &Path) -> anyhow::Result<ExitCode> {
    match crate::snapshot::load(config_path, &ProcessEnv) {
        Err(diags) => {
            println!("{diags}");
            println!("{} problem(s) found", diags.len());
            Ok(ExitCode::from(1))
        }
        Ok(snap) => {
            let units = crate::sockets::check_units(
                snap.settings.listen,
                snap.settings.admin_listen,
                config_path,
            );
            for w in snap
                .settings
                .warnings
                .iter()
                .chain(&snap.rules.warnings)
                .chain(&units)
            {
                println!("warning: {w}");
            }
            let rules = &snap.rules;
            println!(
                "{}: valid: {} rule(s) in {} file(s), {} action(s) ({} disabled), {} template file(s)",
                config_path.display(),
                rules.rules.len(),
                rules.files.len(),
                rules.actions.len(),
                rules.actions.iter().filter(|a| !a.enabled).count(),
                rules.templates.files().len()
            );
            if let Some(presend) = &snap.settings.presend {
                println!(
                    "presend: POST {} on the callback listener, {} moderation rule(s), budget {} ms",
                    presend.path,
                    snap.moderation.rules.len(),
                    presend.budget.as_millis()
                );
                for (list, words) in snap.moderation.lists.counts() {
                    println!("word list {list}: {words} word(s)");
                }
            }
            match &snap.settings.store {
                config::StoreSettings::Sqlite => {
                    println!("store: sqlite in {}", snap.settings.state_dir.display())
                }
                // Validated in form only: `check` needs no network.
                config::StoreSettings::Postgres(pg) => println!(
                    "store: postgres at {} (pool {}; not connected by check: `easehook store migrate` connects)",
                    pg.shown_url, pg.pool
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `easehook simulate`: build or read a callback, sign it, POST it.
pub fn simulate(config_path: &Path, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let needs_config = args.secret.is_none() || args.url.is_none() || args.appkey.is_none();
    let settings = if needs_config {
        Some(config::load(config_path, &ProcessEnv).map_err(|d| anyhow::anyhow!("{d}"))?)
    } else {
        None
    };
    let now = crate::now_ms();
    let mut body: Value = match &args.file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", f.display()))?
        }
        None => {
            let appkey = match (&args.appkey, &settings) {
                (Some(a), _) => a.clone(),
                (None, Some(s)) => s
                    .secrets
                    .appkeys()
                    .next()
                    .unwrap_or("easemob-demo#chatdemoui")
                    .to_string(),
                (None, None) => unreachable!("settings are loaded when no appkey is given"),
            };
            // Nanoseconds make a fresh, unique 18-digit message id per run.
            let msg_id = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
                % 10u128.pow(18))
            .to_string();
            samples::body(&args.event, &appkey, &args.from, &args.to, &msg_id, now)
        }
    };
    let obj = body
        .as_object_mut()
        .context("the callback must be a JSON object")?;
    if let Some(a) = &args.appkey {
        obj.insert("appkey".into(), json!(a));
    }
    let appkey = obj
        .get("appkey")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let call_id = obj
        .get("callId")
        .and_then(Value::as_str)
        .context("the callback has no callId")?
        .to_string();
    let timestamp = match obj.get("timestamp") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => bail!("the callback has no timestamp"),
    };
    let secret = match (&args.secret, &settings) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s
            .secrets
            .for_appkey(&appkey)
            .and_then(|l| l.first())
            .map(|s| s.expose().to_string())
            .with_context(|| {
                format!("no secret configured for appkey {appkey:?}; pass --secret")
            })?,
        (None, None) => unreachable!("settings are loaded when no secret is given"),
    };
    obj.insert(
        "security".into(),
        json!(crate::verify::sign(&call_id, &secret, &timestamp)),
    );
    if args.print {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let url = match (&args.url, &settings) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => {
            let mut addr = s.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    [127, 0, 0, 1].into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{addr}{}", s.callback_path)
        }
        (None, None) => unreachable!("settings are loaded when no url is given"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = runtime.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .json(&body)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("cannot reach {url}; is the daemon running?"))?;
        let status = resp.status();
        anyhow::Ok((status, resp.text().await.unwrap_or_default()))
    })?;
    println!(
        "POST {url} ({})",
        body.get("callId").and_then(Value::as_str).unwrap_or("")
    );
    println!("HTTP {} {}", status.as_u16(), text);
    Ok(if status.as_u16() == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The admin API of the configured daemon: base URL and token.
pub(crate) struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl AdminClient {
    pub(crate) fn new(config_path: &Path) -> anyhow::Result<Self> {
        let settings =
            config::load(config_path, &ProcessEnv).map_err(|d| anyhow::anyhow!("{d}"))?;
        let mut addr = settings.admin_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        Ok(Self {
            base: format!("http://{addr}"),
            token: settings.admin_token.map(|t| t.expose().to_string()),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut req = self.http.request(method, &url).query(query);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.with_context(|| {
                format!(
                    "cannot reach the admin API at {}; is the daemon running?",
                    self.base
                )
            })?;
            let status = resp.status();
            let body: Value = resp
                .json()
                .await
                .context("the admin API answered with something that is not JSON")?;
            if !status.is_success() {
                bail!(
                    "{path}: HTTP {}: {}",
                    status.as_u16(),
                    body.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("failed")
                );
            }
            Ok(body)
        })
    }
}

pub(crate) fn when(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `easehook test`: pre-send requests (`--presend`), stored history
/// (`--since`), or the given events.
pub fn test(config_path: &Path, args: &crate::cli::TestArgs) -> anyhow::Result<ExitCode> {
    if args.presend {
        presend::test(config_path, args)
    } else if args.since.is_some() {
        backtest::backtest(config_path, args)
    } else {
        test::events(config_path, args)
    }
}

/// `easehook deliveries …`.
pub fn deliveries(
    config_path: &Path,
    cmd: &crate::cli::DeliveriesCommand,
) -> anyhow::Result<ExitCode> {
    use crate::cli::DeliveriesCommand;
    let client = AdminClient::new(config_path)?;
    match cmd {
        DeliveriesCommand::List {
            status,
            action,
            limit,
            json,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                q.push(("status", s.clone()));
            }
            if let Some(a) = action {
                q.push(("action", a.clone()));
            }
            let body = client.call(reqwest::Method::GET, "/api/v1/deliveries", &q)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(ExitCode::SUCCESS);
            }
            let list = body["deliveries"].as_array().cloned().unwrap_or_default();
            println!(
                "{:>6}  {:<8} {:>8}  {:<20} {:<20} {:<20} LAST ERROR",
                "ID", "STATUS", "ATTEMPTS", "UPDATED", "EVENT", "ACTION"
            );
            for d in &list {
                println!(
                    "{:>6}  {:<8} {:>8}  {:<20} {:<20} {:<20} {}",
                    d["id"].as_i64().unwrap_or(0),
                    d["status"].as_str().unwrap_or(""),
                    d["attempts"].as_u64().unwrap_or(0),
                    when(d["updated_at"].as_u64().unwrap_or(0)),
                    d["event"].as_str().unwrap_or(""),
                    d["action"].as_str().unwrap_or(""),
                    d["last_error"].as_str().unwrap_or("")
                );
            }
            println!(
                "{} deliver{}",
                list.len(),
                if list.len() == 1 { "y" } else { "ies" }
            );
        }
        DeliveriesCommand::Show { id, json } => {
            let d = client.call(
                reqwest::Method::GET,
                &format!("/api/v1/deliveries/{id}"),
                &[],
            )?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "delivery {} of event {} ({}): action {}, rule {}",
                d["id"],
                d["event_id"].as_str().unwrap_or(""),
                d["event"].as_str().unwrap_or(""),
                d["action"].as_str().unwrap_or(""),
                d["rule"].as_str().unwrap_or("")
            );
            let status = d["status"].as_str().unwrap_or("");
            match d["next_attempt_at"].as_u64() {
                Some(next) => println!("status {status}, next attempt {}", when(next)),
                None => println!("status {status}"),
            }
            let attempts = d["attempts_made"].as_array().cloned().unwrap_or_default();
            println!(
                "\n{:>3}  {:<20} {:>9}  {:<7} {:>5}  ERROR",
                "#", "STARTED", "TOOK MS", "OUTCOME", "CODE"
            );
            for a in &attempts {
                println!(
                    "{:>3}  {:<20} {:>9}  {:<7} {:>5}  {}",
                    a["n"].as_u64().unwrap_or(0),
                    when(a["started_at"].as_u64().unwrap_or(0)),
                    a["duration_ms"].as_u64().unwrap_or(0),
                    a["outcome"].as_str().unwrap_or(""),
                    a["code"]
                        .as_u64()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    a["error"].as_str().unwrap_or("")
                );
            }
            println!("{} attempt(s)", attempts.len());
        }
        DeliveriesCommand::Retry { ids, dead } => {
            if *dead {
                let body =
                    client.call(reqwest::Method::POST, "/api/v1/deliveries/retry-dead", &[])?;
                println!("{} dead deliveries requeued", body["requeued"]);
            } else {
                let mut failed = false;
                for id in ids {
                    match client.call(
                        reqwest::Method::POST,
                        &format!("/api/v1/deliveries/{id}/retry"),
                        &[],
                    ) {
                        Ok(_) => println!("delivery {id} requeued"),
                        Err(e) => {
                            failed = true;
                            println!("delivery {id}: {e:#}");
                        }
                    }
                }
                if failed {
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `easehook events list`.
pub fn events(config_path: &Path, cmd: &crate::cli::EventsCommand) -> anyhow::Result<ExitCode> {
    let (since, event, user, rule, limit, json) = match cmd {
        crate::cli::EventsCommand::List {
            since,
            event,
            user,
            rule,
            limit,
            json,
        } => (since, event, user, rule, limit, json),
        crate::cli::EventsCommand::Replay {
            since,
            until,
            event,
            rule,
            dry_run,
            json,
        } => {
            let client = AdminClient::new(config_path)?;
            let mut q = vec![("since", since.clone())];
            if let Some(u) = until {
                q.push(("until", u.to_string()));
            }
            if let Some(e) = event {
                q.push(("event", e.clone()));
            }
            if let Some(r) = rule {
                q.push(("rule", r.clone()));
            }
            if *dry_run {
                q.push(("dry_run", "true".into()));
            }
            let body = client.call(reqwest::Method::POST, "/api/v1/events/replay", &q)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(ExitCode::SUCCESS);
            }
            let evaluated = body["events"].as_u64().unwrap_or(0);
            if evaluated == 0 {
                println!("no stored events in that period: nothing replayed");
                return Ok(ExitCode::from(1));
            }
            let created = body["created"].as_array().cloned().unwrap_or_default();
            for c in &created {
                match c["delivery"].as_i64() {
                    Some(id) => println!(
                        "delivery {id}: event {} action {} (rule {})",
                        c["event_id"].as_str().unwrap_or(""),
                        c["action"].as_str().unwrap_or(""),
                        c["rule"].as_str().unwrap_or("")
                    ),
                    None => println!(
                        "would create: event {} action {} (rule {})",
                        c["event_id"].as_str().unwrap_or(""),
                        c["action"].as_str().unwrap_or(""),
                        c["rule"].as_str().unwrap_or("")
                    ),
                }
            }
            println!(
                "{evaluated} event(s) evaluated; {} deliver{} {}",
                created.len(),
                if created.len() == 1 { "y" } else { "ies" },
                if *dry_run {
                    "would be created (dry run: nothing created)"
                } else {
                    "created"
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let client = AdminClient::new(config_path)?;
    let mut q = vec![("limit", limit.to_string())];
    if let Some(s) = since {
        q.push(("since", s.clone()));
    }
    for (name, value) in [("event", event), ("user", user), ("rule", rule)] {
        if let Some(v) = value {
            q.push((name, v.clone()));
        }
    }
    let body = client.call(reqwest::Method::GET, "/api/v1/events", &q)?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = body["events"].as_array().cloned().unwrap_or_default();
    for e in &list {
        let rules: Vec<&str> = e["rules"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let deliveries: Vec<String> = e["deliveries"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|d| {
                        format!(
                            "{}:{}",
                            d["action"].as_str().unwrap_or(""),
                            d["status"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (from_user, to_user) = crate::callback::users(&e["callback"]);
        println!(
            "{}  {:<22} {} -> {}  rules [{}]  deliveries [{}]  id {}",
            when(e["received_at"].as_u64().unwrap_or(0)),
            e["event"].as_str().unwrap_or(""),
            from_user,
            to_user,
            rules.join(", "),
            deliveries.join(", "),
            e["id"].as_str().unwrap_or("")
        );
    }
    println!("{} event(s)", list.len());
    Ok(ExitCode::SUCCESS)
}

/// `easehook digests list`.
pub fn digests(config_path: &Path, cmd: &crate::cli::DigestsCommand) -> anyhow::Result<ExitCode> {
    let crate::cli::DigestsCommand::List { json } = cmd;
    let client = AdminClient::new(config_path)?;
    let body = client.call(reqwest::Method::GET, "/api/v1/digests", &[])?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = body["groups"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<10} {:<24} {:>6}  {:<20} {:<20} GROUP",
        "KIND", "RULE", "COUNT", "FIRST", "DUE / RESTING UNTIL"
    );
    for g in &list {
        let until = g["due_at"]
            .as_u64()
            .or_else(|| g["cooldown_until"].as_u64())
            .map(when)
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<24} {:>6}  {:<20} {:<20} {}",
            g["kind"].as_str().unwrap_or(""),
            g["rule"].as_str().unwrap_or(""),
            g["count"].as_u64().unwrap_or(0),
            when(g["first_at"].as_u64().unwrap_or(0)),
            until,
            g["group"]
        );
    }
    println!("{} group(s)", list.len());
    Ok(ExitCode::SUCCESS)
}

/// `easehook schema config|rules`: the JSON Schema of the file, generated
/// from the types the loader reads it into.
pub fn schema(which: &str) -> anyhow::Result<ExitCode> {
    let schema = match which {
        "config" => crate::config::schema(),
        _ => crate::rules::schema(),
    };
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(ExitCode::SUCCESS)
}
