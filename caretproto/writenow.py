# -*- test-case-name: tests.test_writenow -*-
"""
Write at once: hand a small write to the kernel in the same turn, as asyncio
does, rather than on the reactor's next turn, as Twisted does.

Twisted's socket transports buffer every C{write} and register the socket for
writability, and only send once the reactor says it may: per reply, two
C{epoll_ctl} calls and an extra wake-up.  For caret's one-reply-per-read
traffic that was a large share of the server's cost per round; with this,
C{epoll_ctl} is called once per connection instead of twice per round.  It
sends with the socket's own C{send}, not the transport's C{writeSomeData},
whose slicing and result checks cost more still.  What each was worth, and
the commands to measure it again, are in C{docs/benchmarks.rst} ("History:
what each change was worth when it was made"), not here, where they would
go stale.

L{writeNow} does this for one write, on one connection, and leaves everything
else to Twisted (L{replyNow} is the same for a reply made while Twisted
delivers a read, with fewer checks): it is used by caret's own protocols (the
server's sessions, the client, caret-bench), so other services in the same
process (a web site in the same C{.tac}) keep Twisted's transports exactly as
they are.  What the kernel does not take is given to the transport's own
C{write}, so order, flow control (a streaming producer is paused past the
transport's high-water mark), half-close and the drain on close work as
before.  A send that fails (reset, broken pipe) also hands the data to the
transport's C{write}: the transport then fails the same way on its next write
attempt and ends the connection once, its own way.

It applies to a transport with a plain socket under it (TCP, UNIX; also under
the PROXY-protocol wrapper, which only forwards writes).  Caret passes no file
descriptors over UNIX sockets, which Twisted's own write would send in order
with the bytes.  TLS keeps Twisted's
path: its writes go through OpenSSL, not straight to a socket.

This is not a transport and not a general speed-up of Twisted: it relies on
attributes of C{twisted.internet.abstract.FileDescriptor} and
C{twisted.internet.tcp.Connection} that Twisted does not document (its
buffers and write state), and tests/test_writenow.py pins each of them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper

_forwardingWrite = ProtocolWrapper.write
"""
The write of a wrapper that only forwards to the transport under it (the
PROXY-protocol wrapper's); a wrapper that changes what it writes (TLS,
throttling) overrides it, and is left alone.
"""


def socketTransport(transport: Any) -> Connection | None:
    """
    The socket connection that C{transport}'s writes go to unchanged, or
    C{None} if there is none (TLS, a test's C{StringTransport}).

    @param transport: a connection's transport, perhaps wrapped by
        wrappers that only forward writes (the PROXY-protocol wrapper).
    @return: the TCP or UNIX connection under it, or C{None}.
    """
    while type(transport).write is _forwardingWrite:
        transport = transport.transport
    if isinstance(transport, Connection) and not transport.TLS:
        return transport
    return None


def writeNow(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}: straight to its socket if nothing is
    waiting to be sent before it, the rest (or all of it, if the socket
    takes none) through C{transport.write}.

    It may be called at any time, from any code: it checks the connection's
    state first.  After C{abortConnection} nothing is sent: abort sets only
    C{_aborting} (not C{disconnecting}), and Twisted's own C{write} then
    drops the data with the rest of the buffer.

    @param transport: where the connection's bytes go, as for
        C{transport.write}.
    @param data: the bytes to send, after everything written before.
    """
    connection = socketTransport(transport)
    if (
        connection is None
        or not connection.connected
        or connection.disconnecting
        or connection._aborting
        or connection._writeDisconnecting
        or connection._writeDisconnected
    ):
        transport.write(data)
        return
    replyNow(connection, transport, data)


def replyNow(connection: Connection, transport: ITransport, data: bytes) -> None:
    """
    L{writeNow} for a reply made in C{dataReceived}, on a connection already
    found with L{socketTransport}: what caret's sessions do once per round.

    It checks only what can change between two reads: whether bytes are
    waiting before this reply, and whether TLS has started since.  The rest
    of L{writeNow}'s checks cannot be true while Twisted is delivering what
    it read: it reads only from a connected socket; C{abortConnection}
    replaces the connection's C{doRead} with one that reads nothing; and a
    connection that was closed, or half-closed, after its read was polled
    gets the reply into the kernel before its close, as Twisted's own write
    would have had it sent before the close (and a send after a half-close
    fails, and is handed to C{write}, which drops it).  tests/test_writenow.py
    pins each of these.

    @param connection: the TCP or UNIX connection under C{transport}.
    @param transport: the protocol's transport, over C{connection}.
    @param data: the bytes to send, after everything written before.
    """
    if connection._tempDataLen or connection.dataBuffer or connection.TLS:
        transport.write(data)
        return
    try:
        sent = connection.socket.send(data)
    except OSError:
        # Full (EAGAIN), interrupted, or an error (reset, broken pipe): the
        # transport's own next attempt waits, retries, or meets the same
        # error and ends the connection as it always does, once.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])
