//! Response caching, in front of the provider route of a chat (and text) completion:
//!
//! - [`key`]: the exact-tier key (tenant + every field that can change the answer), the semantic
//!   scope and the text the semantic tier embeds;
//! - [`exact`]: replies in process (moka, bounded by bytes, TTL per entry);
//! - [`semantic`]: near-duplicate prompts (vector index, lexical guards, learned thresholds);
//! - [`shared`]: the Redis tier, so replicas share replies, semantic entries and purges;
//! - [`reply`]: what is stored and how it is replayed (whole or as the same SSE chunks);
//! - [`config`]: `[cache]`, and the per-model / per-key switches.
//!
//! [`Cache`] ties them together; the request path is `api::cache::Plan`.

pub mod config;
pub mod exact;
pub mod key;
pub mod reply;
pub mod semantic;
pub mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio_util::task::TaskTracker;

pub use config::{CacheConfig, CachePolicy};
use key::CacheKey;
use reply::CachedReply;
use semantic::index::Scope;
use semantic::tier::{EntryMeta, SemanticTier};
use shared::{Event, Purge, SharedCache, SharedEntry};

/// `x-sluice-cache`: what the cache did for a response (`hit`, `semantic-hit`, `miss`, `bypass`).
pub const CACHE_HEADER: &str = "x-sluice-cache";
/// `x-sluice-cache-similarity`: on a semantic hit, the similarity of the two prompts.
pub const SIMILARITY_HEADER: &str = "x-sluice-cache-similarity";
/// `x-sluice-cache-ttl`: request header, how long to keep this reply (seconds, or `10m`, `2h`…).
pub const TTL_HEADER: &str = "x-sluice-cache-ttl";
/// `x-sluice-cache-force: true`: request header, cache a request the cache would skip (random
/// sampling, a long conversation).
pub const FORCE_HEADER: &str = "x-sluice-cache-force";

/// Per-request cache directives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `Cache-Control: no-cache`: do not answer from the cache (the reply may still be stored).
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not store the reply.
    pub no_store: bool,
    /// `x-sluice-cache-force: true`.
    pub force: bool,
    /// `x-sluice-cache-ttl`.
    pub ttl: Option<Duration>,
    /// A cache header that could not be read (the request is refused with 400 naming it).
    pub invalid: Option<String>,
}

impl Directives {
    /// Parses `Cache-Control` (case-insensitive, comma-separated; other directives ignored),
    /// `x-sluice-cache-force` and `x-sluice-cache-ttl`.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            for directive in value.to_str().unwrap_or_default().split(',') {
                match directive.trim().to_ascii_lowercase().as_str() {
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    _ => {}
                }
            }
        }
        if let Some(v) = headers.get(FORCE_HEADER) {
            match v.to_str().map(str::trim) {
                Ok(v) if v.eq_ignore_ascii_case("true") || v == "1" => d.force = true,
                Ok(v) if v.eq_ignore_ascii_case("false") || v == "0" => {}
                _ => d.invalid = Some(format!("`{FORCE_HEADER}` must be `true` or `false`")),
            }
        }
        if let Some(v) = headers.get(TTL_HEADER) {
            let text = v.to_str().unwrap_or_default().trim();
            let parsed = text
                .parse::<u64>()
                .map(Duration::from_secs)
                .or_else(|_| humantime::parse_duration(text));
            match parsed {
                Ok(ttl) if !ttl.is_zero() => d.ttl = Some(ttl),
                _ => {
                    d.invalid = Some(format!(
                        "`{TTL_HEADER}` must be a positive duration (seconds, or e.g. `10m`)"
                    ));
                }
            }
        }
        d
    }
}

/// `tier`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct LookupLabels {
    /// `exact` or `semantic`.
    pub tier: &'static str,
    /// `hit`, `miss` or `bypass`.
    pub result: &'static str,
}

/// `tier`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TierLabels {
    /// `exact` or `semantic`.
    pub tier: &'static str,
}

/// `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ModelLabels {
    /// A configured model name.
    pub model: crate::telemetry::metrics::Label,
}

/// `op`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OpLabels {
    /// The Redis operation.
    pub op: &'static str,
}

