"""
caretproto: a Twisted server, client and load generator for the caret
protocol.

The rules live in L{caretproto.rules}; L{caretproto.server.CaretProtocol} and
L{caretproto.server.CaretFactory} are the server, importable from here too;
L{caretproto.tap} is the twistd plugin's command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caretproto.server import CaretFactory, CaretProtocol

__all__ = ["CaretFactory", "CaretProtocol"]


def __getattr__(name: str) -> Any:
    # The server is imported when asked for, not with the package: the
    # client and the load generator import caretproto.* without loading it.
    if name in __all__:
        from caretproto import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
