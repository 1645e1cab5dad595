//! The admission step of every model-calling handler, after the body is parsed: the key may use the
//! model (403), the model exists (404), and every limit and budget of the key and the model admits the
//! call (429, or 503 when the shared backend is down and the policy is fail-closed). The reservations
//! ride on the call record and are settled when it finishes.

use crate::control::{Caller, Estimate};
use crate::error::GatewayError;
use crate::provider::{CallContext, Route};
use crate::state::AppState;

/// Admits the call of `ctx` on `model`; `estimate` is computed only when a token or budget limit
/// applies. Returns the model's route.
pub async fn admit<'s>(
    state: &'s AppState,
    ctx: &CallContext,
    model: &str,
    estimate: impl FnOnce() -> Estimate,
) -> Result<&'s Route, GatewayError> {
    let control = &state.control;
    if matches!(ctx.caller, Caller::Anonymous) && control.required() {
        // Defence in depth: a route that missed the auth layer is still closed.
        return Err(GatewayError::Unauthorized("missing API key".to_owned()));
    }
    control.permit(&ctx.caller, model)?;
    let route = state.providers.route(model)?;
    let estimate = if control.needs_estimate(&ctx.caller, model) {
        estimate()
    } else {
        Estimate::default()
    };
    let decision = control
        .admit(&ctx.caller, model, estimate, route.price.as_ref())
        .await;
    match decision.result {
        Ok(admission) => {
            ctx.call.admitted(Some(admission), decision.headers);
            Ok(route)
        }
        Err(error) => {
            ctx.call.admitted(None, decision.headers);
            Err(error)
        }
    }
}
