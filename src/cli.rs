//! The command line (SPEC §2).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Easemob (环信) IM callbacks in, notifications out.
#[derive(Debug, Parser)]
#[command(name = "easehook", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: $EASEHOOK_CONFIG, else ./easehook.yaml when it exists, else /etc/easehook/easehook.yaml]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the daemon (the default)
    Run,
    /// Validate the config, every rule file and every template; print every problem
    Check,
    /// Dry-run one callback through the rules and print what each action would send
    Test(TestArgs),
    /// Act as Easemob: build or read a callback, sign it, POST it to the daemon
    Simulate(SimulateArgs),
    /// Deliveries in the running daemon's store (through the admin API)
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Events in the running daemon's store (through the admin API)
    #[command(subcommand)]
    Events(EventsCommand),
    /// Digests and thresholds in the running daemon's store (through the admin API)
    #[command(subcommand)]
    Digests(DigestsCommand),
    /// The store itself: migrate a shared database, copy the embedded store into one
    #[command(subcommand)]
    Store(StoreCommand),
    /// Easemob's side: ask it to re-send the callbacks it failed to deliver
    #[command(subcommand)]
    Easemob(EasemobCommand),
    /// Print the JSON Schema of easehook.yaml or of rule files, for editors
    Schema {
        /// Which file's schema
        #[arg(value_parser = ["config", "rules"])]
        which: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EasemobCommand {
    /// After an outage: ask Easemob to re-send the period's failed callbacks
    /// (its failed-callback storage, 回调异常缓存) to this daemon
    Recover(RecoverArgs),
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The app, org#app; its credentials come from easemob: in the config
    #[arg(long)]
    pub appkey: String,
    /// The period's start: a duration ago (2h), an RFC 3339 time, or ms
    #[arg(long)]
    pub since: String,
    /// The period's end [default: now]
    #[arg(long)]
    pub until: Option<String>,
    /// Where Easemob re-sends [default: public_callback_url, else the callback rule's URL]
    #[arg(long, value_name = "URL")]
    pub target_url: Option<String>,
    /// List the stored sets of the period, and ask for nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum DigestsCommand {
    /// List open digests and threshold groups counting, by rule and group
    List {
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Bring the PostgreSQL schema up to this version without starting the daemon
    Migrate,
    /// Copy the embedded SQLite store (daemon stopped) into an empty PostgreSQL database
    Copy {
        /// The target database, postgres://user:password@host:5432/db [default: store.url]
        #[arg(
            long,
            value_name = "URL",
            env = "EASEHOOK_COPY_TO",
            hide_env_values = true
        )]
        to: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first
    List {
        /// Only this status
        #[arg(long, value_parser = ["pending", "sent", "dead"])]
        status: Option<String>,
        /// Only deliveries of this action
        #[arg(long)]
        action: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// One delivery with every attempt made: when, how long, outcome, code, error
    Show {
        /// The delivery's id
        id: i64,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// Put dead deliveries back in the queue
    Retry {
        /// Delivery ids
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        ids: Vec<i64>,
        /// Every dead delivery
        #[arg(long)]
        dead: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored events with the rules they matched, newest first
    List {
        /// Only events received within this time, like 1h or 30m
        #[arg(long)]
        since: Option<String>,
        /// Only this event (roster:ban) or family (roster)
        #[arg(long)]
        event: Option<String>,
        /// Only events whose from or to user is this one (alice)
        #[arg(long)]
        user: Option<String>,
        /// Only events that matched this rule
        #[arg(long)]
        rule: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// Give stored events the deliveries the rules in force make and they lack (each once)
    Replay {
        /// Events received within this time, like 1h, or since a time in ms
        #[arg(long)]
        since: String,
        /// Only events received before this time (ms)
        #[arg(long)]
        until: Option<u64>,
        /// Only this event (roster:ban) or family (roster)
        #[arg(long)]
        event: Option<String>,
        /// Only the deliveries of this rule
        #[arg(long)]
        rule: Option<String>,
        /// Show what would be created, and create nothing
        #[arg(long)]
        dry_run: bool,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The callback JSON: a file, or - for standard input. Several (in
    /// order) also show what their digests and thresholds would send, each
    /// event received at its `timestamp`. With --since: only stored events
    /// of this name or family (roster:ban, roster)
    #[arg(
        long,
        short = 'e',
        value_name = "FILE|-|PATTERN",
        required_unless_present = "since"
    )]
    pub event: Vec<String>,
    /// Really send the rendered messages (nothing is stored)
    #[arg(long, conflicts_with = "since")]
    pub send: bool,
    /// Backtest: evaluate the stored events received since then (24h, an
    /// RFC 3339 time, or ms) against the candidate rules and compare
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Backtest: only events received before then
    #[arg(long, value_name = "WHEN", requires = "since")]
    pub until: Option<String>,
    /// Backtest: the candidate rules [default: rules_dir as it is on disk]
    #[arg(long, value_name = "DIR", requires = "since")]
    pub rules: Option<PathBuf>,
    /// Print the comparison (backtest) or the verdicts (--presend) as JSON
    #[arg(long)]
    pub json: bool,
    /// Send the events, pre-send requests, through the moderation rules:
    /// the verdict, the deciding rule, the hits and the exact answer. With
    /// --since: what the moderation rules would have done to the stored
    /// message callbacks of the period
    #[arg(long, conflicts_with = "send")]
    pub presend: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Build a callback for this event, like roster:ban or chat
    #[arg(
        long,
        value_name = "EVENT",
        conflicts_with = "file",
        default_value = "roster:ban"
    )]
    pub event: String,
    /// Initiating user id
    #[arg(long, default_value = "alice")]
    pub from: String,
    /// Receiving user id
    #[arg(long, default_value = "bob")]
    pub to: String,
    /// App key [default: the first appkey in `secrets`]
    #[arg(long)]
    pub appkey: Option<String>,
    /// Send this callback JSON instead of building one (it is re-signed)
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Sign with this secret [default: the configured one for the appkey]
    #[arg(long, env = "EASEHOOK_SIMULATE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// POST here [default: the configured listener and callback_path]
    #[arg(long)]
    pub url: Option<String>,
    /// Print the signed JSON instead of sending it
    #[arg(long)]
    pub print: bool,
}
