"""The demo as a deployment: each service and the tracker in its own process, on the
test session's real Kafka broker and Redis server."""

from __future__ import annotations

from pathlib import Path

import pytest

from choreo.saga.state import SagaStatus
from services_demo.multiprocess import run_multiprocess
from services_demo.processes import ChildFailed, spawn_choreo


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("engine", ["faust", "memory"])
def test_every_saga_ends_and_the_books_balance(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, engine: str
) -> None:
    run = run_multiprocess(
        count=12,
        seed=2,
        kafka=kafka_bootstrap,
        redis=redis_url,
        run_dir=tmp_path,
        engine=engine,
        timeout=60,
    )
    assert run.audit.problems == []
    ended = run.audit.by_status()
    assert sum(ended.values()) == 12
    assert set(ended) <= {SagaStatus.COMPLETED.value, SagaStatus.COMPENSATED.value}
    assert ended[SagaStatus.COMPLETED.value] > 0
    # Every process logged its clean stop: none was left to SIGKILL.
    logs = {path.stem: path.read_text() for path in (tmp_path / "logs").glob("*.log")}
    assert sorted(logs) == ["inventory", "orders", "payment", "shipping", "tracker"]
    for name in ("inventory", "orders", "payment", "shipping"):
        assert f"choreo: {name} stopped cleanly" in logs[name], logs[name]


def test_a_child_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    child = spawn_choreo("broken", ["run", "services_demo.nowhere:app"], {}, tmp_path)
    with pytest.raises(ChildFailed, match=r"broken exited with code 2[\s\S]*cannot import"):
        child.wait_for_output("running", timeout=30)
