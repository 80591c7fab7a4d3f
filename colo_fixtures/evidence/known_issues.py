"""Known failures of the system under test, as data, in one model.

A known issue names the tests it may cover (node-id patterns), the ``SutFailure`` types it
excuses, the evidence it needs on the side that serves the VM after the failure (the
survivor), since when it is seen, and what it says. The plugin asks it only about the
call phase of a covered test: a setup or teardown error, a ``ColoViolation``, another
failure type, or a failure without the evidence stays a failure. ``--runxfail`` switches
every excuse off. An issue may also name a QEMU log line it explains (``log_line``): the
log analyzer then counts that line instead of failing a test on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from glob import escape
from pathlib import Path

from colo_fixtures.core.verdicts import ConnectionBroken, SutFailure
from colo_fixtures.sut.trace import read_trace


@dataclass(frozen=True)
class Evidence:
    """What a failed test's lab shows at the failure, gathered while the QEMUs still run.

    ``survivor`` is the QEMU serving the VM after a failover (None without a failover);
    ``logs`` maps each QEMU's name to its stderr, console and trace logs; ``virtio`` is
    ``ColoPair.virtio_net_state`` text; ``tap_tx_since_failover`` the packets the survivor's
    tap carried toward the VM since the takeover (None if not measured)."""

    survivor: str | None = None
    logs: dict[str, list[Path]] = field(default_factory=dict)
    virtio: str = ""
    tap_tx_since_failover: int | None = None


Check = Callable[[Evidence], "str | None"]  # where the evidence is, or None


@dataclass(frozen=True)
class KnownIssue:
    name: str
    reason: str  # what goes wrong and why (the cause: file and function, or the harness bug)
    since: str  # the date it was first seen
    tests: tuple[str, ...]  # node-id patterns (fnmatch) of the tests it may cover
    excuses: tuple[type[SutFailure], ...]
    evidence: Check
    evidence_text: str  # what the evidence is, for the report
    log_line: str | None = None  # a QEMU log line (regex) this issue explains
    strict: bool = False  # every covered test fails: one that passes fails the run (XPASS)

    def __post_init__(self) -> None:
        bad = [t for t in self.excuses if not issubclass(t, SutFailure)]
        if not self.excuses or bad:
            raise ValueError(f"known issue {self.name}: excuses must be SutFailure types "
                             f"(a COLO violation is never excused), got {bad or 'none'}")

    def covers(self, nodeid: str) -> bool:
        return any(fnmatchcase(nodeid, pattern) for pattern in self.tests)

    def explains_line(self, line: str) -> bool:
        return self.log_line is not None and re.search(self.log_line, line) is not None

    def excuse(self, nodeid: str, exc: BaseException,
               evidence: Callable[[], Evidence]) -> tuple[str | None, str]:
        """(where the evidence is, None) if this issue excuses ``exc`` in ``nodeid``, else
        (None, why not). ``evidence`` is called only when the type matches."""
        if not self.covers(nodeid):
            return None, f"{self.name} does not cover {nodeid}"
        if not isinstance(exc, self.excuses):
            names = ", ".join(t.__name__ for t in self.excuses)
            return None, f"{self.name} excuses only {names}, not {type(exc).__name__}"
        where = self.evidence(evidence())
        if where is None:
            return None, f"{self.name}: its evidence is missing ({self.evidence_text})"
        return where, ""


# ------------------------------------------------------------------ evidence checks


def on_survivor_log(pattern: str) -> Check:
    """The line is in the survivor's own stderr log (file:line)."""
    regex = re.compile(pattern)

    def check(ev: Evidence) -> str | None:
        if ev.survivor is None:
            return None
        for log in ev.logs.get(ev.survivor, []):
            if not log.name.endswith("-stderr.log"):
                continue
            try:
                lines = log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for number, line in enumerate(lines, 1):
                if regex.search(line):
                    return f"{log.name}:{number}"
        return None

    return check


