"""
The fleet of C{benchmarks/fleet.py}, small: three C{--workers 2} caret servers
behind a real HAProxy, clients running reference sessions throughout, through a
rolling restart (nothing lost) and a SIGKILL (only the killed server's sessions
lost).  The figures the script writes are checked here, not its own verdict
alone.  docs/fleet.rst describes the procedure.

It needs the C{haproxy} program (Debian's package; C{.ci/run} installs it).
Without it the test is skipped, except in CI, where it must run.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from twisted.trial.unittest import TestCase

from tests import inCI
from tests.tempfolder import shortTempPath
from tests.test_haproxy import HAPROXY
from tests.twistd import Twistd
from tests.workedexample import REFERENCE_REPLIES

FLEET = str(Path(__file__).parent.parent / "benchmarks" / "fleet.py")


@pytest.mark.process
# Past trial's own timeout (below), so that trial's fires first.
@pytest.mark.timeout(210)
class FleetTests(TestCase):
    timeout = 180
    if HAPROXY is None and not inCI():
        skip = "haproxy is not installed (CI installs it, and there this runs)"

    def setUp(self) -> None:
        if HAPROXY is None:
            self.fail("haproxy is not installed: CI must install it (Debian's haproxy)")

    async def test_rolling_restart_loses_nothing_and_a_kill_only_what_it_held(
        self,
    ) -> None:
        figures = Path(shortTempPath(self, "fleet.json"))
        fleet = Twistd.start(
            self,
            runner=[
                sys.executable,
                FLEET,
                "--lanes",
                "6",
                "--steady",
                "1.5",
                "--json",
                str(figures),
            ],
        )
        fleet.listening.addErrback(lambda _: None)

        def stop() -> object:
            # Stopped gently, the script ends the servers and HAProxy it
            # started; the harness's SIGKILL after this would orphan them.
            if fleet.ended.called:
                return None
            fleet.signal(signal.SIGTERM)
            return fleet.ended

        self.addCleanup(stop)
        status = await fleet.ended
        self.assertEqual(status, 0, fleet.output)
        found = json.loads(figures.read_text())
        phases = {phase["name"]: phase for phase in found["phases"]}

        for name in ["steady", "rolling restart"]:
            phase = phases[name]
            self.assertGreater(phase["started"], 0, name)
            self.assertEqual(
                (phase["completed"], phase["failed"]), (phase["started"], 0), name
            )
        # SIGTERM alone may lose a connection HAProxy made as the last process
        # closed the listening socket, before any greeting: never a session
        # that had begun.
        self.assertLessEqual(set(phases["SIGTERM alone"]["failures"]), {"no greeting"})

        kill, killPhase = found["kill"], phases["kill"]
        self.assertEqual(kill["failedNotHeld"], 0, fleet.output)
        self.assertEqual(killPhase["failed"], kill["failedOfHeld"])
        self.assertLessEqual(kill["failedOfHeld"], kill["heldAtKill"])
        self.assertEqual(kill["redispatchedAfterDown"], 0)
        self.assertGreater(killPhase["completed"], 0)
        self.assertTrue(all(found["served"].values()), found["served"])
        self.assertEqual(
            (found["unlogged"], found["droppedLogs"]), (0, 0), fleet.output
        )
        # The sessions checked their replies with caretproto's rules; every
        # one that completed received the specification's, written out.
        completed = sum(phase["completed"] for phase in found["phases"])
        self.assertEqual(found["replies"], {REFERENCE_REPLIES.decode(): completed})
