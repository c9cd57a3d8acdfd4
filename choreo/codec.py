"""Bytes <-> events. The only module that imports orjson.

Wire format (docs/wire-format.md): key = gid as UTF-8, value = the payload as JSON,
headers = the envelope. Limits are checked before parsing so a hostile record costs
at most one linear scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from choreo.errors import SchemaViolation, UndecodableEvent, UnknownEventType
from choreo.events import Envelope, Event, EventRegistry, Message, Op, Outcome
from choreo.transport.base import Headers, OutgoingRecord, Record

H_TYPE = "choreo-type"
H_ID = "choreo-id"
H_GID = "choreo-gid"
H_SAGA = "choreo-saga"
H_STEP = "choreo-step"
H_OP = "choreo-op"
H_OUTCOME = "choreo-outcome"
H_CAUSATION = "choreo-causation"
H_OCCURRED = "choreo-occurred-at"
H_VERSION = "choreo-version"
H_ATTEMPT = "choreo-attempt"
H_SOURCE = "choreo-source"
H_TRACEPARENT = "traceparent"

# The envelope's headers in the order encode_headers writes them: a stored outbox of
# records with exactly these headers keeps their values only (see pack_outbox).
ENVELOPE_HEADERS: tuple[str, ...] = (
    H_TYPE,
    H_ID,
    H_GID,
    H_SAGA,
    H_STEP,
    H_OP,
    H_OUTCOME,
    H_CAUSATION,
    H_OCCURRED,
    H_VERSION,
    H_ATTEMPT,
    H_SOURCE,
    H_TRACEPARENT,
)

ENVELOPE_HEADER_NAME_CHARS = sum(map(len, ENVELOPE_HEADERS))

# The known values, each to itself: one lookup both checks a header and gives it its type.
_OPS: dict[str, Op] = {"action": "action", "compensate": "compensate", "": ""}
_OUTCOMES: dict[str, Outcome] = {"done": "done", "failed": "failed", "skipped": "skipped", "": ""}


@dataclass(frozen=True, slots=True)
class Limits:
    """``max_bytes``: an incoming payload; ``max_depth``: its nesting; ``max_record_bytes``:
    an outgoing record (key, value and headers), kept under Kafka's default 1 MiB message
    size with room for the record's framing."""

    max_bytes: int = 1_048_576
    max_depth: int = 32
    max_record_bytes: int = 1_000_000
    max_gid_chars: int = 200
    max_header_bytes: int = 1024  # any one header value


def record_bytes(record: OutgoingRecord) -> int:
    """What a record weighs on the wire, framing aside."""
    return (
        len(record.key or b"")
        + len(record.value)
        + sum(len(name) + len(value) for name, value in record.headers)
    )


def encode_payload(event: Event) -> bytes:
    # pydantic's serializer writes JSON in one pass in Rust: no dict in between.
    return event.__pydantic_serializer__.to_json(event)


# The schema versions and attempts seen in practice, as their header bytes: a lookup
# instead of a formatting per header per record.
_SMALL_DIGITS = {n: b"%d" % n for n in range(1, 100)}


def encode_headers(env: Envelope) -> Headers:
    # Written out, not a loop: this runs for every record choreo sends.
    return (
        (H_TYPE, env.event_type.encode()),
        (H_ID, env.event_id.encode()),
        (H_GID, env.gid.encode()),
        (H_SAGA, env.saga.encode()),
        (H_STEP, env.step.encode()),
        (H_OP, env.op.encode()),
        (H_OUTCOME, env.outcome.encode()),
        (H_CAUSATION, env.causation_id.encode()),
        (H_OCCURRED, b"%d" % round(env.occurred_at * 1000)),
        (H_VERSION, _SMALL_DIGITS.get(env.schema_version) or b"%d" % env.schema_version),
        (H_ATTEMPT, _SMALL_DIGITS.get(env.attempt) or b"%d" % env.attempt),
        (H_SOURCE, env.source.encode()),
        (H_TRACEPARENT, env.traceparent.encode()),
    )


def encode(message: Message) -> OutgoingRecord:
    headers = encode_headers(message.envelope)
    # The key is the gid header's bytes, encoded once; positional: the hot path.
    return OutgoingRecord(message.topic, headers[2][1], encode_payload(message.event), headers)


