//! A private `redis-server` for tests: started on a free port of 127.0.0.1 with persistence off, killed
//! when dropped, and stoppable/restartable on the same port to test what happens while Redis is down.
//!
//! When `redis-server` is not installed, [`RedisServer::start_or_skip`] says so on stderr and gives
//! `None`, so the test can return early, except under `CI=true`, where a missing server is an error:
//! CI must run every test. `scripts/test` installs the server where it can.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Why no server could be started.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    /// No `redis-server` on `PATH`.
    #[error("`redis-server` is not installed (not found on PATH): {0}")]
    NotInstalled(&'static str),
    /// The server did not come up.
    #[error("could not start redis-server: {0}")]
    Failed(String),
}

/// What to install, for the messages.
const INSTALL_HINT: &str = "install it (`apt-get install redis-server`, `brew install redis`) or run scripts/test, which does";

/// How long a server may take to answer its first PING.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Attempts at finding a port nobody else takes between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;

/// A running private `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Result<Self, RedisServerError> {
        let binary =
            find_on_path("redis-server").ok_or(RedisServerError::NotInstalled(INSTALL_HINT))?;
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut server = Self {
                binary: binary.clone(),
                port,
                child: None,
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                // Someone took the port between the probe and the bind: try another one.
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(RedisServerError::Failed(last_error))
    }

    /// [`RedisServer::start`], except that a missing `redis-server` gives `Ok(None)` after a message on
    /// stderr (the test then skips itself), unless the environment variable `CI` is `true`.
    pub async fn start_or_skip() -> Result<Option<Self>, RedisServerError> {
        match Self::start().await {
            Ok(server) => Ok(Some(server)),
            Err(RedisServerError::NotInstalled(hint))
                if std::env::var("CI").map_or(true, |v| v != "true") =>
            {
                eprintln!(
                    "SKIPPED: this test needs `redis-server`, which is not installed; {hint}"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: nothing is saved) and waits until the process is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), RedisServerError> {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| RedisServerError::Failed(format!("spawning redis-server: {e}")))?;
        let pid = child.id();
        self.child = Some(child);
        let result = self.wait_ready(pid).await;
        if result.is_err() {
            self.stop();
        }
        result
    }

    /// Polls until the server answers and is ours (its `process_id` is the child's: another server
    /// that grabbed the port would answer too), or the child exited, or the deadline passed.
    async fn wait_ready(&mut self, pid: u32) -> Result<(), RedisServerError> {
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let url = self.url();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(RedisServerError::Failed(format!(
                    "redis-server on port {} exited with {status}",
                    self.port
                )));
            }
            if let Ok(answer) = info_server(&url).await {
                let ours = answer
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"));
                return if ours {
                    Ok(())
                } else {
                    Err(RedisServerError::Failed(format!(
                        "port {} answered by another server",
                        self.port
                    )))
                };
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RedisServerError::Failed(format!(
                    "redis-server on port {} did not answer within {START_DEADLINE:?}",
                    self.port
                )));
            }
            // Polling an external process for readiness: there is nothing to be notified by.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `INFO server` on a fresh connection.
async fn info_server(url: &str) -> Result<String, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
}

/// A port free right now on 127.0.0.1.
fn free_port() -> Result<u16, RedisServerError> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(|e| RedisServerError::Failed(format!("finding a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| RedisServerError::Failed(format!("finding a free port: {e}")))
}

/// The first executable file called `name` in a directory of `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
