//! The observation layer: one [`Call`] per request (and its id for the log lines written while it
//! runs), and a response-body wrapper that finishes the call when the last byte is sent or the client
//! leaves. That is where latency, time to first token, tokens and cost of streams become known, so
//! metrics, the access log, span attributes and the request log are all written from there (see
//! `telemetry::call`).
//!
//! Non-streaming responses also get `x-sluice-cost-usd` and `x-sluice-overhead-ms` headers here, and
//! every response of an admitted (or refused) call its `x-ratelimit-*` headers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use http_body::{Body as _, Frame, SizeHint};
use opentelemetry::context::FutureExt as _;

use crate::error::GatewayError;
use crate::state::AppState;
use crate::telemetry::call::Call;
use crate::telemetry::metrics::Label;
use crate::usage::decimal_text::DecimalText;

/// `x-sluice-cost-usd`: exact cost of the call (non-streaming responses with a priced model).
pub const COST_HEADER: HeaderName = HeaderName::from_static("x-sluice-cost-usd");
/// `x-sluice-overhead-ms`: the gateway's own share of the time to response headers.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-sluice-overhead-ms");

/// Layer; holds the state (metrics, request log) the finished calls are written to.
#[derive(Clone)]
pub struct Layer {
    state: AppState,
}

impl Layer {
    /// The layer.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for Layer {
    type Service = Service<S>;

    fn layer(&self, inner: S) -> Service<S> {
        Service {
            inner,
            state: self.state.clone(),
        }
    }
}

/// Service.
#[derive(Clone)]
pub struct Service<S> {
    inner: S,
    state: AppState,
}

impl<S> tower::Service<Request> for Service<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Response, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        let route = Label(Arc::from(route));
        let request_id: Arc<str> = Arc::from(
            request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        );
        let method = request.method().clone();
        let spans = crate::telemetry::request_spans(&method, &route.0, request.headers());
        // Attached while the request's work runs: internal calls made for it become its children.
        let otel_context = spans.as_ref().map(|s| s.context().clone());
        let call = Arc::new(Call::new(Arc::clone(&request_id), route, method, spans));
        if self.state.obs.captures_content() {
            call.capture_content();
        }
        request.extensions_mut().insert(Arc::clone(&call));
        self.state.obs.metrics.inflight.inc();
        // Clone-then-replace: the service polled ready goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        let work = async move {
            let Ok(mut response) = inner.call(request).await;
            if let Some(error) = response.extensions().get::<GatewayError>() {
                call.fail(error);
            }
            let headers = response.headers_mut();
            for (name, value) in call.limit_headers() {
                headers.insert(name, value);
            }
            let streaming = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            if streaming {
                call.headers_sent();
            } else {
                let (cost, overhead) = call.cost_and_overhead();
                let headers = response.headers_mut();
                if let Some(cost) = cost.and_then(|c| {
                    HeaderValue::from_str(DecimalText::new(c.normalize()).as_str()).ok()
                }) {
                    headers.insert(COST_HEADER, cost);
                }
                if let Some(o) = overhead.and_then(|o| HeaderValue::from_str(&millis(o)).ok()) {
                    headers.insert(OVERHEAD_HEADER, o);
                }
            }
            let status = response.status().as_u16();
            Ok(response.map(|body| {
                Body::new(ObservedBody {
                    inner: body,
                    call,
                    state,
                    status,
                    done: false,
                })
            }))
        };
        // Log lines written while the request's work runs carry its id.
        let work = crate::telemetry::request_scope::in_request(request_id, work);
        match otel_context {
            Some(context) => Box::pin(work.with_context(context)),
            None => Box::pin(work),
        }
    }
}

pin_project_lite::pin_project! {
    /// Finishes the call at the end of the body, or when it is dropped early (client disconnect).
    pub struct ObservedBody {
        #[pin]
        inner: Body,
        call: Arc<Call>,
        state: AppState,
        status: u16,
        done: bool,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                // Dropped before `poll_frame` returned `None`: complete if the body had nothing left
                // (hyper stops polling a full body once it is written), cut otherwise.
                let completed = this.inner.is_end_stream();
                this.state.obs.metrics.inflight.dec();
                this.call.finish_or_defer(*this.status, completed, this.state);
            }
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled
            && !*this.done
        {
            *this.done = true;
            this.state.obs.metrics.inflight.dec();
            // The end of a chunked body (a stream) is written after this returns: finishing the call
            // (metrics, logs, request log, settling limits) in a task of its own keeps that work off the
            // time the client waits for its last byte.
            let (call, state, status) = (Arc::clone(this.call), this.state.clone(), *this.status);
            this.state.tasks.spawn(async move {
                call.finish_or_defer(status, true, &state);
            });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `d` in milliseconds with three decimals (whole microseconds, rounded half up): the text
/// `format!("{:.3}", d.as_secs_f64() * 1000.0)` wrote except at rounding ties, without float
/// formatting (that took ~1,000 instructions per response, `bench/instructions.sh`).
fn millis(d: std::time::Duration) -> String {
    let micros = (d.as_nanos() + 500) / 1000;
    let mut text = String::with_capacity(24);
    text.push_str(itoa::Buffer::new().format(micros / 1000));
    text.push('.');
    let fraction = micros % 1000;
    for place in [100, 10, 1] {
        let digit = u8::try_from(fraction / place % 10).unwrap_or_default();
        text.push(char::from(b'0' + digit));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn overhead_is_written_in_milliseconds_to_the_microsecond() {
        assert_eq!(super::millis(Duration::ZERO), "0.000");
        assert_eq!(super::millis(Duration::from_nanos(499)), "0.000");
        assert_eq!(super::millis(Duration::from_nanos(500)), "0.001");
        assert_eq!(super::millis(Duration::from_nanos(12_345)), "0.012");
        assert_eq!(super::millis(Duration::from_secs(61)), "61000.000");
        assert_eq!(super::millis(Duration::from_micros(1_500)), "1.500");
        assert_eq!(super::millis(Duration::from_nanos(250_400)), "0.250");
        assert_eq!(super::millis(Duration::from_nanos(999_600)), "1.000");
        // What `{:.3}` of the float gave, away from a rounding tie.
        for micros in [0_u64, 1, 87, 999, 1_001, 250_125, 3_600_000_123] {
            let d = Duration::from_micros(micros);
            assert_eq!(
                super::millis(d),
                format!("{:.3}", d.as_secs_f64() * 1000.0),
                "{micros} µs"
            );
        }
    }
}
