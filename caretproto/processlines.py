# -*- test-case-name: tests.test_processlines -*-
"""
Another program's output, line by line: the one C{ProcessProtocol} that
reads a child process's output as lines of text.

The worker pool reads its workers' logs with it (L{caretproto.workers}),
C{caret-bench} its worker processes' reports (L{caretproto.benchrun}), and
the tests the log of the C{twistd} they start.  Each descriptor the child
writes to (standard output and standard error, and any other) is split on
its own, so that a line the child writes to one is never cut into by the
other; each is decoded as UTF-8 by an incremental decoder, so that a
character whose bytes arrive in two reads is kept whole, and bytes that are
not UTF-8 become U+FFFD rather than an error.

It is not the place for what the lines mean (each user's L{lineReceived}),
nor for writing to the child, which goes through the transport as for any
C{ProcessProtocol}.
"""

from __future__ import annotations

import codecs

from twisted.internet.protocol import ProcessProtocol


class LineProcessProtocol(ProcessProtocol):
    """
    A child process's output as lines: L{lineReceived} is called with each
    line, without its newline, and with the descriptor it came from.  A last
    line with no newline after it is handed over when the child closes that
    descriptor, which the reactor tells before C{processEnded}: by then every
    line has been seen.

    @cvar encoding: how the child's bytes are decoded.
    @cvar delimiter: what ends a line, once decoded.
    """

    encoding = "utf-8"
    delimiter = "\n"

    def __init__(self) -> None:
        """
        Start with no descriptor seen: each gets its decoder and its partial
        line when the child first writes to it.
        """
        self._decoders: dict[int, codecs.IncrementalDecoder] = {}
        self._partial: dict[int, str] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Decode C{data} and call L{lineReceived} with each line it completes;
        the rest, a line not yet ended, waits for the next read from the
        same descriptor.

        @param childFD: the child's descriptor that C{data} came from.
        @param data: bytes the child wrote, as cut by the reactor's reads.
        """
        decoder = self._decoders.get(childFD)
        if decoder is None:
            decoder = self._decoders[childFD] = codecs.getincrementaldecoder(
                self.encoding
            )("replace")
        *lines, self._partial[childFD] = (
            self._partial.get(childFD, "") + decoder.decode(data)
        ).split(self.delimiter)
        for line in lines:
            self.lineReceived(childFD, line)

    def childConnectionLost(self, childFD: int) -> None:
        """
        The child closed C{childFD}: hand over its last line, if the child
        ended it with no newline, and forget the descriptor.

        @param childFD: the child's descriptor that was closed.
        """
        decoder = self._decoders.pop(childFD, None)
        rest = self._partial.pop(childFD, "")
        if decoder is not None:
            rest += decoder.decode(b"", final=True)
        if rest:
            self.lineReceived(childFD, rest)

    def lineReceived(self, childFD: int, line: str) -> None:
        """
        The child wrote C{line} to C{childFD} (1 for its standard output, 2
        for its standard error).  Override this.

        @param childFD: the child's descriptor that the line came from.
        @param line: the line, decoded, without its newline.
        @raise NotImplementedError: always, here; a subclass says what the
            lines mean.
        """
        raise NotImplementedError
