//! Moderation before delivery (SPEC §16): the verdict easehook answers to
//! Easemob's pre-send callback, from the `moderation:` rules of the rule
//! files and the word lists of `presend:`.
//!
//! Everything is compiled when the snapshot is (start-up, `check`,
//! reload), so that answering a request is matching only: conditions, one
//! automaton pass per rule that names lists, and a sliding window in memory
//! per threshold. Nothing here waits on I/O.
//!
//! - `words`: the word lists and their automaton;
//! - `message`: the message in either payload shape, and the answer's
//!   payload;
//! - `window`: the thresholds' windows;
//! - `compile`: rules and lists from their sources, and the moderation
//!   tests of the rule files.

mod compile;
pub mod message;
pub mod window;
pub mod words;

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::callback::Callback;
use crate::rules::matcher::{Field, Matcher};
pub use crate::rules::moderation::RawVerdict as Verdict;
use message::Message;
use window::Windows;
use words::{ListId, WordLists};

/// The most an answer may hold: Easemob treats a longer one as a failure.
pub const MAX_ANSWER: usize = 1000;

/// The compiled moderation rules and word lists of one snapshot.
pub struct Moderation {
    pub lists: WordLists,
    pub rules: Vec<ModerationRule>,
}

impl std::fmt::Debug for Moderation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moderation")
            .field("rules", &self.rules.len())
            .field("lists", &self.lists.counts().collect::<Vec<_>>())
            .finish()
    }
}

/// What a moderation condition looks at.
#[derive(Debug, Clone)]
pub enum ModField {
    /// `message.type`.
    Type,
    /// `message.text`.
    Text,
    /// `message.ext.KEY`.
    Ext(String),
    /// Any field of `rules:` conditions (`from`, `group_id`, `payload.…`).
    Callback(Field),
}

impl ModField {
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "message.type" => ModField::Type,
            "message.text" => ModField::Text,
            _ => match name.strip_prefix("message.ext.") {
                Some(key) if !key.is_empty() => ModField::Ext(key.to_string()),
                _ if name.starts_with("message.") || name == "message" => {
                    return Err(format!(
                        "{name:?} is not a message field: use message.type, message.text or message.ext.KEY"
                    ));
                }
                _ => ModField::Callback(Field::parse(name)?),
            },
        })
    }

    fn get<'a>(&self, cb: &'a Callback, m: &'a Message) -> Option<Cow<'a, str>> {
        match self {
            ModField::Type => m.kind.as_deref().map(Cow::Borrowed),
            ModField::Text => m.text.as_deref().map(Cow::Borrowed),
            ModField::Ext(key) => m
                .ext
                .as_ref()
                .and_then(|e| e.get(key))
                .map(crate::callback::value_text),
            ModField::Callback(f) => f.get(cb),
        }
    }
}

/// One `field: matcher` pair of a moderation rule.
#[derive(Debug, Clone)]
pub struct ModCondition {
    pub field: ModField,
    pub matcher: Matcher,
}

impl ModCondition {
    fn holds(&self, cb: &Callback, m: &Message) -> bool {
        self.matcher.matches(self.field.get(cb, m).as_deref())
    }
}

/// A moderation rule's threshold, with its windows.
#[derive(Debug)]
pub struct Threshold {
    pub count: u32,
    pub within_ms: u64,
    /// The `by` fields as written, and compiled.
    pub by_names: Vec<String>,
    pub by: Vec<ModField>,
    pub windows: Arc<Windows>,
}

/// A compiled moderation rule.
#[derive(Debug)]
pub struct ModerationRule {
    pub name: String,
    pub file: String,
    pub when: Vec<ModCondition>,
    pub unless: Vec<ModCondition>,
    /// The lists of `contains`, if given.
    pub contains: Vec<ListId>,
    pub verdict: Verdict,
    pub code: Option<String>,
    pub mask: String,
    pub ext: Vec<(String, String)>,
    pub threshold: Option<Threshold>,
    /// Its counter of `easehook_presend_rule_hits_total`.
    pub metrics: crate::metrics::RuleMetrics,
}

/// Whether thresholds count this evaluation (the endpoint) or only look
/// (tools and tests, which must count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    Count,
    DryRun,
}

