"""SagaStuck alerts delivered to a webhook (choreo.alerts): a real HTTP server on
loopback, the memory transport and the real Kafka broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from choreo import codec
from choreo.alerts import StuckWebhook, shown
from choreo.deadletter import DLQ_TOPIC, H_REASON
from choreo.errors import ConfigurationError
from choreo.events import Envelope, Event, Message
from choreo.system_events import SYSTEM_TOPIC, DeadlineCheck, SagaStuck
from choreo.transport.base import Transport
from choreo.transport.memory import MemoryBroker, MemoryTransport


@dataclass
class Hook:
    """A webhook that answers ``statuses`` in turn (then 200) and keeps what it got."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    calls: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.received.append((await request.json(), dict(request.headers)))
        return web.Response(status=status, text="no such channel" if status == 404 else "")


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    found = Hook()
    app = web.Application()
    app.router.add_post("/hooks/secret-path", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}/hooks/secret-path"
    yield found
    await runner.cleanup()


def stuck(gid: str, step: str = "payment") -> Any:
    event = SagaStuck(saga="order", step=step, attempts=5, reason="refund API down")
    envelope = Envelope.own(
        event, gid=gid, saga="order", event_id=f"stuck-{gid}", source="choreo-tracker"
    )
    return codec.encode(Message(envelope, event, SYSTEM_TOPIC))


def other(gid: str, event: Event) -> Any:
    envelope = Envelope.own(event, gid=gid, saga="order", event_id=f"x-{gid}", source="t")
    return codec.encode(Message(envelope, event, SYSTEM_TOPIC))


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def running(webhook: StuckWebhook) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stopping = asyncio.Event()
    return stopping, asyncio.create_task(webhook.run(stopping))


async def test_alerts_reach_the_webhook_and_nothing_else_does(hook: Hook) -> None:
    transport = MemoryTransport(MemoryBroker(2))
    await transport.send_many(
        [other("g0", DeadlineCheck(version=3)), stuck("g1"), stuck("g2", step="shipping")]
    )
    webhook = StuckWebhook(hook.url, transport=transport, token="s3cret")
    stopping, task = await running(webhook)
    await until(lambda: webhook.delivered == 2)
    stopping.set()
    await task
    bodies = {body["gid"]: (body, headers) for body, headers in hook.received}
    assert set(bodies) == {"g1", "g2"}
    body, headers = bodies["g2"]
    assert body["alert"] == "SagaStuck"
    assert (body["saga"], body["step"], body["attempts"]) == ("order", "shipping", 5)
    assert body["reason"] == "refund API down"
    assert "choreo saga why g2" in body["summary"]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Choreo-Event-Id"] == "stuck-g2"


async def test_a_webhook_that_is_down_is_retried_and_the_alert_waits(hook: Hook) -> None:
    transport = MemoryTransport(MemoryBroker(1))
    await transport.send(stuck("g1"))
    hook.statuses = [503, 500, 429]
    webhook = StuckWebhook(hook.url, transport=transport)
    stopping, task = await running(webhook)
    await until(lambda: webhook.delivered == 1)
    assert hook.calls == 4
    await transport.send(stuck("g2"))  # the next alert still goes out
    await until(lambda: webhook.delivered == 2)
    stopping.set()
    await task
    assert [body["gid"] for body, _ in hook.received] == ["g1", "g2"]


async def test_an_alert_in_hand_at_stop_is_delivered_after_the_restart(hook: Hook) -> None:
    transport = MemoryTransport(MemoryBroker(1))
    await transport.send(stuck("g1"))
    hook.statuses = [503] * 1000  # down for as long as the first run lasts
    first = StuckWebhook(hook.url, transport=transport)
    stopping, task = await running(first)
    await until(lambda: hook.calls >= 2)
    stopping.set()
    await asyncio.wait_for(task, 10)  # stopping ends the retry at once
    assert first.delivered == 0
    hook.statuses = []
    second = StuckWebhook(hook.url, transport=transport)
    stopping, task = await running(second)
    await until(lambda: second.delivered == 1)
    stopping.set()
    await task
    assert [body["gid"] for body, _ in hook.received] == ["g1"]


async def test_a_refused_alert_is_dead_lettered_and_the_next_goes_out(hook: Hook) -> None:
    transport = MemoryTransport(MemoryBroker(1))
    await transport.send_many([stuck("g1"), stuck("g2")])
    hook.statuses = [404]
    webhook = StuckWebhook(hook.url, transport=transport)
    stopping, task = await running(webhook)
    await until(lambda: webhook.delivered == 1 and webhook.dead_lettered == 1)
    stopping.set()
    await task
    [letter] = await _read_all(transport, DLQ_TOPIC)
    assert dict(letter.headers)[codec.H_GID] == b"g1"
    assert b"HTTP 404: no such channel" in dict(letter.headers)[H_REASON]
    assert [body["gid"] for body, _ in hook.received] == ["g2"]