_DEVICE = re.compile(r"^(\S+) \S+: broken=")
_QUEUE = re.compile(r"^\s+queue \d+ (\S+): .*\blast-avail=(\d+) shadow-avail=(\d+) "
                    r"used=(\d+) signalled-used=(\d+)(?: avail=(\d+))?")


def virtio_queues(text: str) -> dict[str, dict[str, dict[str, int | None]]]:
    """``ColoPair.virtio_net_state`` text as side → queue name → its indexes."""
    sides: dict[str, dict[str, dict[str, int | None]]] = {}
    side = None
    for line in text.splitlines():
        if match := _DEVICE.match(line):
            side = match[1]
            sides.setdefault(side, {})
        elif (match := _QUEUE.match(line)) and side is not None:
            sides[side][match[1]] = {
                "last_avail": int(match[2]), "shadow_avail": int(match[3]),
                "used": int(match[4]), "signalled": int(match[5]),
                "avail": int(match[6]) if match[6] else None}
    return sides


def frozen_survivor_nic(ev: Evidence) -> str | None:
    """The survivor's virtio-net is frozen as the known issue says, and the client's packets
    did reach it: every queue signalled-used=0 while some used > 0, TX buffers the guest made
    available (avail) never taken (last-avail behind), and the survivor's tap carried packets
    toward the VM since the takeover."""
    if ev.survivor is None or not ev.tap_tx_since_failover:
        return None
    queues = virtio_queues(ev.virtio).get(ev.survivor)
    if not queues or "tx" not in queues:
        return None
    frozen = all(q["signalled"] == 0 for q in queues.values()) and any(
        (q["used"] or 0) > 0 for q in queues.values())
    tx = queues["tx"]
    # buffers the guest made available (its ring's avail index, or the index the device
    # last read from it) beyond the last one the device took
    offered = [i for i in (tx["avail"], tx["shadow_avail"]) if i is not None]
    if not (frozen and any(i != tx["last_avail"] for i in offered)):
        return None
    return (f"virtio.txt: {ev.survivor} signalled-used=0 on every queue, tx avail "
            f"{tx['avail']}/shadow {tx['shadow_avail']} vs last-avail {tx['last_avail']}; "
            f"{ev.tap_tx_since_failover} packets reached its tap since the takeover")


_PKT = re.compile(r"^(handle_primary_tcp_pkt|handle_secondary_tcp_pkt): .* p: seq/ack=(\d+)/(\d+)")
_OFFSET = re.compile(r"offset=(\d+)")
WINDOW = 1 << 16  # how far a peer's sequence number may run ahead of what was acknowledged
SEQ_SPACE = 1 << 32


def _seq_distance(a: int, b: int) -> int:
    """How far apart two TCP sequence numbers are, either way round the sequence space."""
    d = (a - b) % SEQ_SPACE
    return min(d, SEQ_SPACE - d)


def _trace_of(ev: Evidence, name: str) -> Path | None:
    return next((log for log in ev.logs.get(name, []) if log.name.endswith("-trace.log")), None)


def rewriter_packets(path: Path, after: str = "first") -> list[tuple[str, int, int, int]]:
    """(direction, seq, ack, offset) of every TCP packet filter-rewriter traced in ``path``
    after the QEMU's ``first`` or ``last`` completed failover: direction "client" for
    handle_primary_tcp_pkt (toward the guest), "guest" for handle_secondary_tcp_pkt."""
    records = read_trace(path)
    done = [i for i, r in enumerate(records)
            if r.name == "colo_failover_set_state" and r.message.endswith("completed")]
    if not done:
        return []
    start = done[0] if after == "first" else done[-1]
    packets, pending = [], None
    for record in records[start + 1:]:
        if record.name == "colo_filter_rewriter_pkt_info":
            match = _PKT.match(record.message)
            pending = (("client" if match[1] == "handle_primary_tcp_pkt" else "guest",
                        int(match[2]), int(match[3])) if match else None)
        elif record.name == "colo_filter_rewriter_conn_offset" and pending is not None:
            offset = _OFFSET.search(record.message)
            if offset:
                packets.append((*pending, int(offset[1])))
            pending = None
    return packets


