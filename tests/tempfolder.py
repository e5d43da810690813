"""
Temporary files for tests, outside the repository.

Not L{TestCase.mktemp}: its paths are relative to the working directory,
which under pytest is the repository itself, and they can be too long for a
UNIX socket (108 bytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import TestCase


def tempFolder(testCase: TestCase) -> str:
    """A fresh, absolute, short temporary folder, removed when C{testCase} ends."""
    folder = tempfile.mkdtemp(prefix="caret-")
    testCase.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


def shortTempPath(testCase: TestCase, name: str) -> str:
    """A path named C{name} in a fresh L{tempFolder}; nothing is there yet."""
    return os.path.join(tempFolder(testCase), name)
