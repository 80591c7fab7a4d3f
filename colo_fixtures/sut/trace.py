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
RAM_DIGEST_EVENT = "colo_ram_digest"  # patches/qemu-7.2-ramcheck: RAM digests per checkpoint


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


# ---------------------------------------------------------------------------- protocol

PRIMARY_START = ("recv:checkpoint-ready", "state:stop>run")
PRIMARY_CHECKPOINT = ("send:checkpoint-request", "recv:checkpoint-reply", "state:run>stop",
                      "send:vmstate-send", "send:vmstate-size", "recv:vmstate-received",
                      "recv:vmstate-loaded", "state:stop>run")
SECONDARY_START = ("state:stop>run", "send:checkpoint-ready")
SECONDARY_CHECKPOINT = ("recv:checkpoint-request", "state:run>stop", "send:checkpoint-reply",
                        "recv:vmstate-send", "recv:vmstate-size", "send:vmstate-received",
                        "flush:begin", "flush:end", "state:stop>run", "send:vmstate-loaded")
FAILOVER = ("failover:require", "failover:active", "failover:completed")
PROTOCOLS = {"primary": (PRIMARY_START, PRIMARY_CHECKPOINT),
             "secondary": (SECONDARY_START, SECONDARY_CHECKPOINT)}


class ProtocolViolation(AssertionError):
    """A COLO trace broke the protocol; the message names the first out-of-order event."""


def protocol_token(record: TraceRecord) -> str | None:
    """The protocol step a trace record stands for, or None for other events."""
    if record.name in ("colo_send_message", "colo_receive_message"):
        direction = "send" if record.name == "colo_send_message" else "recv"
        return f"{direction}:{colo_message(record)}"
    if record.name == "colo_vm_state_change":
        change = STATE_CHANGE.search(record.message)
        return f"state:{change['old']}>{change['new']}" if change else None
    if record.name in ("colo_flush_ram_cache_begin", "colo_flush_ram_cache_end"):
        return "flush:" + record.name.rsplit("_", 1)[1]
    if record.name == "colo_failover_set_state":
        return "failover:" + record.message.replace("new state", "").strip()
    return None


@dataclass(frozen=True)
class ProtocolReport:
    """What a side's trace showed: complete checkpoints, an unfinished tail, the failover."""

    side: str
    checkpoints: int
    unfinished: bool
    failover: tuple[str, ...]


def check_protocol(records: list[TraceRecord], side: str) -> ProtocolReport:
    """Walk one side's COLO trace: the start handshake, then every checkpoint's message
    sequence with its VM state changes, then (optionally) the failover state machine
    require → active → completed. Raise ProtocolViolation at the first step out of order;
    the trace may end inside a checkpoint (the run stopped or the peer died there)."""
    start, cycle = PROTOCOLS[side]
    steps = [(r, t) for r in records if (t := protocol_token(r)) is not None]
    position, done, failover = 0, 0, []
    expected = start[0]
    for record, token in steps:
        if token.startswith("failover:"):
            wanted = FAILOVER[len(failover)] if len(failover) < len(FAILOVER) else None
            if token != wanted:
                raise _violation(side, record, token, wanted or "nothing after 'completed'")
            failover.append(token)
            continue
        if failover and failover[-1] == "failover:completed":
            if token.startswith(("send:", "recv:")):
                raise _violation(side, record, token, "no COLO message after failover")
            continue
        if failover:  # the VM restarting during failover is not a protocol step
            continue
        if position < len(start):
            expected = start[position]
        else:
            expected = cycle[(position - len(start)) % len(cycle)]
        if token != expected:
            raise _violation(side, record, token, expected)
        position += 1
        if position > len(start) and (position - len(start)) % len(cycle) == 0:
            done += 1
    unfinished = position > len(start) and (position - len(start)) % len(cycle) != 0
    return ProtocolReport(side, done, unfinished, tuple(f.split(":", 1)[1] for f in failover))


def _violation(side: str, record: TraceRecord, token: str, expected: str) -> ProtocolViolation:
    return ProtocolViolation(f"{side}: {token} at {record.timestamp:.6f} ({record.name} "
                             f"{record.message!r}) where {expected} was due")


# ------------------------------------------------------------------ rdma: migration

# The milestones of an ``rdma:`` migration in QEMU's qemu_rdma_* trace events, in order.
RDMA_MILESTONES = {
    "source": ("qemu_rdma_resolve_host_trying", "qemu_rdma_registration_start",
               "qemu_rdma_registration_stop"),
    "destination": ("qemu_rdma_dest_init_trying", "qemu_rdma_accept_incoming_migration",
                    "qemu_rdma_accept_incoming_migration_accepted",
                    "qemu_rdma_registration_handle_ram_blocks",
                    "qemu_rdma_registration_handle_finished"),
}


@dataclass(frozen=True)
class RdmaReport:
    side: str
    events: int  # qemu_rdma_* records
    rounds: int  # registration start/stop pairs (source) or finished handshakes (destination)


def check_rdma_migration(records: list[TraceRecord], side: str) -> RdmaReport:
    """Walk one side's qemu_rdma_* events: every milestone of ``side`` in order and, on the
    source, registration start and stop strictly alternating (one pair per RAM round).
    Raise ProtocolViolation naming the first missing or out-of-order event."""
    if side not in RDMA_MILESTONES:
        raise ValueError(f"unknown side {side!r}: expected source or destination")
    rdma = [r for r in records if r.name.startswith("qemu_rdma_")]
    milestones = RDMA_MILESTONES[side]
    reached = 0
    for record in rdma:
        if reached < len(milestones) and record.name == milestones[reached]:
            reached += 1
    if reached < len(milestones):
        seen = ", ".join(dict.fromkeys(r.name for r in rdma)) or "no qemu_rdma_* event"
        raise ProtocolViolation(f"{side}: rdma migration never reached {milestones[reached]} "
                                f"after {milestones[reached - 1] if reached else 'the start'}"
                                f" (seen: {seen[:300]})")
    if side == "destination":
        finished = sum(r.name == "qemu_rdma_registration_handle_finished" for r in rdma)
        return RdmaReport(side, len(rdma), finished)
    open_round: TraceRecord | None = None
    rounds = 0
    for record in rdma:
        if record.name == "qemu_rdma_registration_start":
            if open_round is not None:
                raise _violation(side, record, "registration_start", "registration_stop")
            open_round = record
        elif record.name == "qemu_rdma_registration_stop":
            if open_round is None:
                raise _violation(side, record, "registration_stop", "registration_start")
            open_round, rounds = None, rounds + 1
    if open_round is not None:
        raise ProtocolViolation(f"{side}: registration_start at {open_round.timestamp:.6f} "
                                "never stopped: the migration did not finish")
    return RdmaReport(side, len(rdma), rounds)
