//! `easehook test --presend` (SPEC §16): the moderation rules tried before
//! they answer a real message.
//!
//! - `--event FILE|-` (repeatable): each file a pre-send request; for each,
//!   the verdict, the rule that decided, the hits and the exact answer
//!   body. Nothing is stored and no threshold counts.
//! - `--since WHEN [--until WHEN] [--rules DIR] [--json]`: the stored
//!   post-send **message** callbacks of the period (events `chat` and
//!   `groupchat` with a payload), read through the admin API, evaluated
//!   against the moderation rules of `DIR` (else `rules_dir` on disk):
//!   per rule, how many it would have rejected or rewritten, with examples.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::backtest::{EXAMPLES, Stored, instant, read};
use super::test::read_event;
use super::when;
use crate::cli::TestArgs;
use crate::config::{self, expand::ProcessEnv};
use crate::diag::Diagnostics;
use crate::moderation::{Counting, Decision, Moderation, Verdict, verdict_name};
use crate::rules::RuleSet;

/// `test --presend …`: exit 0 with the verdicts; 1 when the rules have
/// problems (or, with `--since`, the period holds no message).
pub fn test(config_path: &Path, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let mut settings = match config::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => return problems(&diags, "the configuration"),
    };
    if let Some(dir) = &args.rules {
        settings.rules_dir = dir.clone();
    }
    let rules = match RuleSet::load(&settings, &ProcessEnv) {
        Ok(r) => r,
        Err(diags) => return problems(&diags, "the rules"),
    };
    let mut diags = Diagnostics::new();
    let moderation = Moderation::load(&settings, &rules, None, &mut diags);
    if !diags.is_empty() {
        return problems(&diags, "the moderation rules");
    }
    if settings.presend.is_none() {
        eprintln!(
            "note: {} has no presend: section; the daemon answers no pre-send request",
            config_path.display()
        );
    }
    match &args.since {
        None => requests(&moderation, args),
        Some(since) => history(config_path, &moderation, args, since),
    }
}

fn problems(diags: &Diagnostics, what: &str) -> anyhow::Result<ExitCode> {
    println!("{diags}");
    println!("{} problem(s) found in {what}", diags.len());
    Ok(ExitCode::from(1))
}

/// The verdict of each request given with `--event`.
fn requests(moderation: &Moderation, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let now = crate::now_ms();
    let mut out = Vec::new();
    for arg in &args.event {
        let cb = read_event(arg)?;
        let d = moderation.evaluate(&cb, now, Counting::DryRun);
        if args.json {
            out.push(json!({"event": arg, "presend": d.record(), "answer": d.answer}));
            continue;
        }
        if args.event.len() > 1 {
            println!("== {arg} ==");
        }
        println!(
            "verdict {}{}",
            verdict_name(d.verdict),
            d.rule
                .as_deref()
                .map(|r| format!(" by rule {r}"))
                .unwrap_or_else(|| " (no rule fired)".into())
        );
        if let Some(code) = &d.code {
            println!("code {code}");
        }
        if !d.hits.is_empty() {
            println!("hits {}", d.hits.join(", "));
        }
        if d.too_long {
            println!("the rewrite would not fit in an answer: rejected instead");
        }
        println!("answer {}", d.answer);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// A rule's tally over the period.
#[derive(Default)]
struct Tally {
    rejected: usize,
    rewritten: usize,
    examples: Vec<Value>,
}

/// What the moderation rules would have done to the period's messages.
fn history(
    config_path: &Path,
    moderation: &Moderation,
    args: &TestArgs,
    since: &str,
) -> anyhow::Result<ExitCode> {
    let now = crate::now_ms();
    let since = instant(since, now)?;
    let until = args.until.as_deref().map(|u| instant(u, now)).transpose()?;
    let events: Vec<Stored> = read(config_path, since, until, args.event.first())?
        .into_iter()
        .filter(is_message)
        .collect();
    if events.is_empty() {
        println!(
            "no stored message callbacks between {} and {}: nothing to evaluate",
            when(since),
            until.map(when).unwrap_or_else(|| "now".into())
        );
        return Ok(ExitCode::from(1));
    }
    let mut tally: BTreeMap<String, Tally> = moderation
        .rules
        .iter()
        .map(|r| (r.name.clone(), Tally::default()))
        .collect();
    let (mut rejected, mut rewritten) = (0, 0);
    for e in &events {
        let Ok(cb) = crate::callback::unsigned(e.callback.clone()) else {
            continue;
        };
        let d = moderation.evaluate(&cb, now, Counting::DryRun);
        let Some(rule) = d.rule.clone() else { continue };
        match d.verdict {
            Verdict::Pass => continue,
            Verdict::Reject => rejected += 1,
            Verdict::Rewrite => rewritten += 1,
        }
        // A rewrite names each rule that rewrote.
        for name in rule.split(',') {
            let t = tally.entry(name.to_string()).or_default();
            match d.verdict {
                Verdict::Reject => t.rejected += 1,
                _ => t.rewritten += 1,
            }
            if t.examples.len() < EXAMPLES {
                t.examples.push(example(e, &cb, &d));
            }
        }
    }
    if args.json {
        let rules: Vec<Value> = tally
            .iter()
            .map(|(name, t)| {
                json!({"rule": name, "rejected": t.rejected, "rewritten": t.rewritten, "examples": t.examples})
            })
            .collect();
        let out = json!({
            "messages": events.len(),
            "since": since,
            "until": until,
            "rejected": rejected,
            "rewritten": rewritten,
            "rules": rules,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} stored message(s) received {} – {}: {rejected} would be rejected, {rewritten} rewritten",
        events.len(),
        when(since),
        until.map(when).unwrap_or_else(|| "now".into()),
    );
    println!("\n{:<28} {:>9} {:>10}", "RULE", "REJECTED", "REWRITTEN");
    for (name, t) in &tally {
        println!("{name:<28} {:>9} {:>10}", t.rejected, t.rewritten);
        for x in &t.examples {
            println!(
                "    {} {} -> {}: {:?}{}",
                x["id"].as_str().unwrap_or(""),
                x["from"].as_str().unwrap_or(""),
                x["to"].as_str().unwrap_or(""),
                x["text"].as_str().unwrap_or(""),
                x["rewritten"]
                    .as_str()
                    .map(|r| format!(" => {r:?}"))
                    .unwrap_or_default()
            );
        }
    }
    println!("\nnothing was sent, stored or counted");
    Ok(ExitCode::SUCCESS)
}

/// A post-send callback of a message: `chat` or `groupchat` with a payload.
fn is_message(e: &Stored) -> bool {
    matches!(e.event.as_str(), "chat" | "groupchat") && e.callback["payload"].is_object()
}

fn example(e: &Stored, cb: &crate::callback::Callback, d: &Decision) -> Value {
    json!({
        "id": e.id,
        "from": cb.from_user.as_str(),
        "to": cb.to_user.as_str(),
        "code": d.code,
        "hits": d.hits,
        "text": d.text,
        "rewritten": d.rewritten,
    })
}
