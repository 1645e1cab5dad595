//! Conversation sessions: server-side history for chats, fitted into the model's context window, stored
//! durably (SQLite) or shared by replicas (Redis).

pub mod config;
#[cfg(test)]
mod conformance;
pub mod model;
pub mod redis;
pub mod service;
pub mod sqlite;
pub mod store;
pub mod window;

/// Opens the session store of the configured backend and starts the expiry loop; `None` when sessions
/// are disabled.
pub async fn build(
    config: &crate::config::Config,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &crate::shutdown::Shutdown,
) -> Result<Option<std::sync::Arc<service::Sessions>>, String> {
    use std::sync::Arc;
    if !config.sessions.enabled {
        return Ok(None);
    }
    let store: Arc<dyn store::SessionStore> = match config.state.backend {
        crate::config::Backend::Memory => {
            let path = config.sessions.path.clone();
            let store =
                tokio::task::spawn_blocking(move || sqlite::SqliteSessionStore::open(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", config.sessions.path.display()))?;
            spawn_checkpoints(store.clone(), tasks, shutdown);
            Arc::new(store)
        }
        crate::config::Backend::Redis => {
            let conn =
                crate::control::redis::connection(&config.state).map_err(|e| e.to_string())?;
            Arc::new(redis::RedisSessionStore::new(
                conn,
                &config.state.redis_prefix,
                config.state.redis_timeout,
            ))
        }
    };
    let context = config
        .models
        .iter()
        .filter_map(|(name, m)| Some((name.clone(), m.context_window?)))
        .collect();
    let sessions = Arc::new(service::Sessions::new(
        store,
        config.sessions.clone(),
        context,
        tasks.clone(),
    ));
    spawn_expiry(&sessions, tasks, shutdown);
    Ok(Some(sessions))
}

/// Deletes expired sessions every minute and refreshes `sluice_sessions_active`.
fn spawn_expiry(
    sessions: &std::sync::Arc<service::Sessions>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &crate::shutdown::Shutdown,
) {
    let sessions = std::sync::Arc::clone(sessions);
    let stop = shutdown.signalled();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_mins(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => sessions.expire().await,
            }
        }
    });
}

/// Checkpoints the SQLite session store's WAL every few seconds, off the request path, and once more
/// at shutdown.
fn spawn_checkpoints(
    store: sqlite::SqliteSessionStore,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &crate::shutdown::Shutdown,
) {
    let stop = shutdown.signalled();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Err(e) = store.checkpoint().await {
                tracing::warn!(error = %e, "session store checkpoint failed");
            }
            if stopping {
                break;
            }
        }
    });
}
