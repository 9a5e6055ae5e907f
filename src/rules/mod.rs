//! The rule set: rules, actions and templates compiled from `rules_dir` and
//! `templates_dir` into one immutable value, evaluated for every callback.
//!
//! Compilation is pure and complete: every problem of every file is reported
//! at once. Evaluation does no I/O: each rule is indexed under the plain
//! values its most selective `when` condition requires (a user, an appkey, an
//! event name or family, …), so an event only visits the rules that could
//! match it, plus those that pin no value.

pub mod aggregate;
pub mod matcher;
pub mod moderation;
pub mod ruletest;
pub mod samples;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::actions::{self, Action, Compiler};
use crate::callback::Callback;
use crate::config::expand::{Env, Expanded};
use crate::config::{Settings, read_yaml, strip_location};
use crate::diag::Diagnostics;
use crate::template::Templates;
use matcher::{Condition, Field, Matcher, PlainValue};

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Unique name across all rule files.
    pub name: String,
    pub description: Option<String>,
    /// The file the rule is in.
    pub file: String,
    /// Every condition must hold.
    pub when: Vec<Condition>,
    /// When any condition holds, the rule does not match.
    pub unless: Vec<Condition>,
    /// Indexes into [`RuleSet::actions`].
    pub actions: Vec<usize>,
    /// Rules after a matching rule with `stop` are not evaluated.
    pub stop: bool,
    /// `digest` or `threshold`: the actions are delivered per digest or
    /// per firing, not per event.
    pub aggregate: Option<aggregate::Aggregation>,
    /// Its counter of matches.
    pub metrics: crate::metrics::RuleMetrics,
}

impl Rule {
    /// Does the rule match the callback?
    #[inline]
    pub fn matches(&self, cb: &Callback) -> bool {
        self.when.iter().all(|c| c.holds(cb)) && !self.unless.iter().any(|c| c.holds(cb))
    }
}

/// A rule as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, matcher::RawMatcher>>")]
    when: Option<Mapping>,
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, matcher::RawMatcher>>")]
    unless: Option<Mapping>,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    stop: bool,
    /// Gather the matching events into one delivery per window (SPEC §11).
    #[serde(default)]
    #[schemars(with = "Option<aggregate::RawDigest>")]
    digest: Option<Value>,
    /// Deliver when enough matching events fall within a sliding window.
    #[serde(default)]
    #[schemars(with = "Option<aggregate::RawThreshold>")]
    threshold: Option<Value>,
}

/// A rule file as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    /// Actions by name (names are unique across every rule file).
    #[schemars(with = "std::collections::BTreeMap<String, crate::actions::ActionSchema>")]
    actions: Mapping,
    /// Evaluated in order (files by name) until a matching rule with `stop`.
    #[schemars(with = "Vec<RawRule>")]
    rules: Vec<Value>,
    /// Events and what must follow from them, run by `check`, start-up and
    /// reload.
    #[schemars(with = "Vec<ruletest::RawTest>")]
    tests: Vec<Value>,
    /// Moderation rules for the pre-send callback (SPEC §16), evaluated in
    /// order (files by name) until one passes or rejects.
    #[schemars(with = "Vec<moderation::RawModerationRule>")]
    moderation: Vec<Value>,
}

/// One delivery an event asks for: an action and the first rule that named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub action: usize,
    pub rule: usize,
}

/// What evaluating one event produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Matching rules, in order.
    pub rules: Vec<usize>,
    /// Each enabled action at most once, in the order first named.
    pub deliveries: Vec<Planned>,
    /// Matching rules with `digest` or `threshold`, in order: their
    /// actions are not among `deliveries`.
    pub aggregates: Vec<usize>,
}

/// Fields a rule can be indexed on, most selective first: a rule is filed
/// under the first of these that its `when` pins to plain values.
const INDEXED_FIELDS: [Field; 10] = [
    Field::MsgId,
    Field::CallId,
    Field::From,
    Field::To,
    Field::Appkey,
    Field::Host,
    Field::Event,
    Field::Operation,
    Field::EventType,
    Field::ChatType,
];

