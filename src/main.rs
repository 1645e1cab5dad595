//! The `sluice` binary: parse the command line, load the config, start logging, serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::request_log::RequestLog;
use sluice::shutdown::{self, Shutdown};
use sluice::{AppState, InitError, app, telemetry};

/// mimalloc instead of the system allocator. The request path hands records, log lines and spans to
/// background threads (request log, log writer, span export), which free them: with glibc's malloc
/// those cross-thread frees take the allocating thread's arena lock and consolidate chunks, which
/// `perf` showed as a sixth of what turning observability on cost the request thread. mimalloc frees
/// across threads without a lock. (Not in secure mode: guard pages and encrypted free lists cost ~10%.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest wait for the request log to write what is queued at shutdown.
const REQUEST_LOG_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "sluice", version, about = "A small, fast LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default command).
    Serve {
        /// Config file; without it the embedded default (mock provider, no keys) is used.
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding `server.listen`.
        #[arg(long, short)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config file (and its environment overrides) and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Manage virtual API keys of a running gateway through its admin API (admin key in the
    /// `SLUICE_ADMIN_KEY` environment variable).
    Keys(sluice::cli::KeysArgs),
    /// Evaluate RAG answers through a running gateway's `/v1/evaluations/rag` (API key in the
    /// environment variable named by `--api-key-env`, default `SLUICE_API_KEY`).
    Eval(sluice::eval::cli::EvalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        config: None,
        listen: None,
    }) {
        Command::Keys(args) => match keys(args) {
            Ok(out) => {
                use std::io::Write as _;
                // The command's output is its result (a secret, a table): stdout, not the log.
                match writeln!(std::io::stdout().lock(), "{out}") {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(_) => ExitCode::FAILURE,
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Eval(args) => match eval(&args) {
            Ok(out) => {
                use std::io::Write as _;
                match writeln!(std::io::stdout().lock(), "{out}") {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(_) => ExitCode::FAILURE,
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(config) => {
                eprintln!(
                    "{}: ok ({} providers, {} models)",
                    file.display(),
                    config.providers.len(),
                    config.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(78) // EX_CONFIG
            }
        },
        Command::Serve { config, listen } => match run(config.as_deref(), listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn keys(args: sluice::cli::KeysArgs) -> Result<String, String> {
    let admin_key = sluice::cli::admin_key_from_env().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(sluice::cli::run_keys(args.command, &args.url, &admin_key))
        .map_err(|e| e.to_string())
}

fn eval(args: &sluice::eval::cli::EvalArgs) -> Result<String, String> {
    let sluice::eval::cli::EvalCommand::Rag(rag) = &args.command;
    let api_key = std::env::var(&rag.api_key_env)
        .ok()
        .filter(|k| !k.trim().is_empty());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(sluice::eval::cli::run_rag(
            rag,
            &args.url,
            api_key.as_deref(),
        ))
        .map_err(|e| e.to_string())
}

fn run(path: Option<&Path>, listen: Option<SocketAddr>) -> Result<(), InitError> {
    let mut config = Config::load(path)?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let runtime = telemetry::background::server_runtime()?;
    runtime.block_on(async move {
        // Inside the runtime: the OTLP exporter needs one.
        let telemetry = telemetry::init(&config.log, &config.telemetry.otel)
            .map_err(|e| InitError::Config(format!("telemetry.otel: {e}")))?;
        if let Some(guard) = &telemetry.otel {
            tracing::info!(endpoint = guard.endpoint(), protocol = ?guard.protocol(), service = guard.service_name(), "exporting traces over OTLP");
        }
        let (request_log, writer) = if config.request_log.enabled {
            let (log, writer) = RequestLog::open(&config.request_log)
                .map_err(|e| InitError::Config(format!("request_log: {e}")))?;
            (Some(log), Some(writer))
        } else {
            (None, None)
        };
        let shutdown = Shutdown::new(config.server.shutdown_grace);
        let state = AppState::build(&config, shutdown.clone(), request_log).await?;
        let addr = config.server.listen;
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| InitError::Bind { addr, source })?;
        let metrics_listener = match config.telemetry.metrics.listen.filter(|_| config.telemetry.metrics.enabled) {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr).await.map_err(|source| InitError::Bind { addr, source })?,
            ),
            None => None,
        };
        let on_signal = shutdown.clone();
        state.tasks.spawn(async move {
            shutdown::signal().await;
            on_signal.trigger();
        });
        app::serve(listener, metrics_listener, state).await?;
        // Shutdown phases after the server stopped: what the telemetry thread holds (request-log records,
        // access lines, span ends), then the request log, then the spans.
        if !telemetry::drain_background(REQUEST_LOG_FLUSH_TIMEOUT).await {
            tracing::warn!("telemetry thread not drained at shutdown");
        }
        if let Some(writer) = writer {
            let flushed = writer.shutdown(REQUEST_LOG_FLUSH_TIMEOUT).await;
            tracing::info!(flushed, "request log flushed");
        }
        telemetry.shutdown().await;
        Ok(())
    })
}
