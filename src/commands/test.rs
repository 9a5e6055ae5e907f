//! `easehook test --event F [--event G …]`: which rules match each event
//! and what each action would send, fully rendered; then what the digests
//! and thresholds would send for the whole sequence.
//!
//! Digests and thresholds run through a scratch embedded store in a
//! temporary directory, the same code the daemon runs, with each event
//! received at its callback's `timestamp`: a sequence of fixtures shows the
//! windows as they would be. Nothing is sent (unless `--send`) or kept.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::actions::{Message, Outcome, Senders};
use crate::callback::Callback;
use crate::cli::TestArgs;
use crate::config::expand::ProcessEnv;
use crate::snapshot::Snapshot;
use crate::store::{Accepted, NewEvent, Store};
use crate::template;

use super::when;

/// Read the callback of one `--event` (a file, or `-` for standard input),
/// filling in what only verification needs.
pub(super) fn read_event(arg: &str) -> anyhow::Result<Callback> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the event from standard input")?;
        s
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("cannot read {arg}"))?
    };
    let raw: Value =
        serde_json::from_str(&text).with_context(|| format!("{arg}: not valid JSON"))?;
    // A dry run needs no signature.
    crate::callback::unsigned(raw).map_err(|e| anyhow::anyhow!("{arg}: {e}"))
}

/// Renders, and with `--send` sends, counting failures.
struct Show<'a> {
    snap: &'a Snapshot,
    senders: Option<Senders>,
    runtime: &'a tokio::runtime::Runtime,
    failures: usize,
}