/// Metric families of the cache.
#[derive(Clone)]
pub struct CacheMetrics {
    /// `sluice_cache_lookups_total{tier,result}`.
    pub lookups: Family<LookupLabels, Counter>,
    /// `sluice_cache_lookup_duration_seconds{tier}` (the semantic tier's includes embedding).
    pub lookup_duration: Family<TierLabels, Histogram>,
    /// `sluice_cache_entries{tier}`.
    pub entries: Family<TierLabels, Gauge>,
    /// `sluice_cache_bytes`.
    pub bytes: Gauge,
    /// `sluice_cache_saved_usd_total{model}`.
    pub saved_usd: Family<ModelLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// `sluice_cache_semantic_rejections_total{reason}`.
    pub rejections: Family<ReasonLabels, Counter>,
    /// `sluice_cache_semantic_learned_total`.
    pub learned: Counter,
    /// `sluice_cache_errors_total{op}`.
    pub errors: Family<OpLabels, Counter>,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        Self {
            lookups: Family::default(),
            lookup_duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ])
            }),
            entries: Family::default(),
            bytes: Gauge::default(),
            saved_usd: Family::default(),
            rejections: Family::default(),
            learned: Counter::default(),
            errors: Family::default(),
        }
    }
}

impl CacheMetrics {
    /// Registers the families.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "cache_lookups",
            "Response cache outcomes by tier: hit, miss (stored when complete), bypass",
            self.lookups.clone(),
        );
        registry.register(
            "cache_lookup_duration_seconds",
            "Time to look a request up, by tier (semantic includes embedding the prompt)",
            self.lookup_duration.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries in this process, by tier (approximate)",
            self.entries.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes of replies in this process (approximate)",
            self.bytes.clone(),
        );
        registry.register(
            "cache_saved_usd",
            "Upstream cost not spent thanks to cache hits (the cost of the call that was stored)",
            self.saved_usd.clone(),
        );
        registry.register(
            "cache_semantic_rejections",
            "Semantic candidates not served: below_threshold, or the guard that disagreed",
            self.rejections.clone(),
        );
        registry.register(
            "cache_semantic_learned",
            "Entry thresholds raised after a regenerate (no-cache right after a semantic hit)",
            self.learned.clone(),
        );
        registry.register(
            "cache_errors",
            "Redis cache operations that failed (served as misses)",
            self.errors.clone(),
        );
    }
}

/// A semantic entry to add with a stored reply.
pub struct NewEntry {
    /// Scope it is compared in.
    pub scope: Scope,
    /// The prompt text.
    pub text: String,
    /// Its vector.
    pub vector: Vec<f32>,
}

/// What a purge removed.
#[derive(Debug, Default, Serialize)]
pub struct PurgeReport {
    /// Exact-tier replies dropped in this process.
    pub exact: u64,
    /// Semantic entries dropped in this process.
    pub semantic: u64,
    /// Replies deleted from Redis (shared tier only).
    pub shared: u64,
}

/// Cache statistics (`GET /admin/cache`).
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Exact-tier replies in this process.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Most bytes.
    pub max_bytes: u64,
    /// Default TTL, seconds.
    pub ttl_seconds: u64,
    /// Whether replicas share through Redis.
    pub shared: bool,
    /// The semantic tier, if any.
    pub semantic: Option<SemanticStats>,
}

/// Semantic-tier statistics.
#[derive(Debug, Serialize)]
pub struct SemanticStats {
    /// The embedder.
    pub embedder: String,
    /// Default threshold.
    pub threshold: f32,
    /// Whether the guards run.
    pub guards: bool,
    /// Entries in the index.
    pub entries: usize,
    /// Most entries.
    pub max_entries: usize,
    /// Bytes of vectors.
    pub vector_bytes: usize,
}

/// The response cache: both tiers and the shared tier.
pub struct Cache {
    /// The settings.
    pub config: CacheConfig,
    exact: exact::ExactCache,
    shared: Option<SharedCache>,
    /// The semantic tier, when an embedder is configured.
    pub semantic: Option<SemanticTier>,
    provider_embedder: Option<Arc<crate::embed::provider::ProviderEmbedder>>,
    /// Metric families.
    pub metrics: CacheMetrics,
    tasks: TaskTracker,
}

