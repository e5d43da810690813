# -*- test-case-name: tests.test_caretclient,tests.test_commandlines -*-
"""
The options C{caret-client} and C{caret-bench} share: which server to
connect to, and how.

Both take the server in one of two forms, and options before or after it::

    caret-bench [options] HOST PORT [--tls [--ca FILE]]
    caret-bench [options] --endpoint DESCRIPTION

C{HOST PORT} is TCP, or TLS with C{--tls} (L{caretproto.endpoints}, which
resolves HOST once for every connection); C{--endpoint} takes any Twisted
client endpoint description (C{tcp:}, C{unix:}, C{tls:}...), read by
C{clientFromString}.  Both take C{--version}.  A wrong value is a
C{usage.UsageError} naming the option, reported as every command reports one
(L{caretproto.optionchecks.usageFailure}).

It is not the place for either command's own options (C{--connections},
C{--mode}...), declared by L{caretproto.caretclient} and
L{caretproto.benchrun}, nor for the sessions or the load they run.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import usage

from caretproto.endpoints import clientEndpoint, tlsCreator
from caretproto.optionchecks import endpointPort, printVersion, tcpPort

ENDPOINT_EXAMPLES = (
    "tcp:host=127.0.0.1:port=9090, unix:path=/run/caret.sock, tls:example.com:9443"
)
"""Client endpoint descriptions that the help and the errors show."""


def connectTo(
    reactor: Any,
    host: str | None = None,
    port: int | None = None,
    *,
    tls: bool = False,
    ca: str | None = None,
    endpoint: str | None = None,
) -> IStreamClientEndpoint:
    """
    The endpoint that C{HOST PORT [--tls [--ca FILE]]} or C{--endpoint
    DESCRIPTION} names, as L{ClientOptions} took them.

    @param reactor: the reactor the endpoint connects with.
    @param host: the server's name or IP address, without C{endpoint}.
    @param port: the server's TCP port, without C{endpoint}.
    @param tls: whether to speak TLS to C{host} and C{port}.
    @param ca: with C{tls}, the path of a PEM file holding the certificate
        authority to trust instead of the system's.
    @param endpoint: a client endpoint description, instead of C{host} and
        C{port}.
    @return: the endpoint every connection of the command opens (see
        L{caretproto.endpoints.clientEndpoint} for C{host} and C{port}).
    @raise usage.UsageError: the host cannot be resolved, the CA file cannot
        be read, or the description is not a client endpoint; the message
        names the option.
    """
    if endpoint is None:
        assert host is not None and port is not None
        if tls:
            try:
                tlsCreator(host, ca)
            except ValueError as error:
                raise usage.UsageError(f"--ca: {error}") from None
        try:
            return clientEndpoint(reactor, host, port, tls=tls, ca=ca)
        except ValueError as error:
            raise usage.UsageError(f"HOST: {error}") from None
    try:
        return endpoints.clientFromString(reactor, endpoint)
    except Exception as error:
        raise usage.UsageError(
            f"--endpoint {endpoint!r} is not a usable client endpoint "
            f"({error}); use a Twisted endpoint description, like "
            f"{ENDPOINT_EXAMPLES}"
        ) from None


class ClientOptions(usage.Options):
    """
    The server to connect to, as C{caret-client} and C{caret-bench} take
    it: C{self["host"]} and C{self["port"]} (C{None} with C{--endpoint}),
    C{self["tls"]}, C{self["ca"]} and C{self["endpoint"]}; after parsing,
    L{connectTo} is the endpoint they name.

    Options may come before or after C{HOST PORT}, as a person types them
    (C{caret-bench 127.0.0.1 9090 -c 100}); after C{--}, everything is an
    argument.

    @cvar program: the command's name, for C{--version}.
    @cvar optFlags: C{--tls}; a subclass adds its own.
    @cvar optParameters: C{--ca} and C{--endpoint}; a subclass adds its
        own.
    @ivar connectTo: the endpoint the options name, once parsed.
    """

    program = "caret"
    connectTo: IStreamClientEndpoint

    optFlags = [
        [
            "tls",
            None,
            "Speak TLS to HOST PORT; the server's certificate must be valid for HOST.",
        ],
    ]
    optParameters: list[list[Any]] = [
        [
            "ca",
            None,
            None,
            "With --tls: a PEM file of the certificate authority to trust, "
            "instead of those the system trusts.",
        ],
        [
            "endpoint",
            None,
            None,
            "A Twisted client endpoint description to connect to instead of "
            f"HOST PORT, like {ENDPOINT_EXAMPLES}.",
        ],
    ]

    def __init__(self) -> None:
        """
        Options with no server yet: C{self["host"]} and C{self["port"]} are
        C{None} until C{HOST PORT} is parsed.
        """
        super().__init__()
        self["host"] = self["port"] = None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options}, as C{usage.Options.parseOptions} does, but with the
        options allowed after the arguments too.

        @param options: the command line's arguments, without the program's
            name; C{None} for C{sys.argv[1:]}.
        @raise usage.UsageError: an option, or the server, is wrong; the
            message names it.
        """
        super().parseOptions(
            self._optionsFirst(sys.argv[1:] if options is None else options)
        )

    def _optionsFirst(self, options: Sequence[str]) -> list[str]:
        """
        C{options} with every option before the arguments, which
        C{usage.Options} reads with C{getopt}: that stops at the first
        argument, where C{gnu_getopt} reads on.
        """
        try:
            found, arguments = getopt.gnu_getopt(
                list(options), self.shortOpt, self.longOpt
            )
        except getopt.GetoptError:
            # usage.Options reports it, in its own words.
            return list(options)
        ordered: list[str] = []
        for name, value in found:
            if name.startswith("--"):
                takesValue = f"{name[2:]}=" in self.longOpt
                ordered.append(f"{name}={value}" if takesValue else name)
            else:
                takesValue = f"{name[1]}:" in self.shortOpt
                ordered.extend([name, value] if takesValue else [name])
        return [*ordered, "--", *arguments]

    def opt_version(self) -> None:
        """
        Display caretproto's version, and Twisted's, and exit.
        """
        printVersion(self.program)

    def parseArgs(self, *server: str) -> None:
        """
        Take the server as C{HOST PORT}, or none with C{--endpoint}, and
        refuse options that do not go together.

        @param server: the arguments left once the options are read.
        @raise usage.UsageError: C{HOST PORT} and C{--endpoint} are both
            given or neither is, C{PORT} is not a port number, C{--ca} comes
            without C{--tls}, or C{--tls} with C{--endpoint}.
        """
        if self["ca"] is not None and not self["tls"]:
            raise usage.UsageError("--ca FILE is for --tls: give both")
        if self["endpoint"] is not None:
            if server:
                raise usage.UsageError("give either HOST PORT or --endpoint, not both")
            if self["tls"]:
                raise usage.UsageError(
                    "--tls is for HOST PORT; with --endpoint, give a tls: "
                    "description, like tls:example.com:9443:trustRoots=/etc/caret/ca"
                )
            return
        if len(server) != 2:
            raise usage.UsageError(
                "give the server as HOST PORT (like 127.0.0.1 9090) or as "
                f"--endpoint DESCRIPTION (like {ENDPOINT_EXAMPLES}); "
                f"got {' '.join(server) or 'neither'}"
            )
        host, port = server
        self["host"] = host
        self["port"] = tcpPort(port)

    def postOptions(self) -> None:
        """
        Check the port of an C{--endpoint} description and make
        L{connectTo}, the endpoint the options name: any mistake is a usage
        error now, before anything connects.

        @raise usage.UsageError: the C{--endpoint} description's port is
            not a port number, or the endpoint cannot be made (see
            L{caretproto.clientoptions.connectTo}).
        """
        from twisted.internet import reactor

        if self["endpoint"] is not None:
            endpointPort("--endpoint", self["endpoint"], ENDPOINT_EXAMPLES, client=True)
        self.connectTo = connectTo(
            reactor,
            self["host"],
            self["port"],
            tls=self["tls"],
            ca=self["ca"],
            endpoint=self["endpoint"],
        )
