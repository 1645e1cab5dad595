#!/usr/bin/env bash
# Observability overhead: see bench/modes.sh (SUITE=observability).
SUITE=observability exec "$(dirname "${BASH_SOURCE[0]}")/modes.sh" "$@"