/// What the moderation rules decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that passed or rejected, or the rules that rewrote
    /// (comma-separated); `None` when no rule fired.
    pub rule: Option<String>,
    /// Every rule that fired, by index, in order.
    pub fired: Vec<usize>,
    pub code: Option<String>,
    /// The words hit, as the lists write them, in the order of the text.
    pub hits: Vec<String>,
    /// The hits' spans in the original text, in characters, for the
    /// console to mark.
    pub marks: Vec<[usize; 2]>,
    /// The message's text as it came.
    pub text: Option<String>,
    /// The text as rewritten, when a rule changed it.
    pub rewritten: Option<String>,
    /// A rewrite that would not fit in an answer, turned into a reject.
    pub too_long: bool,
    /// The exact answer body.
    pub answer: String,
}

impl Decision {
    /// `presend: {…}` of the event a recorded verdict becomes.
    pub fn record(&self) -> Value {
        json!({
            "verdict": verdict_name(self.verdict),
            "rule": self.rule,
            "code": self.code,
            "hits": self.hits,
            "marks": self.marks,
            "text": self.text,
            "rewritten": self.rewritten,
        })
    }
}

/// A verdict on its way to the store: the request and what was decided.
#[derive(Debug)]
pub struct Record {
    pub callback: Callback,
    pub decision: Decision,
    pub received_at_ms: u64,
}

/// `pass`, `reject` or `rewrite`.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Reject => "reject",
        Verdict::Rewrite => "rewrite",
    }
}

/// The answer to a request passed unchanged.
pub const PASS_ANSWER: &str = r#"{"valid":true}"#;

/// The answer of a reject, with its code when it has one.
pub fn reject_answer(code: Option<&str>) -> String {
    match code {
        None => r#"{"valid":false}"#.to_string(),
        // Written out directly: a reject is answered often in a flood.
        Some(c) => format!(
            r#"{{"valid":false,"code":{}}}"#,
            Value::String(c.to_string())
        ),
    }
}

impl Moderation {
    /// No rules and no lists: every message passes.
    pub fn empty() -> Self {
        Self {
            lists: WordLists::build(&[]).expect("no lists compile"),
            rules: Vec::new(),
        }
    }

    /// Evaluate the rules, in order, for the request `cb`.
    pub fn evaluate(&self, cb: &Callback, now_ms: u64, counting: Counting) -> Decision {
        self.evaluate_message(cb, Message::of(cb.raw()), now_ms, counting)
    }

