"""
Real sockets on 127.0.0.1, for the few tests whose subject is the network:
a caret server on an ephemeral port, a L{RawClient} connected to it, and a
way to wait for a state that the network reaches in its own time.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from caretproto.server import CaretFactory
from tests import rawclient
from tests.rawclient import RawClient


async def serve(case: TestCase, factory: CaretFactory) -> IListeningPort:
    """Listen with C{factory} on an ephemeral loopback port until C{case} ends."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    case.addCleanup(port.stopListening)
    return port


async def connect(port: IListeningPort | int) -> RawClient:
    """A L{RawClient} connected to C{port} on 127.0.0.1."""
    number = port if isinstance(port, int) else port.getHost().port  # type: ignore[attr-defined]
    return await rawclient.connect(f"tcp:127.0.0.1:{number}")


async def settle(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """
    Wait until C{condition()} holds, polling: for a state the network
    reaches in its own time (kernel buffers filling), where no event says so.
    """
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, interval)
        waited += interval
