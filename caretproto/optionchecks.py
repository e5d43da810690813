# -*- test-case-name: tests.test_optionchecks -*-
"""
Checks for the values given to the commands' options, shared by every command.

C{twistd caret} parses with C{twisted.python.usage}, C{caret-client} too, and
C{caret-bench} with C{argparse}; a check here raises L{OptionValueError},
which both frameworks report as a usage error with its message, so that a
wrong value is refused in the same words whichever command is given it: the
option's name, the accepted form and an example.

It is not the place for the options themselves (each command's own module
declares those) nor for checks that only one command needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from twisted.python import usage


class OptionValueError(usage.UsageError, argparse.ArgumentTypeError):
    """
    A value an option does not take.  A C{usage.UsageError} for
    C{usage.Options}, an C{ArgumentTypeError} for C{argparse}: both print
    the message and exit with status 2.
    """


def positive(
    name: str, example: str, convert: Callable[[str], float] = int
) -> Callable[[str], float]:
    """
    A check for the option C{--name}: a positive number (C{convert} says
    which kind), or an L{OptionValueError} that names the option and shows
    C{example}.
    """

    def check(value: str) -> float:
        try:
            number = convert(value)
        except ValueError:
            number = -1
        if not number > 0:
            raise OptionValueError(
                f"--{name} takes a positive number, like --{name} {example}; "
                f"got {value!r}"
            )
        return number

    check.__name__ = name
    check.coerceDoc = f"A positive number, like {example}."  # type: ignore[attr-defined]
    return check


OFF = "off"
"""The value that turns a limit off: C{--idle-timeout off}."""


def positiveOrOff(
    name: str, example: str, convert: Callable[[str], float] = int
) -> Callable[[str], float | None]:
    """
    A check for the limit C{--name}: a positive number, or L{OFF} for no
    limit (C{None}); anything else is an L{OptionValueError} that names the
    option and shows C{example} and how to turn the limit off.
    """
    number = positive(name, example, convert)

    def check(value: str) -> float | None:
        if value.strip().lower() == OFF:
            return None
        try:
            return number(value)
        except OptionValueError:
            raise OptionValueError(
                f"--{name} takes a positive number or off, like --{name} "
                f"{example} or --{name} off; got {value!r}"
            ) from None

    check.__name__ = name
    check.coerceDoc = f"A positive number, like {example}, or off."  # type: ignore[attr-defined]
    return check


def tcpPort(value: str) -> int:
    """
    A TCP port number, 1 to 65535, or an L{OptionValueError} saying so.
    """
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise OptionValueError(
            f"PORT must be a TCP port number, like 9090; got {value!r}"
        )
    return int(value)
