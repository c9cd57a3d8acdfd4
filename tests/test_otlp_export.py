"""Traces leave ``choreo run`` over OTLP when OTel's environment asks (choreo.telemetry):
a receiver of OTLP/HTTP in this test (http.server, the protobuf request parsed with
opentelemetry-proto) gets the spans of the records a ``choreo run`` subprocess handled,
under the service's name, with the configured headers, flushed when the command stops.
Without the environment nothing is installed and nothing is sent."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from choreo import telemetry
from choreo.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-otlp-token"
CONTRACT = "services_demo.contract:order_saga"


@dataclass
class Received:
    """What a receiver was sent: each request's headers and its spans, flattened."""

    headers: list[dict[str, str]] = field(default_factory=list)
    spans: list[dict[str, object]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def take(self, request: ExportTraceServiceRequest, headers: dict[str, str], path: str) -> None:
        self.paths.append(path)
        self.headers.append({k.lower(): v for k, v in headers.items()})
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    self.spans.append({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "service": resource.get("service.name"),
                        "scope": scope_spans.scope.name,
                        **attributes,
                    })  # fmt: skip


@dataclass
class Receiver:
    url: str
    received: Received


def _value(any_value: object) -> object:
    kind = any_value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(any_value, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver (protobuf) on 127.0.0.1."""
    received = Received()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.take(request, dict(self.headers.items()), self.path)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def grpc_receiver() -> Iterator[Receiver]:
    """An OTLP/gRPC receiver on 127.0.0.1 (grpcio, which the otel extra's gRPC exporter
    brings; the dev extra installs the otel extra)."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    import grpc  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    received = Received()

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(
            self, request: ExportTraceServiceRequest, context: Any
        ) -> ExportTraceServiceResponse:
            received.take(request, dict(context.invocation_metadata()), "Export")
            return ExportTraceServiceResponse()

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Receiver(f"http://127.0.0.1:{port}", received)
    finally:
        server.stop(grace=None)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run_service(env: dict[str, str], gids: list[str], log: Path) -> str:
    """``choreo run tests.procs.otlp_app:app`` until it handled every gid, then SIGTERM;
    its output (it must have stopped cleanly)."""
    with log.open("w+") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "choreo.cli.main", "run", "tests.procs.otlp_app:app"],
            stdout=out, stderr=subprocess.STDOUT, env={**env, "OTLP_TEST_GIDS": ",".join(gids)},
        )  # fmt: skip
        try:
            limit = time.monotonic() + 60
            while sum(f"handled {g}" in log.read_text() for g in gids) < len(gids):
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < limit, log.read_text()
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    output = log.read_text()
    assert process.returncode == 0, output
    return output


def test_choreo_run_exports_the_spans_of_the_records_it_handled(
    receiver: Receiver, tmp_path: Path
) -> None:
    gids = [f"otlp-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    env = _clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        # Per the specification, values are URL-encoded: the exporter decodes them.
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer%20{SECRET}",
        # A minute between batches: the spans can only come out through the flush that
        # ends the command.
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    output = _run_service(env, gids, tmp_path / "service.log")
    assert "provider TracerProvider" in output  # the SDK's, installed before the service ran
    assert f"exporting traces of otlp-shop over OTLP http/protobuf to {receiver.url}/v1/traces" in (
        output
    )
    assert SECRET not in output
    got = receiver.received
    assert got.spans, output
    assert set(got.paths) == {"/v1/traces"}
    assert {h["authorization"] for h in got.headers} == {f"Bearer {SECRET}"}
    assert {h["content-type"] for h in got.headers} == {"application/x-protobuf"}
    processed = [s for s in got.spans if s["name"] == "otlp.Order process"]
    assert sorted(str(s["choreo.gid"]) for s in processed) == sorted(gids)
    assert {s["service"] for s in got.spans} == {"otlp-shop"}
    assert {s["scope"] for s in got.spans} == {"choreo"}
    for span in processed:
        assert span["choreo.step"] == "order"
        assert span["choreo.decision"] == "applied"
    assert len({s["trace_id"] for s in processed}) == len(gids)  # a trace per saga


def test_choreo_run_exports_over_otlp_grpc_when_asked(
    grpc_receiver: Receiver, tmp_path: Path
) -> None:
    gids = [f"otlp-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    env = _clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.url,  # http://: no TLS
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer%20{SECRET}",
        OTEL_SERVICE_NAME="shop-otlp",
    )
    output = _run_service(env, gids, tmp_path / "grpc.log")
    assert f"exporting traces of shop-otlp over OTLP grpc to {grpc_receiver.url}\n" in output
    assert SECRET not in output
    got = grpc_receiver.received
    assert {h["authorization"] for h in got.headers} == {f"Bearer {SECRET}"}
    processed = [s for s in got.spans if s["name"] == "otlp.Order process"]
    assert sorted(str(s["choreo.gid"]) for s in processed) == sorted(gids)
    assert {s["service"] for s in got.spans} == {"shop-otlp"}  # OTEL_SERVICE_NAME wins


def test_without_the_environment_nothing_is_installed_or_sent(
    receiver: Receiver, tmp_path: Path
) -> None:
    gids = [f"otlp-{uuid.uuid4().hex[:8]}"]
    output = _run_service(_clean_env(), gids, tmp_path / "plain.log")
    assert "provider ProxyTracerProvider" in output  # OTel's default: no SDK, no span
    assert "exporting traces" not in output
    # An endpoint with the exporter turned off: still nothing.
    off = _clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_TRACES_EXPORTER="none")
    output = _run_service(off, gids, tmp_path / "off.log")
    assert "provider ProxyTracerProvider" in output
    time.sleep(0.5)
    assert receiver.received.spans == []
    assert receiver.received.headers == []


