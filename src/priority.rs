//! The delivery threads' scheduling priority.
//!
//! Acknowledging a callback is what Easemob waits for; a delivery can wait a
//! little. So the delivery threads normally run at `SCHED_IDLE`
//! ([`Priority::Yielding`]): they get every bit of CPU the listeners and the
//! store writer leave idle, and give a core up the moment one of those wakes.
//! Even in a burst there is idle CPU (the request path waits for each
//! commit's sync), so deliveries go on, only behind the acknowledgements.
//!
//! A host kept busy by other work could starve them, though: against a
//! thread at the default priority, a `SCHED_IDLE` thread gets about 0.3 % of
//! a core. So once the oldest due delivery has waited `delivery.yield_for`,
//! the threads go back to a plain lower priority, nice 10
//! ([`Priority::Lowered`]), which guarantees them a share (about a tenth of
//! what a busy thread at the default priority gets), until the oldest due
//! delivery is within half of `yield_for` again.
//!
//! Leaving `SCHED_IDLE` is a raise in priority, which Linux allows only up to
//! what `RLIMIT_NICE` permits (nice 10 needs a limit of at least 10; systemd:
//! `LimitNICE=+10`) or with `CAP_SYS_NICE`. Where neither is given the threads
//! never yield, and stay at nice 10 throughout, as with `yield_for: 0s`: a
//! thread that could not come back must not go.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::now_ms;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Niceness of the delivery threads when they do not yield: below the
/// request path, above nothing else the host runs at the default.
pub const DELIVERY_NICE: i32 = 10;

/// How often the oldest due delivery is looked at.
const STEER_EVERY: Duration = Duration::from_millis(500);

/// Where the delivery threads stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_IDLE`: only CPU nothing else wants.
    Yielding,
    /// `SCHED_OTHER` at nice [`DELIVERY_NICE`]: a small share, guaranteed.
    Lowered,
}

impl Priority {
    /// As `/api/v1/status` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Yielding => "yielding",
            Priority::Lowered => "lowered",
        }
    }
}

/// The priority to take next, given the current one and how long the oldest
/// due delivery has waited. The two thresholds (`yield_for`, and half of it
/// to yield again) keep a backlog hovering near one from flipping the
/// threads back and forth.
pub fn next(current: Priority, lag: Duration, yield_for: Duration, can_yield: bool) -> Priority {
    if !can_yield || yield_for.is_zero() {
        return Priority::Lowered;
    }
    match current {
        Priority::Yielding if lag >= yield_for => Priority::Lowered,
        Priority::Lowered if lag < yield_for / 2 => Priority::Yielding,
        same => same,
    }
}

/// The delivery runtime's threads, and the priority they share.
pub struct DeliveryThreads {
    inner: Mutex<Inner>,
    can_yield: bool,
}

struct Inner {
    tids: Vec<libc::pid_t>,
    priority: Priority,
}

impl DeliveryThreads {
    /// Threads at [`Priority::Lowered`] until told otherwise; whether they
    /// may ever yield is found out once, on a scratch thread.
    pub fn new() -> Arc<Self> {
        let can_yield = probe();
        if !can_yield {
            tracing::info!(
                "delivery threads stay at nice {DELIVERY_NICE}: leaving SCHED_IDLE again needs \
                 RLIMIT_NICE of at least {DELIVERY_NICE} (systemd: LimitNICE=+{DELIVERY_NICE}) or CAP_SYS_NICE"
            );
        }
        Arc::new(Self {
            inner: Mutex::new(Inner {
                tids: Vec::new(),
                priority: Priority::Lowered,
            }),
            can_yield,
        })
    }

    /// Whether the threads may yield on this host (see the module docs).
    pub fn can_yield(&self) -> bool {
        self.can_yield
    }

    pub fn priority(&self) -> Priority {
        self.lock().priority
    }

    /// The threads' ids, as `/proc/self/task` names them.
    pub fn threads(&self) -> Vec<libc::pid_t> {
        self.lock().tids.clone()
    }

    /// Run on each delivery thread as it starts: lower it, and join it to
    /// the others' priority.
    pub fn enter(&self) {
        lower_self();
        let mut inner = self.lock();
        if inner.priority == Priority::Yielding
            && let Err(e) = apply(0, Priority::Yielding)
        {
            tracing::debug!(error = %e, "cannot make a delivery thread yield");
        }
        // SAFETY: gettid has no preconditions and cannot fail.
        inner.tids.push(unsafe { libc::gettid() });
    }

