# -*- test-case-name: tests.test_tcpserver -*-
"""
A lighter transport for each accepted TCP connection.

Twisted's C{twisted.internet.tcp.Server} formats a description of itself for
C{repr} (C{"<CaretProtocol #12 on 9090>"}) when the connection is accepted and
keeps it for the connection's life: a string per connection that is read only
if someone prints the transport.  L{Server} builds it when asked instead,
which matters for a server holding many thousands of mostly idle
connections.  Everything else is Twisted's own transport, unchanged.

L{lighten} makes a listening port build these instead of Twisted's: it
applies to a C{twisted.internet.tcp.Port} whose transport is Twisted's own,
and leaves any other port (UNIX, or one with a transport of its own) alone.

This is not a general-purpose transport: it relies on two things Twisted
does not document, the C{transport} class attribute of
C{twisted.internet.tcp.Port} (the class it builds for each accepted
connection) and C{repstr}, the attribute C{twisted.internet.tcp.Server}
keeps its description in; tests/test_tcpserver.py pins both.
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort


class Server(tcp.Server):
    """
    Twisted's TCP server transport, describing itself only when asked.
    """

    @property
    def repstr(self) -> str:
        """The description C{repr} gives, as Twisted's own transport has it."""
        protocol = getattr(self, "protocol", None)
        # Twisted lets go of the protocol when the connection is lost.
        name = "(lost)" if protocol is None else type(protocol).__name__
        return f"<{name} #{self.sessionno} on {self.server._realPortNumber}>"

    @repstr.setter
    def repstr(self, value: str) -> None:
        # Twisted's __init__ sets it; it is built on demand instead.
        pass


def lighten(port: IListeningPort) -> None:
    """
    Make C{port} give each connection it accepts from now on a L{Server}, if
    it is a TCP port that would give it Twisted's own.

    @param port: a listening port, of any kind.
    """
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = Server
