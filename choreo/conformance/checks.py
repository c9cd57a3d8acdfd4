"""What the kit holds an output record to, as pure functions of the record and what the
scenario expected (docs/wire-format.md, "Rules for a participant in another language").

A ``Check`` is one rule of one scenario, kept or broken, with the evidence: the records
seen and what in them was wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from choreo import codec
from choreo.errors import UndecodableEvent
from choreo.events import Event
from choreo.transport.base import Record
from choreo.transport.partitioner import partition_for

Level = Literal["MUST", "SHOULD"]


@dataclass
class Check:
    scenario: str
    name: str
    rule: str  # the rule's number(s) in docs/wire-format.md
    level: Level
    ok: bool
    evidence: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.ok:
            return "kept"
        return "BROKEN" if self.level == "MUST" else "warn"


@dataclass(frozen=True)
class Expected:
    """What an output must carry: one of ``types`` (event type -> class), ``op``,
    ``outcome`` (per event type when it differs), the handler's step, the cause's id."""

    types: dict[str, type[Event]]
    op: str
    outcome: dict[str, str]
    step: str
    causation: str
    gid: str
    source: str
    saga: str


def header(record: Record, name: str) -> str:
    value = record.header(name)
    if value is None:
        return ""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return repr(value)


def describe(record: Record) -> str:
    """A record in one line: where it is, its key and the envelope headers that matter."""
    key = record.key.decode(errors="replace") if record.key is not None else "<none>"
    names = ("type", "id", "gid", "op", "outcome", "step", "causation", "source")
    shown = " ".join(f"{n}={header(record, 'choreo-' + n)!r}" for n in names)
    return f"{record.topic}[{record.partition}]@{record.offset} key={key!r} {shown}"


def wire_problems(record: Record, expected: Expected, partitions: int) -> list[str]:
    """Rules 1-4, 9 and 14 and the role table, for one output record: empty when kept."""
    problems: list[str] = []
    if record.key is None or record.key.decode(errors="replace") != expected.gid:
        problems.append(f"key is {record.key!r}, not the gid {expected.gid!r} (rule 1)")
    try:
        codec.decode_envelope(record)
    except UndecodableEvent as exc:
        problems.append(f"headers refused by a consumer: {exc} (rules 1-3)")
    want = {
        "choreo-gid": expected.gid,
        "choreo-op": expected.op,
        "choreo-step": expected.step,
        "choreo-causation": expected.causation,
    }
    event_type = header(record, "choreo-type")
    cls = expected.types.get(event_type)
    if cls is None:
        problems.append(f"choreo-type {event_type!r} is none of {sorted(expected.types)}")
    else:
        want["choreo-outcome"] = expected.outcome[event_type]
        want["choreo-version"] = str(cls.schema_version)
        if record.topic != cls.topic:
            problems.append(f"on topic {record.topic!r}, not {cls.topic!r} (its class's)")
        problems += payload_problems(record, cls)
    if not header(record, "choreo-id"):
        problems.append("no choreo-id (rule 2: a consumer cannot name a re-publication)")
    for name, value in want.items():
        got = header(record, name)
        if name == "choreo-version" and got == "":
            got = "1"  # absent means 1 (rule 2)
        if got != value:
            problems.append(f"{name} is {got!r}, expected {value!r}")
    if record.key is not None and record.partition != partition_for(record.key, partitions):
        problems.append(
            f"in partition {record.partition}, not {partition_for(record.key, partitions)} "
            f"(murmur2 of the key modulo {partitions}, rule 14)"
        )
    return problems


def payload_problems(record: Record, cls: type[Event]) -> list[str]:
    try:
        data = codec.loads(record.value)
    except ValueError as exc:
        return [f"value is not JSON: {exc}"]
    if not isinstance(data, dict):
        return [f"value is a JSON {type(data).__name__}, not an object (rule 1)"]
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        return [f"payload is not a valid {cls.event_type}: {exc.errors()[0]['msg']}"]
    return []


def should_problems(record: Record, expected: Expected) -> list[str]:
    """SHOULD-level: the source names the service (rule 9), the saga is carried on."""
    problems = []
    if header(record, "choreo-source") != expected.source:
        problems.append(
            f"choreo-source is {header(record, 'choreo-source')!r}, not {expected.source!r}"
        )
    if header(record, "choreo-saga") != expected.saga:
        problems.append(f"choreo-saga is {header(record, 'choreo-saga')!r}, not {expected.saga!r}")
    return problems


def ids(records: Sequence[Record]) -> list[tuple[str, str]]:
    return sorted((header(r, "choreo-type"), header(r, "choreo-id")) for r in records)
