//! The `moderation:` entries of a rule file, as written (SPEC §16). The
//! rule files are read here, with everything else in them; the entries are
//! compiled by `crate::moderation`, beside the word lists they name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::matcher;
use crate::config::units::HumanDuration;

/// One moderation rule as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawModerationRule {
    /// Unique name across all moderation rules.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Every condition must hold. Fields as in `rules:`, plus
    /// `message.type`, `message.text`, `message.ext.KEY` and `group_id`.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, matcher::RawMatcher>>")]
    pub when: Option<Mapping>,
    /// When any condition holds, the rule does not fire.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, matcher::RawMatcher>>")]
    pub unless: Option<Mapping>,
    /// A word list of `presend.word_lists`, or a list of them: the rule
    /// fires only on a hit in the message's text.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub contains: Option<Value>,
    /// `pass` and `reject` end the evaluation; `rewrite` changes the text
    /// (`mask`) or the ext (`ext`) and evaluation goes on.
    pub verdict: RawVerdict,
    /// Sent as `code` with a reject (the sender's SDK shows it).
    #[serde(default)]
    pub code: Option<String>,
    /// rewrite: every character of every hit becomes this. Default `*`.
    #[serde(default)]
    pub mask: Option<String>,
    /// rewrite: keys set in the message's ext.
    #[serde(default)]
    pub ext: Option<BTreeMap<String, String>>,
    /// Fires from the `count + 1`-th message within `within` of one group,
    /// counted in the daemon's memory.
    #[serde(default)]
    pub threshold: Option<RawModerationThreshold>,
}

/// `contains:`: one list or several.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A moderation rule's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawVerdict {
    /// Deliver as it is; no later rule is evaluated.
    Pass,
    /// Block; no later rule is evaluated.
    Reject,
    /// Deliver changed; later rules see the change.
    Rewrite,
}

/// `threshold:` of a moderation rule.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawModerationThreshold {
    /// Messages allowed within the window; the next one fires.
    pub count: u32,
    /// The sliding window's length.
    pub within: HumanDuration,
    /// Fields whose values split the counting into groups (`from`, …).
    #[serde(default)]
    pub by: Vec<String>,
}

/// A `moderation:` entry, where it was written.
#[derive(Debug, Clone)]
pub struct ModerationSource {
    pub file: String,
    /// `moderation[3]` or `moderation rule NAME`, for problems.
    pub label: String,
    pub raw: RawModerationRule,
}
