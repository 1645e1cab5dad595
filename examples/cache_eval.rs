//! Measures the semantic cache's matching rule ([`guards::decide`]) on the labelled prompt pairs and prints
//! markdown tables: for each embedder, guards off and on, over a threshold sweep; the best configuration with a
//! false-hit rate of at most 1%; the per-kind breakdown at the default threshold; and the same default on the
//! held-out pairs (`tests/data/semantic_pairs_holdout.jsonl`, written after the guards were tuned).
//!
//! ```text
//! cargo run --release --example cache_eval                       # hashing stand-in only
//! SLUICE_MINILM_DIR="$(scripts/fetch-minilm)" \
//!   cargo run --release --features local-embedder --example cache_eval   # + all-MiniLM-L6-v2
//! ```
//! (`bench/cache-eval.sh` does the second.)

use std::io::Write as _;

use sluice::cache::semantic::eval::{self, Config, Report};
use sluice::cache::semantic::guards;
use sluice::embed::Embedder;
use sluice::embed::hashing::HashingEmbedder;

const PAIRS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/semantic_pairs.jsonl"
);
const HOLDOUT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/semantic_pairs_holdout.jsonl"
);
/// The target of issue 6: at most 1% of near-misses served.
const MAX_FALSE_HIT_RATE: f64 = 0.01;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pairs = eval::load_pairs(PAIRS)?;
    let holdout = eval::load_pairs(HOLDOUT)?;
    let mut embedders: Vec<(Box<dyn Embedder>, f32)> = vec![(
        Box::new(HashingEmbedder::new(256)),
        guards::DEFAULT_THRESHOLD_HASHING,
    )];
    add_minilm(&mut embedders)?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Labelled set: {} pairs; held-out set: {} pairs.\n",
        pairs.len(),
        holdout.len()
    )?;
    write_guard_cost(&mut out, &pairs)?;
    for (embedder, default) in &embedders {
        let scored = eval::score(&pairs, embedder.as_ref()).await?;
        writeln!(out, "## Embedder `{}`\n", embedder.id())?;
        let coarse = eval::thresholds(0.50, 0.95, 0.05);
        let mut rows = eval::sweep(&scored, &coarse, false);
        rows.extend(eval::sweep(&scored, &coarse, true));
        writeln!(
            out,
            "### Threshold sweep\n\n{}",
            eval::markdown_table(&rows)
        )?;

        let fine = eval::thresholds(0.30, 0.99, 0.01);
        writeln!(
            out,
            "### Best recall with a false-hit rate ≤ {:.0}% (thresholds 0.30–0.99 by 0.01)\n",
            MAX_FALSE_HIT_RATE * 100.0
        )?;
        let mut best = Vec::new();
        for guards_on in [false, true] {
            let sweep = eval::sweep(&scored, &fine, guards_on);
            if let Some(r) = eval::best(&sweep, MAX_FALSE_HIT_RATE) {
                best.push(r.clone());
            }
        }
        writeln!(out, "{}", eval::markdown_table(&best))?;

        let chosen = eval::evaluate(
            &scored,
            Config {
                threshold: *default,
                guards: true,
            },
        );
        writeln!(
            out,
            "### Default configuration (threshold {default:.2}, guards on)\n\n{}\n{}",
            eval::markdown_table(std::slice::from_ref(&chosen)),
            eval::markdown_breakdown(&chosen)
        )?;
        write_false_hits(&mut out, &chosen, &pairs)?;
        write_blocked_paraphrases(&mut out, &scored, &chosen)?;
        let without = eval::evaluate(
            &scored,
            Config {
                threshold: *default,
                guards: false,
            },
        );
        writeln!(
            out,
            "Same threshold without guards: false hits by kind: {}\n",
            by_kind_false_hits(&without)
        )?;

        write_cross_pairs(&mut out, embedder.as_ref(), &pairs).await?;

        let scored_holdout = eval::score(&holdout, embedder.as_ref()).await?;
        let rows: Vec<Report> = [false, true]
            .into_iter()
            .map(|g| {
                eval::evaluate(
                    &scored_holdout,
                    Config {
                        threshold: *default,
                        guards: g,
                    },
                )
            })
            .collect();
        writeln!(
            out,
            "### Held-out pairs at the default threshold\n\n{}",
            eval::markdown_table(&rows)
        )?;
        if let Some(on) = rows.get(1) {
            write_false_hits(&mut out, on, &holdout)?;
            write_blocked_paraphrases(&mut out, &scored_holdout, on)?;
        }
    }
    Ok(())
}

