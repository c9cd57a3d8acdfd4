"""The conformance kit on real Kafka + Redis: choreo's own service passes it (through the
CLI, as a user runs it), and hand-written participants that break rules on purpose are
reported as breaking those rules and keeping the others."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo.cli.main import main
from choreo.conformance import Check, Target, passed, pick_step, render, run, sample_payload
from choreo.local._process import cache_dir
from choreo.store.redis import RedisStore
from choreo.transport.kafka import KafkaTransport
from services_demo.inventory import seed_stock
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
    assert verdict("poison", "dead-letters invalid JSON") == "warn", table
    assert verdict("poison", "publishes nothing for a payload its schema") == "kept", table


NODE_EXAMPLE = ROOT / "examples" / "node-participant"


def node_modules() -> Path:
    """examples/node-participant's npm dependencies, installed once into choreo's cache."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        message = "node and npm are needed for the Node.js participant"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    target = cache_dir() / "node-participant"
    target.mkdir(parents=True, exist_ok=True)
    manifest = (NODE_EXAMPLE / "package.json").read_text()
    installed = target / "package.json"
    if (
        installed.exists()
        and installed.read_text() == manifest
        and (target / "node_modules" / "kafkajs").is_dir()
    ):
        return target / "node_modules"
    (target / "package.json").write_text(manifest)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--omit=dev"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        message = f"npm install failed: {done.stderr[-2000:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return target / "node_modules"


async def test_node_participant_passes(kafka_bootstrap: str, tmp_path: Path) -> None:
    """examples/node-participant (kafkajs, written from the docs) plays the hold step."""
    modules = node_modules()
    async with KafkaTransport(f"kafka://{kafka_bootstrap}") as transport:
        # choreo creates topics, never the broker (rule 14): before the participant starts
        await transport.ensure_topics([*hold_saga.topics(), "choreo.dlq"])
    service = f"node-hold-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "node.log"
    env = {
        "BROKERS": kafka_bootstrap,
        "SERVICE": service,
        "NODE_PATH": str(modules),
        "KAFKAJS_NO_PARTITIONER_WARNING": "1",
    }
    process = spawn(["node", str(NODE_EXAMPLE / "participant.js")], env, log)
    try:
        step = pick_step(hold_saga, SERVICE, None)
        target = Target(
            broker=f"kafka://{kafka_bootstrap}",
            service=service,
            contract=hold_saga,
            step=step,
            group=f"choreo.{service}",
            timeout=60,
            payload=sample_payload(step.on, {}),
            failing_payload=sample_payload(step.on, {"amount": 5000}),
        )
        checks = await run(target)
    finally:
        stop(process, log)
    table = render(checks, evidence=True)
    print(table)  # shown with -rP
    assert passed(checks, strict=True), table
    assert {c.scenario for c in checks} >= {"hanging action", "null compensation", "failure"}


async def test_no_participant_is_reported_at_once(kafka_bootstrap: str) -> None:
    """Nobody consuming the step's trigger topic: one broken check says so, and the
    other scenarios are not run (each would wait its timeout for nothing)."""
    step = pick_step(hold_saga, SERVICE, None)
    target = Target(
        broker=f"kafka://{kafka_bootstrap}",
        service="nobody",
        contract=hold_saga,
        step=step,
        group="choreo.nobody",
        timeout=3,
        payload=sample_payload(step.on, {}),
    )
    checks = await run(target)
    assert not passed(checks)
    assert [(c.scenario, c.verdict) for c in checks if not c.ok] == [("participant", "BROKEN")]
    assert "is it running" in render(checks)


def test_cli_refuses_what_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["conformance", "--service", SERVICE, "--contract", CONTRACT]
    assert main([*base, "--broker", "memory://"]) == 2
    assert "kafka:// URL" in capsys.readouterr().err
    assert main([*base, "--broker", "kafka://127.0.0.1:1", "--step", "nope"]) == 2
    assert "has no step 'nope'" in capsys.readouterr().err
    bad = ["--broker", "kafka://127.0.0.1:1", "--payload", '{"amount": -1}']
    assert main([*base, *bad]) == 2
    assert "--payload" in capsys.readouterr().err


async def test_demo_inventory_passes(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """services_demo's inventory service, as deployed (``choreo run``), plays the order
    saga's stock step by the rules; an order of more than the stock is its failure."""
    sku = f"conformance-{uuid.uuid4().hex[:8]}"
    store = RedisStore(redis_url)
    await store.start()
    try:
        await seed_stock(store, {sku: 1000})
    finally:
        await store.stop()
    log = tmp_path / "inventory.log"
    broker = f"kafka://{kafka_bootstrap}"
    argv = [sys.executable, "-m", "choreo.cli.main", "run", "services_demo.inventory:app"]
    process = spawn([*argv, "--broker", broker, "--store", redis_url], {}, log)
    try:
        code = await asyncio.to_thread(
            main,
            [
                "conformance",
                "--broker",
                broker,
                "--service",
                "inventory",
                "--contract",
                "services_demo.contract:order_saga",
                "--payload",
                f'{{"sku": "{sku}", "qty": 1}}',
                "--failing-payload",
                '{"qty": 5000}',
                "--timeout",
                "90",
                "--strict",
            ],
        )
    finally:
        stop(process, log)
    out = capsys.readouterr().out
    print(out)  # shown with -rP
    assert code == 0, out
    assert "\nfailure " in out
