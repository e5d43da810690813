"""
The blocking half of the reference servers: one connection served with
blocking sockets, and the listening socket.  sequential.py, threads.py and
threadpool.py differ only in who calls L{serve} for each accepted connection.

The rules are L{caretproto.rules.feed}, as in every other server here.
"""

from __future__ import annotations

import socket
import sys

from caretproto.rules import GREETING, State, feed

BACKLOG = 4096
"""The same listen queue as caretproto's default."""


def serve(connection: socket.socket) -> None:
    """One caret session, start to end; a client that vanishes ends it."""
    with connection:
        try:
            connection.sendall(GREETING)
            state = State.WAIT_FOR_MSG
            while data := connection.recv(65536):
                state, reply, _ = feed(state, data)
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
