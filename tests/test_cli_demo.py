"""The CLI against the embedded demo: ``choreo demo --serve`` runs its batch, prints the
summary, then serves its tracker's state API (ops routes included) until SIGINT; every
read command and an admin action run against it, ``--json`` included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from choreo import ConfigurationError, open_store
from choreo.local import pdeathsig_preexec
from tests.cli_support import api, at, choreo
from tests.procs.tracker_api import Served

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent
ORDERS = 12
URL_LINE = "choreo: demo tracker's state API on "
TOKEN_LINE = "choreo: state API token (generated): "


@pytest.fixture(scope="module")
def demo() -> Iterator[Served]:
    """``choreo demo --serve`` in a subprocess; ``gids`` maps each status to one saga."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "choreo.cli.main", "demo", "--orders", str(ORDERS),
         "--no-table", "--serve", "127.0.0.1:0"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=pdeathsig_preexec(),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        before: list[str] = []
        for line in proc.stdout:  # the summary, then the URL once it serves
            before.append(line)
            if line.startswith(URL_LINE):
                break
        else:
            raise AssertionError(f"demo exited with {proc.wait()}:\n{''.join(before)}")
        assert "every saga ended and the books balance" in "".join(before)
        url = line.removeprefix(URL_LINE).split()[0]
        token_line = proc.stdout.readline()  # the demo's API needs the token it generated
        assert token_line.startswith(TOKEN_LINE), token_line
        token = token_line.removeprefix(TOKEN_LINE).strip()
        served = Served(url, {}, token)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            api(Served(url, {}), "/sagas")
        for item in api(served, f"/sagas?limit={ORDERS}")["items"]:
            served.gids.setdefault(item["status"], item["gid"])
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, rest
    assert rest.splitlines()[-1] == "choreo: demo stopped"


