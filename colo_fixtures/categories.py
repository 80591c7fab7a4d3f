"""Failure categories for the report: the known signatures of a broken COLO, by message.

Written as ``categories.json`` (Allure 2's format) into the results folder at the end of a
run; ``tools/report`` hands the same rules to Allure 3. The first matching rule wins, so the
specific signatures come before the general ones. Each regex matches the one-line messages
the harness itself writes (colo.py, workload.py, logscan.py, preflight.py, metrics.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

FAILED = ["failed", "broken"]
# Any text, newlines included, in both Java (Allure 2, whole-message match) and JavaScript
# (Allure 3, no inline flags) regular expressions.
ANY = r"[\s\S]*"

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"name": "Metrics regression (COLO got slower)", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"metrics regression" + ANY},
    {"name": "TCG checkpoint deadlock (QMP unresponsive)", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"(checkpoint deadlock|hung in checkpoint|QMP unresponsive|"
                     r"stopped answering after)" + ANY},
    {"name": "Guest crash or memory divergence", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"(guest kernel panic|guest kernel BUG|guest general protection|"
                     r"guest oops|guest memory divergence|MEMCHECK FAIL|guest agent died)" + ANY},
    {"name": "Lost acknowledged write or stale read", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"(lost acknowledged write|stale read|phantom (read|value)|"
                     r"failed write visible)" + ANY},
    {"name": "colo-compare miscompare storm", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"miscompare storm" + ANY},
    {"name": "Client connection broken by failover", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"(long-lived connection (broke|was replaced))" + ANY},
    {"name": "QEMU error in the logs", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"log analyzer: " + ANY},
    {"name": "Harness timeout (diagnosis attached)", "matchedStatuses": FAILED,
     "messageRegex": ANY + r"Timeout" + ANY},
    {"name": "Known issue (expected failure)", "matchedStatuses": ["skipped"],
     "messageRegex": r"XFAIL" + ANY},
    {"name": "RDMA missing (vm-ft tests skipped)", "matchedStatuses": ["skipped"],
     "messageRegex": ANY + r"(RDMA|rdma)" + ANY},
)


# Verdicts on what COLO promises: no known issue of the system under test excuses them.
NEVER_EXCUSED = ("TCG checkpoint deadlock (QMP unresponsive)",
                 "Guest crash or memory divergence",
                 "Lost acknowledged write or stale read",
                 "colo-compare miscompare storm")


def never_excused(message: str) -> str | None:
    """The category of a failure message that no known issue may turn into an xfail."""
    category = categorise("failed", message)
    return category if category in NEVER_EXCUSED else None


def write_categories(alluredir: str | Path | None) -> Path | None:
    """Write ``categories.json`` into the Allure results folder, if there is one."""
    if not alluredir:
        return None
    path = Path(alluredir) / "categories.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(CATEGORIES), indent=2) + "\n")
    return path


def categorise(status: str, message: str) -> str | None:
    """The first category whose status and message match, as the report assigns it."""
    for category in CATEGORIES:
        if status in category["matchedStatuses"] and re.fullmatch(category["messageRegex"],
                                                                 message):
            return str(category["name"])
    return None
