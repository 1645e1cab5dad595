//! `AppState`: one cheap-clone `Arc` holding everything shared, created once at start-up.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::provider::Providers;
use crate::shutdown::Shutdown;

/// Shared state of the gateway.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What `AppState` holds.
pub struct Inner {
    /// Model routes and their providers.
    pub providers: Providers,
    /// Shutdown phases.
    pub shutdown: Shutdown,
    /// Every background task; shutdown waits for them.
    pub tasks: TaskTracker,
    /// SSE keep-alive interval.
    pub sse_keepalive: Duration,
    /// Request body limit, for error messages.
    pub max_body_bytes: usize,
}

impl AppState {
    /// Builds the state from a validated config.
    pub fn new(config: &Config, shutdown: Shutdown) -> Result<Self, crate::InitError> {
        let tasks = TaskTracker::new();
        Ok(Self(Arc::new(Inner {
            providers: Providers::from_config(config, &tasks)?,
            shutdown,
            tasks,
            sse_keepalive: config.server.sse_keepalive,
            max_body_bytes: config.server.max_body_bytes,
        })))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
