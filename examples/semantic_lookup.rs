//! Micro-benchmark of the semantic cache tier: lookup latency (embedding + index search) with
//! `ENTRIES` entries in one scope (the worst case: every entry is compared), and the memory the index
//! takes per entry. Run by `bench/semantic.sh`; results in docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example semantic_lookup -- EMBEDDER [ENTRIES] [QUERIES]
//! ```
//! EMBEDDER: `hashing` (the stand-in), `local` (all-MiniLM-L6-v2; needs `--features local-embedder`
//! and `SLUICE_MINILM_DIR`), or `model` (an OpenAI-compatible embeddings upstream on loopback, started
//! here, 1536 dimensions like text-embedding-3-small, called through Sluice's provider layer).

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::cast_precision_loss,
    reason = "a benchmark program: it prints its results and stops at the first failure"
)]

use std::time::{Duration, Instant};

use sluice::cache::key::CacheKey;
use sluice::cache::semantic::guards::Signature;
use sluice::cache::semantic::tier::EntryMeta;

/// Dimensions of the loopback embeddings upstream.
const UPSTREAM_DIMS: usize = 1536;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A deterministic pseudo-random unit vector (xorshift).
fn vector(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2_000_001) as f32 / 1_000_000.0 - 1.0
        })
        .collect();
    sluice::embed::normalize(&mut v);
    v
}

/// An OpenAI-compatible `/v1/embeddings` on loopback answering `UPSTREAM_DIMS`-dimensional vectors.
async fn embeddings_upstream() -> String {
    use axum::Json;
    use serde_json::{Value, json};
    async fn embed(Json(body): Json<Value>) -> Json<Value> {
        let inputs: Vec<String> = match &body["input"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_owned())
                .collect(),
            _ => Vec::new(),
        };
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let seed = text
                    .bytes()
                    .fold(7_u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
                json!({"object": "embedding", "index": i, "embedding": vector(seed, UPSTREAM_DIMS)})
            })
            .collect();
        Json(json!({"object": "list", "data": data, "model": "emb",
                    "usage": {"prompt_tokens": 8, "total_tokens": 8}}))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/v1/embeddings", axum::routing::post(embed));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index into a small slice"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{name}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
        samples.len()
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "hashing".to_owned());
    let entries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let queries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let semantic = match kind.as_str() {
        "hashing" => "embedder = \"hashing\"".to_owned(),
        "local" => format!(
            "embedder = \"local\"\nmodel_dir = \"{}\"",
            std::env::var("SLUICE_MINILM_DIR")
                .unwrap_or_else(|_| "models/all-MiniLM-L6-v2".to_owned())
        ),
        "model" => {
            format!("embedder = \"model\"\nembedding_model = \"emb\"\ndimensions = {UPSTREAM_DIMS}")
        }
        other => panic!("unknown embedder {other}: hashing, local or model"),
    };
    let upstream = if kind == "model" {
        embeddings_upstream().await
    } else {
        "http://127.0.0.1:9/v1".to_owned()
    };
    let config = format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{upstream}\"\n\
         [models.emb]\nprovider = \"up\"\nprice = {{ input = \"0.02\", output = \"0\" }}\n\
         [request_log]\nenabled = false\n[auth]\nrequired = false\n\
         [cache.semantic]\nenabled = true\nmax_entries = {entries}\n{semantic}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = sluice::config::Config::from_toml(&config).unwrap();
    config.state.path = dir.path().join("state.db");
    config.sessions.enabled = false;
    let state = sluice::state::AppState::build(
        &config,
        sluice::shutdown::Shutdown::new(Duration::from_secs(1)),
        None,
    )
    .await
    .unwrap();
    let cache = state.cache.clone().unwrap();
    let tier = cache.semantic.as_ref().unwrap();
    let dims = match kind.as_str() {
        "model" => UPSTREAM_DIMS,
        "local" => 384,
        _ => 256,
    };
    let scope = [7_u8; 32];
    let before = rss_bytes();
    for i in 0..entries {
        let text = format!("stored question number {i} about topic {}", i % 997);
        tier.insert(
            scope,
            &vector(i as u64 + 1, dims),
            EntryMeta {
                key: CacheKey([0; 32]),
                tenant: "tenant".into(),
                model: "model".into(),
                text: text.into(),
            },
            Duration::from_hours(1),
        );
    }
    let after = rss_bytes();
    println!(
        "embedder {} ({dims} dims), {entries} entries in one scope: index RSS +{:.1} MiB, {:.0} bytes per entry",
        tier.embedder_id(),
        (after.saturating_sub(before)) as f64 / 1_048_576.0,
        (after.saturating_sub(before)) as f64 / entries.max(1) as f64
    );
    let texts: Vec<String> = (0..queries)
        .map(|i| format!("What is the answer to question {i} about topic {}?", i % 31))
        .collect();
    // Warm-up (first embedder calls load caches, open connections).
    for t in texts.iter().take(20) {
        tier.lookup(&scope, t).await.unwrap();
    }
    let mut whole = Vec::with_capacity(queries);
    let mut embed = Vec::with_capacity(queries);
    let mut search = Vec::with_capacity(queries);
    for t in &texts {
        let started = Instant::now();
        let v = tier.embed(t).await.unwrap();
        embed.push(started.elapsed());
        let signature = Signature::of(t);
        let searched = Instant::now();
        std::hint::black_box(tier.decide(&scope, &v, &signature));
        search.push(searched.elapsed());
        let started = Instant::now();
        std::hint::black_box(tier.lookup(&scope, t).await.unwrap());
        whole.push(started.elapsed());
    }
    report("lookup (embed + search)", whole);
    report("embed only", embed);
    report("search only", search);
}
