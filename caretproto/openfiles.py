# -*- test-case-name: tests.test_openfiles -*-
"""
Raising this process's open-files limit: the one helper every command uses.

Every connection is a descriptor, and a shell's usual soft limit of 1024
stops a server, C{caret-client} or C{caret-bench} long before the machine
would.  L{raiseOpenFilesLimit} raises the soft limit (C{RLIMIT_NOFILE}) as
far as the hard limit lets it, whatever the platform makes of an unlimited
hard limit, and says plainly when that is not enough.

It is not the place for what a server does when descriptors run out anyway
(that is L{caretproto.capacity}), nor for raising the hard limit, which only
root or the system's configuration can do.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

OPEN_MAX = 10240
"""
macOS refuses a soft limit above this (the kernel's C{OPEN_MAX}) even when the
hard limit is unlimited: the value to fall back to when C{RLIM_INFINITY} is
refused.
"""


class OpenFilesLimitError(OSError):
    """The open-files limit cannot be made as high as needed."""


def raiseOpenFilesLimit(
    needed: int | None = None,
    program: str = "this program",
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> tuple[int, int]:
    """
    Raise the open-files soft limit to the hard limit, if it is lower.

    An unlimited hard limit is tried as unlimited first, then as
    L{OPEN_MAX} (or C{needed}, if higher): Linux accepts the first only up to
    C{fs.nr_open}, macOS never.

    @param needed: the descriptors the caller needs, if it knows; then a soft
        limit already that high is left alone, and a hard limit below it is
        an error at once.
    @param program: the command to name in the error's advice.
    @param getrlimit: C{resource.getrlimit}, or a fake for tests.
    @param setrlimit: C{resource.setrlimit}, or a fake for tests.

    @return: the soft limit before and after.
    @raise OpenFilesLimitError: the hard limit is below C{needed}, or the
        system refused every raise; the message says how to fix it.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft, soft
    if needed is not None and soft >= needed:
        return soft, soft
    if needed is not None and hard != resource.RLIM_INFINITY and hard < needed:
        raise OpenFilesLimitError(
            f"{needed} open files are needed, but the hard limit on open files "
            f"(RLIMIT_NOFILE) is {hard}: raise it (as root, 'ulimit -n {needed}' "
            f"in the shell that runs {program}, or 'nofile' in "
            f"/etc/security/limits.conf) or use fewer connections"
        )
    if soft == hard:
        return soft, soft
    if hard == resource.RLIM_INFINITY:
        targets = [hard, max(OPEN_MAX, needed or 0)]
    else:
        targets = [hard]
    refusal: Exception | None = None
    for target in targets:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as error:
            refusal = error
        else:
            return soft, target
    raise OpenFilesLimitError(
        f"the open-files soft limit (RLIMIT_NOFILE) stays at {soft}: raising it "
        f"to the hard limit failed ({refusal})"
    )
