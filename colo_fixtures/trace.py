"""QEMU trace logs (``-D`` file, log backend, ``-msg timestamp=on``) parsed into records.

A line looks like ``12345@1700000000.123456:colo_send_message Send 'checkpoint-request' message``.
From the records, ``checkpoints`` reconstructs the primary's checkpoints with their pauses.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

TRACE_LINE = re.compile(
    r"^(?P<pid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):(?P<name>\w+)(?: (?P<msg>.*))?$")
STATE_CHANGE = re.compile(r"Change '(?P<old>\w+)' => '(?P<new>\w+)'")
MESSAGE = re.compile(r"(?:Send|Receive) '(?P<msg>[\w-]+)' message")


@dataclass(frozen=True)
class TraceRecord:
    """One trace event: emitting thread id, wall-clock time, event name, formatted message."""

    tid: int
    timestamp: float
    name: str
    message: str


def parse_trace(text: str) -> list[TraceRecord]:
    """Records from trace log text; lines that are not trace events are skipped."""
    records = []
    for line in text.splitlines():
        match = TRACE_LINE.match(line.strip())
        if match:
            records.append(TraceRecord(int(match["pid"]),
                                       int(match["sec"]) + int(match["usec"]) / 1e6,
                                       match["name"], (match["msg"] or "").strip()))
    return records


def read_trace(path: Path) -> list[TraceRecord]:
    """Parse a trace log file (empty list if it does not exist yet)."""
    try:
        return parse_trace(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def colo_message(record: TraceRecord) -> str | None:
    """The COLO protocol message a colo_send/receive_message record carries."""
    if record.name not in ("colo_send_message", "colo_receive_message"):
        return None
    match = MESSAGE.search(record.message)
    return match["msg"] if match else None


@dataclass(frozen=True)
class Checkpoint:
    """One primary-side checkpoint: request sent, VM stopped, VM resumed (None if unfinished)."""

    requested: float
    stopped: float | None
    resumed: float | None

    @property
    def pause(self) -> float | None:
        if self.stopped is None or self.resumed is None:
            return None
        return self.resumed - self.stopped


def checkpoints(records: list[TraceRecord]) -> list[Checkpoint]:
    """The primary's checkpoints: each 'checkpoint-request' with the run→stop→run around it."""
    result: list[Checkpoint] = []
    requested: float | None = None
    stopped: float | None = None
    for record in records:
        if record.name == "colo_send_message" and colo_message(record) == "checkpoint-request":
            if requested is not None:
                result.append(Checkpoint(requested, stopped, None))
            requested, stopped = record.timestamp, None
        elif record.name == "colo_vm_state_change" and requested is not None:
            change = STATE_CHANGE.search(record.message)
            if change and (change["old"], change["new"]) == ("run", "stop"):
                stopped = record.timestamp
            elif change and (change["old"], change["new"]) == ("stop", "run"):
                result.append(Checkpoint(requested, stopped, record.timestamp))
                requested, stopped = None, None
    if requested is not None:
        result.append(Checkpoint(requested, stopped, None))
    return result


def intervals(points: list[Checkpoint]) -> list[float]:
    """Seconds between consecutive checkpoint requests."""
    return [b.requested - a.requested for a, b in itertools.pairwise(points)]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
