//! Sessions in one SQLite file ([`SqliteSessionStore`]), for a single gateway process.
//!
//! Three tables. `sessions` holds each session's record as JSON (`body`: the [`Session`] without its
//! turns, totals included), with the columns the queries need: `owner` and `created_at` (indexed
//! together, for listing newest first), `expires_at` (`NULL`: never) and `turn_count`. `turns` holds
//! each turn's JSON under `(session_id, idx)`. `locks` holds the turn lock of a session: its token and
//! until when (unix ms) it holds.
//!
//! Every write that reads first (append, update) runs in one `IMMEDIATE` transaction, so two writers,
//! in this process or another one on the same file, are serialised by SQLite: of two appends with the
//! same index, the second sees the first's turn count and gets [`StoreError::Conflict`].
//!
//! As in `control::sqlite`, every call takes the one connection behind a mutex on a blocking thread
//! (`spawn_blocking`), the file is in WAL mode and created `0600` on unix (conversations are the
//! users' business), and the schema version is kept in `PRAGMA user_version`.
//!
//! Clocks: reads and appends take the caller's `now_ms`; [`SessionStore::update`], which has no such
//! argument, takes the new `updated_at` as "now" (the caller stamps it); the turn lock uses this
//! machine's clock, as its lease is a duration.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::model::{Session, Turn};
use super::store::{Page, SessionStore, StoreError};

/// The schema this build writes; stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Version 0 (empty file) to 1. Runs inside the migration's transaction.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    turn_count  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_owner_created ON sessions (owner, created_at, id);
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS turns (
    session_id  TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    PRIMARY KEY (session_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locks (
    session_id  TEXT    PRIMARY KEY,
    token       TEXT    NOT NULL,
    until_ms    INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

/// Live: not expired at `?now`. Used with the parameter named `:now`.
const LIVE: &str = "(expires_at IS NULL OR expires_at > :now)";

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions in one SQLite file. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct SqliteSessionStore {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

impl std::fmt::Debug for SqliteSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSessionStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why a call failed, before it becomes a [`StoreError`].
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("conflict")]
    Conflict,
}

impl Failure {
    fn into_store(self, what: &str) -> StoreError {
        match self {
            Self::Sqlite(e) => StoreError::Backend(format!("sqlite {what}: {e}")),
            Self::Invalid(message) => StoreError::Backend(format!("sqlite {what}: {message}")),
            Self::Conflict => StoreError::Conflict,
        }
    }
}

impl From<super::model::InvalidTurn> for Failure {
    fn from(e: super::model::InvalidTurn) -> Self {
        Self::Invalid(e.0)
    }
}

impl SqliteSessionStore {
    /// Opens the database at `path`, creating it (and its parent directory) if missing: WAL mode, a
    /// busy timeout, the schema migrated to this build's version, mode `0600` on unix.
    ///
    /// Blocking (file creation, pragmas, migration): call it at start-up, or through `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("session store {}: {what}: {e}", path.display()))
        };
        crate::control::sqlite::prepare_file(path)
            .map_err(|e| fail("cannot create the file", &e))?;
        let mut conn = Connection::open(path).map_err(|e| fail("cannot open", &e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| fail("busy_timeout", &e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| fail("journal_mode", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "session store: WAL mode unavailable");
        }
        // NORMAL, not FULL as for keys: in WAL mode it is still consistent after a crash, and a power
        // loss costs at most the last turns, while every turn of every conversation is a write.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| fail("synchronous", &e))?;
        // No checkpoints on the request path: with NORMAL a commit does not fsync, a checkpoint does
        // (several ms here, the p99 of a session turn). `checkpoint` runs them from a background task on
        // a connection of its own, which WAL lets proceed beside the writer.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| fail("wal_autocheckpoint", &e))?;
        migrate(&mut conn).map_err(|e| fail("schema", &e))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::from(path),
        })
    }

    /// Copies the write-ahead log into the database (a PASSIVE checkpoint: it never waits for, nor
    /// blocks, the writer) on a connection of its own, on a short-lived thread named `sluice-checkpoint`
    /// rather than the blocking pool the session calls run on, so a checkpoint waiting out its busy
    /// timeout is visible in thread dumps. The gateway calls it every few seconds; without it the WAL
    /// would grow without bound. The thread is `SCHED_IDLE` (`telemetry::sched_class`): the copy and
    /// its syncs are one call that cannot yield, so it runs when the core is free and gives it up to a
    /// request thread at once.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let path = Arc::clone(&self.path);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sluice-checkpoint".to_owned())
            .spawn(move || {
                crate::telemetry::sched_class::enter_idle();
                let result = Connection::open(&*path).and_then(|conn| {
                    conn.busy_timeout(BUSY_TIMEOUT)?;
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                });
                let _ = tx.send(result);
            })
            .map_err(|e| StoreError::Backend(format!("checkpoint thread: {e}")))?;
        rx.await
            .map_err(|e| StoreError::Backend(format!("checkpoint: {e}")))?
            .map_err(|e| StoreError::Backend(format!("checkpoint: {e}")))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on a blocking thread.
    fn with_conn<T, F>(&self, what: &'static str, f: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
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
                Ok(result) => result.map_err(|e| e.into_store(what)),
                Err(e) => Err(StoreError::Backend(format!(
                    "sqlite {what}: task failed: {e}"
                ))),
            }
        })
    }
}

