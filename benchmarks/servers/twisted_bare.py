"""
The barest Twisted caret server: a C{Protocol} on the epoll reactor, a
C{Factory}, C{listenTCP}, and the same inline rules as asyncio_server.py.
With C{--write-at-once} a reply goes to the socket at once when nothing is
buffered (what asyncio does), else to C{transport.write}; without it, every
reply goes through Twisted's own C{transport.write}.

benchmarks/compare.py runs it beside C{twistd caret} to split what Twisted
costs from what caret's own features cost.  It shares no code with
caretproto on purpose, and is a yardstick, not part of the package.

    python benchmarks/servers/twisted_bare.py [PORT] [--write-at-once]
"""

from __future__ import annotations

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

BACKLOG = 4096
SUCCESSOR = bytes(range(1, 256)) + b"\x00"


class Caret(Protocol):
    inMessage = False

    def connectionMade(self) -> None:
        self.transport.write(b"*")

    def dataReceived(self, data: bytes) -> None:
        replies = []
        inMessage = self.inMessage
        pos, end = 0, len(data)
        while pos < end:
            if not inMessage:
                start = data.find(b"^", pos)
                if start < 0:
                    break
                inMessage, pos = True, start + 1
            else:
                stop = data.find(b"$", pos)
                if stop < 0:
                    replies.append(data[pos:].translate(SUCCESSOR))
                    break
                if stop > pos:
                    replies.append(data[pos:stop].translate(SUCCESSOR))
                inMessage, pos = False, stop + 1
        self.inMessage = inMessage
        if replies:
            self.write(b"".join(replies))

    def write(self, reply: bytes) -> None:
        self.transport.write(reply)


class WriteAtOnce(Caret):
    def write(self, reply: bytes) -> None:
        transport = self.transport
        # Nothing buffered (Twisted keeps a write in dataBuffer, and the rest
        # of a partial send in _tempDataBuffer): send now, as asyncio does,
        # and hand Twisted only what the kernel did not take.
        if (
            transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnecting
            and not transport.dataBuffer
            and not transport._tempDataLen
        ):
            try:
                sent = transport.socket.send(reply)
            except OSError:
                # Full, interrupted or broken: Twisted's own write waits,
                # retries or ends the connection as it always does.
                sent = 0
            reply = reply[sent:]
            if not reply:
                return
        transport.write(reply)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0
    factory = Factory.forProtocol(
        WriteAtOnce if "--write-at-once" in sys.argv else Caret
    )
    listening = reactor.listenTCP(port, factory, backlog=BACKLOG, interface="127.0.0.1")
    print(f"caret listening on 127.0.0.1:{listening.getHost().port}", flush=True)
    reactor.run()


main()