def check_depth(value: bytes, limit: int) -> None:
    """Reject deep nesting without building anything: JSON strings are skipped so
    brackets inside them do not count."""
    if value.count(b"[") + value.count(b"{") <= limit:
        return  # cannot nest deeper than it has brackets; counting runs in C
    depth = 0
    in_string = escaped = False
    for byte in value:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                raise UndecodableEvent(f"payload nesting deeper than {limit} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1


def _header_text(headers: Headers) -> dict[str, str]:
    try:
        return {name: value.decode() for name, value in headers}
    except (UnicodeDecodeError, AttributeError):
        # The slow path names the header; a null value (None from the client) is empty.
        text: dict[str, str] = {}
        for name, value in headers:
            try:
                text[name] = value.decode() if value is not None else ""
            except UnicodeDecodeError as exc:
                raise UndecodableEvent(f"header {name!r} is not UTF-8") from exc
        return text


# Numeric headers are milliseconds or small counters: more digits than this is an attack
# (int() of thousands of digits is slow, and a float of it overflows).
_MAX_NUMBER_DIGITS = 16
_DEFAULT_LIMITS = Limits()
# The schema versions and attempts seen in practice, read by one dict lookup instead of
# a call and int() per header per record; anything else takes ``_number``.
_SMALL_NUMBERS = {str(n): n for n in range(1, 100)}


def _number(raw: str | None, default: int, name: str) -> int:
    if not raw:
        return default
    if len(raw) > _MAX_NUMBER_DIGITS:
        raise UndecodableEvent(f"header {name!r} has {len(raw)} characters, not a number")
    try:
        return int(raw)
    except ValueError as exc:
        raise UndecodableEvent(f"header {name!r} is not a number: {raw!r}") from exc


def _strict_checks(record: Record, raw: dict[str, str], limits: Limits) -> None:
    """The slow path, taken only when a quick look found something odd: say which rule
    the record breaks."""
    seen: set[str] = set()
    for name, value in record.headers:
        if name in seen and (name.startswith("choreo-") or name == H_TRACEPARENT):
            raise UndecodableEvent(f"header {name!r} appears more than once")
        seen.add(name)
        if value is not None and len(value) > limits.max_header_bytes:
            raise UndecodableEvent(
                f"header {name[:64]!r} is {len(value)} bytes, over the "
                f"{limits.max_header_bytes} byte limit"
            )


_ENVELOPE_HEADER_COUNT = len(ENVELOPE_HEADERS)


def decode_own_envelope(record: Record, limits: Limits = _DEFAULT_LIMITS) -> Envelope | None:
    """``decode_envelope``'s answer for a record whose headers are exactly
    ``ENVELOPE_HEADERS`` in order (what choreo writes) and break no rule, without
    raising: None for any other record, which ``decode_envelope`` then reads and, when
    it breaks a rule, names which. An envelope from here also proves the record carries
    no other header (no dead letter's replay address, for one)."""
    headers = record.headers
    if len(headers) != _ENVELOPE_HEADER_COUNT:
        return None
    # Written out, not zip or map: unpacking into locals costs a fraction of C's iterator
    # protocol per header, and this runs for every record a step handles.
    ((n0, v0), (n1, v1), (n2, v2), (n3, v3), (n4, v4), (n5, v5), (n6, v6), (n7, v7),
     (n8, v8), (n9, v9), (n10, v10), (n11, v11), (n12, v12)) = headers  # fmt: skip
    if (n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12) != ENVELOPE_HEADERS:
        return None
    # A value that is None or not UTF-8 leaves the record to the general path.
    try:
        values = (v0.decode(), v1.decode(), v2.decode(), v3.decode(), v4.decode(), v5.decode(),
                  v6.decode(), v7.decode(), v8.decode(), v9.decode(), v10.decode(), v11.decode(),
                  v12.decode())  # fmt: skip
    except (UnicodeDecodeError, AttributeError):
        return None
    text = "".join(values)
    (event_type, event_id, gid, saga, step, raw_op, raw_outcome, causation, occurred,
     raw_version, raw_attempt, source, traceparent) = values  # fmt: skip
    limit = limits.max_header_bytes
    op, outcome = _OPS.get(raw_op), _OUTCOMES.get(raw_outcome)
    version, attempt = _SMALL_NUMBERS.get(raw_version), _SMALL_NUMBERS.get(raw_attempt)
    if (
        # The limit is in bytes: a value is at most four times its characters long, so
        # only text that long can break it, and then the bytes are weighed.
        (4 * len(text) > limit and max(len(value) for _, value in headers) > limit)
        or not event_type
        or not event_id
        or not gid
        or record.key != gid.encode()
        or len(gid) > limits.max_gid_chars
        or op is None
        or outcome is None
        or version is None
        or attempt is None
        or not occurred
        or len(occurred) > _MAX_NUMBER_DIGITS
    ):
        return None
    try:
        occurred_at = int(occurred) / 1000
    except ValueError:
        return None
    return Envelope(
        event_type,
        gid,
        event_id,
        saga,
        step,
        op,
        outcome,
        causation,
        occurred_at,
        version,
        traceparent,
        attempt,
        source,
    )


def decode_envelope(record: Record, limits: Limits = _DEFAULT_LIMITS) -> Envelope:
    """Read the envelope from headers only; raises UndecodableEvent on bad headers: not
    UTF-8, a repeated envelope header, a header over the size limit, a gid that is
    missing, too long, or differs from the record key, a non-numeric number."""
    return decode_own_envelope(record, limits) or decode_any_envelope(record, limits)


def decode_any_envelope(record: Record, limits: Limits = _DEFAULT_LIMITS) -> Envelope:
    """``decode_envelope``'s general path, for a record ``decode_own_envelope`` left to
    it: every rule checked on its own, and the one broken named."""
    raw = _header_text(record.headers)
    # The limit is in bytes, and a value is at most four times its characters long: when
    # four times the joined text fits it, no value can break it; else the bytes are weighed.
    if len(raw) != len(record.headers) or (
        4 * len("".join(raw.values())) > limits.max_header_bytes
        and max(len(value or b"") for _, value in record.headers) > limits.max_header_bytes
    ):
        _strict_checks(record, raw, limits)
    get = raw.get
    event_type = get(H_TYPE, "")
    if not event_type:
        raise UndecodableEvent(f"missing {H_TYPE!r} header")
    key = record.key
    try:
        key_text = key.decode() if key else ""
    except UnicodeDecodeError as exc:
        raise UndecodableEvent("the record key is not UTF-8") from exc
    gid = get(H_GID) or key_text
    if not gid:
        raise UndecodableEvent(f"missing {H_GID!r} header and record key")
    if key_text and gid != key_text:
        # The key decides the partition, the header the saga: they must name one saga.
        raise UndecodableEvent(f"the record key and the {H_GID!r} header name different gids")
    if len(gid) > limits.max_gid_chars:
        raise UndecodableEvent(f"the gid is {len(gid)} characters, over {limits.max_gid_chars}")
    raw_op, raw_outcome = get(H_OP, ""), get(H_OUTCOME, "")
    op, outcome = _OPS.get(raw_op), _OUTCOMES.get(raw_outcome)
    if op is None:
        raise UndecodableEvent(f"header {H_OP!r} has unknown value {raw_op[:64]!r}")
    if outcome is None:
        raise UndecodableEvent(f"header {H_OUTCOME!r} has unknown value {raw_outcome[:64]!r}")
    occurred = _number(get(H_OCCURRED), record.timestamp_ms, H_OCCURRED) / 1000
    raw_version, raw_attempt = get(H_VERSION, ""), get(H_ATTEMPT, "")
    version = _SMALL_NUMBERS.get(raw_version) or _number(raw_version, 1, H_VERSION)
    attempt = _SMALL_NUMBERS.get(raw_attempt) or _number(raw_attempt, 1, H_ATTEMPT)
    return Envelope(
        event_type,
        gid,
        get(H_ID) or f"{record.topic}/{record.partition}/{record.offset}",
        get(H_SAGA, ""),
        get(H_STEP, ""),
        op,
        outcome,
        get(H_CAUSATION, ""),
        occurred,
        version,
        get(H_TRACEPARENT, ""),
        attempt,
        get(H_SOURCE, ""),
    )


def parse_payload(value: bytes, limits: Limits) -> dict[str, Any]:
    if len(value) > limits.max_bytes:
        raise UndecodableEvent(f"payload is {len(value)} bytes, over the {limits.max_bytes} limit")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UndecodableEvent(f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    check_depth(value, limits.max_depth)
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise UndecodableEvent(f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaViolation(f"payload must be a JSON object, got {type(data).__name__}")
    return data


def decode(
    record: Record,
    registry: EventRegistry,
    limits: Limits | None = None,
    envelope: Envelope | None = None,
) -> Message:
    """Turn a record into a typed message, or raise a PoisonEvent saying why not.
    ``envelope`` saves decoding the headers again when the caller already has."""
    limits = limits or _DEFAULT_LIMITS
    envelope = envelope or decode_envelope(record, limits)
    cls = registry.get(envelope.event_type)
    if cls is None:
        raise UnknownEventType(f"no event class is registered for type {envelope.event_type!r}")
    value = record.value
    if (
        envelope.schema_version == cls.schema_version
        and len(value) <= limits.max_bytes
        and value.count(b"[") + value.count(b"{") <= limits.max_depth
    ):
        # The common case in one pass of pydantic's JSON parser (Rust): no dict in between.
        # Only an event that passes it is returned; any failure takes the path below,
        # which checks step by step and says exactly what is wrong. The validator is
        # called directly: model_validate_json only adds a Python call in front of it.
        try:
            event = cls.__pydantic_validator__.validate_json(value)
            return Message(envelope, event, record.topic)
        except ValidationError:
            pass
    data = parse_payload(value, limits)
    if envelope.schema_version != cls.schema_version:
        if envelope.schema_version > cls.schema_version:
            raise SchemaViolation(
                f"{envelope.event_type} version {envelope.schema_version} is newer than "
                f"this service knows ({cls.schema_version}); deploy the newer event class"
            )
        data = cls.upcast(data, envelope.schema_version)
    try:
        event = cls.model_validate(data)
    except ValidationError as exc:
        raise SchemaViolation(
            f"payload does not fit {cls.__qualname__}: {exc.error_count()} error(s): "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from exc
    return Message(envelope=envelope, event=event, topic=record.topic)


def _packed(record: OutgoingRecord) -> list[Any] | dict[str, Any]:
    headers = record.headers
    key = (record.key or b"").decode()
    if len(headers) == _ENVELOPE_HEADER_COUNT:
        # Written out, as in decode_own_envelope: cheaper than map and a comprehension.
        ((n0, v0), (n1, v1), (n2, v2), (n3, v3), (n4, v4), (n5, v5), (n6, v6), (n7, v7),
         (n8, v8), (n9, v9), (n10, v10), (n11, v11), (n12, v12)) = headers  # fmt: skip
        if (n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12) == ENVELOPE_HEADERS:
            # An envelope's record (every output of a handler): its header names are
            # known, so only the values are stored, a list instead of name/value pairs.
            values = [v0.decode(), v1.decode(), v2.decode(), v3.decode(), v4.decode(),
                      v5.decode(), v6.decode(), v7.decode(), v8.decode(), v9.decode(),
                      v10.decode(), v11.decode(), v12.decode()]  # fmt: skip
            return [record.topic, key, record.value.decode(), values]
    return {
        "t": record.topic,
        "k": key,
        "v": record.value.decode(),
        "h": [[k, v.decode()] for k, v in headers],
    }


def pack_outbox(records: Sequence[OutgoingRecord]) -> bytes:
    """Outgoing records as a barrier record stores them (a step's outbox), so a
    redelivery re-publishes exactly what the first run produced. A record is
    ``[topic, key, value, [envelope header values]]`` when its headers are exactly the
    envelope's (``ENVELOPE_HEADERS``, in order), else ``{t, k, v, h: [[name, value]]}``;
    both read back the same (outboxes stored before the list form are dicts)."""
    return orjson.dumps([_packed(r) for r in records])


def encode_outbox(messages: Sequence[Message]) -> tuple[list[OutgoingRecord], bytes]:
    """``encode`` of each message, and ``pack_outbox`` of the records, byte for byte:
    the stored header values are taken from the envelopes, which hold them as text,
    instead of decoding back what was just encoded (only the three numbers are), and no
    header names need checking: these records have the envelope's."""
    records = []
    packed = []
    for message in messages:
        record = encode(message)
        records.append(record)
        env = message.envelope
        headers = record.headers
        values = [
            env.event_type,
            env.event_id,
            env.gid,
            env.saga,
            env.step,
            env.op,
            env.outcome,
            env.causation_id,
            headers[8][1].decode(),  # the numbers, as encode_headers wrote them
            headers[9][1].decode(),
            headers[10][1].decode(),
            env.source,
            env.traceparent,
        ]
        packed.append([record.topic, env.gid, record.value.decode(), values])
    return records, orjson.dumps(packed)


def unpack_outbox(blob: bytes) -> list[OutgoingRecord]:
    if not blob:
        return []
    records = []
    for item in orjson.loads(blob):
        if isinstance(item, list):
            topic, key, value, values = item
            headers = tuple(zip(ENVELOPE_HEADERS, [v.encode() for v in values], strict=True))
        else:
            topic, key, value = item["t"], item["k"], item["v"]
            headers = tuple((k, v.encode()) for k, v in item["h"])
        records.append(OutgoingRecord(topic, key.encode(), value.encode(), headers))
    return records


def dumps(data: Any) -> bytes:
    """JSON for choreo's own records (barrier outboxes, DLQ metadata, state API)."""
    return orjson.dumps(data)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
