"""
Tests for L{caretproto.processlines}: a child's output, split into lines of
text per descriptor, however its bytes are cut into reads.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from caretproto.processlines import LineProcessProtocol


class Lines(LineProcessProtocol):
    """Records every line it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[int, str]] = []

    def lineReceived(self, childFD: int, line: str) -> None:
        self.lines.append((childFD, line))


class LineProcessProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.protocol = Lines()

    def test_each_whole_line_is_handed_over_without_its_newline(self) -> None:
        self.protocol.childDataReceived(1, b"one\ntwo\n\nthree")
        self.assertEqual(self.protocol.lines, [(1, "one"), (1, "two"), (1, "")])

    def test_a_line_cut_between_reads_is_handed_over_whole(self) -> None:
        for byte in b"caret listening on 127.0.0.1:9090\n":
            self.protocol.childDataReceived(1, bytes([byte]))
        self.assertEqual(
            self.protocol.lines, [(1, "caret listening on 127.0.0.1:9090")]
        )

    def test_a_character_cut_between_reads_is_decoded_whole(self) -> None:
        encoded = "caf\u00e9 \u2014 done\n".encode()
        for byte in encoded:
            self.protocol.childDataReceived(2, bytes([byte]))
        self.assertEqual(self.protocol.lines, [(2, "caf\u00e9 \u2014 done")])

    def test_bytes_that_are_not_utf8_are_replaced_not_an_error(self) -> None:
        self.protocol.childDataReceived(1, b"bad \xff byte\n")
        self.assertEqual(self.protocol.lines, [(1, "bad \ufffd byte")])

    def test_each_descriptor_is_split_on_its_own(self) -> None:
        self.protocol.childDataReceived(1, b"out: half")
        self.protocol.childDataReceived(2, b"err: whole\n")
        self.protocol.childDataReceived(1, b" and half\n")
        self.assertEqual(
            self.protocol.lines, [(2, "err: whole"), (1, "out: half and half")]
        )

    def test_a_last_line_without_newline_comes_when_its_descriptor_closes(
        self,
    ) -> None:
        self.protocol.childDataReceived(1, b"done\nno newline")
        self.protocol.childDataReceived(2, b"traceback \xe2\x80")
        self.protocol.childConnectionLost(0)
        self.assertEqual(self.protocol.lines, [(1, "done")])
        self.protocol.childConnectionLost(1)
        self.protocol.childConnectionLost(2)
        self.assertEqual(
            self.protocol.lines,
            [(1, "done"), (1, "no newline"), (2, "traceback \ufffd")],
        )

    def test_a_descriptor_closed_after_a_whole_line_adds_nothing(self) -> None:
        self.protocol.childDataReceived(1, b"done\n")
        self.protocol.childConnectionLost(1)
        self.assertEqual(self.protocol.lines, [(1, "done")])
