"""The fault-injection scenarios (issue 13). Each runs the seeded workload of
``tests.faults.harness`` (200 sagas: success, business failures, a silent step timed out
by the tracker, a late success after the deadline) on its own Kafka and Redis, every
participant and the tracker an OS process, injects its fault and checks every invariant
of ``tests.faults.checker`` offline. A failing invariant fails the test and names the
gids. Each result row is printed and, with ``CHOREO_FAULTS_RESULTS=FILE``, appended to
that file (JSON lines) for scripts/faults.sh's table."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from choreo.saga import SagaStatus
from services_demo.contract import TOPIC
from tests.faults import scenarios
from tests.faults.app import KILL_POINTS, applied_key, stock_key
from tests.faults.checker import check, table
from tests.faults.harness import SERVICES, Outcome, Scenario, run_scenario

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
    """(1) Each participant SIGKILLed at each point of a batch in turn. Then the checker
    is shown to fail: the same run, tampered with, breaks each invariant it names."""
    out = await run_and_check(scenarios.kill_points(), tmp_path)
    assert out.restarts >= len(SERVICES) * len(KILL_POINTS), out.notes
    gid = out.orders[0].order_id
    start = next(r for r in out.history[TOPIC] if r.key == gid.encode())
    running = out.states[gid].model_copy(update={"status": SagaStatus.RUNNING})
    tampered = {
        "once (store)": {"store": {**out.store, applied_key(gid, "stock", "action"): 2}},
        "books": {"store": {**out.store, stock_key(out.orders[0].sku): 0}},
        "lost": {"history": {**out.history, TOPIC: [r for r in out.history[TOPIC] if r != start]}},
        "terminal": {"states": {**out.states, gid: running}},
        "replay": {"replayed": {**out.replayed, gid: running}},
        "poison": {"poison": [("never-sent", "invalid JSON")]},
    }
    for invariant, changes in tampered.items():
        verdict = check(dataclasses.replace(out, **changes))  # type: ignore[arg-type]
        assert invariant in verdict.violations, (invariant, verdict.violations)
        assert any(gid in v or "never-sent" in v or "stock" in v
                   for v in verdict.violations[invariant]), verdict.violations  # fmt: skip


async def test_kill_loop(tmp_path: Path) -> None:
    """(1) A random participant SIGKILLed every few seconds."""
    await run_and_check(scenarios.kill_loop(), tmp_path)


async def test_baseline(tmp_path: Path) -> None:
    """No fault: the workload and the checker alone."""
    await run_and_check(Scenario("baseline"), tmp_path)
