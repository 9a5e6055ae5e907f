//! easehook: Easemob (环信) IM server callbacks in, notifications out.
//!
//! The path of one event:
//!
//! ```text
//! Easemob ──POST──▶ server::callback ──▶ callback::Callback::parse   typed fields, raw JSON, derived values
//!                                    ──▶ verify::check                md5 signature, secrets per appkey, age
//!                                    ──▶ rules::RuleSet::evaluate     current snapshot, no I/O
//!                                    ──▶ store::Store::accept         dedup + one group commit, fsync
//!                                    ◀── 200 {"ok":true,"id":…}
//! store (pending deliveries) ──▶ dispatch  (worker pool, rate limits, retry schedule)
//!                            ──▶ template  (current templates) ──▶ actions::{email,slack,http,log}
//!                            ──▶ store::Store::record          sent | retry at T | dead
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the command line |
//! | [`config`] | `easehook.yaml`: raw shapes, `${…}` expansion, validated [`config::Settings`] |
//! | [`diag`] | problems reported as `file: location: message`, secret redaction |
//! | [`callback`] | one callback: parsing, user ids, event name, dedup key |
//! | [`verify`] | the signature check |
//! | [`rules`] | rule files compiled into an indexed, immutable [`rules::RuleSet`] |
//! | [`template`] | Handlebars registries, escaping per destination, helpers |
//! | [`actions`] | email, Slack, HTTP, log, team-chat (WeCom, DingTalk, Feishu) and Easemob actions: compile, render, send |
//! | [`store`] | where accepted events and deliveries live: embedded SQLite or shared PostgreSQL, group commit, fenced claims |
//! | [`dispatch`] | claim, render, send, retry, dead-letter; rate limits |
//! | [`snapshot`] | settings + rule set, swapped whole on reload |
//! | [`server`] | the callback and admin listeners |
//! | [`sockets`] | listening sockets passed by systemd; the socket units `check` reads |
//! | [`reload`] | SIGHUP, file watching and the reload endpoint |
//! | [`shutdown`] | one signal that reaches every long-lived task |
//! | [`telemetry`] | logs (stderr or journald) |
//! | [`metrics`] | Prometheus metrics of one daemon |
//! | [`sessions`] | the console's sign-in sessions |
//! | [`state`] | what the listeners, the dispatcher and reload share |
//! | [`app`] | wiring: start everything, run until shutdown |
//! | [`commands`] | `check`, `test`, `simulate`, the admin API clients, `store migrate` and `store copy` |

pub mod actions;
pub mod app;
pub mod callback;
pub mod cli;
pub mod commands;
pub mod config;
pub mod diag;
pub mod dispatch;
pub mod metrics;
pub mod moderation;
pub mod priority;
pub mod reload;
pub mod rules;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod snapshot;
pub mod sockets;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod verify;

/// Short text kept inline, without an allocation, when it fits in 24 bytes:
/// a callback's fields, and the names of rules and actions that go with
/// each event and delivery. Most of them fit.
pub type Text = compact_str::CompactString;

/// Milliseconds since the epoch, now: the one clock of callbacks, leases,
/// windows and the console.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