/// The rule index: which rules an event can possibly match. Every rule is
/// filed once, under the values that one of its conditions requires (or as
/// "always" when none pins a value), so evaluation visits only the rules
/// filed under the event's own values plus the unindexed ones.
///
/// Its maps hash with foldhash rather than SipHash: a callback's values are
/// only looked up, never inserted, so no input can fill a map with keys
/// that collide, and a lookup hashes several values per callback.
#[derive(Debug, Default)]
struct RuleIndex {
    /// Per field of [`INDEXED_FIELDS`]: value → rules, ascending.
    by_value: Vec<(Field, foldhash::HashMap<String, Vec<usize>>)>,
    /// Event family → rules whose `event` names the family.
    by_family: foldhash::HashMap<String, Vec<usize>>,
    always: Vec<usize>,
}

/// At most one list per indexed field, the families, and the unindexed rules.
const MAX_LISTS: usize = INDEXED_FIELDS.len() + 2;

impl RuleIndex {
    fn add(&mut self, rule_index: usize, rule: &Rule) {
        for field in &INDEXED_FIELDS {
            let Some(keys) = rule
                .when
                .iter()
                .filter(|c| c.field == *field)
                .find_map(|c| c.matcher.plain_values())
            else {
                continue;
            };
            for key in keys {
                let list = match key {
                    PlainValue::Family(f) => self.by_family.entry(f).or_default(),
                    PlainValue::Exact(v) => {
                        let pos = match self.by_value.iter().position(|(f, _)| f == field) {
                            Some(p) => p,
                            None => {
                                self.by_value.push((field.clone(), Default::default()));
                                self.by_value.len() - 1
                            }
                        };
                        self.by_value[pos].1.entry(v).or_default()
                    }
                };
                if list.last() != Some(&rule_index) {
                    list.push(rule_index);
                }
            }
            return;
        }
        self.always.push(rule_index);
    }

    /// Candidate rules for a callback, in rule order, each once.
    fn candidates<'a>(&'a self, cb: &Callback) -> Candidates<'a> {
        let mut lists: [&[usize]; MAX_LISTS] = [&[]; MAX_LISTS];
        let mut n = 0;
        for (field, map) in &self.by_value {
            if let Some(v) = field.get(cb)
                && let Some(list) = map.get(v.as_ref())
            {
                lists[n] = list;
                n += 1;
            }
        }
        let family = cb.event.split(':').next().unwrap_or(&cb.event);
        if let Some(list) = self.by_family.get(family) {
            lists[n] = list;
            n += 1;
        }
        lists[n] = &self.always;
        Candidates { lists, last: None }
    }
}

/// A merge of sorted lists of rule indexes, without duplicates.
struct Candidates<'a> {
    lists: [&'a [usize]; MAX_LISTS],
    last: Option<usize>,
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        loop {
            let mut best: Option<(usize, usize)> = None;
            for (i, l) in self.lists.iter().enumerate() {
                if let Some(&v) = l.first()
                    && best.is_none_or(|(_, b)| v < b)
                {
                    best = Some((i, v));
                }
            }
            let (i, v) = best?;
            self.lists[i] = &self.lists[i][1..];
            if self.last != Some(v) {
                self.last = Some(v);
                return Some(v);
            }
        }
    }
}

/// Rules, actions and templates: one immutable snapshot.
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub actions: Vec<Action>,
    pub templates: Templates,
    /// foldhash, as in [`RuleIndex`]: looked up for every delivery.
    action_by_name: foldhash::HashMap<String, usize>,
    index: RuleIndex,
    /// The rule files that were read, in order.
    pub files: Vec<PathBuf>,
    /// Things `check` reports that do not make the set invalid.
    pub warnings: Vec<String>,
    /// Masks the secrets of the configuration and of the rule files.
    pub redactor: crate::diag::Redactor,
    /// The `moderation:` entries of every file, in order, for
    /// `crate::moderation` to compile.
    pub moderation: Vec<moderation::ModerationSource>,
    /// The tests with a `verdict:`: they check the moderation rules.
    pub moderation_tests: Vec<ruletest::Pending>,
}

