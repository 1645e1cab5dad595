//! The OTLP/HTTP (protobuf) span exporter: each batch encoded by [`otlp_encode`](super::otlp_encode)
//! and POSTed to the traces URL from the batch processor's own thread.
//!
//! It does what the SDK's HTTP exporter did, minus its conversion of every span into generated proto
//! structs (the reason it exists, see `otlp_encode`): the `OTEL_EXPORTER_OTLP_TRACES_HEADERS` /
//! `OTEL_EXPORTER_OTLP_HEADERS` headers (URL-decoded values, e.g. a collector's API key), up to
//! [`MAX_RETRIES`] retries of a network error, 502, 504, or 429/503 (after their `Retry-After` when
//! they give one) with doubling pauses, the whole export bounded by `export_timeout`, and a warning
//! when the collector reports spans it rejected (partial success). Header values are secrets: they
//! are never logged, and this type's `Debug` shows only their names.
//!
//! **Threads.** The SDK's thread-based batch processor calls `export` on its own thread and waits for
//! it, outside any tokio runtime; the request is sent in a current-thread runtime this exporter owns,
//! driven by that same thread while the export lasts, so a batch is encoded and sent by one thread, off
//! the request workers. (Until session 10 the runtime had a thread of its own: every export woke it
//! and waited for it, and `perf` found a third of that thread's time in context switches;
//! `docs/BENCHMARKS.md`, "Session 10".) The pooled connection is driven only while a batch is sent, so
//! a close by the collector between batches (an idle timeout) is only seen at the next export: each
//! attempt first yields once, which lets the connection's task read the close, so the request goes on
//! a new connection instead of failing on the dead one (test
//! `an_export_after_the_collector_closed_the_pooled_connection_succeeds`). Redirects are not
//! followed: the headers may carry a key, and a collector has no reason to send one elsewhere.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prost::Message as _;

use super::background::Pacer;
use super::otel::OtelError;
use super::otlp_encode::{self, EncodedResource};

/// Headers for every export request, from the first of these that is set (the OTLP exporter spec).
pub(super) const ENV_HEADERS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
];

/// Retries after the first attempt (the SDK exporter's recommended policy).
pub(super) const MAX_RETRIES: u32 = 3;
/// Pause before the first retry; doubled each time up to [`MAX_RETRY_DELAY`].
const INITIAL_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(1600);

/// A collector's answer is read up to this size (it is a small protobuf message).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Parses `key=value,key2=value2` (values percent-decoded) from the first of [`ENV_HEADERS`] that is
/// set. An entry that is not a valid header is an error naming the variable and the entry's position,
/// never its value.
pub(super) fn headers_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HeaderMap, OtelError> {
    let mut headers = HeaderMap::new();
    let Some((name, value)) = ENV_HEADERS.iter().find_map(|name| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (*name, v))
    }) else {
        return Ok(headers);
    };
    for (i, entry) in value.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let invalid = || {
            OtelError::Invalid(format!(
                "{name}: entry {} is not key=value with a valid header name and value",
                i + 1
            ))
        };
        let (key, raw) = entry.split_once('=').ok_or_else(invalid)?;
        let decoded = percent_encoding::percent_decode_str(raw.trim())
            .decode_utf8()
            .map_err(|_| invalid())?;
        let key = HeaderName::from_bytes(key.trim().as_bytes()).map_err(|_| invalid())?;
        let mut value = HeaderValue::from_str(&decoded).map_err(|_| invalid())?;
        value.set_sensitive(true);
        headers.append(key, value);
    }
    Ok(headers)
}

/// Sends span batches to one OTLP/HTTP traces URL.
pub(super) struct HttpExporter {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    url: reqwest::Url,
    headers: HeaderMap,
    timeout: Duration,
    resource: EncodedResource,
    /// The size of the last request body, to allocate the next one at once.
    last_len: AtomicUsize,
    /// Retries after a failed attempt: [`MAX_RETRIES`] (tests set fewer).
    retries: u32,
    stopped: AtomicBool,
}

