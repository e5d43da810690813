# -*- test-case-name: tests.test_connections -*-
"""
What the server's parts say and know about a connection before it is a
session: how its peer is named in a log line (L{describeAddress}, with
L{escapeForLog} for anything a client chose), the host the per-peer limit
counts (L{peerHost}), the once-per-burst log of refused connections
(L{RefusalLog}), and what a factory needs of whatever accepts its
connections (L{IAcceptor}).

The caret session (L{caretproto.server}), the PROXY-protocol wrapper
(L{caretproto.proxy}), the descriptor guard (L{caretproto.capacity}) and the
listening service (L{caretproto.service}) all use these; none of them is
about the caret protocol, and this module imports none of them.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface


def escapeForLog(text: str, limit: int | None = None) -> str:
    """
    C{text}, safe to put in a log line: a character that is not printable
    (a control character such as CR, LF or ESC, a format character, a
    line or paragraph separator) is written as its Python escape
    (C{\\r}, C{\\x1b}, C{\\u2028}; a byte that was not UTF-8, decoded with
    C{surrogateescape}, as C{\\xff}), and a backslash as two, so that a string a
    client chose can neither start a forged line nor colour a terminal, and
    the escaped form cannot be mistaken for an escape.

    @param text: what a client chose, or may have.
    @param limit: if given, the most characters of C{text} kept; a longer
        one is cut there and ends with an ellipsis.
    @return: the escaped text.
    """
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable() or "\\" in text:
        text = "".join(
            char if char.isprintable() and char != "\\" else _escape(char)
            for char in text
        )
    return text + "\u2026" if cut else text


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not UTF-8, kept by the surrogateescape handler.
        return f"\\x{code - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


def describeAddress(address: IAddress | None) -> str:
    """
    A short, loggable form of a peer address: C{host:port} for IP,
    C{[host]:port} for IPv6, the path (or C{unix}) for a UNIX socket.

    Whatever in it a client may have chosen (a host from a PROXY header, a
    UNIX socket's path) is passed through L{escapeForLog}.

    @param address: an C{IAddress}, or C{None}.
    @return: the text, C{unknown} for C{None}.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        host = escapeForLog(str(host))
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        return escapeForLog(str(name))
    return "unix" if address is not None else "unknown"


def peerHost(address: IAddress | None) -> str | None:
    """
    The host part of an IP peer address, which the per-peer limit counts.

    @param address: a peer's C{IAddress}, or C{None}.
    @return: the host, as the address gives it (not escaped); C{None} for a
        UNIX socket, whose peers have no address to tell apart.
    """
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


class IAcceptor(Interface):
    """
    What a L{caretproto.server.CaretFactory} with a session limit needs of
    whatever accepts its connections: L{caretproto.service.CaretService} is
    one.  Reasons are strings; accepting resumes when every reason given to
    L{pauseAccepting} has been withdrawn.
    """

    def pauseAccepting(reason: str) -> None:
        """
        Leave new clients in the listen backlog, for C{reason}.

        @param reason: why, to be withdrawn with L{resumeAccepting}.
        """

    def resumeAccepting(reason: str) -> None:
        """
        Withdraw C{reason} for not accepting.

        @param reason: a reason given to L{pauseAccepting}.
        """

    def acceptAtMost(count: int) -> None:
        """
        Accept no more than C{count} connections at the next wake-up.

        @param count: how many.
        """


class RefusalLog:
    """
    The log of connections refused for one reason: one line when a host's
    burst of refused connections begins, and one that counts them when it
    ends, after C{quiet} seconds without a refusal.  A client that retries
    in a loop would otherwise write a line per attempt.  Its lines are
    logged with C{logger}, to name whoever refused.

    @ivar began: the format of the first line of a burst; its fields are
        C{host} and those given to L{refused}.
    @ivar ended: the format of the closing line, logged only if the burst
        held more than one refusal; its fields are those of C{began} and
        C{count} and C{duration}.
    @ivar clock: what times the bursts.
    @cvar quiet: seconds without a refusal from a host that end its burst.
    """

    quiet = 5.0
    _log = Logger()

    def __init__(
        self, clock: IReactorTime, began: str, ended: str, logger: Logger | None = None
    ) -> None:
        """
        @param clock: what times the bursts.
        @param began: the format of a burst's first line.
        @param ended: the format of a burst's closing line.
        @param logger: what logs the lines, whose namespace names whoever
            refuses; by default this module's.
        """
        if logger is not None:
            self._log = logger
        self.clock = clock
        self.began = began
        self.ended = ended
        self._bursts: dict[str, _Burst] = {}

    def refused(self, host: str, **fields: object) -> None:
        """
        A connection from C{host} was refused: log it if it begins a burst,
        count it if not.

        @param host: whom the burst is counted for, as it goes into the log
            (escaped by the caller if a client chose it).
        @param fields: more fields for the log event, the first of its
            burst's only.
        """
        now = self.clock.seconds()
        burst = self._bursts.get(host)
        if burst is not None:
            burst.count += 1
            burst.last = now
            burst.quietCall.reset(self.quiet)
            return
        self._log.warn(self.began, host=host, **fields)
        quietCall = self.clock.callLater(self.quiet, self._burstEnded, host)
        self._bursts[host] = _Burst(now, quietCall, fields)

    def _burstEnded(self, host: str) -> None:
        burst = self._bursts.pop(host)
        if burst.count > 1:
            self._log.warn(
                self.ended,
                host=host,
                count=burst.count,
                duration=burst.last - burst.began,
                **burst.fields,
            )

    def flush(self) -> None:
        """End every burst in progress now, logging its count."""
        for host, burst in list(self._bursts.items()):
            burst.quietCall.cancel()
            self._burstEnded(host)


class _Burst:
    """
    Refusals for one host, close together.

    @ivar began: when the first came.
    @ivar last: when the latest came.
    @ivar quietCall: the call that ends the burst, pushed back by each
        refusal.
    @ivar fields: the first refusal's log fields.
    @ivar count: the refusals so far.
    """

    def __init__(
        self, began: float, quietCall: IDelayedCall, fields: dict[str, object]
    ) -> None:
        """
        @param began: when the first refusal came.
        @param quietCall: the call that ends the burst.
        @param fields: the first refusal's log fields.
        """
        self.began = self.last = began
        self.quietCall = quietCall
        self.fields = fields
        self.count = 1
