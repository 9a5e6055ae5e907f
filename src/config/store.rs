//! `store:` — which backend keeps the events, and the PostgreSQL
//! settings checked here, at load, so that a bad URL is a config error
//! with its location rather than a failure at connect.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::units::{self, Num};
use super::{Secret, Settings, resolve};
use crate::diag::Diagnostics;

/// `store:` as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    /// `sqlite` (default) or `postgres`.
    #[serde(rename = "type")]
    #[schemars(with = "Option<units::Expandable<StoreKind>>")]
    pub(super) kind: Option<StoreKind>,
    /// postgres: `postgres://user:password@host:5432/db?sslmode=…`.
    pub(super) url: Option<String>,
    /// postgres: connections per daemon. Default 16.
    pub(super) pool: Option<Num<usize>>,
    /// postgres: an extra trusted root certificate (PEM) for TLS to the database.
    pub(super) ca_file: Option<String>,
}

/// Which store backend keeps the events (`store.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded SQLite in `state_dir/easehook.db`: no server, one daemon.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by any number of daemons (replicas).
    Postgres,
}

/// Where accepted events and their deliveries are kept (`store:`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSettings {
    /// The embedded store in `state_dir`.
    Sqlite,
    /// A shared PostgreSQL database.
    Postgres(PostgresSettings),
}

/// `store:` with `type: postgres`.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSettings {
    /// The connection URL, password included: never shown.
    pub url: Secret,
    /// The URL with its password masked, for messages and status.
    pub shown_url: String,
    /// Connections per daemon. Default 16.
    pub pool: usize,
    /// An extra trusted root certificate (PEM) for TLS to the database.
    pub ca_file: Option<PathBuf>,
}

/// The default `store.pool`.
pub(super) const DEFAULT_POOL: usize = 16;

impl PostgresSettings {
    /// The settings of a database at `url`, with its masked form for
    /// messages. The URL's form is checked by [`Self::driver_config`].
    pub fn new(url: impl Into<String>, pool: usize, ca_file: Option<PathBuf>) -> Self {
        let url = url.into();
        Self {
            shown_url: mask_postgres_url(&url),
            url: Secret::new(url),
            pool,
            ca_file,
        }
    }

    /// The URL's password, when it names one: a secret to mask anywhere.
    pub fn password(&self) -> Option<String> {
        let config = self.driver_config().ok()?;
        config
            .get_password()
            .map(|pw| String::from_utf8_lossy(pw).into_owned())
    }

    /// A problem with this database as `check` and start-up report it:
    /// `FILE: store.url: message (URL)`, every secret of `settings` masked.
    pub fn problem(&self, settings: &Settings, message: &str) -> String {
        format!(
            "{}: store.url: {} ({})",
            settings.path.display(),
            settings.redactor.redact(message),
            self.shown_url
        )
    }

    /// The URL parsed for the driver. `sslmode=verify-ca` and `verify-full`
    /// are read as `require`: with TLS, easehook always verifies the
    /// server's certificate and name (against the system's roots and
    /// `ca_file`), which is what those modes ask of libpq.
    pub fn driver_config(&self) -> Result<tokio_postgres::Config, String> {
        parse_postgres_url(self.url.expose())
    }
}

/// Parse a PostgreSQL connection string (URL or `key=value` form); the
/// error never contains the string itself.
pub(super) fn parse_postgres_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let url = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        let e = e.to_string();
        format!("not a PostgreSQL URL (postgres://user:password@host:5432/db): {e}")
    })?;
    if config.get_hosts().is_empty() {
        return Err("names no host (postgres://user:password@host:5432/db)".into());
    }
    if config.get_user().is_none() {
        return Err("names no user (postgres://user:password@host:5432/db)".into());
    }
    Ok(config)
}

/// A connection string with its password replaced by `***`.
pub fn mask_postgres_url(url: &str) -> String {
    if let Ok(mut u) = reqwest::Url::parse(url)
        && u.password().is_some()
    {
        let _ = u.set_password(Some("***"));
        return u.to_string();
    }
    // The key=value form, or a URL the parser does not take: mask any
    // `password=…` and anything between `:` and `@` after the scheme.
    let re = regex::Regex::new(r"(password\s*=\s*)('[^']*'|\S+)|(://[^:/@]*:)[^@]*@")
        .expect("a valid pattern");
    re.replace_all(url, |c: &regex::Captures| match (c.get(1), c.get(3)) {
        (Some(k), _) => format!("{}***", k.as_str()),
        (_, Some(u)) => format!("{}***@", u.as_str()),
        _ => String::new(),
    })
    .into_owned()
}

/// Validate `store:` without touching the network: the URL's form and
/// the pool size. The URL's password (and the URL itself) become secrets.
pub(super) fn compile_store(
    s: RawStore,
    base: &Path,
    file: &str,
    secret_values: &mut Vec<String>,
    warnings: &mut Vec<String>,
    diags: &mut Diagnostics,
) -> StoreSettings {
    let url = s.url.filter(|u| !u.is_empty());
    let ca_file = s
        .ca_file
        .filter(|c| !c.is_empty())
        .map(|c| resolve(base, Some(c.into()), ""));
    if s.kind.unwrap_or_default() == StoreKind::Sqlite {
        for (key, set) in [
            ("url", url.is_some()),
            ("pool", s.pool.is_some()),
            ("ca_file", ca_file.is_some()),
        ] {
            if set {
                warnings.push(format!(
                    "{file}: store.{key}: is used only with `type: postgres`; the embedded SQLite store is in force"
                ));
            }
        }
        return StoreSettings::Sqlite;
    }
    let pool = s.pool.map_or(DEFAULT_POOL, |n| n.0);
    if pool < 2 {
        // One connection for group commits, at least one for the rest.
        diags.push(file, "store.pool", "must be at least 2");
    }
    if let Some(ca) = &ca_file
        && !ca.is_file()
    {
        diags.push(
            file,
            "store.ca_file",
            format!("{} is not a readable file", ca.display()),
        );
    }
    let Some(url) = url else {
        diags.push(
            file,
            "store.url",
            "required with `type: postgres` (postgres://user:password@host:5432/db)",
        );
        return StoreSettings::Sqlite;
    };
    let pg = PostgresSettings::new(url, pool, ca_file);
    if let Err(e) = pg.driver_config() {
        diags.push(file, "store.url", e);
    }
    secret_values.extend(pg.password());
    if pg.shown_url != pg.url.expose() {
        secret_values.push(pg.url.expose().to_string());
    }
    StoreSettings::Postgres(pg)
}
