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

/// Keys in this process only, lost at exit: for tests and embedders that bring their own persistence.
#[derive(Default)]
pub struct MemoryKeyStore {
    keys: std::sync::Mutex<(u64, Vec<VirtualKey>)>,
}

impl MemoryKeyStore {
    fn with<T>(&self, f: impl FnOnce(&mut (u64, Vec<VirtualKey>)) -> T) -> T {
        f(&mut self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl KeyStore for MemoryKeyStore {
    fn put<'a>(&'a self, key: &'a VirtualKey) -> BoxFuture<'a, Result<(), BackendError>> {
        let result = self.with(|(version, keys)| {
            if keys.iter().any(|k| k.hash == key.hash && k.id != key.id) {
                return Err(BackendError("another key has the same secret".to_owned()));
            }
            match keys.iter_mut().find(|k| k.id == key.id) {
                Some(existing) => *existing = key.clone(),
                None => keys.push(key.clone()),
            }
            *version += 1;
            Ok(())
        });
        Box::pin(std::future::ready(result))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VirtualKey>, BackendError>> {
        let key = self.with(|(_, keys)| keys.iter().find(|k| k.id == id).cloned());
        Box::pin(std::future::ready(Ok(key)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VirtualKey>, BackendError>> {
        let keys = self.with(|(_, keys)| keys.clone());
        Box::pin(std::future::ready(Ok(keys)))
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        let version = self.with(|(version, _)| *version);
        Box::pin(std::future::ready(Ok(version)))
    }
}