impl Cache {
    /// Builds the cache (`None` when `cache.enabled` is false) and, with a shared tier, starts the
    /// loop that applies other replicas' events until `shutdown`.
    pub fn build(
        config: &crate::config::Config,
        tasks: &TaskTracker,
        shutdown: &crate::shutdown::Shutdown,
    ) -> Result<Option<Arc<Self>>, String> {
        let c = &config.cache;
        if !c.enabled {
            return Ok(None);
        }
        let mut provider_embedder = None;
        let embedder: Option<Arc<dyn crate::embed::Embedder>> = match c.semantic.embedder {
            config::EmbedderKind::None => None,
            config::EmbedderKind::Hashing => {
                Some(Arc::new(crate::embed::hashing::HashingEmbedder::new(256)))
            }
            config::EmbedderKind::Model => {
                let model = c.semantic.embedding_model.as_deref().unwrap_or_default();
                let e = Arc::new(crate::embed::provider::ProviderEmbedder::new(
                    model,
                    c.semantic.dimensions,
                ));
                provider_embedder = Some(Arc::clone(&e));
                Some(e)
            }
            config::EmbedderKind::Local => Some(crate::embed::local(&c.semantic.model_dir)?),
        };
        let shared = (c.shared && config.state.backend == crate::config::Backend::Redis)
            .then(|| {
                crate::control::redis::connection(&config.state).map(|conn| {
                    SharedCache::new(
                        conn,
                        &config.state.redis_prefix,
                        config.state.redis_timeout,
                        c.semantic.max_entries,
                    )
                })
            })
            .transpose()
            .map_err(|e| e.to_string())?;
        let cache = Arc::new(Self {
            config: c.clone(),
            exact: exact::ExactCache::new(c.max_bytes),
            shared,
            semantic: embedder.map(|e| SemanticTier::new(&c.semantic, e)),
            provider_embedder,
            metrics: CacheMetrics::default(),
            tasks: tasks.clone(),
        });
        if cache.shared.is_some() {
            spawn_sync(&cache, tasks, shutdown);
        }
        Ok(Some(cache))
    }

    /// Connects the parts that call back into the gateway (an embedder that is a configured model).
    pub fn bind(&self, state: &crate::state::AppState) {
        if let Some(e) = &self.provider_embedder {
            e.bind(state);
        }
    }

    /// The reply under `key`: this process first, then Redis (kept here for what is left of its TTL).
    pub async fn get(&self, tenant: &str, model: &str, key: &CacheKey) -> Option<Arc<CachedReply>> {
        if let Some(hit) = self.exact.get(key).await {
            return Some(hit);
        }
        let shared = self.shared.as_ref()?;
        match shared.get(tenant, model, key).await {
            Ok(Some((mut reply, remaining))) => {
                reply.ttl = remaining;
                let reply = Arc::new(reply);
                self.exact.insert(*key, Arc::clone(&reply)).await;
                self.refresh_gauges();
                Some(reply)
            }
            Ok(None) => None,
            Err(e) => {
                self.redis_error("get", &e);
                None
            }
        }
    }

    fn redis_error(&self, op: &'static str, error: &str) {
        self.metrics.errors.get_or_create(&OpLabels { op }).inc();
        tracing::debug!(error, "cache: redis {op} failed");
    }

    /// Stores a reply (and its semantic entry): in this process now, in Redis in the background.
    pub async fn put(self: &Arc<Self>, key: CacheKey, reply: CachedReply, entry: Option<NewEntry>) {
        let reply = Arc::new(reply);
        self.exact.insert(key, Arc::clone(&reply)).await;
        let shared_entry = match (&self.semantic, entry) {
            (Some(tier), Some(e)) => {
                tier.insert(
                    e.scope,
                    &e.vector,
                    EntryMeta {
                        key,
                        tenant: Arc::from(reply.tenant.as_str()),
                        model: Arc::from(reply.model.as_str()),
                        text: e.text.clone().into_boxed_str(),
                    },
                    reply.ttl,
                );
                let ttl_ms = i64::try_from(reply.ttl.as_millis()).unwrap_or(i64::MAX);
                Some(SharedEntry {
                    scope: e.scope,
                    key,
                    tenant: reply.tenant.clone(),
                    model: reply.model.clone(),
                    text: e.text,
                    vector: e.vector,
                    expires_unix_ms: crate::control::unix_ms().saturating_add(ttl_ms),
                })
            }
            _ => None,
        };
        self.refresh_gauges();
        if self.shared.is_some() {
            let this = Arc::clone(self);
            self.tasks.spawn(async move {
                let Some(shared) = &this.shared else { return };
                if let Err(e) = shared.put(&key, &reply).await {
                    this.redis_error("set", &e);
                }
                if let Some(entry) = shared_entry
                    && let Err(e) = shared.publish(&Event::Entry(entry)).await
                {
                    this.redis_error("publish", &e);
                }
            });
        }
    }

