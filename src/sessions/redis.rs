//! Sessions in Redis ([`RedisSessionStore`]), shared by every gateway replica that uses the same Redis
//! and prefix.
//!
//! **Keys** (under the prefix, `sluice:` by default; each kind has its own fixed part followed by the
//! free-form rest, so no id or owner can make two kinds collide):
//!
//! - `sess:rec:{id}`, a hash: `owner`; `body`, the session's JSON as created, without turns (its
//!   immutable part: id, object, owner, model, system, created_at); the mutable fields on their own
//!   (`metadata` as JSON, `updated_at`, `expires_at` and `ttl_ms` when set); and the totals (`turns`,
//!   `messages`, `bytes`, `input_tokens`, `output_tokens`, `cost_usd`), which the append script updates
//!   in place with `HINCRBY` and a decimal addition. Reads put the session back together.
//! - `sess:turns:{id}`, a list of the turns' JSON, oldest first.
//! - `sess:lock:{id}`, the turn lock's token (`SET NX PX`), released by a compare-and-delete script.
//! - `sess:owner:{owner}`, a sorted set of the owner's session ids scored by `created_at`, for
//!   [`SessionStore::list`] and [`SessionStore::count`]. Ids whose record is gone (deleted by Redis at
//!   its expiry) are removed lazily when a listing or count comes across them.
//! - `sess:expiry`, a sorted set of every session id scored by `expires_at` (`+inf`: never), kept in
//!   step by every write: [`SessionStore::active`] is one `ZCOUNT`, and
//!   [`SessionStore::purge_expired`] finds what to delete with one range.
//!
//! The record and turns keys expire in Redis at `expires_at` (`PEXPIREAT`, on Redis's clock), so an
//! abandoned session frees its memory even if nobody purges; reads also check `expires_at` against
//! the caller's `now_ms`, so a session is invisible from its expiry on whichever clock comes first.
//!
//! **Atomic appends.** One Lua script checks that the session exists, has not expired and holds
//! exactly `turn.index` turns (`LLEN`), then pushes the turn, adds to the totals, stamps `updated_at`
//! and moves the expiry of the record, the turns and the `sess:expiry` entry. Nothing is read into
//! Rust and written back, so two replicas appending the same index cannot both succeed. The cost total
//! is a decimal string added digit by digit in Lua: exact at any scale (prices per million tokens give
//! costs like `0.0000000375`, which integer nano-USD would round), and never a float.
//!
//! **Precision of [`SessionStore::active`] and [`SessionStore::count`].** `active` counts the entries of
//! `sess:expiry` not expired at `now_ms`: exact as long as Redis does not evict keys
//! (`maxmemory-policy noeviction`, as the rest of the Redis backend requires). `count` reads the
//! record of each of the owner's sessions (one pipelined round trip per 500), so it costs in proportion
//! to the owner's sessions and is not a snapshot under concurrent writes.
//!
//! Like the rest of the Redis backend this needs a single Redis (or a primary with replicas), not
//! Redis Cluster: scripts touch keys of several sessions' slots. Every operation is bounded by the
//! store's timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::model::{Session, Totals, Turn, parse_cost};
use super::store::{Page, SessionStore, StoreError};

// === Scripts ===

