//! [`Sessions`]: the session API's operations and the turn protocol of a chat call that joins a
//! session: [`Sessions::begin`] loads the history, takes the session's turn lock (a second concurrent
//! turn gets 409 `session_busy`), fits history + new messages into the context window and rewrites the
//! request; the returned [`TurnGuard`] stores the turn when the reply is complete (before the response
//! or the stream's end reaches the client, so the next turn always sees it) and releases the lock.
//! A call that fails stores nothing (the caller retries with the same message); a stream the client
//! cut is stored marked `cut` (or dropped, `sessions.keep_cut_turns = false`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::config::SessionsConfig;
use super::model::{SentWindow, Session, Totals, Turn, new_id};
use super::store::{Page, SessionStore, StoreError};
use super::window::{self, WindowLimit};
use crate::control::unix_ms;
use crate::error::GatewayError;
use crate::protocol::openai::{ChatMessage, ChatRequest, Usage};

/// Owner of sessions created without a key (auth off).
pub const ANONYMOUS: &str = "anonymous";

/// Metric families of sessions.
#[derive(Clone, Default)]
pub struct SessionMetrics {
    /// `sluice_sessions_active`.
    pub active: prometheus_client::metrics::gauge::Gauge,
    /// `sluice_session_turns_total`.
    pub turns: prometheus_client::metrics::counter::Counter,
    /// `sluice_session_truncated_turns_total`: stored turns left out of calls to fit the window.
    pub truncated_turns: prometheus_client::metrics::counter::Counter,
    /// `sluice_session_busy_total`: turns refused because another turn held the session.
    pub busy: prometheus_client::metrics::counter::Counter,
}

impl SessionMetrics {
    /// Registers the families.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "sessions_active",
            "Live sessions in the store",
            self.active.clone(),
        );
        registry.register(
            "session_turns",
            "Turns stored in sessions",
            self.turns.clone(),
        );
        registry.register(
            "session_truncated_turns",
            "Stored turns left out of a call to fit the model's context window",
            self.truncated_turns.clone(),
        );
        registry.register(
            "session_busy",
            "Turns refused with 409 because another turn of the session was in progress",
            self.busy.clone(),
        );
    }
}

/// Body of `POST /v1/sessions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Default model of the session's turns.
    pub model: Option<String>,
    /// System prompt, sent first on every turn.
    pub system: Option<String>,
    /// Free-form data.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Idle lifetime in seconds (default `sessions.default_ttl`, at most `sessions.max_ttl`).
    pub ttl_seconds: Option<u64>,
}

/// Body of `PATCH /v1/sessions/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSession {
    /// New metadata (the whole map).
    pub metadata: Option<BTreeMap<String, serde_json::Value>>,
    /// New idle lifetime in seconds, counted from now.
    pub ttl_seconds: Option<u64>,
}

/// Largest metadata of a session, as JSON.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest system prompt.
const MAX_SYSTEM_BYTES: usize = 256 * 1024;

/// Sessions: the store, the limits, the metrics.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    config: SessionsConfig,
    /// Context windows configured per public model.
    context: HashMap<String, u64>,
    /// Metric families.
    pub metrics: SessionMetrics,
    tasks: tokio_util::task::TaskTracker,
}

fn store_error(e: &StoreError) -> GatewayError {
    tracing::warn!(error = %e, "session store unavailable");
    GatewayError::StateUnavailable("the session store is unavailable; retry shortly".to_owned())
}

fn not_found(id: &str) -> GatewayError {
    GatewayError::NotFound(format!("no session with id `{id}`"))
}

fn json_bytes<T: serde::Serialize>(value: &T) -> u64 {
    serde_json::to_vec(value).map_or(0, |v| v.len() as u64)
}

impl Sessions {
    /// Sessions on `store`; `context` holds the per-model context windows from the config.
    pub fn new(
        store: Arc<dyn SessionStore>,
        config: SessionsConfig,
        context: HashMap<String, u64>,
        tasks: tokio_util::task::TaskTracker,
    ) -> Self {
        Self {
            store,
            config,
            context,
            metrics: SessionMetrics::default(),
            tasks,
        }
    }

