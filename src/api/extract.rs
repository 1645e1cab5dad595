//! Extractors whose rejections are [`GatewayError`]s, so malformed requests get the same error envelope
//! as everything else: `OpenAiJson<T>` (415 / 413 / 400 naming the field) and [`CallContext`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::GatewayError;
use crate::provider::CallContext;
use crate::state::AppState;
use crate::telemetry::call::Call;

/// A JSON body parsed into `T`; errors name the field (`messages[0].role: missing field`).
pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = GatewayError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, GatewayError> {
        if !is_json(req.headers()) {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let call = req.extensions().get::<Arc<Call>>().cloned();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(_) if is_length_limit(&rejection) => {
                    GatewayError::PayloadTooLarge {
                        limit: state.max_body_bytes,
                    }
                }
                _ => GatewayError::invalid("could not read the request body", None),
            })?;
        if let Some(call) = call.filter(|c| c.captures_content()) {
            call.request_body(&String::from_utf8_lossy(&bytes));
        }
        parse(&bytes).map(OpenAiJson)
    }
}

fn is_length_limit(rejection: &BytesRejection) -> bool {
    rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE
}

/// `application/json` or any `+json` type, parameters allowed.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON, reporting the path of the offending field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            GatewayError::invalid(format!("The request body is not valid JSON: {inner}"), None)
        } else if path == "." || path.is_empty() {
            GatewayError::invalid(format!("Invalid request body: {inner}"), None)
        } else {
            GatewayError::invalid(
                format!("Invalid request body at `{path}`: {inner}"),
                Some(&path),
            )
        }
    })?;
    de.end().map_err(|e| {
        GatewayError::invalid(format!("The request body is not valid JSON: {e}"), None)
    })?;
    Ok(value)
}

impl<S: Send + Sync> FromRequestParts<S> for CallContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let call = parts
            .extensions
            .get::<Arc<Call>>()
            .cloned()
            .unwrap_or_else(Call::detached);
        Ok(CallContext {
            request_id: parts.headers.get("x-request-id").cloned(),
            call,
            caller: crate::middleware::auth::caller_of(&parts.extensions),
            session_id: parts
                .headers
                .get(super::sessions::SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            cache: crate::cache::Directives::from_headers(&parts.headers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai::ChatRequest;

    #[test]
    fn missing_field_is_named() {
        let err =
            parse::<ChatRequest>(br#"{"model":"m","messages":[{"content":"hi"}]}"#).unwrap_err();
        let body = err.openai_body();
        assert_eq!(body["error"]["param"], "messages[0]", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("role"),
            "{body}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let err =
            parse::<ChatRequest>(br#"{"model":"m","messages":[],"max_tokens":"ten"}"#).unwrap_err();
        assert!(err.to_string().contains("max_tokens"), "{err}");
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let deep = format!(
            "{{\"model\":\"m\",\"messages\":[],\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = parse::<ChatRequest>(deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        assert!(parse::<ChatRequest>(br#"{"model":"m","messages":[]} x"#).is_err());
    }

    #[test]
    fn content_types() {
        let mut h = http::HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            http::header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
