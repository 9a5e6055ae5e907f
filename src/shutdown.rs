//! One shutdown signal that reaches every long-lived task.
//!
//! SIGTERM and SIGINT trigger it in the daemon; tests trigger it directly.
//! Every task `select!`s on [`Shutdown::wait`].

use tokio_util::sync::CancellationToken;

/// A cloneable handle: trigger once, observed by all.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every task to stop.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once shutdown is triggered.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }
}

/// SIGTERM and SIGINT, listened for from the moment [`signals`] returns.
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

/// Start listening for SIGTERM and SIGINT. Called before the daemon starts
/// its tasks, so that a stop asked for while it is starting (or the moment
/// it says it is ready) is kept for [`Signals::recv`]; until then either
/// signal would end the process on the spot, and one that arrived while
/// the listener was being set up could be lost.
pub fn signals() -> Signals {
    use tokio::signal::unix::SignalKind;
    Signals {
        term: listen(SignalKind::terminate(), "SIGTERM"),
        int: listen(SignalKind::interrupt(), "SIGINT"),
    }
}

/// Start listening for the signal `kind` (called `name` in the log), or
/// say why it cannot be listened for.
pub fn listen(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            None
        }
    }
}

impl Signals {
    /// Completes on the first SIGTERM or SIGINT since [`signals`].
    pub async fn recv(mut self) {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.term) => tracing::info!("SIGTERM received, shutting down"),
            () = next(&mut self.int) => tracing::info!("SIGINT received, shutting down"),
        }
    }
}