    /// Deletes expired sessions and refreshes the active-sessions gauge.
    pub async fn expire(&self) {
        let now = unix_ms();
        if let Err(e) = self.store.purge_expired(now).await {
            tracing::warn!(error = %e, "could not purge expired sessions");
        }
        match self.store.active(now).await {
            Ok(n) => {
                self.metrics
                    .active
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "could not count sessions"),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionsConfig {
        &self.config
    }

    fn ttl(&self, seconds: Option<u64>) -> Result<Duration, GatewayError> {
        let ttl = seconds.map_or(self.config.default_ttl, Duration::from_secs);
        if ttl.is_zero() || ttl > self.config.max_ttl {
            return Err(GatewayError::invalid(
                format!(
                    "`ttl_seconds` must be between 1 and {}",
                    self.config.max_ttl.as_secs()
                ),
                Some("ttl_seconds"),
            ));
        }
        Ok(ttl)
    }

    fn check_metadata(metadata: &BTreeMap<String, serde_json::Value>) -> Result<(), GatewayError> {
        if json_bytes(metadata) > MAX_METADATA_BYTES as u64 {
            return Err(GatewayError::invalid(
                format!("`metadata` must be at most {MAX_METADATA_BYTES} bytes of JSON"),
                Some("metadata"),
            ));
        }
        Ok(())
    }

    /// Creates a session owned by `owner`; `known_model` says whether a model name is configured.
    pub async fn create(
        &self,
        owner: &str,
        body: CreateSession,
        known_model: impl Fn(&str) -> bool,
    ) -> Result<Session, GatewayError> {
        let ttl = self.ttl(body.ttl_seconds)?;
        Self::check_metadata(&body.metadata)?;
        if let Some(model) = body.model.as_deref().filter(|m| !known_model(m)) {
            return Err(GatewayError::ModelNotFound(model.to_owned()));
        }
        if body
            .system
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SYSTEM_BYTES)
        {
            return Err(GatewayError::invalid(
                format!("`system` must be at most {MAX_SYSTEM_BYTES} bytes"),
                Some("system"),
            ));
        }
        let now = unix_ms();
        let count = self
            .store
            .count(owner, now)
            .await
            .map_err(|e| store_error(&e))?;
        if count >= self.config.max_sessions_per_key {
            return Err(GatewayError::RateLimited {
                message: format!(
                    "this key already has {count} live sessions, the most allowed \
                     (sessions.max_sessions_per_key); delete some or let them expire"
                ),
                retry_after: None,
            });
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let session = Session {
            id: new_id(),
            object: "session".to_owned(),
            owner: owner.to_owned(),
            model: body.model,
            system: body.system,
            metadata: body.metadata,
            created_at: now,
            updated_at: now,
            expires_at: Some(now.saturating_add(ttl_ms)),
            ttl_ms: Some(ttl_ms),
            turns: Vec::new(),
            totals: Totals {
                cost_usd: "0".to_owned(),
                ..Totals::default()
            },
        };
        self.store
            .create(&session)
            .await
            .map_err(|e| store_error(&e))?;
        Ok(session)
    }

    /// The session, if `owner` owns it (another owner's session is 404, as if absent).
    pub async fn get(&self, owner: &str, id: &str) -> Result<Session, GatewayError> {
        let session = self
            .store
            .get(id, unix_ms())
            .await
            .map_err(|e| store_error(&e))?
            .filter(|s| s.owner == owner)
            .ok_or_else(|| not_found(id))?;
        Ok(session)
    }

    /// `owner`'s sessions, newest first.
    pub async fn list(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, GatewayError> {
        self.store
            .list(owner, after, limit.clamp(1, 100), unix_ms())
            .await
            .map_err(|e| store_error(&e))
    }

    /// Changes metadata and/or the lifetime.
    pub async fn update(
        &self,
        owner: &str,
        id: &str,
        patch: UpdateSession,
    ) -> Result<Session, GatewayError> {
        let mut session = self.get(owner, id).await?;
        let now = unix_ms();
        if let Some(metadata) = patch.metadata {
            Self::check_metadata(&metadata)?;
            session.metadata = metadata;
        }
        if patch.ttl_seconds.is_some() {
            let ttl_ms =
                i64::try_from(self.ttl(patch.ttl_seconds)?.as_millis()).unwrap_or(i64::MAX);
            session.ttl_ms = Some(ttl_ms);
            session.expires_at = Some(now.saturating_add(ttl_ms));
        }
        session.updated_at = now;
        let found = self
            .store
            .update(&session)
            .await
            .map_err(|e| store_error(&e))?;
        if !found {
            return Err(not_found(id));
        }
        Ok(session)
    }

    /// Deletes a session.
    pub async fn delete(&self, owner: &str, id: &str) -> Result<(), GatewayError> {
        self.get(owner, id).await?;
        self.store.delete(id).await.map_err(|e| store_error(&e))?;
        Ok(())
    }

    /// The context window of `model`: configured, else the built-in table, else the default.
    fn context_tokens(&self, model: &str, upstream_model: &str) -> u64 {
        window::context_window(upstream_model, self.context.get(model).copied())
            .unwrap_or(self.config.default_context_tokens)
    }

    /// Replaces the turns `fitted` left out by a summary from `route`'s model; on failure the turn goes
    /// on without it rather than failing.
    async fn with_summary_of_dropped(
        &self,
        id: &str,
        route: &crate::provider::Route,
        session: &Session,
        fitted: window::Fitted,
    ) -> window::Fitted {
        let from = usize::try_from(fitted.dropped.start).unwrap_or(usize::MAX);
        let to = usize::try_from(fitted.dropped.end).unwrap_or(usize::MAX);
        let dropped = session.turns.get(from..to).unwrap_or_default();
        match self.summarize(route, dropped).await {
            Ok(text) => {
                let note = format!("Summary of the earlier conversation: {text}");
                window::with_summary(fitted, ChatMessage::text("system", note))
            }
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "could not summarise old turns");
                fitted
            }
        }
    }

    /// Asks `route`'s model for a short summary of `dropped` turns (temperature 0).
    async fn summarize(
        &self,
        route: &crate::provider::Route,
        dropped: &[Turn],
    ) -> Result<String, GatewayError> {
        let request = ChatRequest {
            model: route.model.to_string(),
            messages: window::summary_prompt(dropped),
            max_tokens: Some(u32::try_from(self.config.summary_max_tokens).unwrap_or(u32::MAX)),
            temperature: Some(0.0),
            ..ChatRequest::default()
        };
        let reply = route
            .chat(request, crate::provider::CallContext::default())
            .await?;
        let text = reply
            .choices
            .first()
            .map(|c| c.message.text_content())
            .unwrap_or_default();
        if text.trim().is_empty() {
            return Err(GatewayError::Internal(
                "the summary came back empty".to_owned(),
            ));
        }
        Ok(text)
    }

    /// Joins the call `req` to session `id`: prepends the fitted history, takes the turn lock.
    pub async fn begin(
        self: &Arc<Self>,
        owner: &str,
        id: &str,
        req: &mut ChatRequest,
        request_id: &str,
        upstream_model: impl Fn(&str) -> Option<String>,
        summarizer: Option<&crate::provider::Route>,
    ) -> Result<TurnGuard, GatewayError> {
        // Lock first, then read: a turn that ended between a read and the lock would otherwise be
        // missing from this turn's history, and its index would collide. On any error below, the guard
        // is dropped and releases the lock. (A non-owner may see 409 instead of 404 while the session is
        // busy; it learns nothing it could use without the owner's key.)
        let lease = u64::try_from(self.config.turn_lease.as_millis()).unwrap_or(u64::MAX);
        let token = self
            .store
            .lock(id, lease)
            .await
            .map_err(|e| store_error(&e))?
            .ok_or_else(|| {
                self.metrics.busy.inc();
                GatewayError::SessionBusy(format!(
                    "another turn of session `{id}` is in progress; retry when it has finished"
                ))
            })?;
        let mut guard = TurnGuard {
            sessions: Arc::clone(self),
            session_id: id.to_owned(),
            token: Some(token),
            index: 0,
            input: Vec::new(),
            model: String::new(),
            request_id: request_id.to_owned(),
            sent: SentWindow::default(),
            count_model: String::new(),
        };
        let session = self.get(owner, id).await?;
        if req.model.is_empty() {
            req.model = session.model.clone().ok_or_else(|| {
                GatewayError::invalid(
                    "`model` is required: this session has no default model",
                    Some("model"),
                )
            })?;
        }
        let input = std::mem::take(&mut req.messages);
        let input_bytes = json_bytes(&input);
        if input_bytes > self.config.max_turn_bytes {
            return Err(GatewayError::invalid(
                format!(
                    "the messages of one session turn may be at most {} bytes",
                    self.config.max_turn_bytes
                ),
                Some("messages"),
            ));
        }
        if session.turns.len() as u64 >= self.config.max_turns
            || session.totals.bytes + input_bytes > self.config.max_session_bytes
        {
            return Err(GatewayError::invalid(
                format!(
                    "session `{id}` is full ({} turns, {} bytes; limits sessions.max_turns = {}, \
                     max_session_bytes = {}): start a new session",
                    session.turns.len(),
                    session.totals.bytes,
                    self.config.max_turns,
                    self.config.max_session_bytes
                ),
                None,
            ));
        }
        guard.index = session.turns.len() as u64;
        guard.model.clone_from(&req.model);
        let system = session
            .system
            .as_deref()
            .map(|s| ChatMessage::text("system", s));
        let upstream = upstream_model(&req.model).unwrap_or_else(|| req.model.clone());
        guard.count_model.clone_from(&upstream);
        // With summaries on, room for one stays free (the summary is written after fitting).
        let summary_room = summarizer.map_or(0, |_| self.config.summary_max_tokens + 16);
        let limit = WindowLimit {
            context_tokens: self
                .context_tokens(&req.model, &upstream)
                .saturating_sub(summary_room),
            reserve_output: req
                .output_limit()
                .map_or(self.config.reserve_output_tokens, u64::from),
        };
        let count =
            |messages: &[ChatMessage]| crate::usage::tokens::count_messages(&upstream, messages);
        let mut fitted = window::fit(system.as_ref(), &session.turns, &input, limit, &count)
            .map_err(|e| {
                GatewayError::ContextTooLong(format!(
                    "{e}: shorten the message or start a new session"
                ))
            })?;
        self.metrics
            .truncated_turns
            .inc_by(fitted.sent.dropped_turns);
        if let Some(route) = summarizer
            && !fitted.dropped.is_empty()
        {
            fitted = self
                .with_summary_of_dropped(id, route, &session, fitted)
                .await;
        }
        req.messages = fitted.messages;
        guard.sent = fitted.sent;
        guard.input = input;
        Ok(guard)
    }
}

/// A turn in progress: holds the session's lock; stores the turn on [`TurnGuard::complete`].
pub struct TurnGuard {
    sessions: Arc<Sessions>,
    session_id: String,
    token: Option<String>,
    index: u64,
    input: Vec<ChatMessage>,
    model: String,
    request_id: String,
    sent: SentWindow,
    /// Upstream model name, whose tokenizer counts the turn's tokens.
    count_model: String,
}

impl TurnGuard {
    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Stores the turn (reply, usage, cost; `cut` when the client left mid-stream) and releases the
    /// lock. A cut turn is dropped instead when `sessions.keep_cut_turns` is off.
    pub async fn complete(
        mut self,
        output: Option<ChatMessage>,
        usage: Option<Usage>,
        cost: Option<rust_decimal::Decimal>,
        cut: bool,
    ) {
        let Some(token) = self.token.take() else {
            return;
        };
        let sessions = Arc::clone(&self.sessions);
        if !cut || sessions.config.keep_cut_turns {
            let turn = Turn {
                index: self.index,
                request_id: std::mem::take(&mut self.request_id),
                model: std::mem::take(&mut self.model),
                created_at: unix_ms(),
                input: std::mem::take(&mut self.input),
                output,
                usage,
                cost_usd: cost.map(|c| c.normalize().to_string()),
                cut,
                sent: std::mem::take(&mut self.sent),
                tokens: None,
            };
            let model = std::mem::take(&mut self.count_model);
            let count =
                |messages: &[ChatMessage]| crate::usage::tokens::count_messages(&model, messages);
            let turn = Turn {
                tokens: Some(window::turn_tokens(&turn, &count)),
                ..turn
            };
            match sessions
                .store
                .append(&self.session_id, &turn, unix_ms())
                .await
            {
                Ok(()) => {
                    sessions.metrics.turns.inc();
                }
                Err(e) => tracing::warn!(
                    session_id = %self.session_id,
                    error = %e,
                    "could not store a session turn"
                ),
            }
        }
        if let Err(e) = sessions.store.unlock(&self.session_id, &token).await {
            tracing::warn!(session_id = %self.session_id, error = %e, "could not release a session");
        }
    }
}

impl Drop for TurnGuard {
    /// The call failed (or was abandoned) before completing: nothing is stored, the lock is released.
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let store = Arc::clone(&self.sessions.store);
            let id = std::mem::take(&mut self.session_id);
            self.sessions.tasks.spawn(async move {
                if let Err(e) = store.unlock(&id, &token).await {
                    tracing::warn!(session_id = %id, error = %e, "could not release a session");
                }
            });
        }
    }
}

