"""Webhook delivery of ``choreo.SagaStuck`` alerts.

The tracker publishes a ``SagaStuck`` event on the system topic when a compensation's
retry budget is spent: an operator must act. ``StuckWebhook`` reads that topic as a
consumer group of its own and POSTs each alert as JSON to a URL (an incident tool, a chat
webhook, a pager).

It is a consumer of its own, not a call inside the tracker's fold, so that somebody's
HTTP endpoint can never hold the tracker's stream: while the webhook is down the alert
waits here, retried with backoff until it is accepted (its offset is committed only
then), and the tracker keeps folding. Delivery is at least once: after a restart, or when
an answer is lost, an alert may be POSTed again, with the same ``X-Choreo-Event-Id`` (the
tracker derives a SagaStuck's id from the saga's state, so a repeat keeps its id): a
receiver can drop repeats by it. An alert the webhook refuses for good (a 4xx other than
408 and 429: a wrong URL or token) is dead-lettered with the answer as the reason, so it
is not lost and the next alerts still go out; after fixing the webhook, replay it with
``choreo dlq replay``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from choreo import codec
from choreo.deadletter import DLQ_TOPIC, DeadLetter, dead_letter_record
from choreo.errors import ConfigurationError, PoisonEvent, TransportError
from choreo.events import Message
from choreo.retry import Backoff, RetryPolicy
from choreo.system_events import SYSTEM_TOPIC, SagaStuck, system_registry
from choreo.transport.base import Record, Transport

log = logging.getLogger("choreo.alerts")

DEFAULT_GROUP = "choreo.alerts"
# A webhook that is down is retried without end (the alert is still owed), from a tenth
# of a second up to a minute apart.
WEBHOOK_RETRY = RetryPolicy(max_attempts=1, backoff=0.1, backoff_max=60.0)
# Answers that mean "try again later"; any other 4xx is the webhook refusing this alert.
_RETRY_STATUSES = frozenset({408, 429})
_SERVICE = "choreo-alerts"


class Refused(Exception):
    """The webhook answered that it will never take this alert."""


def alert_body(message: Message) -> dict[str, Any]:
    """What the webhook receives for one ``SagaStuck`` event."""
    event = message.event
    assert isinstance(event, SagaStuck)
    envelope = message.envelope
    return {
        "alert": "SagaStuck",
        "gid": envelope.gid,
        "saga": event.saga,
        "step": event.step,
        "attempts": event.attempts,
        "reason": event.reason,
        "event_id": envelope.event_id,
        "occurred_at": envelope.occurred_at,
        "summary": f"saga {event.saga} {envelope.gid} is STUCK: compensation of step "
        f"{event.step} failed {event.attempts} times; see `choreo saga why {envelope.gid}`",
    }


def shown(url: str) -> str:
    """The URL as logs may show it: scheme and host only (chat webhooks carry their
    secret in the path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/..."


class StuckWebhook:
    """POSTs every ``SagaStuck`` alert of ``transport``'s system topic to ``url``.

    ``token``: sent as ``Authorization: Bearer <token>``. ``timeout``: seconds one POST
    may take. Run it with ``await webhook.run(stopping)``; ``delivered`` counts the
    alerts the webhook accepted, ``dead_lettered`` the ones it refused."""

    def __init__(
        self,
        url: str,
        *,
        transport: Transport,
        group: str = DEFAULT_GROUP,
        token: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = WEBHOOK_RETRY,
        dlq_topic: str = DLQ_TOPIC,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"the webhook must be an http(s) URL, got {shown(url)!r}")
        self.url = url
        self.transport = transport
        self.group = group
        self.token = token
        self.timeout = timeout
        self.retry = retry
        self.dlq_topic = dlq_topic
        self.registry = system_registry()
        self.delivered = 0
        self.dead_lettered = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver alerts until ``stopping`` is set; an alert in hand when it is set is
        left uncommitted (delivered after the restart)."""
        consumer = self.transport.consumer(self.group, [SYSTEM_TOPIC])
        await consumer.start()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        log.info("delivering SagaStuck alerts to %s", shown(self.url))
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
                while not stopping.is_set():
                    try:
                        batch = await consumer.getmany(timeout=0.5, max_records=100)
                    except TransportError as exc:
                        log.warning("alerts: fetch failed, polling again: %s", exc)
                        await asyncio.sleep(0.5)
                        continue
                    for tp, records in batch.items():
                        done = await self._handle(session, records, stopping)
                        if done:
                            await consumer.commit({tp: records[done - 1].offset + 1})
                        if done < len(records):
                            return  # stopping with an alert in hand
        finally:
            await consumer.stop()

    async def _handle(
        self, session: aiohttp.ClientSession, records: Sequence[Record], stopping: asyncio.Event
    ) -> int:
        """How many of ``records`` are done with (delivered, refused or not alerts)."""
        for done, record in enumerate(records):
            message = self._alert(record)
            if message is not None and not await self._deliver(session, record, message, stopping):
                return done
        return len(records)

    def _alert(self, record: Record) -> Message | None:
        """The record's SagaStuck event, or None for every other record of the topic
        (the tracker's deadline checks, admin commands, poison: the tracker's to judge)."""
        try:
            envelope = codec.decode_envelope(record)
            if envelope.event_type != SagaStuck.event_type:
                return None
            return codec.decode(record, self.registry, envelope=envelope)
        except PoisonEvent as exc:
            log.debug("alerts: skipping an unreadable record at %s: %s", record.offset, exc)
            return None

    async def _deliver(
        self,
        session: aiohttp.ClientSession,
        record: Record,
        message: Message,
        stopping: asyncio.Event,
    ) -> bool:
        """POST one alert until the webhook accepts or refuses it; False if stopping."""
        body = alert_body(message)
        backoff = Backoff(self.retry, stopping)
        while True:
            try:
                await self._post(session, body)
            except Refused as exc:
                letter = DeadLetter("failed", f"the webhook refused the alert: {exc}", _SERVICE)
                if not await self._dead_letter(record, letter, stopping):
                    return False
                self.dead_lettered += 1
                return True
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("alerts: webhook %s failed for %s (attempt %d), retrying: %s",
                            shown(self.url), message.gid, backoff.attempt + 1,
                            type(exc).__name__)  # fmt: skip
                if not await backoff.wait():
                    return False
                continue
            self.delivered += 1
            log.info("alerts: SagaStuck for %s delivered", message.gid)
            return True

    async def _post(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> None:
        extra = {"X-Choreo-Event-Id": str(body["event_id"])}
        async with session.post(self.url, json=body, headers=extra) as response:
            status = response.status
            if status < 300:
                return
            if status >= 500 or status in _RETRY_STATUSES:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=status, message=response.reason or ""
                )
            text = (await response.text(errors="replace"))[:200]
            raise Refused(f"HTTP {status}: {text}")

    async def _dead_letter(
        self, record: Record, letter: DeadLetter, stopping: asyncio.Event
    ) -> bool:
        """Send the dead letter, retrying the broker; False if stopping first."""
        backoff = Backoff(stopping=stopping)
        while True:
            try:
                await self.transport.send(dead_letter_record(record, letter, self.dlq_topic))
            except TransportError as exc:
                log.warning("alerts: cannot dead-letter yet: %s", exc)
                if not await backoff.wait():
                    return False
                continue
            log.error("alerts: %s", letter.reason)
            return True
