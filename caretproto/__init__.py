"""
caretproto: a Twisted server, client and load generator for the caret
protocol.

The rules live in L{caretproto.rules}; L{CaretProtocol} and L{CaretFactory} are
the server; L{caretproto.tap} is the twistd plugin's command.
"""

from caretproto.server import CaretFactory, CaretProtocol

__all__ = ["CaretFactory", "CaretProtocol"]
