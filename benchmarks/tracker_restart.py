"""What a faust tracker's restart costs once its local RocksDB is open: the rebuild of its
deadline index and counts (``FaustTracker.rebuild``) over sagas in flight plus finished
sagas within their retention, and the memory that leaves.

    python -m benchmarks.tracker_restart                       # 100,000 in flight + 1M finished
    python -m benchmarks.tracker_restart --in-flight 100000 --finished 0
    python -m benchmarks.tracker_restart --against /tmp/old-checkout

The store is built the way the tracker writes it, without a broker: the saga of
``benchmarks.tracker_fold`` (start and four steps) is folded by ``TrackerPipeline`` for one
template gid, once to completion (a finished saga) and once up to its start (in flight,
first step pending an hour away), and the store records the tracker would write for each
(``pipeline.writes``: packed state, timeline records, tombstones, applied in order) are
kept. Every other saga's records are the template's with the gid replaced (gids of equal
length; every saga shares the template's times and trace id, and the ids the services
derive from their cause's id, hashes of equal length, stay the template's). Before
writing, a few sagas are folded for real and their records compared with the copies,
byte for byte except those derived ids. The records go into one RocksDB per partition
(6, as the tracker's topics in ``tracker_fold``) with ``TableStore.write``, opened as
faust opens them with the tracker's ``RocksDBSizing``. The rest of a start (group join,
faust opening its databases, its recovery reading the changelog past the persisted
offsets) is not here: it is ``tracker_fold.py --in-flight --restart`` (real Kafka), and
does not depend on the finished sagas (faust reads only changelog records past each
database's persisted offset).

The measurement runs in a fresh process: it opens the databases, then times
``FaustTracker.rebuild`` (CPU and wall) and reports the RSS it adds, the sagas the tracker
then counts and its deadline index's entries (since the indexes in the store, the sagas
with a deadline; before, also every finished one's end of retention).
``--against DIR`` runs the rebuild of another checkout's ``choreo`` on the same store.
``--reindex`` times the one-time indexing of a store an earlier version wrote
(``faust_index.reindex``: the store's indexes made again from its states).

``--broker`` also times the whole restart of a real ``choreo tracker`` process (RocksDB,
default 6 h retention) holding the store, on a local Kafka started for it (a fresh one,
``choreo.local.kafka_broker``), for each checkout in turn: a first start with an empty
data directory makes the table's partition databases and its changelog topic, and is
stopped; each partition database is then replaced by a copy of the written one, one
record is written to each changelog partition and the copy's applied offset set to it
(so faust's check finds it behind its changelog and recovery reads nothing, as after a
clean stop); then the tracker is started again and timed from its process start until
its state API's ``/counts`` gives every saga and until its log says the rebuild is done
(``tracker owns partitions ...``, with the rebuild's CPU-s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PARTITIONS = 6
TOPIC = "choreo-tracker-sagas-changelog"
TEMPLATE = "g999999999"
CHUNK = 20_000
AT = 1_800_000_000.0  # when the sagas' events happened (a finished saga: 4 s later)


def gid(n: int) -> str:
    return f"g{n:09d}"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Rocks:
    """What ``TableStore`` uses of faust's RocksDB store: a database per partition, opened
    with the tracker's sizing (``RocksDBSizing``) as faust opens them."""

    def __init__(self, root: Path) -> None:
        from faust.stores.rocksdb import RocksDBOptions

        from choreo.tracker.faust_store import RocksDBSizing

        options = dict(RocksDBSizing().options())
        options.pop("driver", None)
        self.options = RocksDBOptions(**options, use_rocksdict=True)
        self.root = root
        self.dbs: dict[int, Any] = {}

    def _db_for_partition(self, partition: int) -> Any:
        if partition not in self.dbs:
            path = self.root / f"{TOPIC}-{partition}.db"
            self.dbs[partition] = self.options.open(path)
        return self.dbs[partition]

    def items(self) -> Any:  # faust's Store.items(): what an earlier rebuild read
        for db in self.dbs.values():
            for key, value in db.items():
                if key != b"__faust\0offset__":
                    yield key, value

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


