"""
Where the caret commands connect: one client endpoint from a host, a port and
whether to speak TLS.

C{caret-client} and C{caret-bench} both take C{HOST PORT [--tls [--ca FILE]]};
L{clientEndpoint} is what those options mean, so that the two agree.  It is
not for servers: a server listens on endpoint descriptions (C{--port}).
"""

from __future__ import annotations

from typing import Any

from OpenSSL.crypto import Error as OpenSSLError
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS


def clientEndpoint(
    reactor: Any,
    host: str,
    port: int,
    *,
    tls: bool = False,
    ca: str | None = None,
) -> IStreamClientEndpoint:
    """
    An endpoint that connects to C{host} on C{port}, over TLS if C{tls}.

    An IP address is connected to directly; a name is resolved on each
    connect (by L{HostnameEndpoint}, which tries every address it resolves
    to).  A benchmark that opens thousands of connections should be given an
    address, so as not to pay for a lookup in the reactor's thread pool per
    connection.

    Over TLS the server's certificate must be valid for C{host} and signed by
    the certificate authority in the PEM file C{ca}, or by one the system
    trusts when C{ca} is L{None}.

    @raise ValueError: if C{ca} is given without C{tls}, or is not a readable
        PEM certificate; the message names the file and says why.
    """
    endpoint: IStreamClientEndpoint
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port)
    else:
        endpoint = HostnameEndpoint(reactor, host, port)
    if not tls:
        if ca is not None:
            raise ValueError("a CA certificate is only used with TLS")
        return endpoint
    trustRoot = None if ca is None else _loadCertificate(ca)
    return wrapClientTLS(optionsForClientTLS(host, trustRoot=trustRoot), endpoint)


def _loadCertificate(path: str) -> Certificate:
    try:
        with open(path, "rb") as pem:
            return Certificate.loadPEM(pem.read())
    except OSError as error:
        raise ValueError(
            f"cannot read the CA certificate {path!r}: {error.strerror}"
        ) from None
    except OpenSSLError:
        raise ValueError(
            f"{path!r} is not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
