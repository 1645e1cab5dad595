//! The one request error type, [`GatewayError`], and its one rendering: an OpenAI-shaped JSON body
//! (`{"error":{"message","type","param","code"}}`) with the right status. Anthropic-shaped bodies for
//! `/v1/messages` are rendered from the same value by [`GatewayError::anthropic_body`].
//!
//! `into_response` does not log: it stores the error in the response extensions, and the trace layer
//! records it once, outside.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

/// Everything that can go wrong with one request, each variant with its status and wire `type`/`code`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// Malformed JSON, a missing or mistyped field, or a value out of range (400).
    #[error("{message}")]
    InvalidRequest {
        /// Human-readable, naming the field.
        message: String,
        /// The offending field path, if known.
        param: Option<String>,
    },
    /// The request body is larger than `server.max_body_bytes` (413).
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The request body is not `application/json` (415).
    #[error("expected `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// No model of that public name is configured (404).
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// A resource (not a model, not a route) does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// No route at that path (404).
    #[error("Unknown request URL: {method} {path}")]
    RouteNotFound {
        /// Method of the request.
        method: String,
        /// Path of the request.
        path: String,
    },
    /// The route exists but not with that method (405).
    #[error("Method {method} is not allowed for {path}")]
    MethodNotAllowed {
        /// Method of the request.
        method: String,
        /// Path of the request.
        path: String,
    },
    /// Missing or wrong credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials are valid but not allowed to do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The model's provider cannot do this operation (e.g. embeddings on Anthropic) (400).
    #[error("{0}")]
    Unsupported(String),
    /// Too many requests (429).
    #[error("{message}")]
    RateLimited {
        /// What limit was hit.
        message: String,
        /// When to retry.
        retry_after: Option<Duration>,
    },
    /// The upstream answered with a client error (4xx): passed through with its status and message.
    #[error("{message}")]
    UpstreamRejected {
        /// The upstream's status.
        status: StatusCode,
        /// The upstream's error message.
        message: String,
        /// The upstream's error type, if it sent one.
        kind: Option<String>,
        /// The upstream's error code, if it sent one.
        code: Option<String>,
        /// The upstream's `param`, if it sent one.
        param: Option<String>,
    },
    /// The upstream failed: 5xx, connection refused or reset, malformed response (502).
    #[error("upstream provider `{provider}` failed: {message}")]
    UpstreamFailed {
        /// Provider name from the config.
        provider: String,
        /// What happened (never contains credentials).
        message: String,
    },
    /// An upstream phase timed out (504).
    #[error("upstream provider `{provider}` timed out ({phase})")]
    UpstreamTimeout {
        /// Provider name from the config.
        provider: String,
        /// Which phase: connect, first byte, idle, total.
        phase: &'static str,
    },
    /// Another turn of the session is in progress (409 `session_busy`).
    #[error("{0}")]
    SessionBusy(String),
    /// The conversation does not fit the model's context window (400 `context_length_exceeded`).
    #[error("{0}")]
    ContextTooLong(String),
    /// The caller's budget is spent (429, OpenAI's `insufficient_quota`).
    #[error("{0}")]
    QuotaExceeded(String),
    /// Limits cannot be checked: the shared state backend is unreachable and the policy is
    /// fail-closed (503).
    #[error("{0}")]
    StateUnavailable(String),
    /// The gateway is shutting down (503).
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A bug in Sluice (500). The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl GatewayError {
    /// A 400 naming a field.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::Unsupported(_) | Self::ContextTooLong(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::SessionBusy(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ModelNotFound(_) | Self::RouteNotFound { .. } | Self::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamRejected { status, .. } => *status,
            Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown | Self::StateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ModelNotFound(_) => "model_not_found",
            Self::RouteNotFound { .. } => "route_not_found",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Unsupported(_) => "unsupported",
            Self::RateLimited { .. } => "rate_limited",
            Self::UpstreamRejected { .. } => "upstream_rejected",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::SessionBusy(_) => "session_busy",
            Self::ContextTooLong(_) => "context_length_exceeded",
            Self::StateUnavailable(_) => "state_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// Whether another attempt (or another provider) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::UpstreamFailed { .. } | Self::UpstreamTimeout { .. } => true,
            Self::UpstreamRejected { status, .. } => *status == StatusCode::TOO_MANY_REQUESTS,
            _ => false,
        }
    }

    /// OpenAI `error.type`.
    fn openai_type(&self) -> String {
        match self {
            Self::UpstreamRejected { kind: Some(k), .. } => k.clone(),
            Self::UpstreamRejected { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limit_error".to_owned()
            }
            Self::RateLimited { .. } => "rate_limit_error".to_owned(),
            Self::QuotaExceeded(_) => "insufficient_quota".to_owned(),
            Self::Unauthorized(_) => "authentication_error".to_owned(),
            Self::Forbidden(_) => "permission_error".to_owned(),
            Self::UpstreamFailed { .. }
            | Self::UpstreamTimeout { .. }
            | Self::ShuttingDown
            | Self::StateUnavailable(_)
            | Self::Internal(_) => "server_error".to_owned(),
            _ => "invalid_request_error".to_owned(),
        }
    }

    /// OpenAI `error.code`.
    fn code(&self) -> Option<String> {
        let code = match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::PayloadTooLarge { .. } => "request_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ModelNotFound(_) => "model_not_found",
            Self::RouteNotFound { .. } => "unknown_url",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unauthorized(_) => "invalid_api_key",
            Self::Forbidden(_) => "forbidden",
            Self::Unsupported(_) => "unsupported_operation",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::UpstreamRejected { code, .. } => return code.clone(),
            Self::UpstreamFailed { .. } => "upstream_error",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::ShuttingDown => "server_shutting_down",
            Self::QuotaExceeded(_) => "insufficient_quota",
            Self::StateUnavailable(_) => "state_unavailable",
            Self::SessionBusy(_) => "session_busy",
            Self::ContextTooLong(_) => "context_length_exceeded",
            Self::Internal(_) => "internal_error",
        };
        Some(code.to_owned())
    }

    /// The message sent to clients; internal details are never included.
    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => {
                "The server had an error while processing your request.".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// `{"error":{"message","type","param","code"}}`.
    pub fn openai_body(&self) -> Value {
        let param = match self {
            Self::InvalidRequest { param, .. } | Self::UpstreamRejected { param, .. } => {
                param.clone()
            }
            Self::ModelNotFound(_) => Some("model".to_owned()),
            _ => None,
        };
        json!({"error": {
            "message": self.public_message(),
            "type": self.openai_type(),
            "param": param,
            "code": self.code(),
        }})
    }

    /// Anthropic `error.type`.
    fn anthropic_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 405 | 415 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    /// `{"type":"error","error":{"type","message"}}`, the Anthropic shape.
    pub fn anthropic_body(&self) -> Value {
        json!({"type": "error", "error": {"type": self.anthropic_type(), "message": self.public_message()}})
    }

    /// Response headers that go with the error (`Retry-After`).
    fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Self::RateLimited {
                retry_after: Some(d),
                ..
            } => HeaderValue::from_str(&d.as_secs().max(1).to_string()).ok(),
            _ => None,
        }
    }

    /// Renders the error in the Anthropic shape (for `/v1/messages`).
    pub fn into_anthropic_response(self) -> Response {
        self.render(true)
    }

    fn render(self, anthropic: bool) -> Response {
        let body = if anthropic {
            self.anthropic_body()
        } else {
            self.openai_body()
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(v) = self.retry_after() {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        response.extensions_mut().insert(self);
        response
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.render(false)
    }
}

impl From<crate::protocol::translate::TranslateError> for GatewayError {
    fn from(e: crate::protocol::translate::TranslateError) -> Self {
        Self::InvalidRequest {
            message: e.message,
            param: e.param,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_the_body() {
        let e = GatewayError::Internal("db password is hunter2".to_owned());
        let body = e.openai_body().to_string();
        assert!(!body.contains("hunter2"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn upstream_rejection_keeps_status_and_message() {
        let e = GatewayError::UpstreamRejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "bad tool schema".to_owned(),
            kind: Some("invalid_request_error".to_owned()),
            code: None,
            param: Some("tools".to_owned()),
        };
        assert_eq!(e.status().as_u16(), 422);
        assert_eq!(e.openai_body()["error"]["message"], "bad tool schema");
        assert_eq!(e.openai_body()["error"]["param"], "tools");
    }
}
