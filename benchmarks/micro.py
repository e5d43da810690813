"""
Micro-benchmarks of the caret server protocol, no sockets: L{CaretProtocol} on
a L{StringTransport}, beside a naive per-byte implementation (kept here only,
for contrast) and C{bytes.translate} alone, the yardstick of the work that
cannot be avoided.  And what a reactor costs to hand a ready socket to its
transport: one poll of 1,000 ready descriptors (a fake C{epoll}, reads that
do nothing), on Twisted's epoll reactor and on caret's
(L{caretproto.reactor}).

Run them with::

    python -m pytest benchmarks/micro.py

They are not part of C{python -m pytest tests}; nothing here asserts a speed.
Each benchmark records its rate in C{extra_info} (shown with
C{--benchmark-columns} or saved with C{--benchmark-json}) and prints it.
Targets on the project's 2-core machine: 64 KiB reads inside a message at
>= 0.9 GB/s, 16-byte messages at >= 300,000 per second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import epollreactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from caretproto import reactor as caretreactor
from caretproto.proxy import ProxyProtocolFactory, TrustedProxies
from caretproto.rules import MSG_END, MSG_START, State
from caretproto.server import CaretFactory, CaretProtocol

READ_SIZE = 64 * 1024

BODY = bytes(b for b in range(256) if b != MSG_END[0])
"""Every byte a message body may hold."""

READ_INSIDE_MESSAGE = (BODY * (READ_SIZE // len(BODY) + 1))[:READ_SIZE]
"""A 64 KiB read that falls entirely inside a message."""

MESSAGE = MSG_START + b"abcdefghijklmn" + MSG_END
"""A 16-byte message: 14 bytes answered."""

MESSAGES_PER_ROUND = 1000
"""16-byte messages per benchmark round, so the timer's cost is negligible."""

SUCCESSOR = bytes(range(1, 256)) + b"\x00"


class NaiveCaretProtocol(Protocol):
    """
    The caret rules the obvious way: a Python loop over every byte, one
    write per reply byte.  Here only to show what the chunked rules save.
    """

    def connectionMade(self) -> None:
        self.inMessage = False
        self.transport.write(b"*")

    def dataReceived(self, data: bytes) -> None:
        for byte in data:
            if not self.inMessage:
                if byte == 0x5E:
                    self.inMessage = True
            elif byte == 0x24:
                self.inMessage = False
            else:
                self.transport.write(bytes(((byte + 1) % 256,)))


def connected(protocol: Protocol) -> tuple[Protocol, StringTransport]:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    transport.clear()
    return protocol, transport


def caret(idleTimeout: float | None = None) -> tuple[Protocol, StringTransport]:
    factory = CaretFactory(clock=Clock())
    factory.idleTimeout = idleTimeout
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert isinstance(protocol, CaretProtocol)
    return connected(protocol)


def record(benchmark: Any, name: str, units: float, scale: float = 1.0) -> None:
    """Record and print a rate: C{units} per round over the median round."""
    rate = units / benchmark.stats.stats.median / scale
    benchmark.extra_info[name] = round(rate, 3)
    print(f"\n{benchmark.name}: {rate:,.3f} {name}")


def reads(protocol: Protocol, transport: StringTransport, data: bytes) -> Callable:
    def read() -> None:
        protocol.dataReceived(data)
        transport.clear()

    return read


def messages(protocol: Protocol, transport: StringTransport) -> Callable:
    def receive() -> None:
        dataReceived = protocol.dataReceived
        for _ in range(MESSAGES_PER_ROUND):
            dataReceived(MESSAGE)
        transport.clear()

    return receive


def test_translate_alone_64k(benchmark: Any) -> None:
    benchmark(READ_INSIDE_MESSAGE.translate, SUCCESSOR)
    record(benchmark, "GB/s", READ_SIZE, 1e9)


def test_caret_64k_reads_inside_a_message(benchmark: Any) -> None:
    protocol, transport = caret()
    protocol.dataReceived(MSG_START)
    benchmark(reads(protocol, transport, READ_INSIDE_MESSAGE))
    assert protocol.state is State.IN_MSG
    record(benchmark, "GB/s", READ_SIZE, 1e9)


