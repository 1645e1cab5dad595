//! The Redis state backend: limits, budgets and keys that hold across replicas.
//!
//! - [`RedisLimiter`] makes the decisions of [`MemoryLimiter`] atomically in Redis: one Lua script
//!   checks every limit of a call and writes the reservations only if all pass (no read-then-write
//!   from Rust), a second one settles. The scripts read the server's clock (`TIME`), so replicas with
//!   skewed clocks agree, and mirror `gcra()` of `limiter.rs` line for line.
//! - [`RedisKeyStore`] keeps the virtual keys in one hash, with a version counter bumped in the same
//!   transaction as every write.
//! - [`Failover`] wraps the limiter with the `on_redis_error` policy: while Redis cannot be reached,
//!   fail open (this replica's own [`MemoryLimiter`] decides) or fail closed (an error, a 503).
//!
//! **Keys** (all under `state.redis_prefix`, `sluice:` by default): `rate:{bucket}` holds a rate
//! bucket's theoretical arrival time (ms, server clock) and expires a minute after the bucket is full
//! again; `slots:{bucket}` is a sorted set of concurrency leases scored by their expiry; `spend:{bucket}`
//! a hash `{spent, reserved}` of nano-USD expiring with the budget period; `lease:{id}` marks an
//! admitted call not settled yet; `keys` and `keys:version` hold the key store. The backend needs a
//! single Redis (or a primary with replicas), not Redis Cluster: one script touches keys of any slot.
//! Redis must not evict them (`maxmemory-policy noeviction`): an evicted budget forgets its spend.
//!
//! **Leases.** A call holding a concurrency slot can last minutes (a stream). Its lease expires
//! `lease_ttl` (30 s) after it was last renewed, and a task renews every held lease every
//! `lease_ttl / 3`: a replica that dies frees its slots within `lease_ttl`.
//!
//! **Settling exactly once.** An admission that reserved something also writes the marker
//! `lease:{id}`; the settle script reconciles tokens and budget only if it deletes that marker. So a
//! settlement that failed (or timed out after Redis ran it) is queued and retried by the same task
//! without counting twice, and an admission that timed out (Redis may or may not have run it) is
//! compensated by a settlement that gives everything back if, and only if, it was reserved. Without
//! this, a lost settlement would keep a budget reservation until the end of its period.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo as _, RedisResult, Script};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{FailurePolicy, StateConfig};
use super::keys::VirtualKey;
use super::limiter::{
    BackendError, Check, Limiter, MemoryLimiter, Nanos, Outcome, Settle, Verdict,
};
use super::metrics::{BackendLabels, ControlMetrics};
use super::store::KeyStore;

/// How long a concurrency lease lives without renewal; renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How long the marker of an admitted, unsettled call lives: longer than any call.
const MARKER_TTL: Duration = Duration::from_hours(24);

/// How long a rate bucket outlives the moment it is full again. Within it, a late settlement's debt is
/// charged from the admission's time, as the memory backend does; after it, from the settlement's.
const RATE_MARGIN: Duration = Duration::from_mins(1);

/// Settlements kept for retry at most; past this the oldest are dropped (with a warning).
const MAX_UNSETTLED: usize = 10_000;

/// Leases renewed per script call.
const RENEW_BATCH: usize = 512;

/// How long [`Failover`] waits after a failure before trying Redis again.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

// === Scripts ===

/// Admission: every check is evaluated, then the reservations are written only if all passed. Mirrors
/// `MemoryLimiter::admit_now` and `gcra` in limiter.rs.
///
/// KEYS: one per check, then the lease marker. ARGV: lease id, lease ttl ms, marker ttl ms, rate
/// margin ms, then four per check: kind (`q` requests, `t` tokens, `c` concurrency, `b` budget) and
/// three parameters. Returns four strings per check: refused (`0`/`1`), remaining, reset ms, retry
/// after ms (`-1`: none).
const ADMIT_LUA: &str = r"
-- Before Redis 5, writing after TIME needs effects replication; later it is the default.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local EPSILON_MS = 1e-6
local lease = ARGV[1]
local lease_ttl = tonumber(ARGV[2])
local n = #KEYS - 1
local function fmt(x) return string.format('%.17g', x) end
local function int(x) return string.format('%d', x) end
local function floor_count(x) return math.floor(math.max(x, 0)) end

