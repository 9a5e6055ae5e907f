//! The pre-send endpoint's metrics (SPEC §16): requests by verdict, how
//! long answers take, rule hits, answers over budget, records dropped, and
//! the words of each list in force.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{RuleLabels, RuleMetrics, kept};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `pass`, `reject`, `rewrite`, `error`, `bad_request`,
    /// `unauthorized` or `too_large`.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListLabels {
    pub list: String,
}

/// The pre-send endpoint's series.
#[derive(Debug)]
pub struct PresendMetrics {
    /// `easehook_presend_requests_total{verdict}`.
    pub requests: Family<VerdictLabels, Counter>,
    /// `easehook_presend_duration_seconds`: arrival to answer.
    pub duration: Histogram,
    /// `easehook_presend_rule_hits_total{rule}`: times a moderation rule
    /// fired.
    pub rule_hits: Family<RuleLabels, Counter>,
    /// `easehook_presend_over_budget_total`: answers given as `on_error`
    /// because the budget ran out.
    pub over_budget: Counter,
    /// `easehook_presend_records_dropped_total`: verdicts to record that
    /// the queue or the store could not take.
    pub records_dropped: Counter,
    /// `easehook_word_list_words{list}`: words of each list in force.
    pub words: Family<ListLabels, Gauge>,
    /// Verdicts per minute, for the console.
    pub activity: VerdictActivity,
}

impl Default for PresendMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 10 µs … ~1.3 s: answers take microseconds, the budget is
            // at most a second.
            duration: Histogram::new(exponential_buckets(0.00001, 2.0, 18)),
            rule_hits: Family::default(),
            over_budget: Counter::default(),
            records_dropped: Counter::default(),
            words: Family::default(),
            activity: VerdictActivity::default(),
        }
    }
}

impl PresendMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "presend_requests",
            "Pre-send requests, by verdict (pass, reject, rewrite, error, bad_request, unauthorized, too_large)",
            self.requests.clone(),
        );
        registry.register(
            "presend_duration_seconds",
            "Time from a pre-send request's arrival to its answer",
            self.duration.clone(),
        );
        registry.register(
            "presend_rule_hits",
            "Times a moderation rule fired, by rule",
            self.rule_hits.clone(),
        );
        registry.register(
            "presend_over_budget",
            "Pre-send answers given as on_error because the budget ran out",
            self.over_budget.clone(),
        );
        registry.register(
            "presend_records_dropped",
            "Verdicts to record that the queue or the store could not take",
            self.records_dropped.clone(),
        );
        registry.register(
            "word_list_words",
            "Words of each moderation word list in force",
            self.words.clone(),
        );
    }

    /// Count a request that ended as `verdict`.
    pub fn count(&self, verdict: &'static str) {
        self.requests
            .get_or_create(&VerdictLabels { verdict })
            .inc();
    }

    /// Count a firing of the moderation rule `name`, with the counter the
    /// rule keeps.
    pub fn count_hit(&self, kept_by: &RuleMetrics, name: &str) {
        kept(&kept_by.matches, &self.rule_hits, || RuleLabels {
            rule: name.to_string(),
        })
        .inc();
    }

    /// The lists in force and their words, replacing those before.
    pub fn set_words<'a>(&self, lists: impl Iterator<Item = (&'a str, usize)>) {
        self.words.clear();
        for (list, n) in lists {
            self.words
                .get_or_create(&ListLabels {
                    list: list.to_string(),
                })
                .set(n as i64);
        }
    }
}

/// One minute of pre-send verdicts, for the console's moderation page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictMinute {
    /// Ms since the epoch when the minute began.
    pub at_ms: u64,
    /// pass, reject, rewrite, over all requests.
    pub all: [u64; 3],
    /// The same by the rule that decided (rewrites: by each rewriting rule).
    pub by_rule: std::collections::BTreeMap<String, [u64; 3]>,
}

/// Pre-send verdicts per minute over the last hour, in memory.
///
/// One short lock per answer: the verdict and its rules are added to the
/// current minute. The page reads a copy.
#[derive(Debug, Default)]
pub struct VerdictActivity {
    minutes: std::sync::Mutex<std::collections::VecDeque<VerdictMinute>>,
}

impl VerdictActivity {
    /// Count a verdict (`0` pass, `1` reject, `2` rewrite) decided by
    /// `rules` at `now_ms`.
    pub fn add<'a>(&self, verdict: usize, rules: impl Iterator<Item = &'a str>, now_ms: u64) {
        let at_ms = now_ms - now_ms % 60_000;
        let Ok(mut minutes) = self.minutes.lock() else {
            return;
        };
        if minutes.back().is_none_or(|m| m.at_ms < at_ms) {
            minutes.push_back(VerdictMinute {
                at_ms,
                ..Default::default()
            });
            while minutes.len() > 60 {
                minutes.pop_front();
            }
        }
        let Some(m) = minutes.back_mut() else { return };
        m.all[verdict] += 1;
        for rule in rules {
            match m.by_rule.get_mut(rule) {
                Some(c) => c[verdict] += 1,
                None => {
                    let mut c = [0; 3];
                    c[verdict] = 1;
                    m.by_rule.insert(rule.to_string(), c);
                }
            }
        }
    }

    /// The 60 minutes up to `now_ms`, oldest first, empty ones included.
    pub fn last_hour(&self, now_ms: u64) -> Vec<VerdictMinute> {
        let now = now_ms - now_ms % 60_000;
        let kept = self.minutes.lock().map(|m| m.clone()).unwrap_or_default();
        (0..60u64)
            .map(|i| now - (59 - i) * 60_000)
            .map(|at_ms| {
                kept.iter()
                    .find(|m| m.at_ms == at_ms)
                    .cloned()
                    .unwrap_or(VerdictMinute {
                        at_ms,
                        ..Default::default()
                    })
            })
            .collect()
    }
}
