"""
No contagion, no leaks: what goes wrong on one connection stays there, and
sessions that end leave nothing behind.  (A client reset mid-message is in
L{tests.test_loopback}.)
"""

from __future__ import annotations

import gc
import types
import weakref

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from caretproto.rules import GREETING
from caretproto.server import CaretFactory, CaretProtocol
from tests.rawclient import connect, serve, settle


class Fault(Exception):
    """Raised on purpose by L{FaultyProtocol}."""


class FaultyProtocol(CaretProtocol):
    """A session with a bug: a read containing C{!} raises."""

    def dataReceived(self, data: bytes) -> None:
        if b"!" in data:
            raise Fault("a deliberate bug")
        super().dataReceived(data)


def leaked(built: list[weakref.ref[CaretProtocol]]) -> list[CaretProtocol]:
    """
    The sessions in C{built} that are still alive, other than in the log's
    history: until logging begins (as under pytest, not under twistd or
    trial) Twisted keeps recent log events, and each names its source.
    """
    gc.collect()
    found = []
    for ref in built:
        session = ref()
        if session is None:
            continue
        holders = gc.get_referrers(session)
        if not all(
            isLogRecord(holder) or isinstance(holder, types.FrameType)
            for holder in holders
        ):
            found.append(session)
        del session, holders
    return found


def isLogRecord(holder: object) -> bool:
    """
    Whether C{holder} is part of a kept log event: the event itself, its
    L{Logger} or that logger's attribute dictionary.  Python 3.11 keeps an
    object's attributes inline, so the session's referrer is the L{Logger};
    Python 3.10 keeps them in a separate C{__dict__}, which is the referrer.
    """
    if isinstance(holder, Logger):
        return True
    if not isinstance(holder, dict):
        return False
    return "log_namespace" in holder or any(
        isinstance(owner, Logger) and vars(owner) is holder
        for owner in gc.get_referrers(holder)
    )


class RecordingFactory(CaretFactory):
    """Keeps a weak reference to every session it builds."""

    def __init__(self) -> None:
        super().__init__()
        self.built: list[weakref.ref[CaretProtocol]] = []

    def buildProtocol(self, addr: IAddress) -> CaretProtocol | None:
        session = super().buildProtocol(addr)
        assert session is not None
        self.built.append(weakref.ref(session))
        return session


class IsolationTests(TestCase):
    timeout = 60

    async def test_exception_drops_only_its_own_connection(self) -> None:
        factory = CaretFactory()
        factory.protocol = FaultyProtocol
        port = await serve(self, factory)
        faulty, healthy = await connect(port), await connect(port)
        self.addCleanup(healthy.transport.loseConnection)  # type: ignore[union-attr]
        await healthy.receivedAtLeast(len(GREETING))
        healthy.transport.write(b"^ab")  # type: ignore[union-attr]
        await healthy.receivedAtLeast(len(GREETING + b"bc"))

        faulty.transport.write(b"^!")  # type: ignore[union-attr]
        await faulty.done
        self.assertEqual(len(self.flushLoggedErrors(Fault)), 1)

        healthy.transport.write(b"c$^d")  # type: ignore[union-attr]
        await healthy.receivedAtLeast(len(GREETING + b"bcde"))
        self.assertEqual(bytes(healthy.received), GREETING + b"bcde")
        self.assertEqual(len(factory.sessions), 1)

    async def test_sessions_that_end_leave_nothing_behind(self) -> None:
        factory = RecordingFactory()
        factory.idleTimeout = 60.0
        factory.maxPerPeer = 1000
        port = await serve(self, factory)
        for _ in range(200):
            client = await connect(port)
            await client.receivedAtLeast(len(GREETING))
            client.transport.loseConnection()  # type: ignore[union-attr]
            await client.done
        await settle(lambda: not factory.sessions)
        self.assertEqual(factory.connectionsByPeer, {})
        del client
        self.assertEqual(len(factory.built), 200)
        self.assertEqual(leaked(factory.built), [])