local out = {}
local new_lags = {}
local admitted = true
local reserves = false
for i = 1, n do
  local key = KEYS[i]
  local a = 4 + (i - 1) * 4
  local kind = ARGV[a + 1]
  if kind == 'q' or kind == 't' then
    if kind == 't' then reserves = true end
    local per_minute = tonumber(ARGV[a + 2])
    local cost = tonumber(ARGV[a + 3])
    local t = 60000.0 / math.max(per_minute, 1)
    local capacity = t * per_minute
    local tat = tonumber(redis.call('GET', key)) or now
    -- gcra() with times relative to now: lag = base - now, new_lag = new_tat - now. Absolute times
    -- (~1.8e12 ms) carry ~2e-4 ms of rounding; the difference of two close ones is exact.
    local lag = math.max(tat - now, 0)
    local new_lag = lag + t * cost
    if new_lag <= capacity + EPSILON_MS then
      new_lags[i] = new_lag
      out[#out + 1] = '0'
      out[#out + 1] = fmt(floor_count((capacity - new_lag) / t + EPSILON_MS))
      out[#out + 1] = fmt(new_lag)
      out[#out + 1] = '-1'
    else
      admitted = false
      out[#out + 1] = '1'
      out[#out + 1] = fmt(floor_count((capacity - lag) / t + EPSILON_MS))
      out[#out + 1] = fmt(lag)
      -- A cost above the whole capacity can never pass: no retry time.
      if cost <= per_minute then
        out[#out + 1] = fmt(math.max(new_lag - capacity, 0))
      else
        out[#out + 1] = '-1'
      end
    end
  elseif kind == 'c' then
    reserves = true
    local max = tonumber(ARGV[a + 2])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
    local held = redis.call('ZCARD', key)
    if held >= max then
      admitted = false
      out[#out + 1] = '1'
      out[#out + 1] = '0'
      out[#out + 1] = '0'
      out[#out + 1] = '1000'
    else
      out[#out + 1] = '0'
      out[#out + 1] = fmt(max - held - 1)
      out[#out + 1] = '0'
      out[#out + 1] = '-1'
    end
  elseif kind == 'b' then
    reserves = true
    local limit = tonumber(ARGV[a + 2])
    local reserve = tonumber(ARGV[a + 3])
    local spent = tonumber(redis.call('HGET', key, 'spent')) or 0
    local reserved = tonumber(redis.call('HGET', key, 'reserved')) or 0
    local committed = spent + reserved
    -- Refused when the limit is already reached, or this call's estimate would pass it.
    local refused = committed >= limit or committed + reserve > limit
    if refused then
      admitted = false
      out[#out + 1] = '1'
      out[#out + 1] = fmt(math.max(limit - committed, 0))
    else
      out[#out + 1] = '0'
      out[#out + 1] = fmt(math.max(limit - committed - reserve, 0))
    end
    out[#out + 1] = '0'
    out[#out + 1] = '-1'
  else
    return redis.error_reply('unknown check kind ' .. tostring(kind))
  end
end

if admitted then
  for i = 1, n do
    local key = KEYS[i]
    local a = 4 + (i - 1) * 4
    local kind = ARGV[a + 1]
    if kind == 'q' or kind == 't' then
      local new_lag = new_lags[i]
      redis.call('SET', key, fmt(now + new_lag), 'PX', int(math.ceil(new_lag) + tonumber(ARGV[4])))
    elseif kind == 'c' then
      redis.call('ZADD', key, fmt(now + lease_ttl), lease)
      redis.call('PEXPIRE', key, ARGV[2])
    elseif kind == 'b' then
      redis.call('HINCRBY', key, 'reserved', ARGV[a + 3])
      redis.call('PEXPIRE', key, ARGV[a + 4])
    end
  end
  if reserves then
    redis.call('SET', KEYS[n + 1], '1', 'PX', ARGV[3])
  end
end
return out
";

/// Settlement. Mirrors `MemoryLimiter::settle_now`; tokens and budget are reconciled only when the
/// admission's marker is there to be deleted (once per admitted call).
///
/// KEYS: one per item, then the lease marker. ARGV: lease id, rate margin ms, then four per item: kind
/// (`t` tokens, `c` concurrency, `b` budget) and three parameters.
const SETTLE_LUA: &str = r"
-- Before Redis 5, writing after TIME needs effects replication; later it is the default.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local lease = ARGV[1]
local margin = tonumber(ARGV[2])
local n = #KEYS - 1
local function fmt(x) return string.format('%.17g', x) end
local function int(x) return string.format('%d', x) end

local admitted = redis.call('DEL', KEYS[n + 1]) == 1
for i = 1, n do
  local key = KEYS[i]
  local a = 2 + (i - 1) * 4
  local kind = ARGV[a + 1]
  if kind == 'c' then
    redis.call('ZREM', key, lease)
  elseif kind == 't' then
    if admitted then
      local per_minute = tonumber(ARGV[a + 2])
      local reserved = tonumber(ARGV[a + 3])
      local used = tonumber(ARGV[a + 4])
      local t = 60000.0 / math.max(per_minute, 1)
      local tat = tonumber(redis.call('GET', key))
      local new_tat = nil
      if tat then
        -- Refund (used < reserved) or debt (used > reserved); a refund never moves the bucket to
        -- before now (unused capacity does not accumulate past full).
        new_tat = math.max(tat + (used - reserved) * t, now)
      elseif used > reserved then
        new_tat = now + (used - reserved) * t
      end
      if new_tat then
        redis.call('SET', key, fmt(new_tat), 'PX', int(math.ceil(new_tat - now) + margin))
      end
    end
  elseif kind == 'b' then
    if admitted then
      local reserved = tonumber(ARGV[a + 2])
      local held = tonumber(redis.call('HGET', key, 'reserved')) or 0
      redis.call('HINCRBY', key, 'reserved', int(math.max(held - reserved, 0) - held))
      redis.call('HINCRBY', key, 'spent', ARGV[a + 3])
      redis.call('PEXPIRE', key, ARGV[a + 4])
    end
  else
    return redis.error_reply('unknown settle kind ' .. tostring(kind))
  end
end
return 1
";

/// Renewal of held leases: KEYS are slot sets, ARGV the lease ttl ms then one lease per key. Leases
/// that expired meanwhile are not brought back (`XX`): their slot may be someone else's now.
const RENEW_LUA: &str = r"
-- Before Redis 5, writing after TIME needs effects replication; later it is the default.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local expiry = string.format('%.17g', now + tonumber(ARGV[1]))
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', expiry, ARGV[i + 1]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return 1
";

// === Connection ===

/// A connection to `state.redis_url`, with the password from `state.redis_password_env`, that
/// connects on first use and reconnects by itself. Must be called inside a tokio runtime. Errors never
/// contain the URL (it might hold credentials despite the docs) nor the password.
pub fn connection(config: &StateConfig) -> Result<ConnectionManager, BackendError> {
    let mut info = config
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|e| {
            BackendError(format!(
                "state.redis_url is not a valid Redis URL ({:?})",
                e.kind()
            ))
        })?;
    if let Some(var) = &config.redis_password_env {
        let password = std::env::var(var).map_err(|_| {
            BackendError(format!(
                "environment variable {var} (state.redis_password_env) is not set"
            ))
        })?;
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info)
        .map_err(|e| BackendError(format!("redis client: {:?}", e.kind())))?;
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.redis_timeout))
        .set_response_timeout(Some(config.redis_timeout))
        // Few, short reconnection attempts: callers bound every operation anyway, and a long back-off
        // inside the manager would delay noticing that Redis is back.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    client
        .get_connection_manager_lazy(manager)
        .map_err(|e| BackendError(format!("redis connection: {e}")))
}

/// Connects (checking that Redis answers a PING within `redis_timeout`) and builds the limiter, whose
/// lease renewal runs on `tasks` until `shutdown`, and the key store, sharing one connection. To start
/// while Redis is down (fail-open), use [`connection`] and the constructors instead.
pub async fn connect(
    config: &StateConfig,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(RedisLimiter, RedisKeyStore), BackendError> {
    let conn = connection(config)?;
    let mut probe = conn.clone();
    let ping = redis::cmd("PING");
    bounded::<String>(config.redis_timeout, "ping", ping.query_async(&mut probe)).await?;
    let store = RedisKeyStore::new(conn.clone(), config);
    let limiter = RedisLimiter::new(conn, config, LEASE_TTL, tasks, shutdown);
    Ok((limiter, store))
}

/// Runs one Redis operation within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    op: &'static str,
    operation: impl Future<Output = RedisResult<T>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(BackendError(format!("redis {op}: {e}"))),
        Err(_) => Err(BackendError(format!(
            "redis {op}: no answer within {timeout:?}"
        ))),
    }
}

/// Whole milliseconds, as Redis takes them (at most about 100 years).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).map_or(1 << 41, |ms| ms.min(1 << 41))
}

/// A non-negative float rounded down to a count, as in limiter.rs.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to >= 0 first; values are bounded by the limit, a u64"
)]
fn floor_count(x: f64) -> u64 {
    x.max(0.0).floor() as u64
}

/// Milliseconds as a duration, as in limiter.rs.
fn duration_ms(x: f64) -> Duration {
    Duration::from_secs_f64(x.max(0.0) / 1000.0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === Limiter ===

/// A settlement that could not be applied yet.
struct Unsettled {
    items: Vec<Settle>,
    lease: String,
    since: Instant,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    lease_ttl: Duration,
    admit: Script,
    settle: Script,
    renew: Script,
    /// Slot sets each unsettled lease of this process holds, for renewal.
    held: Mutex<HashMap<String, Vec<String>>>,
    /// Settlements to retry, oldest first.
    unsettled: Mutex<VecDeque<Unsettled>>,
}

/// Limits and budgets in Redis, shared by every replica; the same decisions as [`MemoryLimiter`].
/// Cheap to clone (clones share the connection and the held leases).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

impl RedisLimiter {
    /// A limiter on `conn`, with keys under `config.redis_prefix` and every operation bounded by
    /// `config.redis_timeout`. Concurrency leases live `lease_ttl` ([`LEASE_TTL`]); a task on `tasks`
    /// renews them and retries failed settlements every `lease_ttl / 3` until `shutdown` (or until
    /// the limiter is dropped).
    pub fn new(
        conn: ConnectionManager,
        config: &StateConfig,
        lease_ttl: Duration,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let inner = Arc::new(Inner {
            conn,
            prefix: config.redis_prefix.clone(),
            timeout: config.redis_timeout,
            lease_ttl,
            admit: Script::new(ADMIT_LUA),
            settle: Script::new(SETTLE_LUA),
            renew: Script::new(RENEW_LUA),
            held: Mutex::default(),
            unsettled: Mutex::default(),
        });
        let every = (lease_ttl / 3).max(Duration::from_millis(10));
        tasks.spawn(maintain(Arc::downgrade(&inner), every, shutdown));
        Self { inner }
    }

    /// Retries the queued settlements in order, stopping at the first failure; returns how many are
    /// left. The maintenance task calls it every `lease_ttl / 3`.
    pub async fn retry_unsettled(&self) -> usize {
        self.inner.retry_unsettled().await
    }

    /// Settlements waiting for a retry.
    pub fn unsettled(&self) -> usize {
        lock(&self.inner.unsettled).len()
    }

    /// Queues a settlement without trying it now (Redis is known to be down); the lease is no longer
    /// renewed.
    pub fn defer_settle(&self, items: &[Settle], lease: &str) {
        self.inner.release(lease);
        self.inner.enqueue(items.to_vec(), lease);
    }

    /// Renews every held lease now (the maintenance task does it every `lease_ttl / 3`).
    pub async fn renew_leases(&self) -> Result<(), BackendError> {
        self.inner.renew().await
    }
}

/// The maintenance task: lease renewal and settlement retries.
async fn maintain(inner: Weak<Inner>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                // Last chance for settlements that failed: the queue lives in this process only.
                if let Some(inner) = inner.upgrade() {
                    inner.retry_unsettled().await;
                }
                return;
            }
            _ = ticks.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.renew().await {
            tracing::debug!(error = %e, "could not renew concurrency leases");
        }
        inner.retry_unsettled().await;
    }
}

impl Inner {
    fn key(&self, kind: &str, bucket: &str) -> String {
        format!("{}{kind}:{bucket}", self.prefix)
    }

    fn check_key(&self, check: &Check) -> String {
        match check {
            Check::Requests { bucket, .. } | Check::Tokens { bucket, .. } => {
                self.key("rate", bucket)
            }
            Check::Concurrency { bucket, .. } => self.key("slots", bucket),
            Check::Budget { bucket, .. } => self.key("spend", bucket),
        }
    }

    fn settle_key(&self, item: &Settle) -> String {
        match item {
            Settle::Tokens { bucket, .. } => self.key("rate", bucket),
            Settle::Concurrency { bucket } => self.key("slots", bucket),
            Settle::Budget { bucket, .. } => self.key("spend", bucket),
        }
    }

    async fn admit(&self, checks: &[Check], lease: &str) -> Result<Outcome, BackendError> {
        if checks.is_empty() {
            return Ok(Outcome {
                verdicts: Vec::new(),
            });
        }
        let mut invocation = self.admit.prepare_invoke();
        for check in checks {
            invocation.key(self.check_key(check));
        }
        invocation
            .key(self.key("lease", lease))
            .arg(lease)
            .arg(millis(self.lease_ttl))
            .arg(millis(MARKER_TTL))
            .arg(millis(RATE_MARGIN));
        for check in checks {
            match check {
                Check::Requests { per_minute, .. } => {
                    invocation.arg("q").arg(*per_minute).arg(1).arg(0)
                }
                Check::Tokens {
                    per_minute,
                    reserve,
                    ..
                } => invocation.arg("t").arg(*per_minute).arg(*reserve).arg(0),
                Check::Concurrency { max, .. } => invocation.arg("c").arg(*max).arg(0).arg(0),
                Check::Budget {
                    limit,
                    reserve,
                    ttl,
                    ..
                } => invocation
                    .arg("b")
                    .arg(*limit)
                    .arg(*reserve)
                    .arg(millis(*ttl).max(1)),
            };
        }
        let mut conn = self.conn.clone();
        let reply: Result<Vec<String>, BackendError> =
            bounded(self.timeout, "admit", invocation.invoke_async(&mut conn)).await;
        let outcome = reply.and_then(|values| parse_outcome(checks, &values));
        match &outcome {
            Ok(outcome) if outcome.admitted() => self.hold(checks, lease),
            Ok(_) => {}
            // Redis may have run the script before the answer was lost: give back whatever it
            // reserved (the marker makes this a no-op if it reserved nothing).
            Err(_) => self.compensate(checks, lease),
        }
        outcome
    }

    /// Remembers the slot sets an admitted call holds, for renewal.
    fn hold(&self, checks: &[Check], lease: &str) {
        let slots: Vec<String> = checks
            .iter()
            .filter(|c| matches!(c, Check::Concurrency { .. }))
            .map(|c| self.check_key(c))
            .collect();
        if !slots.is_empty() {
            lock(&self.held).insert(lease.to_owned(), slots);
        }
    }

    fn release(&self, lease: &str) {
        lock(&self.held).remove(lease);
    }

    fn compensate(&self, checks: &[Check], lease: &str) {
        let items: Vec<Settle> = checks
            .iter()
            .filter_map(|check| match check {
                Check::Requests { .. } => None,
                Check::Tokens {
                    bucket,
                    per_minute,
                    reserve,
                } => Some(Settle::Tokens {
                    bucket: Arc::clone(bucket),
                    per_minute: *per_minute,
                    reserved: *reserve,
                    used: 0,
                }),
                Check::Concurrency { bucket, .. } => Some(Settle::Concurrency {
                    bucket: Arc::clone(bucket),
                }),
                Check::Budget {
                    bucket,
                    reserve,
                    ttl,
                    ..
                } => Some(Settle::Budget {
                    bucket: Arc::clone(bucket),
                    reserved: *reserve,
                    spent: 0,
                    ttl: *ttl,
                }),
            })
            .collect();
        if !items.is_empty() {
            self.enqueue(items, lease);
        }
    }

    fn enqueue(&self, items: Vec<Settle>, lease: &str) {
        let mut queue = lock(&self.unsettled);
        if queue.len() >= MAX_UNSETTLED
            && let Some(dropped) = queue.pop_front()
        {
            tracing::warn!(
                lease = %dropped.lease,
                "too many settlements waiting for Redis: the oldest is dropped, its reservations stay \
                 until their buckets expire"
            );
        }
        queue.push_back(Unsettled {
            items,
            lease: lease.to_owned(),
            since: Instant::now(),
        });
    }

    async fn settle(&self, items: &[Settle], lease: &str) -> Result<(), BackendError> {
        self.release(lease);
        match self.settle_once(items, lease).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.enqueue(items.to_vec(), lease);
                Err(BackendError(format!("{e} (queued for retry)")))
            }
        }
    }

    async fn settle_once(&self, items: &[Settle], lease: &str) -> Result<(), BackendError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut invocation = self.settle.prepare_invoke();
        for item in items {
            invocation.key(self.settle_key(item));
        }
        invocation
            .key(self.key("lease", lease))
            .arg(lease)
            .arg(millis(RATE_MARGIN));
        for item in items {
            match item {
                Settle::Tokens {
                    per_minute,
                    reserved,
                    used,
                    ..
                } => invocation
                    .arg("t")
                    .arg(*per_minute)
                    .arg(*reserved)
                    .arg(*used),
                Settle::Concurrency { .. } => invocation.arg("c").arg(0).arg(0).arg(0),
                Settle::Budget {
                    reserved,
                    spent,
                    ttl,
                    ..
                } => invocation
                    .arg("b")
                    .arg(*reserved)
                    .arg(*spent)
                    .arg(millis(*ttl).max(1)),
            };
        }
        let mut conn = self.conn.clone();
        bounded::<i64>(self.timeout, "settle", invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn retry_unsettled(&self) -> usize {
        let batch: Vec<Unsettled> = lock(&self.unsettled).drain(..).collect();
        let mut left: VecDeque<Unsettled> = VecDeque::new();
        for entry in batch {
            if !left.is_empty() {
                left.push_back(entry);
            } else if entry.since.elapsed() >= MARKER_TTL {
                // The admission's marker is gone: there is nothing left this could reconcile.
                tracing::warn!(lease = %entry.lease, "a settlement waited too long for Redis and is dropped");
            } else if let Err(e) = self.settle_once(&entry.items, &entry.lease).await {
                tracing::debug!(error = %e, "retrying a settlement failed");
                left.push_back(entry);
            }
        }
        let mut queue = lock(&self.unsettled);
        // Anything queued meanwhile goes after the older entries.
        while let Some(entry) = left.pop_back() {
            queue.push_front(entry);
        }
        while queue.len() > MAX_UNSETTLED {
            queue.pop_front();
        }
        queue.len()
    }

    async fn renew(&self) -> Result<(), BackendError> {
        let pairs: Vec<(String, String)> = lock(&self.held)
            .iter()
            .flat_map(|(lease, slots)| slots.iter().map(|s| (s.clone(), lease.clone())))
            .collect();
        for chunk in pairs.chunks(RENEW_BATCH) {
            let mut invocation = self.renew.prepare_invoke();
            invocation.arg(millis(self.lease_ttl));
            for (slots, lease) in chunk {
                invocation.key(slots).arg(lease);
            }
            let mut conn = self.conn.clone();
            bounded::<i64>(self.timeout, "renew", invocation.invoke_async(&mut conn)).await?;
        }
        Ok(())
    }

    async fn spend(&self, bucket: &str) -> Result<(Nanos, Nanos), BackendError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key("spend", bucket))
            .arg("spent")
            .arg("reserved");
        let (spent, reserved): (Option<Nanos>, Option<Nanos>) =
            bounded(self.timeout, "spend", cmd.query_async(&mut conn)).await?;
        Ok((spent.unwrap_or(0), reserved.unwrap_or(0)))
    }
}

/// The verdicts of the admission script's reply.
fn parse_outcome(checks: &[Check], values: &[String]) -> Result<Outcome, BackendError> {
    if values.len() != checks.len() * 4 {
        return Err(BackendError(format!(
            "redis admit: {} values for {} checks",
            values.len(),
            checks.len()
        )));
    }
    let number = |s: &String| {
        s.parse::<f64>()
            .map_err(|_| BackendError(format!("redis admit: `{s}` is not a number")))
    };
    let verdicts = checks
        .iter()
        .zip(values.chunks_exact(4))
        .map(|(check, fields)| {
            let [refused, remaining, reset, retry] = fields else {
                return Err(BackendError("redis admit: short reply".to_owned()));
            };
            let retry = number(retry)?;
            Ok(Verdict {
                limit: match check {
                    Check::Requests { per_minute, .. } | Check::Tokens { per_minute, .. } => {
                        *per_minute
                    }
                    Check::Concurrency { max, .. } => *max,
                    Check::Budget { limit, .. } => u64::try_from(*limit).unwrap_or(0),
                },
                remaining: floor_count(number(remaining)?),
                reset: duration_ms(number(reset)?),
                refused: refused == "1",
                retry_after: (retry >= 0.0).then(|| duration_ms(retry)),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Outcome { verdicts })
}

impl Limiter for RedisLimiter {
    fn admit<'a>(
        &'a self,
        checks: &'a [Check],
        lease: &'a str,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        Box::pin(self.inner.admit(checks, lease))
    }

    /// Settles; on failure the settlement is also queued and retried by the maintenance task.
    fn settle<'a>(
        &'a self,
        items: &'a [Settle],
        lease: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.inner.settle(items, lease))
    }

    fn spend<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<(Nanos, Nanos), BackendError>> {
        Box::pin(self.inner.spend(bucket))
    }
}

// === Fail-over ===

/// Whether Redis is thought to answer.
#[derive(Debug, Clone, Copy)]
enum Health {
    Up,
    /// Failed; tried again (by one call) from `next_try` on.
    Down {
        next_try: Instant,
    },
}

/// [`RedisLimiter`] with the `on_redis_error` policy.
///
/// When Redis fails (an error or a timeout), `sluice_state_backend_up` drops to 0 and the policy
/// answers: `fail-open` lets this process's [`MemoryLimiter`] decide (counted in
/// `sluice_state_fallback_admissions_total`), `fail-closed` returns the error (the caller answers 503).
/// After a failure, Redis is tried again by one call per retry interval (1 s), so that requests do not
/// each wait for a timeout while it is down; the others meanwhile get the policy's answer directly.
/// When Redis answers again, `backend_up` is back to 1.
///
/// A call admitted locally is settled locally. Settlements of calls admitted by Redis that come while
/// it is down are queued in the [`RedisLimiter`] and retried.
///
/// Errors are counted in `sluice_state_backend_errors_total` here only when they are absorbed
/// (fail-open admissions); errors returned are counted by the caller (`Control::admit` and the
/// settlement), so that none counts twice.
pub struct Failover {
    primary: RedisLimiter,
    local: MemoryLimiter,
    policy: FailurePolicy,
    metrics: ControlMetrics,
    retry_interval: Duration,
    health: Mutex<Health>,
    /// Leases admitted by `local`, to be settled there.
    local_leases: Mutex<HashSet<String>>,
}

impl Failover {
    /// Wraps `primary`; `local` decides while it fails under [`FailurePolicy::FailOpen`]. Sets
    /// `backend_up` to 1.
    pub fn new(
        primary: RedisLimiter,
        local: MemoryLimiter,
        policy: FailurePolicy,
        metrics: ControlMetrics,
    ) -> Self {
        metrics.backend_up.set(1);
        Self {
            primary,
            local,
            policy,
            metrics,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            health: Mutex::new(Health::Up),
            local_leases: Mutex::default(),
        }
    }

    /// Sets how long to wait after a failure before trying Redis again ([`DEFAULT_RETRY_INTERVAL`]).
    #[must_use]
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// The shared limiter.
    pub fn primary(&self) -> &RedisLimiter {
        &self.primary
    }

    /// The local limiter.
    pub fn local(&self) -> &MemoryLimiter {
        &self.local
    }

    /// Whether this call should try Redis: always while it is up; while it is down, one call per
    /// retry interval (the first to come claims the attempt).
    fn should_try(&self) -> bool {
        let mut health = lock(&self.health);
        match *health {
            Health::Up => true,
            Health::Down { next_try } => {
                let now = Instant::now();
                if now >= next_try {
                    *health = Health::Down {
                        next_try: now + self.retry_interval,
                    };
                    true
                } else {
                    false
                }
            }
        }
    }

    fn mark_up(&self) {
        let was_down = matches!(
            std::mem::replace(&mut *lock(&self.health), Health::Up),
            Health::Down { .. }
        );
        if was_down {
            self.metrics.backend_up.set(1);
            tracing::info!("state backend (Redis) answers again");
        }
    }

    fn mark_down(&self, error: &BackendError) {
        let was_up = matches!(
            std::mem::replace(
                &mut *lock(&self.health),
                Health::Down {
                    next_try: Instant::now() + self.retry_interval,
                }
            ),
            Health::Up
        );
        self.metrics.backend_up.set(0);
        if was_up {
            tracing::warn!(
                error = %error,
                policy = ?self.policy,
                "state backend (Redis) unavailable"
            );
        }
    }

    fn unavailable() -> BackendError {
        BackendError("state backend (Redis) unavailable; retrying shortly".to_owned())
    }

    async fn admit_call(&self, checks: &[Check], lease: &str) -> Result<Outcome, BackendError> {
        let error = if self.should_try() {
            match self.primary.admit(checks, lease).await {
                Ok(outcome) => {
                    self.mark_up();
                    return Ok(outcome);
                }
                Err(e) => {
                    self.mark_down(&e);
                    Some(e)
                }
            }
        } else {
            None
        };
        match self.policy {
            FailurePolicy::FailClosed => Err(error.unwrap_or_else(Self::unavailable)),
            FailurePolicy::FailOpen => {
                if error.is_some() {
                    self.metrics
                        .backend_errors
                        .get_or_create(&BackendLabels { op: "admit" })
                        .inc();
                }
                let outcome = self.local.admit_now(checks);
                if outcome.admitted() {
                    self.metrics.fallback_admissions.inc();
                    lock(&self.local_leases).insert(lease.to_owned());
                }
                Ok(outcome)
            }
        }
    }

    async fn settle_call(&self, items: &[Settle], lease: &str) -> Result<(), BackendError> {
        if lock(&self.local_leases).remove(lease) {
            self.local.settle_now(items);
            return Ok(());
        }
        if !self.should_try() {
            self.primary.defer_settle(items, lease);
            return Ok(());
        }
        match self.primary.settle(items, lease).await {
            Ok(()) => {
                self.mark_up();
                Ok(())
            }
            Err(e) => {
                self.mark_down(&e);
                Err(e)
            }
        }
    }

    async fn read_spend(&self, bucket: &str) -> Result<(Nanos, Nanos), BackendError> {
        if !self.should_try() {
            return Err(Self::unavailable());
        }
        match self.primary.spend(bucket).await {
            Ok(spend) => {
                self.mark_up();
                Ok(spend)
            }
            Err(e) => {
                self.mark_down(&e);
                Err(e)
            }
        }
    }
}

impl Limiter for Failover {
    fn admit<'a>(
        &'a self,
        checks: &'a [Check],
        lease: &'a str,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        Box::pin(self.admit_call(checks, lease))
    }

    fn settle<'a>(
        &'a self,
        items: &'a [Settle],
        lease: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.settle_call(items, lease))
    }

    fn spend<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<(Nanos, Nanos), BackendError>> {
        Box::pin(self.read_spend(bucket))
    }
}

// === Key store ===

/// A key as stored: [`VirtualKey`] does not serialize its hash (the API must never show it), so it is
/// kept next to it.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    key: VirtualKey,
    hash: String,
}

/// Virtual keys in Redis: JSON in the hash `{prefix}keys` (field: key id), and `{prefix}keys:version`
/// incremented in the same transaction as every write.
#[derive(Clone)]
pub struct RedisKeyStore {
    conn: ConnectionManager,
    keys: String,
    version: String,
    timeout: Duration,
}

impl RedisKeyStore {
    /// A store on `conn`, under `config.redis_prefix`, bounded by `config.redis_timeout`.
    pub fn new(conn: ConnectionManager, config: &StateConfig) -> Self {
        Self {
            conn,
            keys: format!("{}keys", config.redis_prefix),
            version: format!("{}keys:version", config.redis_prefix),
            timeout: config.redis_timeout,
        }
    }

    fn decode(id: &str, json: &str) -> Result<VirtualKey, BackendError> {
        let stored: StoredKey = serde_json::from_str(json)
            .map_err(|e| BackendError(format!("stored key {id} is not valid: {e}")))?;
        Ok(VirtualKey {
            hash: stored.hash,
            ..stored.key
        })
    }
}

impl KeyStore for RedisKeyStore {
    fn put<'a>(&'a self, key: &'a VirtualKey) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&StoredKey {
                key: key.clone(),
                hash: key.hash.clone(),
            })
            .map_err(|e| BackendError(format!("encoding key {}: {e}", key.id)))?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(&self.keys)
                .arg(&key.id)
                .arg(json)
                .ignore()
                .cmd("INCR")
                .arg(&self.version)
                .ignore();
            let mut conn = self.conn.clone();
            bounded::<()>(self.timeout, "keys", pipe.query_async(&mut conn)).await
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VirtualKey>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HGET");
            cmd.arg(&self.keys).arg(id);
            let json: Option<String> =
                bounded(self.timeout, "keys", cmd.query_async(&mut conn)).await?;
            json.map(|json| Self::decode(id, &json)).transpose()
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VirtualKey>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&self.keys);
            let all: HashMap<String, String> =
                bounded(self.timeout, "keys", cmd.query_async(&mut conn)).await?;
            let mut keys = all
                .iter()
                .map(|(id, json)| Self::decode(id, json))
                .collect::<Result<Vec<_>, _>>()?;
            keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            Ok(keys)
        })
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(&self.version);
            let version: Option<u64> =
                bounded(self.timeout, "keys", cmd.query_async(&mut conn)).await?;
            Ok(version.unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prometheus_client::metrics::counter::Counter;

    use super::*;
    use crate::testkit::redis::RedisServer;

    // === Helpers ===

    /// A private server, or `None` (the test skips itself) when `redis-server` is not installed.
    async fn server() -> Option<RedisServer> {
        RedisServer::start_or_skip()
            .await
            .expect("starting redis-server")
    }

    fn config(server: &RedisServer, timeout: Duration) -> StateConfig {
        StateConfig {
            redis_url: server.url(),
            redis_prefix: "test:".to_owned(),
            redis_timeout: timeout,
            ..StateConfig::default()
        }
    }

    /// A limiter on its own connection (as another replica would have), its maintenance task stopped
    /// by `shutdown`.
    fn limiter_with(
        config: &StateConfig,
        lease_ttl: Duration,
        shutdown: CancellationToken,
    ) -> RedisLimiter {
        let conn = connection(config).expect("connection");
        RedisLimiter::new(conn, config, lease_ttl, &TaskTracker::new(), shutdown)
    }

    fn limiter(config: &StateConfig) -> RedisLimiter {
        limiter_with(config, LEASE_TTL, CancellationToken::new())
    }

    async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn requests(bucket: &str, per_minute: u64) -> Check {
        Check::Requests {
            bucket: Arc::from(bucket),
            per_minute,
        }
    }

    fn tokens(bucket: &str, per_minute: u64, reserve: u64) -> Check {
        Check::Tokens {
            bucket: Arc::from(bucket),
            per_minute,
            reserve,
        }
    }

    fn slots(bucket: &str, max: u64) -> Check {
        Check::Concurrency {
            bucket: Arc::from(bucket),
            max,
        }
    }

    const HOUR: Duration = Duration::from_hours(1);

    fn budget(bucket: &str, limit: Nanos, reserve: Nanos) -> Check {
        Check::Budget {
            bucket: Arc::from(bucket),
            limit,
            reserve,
            ttl: HOUR,
        }
    }

    fn settle_tokens(bucket: &str, per_minute: u64, reserved: u64, used: u64) -> Settle {
        Settle::Tokens {
            bucket: Arc::from(bucket),
            per_minute,
            reserved,
            used,
        }
    }

    fn release(bucket: &str) -> Settle {
        Settle::Concurrency {
            bucket: Arc::from(bucket),
        }
    }

    fn settle_budget(bucket: &str, reserved: Nanos, spent: Nanos) -> Settle {
        Settle::Budget {
            bucket: Arc::from(bucket),
            reserved,
            spent,
            ttl: HOUR,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn errors(metrics: &ControlMetrics, op: &'static str) -> u64 {
        metrics
            .backend_errors
            .get_or_create(&BackendLabels { op })
            .get()
    }

    fn fallbacks(metrics: &ControlMetrics) -> u64 {
        let counter: &Counter = &metrics.fallback_admissions;
        counter.get()
    }

    // === Conformance: the same scenarios on both backends ===

    /// What a scenario observed.
    #[derive(Debug, Clone, PartialEq)]
    enum Step {
        Admit(Outcome),
        Spend(Nanos, Nanos),
    }

    /// Runs calls against one backend and records every decision.
    struct Run<'a> {
        limiter: &'a dyn Limiter,
        steps: Vec<Step>,
    }

    impl<'a> Run<'a> {
        fn new(limiter: &'a dyn Limiter) -> Self {
            Self {
                limiter,
                steps: Vec::new(),
            }
        }

        async fn admit(&mut self, checks: &[Check], lease: &str) -> Outcome {
            let outcome = self.limiter.admit(checks, lease).await.expect("admit");
            self.steps.push(Step::Admit(outcome.clone()));
            outcome
        }

        async fn settle(&mut self, items: &[Settle], lease: &str) {
            self.limiter.settle(items, lease).await.expect("settle");
        }

        async fn spend(&mut self, bucket: &str) -> (Nanos, Nanos) {
            let (spent, reserved) = self.limiter.spend(bucket).await.expect("spend");
            self.steps.push(Step::Spend(spent, reserved));
            (spent, reserved)
        }
    }

    /// Asserts a verdict: admitted or not, remaining, and reset/retry within 1 s of the expectation.
    #[track_caller]
    fn verdict(
        outcome: &Outcome,
        index: usize,
        refused: bool,
        remaining: u64,
        reset: Duration,
        retry: Option<Duration>,
    ) {
        let v = outcome.verdicts[index];
        assert_eq!(v.refused, refused, "refused, in {outcome:?}");
        assert_eq!(v.remaining, remaining, "remaining, in {outcome:?}");
        assert!(
            v.reset.abs_diff(reset) <= Duration::from_secs(1),
            "reset {:?}, expected about {reset:?}",
            v.reset
        );
        match (v.retry_after, retry) {
            (None, None) => {}
            (Some(got), Some(want)) => assert!(
                got.abs_diff(want) <= Duration::from_secs(1),
                "retry after {got:?}, expected about {want:?}"
            ),
            (got, want) => panic!("retry after {got:?}, expected {want:?}"),
        }
    }

    /// rpm = 3: a burst of 3, then one every 20 s.
    async fn rpm_boundary(limiter: &dyn Limiter) -> Vec<Step> {
        let mut run = Run::new(limiter);
        let checks = [requests("k:a:rpm", 3)];
        for (i, (remaining, reset)) in [(2, 20.0), (1, 40.0), (0, 60.0)].into_iter().enumerate() {
            let o = run.admit(&checks, &format!("l{i}")).await;
            assert_eq!(o.verdicts[0].limit, 3);
            verdict(&o, 0, false, remaining, secs(reset), None);
        }
        let o = run.admit(&checks, "l3").await;
        verdict(&o, 0, true, 0, secs(60.0), Some(secs(20.0)));
        assert!(!o.admitted());
        run.steps
    }

    /// tpm = 60 (one token a second): reservation, refusal, refund, debt, a cost above the capacity,
    /// and debt on a bucket that does not exist.
    async fn tpm_reserve_refund_debt(limiter: &dyn Limiter) -> Vec<Step> {
        let mut run = Run::new(limiter);
        let bucket = "k:a:tpm";
        let o = run.admit(&[tokens(bucket, 60, 40)], "t1").await;
        verdict(&o, 0, false, 20, secs(40.0), None);
        let o = run.admit(&[tokens(bucket, 60, 30)], "t2").await;
        verdict(&o, 0, true, 20, secs(40.0), Some(secs(10.0)));
        // 40 reserved, 10 used: 30 come back.
        run.settle(&[settle_tokens(bucket, 60, 40, 10)], "t1").await;
        let o = run.admit(&[tokens(bucket, 60, 30)], "t3").await;
        verdict(&o, 0, false, 20, secs(40.0), None);
        // 30 reserved, 70 used: 40 of debt, the bucket is 20 s past full.
        run.settle(&[settle_tokens(bucket, 60, 30, 70)], "t3").await;
        let o = run.admit(&[tokens(bucket, 60, 1)], "t4").await;
        verdict(&o, 0, true, 0, secs(80.0), Some(secs(21.0)));
        // More than the whole capacity can never pass.
        let o = run.admit(&[tokens("k:b:tpm", 60, 61)], "t5").await;
        verdict(&o, 0, true, 60, secs(0.0), None);
        // Debt on a bucket that was never used creates it.
        let o = run.admit(&[slots("k:c:concurrency", 5)], "t6").await;
        verdict(&o, 0, false, 4, secs(0.0), None);
        run.settle(
            &[
                settle_tokens("k:c:tpm", 60, 0, 5),
                release("k:c:concurrency"),
            ],
            "t6",
        )
        .await;
        let o = run.admit(&[tokens("k:c:tpm", 60, 56)], "t7").await;
        verdict(&o, 0, true, 55, secs(5.0), Some(secs(1.0)));
        let o = run.admit(&[tokens("k:c:tpm", 60, 55)], "t8").await;
        verdict(&o, 0, false, 0, secs(60.0), None);
        run.steps
    }

    /// At most 2 in flight; a slot comes back when its call is settled.
    async fn concurrency_max_two(limiter: &dyn Limiter) -> Vec<Step> {
        let mut run = Run::new(limiter);
        let c = [slots("k:a:concurrency", 2)];
        let o = run.admit(&c, "c1").await;
        verdict(&o, 0, false, 1, Duration::ZERO, None);
        let o = run.admit(&c, "c2").await;
        verdict(&o, 0, false, 0, Duration::ZERO, None);
        let o = run.admit(&c, "c3").await;
        verdict(&o, 0, true, 0, Duration::ZERO, Some(secs(1.0)));
        run.settle(&[release("k:a:concurrency")], "c1").await;
        let o = run.admit(&c, "c4").await;
        verdict(&o, 0, false, 0, Duration::ZERO, None);
        run.settle(&[release("k:a:concurrency")], "c2").await;
        run.settle(&[release("k:a:concurrency")], "c4").await;
        let o = run.admit(&c, "c5").await;
        verdict(&o, 0, false, 1, Duration::ZERO, None);
        run.steps
    }

    /// A budget of 100: refused exactly when spent + reserved + the estimate would pass it.
    async fn budget_refusal(limiter: &dyn Limiter) -> Vec<Step> {
        let mut run = Run::new(limiter);
        let b = "k:a:budget:2026-11";
        let o = run.admit(&[budget(b, 100, 40)], "b1").await;
        verdict(&o, 0, false, 60, Duration::ZERO, None);
        let o = run.admit(&[budget(b, 100, 40)], "b2").await;
        verdict(&o, 0, false, 20, Duration::ZERO, None);
        let o = run.admit(&[budget(b, 100, 30)], "b3").await;
        verdict(&o, 0, true, 20, Duration::ZERO, None);
        run.settle(&[settle_budget(b, 40, 10)], "b1").await;
        assert_eq!(run.spend(b).await, (10, 40));
        let o = run.admit(&[budget(b, 100, 30)], "b4").await;
        verdict(&o, 0, false, 20, Duration::ZERO, None);
        let o = run.admit(&[budget(b, 100, 21)], "b5").await;
        verdict(&o, 0, true, 20, Duration::ZERO, None);
        // Reaching the limit exactly is allowed.
        let o = run.admit(&[budget(b, 100, 20)], "b6").await;
        verdict(&o, 0, false, 0, Duration::ZERO, None);
        run.settle(&[settle_budget(b, 40, 50)], "b2").await;
        run.settle(&[settle_budget(b, 30, 40)], "b4").await;
        run.settle(&[settle_budget(b, 20, 0)], "b6").await;
        assert_eq!(run.spend(b).await, (100, 0));
        // Spent: even a free call is refused.
        let o = run.admit(&[budget(b, 100, 0)], "b7").await;
        verdict(&o, 0, true, 0, Duration::ZERO, None);
        run.steps
    }

    /// One refused check leaves no reservation in the others.
    async fn all_or_nothing(limiter: &dyn Limiter) -> Vec<Step> {
        let mut run = Run::new(limiter);
        let o = run.admit(&[slots("m:x:concurrency", 1)], "a0").await;
        assert!(o.admitted());
        let all = [
            requests("k:a:rpm", 10),
            tokens("k:a:tpm", 60, 10),
            budget("k:a:budget:total", 100, 10),
            slots("m:x:concurrency", 1),
        ];
        let o = run.admit(&all, "a1").await;
        assert!(!o.admitted());
        // The others would have passed; their verdicts say so, but nothing was reserved.
        verdict(&o, 0, false, 9, secs(6.0), None);
        verdict(&o, 1, false, 50, secs(10.0), None);
        verdict(&o, 2, false, 90, Duration::ZERO, None);
        verdict(&o, 3, true, 0, Duration::ZERO, Some(secs(1.0)));
        let o = run.admit(&[requests("k:a:rpm", 10)], "a2").await;
        verdict(&o, 0, false, 9, secs(6.0), None);
        let o = run.admit(&[tokens("k:a:tpm", 60, 10)], "a3").await;
        verdict(&o, 0, false, 50, secs(10.0), None);
        assert_eq!(run.spend("k:a:budget:total").await, (0, 0));
        run.settle(&[release("m:x:concurrency")], "a0").await;
        let o = run.admit(&all, "a4").await;
        assert!(o.admitted(), "{o:?}");
        verdict(&o, 0, false, 8, secs(12.0), None);
        verdict(&o, 1, false, 40, secs(20.0), None);
        verdict(&o, 2, false, 90, Duration::ZERO, None);
        verdict(&o, 3, false, 0, Duration::ZERO, None);
        run.steps
    }

    /// The decisions of both backends agree: the same admissions and remaining counts, resets and
    /// retry times within the time that passed differently between the runs.
    #[track_caller]
    fn assert_same(memory: &[Step], redis: &[Step]) {
        assert_eq!(memory.len(), redis.len());
        for (i, (m, r)) in memory.iter().zip(redis).enumerate() {
            match (m, r) {
                (Step::Admit(m), Step::Admit(r)) => {
                    assert_eq!(m.verdicts.len(), r.verdicts.len(), "step {i}");
                    for (mv, rv) in m.verdicts.iter().zip(&r.verdicts) {
                        let context = format!("step {i}: memory {mv:?}, redis {rv:?}");
                        assert_eq!(mv.limit, rv.limit, "{context}");
                        assert_eq!(mv.remaining, rv.remaining, "{context}");
                        assert_eq!(mv.refused, rv.refused, "{context}");
                        assert!(
                            mv.reset.abs_diff(rv.reset) < Duration::from_millis(500),
                            "{context}"
                        );
                        assert_eq!(
                            mv.retry_after.is_some(),
                            rv.retry_after.is_some(),
                            "{context}"
                        );
                        if let (Some(a), Some(b)) = (mv.retry_after, rv.retry_after) {
                            assert!(a.abs_diff(b) < Duration::from_millis(500), "{context}");
                        }
                    }
                }
                (m, r) => assert_eq!(m, r, "step {i}"),
            }
        }
    }

    /// Runs a scenario on a fresh [`MemoryLimiter`] and on a fresh private Redis, and compares.
    macro_rules! conformance {
        ($name:ident, $scenario:ident) => {
            #[tokio::test]
            async fn $name() {
                let memory = $scenario(&MemoryLimiter::new()).await;
                let Some(server) = server().await else { return };
                let redis = limiter(&config(&server, Duration::from_secs(2)));
                let shared = $scenario(&redis).await;
                assert_same(&memory, &shared);
            }
        };
    }

    conformance!(conformance_rpm_boundary, rpm_boundary);
    conformance!(conformance_tpm_reserve_refund_debt, tpm_reserve_refund_debt);
    conformance!(conformance_concurrency_max_two, concurrency_max_two);
    conformance!(conformance_budget_refusal, budget_refusal);
    conformance!(conformance_all_or_nothing, all_or_nothing);

    // === Redis only ===

    /// Two replicas (two connections) racing 50 calls against rpm = 10: exactly 10 pass.
    #[tokio::test]
    async fn concurrent_admits_across_replicas_are_exact() {
        let Some(server) = server().await else { return };
        let config = config(&server, Duration::from_secs(5));
        let replicas = [limiter(&config), limiter(&config)];
        let checks = [requests("k:race:rpm", 10)];
        let admitted = AtomicUsize::new(0);
        let calls = (0..50).map(|i| {
            let replica = &replicas[i % 2];
            let checks = &checks;
            let admitted = &admitted;
            async move {
                let outcome = replica.admit(checks, &format!("r{i}")).await.unwrap();
                if outcome.admitted() {
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        futures_util::future::join_all(calls).await;
        assert_eq!(admitted.load(Ordering::SeqCst), 10);
    }

    /// Every key is under the prefix, and every key expires.
    #[tokio::test]
    async fn keys_are_prefixed_and_expire() {
        let Some(server) = server().await else { return };
        let limiter = limiter(&config(&server, Duration::from_secs(2)));
        let checks = [
            requests("k:a:rpm", 10),
            tokens("k:a:tpm", 60, 5),
            slots("k:a:concurrency", 2),
            budget("k:a:budget:total", 100, 10),
        ];
        assert!(limiter.admit(&checks, "L").await.unwrap().admitted());
        let mut admin = admin(&server).await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut admin)
            .await
            .unwrap();
        keys.sort();
        assert_eq!(
            keys,
            [
                "test:lease:L",
                "test:rate:k:a:rpm",
                "test:rate:k:a:tpm",
                "test:slots:k:a:concurrency",
                "test:spend:k:a:budget:total",
            ]
        );
        for (key, at_most) in [
            ("test:rate:k:a:rpm", 6_000 + 60_000),
            ("test:rate:k:a:tpm", 5_000 + 60_000),
            ("test:slots:k:a:concurrency", 30_000),
            ("test:spend:k:a:budget:total", 3_600_000),
            ("test:lease:L", 24 * 3_600_000),
        ] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut admin)
                .await
                .unwrap();
            assert!(ttl > at_most - 10_000 && ttl <= at_most, "{key}: {ttl} ms");
        }
        limiter
            .settle(
                &[
                    settle_tokens("k:a:tpm", 60, 5, 5),
                    release("k:a:concurrency"),
                    settle_budget("k:a:budget:total", 10, 7),
                ],
                "L",
            )
            .await
            .unwrap();
        let gone: i64 = redis::cmd("EXISTS")
            .arg("test:lease:L")
            .arg("test:slots:k:a:concurrency")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(gone, 0, "the marker and the emptied slot set are gone");
        assert_eq!(limiter.spend("k:a:budget:total").await.unwrap(), (7, 0));
    }

    /// Pauses writes (scripts included) on the server, so that the next script call times out.
    async fn pause(admin: &mut redis::aio::MultiplexedConnection) {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(30_000)
            .arg("WRITE")
            .exec_async(admin)
            .await
            .unwrap();
    }

    async fn unpause(admin: &mut redis::aio::MultiplexedConnection) {
        redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .exec_async(admin)
            .await
            .unwrap();
    }

    /// A settlement that timed out is queued and applied by the retry, exactly once whether Redis ran
    /// the first attempt or not.
    #[tokio::test]
    async fn lost_settlement_is_retried_exactly_once() {
        let Some(server) = server().await else { return };
        let limiter = limiter(&config(&server, Duration::from_millis(500)));
        let mut admin = admin(&server).await;
        let b = "k:a:budget:total";
        assert!(
            limiter
                .admit(&[budget(b, 100, 40)], "L")
                .await
                .unwrap()
                .admitted()
        );
        pause(&mut admin).await;
        let settled = limiter.settle(&[settle_budget(b, 40, 10)], "L").await;
        assert!(settled.is_err(), "{settled:?}");
        assert_eq!(limiter.unsettled(), 1);
        unpause(&mut admin).await;
        // (The client dropped the connection whose answer timed out, so Redis discarded the call.)
        assert_eq!(limiter.retry_unsettled().await, 0);
        assert_eq!(limiter.spend(b).await.unwrap(), (10, 0));

        // A settlement Redis did run, then retried because its answer was lost, counts once.
        assert!(
            limiter
                .admit(&[budget(b, 100, 30)], "M")
                .await
                .unwrap()
                .admitted()
        );
        let items = [settle_budget(b, 30, 5)];
        limiter.settle(&items, "M").await.unwrap();
        limiter.defer_settle(&items, "M");
        assert_eq!(limiter.retry_unsettled().await, 0);
        assert_eq!(limiter.spend(b).await.unwrap(), (15, 0), "counted once");
    }

    /// An admission that timed out is compensated if, and only if, Redis ran it.
    #[tokio::test]
    async fn lost_admission_is_compensated() {
        let Some(server) = server().await else { return };
        let limiter = limiter(&config(&server, Duration::from_millis(500)));
        let mut admin = admin(&server).await;
        let b = "k:a:budget:total";
        let checks = [budget(b, 100, 40), slots("k:a:concurrency", 1)];
        pause(&mut admin).await;
        assert!(limiter.admit(&checks, "L").await.is_err());
        assert_eq!(limiter.unsettled(), 1, "a compensation is queued");
        unpause(&mut admin).await;
        assert_eq!(limiter.retry_unsettled().await, 0);
        assert_eq!(limiter.spend(b).await.unwrap(), (0, 0));

        // An admission Redis ran but whose answer was lost: the compensation gives everything back.
        assert!(limiter.admit(&checks, "M").await.unwrap().admitted());
        assert_eq!(limiter.spend(b).await.unwrap(), (0, 40));
        limiter.inner.compensate(&checks, "M");
        assert_eq!(limiter.retry_unsettled().await, 0);
        assert_eq!(limiter.spend(b).await.unwrap(), (0, 0));
        // Once: a second compensation of the same call takes nothing from the next one.
        assert!(limiter.admit(&checks, "N").await.unwrap().admitted());
        limiter.inner.compensate(&checks, "M");
        assert_eq!(limiter.retry_unsettled().await, 0);
        assert_eq!(limiter.spend(b).await.unwrap(), (0, 40));
        assert!(
            !limiter.admit(&checks, "O").await.unwrap().admitted(),
            "N holds the slot"
        );
    }

    /// A held lease outlives its TTL while its replica renews it, and is freed within a TTL once the
    /// replica stops (as when it dies).
    #[tokio::test]
    async fn leases_are_renewed_while_held_and_expire_after() {
        let Some(server) = server().await else { return };
        let config = config(&server, Duration::from_secs(2));
        let ttl = Duration::from_secs(1);
        let stop_a = CancellationToken::new();
        let a = limiter_with(&config, ttl, stop_a.clone());
        let b = limiter_with(&config, ttl, CancellationToken::new());
        let c = [slots("k:a:concurrency", 1)];
        assert!(a.admit(&c, "held").await.unwrap().admitted());
        // Not synchronisation: the lease's TTL must pass (twice over) for renewal to matter.
        tokio::time::sleep(ttl * 5 / 2).await;
        assert!(!b.admit(&c, "other").await.unwrap().admitted(), "renewed");
        stop_a.cancel();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if b.admit(&c, "other").await.unwrap().admitted() {
                break;
            }
            assert!(Instant::now() < deadline, "the lease never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // === Fail-over ===

    /// Calls until Redis decides again (`backend_up` back to 1), within a deadline.
    async fn until_up(failover: &Failover, metrics: &ControlMetrics) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = [requests("probe:rpm", 1_000_000)];
        while metrics.backend_up.get() != 1 {
            let _ = failover.admit(&probe, "probe").await;
            assert!(Instant::now() < deadline, "Redis never came back");
            // Polling for the reconnection: the connection manager reconnects in the background.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn fail_open_answers_from_local_limits_and_backs_off() {
        let Some(mut server) = server().await else {
            return;
        };
        let metrics = ControlMetrics::default();
        let failover = Failover::new(
            limiter(&config(&server, Duration::from_secs(2))),
            MemoryLimiter::new(),
            FailurePolicy::FailOpen,
            metrics.clone(),
        )
        .with_retry_interval(HOUR);
        let rpm = [requests("k:a:rpm", 2)];
        let o = failover.admit(&rpm, "l1").await.unwrap();
        verdict(&o, 0, false, 1, secs(30.0), None);
        assert_eq!(metrics.backend_up.get(), 1);

        server.stop();
        // Redis fails: the local limiter, which has seen nothing yet, decides.
        let o = failover.admit(&rpm, "l2").await.unwrap();
        verdict(&o, 0, false, 1, secs(30.0), None);
        assert_eq!(metrics.backend_up.get(), 0);
        assert_eq!(errors(&metrics, "admit"), 1);
        assert_eq!(fallbacks(&metrics), 1);
        // Within the retry interval Redis is not tried (no error counted), local limits hold.
        let o = failover.admit(&rpm, "l3").await.unwrap();
        verdict(&o, 0, false, 0, secs(60.0), None);
        let o = failover.admit(&rpm, "l4").await.unwrap();
        assert!(!o.admitted());
        assert_eq!(errors(&metrics, "admit"), 1);
        assert_eq!(fallbacks(&metrics), 2);
        // A call admitted locally is settled locally.
        let c = [slots("k:a:concurrency", 1)];
        assert!(failover.admit(&c, "local").await.unwrap().admitted());
        assert!(!failover.local().admit_now(&c).admitted());
        failover
            .settle(&[release("k:a:concurrency")], "local")
            .await
            .unwrap();
        assert!(failover.local().admit_now(&c).admitted());
        assert_eq!(failover.primary().unsettled(), 0);
    }

    #[tokio::test]
    async fn fail_open_returns_to_redis_when_it_is_back() {
        let Some(mut server) = server().await else {
            return;
        };
        let metrics = ControlMetrics::default();
        let failover = Failover::new(
            limiter(&config(&server, Duration::from_secs(2))),
            MemoryLimiter::new(),
            FailurePolicy::FailOpen,
            metrics.clone(),
        )
        .with_retry_interval(Duration::from_millis(50));
        let c = [slots("k:a:concurrency", 1)];
        assert!(failover.admit(&c, "redis-1").await.unwrap().admitted());
        server.stop();
        assert!(failover.admit(&c, "local-1").await.unwrap().admitted());
        assert_eq!(metrics.backend_up.get(), 0);
        assert_eq!(fallbacks(&metrics), 1);

        server.restart().await.unwrap();
        until_up(&failover, &metrics).await;
        let local_admissions = fallbacks(&metrics);
        // Redis (restarted empty) decides again: the slot held locally does not count there.
        assert!(failover.admit(&c, "redis-2").await.unwrap().admitted());
        assert!(!failover.admit(&c, "redis-3").await.unwrap().admitted());
        assert_eq!(fallbacks(&metrics), local_admissions);
        // The local call is settled locally, the Redis one in Redis.
        failover
            .settle(&[release("k:a:concurrency")], "local-1")
            .await
            .unwrap();
        assert!(failover.local().admit_now(&c).admitted());
        failover
            .settle(&[release("k:a:concurrency")], "redis-2")
            .await
            .unwrap();
        assert!(failover.admit(&c, "redis-4").await.unwrap().admitted());
        assert_eq!(metrics.backend_up.get(), 1);
    }

    #[tokio::test]
    async fn fail_closed_returns_errors_until_redis_is_back() {
        let Some(mut server) = server().await else {
            return;
        };
        let metrics = ControlMetrics::default();
        let failover = Failover::new(
            limiter(&config(&server, Duration::from_secs(2))),
            MemoryLimiter::new(),
            FailurePolicy::FailClosed,
            metrics.clone(),
        )
        .with_retry_interval(Duration::from_millis(50));
        let rpm = [requests("k:a:rpm", 2)];
        assert!(failover.admit(&rpm, "l1").await.unwrap().admitted());
        server.stop();
        assert!(failover.admit(&rpm, "l2").await.is_err());
        assert!(failover.admit(&rpm, "l3").await.is_err());
        assert_eq!(metrics.backend_up.get(), 0);
        assert_eq!(fallbacks(&metrics), 0);
        // Returned errors are counted by the caller (`Control::admit`), not twice here.
        assert_eq!(errors(&metrics, "admit"), 0);

        server.restart().await.unwrap();
        until_up(&failover, &metrics).await;
        let o = failover.admit(&rpm, "l4").await.unwrap();
        verdict(&o, 0, false, 1, secs(30.0), None);
    }

    // === Key store ===

    fn key(id: &str, created_at: i64) -> VirtualKey {
        VirtualKey {
            id: id.to_owned(),
            name: format!("name of {id}"),
            prefix: "sk-sluice-AbCd".to_owned(),
            hash: "ab".repeat(32),
            models: vec!["gpt-4o".to_owned()],
            limits: crate::control::keys::Limits {
                rpm: Some(10),
                tpm: None,
                max_concurrent: Some(2),
            },
            budget: None,
            expires_at: None,
            revoked_at: None,
            metadata: std::collections::BTreeMap::new(),
            cache: None,
            created_at,
            source: "api".to_owned(),
        }
    }

    #[tokio::test]
    async fn key_store_round_trip_and_version() {
        let Some(server) = server().await else { return };
        let config = config(&server, Duration::from_secs(2));
        let a = RedisKeyStore::new(connection(&config).unwrap(), &config);
        let b = RedisKeyStore::new(connection(&config).unwrap(), &config);
        assert_eq!(a.version().await.unwrap(), 0);
        assert!(a.get("key_1").await.unwrap().is_none());

        let k1 = key("key_1", 2_000);
        a.put(&k1).await.unwrap();
        assert_eq!(
            a.get("key_1").await.unwrap(),
            Some(k1.clone()),
            "hash included"
        );
        let seen = b.version().await.unwrap();
        assert_eq!(seen, 1);
        assert_eq!(b.get("key_1").await.unwrap(), Some(k1.clone()));

        // Another replica adds an older key and revokes the first.
        let k0 = key("key_0", 1_000);
        b.put(&k0).await.unwrap();
        let revoked = VirtualKey {
            revoked_at: Some(3_000),
            ..k1
        };
        b.put(&revoked).await.unwrap();
        assert_ne!(a.version().await.unwrap(), seen);
        assert_eq!(a.version().await.unwrap(), 3);
        assert_eq!(a.list().await.unwrap(), vec![k0, revoked]);
    }

    #[tokio::test]
    async fn connect_reads_the_password_from_the_environment() {
        // Tests cannot set environment variables (`set_var` is unsafe): use one that
        // `.cargo/config.toml` sets for every test process.
        const VAR: &str = "SLUICE_TEST_UPSTREAM_KEY";
        let Ok(password) = std::env::var(VAR) else {
            eprintln!("SKIPPED: {VAR} is not set (run through cargo)");
            return;
        };
        let Some(server) = server().await else { return };
        let mut admin = admin(&server).await;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(&password)
            .exec_async(&mut admin)
            .await
            .unwrap();
        let tasks = TaskTracker::new();
        let mut config = config(&server, Duration::from_secs(2));

        config.redis_password_env = Some("SLUICE_TEST_REDIS_PASSWORD_NOT_SET".to_owned());
        let Err(e) = connect(&config, &tasks, CancellationToken::new()).await else {
            panic!("connected although the password variable is not set");
        };
        assert!(e.0.contains("SLUICE_TEST_REDIS_PASSWORD_NOT_SET"), "{e}");

        config.redis_password_env = Some(VAR.to_owned());
        let (limiter, store) = connect(&config, &tasks, CancellationToken::new())
            .await
            .expect("connects with the password");
        assert!(
            limiter
                .admit(&[requests("x", 1)], "l")
                .await
                .unwrap()
                .admitted()
        );
        assert_eq!(store.version().await.unwrap(), 0);

        config.redis_password_env = None;
        let Err(e) = connect(&config, &tasks, CancellationToken::new()).await else {
            panic!("connected without the password");
        };
        assert!(!e.0.contains(&password), "{e}");
    }
}
