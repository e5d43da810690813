"""
The client API in a dozen lines: three pipelined requests on one connection.

Run it against a caret server (the quick start's, on port 9090):

    .venv/bin/python examples/client.py [ENDPOINT]

ENDPOINT is any Twisted client endpoint description; the default is
tcp:host=127.0.0.1:port=9090.  The test suite runs this file.
"""

import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from caretproto.client import connect


async def main(reactor, endpoint="tcp:host=127.0.0.1:port=9090"):
    client = await connect(reactor, endpoint)
    await client.greeted  # fails with GreetingError on anything but "*"
    replies = [client.request(body) for body in (b"abc", b"HAL", b"\xff")]
    for reply in replies:  # pipelined; each fires with its own reply
        print(await reply)  # b'bcd', b'IBM', b'\x00'
    client.close()  # half-close: the server sends what it owes, then closes
    await client.closed


react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