def test_the_webhook_url_is_checked_and_never_shown_whole() -> None:
    transport = MemoryTransport(MemoryBroker(1))
    with pytest.raises(ConfigurationError):
        StuckWebhook("ftp://example.org/x", transport=transport)
    assert shown("https://hooks.example.org/services/T0/B0/XYZsecret") == (
        "https://hooks.example.org/..."
    )


async def _read_all(transport: Transport, topic: str) -> list[Any]:
    consumer = transport.consumer("test-reader", [topic])
    await consumer.start()
    try:
        found: list[Any] = []
        for _ in range(20):
            batch = await consumer.getmany(timeout=0.1)
            for records in batch.values():
                found += records
            if found and not batch:
                break
        return found
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_alerts_on_kafka(hook: Hook, kafka_bootstrap: str) -> None:
    from choreo.transport.kafka import KafkaTransport

    gid = f"k-{uuid.uuid4().hex[:12]}"  # the session's system topic holds other tests' too
    transport = KafkaTransport(f"kafka://{kafka_bootstrap}")
    await transport.start()
    try:
        await transport.send_many([other(f"{gid}-0", DeadlineCheck(version=1)), stuck(gid)])
        hook.statuses = [503]
        webhook = StuckWebhook(hook.url, transport=transport, group=f"alerts-{gid}")
        stopping, task = await running(webhook)
        await until(lambda: any(body["gid"] == gid for body, _ in hook.received), 60)
        stopping.set()
        await task
    finally:
        await transport.stop()


def test_the_command_needs_a_webhook_and_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    from choreo.cli.main import main

    assert main(["alerts", "--broker", "kafka://127.0.0.1:9"]) == 2
    assert "no webhook" in capsys.readouterr().err
    assert main(["alerts", "--webhook", "http://127.0.0.1:9/x"]) == 2
    assert "no broker" in capsys.readouterr().err


async def delivered_by_process(
    hook: Hook, kafka_bootstrap: str, gid: str, token: str, *argv: str
) -> tuple[dict[str, str], str]:
    """Publish a SagaStuck for ``gid``, run ``choreo *argv`` (with ``token`` as the
    webhook's) until the alert reached the hook, stop it with SIGTERM: the headers the hook
    got and what the process printed; it must have exited cleanly."""
    import os
    import signal
    import sys

    from choreo.transport.kafka import KafkaTransport

    async with KafkaTransport(f"kafka://{kafka_bootstrap}") as transport:
        await transport.send(stuck(gid))
    env = {**os.environ, "CHOREO_WEBHOOK_TOKEN": token, "CHOREO_BROKER": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "choreo.cli.main", *argv,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await until(lambda: any(body["gid"] == gid for body, _ in hook.received), 90)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    [headers] = [h for b, h in hook.received if b["gid"] == gid]
    return headers, out.decode()


@pytest.mark.kafka
async def test_the_command_delivers_with_the_token_and_stops_on_sigterm(
    hook: Hook, kafka_bootstrap: str
) -> None:
    gid = f"c-{uuid.uuid4().hex[:12]}"
    headers, text = await delivered_by_process(
        hook, kafka_bootstrap, gid, "t0ken",
        "alerts", "--webhook", hook.url, "--broker", f"kafka://{kafka_bootstrap}",
        "--group", f"alerts-{gid}",
    )  # fmt: skip
    assert headers["Authorization"] == "Bearer t0ken"
    assert "secret-path" not in text  # the webhook's path is never printed
    assert "t0ken" not in text
    assert "delivered" in text


@pytest.mark.kafka
async def test_the_tracker_delivers_alerts_with_stuck_webhook(
    hook: Hook, kafka_bootstrap: str
) -> None:
    gid = f"t-{uuid.uuid4().hex[:12]}"
    headers, text = await delivered_by_process(
        hook, kafka_bootstrap, gid, "tr4cker",
        "tracker", "tests.procs.trip_tracker:contract", "--engine", "memory",
        "--broker", f"kafka://{kafka_bootstrap}", "--group", f"tracker-{gid}",
        "--http", "127.0.0.1:0", "--no-auth", "--stuck-webhook", hook.url,
    )  # fmt: skip
    assert headers["Authorization"] == "Bearer tr4cker"
    assert "SagaStuck alerts to http://127.0.0.1:" in text
    assert "secret-path" not in text
