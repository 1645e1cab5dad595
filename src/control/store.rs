//! Where virtual keys are kept: [`KeyStore`]; the SQLite store (keys and the spend ledger of the
//! memory backend) is in `control::sqlite`, the Redis one in `control::redis`.

use futures_util::future::BoxFuture;

use super::keys::VirtualKey;
use super::limiter::BackendError;

/// Durable key storage. The auth path never calls it: [`super::KeyIndex`] keeps every key in memory and
/// reloads when [`KeyStore::version`] changes (polled every `state.sync_interval`), which is how a
/// revocation on one replica reaches the others.
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts or replaces the key with this id, and bumps the version.
    fn put<'a>(&'a self, key: &'a VirtualKey) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The key with this id.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VirtualKey>, BackendError>>;

    /// Every key, revoked ones included, oldest first.
    fn list(&self) -> BoxFuture<'_, Result<Vec<VirtualKey>, BackendError>>;

    /// A number that changes whenever any key changes.
    fn version(&self) -> BoxFuture<'_, Result<u64, BackendError>>;
}
