"""
caretproto's tests, for pytest and trial alike.

Hypothesis runs without per-example deadlines: CI machines are shared and
noisy, and a slow example is not a wrong one.

Every program the tests start (C{twistd}, C{caret-client}, C{caret-bench}
and the workers they start in turn) imports the same C{caretproto} as the
tests themselves: the folder holding the imported package leads the
children's C{PYTHONPATH}.  Otherwise, after a plain (not editable) install,
the tests would import the clone and the children the installed copy, and a
broken clone would still pass every test that runs a child.
"""

import os
from pathlib import Path

from hypothesis import settings

import caretproto

settings.register_profile("caret", deadline=None)
settings.load_profile("caret")

_underTest = str(Path(caretproto.__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_underTest, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)


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
