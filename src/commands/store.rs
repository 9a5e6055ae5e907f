//! `easehook store migrate` and `easehook store copy --to URL` (SPEC §9).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::StoreCommand;
use crate::config::{self, PostgresSettings, StoreSettings, expand::ProcessEnv};
use crate::store::postgres::{self, PgStore};

/// Run a `store` subcommand.
pub fn run(config_path: &Path, cmd: &StoreCommand) -> anyhow::Result<ExitCode> {
    let settings = match config::load(config_path, &ProcessEnv) {
        Ok(s) => s,
        Err(diags) => {
            eprintln!("{diags}");
            return Ok(ExitCode::from(1));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        StoreCommand::Migrate => runtime.block_on(async {
            let pg = match &settings.store {
                StoreSettings::Postgres(pg) => pg,
                StoreSettings::Sqlite => {
                    // The embedded store's schema is made when it opens.
                    let store = crate::store::sqlite::SqliteStore::open(&settings.state_dir)?;
                    println!(
                        "the embedded store {} is up to date",
                        store.path().display()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            };
            match postgres::migrate(pg).await {
                Ok(applied) if applied.is_empty() => {
                    println!(
                        "{}: schema version {} already: nothing to do",
                        pg.shown_url,
                        postgres::SCHEMA_VERSION
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Ok(applied) => {
                    for v in &applied {
                        println!("{}: applied schema version {v}", pg.shown_url);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}", pg.problem(&settings, &e.to_string()));
                    Ok(ExitCode::from(1))
                }
            }
        }),
        StoreCommand::Copy { to } => {
            let target = match to {
                Some(url) => {
                    let ca_file = match &settings.store {
                        StoreSettings::Postgres(p) => p.ca_file.clone(),
                        StoreSettings::Sqlite => None,
                    };
                    let pg = PostgresSettings::new(url.as_str(), 2, ca_file);
                    if let Err(e) = pg.driver_config() {
                        eprintln!("easehook: --to: {e}");
                        return Ok(ExitCode::from(2));
                    }
                    pg
                }
                None => match &settings.store {
                    StoreSettings::Postgres(p) => p.clone(),
                    StoreSettings::Sqlite => {
                        eprintln!(
                            "easehook: store copy needs a target: --to postgres://user:password@host:5432/db"
                        );
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            runtime.block_on(copy(&settings, &target))
        }
    }
}

async fn copy(settings: &config::Settings, target: &PostgresSettings) -> anyhow::Result<ExitCode> {
    // Never the password, whatever the driver says.
    let mask = |s: String| {
        let s = settings.redactor.redact(&s);
        match target.password() {
            Some(pw) if pw.len() >= 4 => s.replace(&pw, "***"),
            _ => s,
        }
    };
    let store = match PgStore::connect_tool(target).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("easehook: {}: {}", target.shown_url, mask(e.to_string()));
            return Ok(ExitCode::from(1));
        }
    };
    match crate::store::copy::copy(&settings.state_dir, &store).await {
        Ok(c) => {
            println!(
                "copied {} event(s), {} dedup key(s), {} delivery(ies) ({} pending, {} sent, {} dead) with {} attempt(s) from {} to {}",
                c.events,
                c.dedup_keys,
                c.pending + c.sent + c.dead,
                c.pending,
                c.sent,
                c.dead,
                c.attempts,
                settings.state_dir.display(),
                target.shown_url
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("easehook: {}: {}", target.shown_url, mask(e.to_string()));
            Ok(ExitCode::from(1))
        }
    }
}
