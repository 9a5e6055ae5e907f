//! The `easehook` binary: parse the command line, run the command, turn the
//! outcome into an exit code (0 success, 1 failure, 2 usage error).

use std::process::ExitCode;

use clap::Parser;
use easehook::cli::{Cli, Command};
use easehook::commands;
use easehook::config::{self, expand::ProcessEnv};

// The request paths allocate and free many small values per request (the
// parsed fields, the answer, a recorded verdict's event): mimalloc's
// per-thread free lists cost less than the system allocator's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config::resolve_path(cli.config.as_deref(), &ProcessEnv);
    let result = match &cli.command {
        None | Some(Command::Run) => commands::run(&path),
        Some(Command::Check) => commands::check(&path),
        Some(Command::Test(args)) => commands::test(&path, args),
        Some(Command::Simulate(args)) => commands::simulate(&path, args),
        Some(Command::Deliveries(cmd)) => commands::deliveries(&path, cmd),
        Some(Command::Events(cmd)) => commands::events(&path, cmd),
        Some(Command::Digests(cmd)) => commands::digests(&path, cmd),
        Some(Command::Store(cmd)) => commands::store::run(&path, cmd),
        Some(Command::Schema { which }) => commands::schema(which),
        Some(Command::Easemob(easehook::cli::EasemobCommand::Recover(args))) => {
            commands::recover(&path, args)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("easehook: {e:#}");
            ExitCode::from(1)
        }
    }
}
