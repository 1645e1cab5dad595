//! Upstream bytes -> SSE events (`eventsource-stream` handles events split across any chunk boundary);
//! no axum types here. Also the classification of upstream error responses, shared by the HTTP providers.

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::stream::{Stream, StreamExt};
use http::StatusCode;
use serde_json::Value;

use crate::error::GatewayError;

/// Decodes an upstream byte stream into SSE events. Transport errors become `UpstreamFailed`.
pub fn events<S, E>(
    provider: &str,
    bytes: S,
) -> impl Stream<Item = Result<Event, GatewayError>> + Send + use<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display + Send,
{
    let provider = provider.to_owned();
    bytes.eventsource().map(move |item| {
        item.map_err(|e| GatewayError::UpstreamFailed {
            provider: provider.clone(),
            message: match e {
                eventsource_stream::EventStreamError::Transport(_) => {
                    "the upstream connection broke mid-stream".to_owned()
                }
                other => format!("the upstream sent a malformed event stream: {other}"),
            },
        })
    })
}

/// The gateway error for an upstream error response with `status` and (capped) `body`, reading the
/// message from the OpenAI (`{"error":{"message"}}`) or Anthropic (`{"type":"error","error":{..}}`) shape.
pub fn error_from_upstream(provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message")
        .or_else(|| error.and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.to_string()
            } else {
                text.chars().take(500).collect()
            }
        });
    match status.as_u16() {
        // The gateway's own upstream credentials are wrong: not the client's fault, so not a 401.
        401 | 403 | 407 => GatewayError::UpstreamFailed {
            provider: provider.to_owned(),
            message: format!(
                "the upstream rejected the gateway's credentials ({status}): {message}"
            ),
        },
        400..=499 => GatewayError::UpstreamRejected {
            status,
            message,
            kind: field("type"),
            code: field("code"),
            param: field("param"),
        },
        _ => GatewayError::UpstreamFailed {
            provider: provider.to_owned(),
            message: format!("upstream returned {status}: {message}"),
        },
    }
}

/// The gateway error for an error object the upstream sent inside a stream.
pub fn error_in_stream(provider: &str, error: &Value) -> GatewayError {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), str::to_owned);
    GatewayError::UpstreamFailed {
        provider: provider.to_owned(),
        message: format!("upstream stream error: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire(datas: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, d) in datas.iter().enumerate() {
            if i % 2 == 0 {
                out.extend_from_slice(b"event: message\r\n");
            }
            out.extend_from_slice(format!("data: {d}\n\n").as_bytes());
            if i % 3 == 0 {
                out.extend_from_slice(b": keep-alive\n\n");
            }
        }
        out
    }

    fn decode(bytes: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut chunks = Vec::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts {
            chunks.push(Ok::<_, std::io::Error>(Bytes::copy_from_slice(
                &bytes[start..c.max(start)],
            )));
            start = c.max(start);
        }
        chunks.push(Ok(Bytes::copy_from_slice(&bytes[start..])));
        let stream = events("p", futures_util::stream::iter(chunks));
        futures_executor::block_on(stream.map(|e| e.unwrap().data).collect())
    }

    proptest! {
        #[test]
        fn events_survive_any_chunk_boundaries(
            datas in prop::collection::vec("[a-zA-Z0-9 {}\":,é😀]{1,40}", 1..12),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let bytes = wire(&datas);
            prop_assert_eq!(decode(&bytes, &cuts), datas);
        }
    }

    #[test]
    fn upstream_401_is_a_gateway_fault() {
        let e = error_from_upstream(
            "p",
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"bad key"}}"#,
        );
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn anthropic_error_shape_is_read() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: required"}}"#;
        let e = error_from_upstream("p", StatusCode::BAD_REQUEST, body);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), "max_tokens: required");
    }
}
