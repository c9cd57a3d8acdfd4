"""SASL settings reach aiokafka for real: a service authenticates on the broker's
SASL_PLAINTEXT listener (PLAIN), and a wrong password is a clear, retriable error."""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from choreo import Context, Event, Service, TransportError
from choreo.cli.main import configure_logging
from choreo.local.kafka_broker import KafkaBroker
from choreo.redact import PROTOCOL_LOGGERS, quiet_protocol_loggers
from choreo.transport.base import OutgoingRecord
from choreo.transport.kafka import KafkaTransport
from tests.conftest import KAFKA_SASL_USERS
from tests.test_faust_tracker import TrackerProcess, services, settled, start, tracker_env


class Knock(Event, topic="test.sasl"):
    n: int


class Answered(Event, topic="test.sasl"):
    n: int


def security(user: str, password: str) -> dict[str, Any]:
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_service_round_trip_over_sasl(kafka_broker: KafkaBroker) -> None:
    url = f"kafka://{kafka_broker.sasl_address()}"
    [(user, password)] = KAFKA_SASL_USERS.items()
    options = {"security": security(user, password)}
    app = Service("sasl-door", group=f"sasl-{uuid.uuid4().hex[:8]}", transport_options=options)
    app.register_events(Answered)

    @app.on_event(Knock)
    async def answer(event: Knock, ctx: Context) -> Answered:
        return Answered(n=event.n)

    async with app.running(broker=url):
        gid = (await app.publish(Knock(n=7))).gid
        async with KafkaTransport(url, security=security(user, password)) as reader_side:
            reader = reader_side.consumer(f"sasl-probe-{uuid.uuid4().hex[:8]}", [Knock.topic])
            await reader.start()
            try:
                answered = await wait_for_answer(reader, gid)
            finally:
                await reader.stop()
    assert answered


async def wait_for_answer(reader: Any, gid: str) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for records in (await reader.getmany(timeout=0.5)).values():
            for record in records:
                if record.key == gid.encode() and record.header("choreo-type") == b"Answered":
                    return True
    return False


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_wrong_sasl_password_is_a_transport_error(kafka_broker: KafkaBroker) -> None:
    url = f"kafka://{kafka_broker.sasl_address()}"
    transport = KafkaTransport(url, security=security("alice", "not-her-password"))
    with pytest.raises(TransportError) as caught:
        await transport.start()
    assert caught.value.retriable
    assert "cannot connect to Kafka" in str(caught.value)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_faust_tracker_over_sasl(
    kafka_broker: KafkaBroker, redis_url: str, tmp_path: Path
) -> None:
    """`choreo tracker` reads CHOREO_KAFKA_* and reaches faust's clients and its own
    producer with them: it tracks a saga to the end over the SASL listener."""
    [(user, password)] = KAFKA_SASL_USERS.items()
    env = {
        **tracker_env(),
        "CHOREO_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CHOREO_KAFKA_SASL_MECHANISM": "PLAIN",
        "CHOREO_KAFKA_SASL_USERNAME": user,
        "CHOREO_KAFKA_SASL_PASSWORD": password,
    }
    sasl = f"kafka://{kafka_broker.sasl_address()}"
    tracker = TrackerProcess(sasl, f"ft-sasl-{uuid.uuid4().hex[:8]}", tmp_path, env)
    tracker.start()
    try:
        tracker.wait_ready()
        # The services use the plaintext listener of the same broker.
        async with services(f"kafka://{kafka_broker.address()}", redis_url) as h:
            gid, _ = await start(h)
            states = await settled(tracker, [gid])
        assert states[gid]["status"] == "COMPLETED", tracker.output()
    finally:
        tracker.stop()


@pytest.fixture
def protocol_loggers() -> Iterator[None]:
    """Put the protocol loggers' levels back as they were after the test."""
    levels = {name: logging.getLogger(name).level for name in PROTOCOL_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def sasl_round(url: str, user: str, password: str) -> None:
    async with KafkaTransport(url, security=security(user, password)) as transport:
        await transport.send(OutgoingRecord("test.sasl.logs", b"k", b"v"))


@pytest.mark.kafka
@pytest.mark.timeout(90)
@pytest.mark.usefixtures("protocol_loggers")
async def test_sasl_password_stays_out_of_debug_logs(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """``choreo -v`` logs at DEBUG, but aiokafka's request dumps (the SASL handshake with
    the password among them) only when CHOREO_LOG_PROTOCOL names aiokafka."""
    url = f"kafka://{kafka_broker.sasl_address()}"
    [(user, password)] = KAFKA_SASL_USERS.items()
    configure_logging(verbose=True, environ={})
    caplog.set_level(logging.DEBUG)
    assert logging.getLogger("choreo").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("aiokafka.conn").getEffectiveLevel() == logging.WARNING
    await sasl_round(url, user, password)
    assert not [r for r in caplog.records if password in r.getMessage()]
    assert not [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno < 30]

    caplog.clear()
    assert quiet_protocol_loggers({"CHOREO_LOG_PROTOCOL": "aiokafka"}) == ["faust", "mode"]
    await sasl_round(url, user, password)
    dumps = [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno < 30]
    assert dumps  # asked for by name: the protocol's own debug output is back


def test_faust_keeps_sasl_ssl_without_a_ca_file() -> None:
    """SASL_SSL with no CA file stays SASL_SSL for faust (the system's default, verifying
    context), instead of silently becoming SASL_PLAINTEXT."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from choreo.tracker.faust_io import faust_credentials

    options = {**security("alice", "pw"), "security_protocol": "SASL_SSL"}
    auth = credentials_to_aiokafka_auth(faust_credentials(options))
    assert auth["security_protocol"] == "SASL_SSL"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    plain = credentials_to_aiokafka_auth(faust_credentials(security("alice", "pw")))
    assert (plain["security_protocol"], plain["ssl_context"]) == ("SASL_PLAINTEXT", None)
    assert faust_credentials({"security_protocol": "SSL"}).protocol.value == "SSL"


def test_sasl_ssl_without_a_ca_file_keeps_tls() -> None:
    from choreo.transport.kafka_config import security_options

    options = security_options(
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
         "sasl_plain_username": "u", "sasl_plain_password": "p"}
    )  # fmt: skip
    assert options["security_protocol"] == "SASL_SSL"
    assert options["ssl_context"] is not None  # the system's CAs, not plaintext
