//! Criterion benchmarks of the request path's pure parts: parse + verify,
//! rule evaluation (100 and 10,000 rules) and rendering; and of a delivery's
//! (parse, context, render).
//!
//! `cargo bench --bench engine`; figures and their baseline in BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use easehook::callback::{Callback, ROSTER_OPERATIONS};
use easehook::config::{self, Secrets};
use easehook::rules::RuleSet;
use easehook::template::{Data, Reads};
use easehook::verify;

const SECRET: &str = "bench-secret-0123456789";

/// A realistic mix of `n` rules: per-user, per-app and per-recipient routing
/// of roster events, other families, and a few rules that pin no value
/// (globs) and so are evaluated for every event; then the product team's two
/// ban rules, which match the benchmark event. `ban` is added to the first
/// of them: nothing, or a `digest:` or `threshold:` key.
fn rules_yaml(n: usize) -> String {
    rules_yaml_with(n, "")
}

fn rules_yaml_with(n: usize, ban: &str) -> String {
    let mut s = String::from(
        "actions:\n  note: {type: log, message: '{{event}} {{from_user}} -> {{to_user}}'}\n  \
         mail: {type: email, to: [product@example.com], subject: '{{from_user}} blocked {{to_user}}', text: {template: ban.txt.hbs}, html: {template: ban.html.hbs}}\n  \
         slack: {type: slack, webhook_url: 'https://hooks.example/T/B/X', text: ':no_entry: *{{from_user}}* blocked *{{to_user}}* at {{datetime timestamp}}'}\n  \
         audit: {type: http, url: 'https://audit.example/ban/{{event}}', json: {event: '{{event}}', user: '{{from_user}}', target: '{{to_user}}', at: '{{time}}'}}\n\
         rules:\n",
    );
    for i in 0..n {
        let op = ROSTER_OPERATIONS[i % ROSTER_OPERATIONS.len()];
        let when = match i % 200 {
            199 => format!("{{from: 'test_{i}_*'}}"),
            k if k % 4 == 0 => format!("{{event: roster:{op}, from: user{i}}}"),
            k if k % 4 == 1 => format!("{{event: roster:{op}, appkey: 'org{i}#app'}}"),
            k if k % 4 == 2 => format!(
                "{{event: roster:{op}, to: [user{i}, vip{i}], payload.status.error_code: ok}}"
            ),
            _ => format!("{{event: fam{i}, eventType: [chat, chat_offline]}}"),
        };
        s += &format!("  - {{name: r{i}, when: {when}, actions: [note]}}\n");
    }
    s += &format!(
        "  - {{name: ban-to-product, when: {{event: roster:ban, eventType: [chat, chat_offline], payload.status.error_code: ok}}, unless: {{from: 'test_*'}}, actions: [mail, slack, audit]{ban}}}\n"
    );
    s += "  - {name: roster-audit, when: {event: roster}, actions: [note]}\n";
    s
}

fn load(n: usize) -> (tempfile::TempDir, RuleSet) {
    load_yaml(&rules_yaml(n))
}

fn load_yaml(yaml: &str) -> (tempfile::TempDir, RuleSet) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    for t in ["ban.txt.hbs", "ban.html.hbs", "footer.txt.hbs"] {
        std::fs::copy(
            root.join("templates").join(t),
            dir.path().join("templates").join(t),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("rules/rules.yaml"), yaml).unwrap();
    let cfg = dir.path().join("easehook.yaml");
    std::fs::write(&cfg, format!("secrets: {{\"org#app\": [\"{SECRET}\"]}}\n")).unwrap();
    let env: HashMap<String, String> = HashMap::new();
    let settings = config::load(&cfg, &env).unwrap();
    let rules = RuleSet::load(&settings, &env).unwrap();
    (dir, rules)
}

fn ban_body() -> Vec<u8> {
    let mut body = easehook::rules::samples::body(
        "roster:ban",
        "org#app",
        "alice",
        "bob",
        "966725184268539960",
        1_642_648_046_912,
    );
    let sig = verify::sign(body["callId"].as_str().unwrap(), SECRET, "1642648046912");
    body["security"] = serde_json::json!(sig);
    serde_json::to_vec(&body).unwrap()
}

