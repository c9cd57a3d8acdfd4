"""``choreo dlq list|show|replay`` against a tracker whose sagas left dead letters."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.cli_support import FakeTty, api, at, choreo
from tests.procs.tracker_api import Served, served_in_thread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tracker() -> Iterator[Served]:
    with served_in_thread() as served:
        yield served


def test_list_show_replay(
    capsys: pytest.CaptureFixture[str], tracker: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = choreo(capsys, *at(tracker, "dlq", "list"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "AT", "GID", "SERVICE", "EVENT", "KIND", "REASON"]
    assert lines[-1] == f"{len(lines) - 2} dead letter(s)"
    stuck = tracker.gids["stuck"]
    code, out, _ = choreo(capsys, *at(tracker, "dlq", "list", "--gid", stuck))
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert {row[2] for row in rows} == {stuck}
    assert {(row[3], row[4], row[5]) for row in rows} == {
        ("hotel", "CancelHotel", "budget"),
        ("rental", "HotelBooked", "failed"),
    }
    assert out.splitlines()[-1] == f"{len(rows)} dead letter(s) of saga {stuck}"
    _, out, _ = choreo(capsys, *at(tracker, "dlq", "list", "--json", "--gid", stuck))
    assert json.loads(out) == api(tracker, f"/dlq?gid={stuck}&limit=50")

    dead_id = next(row[0] for row in rows if row[3] == "rental")
    code, out, _ = choreo(capsys, *at(tracker, "dlq", "show", dead_id))
    assert code == 0
    assert f"id          {dead_id}\ngid         {stuck}\n" in out
    assert "reason      Choked: car service choked on its trigger" in out
    assert "  choreo-type: HotelBooked" in out
    assert out.rstrip().splitlines()[-1].startswith('{"trip_id":')
    _, out, _ = choreo(capsys, *at(tracker, "dlq", "show", dead_id, "--json"))
    assert json.loads(out) == api(tracker, f"/dlq/{dead_id}")

    code, out, err = choreo(capsys, *at(tracker, "dlq", "replay", dead_id))
    assert code == 2
    assert "refusing to act without confirmation" in err
    monkeypatch.setattr("sys.stdin", FakeTty("yes"))
    code, out, _ = choreo(capsys, *at(tracker, "dlq", "replay", dead_id))
    assert code == 0
    assert out.splitlines()[0].startswith(f"{dead_id}: HotelBooked of saga {stuck} to test.travel")
    assert f"[y/N] replayed {dead_id} to test.travel[" in out.splitlines()[-1]
    code, out, _ = choreo(capsys, *at(tracker, "dlq", "replay", dead_id, dead_id, "--yes"))
    assert [line.split()[0] for line in out.splitlines()] == [f"{dead_id}:", "replayed"]


def test_dlq_errors(capsys: pytest.CaptureFixture[str], tracker: Served) -> None:
    code, _, err = choreo(capsys, *at(tracker, "dlq", "show", "9:999"))
    assert code == 2
    assert err == (
        "choreo: error: no dead letter 9:999\n  hint: `choreo dlq list` shows their ids\n"
    )
    code, _, err = choreo(capsys, *at(tracker, "dlq", "show", "nine"))
    assert err.startswith("choreo: error: 'nine' is not a dead-letter id like 2:17")
    code, _, err = choreo(capsys, *at(tracker, "dlq", "replay", "9:999", "--yes"))
    assert (code, err.splitlines()[0]) == (2, "choreo: error: no dead letter 9:999")
    code, _, err = choreo(capsys, "dlq", "list", "--tracker", "http://127.0.0.1:9")
    assert "cannot reach the tracker at http://127.0.0.1:9" in err