    /// [`Moderation::evaluate`] with the request's message already read
    /// (the endpoint reads it with the callback, [`Message::read_request`]).
    pub fn evaluate_message(
        &self,
        cb: &Callback,
        mut m: Message,
        now_ms: u64,
        counting: Counting,
    ) -> Decision {
        let original_text = m.text.clone();
        // Kept only once a rule is about to change it.
        let mut original_ext: Option<Option<Map<String, Value>>> = None;
        let mut fired = Vec::new();
        let mut rewriters: Vec<usize> = Vec::new();
        let mut marks_lists: Vec<ListId> = Vec::new();
        let mut decided: Option<(Verdict, usize)> = None;
        // The scan of the text as it now stands, made when a rule first
        // looks for words and kept until a rewrite changes the text; the
        // scan of the text as it came, for the marks.
        let mut scan: Option<words::Scan> = None;
        let mut original_scan: Option<words::Scan> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.verdict == Verdict::Rewrite && !m.rewritable() {
                continue;
            }
            if !rule.when.iter().all(|c| c.holds(cb, &m))
                || rule.unless.iter().any(|c| c.holds(cb, &m))
            {
                continue;
            }
            let hits = if rule.contains.is_empty() {
                Vec::new()
            } else {
                let Some(text) = m.text.as_deref() else {
                    continue;
                };
                let scanned = scan.get_or_insert_with(|| self.lists.scan(text));
                if !scanned.hits_any(&rule.contains) {
                    continue;
                }
                scanned.hits(&self.lists, &rule.contains)
            };
            if let Some(t) = &rule.threshold {
                let key = group_key(&t.by, cb, &m);
                let reached = match counting {
                    Counting::Count => t.windows.hit(&key, now_ms, t.count, t.within_ms),
                    Counting::DryRun => false,
                };
                if !reached {
                    continue;
                }
            }
            fired.push(i);
            marks_lists.extend(rule.contains.iter().copied());
            match rule.verdict {
                Verdict::Pass | Verdict::Reject => {
                    decided = Some((rule.verdict, i));
                    break;
                }
                Verdict::Rewrite => {
                    if let Some(text) = &m.text
                        && !hits.is_empty()
                    {
                        m.text = Some(words::mask(text, &hits, &rule.mask));
                        // Later rules scan the text as rewritten.
                        let before = scan.take();
                        if original_scan.is_none() {
                            original_scan = before;
                        }
                    }
                    if !rule.ext.is_empty() {
                        original_ext.get_or_insert_with(|| m.ext.clone());
                        let ext = m.ext.get_or_insert_with(Map::new);
                        for (k, v) in &rule.ext {
                            ext.insert(k.clone(), Value::String(v.clone()));
                        }
                    }
                    rewriters.push(i);
                }
            }
        }
        // The hits are found again on the text as it came, once, for the
        // record and the console's marks.
        marks_lists.sort_unstable();
        marks_lists.dedup();
        let all_hits = match (&original_text, marks_lists.is_empty()) {
            // The first rewrite of the text kept the scan of the text as
            // it came; without one, the scan is of that text.
            (Some(t), false) => match original_scan.or(scan) {
                Some(s) => s.hits(&self.lists, &marks_lists),
                None => self.lists.hits(t, &marks_lists),
            },
            _ => Vec::new(),
        };
        let marks = original_text
            .as_deref()
            .map(|t| char_spans(t, &all_hits))
            .unwrap_or_default();
        let mut hits: Vec<String> = all_hits.into_iter().map(|h| h.word).collect();
        hits.dedup();
        let names = |rules: &[usize]| {
            rules
                .iter()
                .map(|&i| self.rules[i].name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut d = Decision {
            verdict: Verdict::Pass,
            rule: None,
            fired,
            code: None,
            hits,
            marks,
            text: original_text.clone(),
            rewritten: None,
            too_long: false,
            answer: PASS_ANSWER.to_string(),
        };
        let changed = m.text != original_text || original_ext.is_some_and(|before| before != m.ext);
        match decided {
            Some((Verdict::Reject, i)) => {
                d.verdict = Verdict::Reject;
                d.rule = Some(self.rules[i].name.clone());
                d.code = self.rules[i].code.clone();
                d.answer = reject_answer(d.code.as_deref());
            }
            // A pass ends the evaluation; the rewrites before it stand (a
            // masked word stays masked).
            _ if changed => {
                d.verdict = Verdict::Rewrite;
                d.rule = Some(names(&rewriters));
                if m.text != original_text {
                    d.rewritten = m.text.clone();
                }
                let answer = json!({"valid": true, "payload": m.payload(cb.raw())}).to_string();
                if answer.len() > MAX_ANSWER {
                    // A masked word must not get through unmasked.
                    let last = &self.rules[*rewriters.last().expect("a rewrite")];
                    d.verdict = Verdict::Reject;
                    d.code = last.code.clone();
                    d.too_long = true;
                    d.answer = reject_answer(d.code.as_deref());
                } else {
                    d.answer = answer;
                }
            }
            Some((_, i)) => d.rule = Some(self.rules[i].name.clone()),
            None => {}
        }
        d
    }
}

/// The group a message counts in: the values of the `by` fields.
fn group_key(by: &[ModField], cb: &Callback, m: &Message) -> String {
    let mut key = String::new();
    for (i, f) in by.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        if let Some(v) = f.get(cb, m) {
            key.push_str(&v);
        }
    }
    key
}

/// Byte spans of hits as character spans, merged where they overlap.
fn char_spans(text: &str, hits: &[words::Hit]) -> Vec<[usize; 2]> {
    let mut spans: Vec<(usize, usize)> = hits.iter().map(|h| (h.span.start, h.span.end)).collect();
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .map(|(s, e)| [text[..s].chars().count(), text[..e].chars().count()])
        .collect()
}

#[cfg(test)]
mod tests;