impl RuleSet {
    /// Evaluate every rule, in order, until a matching rule with `stop`.
    pub fn evaluate(&self, cb: &Callback) -> Evaluation {
        let mut out = Evaluation::default();
        for i in self.index.candidates(cb) {
            let rule = &self.rules[i];
            if !rule.matches(cb) {
                continue;
            }
            out.rules.push(i);
            if rule.aggregate.is_some() {
                out.aggregates.push(i);
                if rule.stop {
                    break;
                }
                continue;
            }
            for &a in &rule.actions {
                if self.actions[a].enabled && !out.deliveries.iter().any(|p| p.action == a) {
                    out.deliveries.push(Planned { action: a, rule: i });
                }
            }
            if rule.stop {
                break;
            }
        }
        out
    }

    /// What the event `event_id` contributes to the digests and thresholds
    /// of `evaluation`'s rules (those with an enabled action).
    pub fn aggregates(
        &self,
        evaluation: &Evaluation,
        cb: &Callback,
        event_id: &str,
    ) -> Vec<crate::store::NewAggregate> {
        evaluation
            .aggregates
            .iter()
            .filter_map(|&ri| {
                let rule = &self.rules[ri];
                let actions: Vec<crate::Text> = rule
                    .actions
                    .iter()
                    .map(|&a| &self.actions[a])
                    .filter(|a| a.enabled)
                    .map(|a| crate::Text::new(&a.name))
                    .collect();
                if actions.is_empty() {
                    return None;
                }
                rule.aggregate
                    .as_ref()?
                    .new_aggregate(&rule.name, actions, cb, event_id)
            })
            .collect()
    }

    /// An action by name.
    pub fn action(&self, name: &str) -> Option<&Action> {
        self.action_by_name.get(name).map(|&i| &self.actions[i])
    }

