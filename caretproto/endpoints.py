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
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
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
    with C{reactor} (an C{IReactorTCP}).

    C{host} is resolved here, once, and every connection goes to its first
    address: a load generator opening thousands of connections should not
    look the name up for each.  (The lookup blocks: call this before the
    reactor has work to do.)

    Over TLS the server's certificate must be valid for C{host} as given (a
    name or an address) and signed by the certificate authority in the PEM
    file C{ca}, or by one the system trusts when C{ca} is C{None}.

    @param reactor: the reactor the endpoint connects with.
    @param host: the server's name or IP address.
    @param port: the server's TCP port.
    @param tls: whether to speak TLS over the connection.
    @param ca: with C{tls}, the path of a PEM file holding the certificate
        authority to trust instead of the system's.
    @return: a TCP endpoint to C{host}'s first address, wrapped in TLS if
        C{tls}.
    @raise ValueError: if C{host} cannot be resolved, or C{ca} is given
        without C{tls} or is not a readable PEM certificate; the message says
        which and why.
    """
    if ca is not None and not tls:
        raise ValueError("a CA certificate is only used with TLS")
    creator = tlsCreator(host, ca) if tls else None
    # TCP4ClientEndpoint connects to an IPv6 address as well, given one.
    endpoint = TCP4ClientEndpoint(reactor, resolve(host, port), port)
    if creator is None:
        return endpoint
    return wrapClientTLS(creator, endpoint)


def resolve(host: str, port: int) -> str:
    """
    The first address of C{host} for a stream connection to C{port}.

    @param host: a name or an IP address (which is its own address).
    @param port: the TCP port the connection is for.
    @return: the address, IPv4 or IPv6, as text.
    @raise ValueError: C{host} cannot be resolved; the message says why.
    """
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as error:
        raise ValueError(f"cannot resolve host {host!r}: {error}") from None
    return str(address)


def tlsCreator(host: str, ca: str | None) -> IOpenSSLClientConnectionCreator:
    """
    TLS client options that check the server's certificate against C{host}
    and trust the certificate authority in the PEM file C{ca} (or, when
    C{None}, the ones the system trusts).

    @param host: the name (or address) the certificate must be valid for.
    @param ca: the path of a PEM certificate, or C{None}.
    @return: the options of Twisted's C{optionsForClientTLS}.
    @raise ValueError: C{ca} is not a readable PEM certificate.
    """
    trustRoot = None if ca is None else _loadCertificate(ca)
    return optionsForClientTLS(host, trustRoot=trustRoot)


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
