# -*- test-case-name: tests.test_optionchecks -*-
"""
What the three commands (C{twistd caret}, C{caret-client}, C{caret-bench})
share about their options: the checks of the values given to them, the way a
wrong one is reported, and C{--version}.

All three parse with C{twisted.python.usage}.  A check here raises
C{usage.UsageError} with a message that names the option, the accepted form
and an example, so that a wrong value is refused in the same words whichever
command is given it; L{usageFailure} turns such an error into what every
command prints and exits with::

    caret-bench: --connections takes a positive number, like --connections 100; got '0'
    See 'caret-bench --help' for every option.

It is not the place for the options themselves (each command's own module
declares those; L{caretproto.clientoptions} those the two clients share) nor
for checks that only one command needs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from twisted.internet.endpoints import _parse as parseEndpoint
from twisted.python import usage


def positive(
    name: str, example: str, convert: Callable[[str], float] = int
) -> Callable[[str], float]:
    """
    A check for the option C{--name}: a positive number (C{convert} says
    which kind), or a C{usage.UsageError} that names the option and shows
    C{example}.

    @param name: the option's long name, without its C{--}.
    @param example: a good value, for the error message and the help.
    @param convert: what turns the text into a number (C{int}, C{float}); a
        C{ValueError} from it is a usage error.
    @return: the check, as the coerce function of an C{optParameters}
        entry: it returns the number or raises C{usage.UsageError}, and its
        C{coerceDoc} says in C{--help} what it takes.
    """

    def check(value: str) -> float:
        try:
            number = convert(value)
        except ValueError:
            number = -1
        if not number > 0:
            raise usage.UsageError(
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
    limit (C{None}); anything else is a C{usage.UsageError} that names the
    option and shows C{example} and how to turn the limit off.

    @param name: the option's long name, without its C{--}.
    @param example: a good value, for the error message and the help.
    @param convert: what turns the text into a number (C{int}, C{float}).
    @return: the check, as the coerce function of an C{optParameters}
        entry: it returns the number, or C{None} for L{OFF} (in any letter
        case, spaces around it ignored), or raises C{usage.UsageError}.
    """
    number = positive(name, example, convert)

    def check(value: str) -> float | None:
        if value.strip().lower() == OFF:
            return None
        try:
            return number(value)
        except usage.UsageError:
            raise usage.UsageError(
                f"--{name} takes a positive number or off, like --{name} "
                f"{example} or --{name} off; got {value!r}"
            ) from None

    check.__name__ = name
    check.coerceDoc = f"A positive number, like {example}, or off."  # type: ignore[attr-defined]
    return check


def tcpPort(value: str) -> int:
    """
    The C{PORT} argument of the clients: a TCP port number, 1 to 65535, or a
    C{usage.UsageError} saying so.

    @param value: the argument as given.
    @return: the port number.
    @raise usage.UsageError: C{value} is not a number from 1 to 65535.
    """
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise usage.UsageError(
            f"PORT must be a TCP port number, like 9090; got {value!r}"
        )
    return int(value)


# The endpoint types whose descriptions name a TCP port, and which argument
# does when it is given by position (after the type): a server's first, a
# client's second, after the host.
_SERVER_PORT_AT = {"tcp": 0, "tcp6": 0, "ssl": 0}
_CLIENT_PORT_AT = {"tcp": 1, "ssl": 1, "tls": 1}


def endpointPort(
    option: str, description: str, examples: str, *, client: bool = False
) -> None:
    """
    Refuse an endpoint description given to C{option} whose TCP port is not
    a port number: 0 (any free port) to 65535 for a server, 1 to 65535 for a
    client.  Twisted would take C{tcp:99999} and fail only when listening or
    connecting; this says so while the options are read, as a
    C{usage.UsageError} naming the option and showing C{examples}.

    A C{haproxy:} server description is checked as the one it wraps; other
    endpoint types, which have no TCP port (C{unix:}, C{systemd:}) or are
    not known here, are left to Twisted.

    @param option: the option as the error names it (C{--port}).
    @param description: the endpoint description given, or (for a server) a
        bare port number.
    @param examples: good descriptions, for the error message.
    @param client: whether C{description} is a client endpoint's (the port
        after the host, and 0 refused) rather than a server's.
    @raise usage.UsageError: the description's TCP port is not a port
        number; the message names C{option}.
    """
    # A server's bare number is TCP on that port, as --port takes it.
    checked = f"tcp:{description}" if description.isdigit() else description
    _checkPort(option, description, checked, examples, client)


def _checkPort(
    option: str, given: str, description: str, examples: str, client: bool
) -> None:
    kind, _, wrapped = description.partition(":")
    # "haproxy", spelled out: the clients import this module, and must not
    # load caretproto.proxy, which only the server needs.
    if not client and kind == "haproxy":
        _checkPort(option, given, wrapped, examples, client)
        return
    try:
        args, kwargs = parseEndpoint(description)
    except Exception:
        # Twisted says what is wrong with it when it reads it.
        return
    at = (_CLIENT_PORT_AT if client else _SERVER_PORT_AT).get(args[0])
    if at is None:
        return
    port = kwargs.get("port")
    if port is None and len(args) > at + 1:
        port = args[at + 1]
    if port is None:
        return
    lowest, forms = (1, "") if client else (0, "a port number or ")
    if not port.isdigit() or not lowest <= int(port) < 65536:
        raise usage.UsageError(
            f"{option} {given!r}: the port must be a number from {lowest} to "
            f"65535, got {port!r}; use {forms}a Twisted endpoint description, "
            f"like {examples}"
        )


def usageFailure(program: str, error: object) -> SystemExit:
    """
    How C{program} ends on a usage error: one line naming the program and
    saying what is wrong (C{error}'s message, which names the option), one
    saying where the help is, both on standard error, and exit status 1, as
    twistd ends on its own usage errors.

    @param program: the command's name, as its user typed it.
    @param error: what is wrong, usually the C{usage.UsageError} raised.
    @return: the exception for the caller to raise (C{raise
        usageFailure(...) from None}), so that the program's exit is in
        plain sight where it happens.
    """
    return SystemExit(f"{program}: {error}\nSee '{program} --help' for every option.")


def versionText(program: str) -> str:
    """
    What C{program --version} prints: caretproto's version, and Twisted's.

    @param program: the command's name, which the first line starts with.
    @return: two lines, without a final newline; caretproto's version is
        C{(not installed)} when running from a tree that pip has not
        installed.
    """
    from twisted import __version__ as twistedVersion

    try:
        caretVersion = version("caretproto")
    except PackageNotFoundError:
        caretVersion = "(not installed)"
    return f"{program} (caretproto) {caretVersion}\nTwisted {twistedVersion}"


def printVersion(program: str) -> NoReturn:
    """
    C{--version}: print L{versionText} and exit with status 0.

    @param program: the command's name, as L{versionText} takes it.
    @return: does not return.
    @raise SystemExit: always, with status 0, once the version is printed.
    """
    print(versionText(program))
    sys.exit(0)