    /// Compile every rule file of `settings.rules_dir` with the templates of
    /// `settings.templates_dir`.
    pub fn load(settings: &Settings, env: &dyn Env) -> Result<RuleSet, Diagnostics> {
        let mut diags = Diagnostics::new();
        let mut templates = Templates::new(settings.timezone);
        templates.load_dir(&settings.templates_dir, &mut diags);
        let files = list_rule_files(&settings.rules_dir, &mut diags);
        let mut expanded = Expanded::default();
        let mut parsed = Vec::new();
        for path in &files {
            let file = path.display().to_string();
            let Some(value) = read_yaml(path, env, &mut expanded, &mut diags) else {
                continue;
            };
            let raw: RawFile = match value {
                Value::Null => RawFile::default(),
                Value::Mapping(m) => crate::config::deserialize_keys(m, &file, "", &mut diags),
                _ => {
                    diags.push(
                        &file,
                        "",
                        "a rule file is a mapping with `actions:` and `rules:`",
                    );
                    continue;
                }
            };
            parsed.push((file, raw));
        }
        let mut set = RuleSet {
            rules: Vec::new(),
            actions: Vec::new(),
            templates,
            action_by_name: Default::default(),
            index: RuleIndex::default(),
            files,
            warnings: Vec::new(),
            redactor: settings
                .redactor
                .with(std::mem::take(&mut expanded.secrets)),
            moderation: Vec::new(),
            moderation_tests: Vec::new(),
        };
        // Actions first, from every file: a rule may name an action that a
        // later file defines.
        let mut defined_in: HashMap<String, String> = HashMap::new();
        for (file, raw) in &parsed {
            for (name, value) in &raw.actions {
                let Some(name) = name.as_str().map(str::to_string) else {
                    diags.push(file, "actions", "action names are strings");
                    continue;
                };
                if let Some(first) = defined_in.get(&name) {
                    diags.push(
                        file,
                        format!("action {name}"),
                        format!("is already defined in {first}"),
                    );
                    continue;
                }
                defined_in.insert(name.clone(), file.clone());
                let mut c = Compiler {
                    action: &name,
                    file,
                    templates: &mut set.templates,
                    settings,
                    diags: &mut diags,
                    reads_callback: false,
                };
                if let Some(action) = actions::compile(value.clone(), &mut c) {
                    set.action_by_name.insert(name, set.actions.len());
                    set.actions.push(action);
                }
            }
        }
        let mut rule_files: HashMap<String, String> = HashMap::new();
        let mut moderation_files: HashMap<String, String> = HashMap::new();
        let mut tests = Vec::new();
        for (file, raw) in parsed {
            for (index, raw) in raw.tests.into_iter().enumerate() {
                let pending = ruletest::Pending {
                    file: file.clone(),
                    index,
                    raw,
                };
                if pending.raw.get("verdict").is_some() {
                    set.moderation_tests.push(pending);
                } else {
                    tests.push(pending);
                }
            }
            for (i, value) in raw.moderation.into_iter().enumerate() {
                let label = value.get("name").and_then(Value::as_str).map_or_else(
                    || format!("moderation[{i}]"),
                    |n| format!("moderation rule {n}"),
                );
                match serde_path_to_error::deserialize::<_, moderation::RawModerationRule>(value) {
                    Ok(r) => {
                        if let Some(first) = moderation_files.get(&r.name) {
                            diags.push(&file, &label, format!("is already defined in {first}"));
                            continue;
                        }
                        moderation_files.insert(r.name.clone(), file.clone());
                        set.moderation.push(moderation::ModerationSource {
                            file: file.clone(),
                            label,
                            raw: r,
                        });
                    }
                    Err(e) => push_shape_error(&file, label, e, &mut diags),
                }
            }
            for (i, value) in raw.rules.into_iter().enumerate() {
                let label = value
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("rules[{i}]"), |n| format!("rule {n}"));
                let raw: RawRule = match serde_path_to_error::deserialize(value) {
                    Ok(r) => r,
                    Err(e) => {
                        push_shape_error(&file, label, e, &mut diags);
                        continue;
                    }
                };
                if let Some(first) = rule_files.get(&raw.name) {
                    diags.push(&file, &label, format!("is already defined in {first}"));
                    continue;
                }
                rule_files.insert(raw.name.clone(), file.clone());
                if let Some(rule) = set.compile_rule(raw, &file, &label, &defined_in, &mut diags) {
                    set.index.add(set.rules.len(), &rule);
                    set.rules.push(rule);
                }
            }
        }
        if diags.is_empty() {
            set.check_renders(&mut diags);
            set.check_easemob(settings, &mut diags);
            set.collect_warnings();
            // A set that loads must also pass its own tests.
            set.run_tests(&tests, &mut diags);
        }
        diags.redact(&set.redactor);
        diags.into_result().map(|()| set)
    }

    fn compile_rule(
        &self,
        raw: RawRule,
        file: &str,
        label: &str,
        defined: &HashMap<String, String>,
        diags: &mut Diagnostics,
    ) -> Option<Rule> {
        let before = diags.len();
        let when = compile_conditions(raw.when, "when", file, label, diags);
        let unless = compile_conditions(raw.unless, "unless", file, label, diags);
        let aggregate =
            aggregate::Aggregation::compile(raw.digest, raw.threshold, file, label, diags);
        let mut actions = Vec::new();
        for name in &raw.actions {
            match self.action_by_name.get(name) {
                Some(&i) => actions.push(i),
                // Defined but invalid: its own error says why.
                None if defined.contains_key(name) => {}
                None => diags.push(file, label, format!("unknown action `{name}`")),
            }
        }
        (diags.len() == before).then_some(Rule {
            name: raw.name,
            description: raw.description,
            file: file.to_string(),
            when,
            unless,
            actions,
            stop: raw.stop,
            aggregate,
            metrics: Default::default(),
        })
    }

    /// Render every template against the sample events its rules can match,
    /// so that a missing variable is found by `check`, not by a dead delivery.
    fn check_renders(&self, diags: &mut Diagnostics) {
        let samples = samples::all();
        let received = chrono::Utc::now();
        for (ai, action) in self.actions.iter().enumerate() {
            for cb in &samples {
                let Some(rule) = self
                    .rules
                    .iter()
                    .find(|r| r.aggregate.is_none() && r.actions.contains(&ai) && r.matches(cb))
                else {
                    continue;
                };
                let data = crate::template::Data::new(
                    cb,
                    received,
                    action.reads,
                    &rule.name,
                    &action.name,
                );
                if let Err(e) = action.render(&self.templates, &data) {
                    diags.push(
                        &action.file,
                        format!("action {}", action.name),
                        format!(
                            "fails to render for a sample {} event (rule {}): {e}",
                            cb.event, rule.name
                        ),
                    );
                    break;
                }
            }
        }
        // A digest's or a threshold's actions render with its context,
        // made of three sample events the rule matches (any samples when
        // it matches none of them).
        let now = received.timestamp_millis() as u64;
        for rule in &self.rules {
            let Some(agg) = &rule.aggregate else { continue };
            let matching: Vec<&Callback> = samples.iter().filter(|cb| rule.matches(cb)).collect();
            let pool: Vec<&Callback> = if matching.is_empty() {
                samples.iter().collect()
            } else {
                matching
            };
            let info = agg.sample(&rule.name, &pool, now);
            let value = aggregate::context(&info);
            let Some(Ok(last)) = info.events.last().map(|e| e.callback.clone()) else {
                continue;
            };
            for &ai in &rule.actions {
                let action = &self.actions[ai];
                let data = crate::template::Data::new(
                    &last,
                    received,
                    action.reads,
                    &rule.name,
                    &action.name,
                )
                .with(agg.kind().as_str(), value.clone());
                if let Err(e) = action.render(&self.templates, &data) {
                    diags.push(
                        &action.file,
                        format!("action {}", action.name),
                        format!(
                            "fails to render for a sample {} of three events (rule {}): {e}",
                            agg.kind().as_str(),
                            rule.name
                        ),
                    );
                }
            }
        }
    }

    /// `easemob` actions (SPEC §12): every appkey such an action can reach
    /// needs credentials under `easemob:`, and a rule that sends messages
    /// should not match the messages it sends, which come back as callbacks.
    fn check_easemob(&mut self, settings: &Settings, diags: &mut Diagnostics) {
        use crate::actions::ActionKind;
        use crate::actions::easemob::Call;
        for (ai, action) in self.actions.iter().enumerate() {
            let ActionKind::Easemob(e) = &action.kind else {
                continue;
            };
            let used_by: Vec<&Rule> = self
                .rules
                .iter()
                .filter(|r| r.actions.contains(&ai))
                .collect();
            if !action.enabled || used_by.is_empty() {
                continue;
            }
            let location = format!("action {}", action.name);
            let missing = |k: &str| !settings.easemob.contains_key(k);
            match &e.fixed_appkey {
                Some(k) if missing(k) => diags.push(
                    &action.file,
                    format!("{location}: appkey"),
                    format!(
                        "{k:?} has no credentials under easemob: in {}",
                        settings.path.display()
                    ),
                ),
                Some(_) => {}
                // A template: which app it names is known only per event.
                None if e.appkey_is_templated() => {}
                // The event's appkey: every appkey whose callbacks are verified.
                None => {
                    for k in settings.secrets.appkeys().filter(|k| missing(k)) {
                        diags.push(
                            &action.file,
                            &location,
                            format!(
                                "calls the event's app, and appkey {k:?} has no credentials under easemob: in {}",
                                settings.path.display()
                            ),
                        );
                    }
                    if settings.secrets.has_fallback() {
                        self.warnings.push(format!(
                            "{}: {location}: calls the event's app, and callbacks of appkeys not listed in secrets (\"*\") reach it; those without credentials under easemob: will be dead",
                            action.file
                        ));
                    }
                }
            }
            if e.call != Call::SendMessage {
                continue;
            }
            let Some(sender) = &e.sender else { continue };
            // The message it sends, as the callback Easemob makes of it.
            let appkey = e
                .fixed_appkey
                .clone()
                .or_else(|| settings.secrets.appkeys().next().map(str::to_string))
                .unwrap_or_else(|| "easemob-demo#sample".into());
            let echo = samples::body("chat", &appkey, sender, "someone", "1", 0);
            let Ok(echo) = Callback::from_value(echo) else {
                continue;
            };
            for rule in used_by.iter().filter(|r| r.matches(&echo)) {
                self.warnings.push(format!(
                    "{}: rule {}: sends messages from {sender:?} (action {}) and matches the chat callbacks they come back as; add unless: {{from: {sender}}}",
                    rule.file, rule.name, action.name
                ));
            }
        }
    }

    fn collect_warnings(&mut self) {
        for (ai, action) in self.actions.iter().enumerate() {
            let users: Vec<&str> = self
                .rules
                .iter()
                .filter(|r| r.actions.contains(&ai))
                .map(|r| r.name.as_str())
                .collect();
            if !action.enabled {
                self.warnings.push(format!(
                    "{}: action {}: disabled; skipped by {}",
                    action.file,
                    action.name,
                    if users.is_empty() {
                        "no rule".to_string()
                    } else {
                        format!("rule {}", users.join(", "))
                    }
                ));
            } else if users.is_empty() {
                self.warnings.push(format!(
                    "{}: action {}: not used by any rule",
                    action.file, action.name
                ));
            }
        }
        if self.rules.is_empty() {
            self.warnings.push(
                "no rules: every callback is acknowledged and stored, and nothing is sent".into(),
            );
        }
    }
}

