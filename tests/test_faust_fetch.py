"""``choreo.tracker.faust_fetch.read_batches``: the raw read of record batches that
aiokafka cannot unpack (a header key that is not UTF-8), without a broker; the faust
tracker's behaviour on the real broker is tests/test_faust_unreadable.py."""

from __future__ import annotations

import struct

import pytest
from aiokafka.record.default_records import (
    _DefaultRecordBatchBuilderPy as BatchBuilder,
)

from choreo.tracker.faust_fetch import UNREADABLE_HEADER, _NotExplained, read_batches


class RawKey(str):
    """A header key that encodes to bytes that are not UTF-8."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-key"


def batch(base: int, records: list[tuple[bytes, list[tuple[str, bytes]]]], codec: int = 0) -> bytes:
    builder = BatchBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    for delta, (value, headers) in enumerate(records):
        builder.append(delta, 1000 + delta, b"gid", value, headers)
    built = builder.build()
    struct.pack_into(">q", built, 0, base)  # the broker's offset (the CRC starts after it)
    return bytes(built)


@pytest.mark.parametrize("codec", [0, 1], ids=["plain", "gzip"])
def test_the_unreadable_record_becomes_a_placeholder_and_its_batch_neighbours_stay(
    codec: int,
) -> None:
    raw = batch(
        10,
        [(b"v0", [("a", b"1")]), (b"v1", [(RawKey("x"), b"1"), ("b", b"2")]), (b"v2", [])],
        codec,
    ) + batch(13, [(b"v3", [])])
    records, after = read_batches(raw, "t", 4, 10)
    assert [(r.offset, r.value) for r in records] == [(10, b"v0"), (11, b"v1"), (12, b"v2")]
    assert after == 13  # the next batch is aiokafka's to read again
    assert records[0].headers == (("a", b"1"),)
    assert records[1].headers[1:] == (("b", b"2"),)
    name, reason = records[1].headers[0]
    assert name == UNREADABLE_HEADER
    assert b"record t[4]@11 has a header key that is not UTF-8" in reason
    assert [r.timestamp for r in records] == [1000, 1001, 1002]
    # Read from the middle of the batch: what was returned before is not returned again.
    records, after = read_batches(raw, "t", 4, 11)
    assert [r.offset for r in records] == [11, 12]


def test_a_placeholder_key_cannot_be_forged() -> None:
    """No UTF-8 bytes decode to it (a lone surrogate): no record read has this key."""
    with pytest.raises(UnicodeEncodeError):
        UNREADABLE_HEADER.encode()


def test_what_it_cannot_explain_is_not_skipped() -> None:
    readable = batch(0, [(b"v0", [("a", b"1")])])
    with pytest.raises(_NotExplained, match="no record"):
        read_batches(readable, "t", 0, 0)
    broken = bytearray(batch(0, [(b"v0", [(RawKey("x"), b"1")])]))
    broken[-1] ^= 0xFF  # the CRC no longer matches
    with pytest.raises(_NotExplained, match="CRC"):
        read_batches(bytes(broken), "t", 0, 0)
