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

from colo_fixtures.verdicts import ClientTimeout, ConnectionBroken, SutFailure


@dataclass(frozen=True)
class Evidence:
    """What a failed test's lab shows at the failure, gathered while the QEMUs still run.

    ``survivor`` is the QEMU serving the VM after a failover (None without a failover);
    ``logs`` maps each QEMU's name to its stderr and console logs; ``virtio`` is
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


def covered_test_only(ev: Evidence) -> str | None:
    """No evidence beyond the test and the failure's type."""
    return "the covered test and failure type"


# ------------------------------------------------------------------ the issues

# The tests where the secondary takes over (node-id patterns: glob.escape keeps a
# parametrization's brackets literal).
TAKEOVER_TESTS = (
    *map(escape, ("suites/test_failover.py::test_failover_after_kill[primary]",
                  "suites/test_failover.py::test_failover_during_checkpoint[primary]",
                  "suites/test_failover.py::test_failover_after_hang[primary]",
                  "suites/test_failover.py::test_resume_replication",
                  "suites/test_disk.py::test_survivor_disk_holds_acknowledged_writes[primary]")),
    escape("suites/test_failover.py::test_repeated_cycles[") + "*",
)

KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "rewriter-offset-lost-at-resume",
        "QEMU 7.2 COLO: a TCP connection opened after the last checkpoint survives a "
        "secondary takeover only because the survivor's filter-rewriter keeps translating "
        "its sequence numbers (offset kept, failover mode off, net/filter-rewriter.c); that "
        "offset is not given to the secondary started at resume, so colo-compare sees every "
        "packet of it differ and, at the next failover onto that secondary, the connection "
        "stalls for good. No acknowledged write is lost; new connections work",
        since="2026-11-28",
        tests=(escape("suites/test_failover.py::test_repeated_cycles[opened-since-checkpoint]"),),
        excuses=(ConnectionBroken,),
        evidence=covered_test_only, evidence_text="the covered test and failure type",
        strict=True,
    ),
    KnownIssue(
        "frozen-nic-after-takeover",
        "QEMU 7.2 COLO under TCG: after a takeover the survivor's virtio-net queues stay as "
        "they were at its last checkpoint (signalled-used=0 on every queue while used > 0, "
        "TX buffers available and never processed), so its guest never answers the client "
        "although the client's packets reach its tap. Most cases were the secondary's NIC "
        "broken by virtio_load() keeping a live queue's indexes (hw/virtio/virtio.c, fixed "
        "by patches/qemu-7.2/0003, test_nic_reset_across_checkpoints); a variant with the "
        "device not marked broken was seen once in 32 starts with 0003 (2026-12-02), its "
        "cause still open (candidates: a guest kick or virtio-net's tx_waiting lost across "
        "the secondary's checkpoint load)",
        since="2026-11-29",
        tests=TAKEOVER_TESTS, excuses=(ClientTimeout,),
        evidence=frozen_survivor_nic,
        evidence_text="the survivor's queues frozen, TX pending, client packets on its tap",
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
