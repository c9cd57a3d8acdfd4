"""``choreo graph``: the choreography map (text and Mermaid) and its lint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from choreo.graph import build, cycles, lint
from tests import graph_apps
from tests.cli_support import choreo

CLEAN = ("tests.graph_apps:inventory", "tests.graph_apps:payment")
BROKEN = ("tests.graph_apps:echo", "tests.graph_apps:shipping", "tests.graph_apps:inventory")
ROOT = Path(__file__).resolve().parent.parent


def test_text_map(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = choreo(capsys, "graph", *CLEAN)
    assert (code, err) == (0, "")
    assert out.startswith("choreography: 2 service(s), 9 event(s), 1 saga(s)\n")
    assert "  1. stock by inventory: Placed -> Reserved | Rejected; undo Release -> Released" in out
    assert "  Placed -> reserve -> Reserved | Rejected  [stock action]" in out
    assert "  Refund -> refund -> Refunded  [payment compensate]" in out
    assert "  Placed: from outside (saga start) to inventory, tracker" in out
    assert "  Release: from tracker to inventory, tracker" in out
    assert out.endswith("0 error(s), 0 warning(s)\n")


def test_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = choreo(capsys, "graph", *CLEAN, "--format", "mermaid")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "flowchart LR"
    for line in (
        '  s_inventory[["inventory"]]:::service',
        '  e_Placed(["Placed"]):::start',
        '  t_tracker{{"tracker"}}:::tracker',
        '  e_Placed -->|"reserve"| s_inventory',
        '  s_inventory -->|"reserve"| e_Reserved',
        '  t_tracker -.->|"undo stock"| e_Release',
        '  e_Declined -.->|"fails payment"| t_tracker',
    ):
        assert line in lines


def test_lint_gates_on_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = choreo(capsys, "graph", *CLEAN, "--lint")
    assert (code, out) == (0, "0 error(s), 0 warning(s)\n")
    code, out, _ = choreo(capsys, "graph", *BROKEN, "--lint")
    assert code == 1
    assert out.splitlines() == [
        "error: Audited is handled by echo.audit but nothing emits it (annotate the emitting "
        "handler's return type, also for events raised with BusinessFailure, or declare the "
        "saga's contract)",
        "error: event cycle through handlers: Ping -> Pong -> Ping",
        "error: saga 'shipping' step 'ship': service 'shipping' has no handler for its "
        "compensation CancelShipment",
        "warning: Shouted (emitted by echo) is consumed by no handler and no saga contract",
        "warning: saga 'order' step 'payment': service 'payment' was not given, so its "
        "handlers were not checked",
        "warning: saga 'shipping': step 'notify' has no compensation: it cannot be undone",
        "3 error(s), 3 warning(s)",
    ]


def test_warnings_fail_only_when_strict(capsys: pytest.CaptureFixture[str]) -> None:
    apps = ("tests.graph_apps:inventory",)
    code, out, _ = choreo(capsys, "graph", *apps, "--lint")
    assert (code, out.splitlines()[-1]) == (0, "0 error(s), 1 warning(s)")
    code, _, _ = choreo(capsys, "graph", *apps, "--lint", "--strict")
    assert code == 1


def test_without_contracts_an_entry_event_is_only_a_warning() -> None:
    findings = lint(build([graph_apps.echo]))
    assert [f.level for f in findings if "Audited" in f.message] == ["warning"]
    assert cycles(build([graph_apps.echo])) == [["Ping", "Pong", "Ping"]]


def test_contract_only_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = choreo(capsys, "graph", "--contract", "tests.graph_apps:order")
    assert code == 0
    assert "saga order (starts with Placed)" in out
    code, _, err = choreo(capsys, "graph")
    assert (code, err.splitlines()[0]) == (2, "choreo: error: nothing to draw")
    code, _, err = choreo(capsys, "graph", "tests.graph_apps:order")
    assert err.splitlines() == [
        "choreo: error: tests.graph_apps:order is a SagaContract, not a Service",
        "  hint: point at the service object itself",
    ]
    code, _, err = choreo(capsys, "graph", "tests.nope:app")
    assert (code, err.splitlines()[0][:44]) == (2, "choreo: error: cannot import module 'tests.n")
    code, _, err = choreo(capsys, "graph", *CLEAN, "tests.graph_apps:payment")
    assert err.splitlines()[0] == "choreo: error: services given twice: payment"


def test_exit_code_in_a_subprocess() -> None:
    """What CI sees: the exit code of the real command."""
    done = subprocess.run(
        [sys.executable, "-m", "choreo.cli.main", "graph", *BROKEN, "--lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == "3 error(s), 3 warning(s)"
    assert done.stderr == ""


def test_lint_reports_where_compensation_fields_come_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = choreo(capsys, "graph", "--contract", "tests.graph_apps:parcels", "--lint")
    assert code == 0
    assert out.splitlines()[1:] == [
        "warning: saga 'parcels': step 'pack': Unpack takes parcels from its done event "
        "Packed, or from its trigger Pack if it times out; if they mean different things "
        "there, build it with compensate_with=",
        "warning: saga 'parcels': step 'pack': its compensation needs label, which only its "
        "done event Packed carries, not its trigger Pack; if it times out it cannot be "
        "compensated",
        "0 error(s), 3 warning(s)",
    ]
    code, _, _ = choreo(capsys, "graph", "--contract", "tests.graph_apps:parcels", "--lint",
                        "--strict")  # fmt: skip
    assert code == 1
