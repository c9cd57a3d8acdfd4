"""``choreo sagas list``, ``choreo saga show|why|retry|compensate|resolve`` against a
tracker with sagas in every state, and the errors people see."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from choreo.cli.admin import default_actor
from tests.cli_support import FakeTty, api, at, choreo, eventually
from tests.procs.tracker_api import Served, served_in_thread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tracker() -> Iterator[Served]:
    """Read-only tests share one tracker; tests that act get ``fresh``."""
    with served_in_thread() as served:
        yield served


@pytest.fixture
def fresh() -> Iterator[Served]:
    with served_in_thread(token="t0ken") as served:
        yield served


def test_list_shows_every_saga(capsys: pytest.CaptureFixture[str], tracker: Served) -> None:
    code, out, err = choreo(capsys, *at(tracker, "sagas", "list"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["GID", "SAGA", "STATUS", "AGE", "WAITING", "ON"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == set(tracker.gids.values())
    assert " RUNNING " in rows[tracker.gids["running"]]
    assert rows[tracker.gids["running"]].endswith("hotel")
    assert rows[tracker.gids["stuck"]].endswith("undo hotel")
    assert lines[-1] == "5 of 5 saga(s)"


def test_list_filters_pages_and_json(capsys: pytest.CaptureFixture[str], tracker: Served) -> None:
    code, out, _ = choreo(capsys, *at(tracker, "sagas", "list", "--state", "stuck"))
    assert code == 0
    assert tracker.gids["stuck"] in out
    assert out.splitlines()[-1] == "1 of 1 saga(s)"
    _, out, _ = choreo(capsys, *at(tracker, "sagas", "list", "--limit", "2", "--saga", "trip"))
    assert out.splitlines()[-1] == "2 of 5 saga(s); next page: --offset 2"
    _, out, _ = choreo(capsys, *at(tracker, "sagas", "list", "--since", "1h"))
    assert out.splitlines()[-1] == "5 of 5 saga(s)"
    _, out, _ = choreo(capsys, *at(tracker, "sagas", "list", "--saga", "nope"))
    assert out == "0 of 0 saga(s)\n"
    _, out, _ = choreo(capsys, *at(tracker, "sagas", "list", "--json", "--state", "RUNNING"))
    assert json.loads(out) == api(tracker, "/sagas?status=RUNNING&limit=50&offset=0")


def test_show_prints_steps_and_timeline(
    capsys: pytest.CaptureFixture[str], tracker: Served
) -> None:
    gid = tracker.gids["stuck"]
    code, out, _ = choreo(capsys, *at(tracker, "saga", "show", gid))
    assert code == 0
    assert out.startswith(f"saga trip  {gid}\nstatus    STUCK  (compensation of hotel")
    assert "waiting   undo hotel (attempt 2)" in out
    steps = out.split("\nsteps\n")[1].split("\n\ntimeline\n")[0]
    assert [line.split()[:2] for line in steps.splitlines()[1:]] == [
        ["flight", "DONE"],
        ["hotel", "COMPENSATING"],
        ["car", "COMPENSATED"],
    ]
    timeline = out.split("\ntimeline\n")[1].splitlines()
    assert timeline[0].split() == ["TIME", "SOURCE", "EVENT", "STEP", "OP/OUTCOME", "NOTE"]
    assert timeline[1].split()[1:] == [
        "airline",
        "TripBooked",
        "flight",
        "-",
        "flight",
        "dispatched",
    ]
    assert any("tracker  CancelHotel" in line and "issued (attempt 2)" in line for line in timeline)
    _, out, _ = choreo(capsys, *at(tracker, "saga", "show", gid, "--json"))
    assert json.loads(out) == api(tracker, f"/sagas/{gid}")


def test_why_explains_what_a_saga_waits_on(
    capsys: pytest.CaptureFixture[str], tracker: Served
) -> None:
    code, out, _ = choreo(capsys, *at(tracker, "saga", "why", tracker.gids["running"]))
    assert code == 0
    assert "RUNNING, waiting on hotel (action by hotel)" in out
    assert "step hotel: waits for hotel to handle FlightBooked (action)" in out
    assert "lag       0 on test.travel[" in out
    assert "(overdue " in out
    assert "is the tracker running and keeping up?" in out
    code, out, _ = choreo(capsys, *at(tracker, "saga", "why", tracker.gids["stuck"]))
    assert "dead letters of this saga" in out
    assert "ConnectionError: hotel provider unreachable" in out
    _, out, _ = choreo(capsys, *at(tracker, "saga", "why", tracker.gids["stuck"], "--json"))
    why = json.loads(out)
    assert why["status"] == "STUCK"
    assert {d["service"] for d in why["dead_letters"]} == {"hotel", "rental"}


def test_errors_for_people(capsys: pytest.CaptureFixture[str], tracker: Served) -> None:
    code, out, err = choreo(capsys, *at(tracker, "saga", "show", "no-such-gid"))
    assert (code, out) == (2, "")
    assert err == (
        "choreo: error: no saga with gid 'no-such-gid'\n"
        "  hint: `choreo sagas list` shows known ones\n"
    )
    code, _, err = choreo(capsys, "saga", "why", "g", "--tracker", "http://127.0.0.1:9")
    assert code == 2
    assert err.startswith("choreo: error: cannot reach the tracker at http://127.0.0.1:9 (")
    assert "hint: is `choreo tracker` running? pass --tracker URL" in err
    code, _, err = choreo(capsys, "sagas", "list", "--tracker", "ftp://localhost:8088")
    assert (code, err.splitlines()[0]) == (
        2,
        "choreo: error: 'ftp://localhost:8088' is not an http(s) URL",
    )  # HOST:PORT alone means http (tests/test_cli_edges.py)
    code, _, err = choreo(capsys, *at(tracker, "sagas", "list", "--since", "soon"))
    assert (code, err.splitlines()[0]) == (2, "choreo: error: 'soon' is not a duration")
    with pytest.raises(SystemExit) as exited:
        choreo(capsys, *at(tracker, "sagas", "list", "--state", "DONE"))
    assert exited.value.code == 2
    assert "invalid choice: 'DONE'" in capsys.readouterr().err


def test_tracker_from_environment_and_tokens(
    capsys: pytest.CaptureFixture[str], fresh: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHOREO_TRACKER", fresh.url)
    code, _, err = choreo(capsys, "sagas", "list")
    assert code == 2
    assert err == (
        "choreo: error: the tracker's token is required (401)\n"
        "  hint: pass --token or set CHOREO_TRACKER_TOKEN\n"
    )
    code, _, err = choreo(capsys, "sagas", "list", "--token", "wrong")
    assert err.startswith("choreo: error: the tracker's token was refused (401)")
    monkeypatch.setenv("CHOREO_TRACKER_TOKEN", "t0ken")
    code, out, _ = choreo(capsys, "sagas", "list")
    assert (code, out.splitlines()[-1]) == (0, "5 of 5 saga(s)")


def test_admin_actions_confirm_and_land_in_the_timeline(
    capsys: pytest.CaptureFixture[str], fresh: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck, running = fresh.gids["stuck"], fresh.gids["running"]
    code, out, err = choreo(capsys, *at(fresh, "saga", "resolve", stuck, "--note", "fixed"))
    assert code == 2
    assert "refusing to act without confirmation: stdin is not a terminal" in err
    assert "hint: pass --yes" in err
    monkeypatch.setattr("sys.stdin", FakeTty("n"))
    code, out, _ = choreo(capsys, *at(fresh, "saga", "resolve", stuck, "--note", "fixed"))
    assert code == 1
    assert out.splitlines()[-1] == "resolve this saga as " + default_actor() + "? [y/N] " + (
        "cancelled; nothing was sent"
    )
    monkeypatch.setattr("sys.stdin", FakeTty("y"))
    monkeypatch.setenv("USER", "tester")
    code, out, _ = choreo(capsys, *at(fresh, "saga", "resolve", stuck, "--note", "refunded"))
    assert code == 0
    assert "is STUCK, waiting on undo hotel (attempt 2)" in out
    assert "resolve sent as command " in out
    actor = f"tester@{socket.gethostname()}"

    def noted(gid: str, text: str) -> bool:
        return any(text in e["note"] for e in api(fresh, f"/sagas/{gid}")["timeline"])

    eventually(lambda: noted(stuck, f"admin resolve by {actor}: refunded"))
    assert api(fresh, f"/sagas/{stuck}")["resolved_by"] == actor
    code, _, err = choreo(
        capsys,
        *at(
            fresh,
            "saga",
            "compensate",
            running,
            "--yes",
            "--actor",
            "ops-bot",
            "--note",
            "customer cancelled",
        ),
    )
    assert (code, err) == (0, "")
    eventually(lambda: api(fresh, f"/sagas/{running}")["status"] != "RUNNING")
    assert noted(running, "admin compensate by ops-bot: customer cancelled")
    code, _, err = choreo(capsys, *at(fresh, "saga", "compensate", fresh.gids["completed"], "-y"))
    assert code == 2
    assert err.splitlines() == [
        "choreo: error: not sent: only a RUNNING saga can be compensated; this one is COMPLETED",
        "  hint: `choreo saga why GID` shows its state",
    ]
    code, _, err = choreo(capsys, *at(fresh, "saga", "retry", "no-such-gid", "--yes"))
    assert (code, err.splitlines()[0]) == (2, "choreo: error: no saga with gid 'no-such-gid'")
    with pytest.raises(SystemExit):
        choreo(capsys, *at(fresh, "saga", "resolve", stuck, "--yes"))
    assert "the following arguments are required: --note" in capsys.readouterr().err


def test_hostile_text_is_shown_not_obeyed(
    capsys: pytest.CaptureFixture[str], fresh: Served
) -> None:
    """An actor that is rich markup and a note holding terminal escapes (both stored as
    given) render as text: the dashboard does not crash, no escape reaches the terminal."""
    stuck = fresh.gids["stuck"]
    actor, note = "[/oops]", "refunded\x1b[2J\r\x1b]0;pwned\x07 by hand"
    code, _, err = choreo(
        capsys, *at(fresh, "saga", "resolve", stuck, "--actor", actor, "--note", note, "--yes")
    )
    assert (code, err) == (0, "")
    eventually(lambda: api(fresh, f"/sagas/{stuck}")["resolved_by"] == actor)
    outputs = []
    for argv in (["saga", "show", stuck], ["dashboard", "--once"], ["sagas", "list"]):
        code, out, err = choreo(capsys, *at(fresh, *argv))
        assert (code, err) == (0, ""), argv
        outputs.append(out)
    show, dashboard, _ = outputs
    for out in outputs:
        assert not any(c in out for c in "\x1b\r\x07"), repr(out)
    assert "resolved  by [/oops]: refunded\\x1b[2J\\x0d\\x1b]0;pwned\\x07 by hand" in show
    assert "resolved by [/oops]" in dashboard
    code, _, err = choreo(capsys, *at(fresh, "saga", "retry", stuck, "--actor", "a" * 201, "--yes"))
    assert code == 2
    assert "--actor is 201 characters; the tracker keeps at most 200" in err
