//! Shaping provider streams into SSE responses: one event per upstream event, flushed as it comes;
//! keep-alive comments while the upstream is silent; an error after the first byte becomes a final error
//! event (never an `Err` into the body, which would cut the connection silently); shutdown ends open
//! streams with an error event once the drain grace period is over.
//!
//! The rule for the end of an OpenAI stream: success ends with `data: [DONE]`; an error ends with
//! `data: {"error":{..}}` and *no* `[DONE]`, so a client that only watches for `[DONE]` can tell a cut
//! stream from a complete one. Anthropic streams end with `message_stop`, or an `event: error`.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{Stream, StreamExt};
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::protocol::anthropic::StreamEvent;
use crate::state::AppState;

/// Which wire format the events are written in.
#[derive(Clone, Copy)]
enum Dialect {
    OpenAi,
    Anthropic,
}

/// An OpenAI-style stream of JSON `data:` events ending in `[DONE]`.
pub fn openai<T, S>(state: &AppState, stream: S) -> Response
where
    T: Serialize,
    S: Stream<Item = Result<T, GatewayError>> + Send + 'static,
{
    let events = stream.map(|item| {
        item.map(|v| {
            Event::default()
                .json_data(v)
                .unwrap_or_else(|_| serialization_failed())
        })
    });
    respond(state, events, Dialect::OpenAi)
}

/// An Anthropic-style stream of named events.
pub fn anthropic<S>(state: &AppState, stream: S) -> Response
where
    S: Stream<Item = Result<StreamEvent, GatewayError>> + Send + 'static,
{
    let events = stream.map(|item| {
        item.map(|ev| {
            Event::default()
                .event(ev.name())
                .json_data(&ev)
                .unwrap_or_else(|_| serialization_failed())
        })
    });
    respond(state, events, Dialect::Anthropic)
}

fn serialization_failed() -> Event {
    // Serialising our own types cannot fail (no maps with non-string keys); keep the stream well-formed anyway.
    Event::default().comment("serialization failed")
}

fn error_event(error: &GatewayError, dialect: Dialect) -> Event {
    match dialect {
        Dialect::OpenAi => Event::default().data(error.openai_body().to_string()),
        Dialect::Anthropic => Event::default()
            .event("error")
            .data(error.anthropic_body().to_string()),
    }
}

fn respond<S>(state: &AppState, events: S, dialect: Dialect) -> Response
where
    S: Stream<Item = Result<Event, GatewayError>> + Send + 'static,
{
    let body = frame(events, dialect, state.shutdown.drain_expired());
    let mut response = Sse::new(body)
        .keep_alive(keep_alive(state.sse_keepalive))
        .into_response();
    // Ask reverse proxies (nginx) not to buffer the stream.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

fn keep_alive(interval: Duration) -> KeepAlive {
    KeepAlive::new().interval(interval).text("keep-alive")
}

/// Adds the terminator, turns an error into a final event, and ends the stream when the drain expires.
fn frame<S>(
    events: S,
    dialect: Dialect,
    drain: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> + Send
where
    S: Stream<Item = Result<Event, GatewayError>> + Send + 'static,
{
    async_stream::stream! {
        let mut events = std::pin::pin!(events);
        loop {
            let next = tokio::select! {
                biased;
                next = events.next() => next,
                () = drain.cancelled() => Some(Err(GatewayError::ShuttingDown)),
            };
            match next {
                Some(Ok(event)) => yield Ok(event),
                Some(Err(error)) => {
                    tracing::warn!(error.kind = error.kind(), %error, "stream ended with an error event");
                    yield Ok(error_event(&error, dialect));
                    return;
                }
                None => {
                    if matches!(dialect, Dialect::OpenAi) {
                        yield Ok(Event::default().data("[DONE]"));
                    }
                    return;
                }
            }
        }
    }
}
