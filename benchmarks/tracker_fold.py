"""How fast one faust tracker folds saga events, beside the ceiling faust itself allows.

    python -m benchmarks.tracker_fold                 # 20,000 sagas (100k events), 3 rounds
    python -m benchmarks.tracker_fold --quick         # 5,000 sagas, 2 rounds
    python -m benchmarks.tracker_fold --live 300      # live traffic, 300 sagas/s for 10 s
    python -m benchmarks.tracker_fold --systems tracker,base=/tmp/old-checkout,bare
    python -m benchmarks.tracker_fold --systems tracker-memory,tracker-rocksdb --restart
    python -m benchmarks.tracker_fold --in-flight --sagas 100000 --rounds 1 --restart \
        --systems tracker-rocksdb,before=/tmp/old-checkout,tracker-memory,bare
    python -m benchmarks.tracker_fold --help

One real Kafka broker (``choreo.local``, fresh, on a loopback port). Topics
``<prefix>.start`` and ``<prefix>.s1`` .. ``.s4`` (6 partitions each, key = gid) hold
sagas' complete event sequences: the start event and each of the 4 steps' done events,
with choreo's envelope headers, written by choreo's own codec (``--in-flight``: only
the start events, so every saga stays RUNNING with its first step pending, a deadline an
hour away: sagas in flight, as the tracker holds them). By default they are
prefilled once with N sagas (a backlog: the consumers below only read, and nothing else
runs while they are measured); with ``--live RATE`` every round gets fresh topics and a
writer adds RATE sagas/s, each saga's events ``--hop`` apart, as a chain of services would.

Systems, alternated for ``--rounds`` rounds, each its own process and a fresh group:

- ``tracker``: ``choreo tracker benchmarks.tracker_fold:saga`` (the faust engine); its
  progress is read from its state API (``/counts``): 5 events per COMPLETED saga, one per
  saga seen otherwise (the ``SagaCompleted`` it publishes and reads back is not counted);
- ``bare``: a bare faust agent (``python -m benchmarks.tracker_fold bare``: the same
  faust-streaming, topics and app settings) that only increments a per-gid counter in a
  changelogged table, at-least-once with faust's own acks: the ceiling faust allows here;
- ``bare-no-table``: the same agent without the table: faust's cost of delivering events;
- ``NAME=DIR``: the tracker of another checkout (``DIR`` holds its ``choreo`` package and
  this benchmark), to compare a change with what it replaces in one run.

events/s runs from the first sign of progress (faust's start-up and group join left out;
live: from the writer's start) until every event is folded or ``--timeout``; CPU is
utime + stime of all the process's threads (/proc) over the same window: % of one core,
and events per CPU-second, which a busy shared machine disturbs least. RSS is read from
/proc at the first sign of progress and once every event is folded: the difference per
saga is what the process holds per saga (the state, faust's and the store's share).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.saga_side_by_side.procstat import die_with_parent, process_cpu
from choreo import Event, SagaContract, Step

PREFIX = os.environ.get("BENCH_FOLD_PREFIX", "fold")
PARTITIONS = 6
STAGES = ("start", "s1", "s2", "s3", "s4")
EVENTS_PER_SAGA = len(STAGES)
SAGA = "fold"
SHARED_TOPICS = ("choreo.system", "choreo.dlq")
ROOT = Path(__file__).resolve().parents[1]
BARE = {"bare": "table", "bare-no-table": "none"}
# The tracker with a given table store (``tracker``: the CLI's default, rocksdb).
STORES = {"tracker-memory": "memory", "tracker-rocksdb": "rocksdb"}
WARMUP_SAGAS = 20  # live: folded before the writer starts (the process is up and assigned)


def topic(stage: str, prefix: str = PREFIX) -> str:
    return f"{prefix}.{stage}"


class Start(Event, type="fold.Start", topic=topic("start")):
    order_id: str
    amount: int


class S1Done(Event, type="fold.S1Done", topic=topic("s1")):
    order_id: str
    amount: int


class S2Done(Event, type="fold.S2Done", topic=topic("s2")):
    order_id: str
    amount: int


class S3Done(Event, type="fold.S3Done", topic=topic("s3")):
    order_id: str
    amount: int


class S4Done(Event, type="fold.S4Done", topic=topic("s4")):
    order_id: str
    amount: int


EVENTS: tuple[type[Event], ...] = (Start, S1Done, S2Done, S3Done, S4Done)
# Deadlines far beyond any run: nothing times out, the tracker only folds.
saga = SagaContract(
    SAGA,
    start=Start,
    steps=[
        Step(f"step{i}", on=EVENTS[i - 1], done=EVENTS[i], deadline=3600.0, service=f"svc{i}")
        for i in range(1, len(EVENTS))
    ],
)


# -- writing sagas ------------------------------------------------------------------------
def saga_records(prefix: str, gid: str, amount: int) -> list[Any]:
    """A saga's complete sequence as choreo's services would have written it."""
    from choreo import codec
    from choreo.events import Envelope, Message, derived_event_id

    start = Start(order_id=gid, amount=amount)
    env = Envelope.first(start, gid=gid, saga=SAGA, source="bench")
    out = [codec.encode(Message(env, start, topic("start", prefix)))]
    for i, (stage, cls) in enumerate(zip(STAGES[1:], EVENTS[1:], strict=True), start=1):
        event = cls.model_validate({"order_id": gid, "amount": amount})
        service, step = f"svc{i}", f"step{i}"
        env = env.caused(
            event,
            event_id=derived_event_id(env.event_id, service, step, "action", "0"),
            step=step,
            op="action",
            outcome="done",
            source=service,
        )
        out.append(codec.encode(Message(env, event, topic(stage, prefix))))
    return out


def gids(first: int, count: int) -> list[tuple[str, int]]:
    return [(f"g{n:08d}", n) for n in range(first, first + count)]


async def _producer(bootstrap: str) -> Any:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024, acks=1
    )
    await producer.start()
    return producer


async def _send(producer: Any, records: Sequence[Any]) -> list[Any]:
    return [
        await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers)) for r in records
    ]


async def _prefill(
    bootstrap: str, prefix: str, first: int, count: int, stages: int, chunk: int = 1000
) -> None:
    """Write sagas' first ``stages`` events: a chunk's starts first, then its step-1
    answers, ...: the order services write them in."""
    producer = await _producer(bootstrap)
    try:
        for low in range(first, first + count, chunk):
            sagas = [
                saga_records(prefix, g, n) for g, n in gids(low, min(chunk, first + count - low))
            ]
            futures = []
            for stage in range(stages):
                futures += await _send(producer, [records[stage] for records in sagas])
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def prefill(
    bootstrap: str, prefix: str, first: int, count: int, stages: int = EVENTS_PER_SAGA
) -> None:
    asyncio.run(_prefill(bootstrap, prefix, first, count, stages))


class Pacer(threading.Thread):
    """Live traffic: ``rate`` sagas/s for ``seconds``, in waves every ``hop`` seconds; wave
    k's start goes out with wave k-1's step-1 answer, wave k-2's step-2 answer, ...: each
    saga's events one hop apart, as a chain of services writes them."""

    def __init__(
        self, bootstrap: str, prefix: str, first: int, rate: float, seconds: float, hop: float
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.prefix, self.first = bootstrap, prefix, first
        self.hop = hop
        self.wave = max(1, round(rate * hop))
        self.waves = max(1, round(seconds / hop))
        self.count = self.wave * self.waves
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the round
            self.error = exc

    async def _run(self) -> None:
        producer = await _producer(self.bootstrap)
        try:
            waves = [
                [
                    saga_records(self.prefix, g, n)
                    for g, n in gids(self.first + k * self.wave, self.wave)
                ]
                for k in range(self.waves)
            ]
            began = time.monotonic()
            pending: list[Any] = []
            for tick in range(self.waves + EVENTS_PER_SAGA - 1):
                delay = began + tick * self.hop - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                for stage in range(EVENTS_PER_SAGA):
                    k = tick - stage
                    if 0 <= k < self.waves:
                        pending += await _send(producer, [r[stage] for r in waves[k]])
                done = [f for f in pending if f.done()]
                pending = [f for f in pending if not f.done()]
                for f in done:
                    f.result()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()


# -- measuring ------------------------------------------------------------------------
@dataclass
class Round:
    system: str
    round: int
    events: int  # folded in the window
    seconds: float  # the window
    cpu_seconds: float  # the process's, in the window
    finished: bool  # every event folded before the timeout
    startup_s: float  # process start -> first progress (live: -> warm-up folded)
    lag_at_writer_end: int | None = None  # live: events written and not yet folded
    restart_s: float | None = None  # --restart: stopped, started again -> every saga served
    rss_mb: float | None = None  # the tracker's resident memory once every event is folded
    rss_start_mb: float | None = None  # ... at the first sign of progress
    sagas: int = 0  # in the backlog

    @property
    def bytes_per_saga(self) -> float | None:
        if self.rss_mb is None or self.rss_start_mb is None or not self.sagas:
            return None
        return (self.rss_mb - self.rss_start_mb) * 2**20 / self.sagas

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "events_per_s": self.events_per_s,
            "cpu_percent": self.cpu_percent,
            "events_per_cpu_s": self.events_per_cpu_s,
            "bytes_per_saga": self.bytes_per_saga,
        }

    def line(self) -> str:
        text = (
            f"round {self.round} {self.system:14s}: {self.events_per_s:7.0f} events/s, "
            f"CPU {self.cpu_percent:5.1f}% of a core ({self.events_per_cpu_s:5.0f} events per "
            f"CPU-s), {self.events} events in {self.seconds:.1f} s, start-up {self.startup_s:.1f} s"
        )
        if self.lag_at_writer_end is not None:
            text += f", {self.lag_at_writer_end} behind when the writer stopped"
        if self.rss_mb is not None:
            text += f", RSS {self.rss_mb:.0f} MB"
        if self.bytes_per_saga is not None:
            text += f" ({self.rss_start_mb:.0f} MB at start: {self.bytes_per_saga:.0f} B/saga)"
        if self.restart_s is not None:
            text += f", restart {self.restart_s:.1f} s"
        return text + ("" if self.finished else " (TIMED OUT)")


