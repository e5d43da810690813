"""
The blocking half of the reference servers: one connection served with
blocking sockets, and the listening socket.  sequential.py, threads.py and
threadpool.py differ only in who calls L{serve} for each accepted connection.

The rules are inline, as a user would write them: no code is shared with
caretproto.
"""

from __future__ import annotations

import socket
import sys

BACKLOG = 4096
"""The same listen queue as caretproto's default."""

SUCCESSOR = bytes(range(1, 256)) + b"\x00"


def replies(inMessage: bool, data: bytes) -> tuple[bool, bytes]:
    """The rules of docs/protocol.rst on one read: the new state, the reply."""
    out = []
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
                out.append(data[pos:].translate(SUCCESSOR))
                break
            out.append(data[pos:stop].translate(SUCCESSOR))
            inMessage, pos = False, stop + 1
    return inMessage, b"".join(out)


def serve(connection: socket.socket) -> None:
    """One caret session, start to end; a client that vanishes ends it."""
    with connection:
        try:
            connection.sendall(b"*")
            inMessage = False
            while data := connection.recv(65536):
                inMessage, reply = replies(inMessage, data)
                if reply:
                    # Blocking: the session stops reading while replies back up.
                    connection.sendall(reply)
        except OSError:
            pass


def listen() -> socket.socket:
    """
    Listen on 127.0.0.1 and the port given as the only argument (0: any
    free one), and say where, as caret does (C{caretproto.listening} reads
    it).
    """
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(BACKLOG)
    print(f"caret listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    return listener
