"""
A plain asyncio caret server (asyncio.Protocol, the shape of a Twisted
protocol), on the default event loop, or on uvloop's with --uvloop.
"""

from __future__ import annotations

import asyncio
import sys

from caretproto.rules import GREETING, State, feed

BACKLOG = 4096


class Caret(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.state = State.WAIT_FOR_MSG
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.state, reply, _ = feed(self.state, data)
        if reply:
            self.transport.write(reply)

    # Flow control: stop reading while replies back up, as caretproto does.
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
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if "--uvloop" in sys.argv:
    import uvloop

    uvloop.run(main())
else:
    asyncio.run(main())
