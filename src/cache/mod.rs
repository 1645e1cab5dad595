//! Response caching (issue 6, in progress): [`key`] derives the exact-tier key of a chat request,
//! [`exact`] is the in-process exact tier. Only non-session chat completions use it so far.

pub mod exact;
pub mod key;
pub mod semantic;

use std::time::Duration;

use serde::Deserialize;

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Serve repeated deterministic chat requests (`temperature` 0) from the exact tier.
    pub enabled: bool,
    /// Most bytes of replies kept in this process.
    pub max_bytes: u64,
    /// How long a reply is served.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_hours(1),
        }
    }
}

/// `cache-control` directives of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`: do not answer from the cache (the reply may still be stored).
    pub no_cache: bool,
    /// `no-store`: do not store the reply.
    pub no_store: bool,
}

impl Directives {
    /// Parses `Cache-Control` (case-insensitive, comma-separated; other directives ignored).
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
        d
    }
}

/// `x-sluice-cache`: what the cache did for a response.
pub const CACHE_HEADER: &str = "x-sluice-cache";

/// `tier`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct LookupLabels {
    /// `exact`.
    pub tier: &'static str,
    /// `hit`, `miss` or `bypass`.
    pub result: &'static str,
}

/// Metric families of the cache.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    /// `sluice_cache_lookups_total{tier,result}`.
    pub lookups: prometheus_client::metrics::family::Family<
        LookupLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// `sluice_cache_entries{tier}` (approximate).
    pub entries: prometheus_client::metrics::gauge::Gauge,
    /// `sluice_cache_bytes` (approximate weight of the stored replies).
    pub bytes: prometheus_client::metrics::gauge::Gauge,
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
            "cache_entries",
            "Replies in the exact cache (approximate)",
            self.entries.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes of replies in the exact cache (approximate)",
            self.bytes.clone(),
        );
    }
}
