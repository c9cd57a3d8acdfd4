"""Every code block of README.md and docs/*.md does what it says, as written.

``python`` blocks run in order, each file's in one namespace, then every ``test_*``
coroutine function they defined is awaited with the pytest plugin's fixtures, on the
memory transport. Just before a block, ``<!-- choreo: after README.md -->`` starts it
from README's namespace, and ``<!-- choreo: skip-run (reason) -->`` skips it for the
reason given. ``bash``/``sh`` blocks are checked, not run: a ``choreo`` line must parse
with the command's own parser, a ``scripts/`` path must be an executable file, ``python
-m X`` must name an importable module. (docs/testing.md says the same to readers.)
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import inspect
import io
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from choreo.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*choreo:\s*(?P<verb>[\w-]+)\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    directives: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        directives: dict[str, str] = {}
        above = index - 1
        while above >= 0 and (found := DIRECTIVE.match(lines[above])):
            directives[found["verb"]] = found["arg"]
            above -= 1
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        yield Block(path, index + 1, opening[1], "\n".join(lines[index + 1 : end]), directives)
        index = end + 1


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.language == "python"]


async def run_blocks(path: Path, namespace: dict[str, Any]) -> list[str]:
    """Run a file's python blocks in ``namespace``; the blocks skipped, with reasons."""
    skipped = []
    for block in python_blocks(path):
        if "skip-run" in block.directives:
            reason = block.directives["skip-run"].strip("() ")
            assert reason, f"{block.where}: skip-run needs a (reason)"
            skipped.append(f"{block.where}: {reason}")
            continue
        if "after" in block.directives:
            namespace.update(await readme_namespace(ROOT / block.directives["after"]))
        code = compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result
    return skipped


async def readme_namespace(path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
    await run_blocks(path, namespace)
    return namespace


def _docs_with_python() -> list[Path]:
    return [path for path in DOCS if python_blocks(path)]


@pytest.mark.parametrize("path", _docs_with_python(), ids=lambda p: p.name)
async def test_python_blocks_run(
    path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The docs' tests run on memory even when this suite is pointed at a real broker.
    monkeypatch.setenv("CHOREO_TEST_BROKER", "memory://")
    monkeypatch.setenv("CHOREO_TEST_STORE", "memory://")
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
    skipped = await run_blocks(path, namespace)
    ran = 0
    for name, test in list(namespace.items()):
        if name.startswith("test_") and inspect.iscoroutinefunction(test):
            fixtures = {p: request.getfixturevalue(p) for p in inspect.signature(test).parameters}
            await asyncio.wait_for(test(**fixtures), 120)
            ran += 1
    if path.name == "testing.md":
        assert ran == 5, "docs/testing.md's tests were not all found"
    print(f"{path.name}: {ran} tests run; skipped blocks: {skipped or 'none'}")


def _commands(block: Block) -> Iterator[list[str]]:
    for raw in block.code.replace("\\\n", " ").splitlines():  # continued lines joined
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        command: list[str] = []
        target = False  # the next word is a redirection's file
        for word in [*shlex.split(line), ";"]:
            if target:
                target = False
            elif re.fullmatch(r"\d?(>>?|<)", word):
                target = True
            elif word in ("|", "||", "&&", ";", "&"):  # one command per pipeline stage
                while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                    command = command[1:]  # VAR=value before the command
                if command:
                    yield command
                command = []
            elif not re.match(r"\d?[<>]", word):  # redirections are the shell's
                command.append(word)


def _check_command(words: list[str]) -> str:
    """What is wrong with a documented command line, or "" (unchecked kinds pass)."""
    program = words[0]
    if program == "choreo" or program.endswith("/bin/choreo"):
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                build_parser().parse_args(words[1:])
        except SystemExit as exc:
            if exc.code not in (0, None):
                return f"`{shlex.join(words)}` does not parse: {err.getvalue().strip()}"
        return ""
    if program.startswith("scripts/"):
        script = ROOT / program
        if not (script.is_file() and os.access(script, os.X_OK)):
            return f"{program} is not an executable file"
        return ""
    if program.endswith("python") and words[1:2] == ["-m"]:
        module = words[2]
        if importlib.util.find_spec(module) is None:
            return f"no module {module}"
    return ""


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_shell_blocks_name_real_commands(path: Path) -> None:
    problems = [
        f"{block.where}: {problem}"
        for block in blocks(path)
        if block.language in ("bash", "sh", "shell") and "skip-run" not in block.directives
        for words in _commands(block)
        if (problem := _check_command(words))
    ]
    assert problems == []


def test_the_checks_catch_what_they_should() -> None:
    """The checker itself: a bad option, a missing script, an unknown module."""
    assert "does not parse" in _check_command(["choreo", "sagas", "list", "--no-such-option"])
    assert "not an executable" in _check_command(["scripts/no-such.sh"])
    assert "no module" in _check_command([".venv/bin/python", "-m", "no_such_module_here"])
    assert _check_command(["choreo", "saga", "show", "GID"]) == ""
    continued = Block(ROOT, 1, "sh", "choreo sagas list \\\n    --no-such-option", {})
    assert list(_commands(continued)) == [["choreo", "sagas", "list", "--no-such-option"]]
    piped = Block(ROOT, 1, "sh", "X=1 choreo sagas list --json 2>/dev/null | jq . > o", {})
    assert list(_commands(piped)) == [["choreo", "sagas", "list", "--json"], ["jq", "."]]
