//! Compiling moderation: the word lists of `presend:` (files read here),
//! the `moderation:` entries of the rule files, and the rule tests with a
//! `verdict:`. Every problem of every list and rule is reported at once,
//! as `file: location: message`.

use super::words::{ListSource, WordLists, read_list};
use super::{
    Counting, ModCondition, ModField, Moderation, ModerationRule, Threshold, Verdict, verdict_name,
};
use crate::config::Settings;
use crate::diag::Diagnostics;
use crate::rules::RuleSet;
use crate::rules::matcher::Field;
use crate::rules::moderation::ModerationSource;
use crate::rules::ruletest::{Pending, RawTest, event_json, run_each};

/// Threshold counts above this are refused (as for `rules:`).
const MAX_COUNT: u32 = 1_000_000;

impl Moderation {
    /// Compile the lists of `settings.presend` and the moderation rules of
    /// `rules`, then run the rule files' moderation tests. `previous` is
    /// the set in force before a reload: its thresholds' counts carry over
    /// to the rules that keep their name and groups.
    pub fn load(
        settings: &Settings,
        rules: &RuleSet,
        previous: Option<&Moderation>,
        diags: &mut Diagnostics,
    ) -> Moderation {
        let config = settings.path.display().to_string();
        let before = diags.len();
        let lists = compile_lists(settings, &config, diags);
        if settings.presend.is_none() && !rules.moderation.is_empty() {
            diags.push(
                &rules.moderation[0].file,
                &rules.moderation[0].label,
                format!(
                    "moderation rules need a `presend:` section in {config} to be asked about messages"
                ),
            );
        }
        let mut set = Moderation {
            lists,
            rules: Vec::new(),
        };
        for source in &rules.moderation {
            if let Some(rule) = set.compile_rule(source, previous, diags) {
                set.rules.push(rule);
            }
        }
        if diags.len() == before {
            set.run_tests(&rules.moderation_tests, diags);
        }
        set
    }

    fn compile_rule(
        &self,
        source: &ModerationSource,
        previous: Option<&Moderation>,
        diags: &mut Diagnostics,
    ) -> Option<ModerationRule> {
        let (file, label, raw) = (&source.file, &source.label, &source.raw);
        let before = diags.len();
        let when = conditions(raw.when.as_ref(), "when", file, label, diags);
        let unless = conditions(raw.unless.as_ref(), "unless", file, label, diags);
        let mut contains = Vec::new();
        if let Some(value) = &raw.contains {
            let names: Vec<&str> = match value {
                serde_yaml::Value::String(s) => vec![s.as_str()],
                serde_yaml::Value::Sequence(items) if !items.is_empty() => {
                    items.iter().filter_map(|i| i.as_str()).collect()
                }
                _ => {
                    diags.push(
                        file,
                        format!("{label}: contains"),
                        "names a word list, or a list of them",
                    );
                    Vec::new()
                }
            };
            for name in names {
                match self.lists.id(name) {
                    Some(id) => contains.push(id),
                    None => diags.push(
                        file,
                        format!("{label}: contains"),
                        format!("unknown word list {name:?}: define it under presend.word_lists"),
                    ),
                }
            }
            // A list is only ever looked for in a txt message's text.
            for c in &when {
                let never = match c.field {
                    ModField::Type => !c.matcher.matches(Some("txt")),
                    ModField::Text => !c.matcher.matches(Some("x")) && !c.matcher.matches(Some("")),
                    _ => false,
                };
                if never {
                    diags.push(
                        file,
                        format!("{label}: contains"),
                        "can never hit: the rule's `when` never lets a txt message's text through",
                    );
                }
            }
        }
        let mask = raw.mask.clone().unwrap_or_else(|| "*".into());
        let ext: Vec<(String, String)> = raw.ext.clone().unwrap_or_default().into_iter().collect();
        match raw.verdict {
            Verdict::Rewrite => {
                if contains.is_empty() && ext.is_empty() && raw.contains.is_none() {
                    diags.push(
                        file,
                        format!("{label}: verdict"),
                        "a rewrite changes something: give `contains:` (masked) or `ext:`",
                    );
                }
            }
            _ => {
                for (key, given) in [("mask", raw.mask.is_some()), ("ext", raw.ext.is_some())] {
                    if given {
                        diags.push(
                            file,
                            format!("{label}: {key}"),
                            format!(
                                "only a rewrite uses `{key}`, not a {}",
                                verdict_name(raw.verdict)
                            ),
                        );
                    }
                }
            }
        }
        if raw.mask.as_deref() == Some("") {
            diags.push(file, format!("{label}: mask"), "cannot be empty");
        }
        let threshold = raw.threshold.as_ref().map(|t| {
            let loc = format!("{label}: threshold");
            if !(1..=MAX_COUNT).contains(&t.count) {
                diags.push(
                    file,
                    format!("{loc}.count"),
                    format!("must be between 1 and {MAX_COUNT}, not {}", t.count),
                );
            }
            if t.within.0.is_zero() {
                diags.push(file, format!("{loc}.within"), "must be longer than 0");
            }
            let mut by = Vec::new();
            for (i, name) in t.by.iter().enumerate() {
                match ModField::parse(name) {
                    Ok(f) => by.push(f),
                    Err(e) => diags.push(file, format!("{loc}.by[{i}]"), e),
                }
            }
            // The counts of the rule in force before a reload, when it
            // still counts the same groups.
            let windows = previous
                .and_then(|p| p.rules.iter().find(|r| r.name == raw.name))
                .and_then(|r| r.threshold.as_ref())
                .filter(|old| old.by_names == t.by)
                .map(|old| old.windows.clone())
                .unwrap_or_default();
            Threshold {
                count: t.count,
                within_ms: t.within.0.as_millis() as u64,
                by_names: t.by.clone(),
                by,
                windows,
            }
        });
        (diags.len() == before).then(|| ModerationRule {
            name: raw.name.clone(),
            file: file.clone(),
            when,
            unless,
            contains,
            verdict: raw.verdict,
            code: raw.code.clone(),
            mask,
            ext,
            threshold,
            metrics: Default::default(),
        })
    }

