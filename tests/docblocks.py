"""
The commands that README.rst and the pages of docs/ show, read from the
files themselves so that the tests run them as written.

A command is a line of a C{.. code-block:: console} block that starts with
C{$ }; the lines after it, up to the next command or the end of the block,
are what it prints.  Plain C{::} blocks are not read: they hold output,
configuration, or commands shown for their shape rather than run.

Not a reStructuredText parser: it knows section titles (a line underlined
with C{=}, C{-} or C{~}) and the console directive, which is all the pages
use.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent

_UNDERLINE = re.compile(r"^([=\-~])\1{2,}$")


class Command(NamedTuple):
    """A command of a console block, and what the page says it prints."""

    line: str
    output: list[str]


def section(name: str, title: str) -> list[str]:
    """
    The lines of the section C{title} of the file C{name} (relative to the
    repository), up to the next title at the same or a higher level.
    """
    lines = (REPO / name).read_text().splitlines()
    levels: list[str] = []
    start = level = None
    for number, line in enumerate(lines[1:], 1):
        match = _UNDERLINE.match(line)
        if not match or not lines[number - 1].strip():
            continue
        mark = match[1]
        if mark not in levels:
            levels.append(mark)
        if start is None:
            if lines[number - 1].strip() == title:
                start, level = number + 1, levels.index(mark)
        elif levels.index(mark) <= level:
            return lines[start : number - 1]
    if start is None:
        raise LookupError(f"{name} has no section {title!r}")
    return lines[start:]


def consoleCommands(name: str, title: str) -> list[Command]:
    """Every command of the console blocks in section C{title} of C{name}."""
    commands: list[Command] = []
    inBlock = False
    for line in section(name, title):
        if line.strip() == ".. code-block:: console":
            inBlock = True
        elif inBlock and line.strip() and not line.startswith(" "):
            inBlock = False
        elif inBlock and line.strip().startswith("$ "):
            commands.append(Command(line.strip()[2:], []))
        elif inBlock and commands and line.strip():
            commands[-1].output.append(line.strip())
    return commands


def literalLines(name: str, title: str) -> list[str]:
    """The indented lines of the section C{title} of C{name}, stripped."""
    return [line.strip() for line in section(name, title) if line.startswith("    ")]


def inVirtualEnvironment(command: str, binaries: str) -> str:
    """
    C{command} with the quick start's C{.venv/bin/} replaced by
    C{binaries}, the folder of the programs of the environment running the
    tests.
    """
    return command.replace(".venv/bin/", f"{binaries}/")


def withPorts(command: str, ports: dict[int, int]) -> str:
    """C{command} with each documented port number replaced as C{ports} says."""
    return re.sub(
        r"\b(\d{4,5})\b",
        lambda match: str(ports.get(int(match[1]), match[1])),
        command,
    )


def serverArguments(command: str) -> tuple[list[str], int]:
    """
    A documented server command, split into arguments, with its C{--port}
    changed to an ephemeral port on loopback (tests never listen on a fixed
    port); and the port number the page gave.
    """
    words = shlex.split(command)
    at = words.index("--port") + 1
    documented = int(words[at])
    words[at] = "tcp:0:interface=127.0.0.1"
    return words, documented
