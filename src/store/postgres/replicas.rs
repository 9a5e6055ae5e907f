//! The replicas: this daemon's id (kept in `state_dir`), its heartbeat
//! row, and the list of those seen lately.

use super::Inner;
use crate::store::{Replica, StoreError};
use deadpool_postgres::Client;
use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

/// How often a daemon writes its heartbeat row.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A daemon counts as a replica this long after its last heartbeat.
pub(super) const REPLICA_SEEN: u64 = 60_000;

/// This daemon's replica id, kept in `state_dir/replica-id` so that it
/// outlives a restart. The file also names the host: a `state_dir` copied
/// to another host (a cloned image) gets a new id there, so two live
/// replicas never share one.
pub(super) fn replica_id(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join("replica-id");
    let host = hostname();
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some((id, on)) = text.trim().split_once(' ')
        && on == host
        && !id.is_empty()
    {
        return Ok(id.to_string());
    }
    let id = uuid::Uuid::now_v7().simple().to_string()[16..].to_string();
    std::fs::write(&path, format!("{id} {host}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// This host's name, for the replicas list.
pub(super) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Inner {
    pub(super) async fn heartbeat(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let r = &self.replica;
        let now = crate::now_ms() as i64;
        client
            .execute(
                "INSERT INTO replicas(id, host, version, started_at, last_seen) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET host = excluded.host, version = excluded.version,
                     started_at = excluded.started_at, last_seen = excluded.last_seen",
                &[&r.id, &r.host, &r.version, &(r.started_at as i64), &now],
            )
            .await?;
        // Rows of daemons long gone.
        client
            .execute(
                "DELETE FROM replicas WHERE last_seen < $1",
                &[&(now - 86_400_000)],
            )
            .await?;
        Ok(())
    }
}

/// Write this daemon's heartbeat every [`HEARTBEAT`] for as long as the
/// store is open.
pub(super) async fn heartbeats(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.heartbeat().await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }
}

/// The replicas seen in the last [`REPLICA_SEEN`] milliseconds.
pub(super) async fn replicas(c: &Client) -> Result<Option<Vec<Replica>>, StoreError> {
    let since = crate::now_ms().saturating_sub(REPLICA_SEEN) as i64;
    let rows = c
        .query(
            "SELECT id, host, version, started_at, last_seen FROM replicas
             WHERE last_seen >= $1 ORDER BY started_at, id",
            &[&since],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| Replica {
                id: r.get(0),
                host: r.get(1),
                version: r.get(2),
                started_at: r.get::<_, i64>(3) as u64,
                last_seen: r.get::<_, i64>(4) as u64,
            })
            .collect(),
    ))
}