def test_not_asked_for_the_sdk_is_not_even_imported() -> None:
    code = (
        "import sys; from choreo import telemetry\n"
        "with telemetry.exporting('x'): pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_otel_service_name_wins_and_the_provider_is_the_sdks() -> None:
    code = (
        "from opentelemetry import trace; from choreo import telemetry\n"
        "p = telemetry.install('orders')\n"
        "assert trace.get_tracer_provider() is p\n"
        "print(p.resource.attributes['service.name']); p.shutdown()"
    )
    env = _clean_env(OTEL_TRACES_EXPORTER="otlp", OTEL_SERVICE_NAME="shop-orders",
                     OTEL_EXPORTER_OTLP_PROTOCOL="grpc")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "choreo: exporting traces of shop-orders over OTLP grpc to http://localhost:4317",
        "shop-orders",
    ]


def test_what_the_environment_asks_for() -> None:
    assert not telemetry.wanted({})
    assert telemetry.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert telemetry.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert telemetry.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not telemetry.wanted(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}
    )
    assert not telemetry.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    with pytest.raises(UsageError, match="zipkin"):
        telemetry.wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert telemetry.protocol({}) == "http/protobuf"  # the specification's default
    assert telemetry.protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    assert telemetry.protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                               "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
                              ) == "http/protobuf"  # fmt: skip
    with pytest.raises(UsageError, match="http/json"):
        telemetry.protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert telemetry.endpoint({}, "http/protobuf") == "http://localhost:4318/v1/traces"
    assert telemetry.endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
                              "http/protobuf") == "http://c:4318/v1/traces"  # fmt: skip
    assert telemetry.endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "grpc") == (
        "http://c:4317"
    )


def test_asked_for_without_the_sdk_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    with pytest.raises(UsageError) as raised:
        telemetry.install("orders")
    assert "SDK" in raised.value.message
    assert "choreo[otel]" in raised.value.hint


def test_choreo_tracker_installs_the_exporter_and_stops_cleanly(
    receiver: Receiver, tmp_path: Path
) -> None:
    env = _clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, CHOREO_TRACKER_TOKEN="t")
    log = tmp_path / "tracker.log"
    with log.open("w+") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "choreo.cli.main", "tracker", CONTRACT, "--engine", "memory",
             "--broker", "memory://", "--http", "127.0.0.1:0"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            limit = time.monotonic() + 60
            while "state API on" not in log.read_text():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < limit, log.read_text()
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    output = log.read_text()
    assert process.returncode == 0, output
    expected = f"exporting traces of choreo-tracker over OTLP http/protobuf to {receiver.url}"
    assert expected in output
    assert "tracker stopped cleanly" in output


def test_choreo_tracker_reads_the_environment_too(tmp_path: Path) -> None:
    # An exporter it cannot run stops `choreo tracker` at start, before it serves anything.
    env = _clean_env(OTEL_TRACES_EXPORTER="zipkin", CHOREO_TRACKER_TOKEN="t")
    done = subprocess.run(
        [sys.executable, "-m", "choreo.cli.main", "tracker", CONTRACT,
         "--engine", "memory", "--broker", "memory://", "--http", "127.0.0.1:0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "OTEL_TRACES_EXPORTER names zipkin" in done.stdout + done.stderr


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_faust_tracker_exports_its_spans_when_it_stops(
    kafka_bootstrap: str, receiver: Receiver, tmp_path: Path
) -> None:
    """The faust engine runs in faust's worker, which owns the process's loop and exits
    through SystemExit: the provider is still shut down after it, and the spans queued
    (a minute between batches here) reach the receiver."""
    from choreo import Service
    from tests import test_faust_tracker as ft
    from tests.scenarios.trip import Plan, TripBooked

    broker = f"kafka://{kafka_bootstrap}"
    app_id = f"{ft.APP_PREFIX}otlp-{uuid.uuid4().hex[:8]}"
    env = {
        **ft.tracker_env(deadline=120.0),  # no deadline fires while the test runs
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "60000",
    }
    tracker = ft.TrackerProcess(broker, app_id, tmp_path, env)
    tracker.start()
    try:
        await asyncio.to_thread(tracker.wait_ready)
        starter = Service("otlp-starter", broker=broker, store="memory://")
        async with starter.running():
            sent = await starter.publish(TripBooked(trip_id=uuid.uuid4().hex, plan=Plan()),
                                         saga="trip")  # fmt: skip
        limit = time.monotonic() + 90
        while await tracker.saga(sent.gid) is None:
            assert time.monotonic() < limit, tracker.output()
            await asyncio.sleep(0.2)
        assert receiver.received.spans == []  # still queued
    finally:
        code = tracker.stop()
        await ft.drop_topics(kafka_bootstrap)  # the trip topic, for later modules' groups
    output = tracker.output()
    assert code == 0, output
    assert f"exporting traces of {app_id} over OTLP http/protobuf" in output
    folds = [s for s in receiver.received.spans if s.get("choreo.gid") == sent.gid]
    assert [s["name"] for s in folds] == [f"{sent.event_type} fold"], receiver.received.spans
    assert {s["service"] for s in receiver.received.spans} == {app_id}