Poll = Callable[[], tuple[float, int, float]]  # () -> (monotonic time, events, CPU seconds)


class Runner:
    def __init__(self, args: argparse.Namespace, bootstrap: str, workdir: Path) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.token = secrets.token_urlsafe(24)  # the trackers' state API token

    def command(self, system: str, group: str) -> list[str]:
        if system in BARE:
            return [
                sys.executable, "-m", "benchmarks.tracker_fold", "bare", "--bootstrap",
                self.bootstrap, "--app-id", group, "--datadir", str(self.workdir / "bare"),
                "--mode", BARE[system], "--loglevel", self.args.loglevel or "warning",
            ]  # fmt: skip
        return [
            sys.executable, "-m", "choreo.cli.main", "tracker", "benchmarks.tracker_fold:saga",
            "--broker", f"kafka://{self.bootstrap}", "--http", "127.0.0.1:0",
            "--app-id", group, *self.args.tracker_arg,
            *(["--store", STORES[system]] if system in STORES else []),
        ]  # fmt: skip

    def spawn(
        self, name: str, command: list[str], prefix: str, root: Path | None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        env = {
            **os.environ,
            "BENCH_FOLD_PREFIX": prefix,
            "PYTHONUNBUFFERED": "1",
            "CHOREO_TRACKER_DATA_DIR": str(self.workdir / "tracker"),
            "CHOREO_TRACKER_TOKEN": self.token,
        }
        if self.args.loglevel:
            env["CHOREO_TRACKER_LOGLEVEL"] = self.args.loglevel
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, cwd=root or ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent(),
            )  # fmt: skip
        return proc, log

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        """By pid: SIGTERM, then SIGKILL after 20 s."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def measure(self, system: str, index: int) -> Round:
        live = self.args.live is not None
        label = system.replace("/", "_")
        prefix = f"{self.args.prefix}.r{index}{label}" if live else self.args.prefix
        group = f"{prefix}.{self.args.run}.r{index}.{label}"  # fresh: reads from the start
        if live:
            make_topics(self.bootstrap, [topic(stage, prefix) for stage in STAGES])
            prefill(self.bootstrap, prefix, 0, WARMUP_SAGAS)
        started = time.monotonic()
        command = self.command(system, group)
        proc, log = self.spawn(f"r{index}.{label}", command, prefix, self.args.roots.get(system))
        try:
            progress = self._bare(log) if system in BARE else self._tracker(log)
            poll = self.poller(system, proc, log, progress)
            if live:
                return self._live(system, index, prefix, poll, started)
            result = self._backlog(system, index, poll, started, log, proc.pid)
            result.rss_mb = rss_mb(proc.pid)
            if self.args.restart and system not in BARE and result.finished:
                self.stop(proc)
                result.restart_s = self._restart(system, index, command, prefix, group)
            return result
        finally:
            self.stop(proc)

    def _restart(self, system: str, index: int, command: list[str], prefix: str,
                 group: str) -> float:  # fmt: skip
        """Start the stopped tracker again (same app id, same data directory): seconds
        until its state API serves every saga again."""
        label = system.replace("/", "_")
        began = time.monotonic()
        proc, log = self.spawn(f"r{index}.{label}.restart", command, prefix,
                               self.args.roots.get(system))  # fmt: skip
        try:
            poll = self.poller(system, proc, log, self._tracker(log))
            total = self.args.sagas * self.args.stages
            while True:
                now, done, _cpu = poll()
                if done >= total:
                    return now - began
                if now > began + self.args.timeout:
                    raise SystemExit(f"{system} restarted did not serve every saga ({log})")
                time.sleep(0.1)
        finally:
            self.stop(proc)

    def _backlog(
        self, system: str, index: int, poll: Poll, started: float, log: Path, pid: int
    ) -> Round:
        total = self.args.sagas * self.args.stages
        first: tuple[float, float] | None = None
        rss_start = None
        deadline = started + self.args.timeout
        while True:
            now, done, cpu = poll()
            if first is None and done > 0:
                first = (now, cpu)
                rss_start = rss_mb(pid)
            if done >= total or now > deadline:
                break
            time.sleep(self.args.poll)
        if first is None:
            raise SystemExit(f"{system} folded nothing in {self.args.timeout:.0f} s ({log})")
        t0, c0 = first
        return Round(system, index, done, now - t0, cpu - c0, done >= total, round(t0 - started, 1),
                     rss_start_mb=rss_start, sagas=self.args.sagas)  # fmt: skip

    def _live(self, system: str, index: int, prefix: str, poll: Poll, started: float) -> Round:
        warm = WARMUP_SAGAS * EVENTS_PER_SAGA
        while True:
            now, done, cpu = poll()
            if done >= warm:
                break
            if now > started + self.args.timeout:
                raise SystemExit(f"{system} did not fold the warm-up sagas")
            time.sleep(self.args.poll)
        ready = now
        pacer = Pacer(self.bootstrap, prefix, WARMUP_SAGAS, self.args.live, self.args.seconds,
                      self.args.hop)  # fmt: skip
        total = warm + pacer.count * EVENTS_PER_SAGA
        t0, _done, c0 = poll()
        pacer.start()
        lag = None
        deadline = t0 + self.args.seconds + self.args.timeout
        while True:
            now, done, cpu = poll()
            if lag is None and not pacer.is_alive():
                lag = total - done
            if done >= total or now > deadline:
                break
            time.sleep(self.args.poll)
        pacer.join()
        if pacer.error is not None:
            raise SystemExit(f"the writer failed: {pacer.error!r}")
        return Round(system, index, done - warm, now - t0, cpu - c0, done >= total,
                     round(ready - started, 1), lag)  # fmt: skip

    @staticmethod
    def poller(
        system: str, proc: subprocess.Popen[bytes], log: Path, progress: Callable[[], int]
    ) -> Poll:
        def poll() -> tuple[float, int, float]:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise SystemExit(f"{system} exited with {proc.returncode}:\n{tail}")
            return time.monotonic(), progress(), process_cpu(proc.pid) or 0.0

        return poll

    def _tracker(self, log: Path) -> Callable[[], int]:
        url: str | None = None

        def progress() -> int:
            nonlocal url
            if url is None:
                for line in log.read_text(errors="replace").splitlines():
                    if "state API on http://" in line:
                        url = line.rsplit("state API on ", 1)[1].strip()
                if url is None:
                    return 0
            request = urllib.request.Request(
                f"{url}/counts", headers={"Authorization": f"Bearer {self.token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    counts = json.loads(response.read())
            except OSError:
                return 0
            completed = int(counts["by_status"].get("COMPLETED", 0))
            return completed * EVENTS_PER_SAGA + int(counts.get("total", 0)) - completed

        return progress

    @staticmethod
    def _bare(log: Path) -> Callable[[], int]:
        def progress() -> int:
            last = 0
            with contextlib.suppress(OSError):
                for line in log.read_text(errors="replace").splitlines():
                    if line.startswith("bare-progress "):
                        last = int(line.split()[1])
            return last

        return progress


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path(f"/proc/{pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    return None


def make_topics(bootstrap: str, names: Sequence[str], delete: Sequence[str] = ()) -> None:
    from benchmarks.saga_side_by_side import orchestrate

    orchestrate.make_topics(bootstrap, names, delete=delete)


# -- the bare faust app -----------------------------------------------------------------------
def run_bare(args: argparse.Namespace) -> int:
    """The ceiling: a faust agent that increments a per-gid counter in a changelogged
    table (``--mode none``: no table), at-least-once with faust's own acks, with the
    tracker's app settings (``FaustTracker.build_app``)."""
    import faust

    Path(args.datadir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        datadir=str(Path(args.datadir) / args.app_id),
        store="memory://",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        table_standby_replicas=0,
        web_enabled=False,
        autodiscover=False,
    )
    counts = app.Table("counts", default=int, key_type=bytes, value_type=int, partitions=PARTITIONS)
    source = app.topic(
        *(topic(stage) for stage in STAGES), key_serializer="raw", value_serializer="raw"
    )
    table = args.mode == "table"
    seen = 0

    async def count(stream: Any) -> None:
        nonlocal seen
        async for event in stream.events():
            if table:
                counts[event.key] += 1
            seen += 1

    async def report() -> None:
        print(f"bare-progress {seen}", flush=True)

    app.agent(source, name=f"{args.app_id}.count")(count)
    app.timer(0.1, name=f"{args.app_id}.report")(report)
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


