//! Authentication of API routes: the virtual key from `Authorization: Bearer` or `x-api-key` becomes a
//! [`Caller`] request extension (read by the `CallContext` extractor); unknown, revoked and expired keys
//! get 401 here, before the body is read. Model permissions and limits are checked after the body is
//! parsed (see `api::admit`), because they depend on the model and the token estimate.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::control::Caller;
use crate::state::AppState;
use crate::telemetry::call::Call;

/// Authenticates the request.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.control.authenticate(request.headers()) {
        Ok(caller) => {
            if let (Some(id), Some(call)) =
                (caller.key_id(), request.extensions().get::<Arc<Call>>())
            {
                call.set_key_id(id);
            }
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The caller of a request that passed [`authenticate`]; anonymous when it did not run.
pub fn caller_of(extensions: &http::Extensions) -> Caller {
    extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous)
}
