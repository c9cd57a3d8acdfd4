"""The conformance kit on real Kafka + Redis: choreo's own service passes it (through the
CLI, as a user runs it), and hand-written participants that break rules on purpose are
reported as breaking those rules and keeping the others."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.cli.main import main
from choreo.conformance import Check, Target, passed, pick_step, render, run, sample_payload
from choreo.store.redis import RedisStore
from choreo.transport.kafka import KafkaTransport
from tests.procs.conformance_app import SERVICE, TOPIC, hold_saga, runs_key

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = "tests.procs.conformance_app:hold_saga"


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    sys.stderr.write(log.read_text(errors="replace")[-4000:])


@pytest.fixture
def python_service(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[None]:
    """``choreo run tests.procs.conformance_app:app`` on Kafka and Redis."""
    log = tmp_path / "service.log"
    argv = [
        sys.executable,
        "-m",
        "choreo.cli.main",
        "run",
        "tests.procs.conformance_app:app",
        "--broker",
        f"kafka://{kafka_bootstrap}",
        "--store",
        redis_url,
    ]
    process = spawn(argv, {}, log)
    yield
    stop(process, log)


async def distinct_runs(kafka_bootstrap: str, account: str) -> int:
    """How many (gid, op) pairs the topic shows a done output for, for ``account``."""
    transport = KafkaTransport(f"kafka://{kafka_bootstrap}")
    async with transport:
        tps = await transport.topic_partitions([TOPIC])
        ends = await transport.end_offsets(tps)
        consumer = transport.consumer(f"conformance-probe-{uuid.uuid4().hex}", [TOPIC])
        await consumer.start()
        pairs: set[tuple[bytes | None, bytes | None]] = set()
        positions: dict[object, int] = {}
        try:
            deadline = time.monotonic() + 60
            while any(positions.get(tp, 0) < end for tp, end in ends.items()):
                assert time.monotonic() < deadline, "could not read the topic to its end"
                for tp, records in (await consumer.getmany(timeout=0.5)).items():
                    for record in records:
                        positions[tp] = record.offset + 1
                        kind = record.header("choreo-type")
                        if (
                            kind in (b"FundsHeld", b"HoldReleased")
                            and account.encode() in record.value
                        ):
                            pairs.add((record.key, kind))
        finally:
            await consumer.stop()
    return len(pairs)


async def test_choreo_service_passes(
    python_service: None, kafka_bootstrap: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    argv = [
        "conformance",
        "--broker",
        f"kafka://{kafka_bootstrap}",
        "--service",
        SERVICE,
        "--contract",
        CONTRACT,
        "--payload",
        f'{{"account": "{account}"}}',
        "--failing-payload",
        '{"amount": 5000}',
        "--timeout",
        "90",
        "--strict",
    ]
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    print(out)  # shown with -rP
    assert code == 0, out
    for scenario in (
        "trigger",
        "duplicate trigger",
        "compensation",
        "duplicate compensation",
        "re-issued compensation (new id)",
        "null compensation",
        "hanging action",
        "failure",
        "poison",
        "consumer group",
    ):
        assert f"\n{scenario} " in out, f"no {scenario!r} row in\n{out}"
    assert "BROKEN" not in out
    assert "warn" not in out
    # Behind the outputs: each (gid, op) that published a done event ran exactly once.
    store = RedisStore(redis_url)
    await store.start()
    try:
        runs = await store.get_int(runs_key(account))
    finally:
        await store.stop()
    assert runs == await distinct_runs(kafka_bootstrap, account)


def verdicts(checks: list[Check]) -> dict[tuple[str, str], str]:
    return {(c.scenario, c.name.split(":")[0]): c.verdict for c in checks}


@pytest.mark.parametrize(
    ("mode", "broken", "kept"),
    [
        (
            "rerun",
            {
                ("duplicate trigger", "no second run"),
                ("duplicate compensation", "no second run"),
                ("re-issued compensation (new id)", "no second run"),
                (
                    "null compensation",
                    "key, headers, op/outcome, step, causation, payload, partition",
                ),
                ("hanging action", "an action after its compensation publishes nothing"),
            },
            {
                ("trigger", "exactly one done-or-failed event"),
                ("trigger", "key, headers, op/outcome, step, causation, payload, partition"),
                ("compensation", "exactly one confirmation (op compensate, outcome done)"),
                ("poison", "keeps consuming"),
                ("consumer group", "rogue"),
            },
        ),
        (
            "keyless",
            {
                ("trigger", "key, headers, op/outcome, step, causation, payload, partition"),
                ("compensation", "key, headers, op/outcome, step, causation, payload, partition"),
            },
            {
                ("trigger", "exactly one done-or-failed event"),
                ("duplicate trigger", "no second run"),
                ("duplicate compensation", "no second run"),
                ("hanging action", "an action after its compensation publishes nothing"),
            },
        ),
    ],
)
async def test_broken_participant_is_reported(
    mode: str,
    broken: set[tuple[str, str]],
    kept: set[tuple[str, str]],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    group = f"rogue-{mode}-{uuid.uuid4().hex[:6]}"
    broker = f"kafka://{kafka_bootstrap}"
    log = tmp_path / "rogue.log"
    process = spawn(
        [sys.executable, "-m", "tests.procs.conformance_rogue"],
        {"ROGUE_MODE": mode, "ROGUE_BROKER": broker, "ROGUE_GROUP": group},
        log,
    )
    try:
        step = pick_step(hold_saga, SERVICE, None)
        target = Target(
            broker=broker,
            service=SERVICE,
            contract=hold_saga,
            step=step,
            group=group,
            timeout=60,
            payload=sample_payload(step.on, {}),
        )
        checks = await run(target)
    finally:
        stop(process, log)
    table = render(checks, evidence=True)
    print(table)  # shown with -rP
    assert not passed(checks), table
    found = {(c.scenario, c.name): c for c in checks}

    def verdict(scenario: str, prefix: str) -> str:
        matches = [c for (s, name), c in found.items() if s == scenario and name.startswith(prefix)]
        assert matches, f"no check {scenario}: {prefix}... in\n{table}"
        return matches[0].verdict

    for scenario, prefix in broken:
        assert verdict(scenario, prefix) == "BROKEN", table
    for scenario, prefix in kept:
        assert verdict(scenario, prefix) == "kept", table
    # it dead-letters nothing: a SHOULD, reported as a warning
    assert verdict("poison", "dead-letters it") == "warn", table
