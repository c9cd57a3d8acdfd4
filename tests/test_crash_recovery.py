"""A service process SIGKILLed between its effect and its offset commit loses nothing
and applies nothing twice (real Kafka, real Redis, a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from choreo import codec
from choreo.events import Envelope, Message
from choreo.store.base import Put
from choreo.store.redis import RedisStore
from choreo.transport.kafka import KafkaTransport
from tests.scenarios.shop import OrderPlaced, StockReserved

ROOT = Path(__file__).resolve().parent.parent


def start_service(
    broker: str, store: str, group: str, pause_file: Path | None, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CRASHY_GROUP": group, "PYTHONPATH": str(ROOT)}
    env.pop("CRASHY_PAUSE_FILE", None)
    if pause_file is not None:
        env["CRASHY_PAUSE_FILE"] = str(pause_file)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "choreo.cli.main", "run", "tests.procs.crashy:app",
             "--broker", broker, "--store", store],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigkill_between_effect_and_commit(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    broker = f"kafka://{kafka_bootstrap}"
    group = f"crashy-{uuid.uuid4().hex[:8]}"
    sku = f"sku-{uuid.uuid4().hex[:8]}"
    pause = tmp_path / "paused"
    orders = [OrderPlaced(order_id=f"o{i}", sku=sku, qty=1, amount=1) for i in range(5)]
    gids = [str(uuid.uuid4()) for _ in orders]

    async with KafkaTransport(broker) as transport, RedisStore(redis_url) as store:
        await transport.ensure_topics([OrderPlaced.topic, "choreo.dlq"], 4)
        assert await store.apply([Put(f"stock:{sku}", "100")]) == ""
        for gid, placed in zip(gids, orders, strict=True):
            envelope = Envelope(event_type="OrderPlaced", gid=gid, source="test")
            await transport.send(codec.encode(Message(envelope, placed, placed.topic)))

        first = start_service(broker, redis_url, group, pause, tmp_path / "first.log")
        try:
            await wait_for(lambda: _exists(pause), 60, "the handler's effect")
            # The stalled delivery's effect is recorded (other partitions run on meanwhile)...
            assert 95 <= await store.get_int(f"stock:{sku}") <= 99
            first.send_signal(signal.SIGKILL)  # ...and the offset is not committed
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
        assert first.returncode == -signal.SIGKILL
        killed_gid = pause.read_text().split()[0]

        second = start_service(broker, redis_url, group, None, tmp_path / "second.log")
        consumer = transport.consumer(f"{group}-probe", [StockReserved.topic])
        try:

            async def all_committed() -> bool:
                tps = await transport.topic_partitions([OrderPlaced.topic])
                ends = await transport.end_offsets(tps)
                committed = await transport.group_offsets(group)
                return all(committed.get(tp, 0) >= end for tp, end in ends.items())

            await wait_for(all_committed, 60, "the restarted service to commit everything")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
            output = (tmp_path / "second.log").read_text()
        assert second.returncode == 0, output
        assert "stopped cleanly" in output

        assert await store.get_int(f"stock:{sku}") == 95  # five orders, each applied once
        reserved: dict[str, set[str]] = {}
        await consumer.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(reserved) < len(gids):
                batch = await consumer.getmany(timeout=0.5)
                for records in batch.values():
                    for record in records:
                        if record.header("choreo-type") == b"StockReserved":
                            env = codec.decode_envelope(record)
                            if env.gid in gids:
                                reserved.setdefault(env.gid, set()).add(env.event_id)
        finally:
            await consumer.stop()
        assert set(reserved) == set(gids)  # no event lost
        # The killed delivery was redelivered and its outbox re-sent under the same id.
        assert all(len(ids) == 1 for ids in reserved.values()), reserved
        assert killed_gid in reserved


async def _exists(path: Path) -> bool:
    return path.exists()
