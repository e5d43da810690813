"""
caretproto's tests, for pytest and trial alike.

Hypothesis runs without per-example deadlines: CI machines are shared and
noisy, and a slow example is not a wrong one.

Every program the tests start (C{twistd}, C{caret-client}, C{caret-bench}
and the workers they start in turn) imports the same C{caretproto} as the
tests themselves: each is given the environment L{childEnvironment} builds,
where the folder holding the imported package leads C{PYTHONPATH}.
Otherwise, after a plain (not editable) install, the tests would import the
clone and the children the installed copy, and a broken clone would still
pass every test that runs a child.  Nothing here changes this process's own
environment: importing the tests has no side effect on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from hypothesis import settings

import caretproto

settings.register_profile("caret", deadline=None)
settings.load_profile("caret")

UNDER_TEST = str(Path(caretproto.__file__).resolve().parent.parent)
"""The folder holding the C{caretproto} that the tests import."""


def childEnvironment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    The environment for a program a test starts: C{base} (by default this
    process's environment), with L{UNDER_TEST} first on C{PYTHONPATH}, so
    that the program, and any it starts with its own environment, imports
    the C{caretproto} under test.
    """
    environment = dict(os.environ if base is None else base)
    rest = environment.get("PYTHONPATH", "").split(os.pathsep)
    environment["PYTHONPATH"] = os.pathsep.join(
        [UNDER_TEST, *(entry for entry in rest if entry and entry != UNDER_TEST)]
    )
    return environment


def inCI() -> bool:
    """
    Whether this is a CI run, where a test that needs an outside program
    (C{haproxy}) must run rather than skip.  C{CI} set to anything but an
    empty string, C{0}, C{false}, C{no} or C{off} means CI.
    """
    return os.environ.get("CI", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
        "off",
    )