fn compile_conditions(
    map: Option<Mapping>,
    part: &str,
    file: &str,
    label: &str,
    diags: &mut Diagnostics,
) -> Vec<Condition> {
    conditions(map.as_ref(), part, file, label, diags, |name| {
        let field = Field::parse(name)?;
        let event = field == Field::Event;
        Ok((field, event))
    })
    .into_iter()
    .map(|(field, matcher)| Condition { field, matcher })
    .collect()
}

/// Compile the `field: matcher` pairs of a `when` or `unless`, with the
/// fields that `parse` knows (it says whether the field is `event`, whose
/// plain names are families). Shared with the moderation rules, which know
/// more fields.
pub fn conditions<F>(
    map: Option<&Mapping>,
    part: &str,
    file: &str,
    label: &str,
    diags: &mut Diagnostics,
    parse: impl Fn(&str) -> Result<(F, bool), String>,
) -> Vec<(F, Matcher)> {
    let mut out = Vec::new();
    for (k, v) in map.into_iter().flatten() {
        let Some(name) = k.as_str() else {
            diags.push(
                file,
                format!("{label}: {part}"),
                "condition fields are names",
            );
            continue;
        };
        let loc = format!("{label}: {part}.{name}");
        let (field, event) = match parse(name) {
            Ok(f) => f,
            Err(e) => {
                diags.push(file, loc, e);
                continue;
            }
        };
        match Matcher::compile(v, event) {
            Ok(matcher) => out.push((field, matcher)),
            Err(e) => diags.push(file, loc, e),
        }
    }
    out
}