impl Show<'_> {
    /// Print a rendered message (or why it cannot be), and send it with
    /// `--send`.
    fn message(&mut self, rendered: Result<Message, String>, action: &crate::actions::Action) {
        let redactor = &self.snap.rules.redactor;
        let msg = match rendered {
            Ok(m) => m,
            Err(e) => {
                self.failures += 1;
                println!("    cannot render: {}", redactor.redact(&e));
                return;
            }
        };
        for line in msg.describe(redactor).lines() {
            println!("    {line}");
        }
        let Some(senders) = &self.senders else {
            return;
        };
        let settings = &self.snap.settings;
        let timeout = action.timeout.unwrap_or(settings.delivery.timeout);
        let outcome = self.runtime.block_on(async {
            tokio::time::timeout(timeout, senders.send(&msg, settings, timeout))
                .await
                .map(|a| a.outcome)
        });
        match outcome {
            Ok(Outcome::Sent) => println!("    => sent"),
            Ok(Outcome::Retry { error, .. }) => {
                self.failures += 1;
                println!(
                    "    => failed (would be retried): {}",
                    redactor.redact(&error)
                );
            }
            Ok(Outcome::Permanent(error)) => {
                self.failures += 1;
                println!("    => failed (permanent): {}", redactor.redact(&error));
            }
            Err(_) => {
                self.failures += 1;
                println!("    => failed: timed out after {}ms", timeout.as_millis());
            }
        }
    }

    /// One event: its rules and what each action would send. Returns the
    /// number of deliveries it makes on its own.
    fn event(&mut self, cb: &Callback) -> usize {
        let rules = &self.snap.rules;
        let evaluation = rules.evaluate(cb);
        if evaluation.rules.is_empty() {
            println!(
                "no rule matches this event: it would be acknowledged and stored, and nothing sent"
            );
            return 0;
        }
        let received = chrono::Utc::now();
        for &ri in &evaluation.rules {
            let rule = &rules.rules[ri];
            match &rule.description {
                Some(d) => println!("\nrule {} ({}): {d}", rule.name, rule.file),
                None => println!("\nrule {} ({})", rule.name, rule.file),
            }
            if let Some(agg) = &rule.aggregate {
                println!(
                    "  counts toward the {} of group {} (actions {}): shown below",
                    agg.kind().as_str(),
                    agg.group(cb),
                    rule.actions
                        .iter()
                        .map(|&a| rules.actions[a].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for &ai in rule.actions.iter().filter(|_| rule.aggregate.is_none()) {
                let action = &rules.actions[ai];
                let planned = evaluation.deliveries.iter().find(|p| p.action == ai);
                match planned {
                    None if !action.enabled => println!(
                        "  action {} ({}): disabled, skipped",
                        action.name,
                        action.kind.type_name()
                    ),
                    Some(p) if p.rule == ri => {
                        println!("  action {} ({}):", action.name, action.kind.type_name());
                        let data = template::Data::new(
                            cb,
                            received,
                            action.reads,
                            &rule.name,
                            &action.name,
                        );
                        let rendered = action.render(&rules.templates, &data);
                        self.message(rendered, action);
                    }
                    _ => println!(
                        "  action {} ({}): already triggered by an earlier rule",
                        action.name,
                        action.kind.type_name()
                    ),
                }
            }
            if rule.stop {
                println!("  (stop: later rules are not evaluated)");
            }
        }
        println!(
            "\n{} rule(s) matched, {} action(s) {}",
            evaluation.rules.len(),
            evaluation.deliveries.len(),
            if self.senders.is_some() {
                "attempted"
            } else {
                "would be sent"
            },
        );
        evaluation.deliveries.len()
    }

    /// Run the events' digests and thresholds through a scratch store and
    /// show what they would send. Returns how many deliveries they make.
    fn aggregates(&mut self, events: &[Callback]) -> anyhow::Result<usize> {
        let rules = &self.snap.rules;
        let dir = tempfile::tempdir().context("cannot make a scratch store")?;
        let store = crate::store::sqlite::SqliteStore::open(dir.path())?;
        let mut last_at = 0;
        let mut fired = Vec::new();
        for (i, cb) in events.iter().enumerate() {
            let evaluation = rules.evaluate(cb);
            let id = format!("event-{}", i + 1);
            let aggregates = rules.aggregates(&evaluation, cb, &id);
            // Windows run on the time each event was received: here its
            // timestamp, never before the event before it.
            let at = cb.timestamp.max(last_at);
            last_at = at;
            let new = NewEvent {
                id: id.clone(),
                dedup_key: id.clone(),
                event: cb.event.clone(),
                received_at_ms: at,
                body: cb.text(),
                from_user: cb.from_user.clone(),
                to_user: cb.to_user.clone(),
                rules: Vec::new(),
                deliveries: Vec::new(),
                lease_until: None,
                aggregates,
            };
            if let Accepted::New { fired: f, .. } = self.runtime.block_on(store.accept(new, 0))? {
                fired.extend(f.into_iter().map(|r| (i + 1, r)));
            }
        }
        for (event, rule) in &fired {
            println!("\nthreshold {rule} fires at event {event}");
        }
        // Every digest closes, every firing is delivered: claim them all.
        let claimed = self
            .runtime
            .block_on(store.claim_due(u64::MAX / 4, usize::MAX >> 1, 1))?;
        let mut made = 0;
        for c in &claimed {
            let Some(a) = &c.aggregate else { continue };
            let Some(action) = rules.action(&c.action) else {
                continue;
            };
            if a.kind == crate::store::AggregateKind::Digest {
                println!(
                    "\ndigest {} of group {}: {} event(s) from {} to {}, closes at {}",
                    a.rule,
                    a.group,
                    a.count,
                    when(a.first_at),
                    when(a.last_at),
                    when(a.due_at)
                );
            } else {
                println!(
                    "\nthreshold {} of group {}: {} within {}",
                    a.rule,
                    a.group,
                    a.count,
                    humantime::format_duration(std::time::Duration::from_millis(a.within_ms))
                );
            }
            println!("  action {} ({}):", action.name, action.kind.type_name());
            let Ok(cb) = &c.callback else { continue };
            let received = chrono::DateTime::from_timestamp_millis(c.received_at_ms as i64)
                .unwrap_or_default();
            let data = template::Data::new(cb, received, action.reads, &c.rule, &action.name)
                .with(a.kind.as_str(), crate::rules::aggregate::context(a));
            let rendered = action.render(&rules.templates, &data);
            self.message(rendered, action);
            made += 1;
        }
        Ok(made)
    }
}

/// `easehook test --event FILE|- [--event FILE …]`: which rules match and
/// what each action would send, fully rendered; digests and thresholds over
/// the whole sequence. Nothing is sent (without `--send`) or stored.
pub(super) fn events(config_path: &Path, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let snap = match crate::snapshot::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => {
            println!("{diags}");
            println!(
                "{} problem(s) found; fix them first (easehook check)",
                diags.len()
            );
            return Ok(ExitCode::from(1));
        }
    };
    let events = args
        .event
        .iter()
        .map(|e| read_event(e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut show = Show {
        snap: &snap,
        senders: if args.send {
            Some(Senders::new()?)
        } else {
            None
        },
        runtime: &runtime,
        failures: 0,
    };
    for (i, cb) in events.iter().enumerate() {
        if events.len() > 1 {
            println!(
                "\n== event {} of {}: {} ==",
                i + 1,
                events.len(),
                args.event[i]
            );
        }
        println!(
            "event {} from {:?} to {:?} (appkey {:?})",
            cb.event,
            cb.from_user,
            cb.to_user,
            cb.appkey.as_deref().unwrap_or("")
        );
        show.event(cb);
    }
    let counted = events
        .iter()
        .any(|cb| !snap.rules.evaluate(cb).aggregates.is_empty());
    if counted {
        println!(
            "\n== digests and thresholds over the {} event(s) ==",
            events.len()
        );
        let made = show.aggregates(&events)?;
        println!(
            "\n{made} delivery(ies) of digests and thresholds {}",
            if args.send {
                "attempted"
            } else {
                "would be sent"
            }
        );
    }
    if show.failures > 0 {
        println!("{} failed", show.failures);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
