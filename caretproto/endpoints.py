"""
Where the caret commands connect: one client endpoint from a host, a port and
whether to speak TLS.

C{caret-client} and C{caret-bench} both take C{HOST PORT [--tls [--ca FILE]]};
L{clientEndpoint} is what those arguments mean, so that the commands agree.
It is not for servers, which listen on endpoint descriptions (C{--port}), nor
for a client given a whole endpoint description, which Twisted's
C{clientFromString} reads.
"""

from __future__ import annotations

import socket
from typing import Any

from OpenSSL.crypto import Error as OpenSSLError
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
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
    An endpoint that connects to C{host} on C{port}, over TLS if C{tls},
    with C{reactor} (an L{IReactorTCP}).

    C{host} is resolved here, once, and every connection goes to its first
    address: a load generator opening thousands of connections should not
    look the name up for each.  (The lookup blocks: call this before the
    reactor has work to do.)

    Over TLS the server's certificate must be valid for C{host} as given (a
    name or an address) and signed by the certificate authority in the PEM
    file C{ca}, or by one the system trusts when C{ca} is L{None}.

    @raise ValueError: if C{host} cannot be resolved, or C{ca} is given
        without C{tls} or is not a readable PEM certificate; the message says
        which and why.
    """
    if ca is not None and not tls:
        raise ValueError("a CA certificate is only used with TLS")
    trustRoot = None if ca is None else _loadCertificate(ca)
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as error:
        raise ValueError(f"cannot resolve host {host!r}: {error}") from None
    # TCP4ClientEndpoint connects to an IPv6 address as well, given one.
    endpoint = TCP4ClientEndpoint(reactor, str(address), port)
    if not tls:
        return endpoint
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
