//! The durable store of the single-process (`memory`) backend: virtual keys
//! ([`KeyStore`](super::store::KeyStore)) and the spend ledger of [`super::limiter::MemoryLimiter`],
//! in one SQLite file.
//!
//! Three tables. `keys` holds each key as JSON (`body`), with the id, the secret's hash and the times
//! as columns: `hash` is `UNIQUE`, so two keys can never share a secret, and `created_at` orders
//! listings. `meta` holds the version counter that [`super::KeyIndex`] polls; it is bumped in the
//! same transaction as the write it announces. `spend` holds the settled spend of each budget bucket
//! (`b:{key_id}:{period}`) and when that bucket stops mattering; the limiter's dirty buckets are saved
//! every second and at shutdown ([`SqliteStore::save_spend`]), and loaded back at start-up
//! ([`SqliteStore::load_spend`]).
//!
//! Every call takes the one connection behind a mutex on a blocking thread (`spawn_blocking`): writes
//! are rare and small, so one connection is enough, and the async runtime never waits on the disk.
//! The file is created `0600` on unix: it holds no secrets, but key hashes, names and spend are an
//! operator's business.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::keys::VirtualKey;
use super::limiter::{BackendError, Nanos};

/// The schema this build writes; stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Version 0 (empty file) to 1. Runs inside the migration's transaction.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS keys (
    id          TEXT    PRIMARY KEY,
    hash        TEXT    NOT NULL UNIQUE,
    body        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_created_at ON keys (created_at, id);
