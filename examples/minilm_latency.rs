//! Latency of one all-MiniLM-L6-v2 embedding of a short query through [`MiniLm`]'s async `embed` (the path the
//! semantic cache takes: channel to the worker thread, tokenize, forward pass, pooling), on this machine.
//!
//! ```text
//! SLUICE_MINILM_DIR="$(scripts/fetch-minilm)" \
//!   cargo run --release --features local-embedder --example minilm_latency [-- RUNS]
//! ```

use std::io::Write as _;
use std::time::{Duration, Instant};

use sluice::embed::Embedder;
use sluice::embed::minilm::MiniLm;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("SLUICE_MINILM_DIR")
        .ok_or("set SLUICE_MINILM_DIR to the model directory (scripts/fetch-minilm prints it)")?;
    let runs: usize = std::env::args().nth(1).map_or(Ok(500), |a| a.parse())?;
    let model = MiniLm::load(std::path::Path::new(&dir))?;
    let query = vec!["What is the capital of Austria?".to_owned()];
    for _ in 0..20 {
        model.embed(&query).await?; // warm-up
    }
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let v = model.embed(&query).await?;
        times.push(start.elapsed());
        std::hint::black_box(v);
    }
    times.sort_unstable();
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short list"
        )]
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times.get(i).copied().unwrap_or_default()
    };
    writeln!(
        std::io::stdout().lock(),
        "minilm-l6-v2, one short query ({:?}), {runs} runs: median {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms",
        query.first().map(String::as_str).unwrap_or_default(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(0.0).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    )?;
    Ok(())
}
