"""Checkpoints colo-compare asked for, and the packets it compared, from the primary's trace.

QEMU 7.2 traces each TCP payload comparison as ``colo_compare_ip_info`` (both packets'
sizes), followed by ``colo_compare_tcp_info`` lines only when the packets matched; a
comparison that did not match asks for a checkpoint at once (its request is traced about a
millisecond later). So a checkpoint request right after an unmatched comparison was asked
for by colo-compare, and that comparison names the two packets' sizes. Packets of the same
size may differ legitimately (a reply carrying a clock, an ACK the secondary has not sent
yet); for one client whose requests each wait for the reply, packets of different sizes
are two different replies paired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from colo_fixtures.sut.trace import TraceRecord

REQUEST_AFTER_MISMATCH_S = 0.02  # an unmatched comparison's checkpoint request follows it
IP_INFO = re.compile(r"ppkt size = (\d+),.* spkt size = (\d+),")


@dataclass(frozen=True)
class Miscompare:
    """An unmatched comparison and the checkpoint request it caused."""

    compared: float  # wall time of the comparison
    requested: float  # wall time of the checkpoint request
    primary_bytes: int
    secondary_bytes: int

    @property
    def sizes_differ(self) -> bool:
        return self.primary_bytes != self.secondary_bytes

    def describe(self, origin: float) -> str:
        return (f"{self.requested - origin:+.3f}s: primary {self.primary_bytes} / "
                f"secondary {self.secondary_bytes} bytes")


def miscompares(records: list[TraceRecord], since: float = 0.0) -> list[Miscompare]:
    """Every checkpoint request at or after ``since`` that followed an unmatched comparison
    (within REQUEST_AFTER_MISMATCH_S, no match traced in between)."""
    found: list[Miscompare] = []
    pending: tuple[float, int, int] | None = None  # the last comparison, while unmatched
    for record in records:
        if record.name == "colo_compare_ip_info":
            sizes = IP_INFO.search(record.message)
            pending = (record.timestamp, int(sizes[1]), int(sizes[2])) if sizes else None
        elif record.name == "colo_compare_tcp_info":
            pending = None  # that comparison matched
        elif (record.name == "colo_send_message" and "'checkpoint-request'" in record.message
              and pending is not None):
            compared, primary, secondary = pending
            pending = None
            if (record.timestamp >= since
                    and record.timestamp - compared <= REQUEST_AFTER_MISMATCH_S):
                found.append(Miscompare(compared, record.timestamp, primary, secondary))
    return found


def matched(records: list[TraceRecord], since: float = 0.0) -> int:
    """Comparisons at or after ``since`` whose packets matched (each traces a pair of
    ``colo_compare_tcp_info`` lines, primary then secondary)."""
    return sum(1 for r in records if r.name == "colo_compare_tcp_info"
               and r.timestamp >= since and r.message.startswith("pri:"))
