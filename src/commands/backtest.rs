//! `easehook test --since 24h [--until T] [--event PATTERN] [--rules DIR]
//! [--json]` (SPEC §14): what a rule change would have sent over a period.
//!
//! The stored events of the period are read through the admin API, a page
//! at a time, and evaluated against the candidate rules (`--rules`, else
//! `rules_dir` as it is on disk). The deliveries the rules in force made
//! (as stored with each event) are compared with those the candidate rules
//! would make, per rule and action, with example events for each
//! difference. Digests and thresholds are replayed in order through a
//! scratch embedded store, each event at the time it was received. Nothing
//! is sent or stored.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::{AdminClient, when};
use crate::callback::users;
use crate::cli::TestArgs;
use crate::config::{self, expand::ProcessEnv};
use crate::rules::RuleSet;
use crate::store::{NewEvent, Store};

/// Events read per request.
const PAGE: usize = 1000;
/// Example events shown per difference.
pub(super) const EXAMPLES: usize = 3;

/// One stored event, as the backtest needs it.
pub(super) struct Stored {
    pub(super) id: String,
    pub(super) event: String,
    received_at: u64,
    pub(super) callback: Value,
    /// (rule, action) of each delivery it got.
    made: Vec<(String, String)>,
}

/// When `--since` or `--until` says ([`config::units::instant`]).
pub(super) fn instant(s: &str, now: u64) -> anyhow::Result<u64> {
    config::units::instant(s, now).ok_or_else(|| {
        anyhow::anyhow!("{s:?} is not a duration (24h), an RFC 3339 time or milliseconds")
    })
}

