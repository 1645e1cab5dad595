//! The pooled HTTP client of one provider: connect timeout, per-read idle timeout, keep-alive pool,
//! HTTP/2 through ALPN, rustls, no redirects, credentials as sensitive default headers.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use serde::de::DeserializeOwned;

use super::sse_decode::error_from_upstream;
use crate::InitError;
use crate::config::HttpProviderConfig;
use crate::error::GatewayError;

/// Builds the provider's client. `auth` is the credential header (name, value) if the provider has a key.
pub fn build(
    name: &str,
    config: &HttpProviderConfig,
    auth: Option<(HeaderName, String)>,
) -> Result<reqwest::Client, InitError> {
    let mut headers = HeaderMap::new();
    if let Some((header, secret)) = auth {
        let mut value = HeaderValue::from_str(&secret).map_err(|_| {
            InitError::Config(format!(
                "providers.{name}: the API key is not a valid header value"
            ))
        })?;
        // Sensitive values are redacted from Debug output and never indexed by HPACK.
        value.set_sensitive(true);
        headers.insert(header, value);
    }
    for (k, v) in &config.headers {
        let name_ = HeaderName::try_from(k.as_str()).map_err(|_| {
            InitError::Config(format!("providers.{name}.headers: invalid name {k}"))
        })?;
        let value = HeaderValue::from_str(v).map_err(|_| {
            InitError::Config(format!("providers.{name}.headers.{k}: invalid value"))
        })?;
        headers.insert(name_, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        // Only the connect phase is timed here. First byte, idle and total are enforced by
        // `provider::Route` for every provider alike (a reqwest `timeout` would cut long streams, and a
        // second idle timer here would race the one that reports the phase).
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(30))
        // Upstream URLs come only from config; a redirect must not send the key somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| InitError::Config(format!("providers.{name}: cannot build HTTP client: {e}")))
}

/// Reads the key named by `api_key_env`, if any.
pub fn api_key(name: &str, config: &HttpProviderConfig) -> Result<Option<String>, InitError> {
    match &config.api_key_env {
        None => Ok(None),
        Some(var) => std::env::var(var).map(Some).map_err(|_| {
            InitError::Config(format!("providers.{name}.api_key_env: {var} is not set"))
        }),
    }
}

/// An upstream endpoint: the configured base URL joined with a path (`chat/completions`), parsed once
/// when the provider is built. Given the URL as a string, `reqwest` parses it again for every request
/// (~6,000 instructions, a twentieth of the request thread's work per call: callgrind,
/// `bench/instructions.sh`); a parsed URL is cloned instead.
#[derive(Debug, Clone)]
pub struct Endpoint(reqwest::Url);

impl Endpoint {
    /// `base_url` joined with `path`.
    ///
    /// # Errors
    /// When the result is not a URL (the config's validation rejects such a base URL first).
    pub fn new(provider: &str, base_url: &str, path: &str) -> Result<Self, InitError> {
        let joined = format!("{}/{}", base_url.trim_end_matches('/'), path);
        reqwest::Url::parse(&joined).map(Self).map_err(|e| {
            InitError::Config(format!("providers.{provider}.base_url: not a URL ({e})"))
        })
    }

    /// The URL, for one request.
    pub fn url(&self) -> reqwest::Url {
        self.0.clone()
    }
}

/// Largest upstream error body read (bytes).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Sends a request upstream. `first_byte` bounds the wait for the response headers (for a non-streaming
/// call they come after the whole generation, so it bounds that too); a non-2xx answer becomes the
/// matching `GatewayError` with the upstream's message.
pub async fn send(
    provider: &str,
    request: reqwest::RequestBuilder,
    first_byte: Duration,
) -> Result<reqwest::Response, GatewayError> {
    let response = tokio::time::timeout(first_byte, request.send())
        .await
        .map_err(|_| GatewayError::UpstreamTimeout {
            provider: provider.to_owned(),
            phase: "first byte",
        })?
        .map_err(|e| transport_error(provider, &e))?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = read_capped(response, ERROR_BODY_LIMIT).await;
    Err(error_from_upstream(provider, status, &body))
}

/// Reads and parses a whole JSON response body.
pub async fn read_json<T: DeserializeOwned>(
    provider: &str,
    response: reqwest::Response,
) -> Result<T, GatewayError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(provider, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| GatewayError::UpstreamFailed {
        provider: provider.to_owned(),
        message: format!("the upstream sent a response Sluice cannot read: {e}"),
    })
}

/// The gateway error for a transport failure.
pub fn transport_error(provider: &str, e: &reqwest::Error) -> GatewayError {
    if e.is_timeout() {
        let phase = if e.is_connect() { "connect" } else { "idle" };
        GatewayError::UpstreamTimeout {
            provider: provider.to_owned(),
            phase,
        }
    } else {
        GatewayError::UpstreamFailed {
            provider: provider.to_owned(),
            message: describe(e),
        }
    }
}

/// Why a request to the upstream failed, in words safe for a client (no URL, no credentials).
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "could not connect to the upstream".to_owned()
    } else if e.is_timeout() {
        "the upstream timed out".to_owned()
    } else if e.is_body() || e.is_decode() {
        "the upstream connection broke while reading the response".to_owned()
    } else {
        "the request to the upstream failed".to_owned()
    }
}

/// Reads at most `limit` bytes of an error response body.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_joins_the_base_url_and_the_path_once() {
        for base in ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/"] {
            let e = Endpoint::new("up", base, "chat/completions").unwrap();
            assert_eq!(
                e.url().as_str(),
                "http://127.0.0.1:8000/v1/chat/completions"
            );
        }
        let err = Endpoint::new("up", "not a url", "messages").unwrap_err();
        assert!(err.to_string().contains("providers.up.base_url"), "{err}");
    }
}
