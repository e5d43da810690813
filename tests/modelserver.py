"""
Caret servers whose replies the tests know, for the tests of programs that
check replies themselves (caret-bench, the reference session).

Those programs take the replies they expect from L{caretproto.rules}, as the
server does: one definition of the rules, many users.  Against the real server
alone, then, a wrong rule would be one that both sides agree on, and the test
would pass.  So a test here either

 - serves the real server through a L{TappedFactory}, which keeps the first
   bytes each connection received and sent, and checks them against
   L{tests.model} (L{TappedFactory.assertAnsweredAsTheModel}); or
 - serves L{ModelAnswers}, the real session with its replies taken from
   L{tests.model} instead, when it breaks them on purpose: what is right and
   what is wrong in them is then the test's to say.

A tapped session writes through its transport's C{write}, Twisted's own way:
L{caretproto.writenow} finds no socket under the tap.  Not for the server's
own tests, which check its replies against the model directly
(tests/test_protocol.py and the rest).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ITransport

from caretproto.server import CaretFactory, CaretProtocol
from tests.model import reference

GREETING = b"*"
"""The greeting of docs/protocol.rst, written out."""

TAPPED_BYTES = 64 * 1024
"""
How many bytes of each connection, each way, a tap keeps: enough for many
replies, few enough for the per-byte model to check at once.
"""


class Tap:
    """The first L{TAPPED_BYTES} of one connection, each way."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.sent = bytearray()

    def keepReceived(self, data: bytes) -> None:
        self.received += data[: TAPPED_BYTES - len(self.received)]

    def keepSent(self, data: bytes) -> None:
        self.sent += data[: TAPPED_BYTES - len(self.sent)]


class _TappedTransport:
    """A session's transport, keeping what the session writes."""

    def __init__(self, transport: ITransport, tap: Tap) -> None:
        self._transport = transport
        self._tap = tap

    def write(self, data: bytes) -> None:
        self._tap.keepSent(data)
        self._transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        for piece in data:
            self._tap.keepSent(piece)
        self._transport.writeSequence(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TappedProtocol(CaretProtocol):
    """The real session, its first bytes each way kept in its factory's taps."""

    factory: TappedFactory

    def makeConnection(self, transport: Any) -> None:
        self.tap = Tap()
        self.factory.taps.append(self.tap)
        super().makeConnection(_TappedTransport(transport, self.tap))

    def dataReceived(self, data: bytes) -> None:
        self.tap.keepReceived(data)
        super().dataReceived(data)


class TappedFactory(CaretFactory):
    """
    A L{CaretFactory} whose sessions keep their first bytes.

    @ivar taps: one L{Tap} a connection, in the order they came.
    """

    protocol = TappedProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taps: list[Tap] = []

    def assertAnsweredAsTheModel(self) -> int:
        """
        Fail unless every greeted connection's server sent the greeting and
        then exactly the replies L{tests.model} gives for what it received;
        return how many reply bytes were compared, so that a caller can tell
        that some were.

        Where a tap was full, the comparison stops there, and only there:
        the server's first L{TAPPED_BYTES} sent must be the model's for what
        was received, and the model's replies to the first L{TAPPED_BYTES}
        received must all have been sent.  A reply missing at the end, or
        one too many, fails as a wrong byte does.
        """
        compared = 0
        for number, tap in enumerate(self.taps, 1):
            if not tap.sent:
                # Never greeted (a server that keeps it waiting): it owes
                # nothing, whatever the client sent.
                continue
            sent = bytes(tap.sent)
            owed = GREETING + reference(bytes(tap.received)).replies
            if len(tap.received) >= TAPPED_BYTES:
                # The replies to bytes past the tap are not known here.
                sent = sent[: len(owed)]
            if len(tap.sent) >= TAPPED_BYTES:
                # Nor what the server sent past its tap.
                owed = owed[: len(sent)]
            if sent != owed:
                common = min(len(sent), len(owed))
                at = next((i for i in range(common) if sent[i] != owed[i]), common)
                raise AssertionError(
                    f"connection {number}: the server sent {len(sent)} bytes, "
                    f"the model owes {len(owed)}; from byte {at}, the server "
                    f"sent {sent[at : at + 40]!r}, the model owes "
                    f"{owed[at : at + 40]!r}"
                )
            compared += len(sent) - len(GREETING)
        return compared


class ModelAnswers(CaretProtocol):
    """
    The real session, its replies computed by L{tests.model}, not by
    L{caretproto.rules}: the base of broken servers, whose replies a test
    knows to be right up to where it breaks them.  No flow control: these
    serve small loads only.
    """

    inMessage = False

    def dataReceived(self, data: bytes) -> None:
        outcome = reference(data, self.inMessage)
        self.inMessage = outcome.inMessage
        if outcome.replies:
            self.transport.write(outcome.replies)
