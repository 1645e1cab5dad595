//! Where sessions live: [`SessionStore`]; SQLite in `sessions::sqlite`, Redis in `sessions::redis`.

use futures_util::future::BoxFuture;

use super::model::{Session, Turn};

/// The store could not be reached or answered nonsense.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("session store: {0}")]
    Backend(String),
    /// Appending a turn raced another writer (the expected turn count did not match).
    #[error("the session changed meanwhile")]
    Conflict,
}

/// One page of a caller's sessions, newest first (turns left out: `turns` is empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Sessions without their turns (totals kept).
    pub sessions: Vec<Session>,
    /// Whether more follow.
    pub has_more: bool,
}

/// Durable sessions. Expired sessions (`expires_at <= now`) behave as absent everywhere and are
/// deleted by [`SessionStore::purge_expired`].
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session.
    fn create<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The session with its turns, if it exists and has not expired at `now_ms`.
    fn get<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>>;

    /// `owner`'s live sessions, newest first, starting after the session id `after` (exclusive).
    fn list<'a>(
        &'a self,
        owner: &'a str,
        after: Option<&'a str>,
        limit: usize,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Page, StoreError>>;

    /// Number of `owner`'s live sessions.
    fn count<'a>(&'a self, owner: &'a str, now_ms: i64) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Replaces the session record's metadata and expiry fields (`metadata`, `expires_at`, `ttl_ms`,
    /// `updated_at`); turns untouched. False when absent.
    fn update<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes the session and its turns. False when absent.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Appends `turn` (whose `index` must equal the current turn count, else [`StoreError::Conflict`]),
    /// updates the totals, `updated_at` and `expires_at` (now + `ttl_ms` when set).
    fn append<'a>(
        &'a self,
        id: &'a str,
        turn: &'a Turn,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Takes the session's turn lock for `lease_ms` (a crashed holder's lock expires); returns a token
    /// to release it with, or `None` when another turn holds it.
    fn lock<'a>(
        &'a self,
        id: &'a str,
        lease_ms: u64,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Releases the lock if `token` still holds it.
    fn unlock<'a>(&'a self, id: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes sessions expired at `now_ms`; returns how many.
    fn purge_expired(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Number of live sessions in the store (for the `sluice_sessions_active` gauge).
    fn active(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
}
