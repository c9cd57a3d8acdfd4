"""The RocksDB store's indexes (``choreo.tracker.faust_index``) under faust's own recovery,
on real Kafka: a ``choreo tracker`` whose data directory is lost recovers its partitions
from the changelog, and faust's recovery (through ``TableStore.install_recovery``) writes
the indexes with the states: the restarted worker serves the same counts and rebuilds its
deadline index from them, without indexing any database afresh.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.test_faust_tracker import (
    APP_PREFIX,
    TrackerProcess,
    drop_topics,
    services,
    settled,
    start,
    tracker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]
REBUILT = re.compile(r"tracker owns partitions \[[0-9, ]+\]: (\d+) sagas, (\d+) with a deadline")


async def rebuilt(tracker: TrackerProcess, timeout: float = 60.0) -> tuple[int, int]:
    """(sagas, sagas with a deadline) of the tracker's last rebuild, once it logged one."""
    limit = time.monotonic() + timeout
    while True:
        found = REBUILT.findall(tracker.log.read_text(errors="replace"))
        if found:
            sagas, due = found[-1]
            return int(sagas), int(due)
        assert time.monotonic() < limit, f"no rebuild logged\n{tracker.output()}"
        await asyncio.sleep(0.2)


async def counted(tracker: TrackerProcess, total: int, timeout: float = 60.0) -> dict[str, object]:
    limit = time.monotonic() + timeout
    while True:
        counts: dict[str, object] = await tracker.get("/counts")
        if counts["total"] == total:
            return counts
        assert time.monotonic() < limit, f"counts {counts}, not {total} sagas"
        await asyncio.sleep(0.2)


async def test_a_tracker_recovered_from_its_changelog_keeps_its_indexes(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    await drop_topics(kafka_bootstrap)  # only these sagas
    broker = f"kafka://{kafka_bootstrap}"
    env = {**tracker_env(deadline=600.0, store="rocksdb"), "CHOREO_TRACKER_LOGLEVEL": "info"}
    tracker = TrackerProcess(broker, f"{APP_PREFIX}idx-{uuid.uuid4().hex[:8]}", tmp_path, env)
    tracker.start()
    try:
        await asyncio.to_thread(tracker.wait_ready)
        async with services(broker, redis_url) as h:
            done = [(await start(h))[0] for _ in range(5)]
            for _ in range(3):  # their car step never answers: a deadline 600 s away
                await start(h, silent="car")
            await settled(tracker, done)
            before = await counted(tracker, 8)
        assert before["by_status"] == {**before["by_status"], "COMPLETED": 5, "RUNNING": 3}
        assert tracker.stop() == 0
        shutil.rmtree(tmp_path / "data")  # the local state is lost: recovered from the log
        tracker.start()
        await asyncio.to_thread(tracker.wait_ready)
        assert await rebuilt(tracker) == (8, 3)  # the 3 deadlines, read from the indexes
        assert await counted(tracker, 8) == before
        # Recovery wrote the indexes: no database needed indexing from its states.
        assert "indexed the" not in tracker.log.read_text(errors="replace")
    finally:
        code = tracker.stop()
    assert code == 0, f"tracker did not stop cleanly ({code})\n{tracker.output()}"
