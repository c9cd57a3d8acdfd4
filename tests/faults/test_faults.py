"""The fault-injection scenarios (issue 13). Each runs the seeded workload of
``tests.faults.harness`` (200 sagas: success, business failures, a silent step timed out
by the tracker, a late success after the deadline) on its own Kafka and Redis, every
participant and the tracker an OS process, injects its fault and checks every invariant
of ``tests.faults.checker`` offline. A failing invariant fails the test and names the
gids. Each result row is printed and, with ``CHOREO_FAULTS_RESULTS=FILE``, appended to
that file (JSON lines) for scripts/faults.sh's table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.faults import scenarios
from tests.faults.checker import check, table
from tests.faults.harness import Outcome, Scenario, run_scenario

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.faults,
              pytest.mark.timeout(300)]  # fmt: skip


async def run_and_check(scenario: Scenario, tmp_path: Path) -> Outcome:
    print(f"\nscenario {scenario.name}: {scenario.sagas} sagas, seed {scenario.seed}")
    outcome = await run_scenario(scenario, tmp_path)
    verdict = check(outcome)
    print(table([verdict.row]))
    results = os.environ.get("CHOREO_FAULTS_RESULTS")
    if results:
        with Path(results).open("a") as out:
            out.write(json.dumps(verdict.row) + "\n")
    assert verdict.ok, f"{verdict.explain()}\nlogs in {outcome.logs}"
    return outcome


@pytest.mark.faults_smoke
async def test_kill_points(tmp_path: Path) -> None:
    """(1) Each participant SIGKILLed at each point of a batch in turn."""
    await run_and_check(scenarios.kill_points(), tmp_path)


async def test_baseline(tmp_path: Path) -> None:
    """No fault: the workload and the checker alone."""
    await run_and_check(Scenario("baseline"), tmp_path)