    /// Run on each delivery thread as it stops.
    pub fn leave(&self) {
        // SAFETY: as in `enter`.
        let tid = unsafe { libc::gettid() };
        self.lock().tids.retain(|&t| t != tid);
    }

    /// Move every thread to `priority`; whether that was a change.
    pub fn set(&self, priority: Priority) -> bool {
        let mut inner = self.lock();
        if inner.priority == priority {
            return false;
        }
        for &tid in &inner.tids {
            if let Err(e) = apply(tid, priority) {
                tracing::warn!(tid, error = %e, priority = priority.as_str(), "cannot change a delivery thread's priority");
            }
        }
        inner.priority = priority;
        true
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards a list and a flag that every step leaves whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Set the calling thread's niceness to [`DELIVERY_NICE`]. Failure (refused
/// by a sandbox) leaves it at normal priority, which is merely slower under
/// load.
fn lower_self() {
    // SAFETY: setpriority has no memory effects; on Linux, `who = 0` with
    // PRIO_PROCESS names the calling thread only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, DELIVERY_NICE) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a delivery thread's priority");
    }
}

/// Put thread `tid` (0: the calling thread) under `priority`'s policy. The
/// thread's niceness is kept across both.
fn apply(tid: libc::pid_t, priority: Priority) -> std::io::Result<()> {
    let policy = match priority {
        Priority::Yielding => libc::SCHED_IDLE,
        Priority::Lowered => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a thread lowered to [`DELIVERY_NICE`] can go to `SCHED_IDLE` and
/// come back, tried on a thread of its own (which ends either way).
fn probe() -> bool {
    std::thread::Builder::new()
        .name("easehook-probe".into())
        .spawn(|| {
            lower_self();
            apply(0, Priority::Yielding).is_ok() && apply(0, Priority::Lowered).is_ok()
        })
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(false)
}

/// Until shutdown, every [`STEER_EVERY`]: look at how long the oldest due
/// delivery has waited and move the threads accordingly. Runs on the
/// request path's runtime, so that it is not itself starved along with the
/// threads it is to rescue. `yield_for` (the setting in force) is read at
/// each look, so a reload changes it.
pub async fn steer(
    store: Arc<dyn Store>,
    yield_for: impl Fn() -> Duration + Send,
    threads: Arc<DeliveryThreads>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(STEER_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let yield_for = yield_for();
        // Leased deliveries are not counted: they are in flight, or handed
        // off, at most `delivery.concurrency` of them. A store that cannot
        // be read leaves the threads as they are.
        let Ok(due) = store.next_due().await else {
            continue;
        };
        let lag = due.map_or(0, |due| now_ms().saturating_sub(due));
        let lag = Duration::from_millis(lag);
        let want = next(threads.priority(), lag, yield_for, threads.can_yield());
        if threads.set(want) {
            match want {
                Priority::Yielding => tracing::info!("delivery threads yield to acknowledgements"),
                // Only a reload to `yield_for: 0s` lowers them for
                // another reason: `can_yield` never changes.
                Priority::Lowered if yield_for.is_zero() => tracing::info!(
                    "delivery.yield_for is 0s: delivery threads back to nice {DELIVERY_NICE}"
                ),
                Priority::Lowered => tracing::info!(
                    lag_ms = lag.as_millis() as u64,
                    "a due delivery has waited delivery.yield_for: delivery threads back to nice {DELIVERY_NICE}"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn threads_yield_until_a_delivery_has_waited_yield_for_and_again_below_half_of_it() {
        use Priority::*;
        let y = 30 * S;
        assert_eq!(next(Lowered, Duration::ZERO, y, true), Yielding);
        assert_eq!(next(Yielding, 29 * S, y, true), Yielding);
        assert_eq!(next(Yielding, 30 * S, y, true), Lowered);
        // Between the two thresholds, each stays where it is.
        assert_eq!(next(Lowered, 20 * S, y, true), Lowered);
        assert_eq!(next(Yielding, 20 * S, y, true), Yielding);
        assert_eq!(next(Lowered, 14 * S, y, true), Yielding);
    }

    #[test]
    fn threads_never_yield_when_they_could_not_come_back_or_yield_for_is_zero() {
        use Priority::*;
        for current in [Yielding, Lowered] {
            assert_eq!(next(current, Duration::ZERO, 30 * S, false), Lowered);
            assert_eq!(next(current, Duration::ZERO, Duration::ZERO, true), Lowered);
        }
    }
}
