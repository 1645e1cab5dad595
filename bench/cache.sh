#!/usr/bin/env bash
# Exact-cache hit latency: see bench/modes.sh (SUITE=cache).
SUITE=cache exec "$(dirname "${BASH_SOURCE[0]}")/modes.sh" "$@"