/// Time to build a signature and to check agreement, per prompt and per pair (mean over the labelled set,
/// repeated 200 times).
fn write_guard_cost(out: &mut impl std::io::Write, pairs: &[eval::Pair]) -> std::io::Result<()> {
    const ROUNDS: u32 = 200;
    let start = std::time::Instant::now();
    let mut sigs = Vec::new();
    for _ in 0..ROUNDS {
        sigs = pairs
            .iter()
            .map(|p| (guards::Signature::of(&p.a), guards::Signature::of(&p.b)))
            .collect();
    }
    let build = start.elapsed();
    let start = std::time::Instant::now();
    let mut agreed = 0_usize;
    for _ in 0..ROUNDS {
        agreed += sigs
            .iter()
            .filter(|(a, b)| guards::agree(a, b).is_ok())
            .count();
    }
    let check = start.elapsed();
    let n = f64::from(u32::try_from(pairs.len()).unwrap_or(u32::MAX));
    let prompts = f64::from(ROUNDS) * 2.0 * n;
    let checks = f64::from(ROUNDS) * n;
    writeln!(
        out,
        "Guard cost on this machine: `Signature::of` {:.1} µs per prompt, `agree` {:.2} µs per pair (means \
         over {ROUNDS} passes; {} agreeing pairs per pass).\n",
        build.as_secs_f64() * 1e6 / prompts,
        check.as_secs_f64() * 1e6 / checks,
        agreed / ROUNDS as usize,
    )
}

/// Union-find root, with path halving.
fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Unlabelled background: every two distinct prompts of the labelled set that are not linked by a `same` pair
/// (so presumably different questions, mostly on unrelated or loosely related topics), matched with the
/// guards on. Near-misses in the labelled set are minimal edits that the guards were tuned on; these pairs
/// show what the threshold alone must keep apart. Hits here need reading: a few are true duplicates across
/// pairs (the set reuses prompts with small rewordings).
async fn write_cross_pairs(
    out: &mut impl std::io::Write,
    embedder: &dyn Embedder,
    pairs: &[eval::Pair],
) -> Result<(), Box<dyn std::error::Error>> {
    let texts = eval::distinct_prompts(pairs);
    let index = |t: &str| texts.binary_search_by(|x| x.as_str().cmp(t)).unwrap_or(0);
    // Union-find over `same` pairs: prompts of one cluster mean the same thing.
    let mut parent: Vec<usize> = (0..texts.len()).collect();
    let mut labelled = std::collections::HashSet::new();
    for p in pairs {
        let (a, b) = (index(&p.a), index(&p.b));
        labelled.insert((a.min(b), a.max(b)));
        if p.label == eval::Label::Same {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            parent[ra] = rb;
        }
    }
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        vectors.extend(embedder.embed(chunk).await?);
    }
    let sigs: Vec<guards::Signature> = texts.iter().map(|t| guards::Signature::of(t)).collect();
    let steps = eval::thresholds(0.50, 0.95, 0.05);
    let mut hits_on = vec![0_usize; steps.len()];
    let mut hits_off = vec![0_usize; steps.len()];
    let mut total = 0_usize;
    let mut top: Vec<(f32, usize, usize)> = Vec::new();
    for i in 0..texts.len() {
        for j in i + 1..texts.len() {
            if labelled.contains(&(i, j)) || root(&mut parent, i) == root(&mut parent, j) {
                continue;
            }
            total += 1;
            let sim = sluice::embed::cosine(&vectors[i], &vectors[j]);
            let agree = guards::agree(&sigs[i], &sigs[j]).is_ok();
            for (k, t) in steps.iter().enumerate() {
                if sim >= *t {
                    hits_off[k] += 1;
                    if agree {
                        hits_on[k] += 1;
                    }
                }
            }
            if agree && sim >= 0.5 {
                top.push((sim, i, j));
            }
        }
    }
    top.sort_by(|x, y| y.0.total_cmp(&x.0));
    writeln!(
        out,
        "### Unlabelled cross pairs ({total} pairs of prompts from different groups)\n\n\
         | threshold | hits, guards off | hits, guards on |\n| ---: | ---: | ---: |"
    )?;
    for (k, t) in steps.iter().enumerate() {
        writeln!(out, "| {t:.2} | {} | {} |", hits_off[k], hits_on[k])?;
    }
    writeln!(
        out,
        "\nMost similar cross pairs that the guards let through:\n"
    )?;
    for (sim, i, j) in top.iter().take(25) {
        writeln!(out, "- {sim:.3}: \"{}\" / \"{}\"", texts[*i], texts[*j])?;
    }
    writeln!(out)?;
    Ok(())
}

