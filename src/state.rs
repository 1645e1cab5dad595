//! `AppState`: one cheap-clone `Arc` holding everything shared, created once at start-up.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::Control;
use crate::provider::Providers;
use crate::shutdown::Shutdown;
use crate::telemetry::Observability;

/// Shared state of the gateway.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What `AppState` holds.
pub struct Inner {
    /// Model routes and their providers.
    pub providers: Providers,
    /// Metrics and the request log.
    pub obs: Observability,
    /// Shutdown phases.
    pub shutdown: Shutdown,
    /// Every background task; shutdown waits for them.
    pub tasks: TaskTracker,
    /// SSE keep-alive interval.
    pub sse_keepalive: Duration,
    /// Request body limit, for error messages.
    pub max_body_bytes: usize,
    /// SHA-256 of the admin key; `None` denies the admin API.
    pub admin_key_hash: Option<[u8; 32]>,
    /// Serve `/metrics` on the main listener.
    pub metrics_on_main_listener: bool,
    /// Virtual keys, limits and budgets.
    pub control: Arc<Control>,
    /// Conversation sessions, when enabled.
    pub sessions: Option<Arc<crate::sessions::service::Sessions>>,
    /// The response cache, when enabled.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// RAG evaluation: the evaluator, the online sampler and its metrics.
    pub rag: crate::eval::online::Rag,
}

impl AppState {
    /// Builds the state from a validated config, with the request log (if any) already opened: opens
    /// the state backend (keys, limits, spend) and starts its background loops.
    pub async fn build(
        config: &Config,
        shutdown: Shutdown,
        request_log: Option<crate::request_log::RequestLog>,
    ) -> Result<Self, crate::InitError> {
        let tasks = TaskTracker::new();
        let metrics = &config.telemetry.metrics;
        let control = crate::control::build(config, &tasks, &shutdown)
            .await
            .map_err(crate::InitError::State)?;
        let mut obs = Observability::new(
            request_log,
            config.request_log.capture_bodies,
            config.telemetry.otel.clone(),
        );
        control.metrics.register(obs.metrics.registry_mut());
        let sessions = crate::sessions::build(config, &tasks, &shutdown)
            .await
            .map_err(crate::InitError::State)?;
        if let Some(sessions) = &sessions {
            sessions.metrics.register(obs.metrics.registry_mut());
        }
        let cache = crate::cache::Cache::build(config, &tasks, &shutdown)
            .map_err(crate::InitError::State)?;
        if let Some(cache) = &cache {
            cache.metrics.register(obs.metrics.registry_mut());
        }
        let rag = crate::eval::online::Rag::new(
            &config.evaluation,
            config
                .request_log
                .enabled
                .then_some(config.request_log.path.as_path()),
            obs.metrics.registry_mut(),
        )
        .map_err(crate::InitError::State)?;
        let state = Self(Arc::new(Inner {
            providers: Providers::from_config(config, &tasks)?,
            obs,
            shutdown,
            tasks,
            sse_keepalive: config.server.sse_keepalive,
            max_body_bytes: config.server.max_body_bytes,
            admin_key_hash: config
                .admin_key
                .as_ref()
                .map(|k| crate::middleware::admin::hash(k.expose_secret())),
            metrics_on_main_listener: metrics.enabled && metrics.listen.is_none(),
            control,
            sessions,
            cache,
            rag,
        }));
        if let Some(cache) = &state.cache {
            cache.bind(&state);
        }
        state.rag.start(&state);
        Ok(state)
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// A handle that does not keep the state alive (for parts of the state that call back into it,
    /// such as the embedder of the semantic cache).
    pub fn downgrade(&self) -> WeakState {
        WeakState(Arc::downgrade(&self.0))
    }
}

/// A [`AppState`] that may be gone (after shutdown).
#[derive(Clone, Default)]
pub struct WeakState(std::sync::Weak<Inner>);

impl WeakState {
    /// The state, while the gateway runs.
    pub fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(AppState)
    }
}
