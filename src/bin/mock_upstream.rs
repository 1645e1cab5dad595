//! `sluice-mock-upstream`: runs the mock OpenAI/Anthropic upstream as a standalone server for load benchmarks.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice::testkit::upstream::{Behavior, MockUpstream};
use tokio::net::TcpListener;

/// Command-line options of the mock upstream.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-mock-upstream",
    version,
    about = "A fast mock LLM upstream speaking the OpenAI and Anthropic wire formats."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Reply with N fragments of " tok" (default: a short fixed sentence).
    #[arg(long, value_name = "N")]
    tokens: Option<usize>,
    /// Delay before the first stream event, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    ttft_ms: u64,
    /// Delay between stream events, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    token_delay_ms: u64,
    /// Do not record requests (for benchmarks: keeps memory flat and skips the recorder lock).
    #[arg(long)]
    no_record: bool,
    /// Also run an OTLP/HTTP trace receiver (for benchmarks with trace export on); prints its address.
    #[arg(long)]
    otlp: bool,
    /// With --otlp: decode and count the exported spans but keep none (cheaper; for benchmarks).
    #[arg(long, requires = "otlp")]
    otlp_count_only: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut behavior = Behavior {
        ttft: Duration::from_millis(args.ttft_ms),
        token_delay: Duration::from_millis(args.token_delay_ms),
        ..Behavior::default()
    };
    if let Some(n) = args.tokens {
        behavior.reply = vec![" tok".to_owned(); n];
    }
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "sluice-mock-upstream: cannot listen on {}: {err}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let upstream = match MockUpstream::start_on(listener, behavior).await {
        Ok(upstream) => upstream,
        Err(err) => {
            eprintln!("sluice-mock-upstream: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    upstream.set_recording(!args.no_record);
    eprintln!("listening on {}", upstream.addr());
    // Kept alive until exit.
    let _otlp = if args.otlp {
        let receiver = if args.otlp_count_only {
            sluice::testkit::otlp::OtlpReceiver::start_counting().await
        } else {
            sluice::testkit::otlp::OtlpReceiver::start().await
        };
        match receiver {
            Ok(receiver) => {
                eprintln!("otlp receiver on {}", receiver.addr());
                Some(receiver)
            }
            Err(err) => {
                eprintln!("sluice-mock-upstream: cannot start the OTLP receiver: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    match tokio::signal::ctrl_c().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice-mock-upstream: cannot wait for Ctrl-C: {err}");
            ExitCode::FAILURE
        }
    }
}
