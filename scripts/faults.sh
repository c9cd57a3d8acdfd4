#!/usr/bin/env bash
# The fault-injection suite (issue 13): every scenario of tests/faults (about 2 minutes
# each) on its own real Kafka broker and Redis server, with every participant and the
# tracker as processes; writes the results table to docs/faults.md. Exits 1 if a
# scenario's invariants fail (the table says which).
#   scripts/faults.sh                 # all scenarios
#   scripts/faults.sh -k "poison"     # some (pytest -k); docs/faults.md gets their rows
#   scripts/faults.sh --seeds 13,14,15 -k reordering   # each scenario once per seed
# With pytest arguments, docs/faults.md keeps the rows of the scenarios (and seeds) not run.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=""
if [ "${1:-}" = "--seeds" ]; then
  seeds="${2:?--seeds needs a comma-separated list, e.g. 13,14,15}"
  shift 2
fi
[ -x .venv/bin/python ] || scripts/setup.sh
.venv/bin/python -m choreo.local.redis_server ensure
.venv/bin/python -m choreo.local.kafka_broker ensure
.venv/bin/python -m choreo.local.postgres_server ensure
keep=()
[ "$#" -eq 0 ] || keep=(--keep)  # some scenarios: the other rows of docs/faults.md stay
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
status=0
CHOREO_FAULTS=1 CHOREO_FAULTS_RESULTS="$results" CHOREO_FAULTS_SEEDS="$seeds" \
  .venv/bin/python -m pytest -p no:cacheprovider -q -s -m faults tests/faults "$@" || status=$?
if [ -s "$results" ]; then
  .venv/bin/python -m tests.faults.report "${keep[@]}" "$results" docs/faults.md
fi
exit "$status"
