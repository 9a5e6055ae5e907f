//! easehook: Easemob (环信) IM server callbacks in, notifications out.
//!
//! The path of one event:
//!
//! ```text
//! Easemob ──POST──▶ server::callback ──▶ callback::Callback::parse   typed fields, raw JSON, derived values
//!                                    ──▶ verify::check                md5 signature, secrets per appkey, age
//!                                    ──▶ rules::RuleSet::evaluate     current snapshot, no I/O
//!                                    ──▶ store::Store::accept         dedup + commit
//!                                    ◀── 200 {"ok":true,"id":…}
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
//! | [`actions`] | email, Slack, HTTP and log actions: compile and render |
//! | [`store`] | where accepted events live until handled |
//! | [`snapshot`] | settings + rule set, swapped whole on reload |
//! | [`server`] | the callback and admin listeners |
//! | [`reload`] | SIGHUP, file watching and the reload endpoint |
//! | [`shutdown`] | one signal that reaches every long-lived task |
//! | [`telemetry`] | logs |
//! | [`app`] | wiring: start everything, run until shutdown |
//! | [`commands`] | `check`, `test` and `simulate` |

pub mod actions;
pub mod app;
pub mod callback;
pub mod cli;
pub mod commands;
pub mod config;
pub mod diag;
pub mod reload;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod verify;
