//! The Redis tier, shared by every replica (with `state.backend = "redis"` and `cache.shared`):
//!
//! - replies: `{prefix}cache:x:{tenant}:{model}:{key}` (tenant and model as short hashes, so a purge by
//!   either is one `SCAN MATCH`), JSON, expiring with the reply's TTL (`PX`);
//! - events: the stream `{prefix}cache:events` (capped with `MAXLEN ~`): every semantic entry (its
//!   vector, so other replicas need not embed again) and every purge. Each replica reads it every
//!   `cache.sync_interval` and applies what other replicas wrote.
//!
//! The cache is best-effort: every operation is bounded by `state.redis_timeout`, and an error is a
//! miss (counted in `sluice_cache_errors_total`), never a failed request.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadReply};
use sha2::{Digest as _, Sha256};

use super::key::CacheKey;
use super::reply::CachedReply;

/// A semantic entry as other replicas see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedEntry {
    /// Scope it is compared in.
    pub scope: [u8; 32],
    /// Exact-tier key of the reply.
    pub key: CacheKey,
    /// Tenant.
    pub tenant: String,
    /// Public model name.
    pub model: String,
    /// The prompt text (the guards need it).
    pub text: String,
    /// The prompt's vector.
    pub vector: Vec<f32>,
    /// Unix ms it expires at.
    pub expires_unix_ms: i64,
}

/// A purge: replies of `tenant` and/or `model` (`None` = any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    /// Tenant (key id).
    pub tenant: Option<String>,
    /// Public model name.
    pub model: Option<String>,
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A semantic entry was stored.
    Entry(SharedEntry),
    /// Replies were purged.
    Purge(Purge),
}

/// The Redis tier.
pub struct SharedCache {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// This replica's id: its own events are skipped when read back.
    origin: String,
    max_events: usize,
}

/// 16 hex digits of the SHA-256 of `s` (a tenant or model in a Redis key).
fn short(s: &str) -> String {
    let mut hex = crate::control::encode_hash(&Sha256::digest(s.as_bytes()).into());
    hex.truncate(16);
    hex
}