/// `same` pairs above the threshold that the guards refused (recall lost to the guards), with the reason.
fn write_blocked_paraphrases(
    out: &mut impl std::io::Write,
    scored: &[eval::Scored],
    r: &Report,
) -> std::io::Result<()> {
    writeln!(
        out,
        "Paraphrases above the threshold blocked by the guards:\n"
    )?;
    for s in scored.iter().filter(|s| s.pair.label == eval::Label::Same) {
        if let guards::Decision::Blocked(m) =
            guards::decide(s.similarity, r.config.threshold, &s.stored, &s.query, true)
        {
            writeln!(
                out,
                "- {} ({m}): \"{}\" / \"{}\"",
                s.pair.id, s.pair.a, s.pair.b
            )?;
        }
    }
    writeln!(out)
}

fn by_kind_false_hits(r: &Report) -> String {
    r.by_kind
        .iter()
        .filter(|(_, c)| c.different() > 0)
        .map(|(k, c)| format!("{k} {}/{}", c.false_hits, c.different()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_false_hits(
    out: &mut impl std::io::Write,
    r: &Report,
    pairs: &[eval::Pair],
) -> std::io::Result<()> {
    if r.false_hit_ids.is_empty() {
        return writeln!(out, "False hits: none.\n");
    }
    writeln!(out, "False hits:\n")?;
    for id in &r.false_hit_ids {
        if let Some(p) = pairs.iter().find(|p| &p.id == id) {
            writeln!(out, "- {} ({}): \"{}\" / \"{}\"", p.id, p.kind, p.a, p.b)?;
        }
    }
    writeln!(out)
}

#[cfg(feature = "local-embedder")]
fn add_minilm(
    embedders: &mut Vec<(Box<dyn Embedder>, f32)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = std::env::var_os("SLUICE_MINILM_DIR") else {
        eprintln!(
            "cache_eval: SLUICE_MINILM_DIR is not set; MiniLM skipped (scripts/fetch-minilm)"
        );
        return Ok(());
    };
    let m = sluice::embed::minilm::MiniLm::load(std::path::Path::new(&dir))?;
    embedders.push((Box::new(m), guards::DEFAULT_THRESHOLD_MINILM));
    Ok(())
}

#[cfg(not(feature = "local-embedder"))]
fn add_minilm(_: &mut Vec<(Box<dyn Embedder>, f32)>) -> Result<(), Box<dyn std::error::Error>> {
    eprintln!("cache_eval: built without the local-embedder feature; MiniLM skipped");
    Ok(())
}