impl fmt::Debug for HttpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExporter")
            .field("url", &self.url.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why an attempt failed.
enum Failure {
    /// Worth another attempt, after the collector's `Retry-After` if it gave one.
    Retry(Option<Duration>, String),
    /// Not worth another attempt.
    Final(String),
}

impl HttpExporter {
    /// An exporter for `url` (the full traces URL); each export, retries included, takes at most
    /// `timeout`.
    pub(super) fn new(url: &str, headers: HeaderMap, timeout: Duration) -> Result<Self, OtelError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(OtelError::HttpClient)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                OtelError::Invalid(format!("cannot start the OTLP export runtime: {e}"))
            })?;
        let url = reqwest::Url::parse(url)
            .map_err(|e| OtelError::Invalid(format!("OTLP traces URL {url}: {e}")))?;
        Ok(Self {
            client,
            runtime,
            url,
            headers,
            timeout,
            resource: EncodedResource::default(),
            last_len: AtomicUsize::new(0),
            retries: MAX_RETRIES,
            stopped: AtomicBool::new(false),
        })
    }

    /// Encodes and sends one batch, retrying what is worth retrying within the timeout.
    fn export_batch(&self, batch: &[SpanData]) -> OTelSdkResult {
        if self.stopped.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let deadline = Instant::now() + self.timeout;
        let mut body = Vec::with_capacity(self.last_len.load(Ordering::Relaxed));
        let mut pacer = Pacer::new(otlp_encode::SPANS_PER_YIELD);
        otlp_encode::export_request(&mut body, &self.resource, batch, &mut pacer);
        self.last_len.store(body.len(), Ordering::Relaxed);
        let body = Bytes::from(body);
        let mut pause = INITIAL_RETRY_DELAY;
        let mut retries = 0;
        loop {
            let wait = match self.runtime.block_on(self.attempt(body.clone(), deadline)) {
                Ok(()) => return Ok(()),
                Err(Failure::Final(message)) => return Err(OTelSdkError::InternalFailure(message)),
                Err(Failure::Retry(after, message)) => {
                    let wait = after.unwrap_or(pause);
                    if retries == self.retries || Instant::now() + wait >= deadline {
                        return Err(OTelSdkError::InternalFailure(message));
                    }
                    wait
                }
            };
            // The processor's own thread, between attempts: sleeping is what it would do.
            std::thread::sleep(wait);
            retries += 1;
            pause = (pause * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// One POST of the encoded batch.
    async fn attempt(&self, body: Bytes, deadline: Instant) -> Result<(), Failure> {
        // The pooled connection's task ran last during the previous export: let it see what came
        // since (a collector's close after an idle timeout) before a request is put on it.
        tokio::task::yield_now().await;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .timeout(remaining)
            .body(body)
            .send()
            .await
            // Without the URL: the message is for logs, and the URL is in the start-up line.
            .map_err(|e| {
                Failure::Retry(None, format!("OTLP export failed: {}", e.without_url()))
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if !status.is_success() {
            // The body is not read into the message: a collector may echo the request's headers.
            let message = format!("OTLP export failed with status {status}");
            return Err(match status {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    Failure::Retry(retry_after, message)
                }
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                    Failure::Retry(None, message)
                }
                _ => Failure::Final(message),
            });
        }
        // The spans were accepted (2xx): from here on nothing is retried, which would send them
        // twice; an answer that cannot be read is only a partial-success report lost.
        let mut answer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            if answer.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Ok(());
            }
            answer.extend_from_slice(&chunk);
        }
        if let Some(partial) = ExportTraceServiceResponse::decode(answer.as_slice())
            .ok()
            .and_then(|r| r.partial_success)
            .filter(|p| p.rejected_spans > 0 || !p.error_message.is_empty())
        {
            tracing::warn!(
                rejected_spans = partial.rejected_spans,
                error_message = %partial.error_message,
                "the OTLP collector rejected spans"
            );
        }
        Ok(())
    }
}

