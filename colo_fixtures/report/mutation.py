"""The mutation score: which injected COLO bugs (``patches/mutants/``) the suites caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_outcomes(path: Path, patches: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The latest outcome per mutant from ``tests/test_mutants.py``'s JSON lines, in name
    order (a line that is not JSON is an error naming the file and the line). With
    ``patches`` (mutant name -> digest of its patch now), only outcomes of those mutants'
    current patches count."""
    latest: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            outcome = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a mutant outcome ({exc.msg}); delete the "
                             "line or the file") from None
        name = outcome["mutant"]
        if patches is None or (name in patches and patches[name] == outcome.get("patch")):
            latest[name] = outcome
    return [latest[name] for name in sorted(latest)]


def verdict_of(outcome: dict[str, Any]) -> str:
    """``caught``, ``hung``, ``excused``, ``wrong diagnosis`` or ``missed``."""
    if outcome["caught"]:
        return "caught"
    if outcome["hung"]:
        return "hung"
    if outcome.get("excused"):
        return "excused"
    return "wrong diagnosis" if outcome["found"] else "missed"


def score_table(outcomes: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per mutant, and the score line under it."""
    rows = ["| mutant | kind | caught by | verdict | outcome | build + run |",
            "|---|---|---|---|---|---|"]
    for o in outcomes:
        found = o["found"] if o["found"] == o["wanted"] else f"{o['found']} (wanted {o['wanted']})"
        rows.append(f"| `{o['mutant']}` | {o['kind']} | `{o['test'].split('::', 1)[1]}` | "
                    f"{found} | {verdict_of(o)} | {o['build_s']:.0f} + {o['run_s']:.0f} s |")
    caught = sum(1 for o in outcomes if o["caught"])
    rows.append("")
    rows.append(f"Mutation score: {caught} of {len(outcomes)} caught with their diagnosis.")
    return "\n".join(rows)