/// Adds two non-negative decimal strings exactly (`12.5` + `0.75` = `13.25`), normalised: no leading
/// zeros in the integer part, no trailing zeros in the fraction. `nil` when one is not a decimal.
const DEC_ADD_LUA: &str = r"
local function dec_add(a, b)
  if a == '' then a = '0' end
  local ai, af = string.match(a, '^(%d+)%.?(%d*)$')
  local bi, bf = string.match(b, '^(%d+)%.?(%d*)$')
  if not ai or not bi then return nil end
  local fl = math.max(#af, #bf)
  af = af .. string.rep('0', fl - #af)
  bf = bf .. string.rep('0', fl - #bf)
  local il = math.max(#ai, #bi)
  local x = string.rep('0', il - #ai) .. ai .. af
  local y = string.rep('0', il - #bi) .. bi .. bf
  local out = {}
  local carry = 0
  for i = #x, 1, -1 do
    local d = string.byte(x, i) + string.byte(y, i) - 96 + carry
    if d >= 10 then d = d - 10; carry = 1 else carry = 0 end
    out[#out + 1] = string.char(48 + d)
  end
  local s = string.reverse(table.concat(out))
  if carry == 1 then s = '1' .. s end
  local int = string.gsub(string.sub(s, 1, #s - fl), '^0+', '')
  local frac = string.gsub(string.sub(s, #s - fl + 1), '0+$', '')
  if int == '' then int = '0' end
  if frac == '' then return int end
  return int .. '.' .. frac
end
";

/// Creation: refused (0) when the record exists; else writes the record, the turns, both indexes and
/// the expiry (1).
///
/// KEYS: record, turns, owner index, expiry index. ARGV: id, owner, body, metadata, created_at,
/// updated_at, expires_at (`''`: never), ttl_ms (`''`: none), then the totals (turns, messages, bytes,
/// input_tokens, output_tokens, cost_usd), then each turn's JSON.
const CREATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'body', ARGV[3], 'metadata', ARGV[4],
  'updated_at', ARGV[6], 'turns', ARGV[9], 'messages', ARGV[10], 'bytes', ARGV[11],
  'input_tokens', ARGV[12], 'output_tokens', ARGV[13], 'cost_usd', ARGV[14])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'ttl_ms', ARGV[8]) end
for i = 15, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[7])
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], ARGV[7])
  redis.call('PEXPIREAT', KEYS[2], ARGV[7])
else
  redis.call('ZADD', KEYS[4], '+inf', ARGV[1])
end
return 1
";

/// Append (after [`DEC_ADD_LUA`]): 0 when the session is missing, expired at `now` or does not hold
/// exactly `index` turns; else pushes the turn, adds to the totals, stamps `updated_at`, moves the
/// expiry to `now + ttl_ms` when the session has a ttl, and returns 1. Every check comes before the
/// first write, so a refused append changes nothing.
///
/// KEYS: record, turns, expiry index. ARGV: id, index, turn JSON, now, messages, bytes, input_tokens,
/// output_tokens, cost_usd.
const APPEND_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now = tonumber(ARGV[4])
local exp = redis.call('HGET', KEYS[1], 'expires_at')
if exp and tonumber(exp) <= now then return 0 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return 0 end
local cost = dec_add(redis.call('HGET', KEYS[1], 'cost_usd') or '0', ARGV[9])
if not cost then return redis.error_reply('the stored cost total is not a decimal') end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'turns', 1)
redis.call('HINCRBY', KEYS[1], 'messages', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'bytes', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[8])
redis.call('HSET', KEYS[1], 'cost_usd', cost, 'updated_at', ARGV[4])
local ttl = redis.call('HGET', KEYS[1], 'ttl_ms')
if ttl then
  -- Kept below 2^53, where Lua numbers stop being exact integers.
  exp = string.format('%d', math.min(now + tonumber(ttl), 9007199254740991))
  redis.call('HSET', KEYS[1], 'expires_at', exp)
  redis.call('ZADD', KEYS[3], exp, ARGV[1])
end
if exp then
  redis.call('PEXPIREAT', KEYS[1], exp)
  redis.call('PEXPIREAT', KEYS[2], exp)
end
return 1
";

/// Update: 0 when the session is missing or expired at the new `updated_at`; else replaces metadata,
/// `updated_at`, `expires_at` and `ttl_ms`, moves the keys' expiry and the expiry index, returns 1.
///
/// KEYS: record, turns, expiry index. ARGV: id, metadata, updated_at, expires_at (`''`: never),
/// ttl_ms (`''`: none).
const UPDATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local exp = redis.call('HGET', KEYS[1], 'expires_at')
if exp and tonumber(exp) <= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'metadata', ARGV[2], 'updated_at', ARGV[3])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'ttl_ms', ARGV[5])
else
  redis.call('HDEL', KEYS[1], 'ttl_ms')
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  -- An expiry in the past deletes the keys now; the index entry goes at the next purge.
  redis.call('PEXPIREAT', KEYS[2], ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'expires_at')
  redis.call('ZADD', KEYS[3], '+inf', ARGV[1])
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
return 1
";

/// Delete: removes the record, turns, lock and index entries; returns 1 if the record existed.
///
/// KEYS: record, turns, lock, expiry index, then the owner index when known. ARGV: id.
const DELETE_LUA: &str = r"
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
if KEYS[5] then redis.call('ZREM', KEYS[5], ARGV[1]) end
return existed
";

/// Purge of one session found expired in the expiry index: if its record still exists and is not
/// expired at `now` (an append moved it meanwhile), only corrects the index entry and returns 0; else
/// deletes everything of it and returns 1 if this call removed the index entry (so two replicas
/// purging at once count each session once).
///
/// KEYS: record, turns, lock, expiry index, then the owner index when known. ARGV: id, now.
const PURGE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local exp = redis.call('HGET', KEYS[1], 'expires_at')
  if not exp then
    redis.call('ZADD', KEYS[4], '+inf', ARGV[1])
    return 0
  end
  if tonumber(exp) > tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[4], exp, ARGV[1])
    return 0
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if KEYS[5] then redis.call('ZREM', KEYS[5], ARGV[1]) end
return redis.call('ZREM', KEYS[4], ARGV[1])
";

/// The next ids of an owner index, newest first, after the id `after` (`''`: from the newest): one
/// script, so that a session created between finding the cursor and reading the range cannot shift
/// the page. Returns `false` when the cursor is not in the index.
///
/// KEYS: owner index. ARGV: after, count.
const PAGE_IDS_LUA: &str = r"
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  if not rank then return false end
  start = rank + 1
end
return redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
";

/// Lazy cleanup of an owner index: removes the ids whose record no longer exists.
///
/// KEYS: owner index, then one record per id. ARGV: the ids.
const CLEAN_LUA: &str = r"
local removed = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
";

/// Releases a lock only if it still holds `token`.
///
/// KEYS: lock. ARGV: token.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Ids read per round trip when listing, counting and purging.
const BATCH: usize = 500;

/// The scripts, loaded once per store.
struct Scripts {
    create: Script,
    append: Script,
    update: Script,
    delete: Script,
    purge: Script,
    page_ids: Script,
    clean: Script,
    unlock: Script,
}

/// Sessions in Redis, shared by replicas. Cheap to clone.
#[derive(Clone)]
pub struct RedisSessionStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisSessionStore {
    /// A store on `conn` whose keys start with `prefix` (e.g. `sluice:`), every operation bounded by
    /// `timeout`.
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: Arc::from(prefix),
            timeout,
            scripts: Arc::new(Scripts {
                create: Script::new(CREATE_LUA),
                append: Script::new(&format!("{DEC_ADD_LUA}{APPEND_LUA}")),
                update: Script::new(UPDATE_LUA),
                delete: Script::new(DELETE_LUA),
                purge: Script::new(PURGE_LUA),
                page_ids: Script::new(PAGE_IDS_LUA),
                clean: Script::new(CLEAN_LUA),
                unlock: Script::new(UNLOCK_LUA),
            }),
        }
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}sess:rec:{id}", self.prefix)
    }

    fn turns_key(&self, id: &str) -> String {
        format!("{}sess:turns:{id}", self.prefix)
    }

    fn lock_key(&self, id: &str) -> String {
        format!("{}sess:lock:{id}", self.prefix)
    }

    fn owner_key(&self, owner: &str) -> String {
        format!("{}sess:owner:{owner}", self.prefix)
    }

    fn expiry_key(&self) -> String {
        format!("{}sess:expiry", self.prefix)
    }

    /// Runs one operation within the store's timeout.
    async fn bounded<T>(
        &self,
        op: &'static str,
        operation: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Backend(format!("redis sessions {op}: {e}"))),
            Err(_) => Err(StoreError::Backend(format!(
                "redis sessions {op}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// The owner of `id`'s record, if it exists.
    async fn owner_of(&self, op: &'static str, id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.record_key(id)).arg("owner");
        self.bounded(op, cmd.query_async(&mut conn)).await
    }

    /// The records of `ids` (empty maps for those that are gone), in one pipelined round trip.
    async fn records(
        &self,
        op: &'static str,
        ids: &[String],
    ) -> Result<Vec<HashMap<String, String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.record_key(id));
        }
        let mut conn = self.conn.clone();
        self.bounded(op, pipe.query_async(&mut conn)).await
    }

    /// Removes from `owner`'s index those of `ids` whose record is gone.
    async fn clean(&self, op: &'static str, owner: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.clean.prepare_invoke();
        invocation.key(self.owner_key(owner));
        for id in ids {
            invocation.key(self.record_key(id)).arg(id);
        }
        let mut conn = self.conn.clone();
        self.bounded::<i64>(op, invocation.invoke_async(&mut conn))
            .await
            .map(drop)
    }

    /// Up to `count` ids of `owner`, newest first, after `after`; `None` when the cursor is not in
    /// the index.
    async fn page_ids(
        &self,
        owner: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.page_ids.prepare_invoke();
        invocation
            .key(self.owner_key(owner))
            .arg(after.unwrap_or(""))
            .arg(count);
        self.bounded("list", invocation.invoke_async(&mut conn))
            .await
    }
}

