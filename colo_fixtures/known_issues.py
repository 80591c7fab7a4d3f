"""Known failures of the system under test, as data: each marks matching tests xfail.

An entry names the test (a node id; without parameters it covers every parametrization),
what goes wrong, and since when it is seen. Entries are strict: when the problem is fixed
the test XPASSes, the run fails, and the entry must be removed, so a known issue never
silently outlives its cause.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from colo_fixtures.categories import never_excused


@dataclass(frozen=True)
class KnownIssue:
    """``symptom`` is a regex the failure's message must match for the issue to excuse it:
    any other failure of the test is reported as a failure."""

    test: str
    reason: str
    symptom: str
    strict: bool = True

    def names(self, nodeid: str) -> bool:
        return nodeid == self.test or nodeid.startswith(self.test + "[")


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "suites/test_failover.py::test_repeated_cycles[opened-since-checkpoint]",
        "QEMU 7.2 COLO: a TCP connection opened after the last checkpoint survives a "
        "secondary takeover only because the survivor's filter-rewriter keeps translating "
        "its sequence numbers (offset kept, failover mode off); that offset is not given to "
        "the secondary started at resume, so colo-compare sees every packet of it differ "
        "and, at the next failover onto that secondary, the connection stalls for good "
        "(client timeout). No acknowledged write is lost; new connections work. Seen 3 of "
        "3 runs on 2026-11-28 (trace: colo_filter_rewriter_conn_offset)",
        symptom=r"the long-lived connection did not survive the cycles",
    ),
)


def mark_known_issues(items: list[pytest.Item],
                      issues: tuple[KnownIssue, ...] = KNOWN_ISSUES) -> None:
    """Add an xfail marker to every collected test a known issue names."""
    for item in items:
        for issue in issues:
            if issue.names(item.nodeid):
                item.add_marker(pytest.mark.xfail(reason=issue.reason, strict=issue.strict))


def unexcused(nodeid: str, message: str,
              issues: tuple[KnownIssue, ...] = KNOWN_ISSUES) -> str | None:
    """Why a known issue's xfail does not cover this failure of ``nodeid``, if it does not:
    the failure is a verdict on COLO's promise, or not the issue's symptom."""
    if category := never_excused(message):
        return f"a failure in \"{category}\" is never a known issue"
    for issue in issues:
        if issue.names(nodeid) and not re.search(issue.symptom, message):
            return (f"not the known issue's symptom (/{issue.symptom}/): the known issue "
                    "does not explain this failure")
    return None


@dataclass(frozen=True)
class KnownLogMessage:
    """A QEMU or guest log line the analyzer reports as a warning instead of a failure.

    With ``explains_failure``, a test that fails while the line is in its logs is reported
    as an expected failure (xfail) naming the issue and the line, its evidence kept."""

    pattern: str
    reason: str
    explains_failure: bool = False

    def matches(self, line: str) -> bool:
        return re.search(self.pattern, line) is not None


KNOWN_LOG_MESSAGES: tuple[KnownLogMessage, ...] = (
    KnownLogMessage(
        r"qemu-system-\w+: virtio: zero sized buffers are not allowed",
        "QEMU 7.2 COLO under TCG: a secondary's virtio-net device meets a zero-sized "
        "descriptor while COLO runs and is marked broken (virtio_error); nothing clears "
        "that, so after a failover onto this secondary the guest has no network and the "
        "client times out. Seen on 2026-11-28 in one or two of the 21 suite tests of some "
        "runs, during the guest's boot under COLO (once before a failover onto that "
        "secondary: test_failover_after_kill[primary]); cause not identified",
        explains_failure=True,
    ),
    KnownLogMessage(
        r"qemu-system-\w+: virtio: bogus descriptor or out of resources",
        "QEMU 7.2 COLO under TCG: the same failure of a secondary's virtio-net device as "
        "'zero sized buffers' (a descriptor in its ring that the device cannot map, so the "
        "ring in the secondary's RAM and the device's indexes disagree); the device is "
        "marked broken for good. Seen once on 2026-11-29 (CI, inventory profile, "
        "test_failover_after_kill[secondary], where that secondary was the one killed); "
        "cause not identified",
        explains_failure=True,
    ),
)


def explaining_message(logs: list[Path],
                       known: tuple[KnownLogMessage, ...] = KNOWN_LOG_MESSAGES
                       ) -> tuple[KnownLogMessage, str] | None:
    """The first known message that explains a failure, and where it is (file:line)."""
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            for message in known:
                if message.explains_failure and message.matches(line):
                    return message, f"{log.name}:{number}"
    return None


def known_log_message(line: str,
                      known: tuple[KnownLogMessage, ...] = KNOWN_LOG_MESSAGES
                      ) -> KnownLogMessage | None:
    """The known message a log line is, if any."""
    return next((k for k in known if k.matches(line)), None)


FROZEN_NIC_REASON = (
    "QEMU 7.2 COLO under TCG: after a takeover the survivor's virtio-net queues stay as "
    "they were at its last checkpoint (signalled-used=0 on every queue while used > 0, TX "
    "buffers available and never processed), so its guest never answers the client again "
    "although it runs. Seen on 2026-11-29 in about one in six runs of "
    "test_failover_after_hang[primary] over SSH, in test_repeated_cycles[checkpointed] "
    "and once in test_failover_after_kill[primary] on the embedded lab; in one clean-clone "
    "CI run on 2026-11-29 in both test_failover_after_hang[primary] and "
    "test_survivor_disk_holds_acknowledged_writes[primary]; never after the primary was "
    "the survivor; cause not identified (evidence: virtio.txt, network.txt)")
_QUEUE = re.compile(r"^\s+queue \d+ \S+: .*\bused=(\d+) signalled-used=(\d+)")


def frozen_nic(virtio_state: str) -> str | None:
    """The first side whose virtio-net queues all show ``signalled-used=0`` while some
    ``used`` is above 0 (``ColoPair.virtio_net_state`` text), else None."""
    side, queues = None, []
    for line in [*virtio_state.splitlines(), ""]:
        match = _QUEUE.match(line)
        if match:
            queues.append((int(match[1]), int(match[2])))
            continue
        if side is not None and queues and all(s == 0 for _, s in queues) \
                and any(u > 0 for u, _ in queues):
            return side
        side, queues = (line.split()[0] if line.strip() else None), []
    return None
