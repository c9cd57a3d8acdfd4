"""The faults, one function per scenario of issue 13, each returning a ``Scenario``."""

from __future__ import annotations

import asyncio

from tests.faults.app import KILL_POINTS
from tests.faults.harness import SERVICES, LifePlan, Run, Scenario


def kill_points(counts: tuple[int, int, int] = (20, 8, 20)) -> Scenario:
    """(1) Every participant dies by SIGKILL at each point in turn: its first life at the
    20th handler (before the effect is recorded), its second after the 8th
    batch's barrier commit (effect recorded, nothing sent), its third after the 20th
    acknowledged record (offsets not committed); its fourth lives on."""
    plans: dict[str, list[LifePlan]] = {
        name: [
            {"FAULTS_KILL_AT": point, "FAULTS_KILL_COUNT": str(count)}
            for point, count in zip(KILL_POINTS, counts, strict=True)
        ]
        for name in SERVICES
    }

    async def note(run: Run) -> None:
        run.note(f"self-SIGKILL at {'/'.join(KILL_POINTS)} in turn, x {len(SERVICES)} services")

    return Scenario("kill points", fault=note, plans=plans)


def kill_loop(every: tuple[float, float] = (1.5, 4.0)) -> Scenario:
    """(1) A random participant SIGKILLed every 1.5-4 s (seeded) while sagas run; the
    fleet restarts it as an orchestrator would."""

    async def loop(run: Run) -> None:
        kills = 0
        while not run.done_publishing.is_set():
            await asyncio.sleep(run.rng.uniform(*every))
            victim = run.fleet.procs[run.rng.choice(SERVICES)]
            if victim.alive():
                victim.kill()
                kills += 1
        run.note(f"{kills} random SIGKILLs")

    return Scenario("kill loop", fault=loop)