impl SessionStore for SqliteSessionStore {
    fn create<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), StoreError>> {
        let session = session.clone();
        self.with_conn("create", move |conn| create(conn, &session))
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        let id = id.to_owned();
        self.with_conn("get", move |conn| {
            // One read transaction: the record and its turns from the same snapshot.
            let tx = conn.transaction()?;
            let body: Option<String> = tx
                .prepare_cached(&format!(
                    "SELECT body FROM sessions WHERE id = :id AND {LIVE}"
                ))?
                .query_row(rusqlite::named_params! {":id": id, ":now": now_ms}, |row| {
                    row.get(0)
                })
                .optional()?;
            let Some(body) = body else {
                return Ok(None);
            };
            let mut session = decode_session(&id, &body)?;
            let turns = tx
                .prepare_cached("SELECT idx, body FROM turns WHERE session_id = ?1 ORDER BY idx")?
                .query_map([&id], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            session.turns = turns
                .iter()
                .map(|(idx, body)| {
                    serde_json::from_str(body).map_err(|e| {
                        Failure::Invalid(format!("session {id}: turn {idx} is unreadable: {e}"))
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
        let owner = owner.to_owned();
        let after = after.map(str::to_owned);
        self.with_conn("list", move |conn| {
            // One more than asked: whether more follow. A cursor that is not one of `owner`'s sessions
            // (deleted, purged, someone else's) finds no row to compare with, so the page is empty.
            let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT id, body FROM sessions
                 WHERE owner = :owner AND {LIVE}
                   AND (:after IS NULL OR (created_at, id) <
                        (SELECT created_at, id FROM sessions WHERE id = :after AND owner = :owner))
                 ORDER BY created_at DESC, id DESC
                 LIMIT :fetch"
            ))?;
            let rows = stmt
                .query_map(
                    rusqlite::named_params! {
                        ":owner": owner, ":now": now_ms, ":after": after, ":fetch": fetch,
                    },
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let has_more = rows.len() > limit;
            let sessions = rows
                .iter()
                .take(limit)
                .map(|(id, body)| decode_session(id, body))
                .collect::<Result<_, _>>()?;
            Ok(Page { sessions, has_more })
        })
    }

    fn count<'a>(&'a self, owner: &'a str, now_ms: i64) -> BoxFuture<'a, Result<u64, StoreError>> {
        let owner = owner.to_owned();
        self.with_conn("count", move |conn| {
            let n: i64 = conn
                .prepare_cached(&format!(
                    "SELECT count(*) FROM sessions WHERE owner = :owner AND {LIVE}"
                ))?
                .query_row(
                    rusqlite::named_params! {":owner": owner, ":now": now_ms},
                    |row| row.get(0),
                )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn update<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>> {
        let new = session.clone();
        self.with_conn("update", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The caller's `updated_at` is its "now": an update does not revive an expired session.
            let body: Option<String> = tx
                .prepare_cached(&format!(
                    "SELECT body FROM sessions WHERE id = :id AND {LIVE}"
                ))?
                .query_row(
                    rusqlite::named_params! {":id": new.id, ":now": new.updated_at},
                    |row| row.get(0),
                )
                .optional()?;
            let Some(body) = body else {
                return Ok(false);
            };
            let mut stored = decode_session(&new.id, &body)?;
            stored.metadata = new.metadata;
            stored.expires_at = new.expires_at;
            stored.ttl_ms = new.ttl_ms;
            stored.updated_at = new.updated_at;
            tx.prepare_cached("UPDATE sessions SET body = ?2, expires_at = ?3 WHERE id = ?1")?
                .execute(params![
                    stored.id,
                    encode_session(&stored)?,
                    stored.expires_at
                ])?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let id = id.to_owned();
        self.with_conn("delete", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM turns WHERE session_id = ?1", [&id])?;
            tx.execute("DELETE FROM locks WHERE session_id = ?1", [&id])?;
            let deleted = tx.execute("DELETE FROM sessions WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok(deleted > 0)
        })
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        turn: &'a Turn,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_owned();
        let turn = turn.clone();
        self.with_conn("append", move |conn| append(conn, &id, &turn, now_ms))
    }

    fn lock<'a>(
        &'a self,
        id: &'a str,
        lease_ms: u64,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let id = id.to_owned();
        self.with_conn("lock", move |conn| {
            let now = crate::control::unix_ms();
            let until = now.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX));
            let token = uuid::Uuid::now_v7().simple().to_string();
            // Taken when absent, or when the holder's lease has run out; a live lock is left alone.
            let won = conn
                .prepare_cached(
                    "INSERT INTO locks (session_id, token, until_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (session_id) DO UPDATE
                         SET token = excluded.token, until_ms = excluded.until_ms
                         WHERE locks.until_ms <= ?4",
                )?
                .execute(params![id, token, until, now])?;
            Ok((won > 0).then_some(token))
        })
    }

    fn unlock<'a>(&'a self, id: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_owned();
        let token = token.to_owned();
        self.with_conn("unlock", move |conn| {
            conn.prepare_cached("DELETE FROM locks WHERE session_id = ?1 AND token = ?2")?
                .execute([&id, &token])?;
            Ok(())
        })
    }

    fn purge_expired(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with_conn("purge_expired", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expired = "SELECT id FROM sessions WHERE expires_at <= ?1";
            tx.execute(
                &format!("DELETE FROM turns WHERE session_id IN ({expired})"),
                [now_ms],
            )?;
            // Run-out locks go too, also those of sessions that never existed.
            tx.execute(
                &format!("DELETE FROM locks WHERE until_ms <= ?1 OR session_id IN ({expired})"),
                [now_ms],
            )?;
            let purged = tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now_ms])?;
            tx.commit()?;
            Ok(u64::try_from(purged).unwrap_or(u64::MAX))
        })
    }

    fn active(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with_conn("active", move |conn| {
            let n: i64 = conn
                .prepare_cached(&format!("SELECT count(*) FROM sessions WHERE {LIVE}"))?
                .query_row(rusqlite::named_params! {":now": now_ms}, |row| row.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}

/// Inserts the record and any turns it carries; an existing id is a [`Failure::Conflict`].
fn create(conn: &mut Connection, session: &Session) -> Result<(), Failure> {
    session.check_turn_order()?;
    super::model::parse_cost(&session.totals.cost_usd)?;
    let turns = session
        .turns
        .iter()
        .map(encode_turn)
        .collect::<Result<Vec<_>, _>>()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO sessions (id, owner, body, created_at, expires_at, turn_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            session.id,
            session.owner,
            encode_session(session)?,
            session.created_at,
            session.expires_at,
            i64::try_from(turns.len()).unwrap_or(i64::MAX),
        ])?;
    if inserted == 0 {
        return Err(Failure::Conflict);
    }
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO turns (session_id, idx, body) VALUES (?1, ?2, ?3)")?;
        for (idx, body) in turns.iter().enumerate() {
            insert.execute(params![
                session.id,
                i64::try_from(idx).unwrap_or(i64::MAX),
                body
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Appends `turn` if `id` is live and its turn count is `turn.index`, all in one `IMMEDIATE`
/// transaction: the count read is the count the insert follows.
fn append(conn: &mut Connection, id: &str, turn: &Turn, now_ms: i64) -> Result<(), Failure> {
    let adds = turn.totals()?;
    let turn_body = encode_turn(turn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row: Option<(String, i64)> = tx
        .prepare_cached(&format!(
            "SELECT body, turn_count FROM sessions WHERE id = :id AND {LIVE}"
        ))?
        .query_row(rusqlite::named_params! {":id": id, ":now": now_ms}, |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    // Missing or expired: the turn belongs to a session that is gone, which the caller learns as a
    // conflict (the session changed meanwhile) just like a lost race.
    let Some((body, turn_count)) = row else {
        return Err(Failure::Conflict);
    };
    if u64::try_from(turn_count).ok() != Some(turn.index) {
        return Err(Failure::Conflict);
    }
    let mut session = decode_session(id, &body)?;
    session.totals.add(&adds)?;
    session.updated_at = now_ms;
    if let Some(ttl) = session.ttl_ms {
        session.expires_at = Some(now_ms.saturating_add(ttl));
    }
    tx.prepare_cached("INSERT INTO turns (session_id, idx, body) VALUES (?1, ?2, ?3)")?
        .execute(params![id, turn_count, turn_body])?;
    tx.prepare_cached(
        "UPDATE sessions SET body = ?2, expires_at = ?3, turn_count = turn_count + 1 WHERE id = ?1",
    )?
    .execute(params![id, encode_session(&session)?, session.expires_at])?;
    tx.commit()?;
    Ok(())
}

/// The record as stored: the session without its turns.
fn encode_session(session: &Session) -> Result<String, Failure> {
    let record = Session {
        turns: Vec::new(),
        ..session.clone()
    };
    serde_json::to_string(&record)
        .map_err(|e| Failure::Invalid(format!("session {}: cannot encode: {e}", session.id)))
}

fn decode_session(id: &str, body: &str) -> Result<Session, Failure> {
    serde_json::from_str(body)
        .map_err(|e| Failure::Invalid(format!("stored session {id} is unreadable: {e}")))
}

fn encode_turn(turn: &Turn) -> Result<String, Failure> {
    serde_json::to_string(turn)
        .map_err(|e| Failure::Invalid(format!("turn {}: cannot encode: {e}", turn.index)))
}

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a file written by a newer build.
fn migrate(conn: &mut Connection) -> Result<(), Failure> {
    // IMMEDIATE: a second process opening the same new file waits, then sees the migrated version.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => tx.execute_batch(SCHEMA_V1)?,
        SCHEMA_VERSION => {}
        found => {
            return Err(Failure::Invalid(format!(
                "schema version {found} is newer than this build supports ({SCHEMA_VERSION})"
            )));
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::conformance::{Backend, conformance_tests};

    /// A database file in a temporary directory; each store is a connection of its own to it.
    struct Sqlite {
        dir: tempfile::TempDir,
    }

    impl Sqlite {
        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join("sessions.db")
        }
    }

    impl Backend for Sqlite {
        type Store = SqliteSessionStore;

        async fn start() -> Option<Self> {
            Some(Self {
                dir: tempfile::tempdir().unwrap(),
            })
        }

        async fn store(&self) -> SqliteSessionStore {
            SqliteSessionStore::open(&self.path()).unwrap()
        }
    }

    conformance_tests!(Sqlite);

    fn session(id: &str) -> Session {
        serde_json::from_value(serde_json::json!({
            "id": id, "object": "session", "owner": "alice", "created_at": 1, "updated_at": 1,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn reopening_keeps_sessions_and_turns() {
        let backend = Sqlite::start().await.unwrap();
        let turn: Turn = serde_json::from_value(serde_json::json!({
            "index": 0, "request_id": "req_1", "model": "m", "created_at": 2,
            "input": [{"role": "user", "content": "hi"}], "sent": {
                "first_turn": 0, "dropped_turns": 0, "summarized": false, "input_tokens": 3
            },
        }))
        .unwrap();
        let stored = {
            let store = backend.store().await;
            store.create(&session("sess_1")).await.unwrap();
            store.append("sess_1", &turn, 5).await.unwrap();
            store.get("sess_1", 5).await.unwrap().unwrap()
        };
        let store = backend.store().await;
        assert_eq!(store.get("sess_1", 5).await.unwrap(), Some(stored.clone()));
        assert_eq!(stored.turns, vec![turn]);
        assert_eq!(stored.totals.messages, 1);
    }

    #[tokio::test]
    async fn checkpoints_copy_the_log_into_the_database() {
        let backend = Sqlite::start().await.unwrap();
        let store = backend.store().await;
        for i in 0..20 {
            store.create(&session(&format!("sess_{i}"))).await.unwrap();
        }
        let wal = backend.path().with_extension("db-wal");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "writes go to the WAL"
        );
        store.checkpoint().await.unwrap();
        // Everything is in the main file now: a copy of it alone (no WAL) holds the sessions.
        let copy = backend.dir.path().join("copy.db");
        std::fs::copy(backend.path(), &copy).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 20);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let backend = Sqlite::start().await.unwrap();
        let nested = backend.dir.path().join("a/b/sessions.db");
        let store = SqliteSessionStore::open(&nested).unwrap();
        store.create(&session("sess_1")).await.unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir = std::fs::metadata(backend.dir.path().join("a/b")).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let backend = Sqlite::start().await.unwrap();
        drop(backend.store().await);
        Connection::open(backend.path())
            .unwrap()
            .pragma_update(None, "user_version", 2)
            .unwrap();
        let err = SqliteSessionStore::open(&backend.path()).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn expired_locks_of_unknown_sessions_are_purged() {
        let backend = Sqlite::start().await.unwrap();
        let store = backend.store().await;
        store.lock("sess_never", 0).await.unwrap().unwrap();
        store.lock("sess_held", 60_000).await.unwrap().unwrap();
        let soon = crate::control::unix_ms() + 1_000;
        assert_eq!(store.purge_expired(soon).await.unwrap(), 0);
        let conn = Connection::open(backend.path()).unwrap();
        let left: Vec<String> = conn
            .prepare("SELECT session_id FROM locks")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["sess_held"]);
    }
}
