//! `type: log`: a line in easehook's own log.

use serde::Deserialize;

use super::{Compiler, TemplateSource};
use crate::template::{Data, Escape, TemplateRef, Templates};

/// A log action as written in a rule file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    message: TemplateSource,
    /// `trace`, `debug`, `info` (default), `warn` or `error`.
    #[serde(default)]
    level: Option<String>,
}

/// Severity of a log action's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Debug)]
pub struct LogAction {
    message: TemplateRef,
    level: Level,
}

/// A rendered log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

pub(super) fn compile(raw: RawLog, c: &mut Compiler) -> Option<LogAction> {
    let level = match raw.level.as_deref().unwrap_or("info") {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warn" | "warning" => Level::Warn,
        "error" => Level::Error,
        other => {
            c.error(
                "level",
                format!("unknown level {other:?}: use trace, debug, info, warn or error"),
            );
            Level::Info
        }
    };
    let message = c.template("message", &raw.message, Escape::Plain)?;
    Some(LogAction { message, level })
}

impl LogAction {
    /// Whether the log keeps lines of this action's level. When it does not
    /// (`RUST_LOG=warn` and a `debug` action), there is nothing to render
    /// or write: the delivery is done.
    pub fn is_written(&self) -> bool {
        use tracing::Level as L;
        match self.level {
            Level::Trace => tracing::enabled!(target: "easehook::action", L::TRACE),
            Level::Debug => tracing::enabled!(target: "easehook::action", L::DEBUG),
            Level::Info => tracing::enabled!(target: "easehook::action", L::INFO),
            Level::Warn => tracing::enabled!(target: "easehook::action", L::WARN),
            Level::Error => tracing::enabled!(target: "easehook::action", L::ERROR),
        }
    }

    pub(super) fn render(&self, t: &Templates, ctx: &Data) -> Result<LogLine, String> {
        Ok(LogLine {
            level: self.level,
            message: t.render(&self.message, ctx)?,
        })
    }
}

impl LogLine {
    pub(super) fn describe(&self) -> String {
        format!("log {}: {}\n", self.level.as_str(), self.message)
    }
}

/// Write the line to easehook's log.
pub(super) fn send(m: &LogLine) -> super::Outcome {
    let msg = m.message.as_str();
    match m.level {
        Level::Trace => tracing::trace!(target: "easehook::action", "{msg}"),
        Level::Debug => tracing::debug!(target: "easehook::action", "{msg}"),
        Level::Info => tracing::info!(target: "easehook::action", "{msg}"),
        Level::Warn => tracing::warn!(target: "easehook::action", "{msg}"),
        Level::Error => tracing::error!(target: "easehook::action", "{msg}"),
    }
    super::Outcome::Sent
}
