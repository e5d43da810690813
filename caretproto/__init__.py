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
    from caretproto.server import CaretFactory as CaretFactory
    from caretproto.server import CaretProtocol as CaretProtocol

# Not __all__: pydoctor would document these two as caretproto's own, and the
# API reference should show them where they live, in caretproto.server.
_FROM_SERVER = frozenset({"CaretFactory", "CaretProtocol"})


def __getattr__(name: str) -> Any:
    # The server is imported when asked for, not with the package: the
    # client and the load generator import caretproto.* without loading it.
    if name in _FROM_SERVER:
        from caretproto import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
