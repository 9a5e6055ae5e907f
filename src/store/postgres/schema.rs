//! The shared store's schema: versioned migrations, applied once each,
//! in order, under an advisory lock so that replicas may start together.

use super::{OpenError, pg_message, pool};
use crate::config::PostgresSettings;
use crate::store::StoreError;

/// The schema versions, in order: each is applied once, in a transaction.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_aggregates.sql")),
    (3, include_str!("migrations/0003_attempts.sql")),
    (4, include_str!("migrations/0004_users.sql")),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Advisory lock keys (`pg_advisory_lock`): migrating, pruning.
pub(super) const LOCK_MIGRATE: i64 = 0x6561_7365_686f_6f01;

/// Bring the schema up to [`SCHEMA_VERSION`] under an advisory lock, so
/// that replicas starting together migrate once. Returns the versions
/// applied. A schema newer than this build knows is refused.
pub async fn migrate(settings: &PostgresSettings) -> Result<Vec<i32>, OpenError> {
    let pool = pool(settings)?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| OpenError::Connect(StoreError::from(e).0))?;
    migrate_on(&mut client).await
}

pub(super) async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, OpenError> {
    let schema = |e: tokio_postgres::Error| OpenError::Schema(pg_message(&e));
    // A database that is not PostgreSQL (or too old) fails here.
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| OpenError::Connect(pg_message(&e)))?
        .get(0);
    if version < 110_000 {
        return Err(OpenError::Schema(format!(
            "PostgreSQL {version} is too old: easehook needs 11 or later"
        )));
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_MIGRATE])
        .await
        .map_err(schema)?;
    let result = apply_migrations(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_MIGRATE])
        .await;
    let applied = result?;
    unlock.map_err(schema)?;
    Ok(applied)
}

pub(super) async fn apply_migrations(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<i32>, OpenError> {
    let schema = |e: tokio_postgres::Error| OpenError::Schema(pg_message(&e));
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS easehook_schema (
                 version    integer PRIMARY KEY,
                 applied_at bigint NOT NULL
             )",
        )
        .await
        .map_err(schema)?;
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM easehook_schema", &[])
        .await
        .map_err(schema)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(OpenError::Schema(format!(
            "the database's schema is version {current}, newer than this easehook knows ({SCHEMA_VERSION}): upgrade easehook, or point store.url at another database"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = client.transaction().await.map_err(schema)?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| OpenError::Schema(format!("migration {version}: {}", pg_message(&e))))?;
        tx.execute(
            "INSERT INTO easehook_schema(version, applied_at) VALUES ($1, $2)",
            &[version, &(crate::now_ms() as i64)],
        )
        .await
        .map_err(schema)?;
        tx.commit().await.map_err(schema)?;
        applied.push(*version);
    }
    Ok(applied)
}
