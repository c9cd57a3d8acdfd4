"""The full two-worker run (1,000 sagas) of tests/test_tracker_workers.py: two faust
tracker workers of one app id, one SIGKILLed; the survivor takes its partitions, fires its
deadlines, serves every saga by gid, and its states equal a replay of the topics; without
and with a standby replica of each partition. Runs with scripts/faults.sh
(CHOREO_FAULTS=1); the default run has the 200-saga smoke version."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_tracker_workers import run_two_workers

pytestmark = [
    pytest.mark.faults,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]


@pytest.mark.parametrize("standby", [0, 1])
async def test_two_workers_with_1000_sagas_survive_a_sigkill(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, standby: int
) -> None:
    await run_two_workers(kafka_bootstrap, redis_url, tmp_path, 1000, standby)
