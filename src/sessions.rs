//! The console's sign-in sessions: what a signed-in browser holds, kept in
//! the state the listeners share so that every admin listener of one
//! daemon knows the same sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes first.
const SESSIONS_MAX: usize = 1000;

/// The console's sign-in sessions, in memory: a restart signs everyone
/// out, and each replica keeps its own (its admin listener is its own).
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    /// Held while a wrong token waits: one wrong guess at a time.
    pub(crate) gate: tokio::sync::Mutex<()>,
    /// The form token while the console is open (no `admin_token`).
    pub(crate) open_token: String,
}

struct Session {
    /// The form token of this session.
    csrf: String,
    /// The admin token it was opened with, hashed: a changed token ends it.
    token: [u8; 32],
    until: Instant,
}

/// A random id: 32 bytes from the system's generator, in hex.
fn random_id() -> String {
    let mut bytes = [0u8; 32];
    // Without randomness there is no safe session; the system generator
    // does not fail on Linux once booted.
    getrandom::fill(&mut bytes).expect("the system's random generator failed");
    hex::encode(bytes)
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            gate: tokio::sync::Mutex::new(()),
            open_token: random_id(),
        }
    }

    /// A new session for the admin token `token`: its id and form token.
    pub(crate) fn open(&self, token: &str) -> String {
        let id = random_id();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.until > now);
        if map.len() >= SESSIONS_MAX
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.until)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                csrf: random_id(),
                token: Sha256::digest(token.as_bytes()).into(),
                until: now + SESSION_TTL,
            },
        );
        id
    }

    /// The form token of session `id`, if it is open and of `token`.
    pub(crate) fn check(&self, id: &str, token: &str) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get(id)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        (s.until > Instant::now() && bool::from(s.token.ct_eq(&hash))).then(|| s.csrf.clone())
    }

    pub(crate) fn close(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_the_token_changes() {
        let s = Sessions::new();
        let id = s.open("one");
        assert!(s.check(&id, "one").is_some());
        assert!(s.check(&id, "two").is_none());
        assert!(s.check("unknown", "one").is_none());
        s.close(&id);
        assert!(s.check(&id, "one").is_none());
    }
}
