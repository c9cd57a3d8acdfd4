"""The load driver of one round: publishes ``start`` events keyed by fresh gids and consumes
``done`` to time each saga. Its own process, on bare aiokafka, the same for every system.

    python -m benchmarks.saga_side_by_side.driver --config '<json>'

Phases (events as JSON lines on stdout, the result last):
1. probe: a few sagas end to end, so every step has joined its group ("ready");
2. closed loop: ``inflight`` sagas kept in flight (every completion sends the next one);
   after ``warmup`` s, ``measure`` s are timed ("measure-start", "measure-end"): sagas
   completed per second is the saturation throughput; CPU of every process is read at
   both edges;
3. drain: no new sagas until all in flight are done (so no backlog leaks into phase 4);
4. open loop at ``rate_fraction`` of the measured saturation: sends paced by the clock
   (not by completions), ``latency_warmup`` s untimed then ``latency_seconds`` s whose
   sagas' end-to-end latencies (driver send -> driver receives ``done``) are kept; then
   stragglers are awaited up to ``straggler_timeout`` s, and any still missing count as
   infinitely late in the percentiles. Then where the time went, per hop: every stage's
   records of the phase are read back, and for each timed saga the CreateTime
   timestamps its records got (set by each producer as it appends the record, one
   clock on this machine) give the time from one stage's record to the next one's,
   i.e. a step's fetch, wait and handling, and from ``done`` to the driver's receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.saga_side_by_side.procstat import Snapshot, cpu_percent, cpu_seconds, snapshot
from benchmarks.saga_side_by_side.wire import PARTITIONS, choreo_headers, topics


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **data}), flush=True)


def percentiles(latencies: list[float], missing: int) -> dict[str, Any]:
    """Nearest-rank percentiles in ms; missing sagas rank last (None if they decide it)."""
    ordered = sorted(latencies)
    total = len(ordered) + missing

    def rank(q: float) -> float | None:
        if total == 0:
            return None
        index = max(0, math.ceil(q * total) - 1)
        return ordered[index] * 1000 if index < len(ordered) else None

    return {
        "count": len(ordered),
        "missing": missing,
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "max_ms": rank(1.0),
        "mean_ms": 1000 * sum(ordered) / len(ordered) if ordered else None,
    }


class Driver:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.topics = topics(config["prefix"])
        self.choreo = config["format"] == "choreo"
        # The run and the round (``<run id>.r1c``): gids never repeat across runs, so a
        # run against a Redis that served an earlier one (``--redis``) does not meet that
        # run's barrier records, which would make its sagas duplicates of the old ones.
        self.tag = config["prefix"].split(".", 1)[-1]
        self.pids: dict[str, list[int]] = {
            "driver": [os.getpid()],
            **{name: list(group) for name, group in config["pids"].items()},
        }
        self.producer = AIOKafkaProducer(
            bootstrap_servers=config["bootstrap"],
            acks="all",
            enable_idempotence=True,
            linger_ms=config["linger_ms"],
            client_id="bench-driver",
        )
        # One consumer per partition of ``done``: aiokafka keeps one fetch in flight per
        # broker, and a long-polling fetch of idle partitions would hold back one whose
        # record just arrived (up to fetch_max_wait_ms) and add that to every latency.
        self.consumers = []
        for partition in range(PARTITIONS):
            consumer = AIOKafkaConsumer(
                bootstrap_servers=config["bootstrap"],
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id=f"bench-driver-{partition}",
            )
            consumer.assign([TopicPartition(self.topics["done"], partition)])
            self.consumers.append(consumer)
        self.inflight: dict[bytes, tuple[float, bool]] = {}  # key -> (sent at, timed?)
        self.sequence = 0
        self.completed = 0
        self.duplicates = 0
        self.send_errors = 0
        self.closed_loop = False
        self.latencies: list[float] = []
        self.received_ms: dict[bytes, float] = {}  # timed key -> wall clock at receipt
        self.running = True

    # -- sending and receiving ------------------------------------------------------
    async def send(self, timed: bool = False) -> None:
        self.sequence += 1
        gid = f"{self.tag}-{self.sequence:09d}"
        key = gid.encode()
        value = b'{"order_id":"%s","amount":%d}' % (key, self.sequence % 1000)
        headers = choreo_headers(gid) if self.choreo else None
        self.inflight[key] = (time.monotonic(), timed)
        ack = await self.producer.send(self.topics["start"], value, key=key, headers=headers)
        ack.add_done_callback(self._acked)

    def _acked(self, ack: asyncio.Future[Any]) -> None:
        if ack.cancelled() or ack.exception() is not None:
            self.send_errors += 1

    async def receive(self, consumer: AIOKafkaConsumer) -> None:
        while self.running:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            refill = 0
            for records in batch.values():
                for record in records:
                    entry = self.inflight.pop(record.key, None)
                    if entry is None:
                        self.duplicates += 1  # a redelivered step re-published it
                        continue
                    self.completed += 1
                    if entry[1]:
                        self.latencies.append(now - entry[0])
                        self.received_ms[record.key] = time.time() * 1000
                    refill += self.closed_loop
            for _ in range(refill):
                await self.send()

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> float:
        started = time.monotonic()
        while not done() and time.monotonic() - started < timeout:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def tracker_caught_up(self, url: str, count: int, timeout: float) -> float:
        """Wait until the tracker has seen the probe sagas complete: it is consuming."""

        def completed() -> int:
            with urllib.request.urlopen(f"{url}/counts", timeout=5) as response:
                return int(json.loads(response.read())["by_status"]["COMPLETED"])

        started = time.monotonic()
        while await asyncio.to_thread(completed) < count:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the tracker did not see {count} probe sagas complete")
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    def snapshot(self) -> Snapshot:
        return snapshot(self.pids)

    # -- the phases ------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        c = self.config
        await self.producer.start()
        for consumer in self.consumers:
            await consumer.start()
        receivers = [asyncio.create_task(self.receive(consumer)) for consumer in self.consumers]
        try:
            result: dict[str, Any] = {}
            for _ in range(c["probe_count"]):
                await self.send()
            result["probe_seconds"] = await self.wait_until(
                lambda: not self.inflight, c["probe_timeout"]
            )
            if self.inflight:
                raise RuntimeError(
                    f"{len(self.inflight)} of {c['probe_count']} probe sagas did not finish "
                    f"in {c['probe_timeout']} s: is every step running?"
                )
            if c.get("tracker_url"):
                result["tracker_probe_seconds"] = await self.tracker_caught_up(
                    c["tracker_url"], c["probe_count"], c["probe_timeout"]
                )
            emit("ready", probe_seconds=result["probe_seconds"])
            result.update(await self.saturate())
            result.update(await self.open_loop(result["sagas_per_second"]))
            result.update(duplicates=self.duplicates, send_errors=self.send_errors)
            return result
        finally:
            self.running = False
            await asyncio.gather(*receivers)
            for consumer in self.consumers:
                await consumer.stop()
            await self.producer.stop()

    async def saturate(self) -> dict[str, Any]:
        c = self.config
        self.closed_loop = True
        for _ in range(c["inflight"]):
            await self.send()
        await asyncio.sleep(c["warmup"])
        before, started, done_before = self.snapshot(), time.monotonic(), self.completed
        emit("measure-start")
        await asyncio.sleep(c["measure"])
        after, ended, done_after = self.snapshot(), time.monotonic(), self.completed
        emit("measure-end")
        self.closed_loop = False
        window = ended - started
        rate = (done_after - done_before) / window
        drain = await self.wait_until(lambda: not self.inflight, c["drain_timeout"])
        return {
            "sagas_per_second": rate,
            "saturation_window_seconds": window,
            "saturation_completed": done_after - done_before,
            "cpu_saturation": cpu_percent(before, after, window),
            "cpu_seconds_saturation": cpu_seconds(before, after),
            "drain_seconds": drain,
            "drain_left": len(self.inflight),
        }

    async def open_loop(self, saturation: float) -> dict[str, Any]:
        c = self.config
        rate = c.get("latency_rate") or max(1.0, saturation * c["rate_fraction"])
        warmup, seconds = c["latency_warmup"], c["latency_seconds"]
        self.inflight.clear()  # sagas the drain gave up on are not this phase's
        marks = await self.stage_ends()
        started = time.monotonic()
        sent = 0
        before: Snapshot | None = None
        timed_started = 0.0
        while (elapsed := time.monotonic() - started) < warmup + seconds:
            timed = elapsed >= warmup
            if timed and before is None:
                before, timed_started = self.snapshot(), time.monotonic()
            due = int(rate * elapsed)
            while sent < due:
                await self.send(timed)
                sent += 1
            await asyncio.sleep(0.002)
        after, ended = self.snapshot(), time.monotonic()
        assert before is not None
        waited = await self.wait_until(
            lambda: not any(t for _, t in self.inflight.values()), c["straggler_timeout"]
        )
        missing = sum(1 for _, t in self.inflight.values() if t)
        return {
            "hops": await self.hops(marks),
            "latency_rate_target": rate,
            "latency_rate_sent": sent / (ended - started),
            "latency": percentiles(self.latencies, missing),
            "latency_straggler_wait_seconds": waited,
            "cpu_latency": cpu_percent(before, after, ended - timed_started),
            "cpu_seconds_latency": cpu_seconds(before, after),
        }

    # -- where the latency went --------------------------------------------------------
    def _reader(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.config["bootstrap"],
            group_id=None,
            enable_auto_commit=False,
            client_id="bench-driver-hops",
        )

    async def stage_ends(self) -> dict[TopicPartition, int]:
        """Every stage topic's end offsets: the open loop's records come after them."""
        reader = self._reader()
        await reader.start()
        try:
            tps = [TopicPartition(t, p) for t in self.topics.values() for p in range(PARTITIONS)]
            return dict(await reader.end_offsets(tps))
        finally:
            await reader.stop()

    async def hops(self, marks: dict[TopicPartition, int]) -> dict[str, Any]:
        """Per hop p50/p99 ms over the timed sagas that completed: stage to next stage by
        the records' CreateTime, and ``done`` to the driver's receipt."""
        timed = self.received_ms
        first: dict[str, dict[bytes, int]] = {stage: {} for stage in self.topics}
        reader = self._reader()
        await reader.start()
        try:
            reader.assign(list(marks))
            for tp, offset in marks.items():
                reader.seek(tp, offset)
            ends = await reader.end_offsets(list(marks))
            stage_of = {topic: stage for stage, topic in self.topics.items()}
            deadline = time.monotonic() + 60
            while not await self._read_to(reader, ends):
                if time.monotonic() > deadline:
                    return {"error": "could not read the stages back in 60 s"}
                batch = await reader.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batch.items():
                    seen = first[stage_of[tp.topic]]
                    for record in records:
                        if record.key in timed and record.key not in seen:
                            seen[record.key] = record.timestamp
        finally:
            await reader.stop()
        stages = list(self.topics)
        spans: dict[str, list[float]] = {}
        for before, after in itertools.pairwise(stages):
            spans[f"{before}->{after}"] = [
                (first[after][k] - first[before][k]) / 1000
                for k in timed
                if k in first[after] and k in first[before]
            ]
        spans["done->driver"] = [
            (timed[k] - first["done"][k]) / 1000 for k in timed if k in first["done"]
        ]
        return {
            name: {
                key: value
                for key, value in percentiles(values, 0).items()
                if key in ("count", "p50_ms", "p99_ms")
            }
            for name, values in spans.items()
        }

    @staticmethod
    async def _read_to(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await reader.position(tp) < end:
                return False
        return True


async def drive(config: dict[str, Any]) -> dict[str, Any]:
    return await Driver(config).run()  # aiokafka's clients must be made inside the loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="the round's settings as JSON")
    config = json.loads(parser.parse_args().config)
    try:
        result = asyncio.run(drive(config))
    except Exception as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
        print(f"driver failed: {exc!r}", file=sys.stderr)
        raise SystemExit(1) from exc
    emit("result", **result)


if __name__ == "__main__":
    main()
