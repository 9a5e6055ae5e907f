//! The configuration and rule set in force: one immutable value, swapped whole
//! on reload. A request or a delivery takes the snapshot once and uses it
//! throughout, so it never sees half of an old set and half of a new one.

use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Settings, expand::Env};
use crate::diag::Diagnostics;
use crate::rules::RuleSet;

#[derive(Debug)]
pub struct Snapshot {
    pub settings: Settings,
    pub rules: RuleSet,
    /// How long a hand-off holds a delivery under these settings and
    /// actions (see [`crate::dispatch::lease_ms`]).
    pub lease_ms: u64,
    /// How long a claim from the store holds one (see
    /// [`crate::dispatch::claim_lease_ms`]).
    pub claim_lease_ms: u64,
}

/// Load the config file and compile its rule set: the one code path shared
/// by `check`, `test`, start-up and reload.
pub fn load(path: &Path, env: &dyn Env) -> Result<Arc<Snapshot>, Diagnostics> {
    let settings = config::load(path, env)?;
    let rules = RuleSet::load(&settings, env)?;
    let lease_ms = crate::dispatch::lease_ms(&settings, &rules);
    let claim_lease_ms = crate::dispatch::claim_lease_ms(&settings, &rules);
    Ok(Arc::new(Snapshot {
        settings,
        rules,
        lease_ms,
        claim_lease_ms,
    }))
}
