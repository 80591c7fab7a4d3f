"""Log analyzer: known-bad patterns in serial consoles and QEMU stderr fail the test.

Patterns are data: each has a name, the verdict type it proves, the logs it applies to and
a regular expression. ``scan`` returns findings with the file, line number and text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from colo_fixtures.core.verdicts import (
    ColoViolation,
    GuestCrash,
    MemoryDivergence,
    MiscompareStorm,
    NicBroken,
    QemuLogError,
    Verdict,
)


@dataclass(frozen=True)
class Pattern:
    name: str
    kind: str  # "console" or "stderr"
    regex: re.Pattern[str]
    verdict: type[Verdict]


PATTERNS: tuple[Pattern, ...] = (
    Pattern("guest kernel panic", "console", re.compile(r"Kernel panic"), GuestCrash),
    Pattern("guest kernel BUG", "console", re.compile(r"\bBUG: |kernel BUG at"), GuestCrash),
    Pattern("guest general protection fault", "console", re.compile(r"general protection"),
            GuestCrash),
    Pattern("guest oops", "console", re.compile(r"\bOops\b|Call Trace:|segfault at"),
            GuestCrash),
    Pattern("guest memory divergence", "console", re.compile(r"MEMCHECK FAIL"),
            MemoryDivergence),
    Pattern("guest agent died", "console", re.compile(r"colo-agent: exited"), GuestCrash),
    # QEMU marks the virtio device broken right after this line (virtio_error)
    Pattern("virtio device error", "stderr", re.compile(r"qemu-system-\w+: virtio: "),
            NicBroken),
    Pattern("QEMU error", "stderr", re.compile(
        r"qemu-system-\w+: (?!.*(?:warning|terminating on signal))|Assertion .* failed|"
        r"Segmentation fault|core dumped"), QemuLogError),
)


# Lines that look like errors but are part of a normal start: QEMU's notice that the
# primary waits for the secondary's proxy, and the secondary's reconnecting chardevs
# before the primary listens.
BENIGN: tuple[str, ...] = (
    r": info: ",
    r"Unable to connect character device red\d: .*Connection refused",
)


# What a survivor says about a peer the harness killed or froze on purpose: benign only
# in lines stamped (``-msg timestamp=on``) at or after the first injected fault.
AFTER_FAULT: tuple[str, ...] = (
    r"Can't (receive|send) COLO message",
    r"filter (mirror|redirector) send failed",
    r"Disconnect client, due to: ",  # the NBD server losing the killed peer, for any reason
    # a secondary that loses its primary in the middle of a checkpoint, and the failover
    r"Load VM's live state \(ram\) error",
    r"Got \d+ VMState data, less than expected",
    r"Unknown combination of migration flags: ",  # the RAM stream cut mid-page
    r"error while loading state section id \d+\(ram\)",
    r"COLO: load device state failed",
    r"Failed to (get|send) value for (COLO )?message",
    r"qemu-system-\w+: failover request$",
)
# What the primary says about network traffic that arrives before COLO starts: its mirror
# has no secondary to send to yet (the migration replaces the secondary's state anyway).
# Benign only in lines stamped before ``migrate`` was issued; afterwards a failed mirror
# send is a packet the secondary never saw.
BEFORE_COLO: tuple[str, ...] = (
    r"filter mirror send failed",
)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")


def line_time(line: str) -> float | None:
    """The wall-clock time of a QEMU message stamped by ``-msg timestamp=on`` (UTC)."""
    match = STAMP.match(line)
    if not match:
        return None
    return datetime.fromisoformat(match[1] + "+00:00").timestamp()


@dataclass(frozen=True)
class Finding:
    pattern: str
    path: Path
    line_number: int
    line: str
    verdict: type[Verdict] = QemuLogError

    def __str__(self) -> str:
        return f"{self.pattern}: {self.path.name}:{self.line_number}: {self.line.strip()[:200]}"


def verdict_of(findings: list[Finding]) -> Verdict:
    """The verdict findings prove: that of the first COLO violation among them, else of the
    first; its message lists up to five findings, violations first."""
    ordered = sorted(findings, key=lambda f: not issubclass(f.verdict, ColoViolation))
    return ordered[0].verdict("log analyzer: " + "; ".join(map(str, ordered[:5])))


def _after_fault(line: str, start: int, fault_at: float | None,
                 fault_offset: int | None) -> bool:
    """Whether ``line`` (at byte ``start`` of its file) was written after the first fault:
    beyond the file's size at that moment, or stamped at or after it. QEMU leaves messages
    reported while a QMP command runs unstamped, so the offset is the better witness."""
    if fault_offset is not None and start >= fault_offset:
        return True
    stamp = line_time(line)
    return fault_at is not None and stamp is not None and stamp >= fault_at


def scan(path: Path, kind: str, allow: tuple[str, ...] = (),
         fault_at: float | None = None, fault_offset: int | None = None,
         colo_at: float | None = None) -> list[Finding]:
    """Findings of every ``kind`` pattern in ``path``, except lines matching an ``allow`` regex,
    the known consequences of an injected fault in lines written after it (from byte
    ``fault_offset`` on, the file's size at the first fault, or stamped at or after
    ``fault_at``, its wall-clock time), and ``BEFORE_COLO`` lines stamped before
    ``colo_at`` (when ``migrate`` started COLO)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    findings = []
    start = 0
    for number, raw in enumerate(data.splitlines(keepends=True), 1):
        line, line_start = raw.decode(errors="replace").rstrip("\r\n"), start
        start += len(raw)
        if any(re.search(a, line) for a in (*BENIGN, *allow)):
            continue
        if any(re.search(p, line) for p in AFTER_FAULT) and _after_fault(
                line, line_start, fault_at, fault_offset):
            continue
        if colo_at is not None and any(re.search(p, line) for p in BEFORE_COLO) and (
                (stamp := line_time(line)) is not None and stamp < colo_at):
            continue
        for pattern in PATTERNS:
            if pattern.kind == kind and pattern.regex.search(line):
                findings.append(Finding(pattern.name, path, number, line, pattern.verdict))
                break
    return findings


# colo-compare's own words for a packet the two sides sent differently, in a primary's trace
# (colo_* events): QEMU 7.2 names UDP, ICMP and other mismatches; a TCP mismatch shows only
# as the checkpoint it forces. A few are normal (the guests' clocks differ); a storm means
# the secondary diverged: every packet forces a checkpoint.
MISCOMPARE = re.compile(r"colo_compare_main : (packet different|\w+: payload size of packets "
                        r"are different)|colo_compare_(udp|icmp)_miscompare primary pkt size")
MISCOMPARE_STORM = 50


def miscompare_storm(path: Path, limit: int = MISCOMPARE_STORM) -> Finding | None:
    """A finding when trace log ``path`` holds ``limit`` or more colo-compare miscompares."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    hits = [(number, line) for number, line in enumerate(lines, 1) if MISCOMPARE.search(line)]
    if len(hits) < limit:
        return None
    number, first = hits[0]
    return Finding("colo-compare miscompare storm", path, number,
                   f"{len(hits)} miscompares (limit {limit}), the first: {first}",
                   MiscompareStorm)