impl SessionStore for RedisSessionStore {
    fn create<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let invalid = |e: super::model::InvalidTurn| {
                StoreError::Backend(format!("redis sessions create: {e}"))
            };
            session.check_turn_order().map_err(invalid)?;
            parse_cost(&session.totals.cost_usd).map_err(invalid)?;
            let body = encode(
                &session.id,
                &Session {
                    turns: Vec::new(),
                    ..session.clone()
                },
            )?;
            let metadata = encode(&session.id, &session.metadata)?;
            let turns = session
                .turns
                .iter()
                .map(|turn| encode(&session.id, turn))
                .collect::<Result<Vec<_>, _>>()?;
            let totals = &session.totals;
            let mut invocation = self.scripts.create.prepare_invoke();
            invocation
                .key(self.record_key(&session.id))
                .key(self.turns_key(&session.id))
                .key(self.owner_key(&session.owner))
                .key(self.expiry_key())
                .arg(&session.id)
                .arg(&session.owner)
                .arg(body)
                .arg(metadata)
                .arg(session.created_at)
                .arg(session.updated_at)
                .arg(optional(session.expires_at))
                .arg(optional(session.ttl_ms))
                .arg(counter(totals.turns))
                .arg(counter(totals.messages))
                .arg(counter(totals.bytes))
                .arg(counter(totals.input_tokens))
                .arg(counter(totals.output_tokens))
                .arg(&totals.cost_usd);
            for turn in &turns {
                invocation.arg(turn);
            }
            let mut conn = self.conn.clone();
            let created: i64 = self
                .bounded("create", invocation.invoke_async(&mut conn))
                .await?;
            if created == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        Box::pin(async move {
            // MULTI: the record's totals and the turns from the same moment.
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HGETALL")
                .arg(self.record_key(id))
                .cmd("LRANGE")
                .arg(self.turns_key(id))
                .arg(0)
                .arg(-1);
            let mut conn = self.conn.clone();
            let (fields, turns): (HashMap<String, String>, Vec<String>) =
                self.bounded("get", pipe.query_async(&mut conn)).await?;
            if fields.is_empty() {
                return Ok(None);
            }
            let mut session = decode_record(id, &fields)?;
            if !session.is_live(now_ms) {
                return Ok(None);
            }
            session.turns = turns
                .iter()
                .map(|json| {
                    serde_json::from_str(json).map_err(|e| {
                        StoreError::Backend(format!(
                            "stored turn of session {id} is unreadable: {e}"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Some(session))
        })
    }

    fn list<'a>(
        &'a self,
        owner: &'a str,
        after: Option<&'a str>,
        limit: usize,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(async move {
            let mut sessions = Vec::new();
            let mut dead = Vec::new();
            let mut cursor = after.map(str::to_owned);
            // One more than asked, to know whether more follow; expired ones are skipped, so read on
            // until enough live ones are found or the index ends. A cursor that is not in the index
            // (deleted, purged, another owner's) gives an empty page.
            let batch = limit.saturating_add(1).min(BATCH);
            while sessions.len() <= limit {
                let Some(ids) = self.page_ids(owner, cursor.as_deref(), batch).await? else {
                    break;
                };
                let records = self.records("list", &ids).await?;
                for (id, fields) in ids.iter().zip(&records) {
                    if fields.is_empty() {
                        dead.push(id.clone());
                        continue;
                    }
                    let session = decode_record(id, fields)?;
                    if session.is_live(now_ms) && sessions.len() <= limit {
                        sessions.push(session);
                    }
                }
                if ids.len() < batch {
                    break;
                }
                cursor = ids.last().cloned();
            }
            self.clean("list", owner, &dead).await?;
            let has_more = sessions.len() > limit;
            sessions.truncate(limit);
            Ok(Page { sessions, has_more })
        })
    }

    fn count<'a>(&'a self, owner: &'a str, now_ms: i64) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(self.owner_key(owner)).arg(0).arg(-1);
            let ids: Vec<String> = self.bounded("count", cmd.query_async(&mut conn)).await?;
            let mut live = 0_u64;
            for chunk in ids.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.cmd("HMGET")
                        .arg(self.record_key(id))
                        .arg("owner")
                        .arg("expires_at");
                }
                let rows: Vec<(Option<String>, Option<i64>)> =
                    self.bounded("count", pipe.query_async(&mut conn)).await?;
                let mut dead = Vec::new();
                for (id, (found, expires_at)) in chunk.iter().zip(rows) {
                    if found.is_none() {
                        dead.push(id.clone());
                    } else if expires_at.is_none_or(|at| at > now_ms) {
                        live += 1;
                    }
                }
                self.clean("count", owner, &dead).await?;
            }
            Ok(live)
        })
    }

    fn update<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.scripts.update.prepare_invoke();
            invocation
                .key(self.record_key(&session.id))
                .key(self.turns_key(&session.id))
                .key(self.expiry_key())
                .arg(&session.id)
                .arg(encode(&session.id, &session.metadata)?)
                .arg(session.updated_at)
                .arg(optional(session.expires_at))
                .arg(optional(session.ttl_ms));
            let mut conn = self.conn.clone();
            let updated: i64 = self
                .bounded("update", invocation.invoke_async(&mut conn))
                .await?;
            Ok(updated == 1)
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let owner = self.owner_of("delete", id).await?;
            let mut invocation = self.scripts.delete.prepare_invoke();
            invocation
                .key(self.record_key(id))
                .key(self.turns_key(id))
                .key(self.lock_key(id))
                .key(self.expiry_key())
                .arg(id);
            if let Some(owner) = owner {
                invocation.key(self.owner_key(&owner));
            }
            let mut conn = self.conn.clone();
            let existed: i64 = self
                .bounded("delete", invocation.invoke_async(&mut conn))
                .await?;
            Ok(existed == 1)
        })
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        turn: &'a Turn,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let adds = turn
                .totals()
                .map_err(|e| StoreError::Backend(format!("redis sessions append: {e}")))?;
            let mut invocation = self.scripts.append.prepare_invoke();
            invocation
                .key(self.record_key(id))
                .key(self.turns_key(id))
                .key(self.expiry_key())
                .arg(id)
                .arg(turn.index)
                .arg(encode(id, turn)?)
                .arg(now_ms)
                .arg(counter(adds.messages))
                .arg(counter(adds.bytes))
                .arg(counter(adds.input_tokens))
                .arg(counter(adds.output_tokens))
                .arg(adds.cost_usd.to_string());
            let mut conn = self.conn.clone();
            let appended: i64 = self
                .bounded("append", invocation.invoke_async(&mut conn))
                .await?;
            if appended == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
    }

    fn lock<'a>(
        &'a self,
        id: &'a str,
        lease_ms: u64,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let token = uuid::Uuid::now_v7().simple().to_string();
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.lock_key(id))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                // PX 0 is an error in Redis; a zero lease is simply over at once.
                .arg(lease_ms.max(1));
            let mut conn = self.conn.clone();
            let set: Option<String> = self.bounded("lock", cmd.query_async(&mut conn)).await?;
            Ok(set.map(|_| token))
        })
    }

    fn unlock<'a>(&'a self, id: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut invocation = self.scripts.unlock.prepare_invoke();
            invocation.key(self.lock_key(id)).arg(token);
            let mut conn = self.conn.clone();
            self.bounded::<i64>("unlock", invocation.invoke_async(&mut conn))
                .await
                .map(drop)
        })
    }

    fn purge_expired(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut purged = 0_u64;
            loop {
                let mut conn = self.conn.clone();
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(self.expiry_key())
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(BATCH);
                let ids: Vec<String> = self.bounded("purge", cmd.query_async(&mut conn)).await?;
                for id in &ids {
                    // Every id leaves the range: deleted, or its entry corrected by the script.
                    let owner = self.owner_of("purge", id).await?;
                    let mut invocation = self.scripts.purge.prepare_invoke();
                    invocation
                        .key(self.record_key(id))
                        .key(self.turns_key(id))
                        .key(self.lock_key(id))
                        .key(self.expiry_key())
                        .arg(id)
                        .arg(now_ms);
                    if let Some(owner) = owner {
                        invocation.key(self.owner_key(&owner));
                    }
                    let removed: u64 = self
                        .bounded("purge", invocation.invoke_async(&mut conn))
                        .await?;
                    purged += removed;
                }
                if ids.len() < BATCH {
                    return Ok(purged);
                }
            }
        })
    }

    fn active(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("ZCOUNT");
            cmd.arg(self.expiry_key())
                .arg(format!("({now_ms}"))
                .arg("+inf");
            self.bounded("active", cmd.query_async(&mut conn)).await
        })
    }
}

