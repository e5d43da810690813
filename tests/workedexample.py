"""
The worked example of docs/protocol.rst, run against a real server by tests whose
subject is something else: TLS, metrics, socket activation.  The answers are
the table of that section, not L{caretproto.rules}, and the client is
L{tests.rawclient.RawClient}, which knows nothing of the protocol.  Beside it,
the reference session's replies, written out, for the tests that run that
session.
"""

from __future__ import annotations

from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint

from tests.rawclient import RawClient

WORKED_EXAMPLE = [
    (b"^abc$de^abte$f", b"bcdbcuf"),
    (b"xyz^123", b"234"),
    (b"25$^ab$abab", b"36bc"),
]
"""Each buffer the client sends, and what the server answers to it."""

WORKED_EXAMPLE_ANSWER = b"*bcdbcuf23436bc"
"""All that the server sends, the greeting included."""

REFERENCE_REPLIES = b"bcdbcuf23436bc1111"
"""
The replies to the reference session (L{caretproto.reference}, the worked
example with C{0000} added to its last message), as docs/client.rst gives
them: written out here, so that the tests that run the session check them
against the specification and not against L{caretproto.rules}, which the
session itself uses.
"""


async def runWorkedExample(endpoint: IStreamClientEndpoint) -> bytes:
    """
    Connect through C{endpoint}, wait for the greeting, send each buffer once
    the previous one is answered, then close; return every byte received.
    Fails with the reason if the connection is lost before its answers.
    """
    client = await connectProtocol(endpoint, RawClient())
    expected = 1
    await client.receivedAtLeast(expected)
    for sent, answered in WORKED_EXAMPLE:
        client.transport.write(sent)  # type: ignore[union-attr]
        expected += len(answered)
        await client.receivedAtLeast(expected)
    # Close entirely, not just the sending side: TLS cannot half-close.
    client.transport.loseConnection()  # type: ignore[union-attr]
    return await client.done