/// A label-free helper for handlers: the owner of a caller's sessions.
pub fn owner_of(caller: &crate::control::Caller) -> String {
    caller.key_id().unwrap_or(ANONYMOUS).to_owned()
}

/// Wraps a chat stream of a session turn: the reply is assembled as the chunks pass (no added
/// latency), and stored when the upstream ends, before the stream's end reaches the client. A stream
/// the client drops is stored as `cut` from a task.
pub fn record_stream(
    guard: TurnGuard,
    mut inner: crate::provider::ChunkStream,
    price: Option<crate::usage::Price>,
) -> crate::provider::ChunkStream {
    use futures_util::StreamExt as _;
    let tasks = guard.sessions.tasks.clone();
    let mut recorder = Recorder {
        guard: Some(guard),
        assembler: crate::protocol::assemble::ChatAssembler::new(),
        price,
        tasks,
    };
    async_stream::stream! {
        let mut failed = false;
        while let Some(item) = inner.next().await {
            match &item {
                Ok(chunk) => recorder.assembler.push(chunk),
                Err(_) => failed = true,
            }
            yield item;
            if failed {
                break;
            }
        }
        if let Some(guard) = recorder.guard.take() {
            if failed && recorder.assembler.is_empty() {
                drop(guard);
            } else {
                let (output, usage, cost) = recorder.reply();
                guard.complete(output, usage, cost, failed).await;
            }
        }
    }
    .boxed()
}

struct Recorder {
    guard: Option<TurnGuard>,
    assembler: crate::protocol::assemble::ChatAssembler,
    price: Option<crate::usage::Price>,
    tasks: tokio_util::task::TaskTracker,
}

impl Recorder {
    fn reply(
        &self,
    ) -> (
        Option<ChatMessage>,
        Option<Usage>,
        Option<rust_decimal::Decimal>,
    ) {
        let usage = self.assembler.usage();
        let cost = price_of(self.price.as_ref(), usage.as_ref());
        let output = (!self.assembler.is_empty()).then(|| self.assembler.message());
        (output, usage, cost)
    }
}

impl Drop for Recorder {
    /// The client left mid-stream: store what was generated, marked cut.
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            let (output, usage, cost) = self.reply();
            self.tasks.spawn(guard.complete(output, usage, cost, true));
        }
    }
}

/// The exact cost of `usage` at `price`.
pub fn price_of(
    price: Option<&crate::usage::Price>,
    usage: Option<&Usage>,
) -> Option<rust_decimal::Decimal> {
    Some(crate::usage::pricing::cost(
        price?,
        &crate::usage::pricing::TokenUsage::from(usage?),
    ))
}
