#!/usr/bin/env bash
# The demo as a deployment, on a real Kafka broker and Redis server (no Docker): starts
# both under ~/.cache/choreo/run/demo, runs each service (`choreo run`) and the faust
# tracker (`choreo tracker`) as its own process, places 30 orders, waits until every saga
# has ended, checks that no stock or money was lost, prints the summary and stops every
# process it started. Exits 1 if a saga did not end or the books do not balance.
#   scripts/demo-kafka.sh [--orders N] [--seed S] [--engine faust|memory] [--run-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m services_demo.multiprocess "$@"
