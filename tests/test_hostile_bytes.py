"""
Hostile bytes where the parsers are: a bounded, seeded fuzz of one server
listening on a C{haproxy:} endpoint (PROXY protocol headers, version 1 and 2:
truncated, oversized, of the wrong family, garbage, issue 16's table), an
C{ssl:} one (garbage for a ClientHello, a handshake cut half way) and a plain
one (any bytes at all, which the protocol says are valid input).  Meanwhile
reference sessions run on each endpoint.

What must hold: every reference session gets every reply right, the server
still serves afterwards, a plain connection's replies are the model's, so
are those of a proxied one after a valid header however cut, and nothing a
client sent makes the server log a traceback or an error, or reaches the log
raw.  The cases are drawn from a fixed seed, so a failure is repeated by
running the test again; C{CARET_FUZZ_SEED} draws others.
"""

from __future__ import annotations

import os
import random
import re
import ssl
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import TestCase

from caretproto.endpoints import clientEndpoint
from caretproto.referenceclient import REFERENCE_SCRIPT, runSession
from caretproto.rules import GREETING
from tests.model import referenceReplies
from tests.rawclient import RawClient, connect, portNumbers, startCommand
from tests.test_proxyheader import TABLE
from tests.test_tls import Certificates

SEED = int(os.environ.get("CARET_FUZZ_SEED", "13"))
CASES = 120
"""Hostile connections per endpoint; they run a batch at a time."""
BATCH = 20

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_HEADER = b"PROXY TCP4 198.51.100.7 127.0.0.1 4242 9090\r\n"
REFERENCE = b"".join(data for data, _ in REFERENCE_SCRIPT)


def randomBytes(rng: random.Random, most: int = 300) -> bytes:
    return rng.randbytes(rng.randint(0, most))


