"""A real Kafka broker and Redis server for one benchmark run, in a temporary directory.

Both come from ``choreo.local`` (a KRaft broker from Maven Central jars, the system's
``redis-server``), are started before the event loop and stopped by their pid at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from choreo.local.kafka_broker import KafkaBroker
from choreo.local.redis_server import RedisServer


@dataclass(frozen=True)
class Servers:
    kafka_url: str
    redis_url: str
    kafka_startup_seconds: float | None
    redis_startup_seconds: float | None


@contextlib.contextmanager
def local_servers() -> Iterator[Servers]:
    root = Path(tempfile.mkdtemp(prefix="choreo-bench-"))
    kafka = KafkaBroker(root / "kafka", die_with_parent=True)
    redis = RedisServer(root / "redis", die_with_parent=True)
    try:
        print(f"starting Kafka and Redis in {root} ...", file=sys.stderr)
        bootstrap = kafka.start()
        redis_url = redis.start()
        yield Servers(
            f"kafka://{bootstrap}", redis_url, kafka.startup_seconds, redis.startup_seconds
        )
    finally:
        for server in (redis, kafka):
            try:
                server.stop()
            except Exception as exc:  # report, and still stop the other one
                print(f"could not stop {server.name}: {exc}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