# -- main -----------------------------------------------------------------------------------
@contextlib.contextmanager
def broker(args: argparse.Namespace) -> Iterator[tuple[str, Path]]:
    workdir = Path(tempfile.mkdtemp(prefix="choreo-fold-"))
    try:
        if args.kafka:
            yield args.kafka, workdir
            return
        from choreo.local.kafka_broker import KafkaBroker

        kafka = KafkaBroker(workdir / "kafka", die_with_parent=True)
        print(f"starting Kafka in {workdir} ...", flush=True)
        try:
            yield kafka.start(), workdir
        finally:
            kafka.stop()
    finally:
        if args.keep_logs:
            print(f"logs kept in {workdir / 'logs'}", flush=True)
            shutil.rmtree(workdir / "kafka", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tracker_fold",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--sagas", type=int, help="sagas prefilled (20,000; --quick 5,000)")
    add("--rounds", type=int, help="rounds of each system (3; --quick 2)")
    add("--quick", action="store_true")
    add("--in-flight", action="store_true",
        help="backlog of start events only: every saga stays in flight (RUNNING)")  # fmt: skip
    add("--systems", default="tracker,bare",
        help="comma-separated, in this order, of: tracker, tracker-memory, tracker-rocksdb "
        "(the tracker with that table store; tracker: the CLI's default), bare, "
        "bare-no-table, NAME=DIR (the tracker of the checkout in DIR)")  # fmt: skip
    add("--restart", action="store_true",
        help="backlog: after each tracker round, stop it and time its restart (same app id "
        "and data directory) until every saga is served again")  # fmt: skip
    add("--timeout", type=float, default=60.0, help="s a round may take, start-up included (60)")
    add("--poll", type=float, default=0.25, help="s between progress polls (0.25)")
    add(
        "--live",
        type=float,
        metavar="SAGAS_PER_S",
        help="live traffic, not a backlog: fresh topics each round, written at this rate",
    )
    add("--seconds", type=float, default=10.0, help="live: s of writing (10)")
    add("--hop", type=float, default=0.02, help="live: s between a saga's events (0.02)")
    add("--kafka", help="HOST:PORT of a running broker (default: start one)")
    add("--reuse", metavar="PREFIX", help="with --kafka: the topics an earlier run prefilled")
    add("--loglevel", help="the processes' faust log level (CHOREO_TRACKER_LOGLEVEL)")
    add("--tracker-arg", action="append", default=[], help="one more `choreo tracker` argument")
    add("--keep-logs", action="store_true")
    add("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    args.sagas = args.sagas or (5000 if args.quick else 20000)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.stages = 1 if args.in_flight else EVENTS_PER_SAGA
    if args.in_flight and args.live is not None:
        parser.error("--in-flight is a backlog: not with --live")
    args.run = f"{os.getpid()}.{int(time.time())}"
    args.prefix = args.reuse or f"fold.{args.run}"
    if args.reuse and not args.kafka:
        parser.error("--reuse needs --kafka")
    args.systems_list, args.roots = [], {}
    for spec in filter(None, (s.strip() for s in args.systems.split(","))):
        name, sep, root = spec.partition("=")
        if sep:
            args.roots[name] = Path(root).resolve()
        elif name != "tracker" and name not in BARE and name not in STORES:
            parser.error(f"--systems: {name!r} is not tracker, tracker-memory, "
                         "tracker-rocksdb, bare, bare-no-table or NAME=DIR")  # fmt: skip
        args.systems_list.append(name)
    return args


def summarize(results: Sequence[Round], systems: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for system in systems:
        rounds = [r for r in results if r.system == system]
        summary[system] = {
            key: statistics.median(getattr(r, key) for r in rounds)
            for key in ("events_per_s", "cpu_percent", "events_per_cpu_s")
        }
        per_saga = [b for r in rounds if (b := r.bytes_per_saga) is not None]
        summary[system]["bytes_per_saga"] = statistics.median(per_saga) if per_saga else None
        restarts = [r.restart_s for r in rounds if r.restart_s is not None]
        summary[system]["restart_s"] = statistics.median(restarts) if restarts else None
        print(f"median {system:14s}: {summary[system]['events_per_s']:7.0f} events/s, "
              f"CPU {summary[system]['cpu_percent']:5.1f}% "
              f"({summary[system]['events_per_cpu_s']:5.0f} events per CPU-s)")  # fmt: skip
    if "bare" in summary:
        ceiling = summary["bare"]
        for system in systems:
            if system not in BARE and ceiling["events_per_s"] and ceiling["events_per_cpu_s"]:
                mine = summary[system]
                print(f"{system} / bare faust: {mine['events_per_s'] / ceiling['events_per_s']:.2f}"
                      f" in events/s, {mine['events_per_cpu_s'] / ceiling['events_per_cpu_s']:.2f}"
                      " in events per CPU-s")  # fmt: skip
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bare"]:
        bare = argparse.ArgumentParser(prog="python -m benchmarks.tracker_fold bare")
        bare.add_argument("--bootstrap", required=True)
        bare.add_argument("--app-id", required=True)
        bare.add_argument("--datadir", required=True)
        bare.add_argument("--mode", choices=["table", "none"], default="table")
        bare.add_argument("--loglevel", default="warning")
        return run_bare(bare.parse_args(argv[1:]))
    args = parse(argv)
    with broker(args) as (bootstrap, workdir):
        if not args.reuse:
            make_topics(bootstrap, SHARED_TOPICS, delete=SHARED_TOPICS)
        if not args.reuse and args.live is None:
            make_topics(bootstrap, [topic(stage, args.prefix) for stage in STAGES])
            total = args.sagas * args.stages
            print(f"prefilling {args.prefix}: {args.sagas} sagas ({total} events) ...", flush=True)
            began = time.monotonic()
            prefill(bootstrap, args.prefix, 0, args.sagas, args.stages)
            print(f"  done in {time.monotonic() - began:.1f} s", flush=True)
        runner = Runner(args, bootstrap, workdir)
        results: list[Round] = []
        for index in range(1, args.rounds + 1):
            for system in args.systems_list:
                results.append(runner.measure(system, index))
                print(results[-1].line(), flush=True)
        summary = summarize(results, args.systems_list)
        if args.json:
            mode = "backlog" if args.live is None else f"live {args.live} sagas/s"
            mode += ", in flight" if args.in_flight else ""
            report = {"mode": mode, "sagas": args.sagas, "summary": summary,
                      "rounds": [r.to_json() for r in results]}  # fmt: skip
            args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
