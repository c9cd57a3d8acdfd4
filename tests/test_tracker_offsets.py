"""The folded markers' verdicts (choreo.tracker.offsets), without a broker: the kill loop
in test_tracker_kill_loop.py shows them at work on real Kafka."""

from __future__ import annotations

from pathlib import Path

from choreo.tracker.faust_store import OFFSET_KEY, remove_stale
from choreo.tracker.offsets import (
    FoldedOffsets,
    Verdict,
    decode_marker,
    encode_marker,
    is_marker,
    marker_key,
    marker_partition,
)
from choreo.transport.base import TopicPartition

TP = TopicPartition("t", 3)


def test_marker_round_trip() -> None:
    key = marker_key(3)
    assert is_marker(key)
    assert not is_marker(b"3f1c-gid")
    assert marker_partition(key) == 3
    assert decode_marker(encode_marker({"t": 7, "choreo.system": 2})) == {
        "t": 7,
        "choreo.system": 2,
    }


def test_next_records_fold_and_folded_ones_are_skipped() -> None:
    folded = FoldedOffsets()
    folded.load(3, {"t": 10})
    assert folded.verdict(TP, 8) == (Verdict.SKIP, None)
    assert folded.verdict(TP, 10) == (Verdict.FOLD, None)
    assert folded.verdict(TP, 11) == (Verdict.FOLD, None)
    assert folded.marker(3) == {"t": 12}
    folded.commit()
    assert folded.next_offsets() == {TP: 12}


def test_an_abandoned_batch_is_read_again() -> None:
    folded = FoldedOffsets()
    folded.start_at(TP, 0)
    assert folded.verdict(TP, 0) == (Verdict.FOLD, None)
    folded.abandon()
    assert folded.next_offsets() == {TP: 0}
    # faust moving on past the lost batch is a gap: seek back, drop until it comes again.
    assert folded.verdict(TP, 5) == (Verdict.DROP, 0)
    assert folded.verdict(TP, 6) == (Verdict.DROP, None)
    assert folded.verdict(TP, 0) == (Verdict.FOLD, None)
    assert folded.gaps == 1


def test_a_gap_in_the_log_itself_is_accepted_once_read_again() -> None:
    folded = FoldedOffsets()
    folded.load(3, {"t": 4})
    assert folded.verdict(TP, 6) == (Verdict.DROP, 4)  # 4 and 5: a transaction marker?
    assert folded.verdict(TP, 7) == (Verdict.DROP, None)  # queued before the seek
    assert folded.verdict(TP, 6) == (Verdict.FOLD, None)  # read again: the gap is real
    assert folded.verdict(TP, 7) == (Verdict.FOLD, None)
    assert folded.accepted_gaps == 1


def test_a_reread_that_starts_past_the_marker_seeks_again() -> None:
    folded = FoldedOffsets()
    folded.load(3, {"t": 4})
    assert folded.verdict(TP, 9) == (Verdict.DROP, 4)
    assert folded.verdict(TP, 10) == (Verdict.DROP, None)
    # Delivered again, from 6: faust dropped 4 and 5 of the re-read. Seek once more.
    assert folded.verdict(TP, 6) == (Verdict.DROP, 4)
    assert folded.verdict(TP, 4) == (Verdict.FOLD, None)
    assert folded.accepted_gaps == 0


def test_local_state_not_behind_its_changelog_is_removed(tmp_path: Path) -> None:
    """faust_store.remove_stale on real RocksDB databases (rocksdict), as faust lays them
    out: the one whose applied offset is at or past its changelog's end goes."""
    from rocksdict import Options, Rdict

    paths = {p: tmp_path / f"sagas-{p}.db" for p in range(3)}
    for partition, offset in ((0, 41), (1, 50)):
        db = Rdict(str(paths[partition]), options=Options(raw_mode=True))
        db.put(OFFSET_KEY, str(offset).encode())
        db.put(b"gid", b"{}")
        db.close()
    # Partition 0 applied up to 41 of a changelog ending at 42: fine. Partition 1 claims
    # 50 of a changelog ending at 10 (made again): removed. Partition 2 has no database.
    assert remove_stale(paths, {0: 42, 1: 10, 2: 0}) == [1]
    assert paths[0].exists()
    assert not paths[1].exists()