def rewriter_offset_not_carried(ev: Evidence) -> str | None:
    """An earlier survivor's filter-rewriter kept translating a connection after its
    takeover (a nonzero offset), and a later survivor, a secondary started at a resume,
    sends that connection's guest sequence numbers untranslated (offset 0): they run ahead
    of what the client acknowledges by that offset (within a TCP window). Every survivor of
    the test is looked at, not only the last: with many cycles the connection stalls at the
    first takeover by a secondary born at a resume, and the cycles go on after it."""
    if ev.survivor is None:
        return None
    traces = {name: trace for name in ev.logs if (trace := _trace_of(ev, name)) is not None}
    kept: dict[str, dict[int, int]] = {}  # survivor -> offset kept after its takeover -> 1
    for name, trace in traces.items():
        for _, _, _, offset in rewriter_packets(trace, after="first"):
            if offset:
                kept.setdefault(name, {}).setdefault(offset, 1)
    for name, trace in traces.items():
        offsets = [(offset, earlier) for earlier, found in kept.items() if earlier != name
                   for offset in found]
        if offsets and (line := _untranslated(trace, offsets)):
            return line
    return None


def _untranslated(trace: Path, kept: list[tuple[int, str]]) -> str | None:
    """The first guest packet of ``trace`` (after its first takeover) sent at offset 0 that
    is ahead of a client ack by one of the ``kept`` (offset, who kept it)."""
    packets = rewriter_packets(trace, after="first")
    acks = {ack for side, _, ack, _ in packets if side == "client" and ack}
    for side, seq, _, offset in packets:
        if side != "guest" or offset:
            continue
        for ack in acks:
            for kept_offset, name in kept:
                if _seq_distance(seq, ack + kept_offset) < WINDOW:
                    return (f"{trace.name}: the guest sends seq {seq} at offset=0 while the "
                            f"client acknowledges {ack}, {(seq - ack) % SEQ_SPACE} apart; "
                            f"{name}-trace.log: offset {kept_offset} kept after its takeover")
    return None


# ------------------------------------------------------------------ the issues

KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "rewriter-offset-lost-at-resume",
        "QEMU 7.2 COLO, net/filter-rewriter.c: a TCP connection opened after the last "
        "checkpoint has a sequence offset between the two guests, which "
        "handle_secondary_tcp_pkt()/handle_primary_tcp_pkt() learn only from its SYN/SYN-ACK "
        "handshake. At a secondary takeover colo_rewriter_handle_event(COLO_EVENT_FAILOVER) "
        "keeps failover mode off while any offset is nonzero, so the survivor's rewriter "
        "translates that connection for good; its connection_track_table is no migration "
        "state, so the secondary started at resume tracks the connection with offset 0. At "
        "the next takeover by that secondary its guest's sequence numbers reach the client "
        "untranslated and the connection stalls. No acknowledged write is lost; new "
        "connections work",
        since="2026-11-28",
        tests=(escape("suites/test_failover.py::test_repeated_cycles[opened-since-checkpoint]"),),
        excuses=(ConnectionBroken,),
        evidence=rewriter_offset_not_carried,
        evidence_text="a later survivor's guest sends sequence numbers at offset 0 that run "
                      "ahead of the client's acks by the offset an earlier survivor kept "
                      "(trace: colo_filter_rewriter_pkt_info/conn_offset)",
        strict=True,
    ),
)


def covering(nodeid: str, issues: tuple[KnownIssue, ...] | None = None) -> list[KnownIssue]:
    """The known issues (default: ``KNOWN_ISSUES`` as it is now) that may cover ``nodeid``."""
    return [issue for issue in (KNOWN_ISSUES if issues is None else issues)
            if issue.covers(nodeid)]


def explaining_line(line: str, issues: tuple[KnownIssue, ...] | None = None
                    ) -> KnownIssue | None:
    """The known issue that explains a QEMU log line, if any."""
    return next((issue for issue in (KNOWN_ISSUES if issues is None else issues)
                 if issue.explains_line(line)), None)
