"""``choreo asyncapi``: the demo's services and contract as an AsyncAPI 3.0 document,
valid against AsyncAPI's own JSON Schema (vendored: tests/data/asyncapi-3.0.0.json, from
the @asyncapi/specs package, Apache-2.0), whose message schemas accept the records choreo
really writes and refuse what its codec refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from choreo import codec
from choreo.asyncapi import document
from choreo.events import Envelope, Message
from services_demo import inventory, orders, payment, shipping
from services_demo.contract import OrderPlaced, RefundPayment, order_saga
from tests.cli_support import choreo

SCHEMA = json.loads((Path(__file__).resolve().parent / "data" / "asyncapi-3.0.0.json").read_text())
SERVICES = [orders.app, inventory.app, payment.app, shipping.app]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document(SERVICES, [order_saga])


def validator() -> jsonschema.protocols.Validator:
    return jsonschema.validators.validator_for(SCHEMA)(SCHEMA)  # type: ignore[no-any-return]


def test_the_document_is_valid_asyncapi(doc: dict[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator().iter_errors(doc)]
    assert errors == []
    broken = json.loads(json.dumps(doc))
    next(iter(broken["channels"].values()))["address"] = 7
    assert list(validator().iter_errors(broken)), "the validator accepts anything"


def test_every_handler_and_the_tracker_are_operations(doc: dict[str, Any]) -> None:
    operations = doc["operations"]
    for service in SERVICES:
        for handler in service.resolved_handlers():
            topic = handler.event.topic.replace("/", "_")
            key = f"{service.name}.receive.{topic}"
            assert key in operations, key
            refs = [m["$ref"].rsplit("/", 1)[1] for m in operations[key]["messages"]]
            assert handler.event.event_type in refs
    tracker_sends = operations[f"tracker.order.send.{RefundPayment.topic}"]
    assert "RefundPayment" in str(tracker_sends["messages"]) or any(
        RefundPayment.event_type in m["$ref"] for m in tracker_sends["messages"]
    )


def _resolved(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The payload schema with the document's components attached, so its refs resolve."""
    return {**schema, "components": doc["components"]}


def test_message_schemas_accept_what_choreo_writes(doc: dict[str, Any]) -> None:
    event = OrderPlaced(order_id="o1", customer="alice", sku="widget", qty=2, amount=30)
    record = codec.encode(Message(Envelope.first(event, gid="g1", saga="order"), event, "t"))
    message = doc["components"]["messages"][OrderPlaced.event_type]
    payload = _resolved(doc, message["payload"])
    jsonschema.validate(json.loads(record.value), payload)
    headers = {name: value.decode() for name, value in record.headers}
    jsonschema.validate(headers, message["headers"])
    assert message["payload"]["x-choreo-version"] == OrderPlaced.schema_version
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"order_id": "o1"}, payload)  # required fields missing
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**headers, codec.H_TYPE: "Other"}, message["headers"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**headers, codec.H_OP: "undo"}, message["headers"])


def test_the_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    code, _, err = choreo(
        capsys, "asyncapi", "services_demo.orders:app", "services_demo.contract:order_saga",
        "--output", str(out),
    )  # fmt: skip
    assert code == 0, err
    written = json.loads(out.read_text())
    assert written["asyncapi"] == "3.0.0"
    assert not list(validator().iter_errors(written))
    code, _, err = choreo(capsys, "asyncapi", "services_demo.knobs:Knobs")
    assert code == 2
    assert "not a Service or a SagaContract" in err


def test_graph_reads_the_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    full = tmp_path / "demo.json"
    full.write_text(json.dumps(document(SERVICES, [order_saga])))
    code, out, _ = choreo(capsys, "graph", "--asyncapi", str(full), "--lint", "--strict")
    assert (code, out.strip()) == (0, "0 error(s), 0 warning(s)")
    code, out, _ = choreo(capsys, "graph", "--asyncapi", str(full))
    assert code == 0
    assert "OrderPlaced => inventory" in out
    assert "tracker -> RefundPayment" in out
    code, out, _ = choreo(capsys, "graph", "--asyncapi", str(full), "--format", "mermaid")
    assert out.startswith("flowchart LR")
    # A service without a contract, alone: nothing sends what it receives, nothing
    # receives what it sends.
    from tests.procs.svcapi_app import app as lone

    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps(document([lone])))
    code, out, _ = choreo(capsys, "graph", "--asyncapi", str(alone), "--lint", "--strict")
    assert code == 1
    assert "svcapi.Ask is received but nobody in the document sends it" in out
    assert "svcapi.Answer is sent but nobody in the document receives it" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"openapi": "3.1.0"}')
    assert choreo(capsys, "graph", "--asyncapi", str(bad))[0] == 2
