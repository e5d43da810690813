"""
The caret server a user of plain asyncio would write: an C{asyncio.Protocol}
with the rules inline, C{writelines}, no idle timeout.  On the default event
loop, or on uvloop's with C{--uvloop}.

It shares no code with caretproto on purpose: benchmarks/compare.py sets
caretproto beside the alternative a user has, not beside caretproto's own
rule core on another loop.  It is a yardstick, not part of the package.

    python benchmarks/servers/asyncio_server.py [PORT] [--uvloop]
"""

from __future__ import annotations

import asyncio
import sys

BACKLOG = 4096
SUCCESSOR = bytes(range(1, 256)) + b"\x00"


class Caret(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inMessage = False
        transport.write(b"*")

    def data_received(self, data: bytes) -> None:
        # The rules of docs/protocol.rst: '^' opens a message, '$' closes
        # it, each byte inside answered with its successor.
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
            self.transport.writelines(replies)

    # Flow control: stop reading while replies back up.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> None:
        # Returning None closes the transport once owed replies are sent.
        return None


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0
    server = await asyncio.get_running_loop().create_server(
        Caret, "127.0.0.1", port, backlog=BACKLOG
    )
    # The line caretproto.listening reads, as caret says it.
    print(f"caret listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}")
    sys.stdout.flush()
    await server.serve_forever()


if "--uvloop" in sys.argv:
    import uvloop

    uvloop.run(main())
else:
    asyncio.run(main())