fn bench(c: &mut Criterion) {
    let body = ban_body();
    let secrets = Secrets::from_pairs([("org#app", SECRET)]);

    // Baseline of the same run: what parsing the JSON alone costs.
    c.bench_function("baseline/serde_json_parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    c.bench_function("callback/parse_and_verify", |b| {
        b.iter(|| {
            let cb = Callback::parse(black_box(&body)).unwrap();
            verify::check(&cb, &secrets, None, 0).unwrap();
            cb
        })
    });

    let cb = Callback::parse(&body).unwrap();
    for n in [100, 10_000] {
        let (_dir, rules) = load(n);
        let e = rules.evaluate(&cb);
        assert_eq!(
            e.deliveries.len(),
            4,
            "the benchmark event matches the ban rules"
        );
        c.bench_function(&format!("rules/evaluate_{n}"), |b| {
            b.iter(|| rules.evaluate(black_box(&cb)))
        });
    }

    // What the request path does with a callback's rules before it
    // commits: evaluate, then name each delivery, and for a digest or
    // threshold rule its part (group, counted value). The same 100 rules,
    // with the ban rule plain, a digest, or a threshold.
    for (name, key) in [
        ("plain", ""),
        ("digest", ", digest: {window: 10m, by: [appkey]}"),
        (
            "threshold",
            ", threshold: {count: 5, within: 1h, by: [to], distinct: from}",
        ),
    ] {
        let (_dir, rules) = load_yaml(&rules_yaml_with(100, key));
        c.bench_function(&format!("request/{name}_rule_100"), |b| {
            b.iter(|| {
                let e = rules.evaluate(black_box(&cb));
                let deliveries: Vec<easehook::store::NewDelivery> = e
                    .deliveries
                    .iter()
                    .map(|p| easehook::store::NewDelivery {
                        action: easehook::Text::new(&rules.actions[p.action].name),
                        rule: easehook::Text::new(&rules.rules[p.rule].name),
                        done: false,
                    })
                    .collect();
                let aggregates = if e.aggregates.is_empty() {
                    Vec::new()
                } else {
                    rules.aggregates(&e, &cb, "0190a0a0-0000-7000-8000-000000000000")
                };
                (deliveries, aggregates)
            })
        });
    }

    let (_dir, rules) = load(100);
    let now = chrono::Utc::now();
    // An action rendered for one delivery: the context it needs (all of
    // it, here), built from the parsed callback, and the render.
    for action in ["mail", "slack", "audit"] {
        let a = rules.action(action).unwrap();
        c.bench_function(&format!("render/{action}"), |b| {
            b.iter(|| {
                let data = Data::new(&cb, now, Reads::All, "ban-to-product", action);
                a.render(&rules.templates, black_box(&data)).unwrap()
            })
        });
    }

    // The render alone, from a context built once.
    for action in ["audit", "mail"] {
        let a = rules.action(action).unwrap();
        let data = Data::new(&cb, now, Reads::All, "ban-to-product", action);
        c.bench_function(&format!("render_only/{action}"), |b| {
            b.iter(|| a.render(&rules.templates, black_box(&data)).unwrap())
        });
    }

    // A delivery as the dispatcher makes one: the stored callback parsed
    // again, the context its action's templates can read, the render. The
    // Slack action reads neither `payload` nor `callback`; the second bench
    // builds the whole context anyway, as every delivery did before. The
    // audit action's templates are all plain: no context is built.
    let slack = rules.action("slack").unwrap();
    assert_eq!(slack.reads, Reads::NotCallback);
    for (name, action, reads) in [
        ("delivery/slack", "slack", slack.reads),
        ("delivery/slack_whole_context", "slack", Reads::All),
        ("delivery/audit", "audit", Reads::NotCallback),
    ] {
        let a = rules.action(action).unwrap();
        c.bench_function(name, |b| {
            b.iter(|| {
                let cb = Callback::parse(black_box(&body)).unwrap();
                let data = Data::new(&cb, now, reads, "ban-to-product", action);
                a.render(&rules.templates, &data).unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
