//! `presend:` — the pre-send callback's endpoint (SPEC §16): where it
//! listens, how long an answer may take, what an error answers, which
//! verdicts are recorded, and the word lists as written. The lists' files
//! are read and compiled by `crate::moderation`, beside the rules that use
//! them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use super::resolve;
use super::units::{HumanDuration, Num};
use crate::diag::Diagnostics;

/// Verdicts waiting to be stored, at most, unless `presend.queue` says.
pub const DEFAULT_QUEUE: usize = 10_000;

/// `presend:` as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPresend {
    /// The path Easemob's pre-send callback POSTs to, on the callback
    /// listener. Default `/easemob/presend`.
    path: Option<String>,
    /// The answer leaves within this, from the request's arrival; keep it
    /// under the console's 等待响应时间 (200 ms by default). Default `150ms`.
    budget: Option<HumanDuration>,
    /// `pass` (default) or `reject`: the answer when evaluation fails or
    /// runs out of budget.
    on_error: Option<OnError>,
    /// Which verdicts become stored `presend:*` events: any of `reject`,
    /// `rewrite`, `pass`. Default `[reject, rewrite]`.
    record: Option<Vec<RecordVerdict>>,
    /// Verdicts waiting to be stored, at most; more are dropped and
    /// counted. Default 10000.
    queue: Option<Num<usize>>,
    /// Word lists by name, for the `contains:` of moderation rules
    /// (see docs/moderation.md).
    #[schemars(with = "BTreeMap<String, RawWordList>")]
    word_lists: Option<serde_yaml::Mapping>,
}

/// What an error or a late evaluation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// `{"valid":true}`: the message is delivered.
    #[default]
    Pass,
    /// `{"valid":false}`: the message is blocked.
    Reject,
}

/// A verdict that `record:` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordVerdict {
    Pass,
    Reject,
    Rewrite,
}

/// One word list as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct RawWordList {
    /// A UTF-8 file, one word or phrase a line; `#` comments and blank
    /// lines are skipped. Relative to the config file's directory.
    file: Option<String>,
    /// Words written here (with `file`, both count).
    words: Vec<String>,
    /// Phrases that contain a word but are fine: no hit inside them.
    allow: Vec<String>,
}

/// One word list: where its words come from. Files are read when the
/// lists are compiled (start-up, `check`, reload).
#[derive(Debug, Clone, PartialEq)]
pub struct WordListSpec {
    pub name: String,
    pub file: Option<PathBuf>,
    pub words: Vec<String>,
    pub allow: Vec<String>,
}

/// The pre-send endpoint's settings (`presend:`).
#[derive(Debug, Clone, PartialEq)]
pub struct PresendSettings {
    pub path: String,
    pub budget: Duration,
    pub on_error: OnError,
    pub record_pass: bool,
    pub record_reject: bool,
    pub record_rewrite: bool,
    pub queue: usize,
    pub word_lists: Vec<WordListSpec>,
}

/// Check and resolve `presend:`; `callback_path` may not be its path.
pub(super) fn compile_presend(
    raw: RawPresend,
    base: &Path,
    callback_path: &str,
    file: &str,
    diags: &mut Diagnostics,
) -> PresendSettings {
    let path = raw.path.unwrap_or_else(|| "/easemob/presend".into());
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        diags.push(
            file,
            "presend.path",
            format!("{path:?} must be a URL path starting with `/`"),
        );
    } else if path == callback_path || path == "/healthz" {
        diags.push(
            file,
            "presend.path",
            format!("{path:?} is already the path of another route"),
        );
    }
    let budget = raw.budget.map_or(Duration::from_millis(150), |d| d.0);
    if budget.is_zero() {
        diags.push(file, "presend.budget", "must be more than 0s");
    } else if budget >= Duration::from_secs(1) {
        diags.push(
            file,
            "presend.budget",
            "must be under 1s: Easemob waits 200 ms by default, 1 s at most",
        );
    }
    let record = raw
        .record
        .unwrap_or_else(|| vec![RecordVerdict::Reject, RecordVerdict::Rewrite]);
    let queue = raw.queue.map_or(DEFAULT_QUEUE, |n| n.0);
    if queue == 0 {
        diags.push(file, "presend.queue", "must be at least 1");
    }
    let mut word_lists = Vec::new();
    for (k, v) in raw.word_lists.unwrap_or_default() {
        let Some(name) = k.as_str().map(str::to_string) else {
            diags.push(file, "presend.word_lists", "list names are strings");
            continue;
        };
        let loc = format!("presend.word_lists.{name}");
        let list: RawWordList = match v {
            Value::Mapping(m) => super::deserialize_keys(m, file, &loc, diags),
            _ => {
                diags.push(
                    file,
                    &loc,
                    "a word list is {file: PATH}, {words: [...]} or both, with an optional allow",
                );
                continue;
            }
        };
        if list.file.is_none() && list.words.is_empty() {
            diags.push(file, &loc, "has no words: give `file:` or `words:`");
        }
        word_lists.push(WordListSpec {
            name,
            file: list
                .file
                .filter(|f| !f.is_empty())
                .map(|f| resolve(base, Some(f.into()), "")),
            words: list.words,
            allow: list.allow,
        });
    }
    PresendSettings {
        path,
        budget,
        on_error: raw.on_error.unwrap_or_default(),
        record_pass: record.contains(&RecordVerdict::Pass),
        record_reject: record.contains(&RecordVerdict::Reject),
        record_rewrite: record.contains(&RecordVerdict::Rewrite),
        queue,
        word_lists,
    }
}
