# -*- test-case-name: tests.test_listening -*-
"""
Where a started caret server listens, as its log says: the one way for tests
and tools that start C{twistd caret} (or C{twist caret}) to learn its ports.

A server given C{--port tcp:0} listens on a port the system picks, and says
which in one log event per listening port,
L{caretproto.service.LISTENING}, whose C{address} field is the port's
address in the form of L{caretproto.connections.describeAddress}.
Workers' events, relayed by their parent, say it in the same words.
L{listeningIn} finds those lines in a text log (C{twistd}'s or C{twist}'s);
L{waitForListening} waits for them in the log file of a server started with
C{subprocess}.

It is not a way to configure where a server listens (that is C{--port}), nor
a health check: a server that has said it listens may not yet run its
reactor, so a caller that needs it serving waits for a greeting too.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from caretproto.service import LISTENING

_LINE = re.compile(
    re.escape(LISTENING.split("{address}")[0]) + r"(.+?)\s*$", re.MULTILINE
)
_IP = re.compile(r"^(?:\[(?P<ip6>[^\]]+)\]|(?P<ip4>[^:]+)):(?P<port>\d+)$")


@dataclass(frozen=True)
class Listening:
    """
    One listening port a server's log names.

    @ivar address: as logged: C{host:port}, C{[host]:port} or a UNIX path.
    @ivar host: the IP address, or C{None} for a UNIX socket.
    @ivar port: the TCP port, or C{None} for a UNIX socket.
    """

    address: str
    host: str | None = None
    port: int | None = None


def listeningIn(log: str) -> list[Listening]:
    """
    Every port that C{log}, a server's text log so far, says it listens on,
    in the order it says so (a parent with C{--workers} first, then each
    worker).

    @param log: the text of the log, as far as it has been written; a line
        not yet ended is read as it stands.
    @return: one L{Listening} for each port the log names; none if it names
        none yet.
    """
    found = []
    for address in _LINE.findall(log):
        ip = _IP.match(address)
        if ip is None:
            found.append(Listening(address))
        else:
            host = ip.group("ip6") or ip.group("ip4")
            found.append(Listening(address, host, int(ip.group("port"))))
    return found


def waitForListening(
    logFile: Path | str,
    process: subprocess.Popen[bytes] | None = None,
    count: int = 1,
    timeout: float = 30.0,
) -> list[Listening]:
    """
    Wait, blocking, until the log file of a server started with
    C{subprocess} names C{count} listening ports, and return them all.  For
    scripts; a test in the reactor reads the log as it comes instead (see
    C{tests/twistd.py}).

    @param logFile: the server's log file (its C{--logfile}); it need not
        exist yet.
    @param process: the server; if it ends first, fail at once.
    @param count: how many listening ports to wait for: one per C{--port},
        and with C{--workers}, the parent's and each worker's.
    @param timeout: the longest to wait, in seconds.
    @return: every port the log names, C{count} of them or more, as
        L{listeningIn} reads them.
    @raise RuntimeError: the server ended or C{timeout} seconds went by
        first; the message holds its log.
    """
    path = Path(logFile)
    deadline = time.monotonic() + timeout
    log = ""
    while True:
        log = path.read_text(errors="replace") if path.exists() else ""
        found = listeningIn(log)
        if len(found) >= count:
            return found
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the server ended (status {process.returncode}) before "
                f"listening:\n{log}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not listen within {timeout:g}s:\n{log}")
        # A file written by another process gives nothing to wait on but time.
        time.sleep(0.05)
