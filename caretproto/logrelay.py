# -*- test-case-name: tests.test_workers -*-
"""
The log relay between a worker process and its parent.

A worker runs under C{twist --log-format=json --log-file=-}: its standard
output is its log, one JSON event a line.  L{relayLine} puts each line into
the parent's log as the event it was, marked with the worker's number and pid,
and hands the events that carry a report (a worker's metrics, in the field
an L{IWorkerReports} names) to it instead of logging them.

It is not the pool that starts and supervises the workers
(L{caretproto.workers}), nor the worker's side of the sockets
(L{caretproto.workerside}), nor what a report says
(L{caretproto.metrics}); it imports none of them.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from string import Formatter
from typing import Any

from twisted.logger import Logger, LogLevel, eventFromJSON
from zope.interface import Attribute, Interface


class IWorkerReports(Interface):
    """
    What gathers the workers' reports: L{caretproto.metrics.WorkersMetrics}.
    Each worker process is known by a key of its own, and is told of once it
    has ended.
    """

    field = Attribute(
        "The field of a worker's log event that makes it a report: the relay "
        "hands its value to L{reported} instead of logging the event."
    )

    def reported(worker: Hashable, report: Any) -> None:
        """
        C{worker} reported C{report}.

        @param worker: the worker's key.
        @param report: the value of the event's L{field}.
        """

    def ended(worker: Hashable) -> None:
        """
        C{worker} has ended: it will report no more.

        @param worker: the worker's key.
        """


class IRelayedWorker(Interface):
    """
    What the relay needs to know of a worker: its number and its pid.  A
    worker is also the (hashable) key its reports are known by.
    """

    index = Attribute("The worker's number in its pool, from 1.")
    pid = Attribute("Its process id, or C{None} before it runs.")


def relayLine(
    log: Logger,
    reports: IWorkerReports | None,
    worker: IRelayedWorker,
    childFD: int,
    line: str,
) -> None:
    """
    Log a line C{worker} wrote to C{childFD} into C{log}: a JSON log event
    from its standard output goes in as it was, marked with the worker's
    number and pid; anything else is logged as text.  A report goes to
    C{reports} instead, if there is anything to take it.

    @param log: the parent's log.
    @param reports: what takes the workers' reports, if anything does.
    @param worker: the worker that wrote the line.
    @param childFD: 1 for its standard output, 2 for its standard error.
    @param line: the line, without its newline.
    """
    text = line.lstrip("\x1e")
    event = _logEvent(text) if childFD == 1 else None
    if event is not None and reports is not None and reports.field in event:
        reports.reported(worker, event[reports.field])
        return
    if event is None:
        if text.strip():
            log.emit(
                LogLevel.warn if childFD == 2 else LogLevel.info,
                "{line}",
                line=text,
                log_system=_system(worker, "stderr" if childFD == 2 else "stdout"),
                worker=worker.index,
                worker_pid=worker.pid,
            )
        return
    level = event.get("log_level")
    system = event.get("log_system") or (
        f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
    )
    event["log_system"] = _system(worker, system)
    event["worker"] = worker.index
    event["worker_pid"] = worker.pid
    log.observer(event)


def _system(worker: IRelayedWorker, system: str) -> str:
    return f"worker {worker.index} pid {worker.pid} {system}"


_UNPERSISTABLE = {"unpersistable": True}
"""What C{eventAsJSON} writes for a field that JSON cannot hold."""


def _logEvent(text: str) -> dict[str, Any] | None:
    """The log event in a line of JSON a worker wrote, if it is one."""
    try:
        event = eventFromJSON(text)
        fields = [
            field
            for _, field, _, _ in Formatter().parse(event.get("log_format") or "")
            if field is not None
        ]
    except (ValueError, AttributeError):
        return None
    if not isinstance(event, dict) or "log_time" not in event:
        return None
    for key in ["log_logger", "log_source"]:
        if event.get(key) == _UNPERSISTABLE:
            del event[key]
    # Twisted formats a flattened event without the fields' format specs
    # ({duration:.3f}); when every field came through JSON as itself, let it
    # format the fields instead.
    roots = {re.split(r"[.\[]", field, maxsplit=1)[0] for field in fields}
    if all(event.get(root, _UNPERSISTABLE) != _UNPERSISTABLE for root in roots):
        event.pop("log_flattened", None)
    return event
