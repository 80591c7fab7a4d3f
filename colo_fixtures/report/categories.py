"""Report categories, one per verdict type, matched on the failure's type name.

Written as ``categories.json`` (Allure 2's format) into the results folder at the end of a
run; ``tools/report`` hands the same rules to Allure 3. A failed test's message begins with
the exception's qualified type name (``colo_fixtures.core.verdicts.LostWrite: ...``, as pytest
and Allure print it), so each rule matches that prefix and nothing of the text after it.
The most specific type comes first, its families after it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from colo_fixtures.core.verdicts import qualified_name, verdict_types

# The modules that define verdict subclasses of their own, so that every type has its rule
# whoever imports this (tools/nightly imports nothing else); a test checks none is missing.
from colo_fixtures.lab import hosts, inventory_lab  # noqa: F401

FAILED = ["failed", "broken"]
# Any text, newlines included, in both Java (Allure 2, whole-message match) and JavaScript
# (Allure 3, no inline flags) regular expressions.
ANY = r"[\s\S]*"


def _rules() -> list[dict[str, Any]]:
    """One rule per category, matching every type that has it (a subclass defined in another
    module, e.g. ``CommandError(LabError)``, inherits its base's category)."""
    names: dict[str, list[str]] = {}
    for cls in verdict_types():
        names.setdefault(cls.category, []).append(re.escape(qualified_name(cls)))
    return [{"name": category, "matchedStatuses": FAILED,
             "messageRegex": "^(" + "|".join(types) + "): " + ANY}
            for category, types in names.items()]


CATEGORIES: tuple[dict[str, Any], ...] = (
    *_rules(),
    {"name": "Harness set-up failed (QEMU, guest or lab unavailable)",
     "matchedStatuses": FAILED, "messageRegex": r"^Failed: " + ANY},
    {"name": "Known issue (expected failure)", "matchedStatuses": ["skipped"],
     "messageRegex": r"^XFAIL" + ANY},
    {"name": "RDMA missing (vm-ft tests skipped)", "matchedStatuses": ["skipped"],
     "messageRegex": ANY + r"(RDMA|rdma)" + ANY},
)


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


def exception_message(exc: BaseException) -> str:
    """A failure's message as the report shows it: ``module.Type: text``."""
    name = type(exc).__qualname__ if type(exc).__module__ == "builtins" else qualified_name(
        type(exc))
    return f"{name}: {exc}"
