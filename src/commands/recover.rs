//! `easehook easemob recover --appkey A --since 2h [--until WHEN]
//! [--target-url URL] [--dry-run]` (SPEC §14): after an outage, ask
//! Easemob to re-send the callbacks it failed to deliver.
//!
//! Easemob's failed-callback storage (回调异常缓存, a paid option of the
//! app) keeps what it could not deliver for 3 days, in sets of 10 minutes,
//! each named by a date key (`202109091440`, the slot's start in China
//! time). This lists the sets (`GET /{org}/{app}/callbacks/storage/info`)
//! and asks for each one of the period to be re-sent (`POST
//! /{org}/{app}/callbacks/storage/retry`), at most 10 times per key as
//! Easemob recommends, waiting out a 429. Callbacks that arrive twice are
//! absorbed by deduplication.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{NaiveDateTime, TimeZone};
use serde_json::{Value, json};

use crate::cli::RecoverArgs;
use crate::config::{self, expand::ProcessEnv};

/// Easemob's advice: retry a set at most this often.
const MAX_RETRIES: u64 = 10;
/// A set covers this long after its key's time.
const SLOT_MS: u64 = 600_000;
/// How often a 429 is waited out before the key is given up.
const THROTTLED_TRIES: u32 = 5;

/// A date key's start in ms: the key is China time (UTC+8).
fn key_start(key: &str) -> Option<u64> {
    let t = NaiveDateTime::parse_from_str(key, "%Y%m%d%H%M").ok()?;
    let t = chrono_tz::Asia::Shanghai.from_local_datetime(&t).single()?;
    Some(t.timestamp_millis().max(0) as u64)
}

/// `easemob recover`. Exit 0 when every key of the period was asked for
/// (or there was none), 1 when Easemob refused (its error shown as it
/// is) or a key failed, 2 for a usage error.
pub fn recover(config_path: &Path, args: &RecoverArgs) -> anyhow::Result<ExitCode> {
    let settings = match config::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => {
            println!("{diags}");
            return Ok(ExitCode::from(1));
        }
    };
    let now = crate::now_ms();
    let when = |s: &str| config::units::instant(s, now);
    let Some(since) = when(&args.since) else {
        eprintln!(
            "easehook: --since {:?} is not a duration (2h), an RFC 3339 time or ms",
            args.since
        );
        return Ok(ExitCode::from(2));
    };
    let until = match args.until.as_deref().map(when) {
        None => now,
        Some(Some(u)) => u,
        Some(None) => {
            eprintln!("easehook: --until is not a duration, an RFC 3339 time or ms");
            return Ok(ExitCode::from(2));
        }
    };
    if !settings.easemob.contains_key(&args.appkey) {
        println!(
            "appkey {:?} has no credentials under easemob: in {}",
            args.appkey,
            settings.path.display()
        );
        return Ok(ExitCode::from(1));
    }
    let target = args
        .target_url
        .clone()
        .or_else(|| settings.public_callback_url.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let clients = crate::actions::easemob::Clients::default();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        runtime.block_on(async {
            let resp = clients
                .request(&http, &args.appkey, &settings, method, path, body.as_ref())
                .await
                .map_err(|o| match o {
                    crate::actions::Outcome::Retry { error, .. }
                    | crate::actions::Outcome::Permanent(error) => error,
                    crate::actions::Outcome::Sent => String::new(),
                })?;
            let status = resp.status().as_u16();
            let after = crate::actions::retry_after(&resp);
            let text = resp.text().await.unwrap_or_default();
            Ok::<_, String>((status, after, text))
        })
    };
    let (status, _, text) = match call(reqwest::Method::GET, "/callbacks/storage/info", None) {
        Ok(r) => r,
        Err(e) => {
            println!("cannot list the failed-callback storage: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if status != 200 {
        println!(
            "Easemob refused to list the failed-callback storage: {}",
            crate::actions::easemob::easemob_error(status, &text)
        );
        if status == 403 {
            println!(
                "(the app's failed-callback storage, 回调异常缓存, is a paid option: enable it in the Easemob console first)"
            );
        }
        return Ok(ExitCode::from(1));
    }
    let info: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut sets: Vec<(String, u64, u64)> = info["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some((
                d["date"].as_str()?.to_string(),
                d["size"].as_u64().unwrap_or(0),
                d["retry"].as_u64().unwrap_or(0),
            ))
        })
        .filter(|(key, _, _)| {
            key_start(key).is_some_and(|start| start + SLOT_MS > since && start < until)
        })
        .collect();
    sets.sort();
    let to = target
        .as_deref()
        .map(|t| format!("to {t}"))
        .unwrap_or_else(|| "to the callback rule's own URL".into());
    if sets.is_empty() {
        println!(
            "no stored failed callbacks of {} in that period",
            args.appkey
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0;
    let mut asked = 0;
    for (key, size, retry) in &sets {
        print!("{key}  {size:>6} callback(s)  retried {retry}x  ");
        if *retry >= MAX_RETRIES {
            println!("skipped: retried {MAX_RETRIES} times already (Easemob advises no more)");
            continue;
        }
        if args.dry_run {
            println!("would be re-sent {to}");
            continue;
        }
        let mut body = json!({"date": key, "retry": retry});
        if let Some(t) = &target {
            body["targetUrl"] = json!(t);
        }
        let mut result = None;
        for attempt in 1..=THROTTLED_TRIES {
            match call(
                reqwest::Method::POST,
                "/callbacks/storage/retry",
                Some(body.clone()),
            ) {
                Ok((429, after, _)) if attempt < THROTTLED_TRIES => {
                    let wait = after.unwrap_or(Duration::from_secs(u64::from(attempt)));
                    std::thread::sleep(wait.min(Duration::from_secs(60)));
                }
                Ok((200, _, text)) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    result = Some(match v["data"].as_str() {
                        Some("success") => Ok(()),
                        other => Err(format!("Easemob answered {}", other.unwrap_or("nothing"))),
                    });
                    break;
                }
                Ok((status, _, text)) => {
                    result = Some(Err(crate::actions::easemob::easemob_error(status, &text)));
                    break;
                }
                Err(e) => {
                    result = Some(Err(e));
                    break;
                }
            }
        }
        match result.unwrap_or_else(|| Err("still throttled (429)".into())) {
            Ok(()) => {
                asked += 1;
                println!("re-sent {to}");
            }
            Err(e) => {
                failed += 1;
                println!("failed: {e}");
            }
        }
    }
    if args.dry_run {
        println!("{} set(s) would be re-sent; nothing was asked", sets.len());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{asked} set(s) re-sent, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_keys_are_china_time() {
        // 2021-09-09 14:40 in Beijing is 06:40 UTC.
        assert_eq!(key_start("202109091440"), Some(1_631_169_600_000));
        assert_eq!(key_start("2021-09-09"), None);
    }
}
