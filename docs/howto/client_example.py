"""
One request to a caret server with plain Deferreds: connect, wait for the
greeting, ask, close; with a timeout, and every way it can fail.

Run it against a server (the quick start's, on port 9090)::

    .venv/bin/python docs/howto/client_example.py tcp:host=127.0.0.1:port=9090 abc

docs/howto/client.rst explains it; tests/test_howto.py runs it.
"""

import sys

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import react
from twisted.python.failure import Failure

from caretproto.client import (
    CaretClientProtocol,
    ConnectionClosed,
    GreetingError,
    connect,
)


def timedOut(result: object, timeout: float) -> object:
    """
    C{addTimeout}'s C{onTimeoutCancel}: a cancelled step becomes a
    C{TimeoutError}.  Needed for the connecting step: a cancelled connection
    attempt fails with C{ConnectingCancelledError}, which C{addTimeout}'s
    default leaves as it is.
    """
    if isinstance(result, Failure) and result.check(
        CancelledError, ConnectingCancelledError
    ):
        raise TimeoutError(f"nothing for {timeout} seconds")
    return result


def askOnce(
    reactor: IReactorCore, description: str, body: bytes, timeout: float = 10.0
) -> "Deferred[bytes]":
    """
    Send C{^body$} to the server at C{description} and fire with the reply.

    Fails with C{ConnectError} (or a subclass) when no connection is made,
    L{GreetingError} when the server does not greet, L{ConnectionClosed} when
    it closes owing the reply, and C{TimeoutError} when connecting, or the
    greeting and the reply, take more than C{timeout} seconds each.
    """
    clock: IReactorTime = reactor  # type: ignore[assignment]
    connecting = connect(reactor, description)
    connecting.addTimeout(timeout, clock, onTimeoutCancel=timedOut)

    def connected(client: CaretClientProtocol) -> "Deferred[bytes]":
        replying = client.greeted.addCallback(lambda _: client.request(body))
        replying.addTimeout(timeout, clock, onTimeoutCancel=timedOut)

        def done(result: "bytes | Failure") -> "bytes | Failure":
            if isinstance(result, Failure):
                client.abort()  # nothing more is wanted from this server
            else:
                client.close()  # half-close: the protocol's way to end
            return result

        return replying.addBoth(done)

    return connecting.addCallback(connected)


def main(reactor: IReactorCore, description: str, body: str) -> "Deferred[None]":
    def show(reply: bytes) -> None:
        print(reply)

    def explain(failure: Failure) -> None:
        why = failure.trap(ConnectError, GreetingError, ConnectionClosed, TimeoutError)
        print(f"no reply ({why.__name__}): {failure.getErrorMessage()}")
        raise SystemExit(1)

    return askOnce(reactor, description, body.encode()).addCallbacks(show, explain)


if __name__ == "__main__":
    react(main, sys.argv[1:])