def test_sagas_list(capsys: pytest.CaptureFixture[str], demo: Served) -> None:
    code, out, err = choreo(capsys, *at(demo, "sagas", "list"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["GID", "SAGA", "STATUS", "AGE", "WAITING", "ON"]
    rows = [line.split() for line in lines[1:-1]]
    assert sorted(row[0] for row in rows) == [f"order-{n:03d}" for n in range(1, ORDERS + 1)]
    assert {row[1] for row in rows} == {"order"}
    assert {row[2] for row in rows} == {"COMPLETED", "COMPENSATED"}
    assert lines[-1] == f"{ORDERS} of {ORDERS} saga(s)"

    code, out, _ = choreo(capsys, *at(demo, "sagas", "list", "--json"))
    page = json.loads(out)
    assert page == api(demo, "/sagas?limit=50&offset=0")
    assert page["total"] == ORDERS
    code, out, _ = choreo(capsys, *at(demo, "sagas", "list", "--state", "completed", "--json"))
    completed = json.loads(out)["items"]
    assert completed
    assert {item["status"] for item in completed} == {"COMPLETED"}
    assert {item["steps"]["shipping"] for item in completed} == {"DONE"}


def test_saga_show_and_why(capsys: pytest.CaptureFixture[str], demo: Served) -> None:
    gid = demo.gids["COMPENSATED"]
    state = api(demo, f"/sagas/{gid}")
    code, out, _ = choreo(capsys, *at(demo, "saga", "show", gid))
    assert code == 0
    assert out.startswith(f"saga order  {gid}\nstatus    COMPENSATED  ({state['reason']})\n")
    steps = out.split("\nsteps\n")[1].split("\n\ntimeline\n")[0].splitlines()
    assert [line.split()[0] for line in steps[1:]] == list(state["steps"])
    timeline = out.split("\ntimeline\n")[1].splitlines()
    assert len(timeline) == 1 + len(state["timeline"])
    assert timeline[1].split()[1:4] == ["orders", "OrderPlaced", "stock"]
    assert any("saga compensated" in line for line in timeline)
    _, out, _ = choreo(capsys, *at(demo, "saga", "show", gid, "--json"))
    assert json.loads(out) == state

    code, out, _ = choreo(capsys, *at(demo, "saga", "why", gid))
    assert code == 0
    assert out.splitlines()[:2] == [f"saga order  {gid}", "COMPENSATED: nothing to wait for"]
    _, out, _ = choreo(capsys, *at(demo, "saga", "why", gid, "--json"))
    why = json.loads(out)
    assert (why["gid"], why["status"], why["waiting"], why["dead_letters"]) == (
        gid,
        "COMPENSATED",
        [],
        [],
    )
    assert why["contract_known"] is True

    code, out, err = choreo(capsys, *at(demo, "saga", "why", "order-999"))
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == "choreo: error: no saga with gid 'order-999'"


def test_dashboard_once(capsys: pytest.CaptureFixture[str], demo: Served) -> None:
    code, out, err = choreo(capsys, *at(demo, "dashboard", "--once"))
    assert (code, err) == (0, "")
    assert f"choreo dashboard  {demo.url}" in out
    by_status = api(demo, "/counts")["by_status"]
    counts = [str(by_status.get(s, 0)) for s in ("RUNNING", "COMPLETED", "COMPENSATING")]
    counts += [str(by_status.get(s, 0)) for s in ("COMPENSATED", "STUCK")]
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith("RUNNING"))
    values = out.splitlines()[out.splitlines().index(row) + 1].strip("│ ").split()
    assert values == [*counts, str(ORDERS), "-"]
    assert "stalled (0)" in out
    assert "STUCK (0)" in out
    assert "│ order │ stock    │    12 │" in out  # every order reached the stock step


def test_dlq_list(capsys: pytest.CaptureFixture[str], demo: Served) -> None:
    code, out, _ = choreo(capsys, *at(demo, "dlq", "list"))
    assert (code, out) == (0, "0 dead letter(s)\n")
    _, out, _ = choreo(capsys, *at(demo, "dlq", "list", "--json"))
    assert json.loads(out) == {"items": []}


def test_admin_action_goes_to_the_tracker(capsys: pytest.CaptureFixture[str], demo: Served) -> None:
    """Every demo saga has ended, so the tracker refuses (409) and nothing is recorded."""
    gid = demo.gids["COMPLETED"]
    before = api(demo, f"/sagas/{gid}")
    code, out, err = choreo(
        capsys, *at(demo, "saga", "compensate", gid, "--yes", "--actor", "t", "--note", "n")
    )
    assert code == 2
    assert out.splitlines()[0] == f"saga order {gid} is COMPLETED"
    assert err.splitlines() == [
        "choreo: error: not sent: only a RUNNING saga can be compensated; this one is COMPLETED",
        "  hint: `choreo saga why GID` shows its state",
    ]
    code, _, err = choreo(capsys, *at(demo, "saga", "resolve", gid, "--note", "x", "--yes"))
    assert code == 2
    assert "only a STUCK saga can be resolved; this one is COMPLETED" in err
    assert api(demo, f"/sagas/{gid}") == before


def test_serve_needs_host_and_port(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = choreo(capsys, "demo", "--serve", "8088")
    assert (code, out) == (2, "")
    assert err == (
        "choreo: error: --serve '8088' is not HOST:PORT\n  hint: e.g. --serve 127.0.0.1:8088\n"
    )


def test_serve_open_only_on_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    """``--no-auth`` beyond loopback is refused before the demo runs anything."""
    code, out, err = choreo(capsys, "demo", "--serve", "0.0.0.0:0", "--no-auth")
    assert (code, out) == (2, "")
    assert err.startswith("choreo: error: --no-auth is refused on 0.0.0.0")
    code, _, err = choreo(capsys, "demo", "--serve", "127.0.0.1:0", "--token", "two words")
    assert code == 2
    assert "visible ASCII" in err


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_redis_password_never_printed(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    """The demo's banner names the Redis URL without its password (this server takes
    any: its default user has none), and so do the URL errors."""
    host = redis_url.split("://", 1)[1].split("/", 1)[0]
    secret_url = f"redis://:s3cret-pw@{host}/0"
    code, out, err = choreo(
        capsys, "demo", "--orders", "1", "--timeout", "10", "--no-table", "--store", secret_url
    )
    assert code == 0, err
    assert f"orders on memory:// / redis://***@{host}/0" in out
    assert "s3cret-pw" not in out + err
    with pytest.raises(ConfigurationError) as caught:
        open_store("rediss+bad://:s3cret-pw@h:1/0")
    assert "s3cret-pw" not in str(caught.value)
