//! The sliding windows of moderation thresholds (SPEC §16), in the
//! daemon's memory: a pre-send answer cannot wait for a store.
//!
//! Each group (the values of the rule's `by` fields) keeps the arrival
//! times of at most `count + 1` messages, which is all that deciding
//! needs. Groups whose newest message is older than the window are swept
//! whenever the number of groups doubles since the last sweep, so memory
//! follows the senders active within one window, not all senders ever.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The windows of one threshold rule. Shared between the rule sets of
/// successive reloads while the rule keeps its name and groups.
#[derive(Debug, Default)]
pub struct Windows {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    groups: HashMap<String, VecDeque<u64>>,
    /// Sweep when there are this many groups.
    sweep_at: usize,
}

/// Groups are never swept below this many: a sweep per few messages would
/// cost more than the memory it frees.
const MIN_SWEEP: usize = 1024;

impl Windows {
    /// Count a message of group `key` arriving at `now_ms`: whether the
    /// group now has more than `count` messages within `within_ms`.
    pub fn hit(&self, key: &str, now_ms: u64, count: u32, within_ms: u64) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            // A panic elsewhere while holding it; counting starts over.
            self.inner.clear_poison();
            return false;
        };
        let since = now_ms.saturating_sub(within_ms);
        if inner.groups.len() >= inner.sweep_at.max(MIN_SWEEP) {
            inner
                .groups
                .retain(|_, times| times.back().is_some_and(|&t| t > since));
            inner.sweep_at = inner.groups.len() * 2;
        }
        let times = match inner.groups.get_mut(key) {
            Some(t) => t,
            None => inner.groups.entry(key.to_string()).or_default(),
        };
        while times.front().is_some_and(|&t| t <= since) {
            times.pop_front();
        }
        times.push_back(now_ms);
        while times.len() > count as usize + 1 {
            times.pop_front();
        }
        times.len() > count as usize
    }

    /// How many groups are kept.
    pub fn groups(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.groups.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_from_the_message_after_count_within_the_window() {
        let w = Windows::default();
        for i in 0..3 {
            assert!(!w.hit("alice", 1000 + i, 3, 10_000), "message {i}");
        }
        assert!(w.hit("alice", 1003, 3, 10_000));
        assert!(!w.hit("bob", 1003, 3, 10_000), "groups count apart");
        // Out of the window, the count starts again.
        assert!(!w.hit("alice", 30_000, 3, 10_000));
    }

    #[test]
    fn groups_expire_so_memory_stays_bounded() {
        let w = Windows::default();
        for i in 0..100_000u64 {
            w.hit(&format!("sender{i}"), i, 5, 10);
        }
        assert!(w.groups() < 4 * MIN_SWEEP, "{} groups kept", w.groups());
    }
}