CREATE TABLE IF NOT EXISTS meta (
    name   TEXT    PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('version', 0);
CREATE TABLE IF NOT EXISTS spend (
    bucket           TEXT    PRIMARY KEY,
    spent_nanos      INTEGER NOT NULL,
    expires_unix_ms  INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

const UPSERT_KEY: &str = "INSERT INTO keys (id, hash, body, created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, body = excluded.body,
        created_at = excluded.created_at, updated_at = excluded.updated_at";

const BUMP_VERSION: &str = "UPDATE meta SET value = value + 1 WHERE name = 'version'";

const UPSERT_SPEND: &str = "INSERT INTO spend (bucket, spent_nanos, expires_unix_ms)
    VALUES (?1, ?2, ?3)
    ON CONFLICT (bucket) DO UPDATE SET spent_nanos = excluded.spent_nanos,
        expires_unix_ms = excluded.expires_unix_ms";

/// A spend ledger row as loaded: `(bucket, spent, expires_unix_ms)`, what
/// [`super::limiter::MemoryLimiter::load_spend`] takes.
pub type SpendRow = (String, Nanos, u64);

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys and the spend ledger in one SQLite file. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its parent directory) if missing: WAL mode, a
    /// busy timeout, the schema migrated to this build's version, mode `0600` on unix.
    ///
    /// Blocking (file creation, pragmas, migration): call it at start-up, or through `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            BackendError(format!("key store {}: {what}: {e}", path.display()))
        };
        prepare_file(path).map_err(|e| fail("cannot create the file", &e))?;
        let mut conn = Connection::open(path).map_err(|e| fail("cannot open", &e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| fail("busy_timeout", &e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| fail("journal_mode", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // E.g. a file system without shared memory: it still works, with a rollback journal.
            tracing::warn!(path = %path.display(), %mode, "key store: WAL mode unavailable");
        }
        // FULL, not NORMAL: a revocation or a new key must survive a power loss once the admin API
        // has answered. Writes are rare (keys) or once a second (spend), so the fsync costs nothing.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| fail("synchronous", &e))?;
        migrate(&mut conn).map_err(|e| fail("schema", &e))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::from(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on a blocking thread.
    fn with_conn<T, F>(
        &self,
        what: &'static str,
        f: F,
    ) -> BoxFuture<'static, Result<T, BackendError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let joined = tokio::task::spawn_blocking(move || {
                // A panic while holding the lock cannot leave a transaction open (dropping one rolls it
                // back), so a poisoned connection is still consistent.
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut conn)
            })
            .await;
            match joined {
                Ok(result) => result.map_err(|e| e.into_backend(what)),
                Err(e) => Err(BackendError(format!("key store {what}: task failed: {e}"))),
            }
        })
    }

    /// Settled spend of every budget bucket that has not expired: `(bucket, spent, expires_unix_ms)`,
    /// for [`super::limiter::MemoryLimiter::load_spend`]. Expired rows are deleted.
    pub fn load_spend(&self) -> BoxFuture<'static, Result<Vec<SpendRow>, BackendError>> {
        self.with_conn("load_spend", |conn| {
            let now = super::unix_ms();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // `<=`, as `MemoryLimiter::load_spend` skips them: a bucket expiring now is over.
            tx.execute("DELETE FROM spend WHERE expires_unix_ms <= ?1", [now])?;
            let rows = {
                let mut stmt = tx.prepare(
                    "SELECT bucket, spent_nanos, expires_unix_ms FROM spend ORDER BY bucket",
                )?;
                stmt.query_map([], |row| {
                    let expires: i64 = row.get(2)?;
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Nanos>(1)?,
                        u64::try_from(expires).unwrap_or(0),
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(rows)
        })
    }

    /// Saves `(bucket, spent, expires_unix_ms)` rows, as given by
    /// [`super::limiter::MemoryLimiter::take_dirty_spend`], in one transaction (each replaces the
    /// bucket's row). Expired rows are deleted on the way, so the ledger stays as small as the live
    /// buckets.
    pub fn save_spend(
        &self,
        rows: Vec<(Arc<str>, Nanos, u64)>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        if rows.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.with_conn("save_spend", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(UPSERT_SPEND)?;
                for (bucket, spent, expires_unix_ms) in &rows {
                    let expires = i64::try_from(*expires_unix_ms).unwrap_or(i64::MAX);
                    stmt.execute(params![bucket.as_ref(), spent, expires])?;
                }
            }
            tx.execute(
                "DELETE FROM spend WHERE expires_unix_ms <= ?1",
                [super::unix_ms()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }
}

impl super::store::KeyStore for SqliteStore {
    fn put<'a>(&'a self, key: &'a VirtualKey) -> BoxFuture<'a, Result<(), BackendError>> {
        let key = key.clone();
        self.with_conn("put", move |conn| put_key(conn, &key))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VirtualKey>, BackendError>> {
        let id = id.to_owned();
        self.with_conn("get", move |conn| {
            let row = conn
                .prepare_cached("SELECT hash, body FROM keys WHERE id = ?1")?
                .query_row([&id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .optional()?;
            row.map(|(hash, body)| decode_key(&id, hash, &body))
                .transpose()
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VirtualKey>, BackendError>> {
        self.with_conn("list", |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT id, hash, body FROM keys ORDER BY created_at, id")?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, hash, body)| decode_key(&id, hash, &body))
                .collect()
        })
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        self.with_conn("version", |conn| {
            let version: i64 = conn
                .prepare_cached("SELECT value FROM meta WHERE name = 'version'")?
                .query_row([], |row| row.get(0))?;
            Ok(u64::try_from(version).unwrap_or(0))
        })
    }
}

/// Why a store call failed, before it is flattened into a [`BackendError`].
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    fn into_backend(self, what: &str) -> BackendError {
        match self {
            Self::Sqlite(e) => BackendError(format!("key store {what}: {e}")),
            // Already a sentence for the operator.
            Self::Invalid(message) => BackendError(message),
        }
    }
}

/// Upserts `key` and bumps the version, in one transaction.
fn put_key(conn: &mut Connection, key: &VirtualKey) -> Result<(), StoreError> {
    if super::decode_hash(&key.hash).is_none() {
        // Such a key could never authenticate (the index skips it) and would collide with the next.
        return Err(StoreError::Invalid(format!(
            "key {}: the secret hash must be 64 hex characters",
            key.id
        )));
    }
    let body = encode_key(key)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let upserted = tx.prepare_cached(UPSERT_KEY)?.execute(params![
        key.id,
        key.hash,
        body,
        key.created_at,
        super::unix_ms()
    ]);
    if let Err(e) = upserted {
        if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
            let other: Option<String> = tx
                .query_row(
                    "SELECT id FROM keys WHERE hash = ?1 AND id <> ?2",
                    params![key.hash, key.id],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(other) = other {
                return Err(StoreError::Invalid(format!(
                    "key {}: another key ({other}) already has this secret hash",
                    key.id
                )));
            }
        }
        return Err(e.into());
    }
    tx.execute(BUMP_VERSION, [])?;
    tx.commit()?;
    Ok(())
}

/// The key as stored: its JSON with `hash`, which [`VirtualKey`] never serializes (so that the admin
/// API cannot leak it).
fn encode_key(key: &VirtualKey) -> Result<String, StoreError> {
    let mut value = serde_json::to_value(key)
        .map_err(|e| StoreError::Invalid(format!("key {}: cannot encode: {e}", key.id)))?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("hash".to_owned(), key.hash.clone().into());
    }
    Ok(value.to_string())
}

/// A stored key; the `hash` column (the one the `UNIQUE` constraint guards) is authoritative.
fn decode_key(id: &str, hash: String, body: &str) -> Result<VirtualKey, StoreError> {
    let mut key: VirtualKey = serde_json::from_str(body).map_err(|e| {
        StoreError::Invalid(format!("key store: stored key {id} is unreadable: {e}"))
    })?;
    key.hash = hash;
    Ok(key)
}

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a file written by a newer build.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE: a second process opening the same new file waits, then sees the migrated version.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => tx.execute_batch(SCHEMA_V1)?,
        SCHEMA_VERSION => {}
        found => {
            return Err(StoreError::Invalid(format!(
                "schema version {found} is newer than this build supports ({SCHEMA_VERSION})"
            )));
        }
    }
    tx.commit()?;
    Ok(())
}

/// Creates the parent directory and the file if missing, mode `0700`/`0600` on unix, and narrows an
/// existing file (and its WAL side files) to `0600`. Shared by the SQLite stores (keys, sessions).
pub(crate) fn prepare_file(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(parent)?;
    }
    let mut file = std::fs::OpenOptions::new();
    file.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    drop(file.open(path)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(path, private.clone())?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = PathBuf::from(side);
            if side.exists() {
                std::fs::set_permissions(&side, private.clone())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;

    use super::*;
    use crate::control::keys::{Budget, Limits, Period};
    use crate::control::store::KeyStore as _;
    use crate::control::{encode_hash, keys};

    fn key(id: &str, name: &str, created_at: i64) -> VirtualKey {
        let secret = keys::generate_secret().unwrap();
        VirtualKey {
            id: id.to_owned(),
            name: name.to_owned(),
            prefix: secret.prefix,
            hash: encode_hash(&secret.hash),
            models: Vec::new(),
            limits: Limits::default(),
            budget: None,
            expires_at: None,
            revoked_at: None,
            metadata: BTreeMap::new(),
            cache: None,
            created_at,
            source: "api".to_owned(),
        }
    }

    fn full_key() -> VirtualKey {
        let mut k = key("key_full", "every field", 1_700_000_000_000);
        k.models = vec!["gpt-4o-mini".to_owned(), "claude-sonnet".to_owned()];
        k.limits = Limits {
            rpm: Some(60),
            tpm: Some(100_000),
            max_concurrent: Some(4),
        };
        k.budget = Some(Budget {
            usd: Decimal::new(1050, 2),
            period: Period::Month,
            soft_threshold: 0.75,
        });
        k.expires_at = Some(1_800_000_000_000);
        k.revoked_at = Some(1_750_000_000_000);
        k.metadata = BTreeMap::from([
            ("team".to_owned(), serde_json::json!("search")),
            ("cost_center".to_owned(), serde_json::json!(42)),
            ("tags".to_owned(), serde_json::json!(["a", {"b": null}])),
        ]);
        k.source = "api".to_owned();
        k
    }

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("keys.db")).unwrap()
    }

    fn far_future() -> u64 {
        u64::try_from(crate::control::unix_ms()).unwrap() + 86_400_000
    }

    #[tokio::test]
    async fn round_trip_keeps_every_field_including_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let k = full_key();
        store.put(&k).await.unwrap();
        let got = store.get("key_full").await.unwrap().unwrap();
        assert_eq!(got, k);
        assert_eq!(got.hash.len(), 64);
        assert_eq!(store.list().await.unwrap(), vec![k]);
        assert_eq!(store.get("key_missing").await.unwrap(), None);
    }

    #[tokio::test]
    async fn body_column_carries_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let k = full_key();
        store.put(&k).await.unwrap();
        let conn = Connection::open(dir.path().join("keys.db")).unwrap();
        let body: String = conn
            .query_row("SELECT body FROM keys WHERE id = 'key_full'", [], |r| {
                r.get(0)
            })
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["hash"], serde_json::json!(k.hash));
        assert_eq!(body["budget"]["usd"], serde_json::json!("10.50"));
    }

    #[tokio::test]
    async fn version_bumps_on_every_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(store.version().await.unwrap(), 0);
        let mut k = key("key_a", "a", 1);
        store.put(&k).await.unwrap();
        assert_eq!(store.version().await.unwrap(), 1);
        // Same key again (e.g. a revoke): replaced, and the version still moves.
        k.revoked_at = Some(5);
        store.put(&k).await.unwrap();
        assert_eq!(store.version().await.unwrap(), 2);
        store.put(&key("key_b", "b", 2)).await.unwrap();
        assert_eq!(store.version().await.unwrap(), 3);
        assert_eq!(store.list().await.unwrap().len(), 2);
        assert_eq!(
            store.get("key_a").await.unwrap().unwrap().revoked_at,
            Some(5)
        );
    }

    #[tokio::test]
    async fn list_is_ordered_by_created_at() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.put(&key("key_c", "third", 30)).await.unwrap();
        store.put(&key("key_a", "first", 10)).await.unwrap();
        store.put(&key("key_b", "second", 20)).await.unwrap();
        let ids: Vec<_> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(ids, ["key_a", "key_b", "key_c"]);
    }

    #[tokio::test]
    async fn reopen_after_close_keeps_keys_version_and_spend() {
        let dir = tempfile::tempdir().unwrap();
        let k = full_key();
        let expires = far_future();
        {
            let store = open(&dir);
            store.put(&k).await.unwrap();
            store
                .save_spend(vec![
                    (Arc::from("b:key_full:2026-11"), 1_234_567_890, expires),
                    (Arc::from("b:key_other:total"), 7, u64::MAX),
                ])
                .await
                .unwrap();
            // Last write wins.
            store
                .save_spend(vec![(
                    Arc::from("b:key_full:2026-11"),
                    2_000_000_000,
                    expires,
                )])
                .await
                .unwrap();
        }
        let store = open(&dir);
        assert_eq!(store.get("key_full").await.unwrap(), Some(k));
        assert_eq!(store.version().await.unwrap(), 1);
        assert_eq!(
            store.load_spend().await.unwrap(),
            vec![
                ("b:key_full:2026-11".to_owned(), 2_000_000_000, expires),
                // u64::MAX is kept as i64::MAX: still "never".
                (
                    "b:key_other:total".to_owned(),
                    7,
                    u64::try_from(i64::MAX).unwrap()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn expired_spend_rows_are_dropped_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let past = u64::try_from(crate::control::unix_ms()).unwrap() - 1;
        // Written straight into the table: `save_spend` would already drop the expired one.
        {
            let conn = Connection::open(store.path()).unwrap();
            conn.execute(
                "INSERT INTO spend VALUES ('b:old:2020-01', 5, ?1), ('b:live:total', 9, ?2)",
                params![i64::try_from(past).unwrap(), i64::MAX],
            )
            .unwrap();
        }
        let rows = store.load_spend().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, "b:live:total");
        let conn = Connection::open(store.path()).unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM spend", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1, "the expired row is deleted, not just skipped");

        // And the limiter takes the rows as they are.
        let limiter = crate::control::limiter::MemoryLimiter::new();
        limiter.load_spend(rows);
        assert_eq!(limiter.spend_now("b:live:total"), (9, 0));
    }

    #[tokio::test]
    async fn save_spend_drops_expired_rows_and_ignores_empty_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.save_spend(Vec::new()).await.unwrap();
        store
            .save_spend(vec![
                (Arc::from("b:gone:2020-01"), 1, 1),
                (Arc::from("b:live:total"), 2, far_future()),
            ])
            .await
            .unwrap();
        let conn = Connection::open(store.path()).unwrap();
        let buckets: Vec<String> = conn
            .prepare("SELECT bucket FROM spend")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(buckets, ["b:live:total"]);
    }

    #[tokio::test]
    async fn duplicate_hash_is_rejected_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a = key("key_a", "a", 1);
        let mut b = key("key_b", "b", 2);
        b.hash.clone_from(&a.hash);
        store.put(&a).await.unwrap();
        let err = store.put(&b).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "key key_b: another key (key_a) already has this secret hash"
        );
        // Nothing changed, the version included.
        assert_eq!(store.version().await.unwrap(), 1);
        assert_eq!(store.list().await.unwrap(), vec![a]);
    }

    #[tokio::test]
    async fn key_without_a_valid_hash_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut k = key("key_a", "a", 1);
        k.hash = String::new();
        let err = store.put(&k).await.unwrap_err();
        assert!(err.to_string().contains("64 hex characters"), "{err}");
        assert_eq!(store.version().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn unicode_names_and_metadata_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut k = key("key_ü", "équipe données 🚀 数据团队", 1);
        k.metadata.insert(
            "propriétaire".to_owned(),
            serde_json::json!("Zoë 'quote' \"dq\""),
        );
        k.models = vec!["modèle-ß".to_owned()];
        store.put(&k).await.unwrap();
        assert_eq!(store.get("key_ü").await.unwrap(), Some(k.clone()));
        assert_eq!(store.list().await.unwrap(), vec![k]);
    }

    #[tokio::test]
    async fn concurrent_puts_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let keys: Vec<_> = (0..16)
            .map(|i| key(&format!("key_{i:02}"), "k", i))
            .collect();
        futures_util::future::try_join_all(keys.iter().map(|k| store.put(k)))
            .await
            .unwrap();
        assert_eq!(store.version().await.unwrap(), 16);
        assert_eq!(store.list().await.unwrap(), keys);
    }

    #[test]
    fn open_creates_parent_dirs_and_sets_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/keys.db");
        let store = SqliteStore::open(&path).unwrap();
        assert!(path.exists());
        let conn = store.conn.lock().unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private_even_if_it_existed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(SqliteStore::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let fresh = dir.path().join("new/keys.db");
        let store = SqliteStore::open(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(fresh.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        // SQLite gives its side files the database's mode.
        store
            .conn
            .lock()
            .unwrap()
            .execute(BUMP_VERSION, [])
            .unwrap();
        for suffix in ["-wal", "-shm"] {
            let side = dir.path().join(format!("new/keys.db{suffix}"));
            let mode = std::fs::metadata(&side).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{suffix}");
        }
        drop(store);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("schema version 99 is newer than this build supports (1)"),
            "{err}"
        );
    }
}
