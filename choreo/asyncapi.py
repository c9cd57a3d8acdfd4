"""AsyncAPI 3.0 documents made from the code: what a team in another language needs to
take part in a choreography (docs/wire-format.md says how the records are shaped).

- a channel per topic, with the messages that travel on it;
- a message per event type: its payload's JSON Schema (from the pydantic model, with
  ``x-choreo-version``, the schema version a record must carry), the envelope headers,
  the gid as correlation id;
- operations: each service receives its handlers' events and sends what they declare
  they return; the tracker (``x-choreo-role: tracker``) receives every event of a saga
  and sends the compensations and system events.

``choreo asyncapi MODULE:SERVICE|CONTRACT...`` writes it; the tests validate it against
AsyncAPI's own JSON Schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from choreo import codec
from choreo.events import Event
from choreo.graph import TRACKER
from choreo.saga.contract import SagaContract
from choreo.system_events import SYSTEM_EVENTS

if TYPE_CHECKING:
    from choreo.app import Service

ASYNCAPI_VERSION = "3.0.0"
_ID = re.compile(r"[^A-Za-z0-9._-]")

ENVELOPE_HEADERS: dict[str, tuple[str, bool]] = {
    codec.H_TYPE: ("event type name", True),
    codec.H_ID: ("event id, unique; repeated when the same event is re-published", True),
    codec.H_GID: ("saga global id; equals the record key", True),
    codec.H_SAGA: ("saga name from the contract", False),
    codec.H_STEP: ("the step that produced the event, or that a compensation targets", False),
    codec.H_OP: ("action, compensate, or empty", False),
    codec.H_OUTCOME: ("done, failed, skipped, or empty", False),
    codec.H_CAUSATION: ("event id of the event that caused this one", False),
    codec.H_OCCURRED: ("milliseconds since the Unix epoch, at most 16 digits", False),
    codec.H_VERSION: ("schema version of the payload (absent: 1)", False),
    codec.H_ATTEMPT: ("delivery attempt of the producer (absent: 1)", False),
    codec.H_SOURCE: ("the service, or tracker, that published it", False),
    codec.H_TRACEPARENT: ("W3C trace context", False),
}


def _id(name: str) -> str:
    return _ID.sub("_", name)


def _headers_schema(event: type[Event]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, (description, _) in ENVELOPE_HEADERS.items():
        properties[name] = {"type": "string", "maxLength": 1024, "description": description}
    properties[codec.H_TYPE]["const"] = event.event_type
    properties[codec.H_OP]["enum"] = ["action", "compensate", ""]
    properties[codec.H_OUTCOME]["enum"] = ["done", "failed", "skipped", ""]
    for name in (codec.H_OCCURRED, codec.H_VERSION, codec.H_ATTEMPT):
        properties[name]["pattern"] = "^[0-9]{1,16}$"
    return {
        "type": "object",
        "required": [name for name, (_, required) in ENVELOPE_HEADERS.items() if required],
        "properties": properties,
    }


class _Builder:
    def __init__(self) -> None:
        self.channels: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}

    def message(self, event: type[Event]) -> tuple[str, str]:
        """(channel id, message id) of ``event``, added on first use."""
        channel, message = _id(event.topic), _id(event.event_type)
        if message not in self.messages:
            schema = event.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                self.schemas.setdefault(name, definition)
            schema["x-choreo-version"] = event.schema_version
            self.messages[message] = {
                "name": event.event_type,
                "title": event.__name__,
                "contentType": "application/json",
                "correlationId": {
                    "description": "the saga's gid",
                    "location": f"$message.header#/{codec.H_GID}",
                },
                "headers": _headers_schema(event),
                "payload": schema,
                **({"summary": event.__doc__.strip().splitlines()[0]} if event.__doc__ else {}),
            }
        entry = self.channels.setdefault(
            channel, {"address": event.topic, "messages": {}, "description": "key: the gid"}
        )
        entry["messages"][message] = {"$ref": f"#/components/messages/{message}"}
        return channel, message

    def operation(
        self, name: str, action: str, events: Iterable[type[Event]], **extra: Any
    ) -> None:
        by_channel: dict[str, list[str]] = {}
        for event in events:
            channel, message = self.message(event)
            by_channel.setdefault(channel, []).append(message)
        for channel, messages in sorted(by_channel.items()):
            key = _id(f"{name}.{action}.{channel}")
            operation = self.operations.setdefault(
                key, {"action": action, "channel": {"$ref": f"#/channels/{channel}"}, **extra}
            )
            if operation.get("summary") != extra.get("summary"):  # several handlers: say so
                operation["summary"] = f"{operation['summary']}; {extra['summary']}"
            known = {ref["$ref"] for ref in operation.get("messages", [])}
            known.update(f"#/channels/{channel}/messages/{m}" for m in messages)
            operation["messages"] = [{"$ref": ref} for ref in sorted(known)]


def document(
    services: Sequence[Service] = (),
    contracts: Sequence[SagaContract] = (),
    *,
    title: str = "",
    version: str = "1.0.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``services`` and ``contracts`` (the services' own
    contracts included)."""
    builder = _Builder()
    every_contract = {id(c): c for c in contracts}
    for service in services:
        every_contract.update({id(c): c for c in service.contracts})
        for handler in service.resolved_handlers():
            builder.operation(
                service.name,
                "receive",
                [handler.event],
                summary=f"{handler.name}: step {handler.step!r}, op {handler.op}",
                **{"x-choreo-service": service.name, "x-choreo-group": service.group},
            )
            if handler.emits:
                builder.operation(
                    service.name,
                    "send",
                    handler.emits,
                    summary=f"what {handler.name} returns",
                    **{"x-choreo-service": service.name},
                )
    for contract in every_contract.values():
        for step in contract.steps:
            if step.service:  # what the contract says the step's service replies
                builder.operation(
                    step.service,
                    "send",
                    [*step.done, *step.failed, *step.compensated],
                    summary=f"step {step.name}'s replies (contract {contract.name})",
                    **{"x-choreo-service": step.service},
                )
        builder.operation(
            f"tracker.{contract.name}",
            "receive",
            contract.event_types(),
            summary=f"the saga tracker folds every event of saga {contract.name!r}",
            **{"x-choreo-role": "tracker"},
        )
        compensations = [s.compensation for s in contract.steps if s.compensation is not None]
        builder.operation(
            f"tracker.{contract.name}",
            "send",
            [*compensations, *SYSTEM_EVENTS],
            summary="compensations after a failure or a deadline, and the saga's own events",
            **{"x-choreo-role": "tracker"},
        )
    for contract in every_contract.values():  # what starts a saga comes from outside
        builder.message(contract.start)
        builder.messages[_id(contract.start.event_type)]["x-choreo-start"] = True
    names = [s.name for s in services] + [c.name for c in every_contract.values()]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or f"choreo: {', '.join(dict.fromkeys(names)) or 'events'}",
            "version": version,
            "description": "Records are keyed by the saga's gid; the envelope travels in "
            "headers and the payload is a JSON object (docs/wire-format.md).",
        },
        "defaultContentType": "application/json",
        "channels": dict(sorted(builder.channels.items())),
        "operations": dict(sorted(builder.operations.items())),
        "components": {
            "messages": dict(sorted(builder.messages.items())),
            "schemas": dict(sorted(builder.schemas.items())),
        },
    }


def edges_of(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, kind) of a document's operations: ``handles`` from a message to
    the participant that receives it, ``emits`` from a participant to what it sends.
    A participant is an operation's ``x-choreo-service``, else ``tracker`` for the
    tracker's, else the operation's name before its first dot (``choreo graph
    --asyncapi`` draws them)."""
    messages = doc.get("components", {}).get("messages", {})
    edges: set[tuple[str, str, str]] = set()
    for key, operation in doc.get("operations", {}).items():
        participant = operation.get("x-choreo-service") or (
            TRACKER if operation.get("x-choreo-role") == "tracker" else key.split(".")[0]
        )
        for ref in operation.get("messages", []):
            name = ref.get("$ref", "").rsplit("/", 1)[-1]
            event = messages.get(name, {}).get("name", name)
            if operation.get("action") == "receive":
                edges.add((event, participant, "handles"))
            else:
                edges.add((participant, event, "emits"))
    return sorted(edges)
