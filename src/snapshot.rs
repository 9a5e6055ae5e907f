//! The configuration and rule set in force: one immutable value, swapped whole
//! on reload. A request or a delivery takes the snapshot once and uses it
//! throughout, so it never sees half of an old set and half of a new one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Settings, expand::Env};
use crate::diag::Diagnostics;
use crate::moderation::Moderation;
use crate::rules::RuleSet;

#[derive(Debug)]
pub struct Snapshot {
    pub settings: Settings,
    pub rules: RuleSet,
    /// The pre-send endpoint's moderation rules and word lists.
    pub moderation: Moderation,
    /// How long a hand-off holds a delivery under these settings and
    /// actions (see [`lease_ms`]).
    pub lease_ms: u64,
    /// How long a claim from the store holds one (see
    /// [`claim_lease_ms`]).
    pub claim_lease_ms: u64,
}

/// Load the config file and compile its rule set: the one code path shared
/// by `check`, `test`, start-up and reload.
pub fn load(path: &Path, env: &dyn Env) -> Result<Arc<Snapshot>, Diagnostics> {
    load_after(path, env, None)
}

/// [`load`], for a reload: the moderation thresholds of `previous` carry
/// their counts over to the rules that still exist.
pub fn load_after(
    path: &Path,
    env: &dyn Env,
    previous: Option<&Snapshot>,
) -> Result<Arc<Snapshot>, Diagnostics> {
    let settings = config::load(path, env)?;
    let rules = RuleSet::load(&settings, env)?;
    let mut diags = Diagnostics::new();
    let moderation = Moderation::load(
        &settings,
        &rules,
        previous.map(|p| &p.moderation),
        &mut diags,
    );
    diags.redact(&rules.redactor);
    diags.into_result()?;
    let lease_ms = lease_ms(&settings, &rules);
    let claim_lease_ms = claim_lease_ms(&settings, &rules);
    Ok(Arc::new(Snapshot {
        settings,
        rules,
        moderation,
        lease_ms,
        claim_lease_ms,
    }))
}

/// How long a hand-off holds a delivery: longer than any attempt can take
/// plus the time a hand-off can wait for a free slot, so that only a dead
/// process's hand-offs ever run out. A full hand-off queue holds as many
/// deliveries as there are slots, and they get at least half of the slots
/// that free up, each within one attempt's time: two attempts of waiting.
///
/// Computed once per snapshot ([`Snapshot::lease_ms`]), not per request.
pub fn lease_ms(settings: &Settings, rules: &RuleSet) -> u64 {
    let longest = longest_timeout(settings, rules);
    (longest * 3 + LEASE_MARGIN).as_millis() as u64
}

/// How long a claim from the store holds a delivery: its attempt starts at
/// once (a claim asks for no more than the free slots), so the longest
/// attempt plus a margin for recording the outcome. A replica that dies
/// leaves its claims to the others this long after it took them (SPEC §9).
pub fn claim_lease_ms(settings: &Settings, rules: &RuleSet) -> u64 {
    (longest_timeout(settings, rules) + LEASE_MARGIN).as_millis() as u64
}

/// What a lease allows beyond the attempts themselves.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// The longest time one attempt may take: `delivery.timeout`, or an
/// action's own `timeout` when longer.
fn longest_timeout(settings: &Settings, rules: &RuleSet) -> Duration {
    rules
        .actions
        .iter()
        .filter_map(|a| a.timeout)
        .chain(std::iter::once(settings.delivery.timeout))
        .max()
        .unwrap_or_default()
}
