//! Shutdown: the signal (SIGINT/SIGTERM), the two-phase token and the bounded drain.
//!
//! Phase 1 (`signalled`): stop accepting connections, `/readyz` turns 503, in-flight requests and
//! streams continue. Phase 2 (`drain_expired`, `grace` later): streams still open are ended with an SSE
//! error event so their connections can close. `app::serve` gives up entirely a few seconds after that.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Shared shutdown state; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    signalled: CancellationToken,
    drain_expired: CancellationToken,
    grace: Duration,
}

impl Shutdown {
    /// A shutdown handle with this drain grace period.
    pub fn new(grace: Duration) -> Self {
        Self {
            signalled: CancellationToken::new(),
            drain_expired: CancellationToken::new(),
            grace,
        }
    }

    /// Starts the shutdown (what a signal does).
    pub fn trigger(&self) {
        self.signalled.cancel();
    }

    /// True once shutdown started.
    pub fn is_draining(&self) -> bool {
        self.signalled.is_cancelled()
    }

    /// Completes when shutdown starts.
    pub fn signalled(&self) -> CancellationToken {
        self.signalled.clone()
    }

    /// Completes when the grace period after the signal is over; open streams end then.
    pub fn drain_expired(&self) -> CancellationToken {
        self.drain_expired.clone()
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Waits for the signal, then for the grace period, then marks the drain expired.
    pub async fn run_grace_timer(&self) {
        self.signalled.cancelled().await;
        tokio::time::sleep(self.grace).await;
        self.drain_expired.cancel();
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, draining"),
        () = term => tracing::info!("SIGTERM received, draining"),
    }
}
