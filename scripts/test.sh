#!/usr/bin/env bash
# Sets up a fresh clone and runs every check: ruff, mypy strict, and the whole test suite
# against the in-memory transport and against a real Kafka broker and Redis server that
# the tests start themselves (Kafka jars from Maven Central, redis-server from apt).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Install redis-server (apt-get, when missing) and resolve the Kafka jars (Maven Central,
# cached in ~/.cache/choreo) now, so their time is not charged to a test's timeout.
.venv/bin/python -m choreo.local.redis_server ensure
.venv/bin/python -m choreo.local.postgres_server ensure
.venv/bin/python -m choreo.local.kafka_broker ensure
# The live dashboard is tested in a real terminal under tmux (Debian's package).
if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q tmux >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q tmux >/dev/null; }
  else
    echo "tmux is missing: install it (apt-get install tmux) for the dashboard test" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -v --durations=15 "$@"
