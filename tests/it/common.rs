//! Shared test harness: start the real server on 127.0.0.1:0 against in-process mock upstreams, and read
//! SSE responses.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use sluice::config::Config;
use sluice::request_log::{RequestLog, WriterHandle};
use sluice::shutdown::Shutdown;
use sluice::testkit::upstream::MockUpstream;
use sluice::{AppState, app};
use tokio::net::TcpListener;

/// The upstream key the test config names (set in `.cargo/config.toml`).
pub const UPSTREAM_KEY: &str = "sk-test-upstream-0123456789abcdef";

/// A running gateway.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub shutdown: Shutdown,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    pub state: AppState,
    pub request_log: Option<RequestLog>,
    writer: Option<WriterHandle>,
    /// Holds the request-log database for the life of the test.
    pub dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts the gateway with this TOML config, without requiring API keys (tests of other features
    /// call without one); the request log lives in a fresh temporary directory.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(config, dir).await
    }

    /// Like [`TestApp::start`], with its request log and state in `dir` (to restart on them).
    pub async fn start_in(config: &str, dir: tempfile::TempDir) -> Self {
        let mut config = Config::from_toml(config).expect("test config is valid");
        config.auth.required = false;
        Self::start_config(config, dir).await
    }

    /// Starts the gateway with `[auth]` as configured (keys required by default).
    pub async fn start_secured(config: &str, dir: tempfile::TempDir) -> Self {
        Self::start_config(
            Config::from_toml(config).expect("test config is valid"),
            dir,
        )
        .await
    }

    /// Starts the gateway with a parsed config; the request log and state files go to `dir`.
    pub async fn start_config(mut config: Config, dir: tempfile::TempDir) -> Self {
        config.request_log.path = dir.path().join("requests.db");
        config.state.path = dir.path().join("state.db");
        config.sessions.path = dir.path().join("sessions.db");
        let (request_log, writer) = if config.request_log.enabled {
            let (log, writer) = RequestLog::open(&config.request_log).unwrap();
            (Some(log), Some(writer))
        } else {
            (None, None)
        };
        let shutdown = Shutdown::new(config.server.shutdown_grace);
        let state = AppState::build(&config, shutdown.clone(), request_log.clone())
            .await
            .expect("state builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(app::serve(listener, None, state.clone()));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            shutdown,
            server,
            state,
            request_log,
            writer,
            dir,
        }
    }

    /// Stops the server and flushes the request log; returns the directory for a restart.
    pub async fn stop(mut self) -> (tempfile::TempDir, Option<RequestLog>) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // As the binary does: what the telemetry thread holds reaches the request log first.
        assert!(sluice::telemetry::drain_background(Duration::from_secs(10)).await);
        if let Some(writer) = self.writer.take() {
            writer.shutdown(Duration::from_secs(10)).await;
        }
        (self.dir, self.request_log)
    }

    /// Waits until `n` calls have finished (their metrics and request-log records are written).
    pub async fn wait_finished(&self, n: u64) {
        assert!(
            self.state
                .obs
                .wait_finished(n, Duration::from_secs(10))
                .await,
            "calls did not finish"
        );
    }

    /// Starts the gateway with the standard config pointing at `upstream`, plus `server` lines in `[server]`
    /// and `provider` lines added to both HTTP providers.
    pub async fn with_upstream(upstream: &MockUpstream, server: &str, provider: &str) -> Self {
        Self::start(&standard_config(&upstream.base_url(), server, provider)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs JSON and returns status and parsed JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self.post(path, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Creates a virtual key through the admin API (authenticated with `admin_key`); returns
    /// (id, secret), after checking the secret's shape and that the stored hash is never returned.
    pub async fn create_key(&self, admin_key: &str, body: serde_json::Value) -> (String, String) {
        let resp = self
            .client
            .post(self.url("/admin/keys"))
            .bearer_auth(admin_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let created: serde_json::Value = resp.json().await.unwrap();
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("sk-sluice-"), "{secret}");
        assert_eq!(
            created["key"]["hash"],
            serde_json::Value::Null,
            "the hash is never returned"
        );
        (created["key"]["id"].as_str().unwrap().to_owned(), secret)
    }

    /// Asserts the gateway still answers.
    pub async fn assert_healthy(&self) {
        let resp = self.client.get(self.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}

/// Mock provider `mock` (model `mock-gpt`), OpenAI-compatible provider `up` (model `gpt` -> `gpt-upstream`)
/// and Anthropic provider `claude` (model `claude` -> `claude-upstream`), both at `base_url`.
pub fn standard_config(base_url: &str, server: &str, provider: &str) -> String {
    format!(
        r#"
[server]
shutdown_grace = "5s"
{server}

[providers.mock]
kind = "mock"
output_tokens = 5

[providers.up]
kind = "openai"
base_url = "{base_url}"
api_key_env = "SLUICE_TEST_UPSTREAM_KEY"
{provider}

[providers.claude]
kind = "anthropic"
base_url = "{base_url}"
api_key_env = "SLUICE_TEST_UPSTREAM_KEY"
{provider}

[models.mock-gpt]
provider = "mock"

[models.gpt]
provider = "up"
upstream = "gpt-upstream"

[models.claude]
provider = "claude"
upstream = "claude-upstream"

[models.mock-embed]
provider = "mock"
"#
    )
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// Reads a whole SSE response into events.
pub async fn read_sse(resp: reqwest::Response) -> Vec<Sse> {
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "not an event stream: {:?}",
        resp.headers()
    );
    let mut events = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("stream stalled")
    {
        let event = event.expect("well-formed SSE");
        out.push(Sse {
            event: event.event,
            data: event.data,
        });
    }
    out
}

/// The text of an OpenAI chat stream: `choices[0].delta.content` joined.
pub fn chat_text(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A chat request body.
pub fn chat_body(model: &str, text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}], "stream": stream})
}

/// Starts the real `sluice` binary with `config`, its request log and state files in `dir` and extra
/// environment `env`, on a port it picks; returns the child and its address, read from its JSON log.
pub async fn spawn_sluice(
    config: &std::path::Path,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    let (child, addr, _log) = spawn_sluice_logging(config, dir, env).await;
    (child, addr)
}

/// [`spawn_sluice`], also returning every JSON record the binary writes to stdout, in order; the
/// channel ends when stdout closes (the process exited).
pub async fn spawn_sluice_logging(
    config: &std::path::Path,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    String,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("SLUICE_LOG__FORMAT", "json")
        .env("SLUICE_REQUEST_LOG__PATH", dir.join("requests.db"))
        .env("SLUICE_STATE__PATH", dir.join("state.db"))
        .env("SLUICE_SESSIONS__PATH", dir.join("sessions.db"))
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        // Keeps reading to the end, so the child never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if record["message"] == "sluice listening"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(record["addr"].as_str().unwrap().to_owned());
            }
            // No one may be listening (`spawn_sluice`).
            let _ = log_tx.send(record);
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("sluice started")
        .unwrap();
    (child, addr, log_rx)
}