/// JSON of part of session `id`.
fn encode<T: serde::Serialize + ?Sized>(id: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Backend(format!("session {id}: cannot encode: {e}")))
}

/// An optional integer as a script argument: `''` for none.
fn optional(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// A count as `HINCRBY` takes it (a signed 64-bit integer).
fn counter(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Puts a session back together from its record hash (turns left empty).
fn decode_record(id: &str, fields: &HashMap<String, String>) -> Result<Session, StoreError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("stored session {id}: {what} is unreadable: {e}"))
    };
    let text = |name: &str| fields.get(name).ok_or_else(|| bad(name, &"missing"));
    let int = |name: &str| -> Result<Option<i64>, StoreError> {
        fields
            .get(name)
            .map(|v| v.parse::<i64>().map_err(|e| bad(name, &e)))
            .transpose()
    };
    let count = |name: &str| -> Result<u64, StoreError> {
        Ok(int(name)?.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    };
    let mut session: Session = serde_json::from_str(text("body")?).map_err(|e| bad("body", &e))?;
    session.metadata = serde_json::from_str(text("metadata")?).map_err(|e| bad("metadata", &e))?;
    session.updated_at = int("updated_at")?.ok_or_else(|| bad("updated_at", &"missing"))?;
    session.expires_at = int("expires_at")?;
    session.ttl_ms = int("ttl_ms")?;
    session.totals = Totals {
        turns: count("turns")?,
        messages: count("messages")?,
        bytes: count("bytes")?,
        input_tokens: count("input_tokens")?,
        output_tokens: count("output_tokens")?,
        cost_usd: fields.get("cost_usd").cloned().unwrap_or_default(),
    };
    session.turns = Vec::new();
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::conformance::{Backend, conformance_tests};
    use crate::testkit::redis::RedisServer;

    const PREFIX: &str = "test:";

    /// A private redis-server; each store has a connection of its own, as each replica does.
    struct Redis {
        server: RedisServer,
    }

    impl Redis {
        async fn admin(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(self.server.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }

        async fn store_with_timeout(&self, timeout: Duration) -> RedisSessionStore {
            let conn = redis::Client::open(self.server.url())
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap();
            RedisSessionStore::new(conn, PREFIX, timeout)
        }
    }

    impl Backend for Redis {
        type Store = RedisSessionStore;

        async fn start() -> Option<Self> {
            RedisServer::start_or_skip()
                .await
                .expect("starting redis-server")
                .map(|server| Self { server })
        }

        async fn store(&self) -> RedisSessionStore {
            self.store_with_timeout(Duration::from_secs(5)).await
        }
    }

    conformance_tests!(Redis);

    const HOUR: i64 = 3_600_000;

    fn session(id: &str, owner: &str) -> Session {
        serde_json::from_value(serde_json::json!({
            "id": id, "object": "session", "owner": owner,
            "created_at": crate::control::unix_ms(), "updated_at": crate::control::unix_ms(),
        }))
        .unwrap()
    }

    fn turn(index: u64) -> Turn {
        serde_json::from_value(serde_json::json!({
            "index": index, "request_id": "req", "model": "m", "created_at": 2,
            "input": [{"role": "user", "content": "hi"}], "sent": {
                "first_turn": 0, "dropped_turns": 0, "summarized": false, "input_tokens": 3
            },
        }))
        .unwrap()
    }

    async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(format!("{PREFIX}{key}"))
            .query_async(conn)
            .await
            .unwrap()
    }

    async fn exists(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(format!("{PREFIX}{key}"))
            .query_async(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn keys_expire_in_redis_with_the_session() {
        let Some(backend) = Redis::start().await else {
            return;
        };
        let store = backend.store().await;
        let mut admin = backend.admin().await;
        let now = crate::control::unix_ms();
        let mut s = session("sess_e", "alice");
        s.expires_at = Some(now + HOUR);
        store.create(&s).await.unwrap();
        store.append("sess_e", &turn(0), now).await.unwrap();
        for key in ["sess:rec:sess_e", "sess:turns:sess_e"] {
            let ttl = pttl(&mut admin, key).await;
            assert!(ttl > HOUR - 60_000 && ttl <= HOUR, "{key}: {ttl}");
        }

        // No expiry: the keys persist.
        s.expires_at = None;
        s.updated_at = now;
        assert!(store.update(&s).await.unwrap());
        for key in ["sess:rec:sess_e", "sess:turns:sess_e"] {
            assert_eq!(pttl(&mut admin, key).await, -1, "{key}");
        }

        // An expiry in the past: Redis deletes the keys at once.
        s.expires_at = Some(now - 1);
        assert!(store.update(&s).await.unwrap());
        assert!(!exists(&mut admin, "sess:rec:sess_e").await);
        assert!(!exists(&mut admin, "sess:turns:sess_e").await);
        assert_eq!(store.active(now).await.unwrap(), 0);
        // Its index entry stays until purged, which counts it.
        assert_eq!(store.purge_expired(now).await.unwrap(), 1);
        let left: i64 = redis::cmd("ZCARD")
            .arg(format!("{PREFIX}sess:expiry"))
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    async fn owner_size(conn: &mut redis::aio::MultiplexedConnection, owner: &str) -> i64 {
        redis::cmd("ZCARD")
            .arg(format!("{PREFIX}sess:owner:{owner}"))
            .query_async(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn owner_index_forgets_sessions_redis_deleted() {
        let Some(backend) = Redis::start().await else {
            return;
        };
        let store = backend.store().await;
        let mut admin = backend.admin().await;
        let now = crate::control::unix_ms();
        store.create(&session("sess_live", "alice")).await.unwrap();
        let mut gone = session("sess_gone", "alice");
        gone.expires_at = Some(now - 1);
        store.create(&gone).await.unwrap();
        assert_eq!(owner_size(&mut admin, "alice").await, 2);
        let page = store.list("alice", None, 10, now).await.unwrap();
        assert_eq!(page.sessions.len(), 1);
        assert_eq!(
            owner_size(&mut admin, "alice").await,
            1,
            "cleaned by the listing"
        );
    }

    #[tokio::test]
    async fn ids_and_owners_with_separators_do_not_collide() {
        let Some(backend) = Redis::start().await else {
            return;
        };
        let store = backend.store().await;
        let now = crate::control::unix_ms();
        let a = session("x", "o");
        let b = session("x:turns", "o:x");
        let c = session("turns:x", "owner:o");
        for s in [&a, &b, &c] {
            store.create(s).await.unwrap();
        }
        store.append("x", &turn(0), now).await.unwrap();
        store.append("x:turns", &turn(0), now).await.unwrap();
        for (s, owner) in [(&a, "o"), (&b, "o:x"), (&c, "owner:o")] {
            let got = store.get(&s.id, now).await.unwrap().unwrap();
            assert_eq!(got.owner, owner);
            let page = store.list(owner, None, 10, now).await.unwrap();
            assert_eq!(page.sessions.len(), 1, "{owner}");
            assert_eq!(page.sessions[0].id, s.id);
        }
        assert_eq!(
            store
                .get("turns:x", now)
                .await
                .unwrap()
                .unwrap()
                .turns
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn decimal_addition_in_lua_carries_and_normalises() {
        let Some(backend) = Redis::start().await else {
            return;
        };
        let mut admin = backend.admin().await;
        let script = Script::new(&format!("{DEC_ADD_LUA}return dec_add(ARGV[1], ARGV[2])"));
        let cases = [
            ("9.99", "0.01", Some("10")),
            ("0", "0", Some("0")),
            ("", "1.50", Some("1.5")),
            ("999", "1", Some("1000")),
            ("0.000000001", "0.999999999", Some("1")),
            ("007.0100", "0.0000000375", Some("7.0100000375")),
            (
                "12345678901234567890123456789.5",
                "0.5",
                Some("12345678901234567890123456790"),
            ),
            ("1.2.3", "1", None),
            ("-1", "1", None),
        ];
        for (a, b, expected) in cases {
            let got: Option<String> = script.arg(a).arg(b).invoke_async(&mut admin).await.unwrap();
            assert_eq!(got.as_deref(), expected, "{a} + {b}");
        }
    }

    #[tokio::test]
    async fn a_stopped_redis_is_a_backend_error_within_the_timeout() {
        let Some(mut backend) = Redis::start().await else {
            return;
        };
        let store = backend.store_with_timeout(Duration::from_millis(300)).await;
        store.create(&session("sess_1", "alice")).await.unwrap();
        backend.server.stop();
        let started = tokio::time::Instant::now();
        let err = store.get("sess_1", 0).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
