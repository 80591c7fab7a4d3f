"""Known failures of the system under test, as data: each marks matching tests xfail.

An entry names the test (fnmatch on the node id), what goes wrong, and since when it is
seen. Entries are strict: when the problem is fixed the test XPASSes, the run fails, and
the entry must be removed, so a known issue never silently outlives its cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import pytest


@dataclass(frozen=True)
class KnownIssue:
    test: str
    reason: str
    strict: bool = True


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "suites/test_failover.py::test_repeated_cycles",
        "QEMU 7.2 COLO, third failover (the primary killed is a resumed former secondary; "
        "the survivor is a secondary started at the second resume): the client's "
        "long-lived TCP connection stalls until its 5 s timeout, while new connections to "
        "the survivor work at once and no acknowledged write is lost; cycles 1 and 2 keep "
        "the connection. Seen 3 of 3 runs on 2026-11-28; cause not yet identified",
    ),
)


def mark_known_issues(items: list[pytest.Item],
                      issues: tuple[KnownIssue, ...] = KNOWN_ISSUES) -> None:
    """Add an xfail marker to every collected test a known issue names."""
    for item in items:
        for issue in issues:
            if fnmatch(item.nodeid, issue.test) or fnmatch(item.nodeid, issue.test + "[*"):
                item.add_marker(pytest.mark.xfail(reason=issue.reason, strict=issue.strict))