def test_naive_64k_reads_inside_a_message(benchmark: Any) -> None:
    protocol, transport = connected(NaiveCaretProtocol())
    protocol.dataReceived(MSG_START)
    benchmark.pedantic(
        reads(protocol, transport, READ_INSIDE_MESSAGE), rounds=20, iterations=1
    )
    record(benchmark, "GB/s", READ_SIZE, 1e9)


def test_caret_16_byte_messages_one_per_read(benchmark: Any) -> None:
    protocol, transport = caret()
    benchmark(messages(protocol, transport))
    assert protocol.state is State.WAIT_FOR_MSG
    record(benchmark, "messages/s", MESSAGES_PER_ROUND)


def test_caret_16_byte_messages_with_idle_timeout(benchmark: Any) -> None:
    # twistd caret --idle-timeout 300: every read notes its time for the idle timer.
    protocol, transport = caret(idleTimeout=300)
    benchmark(messages(protocol, transport))
    record(benchmark, "messages/s", MESSAGES_PER_ROUND)


def test_caret_16_byte_messages_behind_the_proxy_protocol(benchmark: Any) -> None:
    # twistd caret --port haproxy:...: every read passes the PROXY-protocol
    # wrapper first; beside test_caret_16_byte_messages_one_per_read, its cost.
    balancer = IPv4Address("TCP", "10.0.0.5", 51000)
    caret = CaretFactory(clock=Clock())
    factory = ProxyProtocolFactory(
        caret,
        clock=Clock(),
        headerTimeout=10,
        trusted=TrustedProxies.fromStrings(["10.0.0.0/24"]),
    )
    wrapper = factory.buildProtocol(balancer)
    assert wrapper is not None
    transport = StringTransport(peerAddress=balancer)
    wrapper.makeConnection(transport)
    wrapper.dataReceived(b"PROXY TCP4 203.0.113.7 10.0.0.9 4242 9090\r\n")
    assert len(caret.sessions) == 1
    benchmark(messages(wrapper, transport))
    record(benchmark, "messages/s", MESSAGES_PER_ROUND)


def test_naive_16_byte_messages_one_per_read(benchmark: Any) -> None:
    protocol, transport = connected(NaiveCaretProtocol())
    benchmark(messages(protocol, transport))
    record(benchmark, "messages/s", MESSAGES_PER_ROUND)


def test_caret_16_byte_messages_4096_per_64k_read(benchmark: Any) -> None:
    protocol, transport = caret()
    data = MESSAGE * (READ_SIZE // len(MESSAGE))
    benchmark(reads(protocol, transport, data))
    record(benchmark, "messages/s", READ_SIZE // len(MESSAGE))


READY = 1000
"""Descriptors ready in each poll of the dispatch benchmarks."""


class ReadyPoller:
    """An C{epoll} with every descriptor ready for reading, every time."""

    def __init__(self, fds: list[int]) -> None:
        self.events = [(fd, epollreactor.EPOLLIN) for fd in fds]

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        return self.events


class IdleTransport:
    """What a reactor asks of a TCP transport, with a read that reads nothing."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.logstr = f"CaretProtocol,{fd},127.0.0.1"

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return self.logstr

    def doRead(self) -> None:
        return None


def dispatch(benchmark: Any, kind: type[epollreactor.EPollReactor]) -> None:
    """One poll of L{READY} ready descriptors, on a reactor of C{kind}."""
    reactor = kind()
    poller = reactor._poller
    fds = list(range(1000, 1000 + READY))
    for fd in fds:
        reactor._selectables[fd] = IdleTransport(fd)
    reactor._poller = ReadyPoller(fds)
    try:
        benchmark(reactor.doPoll, 0)
    finally:
        reactor._poller = poller
        for fd in fds:
            del reactor._selectables[fd]
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        poller.close()
    record(benchmark, "events/s", READY)


def test_dispatch_1000_ready_on_twisted_s_epoll_reactor(benchmark: Any) -> None:
    dispatch(benchmark, epollreactor.EPollReactor)


def test_dispatch_1000_ready_on_caret_epoll(benchmark: Any) -> None:
    dispatch(benchmark, caretreactor.EPollReactor)


if __name__ == "__main__":
    # A pytest module, not a script: say how to run it, whatever the arguments.
    raise SystemExit(
        "usage: python -m pytest benchmarks/micro.py [pytest options]\n\n"
        "Micro-benchmarks of the caret server protocol (pytest-benchmark, in the "
        "bench extra)."
    )