impl SharedCache {
    /// The tier over `conn`; the event stream keeps about `max_events` events.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        timeout: Duration,
        max_events: usize,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            origin: uuid::Uuid::now_v7().to_string(),
            max_events: max_events.max(1000),
        }
    }

    fn reply_key(&self, tenant: &str, model: &str, key: &CacheKey) -> String {
        format!(
            "{}cache:x:{}:{}:{}",
            self.prefix,
            short(tenant),
            short(model),
            key.hex()
        )
    }

    fn events_key(&self) -> String {
        format!("{}cache:events", self.prefix)
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("redis {op}: {e}")),
            Err(_) => Err(format!("redis {op}: timed out")),
        }
    }

    /// The reply under `key` and how long it still lives.
    pub async fn get(
        &self,
        tenant: &str,
        model: &str,
        key: &CacheKey,
    ) -> Result<Option<(CachedReply, Duration)>, String> {
        let k = self.reply_key(tenant, model, key);
        let mut conn = self.conn.clone();
        let (value, pttl): (Option<Vec<u8>>, i64) = self
            .bounded(
                "get",
                redis::pipe()
                    .get(&k)
                    .cmd("PTTL")
                    .arg(&k)
                    .query_async(&mut conn),
            )
            .await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let remaining = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
        if remaining.is_zero() {
            return Ok(None);
        }
        Ok(CachedReply::from_json(&value).map(|reply| (reply, remaining)))
    }

    /// Stores a reply for its TTL.
    pub async fn put(&self, key: &CacheKey, reply: &CachedReply) -> Result<(), String> {
        let k = self.reply_key(&reply.tenant, &reply.model, key);
        let ms = u64::try_from(reply.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.conn.clone();
        self.bounded(
            "set",
            redis::cmd("SET")
                .arg(&k)
                .arg(reply.to_json())
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Appends an event for the other replicas.
    pub async fn publish(&self, event: &Event) -> Result<(), String> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.events_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_events)
            .arg("*")
            .arg("origin")
            .arg(&self.origin);
        match event {
            Event::Entry(e) => {
                let vector: Vec<u8> = e.vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                cmd.arg("op")
                    .arg("entry")
                    .arg("scope")
                    .arg(&e.scope[..])
                    .arg("key")
                    .arg(&e.key.0[..])
                    .arg("tenant")
                    .arg(&e.tenant)
                    .arg("model")
                    .arg(&e.model)
                    .arg("text")
                    .arg(&e.text)
                    .arg("vector")
                    .arg(vector)
                    .arg("expires")
                    .arg(e.expires_unix_ms);
            }
            Event::Purge(p) => {
                cmd.arg("op").arg("purge");
                if let Some(t) = &p.tenant {
                    cmd.arg("tenant").arg(t);
                }
                if let Some(m) = &p.model {
                    cmd.arg("model").arg(m);
                }
            }
        }
        let mut conn = self.conn.clone();
        self.bounded("xadd", cmd.query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }

    /// Deletes the stored replies matching `purge`; returns how many.
    pub async fn delete(&self, purge: &Purge) -> Result<u64, String> {
        let pattern = format!(
            "{}cache:x:{}:{}:*",
            self.prefix,
            purge
                .tenant
                .as_deref()
                .map_or_else(|| "*".to_owned(), short),
            purge.model.as_deref().map_or_else(|| "*".to_owned(), short),
        );
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .bounded(
                    "scan",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            if !keys.is_empty() {
                deleted += self
                    .bounded(
                        "unlink",
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<u64>(&mut conn),
                    )
                    .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Events after `last_id` (`0` for all) written by other replicas, the id to read from next, and
    /// how many events were read (own ones included: fewer than `count` means the end was reached).
    pub async fn read(
        &self,
        last_id: &str,
        count: usize,
    ) -> Result<(Vec<Event>, String, usize), String> {
        let mut conn = self.conn.clone();
        let (ids, maps) = if last_id == "0" {
            let reply: StreamRangeReply = self
                .bounded(
                    "xrange",
                    redis::cmd("XRANGE")
                        .arg(self.events_key())
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(count)
                        .query_async(&mut conn),
                )
                .await?;
            split(reply.ids)
        } else {
            let reply: StreamReadReply = self
                .bounded(
                    "xread",
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(count)
                        .arg("STREAMS")
                        .arg(self.events_key())
                        .arg(last_id)
                        .query_async(&mut conn),
                )
                .await?;
            split(reply.keys.into_iter().flat_map(|k| k.ids).collect())
        };
        let read = ids.len();
        let next = ids.last().cloned().unwrap_or_else(|| last_id.to_owned());
        let events = maps
            .into_iter()
            .filter(|m| field(m, "origin").as_deref() != Some(self.origin.as_bytes()))
            .filter_map(|m| parse(&m))
            .collect();
        Ok((events, next, read))
    }
}

type Fields = std::collections::HashMap<String, redis::Value>;

fn split(ids: Vec<redis::streams::StreamId>) -> (Vec<String>, Vec<Fields>) {
    ids.into_iter().map(|s| (s.id, s.map)).unzip()
}

fn field(map: &Fields, name: &str) -> Option<Vec<u8>> {
    match map.get(name)? {
        redis::Value::BulkString(b) => Some(b.clone()),
        redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn text(map: &Fields, name: &str) -> Option<String> {
    String::from_utf8(field(map, name)?).ok()
}

fn parse(map: &Fields) -> Option<Event> {
    match text(map, "op")?.as_str() {
        "entry" => {
            let vector = field(map, "vector")?;
            if vector.len() % 4 != 0 {
                return None;
            }
            Some(Event::Entry(SharedEntry {
                scope: field(map, "scope")?.try_into().ok()?,
                key: CacheKey(field(map, "key")?.try_into().ok()?),
                tenant: text(map, "tenant")?,
                model: text(map, "model")?,
                text: text(map, "text")?,
                vector: vector
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                expires_unix_ms: text(map, "expires")?.parse().ok()?,
            }))
        }
        "purge" => Some(Event::Purge(Purge {
            tenant: text(map, "tenant"),
            model: text(map, "model"),
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::reply::Body;
    use crate::testkit::redis::RedisServer;

    fn reply(tenant: &str, model: &str) -> CachedReply {
        CachedReply::new(
            Body::Text {
                chunks: Vec::new(),
                streamed: false,
            },
            model,
            tenant,
            Duration::from_mins(1),
            None,
        )
    }

    async fn pair() -> Option<(RedisServer, SharedCache, SharedCache)> {
        let server = RedisServer::start_or_skip().await.unwrap()?;
        let open = || async {
            let client = redis::Client::open(server.url()).unwrap();
            let conn = ConnectionManager::new(client).await.unwrap();
            SharedCache::new(conn, "t:", Duration::from_secs(2), 1000)
        };
        let (a, b) = (open().await, open().await);
        Some((server, a, b))
    }

    #[tokio::test]
    async fn replies_events_and_purges_cross_replicas() {
        let Some((_server, a, b)) = pair().await else {
            return;
        };
        let key = CacheKey([5; 32]);
        a.put(&key, &reply("k1", "m1")).await.unwrap();
        let (got, ttl) = b.get("k1", "m1", &key).await.unwrap().unwrap();
        assert_eq!(got.model, "m1");
        assert!(ttl > Duration::from_secs(50) && ttl <= Duration::from_mins(1));
        assert!(
            b.get("k2", "m1", &key).await.unwrap().is_none(),
            "tenant is part of the key"
        );
        let entry = SharedEntry {
            scope: [1; 32],
            key,
            tenant: "k1".to_owned(),
            model: "m1".to_owned(),
            text: "hello".to_owned(),
            vector: vec![0.5, -0.25],
            expires_unix_ms: 123,
        };
        a.publish(&Event::Entry(entry.clone())).await.unwrap();
        let purge = Purge {
            tenant: None,
            model: Some("m1".to_owned()),
        };
        a.publish(&Event::Purge(purge.clone())).await.unwrap();
        let (events, next, read) = b.read("0", 100).await.unwrap();
        assert_eq!(read, 2);
        assert_eq!(
            events,
            vec![Event::Entry(entry), Event::Purge(purge.clone())]
        );
        let (own, _, _) = a.read("0", 100).await.unwrap();
        assert!(own.is_empty(), "a replica skips its own events");
        let (none, same, _) = b.read(&next, 100).await.unwrap();
        assert!(none.is_empty());
        assert_eq!(same, next);
        a.put(&CacheKey([6; 32]), &reply("k2", "m2")).await.unwrap();
        assert_eq!(b.delete(&purge).await.unwrap(), 1);
        assert!(a.get("k1", "m1", &key).await.unwrap().is_none());
        assert!(
            a.get("k2", "m2", &CacheKey([6; 32]))
                .await
                .unwrap()
                .is_some()
        );
    }
}
