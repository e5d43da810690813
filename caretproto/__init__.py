"""
caretproto: a Twisted server, client and load generator for the caret
protocol.

The rules live in L{caretproto.rules}; the server is
L{caretproto.server.CaretProtocol} and L{caretproto.server.CaretFactory};
L{caretproto.tap} is the twistd plugin's command.  Importing this package
loads none of them: the client and the load generator import
C{caretproto.*} without loading the server.
"""
