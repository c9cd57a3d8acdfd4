"""The codec: round trips, limits before parsing, and no input that can crash it."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo import codec
from choreo.errors import PoisonEvent, SchemaViolation, UndecodableEvent, UnknownEventType
from choreo.events import Envelope, Event, EventRegistry, Message
from choreo.transport.base import OutgoingRecord, Record


class Parcel(Event, topic="parcels"):
    parcel_id: str
    weight: int
    tags: tuple[str, ...] = ()


def registry() -> EventRegistry:
    reg = EventRegistry()
    reg.add(Parcel)
    return reg


def as_record(message: Message, offset: int = 0) -> Record:
    out = codec.encode(message)
    return Record(out.topic, 0, offset, out.key, out.value, out.headers, 1)


def test_round_trip_keeps_envelope_and_payload() -> None:
    env = Envelope(event_type="Parcel", gid="g-1", saga="ship", step="pack", op="action",
                   outcome="done", causation_id="c-1", attempt=2, source="packer")  # fmt: skip
    message = Message(env, Parcel(parcel_id="p", weight=3, tags=("[{x",)), "parcels")
    decoded = codec.decode(as_record(message), registry())
    assert decoded.event == message.event
    assert decoded.envelope.occurred_at == pytest.approx(env.occurred_at, abs=0.001)
    assert decoded.envelope.evolve(occurred_at=env.occurred_at) == env
    out = codec.encode(message)
    assert out.key == b"g-1"
    assert dict(out.headers)["traceparent"] == env.traceparent.encode()


@pytest.mark.parametrize("own", [True, False], ids=["choreo's headers", "one header more"])
def test_the_header_size_limit_counts_bytes_not_characters(own: bool) -> None:
    def record(saga: str) -> Record:
        env = Envelope(event_type="Parcel", gid="g", saga=saga)
        got = as_record(Message(env, Parcel(parcel_id="p", weight=1), "parcels"))
        extra = () if own else (("x-other", b"1"),)  # not choreo's own header set
        return Record(got.topic, 0, 0, got.key, got.value, (*got.headers, *extra), 1)

    limit = codec.Limits().max_header_bytes
    # 600 characters of three bytes each: 1,800 bytes, under the limit in characters.
    with pytest.raises(UndecodableEvent, match=f"1800 bytes, over the {limit} byte limit"):
        codec.decode_envelope(record("€" * 600))
    # Exactly at the limit in bytes: read.
    assert codec.decode_envelope(record("€" * (limit // 3) + "x")).saga.endswith("x")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    codec.check_depth(b'{"a": "' + b"[" * 100 + b'"}', limit=2)
    codec.check_depth(b'{"a": "\\"[[[[" }', limit=2)
    with pytest.raises(UndecodableEvent, match="deeper than 2"):
        codec.check_depth(b'{"a": [[1]]}', limit=2)


def test_each_poison_kind_is_named() -> None:
    env = Envelope(event_type="Parcel", gid="g")
    good = as_record(Message(env, Parcel(parcel_id="p", weight=1), "parcels"))

    def variant(value: bytes, event_type: str = "Parcel") -> Record:
        headers = tuple(
            (k, event_type.encode() if k == codec.H_TYPE else v) for k, v in good.headers
        )
        return Record("parcels", 0, 1, b"g", value, headers)

    with pytest.raises(SchemaViolation, match="weight"):
        codec.decode(variant(orjson.dumps({"parcel_id": "p", "weight": "heavy"})), registry())
    with pytest.raises(SchemaViolation, match="JSON object"):
        codec.decode(variant(b"[1, 2]"), registry())
    with pytest.raises(UnknownEventType, match="Nope"):
        codec.decode(variant(b"{}", "Nope"), registry())
    with pytest.raises(UndecodableEvent, match="not UTF-8"):
        codec.decode(variant(b"\xc3\x28"), registry())
    with pytest.raises(UndecodableEvent, match="over the 10 limit"):
        codec.decode(variant(b'{"parcel_id": "ppppp"}'), registry(), codec.Limits(max_bytes=10))
    bad_header = Record("parcels", 0, 1, b"g", b"{}", ((codec.H_TYPE, b"\xff"),))
    with pytest.raises(UndecodableEvent, match="not UTF-8"):
        codec.decode(bad_header, registry())
    bad_attempt = Record("parcels", 0, 1, b"g", b"{}",
                         ((codec.H_TYPE, b"Parcel"), (codec.H_ATTEMPT, b"x")))  # fmt: skip
    with pytest.raises(UndecodableEvent, match="not a number"):
        codec.decode(bad_attempt, registry())


@pytest.mark.parametrize(
    ("raw", "number"),
    [(b"", 1), (b"1", 1), (b"99", 99), (b"100", 100), (b"0", 0), (b"07", 7), (b" 3", 3),
     (b"+2", 2), (b"1_0", 10)],
)  # fmt: skip
def test_version_and_attempt_headers_read_as_int_reads_them(raw: bytes, number: int) -> None:
    """Small numbers are read from a table, the rest by int(): the same result either way."""
    for name, field in ((codec.H_VERSION, "schema_version"), (codec.H_ATTEMPT, "attempt")):
        record = Record("parcels", 0, 1, b"g", b"{}", ((codec.H_TYPE, b"Parcel"), (name, raw)))
        assert getattr(codec.decode_envelope(record), field) == number


@settings(max_examples=300, deadline=None)
@given(
    value=st.binary(max_size=300)
    | st.recursive(
        st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=40,
    ).map(orjson.dumps),
    headers=st.lists(
        st.tuples(
            st.sampled_from([codec.H_TYPE, codec.H_GID, codec.H_OP, codec.H_OCCURRED, "x"]),
            st.binary(max_size=12) | st.just(b"Parcel"),
        ),
        max_size=5,
    ),
    key=st.none() | st.binary(max_size=8),
)
def test_no_input_escapes_as_anything_but_poison(
    value: bytes, headers: list[tuple[str, bytes]], key: bytes | None
) -> None:
    record = Record("parcels", 0, 0, key, value, tuple(headers))
    try:
        message = codec.decode(record, registry(), codec.Limits(max_depth=8))
    except PoisonEvent:
        return
    assert isinstance(message.event, Parcel)


_GOOD_HEADERS = codec.encode_headers(
    Envelope(event_type="Parcel", gid="g-1", saga="ship", step="pack", op="action",
             outcome="done", causation_id="c", attempt=2, source="packer")
)  # fmt: skip


# Header changes (by index in ENVELOPE_HEADERS) and record keys, each aimed at one rule.
_AIMED: list[tuple[dict[int, bytes], bytes | None]] = [
    ({}, b"g-1"), ({}, None), ({}, b""), ({}, b"\xff"), ({}, b"g-22"),
    ({0: b""}, b"g-1"), ({1: b""}, b"g-1"), ({2: b""}, b"g-1"), ({2: b""}, b""),
    ({2: b"g-22"}, b"g-22"),
    ({3: b"x" * 61}, b"g-1"), ({3: b"\xc3\xa9" * 31}, b"g-1"), ({3: b"\xff"}, b"g-1"),
    ({3: b"a\x00b"}, b"g-1"), ({5: b"nope"}, b"g-1"), ({5: b""}, b"g-1"), ({6: b"x"}, b"g-1"),
    ({8: b""}, b"g-1"), ({8: b"1" * 17}, b"g-1"), ({8: b"12a"}, b"g-1"), ({8: b" 3"}, b"g-1"),
    ({9: b"100"}, b"g-1"), ({9: b""}, b"g-1"), ({10: b"0"}, b"g-1"), ({10: b"x"}, b"g-1"),
]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    case=st.sampled_from(_AIMED)
    | st.tuples(
        st.dictionaries(
            st.integers(0, len(codec.ENVELOPE_HEADERS) - 1),
            st.sampled_from([b"", b"\x00", b"\xff", b"07", b"1_0", b"-5", b"g-1", b"action",
                             b"compensate", b"failed"]) | st.binary(max_size=6),
            max_size=3,
        ),
        st.sampled_from([b"g-1", b"g-22", b"", None, b"\xff"]),
    ),
    limits=st.sampled_from([codec.Limits(), codec.Limits(max_header_bytes=60, max_gid_chars=3)]),
)  # fmt: skip
def test_a_record_as_choreo_writes_it_reads_as_any_other_record_does(
    case: tuple[dict[int, bytes], bytes | None], limits: codec.Limits
) -> None:
    """decode_own_envelope (exactly the envelope's headers, in order) answers what the
    general path answers for the same headers in another order, or leaves it to it."""
    changes, key = case
    headers = tuple(
        (name, changes.get(index, value)) for index, (name, value) in enumerate(_GOOD_HEADERS)
    )
    own = codec.decode_own_envelope(Record("parcels", 0, 3, key, b"{}", headers, 5), limits)
    general = Record("parcels", 0, 3, key, b"{}", tuple(reversed(headers)), 5)
    try:
        expected = codec.decode_envelope(general, limits)
    except PoisonEvent:
        assert own is None
        return
    assert own is None or own == expected
    if not changes and key == b"g-1":
        assert own is not None


def test_a_key_that_is_not_utf8_is_poison_instead_of_a_replacement_gid() -> None:
    env = Envelope(event_type="Parcel", gid="g")
    good = as_record(Message(env, Parcel(parcel_id="p", weight=1), "parcels"))
    headers = tuple((k, v) for k, v in good.headers if k != codec.H_GID)
    for key in (b"\xff\xfe", b"\xff\xfd"):  # both would have decoded to the same gid
        record = Record("parcels", 0, 0, key, good.value, headers, 1)
        with pytest.raises(UndecodableEvent, match="key is not UTF-8"):
            codec.decode(record, registry())


class Weighed(Event, topic="parcels", version=2):
    parcel_id: str
    grams: int

    @classmethod
    def upcast(cls, data: dict[str, object], version: int) -> dict[str, object]:
        if version == 1:  # version 1 said "kilos"
            data = {"parcel_id": data["parcel_id"], "grams": int(str(data["kilos"])) * 1000}
        return data


def test_older_versions_are_upcast_and_newer_ones_refused() -> None:
    reg = EventRegistry()
    reg.add(Weighed)
    headers = (("choreo-type", b"Weighed"), ("choreo-gid", b"g"), ("choreo-version", b"1"))
    old = Record("parcels", 0, 0, b"g", b'{"parcel_id": "p", "kilos": 2}', headers, 1)
    assert codec.decode(old, reg).event == Weighed(parcel_id="p", grams=2000)
    newer = Record("parcels", 0, 1, b"g", b'{"parcel_id": "p", "grams": 1}',
                   (*headers[:2], ("choreo-version", b"3")), 1)  # fmt: skip
    with pytest.raises(SchemaViolation, match="version 3 is newer than this service knows"):
        codec.decode(newer, reg)


# -- the stored outbox ----------------------------------------------------------------


def test_an_outbox_reads_back_exactly_what_was_packed() -> None:
    """Envelope records (stored as their header values) and records with other headers
    (stored with the names) come back byte for byte, in order."""
    envelope = Envelope(event_type=Parcel.event_type, gid="g-1", source="svc")
    standard = codec.encode(Message(envelope, Parcel(parcel_id="p", weight=2), Parcel.topic))
    custom = OutgoingRecord("t", None, b'{"x":"\\u00e9 \\" y"}', (("a", b"1"), ("b", b"")))
    reordered = OutgoingRecord("t", b"k", b"{}", tuple(reversed(standard.headers)))
    records = [standard, custom, reordered, standard]
    blob = codec.pack_outbox(records)
    back = codec.unpack_outbox(blob)
    assert back == [standard, OutgoingRecord("t", b"", custom.value, custom.headers),
                    reordered, standard]  # fmt: skip
    assert isinstance(orjson.loads(blob)[0], list)  # the envelope's names are not stored
    assert codec.unpack_outbox(codec.pack_outbox([])) == []
    assert codec.unpack_outbox(b"") == []


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(max_size=6), min_size=7, max_size=7),
    numbers=st.lists(st.integers(-5, 2**40), min_size=2, max_size=2),
    occurred_at=st.floats(0, 4e9),
    count=st.integers(0, 3),
)
def test_encode_outbox_packs_exactly_what_pack_outbox_would(
    texts: list[str], numbers: list[int], occurred_at: float, count: int
) -> None:
    """The outbox written from the envelopes' text is the one packed from the records."""
    saga, step, causation, source, trace, gid, event_id = texts
    envelope = Envelope(event_type=Parcel.event_type, gid=gid, event_id=event_id, saga=saga,
                        step=step, op="compensate", outcome="skipped", causation_id=causation,
                        occurred_at=occurred_at, schema_version=numbers[0], traceparent=trace,
                        attempt=numbers[1], source=source)  # fmt: skip
    messages = [
        Message(envelope, Parcel(parcel_id=f"p{n}", weight=n, tags=(saga,)), Parcel.topic)
        for n in range(count)
    ]
    records, blob = codec.encode_outbox(messages)
    assert records == [codec.encode(message) for message in messages]
    assert blob == codec.pack_outbox(records)
    assert codec.unpack_outbox(blob) == records


def test_an_outbox_stored_before_the_compact_form_still_reads() -> None:
    """Barrier records written by earlier versions hold every record as a dict."""
    old = orjson.dumps(
        [{"t": "parcels", "k": "g-1", "v": '{"a":1}', "h": [["choreo-type", "X"], ["z", ""]]}]
    )
    assert codec.unpack_outbox(old) == [
        OutgoingRecord("parcels", b"g-1", b'{"a":1}', (("choreo-type", b"X"), ("z", b"")))
    ]
