#!/usr/bin/env bash
# The long fuzz run: Hypothesis over the codec, the dispatcher and the tracker's fold with
# many examples per property (the README's test command runs a quick sample of the same).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CHOREO_FUZZ_EXAMPLES="${CHOREO_FUZZ_EXAMPLES:-5000}"
.venv/bin/python -m pytest -q -p no:logging tests/test_fuzz.py tests/test_codec.py tests/test_api_fuzz.py "$@"