impl SpanExporter for HttpExporter {
    /// Blocks until the batch is sent or given up (the thread-based batch processor waits for the
    /// result anyway), then returns a ready future.
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.export_batch(&batch))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    use super::*;

    /// Reads one HTTP/1.1 request with a `content-length` body off `stream`; returns its head,
    /// lower-cased.
    fn read_request(stream: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut byte = [0_u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            seen.push(byte[0]);
        }
        let head = String::from_utf8(seen).unwrap().to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0_u8; length];
        stream.read_exact(&mut body).unwrap();
        head
    }

    /// A collector answering one request per connection with each of `responses` in turn (then
    /// closing), sending every request's head to the returned channel.
    fn collector<R: AsRef<[u8]> + Send + 'static>(
        responses: Vec<R>,
    ) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let (heads, received) = mpsc::channel();
        std::thread::spawn(move || {
            for (stream, response) in listener.incoming().zip(responses) {
                let mut stream = stream.unwrap();
                heads.send(read_request(&mut stream)).unwrap();
                stream.write_all(response.as_ref()).unwrap();
            }
        });
        (url, received)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

    /// Exports an empty batch the way the SDK's batch thread does: a plain executor, no tokio context.
    fn export(exporter: &HttpExporter) -> OTelSdkResult {
        futures_executor::block_on(exporter.export(Vec::new()))
    }

    #[test]
    fn throttling_and_gateway_errors_are_retried_then_the_batch_is_sent_with_the_headers() {
        let (url, heads) = collector(vec![
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            OK,
        ]);
        let headers =
            headers_from_env(&env_of(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=k%201")])).unwrap();
        let exporter = HttpExporter::new(&url, headers, Duration::from_secs(10)).unwrap();
        export(&exporter).unwrap();
        let heads: Vec<String> = heads.try_iter().collect();
        assert_eq!(heads.len(), 3, "{heads:?}");
        for head in &heads {
            assert!(head.starts_with("post /v1/traces "), "{head}");
            assert!(
                head.contains("content-type: application/x-protobuf"),
                "{head}"
            );
            assert!(head.contains("api-key: k 1"), "{head}");
        }
    }

    #[test]
    fn a_partial_success_is_accepted_and_reported() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "span name too long".to_owned(),
            }),
        }
        .encode_to_vec();
        let head = format!(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        let mut response = head.into_bytes();
        response.extend_from_slice(&answer);
        let (url, heads) = collector(vec![response]);
        let exporter = HttpExporter::new(&url, HeaderMap::new(), Duration::from_secs(10)).unwrap();
        let sink = super::super::json_log::tests::Buf::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || export(&exporter).unwrap());
        assert_eq!(heads.try_iter().count(), 1);
        let lines = sink.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["fields"]["rejected_spans"], 2);
        assert_eq!(
            lines[0]["fields"]["message"],
            "the OTLP collector rejected spans"
        );
        assert_eq!(lines[0]["fields"]["error_message"], "span name too long");
    }

    #[test]
    fn a_client_error_is_not_retried() {
        let (url, heads) = collector(vec![
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            OK,
        ]);
        let exporter = HttpExporter::new(&url, HeaderMap::new(), Duration::from_secs(10)).unwrap();
        let err = export(&exporter).unwrap_err().to_string();
        assert!(err.contains("400"), "{err}");
        assert_eq!(heads.try_iter().count(), 1);
    }

    #[test]
    fn retries_stop_at_the_limit() {
        let unavailable = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let (url, heads) = collector(vec![unavailable; 6]);
        let exporter = HttpExporter::new(&url, HeaderMap::new(), Duration::from_secs(10)).unwrap();
        let err = export(&exporter).unwrap_err().to_string();
        assert!(err.contains("503"), "{err}");
        assert_eq!(heads.try_iter().count(), 1 + MAX_RETRIES as usize);
    }

    #[test]
    fn after_shutdown_exports_are_refused() {
        let exporter = HttpExporter::new(
            "http://127.0.0.1:9/v1/traces",
            HeaderMap::new(),
            Duration::from_secs(1),
        )
        .unwrap();
        exporter.shutdown().unwrap();
        assert!(matches!(
            export(&exporter),
            Err(OTelSdkError::AlreadyShutdown)
        ));
        assert!(exporter.shutdown().is_err());
    }

    #[test]
    fn an_export_after_the_collector_closed_the_pooled_connection_succeeds() {
        // A collector that closes every connection after one response without saying so (no
        // `connection: close`), as an idle timeout does: the client keeps the connection pooled,
        // and its runtime runs only while an export is sent, so the close is noticed at the next one.
        // The close comes after the export returned, so the client cannot have seen it then.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (may_close, close) = mpsc::channel::<()>();
        let (closed_tx, closed) = mpsc::channel();
        let collector = std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                read_request(&mut stream);
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .unwrap();
                close.recv().unwrap();
                drop(stream);
                closed_tx.send(()).unwrap();
            }
        });
        let mut exporter = HttpExporter::new(
            &format!("http://{addr}/v1/traces"),
            HeaderMap::new(),
            Duration::from_secs(5),
        )
        .unwrap();
        // A retry on a new connection would hide a request sent on the dead one.
        exporter.retries = 0;
        for attempt in 0..2 {
            export(&exporter).unwrap_or_else(|e| panic!("export {attempt}: {e}"));
            may_close.send(()).unwrap();
            closed
                .recv_timeout(Duration::from_secs(5))
                .expect("the collector closed the connection");
        }
        collector.join().unwrap();
    }

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn headers_come_from_the_traces_variable_first_and_are_decoded() {
        let headers = headers_from_env(&env_of(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-general=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                " api-key = s%3Dcret%20value , x-team=a,,x-team=b",
            ),
        ]))
        .unwrap();
        assert_eq!(headers["api-key"], "s=cret value");
        assert!(headers["api-key"].is_sensitive());
        let teams: Vec<_> = headers.get_all("x-team").iter().collect();
        assert_eq!(teams, ["a", "b"]);
        assert!(headers.get("x-general").is_none());

        let general =
            headers_from_env(&env_of(&[("OTEL_EXPORTER_OTLP_HEADERS", "x-general=1")])).unwrap();
        assert_eq!(general["x-general"], "1");
        assert!(headers_from_env(&env_of(&[])).unwrap().is_empty());
    }

    #[test]
    fn bad_headers_are_errors_that_do_not_show_the_value() {
        for bad in [
            "no-equals-sign",
            "bad name=secret-1",
            "x=%FFsecret-1",
            "x=line\nbreak",
        ] {
            let err = headers_from_env(&env_of(&[("OTEL_EXPORTER_OTLP_HEADERS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn debug_shows_header_names_only() {
        let mut headers = HeaderMap::new();
        headers.insert("api-key", HeaderValue::from_static("sk-secret-value"));
        let exporter = HttpExporter::new(
            "http://127.0.0.1:4318/v1/traces",
            headers,
            Duration::from_secs(1),
        )
        .unwrap();
        let debug = format!("{exporter:?}");
        assert!(debug.contains("api-key"), "{debug}");
        assert!(!debug.contains("sk-secret"), "{debug}");
    }
}