def saga_records(prefix: str, name: str, amount: int, finished: bool) -> list[Any]:
    """``tracker_fold.saga_records`` with ids that derive from the gid alone (the start
    envelope's event id and trace id are random there)."""
    from benchmarks.tracker_fold import EVENTS, STAGES, Start, topic
    from choreo import codec
    from choreo.events import Envelope, Message, derived_event_id

    start = Start(order_id=name, amount=amount)
    env = Envelope.first(start, gid=name, saga="fold", source="bench").evolve(
        event_id=f"start-{name}",
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        occurred_at=AT,
    )
    out = [codec.encode(Message(env, start, topic("start", prefix)))]
    if not finished:
        return out
    for i, (stage, cls) in enumerate(zip(STAGES[1:], EVENTS[1:], strict=True), start=1):
        event = cls.model_validate({"order_id": name, "amount": amount})
        service, step = f"svc{i}", f"step{i}"
        env = env.caused(event, event_id=derived_event_id(env.event_id, service, step,
                         "action", "0"), step=step, op="action", outcome="done",
                         source=service, traceparent=f"00-{'1' * 32}-{i:016x}-01"
                         ).evolve(occurred_at=AT + i)  # fmt: skip
        out.append(codec.encode(Message(env, event, topic(stage, prefix))))
    return out


async def template(finished: bool, name: str) -> dict[bytes, bytes]:
    """The store records the tracker writes for saga ``name`` (key -> last value)."""
    from benchmarks.tracker_fold import saga
    from choreo.saga.state import SagaState
    from choreo.tracker.core import TrackerCore
    from choreo.tracker.pipeline import TrackerPipeline
    from choreo.transport.base import Record
    from choreo.transport.partitioner import partition_for

    store: dict[bytes, bytes] = {}
    pipeline: TrackerPipeline

    async def save(changed: Sequence[tuple[SagaState, Record]],
                   removed: Sequence[tuple[str, Record]]) -> None:  # fmt: skip
        for _partition, key, value in pipeline.writes(changed, removed):
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value

    async def send(records: Any) -> None:
        pass

    pipeline = TrackerPipeline(TrackerCore([saga]), send=send, clock=time.time, save=save,
                               retention=6 * 3600.0)  # fmt: skip
    records = saga_records("fold", name, 42, finished)
    at = AT
    partition = partition_for(name.encode(), PARTITIONS)
    for n, out in enumerate(records):
        record = Record(out.topic, partition, n, out.key, out.value, out.headers,
                        round((at + n) * 1000))  # fmt: skip
        await pipeline.handle(record, at + n)
    return store


def copies(records: dict[bytes, bytes], name: str) -> list[tuple[bytes, bytes]]:
    old, new = TEMPLATE.encode(), name.encode()
    return [(k.replace(old, new), v.replace(old, new)) for k, v in records.items()]


