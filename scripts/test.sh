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
.venv/bin/python -m choreo.local.kafka_broker ensure
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -v --durations=15 "$@"
