"""Every command in README.md and docs/*.md works as written on a fresh clone after `make run` or `make test`.

Commands come from fenced shell blocks (sh, bash, console, and lines of unlabelled blocks that start
with a command this module knows) and from inline code that names a make target or a python module.
Each is checked without doing its work: `make -n TARGET`; `MODULE --help`, which must name every
`--option` the doc passes; a script that exists and is executable; a `python3 -c` one-liner, run as
written. Commands that need a cluster, docker, the network or a running service are skipped by name
(SKIPPED_TOOLS), never silently.
"""

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stack import REPO
from web.keys import hash_api_key

DOC_FILES = ["README.md", *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md"))]

SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
# In an unlabelled block (diagrams, file trees) only lines that start like this are commands.
COMMAND_PREFIXES = ("make ", "python -m ", ".venv/bin/python -m ", "python3 -m ", "scripts/")
# Inline code counts as a command when it starts like this; other inline code is prose.
INLINE_PREFIXES = ("make ", "python -m ", ".venv/bin/python -m ", "python3 -m ")
INTERPRETERS = {"python", "python3", ".venv/bin/python"}
# A command a reader pastes runs the project's code with the venv's python: Debian has no `python`,
# and the system python3 lacks the packages. Only `-c` one-liners that need no package may use python3.
VENV_PYTHON = ".venv/bin/python"

# Tools whose commands need what a test run does not have; their commands are skipped, with the reason.
SKIPPED_TOOLS = {
    "kubectl": "needs a Kubernetes cluster",
    "minikube": "needs minikube and a container runtime",
    "helm": "needs a Kubernetes cluster and the network",
    "docker": "needs a docker daemon and the network for base images",
    "az": "needs an Azure subscription",
    "curl": "needs a running service (make run)",
    "k6": "needs k6 and a running service",
}

HELP_TIMEOUT_S = 60
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass
class DocCommand:
    """A command as a doc writes it, with where it is written."""

    text: str
    fenced: bool
    places: list[str] = field(default_factory=list)


def fenced_blocks(markdown: str):
    """(language, first line number, lines) of each fenced block, indented ones (in list items) included."""
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^\s*```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        language = opening.group(1)
        start = index + 1
        index = start
        while index < len(lines) and not re.match(r"^\s*```\s*$", lines[index]):
            index += 1
        yield language, start + 1, lines[start:index]
        index += 1


def block_commands(language: str, lines: list[str]):
    """(line offset, command) of the commands in one fenced block."""
    joined: list[tuple[int, str]] = []
    pending, pending_at = "", 0
    for offset, line in enumerate(lines):
        if not pending:
            pending_at = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((pending_at, pending + line))
        pending = ""
    for offset, line in joined:
        stripped = line.strip()
        if language == "console":
            if stripped.startswith("$ "):
                yield offset, stripped[2:]
        elif language in SHELL_LANGUAGES:
            if stripped and not stripped.startswith("#"):
                yield offset, stripped
        elif language == "" and stripped.startswith(COMMAND_PREFIXES):
            yield offset, stripped


def doc_commands(root: Path, files: list[str]) -> dict[str, DocCommand]:
    """Every command in ``files`` under ``root``, keyed by its text."""
    found: dict[str, DocCommand] = {}

    def add(text: str, fenced: bool, place: str) -> None:
        try:  # one spelling per command, comments dropped
            text = shlex.join(shlex.split(text, comments=True))
        except ValueError:  # unbalanced quotes: kept as written, and check_command fails on it
            text = " ".join(text.split())
        entry = found.setdefault(text, DocCommand(text, fenced))
        entry.fenced |= fenced
        entry.places.append(place)

    for name in files:
        markdown = (root / name).read_text()
        for language, first_line, lines in fenced_blocks(markdown):
            for offset, command in block_commands(language, lines):
                add(command, True, f"{name}:{first_line + offset}")
        prose = re.sub(r"^\s*```\w*\s*$.*?^\s*```\s*$", "", markdown, flags=re.MULTILINE | re.DOTALL)
        for span in re.findall(r"`([^`]+)`", prose):
            if span.startswith(INLINE_PREFIXES):
                add(span, False, f"{name} (inline)")
    return found


def split_commands(text: str) -> list[list[str]]:
    """The simple commands of a command line, each without its leading VAR=value assignments."""
    tokens = shlex.split(text, comments=True)
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            while current and ENV_ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    return commands


def run(args: list[str], timeout: float = HELP_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@functools.cache
def module_help(module: str) -> subprocess.CompletedProcess:
    """``python -m module --help``, run once per module."""
    return run([sys.executable, "-m", module, "--help"])


def check_module(module: str, arguments: list[str]) -> None:
    """The module answers --help and accepts every option the doc passes."""
    result = module_help(module)
    assert result.returncode == 0, f"python -m {module} --help exited {result.returncode}:\n{result.stderr[-2000:]}"
    for option in (argument.split("=", 1)[0] for argument in arguments if argument.startswith("--")):
        assert re.search(rf"{re.escape(option)}\b", result.stdout), f"python -m {module} --help does not list {option}"


def check_python(args: list[str], fenced: bool) -> None:
    interpreter, rest = args[0], args[1:]
    if rest[:1] == ["-m"] and len(rest) >= 2:
        if fenced:
            assert interpreter == VENV_PYTHON, f"write {VENV_PYTHON} -m {rest[1]}: `{interpreter}` lacks the project's packages"
        check_module(rest[1], rest[2:])
    elif rest[:1] == ["-c"] and len(rest) >= 2:
        executable = sys.executable if interpreter == VENV_PYTHON else interpreter
        result = run([executable, *rest])
        assert result.returncode == 0, f"{shlex.join(args)} exited {result.returncode}:\n{result.stderr[-2000:]}"
    else:
        pytest.fail(f"no check for this python command: {shlex.join(args)}")


def check_make(args: list[str]) -> None:
    result = run(["make", "-n", *args[1:]])
    assert result.returncode == 0, f"make -n {shlex.join(args[1:])} exited {result.returncode}:\n{result.stderr[-2000:]}"


def check_script(args: list[str]) -> None:
    script = REPO / args[0]
    assert script.is_file(), f"{args[0]} does not exist"
    assert os.access(script, os.X_OK), f"{args[0]} is not executable"


def check_command(command: DocCommand) -> None:
    """Check each simple command of ``command``; skip when one needs a tool from SKIPPED_TOOLS."""
    for args in split_commands(command.text):
        tool = args[0]
        if tool in SKIPPED_TOOLS:
            pytest.skip(f"{tool}: {SKIPPED_TOOLS[tool]}")
        if tool == "make":
            check_make(args)
        elif tool in INTERPRETERS:
            check_python(args, command.fenced)
        elif tool.startswith("scripts/"):
            check_script(args)
        else:
            pytest.fail(f"no check for `{tool}` (in {command.places[0]}): add one here, or the tool to SKIPPED_TOOLS")


COMMANDS = doc_commands(REPO, DOC_FILES)


@pytest.mark.parametrize("command", COMMANDS.values(), ids=[f"{c.places[0]} {c.text[:80]}" for c in COMMANDS.values()])
def test_documented_command_works_as_written(command):
    check_command(command)


def test_every_doc_was_searched_and_the_main_commands_were_found():
    assert "docs/deployment.md" in DOC_FILES and "docs/model.md" in DOC_FILES
    for expected in ("make run", "make test", "make export-onnx"):
        assert expected in COMMANDS, f"{expected} not found: the extraction is broken"


def test_the_api_key_digest_one_liner_matches_the_service():
    (digest_command,) = [text for text in COMMANDS if "hashlib" in text]
    args = shlex.split(digest_command)
    result = run(args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hash_api_key(args[-1])


@pytest.mark.parametrize(
    "bogus",
    [
        "make no-such-target",
        ".venv/bin/python -m no_such_module --data x",
        ".venv/bin/python -m bench.run --no-such-option 1",
        "python -m bench.run --data x",
        "scripts/no-such-script.sh",
        "frobnicate --now",
    ],
)
def test_the_checks_catch_a_command_that_does_not_work(tmp_path, bogus):
    (tmp_path / "page.md").write_text(f"Some prose.\n\n```bash\n{bogus}\n```\n")
    (command,) = doc_commands(tmp_path, ["page.md"]).values()
    with pytest.raises(pytest.fail.Exception if bogus.startswith("frobnicate") else AssertionError):
        check_command(command)
