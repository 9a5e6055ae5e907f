//! Criterion benchmarks of moderation (SPEC §16): matching a 200-character
//! message against word lists of 100, 10,000 and 100,000 words (the cost
//! must not grow with the words), the whole evaluation of the example
//! rules with such a list, and compiling a list of 100,000 words.
//!
//! `cargo bench --bench moderation`; figures in BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use easehook::callback::Callback;
use easehook::moderation::Counting;
use easehook::moderation::message::Message;
use easehook::moderation::words::{ListSource, WordLists};
use easehook::snapshot::Snapshot;

/// A small deterministic generator (no dependency for bench data).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn cjk(&mut self) -> char {
        char::from_u32(0x4E00 + (self.next() % 0x51A5) as u32).unwrap()
    }
}

/// `n` words: three-character Chinese words, and one in eight an ASCII word
/// of six letters, like real lists mix them.
fn words(n: usize) -> Vec<String> {
    let mut g = Lcg(7);
    (0..n)
        .map(|i| {
            if i % 8 == 0 {
                (0..6)
                    .map(|_| (b'a' + (g.next() % 26) as u8) as char)
                    .collect()
            } else {
                (0..3).map(|_| g.cjk()).collect()
            }
        })
        .collect()
}

/// A 200-character message: Chinese text with some ASCII and punctuation.
fn message() -> String {
    let mut g = Lcg(99);
    let mut s = String::new();
    while s.chars().count() < 200 {
        match g.next() % 10 {
            0 => s.push_str(" ok, "),
            1 => s.push('，'),
            _ => s.push(g.cjk()),
        }
    }
    s.chars().take(200).collect()
}

fn lists(n: usize) -> WordLists {
    WordLists::build(&[ListSource {
        name: "contact".into(),
        words: words(n),
        allow: vec!["白色情人节".into()],
    }])
    .unwrap()
}

/// A snapshot with SPEC §16's example rules and a `contact` list of `n`
/// words (in a file, as a deployment keeps it).
fn snapshot(n: usize) -> (tempfile::TempDir, Arc<Snapshot>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("contact.txt"), words(n).join("\n")).unwrap();
    std::fs::write(
        dir.path().join("easehook.yaml"),
        "secrets: {'*': ['${S}']}\npresend:\n  word_lists:\n    contact: {file: contact.txt}\n    abuse: {words: ['傻逼', 'fuck']}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules/m.yaml"),
        "moderation:\n  - {name: staff-pass, when: {from: 'staff_*'}, verdict: pass}\n  \
         - {name: no-contact-ads, when: {chat_type: [chat, groupchat, group], message.type: txt}, contains: contact, verdict: reject, code: 'HX:10001'}\n  \
         - {name: mask-abuse, contains: abuse, verdict: rewrite}\n  \
         - {name: phone, when: {message.text: {regex: '.*1[3-9][0-9]{9}.*'}}, verdict: reject}\n",
    )
    .unwrap();
    let env: HashMap<String, String> = [("S".to_string(), "0123456789abcdef".to_string())].into();
    let snap = easehook::snapshot::load(&dir.path().join("easehook.yaml"), &env).unwrap();
    (dir, snap)
}

fn body(text: &str) -> String {
    serde_json::json!({"callId": "org#app_1", "security": "x", "timestamp": 1,
        "chat_type": "chat", "from": "alice", "to": "bob", "msg_id": "1",
        "payload": {"msg": text, "type": "txt"}})
    .to_string()
}

/// A request read as the endpoint reads it: the message and the
/// callback's fields from the body's text, in one pass.
fn request(text: &str) -> (Message, Callback) {
    read(body(text).as_bytes())
}

fn read(body: &[u8]) -> (Message, Callback) {
    let text: std::sync::Arc<str> = std::str::from_utf8(body).unwrap().into();
    Message::read_request(&text).unwrap()
}

fn matching(c: &mut Criterion) {
    let text = message();
    for n in [100, 10_000, 100_000] {
        let w = lists(n);
        c.bench_function(&format!("words/hits_200_chars_{n}_words"), |b| {
            b.iter(|| black_box(w.hits(black_box(&text), &[0])))
        });
    }
}

fn evaluation(c: &mut Criterion) {
    let text = message();
    for n in [100, 10_000, 100_000] {
        let (_dir, snap) = snapshot(n);
        // Reading the request is `parse_request` below.
        let (message, cb) = request(&text);
        c.bench_function(&format!("moderation/evaluate_200_chars_{n}_words"), |b| {
            // The message is evaluated by value, as the endpoint hands it
            // over; its copy is made outside the measurement.
            b.iter_batched(
                || message.clone(),
                |m| {
                    black_box(snap.moderation.evaluate_message(
                        black_box(&cb),
                        m,
                        1_000,
                        Counting::DryRun,
                    ))
                },
                BatchSize::SmallInput,
            )
        });
    }
}

/// What evaluation costs beyond matching: reading the request.
fn parsing(c: &mut Criterion) {
    let body = body(&message());
    c.bench_function("moderation/parse_request_200_chars", |b| {
        b.iter(|| black_box(read(black_box(body.as_bytes()))))
    });
}

fn compiling(c: &mut Criterion) {
    let mut g = c.benchmark_group("words");
    g.sample_size(10);
    let w = words(100_000);
    g.bench_function("build_100000_words", |b| {
        b.iter(|| {
            black_box(
                WordLists::build(&[ListSource {
                    name: "contact".into(),
                    words: w.clone(),
                    allow: Vec::new(),
                }])
                .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, matching, evaluation, parsing, compiling);
criterion_main!(benches);
