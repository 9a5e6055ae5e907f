//! Problems found while loading configuration, rules and templates.
//!
//! Loading never stops at the first problem: every stage pushes what it finds
//! into a [`Diagnostics`] list, and `check`, start-up and reload print the whole
//! list as `file: location: message` lines. Messages pass through a
//! [`Redactor`] so that no secret can leak through an error text.

use std::fmt;
use std::sync::Arc;

/// One problem: the file it is in, where in that file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub location: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.location, self.message)
        }
    }
}

/// Every problem found by one load. Empty means valid.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a problem.
    pub fn push(
        &mut self,
        file: impl fmt::Display,
        location: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.items.push(Diagnostic {
            file: file.to_string(),
            location: location.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    /// Replace every secret in every message with `***`.
    pub fn redact(&mut self, redactor: &Redactor) {
        for d in &mut self.items {
            d.message = redactor.redact(&d.message);
            d.location = redactor.redact(&d.location);
        }
    }

    /// `Ok(())` when nothing was found, else the whole list as an error.
    pub fn into_result(self) -> Result<(), Diagnostics> {
        if self.items.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Knows every secret value of the configuration and masks it in any text.
///
/// Secrets are the callback secrets, the admin token, SMTP passwords, and
/// everything that came from `${file:…}`, `${credential:…}` or an environment
/// variable whose name says it is secret (`*SECRET*`, `*TOKEN*`, `*PASSWORD*`,
/// `*KEY*`, `*WEBHOOK*`, `*CREDENTIAL*`).
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Arc<Vec<String>>,
}

impl Redactor {
    /// Values shorter than this are not masked: masking `ok` or `1` everywhere
    /// would garble output without protecting anything.
    const MIN_LEN: usize = 4;

    pub fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| s.len() >= Self::MIN_LEN);
        // Longest first, so that a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            secrets: Arc::new(secrets),
        }
    }

    /// This redactor with more secrets (those of the rule files).
    pub fn with(&self, more: Vec<String>) -> Self {
        let mut all: Vec<String> = self.secrets.as_ref().clone();
        all.extend(more);
        Self::new(all)
    }

    pub fn is_secret(&self, value: &str) -> bool {
        self.secrets.iter().any(|s| s == value)
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_file_location_message() {
        let mut d = Diagnostics::new();
        d.push("rules/a.yaml", "rule x", "unknown action `y`");
        d.push("easehook.yaml", "", "not a mapping");
        assert_eq!(
            d.to_string(),
            "rules/a.yaml: rule x: unknown action `y`\neasehook.yaml: not a mapping"
        );
    }

    #[test]
    fn redactor_masks_longest_first_and_ignores_tiny_values() {
        let r = Redactor::new(vec!["abcd".into(), "abcdefgh".into(), "ok".into()]);
        assert_eq!(r.redact("x abcdefgh y abcd ok"), "x *** y *** ok");
    }
}
