//! The exact tier in process: whole replies keyed by `cache::key`, bounded by bytes (moka, TinyLFU
//! eviction), each with its own TTL (the config's, the model's or the request's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::key::CacheKey;
use super::reply::CachedReply;

/// Each entry lives for its reply's `ttl`.
struct ReplyExpiry;

impl moka::Expiry<CacheKey, Arc<CachedReply>> for ReplyExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        reply: &Arc<CachedReply>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(reply.ttl)
    }
}

/// The in-process exact tier.
pub struct ExactCache {
    entries: moka::future::Cache<CacheKey, Arc<CachedReply>>,
}

impl ExactCache {
    /// A cache holding at most `max_bytes` of replies.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, reply: &Arc<CachedReply>| reply.bytes)
                .expire_after(ReplyExpiry)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// The reply stored under `key`.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedReply>> {
        self.entries.get(key).await
    }

    /// Stores a reply.
    pub async fn insert(&self, key: CacheKey, reply: Arc<CachedReply>) {
        self.entries.insert(key, reply).await;
        self.entries.run_pending_tasks().await;
    }

    /// Drops the replies of `tenant` and/or `model` (each `None` = any). Returns the entries held
    /// before (the drop itself is applied lazily by moka, immediately for lookups).
    pub async fn purge(&self, tenant: Option<&str>, model: Option<&str>) -> u64 {
        let before = self.entry_count();
        if tenant.is_none() && model.is_none() {
            self.entries.invalidate_all();
        } else {
            let (tenant, model) = (tenant.map(str::to_owned), model.map(str::to_owned));
            // Only fails when closures are not supported, which the builder enables.
            let _ = self.entries.invalidate_entries_if(move |_, reply| {
                tenant.as_ref().is_none_or(|t| reply.tenant == *t)
                    && model.as_ref().is_none_or(|m| reply.model == *m)
            });
        }
        self.entries.run_pending_tasks().await;
        before.saturating_sub(self.entry_count())
    }

    /// Entries (approximate until moka's pending work runs).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes of replies held (approximate).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::reply::Body;

    fn reply(model: &str, tenant: &str, ttl: Duration) -> Arc<CachedReply> {
        Arc::new(CachedReply::new(
            Body::Text {
                chunks: Vec::new(),
                streamed: false,
            },
            model,
            tenant,
            ttl,
            None,
        ))
    }

    #[tokio::test]
    async fn purge_by_model_or_tenant_and_per_entry_ttl() {
        let cache = ExactCache::new(1 << 20);
        let long = Duration::from_mins(1);
        cache
            .insert(CacheKey([1; 32]), reply("a", "k1", long))
            .await;
        cache
            .insert(CacheKey([2; 32]), reply("b", "k1", long))
            .await;
        cache
            .insert(CacheKey([3; 32]), reply("b", "k2", long))
            .await;
        cache
            .insert(CacheKey([4; 32]), reply("b", "k2", Duration::ZERO))
            .await;
        assert!(
            cache.get(&CacheKey([4; 32])).await.is_none(),
            "expired at once"
        );
        cache.purge(None, Some("a")).await;
        assert!(cache.get(&CacheKey([1; 32])).await.is_none());
        assert!(cache.get(&CacheKey([2; 32])).await.is_some());
        cache.purge(Some("k2"), None).await;
        assert!(cache.get(&CacheKey([3; 32])).await.is_none());
        assert!(cache.get(&CacheKey([2; 32])).await.is_some());
        cache.purge(None, None).await;
        assert!(cache.get(&CacheKey([2; 32])).await.is_none());
    }
}
