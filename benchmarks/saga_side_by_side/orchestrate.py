"""The side-by-side saga benchmark: one real Kafka broker and one Redis, the same 3-step
chain (start -> step1 -> step2 -> step3 -> done) in four systems, alternated in one run.

    python -m benchmarks.saga_side_by_side            # 3 rounds each, about 7 minutes
    python -m benchmarks.saga_side_by_side --quick    # 1 round each, about 1.5 minutes
    python -m benchmarks.saga_side_by_side --profile  # py-spy of one choreo step at saturation

Systems: (a) ``raw``: a bare aiokafka relay that sends a poll's worth, awaits the acks
together and commits; (b) ``faststream``: the same chain in FastStream, in its own
virtualenv; (c) ``choreo``: three ``Service``s with the Redis barrier, one ``ctx.tx.incr``
each; (d) ``choreo+tracker``: (c) plus ``choreo tracker`` (faust) following the contract.
Every step is its own OS process and consumer group; every topic has 6 partitions; every
round gets fresh topics. Rounds go a, b, c, d, a, b, c, d, ... so drift in the machine's
speed touches every system alike. The driver (its own process, bare aiokafka, the same for
every system) measures saturation in a closed loop and latency in an open loop at half
of that system's saturation; CPU of every process is read at the edges of each window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import machine
from benchmarks.saga_side_by_side import profiling
from benchmarks.saga_side_by_side.procstat import die_with_parent
from benchmarks.saga_side_by_side.wire import COUNTERS_DDL, PARTITIONS, topics

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
FASTSTREAM_SPEC = "faststream[kafka]==0.7.8"
CHOREO_SHARED_TOPICS = ("choreo.system", "choreo.dlq")
STEPS = ("step1", "step2", "step3")


@dataclass(frozen=True)
class System:
    key: str
    letter: str
    description: str
    format: str  # of the start records: "plain" JSON or "choreo" (envelope headers)
    tracker: bool = False
    postgres: bool = False  # step2 on the PostgreSQL barrier, its effect SQL in ctx.db


SYSTEMS = {
    s.key: s
    for s in (
        System(
            "raw",
            "a",
            "raw aiokafka relay: per poll send all, await acks together, commit",
            "plain",
        ),
        System(
            "faststream",
            "b",
            "FastStream: acks=all, idempotent, commit after handler, one consumer per partition",
            "plain",
        ),
        System(
            "choreo", "c", "choreo: Redis barrier, one ctx.tx.incr per step, no tracker", "choreo"
        ),
        System(
            "choreo+tracker",
            "d",
            "choreo as (c) plus the faust tracker process",
            "choreo",
            tracker=True,
        ),
        System(
            "choreo+pg",
            "e",
            "choreo as (c) with step2 on the PostgreSQL barrier: its effect an upsert through "
            "ctx.db, committed with the barrier row and the outgoing event",
            "choreo",
            postgres=True,
        ),
    )
}


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    inflight: int = 2000  # closed loop: sagas kept in flight
    warmup: float = 3.0  # s of closed loop before the saturation window
    measure: float = 10.0  # s of the saturation window
    rate_fraction: float = 0.5  # open-loop rate, as a share of the measured saturation
    latency_rate: float = 0.0  # open-loop rate in sagas/s instead (0: use rate_fraction)
    latency_warmup: float = 1.0
    latency_seconds: float = 6.0
    drain_timeout: float = 30.0
    straggler_timeout: float = 10.0
    probe_count: int = 20
    probe_timeout: float = 90.0
    linger_ms: int = 0  # of the driver's, the raw relay's and FastStream's producers


FULL = Settings()
QUICK = Settings(rounds=1, warmup=2.0, measure=5.0, latency_seconds=3.0)
WARMUP = Settings(
    rounds=1,
    inflight=1000,
    warmup=3.0,
    measure=3.0,
    latency_warmup=0.5,
    latency_seconds=1.0,
    drain_timeout=15.0,
    straggler_timeout=5.0,
)
SMOKE = Settings(
    rounds=1,
    inflight=200,
    warmup=0.5,
    measure=1.5,
    latency_warmup=0.3,
    latency_seconds=1.0,
    drain_timeout=15.0,
    straggler_timeout=5.0,
    probe_count=5,
    probe_timeout=60.0,
)


class RoundError(RuntimeError):
    pass


@dataclass
class Backend:
    bootstrap: str  # host:port
    redis_url: str
    kafka_pid: int | None
    redis_pid: int | None
    owned: bool  # started by this run, so shared topics may be recreated
    workdir: Path
    postgres_url: str | None = None  # only when a chosen system needs it
    postgres_pid: int | None = None


# -- servers and the FastStream virtualenv ----------------------------------------------
@contextlib.contextmanager
def backend(args: argparse.Namespace, postgres: bool = False) -> Iterator[Backend]:
    """The servers of the run; PostgreSQL only when ``postgres`` (a system needs it)."""
    workdir = Path(tempfile.mkdtemp(prefix="choreo-sbs-"))
    try:
        if args.kafka:
            if not args.redis:
                raise SystemExit("--kafka needs --redis too")
            if postgres and not args.postgres:
                raise SystemExit("--kafka with system choreo+pg needs --postgres too")
            yield Backend(
                args.kafka, args.redis, args.kafka_pid, args.redis_pid, False, workdir,
                args.postgres, args.postgres_pid,
            )  # fmt: skip
            return
        from choreo.local.kafka_broker import KafkaBroker
        from choreo.local.postgres_server import PostgresServer
        from choreo.local.redis_server import RedisServer

        kafka = KafkaBroker(workdir / "kafka", die_with_parent=True)
        redis = RedisServer(workdir / "redis", die_with_parent=True)
        servers: list[Any] = [redis, kafka]
        try:
            progress(f"starting Kafka and Redis in {workdir} ...")
            bootstrap = kafka.start()
            redis_url = redis.start()
            quiet_redis(redis_url)
            postgres_url, postgres_pid = None, None
            if postgres:
                pg = PostgresServer(workdir / "postgres", die_with_parent=True)
                servers.append(pg)
                progress("starting PostgreSQL ...")
                postgres_url, postgres_pid = pg.start(), pg.running_pid()
            yield Backend(
                bootstrap, redis_url, kafka.running_pid(), redis.running_pid(), True, workdir,
                postgres_url, postgres_pid,
            )  # fmt: skip
        finally:
            for server in reversed(servers):
                try:
                    server.stop()
                except Exception as exc:  # report, and still stop the other one
                    progress(f"could not stop {server.name}: {exc}")
    finally:
        if args.keep_logs:
            progress(f"logs kept in {workdir / 'logs'}")
            shutil.rmtree(workdir / "kafka", ignore_errors=True)
            shutil.rmtree(workdir / "redis", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def cache_dir() -> Path:
    override = os.environ.get("CHOREO_CACHE_DIR")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "choreo"


def faststream_python(spec: str) -> str:
    """The interpreter of the benchmark's own FastStream virtualenv, made on first use."""
    venv = cache_dir() / "bench-venv-faststream"
    python = venv / "bin" / "python"
    marker = venv / ".bench-spec"
    if python.exists() and marker.exists() and marker.read_text().strip() == spec:
        return str(python)
    progress(f"installing {spec} into {venv} ...")
    base = shutil.which("python3") or sys.executable
    shutil.rmtree(venv, ignore_errors=True)
    for command in (
        [base, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", spec],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RoundError(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    marker.write_text(spec + "\n")
    return str(python)


def versions(faststream: str | None) -> dict[str, str]:
    found = {}
    with contextlib.suppress(Exception):
        from choreo.local.kafka_broker import KAFKA_VERSION

        found["kafka"] = KAFKA_VERSION
    redis = shutil.which("redis-server")
    if redis:
        done = subprocess.run([redis, "--version"], capture_output=True, text=True, check=False)
        found["redis-server"] = done.stdout.strip()
    if faststream:
        code = "import importlib.metadata as m; print(m.version('faststream'))"
        done = subprocess.run([faststream, "-c", code], capture_output=True, text=True, check=False)
        found["faststream"] = done.stdout.strip()
    return found


# -- topics --------------------------------------------------------------------------------
async def _topics(bootstrap: str, create: Sequence[str], delete: Sequence[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    await admin.start()
    try:
        deadline = time.monotonic() + 60
        existing = set(await admin.list_topics())
        doomed = [topic for topic in delete if topic in existing]
        if doomed:
            await admin.delete_topics(doomed)
        pending = list(create)
        while pending:
            response = await admin.create_topics(
                [NewTopic(topic, PARTITIONS, 1) for topic in pending]
            )
            # 36: TOPIC_ALREADY_EXISTS (also while a deletion is still going on)
            retry = [e[0] for e in response.topic_errors if e[1] == 36 and e[0] in doomed]
            failed = [e for e in response.topic_errors if e[1] not in (0, 36)]
            if failed:
                raise RoundError(f"cannot create topics: {failed}")
            pending = retry
            if pending:
                if time.monotonic() > deadline:
                    raise RoundError(f"topics {pending} still being deleted after 60 s")
                await asyncio.sleep(0.2)
        while not set(create) <= set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise RoundError(f"topics {create} not visible after 60 s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def make_topics(bootstrap: str, create: Sequence[str], delete: Sequence[str] = ()) -> None:
    asyncio.run(_topics(bootstrap, create, delete))


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    async def run() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            doomed = [name for name in names if name in existing]
            if doomed:
                await admin.delete_topics(doomed)
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(run())


# -- processes -------------------------------------------------------------------------------
class Processes:
    """The round's processes, each with its log file; stopped by pid, never by name."""

    def __init__(self, logs: Path, prefix: str) -> None:
        self.logs = logs
        self.prefix = prefix
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        return self.logs / f"{self.prefix}.{name}.log"

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log(name).open("wb") as out:
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RoundError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log(name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_for_line(self, name: str, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            for line in self.log(name).read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            time.sleep(0.2)
        raise RoundError(f"{name} did not print {needle!r} in {timeout:.0f} s:\n{self.tail(name)}")

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                codes[name] = None  # killed
        return codes


def quiet_redis(url: str) -> None:
    """Durable as users run it (the append-only file, fsync every second), but with no
    fork inside a measured window: RDB snapshots and automatic AOF rewrites are off. A
    snapshot of a store grown over several rounds took most of a core for tens of
    seconds, landing on whichever round was running."""
    import redis

    with redis.Redis.from_url(url) as client:
        client.config_set("save", "")
        client.config_set("auto-aof-rewrite-percentage", 0)


def empty_redis(url: str) -> None:
    """Every round starts on an empty store, as it starts on fresh topics (only on the
    run's own server: a server given with ``--redis`` is left as it is)."""
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushall()


def prepare_postgres(url: str) -> None:
    """The barrier's tables (``choreo db init``, idempotent) and the step's own table."""
    subprocess.run(
        [sys.executable, "-m", "choreo.cli.main", "db", "init", "--url", url],
        check=True,
        capture_output=True,
    )

    async def counters() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(COUNTERS_DDL)
        finally:
            await conn.close()

    asyncio.run(counters())


def step_commands(
    system: System, backend: Backend, prefix: str, linger_ms: int, faststream: str | None
) -> dict[str, list[str]]:
    names = topics(prefix)
    hops = {"step1": ("start", "s1"), "step2": ("s1", "s2"), "step3": ("s2", "done")}
    commands = {}
    for step, (src, dst) in hops.items():
        common = [
            "--bootstrap",
            backend.bootstrap,
            "--src",
            names[src],
            "--dst",
            names[dst],
            "--group",
            f"{prefix}.{step}",
            "--linger-ms",
            str(linger_ms),
        ]
        if system.key == "raw":
            commands[step] = [
                sys.executable,
                "-m",
                "benchmarks.saga_side_by_side.raw_step",
                *common,
            ]
        elif system.key == "faststream":
            assert faststream is not None
            commands[step] = [faststream, str(HERE / "faststream_step.py"), *common]
        else:
            on_postgres = system.postgres and step == "step2"
            store = backend.postgres_url if on_postgres else backend.redis_url
            assert store is not None
            commands[step] = [
                sys.executable,
                "-m",
                "choreo.cli.main",
                "run",
                f"benchmarks.saga_side_by_side.choreo_app:{step}{'pg' if on_postgres else ''}",
                "--broker",
                f"kafka://{backend.bootstrap}",
                "--store",
                store,
            ]
    return commands


@dataclass
class Profile:
    """Which step to profile in this round, with what."""

    step: str
    tool: profiling.PySpy | profiling.CProfiler


def run_round(
    system: System,
    index: int,
    run_id: str,
    settings: Settings,
    backend: Backend,
    faststream: str | None,
    profile: Profile | None = None,
) -> dict[str, Any]:
    prefix = f"sbs.{run_id}.r{index}{system.letter}"
    names = list(topics(prefix).values())
    shared = CHOREO_SHARED_TOPICS if system.format == "choreo" and backend.owned else ()
    # choreo's system and dead-letter topics are fixed names: fresh ones for each choreo
    # round on our own broker, so a tracker never replays an earlier round's records.
    make_topics(backend.bootstrap, [*names, *shared], delete=shared)
    if system.format == "choreo" and backend.owned:
        empty_redis(backend.redis_url)
    if system.postgres:
        assert backend.postgres_url is not None
        prepare_postgres(backend.postgres_url)
    procs = Processes(backend.workdir / "logs", prefix)
    env = {**os.environ, "BENCH_SBS_PREFIX": prefix, "PYTHONUNBUFFERED": "1"}
    env.pop("CHOREO_BROKER", None)
    env.pop("CHOREO_STORE", None)
    pids: dict[str, list[int]] = {}
    result: dict[str, Any] = {
        "system": system.key,
        "letter": system.letter,
        "round": index,
        "prefix": prefix,
    }
    started = time.monotonic()
    try:
        commands = step_commands(system, backend, prefix, settings.linger_ms, faststream)
        for step, command in commands.items():
            step_env = env
            if profile is not None and profile.step == step:
                command, step_env = profile.tool.command(command, env)
            pids[step] = [procs.start(step, command, step_env).pid]
        tracker_url = None
        if system.tracker:
            tracker_env = {**env, "CHOREO_TRACKER_DATA_DIR": str(backend.workdir / "tracker")}
            command = [
                sys.executable,
                "-m",
                "choreo.cli.main",
                "tracker",
                "benchmarks.saga_side_by_side.choreo_app:saga",
                "--broker",
                f"kafka://{backend.bootstrap}",
                "--http",
                "127.0.0.1:0",
                "--no-auth",  # loopback only; the driver reads /counts without a token
                "--app-id",
                f"{prefix}.tracker",
            ]
            pids["tracker"] = [procs.start("tracker", command, tracker_env).pid]
            line = procs.wait_for_line("tracker", "state API on http://", 120)
            tracker_url = line.rsplit("state API on ", 1)[1].strip()
        servers = [("kafka", backend.kafka_pid), ("redis", backend.redis_pid)]
        if system.postgres:
            servers.append(("postgres", backend.postgres_pid))
        for name, pid in servers:
            if pid is not None:
                pids[name] = [pid]
        config = {
            "tracker_url": tracker_url,
            "bootstrap": backend.bootstrap,
            "prefix": prefix,
            "format": system.format,
            "pids": pids,
            **{k: v for k, v in asdict(settings).items() if k != "rounds"},
        }
        driver_cmd = [
            sys.executable,
            "-m",
            "benchmarks.saga_side_by_side.driver",
            "--config",
            json.dumps(config),
        ]
        tracker_seen: dict[str, Any] = {}

        def on_event(event: dict[str, Any]) -> None:
            name = event["event"]
            if profile is not None and name == "measure-start":
                profile.tool.start(pids[profile.step][0], settings.measure)
            elif profile is not None and name == "measure-end":
                profile.tool.stop()
            if tracker_url and name in ("measure-start", "measure-end"):
                tracker_seen[name] = (time.monotonic(), tracker_counts(tracker_url))

        result.update(drive(driver_cmd, env, procs, settings, on_event))
        if tracker_url:
            result["tracker"] = tracker_progress(tracker_seen, tracker_counts(tracker_url))
    except RoundError as exc:
        result["error"] = str(exc)
    finally:
        result["exit_codes"] = procs.stop()
        delete_topics(backend.bootstrap, names)
        result["round_seconds"] = time.monotonic() - started
    return result


def drive(
    command: list[str],
    env: dict[str, str],
    procs: Processes,
    settings: Settings,
    on_event: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """Run the driver until its result line; the steps must stay up all along."""
    s = settings
    budget = (
        s.probe_timeout
        + s.warmup
        + s.measure
        + s.drain_timeout
        + s.latency_warmup
        + s.latency_seconds
        + s.straggler_timeout
        + 60
    )
    with procs.log("driver").open("wb") as err:
        driver = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=die_with_parent(),
        )
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        assert driver.stdout is not None
        for line in driver.stdout:
            lines.put(line)
        lines.put(None)

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    deadline = time.monotonic() + budget
    result: dict[str, Any] | None = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RoundError(f"the driver did not finish in {budget:.0f} s")
            try:
                line = lines.get(timeout=min(1.0, remaining))
            except queue.Empty:
                procs.check()
                continue
            if line is None:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if on_event is not None:
                on_event(event)
            if event["event"] == "ready":
                progress(f"    ready after {event['probe_seconds']:.1f} s of probe; measuring")
            elif event["event"] == "error":
                raise RoundError(f"driver: {event['error']}\n{procs.tail('driver')}")
            elif event["event"] == "result":
                result = event
        procs.check()
        if driver.wait(30) != 0 or result is None:
            raise RoundError(f"the driver exited with {driver.returncode}:\n{procs.tail('driver')}")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        pumping.join(10)  # it ends at the pipe's end, now that the driver is gone
        if driver.stdout is not None:
            driver.stdout.close()
    result.pop("event", None)
    result.pop("t", None)
    return result


def tracker_progress(seen: dict[str, Any], final: Any) -> dict[str, Any]:
    """How far the tracker kept up: sagas it saw complete during the saturation window
    (per second), and its counts at the end of the round."""
    out: dict[str, Any] = {"counts_at_end": final}
    with contextlib.suppress(KeyError, TypeError):
        (t0, before), (t1, after) = seen["measure-start"], seen["measure-end"]
        done0, done1 = before["by_status"]["COMPLETED"], after["by_status"]["COMPLETED"]
        out["completed_per_second_in_window"] = (done1 - done0) / (t1 - t0)
        out["seen_at_window_end"] = after["total"]
    return out


def tracker_counts(url: str) -> Any:
    try:
        with urllib.request.urlopen(f"{url}/counts", timeout=10) as response:
            return json.loads(response.read())
    except Exception as exc:
        return {"error": str(exc)}


# -- summary ----------------------------------------------------------------------------------
CPU_COLUMNS = (
    "driver", "step1", "step2", "step3", "tracker", "kafka", "redis", "postgres", "machine",
)  # fmt: skip


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        if "error" in r:
            rows.append(
                [
                    f"{r['letter']} {r['system']}",
                    str(r["round"]),
                    "FAILED",
                    "-",
                    "-",
                    *("-" for _ in CPU_COLUMNS),
                ]
            )
            continue
        cpu = r["cpu_saturation"]
        rows.append(
            [
                f"{r['letter']} {r['system']}",
                str(r["round"]),
                _fmt(r["sagas_per_second"]),
                _fmt(r["latency"]["p50_ms"], ".1f"),
                _fmt(r["latency"]["p99_ms"], ".1f"),
                *(_fmt(cpu.get(name)) for name in CPU_COLUMNS),
            ]
        )
    return rows


def medians(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in SYSTEMS:
        good = [r for r in results if r["system"] == key and "error" not in r]
        if not good:
            continue

        def med(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return statistics.median(present) if present else None

        out[key] = {
            "rounds": len(good),
            "sagas_per_second": med([r["sagas_per_second"] for r in good]),
            "sagas_per_second_runs": [r["sagas_per_second"] for r in good],
            "p50_ms": med([r["latency"]["p50_ms"] for r in good]),
            "p99_ms": med([r["latency"]["p99_ms"] for r in good]),
            "latency_rate": med([r["latency_rate_target"] for r in good]),
            "hops": {
                hop: {
                    q: med([r["hops"].get(hop, {}).get(q) for r in good if "hops" in r])
                    for q in ("p50_ms", "p99_ms")
                }
                for hop in HOPS
            },
            "cpu_saturation": {
                name: med([r["cpu_saturation"].get(name) for r in good]) for name in CPU_COLUMNS
            },
        }
    return out


#: the latency phase's hops, as the driver names them (stage record -> next stage record
#: by Kafka CreateTime; ``done`` record -> the driver's receipt)
HOPS = ("start->s1", "s1->s2", "s2->done", "done->driver")


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def ratio(top: str, bottom: str) -> float | None:
        a, b = summary.get(top), summary.get(bottom)
        if not a or not b or not b["sagas_per_second"]:
            return None
        return float(a["sagas_per_second"] / b["sagas_per_second"])

    return {
        "c/a (choreo / raw relay)": ratio("choreo", "raw"),
        "d/b (choreo+tracker / FastStream)": ratio("choreo+tracker", "faststream"),
        "c/b (choreo / FastStream)": ratio("choreo", "faststream"),
        "d/c (tracker's cost)": ratio("choreo+tracker", "choreo"),
        "e/c (one step on the PostgreSQL barrier / all on Redis)": ratio("choreo+pg", "choreo"),
    }


def print_report(results: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    header = ["system", "rnd", "sagas/s", "p50 ms", "p99 ms", *(f"{c}%" for c in CPU_COLUMNS)]
    rows = table_rows(results)
    med_rows = [
        [
            f"{SYSTEMS[key].letter} {key}",
            "med",
            _fmt(m["sagas_per_second"]),
            _fmt(m["p50_ms"], ".1f"),
            _fmt(m["p99_ms"], ".1f"),
            *(_fmt(m["cpu_saturation"][c]) for c in CPU_COLUMNS),
        ]
        for key, m in summary["medians"].items()
    ]
    widths = [
        max(len(str(row[i])) for row in [header, *rows, *med_rows] if i < len(row))
        for i in range(len(header))
    ]

    def show(row: list[str]) -> None:
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        print("  ".join(cells))

    print(
        "\nCPU: % of one core during the saturation window (machine: % of all cores busy);"
        "\np50/p99: end-to-end saga latency in the open loop at half of the system's"
        " saturation\n"
    )
    show(header)
    for row in rows:
        show(row)
    print()
    for row in med_rows:
        show(row)
    for r in results:
        tracked = r.get("tracker")
        if tracked:
            print(
                f"tracker, round {r['round']}: saw "
                f"{_fmt(tracked.get('completed_per_second_in_window'))} sagas/s complete in "
                f"the window (the chain completed {_fmt(r['sagas_per_second'])}); at the end "
                f"of the round: {tracked['counts_at_end'].get('by_status')}"
            )
    print()
    for name, value in summary["ratios"].items():
        print(f"{name}: {_fmt(value, '.3f')}")
    print(
        "\nwhere the latency went, per hop (medians of rounds; p50/p99 ms over the timed"
        "\nsagas, from Kafka CreateTime of each stage's record to the next one's: a"
        "\nstep's fetch, wait and handling; done->driver: the driver's fetch):"
    )
    print("system".ljust(20) + "".join(hop.rjust(16) for hop in HOPS))
    for key, m in summary["medians"].items():
        cells = [
            f"{_fmt(m['hops'][hop]['p50_ms'], '.0f')}/{_fmt(m['hops'][hop]['p99_ms'], '.0f')}"
            for hop in HOPS
        ]
        print(f"{SYSTEMS[key].letter} {key}".ljust(20) + "".join(c.rjust(16) for c in cells))


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.saga_side_by_side",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round each, short windows")
    mode.add_argument("--smoke", action="store_true", help="tiny windows: proves it runs")
    mode.add_argument(
        "--profile",
        action="store_true",
        help="one choreo round with one step profiled at saturation",
    )
    parser.add_argument(
        "--systems",
        default="raw,faststream,choreo,choreo+tracker,choreo+pg",
        help="comma-separated, of: raw faststream choreo choreo+tracker choreo+pg (or a-e)",
    )
    parser.add_argument("--rounds", type=int, help="rounds of each system")
    parser.add_argument("--inflight", type=int, help="closed-loop sagas in flight")
    parser.add_argument("--measure", type=float, help="seconds of the saturation window")
    parser.add_argument("--latency-seconds", type=float, help="seconds of the latency window")
    parser.add_argument(
        "--rate-fraction", type=float, help="open-loop rate as a share of saturation (0.5)"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="open-loop rate in sagas/s for every system (same-load A/B of latency)",
    )
    parser.add_argument("--linger-ms", type=int, help="linger of raw/FastStream/driver producers")
    parser.add_argument("--profile-step", default="step2", choices=STEPS)
    parser.add_argument("--profiler", default="auto", choices=["auto", "py-spy", "cprofile"])
    parser.add_argument(
        "--faststream-spec",
        default=FASTSTREAM_SPEC,
        help=f"pip requirement of the FastStream venv ({FASTSTREAM_SPEC})",
    )
    parser.add_argument("--kafka", help="HOST:PORT of a running broker instead of starting one")
    parser.add_argument("--redis", help="redis:// URL of a running server (with --kafka)")
    parser.add_argument("--kafka-pid", type=int, help="its pid, for the CPU columns")
    parser.add_argument("--redis-pid", type=int, help="its pid, for the CPU columns")
    parser.add_argument("--postgres", help="postgresql:// URL of a running server (with --kafka)")
    parser.add_argument("--postgres-pid", type=int, help="its pid, for the CPU columns")
    parser.add_argument(
        "--no-warmup-round",
        action="store_true",
        help="skip the untimed raw round that warms a fresh broker's JVM",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/)")
    return parser.parse_args(argv)


def chosen_systems(text: str) -> list[System]:
    by_letter = {s.letter: s for s in SYSTEMS.values()}
    chosen = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        system = SYSTEMS.get(item) or by_letter.get(item)
        if system is None:
            raise SystemExit(f"unknown system {item!r}; choose from {', '.join(SYSTEMS)}")
        chosen.append(system)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else SMOKE if args.smoke else FULL
    if args.profile:
        settings = replace(QUICK, measure=10.0)
    overrides = {
        "rounds": args.rounds,
        "inflight": args.inflight,
        "measure": args.measure,
        "latency_seconds": args.latency_seconds,
        "rate_fraction": args.rate_fraction,
        "latency_rate": args.latency_rate,
        "linger_ms": args.linger_ms,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    systems = [SYSTEMS["choreo"]] if args.profile else chosen_systems(args.systems)
    mode = next(
        name
        for name, on in (
            ("profile", args.profile),
            ("quick", args.quick),
            ("smoke", args.smoke),
            ("full", True),
        )
        if on
    )
    run_id = f"{int(time.time()) % 1_000_000:06d}{os.urandom(2).hex()}"
    faststream = None
    if any(s.key == "faststream" for s in systems):
        faststream = faststream_python(args.faststream_spec)
    profile = choose_profiler(args) if args.profile else None
    load_before = os.getloadavg()
    started = time.time()
    results: list[dict[str, Any]] = []
    with backend(args, postgres=any(s.postgres for s in systems)) as servers:
        if not servers.owned and any(s.tracker for s in systems):
            progress(
                "note: on a broker this run did not start, choreo.system is shared with "
                "other users; the tracker reads it from the beginning"
            )
        warmup = None
        if servers.owned and not args.smoke and not args.no_warmup_round:
            # A fresh JVM compiles Kafka's hot paths during its first minute of load; the
            # first measured round must not pay for that alone.
            progress("warm-up round (not counted): (a) raw on the fresh broker ...")
            warmup = run_round(SYSTEMS["raw"], 0, run_id, WARMUP, servers, faststream)
            progress(f"    {_fmt(warmup.get('sagas_per_second'))} sagas/s (discarded)")
        for index in range(1, settings.rounds + 1):
            for system in systems:
                progress(f"round {index}/{settings.rounds}: ({system.letter}) {system.key} ...")
                result = run_round(system, index, run_id, settings, servers, faststream, profile)
                results.append(result)
                if "error" in result:
                    progress(f"    FAILED: {result['error']}")
                else:
                    progress(
                        f"    {result['sagas_per_second']:,.0f} sagas/s; p50 "
                        f"{_fmt(result['latency']['p50_ms'], '.1f')} ms, p99 "
                        f"{_fmt(result['latency']['p99_ms'], '.1f')} ms at "
                        f"{result['latency_rate_target']:,.0f}/s "
                        f"({result['round_seconds']:.0f} s)"
                    )
                    if "tracker" in result:
                        tracked = result["tracker"]
                        rate = tracked.get("completed_per_second_in_window")
                        progress(
                            f"    the tracker saw {_fmt(rate)} sagas/s complete in the window; "
                            f"at the end: {tracked['counts_at_end'].get('by_status')}"
                        )
    summary: dict[str, Any] = {"medians": medians(results)}
    summary["ratios"] = ratios(summary["medians"])
    report: dict[str, Any] = {
        "benchmark": "saga_side_by_side",
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": time.time() - started,
        "machine": machine(),
        "versions": versions(faststream),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": asdict(settings),
        "partitions": PARTITIONS,
        "systems": {s.key: asdict(s) for s in systems},
        "warmup_round": warmup,
        "results": results,
        **summary,
    }
    print_report(results, summary)
    if profile is not None:
        good = [r for r in results if "error" not in r]
        if good:
            cpu = good[0]["cpu_saturation"].get(profile.step)
            report["profile"] = {
                "step": profile.step,
                "step_cpu_percent": cpu,
                **profile.tool.summary(),
            }
            profiling.print_summary(
                report["profile"],
                f"profile of choreo's {profile.step} at saturation ({_fmt(cpu)}% of a core "
                "by /proc)",
            )
    output = args.output or RESULTS_DIR / f"saga_side_by_side-{mode}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output} ({time.time() - started:.0f} s in all)")
    return 0 if all("error" not in r for r in results) else 1


def choose_profiler(args: argparse.Namespace) -> Profile:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.profiler in ("auto", "py-spy"):
        binary = profiling.find_py_spy(install=True)
        if binary is not None:
            tool = profiling.PySpy(binary, RESULTS_DIR / "profile-py-spy.txt")
            if tool.works():
                return Profile(args.profile_step, tool)
            progress("py-spy cannot attach to a process here (ptrace?); using cProfile")
        elif args.profiler == "py-spy":
            raise SystemExit("py-spy is not available")
    return Profile(args.profile_step, profiling.CProfiler(RESULTS_DIR / "profile-cprofile.prof"))
