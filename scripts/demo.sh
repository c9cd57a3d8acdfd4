#!/usr/bin/env bash
# Sets up a fresh clone and runs the demo sagas on the embedded in-memory default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/choreo demo "$@"
