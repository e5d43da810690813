"""
Tests for L{caretproto.openfiles}: raising the open-files limit, on fakes of
C{getrlimit} and C{setrlimit} so that no test changes this process's limits.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

from twisted.trial.unittest import TestCase

from caretproto.openfiles import OPEN_MAX, OpenFilesLimitError, raiseOpenFilesLimit

INFINITY = resource.RLIM_INFINITY


def limits(
    soft: int, hard: int, refused: tuple[int, ...] = ()
) -> tuple[
    list[tuple[int, int]],
    Callable[[int], tuple[int, int]],
    Callable[[int, tuple[int, int]], None],
]:
    """
    Fakes of C{getrlimit} and C{setrlimit} for limits C{soft} and C{hard};
    C{setrlimit} refuses the soft limits in C{refused} as the system would.
    """
    raised: list[tuple[int, int]] = []

    def setrlimit(which: int, new: tuple[int, int]) -> None:
        if new[0] in refused:
            raise ValueError("not allowed to raise maximum limit")
        raised.append(new)

    return raised, lambda which: (soft, hard), setrlimit


class RaiseOpenFilesLimitTests(TestCase):
    def test_a_soft_limit_high_enough_is_left_alone(self) -> None:
        raised, get, set_ = limits(20000, 30000)
        self.assertEqual(raiseOpenFilesLimit(10064, "x", get, set_), (20000, 20000))
        self.assertEqual(raised, [])

    def test_a_low_soft_limit_is_raised_to_the_hard_limit(self) -> None:
        raised, get, set_ = limits(1024, 524288)
        self.assertEqual(raiseOpenFilesLimit(10064, "x", get, set_), (1024, 524288))
        self.assertEqual(raised, [(524288, 524288)])

    def test_without_a_need_the_soft_limit_is_raised_to_the_hard_limit(self) -> None:
        raised, get, set_ = limits(1024, 4096)
        self.assertEqual(raiseOpenFilesLimit(None, "x", get, set_), (1024, 4096))
        self.assertEqual(raised, [(4096, 4096)])

    def test_a_soft_limit_at_the_hard_limit_is_left_alone(self) -> None:
        raised, get, set_ = limits(4096, 4096)
        self.assertEqual(raiseOpenFilesLimit(None, "x", get, set_), (4096, 4096))
        self.assertEqual(raised, [])

    def test_an_unlimited_hard_limit_lets_the_soft_limit_be_unlimited(self) -> None:
        raised, get, set_ = limits(1024, INFINITY)
        self.assertEqual(raiseOpenFilesLimit(10064, "x", get, set_), (1024, INFINITY))
        self.assertEqual(raised, [(INFINITY, INFINITY)])

    def test_an_unlimited_soft_limit_refused_falls_back_to_open_max(self) -> None:
        raised, get, set_ = limits(256, INFINITY, refused=(INFINITY,))
        self.assertEqual(raiseOpenFilesLimit(None, "x", get, set_), (256, OPEN_MAX))
        self.assertEqual(raised, [(OPEN_MAX, INFINITY)])

    def test_the_fallback_is_what_is_needed_when_that_is_more(self) -> None:
        raised, get, set_ = limits(256, INFINITY, refused=(INFINITY,))
        raiseOpenFilesLimit(50000, "x", get, set_)
        self.assertEqual(raised, [(50000, INFINITY)])

    def test_a_hard_limit_too_low_fails_naming_the_limit_and_the_fix(self) -> None:
        raised, get, set_ = limits(1024, 4096)
        error = self.assertRaises(
            OpenFilesLimitError, raiseOpenFilesLimit, 10064, "caret-x", get, set_
        )
        self.assertIn("RLIMIT_NOFILE", str(error))
        self.assertIn("is 4096", str(error))
        self.assertIn("'ulimit -n 10064' in the shell that runs caret-x", str(error))
        self.assertEqual(raised, [])

    def test_a_soft_limit_at_a_hard_limit_too_low_fails_too(self) -> None:
        raised, get, set_ = limits(4096, 4096)
        self.assertRaises(
            OpenFilesLimitError, raiseOpenFilesLimit, 10064, "x", get, set_
        )
        self.assertEqual(raised, [])

    def test_a_refused_raise_fails_saying_the_limit_stays(self) -> None:
        raised, get, set_ = limits(1024, 4096, refused=(4096,))
        error = self.assertRaises(
            OpenFilesLimitError, raiseOpenFilesLimit, None, "x", get, set_
        )
        self.assertIn("stays at 1024", str(error))
        self.assertIn("not allowed to raise maximum limit", str(error))
        self.assertEqual(raised, [])