    /// Drops replies and semantic entries of `purge.tenant` and/or `purge.model` here, in Redis, and
    /// (through the event stream) on every other replica.
    pub async fn purge(&self, purge: Purge) -> Result<PurgeReport, String> {
        let mut report = self.purge_local(&purge).await;
        if let Some(shared) = &self.shared {
            report.shared = shared.delete(&purge).await?;
            shared.publish(&Event::Purge(purge)).await?;
        }
        Ok(report)
    }

    async fn purge_local(&self, purge: &Purge) -> PurgeReport {
        let (tenant, model) = (purge.tenant.as_deref(), purge.model.as_deref());
        let report = PurgeReport {
            exact: self.exact.purge(tenant, model).await,
            semantic: self
                .semantic
                .as_ref()
                .map_or(0, |s| s.purge(tenant, model) as u64),
            shared: 0,
        };
        self.refresh_gauges();
        report
    }

    /// What the cache holds.
    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.exact.entry_count(),
            bytes: self.exact.weighted_size(),
            max_bytes: self.config.max_bytes,
            ttl_seconds: self.config.ttl.as_secs(),
            shared: self.shared.is_some(),
            semantic: self.semantic.as_ref().map(|s| SemanticStats {
                embedder: s.embedder_id().to_owned(),
                threshold: s.threshold(),
                guards: s.config.guards,
                entries: s.len(),
                max_entries: s.config.max_entries,
                vector_bytes: s.vector_bytes(),
            }),
        }
    }

    fn refresh_gauges(&self) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .entries
            .get_or_create(&TierLabels { tier: "exact" })
            .set(gauge(self.exact.entry_count()));
        self.metrics.bytes.set(gauge(self.exact.weighted_size()));
        if let Some(s) = &self.semantic {
            self.metrics
                .entries
                .get_or_create(&TierLabels { tier: "semantic" })
                .set(gauge(s.len() as u64));
        }
    }

    /// Applies an event another replica wrote.
    async fn apply(&self, event: Event) {
        match event {
            Event::Entry(e) => {
                let Some(tier) = &self.semantic else { return };
                let left = e.expires_unix_ms.saturating_sub(crate::control::unix_ms());
                let Ok(left) = u64::try_from(left) else {
                    return;
                };
                if left == 0 {
                    return;
                }
                tier.insert(
                    e.scope,
                    &e.vector,
                    EntryMeta {
                        key: e.key,
                        tenant: Arc::from(e.tenant.as_str()),
                        model: Arc::from(e.model.as_str()),
                        text: e.text.into_boxed_str(),
                    },
                    Duration::from_millis(left),
                );
                self.refresh_gauges();
            }
            Event::Purge(p) => {
                self.purge_local(&p).await;
            }
        }
    }

    /// Times a lookup of `tier`.
    pub fn observe_lookup(&self, tier: &'static str, started: Instant) {
        self.metrics
            .lookup_duration
            .get_or_create(&TierLabels { tier })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Most events applied per read of the stream.
const SYNC_BATCH: usize = 512;

fn spawn_sync(cache: &Arc<Cache>, tasks: &TaskTracker, shutdown: &crate::shutdown::Shutdown) {
    let cache = Arc::clone(cache);
    let stop = shutdown.signalled();
    tasks.spawn(async move {
        let Some(shared) = &cache.shared else { return };
        let mut last = "0".to_owned();
        let mut tick = tokio::time::interval(cache.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            loop {
                match shared.read(&last, SYNC_BATCH).await {
                    Ok((events, next, read)) => {
                        let full = read == SYNC_BATCH;
                        for event in events {
                            cache.apply(event).await;
                        }
                        last = next;
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        cache.redis_error("read", &e);
                        break;
                    }
                }
            }
        }
    });
}