def v2Header(
    rng: random.Random,
    command: int = 0x21,
    family: int = 0x11,
    body: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """A version 2 header; its length field says C{length}, true or not."""
    if body is None:
        body = randomBytes(rng, 250)
    if length is None:
        length = len(body)
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", length) + body


def proxyHeader(rng: random.Random) -> bytes:
    """A PROXY protocol header gone wrong in one of many ways, or a good one."""
    ipv4 = struct.pack("!4s4sHH", bytes([203, 0, 113, 9]), bytes(4), 4242, 9090)
    ipv6 = bytes(32) + struct.pack("!HH", 4242, 9090)
    choices: list[Callable[[], bytes]] = [
        lambda: rng.choice(list(TABLE.values())),
        lambda: V1_HEADER[: rng.randint(0, len(V1_HEADER) - 1)],
        lambda: b"PROXY TCP4 " + b"1" * rng.randint(100, 3000) + b"\r\n",
        lambda: b"PROXY TCP4 " + randomBytes(rng, 80) + b"\r\n",
        lambda: b"PROXY TCP6 203.0.113.9 127.0.0.1 4242 9090\r\n",
        lambda: b"PROXY TCP4 ::1 ::1 4242 9090\r\n",
        lambda: b"PROXY UDP4 203.0.113.9 127.0.0.1 4242 9090\r\n",
        lambda: b"PROXY TCP4 203.0.113.9 127.0.0.1 99999 -1\r\n",
        lambda: b"PROXY UNKNOWN\r\n",
        lambda: b"PROXY TCP4 203.0.113.9 127.0.0.1 4242 9090\n",
        lambda: b"PROXY\r\n",
        lambda: V1_HEADER.replace(b" ", b"  ", 2),
        lambda: v2Header(rng, body=ipv4)[: rng.randint(0, 27)],
        lambda: v2Header(rng, body=ipv4, length=rng.randint(0, 11)),
        lambda: v2Header(rng, body=ipv4, length=0xFFFF),
        lambda: v2Header(rng, family=0x21, body=ipv4),
        lambda: v2Header(rng, family=0x11, body=ipv6),
        lambda: v2Header(rng, family=0x31, body=randomBytes(rng, 300)),
        lambda: v2Header(rng, family=rng.randrange(256)),
        lambda: v2Header(rng, command=rng.randrange(256), body=ipv4),
        lambda: v2Header(rng, command=0x20, family=0x00, body=b""),
        lambda: v2Header(rng, body=ipv4 + randomBytes(rng, 60)),
        lambda: V2_SIGNATURE[: rng.randint(1, 11)] + randomBytes(rng, 40),
        lambda: randomBytes(rng),
        lambda: V1_HEADER,
    ]
    header = rng.choice(choices)()
    return header + rng.choice([b"", REFERENCE, randomBytes(rng, 50)])


def clientHello() -> bytes:
    """A real TLS ClientHello, as a client's first flight."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tlsOpening(rng: random.Random, hello: bytes) -> bytes:
    """Garbage where a ClientHello should be, or one cut or spoiled."""
    choices: list[Callable[[], bytes]] = [
        lambda: randomBytes(rng),
        lambda: b"\x16\x03\x01" + struct.pack("!H", 0x4000) + randomBytes(rng),
        lambda: b"\x16\x03\x01\x00\x05" + randomBytes(rng, 5),
        lambda: b"\x15\x03\x03\x00\x02\x02\x28",
        lambda: hello[: rng.randint(1, len(hello) - 1)],
        lambda: hello[:5] + randomBytes(rng, len(hello) - 5),
        lambda: hello + randomBytes(rng, 100),
        lambda: REFERENCE,
        lambda: V1_HEADER + hello,
    ]
    return rng.choice(choices)()


def modelReplies(data: bytes) -> bytes:
    """
    What a caret server answers to C{data}: the greeting and the replies, as
    the tests' model (not caretproto's rules, which are under test) has them.
    """
    return GREETING + referenceReplies(data)


def traceback(event: LogEvent) -> str:
    """The traceback an event carries, if any, for a failure message."""
    failure = event.get("log_failure")
    return "" if failure is None else "\n" + failure.getTraceback()


def send(port: int, data: bytes, rng: random.Random) -> Deferred[tuple[bytes, bool]]:
    """The hostile connection L{_send}, as a L{Deferred}."""
    return Deferred.fromCoroutine(_send(port, data, rng))


async def _send(port: int, data: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """
    Connect to C{port}, send C{data} cut into a few reads, then either
    half-close and read everything the server sends until it closes, or
    (one time in five) reset the connection.  Returns what was received and
    whether the connection was half-closed.
    """
    try:
        client: RawClient = await connect(port)
    except ConnectError:
        return b"", False
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 3)))
    await client.sendInReads(
        [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    )
    transport: Any = client.transport
    halfClose = rng.random() >= 0.2
    if client.done.called:
        # The server refused it (a bad PROXY header) before it was done.
        return await client.done, False
    if halfClose:
        transport.loseWriteConnection()
    else:
        transport.abortConnection()
    return await client.done, halfClose


async def rawReference(port: int, prefix: bytes = b"") -> bytes:
    """The reference script, with its pauses, on a raw connection."""
    client: RawClient = await connect(port)
    transport: Any = client.transport
    transport.write(prefix)
    for data, pause in REFERENCE_SCRIPT:
        transport.write(data)
        await deferLater(reactor, pause, lambda: None)
    transport.loseWriteConnection()
    return await client.done


class HostileBytesTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.certificates = Certificates(self)
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        caret = startCommand(
            self,
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--port",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--port",
            self.certificates.port(),
            "--trusted-proxy",
            "127.0.0.1",
        )
        self.plain, self.proxied, self.tls = portNumbers(caret)

    async def reference(self) -> list[bytes]:
        """A reference session on each endpoint, at once: what each received."""
        endpoint = clientEndpoint(
            reactor, "127.0.0.1", self.tls, tls=True, ca=self.certificates.ca
        )
        tls = runSession(reactor, endpoint, "tls", Logger())
        plain, proxied, overTLS = await gatherResults(
            [
                Deferred.fromCoroutine(rawReference(self.plain)),
                Deferred.fromCoroutine(rawReference(self.proxied, V1_HEADER)),
                tls,
            ]
        )
        self.assertIsNone(overTLS.failure, overTLS.detail)
        return [plain, proxied, GREETING + overTLS.received]

    async def fuzz(
        self,
    ) -> tuple[list[tuple[bytes, bytes, bool]], list[tuple[bytes, bytes, bool]]]:
        """
        Every hostile connection, a batch at a time: what each plain one, and
        each proxied one, sent and received, and whether it half-closed.
        """
        rng = random.Random(SEED)
        hello = clientHello()
        cases = [(self.plain, randomBytes(rng, 2000)) for _ in range(CASES)]
        cases += [(self.proxied, proxyHeader(rng)) for _ in range(CASES)]
        cases += [(self.tls, tlsOpening(rng, hello)) for _ in range(CASES)]
        rng.shuffle(cases)
        seen: dict[int, list[tuple[bytes, bytes, bool]]] = {
            self.plain: [],
            self.proxied: [],
            self.tls: [],
        }
        for first in range(0, len(cases), BATCH):
            batch = cases[first : first + BATCH]
            results = await gatherResults(
                [send(port, data, random.Random(rng.random())) for port, data in batch]
            )
            for (port, data), (received, halfClosed) in zip(
                batch, results, strict=True
            ):
                seen[port].append((data, received, halfClosed))
        return seen[self.plain], seen[self.proxied]

    async def test_hostile_bytes_harm_no_one(self) -> None:
        reference = Deferred.fromCoroutine(self.reference())
        plain, proxied = await self.fuzz()
        expected = modelReplies(b"".join(data for data, _ in REFERENCE_SCRIPT))
        self.assertEqual(await reference, [expected] * 3)

        # Any bytes are valid caret input: a plain client that half-closed
        # got exactly the model's replies.
        for sent, received, halfClosed in plain:
            if halfClosed:
                self.assertEqual(received, modelReplies(sent), sent)
        self.assertGreater(sum(halfClosed for _, _, halfClosed in plain), CASES / 2)

        # A valid header, however it was cut into reads, was served: a
        # client that half-closed after it got the model's replies.
        served = [
            (sent, received)
            for sent, received, halfClosed in proxied
            if halfClosed and sent.startswith(V1_HEADER)
        ]
        self.assertGreater(len(served), 0)
        for sent, received in served:
            self.assertEqual(received, modelReplies(sent[len(V1_HEADER) :]), sent)

        # The server still serves, on every endpoint, after all that.
        self.assertEqual(await self.reference(), [expected] * 3)

        complaints = [
            formatEvent(event) + traceback(event)
            for event in self.events
            if "log_failure" in event
            or event.get("log_level") in (LogLevel.error, LogLevel.critical)
        ]
        self.assertEqual(complaints, [])
        # Nothing a client sent reaches the log raw.
        for event in self.events:
            text = formatEvent(event)
            self.assertIsNone(re.search(r"[\x00-\x1f\x7f]", text), text)
        # The hostile connections were seen, and said no more than warnings.
        self.assertTrue(
            any("PROXY protocol header" in formatEvent(e) for e in self.events)
        )


class StalledHandshakeTests(TestCase):
    timeout = 30

    async def test_a_handshake_stopped_half_way_is_ended_by_the_idle_timeout(
        self,
    ) -> None:
        # Under TLS a session starts, and its idle timer with it, before the
        # handshake: a client that stops sending in the middle of it is idle.
        caret = startCommand(
            self, "--port", Certificates(self).port(), "--idle-timeout", "0.2"
        )
        [port] = portNumbers(caret)
        hello = clientHello()
        client: RawClient = await connect(port)
        client.transport.write(hello[: len(hello) // 2])  # type: ignore[union-attr]
        self.assertEqual(await client.done, b"")
        self.assertEqual(caret.factory.sessions, set())
