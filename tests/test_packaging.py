"""A service does not pull in faust: faust-streaming and rocksdict are the ``tracker``
extra, and no module a service imports needs them (only the faust tracker's own modules,
loaded when ``choreo tracker`` runs the faust engine, import them)."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "choreo"
TRACKER_ONLY = {"faust", "mode", "rocksdict"}
# The faust tracker's modules: imported lazily by choreo/cli/tracker.py's faust engine.
FAUST_MODULES = {"faust_app.py", "faust_fetch.py", "faust_io.py", "faust_store.py"}


def test_faust_is_the_tracker_extra() -> None:
    requires = importlib.metadata.requires("choreo") or []
    for name in ("faust-streaming", "rocksdict"):
        lines = [line for line in requires if line.startswith(name)]
        assert lines, f"{name} is not a requirement at all"
        assert all('extra == "tracker"' in line for line in lines), lines


def test_only_the_faust_tracker_imports_faust_at_module_level() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "tracker" and path.name in FAUST_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: lazy imports inside functions are fine
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] in TRACKER_ONLY for name in names):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {names}")
    assert not offenders, offenders


def test_a_service_process_does_not_load_faust() -> None:
    code = (
        "import sys, choreo, choreo.cli.main, choreo.testing, choreo.tracker.memory;"
        "print(sorted(m for m in ('faust', 'mode', 'rocksdict') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