/// `test --since …`: the backtest. Exit 0 with the comparison; 1 when the
/// candidate rules have problems, the period holds no event, or the admin
/// API cannot be reached; 2 for a usage error.
pub fn backtest(config_path: &Path, args: &TestArgs) -> anyhow::Result<ExitCode> {
    if args.event.len() > 1 || args.send {
        eprintln!("easehook: a backtest takes at most one --event PATTERN and no --send");
        return Ok(ExitCode::from(2));
    }
    let now = crate::now_ms();
    let since = instant(args.since.as_deref().unwrap_or_default(), now)?;
    let until = args.until.as_deref().map(|u| instant(u, now)).transpose()?;
    let mut settings = match config::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => {
            println!("{diags}");
            println!("{} problem(s) found in the configuration", diags.len());
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(dir) = &args.rules {
        settings.rules_dir = dir.clone();
    }
    let candidate = match RuleSet::load(&settings, &ProcessEnv) {
        Ok(r) => r,
        Err(diags) => {
            println!("{diags}");
            println!(
                "{} problem(s) found in the candidate rules ({}); nothing evaluated",
                diags.len(),
                settings.rules_dir.display()
            );
            return Ok(ExitCode::from(1));
        }
    };
    let events = read(config_path, since, until, args.event.first())?;
    if events.is_empty() {
        println!(
            "no stored events {}between {} and {}: nothing to compare",
            args.event
                .first()
                .map(|e| format!("of {e} "))
                .unwrap_or_default(),
            when(since),
            until.map(when).unwrap_or_else(|| "now".into())
        );
        return Ok(ExitCode::from(1));
    }
    let in_force = tally(events.iter().map(|e| (e, e.made.clone())));
    let would = evaluate(&candidate, &events)?;
    let report = compare(&in_force, &would, &events);
    if args.json {
        let out = json!({
            "events": events.len(),
            "since": since,
            "until": until,
            "rules_dir": settings.rules_dir.display().to_string(),
            "deliveries": report,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} stored event(s) received {} – {}, against the rules in {}",
        events.len(),
        when(since),
        until.map(when).unwrap_or_else(|| "now".into()),
        settings.rules_dir.display()
    );
    println!(
        "\n{:<28} {:<24} {:>9} {:>9} {:>10}",
        "RULE", "ACTION", "IN FORCE", "CANDIDATE", "DIFFERENCE"
    );
    for row in &report {
        let diff = row["difference"].as_i64().unwrap_or(0);
        println!(
            "{:<28} {:<24} {:>9} {:>9} {:>10}",
            row["rule"].as_str().unwrap_or(""),
            row["action"].as_str().unwrap_or(""),
            row["in_force"],
            row["candidate"],
            if diff > 0 {
                format!("+{diff}")
            } else {
                diff.to_string()
            }
        );
        for (key, label) in [("added", "now also"), ("removed", "no longer")] {
            for e in row[key].as_array().into_iter().flatten() {
                println!(
                    "    {label}: {} {} {} -> {}",
                    e["id"].as_str().unwrap_or(""),
                    e["event"].as_str().unwrap_or(""),
                    e["from"].as_str().unwrap_or(""),
                    e["to"].as_str().unwrap_or("")
                );
            }
        }
    }
    let changed = report
        .iter()
        .filter(|r| r["difference"] != 0 || r["added"] != json!([]))
        .count();
    println!(
        "\n{changed} of {} rule and action pair(s) would change; nothing was sent or stored",
        report.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Read the period's events through the admin API, oldest first.
pub(super) fn read(
    config_path: &Path,
    since: u64,
    until: Option<u64>,
    pattern: Option<&String>,
) -> anyhow::Result<Vec<Stored>> {
    let client = AdminClient::new(config_path)?;
    let progress = std::io::stderr().is_terminal();
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut q = vec![("since", since.to_string()), ("limit", PAGE.to_string())];
        if let Some(u) = until {
            q.push(("until", u.to_string()));
        }
        if let Some(p) = pattern {
            q.push(("event", p.clone()));
        }
        if let Some(b) = &before {
            q.push(("before", b.clone()));
        }
        let page = client.call(reqwest::Method::GET, "/api/v1/events", &q)?;
        for e in page["events"].as_array().into_iter().flatten() {
            let made = e["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    (
                        d["rule"].as_str().unwrap_or("").to_string(),
                        d["action"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            out.push(Stored {
                id: e["id"].as_str().unwrap_or("").to_string(),
                event: e["event"].as_str().unwrap_or("").to_string(),
                received_at: e["received_at"].as_u64().unwrap_or(0),
                callback: e["callback"].clone(),
                made,
            });
        }
        if progress {
            eprint!("\rread {} event(s)…", out.len());
        }
        match page["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    if progress {
        eprintln!();
    }
    out.reverse();
    Ok(out)
}

/// (rule, action) → the events that got such a delivery.
type Tally = BTreeMap<(String, String), BTreeSet<usize>>;

fn tally<'a>(made: impl Iterator<Item = (&'a Stored, Vec<(String, String)>)>) -> Tally {
    let mut t = Tally::new();
    for (i, (_, pairs)) in made.enumerate() {
        for pair in pairs {
            t.entry(pair).or_default().insert(i);
        }
    }
    t
}

/// The deliveries the candidate rules would make: each event's own, and
/// those of digests and thresholds replayed in order.
fn evaluate(rules: &RuleSet, events: &[Stored]) -> anyhow::Result<Tally> {
    let mut t = Tally::new();
    let dir = tempfile::tempdir().context("cannot make a scratch store")?;
    let store = crate::store::sqlite::SqliteStore::open(dir.path())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut any_aggregate = false;
    for (i, e) in events.iter().enumerate() {
        // The API shows no signature: a placeholder stands in for it.
        let Ok(cb) = crate::callback::unsigned(e.callback.clone()) else {
            continue;
        };
        let evaluation = rules.evaluate(&cb);
        for p in &evaluation.deliveries {
            let pair = (
                rules.rules[p.rule].name.clone(),
                rules.actions[p.action].name.clone(),
            );
            t.entry(pair).or_default().insert(i);
        }
        if evaluation.aggregates.is_empty() {
            continue;
        }
        any_aggregate = true;
        let id = format!("{i}");
        let new = NewEvent {
            aggregates: rules.aggregates(&evaluation, &cb, &id),
            id: id.clone(),
            dedup_key: id,
            event: cb.event.clone(),
            received_at_ms: e.received_at,
            body: cb.text(),
            from_user: cb.from_user.clone(),
            to_user: cb.to_user.clone(),
            rules: Vec::new(),
            deliveries: Vec::new(),
            lease_until: None,
        };
        runtime.block_on(store.accept(new, 0))?;
    }
    if any_aggregate {
        // Every digest closes, every firing is made: claim them all.
        let claimed = runtime.block_on(store.claim_due(u64::MAX / 4, usize::MAX >> 1, 1))?;
        for c in claimed {
            if let Ok(i) = c.event_id.parse::<usize>() {
                t.entry((c.rule.to_string(), c.action.to_string()))
                    .or_default()
                    .insert(i);
            }
        }
    }
    Ok(t)
}

/// One row per (rule, action) either side has, with examples of the
/// events each difference is made of.
fn compare(in_force: &Tally, would: &Tally, events: &[Stored]) -> Vec<Value> {
    let empty = BTreeSet::new();
    let keys: BTreeSet<&(String, String)> = in_force.keys().chain(would.keys()).collect();
    let example = |i: &usize| {
        let e = &events[*i];
        let (from, to) = users(&e.callback);
        json!({"id": e.id, "event": e.event, "from": from, "to": to})
    };
    keys.into_iter()
        .map(|key| {
            let a = in_force.get(key).unwrap_or(&empty);
            let b = would.get(key).unwrap_or(&empty);
            let added: Vec<Value> = b.difference(a).take(EXAMPLES).map(example).collect();
            let removed: Vec<Value> = a.difference(b).take(EXAMPLES).map(example).collect();
            json!({
                "rule": key.0,
                "action": key.1,
                "in_force": a.len(),
                "candidate": b.len(),
                "difference": b.len() as i64 - a.len() as i64,
                "added": added,
                "removed": removed,
            })
        })
        .collect()
}