_DERIVED = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def masked(records: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The records with each derived event id (a hash of its cause's id) masked."""
    return {key: _DERIVED.sub(b"<id>", value) for key, value in records.items()}


def build(root: Path, in_flight: int, finished: int) -> dict[str, Any]:
    from choreo.tracker.faust_store import TableStore
    from choreo.transport.partitioner import partition_for

    began = time.monotonic()
    done = asyncio.run(template(True, TEMPLATE))
    running = asyncio.run(template(False, TEMPLATE))
    for n in (0, 7, in_flight + finished - 1):  # the copies are what the tracker writes
        name = gid(n)
        real = asyncio.run(template(n >= in_flight, name))
        copy = dict(copies(done if n >= in_flight else running, name))
        assert masked(real) == masked(copy), f"the copied records of {name} differ"
    rocks = Rocks(root)
    store = TableStore(rocks, "rocksdb", PARTITIONS)
    offsets = [0] * PARTITIONS
    records = 0
    total = in_flight + finished
    for low in range(0, total, CHUNK):
        writes = []
        for n in range(low, min(low + CHUNK, total)):
            name = gid(n)
            partition = partition_for(name.encode(), PARTITIONS)
            for key, value in copies(done if n >= in_flight else running, name):
                writes.append((partition, key, value))
                offsets[partition] += 1
        records += len(writes)
        store.write(TOPIC, writes, {p: offsets[p] for p in range(PARTITIONS)})
    for db in rocks.dbs.values():
        db.flush()
    rocks.close()
    return {"records": records, "build_s": time.monotonic() - began,
            "template_finished_bytes": sum(len(k) + len(v) for k, v in done.items()),
            "template_running_bytes": sum(len(k) + len(v) for k, v in running.items())}  # fmt: skip


def measure(root: Path, in_flight: int, finished: int, retention: float) -> dict[str, Any]:
    import gc

    from benchmarks.tracker_fold import saga
    from choreo.tracker.faust_app import FaustTracker
    from choreo.tracker.faust_store import TableStore
    from choreo.transport.base import TopicPartition

    tracker = FaustTracker([saga], broker="kafka://127.0.0.1:9", retention=retention,
                           data_dir=root / "unused", store="rocksdb")  # fmt: skip
    rocks = Rocks(root)
    for p in range(PARTITIONS):
        rocks._db_for_partition(p)
    store = TableStore(rocks, "rocksdb", PARTITIONS)
    store.owned = lambda: set(range(PARTITIONS))  # (an argument now, not before)
    tracker._store = store
    if hasattr(tracker.states, "use_store"):
        tracker.states.use_store(store)
    tracker.owned = lambda: [TopicPartition("t", p) for p in range(PARTITIONS)]  # type: ignore[method-assign]
    gc.collect()
    before = rss_bytes()
    cpu, wall = time.process_time(), time.monotonic()
    tracker.rebuild()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    gc.collect()
    after = rss_bytes()
    deadlines = len(tracker.pipeline.deadlines)
    held = len(tracker.states)
    rocks.close()
    return {
        "in_flight": in_flight, "finished": finished, "retention_s": retention,
        "rebuild_cpu_s": cpu, "rebuild_wall_s": wall, "sagas_counted": held,
        "deadlines": deadlines, "rss_added_mb": (after - before) / 2**20,
        "rss_after_mb": after / 2**20,
    }  # fmt: skip


class Tracker:
    """A ``choreo tracker`` process (``checkout``'s code) on ``bootstrap``."""

    def __init__(self, bootstrap: str, checkout: Path | None, app_id: str, data: Path,
                 logs: Path) -> None:  # fmt: skip
        self.bootstrap, self.checkout, self.app_id, self.data = bootstrap, checkout, app_id, data
        self.logs = logs
        self.token = "restart-bench-token"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = logs

    def start(self, name: str) -> None:
        here = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_FOLD_PREFIX": "fold",
               "CHOREO_TRACKER_DATA_DIR": str(self.data), "CHOREO_TRACKER_TOKEN": self.token,
               "CHOREO_TRACKER_LOGLEVEL": "info",
               "PYTHONPATH": f"{self.checkout}:{here}" if self.checkout else str(here)}  # fmt: skip
        self.log = self.logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "choreo.cli.main", "tracker", "benchmarks.tracker_fold:saga",
                 "--broker", f"kafka://{self.bootstrap}", "--http", "127.0.0.1:0", "--app-id",
                 self.app_id, "--store", "rocksdb"],
                cwd=self.checkout or here, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def url(self) -> str | None:
        for line in self.text().splitlines():
            if "state API on http://" in line:
                return line.rsplit("state API on ", 1)[1].strip()
        return None

    def counted(self) -> int:
        import urllib.request

        url = self.url()
        if url is None:
            return -1
        headers = {"Authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(f"{url}/counts", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(json.loads(response.read())["total"])
        except OSError:
            return -1

    def rebuilt(self) -> str | None:
        for line in self.text().splitlines():
            if "tracker owns partitions" in line:
                return line
        return None

    def cpu(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """By pid: SIGTERM, SIGKILL after 30 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def seed_changelog(bootstrap: str, topic: str) -> dict[int, int]:
    """One record in each partition of the table's changelog: its offset, by partition."""

    async def run() -> dict[int, int]:
        from aiokafka import AIOKafkaProducer

        from choreo.tracker.states import TIMELINE_PREFIX

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            found = {}
            for partition in range(PARTITIONS):
                key = TIMELINE_PREFIX + b"restart-bench" + bytes(4)  # no saga's: a tombstone
                meta = await producer.send_and_wait(topic, None, key=key, partition=partition)
                found[partition] = meta.offset
            return found
        finally:
            await producer.stop()

    return asyncio.run(run())


def end_to_end(root: Path, systems: dict[str, Path | None], total: int,
               timeout: float) -> dict[str, Any]:  # fmt: skip
    from rocksdict import Options, Rdict

    from benchmarks.tracker_fold import SHARED_TOPICS, STAGES, make_topics, topic
    from choreo.local.kafka_broker import KafkaBroker
    from choreo.tracker.faust_store import OFFSET_KEY

    work = Path(tempfile.mkdtemp(prefix="choreo-restart-e2e-"))
    kafka = KafkaBroker(work / "kafka", die_with_parent=True)
    results: dict[str, Any] = {}
    try:
        bootstrap = kafka.start()
        make_topics(bootstrap, [*SHARED_TOPICS, *(topic(stage, "fold") for stage in STAGES)])
        for index, (name, checkout) in enumerate(systems.items()):
            app_id = f"restart-bench-{index}"
            tracker = Tracker(bootstrap, checkout, app_id, work / f"data-{index}",
                              work / "logs")  # fmt: skip
            tracker.logs.mkdir(parents=True, exist_ok=True)
            tracker.start(f"{index}-first")  # makes the databases and the changelog topic
            try:
                began = time.monotonic()
                while tracker.rebuilt() is None:
                    if time.monotonic() > began + timeout or tracker.proc.poll() is not None:  # type: ignore[union-attr]
                        raise SystemExit(f"first start of {name} did not assign: {tracker.log}")
                    time.sleep(0.2)
            finally:
                tracker.stop()
            dbs = {int(path.name.rsplit("-", 1)[1].removesuffix(".db")): path
                   for path in (work / f"data-{index}").rglob("sagas-*.db")}  # fmt: skip
            assert sorted(dbs) == list(range(PARTITIONS)), dbs
            offsets = seed_changelog(bootstrap, f"{app_id}-sagas-changelog")
            for partition, path in dbs.items():
                shutil.rmtree(path)
                shutil.copytree(root / f"{TOPIC}-{partition}.db", path)
                db = Rdict(str(path), Options(raw_mode=True))
                db.put(OFFSET_KEY, str(offsets[partition]).encode())
                db.close()
            print(f"{name}: starting choreo tracker over the copied store ...", flush=True)
            began = time.monotonic()
            tracker.start(f"{index}-restart")
            counted_s = rebuilt_s = None
            line = ""
            try:
                while counted_s is None or rebuilt_s is None:
                    now = time.monotonic()
                    if now > began + timeout or tracker.proc.poll() is not None:  # type: ignore[union-attr]
                        raise SystemExit(f"{name} restarted did not serve ({tracker.log})")
                    if rebuilt_s is None and (found := tracker.rebuilt()) is not None:
                        rebuilt_s, line = now - began, found
                    if counted_s is None and tracker.counted() >= total:
                        counted_s = time.monotonic() - began
                    time.sleep(0.05)
                cpu = tracker.cpu()
                rss = next(int(x.split()[1]) for x in Path(f"/proc/{tracker.proc.pid}/status")  # type: ignore[union-attr]
                           .read_text().splitlines() if x.startswith("VmRSS:")) / 1024  # fmt: skip
            finally:
                tracker.stop()
            results[name] = {"counts_served_s": counted_s, "rebuilt_s": rebuilt_s,
                             "process_cpu_s": cpu, "rss_mb": rss,
                             "rebuild_log": line.strip()[-160:],
                             "load": os.getloadavg()}  # fmt: skip
            print(f"{name}: restart: /counts gives all {total} after {counted_s:.1f} s, rebuild "
                  f"logged after {rebuilt_s:.1f} s; process CPU {cpu:.1f} s, RSS {rss:.0f} MB; "
                  f"load {os.getloadavg()}", flush=True)  # fmt: skip
    finally:
        kafka.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def measure_reindex(root: Path) -> dict[str, Any]:
    """The one-time indexing of a store an earlier version wrote (``faust_index.reindex``,
    at the first read of each partition): the store's indexes are made again from its
    states (the same entries)."""
    from choreo.tracker import faust_index

    rocks = Rocks(root)
    cpu, wall, read = time.process_time(), time.monotonic(), 0
    try:
        for p in range(PARTITIONS):
            db = rocks._db_for_partition(p)
            db.delete(faust_index.VERSION_KEY)
            read += faust_index.reindex(db)
    finally:
        rocks.close()
    return {"reindex_cpu_s": time.process_time() - cpu, "reindex_wall_s": time.monotonic() - wall,
            "states": read}  # fmt: skip


def child(args: argparse.Namespace) -> int:
    if args.reindex:
        print(json.dumps(measure_reindex(args.store)), flush=True)
        return 0
    result = measure(args.store, args.in_flight, args.finished, args.retention)
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tracker_restart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--in-flight", type=int, default=100_000)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--retention", type=float, default=6 * 3600.0)
    parser.add_argument("--against", type=Path, help="a checkout to compare with (its choreo)")
    parser.add_argument("--store", type=Path, help="build in (or reuse) this directory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--broker",
        action="store_true",
        help="also time a real choreo tracker's restart over the store",
    )
    parser.add_argument(
        "--no-rebuild", action="store_true", help="skip the in-process rebuild measurement"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--reindex", action="store_true", help="also time indexing a store of an earlier version"
    )
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    temporary = args.store is None
    root = args.store or Path(tempfile.mkdtemp(prefix="choreo-restart-"))
    results: dict[str, Any] = {}
    try:
        if not (root / "built.json").exists():
            print(f"building {args.in_flight} in flight + {args.finished} finished in {root} ...",
                  flush=True)  # fmt: skip
            built = build(root, args.in_flight, args.finished)
            (root / "built.json").write_text(json.dumps(built))
        results["store"] = json.loads((root / "built.json").read_text())
        print(f"  {results['store']}", flush=True)
        systems: dict[str, Path | None] = {"this checkout": None}
        if args.against is not None:
            systems = {f"before ({args.against})": args.against.resolve(), **systems}
        here = Path(__file__).resolve().parents[1]
        for name, checkout in systems.items():
            if args.no_rebuild:
                break
            env = dict(os.environ)
            env["PYTHONPATH"] = f"{checkout}:{here}" if checkout else str(here)
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.tracker_restart", "--child", "--store",
                 str(root), "--in-flight", str(args.in_flight), "--finished",
                 str(args.finished), "--retention", str(args.retention)],
                cwd=checkout or here, env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            r = results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name}: rebuild {r['rebuild_cpu_s']:.1f} CPU-s ({r['rebuild_wall_s']:.1f} s "
                  f"wall), {r['sagas_counted']} sagas, {r['deadlines']} deadlines, RSS +"
                  f"{r['rss_added_mb']:.0f} MB", flush=True)  # fmt: skip
        print(f"load average {os.getloadavg()}")
        if args.reindex:
            out = subprocess.run([sys.executable, "-m", "benchmarks.tracker_restart", "--child",
                                  "--reindex", "--store", str(root)], cwd=here, check=True,
                                 capture_output=True, text=True)  # fmt: skip
            r = results["reindex"] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"indexing a store of an earlier version: {r['states']} states, "
                  f"{r['reindex_cpu_s']:.1f} CPU-s ({r['reindex_wall_s']:.1f} s wall); load "
                  f"{os.getloadavg()}", flush=True)  # fmt: skip
        if args.broker:
            results["end_to_end"] = end_to_end(root, systems, args.in_flight + args.finished,
                                               args.timeout)  # fmt: skip
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