/// A rule that is not of its shape, at the path inside it that is wrong.
fn push_shape_error(
    file: &str,
    label: String,
    e: serde_path_to_error::Error<serde_yaml::Error>,
    diags: &mut Diagnostics,
) {
    let path = e.path().to_string();
    let loc = if path == "." {
        label
    } else {
        format!("{label}: {path}")
    };
    diags.push(file, loc, strip_location(&e.into_inner().to_string()));
}

fn list_rule_files(dir: &Path, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.push(
                dir.display(),
                "",
                format!("cannot read the rules directory: {e}"),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                // Editors' temporary and backup files are not rules.
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// The JSON Schema (draft 2020-12) of a rule file, generated from the types
/// the loader reads it into, with their documentation.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(RawFile).to_value();
    // An action's type-specific and common fields come from two structs,
    // each strict on its own; the variant as a whole takes nothing else.
    if let Some(variants) = schema
        .pointer_mut("/$defs/ActionSchema/oneOf")
        .and_then(serde_json::Value::as_array_mut)
    {
        for v in variants
            .iter_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            v.insert("unevaluatedProperties".into(), false.into());
        }
    }
    if let Some(o) = schema.as_object_mut() {
        o.insert("title".into(), "easehook rule file".into());
        o.insert(
            "description".into(),
            "actions, rules and tests; see docs/rules.md".into(),
        );
    }
    schema
}

#[cfg(test)]
mod tests;
