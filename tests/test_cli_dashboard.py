"""``choreo dashboard``: the pure render, ``--once``, and the live view in tmux against a
tracker served by a helper process (tests/procs/tracker_api.py)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from choreo.cli.dashboard import Snapshot, render
from tests.cli_support import at, choreo
from tests.procs.tracker_api import Served, served_in_thread

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def text_of(snap: Snapshot, width: int = 160) -> str:
    console = Console(record=True, width=width, file=open(os.devnull, "w"))  # noqa: SIM115
    with console.file:
        console.print(render(snap))
    return console.export_text()


def test_render_is_pure_and_shows_everything() -> None:
    now = time.time()
    stalled = {
        "gid": "g-stalled",
        "saga": "order",
        "status": "RUNNING",
        "started_at": now - 90,
        "updated_at": now - 80,
        "reason": "",
        "overdue_s": 42.0,
        "waiting": [{"step": "payment", "op": "action", "attempts": 0}],
    }
    stuck = {
        "gid": "g-stuck",
        "saga": "order",
        "status": "STUCK",
        "started_at": now - 7200,
        "updated_at": now - 60,
        "reason": "compensation of stock unconfirmed",
        "resolved": False,
        "waiting": [{"step": "stock", "op": "compensate", "attempts": 5}],
    }
    snap = Snapshot(
        at=now,
        tracker="http://tracker:8088",
        counts={
            "total": 12,
            "by_status": {
                "RUNNING": 3,
                "COMPLETED": 6,
                "COMPENSATING": 1,
                "COMPENSATED": 1,
                "STUCK": 1,
            },
        },
        latencies=[
            {
                "saga": "order",
                "step": "payment",
                "count": 6,
                "p50": 0.25,
                "p90": 1.5,
                "p99": float("nan"),
            }
        ],
        stalled=[stalled],
        stuck=[stuck],
        throughput=0.5,
    )
    text = text_of(snap)
    assert "choreo dashboard  http://tracker:8088" in text
    assert "RUNNING  COMPLETED  COMPENSATING  COMPENSATED  STUCK  total  finished/s" in text
    assert "3        6          1             1            1      12     0.50" in text
    assert "│ order │ payment │     6 │ 0.250 │ 1.500 │   - │" in text
    assert "stalled (1)" in text
    assert "STUCK (1)" in text
    row = next(line for line in text.splitlines() if "g-stalled" in line)
    assert "1m30s" in row
    assert "payment" in row
    assert "+42s" in row
    row = next(line for line in text.splitlines() if "g-stuck" in line)
    assert "2h00m" in row
    assert "undo stock (attempt 5)" in row
    assert text == text_of(snap)  # the same snapshot renders the same view
    failed = text_of(Snapshot(at=now, error="cannot reach the tracker"))
    assert "refresh failed: cannot reach the tracker" in failed


@pytest.fixture(scope="module")
def tracker() -> Iterator[Served]:
    with served_in_thread() as served:
        yield served


def test_once_prints_one_snapshot(capsys: pytest.CaptureFixture[str], tracker: Served) -> None:
    code, out, err = choreo(capsys, *at(tracker, "dashboard", "--once"))
    assert (code, err) == (0, "")
    assert f"choreo dashboard  {tracker.url}" in out
    assert "1        1          1             1            1      5" in out
    assert "stalled (2)" in out
    assert "STUCK (1)" in out
    for name in ("running", "compensating", "stuck"):
        assert tracker.gids[name] in out
    assert tracker.gids["completed"] not in out


def test_dashboard_errors(capsys: pytest.CaptureFixture[str], tracker: Served) -> None:
    code, _, err = choreo(capsys, "dashboard", "--once", "--tracker", "http://127.0.0.1:9")
    assert code == 2
    assert "cannot reach the tracker at http://127.0.0.1:9" in err
    code, _, err = choreo(capsys, *at(tracker, "dashboard", "--interval", "0"))
    assert (code, err.splitlines()[0]) == (2, "choreo: error: --interval must be > 0, got 0.0")


def _tmux_or_skip() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        reason = "tmux is not installed (apt-get install -y tmux); the live dashboard is untested"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return tmux


@pytest.fixture
def helper_tracker() -> Iterator[dict[str, object]]:
    """tests/procs/tracker_api.py in its own process; it stops when its stdin closes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.procs.tracker_api"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the helper tracker did not start within 60s"
        yield json.loads(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_live_dashboard_in_tmux(helper_tracker: dict[str, object]) -> None:
    tmux = _tmux_or_skip()
    socket_name, session = f"choreo-test-{uuid.uuid4().hex[:8]}", "dashboard"
    url, gids = str(helper_tracker["url"]), helper_tracker["gids"]
    assert isinstance(gids, dict)
    command = f"{sys.executable} -m choreo.cli.main dashboard --tracker {url} --interval 0.5"
    base = [tmux, "-L", socket_name]
    subprocess.run(
        [*base, "new-session", "-d", "-s", session, "-x", "200", "-y", "60", command],
        check=True,
        cwd=ROOT,
        # Our own tmux server, started with this environment minus a fixed size, which
        # rich would obey over the pane's.
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
    )
    try:
        screen = ""
        limit = time.monotonic() + 30
        while time.monotonic() < limit:
            screen = subprocess.run(
                [*base, "capture-pane", "-p", "-t", session],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            if gids["stuck"] in screen and "stalled (2)" in screen:
                break
            time.sleep(0.2)
        assert "stalled (2)" in screen, screen
        assert "STUCK (1)" in screen
        assert gids["running"] in screen
        assert gids["compensating"] in screen
        assert "1        1          1             1            1      5" in screen
        first = screen
        time.sleep(1.5)  # a few refreshes later the view is redrawn in place, not appended
        screen = subprocess.run(
            [*base, "capture-pane", "-p", "-t", session], check=True, capture_output=True, text=True
        ).stdout
        assert screen.count("choreo dashboard") == 1 == first.count("choreo dashboard")
        assert screen.count("stalled (2)") == 1
    finally:
        subprocess.run([*base, "kill-session", "-t", session], check=False)
