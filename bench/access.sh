#!/usr/bin/env bash
# Auth and limits overhead, memory and Redis backends: see bench/modes.sh (SUITE=access).
SUITE=access exec "$(dirname "${BASH_SOURCE[0]}")/modes.sh" "$@"
