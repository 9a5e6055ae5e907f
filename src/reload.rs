//! Reload: SIGHUP, a change under `rules_dir` / `templates_dir` / the config
//! file, or `POST /-/reload` → load and compile everything → swap the
//! snapshot whole.
//!
//! Reloads run one at a time in one task. An invalid new set is rejected as a
//! whole: the old one keeps serving and every problem is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use tokio::sync::mpsc;

use crate::diag::Diagnostics;
use crate::shutdown::Shutdown;
use crate::state::{AppState, ReloadRequest, ReloadStatus};

/// How long file changes settle before a reload: editors and `git checkout`
/// write several files in a burst.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Reload now; the snapshot is swapped only when the new one is valid.
pub fn reload_now(state: &AppState) -> Result<(), Diagnostics> {
    let old = state.snapshot.load_full();
    let path = old.settings.path.clone();
    let result = crate::snapshot::load_after(&path, state.env.as_ref(), Some(&old));
    let at = crate::now_ms() / 1000;
    match result {
        Ok(new) => {
            for (what, old_v, new_v) in [
                (
                    "listen",
                    old.settings.listen.to_string(),
                    new.settings.listen.to_string(),
                ),
                (
                    "admin_listen",
                    old.settings.admin_listen.to_string(),
                    new.settings.admin_listen.to_string(),
                ),
                (
                    "state_dir",
                    old.settings.state_dir.display().to_string(),
                    new.settings.state_dir.display().to_string(),
                ),
                // Channels sized at start: what runs is their capacity.
                (
                    "delivery.concurrency",
                    state.handoff.max_capacity().to_string(),
                    new.settings.delivery.concurrency.to_string(),
                ),
                (
                    "presend.queue",
                    state.presend_records.max_capacity().to_string(),
                    new.settings.presend_queue().to_string(),
                ),
            ] {
                if old_v != new_v {
                    tracing::warn!(setting = what, running = %old_v, configured = %new_v, "changed in the config file; takes effect on restart");
                }
            }
            tracing::info!(
                rules = new.rules.rules.len(),
                actions = new.rules.actions.len(),
                "configuration reloaded"
            );
            state
                .metrics
                .presend
                .set_words(new.moderation.lists.counts());
            state.snapshot.store(new);
            state.metrics.reloaded(true);
            if let Ok(mut s) = state.reload_status.lock() {
                *s = ReloadStatus {
                    ok: true,
                    at,
                    errors: Vec::new(),
                };
            }
            Ok(())
        }
        Err(diags) => {
            for d in diags.iter() {
                tracing::error!(problem = %d, "reload rejected");
            }
            tracing::error!(
                problems = diags.len(),
                "reload rejected; the previous configuration stays in force"
            );
            state.metrics.reloaded(false);
            if let Ok(mut s) = state.reload_status.lock() {
                *s = ReloadStatus {
                    ok: false,
                    at,
                    errors: diags.iter().map(|d| d.to_string()).collect(),
                };
            }
            Err(diags)
        }
    }
}

/// Start listening for SIGHUP, for [`run`]. Called before the daemon
/// serves anything: until then a SIGHUP would end the process (its
/// default action), and `systemctl reload` may come the moment the daemon
/// says it is ready.
pub fn listen_hup() -> Option<tokio::signal::unix::Signal> {
    crate::shutdown::listen(tokio::signal::unix::SignalKind::hangup(), "SIGHUP")
}

/// The reload task: serves requests from the admin endpoint, SIGHUP (from
/// `hup`, see [`listen_hup`]) and the file watcher until shutdown.
pub async fn run(
    state: Arc<AppState>,
    mut requests: mpsc::Receiver<ReloadRequest>,
    mut hup: Option<tokio::signal::unix::Signal>,
    shutdown: Shutdown,
) {
    let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
    let _watcher = watch(&state, changed_tx);
    loop {
        let reply = tokio::select! {
            _ = shutdown.wait() => return,
            Some(reply) = requests.recv() => Some(reply),
            Some(()) = changed_rx.recv() => {
                tracing::info!("configuration files changed; reloading");
                None
            }
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP received; reloading");
                None
            }
        };
        crate::sockets::notify_systemd(&[sd_notify::NotifyState::Reloading]);
        let state2 = state.clone();
        let result = tokio::task::spawn_blocking(move || reload_now(&state2))
            .await
            .unwrap_or_else(|e| {
                let mut d = Diagnostics::new();
                d.push("reload", "", format!("reload task failed: {e}"));
                Err(d)
            });
        crate::sockets::notify_systemd(&[sd_notify::NotifyState::Ready]);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// Watch the rules and templates directories, the config file and the
/// word lists' files. Returns the watcher, which must be kept alive.
fn watch(state: &AppState, changed: mpsc::Sender<()>) -> Option<Box<dyn std::any::Any + Send>> {
    let snapshot = state.snapshot.load();
    let settings = &snapshot.settings;
    // Events carry absolute paths; compare like with like.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let config = abs(&settings.path);
    let dirs: Vec<PathBuf> = [abs(&settings.rules_dir), abs(&settings.templates_dir)]
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    let watched_dirs = dirs.clone();
    // The config file and the word lists' files (as configured at start).
    let files: Vec<PathBuf> = std::iter::once(config.clone())
        .chain(
            settings
                .presend
                .iter()
                .flat_map(|p| &p.word_lists)
                .filter_map(|l| l.file.as_deref())
                .map(abs),
        )
        .collect();
    let watched_files = files.clone();
    let handler = move |result: notify_debouncer_full::DebounceEventResult| {
        let Ok(events) = result else { return };
        // Reading the files (our own reload does) is not a change.
        let relevant = events
            .iter()
            .filter(|e| !e.kind.is_access() && !e.kind.is_other())
            .flat_map(|e| e.paths.iter())
            .any(|p| {
                let in_dirs = watched_dirs.iter().any(|d| p.starts_with(d));
                (in_dirs || watched_files.contains(p)) && !is_editor_noise(p)
            });
        if relevant {
            // A full channel means a reload is already queued.
            let _ = changed.try_send(());
        }
    };
    let mut debouncer = match notify_debouncer_full::new_debouncer(DEBOUNCE, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch configuration files; reload with SIGHUP or POST /-/reload");
            return None;
        }
    };
    // Files are watched through their directories, so that editors and
    // tools that replace a file (rename over it) are still seen.
    let mut file_dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        })
        .filter(|d| !dirs.contains(d))
        .collect();
    file_dirs.sort();
    file_dirs.dedup();
    for dir in dirs.iter().chain(&file_dirs) {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    Some(Box::new(debouncer))
}

/// Swap files, backups and hidden files that editors write next to the real ones.
fn is_editor_noise(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.starts_with('#')
}
