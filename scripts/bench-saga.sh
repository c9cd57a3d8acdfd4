#!/usr/bin/env bash
# The side-by-side saga benchmark: raw aiokafka relay, FastStream, choreo, choreo + tracker,
# the same 3-step chain on one real Kafka broker and Redis, each step its own process.
#   scripts/bench-saga.sh            # 3 rounds of each, about 7 minutes
#   scripts/bench-saga.sh --quick    # 1 round of each, about 1.5 minutes
#   scripts/bench-saga.sh --profile  # py-spy of one choreo step at saturation
# FastStream is installed into its own virtualenv (~/.cache/choreo/bench-venv-faststream).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup.sh
exec .venv/bin/python -m benchmarks.saga_side_by_side "$@"
