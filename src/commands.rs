//! The commands besides the daemon itself: `check`, `test` and `simulate`,
//! and `run`'s start-up around [`crate::app::App`].

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::app::App;
use crate::callback::Callback;
use crate::cli::{SimulateArgs, TestArgs};
use crate::config::{self, expand::ProcessEnv};
use crate::rules::samples;
use crate::shutdown::{self, Shutdown};
use crate::template;

/// `easehook run`: start the daemon and serve until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    // The config decides the log format, so it is read before logging starts;
    // its problems go to stderr as they are.
    let settings = match config::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!("easehook: {} problem(s) in the configuration; not starting", diags.len());
            return Ok(ExitCode::from(1));
        }
    };
    crate::telemetry::init(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        let app = App::start(config_path, Arc::new(ProcessEnv), shutdown.clone()).await?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            shutdown::signal().await;
            crate::app::notify_systemd(&[sd_notify::NotifyState::Stopping]);
            trigger.trigger();
        });
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
            for w in snap.settings.warnings.iter().chain(&snap.rules.warnings) {
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
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `easehook test --event FILE|-`: which rules match and what each action
/// would send, fully rendered. Nothing is sent or stored.
pub fn test(config_path: &Path, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let snap = match crate::snapshot::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => {
            println!("{diags}");
            println!("{} problem(s) found; fix them first (easehook check)", diags.len());
            return Ok(ExitCode::from(1));
        }
    };
    let text = if args.event == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the event from standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.event).with_context(|| format!("cannot read {}", args.event))?
    };
    let mut raw: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", args.event))?;
    let Some(obj) = raw.as_object_mut() else {
        bail!("{}: the event must be a JSON object", args.event);
    };
    // A dry run needs no signature: fill what only verification needs.
    obj.entry("security").or_insert_with(|| json!("unsigned"));
    obj.entry("timestamp").or_insert_with(|| json!(crate::verify::now_ms()));
    if !obj.contains_key("callId") {
        let appkey = obj.get("appkey").and_then(Value::as_str).unwrap_or("test#app").to_string();
        obj.insert("callId".into(), json!(format!("{appkey}_0")));
    }
    let cb = Callback::from_value(raw).map_err(|e| anyhow::anyhow!("{}: {e}", args.event))?;
    let rules = &snap.rules;
    let redactor = &snap.settings.redactor;
    println!(
        "event {} from {:?} to {:?} (appkey {:?})",
        cb.event,
        cb.from_user,
        cb.to_user,
        cb.appkey.as_deref().unwrap_or("")
    );
    let evaluation = rules.evaluate(&cb);
    if evaluation.rules.is_empty() {
        println!("no rule matches this event: it would be acknowledged and stored, and nothing sent");
        return Ok(ExitCode::SUCCESS);
    }
    let base = template::base_context(&cb, chrono::Utc::now());
    let mut failures = 0;
    for &ri in &evaluation.rules {
        let rule = &rules.rules[ri];
        match &rule.description {
            Some(d) => println!("\nrule {} ({}): {d}", rule.name, rule.file),
            None => println!("\nrule {} ({})", rule.name, rule.file),
        }
        for &ai in &rule.actions {
            let action = &rules.actions[ai];
            let planned = evaluation.deliveries.iter().find(|p| p.action == ai);
            match planned {
                None if !action.enabled => println!("  action {} ({}): disabled, skipped", action.name, action.kind.type_name()),
                Some(p) if p.rule == ri => {
                    println!("  action {} ({}):", action.name, action.kind.type_name());
                    let ctx = template::with_names(&base, &rule.name, &action.name);
                    match action.render(&rules.templates, &ctx) {
                        Ok(msg) => {
                            for line in msg.describe(redactor).lines() {
                                println!("    {line}");
                            }
                        }
                        Err(e) => {
                            failures += 1;
                            println!("    cannot render: {}", redactor.redact(&e));
                        }
                    }
                }
                _ => println!("  action {} ({}): already triggered by an earlier rule", action.name, action.kind.type_name()),
            }
        }
        if rule.stop {
            println!("  (stop: later rules are not evaluated)");
        }
    }
    println!(
        "\n{} rule(s) matched, {} action(s) would be sent{}",
        evaluation.rules.len(),
        evaluation.deliveries.len(),
        if failures > 0 { format!(", {failures} cannot be rendered") } else { String::new() }
    );
    Ok(if failures > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `easehook simulate`: build or read a callback, sign it, POST it.
pub fn simulate(config_path: &Path, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let needs_config = args.secret.is_none() || args.url.is_none() || args.appkey.is_none();
    let settings = if needs_config {
        Some(config::load(config_path, &ProcessEnv).map_err(|d| anyhow::anyhow!("{d}"))?)
    } else {
        None
    };
    let now = crate::verify::now_ms();
    let mut body: Value = match &args.file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", f.display()))?
        }
        None => {
            let appkey = match (&args.appkey, &settings) {
                (Some(a), _) => a.clone(),
                (None, Some(s)) => s.secrets.appkeys().next().unwrap_or("easemob-demo#chatdemoui").to_string(),
                (None, None) => unreachable!("settings are loaded when no appkey is given"),
            };
            // Nanoseconds make a fresh, unique 18-digit message id per run.
            let msg_id = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() % 10u128.pow(18)).to_string();
            samples::body(&args.event, &appkey, &args.from, &args.to, &msg_id, now)
        }
    };
    let obj = body.as_object_mut().context("the callback must be a JSON object")?;
    if let Some(a) = &args.appkey {
        obj.insert("appkey".into(), json!(a));
    }
    let appkey = obj.get("appkey").and_then(Value::as_str).unwrap_or("").to_string();
    let call_id = obj.get("callId").and_then(Value::as_str).context("the callback has no callId")?.to_string();
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
            .with_context(|| format!("no secret configured for appkey {appkey:?}; pass --secret"))?,
        (None, None) => unreachable!("settings are loaded when no secret is given"),
    };
    obj.insert("security".into(), json!(crate::verify::sign(&call_id, &secret, &timestamp)));
    if args.print {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let url = match (&args.url, &settings) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => {
            let mut addr = s.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
            }
            format!("http://{addr}{}", s.callback_path)
        }
        (None, None) => unreachable!("settings are loaded when no url is given"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
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
    println!("POST {url} ({})", body.get("callId").and_then(Value::as_str).unwrap_or(""));
    println!("HTTP {} {}", status.as_u16(), text);
    Ok(if status.as_u16() == 200 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