    /// Run the moderation tests (rule tests with `verdict:`); each failure
    /// is a problem in `diags`.
    fn run_tests(&self, tests: &[Pending], diags: &mut Diagnostics) {
        run_each(tests, diags, |file, raw| self.run_test(file, raw));
    }

    fn run_test(&self, file: &str, t: &RawTest) -> Vec<String> {
        let cb = match event_json(file, &t.event)
            .and_then(|raw| crate::callback::unsigned(raw).map_err(|e| format!("event: {e}")))
        {
            Ok(cb) => cb,
            Err(e) => return vec![e],
        };
        let d = self.evaluate(&cb, crate::now_ms(), Counting::DryRun);
        let mut problems = Vec::new();
        let got = verdict_name(d.verdict);
        if let Some(want) = &t.verdict
            && want != got
        {
            if !["pass", "reject", "rewrite"].contains(&want.as_str()) {
                problems.push(format!("verdict: {want:?} is not pass, reject or rewrite"));
                return problems;
            }
            problems.push(format!(
                "expected verdict {want}, got {got} (rule {})",
                d.rule.as_deref().unwrap_or("none")
            ));
        }
        if let Some(want) = &t.rule
            && d.rule.as_deref() != Some(want.as_str())
        {
            problems.push(format!(
                "expected rule {want}, got {}",
                d.rule.as_deref().unwrap_or("none")
            ));
        }
        if let Some(want) = &t.code
            && d.code.as_deref() != Some(want.as_str())
        {
            problems.push(format!(
                "expected code {want:?}, got {}",
                d.code
                    .as_deref()
                    .map_or("none".into(), |c| format!("{c:?}"))
            ));
        }
        if let Some(want) = &t.text {
            let text = d.rewritten.as_ref().or(d.text.as_ref());
            if text != Some(want) {
                problems.push(format!(
                    "expected text {want:?}, got {}",
                    text.map_or("none".into(), |c| format!("{c:?}"))
                ));
            }
        }
        problems
    }
}

/// Read and compile the word lists of `presend:`.
fn compile_lists(settings: &Settings, config: &str, diags: &mut Diagnostics) -> WordLists {
    let Some(presend) = &settings.presend else {
        return WordLists::build(&[]).expect("no lists compile");
    };
    let mut sources = Vec::new();
    for spec in &presend.word_lists {
        let mut words = Vec::new();
        if let Some(path) = &spec.file {
            match std::fs::read_to_string(path) {
                Ok(text) => words = read_list(&text),
                Err(e) => {
                    diags.push(
                        config,
                        format!("presend.word_lists.{}.file", spec.name),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    continue;
                }
            }
        }
        words.extend(spec.words.iter().cloned());
        sources.push(ListSource {
            name: spec.name.clone(),
            words,
            allow: spec.allow.clone(),
        });
    }
    match WordLists::build(&sources) {
        Ok(lists) => lists,
        Err(e) => {
            diags.push(config, "presend.word_lists", e);
            WordLists::build(&[]).expect("no lists compile")
        }
    }
}

/// Compile `when` or `unless`, with the message fields.
fn conditions(
    map: Option<&serde_yaml::Mapping>,
    part: &str,
    file: &str,
    label: &str,
    diags: &mut Diagnostics,
) -> Vec<ModCondition> {
    crate::rules::conditions(map, part, file, label, diags, |name| {
        let field = ModField::parse(name)?;
        let event = matches!(field, ModField::Callback(Field::Event));
        Ok((field, event))
    })
    .into_iter()
    .map(|(field, matcher)| ModCondition { field, matcher })
    .collect()
}
