//! Which request a log line belongs to: the id of the request whose work is being polled, kept in a
//! Tokio task-local for the time the request's future runs ([`in_request`]), read by the log formats
//! when they write a line (`"span":{"request_id":"…","name":"request"}` in JSON, `request_id=…` at
//! the end of a text line).
//!
//! Why not a `tracing` span around the request, as before: with the log filter at `info`, the
//! span was created, its fields formatted into the registry, entered and left on every poll and
//! closed, for every request, whether or not a line was ever written inside it: ~4,000–4,500
//! instructions per request on the request thread (`bench/instructions.sh`, BENCHMARKS sessions
//! 17–18), where setting and restoring a task-local is a thread-local swap per poll. Sluice made no
//! other span for its logs (only this one passed the log filter), so the lines read the same.
//!
//! Work a request hands to another task (the telemetry thread, a stream's body polled by the server)
//! is not inside the scope, as it was not inside the span.

use std::future::Future;
use std::sync::Arc;

use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// `work`, polled as the request `id`'s: log lines written while it runs carry the id.
pub fn in_request<F: Future>(id: Arc<str>, work: F) -> TaskLocalFuture<Arc<str>, F> {
    REQUEST_ID.scope(id, work)
}

/// `f` of the id of the request being polled on this thread, if any.
pub fn with_request_id<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    REQUEST_ID.try_with(|id| f(id)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_is_there_while_the_request_runs_and_only_then() {
        assert_eq!(with_request_id(str::to_owned), None);
        let inside = in_request(Arc::from("r-7"), async {
            tokio::task::yield_now().await;
            with_request_id(str::to_owned)
        })
        .await;
        assert_eq!(inside.as_deref(), Some("r-7"));
        assert_eq!(with_request_id(str::to_owned), None, "restored after");
        // Nested scopes: the inner id while the inner work runs, then the outer again.
        let ids = in_request(Arc::from("outer"), async {
            let inner = in_request(Arc::from("inner"), async { with_request_id(str::to_owned) });
            (inner.await, with_request_id(str::to_owned))
        })
        .await;
        assert_eq!(ids, (Some("inner".to_owned()), Some("outer".to_owned())));
    }
}
