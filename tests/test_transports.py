# -*- test-case-name: tests.test_transports -*-
"""
The transports a caret session runs on provide what
L{caretproto.server.ISessionTransport} says a session needs of them.  The
interface is an annotation that no Twisted transport declares, so it is held
to its word here: each of its bases is verified on a real transport of each
kind C{--port} offers (TCP, UNIX, TLS, and the PROXY-protocol wrapper), and
its own method is there too; and so is L{caretproto.bench.ILoadTransport}
on the client transports C{caret-bench} uses.
"""

from __future__ import annotations

import shutil

from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from caretproto.bench import ILoadTransport
from caretproto.server import CaretFactory, CaretProtocol, ISessionTransport
from tests.rawclient import RawClient, settle, startCommand
from tests.tempfolder import shortTempPath, tempFolder
from tests.test_tls import Certificates


class SessionTransportTests(TestCase):
    timeout = 30

    async def sessionOver(
        self, port: str, client: str, first: bytes = b"", load: bool = True
    ) -> None:
        """
        Start C{caret --port PORT}, connect with client endpoint C{client}
        (C{{port}} filled in), send C{first}, and verify the session's
        transport once it is greeted; and, if C{load}, verify the client's
        transport as C{caret-bench}'s connections use theirs.
        """
        caret = startCommand(self, "--port", port, "--trusted-proxy", "127.0.0.1")
        factory: CaretFactory = caret.factory
        number = getattr(caret.ports[0].getHost(), "port", "")
        description = client.format(port=number)
        raw = await connectProtocol(clientFromString(reactor, description), RawClient())
        self.addCleanup(raw.transport.abortConnection)  # type: ignore[union-attr]
        if first:
            raw.transport.write(first)  # type: ignore[union-attr]
        self.assertEqual(await raw.receivedAtLeast(1), b"*")
        await settle(lambda: bool(factory.sessions))
        [session] = factory.sessions
        assert isinstance(session, CaretProtocol)
        transport = session.transport
        for interface in ISessionTransport.__bases__:
            self.assertTrue(verifyObject(interface, transport), interface)
        self.assertTrue(callable(transport.abortConnection))
        if load:
            for interface in ILoadTransport.__bases__:
                self.assertTrue(verifyObject(interface, raw.transport), interface)

    async def test_tcp(self) -> None:
        await self.sessionOver("tcp:0:interface=127.0.0.1", "tcp:127.0.0.1:{port}")

    async def test_unix(self) -> None:
        path = shortTempPath(self, "caret.sock")
        # caret-bench loads over TCP and TLS only.
        await self.sessionOver(f"unix:{path}", f"unix:{path}", load=False)

    async def test_tls(self) -> None:
        certificates = Certificates(self)
        # A tls: endpoint trusts the certificates in a folder: the CA alone.
        ca = tempFolder(self)
        shutil.copy(certificates.ca, ca)
        await self.sessionOver(
            certificates.port(),
            f"tls:127.0.0.1:{{port}}:trustRoots={ca}",
        )

    async def test_behind_the_proxy_protocol(self) -> None:
        await self.sessionOver(
            "haproxy:tcp:0:interface=127.0.0.1",
            "tcp:127.0.0.1:{port}",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 9090\r\n",
        )
